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
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors
import websockets
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from redis.exceptions import RedisError
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosedOK, InvalidStatus

from services.provider_worker import replay
from services.provider_worker.switchplan import (
    Action,
    OpenRequest,
    Phase,
    SwitchPlan,
    TurnLog,
    age_left_s,
    delta_items,
    from_own_log,
    given_ids,
)
from services.provider_worker.switchplan import Signal as PlanSignal
from services.provider_worker.upstream import (
    Backoff,
    IllegalTransition,
    InputLoss,
    StallWatch,
    Trigger,
    TurnTimer,
    Upstream,
    ends_connection,
    error_failure,
    failure_reason,
    step,
    switched_event,
)
from shared import bus
from shared import events as ev
from shared.bus import Subjects
from shared.codecs.base import Out, ProviderCodec, Wake
from shared.config import Config
from shared.metrics import (
    PROVIDER_CONNECTS,
    PROVIDER_ERRORS,
    REPLAYED,
    SESSIONS,
    TIME_TO_FIRST_AUDIO,
    UPSTREAM_RECONNECTS,
    UPSTREAM_ROTATIONS,
    frame_counter,
    observe_hop,
)
from shared.providers import AppendsHistory, Provider, ProviderNotConfigured, installed_providers, load_provider
from shared.runtime import BOOT, TaskSet, heartbeat_loop, instance_id, stream_id
from shared.session import SessionMeta
from shared.store import Snapshot, Store

__all__ = ["InputClock", "ProviderWorker"]

log = logging.getLogger(__name__)

# A resume waits this long at most for a lagging checkpoint: longer than the consumer's ack_wait, after
# which what a killed checkpoint had fetched is delivered again.
CHECKPOINT_WAIT_S = 3.0
PENDING_LIMIT = 3_000  # events held while upstream connects: ~60 s of 20 ms audio frames
CHECKPOINT_POLL_S = 0.02  # one Redis GET per session per poll while a checkpoint lags
HANDOVER_POLL_S = 0.002  # ... at a make-before-break cutover, where the client hears the wait (a few polls)
BACKOFF_BASE_S = 0.1
BACKOFF_CAP_S = 5.0
SHORT_LIVED_S = 3.0  # a connection lost sooner than this after its setup backs off, even a planned rotation
STALL_CREDIT_S = 0.5  # a log publish that waited longer (no stream leader) does not count towards a stall
CLOSE_TIMEOUT_S = 2.0  # a closing handshake a stalled provider never answers is given up after this
ROTATE_MARGIN_S = 1.0  # a connection going away is replaced at the latest this long before its end
DROP_WAIT_S = 2.0  # how long dropping a session waits for its upstream task to stop
BURST_MAX_BYTES = 256 * 1024  # provider frames coalesced into one read at most (``_read_burst``)
MAX_CONNECT_FAILURES = 8  # consecutive failed connects before the session is told it is over
_FATAL_HTTP = {400, 401, 403, 404}  # retrying cannot fix these
_TURN_ENDS_UP = (ev.ResponseCreate, ev.ActivityEnd)  # client events that end the user's turn (turn signal)
SignalKind = Literal["switch", "turn", "failure", "stall", "idle", "busy"]
_INTERNAL_ERROR = ev.ProviderError(code="internal_error", message="the gateway could not translate an event")
_FIRST_OUTPUT = (ev.OutputAudio, ev.OutputText)  # a response's first one ends a coalesced read (_ends_burst)


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


@dataclass
class _Prepared:
    """An upstream dialled, set up and given the history while the old one still answers."""

    provider: Provider
    meta: SessionMeta
    model: str
    config: ev.SessionConfig
    items: frozenset[str]  # ids of the history it was given (``given_ids``: not the ones with nothing to say)
    codec: ProviderCodec
    ws: ClientConnection
    opened_at: float
    outs: list[Out] = field(default_factory=list)  # what it sent meanwhile, decoded: published after the cutover
    base: int | None = None  # the TurnLog mark its history relies on (None: the checkpoint's alone)
    reader: asyncio.Task[None] | None = None


@dataclass
class _Move:
    """A make-before-break move under way: the pure plan, the order it carries out, what is prepared."""

    plan: SwitchPlan
    ctl: bus.Control
    prepared: _Prepared | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _ends_burst(session: _Session, events: list[ev.Event]) -> bool:
    """After these events the burst goes out as it is: a ``bus.BATCH_ENDS`` event, or a response's first
    output (the latency the client hears: it does not wait for the rest of the burst to be decoded)."""
    for event in events:
        if isinstance(event, bus.BATCH_ENDS):
            return True
        if isinstance(event, _FIRST_OUTPUT) and event.response_id != session.first_output:
            session.first_output = event.response_id
            return True
    return False


def _pieces(out: Out) -> list[Out]:
    """A coalesced burst as one ``Out`` per run of one bus part (``bus.runs``): the wire frames with the first,
    the close and the codec's timer with the last (after every event the burst decoded)."""
    runs = bus.runs(out.events) or [[]]
    last = len(runs) - 1
    return [Out(wire=out.wire if i == 0 else [], events=run, close=out.close if i == last else None,
                wake=out.wake if i == last else None)
            for i, run in enumerate(runs)]


async def _close_quietly(ws: ClientConnection, reason: str = "") -> None:
    with contextlib.suppress(Exception):
        await ws.close(1000, reason)


class _Session:
    def __init__(self, meta: SessionMeta, epoch: int, transformer_epoch: int, provider: Provider,
                 stall_s: float) -> None:
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
        self.state = Upstream.IDLE
        self.opened_at: float | None = None  # loop time the current connection's socket opened
        self.backoff = Backoff(base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, short_lived_s=SHORT_LIVED_S)
        self.config: ev.SessionConfig | None = None
        self.config_seen = asyncio.Event()
        self.pending: collections.deque[ev.Event] = collections.deque()
        self.input_loss = InputLoss.NONE
        self.open_response: str | None = None
        self.seq_down = 0
        self.first_output = ""  # the response whose first output went out (``_ends_burst``)
        self.rotate_by: float | None = None  # loop time the provider ends this connection (goAway)
        self.clock = InputClock()  # of the current provider connection
        self.stall = StallWatch(stall_s)  # of the current provider connection
        self.turns = TurnTimer()
        self.switch: bus.AssignRequest | None = None  # a switch to announce once the first upstream is ready
        self.reconfigure_at_turn_end = False  # a config the provider takes only on a new connection, mid-answer
        self.resumed_at_ms = 0  # a replacement: when the edge found the old worker dead (the notice's duration)
        self.switch_order: bus.Control | None = None  # a switch waiting for the turn end (``_cutover``)
        # What the session ran on before a switch still being connected: taken back if the new one fails.
        self.switch_revert: tuple[Provider, SessionMeta, str] | None = None
        self.wake = asyncio.Event()  # cuts a backoff wait short (a switch: dial the new provider now)
        self.mbb: _Move | None = None  # a make-before-break switch or recycle under way
        self.handover: _Prepared | None = None  # the prepared upstream the next connection takes over
        self.handover_plan: SwitchPlan | None = None  # ... and the plan that chose it (the gap, announce or not)
        self.recv_timeout: asyncio.Timeout | None = None  # the upstream read's: a handover ends the read now
        self.resume_snapshot: Snapshot | None = None  # what a replacement's resume read, for its first connect
        self.speech_ends: dict[str, int] = {}  # item id -> up seq where the provider heard speech stop
        self.turn_audio = replay.TurnAudio()  # spoken turns' audio, for a history without their transcript
        # The conversation as this worker saw it (recent items), and the TurnLog mark of the last fold of
        # the checkpoint it confirmed: together with a snapshot read after it, the whole history.
        self.turn_log = TurnLog()
        self.log_mark: int | None = None
        self.audio_seq = 0  # up seq of the newest input audio sent upstream
        self.committed_seq = 0  # ... up to which the provider committed (or the client cleared) the input
        self.unanswered = OpenRequest()  # the response request the upstream has not answered yet
        self.subs: list[Subscription] = []
        self.task: asyncio.Task[None] | None = None

    @property
    def closed(self) -> bool:
        return self.state is Upstream.CLOSED

    def to(self, trigger: Trigger) -> Upstream:
        """Apply one transition of ``upstream.TRANSITIONS``; an impossible one is a bug, logged, and ignored
        (the session goes on rather than dying on it)."""
        try:
            self.state = step(self.state, trigger)
        except IllegalTransition as exc:
            log.error("illegal upstream transition", extra={"sid": self.meta.sid, "transition": str(exc)})
        return self.state


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
        self.gate: bus.OutageGate | None = None  # session traffic held over a bus outage (bus.OutageGate)
        self.store: Store | None = None
        self._stream: tuple[int, str] | None = None  # (bus reconnects when read, the stream's id)

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        self.nc, self.store = nc, store
        self.gate = bus.OutageGate(nc)
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
        session = _Session(req.meta, req.epoch, req.peer_epoch or req.epoch, provider, self.config.stall_ms / 1000)
        session.replaying = req.resume
        session.switch = req if req.switch_from else None
        session.resumed_at_ms = req.resume_started_ms if req.resume and not req.switch_from else 0
        self.sessions[sid] = session
        SESSIONS.labels("worker").set(len(self.sessions))
        session.subs = [
            await self.nc.subscribe(Subjects.up(sid), cb=functools.partial(self._on_up, session)),
            await self.nc.subscribe(Subjects.ctl(sid), cb=functools.partial(self._on_ctl, session)),
        ]
        await self.nc.flush()
        reply = bus.AssignReply(instance=self.instance, boot=BOOT, providers=list(self.providers))
        await msg.respond(bus.encode(reply))
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
            self._tasks.spawn(self._drop(session.meta.sid, only=session))
        elif ctl.kind == "replace" and ctl.role == "transformer" and ctl.epoch > session.transformer_epoch:
            session.transformer_epoch = ctl.epoch
        elif ctl.kind == "switch" and ctl.epoch >= session.epoch:
            self._tasks.spawn(self._switch(session, ctl))

    # -- switching -------------------------------------------------------------------------------

    async def _switch(self, session: _Session, ctl: bus.Control) -> None:
        """The edge moves the session to ``ctl.provider`` (the same one: a fresh connection). At the turn
        end unless ``now``: a response being answered is finished on the old upstream first."""
        if ctl.provider not in self.providers or session.closed:
            await self._signal(session, "failure", reason="switch_failed")
            return
        move = session.mbb
        if move is not None and move.plan.active:
            if move.ctl.provider == ctl.provider and not move.plan.recycle and ctl.when == "turn_end":
                return  # the same switch again: already under way
            await self._abandon(session)  # superseded (a recycle gives way to a switch, which is a fresh one)
        if ctl.when == "turn_end" and session.state is Upstream.OPEN and session.ws is not None:
            self._begin(session, ctl, recycle=False)  # make-before-break; the edge waits for its ready signal
            return
        # Now (the old upstream is failing), or it is not up: break-before-make, as before.
        session.switch_order = ctl
        if ctl.when == "now" or session.open_response is None:
            await self._cutover(session)

    # -- make-before-break -----------------------------------------------------------------------

    def _begin(self, session: _Session, ctl: bus.Control, *, recycle: bool, deadline_s: float | None = None,
               delay_s: float = 0.0) -> None:
        """Open the new upstream now (after ``delay_s``: a recycle's backoff); ``_plan`` cuts over at the
        turn end (``deadline_s``: a recycle cannot wait longer than this for it)."""
        plan = SwitchPlan(to=ctl.provider, reason=ctl.reason, recycle=recycle, started_ms=int(time.time() * 1000))
        move = session.mbb = _Move(plan=plan, ctl=ctl)
        move.tasks.append(asyncio.create_task(self._prepare(session, move, delay_s)))
        if deadline_s is not None:
            move.tasks.append(asyncio.create_task(self._deadline(session, move, deadline_s)))
        log.info("preparing upstream", extra={"sid": session.meta.sid, "to": ctl.provider, "reason": ctl.reason,
                                              "recycle": recycle, "busy": session.open_response is not None})

    async def _prepare(self, session: _Session, move: _Move, delay_s: float = 0.0) -> None:
        """Dial the target, send its setup and the history as of now (the checkpoint's snapshot), and
        keep reading it (pings answered, frames decoded and kept) until the cutover."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        prepared: _Prepared | None = None
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        try:
            provider = self.providers[move.plan.to]
            meta = msgspec.structs.replace(session.meta, provider=move.plan.to)
            model = provider.model_for(meta.model)
            if not session.turn_log.covers(session.log_mark):
                # No base the worker's own log covers: the snapshot must hold the last turn itself.
                await self._await_checkpoint(session.meta.sid, timeout_s=1.0, poll_s=HANDOVER_POLL_S)
            base = session.log_mark if session.turn_log.covers(session.log_mark) else None
            snapshot = self._with_turn_audio(session, await self.store.snapshot(session.meta.sid))
            config = session.config or snapshot.config or ev.SessionConfig()
            url, headers = provider.endpoint(model)
            codec = provider.codec(meta, model)
            dialled = loop.time()
            ws = await websockets.connect(
                url, additional_headers=headers, max_size=None, compression=None, open_timeout=10,
                ping_interval=20, ping_timeout=20, close_timeout=CLOSE_TIMEOUT_S)
            connect_ms = round((loop.time() - dialled) * 1000, 1)
            prepared = _Prepared(provider=provider, meta=meta, model=model, config=config,
                                 items=given_ids(snapshot.items), codec=codec, ws=ws,
                                 opened_at=loop.time(), base=base)
            setup = codec.connect(config, snapshot.items)
            for frame in setup.wire:
                await ws.send(frame)
            prepared.outs.append(Out(events=setup.events, close=setup.close))
            PROVIDER_CONNECTS.labels(move.plan.to).inc()
        except asyncio.CancelledError:
            if prepared is not None:
                self._tasks.spawn(_close_quietly(prepared.ws))
            raise
        except Exception as exc:  # any failure to come up is the same answer: keep the old one
            log.warning("prepared upstream failed", extra={"sid": session.meta.sid, "to": move.plan.to,
                                                           "error": repr(exc)})
            if prepared is not None:
                self._tasks.spawn(_close_quietly(prepared.ws))
            if isinstance(exc, InvalidStatus):
                PROVIDER_ERRORS.labels(move.plan.to, f"http_{exc.response.status_code}").inc()
            if session.mbb is move:
                await self._plan(session, PlanSignal.PREPARE_FAILED)
            return
        if session.mbb is not move or session.closed:
            self._tasks.spawn(_close_quietly(prepared.ws))
            return
        move.prepared = prepared
        prepared.reader = asyncio.create_task(self._read_prepared(session, move, prepared))
        log.info("upstream prepared", extra={
            "sid": session.meta.sid, "to": move.plan.to, "items": len(prepared.items), "connect_ms": connect_ms,
            "prepare_ms": round((time.time() * 1000) - move.plan.started_ms)})
        await self._plan(session, PlanSignal.PREPARED)

    async def _read_prepared(self, session: _Session, move: _Move, prepared: _Prepared) -> None:
        """Until the cutover cancels it (``recv`` is cancel-safe): decode what the new upstream sends."""
        try:
            while True:
                frame = await prepared.ws.recv()
                out = prepared.codec.feed(frame)
                for wire in out.wire:  # e.g. Gemini's held history, released by setupComplete
                    await prepared.ws.send(wire)
                prepared.outs.append(Out(events=out.events, close=out.close))
        except (OSError, websockets.WebSocketException) as exc:
            log.warning("prepared upstream lost", extra={"sid": session.meta.sid, "error": repr(exc)})
        except Exception:
            log.exception("codec failed on a prepared upstream's frame", extra={"sid": session.meta.sid})
        if session.mbb is move:
            await self._plan(session, PlanSignal.NEW_LOST)

    async def _deadline(self, session: _Session, move: _Move, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        if session.mbb is move:
            await self._plan(session, PlanSignal.DEADLINE)

    async def _plan(self, session: _Session, signal: PlanSignal) -> None:
        """Feed the plan one signal and carry out what it says."""
        move = session.mbb
        if move is None:
            return
        busy = session.open_response is not None
        action = move.plan.on(signal, busy=busy, now_ms=int(time.time() * 1000))
        if action is Action.WAIT:
            return
        log.info("switch plan", extra={"sid": session.meta.sid, "signal": signal.value, "action": action.value,
                                       "phase": move.plan.phase.value, "recycle": move.plan.recycle})
        if action is Action.CUT_OVER:
            if session.state is Upstream.OPEN and session.ws is not None and move.prepared is not None:
                await self._hand_over(session, move)
                return
            action = Action.FALL_BACK  # the old one is already going: the loop moves the session itself
        await self._abandon(session)
        if move.plan.recycle:
            if signal is PlanSignal.DEADLINE:
                await self._rotate(session)  # break-before-make now: the provider ends the old one anyway
            elif action is Action.GIVE_UP:
                session.rotate_by = asyncio.get_running_loop().time()  # break-before-make at the turn end
                if session.open_response is None:
                    await self._rotate(session)
            return
        if action is Action.GIVE_UP:
            await self._signal(session, "failure", reason="switch_failed")
            return
        # FALL_BACK: the old upstream died before the cutover; the loop dials the target (the old way).
        session.switch_order = msgspec.structs.replace(move.ctl, when="now")
        if session.state not in (Upstream.OPEN, Upstream.CONNECTING):
            await self._cutover(session)

    async def _abandon(self, session: _Session) -> None:
        """Drop the move under way and whatever it prepared."""
        move, session.mbb = session.mbb, None
        if move is None:
            return
        if move.plan.active:
            move.plan.phase = Phase.DONE
        current = asyncio.current_task()
        for task in move.tasks:
            if task is not current:
                task.cancel()
        prepared = move.prepared
        if prepared is not None:
            if prepared.reader is not None and prepared.reader is not current:
                prepared.reader.cancel()
            self._tasks.spawn(_close_quietly(prepared.ws))

    async def _hand_over(self, session: _Session, move: _Move) -> None:
        """The cutover: stop reading the prepared upstream (its frames stay queued on its socket), queue
        input from now on (HANDOVER), close the old upstream without waiting for its closing handshake;
        the upstream loop's next connection is the prepared one (``_run_upstream``)."""
        prepared = move.prepared
        assert prepared is not None
        session.mbb = None
        current = asyncio.current_task()
        for task in (*move.tasks, prepared.reader):
            if task is not None and task is not current:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        session.handover = prepared
        session.handover_plan = move.plan
        session.to(Trigger.HAND_OVER)
        if session.recv_timeout is not None:  # the upstream loop waits on the old socket: end that wait now
            session.recv_timeout.reschedule(asyncio.get_running_loop().time())
        await self._end_cut_response(session)  # a recycle's deadline mid-response: never left hanging
        old = session.ws
        if old is not None:
            self._tasks.spawn(_close_quietly(old, "switch"))
        session.wake.set()

    async def _cutover(self, session: _Session) -> None:
        """Point the session at the new provider and end the current connection on purpose; the upstream
        loop dials the new one with the history and the uncommitted input (as after any reconnect), and
        announces the switch once its setup and history are sent."""
        ctl, session.switch_order = session.switch_order, None
        if ctl is None or session.closed:
            return
        target = self.providers[ctl.provider]
        previous = session.meta.provider
        session.switch_revert = (session.provider, session.meta, session.model)
        session.provider = target
        session.meta = msgspec.structs.replace(session.meta, provider=ctl.provider)
        session.model = target.model_for(session.meta.model)
        session.switch = bus.AssignRequest(
            meta=session.meta, epoch=session.epoch, switch_from=previous, switch_reason=ctl.reason,
            # The client-heard gap: from the turn end a switch waited for, else from the decision.
            switch_started_ms=int(time.time() * 1000) if ctl.when == "turn_end" or not ctl.started_ms
            else ctl.started_ms)
        session.backoff = Backoff(base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, short_lived_s=SHORT_LIVED_S)
        log.info("switching", extra={"sid": session.meta.sid, "from": previous, "to": ctl.provider,
                                     "reason": ctl.reason, "state": session.state.value})
        if session.handover is not None:  # a make-before-break cutover under way loses to this one
            self._tasks.spawn(_close_quietly(session.handover.ws))
            session.handover = session.handover_plan = None
        if session.state in (Upstream.CONNECTING, Upstream.OPEN, Upstream.ROTATING, Upstream.RECONFIGURING,
                             Upstream.ABANDONED, Upstream.SWITCHING, Upstream.HANDOVER):
            session.to(Trigger.SWITCH)
            if session.ws is not None:
                with contextlib.suppress(Exception):
                    await session.ws.close(1000, "switch")
        session.wake.set()  # waiting out a backoff: dial the new provider now

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

    async def _stream_id(self) -> str:
        """The stream's incarnation, read again after a bus reconnect (a restarted nats-server's is new)."""
        assert self.nc is not None
        reconnects = self.nc.stats["reconnects"]
        if self._stream is None or self._stream[0] != reconnects:
            self._stream = (reconnects, await stream_id(self.nc))
        return self._stream[1]

    async def _await_checkpoint(self, sid: str, timeout_s: float = CHECKPOINT_WAIT_S,
                                poll_s: float = CHECKPOINT_POLL_S) -> bool:
        """Wait until the checkpoint has folded this session's events already in the stream, so that the
        snapshot (history, commit point) and the replay agree: from a stale commit point, input the
        restored history already holds would be sent again (a duplicate turn). The checkpoint records the
        position it has folded everything up to (``Store.folded``); this waits until it reaches the
        session's newest log message. Usually immediate; a checkpoint that lags under load is waited for,
        up to the bound (which a dead one costs). False: not confirmed (the snapshot may be stale)."""
        assert self.nc is not None and self.store is not None
        loop = asyncio.get_running_loop()
        js = self.nc.jetstream()
        session = self.sessions.get(sid)
        mark = session.turn_log.mark() if session is not None else None  # what the worker had seen by now
        confirmed = await self._checkpoint_caught_up(sid, js, loop, timeout_s, poll_s)
        if confirmed and session is not None and mark is not None:
            session.log_mark = mark  # every item it saw before is folded: a snapshot from now on holds it
        return confirmed

    async def _checkpoint_caught_up(self, sid: str, js: JetStreamContext, loop: asyncio.AbstractEventLoop,
                                    timeout_s: float, poll_s: float) -> bool:
        assert self.store is not None
        target = 0
        try:
            for subject in (Subjects.up(sid, "log"), Subjects.down(sid, "log")):  # what the checkpoint folds
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    target = max(target, (await js.get_last_msg(bus.STREAM, subject, direct=True)).seq or 0)
            if not target:
                return True
            stream = await self._stream_id()
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("checkpoint position unknown", extra={"sid": sid, "error": repr(exc)})
            return False
        deadline = loop.time() + timeout_s
        folded = 0
        while True:
            try:
                folded = await self.store.folded(stream)
            except (RedisError, OSError) as exc:
                log.warning("checkpoint position unreadable", extra={"sid": sid, "error": repr(exc)})
            if folded >= target:
                return True
            if loop.time() >= deadline:
                log.warning("checkpoint behind", extra={"sid": sid, "target": target, "folded": folded})
                return False
            await asyncio.sleep(poll_s)

    async def _drop(self, sid: str, only: _Session | None = None) -> None:
        """Let ``sid`` go; with ``only``, just that incarnation (a close for an older one must not drop the
        session re-assigned here meanwhile)."""
        if only is not None and self.sessions.get(sid) is not only:
            return
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        session.to(Trigger.DROP)
        SESSIONS.labels("worker").set(len(self.sessions))
        await self._abandon(session)
        if session.handover is not None:
            await _close_quietly(session.handover.ws)
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
        frame_counter("worker", "up").inc()
        observe_hop("transformer_worker", env.sent)  # metric observation point
        for event in env.events:
            if session.state.sends:
                self._note_config(session, event)
                await self._encode(session, event)
            else:
                self._take(session, event)
        if session.input_loss is InputLoss.LOST:
            # Never drop input silently: say so once, in the client's dialect.
            session.input_loss = InputLoss.TOLD
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
        elif session.input_loss is InputLoss.NONE:
            session.input_loss = InputLoss.LOST

    async def _encode(self, session: _Session, event: ev.Event) -> None:
        assert session.codec is not None
        if isinstance(event, ev.InputAudio):
            # Queued input (a reconnect's flush) is marked with the newest seq: later than it was, which
            # only makes the commit point later, as it was before there was a clock.
            session.clock.add(session.last_up, len(event.pcm), event.rate)
            if session.config is None or not session.config.input_transcription:
                # Only without transcription: with it, the transcript is what a new connection is told.
                session.turn_audio.add(session.last_up, event.pcm, event.rate)
        elif isinstance(event, ev.InputAudioClear):
            session.turn_audio.cleared()
        elif isinstance(event, _TURN_ENDS_UP):
            session.turns.turn_end(asyncio.get_running_loop().time())
        try:
            out = session.codec.encode(event)
        except Exception:
            # A codec bug must not cost the event silently nor touch other sessions: tell the client.
            log.exception("codec failed on a client event", extra={"sid": session.meta.sid})
            out = Out(events=[_INTERNAL_ERROR])
        session.turn_log.feed(event)
        if isinstance(event, ev.InputAudio):
            session.audio_seq = session.last_up
        elif isinstance(event, ev.InputAudioClear):
            session.committed_seq = session.last_up
        elif isinstance(event, ev.ResponseCreate):
            session.unanswered.asked(event, sent=bool(out.wire))  # (no wire: absorbed by the codec)
        elif isinstance(event, replay.USER_INPUT):
            session.unanswered.input()
        await self._apply(session, out)
        if session.codec.needs_reconnect and session.ws is not None and session.state is not Upstream.SWITCHING:
            # The provider cannot take this change live (Gemini: one setup per connection). Not in the middle
            # of an answer (the reconnect would cut it, as a client's mid-answer session.update did): at its end.
            if session.open_response is None:
                await self._reconfigure(session)
            else:
                session.reconfigure_at_turn_end = True

    async def _reconfigure(self, session: _Session) -> None:
        session.reconfigure_at_turn_end = False
        if session.ws is not None and session.state is Upstream.OPEN:
            session.to(Trigger.RECONFIGURE)
            await session.ws.close(1000, "reconfigure")

    # -- provider -> client ----------------------------------------------------------------------

    async def _apply(self, session: _Session, out: Out) -> None:
        if out.wake is not None and session.codec is not None:
            self._tasks.spawn(self._wake(session, session.codec, out.wake))
        if out.wire and session.ws is not None:
            for frame in out.wire:
                await session.ws.send(frame)
        events = out.events
        if any(isinstance(e, ev.GoAway) for e in events):
            # The provider will end this connection soon (Gemini's session cap). Ours to handle: the
            # client is not told, the connection is replaced at a turn boundary (below, or _plan_rotation's deadline).
            for e in events:
                if isinstance(e, ev.GoAway):
                    self._go_away(session, e.time_left_ms)
            events = [e for e in events if not isinstance(e, ev.GoAway)]
        if events:
            await self._publish(session, events)
        move = session.mbb
        if move is not None and move.plan.phase is Phase.READY and session.open_response is None:
            await self._plan(session, PlanSignal.TURN_END)  # the turn end a make-before-break waits for
        if session.rotate_by is not None and session.open_response is None:
            await self._rotate(session)
        if session.switch_order is not None and session.open_response is None:
            await self._cutover(session)  # the turn end a switch was waiting for
        if session.reconfigure_at_turn_end and session.open_response is None:
            await self._reconfigure(session)  # the turn end a new configuration was waiting for

    async def _wake(self, session: _Session, codec: ProviderCodec, wake: Wake) -> None:
        """A codec's timer (``Out.wake``): its ``wake`` runs only if it still serves the session."""
        await asyncio.sleep(wake.after_s)
        if session.codec is codec and not session.closed:
            await self._apply(session, codec.wake(wake.token))  # type: ignore[attr-defined]  # asked by it

    def _go_away(self, session: _Session, time_left_ms: int) -> None:
        """The provider ends this connection in ``time_left_ms`` (Gemini goAway): a recycle, make-before-
        break at the turn end, at the latest ``ROTATE_MARGIN_S`` before the end; else the old rotation."""
        if session.mbb is None and self._recycle(
                session, reason="go_away", deadline_s=max(0.0, time_left_ms / 1000 - ROTATE_MARGIN_S)):
            log.info("provider going away", extra={"sid": session.meta.sid, "time_left_ms": time_left_ms})
            return
        self._plan_rotation(session, time_left_ms)

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
        """Replace the upstream connection on purpose: the loop reconnects with the history and the
        uncommitted input, without telling the client anything went wrong."""
        if session.ws is None or session.state not in (Upstream.OPEN, Upstream.CONNECTING):
            return
        session.to(Trigger.GOING_AWAY)
        UPSTREAM_ROTATIONS.labels(session.meta.provider).inc()
        with contextlib.suppress(Exception):
            await session.ws.close(1000, "go away")

    async def _publish(self, session: _Session, events: list[ev.Event]) -> None:
        assert self.nc is not None and self.gate is not None
        now = asyncio.get_running_loop().time()
        was_open = session.open_response is not None
        turn_ms: list[float] = []
        status = ""  # of the last response this batch ended: the idle signal's reason
        for index, event in enumerate(events):
            if isinstance(event, ev.ResponseStarted):
                session.open_response = event.response_id
                session.unanswered.answered()
            elif isinstance(event, ev.ResponseDone):
                session.open_response = None
                session.unanswered.answered()
                status = event.status
                if session.mbb is not None:
                    session.mbb.plan.turn_ended(int(time.time() * 1000))
                session.turns.response_done(event.response_id)
            elif isinstance(event, ev.OutputAudio):
                ms = session.turns.first_audio(event.response_id, now)
                if ms is not None:
                    turn_ms.append(ms)
            elif isinstance(event, ev.SpeechStarted):
                session.turns.user_speaking()
                start_seq = session.clock.seq_at(event.audio_start_ms) if event.audio_start_ms else None
                if start_seq is not None:
                    session.turn_audio.speech_started(start_seq)
            elif isinstance(event, ev.SpeechStopped):
                session.turns.turn_end(now)
                if event.audio_end_ms:
                    seq = session.clock.seq_at(event.audio_end_ms)
                    if seq is not None:
                        session.speech_ends[event.item_id] = seq
            elif isinstance(event, ev.InputCommitted):
                session.turns.turn_end(now)
                # What the provider has committed so far: a replacement replays only what came after.
                up_seq = session.speech_ends.pop(event.item_id, session.last_up)
                events[index] = msgspec.structs.replace(event, up_seq=up_seq)
                session.turn_audio.committed(event.item_id, up_seq)
                session.committed_seq = max(session.committed_seq, up_seq)
                session.unanswered.input()
            elif isinstance(event, ev.InputTranscript) and event.final and event.text:
                session.turn_audio.transcribed(event.item_id)
            session.turn_log.feed(events[index])
        session.seq_down += 1
        envelope = bus.envelope(session.epoch, session.seq_down, events)
        if bus.part(events) == "log":
            # Stored before this session's next envelope (bus.publish_logged). A wait for a new stream leader
            # is ours, not the provider's silence: the stall clock restarts after it.
            await bus.publish_logged(self.nc, Subjects.down(session.meta.sid, "log"), envelope)
            if asyncio.get_running_loop().time() - now > STALL_CREDIT_S:
                session.stall.bytes_in(asyncio.get_running_loop().time())
        else:
            await self.gate.publish(Subjects.down(session.meta.sid, "live"), envelope)
        is_open = session.open_response is not None
        session.stall.response(is_open, now)
        for ms in turn_ms:
            TIME_TO_FIRST_AUDIO.labels(session.meta.provider).observe(ms / 1000)  # metric observation point
            await self._signal(session, "turn", value_ms=ms)
        if is_open != was_open:
            # idle says how the response ended: only a completed one ends the policy's run of failures.
            await self._signal(session, "busy" if is_open else "idle", reason="" if is_open else status)

    async def _signal(self, session: _Session, kind: SignalKind, *, value_ms: float = 0.0, reason: str = "") -> None:
        """Tell the edge holding the session (its switch policy): see ``bus.Signal``."""
        assert self.nc is not None
        signal = bus.Signal(kind=kind, epoch=session.epoch, provider=session.meta.provider, value_ms=value_ms,
                            reason=reason)
        await self.nc.publish(Subjects.signal(session.meta.sid), bus.encode(signal))

    async def _end_cut_response(self, session: _Session) -> None:
        """The response a lost upstream cut is closed towards the client, never left hanging: ``failed``
        for OpenAI clients, ``interrupted`` + ``turnComplete`` for Gemini clients (the client codecs)."""
        if session.open_response is not None:
            await self._publish(session, [ev.ResponseDone(
                response_id=session.open_response, status="failed", reason="provider_disconnected")])

    async def _upstream_loop(self, session: _Session) -> None:
        name = session.meta.provider
        loop = asyncio.get_running_loop()
        while not session.closed:
            fatal = False
            failure: str | None = None
            session.opened_at = None
            try:
                await self._run_upstream(session)
                reason = "stalled" if session.state is Upstream.ABANDONED else "closed"
                failed = False
            except ProviderNotConfigured as exc:
                # Missing settings on this worker: retrying cannot help, the client is told why.
                PROVIDER_ERRORS.labels(name, "not_configured").inc()
                session.ws = None
                session.to(Trigger.FATAL)
                await self._publish(session, [ev.ProviderError(
                    code="provider_not_configured", message=str(exc), fatal=True)])
                return
            except InvalidStatus as exc:
                status = exc.response.status_code
                PROVIDER_ERRORS.labels(name, f"http_{status}").inc()
                fatal = status in _FATAL_HTTP
                failure, reason, failed = failure_reason(exc, opened=False), f"http {status}", True
            except (TimeoutError, OSError, websockets.WebSocketException) as exc:
                PROVIDER_ERRORS.labels(name, type(exc).__name__).inc()
                failure = failure_reason(exc, opened=session.opened_at is not None)
                reason, failed = type(exc).__name__, True
            finally:
                session.ws = None
            if session.closed:
                return
            if session.state is Upstream.HANDOVER and session.handover is not None:
                continue  # make-before-break: the next connection is the prepared one, no loss, no wait
            closing = session.state
            session.to(Trigger.LOST)
            if failure is not None:
                await self._signal(session, "failure", reason=failure)
            await self._end_cut_response(session)
            if failed and session.switch is not None and session.switch_revert is not None:
                # The provider we were switching to cannot be had: back to the one the session was on,
                # at once; the edge is told the switch failed (its policy stays where it was).
                to = session.meta.provider
                session.provider, session.meta, session.model = session.switch_revert
                session.switch = session.switch_revert = None
                session.backoff = Backoff(base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, short_lived_s=SHORT_LIVED_S)
                log.warning("switch failed", extra={"sid": session.meta.sid, "to": to, "reason": reason})
                await self._signal(session, "failure", reason="switch_failed")
                continue
            if session.mbb is not None:
                await self._plan(session, PlanSignal.OLD_LOST)  # lost before the cutover: the old way
            if session.switch_order is not None:
                await self._cutover(session)  # the connection ended while a switch waited for the turn end
            lived = None if session.opened_at is None else loop.time() - session.opened_at
            delay = session.backoff.after(
                lived_s=lived, planned=closing is Upstream.ROTATING, reconfigure=closing is Upstream.RECONFIGURING,
                failed=failed, rand=random.random())
            if closing is Upstream.SWITCHING or session.switch is not None:
                delay = 0.0  # ours, to another provider (or a fresh connection): nothing to back off from
            if fatal or session.backoff.connect_failures >= MAX_CONNECT_FAILURES:
                session.to(Trigger.FATAL)
                await self._publish(session, [ev.ProviderError(
                    code="provider_unavailable", message=f"{name} unavailable ({reason})", fatal=True)])
                return
            session.rotate_by = None
            if closing not in (Upstream.ROTATING, Upstream.RECONFIGURING, Upstream.SWITCHING):  # on purpose: not news
                UPSTREAM_RECONNECTS.labels(name).inc()
                await self._publish(session, [ev.Notice(
                    code="provider_reconnecting", message=f"{name} connection lost ({reason}); reconnecting")])
            log.warning("upstream lost", extra={
                "sid": session.meta.sid, "reason": reason, "was": closing.value, "delay_s": round(delay, 3),
                "lived_s": None if lived is None else round(lived, 3)})
            session.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wake.wait(), delay)  # a backoff, cut short by a switch

    async def _run_upstream(self, session: _Session) -> None:
        """One upstream connection, from connect (or a make-before-break handover) to close."""
        assert self.store is not None
        session.to(Trigger.DIAL)
        handed, session.handover = session.handover, None
        plan, session.handover_plan = session.handover_plan, None
        if handed is not None and plan is not None:
            taken = await self._take_over(session, handed, plan)
            if taken is None:
                return  # switched elsewhere while cutting over: the loop dials that one
            ws, codec = taken
        else:
            ws, codec = await self._dial(session)
            if ws is None:
                return
        loop = asyncio.get_running_loop()
        aging: asyncio.Task[None] | None = None
        try:
            if session.state is Upstream.CONNECTING:  # no await between the empty check and this line
                session.to(Trigger.OPENED)
                session.input_loss = InputLoss.NONE
            max_age = age_left_s(session.opened_at or loop.time(), session.provider.max_session_s, loop.time())
            if max_age is not None:
                aging = asyncio.create_task(self._recycle_when_old(session, ws, max_age))
            while True:
                remaining = session.stall.remaining(loop.time())
                if remaining is None or session.state is not Upstream.OPEN:
                    # Nothing to watch (no response open, or the socket is closing on purpose): wake up now
                    # and then anyway, a response may open from our side (a codec's synthetic events).
                    remaining = session.stall.limit_s
                try:
                    async with asyncio.timeout(remaining) as session.recv_timeout:
                        frame = await ws.recv()
                except TimeoutError:
                    if session.state is Upstream.HANDOVER:
                        return  # cut over from another task (``_hand_over``): the prepared one takes it
                    if session.stall.remaining(loop.time()) == 0 and session.state is Upstream.OPEN:
                        await self._stalled(session)
                        return
                    continue
                except ConnectionClosedOK:
                    return
                finally:
                    session.recv_timeout = None
                session.stall.bytes_in(loop.time())
                out = await self._read_burst(session, codec, ws, frame)
                expiring = False
                for event in out.events:
                    if isinstance(event, ev.ProviderError) and ends_connection(event):
                        expiring = True  # the provider's own cap (OpenAI session_expired): ours to recycle
                    elif isinstance(event, ev.ProviderError) and (failure := error_failure(event)) is not None:
                        await self._signal(session, "failure", reason=failure)
                if expiring:
                    out = Out(wire=out.wire, close=out.close, wake=out.wake, events=[
                        e for e in out.events if not (isinstance(e, ev.ProviderError) and ends_connection(e))])
                for piece in _pieces(out):
                    await self._apply(session, piece)
                    if session.state is Upstream.HANDOVER:
                        break  # cut over: the rest of the burst is the old upstream's, as if never read
                if expiring and session.state is not Upstream.HANDOVER:
                    # It closes the connection right after (1001): replace it now, as a planned rotation
                    # (no notice, no failure); too late for make-before-break, which the age recycle
                    # (RS_OPENAI_MAX_SESSION_S, below the cap) does ahead of it.
                    log.info("provider session cap reached", extra={"sid": session.meta.sid})
                    await self._rotate(session)
                if session.state is Upstream.HANDOVER:
                    # The turn end a make-before-break waited for: the prepared one takes over. A frame read
                    # as the cutover came may have opened a response after ``_hand_over`` closed the open one:
                    # the old upstream answers nothing more, so it is cut too (never left hanging).
                    await self._end_cut_response(session)
                    return
        finally:
            if aging is not None:
                aging.cancel()  # a recycle by age is this connection's
            if session.state is Upstream.HANDOVER:
                self._tasks.spawn(_close_quietly(ws, "switch"))  # its closing handshake is not waited for
            else:
                with contextlib.suppress(Exception):
                    await ws.close()

    @staticmethod
    async def _read_burst(session: _Session, codec: ProviderCodec, ws: ClientConnection, frame: str | bytes) -> Out:
        """``frame`` and every provider frame already received after it (never waiting for one), decoded into
        one ``Out``: a provider's burst (a turn's first deltas) goes out as one ``down`` envelope instead of
        one per frame. The burst ends after a frame holding a ``bus.BATCH_ENDS`` event, a response's first
        output or a close, and at ``BURST_MAX_BYTES`` (the envelope, and the client frames the transformer
        makes of it, stay far below the bus's max_payload)."""
        out = Out()
        size = 0
        while True:
            size += len(frame)
            frame_counter("worker", "provider_in").inc()
            try:
                piece = codec.feed(frame)
            except Exception:
                log.exception("codec failed on a provider frame", extra={"sid": session.meta.sid})
                piece = Out(events=[_INTERNAL_ERROR])
            out.extend(piece)
            if _ends_burst(session, piece.events) or piece.close or size >= BURST_MAX_BYTES or not bus.ready(ws):
                return out
            frame = await ws.recv()  # already received: returns without waiting

    async def _dial(self, session: _Session) -> tuple[ClientConnection | None, ProviderCodec]:
        """Connect (the history, the uncommitted input and the queued input sent); None: switched or
        dropped while dialling (the socket is closed again)."""
        assert self.store is not None
        provider = session.provider
        # The history must hold everything this session already said (a provider reconnect, a Gemini
        # reconfiguration, a client back on the same session moments after it left): let the checkpoint
        # fold what the stream holds for it first (bounded; immediate for a new session).
        snapshot, session.resume_snapshot = session.resume_snapshot, None
        if snapshot is None:  # not the first connection of a replacement, which has just read it
            await self._await_checkpoint(session.meta.sid, timeout_s=1.0)
            snapshot = await self.store.snapshot(session.meta.sid)
        snapshot = self._with_turn_audio(session, snapshot)
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
        self._drop_known(session, snapshot)
        url, headers = provider.endpoint(session.model)
        # History is always restored from our own log, never from a Gemini resumption handle: a handle
        # only covers what the provider had consumed at its last update, so items sent after it (or queued
        # while reconnecting) would be lost, and the log is the source of truth anyway.
        codec = session.codec = provider.codec(session.meta, session.model)
        ws = await websockets.connect(
            url, additional_headers=headers, max_size=None, compression=None, open_timeout=10,
            ping_interval=20, ping_timeout=20, close_timeout=CLOSE_TIMEOUT_S,
        )
        session.ws = ws
        session.opened_at = asyncio.get_running_loop().time()
        if session.state is Upstream.SWITCHING or session.closed:
            # Switched while dialling (the loop dials the new provider), or dropped while connecting and
            # the cancellation got lost on the way (Python 3.11's asyncio.wait_for, used by nats-py
            # requests, can swallow one): never serve a dropped session.
            await _close_quietly(ws)
            return None, codec
        try:
            PROVIDER_CONNECTS.labels(session.meta.provider).inc()
            log.info("upstream connect", extra={
                "sid": session.meta.sid, "items": len(snapshot.items), "pending": len(session.pending),
                "config": "session" if session.config is not None else "snapshot" if snapshot.config else "default",
                "vad": config.turn_detection is not None,
                "replayed": [type(e).__name__ for e in itertools.islice(session.pending, 8)]})
            # A new connection's audio starts at 0, and its silence is counted afresh.
            session.clock, session.speech_ends = InputClock(), {}
            session.turn_audio.cleared()  # its buffer starts empty: the queued input is sent (and kept) again
            session.unanswered.take()  # the replay judged it (``replay.owed_create``)
            session.stall = StallWatch(session.stall.limit_s)
            setup = codec.connect(config, snapshot.items)
            await self._apply(session, Out(wire=setup.wire))
            await self._announce(session)
            await self._apply(session, Out(events=setup.events, close=setup.close))
            while session.pending:
                await self._encode(session, session.pending.popleft())
        except BaseException:
            await _close_quietly(ws)
            raise
        return ws, codec

    async def _take_over(self, session: _Session, handed: _Prepared,
                         plan: SwitchPlan) -> tuple[ClientConnection, ProviderCodec] | None:
        """Make the prepared upstream the session's: the items the last turn added (it has the history up
        to its preparation), the uncommitted input, the input queued meanwhile, each once; then the
        announcement (a switch) and what it sent while it waited."""
        assert self.store is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            fast = self._from_own_log(session, handed)
            if fast is not None:
                items, config = fast
                folded = read = loop.time()
            else:
                # The last turn's items are in the log once the checkpoint folded its end: polled closely,
                # this wait is most of the gap the client hears.
                await self._await_checkpoint(session.meta.sid, timeout_s=1.0, poll_s=HANDOVER_POLL_S)
                folded = loop.time()
                snapshot = self._with_turn_audio(session, await self.store.snapshot(session.meta.sid))
                if session.codec is not None:
                    await self._replaying(session, self._queue_uncommitted(session, snapshot, upto=session.last_up))
                read = loop.time()
                self._drop_known(session, snapshot)
                session.unanswered.take()  # the replay judged it (``replay.owed_create``)
                items, config = snapshot.items, session.config or snapshot.config
            if session.state is not Upstream.CONNECTING:  # a switch "now" came meanwhile (``_cutover``)
                await _close_quietly(handed.ws)
                return None
            previous = session.meta.provider
            session.provider, session.meta, session.model = handed.provider, handed.meta, handed.model
            session.codec, session.ws, session.opened_at = handed.codec, handed.ws, handed.opened_at
            if not plan.recycle:  # a new provider: nothing to back off from (a recycle keeps its streak)
                session.backoff = Backoff(base_s=BACKOFF_BASE_S, cap_s=BACKOFF_CAP_S, short_lived_s=SHORT_LIVED_S)
            session.clock, session.speech_ends = InputClock(), {}
            session.turn_audio.cleared()
            session.stall = StallWatch(session.stall.limit_s)
            if config is not None and config != handed.config:
                await self._encode(session, config)  # changed while it was being prepared
            delta = delta_items(handed.items, items)
            if isinstance(handed.codec, AppendsHistory):
                await self._apply(session, handed.codec.append_history(delta))
            else:
                for item in delta:
                    await self._encode(session, ev.ItemCreate(item=item))
            now_ms = int(time.time() * 1000)
            gap_ms = plan.gap_ms(now_ms)
            if plan.recycle:
                UPSTREAM_ROTATIONS.labels(session.meta.provider).inc()  # ours: the client is told nothing
            else:
                switched = ev.Switched(from_provider=previous, to_provider=session.meta.provider,
                                       reason=plan.reason or "manual", gap_ms=gap_ms)
                await self._publish(session, [switched])
                await self._signal(session, "ready", value_ms=gap_ms)
            log.info("cut over", extra={"sid": session.meta.sid, "from": previous, "to": session.meta.provider,
                                        "recycle": plan.recycle, "gap_ms": gap_ms, "added_items": len(delta),
                                        "pending": len(session.pending),
                                        "replayed": [type(e).__name__ for e in itertools.islice(session.pending, 8)],
                                        "own_log": fast is not None,
                                        "checkpoint_ms": round((folded - began) * 1000, 1),
                                        "read_ms": round((read - folded) * 1000, 1)})
            for out in handed.outs:
                await self._apply(session, out)
            handed.outs.clear()
            while session.pending:
                await self._encode(session, session.pending.popleft())
        except BaseException:
            await _close_quietly(handed.ws)
            raise
        return handed.ws, handed.codec

    @staticmethod
    def _from_own_log(session: _Session, handed: _Prepared) -> tuple[list[ev.Item], ev.SessionConfig | None] | None:
        """A cutover without the checkpoint: the history as of now from the prepared upstream's snapshot
        plus the worker's own log (``TurnLog``), when that is sound: the log covers everything since the
        snapshot's base (nothing evicted since), and the old upstream holds no input it had not committed
        nor a spoken turn not transcribed yet (which only the stream has). The input queued since the cutover
        stays queued, after the response request the old upstream never answered (if any, absorbed by its codec
        or not: ``OpenRequest``). None: take the checkpoint's way."""
        items = session.turn_audio.restore(session.turn_log.items())
        if session.codec is None or not from_own_log(session.turn_log, handed.base, audio_seq=session.audio_seq,
                                                     committed_seq=session.committed_seq, items=items):
            return None
        owed = session.unanswered.take()
        known = handed.items
        session.pending = collections.deque(
            e for e in session.pending
            if not isinstance(e, ev.SessionConfig) and not (isinstance(e, ev.ItemCreate) and e.item.id in known))
        if owed is not None and not any(isinstance(e, ev.ResponseCreate) for e in session.pending):
            session.pending.appendleft(owed)  # (a newer request queued meanwhile asks instead: one answer)
        return items, session.config or handed.config

    async def _announce(self, session: _Session) -> None:
        """A (break-before-make) switch: the new upstream has the history; Switched is the first event. A
        replacement of a dead worker: a notice with how long the session was without one (clients that asked
        for notices see it; the web client's timeline shows it)."""
        if session.resumed_at_ms:
            gap_ms = max(0, int(time.time() * 1000) - session.resumed_at_ms)
            session.resumed_at_ms = 0
            await self._publish(session, [ev.Notice(
                code="reattached", param=f"epoch {session.epoch}",
                message=f"worker replaced (the previous one died); resumed in {gap_ms} ms")])
        if session.switch is None:
            return
        req, session.switch = session.switch, None
        switched = switched_event(req.switch_from, req.switch_reason, req.switch_started_ms,
                                  session.meta.provider, int(time.time() * 1000))
        if switched is not None:
            await self._publish(session, [switched])
            await self._signal(session, "ready", value_ms=switched.gap_ms)
        session.switch_revert = None

    @staticmethod
    def _with_turn_audio(session: _Session, snapshot: Snapshot) -> Snapshot:
        """The snapshot with the audio this worker holds of spoken turns the log has no text for."""
        items = session.turn_audio.restore(snapshot.items)
        return snapshot if items is snapshot.items else msgspec.structs.replace(snapshot, items=items)

    @staticmethod
    def _drop_known(session: _Session, snapshot: Snapshot) -> None:
        """The config the codec starts with already covers queued config events, and the history already
        holds items the checkpoint folded after they were queued: neither may be sent twice."""
        in_history = {item.id for item in snapshot.items}
        session.pending = collections.deque(
            e for e in session.pending
            if not isinstance(e, ev.SessionConfig) and not (isinstance(e, ev.ItemCreate) and e.item.id in in_history)
        )

    async def _recycle_when_old(self, session: _Session, ws: ClientConnection, delay_s: float) -> None:
        """The provider's session length (OpenAI): at ``max_session_s`` the connection is recycled,
        make-before-break, at the next turn boundary."""
        await asyncio.sleep(delay_s)
        if session.ws is ws and not session.closed:
            log.info("upstream at its maximum age", extra={"sid": session.meta.sid,
                                                           "max_s": session.provider.max_session_s})
            self._recycle(session, reason="max_age", deadline_s=None)

    def _recycle(self, session: _Session, *, reason: str, deadline_s: float | None) -> bool:
        """A fresh connection to the same provider, make-before-break (False: not possible now)."""
        if session.mbb is not None or session.state is not Upstream.OPEN or session.switch_order is not None:
            return False
        ctl = bus.Control(kind="switch", epoch=session.epoch, provider=session.meta.provider, reason=reason,
                          when="turn_end")
        # A provider that ends every connection right after its setup must not be redialled in a loop:
        # the same backoff as any planned replacement (immediate after a connection that lived).
        loop = asyncio.get_running_loop()
        lived = None if session.opened_at is None else loop.time() - session.opened_at
        delay = session.backoff.after(lived_s=lived, planned=True, rand=random.random())
        self._begin(session, ctl, recycle=True, deadline_s=deadline_s, delay_s=delay)
        return True

    async def _stalled(self, session: _Session) -> None:
        """A response open and nothing from the provider for ``RS_STALL_MS``: end the response towards the
        client now, say so to the edge, and give the connection up (the loop reconnects; the session goes
        on with its history)."""
        now = asyncio.get_running_loop().time()
        stalled_ms = round(session.stall.stalled_for(now) * 1000, 1)
        session.to(Trigger.STALLED)
        PROVIDER_ERRORS.labels(session.meta.provider, "stall").inc()
        log.warning("upstream stalled", extra={"sid": session.meta.sid, "stalled_ms": stalled_ms,
                                               "response": session.open_response})
        await self._end_cut_response(session)
        await self._signal(session, "stall", value_ms=stalled_ms)
