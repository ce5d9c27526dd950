"""Gemini Live (BidiGenerateContent) client dialect <-> canonical events. Sans-I/O.

One :class:`GeminiClientCodec` per client session, owned by the transformer. It owns the merged
session config (``setup`` plus ``contextUpdate``), what the client asked to receive (input/output
transcription), the 24 kHz output :class:`~shared.audio.RateConverter`, and per-response state (did it
speak, was it interrupted). It never does I/O, never reads the clock, and never raises out of
``open``/``feed``/``encode``.

Gemini has no in-band error: a bad client frame closes the socket with 1007 and a short fixed reason
(the Gemini Live API reference); the reason names a field at most, never a payload.

Choices where the contract is silent:

- Keys are normalised snake -> camel at every level before dispatch (the SDK mixes them), except inside
  user data: function ``args``/``response``, JSON Schemas, ``labels``; a Gemini
  ``Schema`` (``parameters``) is normalised by :mod:`shared.codecs.gemini_schema`, which knows which keys
  are property names.
- ``setup`` fields with no canonical slot, and unknown ones (newer SDKs), go to ``SessionConfig.extra``
  as ``{"setup.<camelCase path>": <JSON text>}`` rather than closing: the provider codec reports them.
- ``realtimeInput.video`` (and image ``mediaChunks``) closes with 1007 "video input is not supported":
  dropping frames silently would hide it, and Gemini itself answers unsupported input with 1007.
- ``activityStart``/``activityEnd`` while automatic activity detection is on close with 1007, as the
  Live API documents them only for ``automaticActivityDetection.disabled``.
- ``clientContent`` parts: ``text`` -> ``TextContent`` (consecutive ones share a Message), ``functionCall``
  / ``functionResponse`` -> their items (history replay); ``inlineData`` closes with 1007.
- ``toolResponse`` ``scheduling``/``willContinue`` have no canonical slot and are not forwarded.
- ``contextUpdate`` (SDK 3.4) merges ``systemInstruction``/``tools`` into the config: one SessionConfig.
- ``Notice`` encodes to nothing: the transformer counts and logs every Notice before it calls
  ``encode``, and events returned from ``encode`` would travel Up.
- Final ``InputTranscript``: only the part of the text not already sent as deltas goes out.
- A cancelled ``ResponseDone`` not preceded by ``Interrupted`` still sends ``interrupted:true`` first,
  so the client stops playback; a response that called a tool sends no ``generationComplete`` nor
  ``turnComplete`` (real Gemini sends none after ``toolCall``, even when the model spoke first), only its
  ``usageMetadata`` when there is one. ``Interrupted(generation_complete=True)`` sends
  ``generationComplete`` before ``interrupted`` (the model had finished, the client was still playing).
- A push-to-talk turn (``activityStart`` ... ``activityEnd``) with less than ``MIN_TURN_MS`` of audio is
  dropped: ``InputAudioClear`` instead of ``ActivityEnd``. OpenAI refuses to commit < 100 ms (and the call
  would end); real Gemini answers a speech-less activity with nothing (docs/decisions.md).
- ``rsSwitch`` (top level, ours): ``{"rsSwitch": {"provider": "OPENAI", "when": "now"|"turn_end"}}`` ->
  ``SwitchRequest``. ``Switched`` goes out as the seed's ``{"type": "switch", "name": "OPENAI"}`` to seed-URL
  clients, as ``{"rsSwitched": {...}}`` to clients that opted in to notices (``SessionMeta.notices``), and
  as nothing to the others: ``LiveServerMessage`` forbids unknown fields.
- ``ToolCall.arguments`` that are not a JSON object become ``args: {"arguments": <text>}``; ``""`` -> ``{}``.
- ``RateLimits``, ``SpeechStarted/Stopped``, ``InputCommitted`` have no Gemini message: nothing is sent.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import msgspec

from shared import audio
from shared import events as ev
from shared.codecs import provider_trouble
from shared.codecs.base import Close, Out
from shared.codecs.gemini_schema import gemini_to_json_schema, normalize_gemini_key
from shared.codecs.tables import eagerness_for, threshold_for, usage_to_gemini
from shared.session import SessionMeta

__all__ = ["OUTPUT_MIME", "OUTPUT_RATE", "GeminiClientCodec", "IdFactory"]

log = logging.getLogger(__name__)

JSON = Any
IdFactory = Callable[[str], str]  # prefix ("item") -> new id

# Notices about the gateway's own mechanics, not the client's request: never told in-band.
_SILENT_NOTICES = frozenset({"reconnect_required", "history_item_skipped"})
OUTPUT_RATE = 24_000  # Gemini Live speaks 24 kHz PCM16 (the Gemini Live API reference)
OUTPUT_MIME = "audio/pcm;rate=24000"
INPUT_DEFAULT_RATE = 16_000  # a mime type without rate= (e.g. the seed's media_chunks) means 16 kHz
MAX_REASON_BYTES = 123  # a WebSocket close reason fits in 123 bytes
MIN_TURN_MS = 100  # shortest push-to-talk turn forwarded (OpenAI commits nothing shorter)

# Subtrees that are user data or schemas with their own rules: never re-cased.
_OPAQUE_KEYS = frozenset(
    {"args", "response", "parameters", "parametersJsonSchema", "responseJsonSchema", "responseSchema", "labels"}
)


def _random_ids() -> IdFactory:
    base = secrets.token_hex(5)
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{base}{next(counter):06x}"


class _Bad(Exception):
    """The client broke the dialect: close 1007 with this short, fixed reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _close_reason(text: str) -> str:
    raw = text.encode()
    return text if len(raw) <= MAX_REASON_BYTES else raw[:MAX_REASON_BYTES].decode(errors="ignore")


def _camel(value: JSON) -> JSON:
    """snake_case -> camelCase keys at every level, leaving user data (``_OPAQUE_KEYS``) untouched."""
    if isinstance(value, dict):
        out: dict[str, JSON] = {}
        for key, sub in value.items():
            name = normalize_gemini_key(key)
            out[name] = sub if name in _OPAQUE_KEYS else _camel(sub)
        return out
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _json_text(value: JSON) -> str:
    return msgspec.json.encode(value).decode()


def _obj(value: JSON, path: str) -> dict[str, JSON]:
    if not isinstance(value, dict):
        raise _Bad(f"invalid {path}: expected an object")
    return value


def _list(value: JSON, path: str) -> list[JSON]:
    if isinstance(value, dict):  # proto-JSON clients sometimes send one element for a repeated field
        return [value]
    if not isinstance(value, list):
        raise _Bad(f"invalid {path}: expected a list")
    return value


def _str(value: JSON, path: str) -> str:
    if not isinstance(value, str):
        raise _Bad(f"invalid {path}: expected a string")
    return value


def _int(value: JSON, path: str) -> int:
    if isinstance(value, str) and value.isdigit():  # proto-JSON int64 may be a string
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"invalid {path}: expected a non-negative integer")
    return value


def _opt_int(value: JSON, path: str) -> int | None:
    return None if value is None else _int(value, path)


def _num(value: JSON, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Bad(f"invalid {path}: expected a number")
    return float(value)


def _bool(value: JSON, path: str) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"invalid {path}: expected a boolean")
    return value


def _content_text(value: JSON, path: str, extra: dict[str, str]) -> str:
    """``systemInstruction``: a string, or a Content whose text parts are joined (one per line)."""
    if isinstance(value, str):
        return value
    parts = _list(_obj(value, path).get("parts", []), f"{path}.parts")
    texts: list[str] = []
    for i, part in enumerate(parts):
        part = _obj(part, f"{path}.parts[{i}]")
        if isinstance(part.get("text"), str):
            texts.append(part["text"])
        else:
            extra[f"setup.{path}.parts[{i}]"] = _json_text(part)
    return "\n".join(texts)


# --------------------------------------------------------------------------------------------------
# setup -> SessionConfig (field tables)


@dataclass(slots=True)
class _Setup:
    """What ``setup`` (and later ``contextUpdate``) said, in canonical terms plus codec-local flags."""

    model: str | None = None
    instructions: str | None = None
    voice: str | None = None
    output_modalities: list[Literal["audio", "text"]] = field(default_factory=lambda: ["audio"])
    temperature: float | None = None
    max_output_tokens: int | None = None
    turn_detection: ev.TurnDetection | None = field(default_factory=ev.TurnDetection)
    input_transcription: bool = False
    output_transcription: bool = False  # codec-local: send outputTranscription only when asked
    resumption: bool = False  # codec-local: the client asked for sessionResumptionUpdate messages
    tools: list[ev.Tool] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)

    def to_config(self) -> ev.SessionConfig:
        return ev.SessionConfig(
            model=self.model,
            instructions=self.instructions,
            voice=self.voice,
            output_modalities=list(self.output_modalities),
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            turn_detection=self.turn_detection,
            input_transcription=self.input_transcription,
            tools=list(self.tools),
            extra=dict(self.extra),
        )


_SetupField = Callable[[_Setup, JSON, str], None]  # (state, value, camelCase path)

_MODALITIES: Mapping[str, Literal["audio", "text"]] = {"AUDIO": "audio", "TEXT": "text"}


def _set_model(s: _Setup, v: JSON, path: str) -> None:
    name = _str(v, path)
    s.model = name.rsplit("/", 1)[-1] if name.startswith(("models/", "publishers/")) else name


def _set_modalities(s: _Setup, v: JSON, path: str) -> None:
    names: set[str] = set()
    for m in _list(v, path):
        canonical = _MODALITIES.get(_str(m, path).upper())
        if canonical is None:
            raise _Bad(f"unsupported {path}")
        names.add(canonical)
    # Native-audio models speak and transcribe; TEXT alone is text only
    s.output_modalities = ["audio"] if "audio" in names or not names else ["text"]


def _set_temperature(s: _Setup, v: JSON, path: str) -> None:
    s.temperature = _num(v, path)


def _set_max_tokens(s: _Setup, v: JSON, path: str) -> None:
    s.max_output_tokens = _int(v, path)


def _set_speech_config(s: _Setup, v: JSON, path: str) -> None:
    for key, value in _obj(v, path).items():
        if key == "voiceConfig":
            prebuilt = _obj(value, f"{path}.voiceConfig").get("prebuiltVoiceConfig")
            name = _obj(prebuilt, f"{path}.voiceConfig.prebuiltVoiceConfig").get("voiceName") if prebuilt else None
            if name is not None:
                s.voice = _str(name, f"{path}.voiceConfig.prebuiltVoiceConfig.voiceName")
            else:
                s.extra[f"setup.{path}.voiceConfig"] = _json_text(value)
        else:  # languageCode, multiSpeakerVoiceConfig: no canonical slot
            s.extra[f"setup.{path}.{key}"] = _json_text(value)


_GENERATION_FIELDS: Mapping[str, _SetupField] = {
    "responseModalities": _set_modalities,
    "temperature": _set_temperature,
    "maxOutputTokens": _set_max_tokens,
    "speechConfig": _set_speech_config,
}


def _nested(table: Mapping[str, _SetupField]) -> _SetupField:
    """A setter for an object field whose own fields are a table; unknown fields go to ``extra``."""

    def setter(s: _Setup, v: JSON, path: str) -> None:
        for key, value in _obj(v, path).items():
            sub = table.get(key)
            if sub is not None:
                sub(s, value, f"{path}.{key}")
            else:
                s.extra[f"setup.{path}.{key}"] = _json_text(value)

    return setter


def _set_system_instruction(s: _Setup, v: JSON, path: str) -> None:
    s.instructions = _content_text(v, path, s.extra)


def _declaration(decl: JSON, path: str, extra: dict[str, str]) -> ev.Tool:
    d = _obj(decl, path)
    name = _str(d.get("name"), f"{path}.name")
    description = d.get("description")
    parameters: str | None = None
    if d.get("parametersJsonSchema") is not None:  # JSON Schema already: kept as is
        parameters = _json_text(_obj(d["parametersJsonSchema"], f"{path}.parametersJsonSchema"))
    elif d.get("parameters") is not None:
        lossy: list[str] = []
        try:
            schema = gemini_to_json_schema(_obj(d["parameters"], f"{path}.parameters"), lossy=lossy)
        except ValueError:
            raise _Bad(f"invalid {path}.parameters") from None
        parameters = _json_text(schema)
        for where in lossy:  # schema keywords JSON Schema has no name for
            extra[f"setup.{path}.parameters{where}"] = "true"
    for key in d.keys() - {"name", "description", "parameters", "parametersJsonSchema"}:
        extra[f"setup.{path}.{key}"] = _json_text(d[key])  # behavior (NON_BLOCKING), response schema, ...
    return ev.Tool(
        name=name,
        description=None if description is None else _str(description, f"{path}.description"),
        parameters=parameters,
    )


def _tools(v: JSON, path: str, extra: dict[str, str]) -> list[ev.Tool]:
    tools: list[ev.Tool] = []
    for i, tool in enumerate(_list(v, path)):
        for kind, value in _obj(tool, f"{path}[{i}]").items():
            if kind == "functionDeclarations":
                decls = _list(value, f"{path}[{i}].functionDeclarations")
                tools += [_declaration(d, f"{path}[{i}].functionDeclarations[{j}]", extra) for j, d in enumerate(decls)]
            else:  # googleSearch, codeExecution, urlContext, ...: provider-side tools, no canonical slot
                extra[f"setup.{path}[{i}].{kind}"] = _json_text(value)
    return tools


def _set_tools(s: _Setup, v: JSON, path: str) -> None:
    s.tools = _tools(v, path, s.extra)


_START_SENSITIVITY = frozenset({"START_SENSITIVITY_UNSPECIFIED", "START_SENSITIVITY_HIGH", "START_SENSITIVITY_LOW"})
_END_SENSITIVITY = frozenset({"END_SENSITIVITY_UNSPECIFIED", "END_SENSITIVITY_HIGH", "END_SENSITIVITY_LOW"})
_ACTIVITY_HANDLING = frozenset({"ACTIVITY_HANDLING_UNSPECIFIED", "START_OF_ACTIVITY_INTERRUPTS", "NO_INTERRUPTION"})


def _enum(v: JSON, path: str, allowed: frozenset[str]) -> str:
    if not isinstance(v, str) or v.upper() not in allowed:
        raise _Bad(f"invalid {path}")
    return v.upper()


def _set_realtime_input_config(s: _Setup, v: JSON, path: str) -> None:
    cfg = _obj(v, path)
    aad = _obj(cfg.get("automaticActivityDetection") or {}, f"{path}.automaticActivityDetection")
    handling = _enum(
        cfg.get("activityHandling", "ACTIVITY_HANDLING_UNSPECIFIED"), f"{path}.activityHandling", _ACTIVITY_HANDLING
    )
    for key in cfg.keys() - {"automaticActivityDetection", "activityHandling"}:
        s.extra[f"setup.{path}.{key}"] = _json_text(cfg[key])  # turnCoverage, ...
    if aad.get("disabled") is True:  # manual turns: activityStart/activityEnd from the client
        s.turn_detection = None
        if handling == "NO_INTERRUPTION":
            s.extra[f"setup.{path}.activityHandling"] = _json_text(handling)
        return
    p = f"{path}.automaticActivityDetection"
    start = _enum(
        aad.get("startOfSpeechSensitivity", "START_SENSITIVITY_UNSPECIFIED"),
        f"{p}.startOfSpeechSensitivity",
        _START_SENSITIVITY,
    )
    end = _enum(
        aad.get("endOfSpeechSensitivity", "END_SENSITIVITY_UNSPECIFIED"),
        f"{p}.endOfSpeechSensitivity",
        _END_SENSITIVITY,
    )
    for key in aad.keys() - {
        "disabled",
        "startOfSpeechSensitivity",
        "endOfSpeechSensitivity",
        "prefixPaddingMs",
        "silenceDurationMs",
    }:
        s.extra[f"setup.{p}.{key}"] = _json_text(aad[key])
    if "disabled" in aad:
        _bool(aad["disabled"], f"{p}.disabled")
    s.turn_detection = ev.TurnDetection(
        type="server_vad",
        # sensitivity -> threshold / eagerness through the shared table, so providers map them back
        threshold=threshold_for(start),
        eagerness=eagerness_for(end),
        prefix_padding_ms=_opt_int(aad.get("prefixPaddingMs"), f"{p}.prefixPaddingMs"),
        silence_duration_ms=_opt_int(aad.get("silenceDurationMs"), f"{p}.silenceDurationMs"),
        interrupt_response=handling != "NO_INTERRUPTION",
    )


def _set_input_transcription(s: _Setup, v: JSON, path: str) -> None:
    cfg = _obj(v, path) if v is not None else None
    s.input_transcription = cfg is not None
    for key, value in (cfg or {}).items():  # languageCodes, ...
        s.extra[f"setup.{path}.{key}"] = _json_text(value)


def _set_output_transcription(s: _Setup, v: JSON, path: str) -> None:
    cfg = _obj(v, path) if v is not None else None
    s.output_transcription = cfg is not None
    for key, value in (cfg or {}).items():
        s.extra[f"setup.{path}.{key}"] = _json_text(value)


def _set_session_resumption(s: _Setup, v: JSON, path: str) -> None:
    # The gateway resumes sessions itself: the handle it hands out is the session id, which the edge reads
    # from setup.sessionResumption.handle of a new connection (with a key of the same account). The
    # conversation lives in our log, so a handle works on any provider and never expires with a socket.
    cfg = _obj(v, path) if v is not None else None
    s.resumption = cfg is not None
    for key, value in (cfg or {}).items():
        if key != "handle":  # the handle was used for routing at the edge; "transparent" has no meaning here
            s.extra[f"setup.{path}.{key}"] = _json_text(value)


# Unknown setup fields (contextWindowCompression, proactivity, explicitVadSignal,
# historyConfig, avatarConfig, safetySettings, labels, and whatever newer SDKs add) -> extra.
_SETUP_FIELDS: Mapping[str, _SetupField] = {
    "model": _set_model,
    "generationConfig": _nested(_GENERATION_FIELDS),
    "systemInstruction": _set_system_instruction,
    "tools": _set_tools,
    "realtimeInputConfig": _set_realtime_input_config,
    "inputAudioTranscription": _set_input_transcription,
    "outputAudioTranscription": _set_output_transcription,
    "sessionResumption": _set_session_resumption,
}


# --------------------------------------------------------------------------------------------------
# Per-response state (Down direction)


@dataclass(slots=True)
class _Turn:
    spoke: bool = False  # any audio/text/transcript: the turn ends with generationComplete + turnComplete
    called: bool = False  # any tool call
    interrupted: bool = False


_TURN_COMPLETE_REASON: Mapping[str, str] = {  # canonical ResponseDone.reason -> turnCompleteReason
    "malformed_function_call": "MALFORMED_FUNCTION_CALL",
    "response_rejected": "RESPONSE_REJECTED",
    "max_regeneration_reached": "MAX_REGENERATION_REACHED",
    "content_filter": "GENERATED_CONTENT_SAFETY",
}

# ResponseDone reasons of a response cut by the gateway's failover (a dead worker, a dropped provider, its
# tail lost on a restarted bus): the client hears it broken off, like a barge-in, so it is told
# ``interrupted`` before ``turnComplete``.
_CUT_REASONS = frozenset({"worker_replaced", "provider_disconnected", "bus_interrupted"})

# ProviderError codes that are the server's fault (close 1011), besides fatal/retryable ones.
_SERVER_ERROR_CODES = frozenset({"server_error", "internal_error", "provider_unavailable", "provider_disconnected"})

# ProviderError codes caused by the gateway's translation of a valid Gemini client turn: logged, never a close.
_GATEWAY_ERROR_CODES = frozenset({"input_audio_buffer_commit_empty"})

# rsSwitch.when -> SwitchRequest.when
_SWITCH_WHEN: Mapping[str, Literal["now", "turn_end"]] = {"now": "now", "turn_end": "turn_end"}

_ENCODE = msgspec.json.Encoder()


def _wire(msg: dict[str, JSON]) -> str:
    return _ENCODE.encode(msg).decode()


_SETUP_COMPLETE = _wire({"setupComplete": {}})
_GENERATION_COMPLETE = _wire({"serverContent": {"generationComplete": True}})
_INTERRUPTED = _wire({"serverContent": {"interrupted": True}})

_Handler = Callable[["GeminiClientCodec", dict[str, JSON]], Out]


class GeminiClientCodec:
    """Gemini Live client side <-> canonical events, for one session. See the module docstring."""

    dialect: ClassVar[str] = "gemini"
    _INBOUND: ClassVar[Mapping[str, _Handler]]
    _REALTIME: ClassVar[tuple[tuple[str, Callable[[GeminiClientCodec, JSON], list[ev.Event]]], ...]]
    _OUTBOUND: ClassVar[Mapping[type[ev.Event], Callable[[GeminiClientCodec, Any], Out]]]

    def __init__(self, meta: SessionMeta, *, id_factory: IdFactory | None = None) -> None:
        self.meta = meta
        self._ids = id_factory or _random_ids()
        self._setup: _Setup | None = None  # None until the client's setup arrived
        self._ready_sent = False
        self._resumed = False  # rebuilt by resume(): the client's setup may or may not be replayed
        self._noticed: set[tuple[str, str | None]] = set()  # notices told in-band (opted-in clients), once each
        self._out_conv = audio.RateConverter(OUTPUT_RATE)
        self._turns: dict[str, _Turn] = {}
        self._in_sent: dict[str, str] = {}  # user item id -> input transcript text sent so far
        self._activity_ms: float | None = None  # audio (ms) in the open push-to-talk turn; None: none open

    def __repr__(self) -> str:
        return f"GeminiClientCodec(sid={self.meta.sid}, setup={self._setup is not None}, turns={len(self._turns)})"

    # -- open / resume ------------------------------------------------------------------------------

    def open(self) -> Out:
        return Out()  # the client speaks first (setup); setupComplete waits for the provider

    def resume(self, config: ev.SessionConfig | None, items: list[ev.Item]) -> None:
        """Rebuild from the checkpoint on a replacement transformer; sends nothing.

        With a config, the client's setup was translated (and setupComplete almost surely sent): a
        replayed setup is then not expected. Without one, the setup is among the frames the transformer
        replays next, so it is accepted as the first frame; a first frame that is not setup gets the
        defaults instead of a close. ``outputAudioTranscription`` is codec-local and not in the
        checkpoint: it is assumed on (a client that did not ask can ignore the field; one that did
        would otherwise lose transcripts). Audio formats need nothing: every input chunk names its own
        mime type and output is always 24 kHz PCM, so this dialect leaves ``client_*_format`` unset.
        """
        self._resumed = True
        self._ready_sent = config is not None
        if config is None:
            return
        self._setup = _Setup(
            model=config.model,
            instructions=config.instructions,
            voice=config.voice,
            output_modalities=list(config.output_modalities),
            temperature=config.temperature,
            max_output_tokens=config.max_output_tokens,
            turn_detection=config.turn_detection,
            input_transcription=config.input_transcription,
            output_transcription=True,
            tools=list(config.tools),
            extra=dict(config.extra),
        )

    # -- feed: client -> canonical ----------------------------------------------------------------

    def feed(self, frame: str | bytes) -> Out:
        try:
            msg = msgspec.json.decode(frame)
        except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter on bad UTF-8
            return Out(close=Close(1007, "invalid JSON"))
        except RecursionError:  # nested deeper than any message: unreadable, as the real server has it
            return Out(close=Close(1007, "invalid JSON: nested too deeply"))
        if not isinstance(msg, dict) or len(msg) != 1:
            return Out(close=Close(1007, "expected one message field per frame"))
        raw_key, body = next(iter(msg.items()))
        key = normalize_gemini_key(raw_key)
        if self._setup is None and key != "setup":
            if not self._resumed:
                return Out(close=Close(1007, "first message must be setup"))
            self._setup = _Setup(model=self.meta.model, output_transcription=True)
        handler = self._INBOUND.get(key)
        if handler is None:
            return Out(close=Close(1007, _close_reason(f"unknown message type: {key}")))
        try:
            return handler(self, _obj(_camel(body), key))
        except _Bad as bad:
            return Out(close=Close(1007, _close_reason(bad.reason)))
        except Exception as exc:  # a codec bug must not leave the client hanging; text may hold payload
            log.exception("client message failed", extra={"sid": self.meta.sid, "exc_type": type(exc).__name__})
            return Out(close=Close(1011, "internal error"))

    def _on_setup(self, body: dict[str, JSON]) -> Out:
        if self._setup is not None:  # Gemini takes exactly one setup per connection
            return Out(close=Close(1007, "setup already received"))
        s = _Setup(model=self.meta.model)
        for key, value in body.items():
            setter = _SETUP_FIELDS.get(key)
            if setter is not None:
                setter(s, value, key)
            else:
                s.extra[f"setup.{key}"] = _json_text(value)
        self._setup = s
        return Out(events=[s.to_config()])

    def _on_context_update(self, body: dict[str, JSON]) -> Out:
        assert self._setup is not None
        s = self._setup
        for key, value in body.items():
            if key == "systemInstruction":
                _set_system_instruction(s, value, key)
            elif key == "tools":  # the SDK wraps the list: {"tools": {"tools": [...]}}
                inner = value.get("tools", []) if isinstance(value, dict) else value
                s.tools = _tools(inner, key, s.extra)
            else:
                raise _Bad(_close_reason(f"unsupported contextUpdate.{key}"))
        return Out(events=[s.to_config()])

    def _on_realtime_input(self, body: dict[str, JSON]) -> Out:
        unknown = body.keys() - {name for name, _ in self._REALTIME}
        if unknown:
            raise _Bad(_close_reason(f"unknown realtimeInput.{min(unknown)}"))
        events: list[ev.Event] = []
        for name, handler in self._REALTIME:  # proto field order: media before activity end markers
            if name in body:
                events += handler(self, body[name])
        return Out(events=events)

    def _audio_blob(self, blob: JSON, path: str) -> list[ev.Event]:
        b = _obj(blob, path)
        mime = b.get("mimeType") or "audio/pcm"
        if not isinstance(mime, str):
            raise _Bad(f"invalid {path}.mimeType")
        if mime.lower().startswith(("image/", "video/")):
            raise _Bad("video input is not supported")
        try:
            rate = audio.parse_pcm_mime(mime, INPUT_DEFAULT_RATE)
        except ValueError:
            raise _Bad("unsupported audio mime type") from None
        try:
            pcm = audio.b64decode_any(_str(b.get("data", ""), f"{path}.data"))
        except ValueError:
            raise _Bad(f"invalid base64 in {path}.data") from None
        if self._activity_ms is not None and rate > 0:
            self._activity_ms += len(pcm) / 2 * 1000 / rate
        return [ev.InputAudio(pcm=pcm, rate=rate)] if pcm else []

    def _rt_audio(self, v: JSON) -> list[ev.Event]:
        return self._audio_blob(v, "realtimeInput.audio")

    def _rt_media_chunks(self, v: JSON) -> list[ev.Event]:
        events: list[ev.Event] = []
        for i, chunk in enumerate(_list(v, "realtimeInput.mediaChunks")):
            events += self._audio_blob(chunk, f"realtimeInput.mediaChunks[{i}]")
        return events

    def _rt_video(self, v: JSON) -> list[ev.Event]:
        raise _Bad("video input is not supported")

    def _rt_text(self, v: JSON) -> list[ev.Event]:
        text = _str(v, "realtimeInput.text")
        item = ev.Message(id=self._ids("item"), role="user", content=[ev.TextContent(text=text)])
        return [ev.ItemCreate(item=item), ev.ResponseCreate()]

    def _manual_turns(self, name: str) -> None:
        assert self._setup is not None
        if self._setup.turn_detection is not None:
            raise _Bad(f"{name} requires automaticActivityDetection.disabled")

    def _rt_activity_start(self, v: JSON) -> list[ev.Event]:
        self._manual_turns("activityStart")
        if self._activity_ms is None:  # a nested activityStart is ignored (real Gemini merges them)
            self._activity_ms = 0.0
        return [ev.ActivityStart()]

    def _rt_activity_end(self, v: JSON) -> list[ev.Event]:
        self._manual_turns("activityEnd")
        spoken, self._activity_ms = self._activity_ms, None
        if spoken is not None and spoken < MIN_TURN_MS:
            # Too short to be a turn: drop it, like real Gemini drops a speech-less activity, instead of a
            # commit OpenAI refuses with a fatal error (docs/decisions.md "too-short push-to-talk turn").
            return [ev.InputAudioClear()]
        return [ev.ActivityEnd()]

    def _rt_stream_end(self, v: JSON) -> list[ev.Event]:
        return [ev.AudioStreamEnd()] if _bool(v, "realtimeInput.audioStreamEnd") else []

    def _on_client_content(self, body: dict[str, JSON]) -> Out:
        unknown = body.keys() - {"turns", "turnComplete"}
        if unknown:
            raise _Bad(_close_reason(f"unknown clientContent.{min(unknown)}"))
        events: list[ev.Event] = [
            ev.ItemCreate(item=item)
            for i, turn in enumerate(_list(body.get("turns", []), "clientContent.turns"))
            for item in self._turn_items(turn, f"clientContent.turns[{i}]")
        ]
        if body.get("turnComplete") is not None and _bool(body["turnComplete"], "clientContent.turnComplete"):
            events.append(ev.ResponseCreate())
        return Out(events=events)

    def _turn_items(self, turn: JSON, path: str) -> list[ev.Item]:
        t = _obj(turn, path)
        role_name = t.get("role", "user")
        role: Literal["user", "assistant"]
        if role_name == "user":
            role = "user"
        elif role_name == "model":
            role = "assistant"
        else:
            raise _Bad(f"invalid {path}.role")
        items: list[ev.Item] = []
        texts: list[ev.Content] = []

        def flush() -> None:
            if texts:
                items.append(ev.Message(id=self._ids("item"), role=role, content=list(texts)))
                texts.clear()

        for j, raw in enumerate(_list(t.get("parts", []), f"{path}.parts")):
            part = _obj(raw, f"{path}.parts[{j}]")
            where = f"{path}.parts[{j}]"
            if isinstance(part.get("text"), str):
                texts.append(ev.TextContent(text=part["text"]))
            elif "functionCall" in part:
                flush()
                call = _obj(part["functionCall"], f"{where}.functionCall")
                name = _str(call.get("name"), f"{where}.functionCall.name")
                items.append(
                    ev.FunctionCall(
                        id=self._ids("item"),
                        call_id=_str(call.get("id") or self._ids("call"), f"{where}.functionCall.id"),
                        name=name,
                        arguments=_json_text(call.get("args") or {}),
                    )
                )
            elif "functionResponse" in part:
                flush()
                items.append(self._function_output(part["functionResponse"], f"{where}.functionResponse"))
            else:
                raise _Bad(_close_reason(f"unsupported part in {where}"))
        flush()
        return items

    def _function_output(self, raw: JSON, path: str) -> ev.FunctionCallOutput:
        r = _obj(raw, path)
        if "parts" in r:
            raise _Bad(f"{path}.parts is not supported")
        call_id = r.get("id")
        if not isinstance(call_id, str) or not call_id:  # the SDK refuses to send one without an id
            raise _Bad(f"{path}.id is required")
        name = r.get("name")
        # The response object is kept whole as JSON text: the provider side decides how to present it.
        return ev.FunctionCallOutput(
            id=self._ids("item"),
            call_id=call_id,
            output=_json_text(r.get("response") or {}),
            name=None if name is None else _str(name, f"{path}.name"),
        )

    def _on_rs_switch(self, body: dict[str, JSON]) -> Out:
        unknown = body.keys() - {"provider", "when"}
        if unknown:
            raise _Bad(_close_reason(f"unknown rsSwitch.{min(unknown)}"))
        provider = _str(body.get("provider"), "rsSwitch.provider").strip().lower()
        when = _str(body.get("when", "turn_end"), "rsSwitch.when").lower()
        if not provider:
            raise _Bad("invalid rsSwitch.provider")
        if when not in _SWITCH_WHEN:
            raise _Bad("invalid rsSwitch.when")
        return Out(events=[ev.SwitchRequest(provider=provider, when=_SWITCH_WHEN[when])])

    def _on_tool_response(self, body: dict[str, JSON]) -> Out:
        unknown = body.keys() - {"functionResponses"}
        if unknown:
            raise _Bad(_close_reason(f"unknown toolResponse.{min(unknown)}"))
        responses = _list(body.get("functionResponses", []), "toolResponse.functionResponses")
        events: list[ev.Event] = [
            ev.ItemCreate(item=self._function_output(r, f"toolResponse.functionResponses[{i}]"))
            for i, r in enumerate(responses)
        ]
        if events:
            events.append(ev.ResponseCreate())
        return Out(events=events)

    # -- encode: canonical -> client --------------------------------------------------------------

    def encode(self, event: ev.Event) -> Out:
        handler = self._OUTBOUND.get(type(event))
        if handler is None:
            log.warning("no client mapping for event", extra={"sid": self.meta.sid, "event": type(event).__name__})
            return Out()
        try:
            out = handler(self, event)
        except Exception as exc:
            log.exception("encode failed", extra={"sid": self.meta.sid, "exc_type": type(exc).__name__})
            return Out()
        if out.wire and not self._ready_sent:
            # The SDK drops any first frame that is not setupComplete (the Gemini Live API reference) and blocks.
            self._ready_sent = True
            out.wire.insert(0, _SETUP_COMPLETE)
        return out

    def _nothing(self, event: ev.Event) -> Out:
        return Out()

    def _out_notice(self, e: ev.Notice) -> Out:
        """Only to clients that opted in (``LiveServerMessage`` forbids unknown fields), once per code and
        param; the transformer counts and logs every notice."""
        key = (e.code, e.param)
        if not self.meta.notices or e.code in _SILENT_NOTICES or key in self._noticed:
            return Out()
        self._noticed.add(key)
        return Out(wire=[_wire({"rsNotice": {"code": e.code, "param": e.param, "message": e.message}})])

    def _turn(self, response_id: str) -> _Turn:
        turn = self._turns.get(response_id)
        if turn is None:
            turn = self._turns[response_id] = _Turn()
        return turn

    def _out_ready(self, e: ev.SessionReady) -> Out:
        if self._ready_sent:  # again after an upstream reconnect: the client already has it
            return Out()
        self._ready_sent = True
        return Out(wire=[_SETUP_COMPLETE])

    def _out_response_started(self, e: ev.ResponseStarted) -> Out:
        self._turn(e.response_id)
        return Out()

    def _model_turn(self, response_id: str, part: dict[str, JSON]) -> Out:
        turn = self._turn(response_id)
        if turn.interrupted:  # barge-in: output after the cut is not played
            return Out()
        turn.spoke = True
        return Out(wire=[_wire({"serverContent": {"modelTurn": {"parts": [part]}}})])

    def _audio_part(self, pcm: bytes) -> dict[str, JSON]:
        return {"inlineData": {"mimeType": OUTPUT_MIME, "data": audio.b64encode_std(pcm)}}

    def _out_audio(self, e: ev.OutputAudio) -> Out:
        turn = self._turn(e.response_id)
        if turn.interrupted:
            return Out()
        turn.spoke = True
        pcm = self._out_conv.convert(e.pcm, e.rate)
        return self._model_turn(e.response_id, self._audio_part(pcm)) if pcm else Out()

    def _flush_audio(self) -> list[str]:
        tail = self._out_conv.flush()
        if not tail:
            return []
        return [_wire({"serverContent": {"modelTurn": {"parts": [self._audio_part(tail)]}}})]

    def _out_text(self, e: ev.OutputText) -> Out:
        return self._model_turn(e.response_id, {"text": e.delta})

    def _out_transcript(self, e: ev.OutputTranscript) -> Out:
        turn = self._turn(e.response_id)
        assert self._setup is not None
        if turn.interrupted or not self._setup.output_transcription:
            return Out()  # only when the client asked for outputAudioTranscription
        turn.spoke = True
        return Out(wire=[_wire({"serverContent": {"outputTranscription": {"text": e.delta}}})])

    def _out_input_transcript(self, e: ev.InputTranscript) -> Out:
        if self._setup is None or not self._setup.input_transcription:
            return Out()
        sent = self._in_sent.get(e.item_id, "")
        if e.final:
            self._in_sent.pop(e.item_id, None)
            # Gemini streams transcripts incrementally: send only what the deltas did not cover.
            text = e.text[len(sent) :] if e.text.startswith(sent) else ("" if sent else e.text)
        else:
            self._in_sent[e.item_id] = sent + e.text
            text = e.text
        if not text:
            return Out()
        return Out(wire=[_wire({"serverContent": {"inputTranscription": {"text": text}}})])

    def _out_output_done(self, e: ev.OutputDone) -> Out:
        turn = self._turn(e.response_id)
        if turn.interrupted or not isinstance(e.item, ev.Message):
            return Out()
        return Out(wire=self._flush_audio())

    def _out_tool_call(self, e: ev.ToolCall) -> Out:
        self._turn(e.response_id).called = True
        try:
            args = msgspec.json.decode(e.arguments) if e.arguments.strip() else {}
        except msgspec.DecodeError:
            args = None
        if not isinstance(args, dict):  # Gemini args are an object (the Gemini Live API reference); keep the text
            args = {"arguments": e.arguments}
        call = {"id": e.call_id, "name": e.name, "args": args}
        return Out(wire=[_wire({"toolCall": {"functionCalls": [call]}})])

    def _out_tool_cancel(self, e: ev.ToolCallCancelled) -> Out:
        return Out(wire=[_wire({"toolCallCancellation": {"ids": list(e.call_ids)}})])

    def _out_interrupted(self, e: ev.Interrupted) -> Out:
        self._out_conv.reset()  # pending resampler audio belongs to the cut response
        targets = [e.response_id] if e.response_id is not None else list(self._turns)
        sent = False
        for rid in targets:
            turn = self._turn(rid)
            if not turn.interrupted:
                turn.interrupted = sent = True
        if not (sent or not targets):
            return Out()
        # real traffic: generationComplete (model done) may precede interrupted (client still playing)
        return Out(wire=[_GENERATION_COMPLETE, _INTERRUPTED] if e.generation_complete else [_INTERRUPTED])

    def _out_response_done(self, e: ev.ResponseDone) -> Out:
        turn = self._turns.pop(e.response_id, None) or _Turn()
        usage = {"usageMetadata": usage_to_gemini(e.usage)} if e.usage is not None else {}
        if turn.called and not turn.interrupted:
            # Gemini sends no generationComplete/turnComplete after toolCall, even when the model spoke
            # before calling: the model continues after toolResponse.
            wire = self._flush_audio()
            return Out(wire=[*wire, _wire(usage)] if usage else wire)
        wire: list[str] = []
        if e.status == "cancelled" or e.reason in _CUT_REASONS:
            if not turn.interrupted:
                self._out_conv.reset()
                wire.append(_INTERRUPTED)
        else:
            if not turn.interrupted:
                wire += self._flush_audio()
            if e.status == "completed":
                wire.append(_GENERATION_COMPLETE)
        content: dict[str, JSON] = {"turnComplete": True}
        reason = _TURN_COMPLETE_REASON.get(e.reason or "")
        if reason is not None and e.status != "completed":
            content["turnCompleteReason"] = reason
        wire.append(_wire({"serverContent": content, **usage}))
        if self._setup is not None and self._setup.resumption:
            # A turn boundary is a safe resumption point: everything before it is in the session log.
            update = {"newHandle": self.meta.client_session_id, "resumable": True}
            wire.append(_wire({"sessionResumptionUpdate": update}))
        return Out(wire=wire)

    def _out_go_away(self, e: ev.GoAway) -> Out:
        seconds = max(e.time_left_ms, 0) / 1000
        return Out(wire=[_wire({"goAway": {"timeLeft": f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"}})])

    def _out_switched(self, e: ev.Switched) -> Out:
        if self.meta.notices:  # LiveServerMessage forbids unknown fields: only clients that opted in
            body = {"from": e.from_provider, "to": e.to_provider, "reason": e.reason, "gapMs": e.gap_ms}
            return Out(wire=[_wire({"rsSwitched": body})])
        if self.meta.seed:  # the seed's own browser client listens for its event (docs/entry-points.md)
            return Out(wire=[_wire({"type": "switch", "name": e.to_provider.upper()})])
        return Out()

    def _out_provider_error(self, e: ev.ProviderError) -> Out:
        if e.code in _GATEWAY_ERROR_CODES:
            # the gateway's own translation slipped (not the client's fault, nothing real Gemini would
            # close for): keep the call
            log.warning("provider error kept off the client", extra={"sid": self.meta.sid, "code": e.code})
            return Out()
        server = e.fatal or e.retryable or e.code in _SERVER_ERROR_CODES or provider_trouble.is_provider_trouble(e.code)
        return Out(close=Close(1011 if server else 1007, _close_reason(f"provider error: {e.code}")))


GeminiClientCodec._INBOUND = {
    "setup": GeminiClientCodec._on_setup,
    "realtimeInput": GeminiClientCodec._on_realtime_input,
    "clientContent": GeminiClientCodec._on_client_content,
    "toolResponse": GeminiClientCodec._on_tool_response,
    "contextUpdate": GeminiClientCodec._on_context_update,
    "rsSwitch": GeminiClientCodec._on_rs_switch,  # ours: the switch contract (docs/entry-points.md)
}

GeminiClientCodec._REALTIME = (
    ("mediaChunks", GeminiClientCodec._rt_media_chunks),
    ("audio", GeminiClientCodec._rt_audio),
    ("video", GeminiClientCodec._rt_video),
    ("activityStart", GeminiClientCodec._rt_activity_start),
    ("text", GeminiClientCodec._rt_text),
    ("activityEnd", GeminiClientCodec._rt_activity_end),
    ("audioStreamEnd", GeminiClientCodec._rt_stream_end),
)

GeminiClientCodec._OUTBOUND = {
    ev.SessionReady: GeminiClientCodec._out_ready,
    ev.SpeechStarted: GeminiClientCodec._nothing,  # Gemini clients learn of barge-in from interrupted
    ev.SpeechStopped: GeminiClientCodec._nothing,
    ev.InputCommitted: GeminiClientCodec._nothing,
    ev.InputTranscript: GeminiClientCodec._out_input_transcript,
    ev.ResponseStarted: GeminiClientCodec._out_response_started,
    ev.OutputAudio: GeminiClientCodec._out_audio,
    ev.OutputTranscript: GeminiClientCodec._out_transcript,
    ev.OutputText: GeminiClientCodec._out_text,
    ev.OutputDone: GeminiClientCodec._out_output_done,
    ev.ToolCall: GeminiClientCodec._out_tool_call,
    ev.ToolCallCancelled: GeminiClientCodec._out_tool_cancel,
    ev.ResponseDone: GeminiClientCodec._out_response_done,
    ev.Interrupted: GeminiClientCodec._out_interrupted,
    ev.RateLimits: GeminiClientCodec._nothing,  # no Gemini message carries rate limits
    ev.ProviderError: GeminiClientCodec._out_provider_error,
    ev.Notice: GeminiClientCodec._out_notice,  # rsNotice to opted-in clients; counted by the transformer
    ev.GoAway: GeminiClientCodec._out_go_away,
    ev.Switched: GeminiClientCodec._out_switched,  # rsSwitched for opted-in clients, else nothing
}
