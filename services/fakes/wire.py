"""What goes on the wire for both fakes: JSON, base64, and the unknown-key check.

Nothing here (or anywhere in ``services.fakes``) imports the gateway's ``shared`` package: a fake that shared the
gateway's codecs would mirror its bugs instead of catching them.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

import msgspec

# OpenAI's `input_audio_buffer.append` may carry up to 15 MiB, so allow a bit more than 16 MiB.
MAX_FRAME_BYTES = 16 * 1024 * 1024 + 64 * 1024

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
    """Standard alphabet with padding: what both providers send."""
    return base64.b64encode(data).decode("ascii")


def b64decode_std(text: object) -> bytes:
    """Strict standard-alphabet base64 (OpenAI). Raises ValueError on anything else."""
    if not isinstance(text, str):
        raise ValueError("base64 data must be a string")
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError("invalid base64") from exc


_URLSAFE_TO_STD = bytes.maketrans(b"-_", b"+/")


def b64decode_any(text: object) -> bytes:
    """Standard or URL-safe base64, padded or not (the Gemini SDK sends URL-safe with padding).

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
