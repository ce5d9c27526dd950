"""Transformer: per-session client-dialect codec between the edge and the provider-worker.

Subscribes ``cin`` (client frames) and ``down`` (canonical provider events) of each session it holds;
publishes ``up`` (canonical events) and ``cout`` (client frames). All protocol logic is in the codec;
this module only moves bytes and enforces the epoch (fencing).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from shared import bus
from shared import events as ev
from shared.bus import Subjects
from shared.codecs.base import ClientCodec, Out
from shared.codecs.registry import client_codec
from shared.config import Config
from shared.metrics import NOTICES, SESSIONS, frame_counter, observe_hop
from shared.runtime import BOOT, TaskSet, heartbeat_loop, instance_id
from shared.session import SessionMeta
from shared.store import Store

__all__ = ["STAMPS", "Transformer", "is_numbered", "last_numbered", "numbered_runs", "stamp_openai"]

log = logging.getLogger(__name__)

# How far back a replacement looks for provider output the client never got: the gap is the dead
# instance's detection (at most ~1.2 s, a stopped one) plus the reattach (p99 ~0.25 s in the 50-session
# chaos run), so this is generous. It is also as far back as the response in flight can be rebuilt.
DOWN_REPLAY_S = 5.0
# Client frames older than the newest up envelope by more than this were translated (frames are
# translated in order, within milliseconds; stream times are the server's): the cin replay starts there.
CIN_REPLAY_MARGIN_S = 2.0

# How far back the cout read looks for the last numbered frame when the newest cout carries none.
SEQ_LOOKBACK_S = 30.0
SEQ_LOOKUP_TIMEOUT_S = 0.5
BUS_WATCH_S = 0.25  # how often the bus's reconnect count is looked at
_Mark = tuple[str | None, tuple[int, int]]  # (open response, newest down envelope (worker epoch, seq))

_INTERNAL_ERROR = ev.ProviderError(code="internal_error", message="the gateway could not translate an event")
_TOO_LARGE = ev.ProviderError(code="internal_error", message="an event for the client was too large to deliver")


def tails_lost(at_reconnect: dict[str, _Mark], now: dict[str, _Mark]) -> list[str]:
    """Sessions whose response, open when the bus came back, has heard nothing from its worker since (the
    same response still open, the same newest down envelope). Core NATS drops what a peer flushed before
    this transformer's subscriptions were back on a restarted server: that response's tail, its end among
    it, is gone and would leave the client waiting for ever."""
    return [sid for sid, mark in at_reconnect.items() if now.get(sid) == mark]


class _Session:
    __slots__ = (
        "codec", "epoch", "event_seq", "held", "held_down", "last_cin", "last_down", "meta", "open_response",
        "replaying", "seq_out", "seq_up", "subs", "worker_epoch",
    )

    def __init__(self, meta: SessionMeta, epoch: int, worker_epoch: int, codec: ClientCodec) -> None:
        self.meta = meta
        self.epoch = epoch  # stamped on what this transformer publishes
        self.worker_epoch = worker_epoch  # down envelopes from an older epoch come from a replaced worker
        self.codec = codec
        self.seq_up = 0
        self.seq_out = 0
        self.event_seq = 0  # session-wide seq of the last numbered client frame (rs_resume; see ClientOut.first)
        self.last_cin = 0  # highest client frame seq fed to the codec: dedupes stream replay vs live
        self.open_response: str | None = None
        self.replaying = False
        self.held: list[bytes] = []  # live client frames that arrived during a replay
        self.held_down: list[bytes] = []  # live provider output that arrived during a replay
        self.last_down = (0, 0)  # (worker epoch, seq) of the newest down envelope handled: dedupes replay vs live
        self.subs: list[Subscription] = []


class Transformer:
    name = "transformer"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = instance_id("transformer", config.instance_id)
        self.sessions: dict[str, _Session] = {}
        self._tasks = TaskSet()
        self.nc: NATS | None = None
        self.gate: bus.OutageGate | None = None  # session traffic held over a bus outage (bus.OutageGate)
        self.store: Store | None = None

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        self.nc, self.store = nc, store
        self.gate = bus.OutageGate(nc)
        on_assign = self._tasks.each_in_a_task(self._on_assign)
        sub = await nc.subscribe(Subjects.ASSIGN_TRANSFORMER, queue=Subjects.QUEUE_TRANSFORMER, cb=on_assign)
        beat = asyncio.create_task(heartbeat_loop(nc, "transformer", self.instance, lambda: len(self.sessions)))
        watch = asyncio.create_task(self._watch_bus(nc))
        try:
            yield
        finally:
            beat.cancel()
            watch.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            for sid in list(self.sessions):
                await self._drop(sid)

    def _marks(self) -> dict[str, _Mark]:
        return {sid: (s.open_response, s.last_down) for sid, s in self.sessions.items()}

    async def _watch_bus(self, nc: NATS) -> None:
        """After a bus reconnect, a response that hears nothing more from its worker for the stall time
        (RS_STALL_MS, the worker's own limit for a silent provider) lost its tail on the bus: it is ended
        (failed, ``bus_interrupted``) so the client can ask again."""
        seen = nc.stats["reconnects"]
        while True:
            await asyncio.sleep(BUS_WATCH_S)
            if nc.stats["reconnects"] == seen:
                continue
            seen = nc.stats["reconnects"]
            marks = {sid: mark for sid, mark in self._marks().items() if mark[0] is not None}
            await asyncio.sleep(self.config.stall_ms / 1000)
            for sid in tails_lost(marks, self._marks()):
                session = self.sessions[sid]
                assert session.open_response is not None
                log.warning("response tail lost on the bus", extra={"sid": sid, "response": session.open_response})
                cut = ev.ResponseDone(response_id=session.open_response, status="failed", reason="bus_interrupted")
                session.open_response = None
                await self._send(session, session.codec.encode(cut))

    async def _on_assign(self, msg: Msg) -> None:
        assert self.nc is not None and self.store is not None
        try:
            req = bus.decode(msg.data, bus.AssignRequest)
        except Exception:
            await msg.respond(bus.encode(bus.AssignReply(instance=self.instance, ok=False, error="bad request")))
            return
        sid = req.meta.sid
        await self._drop(sid)  # a re-assign to the same instance starts from a clean codec
        session = _Session(req.meta, req.epoch, req.peer_epoch or req.epoch, client_codec(req.meta))
        session.replaying = req.resume
        # Event numbers go on from the session's last cout (an earlier connection, a dead transformer).
        session.event_seq = max(await self._last_event_seq(sid), req.seq_floor)
        self.sessions[sid] = session
        SESSIONS.labels("transformer").set(len(self.sessions))
        nc = self.nc
        session.subs = [
            await nc.subscribe(Subjects.cin(sid), cb=functools.partial(self._on_client, session)),
            await nc.subscribe(Subjects.down(sid), cb=functools.partial(self._on_down, session)),
            await nc.subscribe(Subjects.ctl(sid), cb=functools.partial(self._on_ctl, session)),
        ]
        await nc.flush()  # subscriptions are live on the server before the edge hears "ok"
        await msg.respond(bus.encode(bus.AssignReply(instance=self.instance, boot=BOOT)))
        if req.resume:
            # In its own task: the edge is answered as soon as the session is ours.
            self._tasks.spawn(self._start_resumed(session, req.delivered_down))
        else:
            await self._send(session, session.codec.open())
        log.info("session attached", extra={"sid": sid, "epoch": req.epoch, "resume": req.resume})

    async def _last_event_seq(self, sid: str) -> int:
        """The seq of the session's newest numbered client frame still in the stream (0: none)."""
        assert self.nc is not None
        try:
            # Bounded: the edge is waiting for this attach (a bus without JetStream must not stall it).
            async with asyncio.timeout(SEQ_LOOKUP_TIMEOUT_S):
                newest = await bus.last_in_stream(self.nc, Subjects.cout(sid))
                if newest is None:
                    return 0
                found = last_numbered([bus.decode(newest[0], bus.ClientOut)])
                if found:
                    return found
                # The newest is unnumbered (a setupComplete): look a little further back.
                recent = await bus.replay(self.nc, Subjects.cout(sid), since_s=SEQ_LOOKBACK_S)
                return last_numbered([bus.decode(data, bus.ClientOut) for data in recent])
        except Exception:  # the stream failed us: number from the floor (a resume may then see a gap)
            log.warning("cout seq lookup failed", extra={"sid": sid}, exc_info=True)
            return 0

    async def _resume(self, session: _Session, delivered: tuple[int, int]) -> None:
        """Rebuild codec state from the snapshot, then feed the client frames the dead one never turned
        into canonical events (cin in the stream after the newest up envelope), and send the client the
        provider output it never got (down after ``delivered``)."""
        assert self.nc is not None and self.store is not None
        sid = session.meta.sid
        started = asyncio.get_running_loop().time()
        # The client's item store as the dead one held it: truncations are not applied to what it retrieves.
        snapshot = await self.store.snapshot(sid, cut=False)
        session.codec.resume(snapshot.config, snapshot.items)
        last_up = await bus.last_in_stream(self.nc, Subjects.up(sid))
        since: float | None = None
        if last_up is not None:
            session.seq_up = session.last_cin = ev.decode_envelope(last_up[0]).seq
            # Only client frames from about then on can be untranslated: not the whole stream window
            # (a dead transformer's sessions all replay at once, with their audio).
            since = last_up[1] + CIN_REPLAY_MARGIN_S
        frames = await bus.replay(self.nc, Subjects.cin(sid), since_s=since)
        cin_count = len(frames)
        for data in frames:
            await self._feed(session, bus.decode(data, bus.ClientIn))
        # Output published while nobody translated (the rest of the response being streamed, or its end)
        # is sent; the part of that response the client already has only rebuilds the codec's state of it.
        recent = [ev.decode_envelope(d) for d in await bus.replay(self.nc, Subjects.down(sid), since_s=DOWN_REPLAY_S)]
        prime_from = max(
            (i for i, env in enumerate(recent)
             if (env.epoch, env.seq) <= delivered and any(isinstance(e, ev.ResponseStarted) for e in env.events)),
            default=len(recent),
        )
        for i, env in enumerate(recent):
            if i >= prime_from or (env.epoch, env.seq) > delivered:
                await self._deliver(session, env, send=(env.epoch, env.seq) > delivered)
        session.last_down = max(session.last_down, delivered)
        log.info("resume replayed", extra={
            "sid": sid, "total_ms": round((asyncio.get_running_loop().time() - started) * 1000),
            "cin": cin_count, "down": len(recent)})

    async def _start_resumed(self, session: _Session, delivered: tuple[int, int]) -> None:
        try:
            await self._resume(session, delivered)
        except Exception:  # the stream or the store failed us: go on live, with what was rebuilt
            log.exception("resume replay failed", extra={"sid": session.meta.sid})
        finally:
            session.replaying = False
            held, session.held = session.held, []
            for data in held:
                await self._feed(session, bus.decode(data, bus.ClientIn))
            held_down, session.held_down = session.held_down, []
            for data in held_down:
                await self._deliver(session, ev.decode_envelope(data))

    async def _on_client(self, session: _Session, msg: Msg) -> None:
        if session.replaying:
            session.held.append(msg.data)
            return
        frame = bus.decode(msg.data, bus.ClientIn)
        observe_hop("edge_transformer", frame.sent)  # metric observation point
        await self._feed(session, frame)

    async def _feed(self, session: _Session, frame: bus.ClientIn) -> None:
        if frame.seq <= session.last_cin:
            return  # already fed (stream replay and live delivery overlap)
        session.last_cin = frame.seq
        frame_counter("transformer", "in").inc()
        try:
            out = session.codec.feed(frame.data)
        except Exception:
            # A codec bug must not cost the frame silently nor touch other sessions: say so in the dialect.
            log.exception("codec failed on a client frame", extra={"sid": session.meta.sid})
            out = session.codec.encode(_INTERNAL_ERROR)
        await self._send(session, out, up_seq=frame.seq)

    async def _on_down(self, session: _Session, msg: Msg) -> None:
        if session.replaying:
            session.held_down.append(msg.data)
            return
        env = ev.decode_envelope(msg.data)
        observe_hop("worker_transformer", env.sent)  # metric observation point
        await self._deliver(session, env)

    async def _deliver(self, session: _Session, env: ev.Envelope, *, send: bool = True) -> None:
        """Provider events to the client; ``send=False`` only updates the codec (the client has them)."""
        if env.epoch < session.worker_epoch:
            return  # fenced: a replaced worker that was only slow
        if (env.epoch, env.seq) <= session.last_down:
            return  # already handled (stream replay and live delivery overlap)
        session.last_down = (env.epoch, env.seq)
        out = Out()
        for event in env.events:
            if isinstance(event, ev.ResponseStarted):
                session.open_response = event.response_id
            elif isinstance(event, ev.ResponseDone):
                session.open_response = None
            elif isinstance(event, ev.Notice):
                NOTICES.labels(event.code, event.param or "").inc()
                log.info("notice", extra={"sid": session.meta.sid, "code": event.code, "param": event.param})
            try:
                out.extend(session.codec.encode(event))
            except Exception:
                log.exception("codec failed on a provider event", extra={"sid": session.meta.sid})
                out.extend(session.codec.encode(_INTERNAL_ERROR))
        if send:
            await self._send(session, out, down=session.last_down)

    async def _on_ctl(self, session: _Session, msg: Msg) -> None:
        ctl = bus.decode(msg.data, bus.Control)
        if ctl.drop == self.instance or (ctl.kind == "close" and ctl.epoch >= session.epoch):
            # Not awaited here: _drop unsubscribes the very subscription running this callback, which
            # cancels it; the drop runs in its own task so it always completes.
            self._tasks.spawn(self._drop(session.meta.sid, only=session))
        elif ctl.kind == "replace" and ctl.role == "worker" and ctl.epoch > session.worker_epoch:
            session.worker_epoch = ctl.epoch
            if session.open_response is not None:
                # The response the dead worker was streaming is closed, never left hanging.
                cut = ev.ResponseDone(response_id=session.open_response, status="failed", reason="worker_replaced")
                session.open_response = None
                await self._send(session, session.codec.encode(cut))

    async def _send(
        self, session: _Session, out: Out, *, up_seq: int | None = None, down: tuple[int, int] = (0, 0)
    ) -> None:
        """Client frames to the edge, canonical events to the worker. Order within each is kept."""
        assert self.nc is not None and self.gate is not None
        sid = session.meta.sid
        if self.sessions.get(sid) is not session:
            return  # dropped (or re-assigned) while a resume was still running
        if out.wire or out.close:
            await self._send_out(session, out, down)
        events = out.events
        if any(isinstance(event, ev.SwitchRequest) for event in events):
            # A switch request is for the edge that owns the route, never for a provider.
            for event in events:
                if isinstance(event, ev.SwitchRequest):
                    signal = bus.Signal(kind="switch", epoch=session.epoch, provider=event.provider, when=event.when)
                    await self.nc.publish(Subjects.signal(sid), bus.encode(signal))
            events = [event for event in events if not isinstance(event, ev.SwitchRequest)]
        if events:
            # Up envelopes carry the cin seq of the client frame they came from (see Edge._run_session).
            session.seq_up = up_seq if up_seq is not None else session.seq_up
            envelope = bus.envelope(session.epoch, session.seq_up, events)
            if bus.part(events) == "log":
                # Stored before this session's next frame goes on (bus.publish_logged): the log loses nothing
                # while the stream elects a leader, and keeps the order the worker answered in.
                await bus.publish_logged(self.nc, Subjects.up(sid, "log"), envelope)
            else:
                await self.gate.publish(Subjects.up(sid, "live"), envelope)

    async def _send_out(self, session: _Session, out: Out, down: tuple[int, int]) -> None:
        """Client frames in one bus message, or one message per frame when together they exceed the bus's
        max_payload (a large item echoed twice); a single frame too large for the bus is replaced by an
        error in the dialect, never lost silently (the edge refuses client frames that large).

        Frames are numbered per session (``ClientOut.first``; OpenAI dialects also get the number as
        ``event_id``), except the gateway's own Gemini messages, which go in messages of their own."""
        assert self.nc is not None and self.gate is not None
        close_code, close_reason = out.close if out.close else (None, "")
        # ``down`` tells the edge how far the client got, should this transformer die (see _resume).
        runs = numbered_runs(session.meta.dialect, out.wire) or [(False, [])]
        for i, (numbered, frames) in enumerate(runs):
            closing = (close_code, close_reason) if i == len(runs) - 1 else (None, "")
            if await self._publish_out(session, numbered, frames, closing, down):
                continue
            singles: list[str] = []
            for frame in frames:
                if len(frame.encode()) + bus.FRAME_OVERHEAD_BYTES > self.nc.max_payload:
                    log.error("client frame too large for the bus",
                              extra={"sid": session.meta.sid, "bytes": len(frame)})
                    singles.extend(session.codec.encode(_TOO_LARGE).wire)
                else:
                    singles.append(frame)
            for k, frame in enumerate(singles):
                await self._publish_out(
                    session, numbered, [frame], (None, "") if k < len(singles) - 1 else closing, down, force=True)

    async def _publish_out(
        self, session: _Session, numbered: bool, frames: list[str], closing: tuple[int | None, str],
        down: tuple[int, int], *, force: bool = False,
    ) -> bool:
        """One cout message, unless it exceeds the bus's max_payload (False; ``force``: sent anyway). Numbered
        frames take the session's next event seqs and, in OpenAI dialects, the matching ``event_id``."""
        assert self.nc is not None
        first = session.event_seq + 1 if numbered and frames else 0
        stamp = STAMPS.get(session.meta.dialect)
        if first and stamp is not None:
            frames = [stamp(frame, first + k) for k, frame in enumerate(frames)]
        out = bus.ClientOut(session.epoch, session.seq_out + 1, frames, *closing, down, first=first)
        payload = bus.encode(out)
        if not force and len(payload) + bus.FRAME_OVERHEAD_BYTES > self.nc.max_payload:
            return False
        session.seq_out += 1
        session.event_seq += len(frames) if first else 0
        await self.gate.publish(Subjects.cout(session.meta.sid), payload)
        return True

    async def _drop(self, sid: str, only: _Session | None = None) -> None:
        """Let ``sid`` go; with ``only``, just that incarnation (a close for an older one must not drop the
        session re-assigned here meanwhile)."""
        if only is not None and self.sessions.get(sid) is not only:
            return
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        for sub in session.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        SESSIONS.labels("transformer").set(len(self.sessions))
        log.info("session detached", extra={"sid": sid, "epoch": session.epoch})


# -- event numbering (pure) ----------------------------------------------------------------------------

# Frames the gateway sends a Gemini client of its own accord: not numbered (a Gemini client counts the
# other messages, and the edge answers a resuming connection's setup itself).
_GEMINI_UNNUMBERED = ('{"setupComplete"', '{"rs')
_OPENAI_HEAD = '{"type":"'
_OPENAI_ID = ',"event_id":"'


def is_numbered(dialect: str, frame: str) -> bool:
    return dialect != "gemini" or not frame.startswith(_GEMINI_UNNUMBERED)


def numbered_runs(dialect: str, frames: list[str]) -> list[tuple[bool, list[str]]]:
    """The frames in runs of the same kind (numbered or not), order kept."""
    runs: list[tuple[bool, list[str]]] = []
    for frame in frames:
        numbered = is_numbered(dialect, frame)
        if runs and runs[-1][0] == numbered:
            runs[-1][1].append(frame)
        else:
            runs.append((numbered, [frame]))
    return runs


def stamp_openai(frame: str, seq: int) -> str:
    """``{"type":"x","event_id":"event_...",...}`` -> the same with ``"event_id":"event_rs_<seq>"``: the id a
    client resumes from, unique per session. The codec writes ``type`` then ``event_id`` first; any other
    shape is left as it is (the frame still counts)."""
    if not frame.startswith(_OPENAI_HEAD):
        return frame
    type_end = frame.find('"', len(_OPENAI_HEAD))
    if type_end < 0 or not frame.startswith(_OPENAI_ID, type_end + 1):
        return frame
    id_start = type_end + 1 + len(_OPENAI_ID)
    id_end = frame.find('"', id_start)
    if id_end < 0:
        return frame
    return f"{frame[:id_start]}event_rs_{seq}{frame[id_end:]}"


STAMPS = {"openai_ga": stamp_openai, "openai_beta": stamp_openai}


def last_numbered(outs: list[bus.ClientOut]) -> int:
    """The seq of the newest numbered frame among ``outs`` (oldest first); 0: none."""
    for out in reversed(outs):
        if out.first and out.frames:
            return out.first + len(out.frames) - 1
    return 0
