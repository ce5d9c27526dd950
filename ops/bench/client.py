"""Load client for the bench: one process, one asyncio loop, many raw-websocket sessions.

Each session speaks the OpenAI Realtime GA dialect with turn detection off: it streams 20 ms PCM16
frames (``input_audio_buffer.append``) on an absolute schedule and, once per turn, sends
``input_audio_buffer.commit`` + ``response.create`` and times the round trip to the first
``response.output_audio.delta``. The same code runs against the gateway's edge and against the fake
directly (the baseline), so the difference is what the gateway adds.

Raw ``websockets`` on purpose: the SDK's pydantic parsing would dominate the client side. Incoming
frames are decoded only as far as ``type`` (msgspec skips the rest).

The parent (``ops.bench.run``) drives a client process (``python -m ops.bench.client``) with JSON lines
on stdin/stdout: the spec -> connect all sessions and do one turn each (time to first audio) ->
``{"ready": info}``; then ``{"go": t0}`` streams until ``t0 + seconds`` and answers ``{"result": ...}``,
or ``{"close": true}`` closes the sessions (idle-memory phase) and answers ``{"result": ...}``.
All times are ``time.monotonic()`` (CLOCK_MONOTONIC: comparable across processes on one machine).
"""

from __future__ import annotations

import array
import asyncio
import base64
import contextlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection

__all__ = ["AUDIO_DELTA", "LoadSpec", "commit_frames", "frame_message", "main", "session_update"]

RATE = 24_000
AUDIO_DELTA = "response.output_audio.delta"
CONNECT_CONCURRENCY = 16  # connects in flight per client process: each one costs the gateway an assign
TAIL_WAIT_S = 5.0  # after the window, how long an unanswered request may still answer (else: lost)


class LoadSpec(msgspec.Struct, kw_only=True):
    url: str
    headers: dict[str, str]
    sessions: int
    index_base: int = 0  # this process's first session index (phases are staggered over all sessions)
    total_sessions: int = 0  # sessions over all client processes
    seconds: float = 10.0
    warmup_s: float = 1.0  # requests sent before t0 + warmup are not counted
    frame_ms: int = 20
    turn_ms: int = 1000
    compression: str | None = None  # "deflate" or None
    session_prefix: str = ""  # gateway runs: rs_u_sessid=<prefix>-<index> (the parent reads their epochs)
    turns: bool = True  # False: stream frames only (the background load of the peer comparison; probes time)
    connect_timeout_s: float = 60.0


class _Head(msgspec.Struct):
    type: str = ""
    error: dict[str, Any] | None = None


_head = msgspec.json.Decoder(_Head)


def frame_message(frame_ms: int) -> str:
    """One ``input_audio_buffer.append`` with ``frame_ms`` of a 440 Hz tone: built once, sent by all.

    Self-contained (no numpy, nothing from the gateway): the client process starts fast and measures
    the gateway from the outside."""
    n = frame_ms * RATE // 1000
    samples = array.array("h", (round(8000 * math.sin(2 * math.pi * 440 * i / RATE)) for i in range(n)))
    if sys.byteorder == "big":
        samples.byteswap()  # PCM16 is little-endian on the wire
    return json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(samples.tobytes()).decode()})


def session_update() -> str:
    return json.dumps(
        {"type": "session.update", "session": {"type": "realtime", "audio": {"input": {"turn_detection": None}}}}
    )


def commit_frames() -> tuple[str, str]:
    return (json.dumps({"type": "input_audio_buffer.commit"}), json.dumps({"type": "response.create"}))


@dataclass
class _Session:
    index: int
    ws: ClientConnection
    frame_phase: float
    turn_phase: float
    t_req: float | None = None  # monotonic time of the unanswered request of this turn
    active: bool = False  # a response is open (a new response.create would be refused)
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # first audio of the current turn
    done: asyncio.Event = field(default_factory=asyncio.Event)  # response.done of the current turn
    updated: asyncio.Event = field(default_factory=asyncio.Event)
    created: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None


@dataclass
class _Stats:
    latency_ms: list[float] = field(default_factory=list)
    ttfa_ms: list[float] = field(default_factory=list)
    lag_ms: list[float] = field(default_factory=list)
    frames: int = 0
    turns: int = 0
    deferred: int = 0  # turn ticks skipped because the previous response was still open
    lost: int = 0
    connect_failures: int = 0
    closed_early: int = 0
    deflate: int = 0  # sessions whose link negotiated permessage-deflate
    errors: dict[str, int] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)
    counting: bool = False

    def error(self, code: str) -> None:
        self.errors[code] = self.errors.get(code, 0) + 1


class _Load:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.stats = _Stats()
        self.sessions: list[_Session] = []
        self.frame = frame_message(spec.frame_ms)
        self.commit, self.create = commit_frames()
        self.update = session_update()

    # -- receive side ------------------------------------------------------------------------------

    async def _read(self, s: _Session) -> None:
        stats = self.stats
        try:
            async for raw in s.ws:
                head = _head.decode(raw)
                kind = head.type
                if kind == AUDIO_DELTA:
                    if s.t_req is not None:
                        now = time.monotonic()
                        if stats.counting and s.t_req >= stats.window[0]:
                            stats.latency_ms.append((now - s.t_req) * 1000)
                        s.t_req = None
                        s.answered.set()
                elif kind == "response.done":
                    s.active = False
                    s.done.set()
                elif kind == "session.created":
                    s.created.set()
                elif kind == "session.updated":
                    s.updated.set()
                elif kind == "error":
                    stats.error(str((head.error or {}).get("code") or "error"))
        except websockets.ConnectionClosed:
            pass
        finally:
            s.answered.set()
            s.done.set()

    # -- sessions ----------------------------------------------------------------------------------

    async def _open(self, index: int, gate: asyncio.Semaphore) -> None:
        spec = self.spec
        total = spec.total_sessions or spec.sessions
        position = (spec.index_base + index) / total
        async with gate:
            started = time.monotonic()
            s: _Session | None = None
            try:
                async with asyncio.timeout(spec.connect_timeout_s):
                    url = spec.url
                    if spec.session_prefix:
                        url += f"&rs_u_sessid={spec.session_prefix}-{spec.index_base + index}"
                    ws = await websockets.connect(
                        url, additional_headers=spec.headers, compression=spec.compression,
                        max_size=None, ping_interval=None, open_timeout=spec.connect_timeout_s,
                    )
                    # Turn phases spread over the turn interval so requests do not arrive in bursts.
                    self.stats.deflate += bool(ws.protocol.extensions)
                    s = _Session(index, ws, position * spec.frame_ms / 1000, position * spec.turn_ms / 1000)
                    s.reader = asyncio.create_task(self._read(s))
                    await s.created.wait()
                    await ws.send(self.update)
                    await s.updated.wait()
                    # First turn right away: time to first audio of a new session, connect included.
                    for _ in range(max(5, 100 // spec.frame_ms)):  # >= 100 ms: smaller commits are refused
                        await ws.send(self.frame)
                    s.done.clear()
                    s.active = True
                    s.t_req = time.monotonic()
                    await ws.send(self.commit)
                    await ws.send(self.create)
                    await s.answered.wait()
                    self.stats.ttfa_ms.append((time.monotonic() - started) * 1000)
                    await s.done.wait()
                    if ws.state is not websockets.State.OPEN:
                        raise ConnectionError("closed during the first turn")
            except (TimeoutError, OSError, websockets.WebSocketException, ConnectionError) as exc:
                self.stats.connect_failures += 1
                self.stats.error(f"connect:{type(exc).__name__}")
                if s is not None:
                    await self._close(s)
                return
            except asyncio.CancelledError:  # the connect deadline of the run (counted by open_all)
                if s is not None:
                    await self._close(s)
                raise
        self.sessions.append(s)

    async def open_all(self) -> None:
        """Every session opens and does its first turn, or counts as a connect failure once the run's
        connect deadline passes (an overloaded gateway must not hang the bench)."""
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        tasks = [asyncio.create_task(self._open(i, gate)) for i in range(self.spec.sessions)]
        _, pending = await asyncio.wait(tasks, timeout=self.spec.connect_timeout_s)
        for task in pending:
            task.cancel()
            self.stats.connect_failures += 1
            self.stats.error("connect:deadline")
        await asyncio.gather(*pending, return_exceptions=True)

    @staticmethod
    async def _close(s: _Session) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.ws.close(), 5)
        if s.reader is not None:
            s.reader.cancel()
            with contextlib.suppress(BaseException):
                await s.reader

    async def close_all(self) -> None:
        await asyncio.gather(*(self._close(s) for s in self.sessions))

    # -- streaming ---------------------------------------------------------------------------------

    async def _stream(self, s: _Session, t0: float, end: float) -> None:
        spec, stats = self.spec, self.stats
        frame_s, turn_s = spec.frame_ms / 1000, spec.turn_ms / 1000
        due = t0 + s.frame_phase
        next_turn = t0 + s.turn_phase
        since_commit = 0
        min_frames = max(5, 100 // spec.frame_ms)
        ws = s.ws
        while due < end:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            now = time.monotonic()
            if stats.counting:
                stats.lag_ms.append((now - due) * 1000)  # how late the client itself is (sanity check)
            try:
                await ws.send(self.frame)
                stats.frames += 1 if stats.counting else 0
                since_commit += 1
                if spec.turns and now >= next_turn and since_commit >= min_frames:
                    if s.active:
                        stats.deferred += 1
                    else:
                        s.active = True
                        s.answered.clear()
                        s.done.clear()
                        s.t_req = time.monotonic()
                        await ws.send(self.commit)
                        await ws.send(self.create)
                        since_commit = 0
                        stats.turns += 1
                    while next_turn <= now:
                        next_turn += turn_s
            except websockets.ConnectionClosed:
                stats.closed_early += 1
                return
            due += frame_s

    async def _tail(self, s: _Session) -> None:
        """An open request at the end of the window still counts: wait for its answer, else it is lost."""
        if s.t_req is None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(s.answered.wait(), TAIL_WAIT_S)
        if s.t_req is not None and s.t_req >= self.stats.window[0]:
            self.stats.lost += 1

    async def stream(self, t0: float) -> None:
        spec, stats = self.spec, self.stats
        end = t0 + spec.seconds
        stats.window = (t0 + spec.warmup_s, end)
        # loop.time() is time.monotonic() on asyncio and uvloop: the window opens on the loop's clock.
        asyncio.get_running_loop().call_at(stats.window[0], setattr, stats, "counting", True)
        await asyncio.gather(*(self._stream(s, t0, end) for s in self.sessions))
        stats.counting = True  # a very short window: the tail still counts
        await asyncio.gather(*(self._tail(s) for s in self.sessions))

    def result(self) -> dict[str, Any]:
        st = self.stats
        return {
            "latency_ms": st.latency_ms,
            "ttfa_ms": st.ttfa_ms,
            "lag_ms": st.lag_ms,
            "frames": st.frames,
            "window_s": max(0.0, st.window[1] - st.window[0]),
            "turns": st.turns,
            "deferred": st.deferred,
            "lost": st.lost,
            "connected": len(self.sessions),
            "connect_failures": st.connect_failures,
            "closed_early": st.closed_early,
            "deflate": st.deflate,
            "errors": st.errors,
        }


def _say(tag: str, payload: Any) -> None:
    sys.stdout.write(json.dumps({tag: payload}) + "\n")
    sys.stdout.flush()


async def _drive(spec: LoadSpec) -> None:
    loop = asyncio.get_running_loop()
    load = _Load(spec)
    await load.open_all()
    _say("ready", {"connected": len(load.sessions), "connect_failures": load.stats.connect_failures})
    command = json.loads(await loop.run_in_executor(None, sys.stdin.readline) or '{"close": true}')
    if "go" in command:
        await load.stream(float(command["go"]))
    await load.close_all()
    _say("result", load.result())


def main() -> None:
    """``python -m ops.bench.client``: one JSON line of LoadSpec on stdin; JSON lines on stdout
    (``{"ready": ...}``, then ``{"result": ...}`` after ``{"go": t0}`` or ``{"close": true}`` on stdin)."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    spec = msgspec.json.decode(sys.stdin.readline(), type=LoadSpec)
    try:
        asyncio.run(_drive(spec))
    except Exception as exc:  # the parent reports it instead of waiting for a result forever
        _say("failed", f"{type(exc).__name__}: {exc}")
        raise


if __name__ == "__main__":
    main()


# -- the switch phase's client: one session, every event timestamped on arrival -------------------------


class TimedSession:
    """One raw-websocket session (either the gateway or the fake directly) whose events are read by a task
    and kept with their arrival time (``time.monotonic()``), so a measure does not include the time the
    caller took to look. ``closed_at``: when the socket was found closed (a provider dropping a direct client)."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[tuple[float, dict[str, Any]]] = asyncio.Queue()
        self.closed_at: float | None = None
        self.closed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def open(cls, url: str, headers: dict[str, str]) -> TimedSession:
        ws = await websockets.connect(url, additional_headers=headers, compression=None, max_size=None)
        return cls(ws)

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.queue.put_nowait((time.monotonic(), json.loads(raw)))
        except websockets.ConnectionClosed:
            pass
        finally:
            self.closed_at = time.monotonic()
            self.closed.set()

    async def next(self, *types: str, timeout_s: float = 20.0) -> tuple[float, dict[str, Any]]:
        """The next event of one of ``types`` (earlier ones are passed over): (arrival time, event)."""
        async with asyncio.timeout(timeout_s):
            while True:
                at, event = await self.queue.get()
                if event.get("type") in types:
                    return at, event

    async def events_until(self, *types: str, timeout_s: float = 20.0) -> list[tuple[float, dict[str, Any]]]:
        """Every event up to and including the next one of ``types``."""
        seen: list[tuple[float, dict[str, Any]]] = []
        async with asyncio.timeout(timeout_s):
            while True:
                at, event = await self.queue.get()
                seen.append((at, event))
                if event.get("type") in types:
                    return seen

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def say(self, text: str, role: str = "user") -> None:
        kind = "input_text" if role == "user" else "output_text"
        await self.send({"type": "conversation.item.create",
                         "item": {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}})

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(Exception):
            await self.ws.close()
