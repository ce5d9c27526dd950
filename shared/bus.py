"""NATS bus: the one table of subjects, the control messages, and connection helpers.

Everything on the bus is msgpack (msgspec). Audio is raw bytes inside canonical events; client frames
travel as the client sent them (``cin``) or as the client will receive them (``cout``).
The hot path is core NATS publish; a JetStream stream captures ``rs.s.>`` for the checkpoint and for
replay (see ``ensure_stream``). The ``log`` part of ``up``/``down`` is published with acks (``publish_logged``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import itertools
import json
import logging
import os
import time
from typing import Literal, TypeVar

import msgspec
import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from shared import events as ev
from shared.metrics import BUS_RECONNECTS, LOG_PUBLISH_GAVE_UP, LOG_PUBLISH_RETRIES
from shared.session import SessionMeta
from shared.store import LOGGED_EVENTS

__all__ = [
    "BATCH_ENDS",
    "CHECKPOINT_CONSUMER",
    "STREAM",
    "AckRetry",
    "AssignReply",
    "AssignRequest",
    "ClientIn",
    "ClientOut",
    "Control",
    "Health",
    "Heartbeat",
    "OutageGate",
    "Signal",
    "Subjects",
    "SwitchCommand",
    "SwitchResult",
    "Takeover",
    "age_of",
    "check_frame_limit",
    "check_server_version",
    "connect",
    "decode",
    "encode",
    "ensure_stream",
    "last_in_stream",
    "parse_version",
    "part",
    "publish_logged",
    "ready",
    "replay",
    "replay_seq",
    "runs",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

STREAM = "RS_SESSIONS"
# The checkpoint's durable consumer of the stream: its acknowledged position is what the log holds.
CHECKPOINT_CONSUMER = "checkpoint"
REPLAY_MAX_S = 15.0  # the longest a replacement's catch-up read may take (see replay_seq)
DIRECT_BATCH = 256  # messages per direct-get request of a replay
# What a ``ClientIn`` adds around a client frame (msgpack array, epoch, seq, bin header, flag) plus the
# protocol line, with room to spare: a frame of RS_MAX_FRAME_BYTES must fit max_payload with it.
FRAME_OVERHEAD_BYTES = 1024
# Batched direct gets (replay_seq) came with nats-server 2.11.
MIN_SERVER_VERSION = (2, 11, 0)


class Subjects:
    """The one table of subjects. ``sid`` is always a session key (subject-safe), never client text."""

    ASSIGN_TRANSFORMER = "rs.assign.transformer"
    QUEUE_TRANSFORMER = "transformers"
    QUEUE_CHECKPOINT = "checkpoints"

    @staticmethod
    def assign_worker(provider: str) -> str:
        return f"rs.assign.worker.{provider}"

    @staticmethod
    def queue_worker(provider: str) -> str:
        return f"workers.{provider}"

    @staticmethod
    def cin(sid: str) -> str:  # edge -> transformer: client frames as received
        return f"rs.s.{sid}.cin"

    # ``up`` and ``down`` come in two parts: ``log`` carries envelopes with an event the conversation log
    # folds (items, commits, config...), ``live`` everything else (audio, deltas: most of the traffic).
    # The checkpoint consumes only ``log``; the stream keeps both as the replay window. Members subscribe
    # to ``*`` with one subscription, so the order between the parts is the order of publication.
    @staticmethod
    def up(sid: str, part: str = "*") -> str:  # transformer -> worker: canonical Up events
        return f"rs.s.{sid}.up.{part}"

    @staticmethod
    def down(sid: str, part: str = "*") -> str:  # worker -> transformer: canonical Down events
        return f"rs.s.{sid}.down.{part}"

    @staticmethod
    def cout(sid: str) -> str:  # transformer -> edge: encoded client frames
        return f"rs.s.{sid}.cout"

    @staticmethod
    def ctl(sid: str) -> str:  # any -> session members: close, epoch change
        return f"rs.s.{sid}.ctl"

    @staticmethod
    def signal(sid: str) -> str:  # session members -> the edge holding it: switch requests, provider health
        return f"rs.s.{sid}.sig"

    @staticmethod
    def health(provider: str) -> str:  # edge -> every edge: a session's success or failure on a provider
        return f"rs.health.{provider}"

    HEALTH = "rs.health.*"

    @staticmethod
    def edge_switch(instance: str) -> str:  # any edge -> the edge holding a session: an operator's switch
        return f"rs.edge.{instance}.switch"

    @staticmethod
    def edge_takeover(instance: str) -> str:  # the edge a client reconnected to -> the edge that held it
        return f"rs.edge.{instance}.takeover"

    @staticmethod
    def heartbeat(kind: str, instance: str) -> str:
        return f"rs.hb.{kind}.{instance}"

    @staticmethod
    def probe(instance: str, boot: str) -> str:  # edge -> one process incarnation: "are you alive?"
        return f"rs.probe.{instance}.{boot}"

    HEARTBEATS = "rs.hb.>"

    # Parsers: the inverse of the builders above, so no caller reads subjects by position.
    _SESSION_PREFIX = "rs.s."
    _ASSIGN_PREFIX = "rs.assign."

    @staticmethod
    def session_of(subject: str) -> str | None:
        """``rs.s.<sid>.<...>`` -> sid; None for a subject of no session."""
        if not subject.startswith(Subjects._SESSION_PREFIX):
            return None
        sid, dot, _ = subject[len(Subjects._SESSION_PREFIX):].partition(".")
        return sid if sid and dot else None

    @staticmethod
    def assign_role(subject: str) -> str | None:
        """``rs.assign.transformer`` -> transformer, ``rs.assign.worker.<provider>`` -> worker; else None."""
        if not subject.startswith(Subjects._ASSIGN_PREFIX):
            return None
        return subject[len(Subjects._ASSIGN_PREFIX):].partition(".")[0] or None

    @staticmethod
    def heartbeat_of(subject: str) -> tuple[str, str] | None:
        """``rs.hb.<kind>.<instance>`` -> (kind, instance); None for anything else."""
        parts = subject.split(".", 3)
        if len(parts) != 4 or parts[:2] != ["rs", "hb"] or not parts[2] or not parts[3]:
            return None
        return parts[2], parts[3]
    # ``cout`` is kept for clients that reconnect with ``rs_resume`` (the frames they missed are read back
    # from it; cost measured in docs/entry-points.md, "Resume with missed events").
    STREAM_SUBJECTS = ["rs.s.*.cin", "rs.s.*.up.*", "rs.s.*.down.*", "rs.s.*.cout"]
    CHECKPOINT_SUBJECTS = ["rs.s.*.up.log", "rs.s.*.down.log"]


def part(events: list[ev.Event]) -> str:
    """The part of ``up``/``down`` an envelope goes on: ``log`` when the checkpoint must see it."""
    return "log" if any(type(event) in LOGGED_EVENTS for event in events) else "live"


# -- batching: several frames or events per bus message (docs/bench.md, "Batching") ------------------
# The bus costs per message, not per byte: a sender takes every frame that is already there (never waiting
# for one) and publishes them together.

# Events that end a coalesced provider read: what follows them must be read after their effects (a turn
# end lets a switch cut over; an error or a goAway changes the upstream's state).
BATCH_ENDS: tuple[type, ...] = (ev.ResponseDone, ev.ProviderError, ev.GoAway)


def runs(events: list[ev.Event]) -> list[list[ev.Event]]:
    """``events`` cut into the fewest consecutive runs of one part each, in order: a coalesced batch goes
    out as one envelope per run, so the checkpoint (``log`` only) never receives the batch's audio."""
    out: list[list[ev.Event]] = []
    current = ""
    for event in events:
        kind = "log" if type(event) in LOGGED_EVENTS else "live"
        if kind != current or not out:
            out.append([])
            current = kind
        out[-1].append(event)
    return out


def ready(ws: object) -> bool:
    """A whole message is already received on the websocket ``ws`` (websockets' asyncio connection): its
    ``recv()`` returns at once, without waiting. False when unsure (another websockets version): no batch."""
    queue = getattr(getattr(getattr(ws, "recv_messages", None), "frames", None), "queue", None)
    return bool(queue) and bool(getattr(queue[0], "fin", False))


class AssignRequest(msgspec.Struct, frozen=True, kw_only=True):
    meta: SessionMeta
    epoch: int  # the epoch this member stamps on what it publishes
    peer_epoch: int = 0  # the other member's epoch: older envelopes from that side are fenced (0 = epoch)
    resume: bool = False  # a replacement: rebuild state from the snapshot and the stream, greet nobody
    reply_to_edge: str = ""  # the edge instance that holds the client socket
    # Transformer resume: (worker epoch, down seq) of the newest provider output the client was sent;
    # a replacement sends the client what came after it (it was published while nobody translated).
    delivered_down: tuple[int, int] = (0, 0)
    # A provider switch (worker only): the provider the session leaves, why, and when it was decided
    # (wall clock, ms). The new worker publishes ``events.Switched`` first on ``down`` once it is ready.
    switch_from: str = ""
    switch_reason: str = ""
    switch_started_ms: int = 0
    # A replacement (``resume``, not a switch): when the edge found the old member dead (wall clock, ms).
    # The new worker tells clients that asked for notices how long the session was without one.
    resume_started_ms: int = 0
    # Transformer: the client event seq to number above at least (a resuming client's ``rs_resume``, for
    # when the stream no longer holds the session's last ``cout``).
    seq_floor: int = 0


class AssignReply(msgspec.Struct, frozen=True, kw_only=True):
    instance: str
    boot: str = ""  # this process incarnation: a restarted instance under the same name is another one
    providers: list[str] = []  # a worker's providers: whether it can switch a session itself
    ok: bool = True
    error: str | None = None


class ClientIn(msgspec.Struct, frozen=True, array_like=True):
    epoch: int
    seq: int
    data: bytes
    binary: bool = False
    sent: float = msgspec.field(default_factory=time.time)  # per-hop latency (see events.Envelope.sent)


class ClientOut(msgspec.Struct, frozen=True, array_like=True):
    epoch: int
    seq: int
    frames: list[str]
    close_code: int | None = None
    close_reason: str = ""
    down: tuple[int, int] = (0, 0)  # the down envelope (epoch, seq) these frames came from; (0, 0): none
    sent: float = msgspec.field(default_factory=time.time)  # per-hop latency (see events.Envelope.sent)
    # The session-wide event seq of ``frames[0]`` (the next frames follow it: first+1, ...): what a client
    # resumes from (``rs_resume``). 0: the frames are not numbered (the gateway's own Gemini messages).
    first: int = 0


class Control(msgspec.Struct, frozen=True, kw_only=True):
    """``close``: the client left. ``replace``: ``role`` ("worker"/"transformer") now runs at ``epoch`` on
    another instance; ``drop`` names the replaced instance, which must let go if it is still alive.
    ``switch``: the session's worker moves the conversation to ``provider`` itself, make-before-break: it
    opens and restores the new upstream while the old one answers, cuts over at the turn end (``when``
    "turn_end") or at once ("now": the old upstream is failing; its open response is ended cleanly), then
    publishes ``events.Switched`` on ``down`` and ``Signal(kind="ready")``, or ``Signal(kind="failure",
    reason="switch_failed")`` when the new upstream cannot be had. ``provider`` equal to the current one is
    a recycle (goAway, session cap): a fresh connection of the same provider, the same way."""

    kind: Literal["close", "replace", "switch"]
    epoch: int
    role: str = ""
    drop: str = ""
    code: int = 1000
    reason: str = ""  # close: the close reason; switch: why ("manual", "latency", "failure", "stall", ...)
    provider: str = ""  # switch: the target provider
    when: Literal["now", "turn_end"] = "now"  # switch
    started_ms: int = 0  # switch: wall clock of the decision, for the client-heard gap


class Signal(msgspec.Struct, frozen=True, kw_only=True):
    """Session member -> the edge holding the session (``Subjects.signal``): what the switch policy reads.

    ``switch``: the client asked (``provider``, ``when``). ``turn``: a response got its first audio
    ``value_ms`` after the end of user speech or ``response.create``. ``failure``: the upstream failed
    (``reason``: connect, http_429, http_5xx, error, close_1011). ``stall``: a response open and no upstream
    bytes for ``value_ms``. ``idle``/``busy``: the worker has no response open / has one (turn boundaries;
    an ``idle`` says in ``reason`` how the response ended: completed, incomplete, failed, cancelled).
    ``ready``: a worker that took the session over in a switch has its upstream ready (``value_ms``: the
    gap since the decision)."""

    kind: Literal["switch", "turn", "failure", "stall", "idle", "busy", "ready"]
    epoch: int
    provider: str = ""
    when: Literal["now", "turn_end"] = "turn_end"
    value_ms: float = 0.0
    reason: str = ""


class Health(msgspec.Struct, frozen=True, kw_only=True):
    """One session's experience of a provider, published by the edge that holds it on
    ``Subjects.health(provider)``; every edge folds them into its fleet breaker (services/edge)."""

    provider: str
    session: str  # session key (never the client's id)
    ok: bool


class SwitchCommand(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's switch of a session held by another edge (request on ``Subjects.edge_switch``)."""

    sid: str
    provider: str
    when: Literal["now", "turn_end"] = "turn_end"


class SwitchResult(msgspec.Struct, frozen=True, kw_only=True):
    ok: bool
    provider: str = ""
    reason: str = ""
    gap_ms: float = 0.0
    error: str = ""


class Takeover(msgspec.Struct, frozen=True, kw_only=True):
    """A second connection with the same session id took the session over (published by its edge on
    ``Subjects.edge_takeover(<the edge named in the session record>)``): the holder closes its connection
    at an older ``epoch`` (docs/entry-points.md, "One connection per session")."""

    sid: str
    epoch: int  # the new connection's epoch: connections below it are the ones taken over
    by: str = ""  # the edge instance now holding the session
    # The new connection resumed with the session's running transformer and worker (``rs_resume``): the
    # holder must not close them when its connection ends.
    members_kept: bool = False


class Heartbeat(msgspec.Struct, frozen=True, kw_only=True):
    kind: str
    instance: str
    sessions: int
    boot: str = ""  # see AssignReply.boot
    providers: list[str] = []


_ENC = msgspec.msgpack.Encoder()
_DECODERS: dict[type, msgspec.msgpack.Decoder] = {}


def encode(obj: msgspec.Struct) -> bytes:
    return _ENC.encode(obj)


def decode(data: bytes, kind: type[T]) -> T:
    dec = _DECODERS.get(kind)
    if dec is None:
        dec = _DECODERS[kind] = msgspec.msgpack.Decoder(kind)
    return dec.decode(data)


async def connect(url: str, *, name: str) -> NATS:
    """Connect with capped reconnects forever: a NATS restart pauses sessions, it does not kill them.

    ``url`` may list several servers, comma-separated (a cluster): the client picks one and moves to
    another (or to one the cluster announced) when its server goes away."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error", extra={"error": type(exc).__name__})

    async def on_disconnected() -> None:
        log.warning("nats disconnected")

    async def on_reconnected() -> None:
        BUS_RECONNECTS.inc()
        log.info("nats reconnected")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.25,
        connect_timeout=2,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
        pending_size=64 * 1024 * 1024,
    )


# After this process's connection is back on a restarted nats-server, the time its peers get to re-subscribe.
OUTAGE_GRACE_S = 1.0


class OutageGate:
    """Session traffic published while the bus is down, and for ``grace_s`` after it is back, is held here and
    then sent in order.

    Why: nats-py keeps what is published during an outage and flushes it the moment its own connection is
    back, before the peers (reconnecting on their own schedule) have re-subscribed on the restarted server,
    which drops a message nobody subscribes to (core NATS is at most once): a request, or the end of a
    response, was lost and the client waited for ever. The memory stream is re-created after the reconnect
    too, so the log missed it as well. Held until the peers are back, nothing published during an outage is
    lost (what was in the dead socket's buffer at the kill still is). A bus that never went down costs one
    check per publish."""

    def __init__(self, nc: NATS, grace_s: float = OUTAGE_GRACE_S) -> None:
        self.nc = nc
        self.grace_s = grace_s
        self._reconnects = nc.stats["reconnects"]
        self._open_at = 0.0  # monotonic time the grace after the last reconnect ends
        self._held: list[tuple[str, bytes]] = []
        self._drainer: asyncio.Task[None] | None = None

    def closed(self) -> bool:
        if not self.nc.is_connected:
            return True
        if self.nc.stats["reconnects"] != self._reconnects:
            self._reconnects = self.nc.stats["reconnects"]
            self._open_at = time.monotonic() + self.grace_s
        return time.monotonic() < self._open_at

    async def publish(self, subject: str, payload: bytes) -> None:
        if self._held or self.closed():
            self._held.append((subject, payload))
            if self._drainer is None:
                self._drainer = asyncio.create_task(self._drain())
            return
        await self.nc.publish(subject, payload)

    async def _drain(self) -> None:
        try:
            while self.closed():
                await asyncio.sleep(max(0.02, self._open_at - time.monotonic()))
            held = 0
            while self._held:  # what is published meanwhile joins the end: order kept
                subject, payload = self._held.pop(0)
                await self.nc.publish(subject, payload)
                held += 1
            log.info("held during a bus outage, sent", extra={"messages": held})
        finally:
            self._drainer = None


def check_frame_limit(nc: NATS, max_frame_bytes: int) -> None:
    """Refuse to start when the configured client frame limit does not fit one bus message: a frame the edge
    accepts must reach the transformer whole (raises RuntimeError with what to change)."""
    max_payload = nc.max_payload
    if max_frame_bytes + FRAME_OVERHEAD_BYTES > max_payload:
        raise RuntimeError(
            f"RS_MAX_FRAME_BYTES={max_frame_bytes} does not fit the bus: nats-server max_payload is {max_payload} "
            f"bytes and a frame needs {FRAME_OVERHEAD_BYTES} more; set RS_MAX_FRAME_BYTES <= "
            f"{max_payload - FRAME_OVERHEAD_BYTES} or raise max_payload in the nats-server config")


def parse_version(text: str) -> tuple[int, ...]:
    """``2.11.3`` / ``v2.12.0-RC.1`` -> (2, 11, 3) / (2, 12, 0); unreadable parts count as 0."""
    numbers: list[int] = []
    for piece in text.lstrip("v").split("-", 1)[0].split(".")[:3]:
        numbers.append(int(piece) if piece.isdigit() else 0)
    return tuple(numbers + [0] * (3 - len(numbers)))


def check_server_version(nc: NATS) -> str:
    """The nats-server version; RuntimeError when it is older than the replay needs (batched direct gets)."""
    version = str(nc._server_info.get("version", ""))  # nats-py keeps the INFO block only there
    if parse_version(version) < MIN_SERVER_VERSION:
        need = ".".join(map(str, MIN_SERVER_VERSION))
        raise RuntimeError(
            f"nats-server {version or '(unknown version)'} is too old: realtime-switch needs {need} or newer "
            "(session replay uses batched direct gets)")
    return version


async def ensure_stream(
    nc: NATS, *, first_seq: int = 1, max_age_s: float = 120.0, max_bytes: int = 1024 * 1024 * 1024
) -> None:
    """Create (or update) the session stream.

    ``first_seq`` applies when the stream is created: after a nats-server restart the (memory) stream is
    created anew, and its sequence must go on after the last one the checkpoint used, because the log
    orders items by stream sequence (``Store.stream_floor``).

    Memory storage on purpose: the stream is a short replay window and a feed for the checkpoint, which
    writes the durable record to Redis within milliseconds. File storage would put an fsync-bound disk
    write behind every audio frame for data that Redis already keeps; if nats-server restarts, the
    window is lost but the conversation log in Redis is not. The window only has to cover the input
    since the last commit (one turn), so it is short and capped in bytes: at 100 live sessions the
    client and canonical audio together are ~11 MB/s, so 1 GiB holds about 90 s of everything.

    On a cluster of 3+ nodes the stream is replicated R3 and file-backed: measured on one 2-core box
    (``python -m ops.bench.stream_storage``) file and memory R3 are within noise of each other (nats-server
    does not fsync per message), and a node restarted after kill -9 recovers its replica from its own disk
    instead of copying the whole window from the leader (docs/scaling.md).
    """
    js = nc.jetstream()
    replicas = stream_replicas(nc)
    config = StreamConfig(
        name=STREAM,
        num_replicas=replicas,
        subjects=Subjects.STREAM_SUBJECTS,
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE if replicas >= 3 else StorageType.MEMORY,
        max_age=max_age_s,
        max_bytes=max_bytes,
        discard=DiscardPolicy.OLD,
        allow_direct=True,  # replays read with batched direct gets (replay_seq)
    )
    for attempt in range(50):
        try:
            try:
                info = await js.stream_info(STREAM)
                # Never scale down: a member that connects while a node is away sees a smaller cluster.
                replicas = max(info.config.num_replicas or 1, config.num_replicas or 1)
                # A stream's storage cannot change: keep what it was created with.
                await js.update_stream(dataclasses.replace(
                    config, num_replicas=replicas, storage=info.config.storage or config.storage
                ))
            except nats.js.errors.NotFoundError:
                try:
                    await js.add_stream(dataclasses.replace(config, first_seq=first_seq))
                except nats.js.errors.BadRequestError:
                    continue  # another service created it at the same moment: the next round updates it
            return
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            await asyncio.sleep(min(0.1 * (attempt + 1), 1.0))
    raise RuntimeError("JetStream not available")


def stream_replicas(nc: NATS) -> int:
    """3 on a cluster of 3 or more nodes (the stream survives the loss of one), else 1. The server's INFO
    lists the client URLs of every cluster member it knows (itself included)."""
    urls = (nc._server_info or {}).get("connect_urls") or []  # nats-py keeps the INFO only there
    return 3 if len(urls) >= 3 else 1


def envelope(epoch: int, seq: int, events: list[ev.Event]) -> bytes:
    return ev.encode_envelope(ev.Envelope(epoch, seq, events))  # type: ignore[arg-type]


async def last_in_stream(nc: NATS, subject: str) -> tuple[bytes, float] | None:
    """The newest message on ``subject`` still in the stream and its age in seconds, or None."""
    try:
        msg = await nc.jetstream().get_last_msg(STREAM, subject, direct=True)
    except nats.js.errors.NotFoundError:
        return None
    stored = msg.time or datetime.datetime.now(datetime.UTC)
    return msg.data or b"", max(0.0, (datetime.datetime.now(datetime.UTC) - stored).total_seconds())


async def age_of(nc: NATS, position: int) -> float | None:
    """Seconds since the message at stream ``position`` was stored (None: no longer in the stream)."""
    try:
        msg = await nc.jetstream().get_msg(STREAM, seq=position, direct=True)
    except (nats.js.errors.NotFoundError, nats.js.errors.BadRequestError):
        return None
    if msg.time is None:
        return None
    return max(0.0, (datetime.datetime.now(datetime.UTC) - msg.time).total_seconds())


async def replay(
    nc: NATS, subject: str, *, since_s: float | None = None, timeout_s: float = 2.0
) -> list[bytes]:
    """Every message on ``subject`` still in the stream, oldest first (a replacement's catch-up read);
    with ``since_s``, only those of the last ``since_s`` seconds.

    Reads until nothing more is pending; what arrives meanwhile also reaches the caller's live
    subscription, which deduplicates by seq.
    """
    return [data for _, data in await replay_seq(nc, subject, since_s=since_s, timeout_s=timeout_s)]


async def replay_seq(
    nc: NATS, subject: str, *, start_seq: int = 0, since_s: float | None = None, timeout_s: float = 2.0,
    max_s: float = REPLAY_MAX_S,
) -> list[tuple[int, bytes]]:
    """Like ``replay``, with each message's stream sequence, from ``start_seq`` on (0: the oldest).

    The stream sequence orders messages across subjects (e.g. an ``up`` request vs a ``down`` answer).
    Batched direct gets (NATS >= 2.11): one request per ``DIRECT_BATCH`` messages and no consumer to
    create and delete, which matters when a dead instance's sessions all replay at once.
    ``timeout_s`` bounds the wait for each next message, ``max_s`` the whole read: an incomplete replay
    loses input, so a slow one is waited for.
    """
    request: dict[str, object] = {"next_by_subj": subject, "batch": DIRECT_BATCH}
    if start_seq:
        request["seq"] = start_seq
    elif since_s is not None:
        since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=since_s)
        request["start_time"] = since.isoformat().replace("+00:00", "Z")
    else:
        request["seq"] = 1
    replies: asyncio.Queue[Msg] = asyncio.Queue()

    async def collect(msg: Msg) -> None:
        replies.put_nowait(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=collect)
    out: list[tuple[int, bytes]] = []
    try:
        async with asyncio.timeout(max_s):
            while True:
                await nc.publish(f"$JS.API.DIRECT.GET.{STREAM}", json.dumps(request).encode(), reply=inbox)
                while True:
                    msg = await asyncio.wait_for(replies.get(), timeout_s)
                    headers = msg.headers or {}
                    status = headers.get("Status")
                    if status is None:
                        out.append((int(headers["Nats-Sequence"]), msg.data))
                    elif status == "204":  # end of this batch
                        break
                    elif status == "404":  # nothing (more) on the subject
                        return out
                    else:
                        raise RuntimeError(f"direct get answered {status} {headers.get('Description', '')}")
                if int(headers.get("Nats-Num-Pending", "0")) == 0:
                    return out
                # Go on after the last one read (later ones arrive on the caller's live subscription too).
                last = int(headers["Nats-Last-Sequence"])
                request = {"next_by_subj": subject, "batch": DIRECT_BATCH, "seq": last + 1}
    except TimeoutError:
        log.warning("stream replay incomplete", extra={"subject_kind": subject.rsplit(".", 1)[-1], "got": len(out)})
        return out
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# -- acked publishes: the ``log`` part ---------------------------------------------------------------
# Everything else on the bus is a core publish the stream captures. That loses what is published while
# the stream has no leader (a killed leader node: 4-9 s until the survivors elect one) or no stream at all
# (a restarted single server before the stream is created again). The ``log`` part is what the checkpoint
# folds into Redis (``Subjects.CHECKPOINT_SUBJECTS``: items, commits, transcripts, config), a few
# envelopes per turn: those are published as JetStream requests and retried until the stream acks them.
# The retry carries the first attempt's ``Nats-Msg-Id``, so the stream stores the envelope once (its
# duplicate window is the default 2 min); members that received a copy live drop the second one by seq.

LOG_ATTEMPT_S = 1.0  # one request's wait for the ack (an ack takes ~1 ms; a leader may be gone)
LOG_PUBLISH_MAX_S = 20.0  # give up after this: two raft elections and a reconnect fit in it
_MSG_ID_PREFIX = os.urandom(6).hex()  # this process; the counter makes each envelope's id unique
_MSG_IDS = itertools.count(1)


@dataclasses.dataclass
class AckRetry:
    """When to try an unacknowledged publish again: exponential from ``first_s`` up to ``cap_s`` between
    tries (the cap bounds how long after a new leader is elected the envelope waits), none after ``max_s``
    since ``start``. Times are loop seconds; sans-I/O."""

    start: float
    max_s: float = LOG_PUBLISH_MAX_S
    first_s: float = 0.05
    cap_s: float = 0.5
    _next: float = 0.0

    def delay(self, now: float) -> float | None:
        """Seconds to wait before the next try, or None: give up (the next try would end past ``max_s``)."""
        wait = self._next or self.first_s
        if now + wait > self.start + self.max_s:
            return None
        self._next = min(wait * 2, self.cap_s)
        return wait


class _PubAck(msgspec.Struct, frozen=True):
    """JetStream's answer to a publish: ``seq`` when stored, ``error`` when refused (e.g. no leader)."""

    seq: int = 0
    duplicate: bool = False
    error: dict[str, object] | None = None


_PUBACK_DEC = msgspec.json.Decoder(_PubAck)


def log_msg_id() -> str:
    """A fresh deduplication id for one envelope (unique across processes and restarts)."""
    return f"{_MSG_ID_PREFIX}.{next(_MSG_IDS)}"


async def publish_logged(
    nc: NATS, subject: str, payload: bytes, *, max_s: float = LOG_PUBLISH_MAX_S, attempt_s: float = LOG_ATTEMPT_S
) -> int:
    """Publish a ``log`` envelope and return once the stream has stored it: its stream sequence, or 0 when
    it was not acknowledged within ``max_s`` (logged; the envelope may still have been stored).

    The caller awaits it on the session's own path (a subscription callback or upstream loop per session),
    so the session's later envelopes follow it and no other session waits. Each try is also delivered to
    the session's members like a core publish; they drop repeats by envelope seq."""
    loop = asyncio.get_running_loop()
    headers = {"Nats-Msg-Id": log_msg_id()}
    retry = AckRetry(loop.time(), max_s=max_s)
    tries = 0
    while True:
        tries += 1
        why = ""
        try:
            reply = await nc.request(subject, payload, timeout=attempt_s, headers=headers)
            ack = _PUBACK_DEC.decode(reply.data)
            if ack.error is None and ack.seq:
                if tries > 1:
                    log.info("log envelope stored after retries", extra={"tries": tries, "seq": ack.seq})
                return ack.seq
            why = str((ack.error or {}).get("description", "no sequence"))
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            why = type(exc).__name__  # no leader (yet), or our server is gone and the client reconnects
        except msgspec.DecodeError:
            why = "unreadable ack"
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            log.error("log envelope not stored: connection closed", extra={"subject_kind": "log"})
            return 0
        delay = retry.delay(loop.time())
        if delay is None:
            LOG_PUBLISH_GAVE_UP.inc()
            log.error("log envelope not acknowledged", extra={"tries": tries, "error": why})
            return 0
        LOG_PUBLISH_RETRIES.inc()
        await asyncio.sleep(delay)
