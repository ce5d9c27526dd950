"""Fake OpenAI Realtime server: GA and beta dialects over WebSocket, optional Azure routing.

Written from the provider's wire protocol (what the openai SDK sends and accepts; see docs/fakes.md) and
deliberately independent of the gateway (it imports nothing of ``shared``). One :class:`OpenAISession` per
upstream connection:

* the dialect is picked at the upgrade: ``OpenAI-Beta: realtime=v1`` -> beta names and session shape, else GA
  (Azure: also beta when ``api-version`` ends in ``-preview``);
* ``session.created`` is the first frame, every server event has a unique ``event_id``, ``append`` gets no reply;
* bad input gets an in-band ``error`` (``invalid_request_error``, ``code``, ``param``, offending ``event_id``) and the
  session stays open;
* responses are deterministic (``services.fakes.conversation.plan_reply``) and streamed by a task per response, so
  pacing, ``response.cancel`` and server-VAD barge-in behave like the real thing.

Unverified details (error codes for unknown item ids, duplicate ids) follow the real API's style; they are marked.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.fakes.audio import PCM16, PCMA, PCMU, decode_to_pcm16, encode_from_pcm16, stand_in_transcript, tone
from services.fakes.conversation import (
    IdGen,
    Item,
    Reply,
    audio_tokens,
    context_tokens,
    plan_reply,
    split_text,
    text_tokens,
)
from services.fakes.knobs import Knobs
from services.fakes.server import FakeServer, json_response
from services.fakes.session import SessionBase, Streamer
from services.fakes.vad import EnergyVad, SpeechStarted
from services.fakes.wire import ClientError, Spec, b64decode_std, b64encode, find_unknown_key, json_decode, json_encode

__all__ = ["BETA", "GA", "Dialect", "OpenAIFake", "OpenAISession", "start"]

MIN_COMMIT_MS = 100  # the real server refuses smaller commits (input_audio_buffer_commit_empty)
MAX_BUFFER_MS = 120_000  # un-committed audio kept while server VAD hears no speech (bounded for long runs)
RATES = {PCM16: 24_000, PCMU: 8_000, PCMA: 8_000}
_GA_FORMATS = {"audio/pcm": PCM16, "audio/pcmu": PCMU, "audio/pcma": PCMA}
_BETA_FORMATS = {"pcm16": PCM16, "g711_ulaw": PCMU, "g711_alaw": PCMA}
_TEXT_PARTS = frozenset({"input_text", "text", "output_text"})
_AUDIO_PARTS = frozenset({"input_audio", "audio", "output_audio"})
_READ_ONLY = frozenset({"id", "object", "expires_at"})  # echoed back by some clients; ignored, never an error

# ---------------------------------------------------------------------------------------------------------------------
# Dialects: data, not branches


def _lookup(obj: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    for key in path:
        if not isinstance(obj, dict) or key not in obj:
            return False, None
        obj = obj[key]
    return True, obj


def _one_of(*allowed: Any) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if value in allowed:
            return None
        return f"Invalid value: {value!r}. Supported values are: {', '.join(repr(a) for a in allowed)}."

    return check


def _ga_modalities(value: Any) -> str | None:
    if isinstance(value, list) and len(value) == 1 and value[0] in ("audio", "text"):
        return None
    return "Invalid output_modalities: expected ['audio'] or ['text']."


def _beta_modalities(value: Any) -> str | None:
    if isinstance(value, list) and value and set(value) <= {"audio", "text"}:
        return None
    return "Invalid modalities: expected a non-empty subset of ['text', 'audio']."


def _is_str(value: Any) -> str | None:
    return None if isinstance(value, str) else "Invalid type: expected a string."


def _tools(value: Any) -> str | None:
    if not isinstance(value, list):
        return "Invalid type for tools: expected an array."
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            return f"Invalid tools[{i}]: expected an object."
        if tool.get("type", "function") == "function" and not isinstance(tool.get("name"), str):
            return f"Missing required parameter: 'tools[{i}].name'."
    return None


def _tool_choice(value: Any) -> str | None:
    if value in ("auto", "none", "required") or isinstance(value, dict):
        return None
    return f"Invalid value: {value!r}. Supported values are: 'auto', 'none', 'required' or an object."


def _turn_detection_defaults(kind: str, *, ga: bool) -> dict[str, Any]:
    if kind == "semantic_vad":
        return {"type": "semantic_vad", "eagerness": "auto", "create_response": True, "interrupt_response": True}
    defaults: dict[str, Any] = {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": True,
        "interrupt_response": True,
    }
    if ga:
        defaults["idle_timeout_ms"] = None
    return defaults


_TURN_DETECTION: Spec = dict.fromkeys(
    (
        "type",
        "threshold",
        "prefix_padding_ms",
        "silence_duration_ms",
        "idle_timeout_ms",
        "create_response",
        "interrupt_response",
        "eagerness",
    )
)
_GA_FORMAT: Spec = {"type": None, "rate": None}
_ITEM_KEYS: Spec = dict.fromkeys(
    ("id", "type", "object", "status", "role", "content", "call_id", "name", "arguments", "output")
)
_PART_KEYS = frozenset({"type", "text", "audio", "transcript", "image_url", "detail", "id"})


def _ga_session(sid: str, model: str) -> dict[str, Any]:
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": sid,
        "model": model,
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "include": None,
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _turn_detection_defaults("server_vad", ga=True),
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": "marin", "speed": 1.0},
        },
    }


def _beta_session(sid: str, model: str) -> dict[str, Any]:
    return {
        "id": sid,
        "object": "realtime.session",
        "model": model,
        "expires_at": int(time.time()) + 3600,
        "modalities": ["text", "audio"],
        "instructions": "",
        "voice": "alloy",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_transcription": None,
        "turn_detection": _turn_detection_defaults("server_vad", ga=False),
        "input_audio_noise_reduction": None,
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
        "speed": 1.0,
        "tracing": None,
    }


def _ga_format(value: Any) -> str:
    return _GA_FORMATS.get(value.get("type") if isinstance(value, dict) else None, PCM16)


def _beta_format(value: Any) -> str:
    return _BETA_FORMATS.get(value, PCM16) if isinstance(value, str) else PCM16


@dataclass(frozen=True)
class Dialect:
    """Everything that differs between GA and beta, as data (event renames, part types, session shape)."""

    name: str
    renames: Mapping[str, str | None]  # GA event name -> this dialect's name (None: not sent)
    audio_part: str
    text_part: str
    parts_by_role: Mapping[str, frozenset[str]]
    session_spec: Spec
    response_spec: Spec
    paths: Mapping[str, tuple[str, ...]]  # concept -> key path, same in a session and a response override
    merge_paths: frozenset[tuple[str, ...]]  # nested objects that session.update merges instead of replacing
    session_checks: Mapping[tuple[str, ...], Callable[[Any], str | None]]
    response_checks: Mapping[tuple[str, ...], Callable[[Any], str | None]]
    default_session: Callable[[str, str], dict[str, Any]]
    parse_format: Callable[[Any], str]
    requires_session_type: bool

    def wire_format(self, encoding: str) -> Any:
        table = _GA_FORMATS if self.name == "ga" else _BETA_FORMATS
        wire = next(k for k, v in table.items() if v == encoding)
        if self.name == "ga":
            return {"type": wire, "rate": RATES[encoding]} if encoding == PCM16 else {"type": wire}
        return wire


GA = Dialect(
    name="ga",
    renames={},
    audio_part="output_audio",
    text_part="output_text",
    parts_by_role={
        "user": frozenset({"input_text", "input_audio", "input_image"}),
        "system": frozenset({"input_text"}),
        "assistant": frozenset({"output_text", "output_audio"}),
    },
    session_spec={
        **dict.fromkeys(
            (
                "type",
                "model",
                "output_modalities",
                "instructions",
                "tools",
                "tool_choice",
                "max_output_tokens",
                "tracing",
                "truncation",
                "prompt",
                "include",
                "reasoning",
                "parallel_tool_calls",
                *_READ_ONLY,
            )
        ),
        "audio": {
            "input": {
                "format": _GA_FORMAT,
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": _TURN_DETECTION,
            },
            "output": {"format": _GA_FORMAT, "voice": None, "speed": None},
        },
    },
    response_spec={
        **dict.fromkeys(
            (
                "output_modalities",
                "instructions",
                "tools",
                "tool_choice",
                "max_output_tokens",
                "conversation",
                "input",
                "metadata",
                "prompt",
                "reasoning",
            )
        ),
        "audio": {"output": {"format": _GA_FORMAT, "voice": None}},
    },
    paths={
        "modalities": ("output_modalities",),
        "in_format": ("audio", "input", "format"),
        "out_format": ("audio", "output", "format"),
        "voice": ("audio", "output", "voice"),
        "turn_detection": ("audio", "input", "turn_detection"),
        "transcription": ("audio", "input", "transcription"),
        "max_tokens": ("max_output_tokens",),
        "temperature": ("temperature",),
    },
    merge_paths=frozenset({("audio",), ("audio", "input"), ("audio", "output")}),
    session_checks={
        ("type",): _one_of("realtime", "transcription"),
        ("output_modalities",): _ga_modalities,
        ("instructions",): _is_str,
        ("audio", "input", "format", "type"): _one_of(*_GA_FORMATS),
        ("audio", "input", "format", "rate"): _one_of(24_000),
        ("audio", "output", "format", "type"): _one_of(*_GA_FORMATS),
        ("audio", "output", "format", "rate"): _one_of(24_000),
        ("audio", "input", "turn_detection", "type"): _one_of("server_vad", "semantic_vad"),
        ("tools",): _tools,
        ("tool_choice",): _tool_choice,
    },
    response_checks={
        ("output_modalities",): _ga_modalities,
        ("instructions",): _is_str,
        ("audio", "output", "format", "type"): _one_of(*_GA_FORMATS),
        ("tools",): _tools,
        ("tool_choice",): _tool_choice,
        ("conversation",): _is_str,
    },
    default_session=_ga_session,
    parse_format=_ga_format,
    requires_session_type=True,
)

BETA = Dialect(
    name="beta",
    renames={
        "conversation.item.added": "conversation.item.created",
        "conversation.item.done": None,  # beta has no item.done
        "response.output_text.delta": "response.text.delta",
        "response.output_text.done": "response.text.done",
        "response.output_audio.delta": "response.audio.delta",
        "response.output_audio.done": "response.audio.done",
        "response.output_audio_transcript.delta": "response.audio_transcript.delta",
        "response.output_audio_transcript.done": "response.audio_transcript.done",
    },
    audio_part="audio",
    text_part="text",
    parts_by_role={
        "user": frozenset({"input_text", "input_audio", "item_reference"}),
        "system": frozenset({"input_text"}),
        "assistant": frozenset({"text", "audio"}),
    },
    session_spec={
        **dict.fromkeys(
            (
                "model",
                "modalities",
                "instructions",
                "voice",
                "input_audio_format",
                "output_audio_format",
                "input_audio_transcription",
                "input_audio_noise_reduction",
                "tools",
                "tool_choice",
                "temperature",
                "max_response_output_tokens",
                "speed",
                "tracing",
                "include",
                "client_secret",
                *_READ_ONLY,
            )
        ),
        "turn_detection": _TURN_DETECTION,
    },
    response_spec=dict.fromkeys(
        (
            "modalities",
            "instructions",
            "voice",
            "output_audio_format",
            "tools",
            "tool_choice",
            "temperature",
            "max_response_output_tokens",
            "conversation",
            "input",
            "metadata",
        )
    ),
    paths={
        "modalities": ("modalities",),
        "in_format": ("input_audio_format",),
        "out_format": ("output_audio_format",),
        "voice": ("voice",),
        "turn_detection": ("turn_detection",),
        "transcription": ("input_audio_transcription",),
        "max_tokens": ("max_response_output_tokens",),
        "temperature": ("temperature",),
    },
    merge_paths=frozenset(),
    session_checks={
        ("modalities",): _beta_modalities,
        ("instructions",): _is_str,
        ("input_audio_format",): _one_of(*_BETA_FORMATS),
        ("output_audio_format",): _one_of(*_BETA_FORMATS),
        ("turn_detection", "type"): _one_of("server_vad", "semantic_vad"),
        ("tools",): _tools,
        ("tool_choice",): _tool_choice,
    },
    response_checks={
        ("modalities",): _beta_modalities,
        ("instructions",): _is_str,
        ("output_audio_format",): _one_of(*_BETA_FORMATS),
        ("tools",): _tools,
        ("tool_choice",): _tool_choice,
        ("conversation",): _is_str,
    },
    default_session=_beta_session,
    parse_format=_beta_format,
    requires_session_type=False,
)


def _validate(value: dict[str, Any], spec: Spec, checks: Mapping[tuple[str, ...], Any], prefix: str) -> None:
    unknown = find_unknown_key(value, spec, prefix)
    if unknown:
        raise ClientError("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)
    for path, check in checks.items():
        present, sub = _lookup(value, path)
        if present and (problem := check(sub)):
            raise ClientError("invalid_value", problem, ".".join((prefix, *path)))


def _merge(
    base: dict[str, Any],
    update: Mapping[str, Any],
    merge_paths: frozenset[tuple[str, ...]],
    at: tuple[str, ...] = (),
) -> None:
    """session.update semantics: nested objects on ``merge_paths`` merge, everything else is replaced."""
    for key, value in update.items():
        if not at and key in _READ_ONLY:
            continue
        path = (*at, key)
        if path in merge_paths and isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, merge_paths, path)
        else:
            base[key] = copy.deepcopy(value)


# ---------------------------------------------------------------------------------------------------------------------
# One response


class _Response(Streamer):
    """An in-flight response: its effective parameters, the plan, and the rendered output so far."""

    def __init__(
        self, rid: str, *, in_conversation: bool, plan: Reply, context: list[Item], params: dict[str, Any]
    ) -> None:
        super().__init__()
        self.id = rid
        self.in_conversation = in_conversation
        self.plan = plan
        self.context = context
        self.params = params  # modalities, out_encoding, voice, max_tokens, temperature, metadata, instructions
        self.output: list[dict[str, Any]] = []
        self.out_text = ""
        self.out_audio_ms = 0
        self.item: Item | None = None  # the message being streamed (truncate may reach it mid-stream)
        self.sent = bytearray()  # s16le audio sent so far for ``item``
        self.truncate_at_ms: int | None = None  # set by a truncate of the streaming item

    @property
    def audio(self) -> bool:
        return "audio" in self.params["modalities"]

    @property
    def out_encoding(self) -> str:
        return self.params["out_encoding"]


@dataclass(frozen=True)
class _EventSpec:
    handler: Callable[[OpenAISession, dict[str, Any]], Awaitable[None]]
    required: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------------------------------
# Session


class OpenAISession(SessionBase):
    """One fake OpenAI Realtime session. Owns the conversation, the input buffer, the VAD and its responses."""

    provider = "openai"

    def __init__(self, server: OpenAIFake, ws: ServerConnection, dialect: Dialect, model: str) -> None:
        self.ids = IdGen()
        super().__init__(server, ws, f"sess_{self.ids.token}")
        self.d = dialect
        self.dialect = dialect.name
        self.model = model
        self.config: dict[str, Any] = dialect.default_session(self.id, model)
        self.conversation_id = f"conv_{self.ids.token}"
        self.buffer = bytearray()  # s16le at input_rate, since the last commit/clear
        self.in_encoding = PCM16
        self.out_encoding = PCM16
        self.input_rate = RATES[PCM16]
        self.vad: EnergyVad | None = None
        self._vad_key: tuple[Any, ...] | None = None
        self._vad_item_id: str | None = None  # announced by speech_started, used by the commit that follows
        self.active: _Response | None = None  # the in-conversation response (at most one, like the real API)
        self.out_of_band: dict[str, _Response] = {}
        self._item_encoding: dict[str, str] = {}  # item id -> wire encoding of its audio (for retrieve)
        self.response_log: list[dict[str, Any]] = []
        self._configure_input()

    # -- plumbing ---------------------------------------------------------------------------------------------------

    async def emit(self, ga_type: str, **fields: Any) -> None:
        """Send one server event, renamed for the dialect; every event gets a fresh ``event_id``."""
        name = self.d.renames.get(ga_type, ga_type)
        if name is not None:
            await self.outbox.send(json_encode({"type": name, "event_id": self.ids("event"), **fields}))

    async def send_error(self, code: str, message: str, param: str | None, event_id: str | None) -> None:
        error = {"type": "invalid_request_error", "code": code, "message": message, "param": param}
        await self.emit("error", error={**error, "event_id": event_id})

    def setting(self, concept: str, overrides: Mapping[str, Any] | None = None) -> Any:
        """A session value, or its per-response override when one is given."""
        path = self.d.paths[concept]
        if overrides:
            present, value = _lookup(overrides, path)
            if present:
                return value
        return _lookup(self.config, path)[1]

    def config_view(self) -> Any:
        return self.config

    def extra_debug(self) -> dict[str, Any]:
        return {"response_log": self.response_log, "conversation_id": self.conversation_id}

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        await self.emit("session.created", session=self.config)
        self.start_timers()
        try:
            async for raw in self.ws:
                await self._dispatch(raw)
        except ConnectionClosed:
            pass

    async def on_session_cap(self) -> None:
        # What the real API does at its cap: an in-band error, then a close with 1001 and the same text.
        cap = self.knobs().session_cap_s or 0
        message = f"Your session hit the maximum duration of {cap / 60:g} minutes."
        await self.send_error("session_expired", message, None, None)
        await self.outbox.close(self.knobs().session_cap_code or 1001, message)

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            msg = json_decode(raw)
        except msgspec.DecodeError:
            await self.send_error("invalid_json", "The event is not valid JSON.", None, None)
            return
        if not isinstance(msg, dict):
            await self.send_error("invalid_type", "Expected a JSON object.", None, None)
            return
        event_id = msg.get("event_id") if isinstance(msg.get("event_id"), str) else None
        try:
            etype = msg.get("type")
            if etype is None:
                raise ClientError("missing_required_parameter", "Missing required parameter: 'type'.", "type")
            spec = _CLIENT_EVENTS.get(etype) if isinstance(etype, str) else None
            if spec is None:
                raise ClientError(
                    "invalid_value",
                    f"Invalid value: {etype!r}. Supported values are: {', '.join(map(repr, _CLIENT_EVENTS))}.",
                    "type",
                )
            allowed = {"type", "event_id", *spec.required, *spec.optional}
            for key in msg:
                if key not in allowed:
                    raise ClientError("unknown_parameter", f"Unknown parameter: '{key}'.", key)
            for key in spec.required:
                if key not in msg:
                    raise ClientError("missing_required_parameter", f"Missing required parameter: '{key}'.", key)
            await spec.handler(self, msg)
        except ClientError as exc:
            await self.send_error(str(exc.code), exc.message, exc.param, event_id)

    # -- session ----------------------------------------------------------------------------------------------------

    async def _on_session_update(self, msg: dict[str, Any]) -> None:
        update = msg["session"]
        if not isinstance(update, dict):
            raise ClientError("invalid_type", "Invalid type for 'session': expected an object.", "session")
        if self.d.requires_session_type and "type" not in update:
            raise ClientError(
                "missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type"
            )
        _validate(update, self.d.session_spec, self.d.session_checks, "session")
        _merge(self.config, update, self.d.merge_paths)
        td_path = self.d.paths["turn_detection"]
        present, td = _lookup(update, td_path)
        if present and isinstance(td, dict):  # a new turn_detection object gets the defaults of its type
            parent = _lookup(self.config, td_path[:-1])[1] if len(td_path) > 1 else self.config
            parent[td_path[-1]] = {**_turn_detection_defaults(td.get("type", "server_vad"), ga=self.d is GA), **td}
        self._configure_input()
        await self.emit("session.updated", session=self.config)

    def _configure_input(self) -> None:
        """Derive input/output encodings and (re)build the VAD when its parameters change."""
        self.in_encoding = self.d.parse_format(self.setting("in_format"))
        self.out_encoding = self.d.parse_format(self.setting("out_format"))
        td = self.setting("turn_detection")
        knobs = self.knobs()
        key = (self.in_encoding, repr(td), knobs.vad_rms)
        if key == self._vad_key:
            return
        if RATES[self.in_encoding] != self.input_rate:
            self.buffer.clear()  # audio in the old format cannot be measured at the new rate
        self.input_rate = RATES[self.in_encoding]
        clock = self.vad.elapsed_ms if self.vad else 0
        self.vad = None
        if isinstance(td, dict):
            self.vad = EnergyVad(
                self.input_rate,
                threshold_rms=knobs.vad_rms,
                silence_ms=int(td.get("silence_duration_ms") or 500),
                prefix_padding_ms=int(td.get("prefix_padding_ms") or 300),
                start_ms=clock,
            )
        self._vad_key = key
        self._vad_item_id = None

    def _turn_detection(self) -> dict[str, Any] | None:
        td = self.setting("turn_detection")
        return td if isinstance(td, dict) else None

    @property
    def _is_transcription_session(self) -> bool:
        return self.config.get("type") == "transcription"

    # -- input audio ------------------------------------------------------------------------------------------------

    async def _on_append(self, msg: dict[str, Any]) -> None:
        try:
            raw = b64decode_std(msg["audio"])
        except ValueError:
            raise ClientError(
                "invalid_value", "Invalid 'audio': expected base64-encoded audio bytes.", "audio"
            ) from None
        pcm = decode_to_pcm16(raw, self.in_encoding)
        self.buffer += pcm
        overflow = len(self.buffer) - MAX_BUFFER_MS * self.input_rate // 1000 * 2
        if overflow > 0:
            del self.buffer[: overflow + overflow % 2]
        if self.vad is not None:
            for event in self.vad.feed(pcm):  # no reply to append itself, only VAD events
                if isinstance(event, SpeechStarted):
                    await self._on_speech_started(event.start_ms)
                else:
                    await self._on_speech_stopped(event.end_ms, event.pcm)

    async def _on_speech_started(self, start_ms: int) -> None:
        self._vad_item_id = self.ids("item")
        await self.emit("input_audio_buffer.speech_started", audio_start_ms=start_ms, item_id=self._vad_item_id)
        td = self._turn_detection() or {}
        if self.active is not None and not self.active.done and td.get("interrupt_response", True):
            await self.active.cancel("turn_detected")  # barge-in: the response closes before anything else

    async def _on_speech_stopped(self, end_ms: int, segment: bytes) -> None:
        item_id = self._vad_item_id or self.ids("item")
        self._vad_item_id = None
        await self.emit("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id)
        self.buffer.clear()
        await self._commit_audio(segment, item_id)
        td = self._turn_detection() or {}
        if td.get("create_response", True) and not self._is_transcription_session:
            if self.active is not None and not self.active.done:
                await self.active.wait()  # interrupt_response false: answer after the current response
            await self._start_response({})

    async def _on_commit(self, msg: dict[str, Any]) -> None:
        pcm = bytes(self.buffer)
        ms = len(pcm) / 2 / self.input_rate * 1000
        if ms < MIN_COMMIT_MS:
            raise ClientError(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at least 100ms of audio, "
                f"but buffer only has {ms:.2f}ms of audio.",
            )
        item_id = self._vad_item_id or self.ids("item")
        self._vad_item_id = None
        self.buffer.clear()
        if self.vad is not None:
            self.vad.reset()
        await self._commit_audio(pcm, item_id)

    async def _commit_audio(self, pcm: bytes, item_id: str) -> None:
        item = Item(
            id=item_id,
            type="message",
            role="user",
            pcm=pcm,
            rate=self.input_rate,
            text=stand_in_transcript(len(pcm) // 2, self.input_rate),
            parts=[{"type": "input_audio", "transcript": None}],
        )
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        self._item_encoding[item.id] = self.in_encoding
        await self.emit("input_audio_buffer.committed", previous_item_id=previous, item_id=item_id)
        await self._announce_item(item, previous)
        if self.setting("transcription") is not None:
            # Real transcription is asynchronous; the fake sends it right after the item, deterministically.
            transcript = item.text or ""
            common = {"item_id": item.id, "content_index": 0}
            await self.emit("conversation.item.input_audio_transcription.delta", **common, delta=transcript)
            seconds = round(len(pcm) / 2 / self.input_rate, 3)
            await self.emit(
                "conversation.item.input_audio_transcription.completed",
                **common,
                transcript=transcript,
                usage={"type": "duration", "seconds": seconds},
            )
            item.parts[0]["transcript"] = transcript

    async def _on_clear(self, msg: dict[str, Any]) -> None:
        self.buffer.clear()
        self._vad_item_id = None
        if self.vad is not None:
            self.vad.reset()
        await self.emit("input_audio_buffer.cleared")

    async def _on_output_clear(self, msg: dict[str, Any]) -> None:
        raise ClientError("invalid_value", "output_audio_buffer.clear is only supported for WebRTC and SIP.", "type")

    # -- conversation items -----------------------------------------------------------------------------------------

    def render(self, item: Item, *, with_audio: bool = False) -> dict[str, Any]:
        """An item in this dialect's wire shape (audio only for ``conversation.item.retrieved``)."""
        base: dict[str, Any] = {"id": item.id, "object": "realtime.item", "type": item.type}
        if item.type == "message":
            content = [dict(part) for part in item.parts]
            if with_audio and item.pcm:
                for part in content:
                    if part["type"] in _AUDIO_PARTS:
                        encoding = self._item_encoding.get(item.id, PCM16)
                        part["audio"] = b64encode(encode_from_pcm16(item.pcm, encoding))
                        break
            return {**base, "status": item.status, "role": item.role, "content": content}
        if item.type == "function_call":
            return {
                **base,
                "status": item.status,
                "call_id": item.call_id,
                "name": item.name,
                "arguments": item.arguments,
            }
        return {**base, "call_id": item.call_id, "output": item.output}

    async def _announce_item(self, item: Item, previous: str | None) -> None:
        rendered = self.render(item)
        await self.emit("conversation.item.added", previous_item_id=previous, item=rendered)
        await self.emit("conversation.item.done", previous_item_id=previous, item=rendered)

    def _find(self, item_id: Any, param: str) -> Item:
        for item in self.items:
            if item.id == item_id:
                return item
        # Code not verified against the real API; the message follows its style.
        raise ClientError("item_not_found", f"Item with item_id '{item_id}' not found.", param)

    def parse_item(self, raw: Any, path: str, *, allow_reference: bool = False) -> Item:
        """Validate a client item into an :class:`Item`; keeps a client-supplied ``id``."""
        if not isinstance(raw, dict):
            raise ClientError("invalid_type", f"Invalid type for '{path}': expected an object.", path)
        if allow_reference and raw.get("type") == "item_reference":
            return self._find(raw.get("id"), f"{path}.id")
        if unknown := find_unknown_key(raw, _ITEM_KEYS, path):
            raise ClientError("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)
        itype = raw.get("type")
        if itype is None:
            raise ClientError(
                "missing_required_parameter", f"Missing required parameter: '{path}.type'.", f"{path}.type"
            )
        parser = _ITEM_PARSERS.get(itype)
        if parser is None:
            raise ClientError(
                "invalid_value",
                f"Invalid value: {itype!r}. Supported values are: {', '.join(map(repr, _ITEM_PARSERS))}.",
                f"{path}.type",
            )
        item_id = raw.get("id")
        if item_id is not None and not isinstance(item_id, str):
            raise ClientError("invalid_type", "Invalid type for item id: expected a string.", f"{path}.id")
        return parser(self, raw, path, item_id or self.ids("item"))

    def _require_str(self, raw: dict[str, Any], key: str, path: str) -> str:
        value = raw.get(key)
        if value is None:
            raise ClientError(
                "missing_required_parameter", f"Missing required parameter: '{path}.{key}'.", f"{path}.{key}"
            )
        if not isinstance(value, str):
            raise ClientError("invalid_type", f"Invalid type for '{path}.{key}': expected a string.", f"{path}.{key}")
        return value

    def _parse_message(self, raw: dict[str, Any], path: str, item_id: str) -> Item:
        role = raw.get("role")
        if role is None:
            raise ClientError(
                "missing_required_parameter", f"Missing required parameter: '{path}.role'.", f"{path}.role"
            )
        allowed = self.d.parts_by_role.get(role) if isinstance(role, str) else None
        if allowed is None:
            raise ClientError(
                "invalid_value",
                f"Invalid value: {role!r}. Supported values are: 'user', 'system' and 'assistant'.",
                f"{path}.role",
            )
        content = raw.get("content")
        if not isinstance(content, list):
            raise ClientError(
                "missing_required_parameter", f"Missing required parameter: '{path}.content'.", f"{path}.content"
            )
        encoding = self.in_encoding if role == "user" else self.out_encoding
        rate = RATES[encoding]
        texts: list[str] = []
        parts: list[dict[str, Any]] = []
        pcm = bytearray()
        for j, part in enumerate(content):
            where = f"{path}.content[{j}]"
            if not isinstance(part, dict):
                raise ClientError("invalid_type", f"Invalid type for '{where}': expected an object.", where)
            if unknown := find_unknown_key(part, dict.fromkeys(_PART_KEYS), where):
                raise ClientError("unknown_parameter", f"Unknown parameter: '{unknown}'.", unknown)
            ptype = part.get("type")
            if ptype not in allowed:
                raise ClientError(
                    "invalid_value",
                    f"Invalid value: {ptype!r}. Supported values are: {', '.join(map(repr, sorted(allowed)))}.",
                    f"{where}.type",
                )
            if ptype in _TEXT_PARTS:
                text = self._require_str(part, "text", where)
                texts.append(text)
                parts.append({"type": ptype, "text": text})
            elif ptype in _AUDIO_PARTS:
                transcript = part.get("transcript")
                heard = transcript if isinstance(transcript, str) else None
                if part.get("audio") is not None:
                    try:
                        audio = decode_to_pcm16(b64decode_std(part["audio"]), encoding)
                    except ValueError:
                        raise ClientError("invalid_value", "Invalid base64 audio.", f"{where}.audio") from None
                    pcm += audio
                    # The fake "hears" user audio as its duration; assistant audio keeps its transcript if any.
                    if role == "user" or heard is None:
                        heard = stand_in_transcript(len(audio) // 2, rate)
                if heard:
                    texts.append(heard)
                parts.append({"type": ptype, "transcript": transcript})
            else:  # input_image / item_reference: kept, not "understood"
                parts.append({k: v for k, v in part.items() if k != "image_url"})
        item = Item(
            id=item_id,
            type="message",
            role=role,
            text=" ".join(texts),
            pcm=bytes(pcm) or None,
            rate=rate if pcm else None,
            parts=parts,
        )
        self._item_encoding[item_id] = encoding
        return item

    def _parse_function_call(self, raw: dict[str, Any], path: str, item_id: str) -> Item:
        return Item(
            id=item_id,
            type="function_call",
            call_id=self._require_str(raw, "call_id", path),
            name=self._require_str(raw, "name", path),
            arguments=self._require_str(raw, "arguments", path),
        )

    def _parse_function_output(self, raw: dict[str, Any], path: str, item_id: str) -> Item:
        return Item(
            id=item_id,
            type="function_call_output",
            call_id=self._require_str(raw, "call_id", path),
            output=self._require_str(raw, "output", path),
        )

    async def _on_item_create(self, msg: dict[str, Any]) -> None:
        item = self.parse_item(msg["item"], "item")
        if any(existing.id == item.id for existing in self.items):
            # Code not verified against the real API.
            raise ClientError("duplicate_item_id", f"Item with id '{item.id}' already exists.", "item.id")
        previous_id = msg.get("previous_item_id")
        if previous_id is None:
            index = len(self.items)
        elif previous_id == "root":
            index = 0
        else:
            index = self.items.index(self._find(previous_id, "previous_item_id")) + 1
        self.items.insert(index, item)
        await self._announce_item(item, self.items[index - 1].id if index else None)

    async def _on_item_retrieve(self, msg: dict[str, Any]) -> None:
        item = self._find(msg["item_id"], "item_id")
        await self.emit("conversation.item.retrieved", item=self.render(item, with_audio=True))

    async def _on_item_truncate(self, msg: dict[str, Any]) -> None:
        item = self._find(msg["item_id"], "item_id")
        index, end_ms = msg["content_index"], msg["audio_end_ms"]
        if not isinstance(index, int) or not isinstance(end_ms, int) or index < 0 or end_ms < 0:
            raise ClientError("invalid_type", "content_index and audio_end_ms must be non-negative integers.", None)
        if (
            item.type != "message"
            or item.role != "assistant"
            or index >= len(item.parts)
            or item.parts[index]["type"] not in _AUDIO_PARTS
        ):
            raise ClientError("invalid_value", "Only model output audio messages can be truncated", "item_id")
        streaming = next((r for r in self._running() if r.item is item), None)
        if streaming is not None:
            audio_ms = round(len(streaming.sent) / 2 * 1000 / RATES[streaming.out_encoding])
        else:
            audio_ms = item.audio_ms or 0
        if end_ms > audio_ms:
            raise ClientError(
                "invalid_value", f"Audio content of {audio_ms}ms is already shorter than {end_ms}ms", "audio_end_ms"
            )
        if streaming is not None:
            # The item is still streaming: the real server accepts it, and the response stays active. The Agents
            # SDK sends its truncate BEFORE its response.cancel on every explicit interrupt (openai-agents
            # openai_realtime.py _send_interrupt), and that cancel finds the response it cancels there; ending
            # the response here made every such cancel a response_cancel_not_active error. The item keeps the
            # audio up to audio_end_ms when its stream ends (below, and in _message).
            streaming.truncate_at_ms = end_ms
        item.set_pcm((item.pcm or b"")[: end_ms * (item.rate or RATES[PCM16]) // 1000 * 2])
        # The real API drops the transcript so the context holds no text the user never heard.
        item.parts[index]["transcript"] = None
        item.text = None
        await self.emit("conversation.item.truncated", item_id=item.id, content_index=index, audio_end_ms=end_ms)

    async def _on_item_delete(self, msg: dict[str, Any]) -> None:
        item = self._find(msg["item_id"], "item_id")
        self.items.remove(item)
        await self.emit("conversation.item.deleted", item_id=item.id)

    # -- responses --------------------------------------------------------------------------------------------------

    async def _on_response_create(self, msg: dict[str, Any]) -> None:
        overrides = msg.get("response") or {}
        if not isinstance(overrides, dict):
            raise ClientError("invalid_type", "Invalid type for 'response': expected an object.", "response")
        _validate(overrides, self.d.response_spec, self.d.response_checks, "response")
        if self._is_transcription_session:
            raise ClientError("invalid_value", "response.create is not supported in transcription sessions.", "type")
        conversation = overrides.get("conversation", "auto")
        if conversation not in ("auto", "none", self.conversation_id):
            raise ClientError("invalid_value", f"Unknown conversation {conversation!r}.", "response.conversation")
        if conversation != "none" and self.active is not None and not self.active.done:
            raise ClientError(
                "conversation_already_has_active_response",
                f"Conversation already has an active response in progress: {self.active.id}. "
                "Wait until the response is finished before creating a new one.",
            )
        context = None
        if "input" in overrides:
            if not isinstance(overrides["input"], list):
                raise ClientError(
                    "invalid_type", "Invalid type for 'response.input': expected an array.", "response.input"
                )
            context = [
                self.parse_item(raw, f"response.input[{i}]", allow_reference=True)
                for i, raw in enumerate(overrides["input"])
            ]
        await self._start_response(overrides, context)

    async def _start_response(self, overrides: dict[str, Any], context: list[Item] | None = None) -> None:
        in_conversation = overrides.get("conversation", "auto") != "none"
        context = list(self.items) if context is None else context
        tools = overrides["tools"] if "tools" in overrides else self.config.get("tools") or []
        choice = overrides.get("tool_choice", self.config.get("tool_choice", "auto"))
        names = (
            [] if choice == "none" else [t.get("name", "") for t in tools if t.get("type", "function") == "function"]
        )
        out_encoding = self.d.parse_format(self.setting("out_format", overrides))
        params = {
            "modalities": list(self.setting("modalities", overrides) or ["audio"]),
            "out_encoding": out_encoding,
            "out_format": self.d.wire_format(out_encoding),
            "voice": self.setting("voice", overrides),
            "max_tokens": self.setting("max_tokens", overrides),
            "temperature": self.setting("temperature", overrides),
            "metadata": overrides.get("metadata"),
            "instructions": overrides.get("instructions", self.config.get("instructions")),
            "conversation": "auto" if in_conversation else "none",
        }
        response = _Response(
            self.ids("resp"),
            in_conversation=in_conversation,
            plan=plan_reply(context, names),
            context=context,
            params=params,
        )
        if in_conversation:
            self.active = response
        else:
            self.out_of_band[response.id] = response
        self.responses += 1
        response.task = self.spawn(self._run_response(response), name="fake-openai-response")

    def _running(self) -> list[_Response]:
        return [r for r in (self.active, *self.out_of_band.values()) if r is not None and not r.done]

    async def _on_response_cancel(self, msg: dict[str, Any]) -> None:
        wanted = msg.get("response_id")
        running = self._running()
        target = next((r for r in running if wanted is None or r.id == wanted), None)
        if target is None:
            raise ClientError("response_cancel_not_active", "Cancellation failed: no active response found")
        await target.cancel("client_cancelled")

    def _response_object(
        self,
        r: _Response,
        status: str,
        details: dict[str, Any] | None = None,
        usage: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        p = r.params
        obj: dict[str, Any] = {
            "object": "realtime.response",
            "id": r.id,
            "status": status,
            "status_details": details,
            "output": list(r.output),
            "conversation_id": self.conversation_id if r.in_conversation else None,
            "usage": usage,
            "metadata": p["metadata"],
        }
        if self.d is GA:
            obj["output_modalities"] = p["modalities"]
            obj["audio"] = {"output": {"format": p["out_format"], "voice": p["voice"]}}
        else:
            obj.update(modalities=p["modalities"], voice=p["voice"], output_audio_format=p["out_format"])
            obj["temperature"] = p["temperature"]
        obj["max_output_tokens"] = p["max_tokens"]
        return obj

    def _usage(self, r: _Response) -> dict[str, Any]:
        in_text, in_audio = context_tokens(r.context)
        out_text, out_audio = text_tokens(r.out_text), audio_tokens(r.out_audio_ms)
        return {
            "total_tokens": in_text + in_audio + out_text + out_audio,
            "input_tokens": in_text + in_audio,
            "output_tokens": out_text + out_audio,
            "input_token_details": {
                "text_tokens": in_text,
                "audio_tokens": in_audio,
                "image_tokens": 0,
                "cached_tokens": 0,
                "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    async def _run_response(self, r: _Response) -> None:
        """The full event sequence of one response (created, output item, content, done, rate limits)."""
        await self.fault_point("request")
        await self.emit("response.created", response=self._response_object(r, "in_progress"))
        await r.hold(self.knobs().first_audio_delay_ms / 1000)
        if r.plan.tool is not None:
            await self._stream_function_call(r)
        else:
            await self._stream_message(r)
        cancelled = r.cancel_reason is not None
        details = {"type": "cancelled", "reason": r.cancel_reason} if cancelled else None
        usage = self._usage(r)
        await self.emit(
            "response.done",
            response=self._response_object(r, "cancelled" if cancelled else "completed", details, usage),
        )
        await self.emit(
            "rate_limits.updated",
            rate_limits=[
                {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                {
                    "name": "tokens",
                    "limit": 400_000,
                    "remaining": 400_000 - usage["total_tokens"],
                    "reset_seconds": 0.5,
                },
            ],
        )
        self.response_log.append(
            {
                "id": r.id,
                "status": "cancelled" if cancelled else "completed",
                "reason": r.cancel_reason,
                "conversation": r.params["conversation"],
                "instructions": r.params["instructions"],
                "modalities": r.params["modalities"],
                "metadata": r.params["metadata"],
                "tool": r.plan.tool,
                "text": r.out_text if r.plan.tool is None else r.plan.arguments,
            }
        )
        self.out_of_band.pop(r.id, None)

    async def _open_output_item(self, r: _Response, item: Item) -> str | None:
        await self.emit("response.output_item.added", response_id=r.id, output_index=0, item=self.render(item))
        if not r.in_conversation:
            return None  # out-of-band: the output never enters the conversation
        previous = self.items[-1].id if self.items else None
        self.items.append(item)
        self._item_encoding[item.id] = r.out_encoding
        await self.emit("conversation.item.added", previous_item_id=previous, item=self.render(item))
        return previous

    async def _close_output_item(self, r: _Response, item: Item, previous: str | None) -> None:
        item.status = "incomplete" if r.cancel_reason else "completed"
        rendered = self.render(item)
        if r.in_conversation:
            await self.emit("conversation.item.done", previous_item_id=previous, item=rendered)
        await self.emit("response.output_item.done", response_id=r.id, output_index=0, item=rendered)
        r.output.append(rendered)

    async def _stream_message(self, r: _Response) -> None:
        knobs = self.knobs()
        # Items carry the dialect's part type (GA `output_audio`); content_part events carry `audio` / `text` in
        # both dialects, as real GA servers send them.
        kind = self.d.audio_part if r.audio else self.d.text_part
        event_kind = "audio" if r.audio else "text"
        item = Item(id=self.ids("item"), type="message", role="assistant", status="in_progress")
        r.item = item
        previous = await self._open_output_item(r, item)
        common = {"response_id": r.id, "item_id": item.id, "output_index": 0, "content_index": 0}
        empty = {"transcript": ""} if r.audio else {"text": ""}
        await self.emit("response.content_part.added", **common, part={"type": event_kind, **empty})
        item.parts = [{"type": kind, **empty}]
        said: list[str] = []
        if r.audio:
            await self._stream_audio(r, knobs, common, said)
            r.out_text = "".join(said)
            rate = RATES[r.out_encoding]
            r.out_audio_ms = round(len(r.sent) / 2 * 1000 / rate)
            await self.emit("response.output_audio.done", **common)
            await self.emit("response.output_audio_transcript.done", **common, transcript=r.out_text)
            item.rate = rate
            if r.truncate_at_ms is None:
                part = {"transcript": r.out_text}
                item.set_pcm(bytes(r.sent))
            else:  # truncated mid-stream: what the user heard, and no transcript (as a truncate of a done item)
                part = {"transcript": None}
                item.set_pcm(bytes(r.sent[: r.truncate_at_ms * rate // 1000 * 2]))
        else:
            pieces = split_text(r.plan.text, max(1, len(r.plan.text.split())))
            for i, piece in enumerate(pieces):
                if not await r.pace(i, self.knobs()):
                    break
                await self.emit("response.output_text.delta", **common, delta=piece)
                said.append(piece)
                if i == 0:
                    await self.fault_point("response")
            r.out_text = "".join(said)
            await self.emit("response.output_text.done", **common, text=r.out_text)
            part = {"text": r.out_text}
        await self.emit("response.content_part.done", **common, part={"type": event_kind, **part})
        item.parts = [{"type": kind, **part}]
        item.text = r.out_text if r.truncate_at_ms is None else None
        await self._close_output_item(r, item, previous)

    async def _stream_audio(self, r: _Response, knobs: Knobs, common: dict[str, Any], said: list[str]) -> None:
        """Audio deltas in ``chunk_ms`` chunks with the transcript spread over them; the PCM sent is ``r.sent``."""
        rate = RATES[r.out_encoding]
        pcm = tone(knobs.tone_hz, knobs.response_ms, rate)
        step = max(2, rate * knobs.chunk_ms // 1000 * 2)
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
        pieces = split_text(r.plan.text, len(chunks))
        for i, chunk in enumerate(chunks):
            if not await r.pace(i, self.knobs()):
                break
            if chunk:
                delta = b64encode(encode_from_pcm16(chunk, r.out_encoding))
                await self.emit("response.output_audio.delta", **common, delta=delta)
                r.sent += chunk
                if i == 0:
                    await self.fault_point("response")
            if pieces[i]:
                await self.emit("response.output_audio_transcript.delta", **common, delta=pieces[i])
                said.append(pieces[i])

    async def _stream_function_call(self, r: _Response) -> None:
        call_id = f"call_{r.plan.n}"
        item = Item(
            id=self.ids("item"),
            type="function_call",
            call_id=call_id,
            name=r.plan.tool,
            arguments="",
            status="in_progress",
        )
        previous = await self._open_output_item(r, item)
        arguments = r.plan.arguments or "{}"
        common = {"response_id": r.id, "item_id": item.id, "output_index": 0, "call_id": call_id}
        if await r.pace(0, self.knobs()):
            await self.emit("response.function_call_arguments.delta", **common, delta=arguments)
            await self.fault_point("response")
            await self.emit("response.function_call_arguments.done", **common, name=r.plan.tool, arguments=arguments)
            item.arguments = arguments
        await self._close_output_item(r, item, previous)


_ITEM_PARSERS: dict[str, Callable[[OpenAISession, dict[str, Any], str, str], Item]] = {
    "message": OpenAISession._parse_message,
    "function_call": OpenAISession._parse_function_call,
    "function_call_output": OpenAISession._parse_function_output,
}

# Client events: handler and fields; anything else is answered with an `error`.
_CLIENT_EVENTS: dict[str, _EventSpec] = {
    "session.update": _EventSpec(OpenAISession._on_session_update, ("session",)),
    "input_audio_buffer.append": _EventSpec(OpenAISession._on_append, ("audio",)),
    "input_audio_buffer.commit": _EventSpec(OpenAISession._on_commit),
    "input_audio_buffer.clear": _EventSpec(OpenAISession._on_clear),
    "output_audio_buffer.clear": _EventSpec(OpenAISession._on_output_clear),
    "conversation.item.create": _EventSpec(OpenAISession._on_item_create, ("item",), ("previous_item_id",)),
    "conversation.item.retrieve": _EventSpec(OpenAISession._on_item_retrieve, ("item_id",)),
    "conversation.item.truncate": _EventSpec(
        OpenAISession._on_item_truncate, ("item_id", "content_index", "audio_end_ms")
    ),
    "conversation.item.delete": _EventSpec(OpenAISession._on_item_delete, ("item_id",)),
    "response.create": _EventSpec(OpenAISession._on_response_create, (), ("response",)),
    "response.cancel": _EventSpec(OpenAISession._on_response_cancel, (), ("response_id",)),
}


# ---------------------------------------------------------------------------------------------------------------------
# Server


def _openai_error(conn: ServerConnection, status: int, message: str, code: str | None) -> Response:
    return json_response(
        conn, status, {"error": {"message": message, "type": "invalid_request_error", "code": code, "param": None}}
    )


def _has_bearer(request: Request) -> bool:
    auth = request.headers.get("Authorization", "")
    return auth.startswith("Bearer ") and bool(auth[len("Bearer ") :].strip())


class OpenAIFake(FakeServer):
    """Fake OpenAI Realtime endpoint: ``/v1/realtime`` and ``/realtime`` (or Azure's ``/openai/realtime``)."""

    name = "fake-openai"

    def __init__(self, *, azure: bool = False, knobs: Knobs | None = None) -> None:
        super().__init__(knobs=knobs)
        self.azure = azure

    def check_upgrade(
        self, conn: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        if self.azure:
            if path != "/openai/realtime":
                return _openai_error(conn, 404, "Resource not found", "404")
            if not request.headers.get("api-key") and not _has_bearer(request):
                return _openai_error(conn, 401, "Access denied due to missing subscription key.", "401")
            if not query.get("api-version"):
                return _openai_error(conn, 404, "Resource not found (api-version is required)", "404")
            if not query.get("deployment"):
                return _openai_error(
                    conn, 404, "The API deployment for this resource does not exist.", "DeploymentNotFound"
                )
            return None
        if path not in ("/v1/realtime", "/realtime"):
            return _openai_error(conn, 404, f"Invalid URL (GET {path})", None)
        if not _has_bearer(request):
            return _openai_error(
                conn, 401, "You didn't provide an API key (Authorization: Bearer <key>).", "missing_api_key"
            )
        if not query.get("model") and not query.get("call_id"):
            return _openai_error(conn, 400, "Missing required parameter: 'model'.", "missing_required_parameter")
        return None

    def refusal(self, conn: ServerConnection, status: int) -> Response:
        code = "rate_limit_exceeded" if status == 429 else "server_error"
        return json_response(
            conn, status, {"error": {"message": "Refused by fake (knob refuse).", "type": code, "code": code}}
        )

    def new_session(self, ws: ServerConnection) -> OpenAISession:
        request = ws.request
        assert request is not None
        query = dict(parse_qsl(urlsplit(request.path).query))
        beta = "realtime=v1" in request.headers.get("OpenAI-Beta", "")
        if self.azure:
            beta = beta or query.get("api-version", "").endswith("-preview")
            model = query.get("deployment", "")
        else:
            model = query.get("model", "gpt-realtime")
        return OpenAISession(self, ws, BETA if beta else GA, model)


async def start(
    host: str = "127.0.0.1", port: int = 0, *, azure: bool = False, knobs: Knobs | None = None
) -> OpenAIFake:
    """Start the fake in this event loop. ``port=0`` picks a free port (``server.port``); stop with ``close()``.

    ``knobs`` defaults to the ``FAKE_*`` environment variables.
    """
    server = OpenAIFake(azure=azure, knobs=knobs)
    await server.start(host, port)
    return server
