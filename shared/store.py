"""Redis store: session records, epochs (fencing), and the ordered conversation log.

Keys (``sid`` = session key):
- ``rs:epoch:<sid>``   int, bumped at every (re)attach; the fencing token
- ``rs:sess:<sid>``    hash: account, dialect, provider, model, epoch, route, timestamps
- ``rs:cfg:<sid>``     msgpack ``SessionConfig`` (the whole effective config)
- ``rs:items:<sid>``   hash item id -> msgpack canonical item
- ``rs:order:<sid>``   sorted set item id -> position (stream sequence): order is the order of the log
- ``rs:tr:<sid>``      hash item id -> final input transcript (user audio items)
- ``rs:trp:<sid>``     hash "<item id>|<position>" -> transcript delta, used while no final one exists (a
                       provider may finalize only at the end of the turn; a replacement must still know
                       what the user said)
- ``rs:trunc:<sid>``   hash item id -> audio_end_ms the client reported as played
- ``rs:commits:<sid>`` hash item id -> "<stream position>:<up seq>" of the provider's commit of that user
                       audio item: where a replacement's replay of the stream has to start

Global: ``rs:stream:last`` int, the newest stream sequence the checkpoint folded (``stream_floor``);
``rs:stream:folded:<stream id>`` int, the stream position below which the checkpoint has folded every
message it consumes (its consumer's ack floor), per incarnation of the stream (a restarted nats-server
starts a new one; test stacks with a bus each share one Redis).

Writes are idempotent (``ZADD NX``, ``HSET`` of whole values), so at-least-once delivery never
duplicates an item and two checkpoint instances may process the same session safely.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import enum
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelManagedConnection
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import events as ev
from shared.metrics import CHECKPOINT_REPLICA_WAITS, REDIS_RECONNECTS
from shared.session import SessionMeta

__all__ = [
    "LOGGED_EVENTS", "Commit", "ReplicaWait", "Snapshot", "Store", "WaitState", "apply_truncations", "cut_transcript",
]

log = logging.getLogger(__name__)

_ITEM_ENC = msgspec.msgpack.Encoder()
_ITEM_DEC: msgspec.msgpack.Decoder[ev.Item] = msgspec.msgpack.Decoder(ev.Item)  # type: ignore[arg-type]
_CFG_DEC = msgspec.msgpack.Decoder(ev.SessionConfig)


class Commit(msgspec.Struct, frozen=True, array_like=True):
    """A provider commit of user input: its down envelope's stream position, and the up seq it covers."""

    position: int
    up_seq: int


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    config: ev.SessionConfig | None
    items: list[ev.Item]
    epoch: int
    record: dict[str, str]
    commits: list[Commit] = []  # oldest first


def _keys(sid: str) -> dict[str, str]:
    return {
        "epoch": f"rs:epoch:{sid}",
        "sess": f"rs:sess:{sid}",
        "cfg": f"rs:cfg:{sid}",
        "items": f"rs:items:{sid}",
        "order": f"rs:order:{sid}",
        "tr": f"rs:tr:{sid}",
        "trp": f"rs:trp:{sid}",
        "trunc": f"rs:trunc:{sid}",
        "commits": f"rs:commits:{sid}",
    }


class _Failures:
    count = 0  # commands that failed and were retried (any connection of one client)


class _CountingRetry(Retry):
    """redis-py's retry, counting each failed attempt (``rs_redis_reconnects_total`` and ``Store.failures``)."""

    def __init__(self, *args: Any, failures: _Failures, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    def __deepcopy__(self, memo: dict[int, Any]) -> _CountingRetry:
        # Every connection deep-copies the retry it is given: the copies share one count.
        clone = copy.copy(self)
        clone._backoff = copy.deepcopy(self._backoff, memo)
        return clone

    async def call_with_retry(self, do: Any, fail: Any, *args: Any, **kwargs: Any) -> Any:
        async def counted(error: Exception, *more: Any) -> None:
            REDIS_RECONNECTS.inc()
            self.failures.count += 1
            await fail(error, *more)

        return await super().call_with_retry(do, counted, *args, **kwargs)


class _SentinelConnection(SentinelManagedConnection):
    """Asks the sentinels for the primary at every socket connect. redis-py does so only when a connection
    is taken from the pool: a command in flight when the primary died reconnects (``send_packed_command``)
    to the dead address, retry after retry (~30 s), though Sentinel promoted the replica after ~2 s."""

    async def _connect(self) -> None:
        if self.connection_pool.is_master:
            self.host, self.port = await self.connection_pool.get_master_address()
        await super()._connect()


# WAIT for a replica after a checkpoint batch (Sentinel mode): each WAIT's bound; how long a batch is held
# (not acked, WAIT again) while the replica does not confirm; how long to go without WAIT after that (the
# replica is down or resyncing: no promotion could keep those writes anyway, and holding longer would leave
# the log behind the stream until the stream's window drops what was never folded).
WAIT_TIMEOUT_MS = 1000
WAIT_HOLD_S = 5.0
WAIT_RETRY_S = 5.0


class WaitState(enum.Enum):
    NORMAL = "normal"  # WAIT after every batch
    HOLDING = "holding"  # the replica did not confirm the batch: WAIT again before acking it
    DEGRADED = "degraded"  # gave up on the replica: no WAIT until retry_s, then one try


# (state, outcome of a WAIT) -> (next state, go on and ack the batch)
_WAIT_TABLE: dict[tuple[WaitState, str], tuple[WaitState, bool]] = {
    (WaitState.NORMAL, "confirmed"): (WaitState.NORMAL, True),
    (WaitState.NORMAL, "short"): (WaitState.HOLDING, False),
    (WaitState.HOLDING, "confirmed"): (WaitState.NORMAL, True),
    (WaitState.HOLDING, "short"): (WaitState.HOLDING, False),
    (WaitState.HOLDING, "over"): (WaitState.DEGRADED, True),
    (WaitState.DEGRADED, "confirmed"): (WaitState.NORMAL, True),
    (WaitState.DEGRADED, "over"): (WaitState.DEGRADED, True),
}


@dataclasses.dataclass
class ReplicaWait:
    """Whether ``Store.settle`` WAITs for replicas, and whether a batch may be acked after the answer.
    Sans-I/O: times are loop seconds.

    ``replicas`` 0 (one Redis, no Sentinel): never WAIT. Otherwise WAIT after every batch; a batch the
    replica did not confirm is held (WAIT again) up to ``hold_s``, then acked anyway and the replica given up
    (``DEGRADED``: one WAIT per ``retry_s`` until one confirms)."""

    replicas: int
    timeout_ms: int = WAIT_TIMEOUT_MS
    hold_s: float = WAIT_HOLD_S
    retry_s: float = WAIT_RETRY_S
    state: WaitState = WaitState.NORMAL
    _since: float = 0.0  # HOLDING: the first unconfirmed WAIT of the batch
    _retry_at: float = 0.0  # DEGRADED: the next WAIT

    def wanted(self, now: float) -> int:
        """Replicas to WAIT for now (0: do not WAIT)."""
        if not self.replicas or (self.state is WaitState.DEGRADED and now < self._retry_at):
            return 0
        return self.replicas

    def answered(self, got: int, now: float) -> bool:
        """Record a WAIT's answer (``got`` replicas confirmed); True: ack the batch, False: WAIT again."""
        if got >= self.replicas:
            outcome = "confirmed"
        elif self.state is WaitState.NORMAL or (self.state is WaitState.HOLDING and now - self._since < self.hold_s):
            outcome = "short"
        else:
            outcome = "over"
        state, go = _WAIT_TABLE[(self.state, outcome)]
        if state is WaitState.HOLDING and self.state is not WaitState.HOLDING:
            self._since = now
        if state is WaitState.DEGRADED:
            self._retry_at = now + self.retry_s
        self.state = state
        return go


class Store:
    def __init__(
        self, client: aioredis.Redis, *, ttl_s: int = 86_400, replicas: int = 0, wait_timeout_ms: int = WAIT_TIMEOUT_MS,
        failures: _Failures | None = None,
    ) -> None:
        self.redis = client
        self.ttl_s = ttl_s
        self.wait = ReplicaWait(replicas, timeout_ms=wait_timeout_ms)
        self._failures = failures or _Failures()

    @property
    def failures(self) -> int:
        """Commands that failed and were retried so far (a reconnect, a failover): writes made before one may
        have gone to a primary that is gone (see ``settle``)."""
        return self._failures.count

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls, url: str, *, ttl_s: int = 86_400, sentinels: str = "", sentinel_master: str = "mymaster"
    ) -> AsyncIterator[Store]:
        """``sentinels`` (``host:port,...``) selects Sentinel instead of ``url``: the client asks the
        sentinels for the current primary and asks again when a connection to it fails (a failover)."""
        failures = _Failures()
        retry = _CountingRetry(ExponentialWithJitterBackoff(base=0.05, cap=2.0), retries=20, failures=failures)
        sentinel: Sentinel | None = None
        if sentinels:
            addresses = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in sentinels.split(","))]
            sentinel = Sentinel(addresses, socket_connect_timeout=1, socket_timeout=2)
            # ReadOnlyError: a connection still open to the demoted primary after a failover; the retry
            # reconnects and the pool asks the sentinels again.
            client = sentinel.master_for(
                sentinel_master, retry=retry, connection_class=_SentinelConnection,
                retry_on_error=[RedisConnectionError, RedisTimeoutError, ReadOnlyError],
                health_check_interval=10, socket_connect_timeout=2, socket_timeout=5,
            )
        else:
            client = aioredis.from_url(
                url, retry=retry, retry_on_error=[RedisConnectionError, RedisTimeoutError],
                health_check_interval=10, socket_connect_timeout=2,
            )
        try:
            # Sentinel mode runs a primary with a replica: the checkpoint WAITs for it (``settle``).
            yield cls(client, ttl_s=ttl_s, replicas=1 if sentinels else 0, failures=failures)
        finally:
            await client.aclose()
            if sentinel is not None:
                for s in sentinel.sentinels:
                    await s.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except Exception:
            return False

    # -- session record and fencing ------------------------------------------------------------

    async def open_session(self, meta: SessionMeta, *, edge: str) -> int:
        """Record the session and bump its epoch; returns the new epoch."""
        k = _keys(meta.sid)
        now = str(int(time.time() * 1000))
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.incr(k["epoch"])
            pipe.hsetnx(k["sess"], "created_ms", now)
            pipe.hset(
                k["sess"],
                mapping={
                    "account": meta.account,
                    "client_session_id": meta.client_session_id,
                    "dialect": meta.dialect,
                    "provider": meta.provider,
                    "model": meta.model or "",
                    "edge": edge,
                    "updated_ms": now,
                },
            )
            for key in k.values():
                pipe.expire(key, self.ttl_s)
            epoch, *_ = await pipe.execute()
        await self.redis.hset(k["sess"], "epoch", str(epoch))
        return int(epoch)

    async def bump_epoch(self, sid: str, *, above: int = 0) -> int:
        """The next epoch, and never one at or below ``above`` (the caller's newest): a Redis restarted
        without its data would otherwise hand out an epoch the live members already use, or an older one,
        and fencing would drop the replacement's output instead of the dead member's."""
        k = _keys(sid)
        epoch = int(await self.redis.eval(_BUMP_ABOVE, 1, k["epoch"], str(above)))
        await self.redis.hset(k["sess"], "epoch", str(epoch))
        return epoch

    # -- stream position -------------------------------------------------------------------------

    async def stream_floor(self) -> int:
        """The sequence a re-created stream starts at: after the newest one the log already used."""
        raw = await self.redis.get(_STREAM_LAST)
        return int(raw) + 1 if raw else 1

    async def note_stream_seq(self, seq: int) -> None:
        await self.redis.eval(_RAISE_KEY, 1, _STREAM_LAST, str(seq))

    async def settle(self, seq: int, now: float) -> bool:
        """After a batch of ``apply``: note ``seq`` as the newest stream sequence folded and, with a replica
        (Sentinel mode), WAIT until it holds every write so far (at most ``wait.timeout_ms``). True: the
        batch may be acked; False: the replica has not confirmed it, call again (``ReplicaWait`` holds a
        batch for a while, then gives the replica up). Replication is asynchronous: what the primary acked
        and the replica lacks is gone when Sentinel promotes the replica; a confirmed batch survives that.

        The WAIT goes on the connection of a write that always replicates (the raise script SETs), so it
        covers the batch's writes made on other connections too (one replication stream)."""
        replicas = self.wait.wanted(now)
        if not replicas:
            await self.note_stream_seq(seq)
            return True
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(_RAISE_KEY, 1, _STREAM_LAST, str(seq))
            pipe.execute_command("WAIT", replicas, self.wait.timeout_ms)
            _, got = await pipe.execute()
        was = self.wait.state
        go = self.wait.answered(int(got), now)
        CHECKPOINT_REPLICA_WAITS.labels("confirmed" if int(got) >= replicas else "unconfirmed").inc()
        if self.wait.state is not was:
            log.warning("replica wait state changed", extra={"from": was.value, "to": self.wait.state.value})
        return go

    async def note_folded(self, stream_id: str, position: int) -> None:
        """The checkpoint has folded everything up to stream ``position`` (raise only: several instances)."""
        await self.redis.eval(_RAISE_KEY_EX, 1, _folded_key(stream_id), str(position), str(self.ttl_s))

    async def folded(self, stream_id: str) -> int:
        """The stream position up to which the log holds everything (0: nothing known)."""
        raw = await self.redis.get(_folded_key(stream_id))
        return int(raw) if raw else 0

    async def epoch(self, sid: str) -> int:
        raw = await self.redis.get(_keys(sid)["epoch"])
        return int(raw) if raw else 0

    async def set_provider(self, sid: str, provider: str) -> None:
        """The provider serving the session now (after a switch)."""
        now = str(int(time.time() * 1000))
        await self.redis.hset(_keys(sid)["sess"], mapping={"provider": provider, "updated_ms": now})

    async def session_edge(self, sid: str) -> str | None:
        """The edge instance that opened the session last (None: no such session)."""
        raw = await self.redis.hget(_keys(sid)["sess"], "edge")
        return raw.decode() if isinstance(raw, bytes) else raw

    async def session_record(self, sid: str) -> dict[str, str]:
        """The session's record (edge, provider, ``route_*`` members...); empty: no such session."""
        raw = await self.redis.hgetall(_keys(sid)["sess"])
        return {_text(k): _text(v) for k, v in raw.items()}

    async def set_route(self, sid: str, **route: str) -> None:
        await self.redis.hset(_keys(sid)["sess"], mapping={f"route_{k}": v for k, v in route.items()})

    # -- conversation log ----------------------------------------------------------------------

    async def apply(self, sid: str, position: int, events: list[ev.Event]) -> int:
        """Fold one envelope's events into the log. ``position`` orders items (stream sequence).

        Returns how many log writes were made. Safe to call twice with the same input.
        """
        k = _keys(sid)
        writes = 0
        async with self.redis.pipeline(transaction=False) as pipe:
            for index, event in enumerate(events):
                writes += _FOLD.get(type(event), _skip)(pipe, k, position * 1000 + index, event)
            if writes:
                for key in ("cfg", "items", "order", "tr", "trp", "trunc", "sess", "commits"):
                    pipe.expire(k[key], self.ttl_s)
                await pipe.execute()
        return writes

    async def snapshot(self, sid: str, *, cut: bool = True) -> Snapshot:
        """The session's log. ``cut``: the client's truncations applied (``apply_truncations``), the history a
        provider is given; without, the items as the client's own item store holds them (a truncate leaves
        its transcript as it was there)."""
        k = _keys(sid)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(k["cfg"])
            pipe.zrange(k["order"], 0, -1)
            pipe.hgetall(k["items"])
            pipe.hgetall(k["tr"])
            pipe.get(k["epoch"])
            pipe.hgetall(k["sess"])
            pipe.hgetall(k["trp"])
            pipe.hvals(k["commits"])
            pipe.hgetall(k["trunc"])
            (cfg_raw, order, items_raw, transcripts, epoch_raw, record, partials, commits_raw,
             truncs_raw) = await pipe.execute()
        config = _CFG_DEC.decode(cfg_raw) if cfg_raw else None
        items: list[ev.Item] = []
        partial = _joined(partials) if partials else {}
        for item_id in order:
            raw = items_raw.get(item_id)
            if raw is None:
                continue
            item = _ITEM_DEC.decode(raw)
            transcript = transcripts.get(item_id) or partial.get(item_id)
            if transcript is not None and isinstance(item, ev.Message):
                item = _with_transcript(item, transcript.decode())
            items.append(item)
        return Snapshot(
            config=config,
            items=apply_truncations(items, {a.decode(): int(b) for a, b in truncs_raw.items()}) if cut else items,
            epoch=int(epoch_raw) if epoch_raw else 0,
            record={a.decode(): b.decode() for a, b in record.items()},
            commits=sorted((Commit(*map(int, raw.split(b":"))) for raw in commits_raw), key=lambda c: c.position),
        )


def _joined(partials: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Item id -> its transcript deltas joined in log order."""
    grouped: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for key, text in partials.items():
        item_id, _, position = key.rpartition(b"|")
        grouped.setdefault(item_id, []).append((position, text))
    return {item_id: b"".join(text for _, text in sorted(parts)) for item_id, parts in grouped.items()}


def _with_transcript(item: ev.Message, transcript: str) -> ev.Message:
    content = [
        msgspec.structs.replace(c, transcript=transcript) if isinstance(c, ev.AudioContent) else c
        for c in item.content
    ]
    if not any(isinstance(c, ev.AudioContent) for c in content):
        content.append(ev.AudioContent(transcript=transcript))
    return msgspec.structs.replace(item, content=content)


def cut_transcript(transcript: str, audio_end_ms: int, duration_ms: int | None) -> str:
    """The text a restored history gives for an answer the client cut after ``audio_end_ms`` of its audio.

    The real OpenAI server keeps the audio up to ``audio_end_ms`` and drops the transcript, so the context
    holds nothing the user did not hear. A restore can only give text, so: with the audio's duration known,
    the transcript's share ``audio_end_ms / duration_ms``, cut back to a word boundary (never a word not yet
    heard whole), then the marker; all of it when the whole audio was heard; without the duration (the log
    keeps none today: the checkpoint never sees the audio), the marker alone. The marker keeps the turn in
    the history, so the new provider knows it answered and was cut off, and says when."""
    marker = f"[cut off by the user after {audio_end_ms / 1000:.1f} s]"
    if not duration_ms or duration_ms <= 0:
        return marker
    if audio_end_ms >= duration_ms:
        return transcript
    cut = len(transcript) * max(audio_end_ms, 0) // duration_ms
    if cut < len(transcript) and not transcript[cut].isspace():
        cut = max(transcript.rfind(" ", 0, cut + 1), 0)  # the word the cut falls in was not heard whole
    heard = transcript[:cut].rstrip()
    return f"{heard}… {marker}" if heard else marker


def apply_truncations(items: list[ev.Item], truncations: dict[str, int]) -> list[ev.Item]:
    """``items`` with each client truncation (item id -> ``audio_end_ms``, ``rs:trunc``) applied to the
    spoken transcript of the assistant message it names (``cut_transcript``). Only an assistant's spoken
    content can be cut (the real server refuses any other truncate); anything else is left as it is, and a
    truncation of an item the log no longer holds (deleted) is ignored. ``items`` itself when nothing changes."""
    if not truncations:
        return items
    out: list[ev.Item] = []
    changed = False
    for item in items:
        end = truncations.get(item.id)
        if end is not None and isinstance(item, ev.Message) and item.role == "assistant":
            content = [
                msgspec.structs.replace(c, transcript=cut_transcript(c.transcript, end, c.duration_ms))
                if isinstance(c, ev.AudioContent) and c.transcript else c
                for c in item.content
            ]
            if content != item.content:
                item, changed = msgspec.structs.replace(item, content=content), True
        out.append(item)
    return out if changed else items


# One fold per event type: how an event changes the log. Events not listed do not change it.
def _skip(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    return 0


def _put_item(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, item: ev.Item) -> int:
    pipe.hset(k["items"], item.id, _ITEM_ENC.encode(item))
    pipe.zadd(k["order"], {item.id: pos}, nx=True)  # first sighting fixes the position
    return 1


def _fold_config(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.SessionConfig)
    pipe.set(k["cfg"], _ITEM_ENC.encode(e))
    return 1


def _fold_item_create(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.ItemCreate)
    return _put_item(pipe, k, pos, e.item)


_STREAM_LAST = "rs:stream:last"


def _folded_key(stream_id: str) -> str:
    return f"rs:stream:folded:{stream_id}"

# INCR, but to at least ARGV[1] + 1.
_BUMP_ABOVE = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if cur < floor then cur = floor end
cur = cur + 1
redis.call('SET', KEYS[1], cur, 'KEEPTTL')
return cur
"""

# Raise a key to ARGV[1] unless it is already higher. Always a SET: a WAIT after it covers every earlier write.
_RAISE_KEY = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
redis.call('SET', KEYS[1], math.max(cur, tonumber(ARGV[1])))
return 0
"""

# Raise a key to ARGV[1] unless it is already higher; expire it after ARGV[2] s (a stream's key outlives it).
_RAISE_KEY_EX = """
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

# Raise a hash field to ARGV[1] unless it is already higher (redelivery and parallel checkpoints).
_RAISE_FIELD = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""


def _fold_committed(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.InputCommitted)
    item = ev.Message(id=e.item_id, role="user", content=[ev.AudioContent()])
    # HSETNX: a replayed commit must not wipe a richer version of the item.
    pipe.hsetnx(k["items"], item.id, _ITEM_ENC.encode(item))
    pipe.zadd(k["order"], {item.id: pos}, nx=True)
    if e.up_seq:
        pipe.eval(_RAISE_FIELD, 1, k["sess"], "committed_up_seq", str(e.up_seq))
        pipe.hset(k["commits"], e.item_id, f"{pos // 1000}:{e.up_seq}")
    return 1


def _fold_transcript(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.InputTranscript)
    if not e.final:
        # Keyed by position: a redelivered delta overwrites itself instead of being appended twice.
        pipe.hset(k["trp"], f"{e.item_id}|{pos:020d}", e.text)
        return 1
    pipe.hset(k["tr"], e.item_id, e.text)
    return 1


def _fold_output_done(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.OutputDone)
    return _put_item(pipe, k, pos, e.item)


def _fold_delete(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.ItemDelete)
    pipe.hdel(k["items"], e.item_id)
    pipe.zrem(k["order"], e.item_id)
    return 1


def _fold_truncate(pipe: aioredis.client.Pipeline, k: dict[str, str], pos: int, e: ev.Event) -> int:
    assert isinstance(e, ev.ItemTruncate)
    pipe.hset(k["trunc"], e.item_id, str(e.audio_end_ms))
    return 1


_FOLD = {
    ev.SessionConfig: _fold_config,
    ev.ItemCreate: _fold_item_create,
    ev.InputCommitted: _fold_committed,
    ev.InputTranscript: _fold_transcript,
    ev.OutputDone: _fold_output_done,
    ev.ItemDelete: _fold_delete,
    ev.ItemTruncate: _fold_truncate,
}

# The events that change the log: only envelopes holding one reach the checkpoint (bus.part).
LOGGED_EVENTS: frozenset[type] = frozenset(_FOLD)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
