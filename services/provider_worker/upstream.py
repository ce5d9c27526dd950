"""The upstream connection's state and policies, sans I/O: every input is an argument, time included.

- :class:`Upstream` / :data:`TRANSITIONS`: the connection's state, one table of transitions.
- :class:`Backoff`: how long to wait before the next connect (capped exponential, jittered).
- :class:`StallWatch`: a response open and no upstream bytes for too long.
- :class:`TurnTimer`: per response, first audio after the end of the user's turn (the ``turn`` signal).
- :func:`failure_reason`: the ``failure`` signal's reason for an upstream failure, from tables.
- :func:`switched_event`: what a worker taking over a switched session announces first.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from shared import events as ev

__all__ = [
    "CONNECTION_LIMIT_ERRORS",
    "TRANSITIONS",
    "Backoff",
    "IllegalTransition",
    "InputLoss",
    "StallWatch",
    "Trigger",
    "TurnTimer",
    "Upstream",
    "close_failure",
    "ends_connection",
    "error_failure",
    "failure_reason",
    "http_failure",
    "step",
    "switched_event",
]


class Upstream(enum.Enum):
    """Where the session's upstream connection is. Input is queued unless it ``sends``."""

    IDLE = "idle"  # not connected yet (a new session, or a replacement replaying the stream)
    CONNECTING = "connecting"  # dialling, sending the setup, the history and the queued input
    OPEN = "open"  # input goes straight to the provider
    ROTATING = "rotating"  # closed by us to be replaced: the provider is going away (a plan, not a loss)
    RECONFIGURING = "reconfiguring"  # closed by us: the provider takes this config only at setup
    ABANDONED = "abandoned"  # closed by us because it failed (a response stalled): a loss
    SWITCHING = "switching"  # closed by us: the session moves to another provider (or a fresh connection)
    HANDOVER = "handover"  # a prepared upstream takes over (make-before-break): input waits for it
    BACKOFF = "backoff"  # lost; waiting before the next connect
    FAILED = "failed"  # given up: the client was told (fatal)
    CLOSED = "closed"  # the session was dropped

    @property
    def sends(self) -> bool:
        """Whether input is encoded onto the socket rather than queued. A socket closing on purpose still
        takes it: what it cannot commit any more is replayed from the stream on the next connection."""
        return self in (Upstream.OPEN, Upstream.ROTATING, Upstream.RECONFIGURING, Upstream.SWITCHING)


class Trigger(enum.Enum):
    DIAL = "dial"
    OPENED = "opened"  # socket open, setup, history and queued input sent
    GOING_AWAY = "going_away"  # replace it now (goAway at a turn boundary, or its deadline)
    STALLED = "stalled"  # a response open and no bytes: give it up now
    RECONFIGURE = "reconfigure"
    SWITCH = "switch"  # the edge moved the session to another provider: connect there now
    HAND_OVER = "hand_over"  # cut over to an upstream already connected and set up (make-before-break)
    LOST = "lost"  # the socket ended (or never opened)
    FATAL = "fatal"
    DROP = "drop"


_U, _T = Upstream, Trigger
_LIVE = (_U.IDLE, _U.CONNECTING, _U.OPEN, _U.ROTATING, _U.RECONFIGURING, _U.ABANDONED, _U.SWITCHING, _U.HANDOVER,
         _U.BACKOFF)
_CLOSING = (_U.ROTATING, _U.RECONFIGURING, _U.ABANDONED)  # closed by us: the first reason sticks
TRANSITIONS: dict[tuple[Upstream, Trigger], Upstream] = {
    (_U.IDLE, _T.DIAL): _U.CONNECTING,
    (_U.BACKOFF, _T.DIAL): _U.CONNECTING,
    (_U.CONNECTING, _T.OPENED): _U.OPEN,
    (_U.CONNECTING, _T.LOST): _U.BACKOFF,
    # A goAway may arrive before the setup is done (the history is still being sent).
    (_U.CONNECTING, _T.GOING_AWAY): _U.ROTATING,
    (_U.OPEN, _T.GOING_AWAY): _U.ROTATING,
    (_U.OPEN, _T.STALLED): _U.ABANDONED,
    (_U.OPEN, _T.RECONFIGURE): _U.RECONFIGURING,
    (_U.CONNECTING, _T.RECONFIGURE): _U.RECONFIGURING,
    (_U.OPEN, _T.LOST): _U.BACKOFF,
    # A switch wins over any other reason to close: the next connection goes to the new provider anyway.
    **{(state, _T.SWITCH): _U.SWITCHING for state in (_U.CONNECTING, _U.OPEN, *_CLOSING, _U.SWITCHING)},
    **{(_U.SWITCHING, trigger): _U.SWITCHING for trigger in (_T.GOING_AWAY, _T.STALLED, _T.RECONFIGURE)},
    (_U.SWITCHING, _T.LOST): _U.BACKOFF,
    # Make-before-break: the old socket is closed on the way, the prepared one is the next connection.
    (_U.OPEN, _T.HAND_OVER): _U.HANDOVER,
    (_U.HANDOVER, _T.DIAL): _U.CONNECTING,
    (_U.HANDOVER, _T.LOST): _U.BACKOFF,
    (_U.HANDOVER, _T.SWITCH): _U.SWITCHING,
    **{(_U.HANDOVER, trigger): _U.HANDOVER for trigger in (_T.GOING_AWAY, _T.STALLED, _T.RECONFIGURE)},
    # Already being replaced: the next connection takes the new config anyway.
    **{(state, trigger): state for state in _CLOSING for trigger in (_T.GOING_AWAY, _T.STALLED, _T.RECONFIGURE)},
    **{(state, _T.LOST): _U.BACKOFF for state in _CLOSING},
    **{(state, _T.FATAL): _U.FAILED for state in _LIVE},
    **{(state, _T.DROP): _U.CLOSED for state in (*_LIVE, _U.FAILED, _U.CLOSED)},
}


class IllegalTransition(RuntimeError):
    pass


def step(state: Upstream, trigger: Trigger) -> Upstream:
    try:
        return TRANSITIONS[(state, trigger)]
    except KeyError:
        raise IllegalTransition(f"{trigger.value} in {state.value}") from None


class InputLoss(enum.Enum):
    """Input beyond the queue while disconnected: never dropped silently, the client is told once."""

    NONE = "none"
    LOST = "lost"  # some was dropped, the client not told yet
    TOLD = "told"


@dataclass
class Backoff:
    """Delay before the next connect, after the connection ``lived_s`` (None: it never opened).

    A failed connect, and a connection that dies within ``short_lived_s`` of its setup (whatever the
    reason, a planned rotation included: a provider that sends goAway right after every setup), add to
    the streak, and the delay doubles from ``base_s`` to ``cap_s``, times a jitter in [0.5, 1] (``rand``
    in [0, 1): sessions that lost the same provider at once do not redial in step). A connection that
    lived longer resets the streak: then a planned replacement is immediate and an unplanned loss waits
    the base delay. A reconfiguration (the client changed what the provider takes only at setup) is
    ours, and always immediate. ``connect_failures`` counts consecutive connections that did not open or
    ended in an error (``failed``: an abnormal close), for the worker's give-up rule."""

    base_s: float = 0.1
    cap_s: float = 5.0
    short_lived_s: float = 3.0
    streak: int = 0
    connect_failures: int = 0

    def after(self, *, lived_s: float | None, planned: bool = False, reconfigure: bool = False,
              failed: bool = False, rand: float) -> float:
        if lived_s is None or failed:
            self.connect_failures += 1
        else:
            self.connect_failures = 0
        if reconfigure:
            return 0.0
        if lived_s is None or lived_s < self.short_lived_s:
            self.streak += 1
        else:
            self.streak = 0
            if planned:
                return 0.0
        return min(self.cap_s, self.base_s * 2 ** self.streak) * (0.5 + rand / 2)


@dataclass
class StallWatch:
    """A response is open and the upstream sent nothing for ``limit_s``. Times are loop seconds."""

    limit_s: float
    _open: bool = False
    _last: float = 0.0

    def bytes_in(self, now: float) -> None:
        self._last = now

    def response(self, is_open: bool, now: float) -> None:
        if is_open and not self._open:
            self._last = now  # counted from the start of the response at the earliest
        self._open = is_open

    def remaining(self, now: float) -> float | None:
        """Seconds until the stall (0: stalled); None while no response is open."""
        if not self._open:
            return None
        return max(0.0, self._last + self.limit_s - now)

    def stalled_for(self, now: float) -> float:
        return now - self._last


@dataclass
class TurnTimer:
    """Per response, ms from the end of the user's turn (speech stopped, the provider's commit, or the
    ``response.create``, whichever came first) to its first audio. Times are loop seconds."""

    _end: float | None = None
    _timed: set[str] = field(default_factory=set)

    def user_speaking(self) -> None:
        self._end = None  # a barge-in or a new turn: the next end counts

    def turn_end(self, now: float) -> None:
        if self._end is None:
            self._end = now

    def response_done(self, response_id: str) -> None:
        if response_id not in self._timed:
            self._end = None  # answered without audio, or cut before it: the next turn starts afresh

    def first_audio(self, response_id: str, now: float) -> float | None:
        """The turn latency in ms at the first audio of ``response_id``; None after the first, or when
        nothing marked the end of the turn (a response the provider started by itself)."""
        if response_id in self._timed:
            return None
        self._timed.add(response_id)
        if len(self._timed) > 64:  # bounded: only the current response can still get audio
            self._timed = {response_id}
        end, self._end = self._end, None
        return None if end is None else round((now - end) * 1000, 1)


# ``failure`` signal reasons. Failures not in these tables (a 401, a clean close) are not the
# provider's health: the switch policy does not count them.
_HTTP_FAILURES: dict[int, str] = {429: "http_429", **{status: "http_5xx" for status in range(500, 600)}}
_CLOSE_FAILURES: dict[int, str] = {1011: "close_1011"}


def http_failure(status: int) -> str | None:
    """An upgrade answered with ``status``."""
    return _HTTP_FAILURES.get(status)


def close_failure(code: int | None) -> str | None:
    """The provider closed the socket with ``code``."""
    return _CLOSE_FAILURES.get(code) if code is not None else None


# Provider error codes that announce the provider's own end of the connection by its limits (OpenAI's
# ``session_expired`` at the session cap, just before it closes with 1001): a recycle on the same
# provider, which the client is not told about and the switch policy does not count.
CONNECTION_LIMIT_ERRORS: frozenset[str] = frozenset({"session_expired"})


def ends_connection(error: ev.ProviderError) -> bool:
    """The provider ends this connection by its own limit (``CONNECTION_LIMIT_ERRORS``): recycle it."""
    return error.code in CONNECTION_LIMIT_ERRORS


def error_failure(error: ev.ProviderError) -> str | None:
    """A provider error event: a failure when the codec marks it the provider's (retryable or fatal),
    unless it only announces the connection's planned end (``ends_connection``)."""
    if ends_connection(error):
        return None
    return "error" if error.retryable or error.fatal else None


def failure_reason(exc: BaseException, *, opened: bool) -> str | None:
    """The ``failure`` reason of the exception that ended a connection (``opened``: the socket had
    opened): refused / unreachable / timed out before it opened, an HTTP status at the upgrade, a close
    code. None: not a provider failure the switch policy counts."""
    if isinstance(exc, InvalidStatus):
        return http_failure(exc.response.status_code)
    if isinstance(exc, ConnectionClosed):
        return close_failure(exc.rcvd.code if exc.rcvd is not None else None)
    if not opened and isinstance(exc, OSError | TimeoutError | WebSocketException):
        return "connect"
    return None


def switched_event(switch_from: str, switch_reason: str, switch_started_ms: int, to_provider: str,
                   now_ms: int) -> ev.Switched | None:
    """What a worker that took a switched session over publishes first once its upstream is ready
    (None: not a switch). ``gap_ms``: from the decision (wall clock, set by the edge) to now."""
    if not switch_from:
        return None
    gap = max(0, now_ms - switch_started_ms) if switch_started_ms else 0
    return ev.Switched(from_provider=switch_from, to_provider=to_provider, reason=switch_reason or "manual",
                       gap_ms=gap)
