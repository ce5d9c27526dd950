"""What the fake OpenAI Realtime and fake Gemini Live servers share.

Written from ``/work/shared/protocols.md`` only. Nothing here (or in the fakes) imports the gateway's ``shared``
package: a fake that shared the gateway's codecs would mirror its bugs instead of catching them.

Contents, top to bottom:

* base64 helpers (standard-only for OpenAI, any alphabet for Gemini, protocols.md 2.3),
* audio: G.711 tables, tone synthesis, dominant-frequency estimate, stand-in transcript,
* :class:`EnergyVad`, a small energy-based turn detector (pure: bytes in, events out, no clock),
* the neutral conversation model (:class:`Item`) and the deterministic "brain" (:func:`plan_reply`),
* fault/behaviour knobs (:class:`Knobs`, :class:`KnobStore`), read from ``FAKE_*`` env vars and ``/control``,
* :class:`Outbox`, the single per-session writer every server event goes through (latency/stall/close knobs),
* :class:`SessionBase` and :class:`FakeServer`: the websockets server plus its plain-HTTP side door
  (``/healthz``, ``/debug/sessions``, ``/control``),
* small async HTTP client helpers for tests and scripts (:func:`http_request`, :func:`set_knobs`, ...).

Time inside the pure parts (VAD, planning) is counted in samples, never read from a clock.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import json
import logging
import os
import re
import secrets
import signal
import ssl as ssl_module
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import msgspec
import numpy as np
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import EXTERNAL_CLOSE_CODES
from websockets.http11 import Request, Response

__all__ = [
    "MAX_FRAME_BYTES",
    "PCM16",
    "PCMA",
    "PCMU",
    "ClientError",
    "EnergyVad",
    "FakeServer",
    "IdGen",
    "Item",
    "KnobStore",
    "Knobs",
    "Outbox",
    "Reply",
    "SessionBase",
    "Spec",
    "SpeechStarted",
    "SpeechStopped",
    "Streamer",
    "audio_tokens",
    "b64decode_any",
    "b64decode_std",
    "b64encode",
    "context_tokens",
    "debug_sessions",
    "decode_to_pcm16",
    "dominant_hz",
    "encode_from_pcm16",
    "find_unknown_key",
    "http_request",
    "json_decode",
    "json_encode",
    "json_response",
    "plan_reply",
    "reset_knobs",
    "set_knobs",
    "split_text",
    "stand_in_transcript",
    "text_tokens",
    "tone",
    "tool_output_text",
]

log = logging.getLogger(__name__)

# protocols.md 1.1: `input_audio_buffer.append` may carry up to 15 MiB, so allow a bit more than 16 MiB.
MAX_FRAME_BYTES = 16 * 1024 * 1024 + 64 * 1024
# WebSocket close reasons are limited to 123 bytes (RFC 6455 5.5: 125-byte control payload minus the code).
_MAX_CLOSE_REASON = 123
# Closed sessions kept for `/debug/sessions?all=1`; bounded so long chaos/bench runs do not grow without limit.
_CLOSED_KEPT = 2000

# ---------------------------------------------------------------------------------------------------------------------
# JSON and base64

_json_encoder = msgspec.json.Encoder()
_json_decoder = msgspec.json.Decoder()


def json_encode(obj: Any) -> bytes:
    """Compact JSON (built once: msgspec is several times faster than `json` on the audio-delta hot path)."""
    return _json_encoder.encode(obj)


def json_decode(data: str | bytes) -> Any:
    """Parse a client frame. Raises ``msgspec.DecodeError`` on invalid JSON."""
    return _json_decoder.decode(data)


def b64encode(data: bytes) -> str:
    """Standard alphabet with padding: what both providers send (protocols.md 0)."""
    return base64.b64encode(data).decode("ascii")


def b64decode_std(text: object) -> bytes:
    """Strict standard-alphabet base64 (OpenAI, protocols.md 0). Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("base64 data must be a string")
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc


_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def b64decode_any(text: object) -> bytes:
    """Standard or URL-safe base64, padded or not (the Gemini SDK sends URL-safe with padding, protocols.md 2.3).

    Raises ValueError for anything that is not base64 in one of those spellings.
    """
    if not isinstance(text, str):
        raise ValueError("base64 data must be a string")
    try:
        padded = text.encode("ascii").translate(_URLSAFE_TO_STD)
    except UnicodeEncodeError as exc:
        raise ValueError("invalid base64") from exc
    raw = padded.rstrip(b"=")
    if len(padded) - len(raw) > 2 or len(raw) % 4 == 1:
        raise ValueError("truncated base64")
    try:
        return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4), strict_mode=True)
    except binascii.Error as exc:
        raise ValueError("invalid base64") from exc


# ---------------------------------------------------------------------------------------------------------------------
# Audio

PCM16 = "pcm16"  # s16le mono
PCMU = "pcmu"  # G.711 mu-law, 8 kHz
PCMA = "pcma"  # G.711 A-law, 8 kHz


def _ulaw_table() -> np.ndarray:
    """mu-law byte -> int16 (ITU-T G.711, the usual bias-0x84 expansion)."""
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    exponent = (u >> 4) & 0x07
    magnitude = ((((u & 0x0F) << 3) + 0x84) << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude).astype(np.int16)


def _alaw_table() -> np.ndarray:
    """A-law byte -> int16 (ITU-T G.711; even bits inverted with 0x55, sign bit set means positive)."""
    a = np.arange(256, dtype=np.int32) ^ 0x55
    exponent = (a >> 4) & 0x07
    mantissa = a & 0x0F
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, ((mantissa << 4) + 0x108) << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude).astype(np.int16)


def _nearest_code_table(decode: np.ndarray) -> np.ndarray:
    """int16 (offset by 32768) -> the code whose decoded value is nearest: an encoder that round-trips the table."""
    # Sort by value, ties by descending code: mu-law's two zeros then encode as 0xFF, the usual "+0".
    order = np.lexsort((-np.arange(decode.size), decode))
    values = decode[order].astype(np.int32)
    x = np.arange(-32768, 32768, dtype=np.int32)
    right = np.clip(np.searchsorted(values, x), 1, len(values) - 1)
    left = right - 1
    below, above = x - values[left], values[right] - x
    pick = np.where((below < above) | ((below == above) & (x < 0)), left, right)  # ties round away from zero
    return order[pick].astype(np.uint8)


_DECODE_TABLES: dict[str, np.ndarray] = {PCMU: _ulaw_table(), PCMA: _alaw_table()}
_ENCODE_TABLES: dict[str, np.ndarray] = {k: _nearest_code_table(v) for k, v in _DECODE_TABLES.items()}
BYTES_PER_SAMPLE: dict[str, int] = {PCM16: 2, PCMU: 1, PCMA: 1}


def decode_to_pcm16(raw: bytes, encoding: str) -> bytes:
    """Audio in a wire encoding -> s16le. PCM16 passes through (a trailing odd byte is the caller's business)."""
    table = _DECODE_TABLES.get(encoding)
    if table is None:
        return raw
    return table[np.frombuffer(raw, dtype=np.uint8)].astype("<i2").tobytes()


def encode_from_pcm16(pcm: bytes, encoding: str) -> bytes:
    """s16le -> a wire encoding (lookup table, no per-sample Python)."""
    table = _ENCODE_TABLES.get(encoding)
    if table is None:
        return pcm
    samples = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.int32)
    return table[samples + 32768].tobytes()


@functools.lru_cache(maxsize=64)
def tone(hz: float, ms: int, rate: int, amplitude: int = 8000) -> bytes:
    """A sine tone as s16le mono. Cached: every response of a run usually has the same shape."""
    n = round(rate * ms / 1000)
    t = np.arange(n, dtype=np.float64) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype("<i2").tobytes()


def dominant_hz(pcm: bytes, rate: int) -> int | None:
    """Strongest frequency of s16le audio, rounded to an int; None for silence or < 20 ms.

    Hann window + zero-padded FFT + parabolic interpolation of the peak: accurate to well under 1 Hz for a
    tone, which is what lets a test tell 440 Hz from 660 Hz (16 kHz audio declared as 24 kHz).
    """
    x = np.frombuffer(pcm[: len(pcm) // 2 * 2], dtype="<i2").astype(np.float64)
    if x.size < rate // 50:
        return None
    if x.size > 2 * rate:  # two seconds are plenty; keeps the FFT small for long items
        start = (x.size - 2 * rate) // 2
        x = x[start : start + 2 * rate]
    x = x - x.mean()
    if float(np.sqrt(np.mean(x * x))) < 1.0:
        return None
    nfft = 1 << max(16, (x.size * 4 - 1).bit_length())
    mag = np.abs(np.fft.rfft(x * np.hanning(x.size), nfft))
    mag[0] = 0.0
    k = int(np.argmax(mag))
    offset = 0.0
    if 0 < k < mag.size - 1:
        a, b, c = np.log(mag[k - 1 : k + 2] + 1e-12)
        denom = a - 2 * b + c
        offset = 0.5 * (a - c) / denom if denom else 0.0
    return round((k + offset) * rate / nfft)


def stand_in_transcript(samples: int, rate: int) -> str:
    """What the fakes "hear" in user audio: its duration, e.g. ``audio 1.2s``."""
    return f"audio {samples / rate:.1f}s"


# ---------------------------------------------------------------------------------------------------------------------
# Energy VAD


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began. ``start_ms`` is on the VAD's clock and includes the prefix padding (as OpenAI reports it)."""

    start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    """Speech ended after enough silence. ``pcm`` is the segment: prefix padding + speech + trailing silence."""

    end_ms: int
    pcm: bytes = dataclasses.field(repr=False)


VadEvent = SpeechStarted | SpeechStopped


class EnergyVad:
    """Turn detection by signal energy over s16le mono audio.

    A window (10 ms by default) is *loud* when its RMS exceeds ``threshold_rms``. The first loud window starts
    speech; ``silence_ms`` of consecutive quiet windows stop it. Owns only its buffers: no I/O, no clock (time
    is the number of samples fed, offset by ``start_ms``), so it is unit-tested with plain byte strings.
    """

    def __init__(
        self,
        rate: int,
        *,
        threshold_rms: float = 500.0,
        silence_ms: int = 500,
        prefix_padding_ms: int = 300,
        window_ms: int = 10,
        start_ms: int = 0,
    ) -> None:
        if rate <= 0 or window_ms <= 0:
            raise ValueError("rate and window_ms must be positive")
        self.rate = rate
        self.threshold_rms = float(threshold_rms)
        self.window_ms = window_ms
        self._win_bytes = max(1, rate * window_ms // 1000) * 2
        self._silence_windows = max(1, -(-int(silence_ms) // window_ms))
        self._prefix: deque[bytes] = deque(maxlen=max(0, int(prefix_padding_ms) // window_ms))
        self._pending = bytearray()
        self._segment: list[bytes] = []
        self._quiet_run = 0
        self._samples = round(start_ms * rate / 1000)  # samples consumed by whole windows
        self.in_speech = False

    @property
    def elapsed_ms(self) -> int:
        """Position of the VAD clock (everything fed, including a partial window)."""
        return round((self._samples + len(self._pending) // 2) * 1000 / self.rate)

    def _ms(self, samples: int) -> int:
        return round(samples * 1000 / self.rate)

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Feed audio; returns the speech events it completes (possibly several for a long chunk)."""
        self._pending += pcm
        whole = len(self._pending) // self._win_bytes * self._win_bytes
        if not whole:
            return []
        block = bytes(self._pending[:whole])
        del self._pending[:whole]
        frames = np.frombuffer(block, dtype="<i2").astype(np.float64).reshape(-1, self._win_bytes // 2)
        loud_flags = np.sqrt(np.mean(frames * frames, axis=1)) > self.threshold_rms
        win_samples = self._win_bytes // 2
        events: list[VadEvent] = []
        for i, loud in enumerate(loud_flags):
            window = block[i * self._win_bytes : (i + 1) * self._win_bytes]
            if not self.in_speech:
                if loud:
                    prefix = list(self._prefix)
                    start = self._samples - len(prefix) * win_samples
                    self._segment = [*prefix, window]
                    self._prefix.clear()
                    self.in_speech = True
                    self._quiet_run = 0
                    events.append(SpeechStarted(self._ms(start)))
                else:
                    self._prefix.append(window)  # maxlen keeps only the padding
            else:
                self._segment.append(window)
                self._quiet_run = 0 if loud else self._quiet_run + 1
                if self._quiet_run >= self._silence_windows:
                    events.append(SpeechStopped(self._ms(self._samples + win_samples), b"".join(self._segment)))
                    self._end_segment()
            self._samples += win_samples
        return events

    def flush(self) -> SpeechStopped | None:
        """End of stream (Gemini ``audioStreamEnd``): close an open segment now, partial window included."""
        if not self.in_speech:
            return None
        tail = bytes(self._pending[: len(self._pending) // 2 * 2])
        self._samples += len(tail) // 2
        self._pending.clear()
        event = SpeechStopped(self._ms(self._samples), b"".join(self._segment) + tail)
        self._end_segment()
        return event

    def reset(self) -> None:
        """Drop buffered audio and any open segment; the clock keeps running (OpenAI ``clear``/``commit``)."""
        self._samples += len(self._pending) // 2
        self._pending.clear()
        self._prefix.clear()
        self._end_segment()

    def _end_segment(self) -> None:
        self._segment = []
        self._quiet_run = 0
        self.in_speech = False


# ---------------------------------------------------------------------------------------------------------------------
# Conversation model and the deterministic "brain"


class IdGen:
    """Per-session ids: a random token (replayed ids from older sessions never collide) + a counter."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(5)
        self._n = 0

    def __call__(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.token}{self._n:05d}"


_UNSET: Any = object()


@dataclass(eq=False)
class Item:
    """One conversation item, provider-neutral. ``to_debug()`` is the normalised shape `/debug/sessions` shows.

    ``role`` is ``user`` / ``assistant`` / ``system`` (Gemini ``model`` becomes ``assistant``). ``pcm`` is s16le
    at ``rate``. ``parts`` holds an OpenAI item's wire content parts with the audio elided (empty for Gemini).
    """

    id: str
    type: str  # "message" | "function_call" | "function_call_output"
    role: str | None = None
    text: str | None = None
    pcm: bytes | None = dataclasses.field(default=None, repr=False)
    rate: int | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str = "completed"
    parts: list[dict[str, Any]] = field(default_factory=list)
    _hz: Any = dataclasses.field(default=_UNSET, repr=False)

    @property
    def is_user_message(self) -> bool:
        return self.type == "message" and self.role == "user"

    @property
    def audio_ms(self) -> int | None:
        if self.pcm is None or not self.rate:
            return None
        return round(len(self.pcm) // 2 * 1000 / self.rate)

    def audio_hz(self) -> int | None:
        """Dominant frequency, computed on first use only (an FFT per item would cost the bench)."""
        if self._hz is _UNSET:
            self._hz = dominant_hz(self.pcm, self.rate) if self.pcm and self.rate else None
        return self._hz

    def set_pcm(self, pcm: bytes | None) -> None:
        self.pcm = pcm
        self._hz = _UNSET

    def copy(self) -> Item:
        return dataclasses.replace(self, parts=[dict(p) for p in self.parts])

    def to_debug(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "role": self.role,
            "text": self.text,
            "audio_ms": self.audio_ms,
            "audio_hz": self.audio_hz(),
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "output": self.output,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class Reply:
    """What the next response will be. ``tool`` set means a function call with JSON ``arguments``."""

    n: int
    text: str
    tool: str | None = None
    arguments: str | None = None


def plan_reply(context: Sequence[Item], tool_names: Sequence[str] = ()) -> Reply:
    """The fakes' whole "model", shared so both providers answer identically.

    * ``n`` = user messages in the context (so replayed history changes it);
    * a function output after the last user message -> ``turn <n>: tool <name> returned <output>``;
    * else a configured tool whose name occurs in the last user text -> call it with ``{"text": <that text>}``;
    * else ``turn <n>: <last user text>``.
    """
    n = 0
    last_user = -1
    last_output = -1
    for i, item in enumerate(context):
        if item.is_user_message:
            n += 1
            last_user = i
        elif item.type == "function_call_output":
            last_output = i
    if last_output > last_user:
        out = context[last_output]
        name = out.name or next(
            (it.name for it in context if it.type == "function_call" and it.call_id == out.call_id), None
        )
        return Reply(n, f"turn {n}: tool {name or 'unknown'} returned {out.output}")
    user_text = (context[last_user].text or "") if last_user >= 0 else ""
    for name in tool_names:
        if name and name in user_text:
            return Reply(n, user_text, tool=name, arguments=json.dumps({"text": user_text}, ensure_ascii=False))
    return Reply(n, f"turn {n}: {user_text}")


def tool_output_text(response: Any) -> str:
    """A Gemini function response as the string a reply quotes.

    ``{"output": x}`` -> ``x`` (the usual wrapping of a plain-string OpenAI output), otherwise compact JSON with
    `json.dumps` defaults, so an OpenAI output ``'{"ok": true}'`` that went through ``json.loads`` reads the same.
    """
    if isinstance(response, dict) and set(response) == {"output"}:
        inner = response["output"]
        return inner if isinstance(inner, str) else json.dumps(inner, ensure_ascii=False)
    return json.dumps(response, ensure_ascii=False)


_WORDS = re.compile(r"\S*\s*")


def split_text(text: str, slots: int) -> list[str]:
    """Spread ``text`` over ``slots`` deltas at word boundaries; ``"".join(result) == text``. Slots may be empty."""
    if slots <= 0:
        return []
    pieces = [p for p in _WORDS.findall(text) if p]
    count = len(pieces)
    return ["".join(pieces[i * count // slots : (i + 1) * count // slots]) for i in range(slots)]


def text_tokens(text: str | None) -> int:
    """Deterministic token estimate: 4 characters a token."""
    return (len(text) + 3) // 4 if text else 0


def audio_tokens(ms: int | None) -> int:
    """Deterministic token estimate: 20 tokens a second of audio."""
    return -(-ms // 50) if ms else 0


def context_tokens(items: Iterable[Item]) -> tuple[int, int]:
    """(text tokens, audio tokens) of a prompt; audio items count as audio only."""
    text = audio = 0
    for item in items:
        if item.pcm:
            audio += audio_tokens(item.audio_ms)
        else:
            text += text_tokens(item.text) + text_tokens(item.arguments) + text_tokens(item.output)
    return text, audio


# ---------------------------------------------------------------------------------------------------------------------
# Knobs


@dataclass(frozen=True)
class Knobs:
    """Fault and behaviour knobs. Set at start from ``FAKE_<NAME>`` env vars, changed live through ``/control``.

    latency_ms: delay added before each server event (a pipeline delay: order kept, not cumulative).
    stall_after / close_after: after N server events in a session, send nothing more / close with ``close_code``.
    refuse (+ refuse_count): answer the WebSocket upgrade with this HTTP status (for the next N upgrades only).
    go_away_after_s (Gemini): send ``goAway{timeLeft}`` (``go_away_time_left_s``), close when it runs out.
    session_cap_s: end the session like the provider's duration cap (``session_cap_code`` overrides the code).
    response_ms / chunk_ms / tone_hz: response audio length, chunk size and pitch.
    pace: 0 = chunks as fast as possible, 1.0 = real time, 0.25 = 4x faster than real time.
    vad_rms: energy threshold (int16 RMS) of the server VAD; the provider's own 0..1 ``threshold`` is ignored.
    """

    latency_ms: float = 0.0
    stall_after: int | None = None
    close_after: int | None = None
    close_code: int = 1011
    close_reason: str = "fault injected by fake"
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

    def __post_init__(self) -> None:
        if self.chunk_ms <= 0 or self.response_ms < 0 or self.pace < 0 or self.latency_ms < 0:
            raise ValueError("chunk_ms must be > 0; response_ms, pace and latency_ms must be >= 0")
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
    """

    def __init__(self, ws: ServerConnection, knobs: Callable[[], Knobs], *, maxsize: int = 4096) -> None:
        self._ws = ws
        self._knobs = knobs
        self._queue: asyncio.Queue[tuple[float, bytes | _Close]] = asyncio.Queue(maxsize)
        self._loop = asyncio.get_running_loop()
        self.sent = 0
        self.dropped = 0
        self.closing = False  # a close is queued behind the pending events
        self.finished = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="fake-outbox")

    @property
    def is_open(self) -> bool:
        return not self.finished.is_set()

    async def send(self, payload: bytes) -> None:
        if self.finished.is_set():
            return
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
# Validation helper


Spec = Mapping[str, "Spec | None"]


def find_unknown_key(value: Any, spec: Spec, path: str) -> str | None:
    """Dotted path of the first key of ``value`` that ``spec`` does not allow (``None`` leaves are free-form)."""
    if not isinstance(value, dict):
        return None
    for key, sub in value.items():
        if key not in spec:
            return f"{path}.{key}" if path else key
        child = spec[key]
        if child is not None and isinstance(sub, dict):
            found = find_unknown_key(sub, child, f"{path}.{key}" if path else key)
            if found:
                return found
    return None


class ClientError(Exception):
    """The client broke the protocol. The fake answers in its provider's way (OpenAI ``error``, Gemini close)."""

    def __init__(self, code: str | int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


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

    async def _after(self, seconds: float, action: Callable[[], Awaitable[None]]) -> None:
        await asyncio.sleep(seconds)
        if self.outbox.is_open:
            await action()

    async def on_session_cap(self) -> None:
        raise NotImplementedError

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


def json_response(conn: ServerConnection, status: int, obj: Any) -> Response:
    response = conn.respond(status, json.dumps(obj) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class FakeServer:
    """A websockets server for one fake provider, plus its plain-HTTP side door on the same port.

    HTTP routes (websockets' ``process_request``; it parses any method but cannot read a request body):

    * ``GET /healthz`` -> ``ok``
    * ``GET /debug/sessions[?all=1][&id=<sid>]`` -> ``{"sessions": [...]}`` (live only unless ``all=1``)
    * ``GET|POST /control?<knob>=<value>...[&session=<sid>]`` -> set knobs (global or per session), returns them;
      ``GET /control`` alone returns them; ``DELETE /control[?session=<sid>]`` or ``GET /control?reset=1``
      resets. Knob values go in the query string because a JSON body cannot be read here.

    Subclasses implement ``check_upgrade`` (path/auth of the WebSocket upgrade) and ``new_session``.
    """

    name: ClassVar[str] = "fake"

    def __init__(self, *, knobs: Knobs | None = None) -> None:
        self.knobs = KnobStore(knobs if knobs is not None else Knobs.from_env())
        self.sessions: dict[str, SessionBase] = {}
        self._closed: deque[str] = deque()
        self._server: Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.tls = False
        self._routes: dict[str, Callable[[ServerConnection, Request, dict[str, str]], Response]] = {
            "/healthz": self._http_health,
            "/debug/sessions": self._http_debug,
            "/control": self._http_control,
        }

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl: ssl_module.SSLContext | None = None) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            ssl=ssl,
            # permessage-deflate is offered by the Gemini SDK and old openai SDKs: accept it (the default).
            compression="deflate",
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port, self.tls = host, sockname[1], ssl is not None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- hooks for subclasses ---------------------------------------------------------------------------------------

    def check_upgrade(
        self, conn: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        raise NotImplementedError

    def refusal(self, conn: ServerConnection, status: int) -> Response:
        return json_response(conn, status, {"error": {"code": status, "message": "refused by fake (knob refuse)"}})

    def new_session(self, ws: ServerConnection) -> SessionBase:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        route = self._routes.get(split.path)
        if route is not None:
            return route(conn, request, query)
        rejected = self.check_upgrade(conn, request, split.path, query)
        if rejected is not None:
            return rejected
        refused = self.knobs.take_refusal()
        if refused is not None:
            return self.refusal(conn, refused)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = self.new_session(ws)
        self.sessions[session.id] = session
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.teardown()
            self.knobs.forget(session.id)
            self._closed.append(session.id)
            while len(self._closed) > _CLOSED_KEPT:
                self.sessions.pop(self._closed.popleft(), None)

    def _http_health(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        return conn.respond(200, "ok")

    def _http_debug(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        show_all = query.get("all", "") not in ("", "0", "false")
        wanted = query.get("id")
        sessions = [
            s.to_debug() for s in self.sessions.values() if (show_all or s.live) and (wanted is None or s.id == wanted)
        ]
        return json_response(conn, 200, {"sessions": sessions})

    def _http_control(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        params = dict(query)
        session = params.pop("session", None)
        if session is not None and not (session in self.sessions and self.sessions[session].live):
            return json_response(conn, 404, {"error": f"no live session {session!r}"})
        if request.method == "DELETE" or params.pop("reset", "") not in ("", "0"):
            self.knobs.reset(session)
            return json_response(conn, 200, self.knobs.snapshot())
        if request.method not in ("GET", "POST"):
            return json_response(conn, 405, {"error": "use GET, POST or DELETE"})
        try:
            self.knobs.update(parse_knobs(params), session)
        except (ValueError, TypeError) as exc:
            return json_response(conn, 400, {"error": str(exc)})
        return json_response(conn, 200, self.knobs.snapshot())


# ---------------------------------------------------------------------------------------------------------------------
# Tiny HTTP client for the side door (tests, chaos scripts)


async def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    host: str = "127.0.0.1",
    ssl_context: ssl_module.SSLContext | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request -> (status, body). The server closes after answering, so read to EOF."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        )
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl_module.SSLError):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    return await asyncio.wait_for(go(), timeout)


async def set_knobs(
    port: int, *, session: str | None = None, ssl_context: ssl_module.SSLContext | None = None, **knobs: Any
) -> dict[str, Any]:
    """``GET /control?...`` (the query form). Raises RuntimeError on a non-200 answer."""
    params = {k: ("none" if v is None else str(v)) for k, v in knobs.items()}
    if session is not None:
        params["session"] = session
    status, body = await http_request(port, f"/control?{urlencode(params)}", ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/control answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


async def reset_knobs(
    port: int, *, session: str | None = None, ssl_context: ssl_module.SSLContext | None = None
) -> None:
    query = f"?{urlencode({'session': session})}" if session else ""
    status, body = await http_request(port, f"/control{query}", method="DELETE", ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/control answered {status}: {body.decode(errors='replace')}")


async def debug_sessions(
    port: int, *, include_closed: bool = False, ssl_context: ssl_module.SSLContext | None = None
) -> list[dict[str, Any]]:
    """``GET /debug/sessions`` -> the session list (closed ones too with ``include_closed``)."""
    path = "/debug/sessions" + ("?all=1" if include_closed else "")
    status, body = await http_request(port, path, ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/debug/sessions answered {status}")
    return json.loads(body)["sessions"]


async def serve_until_signal(server: Any) -> None:
    """Print the fake's port (the first stdout line, which scripts read), serve until SIGINT/SIGTERM, close."""
    print(server.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
