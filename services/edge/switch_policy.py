"""When to move a session to another provider, and where: pure state machines, time passed in.

``SwitchPolicy`` is per session. It reads the signals the session's worker publishes (``bus.Signal``:
per-turn latency, upstream failures, stalls) and the client's or an operator's switch requests, and
answers with a ``Decision`` (target provider, reason, now or at the turn end) or nothing.

``Breaker`` is per fleet: every edge feeds it the failures and successes all edges observe (they travel on
the bus), so a provider failing for many sessions at once is avoided by new sessions and by switches for
a cool-down, instead of every session finding out by itself.

Rules (docs/switching.md):
- latency: ``failure_count`` consecutive turns slower than ``latency_threshold_ms`` -> switch at the turn end;
- failures: ``failure_count`` consecutive upstream failures -> switch now (the upstream is not working);
  only a response that completes (``response_ended``) ends a run of failures: a first audio does not (a provider
  that drops every connection right after its first output is failing, not answering), nor does a
  response cut, failed or cancelled;
- stall: one stall -> switch now (the worker has already ended the cut response);
- a target is the first provider of the fallback order that is not the current one, not in its
  cool-down (we left it less than ``cooldown_s`` ago) and whose breaker is not open;
- hysteresis: after any switch, latency does not trigger another for ``min_dwell_s`` (a slow new provider
  must prove slow over a fresh window); failures and stalls still do, since the provider is not working;
- a manual request is obeyed whatever the cool-downs (the user chose), but never to the current provider.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Literal

from shared.config import DEFAULT_FALLBACK, parse_fallback

__all__ = [
    "ANSWERED",
    "AUTOMATIC_REASONS",
    "Breaker",
    "BreakerSettings",
    "Decision",
    "PolicySettings",
    "SwitchPolicy",
    "parse_fallback",
]

When = Literal["now", "turn_end"]

# reason -> when the switch happens. A working upstream finishes its response; a broken one is left at once.
AUTOMATIC_REASONS: dict[str, When] = {
    "latency": "turn_end",
    "failure": "now",
    "stall": "now",
}

# Response end statuses that show the upstream answering (a length or filter cut is still an answer);
# "failed" (a lost or switched upstream cut it) and "cancelled" (the client's) do not.
ANSWERED: frozenset[str] = frozenset({"completed", "incomplete"})


@dataclasses.dataclass(frozen=True, slots=True)
class PolicySettings:
    latency_threshold_ms: int = 500  # SWITCH_LATENCY_THRESHOLD_MS
    failure_count: int = 3  # SWITCH_FAILURE_COUNT: consecutive slow turns, or consecutive failures
    cooldown_s: float = 60.0  # no automatic switch back to a provider we left less than this ago
    min_dwell_s: float = 20.0  # no latency switch sooner than this after the previous switch
    fallback: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_FALLBACK))
    automatic: bool = True  # RS_AUTO_SWITCH: False leaves only manual switches


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    target: str
    reason: str  # "manual", "latency", "failure", "stall"
    when: When


class SwitchPolicy:
    """One session's switch policy. Feed it signals; it answers with a Decision at most once per switch.

    After a Decision the caller carries the switch out and calls ``switched`` (or ``abandoned`` if it could
    not); until then further signals decide nothing (one switch at a time)."""

    def __init__(self, settings: PolicySettings, provider: str, *, now: float) -> None:
        self.settings = settings
        self.provider = provider
        self.pending: Decision | None = None
        self._slow_turns = 0
        self._failures = 0
        self._last_switch = float("-inf")
        self._left: dict[str, float] = {}  # provider -> when we last switched away from it

    # -- signals ----------------------------------------------------------------------------------

    def turn(
        self, latency_ms: float, *, now: float, available: Callable[[str], bool] = lambda _: True
    ) -> Decision | None:
        """A response got its first audio ``latency_ms`` after the user's turn ended (the latency rule only:
        the response may still be cut, so this does not end a run of failures; ``response_ended`` does)."""
        if latency_ms <= self.settings.latency_threshold_ms:
            self._slow_turns = 0
            return None
        self._slow_turns += 1
        if self._slow_turns < self.settings.failure_count or now - self._last_switch < self.settings.min_dwell_s:
            return None
        return self._decide("latency", now, available)

    def response_ended(self, status: str) -> None:
        """A response ended with ``status`` (the worker's idle signal): an answer (``ANSWERED``) means the
        upstream works, so failures are no longer consecutive; a cut one (failed, cancelled) changes nothing."""
        if status in ANSWERED:
            self._failures = 0

    def failure(self, *, now: float, available: Callable[[str], bool] = lambda _: True) -> Decision | None:
        """The upstream failed (connect refused, 429/5xx at the upgrade, a provider-side error, close 1011)."""
        self._failures += 1
        if self._failures < self.settings.failure_count:
            return None
        return self._decide("failure", now, available)

    def stall(self, *, now: float, available: Callable[[str], bool] = lambda _: True) -> Decision | None:
        """A response was open and the upstream sent nothing for RS_STALL_MS."""
        return self._decide("stall", now, available)

    def manual(self, target: str, when: When, *, now: float) -> Decision | None:
        """The client or an operator asked. None when the session is already there (nothing to do)."""
        if target == self.provider:
            return None
        self.pending = Decision(target, "manual", when)
        return self.pending

    # -- outcome ----------------------------------------------------------------------------------

    def switched(self, target: str, *, now: float) -> None:
        """The session now runs on ``target``."""
        self._left[self.provider] = now
        self.provider = target
        self.pending = None
        self._slow_turns = self._failures = 0
        self._last_switch = now

    def abandoned(self) -> None:
        """The decided switch could not be carried out (no worker of the target): stay, count afresh."""
        self.pending = None
        self._slow_turns = self._failures = 0

    # -- choice -----------------------------------------------------------------------------------

    def target(self, now: float, available: Callable[[str], bool] = lambda _: True) -> str | None:
        """First provider of the fallback order that may take the session now, or None."""
        for name in self.settings.fallback.get(self.provider, ()):
            if name == self.provider or now - self._left.get(name, float("-inf")) < self.settings.cooldown_s:
                continue
            if available(name):  # last: a half-open breaker lets one trial through when asked
                return name
        return None

    def _decide(self, reason: str, now: float, available: Callable[[str], bool]) -> Decision | None:
        if not self.settings.automatic or self.pending is not None:
            return None
        target = self.target(now, available)
        if target is None:
            return None  # nowhere to go: the worker keeps reconnecting with backoff; counters keep counting
        self.pending = Decision(target, reason, AUTOMATIC_REASONS[reason])
        return self.pending


# --------------------------------------------------------------------------------------------------
# Fleet circuit breaker


@dataclasses.dataclass(frozen=True, slots=True)
class BreakerSettings:
    sessions: int = 3  # distinct sessions failing on a provider within the window open its breaker
    window_s: float = 10.0
    open_s: float = 30.0  # how long an open breaker keeps new sessions and switches away


BreakerState = Literal["closed", "open", "half_open"]


class Breaker:
    """Per provider: opens when ``sessions`` distinct sessions failed within ``window_s``; after ``open_s``
    it is half-open (one new session or switch may try it); a success closes it, a failure opens it again.

    Every edge runs one and feeds it the same observations from the bus, so they agree without a leader."""

    def __init__(self, settings: BreakerSettings) -> None:
        self.settings = settings
        self._failures: dict[str, deque[tuple[float, str]]] = {}
        self._opened: dict[str, float] = {}
        self._trial: dict[str, float] = {}  # half-open: when the one trial was let through

    def failure(self, provider: str, session: str, *, now: float) -> bool:
        """Record a failure. True when this one opened (or re-opened) the breaker."""
        if self.state(provider, now) == "half_open":
            self._open(provider, now)
            return True
        recent = self._failures.setdefault(provider, deque())
        recent.append((now, session))
        self._expire(recent, now)
        if provider not in self._opened and len({sid for _, sid in recent}) >= self.settings.sessions:
            self._open(provider, now)
            return True
        return False

    def success(self, provider: str, *, now: float) -> bool:
        """A session was served by ``provider``. True when this closed the breaker."""
        if provider in self._opened and self.state(provider, now) == "half_open":
            del self._opened[provider]
            self._trial.pop(provider, None)
            self._failures.pop(provider, None)
            return True
        return False

    def state(self, provider: str, now: float) -> BreakerState:
        opened = self._opened.get(provider)
        if opened is None:
            return "closed"
        return "open" if now - opened < self.settings.open_s else "half_open"

    def available(self, provider: str, now: float) -> bool:
        """May a new session or a switch go to ``provider`` now? Half-open lets one trial through."""
        state = self.state(provider, now)
        if state == "closed":
            return True
        if state == "open":
            return False
        trial = self._trial.get(provider)
        if trial is not None and now - trial < self.settings.open_s:
            return False  # one trial at a time: its outcome closes or re-opens the breaker
        self._trial[provider] = now
        return True

    def open_providers(self, now: float, providers: Iterable[str]) -> list[str]:
        return [name for name in providers if self.state(name, now) == "open"]

    def _open(self, provider: str, now: float) -> None:
        self._opened[provider] = now
        self._trial.pop(provider, None)
        self._failures.pop(provider, None)

    def _expire(self, recent: deque[tuple[float, str]], now: float) -> None:
        while recent and now - recent[0][0] > self.settings.window_s:
            recent.popleft()
