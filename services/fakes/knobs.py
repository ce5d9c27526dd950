"""Fault and behaviour knobs of the fakes: read from ``FAKE_*`` env vars at start, changed live through ``/control``.

A knob is one field of :class:`Knobs`; its parser is derived from the annotation, so adding one needs nothing else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from websockets.frames import EXTERNAL_CLOSE_CODES

# ---------------------------------------------------------------------------------------------------------------------
# Knobs


# Moments of a response where ``stall_on`` / ``close_on`` strike (see :class:`Knobs`).
FAULT_MOMENTS = ("request", "response")


@dataclass(frozen=True)
class Knobs:
    """Fault and behaviour knobs. Set at start from ``FAKE_<NAME>`` env vars, changed live through ``/control``.

    latency_ms: delay added before each server event (a pipeline delay: order kept, not cumulative).
    stall_after / close_after: after N server events in a session, send nothing more / close with ``close_code``.
    stall_on / close_on: the same faults at a moment of a response (:data:`FAULT_MOMENTS`): ``request`` = as soon
      as a response is asked for (nothing of it is sent), ``response`` = right after its first output (audio or text
      delta, function call). A stalled session keeps its socket open and answers pings; it stays silent until the
      knob is cleared (events dropped meanwhile are gone, as on a frozen upstream).
    first_audio_delay_ms: delay before the first output of each response (audio or text delta, function call);
      OpenAI's ``response.created`` still goes out at once. A cancel or barge-in cuts the wait short.
    refuse (+ refuse_count): answer the WebSocket upgrade with this HTTP status (for the next N upgrades only).
    go_away_after_s (Gemini): send ``goAway{timeLeft}`` (``go_away_time_left_s``), close when it runs out.
    session_cap_s: end the session like the provider's duration cap (``session_cap_code`` overrides the code).
    response_ms / chunk_ms / tone_hz: response audio length, chunk size and pitch.
    pace: 0 = chunks as fast as possible, 1.0 = real time, 0.25 = 4x faster than real time.
    vad_rms: energy threshold (int16 RMS) of the server VAD; the provider's own 0..1 ``threshold`` is ignored.
    thoughts_tokens (Gemini): ``usageMetadata.thoughtsTokenCount`` of each turn, as thinking models report it
      (0 = the field is absent, as with non-thinking models).
    """

    latency_ms: float = 0.0
    stall_after: int | None = None
    close_after: int | None = None
    close_code: int = 1011
    close_reason: str = "fault injected by fake"
    stall_on: str | None = None
    close_on: str | None = None
    first_audio_delay_ms: float = 0.0
    refuse: int | None = None
    refuse_count: int | None = None
    go_away_after_s: float | None = None
    go_away_time_left_s: float = 5.0
    session_cap_s: float | None = None
    session_cap_code: int | None = None
    response_ms: int = 400
    chunk_ms: int = 40
    pace: float = 0.0
    tone_hz: float = 440.0
    vad_rms: float = 500.0
    thoughts_tokens: int = 0

    def __post_init__(self) -> None:
        if self.chunk_ms <= 0 or min(self.response_ms, self.pace, self.latency_ms, self.first_audio_delay_ms) < 0:
            raise ValueError("chunk_ms must be > 0; response_ms, pace, latency_ms, first_audio_delay_ms must be >= 0")
        if self.thoughts_tokens < 0:
            raise ValueError("thoughts_tokens must be >= 0")
        for name in ("stall_on", "close_on"):
            if getattr(self, name) not in (None, *FAULT_MOMENTS):
                raise ValueError(f"{name} must be one of {', '.join(FAULT_MOMENTS)} (or none)")
        if self.refuse is not None and not 400 <= self.refuse <= 599:
            raise ValueError("refuse must be an HTTP error status (400..599)")
        for code in (self.close_code, self.session_cap_code):
            # Codes a server may put on the wire (RFC 6455 7.4); websockets refuses the reserved ones.
            if code is not None and code not in EXTERNAL_CLOSE_CODES and not 3000 <= code <= 4999:
                raise ValueError(f"close code {code} cannot be sent on the wire")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Knobs:
        """Defaults overridden by ``FAKE_LATENCY_MS=50`` style variables (read once, at start)."""
        env = os.environ if env is None else env
        values = {name: env[f"FAKE_{name.upper()}"] for name in _KNOB_PARSERS if f"FAKE_{name.upper()}" in env}
        return cls(**parse_knobs(values))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _knob_parser(type_text: str) -> Callable[[str], Any]:
    base = {"int": int, "float": float, "str": str}[type_text.split("|")[0].strip()]
    nullable = "None" in type_text

    def parse(raw: str) -> Any:
        if nullable and raw.strip().lower() in ("", "none", "null", "off"):
            return None
        return base(raw)

    return parse


# Built from the dataclass annotations (strings under `from __future__ import annotations`), so a new knob is
# one field and nothing else.
_KNOB_PARSERS: dict[str, Callable[[str], Any]] = {f.name: _knob_parser(str(f.type)) for f in dataclasses.fields(Knobs)}


def parse_knobs(params: Mapping[str, str]) -> dict[str, Any]:
    """Query/env strings -> typed knob values. Raises ValueError naming the bad knob."""
    out: dict[str, Any] = {}
    for name, raw in params.items():
        parser = _KNOB_PARSERS.get(name)
        if parser is None:
            raise ValueError(f"unknown knob {name!r}; known: {', '.join(sorted(_KNOB_PARSERS))}")
        try:
            out[name] = parser(raw)
        except ValueError:
            raise ValueError(f"bad value for knob {name!r}: {raw!r}") from None
    return out


class KnobStore:
    """Global knobs plus per-session overrides. ``reset`` goes back to the start-up (env) values."""

    def __init__(self, base: Knobs) -> None:
        self._base = base
        self.global_knobs = base
        self._overrides: dict[str, dict[str, Any]] = {}
        self._cache: dict[str, Knobs] = {}

    def update(self, changes: Mapping[str, Any], session: str | None = None) -> None:
        if session is None:
            self.global_knobs = dataclasses.replace(self.global_knobs, **changes)
        else:
            merged = {**self._overrides.get(session, {}), **changes}
            dataclasses.replace(self.global_knobs, **merged)  # validate now, not at the next event
            self._overrides[session] = merged
        self._cache.clear()

    def reset(self, session: str | None = None) -> None:
        if session is None:
            self.global_knobs = self._base
            self._overrides.clear()
        else:
            self._overrides.pop(session, None)
        self._cache.clear()

    def forget(self, session: str) -> None:
        """A closed session's overrides are dropped so the store stays bounded."""
        self._overrides.pop(session, None)
        self._cache.pop(session, None)

    def effective(self, session: str) -> Knobs:
        knobs = self._cache.get(session)
        if knobs is None:
            overrides = self._overrides.get(session)
            knobs = dataclasses.replace(self.global_knobs, **overrides) if overrides else self.global_knobs
            self._cache[session] = knobs
        return knobs

    def take_refusal(self) -> int | None:
        """HTTP status to refuse this upgrade with, counting down ``refuse_count``."""
        knobs = self.global_knobs
        if knobs.refuse is None:
            return None
        if knobs.refuse_count is not None:
            left = knobs.refuse_count - 1
            self.update({"refuse_count": left} if left > 0 else {"refuse": None, "refuse_count": None})
        return knobs.refuse

    def snapshot(self) -> dict[str, Any]:
        return {"global": self.global_knobs.as_dict(), "sessions": {k: dict(v) for k, v in self._overrides.items()}}
