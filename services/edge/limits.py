"""Per-connection and per-account limits of the edge: pure, time passed in (docs/entry-points.md).

- ``TokenBucket``: frames per second with a short burst allowance.
- ``FloodGate``: a bucket per connection that tells the edge, per client frame, to pass it, drop it, or
  drop it and tell the client (once per flood: the first frame refused after one that passed).
- ``frame_verdict``: a client frame larger than the bus carries is refused in the dialect.
- ``seat_decision``: concurrent sessions per account, fleet-wide: a session holds a lease (member = its client
  session id, score = when it runs out) in a per-account set in Redis (services/edge/seats.py); a new one is let
  in while fewer live leases than the limit are held, a session already holding one (a resume, a takeover) always.
- ``AccountSessions``: the same count on this edge alone: the fallback while Redis cannot be asked.
- ``refusal_of``: what a refused frame (or a connection taken over) costs the client, one table.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from shared.session import Dialect

__all__ = [
    "TAKEOVER_CLOSE",
    "TAKEOVER_REASON",
    "AccountSessions",
    "FloodGate",
    "FrameRefusal",
    "SeatDecision",
    "TokenBucket",
    "Verdict",
    "frame_verdict",
    "refusal_of",
    "seat_decision",
]

Verdict = Literal["pass", "refuse", "drop"]  # refuse: drop and tell the client; drop: drop, already told
Fault = Literal["too_big", "rate_limited", "taken_over"]


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` held; a frame takes one token."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst  # a new connection may send its burst at once
        self._stamp = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._stamp)  # a clock that steps back refills nothing
        self._stamp = now
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


FLOOD_QUIET_S = 1.0  # a flood is over after this long without a dropped frame; the next one is told again


class FloodGate:
    """One connection's rate limit: over the limit, frames are dropped, and only the first of each flood is
    answered (an error per dropped frame would be a flood back). During a flood the bucket still lets a
    frame through now and then (its rate): that does not end the flood, a quiet second does."""

    __slots__ = ("_bucket", "_last_drop", "dropped")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._bucket = TokenBucket(rate, burst, now) if rate > 0 else None
        self._last_drop: float | None = None
        self.dropped = 0

    def admit(self, now: float) -> Verdict:
        if self._bucket is None or self._bucket.take(now):
            return "pass"
        self.dropped += 1
        fresh = self._last_drop is None or now - self._last_drop >= FLOOD_QUIET_S
        self._last_drop = now
        return "refuse" if fresh else "drop"


def frame_verdict(size: int, limit: int) -> Verdict:
    """A client frame of ``size`` bytes against the one frame limit (RS_MAX_FRAME_BYTES)."""
    return "pass" if size <= limit else "refuse"


@dataclass(frozen=True, slots=True)
class SeatDecision:
    admit: bool
    expired: tuple[str, ...]  # leases that ran out (an edge killed -9 never removed them): dropped with the add
    held: int  # live leases of the account, the asking session's own not counted


def seat_decision(leases: Mapping[str, float], member: str, limit: int, now: float) -> SeatDecision:
    """``leases``: the account's set (member -> expiry, wall-clock seconds); ``limit`` 0 is unlimited. A lease
    whose expiry is not after ``now`` no longer counts. A member that holds a live lease is the same session
    again (a resume, a takeover): let in without a second seat."""
    expired = tuple(sorted(m for m, until in leases.items() if until <= now))
    live = {m for m, until in leases.items() if until > now}
    mine = member in live
    held = len(live) - mine
    return SeatDecision(mine or not limit or held < limit, expired, held)


class AccountSessions:
    """Concurrent sessions per account on this edge; ``limit`` 0 means unlimited. ``allows`` is asked at the
    upgrade (refused with 429), ``open``/``close`` count the connections that got through."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def allows(self, account: str, limit: int | None = None) -> bool:
        """``limit``: the account's own (from its record), else this edge's ``RS_MAX_SESSIONS_PER_ACCOUNT``."""
        limit = self.limit if limit is None else limit
        return not limit or self._open.get(account, 0) < limit

    def open(self, account: str) -> None:
        self._open[account] = self._open.get(account, 0) + 1

    def close(self, account: str) -> None:
        held = self._open.get(account, 0) - 1
        if held > 0:
            self._open[account] = held
        else:
            self._open.pop(account, None)

    def held(self, account: str) -> int:
        return self._open.get(account, 0)


@dataclass(frozen=True, slots=True)
class FrameRefusal:
    """What the client is sent for a refused frame: ``frames`` first, then a close when ``close_code``."""

    frames: list[str]
    close_code: int | None = None
    close_reason: str = ""


TAKEOVER_CLOSE = 4000
TAKEOVER_REASON = "session taken over by another connection"


@dataclass(frozen=True, slots=True)
class _Answer:
    openai_code: str  # the ``error`` event's code (type ``invalid_request_error``)
    openai_close: int | None  # None: the session lives on after the error
    gemini_close: int


# OpenAI: an ``error`` event, and the session lives on (its server answers a bad event the same way) except
# when the connection is taken over. Gemini has no error message: its server closes the socket; 1009
# (message too big) is what it sends for an oversized message, a flood is a policy violation (1008).
_ANSWERS: dict[Fault, _Answer] = {
    "too_big": _Answer("frame_too_large", None, 1009),
    "rate_limited": _Answer("rate_limit_exceeded", None, 1008),
    "taken_over": _Answer("session_taken_over", TAKEOVER_CLOSE, TAKEOVER_CLOSE),
}


def refusal_of(dialect: Dialect, fault: Fault, message: str) -> FrameRefusal:
    answer = _ANSWERS[fault]
    reason = message.encode()[:123].decode(errors="ignore")  # RFC 6455: 123 bytes of reason at most
    if dialect == "gemini":
        return FrameRefusal([], answer.gemini_close, reason)
    error = {"type": "invalid_request_error", "code": answer.openai_code, "message": message, "param": None,
             "event_id": None}
    frame = json.dumps({"type": "error", "event_id": f"event_rs_edge_{uuid.uuid4().hex[:20]}", "error": error})
    return FrameRefusal([frame], answer.openai_close, reason if answer.openai_close else "")
