"""Provider-worker: owns the upstream socket of each session it holds and the provider keys.

Subscribes ``up`` (canonical events from the transformer), speaks the provider protocol through the
provider's sans-I/O codec, publishes ``down``. The upstream connection is a loop: when the provider
drops, it reconnects with capped exponential backoff and jitter, restores the conversation from the
checkpoint's snapshot as structured items, and tells the client what is happening.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import random
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import msgspec
import nats.js.errors
import websockets
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from services.provider_worker import replay
from shared import bus
from shared import events as ev
from shared.bus import Subjects
from shared.codecs.base import Out, ProviderCodec
from shared.config import Config
from shared.metrics import (
    FRAMES,
    PROVIDER_CONNECTS,
    PROVIDER_ERRORS,
    REPLAYED,
    SESSIONS,
    UPSTREAM_RECONNECTS,
    UPSTREAM_ROTATIONS,
)
from shared.providers import Provider, ProviderNotConfigured, installed_providers, load_provider
from shared.runtime import BOOT, TaskSet, heartbeat_loop, instance_id
from shared.session import SessionMeta
from shared.store import Snapshot, Store

__all__ = ["InputClock", "ProviderWorker"]

log = logging.getLogger(__name__)

# A resume waits this long at most for a lagging checkpoint: longer than the consumer's ack_wait, after
# which what a killed checkpoint had fetched is delivered again.
CHECKPOINT_WAIT_S = 3.0
PENDING_LIMIT = 3_000  # events held while upstream connects: ~60 s of 20 ms audio frames
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
ROTATE_MARGIN_S = 1.0  # a connection going away is replaced at the latest this long before its end
DROP_WAIT_S = 2.0  # how long dropping a session waits for its upstream task to stop
MAX_CONNECT_FAILURES = 8  # consecutive failed connects before the session is told it is over
_FATAL_HTTP = {400, 401, 403, 404}  # retrying cannot fix these
_INTERNAL_ERROR = ev.ProviderError(code="internal_error", message="the gateway could not translate an event")


class InputClock:
    """Which up envelope carried the input audio at a given millisecond of one provider connection.

    Providers with server VAD say where speech stopped in their own input clock (OpenAI ``audio_end_ms``:
    ms of audio since the connection opened). That, not the newest envelope when the commit event
    arrives, is the commit point: frames sent between the two belong to the next turn, and a replacement
    must replay them. Bounded: marks older than the newest commit are dropped.
    """

    __slots__ = ("_marks", "_ms")

    def __init__(self) -> None:
        self._ms = 0.0
        self._marks: collections.deque[tuple[float, int]] = collections.deque()  # (audio end ms, up seq)

    def add(self, seq: int, pcm_bytes: int, rate: int) -> None:
        self._ms += pcm_bytes / 2 / rate * 1000
        if self._marks and self._marks[-1][1] == seq:
            self._marks[-1] = (self._ms, seq)
        else:
            self._marks.append((self._ms, seq))

    def seq_at(self, ms: int) -> int | None:
        """The envelope holding audio millisecond ``ms`` (None: not sent on this connection)."""
        while self._marks and self._marks[0][0] < ms:
            self._marks.popleft()
        return self._marks[0][1] if self._marks else None


class _Session:
    def __init__(self, meta: SessionMeta, epoch: int, transformer_epoch: int, provider: Provider) -> None:
        self.meta = meta
        self.epoch = epoch  # stamped on what this worker publishes
        self.transformer_epoch = transformer_epoch  # up envelopes from older epochs come from a replaced one
        self.last_up = 0  # highest up envelope seq taken: dedupes stream replay vs live delivery
        self.replaying = False
        self.held: list[bytes] = []  # live up envelopes that arrived during a replay
        self.provider = provider
        self.model = provider.model_for(meta.model)
        self.codec: ProviderCodec | None = None
        self.ws: ClientConnection | None = None
        self.connected = False
        self.closed = False
        self.config: ev.SessionConfig | None = None
        self.config_seen = asyncio.Event()
        self.pending: collections.deque[ev.Event] = collections.deque()
        self.overflowed = 0  # 1: input was lost while disconnected, 2: the client was told
        self.open_response: str | None = None
        self.seq_down = 0
        self.rotate_by: float | None = None  # loop time the provider ends this connection (goAway)
        self.rotating = False  # the upstream is being closed on purpose, to be replaced at once
        self.clock = InputClock()  # of the current provider connection
        self.resume_snapshot: Snapshot | None = None  # what a replacement's resume read, for its first connect
        self.speech_ends: dict[str, int] = {}  # item id -> up seq where the provider heard speech stop
        self.subs: list[Subscription] = []
        self.task: asyncio.Task[None] | None = None


class ProviderWorker:
    name = "provider-worker"

    def __init__(self, config: Config, providers: list[str] | None = None) -> None:
        self.config = config
        self.instance = instance_id("worker", config.instance_id)
        names = providers or installed_providers()
        settings = config.provider_settings()
        self.providers: dict[str, Provider] = {n: load_provider(n)(settings) for n in names}
        self.sessions: dict[str, _Session] = {}
        self._tasks = TaskSet()
        self.nc: NATS | None = None
        self.store: Store | None = None

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        self.nc, self.store = nc, store
        on_assign = self._tasks.each_in_a_task(self._on_assign)
        subs = [
            await nc.subscribe(Subjects.assign_worker(p), queue=Subjects.queue_worker(p), cb=on_assign)
            for p in self.providers
        ]
        beat = asyncio.create_task(
            heartbeat_loop(nc, "worker", self.instance, lambda: len(self.sessions), providers=list(self.providers))
        )
        try:
            yield
        finally:
            beat.cancel()
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await asyncio.gather(*(self._drop(sid) for sid in list(self.sessions)), return_exceptions=True)

    # -- assignment ------------------------------------------------------------------------------

    async def _on_assign(self, msg: Msg) -> None:
        assert self.nc is not None
        try:
            req = bus.decode(msg.data, bus.AssignRequest)
            provider = self.providers[req.meta.provider]
        except Exception:
            await msg.respond(bus.encode(bus.AssignReply(instance=self.instance, ok=False, error="bad request")))
            return
        sid = req.meta.sid
        await self._drop(sid)
        session = _Session(req.meta, req.epoch, req.peer_epoch or req.epoch, provider)
        session.replaying = req.resume
        self.sessions[sid] = session
        SESSIONS.labels("worker").set(len(self.sessions))
        session.subs = [
            await self.nc.subscribe(Subjects.up(sid), cb=functools.partial(self._on_up, session)),
            await self.nc.subscribe(Subjects.ctl(sid), cb=functools.partial(self._on_ctl, session)),
        ]
        await self.nc.flush()
        await msg.respond(bus.encode(bus.AssignReply(instance=self.instance, boot=BOOT)))
        # The resume runs in the session's task: the edge is answered as soon as the session is ours.
        session.task = asyncio.create_task(self._start(session, req.resume))
        log.info("session attached", extra={"sid": sid, "epoch": req.epoch, "provider": req.meta.provider})

    async def _start(self, session: _Session, resume: bool) -> None:
        if resume:
            await self._replaying(session, self._resume(session))
        await self._upstream_loop(session)

    async def _replaying(self, session: _Session, replay: Coroutine[Any, Any, None]) -> None:
        """Run a stream replay while live up envelopes wait (in order) in ``held``, then take those."""
        session.replaying = True
        try:
            await replay
        except Exception:  # the stream or the store failed us: go on with what was queued
            log.exception("stream replay failed", extra={"sid": session.meta.sid})
        finally:
            session.replaying = False
            held, session.held = session.held, []
            for data in held:
                await self._accept(session, data)

    async def _on_ctl(self, session: _Session, msg: Msg) -> None:
        ctl = bus.decode(msg.data, bus.Control)
        if ctl.drop == self.instance or (ctl.kind == "close" and ctl.epoch >= session.epoch):
            # Not awaited here: _drop unsubscribes the very subscription running this callback, which
            # cancels it; the drop runs in its own task so it always completes.
            self._tasks.spawn(self._drop(session.meta.sid))
        elif ctl.kind == "replace" and ctl.role == "transformer" and ctl.epoch > session.transformer_epoch:
            session.transformer_epoch = ctl.epoch

    async def _resume(self, session: _Session) -> None:
        """A replacement: queue the input the provider never committed, from the stream."""
        assert self.store is not None
        started = asyncio.get_running_loop().time()
        await self._await_checkpoint(session.meta.sid)
        waited = asyncio.get_running_loop().time() - started
        snapshot = session.resume_snapshot = await self.store.snapshot(session.meta.sid)
        await self._queue_uncommitted(session, snapshot)
        log.info("resume replayed", extra={
            "sid": session.meta.sid, "checkpoint_wait_ms": round(waited * 1000),
            "total_ms": round((asyncio.get_running_loop().time() - started) * 1000),
            "items": len(snapshot.items), "replayed": len(session.pending)})

    async def _queue_uncommitted(self, session: _Session, snapshot: Snapshot, *, upto: int | None = None) -> None:
        """Queue, from the stream, the input a new provider connection must get after the history
        (read -> ``replay.plan_replay`` -> apply). ``upto``: only envelopes this worker already took (a
        reconnect; newer ones arrive live); None: all, and they count as taken (a replacement)."""
        assert self.nc is not None
        sid = session.meta.sid
        # Reads: from shortly before the commit point, the up envelopes, and down when a create is to judge.
        committed = replay.commit_point(snapshot)
        start = replay.replay_start(snapshot, committed)
        since: float | None = None
        if start is not None:
            config = session.config or snapshot.config
            vad = config.turn_detection if config is not None else None
            since = replay.read_since_s(await bus.age_of(self.nc, start.position), vad)
        up = [(pos, ev.decode_envelope(data))
              for pos, data in await bus.replay_seq(self.nc, Subjects.up(sid), since_s=since)]
        down = [(pos, ev.decode_envelope(data))
                for pos, data in await bus.replay_seq(self.nc, Subjects.down(sid), start_seq=up[0][0])
                ] if replay.needs_down(up) else []
        plan = replay.plan_replay(snapshot, up, down, upto=upto)
        # Apply: replaces what was queued while disconnected (the stream holds that too, in order).
        if upto is None:
            session.last_up = max(session.last_up, plan.last_seq)
        session.pending.clear()
        for event in plan.events:
            self._take(session, event)
        REPLAYED.inc(len(plan.events))

    async def _await_checkpoint(self, sid: str, timeout_s: float = CHECKPOINT_WAIT_S) -> None:
        """Wait until the checkpoint has folded this session's events already in the stream, so that the
        snapshot (history, commit point) and the replay agree: from a stale commit point, input the
        restored history already holds would be sent again (a duplicate turn). Usually immediate; a
        checkpoint that lags under load is waited for, up to the bound (which a dead one costs)."""
        assert self.nc is not None
        js = self.nc.jetstream()
        with contextlib.suppress(Exception):
            target = 0
            for subject in (Subjects.up(sid, "log"), Subjects.down(sid, "log")):  # what the checkpoint folds
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    target = max(target, (await js.get_last_msg(bus.STREAM, subject, direct=True)).seq or 0)
            if not target:
                return
            deadline = asyncio.get_running_loop().time() + timeout_s
            while asyncio.get_running_loop().time() < deadline:
                info = await js.consumer_info(bus.STREAM, bus.CHECKPOINT_CONSUMER)
                if info.ack_floor is not None and (info.ack_floor.stream_seq or 0) >= target:
                    return
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.05)  # a dead worker's sessions all poll at once: keep the API load low

    async def _drop(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        session.closed = True
        SESSIONS.labels("worker").set(len(self.sessions))
        for sub in session.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if session.ws is not None:
            with contextlib.suppress(Exception):
                await session.ws.close()
        if session.task is not None:
            session.task.cancel()
            # Bounded: a task slow to stop must not hold up the assignment (or the shutdown) waiting on it.
            done, _ = await asyncio.wait({session.task}, timeout=DROP_WAIT_S)
            if not done:
                log.warning("upstream task still stopping", extra={"sid": sid})
            elif not session.task.cancelled():
                session.task.exception()  # retrieved, as the await did: how it ended no longer matters
        log.info("session detached", extra={"sid": sid, "epoch": session.epoch})

    # -- client -> provider ----------------------------------------------------------------------

    async def _on_up(self, session: _Session, msg: Msg) -> None:
        if session.replaying:
            session.held.append(msg.data)
            return
        await self._accept(session, msg.data)

    async def _accept(self, session: _Session, data: bytes) -> None:
        env = ev.decode_envelope(data)
        if env.epoch < session.transformer_epoch or session.closed:
            return  # fenced: a replaced transformer
        if env.seq <= session.last_up:
            return  # already taken from the stream replay
        session.last_up = env.seq
        FRAMES.labels("worker", "up").inc()
        for event in env.events:
            if session.connected:
                self._note_config(session, event)
                await self._encode(session, event)
            else:
                self._take(session, event)
        if session.overflowed == 1:
            # Never drop input silently: say so once, in the client's dialect.
            session.overflowed = 2
            await self._publish(session, [ev.ProviderError(
                code="input_buffer_full", message="provider unavailable; input beyond the buffer was lost",
                retryable=True)])

    @staticmethod
    def _note_config(session: _Session, event: ev.Event) -> None:
        if isinstance(event, ev.SessionConfig):
            session.config = event
            session.config_seen.set()

    def _take(self, session: _Session, event: ev.Event) -> None:
        """Queue an event while the upstream is not connected (bounded)."""
        self._note_config(session, event)
        if len(session.pending) < PENDING_LIMIT:
            session.pending.append(event)
        elif not session.overflowed:
            session.overflowed = 1

    async def _encode(self, session: _Session, event: ev.Event) -> None:
        assert session.codec is not None
        if isinstance(event, ev.InputAudio):
            # Queued input (a reconnect's flush) is marked with the newest seq: later than it was, which
            # only makes the commit point later, as it was before there was a clock.
            session.clock.add(session.last_up, len(event.pcm), event.rate)
        try:
            out = session.codec.encode(event)
        except Exception:
            # A codec bug must not cost the event silently nor touch other sessions: tell the client.
            log.exception("codec failed on a client event", extra={"sid": session.meta.sid})
            out = Out(events=[_INTERNAL_ERROR])
        await self._apply(session, out)
        if getattr(session.codec, "needs_reconnect", False) and session.ws is not None:
            # The provider cannot take this change live (Gemini: one setup per connection).
            await session.ws.close(1000, "reconfigure")

    # -- provider -> client ----------------------------------------------------------------------

    async def _apply(self, session: _Session, out: Out) -> None:
        if out.wire and session.ws is not None:
            for frame in out.wire:
                await session.ws.send(frame)
        events = out.events
        if any(isinstance(e, ev.GoAway) for e in events):
            # The provider will end this connection soon (Gemini's session cap). Ours to handle: the
            # client is not told, the connection is replaced at a turn boundary (below, or _plan_rotation's deadline).
            for e in events:
                if isinstance(e, ev.GoAway):
                    self._plan_rotation(session, e.time_left_ms)
            events = [e for e in events if not isinstance(e, ev.GoAway)]
        if events:
            await self._publish(session, events)
        if session.rotate_by is not None and session.open_response is None:
            await self._rotate(session)

    def _plan_rotation(self, session: _Session, time_left_ms: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_left_ms / 1000
        if session.rotate_by is not None and session.rotate_by <= deadline:
            return
        session.rotate_by = deadline
        log.info("provider going away", extra={"sid": session.meta.sid, "time_left_ms": time_left_ms})
        # Not idle by then (a long response): rotate anyway, a little before the provider cuts it.
        force_in = max(0.0, time_left_ms / 1000 - ROTATE_MARGIN_S)
        ws = session.ws
        self._tasks.spawn(self._rotate_later(session, ws, force_in))

    async def _rotate_later(self, session: _Session, ws: ClientConnection | None, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if session.ws is ws and ws is not None:
            await self._rotate(session)

    async def _rotate(self, session: _Session) -> None:
        """Replace the upstream connection on purpose: the loop reconnects at once with the history and
        the uncommitted input, without telling the client anything went wrong."""
        if session.ws is None or session.rotating:
            return
        session.rotating = True
        UPSTREAM_ROTATIONS.labels(session.meta.provider).inc()
        with contextlib.suppress(Exception):
            await session.ws.close(1000, "go away")

    async def _publish(self, session: _Session, events: list[ev.Event]) -> None:
        assert self.nc is not None
        for index, event in enumerate(events):
            if isinstance(event, ev.ResponseStarted):
                session.open_response = event.response_id
            elif isinstance(event, ev.ResponseDone):
                session.open_response = None
            elif isinstance(event, ev.SpeechStopped) and event.audio_end_ms:
                seq = session.clock.seq_at(event.audio_end_ms)
                if seq is not None:
                    session.speech_ends[event.item_id] = seq
            elif isinstance(event, ev.InputCommitted):
                # What the provider has committed so far: a replacement replays only what came after.
                up_seq = session.speech_ends.pop(event.item_id, session.last_up)
                events[index] = msgspec.structs.replace(event, up_seq=up_seq)
        session.seq_down += 1
        envelope = bus.envelope(session.epoch, session.seq_down, events)
        await self.nc.publish(Subjects.down(session.meta.sid, bus.part(events)), envelope)

    async def _upstream_loop(self, session: _Session) -> None:
        failures = 0
        name = session.meta.provider
        while not session.closed:
            try:
                opened = await self._run_upstream(session)
                failures = 0 if opened else failures + 1
                reason = "closed"
            except ProviderNotConfigured as exc:
                # Missing settings on this worker: retrying cannot help, the client is told why.
                PROVIDER_ERRORS.labels(name, "not_configured").inc()
                await self._publish(session, [ev.ProviderError(
                    code="provider_not_configured", message=str(exc), fatal=True)])
                return
            except InvalidStatus as exc:
                status = exc.response.status_code
                PROVIDER_ERRORS.labels(name, f"http_{status}").inc()
                failures = MAX_CONNECT_FAILURES if status in _FATAL_HTTP else failures + 1
                reason = f"http {status}"
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                PROVIDER_ERRORS.labels(name, type(exc).__name__).inc()
                failures += 1
                reason = type(exc).__name__
            finally:
                session.connected = False
                session.ws = None
            if session.closed:
                return
            if session.open_response is not None:
                # The response that was cut is closed towards the client, never left hanging.
                await self._publish(session, [ev.ResponseDone(
                    response_id=session.open_response, status="failed", reason="provider_disconnected")])
            if failures >= MAX_CONNECT_FAILURES:
                await self._publish(session, [ev.ProviderError(
                    code="provider_unavailable", message=f"{name} unavailable ({reason})", fatal=True)])
                return
            # Closed on purpose (a config Gemini takes only at setup, a provider going away): back at once.
            planned = getattr(session.codec, "needs_reconnect", False) or session.rotating
            session.rotating, session.rotate_by = False, None
            delay = 0.0 if planned else min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**failures) * random.uniform(0.5, 1)
            if not planned:
                UPSTREAM_RECONNECTS.labels(name).inc()
                await self._publish(session, [ev.Notice(
                    code="provider_reconnecting", message=f"{name} connection lost ({reason}); reconnecting")])
            log.warning("upstream lost", extra={"sid": session.meta.sid, "reason": reason, "delay_s": delay})
            await asyncio.sleep(delay)

    async def _run_upstream(self, session: _Session) -> bool:
        """One upstream connection, from connect to close. Returns whether it opened."""
        assert self.store is not None
        provider = session.provider
        # The history must hold everything this session already said (a provider reconnect, a Gemini
        # reconfiguration, a client back on the same session moments after it left): let the checkpoint
        # fold what the stream holds for it first (bounded; immediate for a new session).
        snapshot, session.resume_snapshot = session.resume_snapshot, None
        if snapshot is None:  # not the first connection of a replacement, which has just read it
            await self._await_checkpoint(session.meta.sid, timeout_s=1.0)
            snapshot = await self.store.snapshot(session.meta.sid)
        if session.codec is not None:
            # A reconnect: the input the lost connection had not committed went with it.
            await self._replaying(session, self._queue_uncommitted(session, snapshot, upto=session.last_up))
        config = session.config or snapshot.config
        if config is None and provider.capabilities.config_before_connect:
            # Gemini takes its config in the first frame: give the client a moment to send it.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(session.config_seen.wait(), self.config.gemini_setup_wait_ms / 1000)
            config = session.config
        config = config or ev.SessionConfig()
        # The config the codec starts with already covers queued config events, and the history already
        # holds items the checkpoint folded after they were queued: neither may be sent twice.
        in_history = {item.id for item in snapshot.items}
        session.pending = collections.deque(
            e for e in session.pending
            if not isinstance(e, ev.SessionConfig) and not (isinstance(e, ev.ItemCreate) and e.item.id in in_history)
        )
        url, headers = provider.endpoint(session.model)
        # History is always restored from our own log, never from a Gemini resumption handle: a handle
        # only covers what the provider had consumed at its last update, so items sent after it (or queued
        # while reconnecting) would be lost, and the log is the source of truth anyway.
        codec = session.codec = provider.codec(session.meta, session.model)
        async with websockets.connect(
            url, additional_headers=headers, max_size=None, compression=None, open_timeout=10,
            ping_interval=20, ping_timeout=20,
        ) as ws:
            session.ws = ws
            if session.closed:
                # Dropped while connecting, and the cancellation got lost on the way (Python 3.11's
                # asyncio.wait_for, used by nats-py requests, can swallow one): never serve a dropped session.
                return True
            PROVIDER_CONNECTS.labels(session.meta.provider).inc()
            log.info("upstream connect", extra={
                "sid": session.meta.sid, "items": len(snapshot.items), "pending": len(session.pending),
                "config": "session" if session.config is not None else "snapshot" if snapshot.config else "default",
                "vad": config.turn_detection is not None,
                "replayed": [type(e).__name__ for e in itertools.islice(session.pending, 8)]})
            session.clock, session.speech_ends = InputClock(), {}  # a new connection's audio starts at 0
            await self._apply(session, codec.connect(config, snapshot.items))
            while session.pending:
                await self._encode(session, session.pending.popleft())
            session.connected = True  # no await between the empty check and this line
            session.overflowed = 0
            async for frame in ws:
                FRAMES.labels("worker", "provider_in").inc()
                try:
                    out = codec.feed(frame)
                except Exception:
                    log.exception("codec failed on a provider frame", extra={"sid": session.meta.sid})
                    out = Out(events=[_INTERNAL_ERROR])
                await self._apply(session, out)
        return True
