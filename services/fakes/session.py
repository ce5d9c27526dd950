"""One upstream session of either fake: its single writer (:class:`Outbox`), its in-flight responses
(:class:`Streamer`) and the state both providers share (:class:`SessionBase`).

Every server event goes through the :class:`Outbox`, so the fault knobs (latency, stall, close) cover all of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from services.fakes.conversation import Item
from services.fakes.knobs import Knobs

if TYPE_CHECKING:
    from services.fakes.server import FakeServer

log = logging.getLogger(__name__)

# WebSocket close reasons are limited to 123 bytes (RFC 6455 5.5: 125-byte control payload minus the code).
_MAX_CLOSE_REASON = 123

# ---------------------------------------------------------------------------------------------------------------------
# Outbox: the one writer per session


@dataclass(frozen=True, slots=True)
class _Close:
    code: int
    reason: str


class Outbox:
    """Ordered writer for one session: every server event goes through here, so the fault knobs cover all.

    ``send`` only enqueues; a writer task applies ``latency_ms`` (as a delay from enqueue time, order kept),
    ``stall_after`` (drop silently) and ``close_after`` (close with ``close_code``), then writes a text frame.
    ``stalled`` (set by :meth:`SessionBase.fault_point` for ``stall_on``) drops at enqueue time instead, so what
    was queued before the stall still goes out.
    """

    def __init__(self, ws: ServerConnection, knobs: Callable[[], Knobs], *, maxsize: int = 4096) -> None:
        self._ws = ws
        self._knobs = knobs
        self._queue: asyncio.Queue[tuple[float, bytes | _Close]] = asyncio.Queue(maxsize)
        self._loop = asyncio.get_running_loop()
        self.sent = 0
        self.dropped = 0
        self.stalled = False  # set by the ``stall_on`` knob; silent while that knob stays set
        self.closing = False  # a close is queued behind the pending events
        self.finished = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="fake-outbox")

    @property
    def is_open(self) -> bool:
        return not self.finished.is_set()

    async def send(self, payload: bytes) -> None:
        if self.finished.is_set():
            return
        if self.stalled:
            if self._knobs().stall_on is not None:
                self.dropped += 1  # decided at enqueue time, so everything queued before the stall still goes out
                return
            self.stalled = False  # the knob was cleared: the session speaks again
        await self._queue.put((self._loop.time(), payload))

    async def close(self, code: int, reason: str) -> None:
        """Close after everything already queued (order matters: OpenAI sends ``error`` and then closes)."""
        if self.finished.is_set() or self.closing:
            return
        self.closing = True
        reason = reason.encode()[:_MAX_CLOSE_REASON].decode(errors="ignore")
        await self._queue.put((self._loop.time(), _Close(code, reason)))

    async def wait_finished(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.finished.wait(), timeout)

    def cancel(self) -> None:
        self._task.cancel()

    async def _run(self) -> None:
        try:
            while True:
                queued_at, msg = await self._queue.get()
                knobs = self._knobs()
                if knobs.latency_ms > 0:
                    delay = queued_at + knobs.latency_ms / 1000 - self._loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if isinstance(msg, _Close):
                    await self._ws.close(msg.code, msg.reason)
                    return
                if knobs.close_after is not None and self.sent >= knobs.close_after:
                    await self._ws.close(knobs.close_code, knobs.close_reason)
                    return
                if knobs.stall_after is not None and self.sent >= knobs.stall_after:
                    self.dropped += 1
                    continue
                await self._ws.send(msg, text=True)  # text frames: both providers send JSON as text here
                self.sent += 1
        except ConnectionClosed:
            pass
        finally:
            self.finished.set()
            # Wake producers blocked on a full queue; their items are dropped (nobody is listening any more).
            while not self._queue.empty():
                self._queue.get_nowait()


# ---------------------------------------------------------------------------------------------------------------------
# Streaming one response


class Streamer:
    """One in-flight response: a task plus a cooperative cancel flag, and the pacing both fakes share.

    Cancellation is cooperative so the response itself emits its closing events (OpenAI ``*.done`` with
    status cancelled, Gemini ``interrupted``) in order, before whatever the canceller sends next.
    """

    def __init__(self) -> None:
        self.cancel_reason: str | None = None
        self.task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._t0: float | None = None

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    async def hold(self, seconds: float) -> bool:
        """Wait ``seconds`` (the ``first_audio_delay_ms`` knob); False once cancelled, which ends the wait early."""
        if seconds > 0 and self.cancel_reason is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        return self.cancel_reason is None

    async def pace(self, index: int, knobs: Knobs) -> bool:
        """Wait until chunk ``index`` is due; False once cancelled. Pace 0 still yields so cancels can land."""
        if self.cancel_reason is not None:
            return False
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        interval = knobs.chunk_ms * knobs.pace / 1000
        delay = self._t0 + index * interval - loop.time() if interval > 0 else 0.0
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
        else:
            await asyncio.sleep(0)
        return self.cancel_reason is None

    async def cancel(self, reason: str) -> None:
        """Ask the response to stop, then wait until it has sent its closing events."""
        if self.cancel_reason is None:
            self.cancel_reason = reason
        self._wake.set()
        if self.task is not None and self.task is not asyncio.current_task():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.task)

    async def wait(self) -> None:
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self.task)


# ---------------------------------------------------------------------------------------------------------------------
# Sessions and the server

# Handshake headers carry no information about the client; auth headers are listed by name only.
_HANDSHAKE_HEADERS = frozenset(
    {"host", "upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)
_SECRET_HEADERS = frozenset({"authorization", "api-key", "x-goog-api-key", "cookie", "proxy-authorization"})
_SECRET_QUERY = frozenset({"key", "access_token", "api-key", "api_key"})
REDACTED = "<redacted>"


def _redacted_headers(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.raw_items():
        low = name.lower()
        if low in _HANDSHAKE_HEADERS:
            continue
        out[low] = REDACTED if low in _SECRET_HEADERS else value
    return out


class SessionBase:
    """State common to one upstream session of either fake; subclasses own the protocol.

    Owns the session's :class:`Outbox`, its background tasks and the conversation (``items``); never touches
    another session. ``run()`` is the provider's receive loop.
    """

    provider: ClassVar[str] = ""

    def __init__(self, server: FakeServer, ws: ServerConnection, sid: str) -> None:
        self.server = server
        self.ws = ws
        self.id = sid
        request = ws.request
        assert request is not None  # the handler only runs after a handshake
        split = urlsplit(request.path)
        self.path = split.path
        self.query: dict[str, str] = {
            k: (REDACTED if k in _SECRET_QUERY else v) for k, v in parse_qsl(split.query, keep_blank_values=True)
        }
        self.headers = _redacted_headers(request.headers)
        self.dialect = self.provider
        self.model: str | None = None
        self.items: list[Item] = []
        self.input_rate = 0
        self.responses = 0
        self.live = True
        self.created_at = time.time()
        self.closed_at: float | None = None
        self.outbox = Outbox(ws, self.knobs)
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- knobs and tasks ------------------------------------------------------------------------------------------

    def knobs(self) -> Knobs:
        return self.server.knobs.effective(self.id)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "fake-task") -> asyncio.Task[Any]:
        """A background task owned by this session (cancelled at teardown; failures logged, never lost)."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("fake session task failed", exc_info=task.exception(), extra={"sid": self.id})

    def start_timers(self) -> None:
        """Duration-cap timer, read once at session start (a later knob change applies to new sessions)."""
        cap = self.knobs().session_cap_s
        if cap is not None:
            self.spawn(self._after(cap, self.on_session_cap), name="fake-session-cap")

    def on_knobs_set(self, names: Collection[str]) -> None:
        """Knobs of this session were set through ``/control`` (timers read at start may start now)."""

    async def _after(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(seconds)
        if self.outbox.is_open:
            await action()

    async def on_session_cap(self) -> None:
        raise NotImplementedError

    async def fault_point(self, moment: str) -> None:
        """A response reached ``moment`` (``request`` / ``response``): apply ``stall_on`` / ``close_on`` there."""
        knobs = self.knobs()
        if knobs.stall_on == moment:
            self.outbox.stalled = True
        if knobs.close_on == moment:
            await self.outbox.close(knobs.close_code, knobs.close_reason)

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        raise NotImplementedError

    async def teardown(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.outbox.closing:  # let a queued close (1007, cap, ...) reach the client first
            await self.outbox.wait_finished(2.0)
        self.outbox.cancel()
        self.live = False
        self.closed_at = time.time()

    # -- debug ------------------------------------------------------------------------------------------------------

    def config_view(self) -> Any:
        raise NotImplementedError

    def extra_debug(self) -> dict[str, Any]:
        return {}

    def to_debug(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.provider,
            "dialect": self.dialect,
            "live": self.live,
            "model": self.model,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "config": self.config_view(),
            "items": [item.to_debug() for item in self.items],
            "input_rate": self.input_rate,
            "turns": sum(1 for item in self.items if item.is_user_message),
            "responses": self.responses,
            "events_sent": self.outbox.sent,
            "events_dropped": self.outbox.dropped,
            "created_at": self.created_at,
            "closed_at": self.closed_at,
            "close_code": self.ws.close_code if not self.live else None,
            "close_reason": self.ws.close_reason if not self.live else None,
            **self.extra_debug(),
        }
