"""Helpers for the client-codec tests: deterministic ids, recorded frames, and validators that check
every frame a codec produces against the official SDKs' own types (openai pydantic models, google-genai
``LiveServerMessage``). No network, no event loop."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydantic
from google.genai import types as genai_types
from openai._models import construct_type_unchecked
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GAServerEvent
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest
from openai.types.realtime.realtime_session_create_response import RealtimeSessionCreateResponse
from openai.types.realtime.realtime_transcription_session_create_request import (
    RealtimeTranscriptionSessionCreateRequest,
)

from shared.codecs.base import Out
from shared.session import SessionMeta

FRAMES = Path(__file__).parent / "frames"

_GA = pydantic.TypeAdapter(GAServerEvent)
_BETA = pydantic.TypeAdapter(BetaServerEvent)

# Fields the real GA server sends in session.created/updated that the SDK's request-shaped session type
# does not declare (they are declared by RealtimeSessionCreateResponse, checked separately below).
_ALLOWED_EXTRAS: dict[type[pydantic.BaseModel], frozenset[str]] = {
    RealtimeSessionCreateRequest: frozenset({"id", "object"}),
    RealtimeTranscriptionSessionCreateRequest: frozenset({"id", "object"}),
}
_RESPONSE_SESSION = pydantic.TypeAdapter(RealtimeSessionCreateResponse)


class SeqIds:
    """Deterministic id factory: ``event_1``, ``item_1``, ``item_2``, ... (one counter per prefix)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, prefix: str) -> str:
        self.counts[prefix] = self.counts.get(prefix, 0) + 1
        return f"{prefix}_{self.counts[prefix]}"


def meta(dialect: str, model: str | None = None) -> SessionMeta:
    return SessionMeta(
        sid="sid0", account="acct", client_session_id="client-1", dialect=dialect, provider="openai", model=model
    )  # type: ignore[arg-type]


def read_frames(name: str) -> list[str]:
    """One recorded WebSocket text frame per line (blank lines and ``#`` comments skipped)."""
    lines = (FRAMES / name).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def _walk_extras(value: Any, path: str) -> Iterator[str]:
    if isinstance(value, pydantic.BaseModel):
        allowed = _ALLOWED_EXTRAS.get(type(value), frozenset())
        for key in value.model_extra or {}:
            if key not in allowed:
                yield f"{path}.{key}"
        for name in type(value).model_fields:
            yield from _walk_extras(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk_extras(v, f"{path}[{i}]")
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _walk_extras(v, f"{path}.{k}")


# The gateway's own events (no SDK type): exact field sets. The SDKs parse an unknown ``type`` without
# raising (``validate_openai`` checks that too); these are the only non-OpenAI frames an OpenAI client sees.
RS_EVENTS: dict[str, frozenset[str]] = {
    "rs.notice": frozenset({"type", "event_id", "code", "param", "message"}),
    "rs.switched": frozenset({"type", "event_id", "from", "to", "reason", "gap_ms"}),
    "switch": frozenset({"type", "event_id", "name"}),  # the seed's own announcement (seed-URL clients)
}
# ``session.rs``: which provider serves the session (docs/entry-points.md), tolerated by the SDK types.
RS_SESSION_KEYS = frozenset({"provider", "model", "notices"})


def _check_rs_event(obj: dict[str, Any], beta: bool) -> None:
    assert set(obj) == RS_EVENTS[obj["type"]], f"{obj['type']} fields {sorted(obj)}"
    assert all(isinstance(obj[k], str) for k in obj if k != "gap_ms" and obj[k] is not None)
    union: Any = BetaServerEvent if beta else GAServerEvent
    parsed = construct_type_unchecked(value=obj, type_=union)  # what the SDK connection's parse_event does
    assert parsed.type == obj["type"]


def validate_openai(frame: str, *, beta: bool) -> dict[str, Any]:
    """Validate one server event against the openai SDK's server event union, strictly.

    The SDK models allow unknown fields (``extra="allow"``), so on top of pydantic validation every
    nested model is checked for fields the SDK does not declare: a misspelt field name fails here.
    ``response.content_part.*`` parts must say ``audio``/``text`` as the SDK literal (and the real servers)
    do, in both dialects. The gateway's own additions are checked against :data:`RS_EVENTS` and
    :data:`RS_SESSION_KEYS`.
    """
    obj = json.loads(frame)
    if obj.get("type") in RS_EVENTS:
        _check_rs_event(obj, beta)
        return obj
    checked = obj
    if obj.get("type") in ("session.created", "session.updated") and "rs" in obj.get("session", {}):
        session = dict(obj["session"])
        rs = session.pop("rs")
        assert set(rs) <= RS_SESSION_KEYS and isinstance(rs["provider"], str), f"session.rs {rs}"
        checked = {**obj, "session": session}
    model = (_BETA if beta else _GA).validate_python(checked, strict=True)
    assert model.type == obj["type"], f"validated as {model.type}, sent {obj['type']}"
    extras = list(_walk_extras(model, obj["type"]))
    assert not extras, f"fields unknown to the SDK: {extras}"
    if not beta and obj["type"] in ("session.created", "session.updated") and obj["session"]["type"] == "realtime":
        full = _RESPONSE_SESSION.validate_python(checked["session"], strict=True)
        assert not list(_walk_extras(full, "session")), "session has fields unknown to the SDK"
    return obj


_CAMEL = re.compile(r"^[a-z]+([A-Z][a-z0-9]*)*$")
GEMINI_TOP_KEYS = frozenset(
    {
        "setupComplete",
        "serverContent",
        "toolCall",
        "toolCallCancellation",
        "usageMetadata",
        "goAway",
        "sessionResumptionUpdate",
        "voiceActivityDetectionSignal",
        "voiceActivity",
    }
)


def validate_gemini(frame: str) -> genai_types.LiveServerMessage:
    """Validate one server message the way the SDK reads it: camelCase top-level keys it knows
    (the Gemini Live API reference), and google-genai's ``LiveServerMessage`` (``extra="forbid"`` at every level)."""
    obj = json.loads(frame)
    assert isinstance(obj, dict) and obj, "empty message"
    for key in obj:
        assert key in GEMINI_TOP_KEYS and _CAMEL.match(key), f"top-level key {key!r}"
    msg = genai_types.LiveServerMessage.model_validate(obj)
    assert genai_types.LiveServerMessage.model_validate_json(frame) == msg
    return msg


class Checked:
    """Wraps a client codec: every wire frame it produces is validated before the test sees it."""

    def __init__(self, codec: Any, validate: Any) -> None:
        self.codec = codec
        self.validate = validate
        self.frames: list[dict[str, Any]] = []  # every frame so far, decoded, in order

    def _check(self, out: Out) -> Out:
        assert isinstance(out, Out)
        for frame in out.wire:
            assert isinstance(frame, str)
            self.validate(frame)
            self.frames.append(json.loads(frame))
        return out

    def open(self) -> Out:
        return self._check(self.codec.open())

    def feed(self, frame: str | bytes) -> Out:
        return self._check(self.codec.feed(frame))

    def encode(self, event: Any) -> Out:
        return self._check(self.codec.encode(event))

    def encode_all(self, *events: Any) -> list[dict[str, Any]]:
        frames: list[dict[str, Any]] = []
        for event in events:
            frames += [json.loads(f) for f in self.encode(event).wire]
        return frames
