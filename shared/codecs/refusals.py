"""What the edge needs to know of the client dialects without running a codec: pure functions.

- ``refusal``: how a session the gateway cannot serve (no transformer or worker to attach, a reattach
  that gave up) is ended in the client's dialect. OpenAI's server sends an ``error`` event (type
  ``server_error``) before it closes; Gemini's server only closes, and its clients read the close code
  and reason. Both close with 1011 (server error).
- ``read_gemini_setup``: the model and resumption handle of a Gemini client's first frame (``setup``),
  which the edge reads before any codec exists because the model may choose the provider.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from shared.session import Dialect

__all__ = ["CLOSE_REASON_MAX_BYTES", "GeminiSetup", "Refusal", "read_gemini_setup", "refusal"]

CLOSE_REASON_MAX_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes, 2 of them the code
SERVER_ERROR_CLOSE = 1011


@dataclass(frozen=True, slots=True)
class Refusal:
    frames: list[str]  # sent first, in order
    close_code: int
    close_reason: str


def _close_reason(message: str) -> str:
    raw = message.encode()[:CLOSE_REASON_MAX_BYTES]
    return raw.decode(errors="ignore")  # a cut multi-byte character is dropped, not mangled


def _openai_error(code: str, message: str, event_id: str) -> str:
    return msgspec.json.encode({
        "type": "error",
        "event_id": event_id,
        "error": {"type": "server_error", "code": code, "message": message, "param": None, "event_id": None},
    }).decode()


def refusal(dialect: Dialect, code: str, message: str, *, event_id: str) -> Refusal:
    """How to end a session the gateway cannot serve: ``code`` is the OpenAI error code (e.g.
    ``session_unavailable``), ``event_id`` the id the error event carries (OpenAI dialects only)."""
    frames = [] if dialect == "gemini" else [_openai_error(code, message, event_id)]
    return Refusal(frames, SERVER_ERROR_CLOSE, _close_reason(message))


class _Resumption(msgspec.Struct):
    handle: str | None = None


class _Setup(msgspec.Struct, rename="camel"):
    model: str | None = None
    session_resumption: _Resumption | None = None


class _FirstFrame(msgspec.Struct):
    setup: _Setup | None = None


_first_frame = msgspec.json.Decoder(_FirstFrame)


@dataclass(frozen=True, slots=True)
class GeminiSetup:
    model: str | None  # without the ``models/`` resource prefix
    resumption_handle: str | None


def read_gemini_setup(frame: bytes | str) -> GeminiSetup:
    """Model and resumption handle of a Gemini ``setup`` frame; both None for anything else (the codec
    judges the frame itself)."""
    try:
        setup = _first_frame.decode(frame).setup
    except msgspec.DecodeError:
        return GeminiSetup(None, None)
    if setup is None:
        return GeminiSetup(None, None)
    model = setup.model.removeprefix("models/") if setup.model else None
    handle = setup.session_resumption.handle if setup.session_resumption else None
    return GeminiSetup(model or None, handle)
