"""OpenAI Realtime client dialect (GA and beta) <-> canonical events. Sans-I/O.

One :class:`OpenAIClientCodec` per client session, owned by the transformer. It owns the merged session
state (what ``session.updated`` echoes and what ``SessionConfig`` carries), a bounded store of
conversation items (``conversation.item.retrieve`` is answered from it), the client's input and output
audio formats with the output :class:`~shared.audio.RateConverter`, and every id the client sees on a
response (``response_id``, ``item_id``, ``output_index``, ``content_index``, ``event_id``). It never
does I/O, never reads the clock or the environment, and never raises out of ``open``/``feed``/``encode``.

GA and beta differ in names and shapes only. Every difference is a row of a :class:`_Dialect` table
(event names, part types, session fields, session rendering), never an ``if beta`` in the flow.

Choices where the contract is silent (also in the module summary of the tests):

- Unknown client event ``type``, unknown or mistyped fields -> one ``error`` frame (codes as OpenAI uses
  them: ``invalid_value``, ``invalid_type``, ``unknown_parameter``, ``missing_required_parameter``),
  nothing goes Up: the update is atomic.
- Session fields with no canonical slot are kept (and echoed) and reported in ``SessionConfig.extra`` as
  ``{"session.<wire path>": <JSON text>}``: GA ``tracing``, ``truncation``, ``prompt``, ``include``,
  ``reasoning``, ``parallel_tool_calls``, ``audio.input.noise_reduction``, transcription
  ``prompt``/``keywords``/``languages``/``delay``, MCP tools and MCP ``tool_choice``; beta ``tracing``,
  ``input_audio_noise_reduction``, transcription ``prompt``. A transcription session adds
  ``{"session.type": "\\"transcription\\""}`` and is canonical ``create_response=False``.
- ``tool_choice`` ``{"type": "function", "name": N}`` is canonical ``"N"`` (the provider codecs read any
  value other than ``auto``/``none``/``required`` as the one function to call).
- ``response.create`` fields with no ``ResponseOptions`` slot (``prompt``, ``reasoning``,
  ``parallel_tool_calls``, a per-response ``output_audio_format`` that differs from the session's)
  produce an ``error`` frame with code ``unsupported_field`` naming the field, and the response is still
  created. ``response.input`` (out-of-band input items) is refused: ignoring it would answer a different
  question.
- Audio inside ``conversation.item.create`` (``input_audio.audio``) is not forwarded (canonical items
  hold no audio): the item goes Up with its transcript and an ``unsupported_field`` error names the field.
  ``input_image`` and ``item_reference`` parts: same treatment, the part is left out.
- ``conversation.item.delete``/``truncate`` of an id the store does not know are still forwarded (the
  store is lost when a session moves to another transformer; the provider knows better). ``retrieve``
  can only be answered from the store: an unknown id is an ``error``.
- ``Interrupted`` produces no frame (the client learns from ``speech_started`` and the cancelled
  ``response.done``); output deltas of that response arriving later are not sent, and resampler audio
  still pending for it is dropped.
- A fatal ``ProviderError`` is an ``error`` frame, then a close 1011: the provider session is gone.
- Notices about the gateway's own plumbing produce no frame (the transformer logs and counts them):
  ``reconnect_required`` (Gemini takes a new configuration only on a new connection: the reconnect happens
  inside the gateway and the client already got ``session.updated``) and ``history_item_skipped`` (a
  restored history item with nothing to replay, e.g. a reply cut before any transcript). A provider's
  ``unsupported_field`` notice is sent once per param per session: a new upstream connection reports its
  whole configuration again, and the client must not see the reconnect.
- ``conversation.item.input_audio_transcription.completed`` requires ``usage`` in both SDKs; canonical
  transcripts carry none, so it is ``{"type": "tokens", ...: 0}``.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar, Literal

import msgspec

from shared import audio
from shared import events as ev
from shared.codecs.base import Close, Out
from shared.codecs.tables import usage_to_openai
from shared.session import SessionMeta

__all__ = ["IdFactory", "OpenAIClientCodec", "random_ids"]

log = logging.getLogger(__name__)

JSON = Any  # a decoded JSON value
IdFactory = Callable[[str], str]  # prefix ("event", "item", "resp", "sess", "conv") -> new id

MAX_ID_LEN = 32  # OpenAI rejects client ids longer than 32 characters
MAX_STORED_ITEMS = 1024  # the item store is bounded; the oldest items are forgotten first


def random_ids() -> IdFactory:
    """Ids like ``item_3f9c0e1a7b000001``: a random per-codec base plus a counter (cheap per event)."""
    base = secrets.token_hex(5)
    counter = itertools.count(1)
    return lambda prefix: f"{prefix}_{base}{next(counter):06x}"


class _Reject(Exception):
    """A client event the codec refuses: it becomes one ``error`` frame and nothing goes Up."""

    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(code)
        self.code = code
        self.message = message
        self.param = param


# --------------------------------------------------------------------------------------------------
# Field validation (messages name the parameter, never echo the value)


def _invalid_type(param: str, expected: str) -> _Reject:
    return _Reject("invalid_type", f"Invalid type for '{param}': expected {expected}.", param)


def _str(value: JSON, param: str) -> str:
    if not isinstance(value, str):
        raise _invalid_type(param, "a string")
    return value


def _opt_str(value: JSON, param: str) -> str | None:
    return None if value is None else _str(value, param)


def _bool(value: JSON, param: str) -> bool:
    if not isinstance(value, bool):
        raise _invalid_type(param, "a boolean")
    return value


def _int(value: JSON, param: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid_type(param, "an integer")
    if value < minimum:
        raise _Reject("integer_below_min_value", f"Invalid '{param}': must be >= {minimum}.", param)
    return value


def _num(value: JSON, param: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid_type(param, "a number")
    if not lo <= value <= hi:
        raise _Reject("invalid_value", f"Invalid '{param}': must be between {lo} and {hi}.", param)
    return float(value)


def _obj(value: JSON, param: str) -> dict[str, JSON]:
    if not isinstance(value, dict):
        raise _invalid_type(param, "an object")
    return value


def _list(value: JSON, param: str) -> list[JSON]:
    if not isinstance(value, list):
        raise _invalid_type(param, "an array")
    return value


def _enum(value: JSON, param: str, allowed: frozenset[str] | tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _Reject("invalid_value", f"Invalid value for '{param}'. Supported: {', '.join(sorted(allowed))}.", param)
    return value


def _required(msg: Mapping[str, JSON], key: str, param: str | None = None) -> JSON:
    if key not in msg:
        name = param or key
        raise _Reject("missing_required_parameter", f"Missing required parameter: '{name}'.", name)
    return msg[key]


def _only(msg: Mapping[str, JSON], allowed: frozenset[str], prefix: str = "") -> None:
    for key in msg:
        if key not in allowed:
            raise _Reject("unknown_parameter", f"Unknown parameter: '{prefix}{key}'.", f"{prefix}{key}")


def _client_id(value: JSON, param: str) -> str:
    ident = _str(value, param)
    if not ident or len(ident) > MAX_ID_LEN:
        raise _Reject("invalid_value", f"Invalid '{param}': must be 1 to {MAX_ID_LEN} characters.", param)
    return ident


def _json_text(value: JSON) -> str:
    return msgspec.json.encode(value).decode()


def _flatten(obj: Mapping[str, JSON], containers: frozenset[str], prefix: str = "") -> Iterator[tuple[str, JSON]]:
    """``{"audio": {"input": {"format": F}}}`` -> ``("audio.input.format", F)``: GA nests, tables are flat."""
    for key, value in obj.items():
        path = prefix + key
        if path in containers:
            yield from _flatten(_obj(value, f"session.{path}"), containers, path + ".")
        else:
            yield path, value


def _put(obj: dict[str, JSON], path: str, value: JSON) -> None:
    *parents, leaf = path.split(".")
    for key in parents:
        obj = obj.setdefault(key, {})
    obj[leaf] = value


# --------------------------------------------------------------------------------------------------
# Session state: canonical values plus the wire-only things the echo needs


@dataclass(slots=True)
class _Session:
    kind: str = "realtime"  # "realtime" | "transcription"
    model: str | None = None
    instructions: str | None = None
    voice: str = "marin"
    speed: float | None = None
    output_modalities: list[Literal["audio", "text"]] = field(default_factory=lambda: ["audio"])
    input_format: audio.AudioFormat = audio.FORMATS["audio/pcm"]
    output_format: audio.AudioFormat = audio.FORMATS["audio/pcm"]
    turn_detection: ev.TurnDetection | None = field(default_factory=ev.TurnDetection)
    transcription: dict[str, JSON] | None = None  # wire object, keys validated
    transcription_path: str = "audio.input.transcription"  # where the dialect keeps it (for extra)
    temperature: float | None = None  # beta only
    max_output_tokens: int | None = None  # None = "inf"
    tools: list[dict[str, JSON]] = field(default_factory=list)  # wire tools, keys validated
    tool_choice: str | dict[str, JSON] = "auto"
    passthrough: dict[str, JSON] = field(default_factory=dict)  # wire path -> value, no canonical slot

    def copy(self) -> _Session:
        return replace(self, passthrough=dict(self.passthrough))

    def to_config(self) -> ev.SessionConfig:
        extra = {f"session.{path}": _json_text(value) for path, value in self.passthrough.items()}
        tools: list[ev.Tool] = []
        for i, tool in enumerate(self.tools):
            if tool.get("type", "function") == "function":
                params = tool.get("parameters")
                tools.append(
                    ev.Tool(
                        name=tool["name"],
                        description=tool.get("description"),
                        parameters=None if params is None else _json_text(params),
                    )
                )
            else:  # GA MCP tools: no canonical slot
                extra[f"session.tools[{i}]"] = _json_text(tool)
        tool_choice: str | None
        if isinstance(self.tool_choice, str):
            tool_choice = self.tool_choice
        elif self.tool_choice.get("type") == "function":
            tool_choice = str(self.tool_choice.get("name"))
        else:
            tool_choice = None
            extra["session.tool_choice"] = _json_text(self.tool_choice)
        tr = self.transcription
        if tr is not None:
            for key, value in tr.items():
                if key not in ("model", "language") and value is not None:
                    extra[f"session.{self.transcription_path}.{key}"] = _json_text(value)
        td = self.turn_detection
        if self.kind == "transcription":
            extra["session.type"] = _json_text("transcription")
            if td is not None:  # a transcription session never answers
                td = msgspec.structs.replace(td, create_response=False)
        return ev.SessionConfig(
            model=self.model,
            instructions=self.instructions,
            voice=self.voice,
            output_modalities=list(self.output_modalities),
            temperature=self.temperature,
            max_output_tokens=self.max_output_tokens,
            turn_detection=td,
            input_transcription=tr is not None,
            transcription_model=tr.get("model") if tr else None,
            transcription_language=tr.get("language") if tr else None,
            tools=tools,
            tool_choice=tool_choice,
            speed=self.speed,
            extra=extra,
            client_input_format=self.input_format.name,
            client_output_format=self.output_format.name,
        )


_Setter = Callable[[_Session, JSON, str], None]  # (state, value, wire path without "session.")


def _p(path: str) -> str:
    return f"session.{path}"


def _set_model(s: _Session, v: JSON, path: str) -> None:
    s.model = _str(v, _p(path))


def _set_instructions(s: _Session, v: JSON, path: str) -> None:
    s.instructions = _str(v, _p(path))


def _set_voice(s: _Session, v: JSON, path: str) -> None:
    # GA also takes a custom voice object {"id": ...}; canonical voices are names
    if isinstance(v, dict) and set(v) == {"id"}:
        v = v["id"]
    s.voice = _str(v, _p(path))


def _set_speed(s: _Session, v: JSON, path: str) -> None:
    s.speed = _num(v, _p(path), 0.25, 1.5)


def _set_temperature(s: _Session, v: JSON, path: str) -> None:
    s.temperature = _num(v, _p(path), 0.0, 2.0)


def _set_max_output_tokens(s: _Session, v: JSON, path: str) -> None:
    s.max_output_tokens = None if v == "inf" else _int(v, _p(path), 1)


def _modalities(v: JSON, param: str) -> list[Literal["audio", "text"]]:
    names = {_enum(m, param, ("audio", "text")) for m in _list(v, param)}
    if not names:
        raise _Reject("invalid_value", f"Invalid '{param}': must not be empty.", param)
    # "audio" includes its transcript (GA ["audio"], beta ["text", "audio"]); text alone is text only
    return ["audio"] if "audio" in names else ["text"]


def _set_modalities(s: _Session, v: JSON, path: str) -> None:
    s.output_modalities = _modalities(v, _p(path))


def _format(v: JSON, param: str, beta: bool) -> audio.AudioFormat:
    if beta and not isinstance(v, str):
        raise _invalid_type(param, "a string")
    if not beta and not isinstance(v, dict):
        raise _invalid_type(param, "an object")
    if not beta:
        _only(v, frozenset({"type", "rate"}), f"{param}.")
    try:
        return audio.openai_format(v)
    except ValueError:
        raise _Reject("invalid_value", f"Invalid value for '{param}': unsupported audio format.", param) from None


def _set_input_format(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    s.input_format = _format(v, _p(path), beta)


def _set_output_format(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    s.output_format = _format(v, _p(path), beta)


_TD_COMMON = frozenset({"type", "create_response", "interrupt_response"})
_TD_KEYS: Mapping[tuple[bool, str], frozenset[str]] = {  # (beta, vad type) -> allowed keys
    (False, "server_vad"): _TD_COMMON | {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"},
    (False, "semantic_vad"): _TD_COMMON | {"eagerness"},
    (True, "server_vad"): _TD_COMMON | {"threshold", "prefix_padding_ms", "silence_duration_ms"},
    (True, "semantic_vad"): _TD_COMMON | {"eagerness"},
}
_TD_FIELDS: Mapping[str, Callable[[JSON, str], JSON]] = {
    "threshold": lambda v, p: _num(v, p, 0.0, 1.0),
    "prefix_padding_ms": _int,
    "silence_duration_ms": _int,
    "idle_timeout_ms": _int,
    "create_response": _bool,
    "interrupt_response": _bool,
    "eagerness": lambda v, p: _enum(v, p, ("low", "medium", "high", "auto")),
}


def _turn_detection(v: JSON, param: str, beta: bool) -> ev.TurnDetection | None:
    if v is None:  # manual turns: the client commits and asks for responses itself
        return None
    td = _obj(v, param)
    kind = _enum(td.get("type", "server_vad"), f"{param}.type", ("server_vad", "semantic_vad"))
    _only(td, _TD_KEYS[(beta, kind)], f"{param}.")
    fields = {k: _TD_FIELDS[k](val, f"{param}.{k}") for k, val in td.items() if k != "type" and val is not None}
    return ev.TurnDetection(type=kind, **fields)  # type: ignore[arg-type]


def _set_turn_detection(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    s.turn_detection = _turn_detection(v, _p(path), beta)


_TRANSCRIPTION_KEYS: Mapping[bool, frozenset[str]] = {
    False: frozenset({"model", "language", "prompt", "keywords", "languages", "delay"}),
    True: frozenset({"model", "language", "prompt"}),
}


def _set_transcription(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    if v is None:
        s.transcription = None
        return
    tr = _obj(v, _p(path))
    _only(tr, _TRANSCRIPTION_KEYS[beta], f"{_p(path)}.")
    for key in ("model", "language", "prompt", "delay"):
        if key in tr:
            _opt_str(tr[key], f"{_p(path)}.{key}")
    s.transcription = dict(tr)
    s.transcription_path = path


def _function_tool(v: JSON, param: str) -> dict[str, JSON]:
    tool = _obj(v, param)
    _only(tool, frozenset({"type", "name", "description", "parameters"}), f"{param}.")
    _str(_required(tool, "name", f"{param}.name"), f"{param}.name")
    _opt_str(tool.get("description"), f"{param}.description")
    if tool.get("parameters") is not None:
        _obj(tool["parameters"], f"{param}.parameters")
    return {"type": "function", **tool}


def _tools(v: JSON, param: str, *, mcp: bool) -> list[dict[str, JSON]]:
    tools: list[dict[str, JSON]] = []
    for i, raw in enumerate(_list(v, param)):
        kind = _obj(raw, f"{param}[{i}]").get("type", "function")
        if kind == "mcp" and mcp:  # GA only; kept, echoed and reported in extra
            tools.append(dict(raw))
        elif kind == "function":
            tools.append(_function_tool(raw, f"{param}[{i}]"))
        else:
            raise _Reject("invalid_value", f"Invalid value for '{param}[{i}].type'.", f"{param}[{i}].type")
    return tools


def _set_tools(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    s.tools = _tools(v, _p(path), mcp=not beta)


_TOOL_CHOICE_MODES = ("auto", "none", "required")


def _tool_choice(v: JSON, param: str, beta: bool) -> str | dict[str, JSON]:
    if isinstance(v, str) or beta:  # beta's SDK types tool_choice as a plain string
        return _enum(v, param, _TOOL_CHOICE_MODES)
    choice = _obj(v, param)
    kind = _enum(choice.get("type"), f"{param}.type", ("function", "mcp"))
    if kind == "function":
        _only(choice, frozenset({"type", "name"}), f"{param}.")
        _str(_required(choice, "name", f"{param}.name"), f"{param}.name")
    return dict(choice)


def _set_tool_choice(s: _Session, v: JSON, path: str, *, beta: bool) -> None:
    s.tool_choice = _tool_choice(v, _p(path), beta)


def _set_passthrough(s: _Session, v: JSON, path: str) -> None:
    if v is None:
        s.passthrough.pop(path, None)
    else:
        s.passthrough[path] = v


def _set_ga_type(s: _Session, v: JSON, path: str) -> None:
    s.kind = _enum(v, _p(path), ("realtime", "transcription"))


def _session_fields(beta: bool) -> tuple[dict[str, _Setter], dict[str, _Setter]]:
    """(realtime session fields, transcription session fields) of a dialect, by flat wire path."""
    if not beta:
        realtime: dict[str, _Setter] = {
            "type": _set_ga_type,
            "model": _set_model,
            "instructions": _set_instructions,
            "output_modalities": _set_modalities,
            "max_output_tokens": _set_max_output_tokens,
            "tools": partial(_set_tools, beta=beta),
            "tool_choice": partial(_set_tool_choice, beta=beta),
            "audio.input.format": partial(_set_input_format, beta=beta),
            "audio.input.transcription": partial(_set_transcription, beta=beta),
            "audio.input.turn_detection": partial(_set_turn_detection, beta=beta),
            "audio.input.noise_reduction": _set_passthrough,
            "audio.output.format": partial(_set_output_format, beta=beta),
            "audio.output.voice": _set_voice,
            "audio.output.speed": _set_speed,
            **dict.fromkeys(
                ("tracing", "truncation", "prompt", "include", "reasoning", "parallel_tool_calls"), _set_passthrough
            ),
        }
        transcription = {
            k: realtime[k]
            for k in (
                "type",
                "audio.input.format",
                "audio.input.transcription",
                "audio.input.turn_detection",
                "audio.input.noise_reduction",
                "include",
            )
        }
        return realtime, transcription
    realtime = {
        "model": _set_model,
        "instructions": _set_instructions,
        "modalities": _set_modalities,
        "voice": _set_voice,
        "speed": _set_speed,
        "temperature": _set_temperature,
        "max_response_output_tokens": _set_max_output_tokens,
        "tools": partial(_set_tools, beta=beta),
        "tool_choice": partial(_set_tool_choice, beta=beta),
        "input_audio_format": partial(_set_input_format, beta=beta),
        "output_audio_format": partial(_set_output_format, beta=beta),
        "input_audio_transcription": partial(_set_transcription, beta=beta),
        "turn_detection": partial(_set_turn_detection, beta=beta),
        "input_audio_noise_reduction": _set_passthrough,
        "tracing": _set_passthrough,
    }
    transcription = {
        k: realtime[k]
        for k in ("input_audio_format", "input_audio_transcription", "turn_detection", "input_audio_noise_reduction")
    } | {"modalities": _set_modalities, "include": _set_passthrough}
    return realtime, transcription


def _format_from_config(name: str | None, default: audio.AudioFormat) -> audio.AudioFormat:
    if name is None:
        return default
    try:
        return audio.AudioFormat.from_name(name)
    except ValueError:  # a newer transformer's format: the default beats losing the whole resume
        log.warning("unknown client audio format in the checkpoint; using the default", extra={"format": name})
        return default


def _session_from_config(cfg: ev.SessionConfig, base: _Session, beta: bool) -> _Session:
    """The inverse of :meth:`_Session.to_config` (resume on a replacement transformer).

    Audio formats come back from the config's client-side fields; a config without them (written before
    they existed) or with a name this version does not know keeps the dialect default, PCM16 24 kHz.
    """
    s = replace(base, passthrough={})
    s.input_format = _format_from_config(cfg.client_input_format, base.input_format)
    s.output_format = _format_from_config(cfg.client_output_format, base.output_format)
    s.model = cfg.model or base.model
    s.instructions = cfg.instructions
    s.voice = cfg.voice or base.voice
    s.speed = cfg.speed
    s.output_modalities = list(cfg.output_modalities)
    s.temperature = cfg.temperature if beta else None
    s.max_output_tokens = cfg.max_output_tokens
    s.turn_detection = cfg.turn_detection
    s.transcription_path = "input_audio_transcription" if beta else "audio.input.transcription"
    tr_prefix = f"{s.transcription_path}."
    if cfg.input_transcription:
        tr = {"model": cfg.transcription_model, "language": cfg.transcription_language}
        s.transcription = {k: v for k, v in tr.items() if v is not None}
    s.tools = [
        {"type": "function", "name": t.name}
        | ({"description": t.description} if t.description is not None else {})
        | ({"parameters": msgspec.json.decode(t.parameters)} if t.parameters is not None else {})
        for t in cfg.tools
    ]
    choice = cfg.tool_choice or "auto"
    s.tool_choice = choice if choice in _TOOL_CHOICE_MODES else {"type": "function", "name": choice}
    for key, text in cfg.extra.items():
        path = key.removeprefix("session.")
        value = msgspec.json.decode(text)
        if path == "type":
            s.kind = value
        elif path == "tool_choice":
            s.tool_choice = value
        elif path.startswith("tools["):
            s.tools.append(value)
        elif path.startswith(tr_prefix) and s.transcription is not None:
            s.transcription[path.removeprefix(tr_prefix)] = value
        else:
            s.passthrough[path] = value
    return s


# --------------------------------------------------------------------------------------------------
# Rendering the session object (session.created / session.updated) per dialect

_GA_FORMAT: Mapping[str, Callable[[audio.AudioFormat], dict[str, JSON]]] = {
    "pcm16": lambda f: {"type": "audio/pcm", "rate": f.rate},
    "pcmu": lambda f: {"type": "audio/pcmu"},
    "pcma": lambda f: {"type": "audio/pcma"},
}
_BETA_FORMAT: Mapping[str, str] = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}

# Defaults OpenAI documents and shows in session.created; canonical None means "provider default".
_VAD_DEFAULTS: Mapping[str, JSON] = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def _render_turn_detection(td: ev.TurnDetection | None, beta: bool) -> dict[str, JSON] | None:
    if td is None:
        return None
    out: dict[str, JSON] = {"type": td.type}
    if td.type == "semantic_vad":
        out["eagerness"] = td.eagerness or "auto"
    else:
        out["threshold"] = td.threshold if td.threshold is not None else _VAD_DEFAULTS["threshold"]
        out["prefix_padding_ms"] = td.prefix_padding_ms if td.prefix_padding_ms is not None else 300
        out["silence_duration_ms"] = td.silence_duration_ms if td.silence_duration_ms is not None else 500
        if not beta:
            out["idle_timeout_ms"] = td.idle_timeout_ms
    out["create_response"] = td.create_response
    out["interrupt_response"] = td.interrupt_response
    return out


def _render_ga_session(s: _Session, session_id: str) -> dict[str, JSON]:
    audio_in: dict[str, JSON] = {
        "format": _GA_FORMAT[s.input_format.encoding](s.input_format),
        "transcription": s.transcription,
        "noise_reduction": None,
        "turn_detection": _render_turn_detection(s.turn_detection, beta=False),
    }
    out: dict[str, JSON] = {"type": s.kind, "object": "realtime.session", "id": session_id}
    if s.kind == "transcription":
        out["audio"] = {"input": audio_in}
    else:
        if s.model is not None:
            out["model"] = s.model
        out |= {
            "output_modalities": list(s.output_modalities),
            "instructions": s.instructions or "",
            "audio": {
                "input": audio_in,
                "output": {
                    "format": _GA_FORMAT[s.output_format.encoding](s.output_format),
                    "voice": s.voice,
                    "speed": s.speed if s.speed is not None else 1.0,
                },
            },
            "tools": list(s.tools),
            "tool_choice": s.tool_choice,
            "max_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
        }
    for path, value in s.passthrough.items():
        _put(out, path, value)
    return out


def _render_beta_session(s: _Session, session_id: str) -> dict[str, JSON]:
    out: dict[str, JSON] = {"id": session_id}
    if s.model is not None:
        out["model"] = s.model
    out |= {
        "modalities": ["text", "audio"] if "audio" in s.output_modalities else ["text"],
        "instructions": s.instructions or "",
        "voice": s.voice,
        "input_audio_format": _BETA_FORMAT[s.input_format.encoding],
        "output_audio_format": _BETA_FORMAT[s.output_format.encoding],
        "input_audio_transcription": s.transcription,
        "input_audio_noise_reduction": None,
        "turn_detection": _render_turn_detection(s.turn_detection, beta=True),
        "tools": list(s.tools),
        "tool_choice": s.tool_choice,
        "temperature": s.temperature if s.temperature is not None else 0.8,
        "max_response_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
        "speed": s.speed if s.speed is not None else 1.0,
    }
    out.update(s.passthrough)
    return out


def _render_beta_transcription_session(s: _Session, session_id: str) -> dict[str, JSON]:
    td = _render_turn_detection(s.turn_detection, beta=True)
    if td is not None:  # the beta transcription session type knows only these VAD fields
        td = {k: td[k] for k in ("type", "threshold", "prefix_padding_ms", "silence_duration_ms") if k in td}
    return {
        # required by the SDK type; a gateway session has no ephemeral secret to show
        "client_secret": {"value": "", "expires_at": 0},
        "modalities": ["text"],
        "input_audio_format": _BETA_FORMAT[s.input_format.encoding],
        "input_audio_transcription": s.transcription,
        "turn_detection": td,
    }


# --------------------------------------------------------------------------------------------------
# Items: wire <-> canonical

_ITEM_KEYS: Mapping[str, frozenset[str]] = {
    "message": frozenset({"id", "type", "object", "status", "role", "content"}),
    "function_call": frozenset({"id", "type", "object", "status", "call_id", "name", "arguments"}),
    "function_call_output": frozenset({"id", "type", "object", "status", "call_id", "output"}),
}
_ROLES = ("user", "assistant", "system")

# Inbound content part type -> (roles that may carry it, canonical kind). Both dialects' spellings
# are accepted in both (clients copy examples across); the echo uses the session's dialect.
_IN_PARTS: Mapping[str, tuple[frozenset[str], str]] = {
    "input_text": (frozenset({"user", "system"}), "text"),
    "input_audio": (frozenset({"user"}), "audio"),
    "output_text": (frozenset({"assistant"}), "text"),
    "text": (frozenset({"assistant"}), "text"),
    "output_audio": (frozenset({"assistant"}), "audio"),
    "audio": (frozenset({"assistant"}), "audio"),
}
# Part types with no canonical form: reported, left out.
_UNSUPPORTED_PARTS = frozenset({"input_image", "item_reference"})

_STATUSES = ("completed", "incomplete", "in_progress")


@dataclass(slots=True)
class _Notes:
    """``unsupported_field`` reports gathered while parsing one client event."""

    items: list[tuple[str, str]] = field(default_factory=list)  # (param, message)

    def add(self, param: str, message: str) -> None:
        self.items.append((param, message))


def _content_part(raw: JSON, role: str, param: str, notes: _Notes) -> ev.Content | None:
    part = _obj(raw, param)
    kind_name = _str(_required(part, "type", f"{param}.type"), f"{param}.type")
    if kind_name in _UNSUPPORTED_PARTS:
        notes.add(f"{param}", f"Content part type '{kind_name}' is not supported by this gateway; it was left out.")
        return None
    spec = _IN_PARTS.get(kind_name)
    if spec is None or role not in spec[0]:
        raise _Reject("invalid_value", f"Invalid value for '{param}.type' with role '{role}'.", f"{param}.type")
    _only(part, frozenset({"type", "text", "audio", "transcript"}), f"{param}.")
    if spec[1] == "text":
        return ev.TextContent(text=_str(_required(part, "text", f"{param}.text"), f"{param}.text"))
    if part.get("audio"):
        notes.add(f"{param}.audio", "Audio inside conversation items is not forwarded; use input_audio_buffer.append.")
    return ev.AudioContent(transcript=_opt_str(part.get("transcript"), f"{param}.transcript"))


def _parse_item(raw: JSON, param: str, new_id: Callable[[], str], notes: _Notes, names: Mapping[str, str]) -> ev.Item:
    item = _obj(raw, param)
    kind = _enum(_required(item, "type", f"{param}.type"), f"{param}.type", tuple(_ITEM_KEYS))
    _only(item, _ITEM_KEYS[kind], f"{param}.")
    item_id = _client_id(item["id"], f"{param}.id") if item.get("id") is not None else new_id()
    if kind == "message":
        role = _enum(_required(item, "role", f"{param}.role"), f"{param}.role", _ROLES)
        parts = _list(_required(item, "content", f"{param}.content"), f"{param}.content")
        content = [c for i, p in enumerate(parts) if (c := _content_part(p, role, f"{param}.content[{i}]", notes))]
        status = _enum(item["status"], f"{param}.status", _STATUSES) if item.get("status") is not None else None
        return ev.Message(id=item_id, role=role, content=content, status=status)  # type: ignore[arg-type]
    call_id = _str(_required(item, "call_id", f"{param}.call_id"), f"{param}.call_id")
    if kind == "function_call":
        return ev.FunctionCall(
            id=item_id,
            call_id=call_id,
            name=_str(_required(item, "name", f"{param}.name"), f"{param}.name"),
            arguments=_str(item.get("arguments", ""), f"{param}.arguments"),
        )
    # Gemini needs the function's name with its result: fill it from the call we saw, if any
    output = _str(_required(item, "output", f"{param}.output"), f"{param}.output")
    return ev.FunctionCallOutput(id=item_id, call_id=call_id, output=output, name=names.get(call_id))


# --------------------------------------------------------------------------------------------------
# response.create options


_RespSetter = Callable[[dict[str, JSON], JSON, str, _Session, _Notes], None]


def _response_fields(beta: bool) -> dict[str, _RespSetter]:
    def put(key: str, conv: Callable[[JSON, str], JSON]) -> Callable[..., None]:
        def setter(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
            opts[key] = conv(v, param)

        return setter

    def unsupported(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        notes.add(param, f"'{param}' is not supported by this gateway and was ignored.")

    def output_format(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        if _format(v, param, beta) != s.output_format:  # one output format per session
            notes.add(param, f"'{param}' per response is not supported; the session's format is used.")

    def conversation(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        if _enum(v, param, ("auto", "none")) == "none":
            opts["out_of_band"] = True

    def refuse(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        raise _Reject("unsupported_field", f"'{param}' is not supported by this gateway.", param)

    def metadata(v: JSON, param: str) -> dict[str, str]:
        return {k: _str(val, f"{param}.{k}") for k, val in _obj(v, param).items()}

    def max_tokens(v: JSON, param: str) -> int | None:
        return None if v == "inf" else _int(v, param, 1)

    def tools(v: JSON, param: str) -> list[ev.Tool]:
        return [
            ev.Tool(
                name=t["name"],
                description=t.get("description"),
                parameters=None if t.get("parameters") is None else _json_text(t["parameters"]),
            )
            for t in _tools(v, param, mcp=False)
        ]

    def tool_choice(v: JSON, param: str) -> str:
        choice = _tool_choice(v, param, beta)
        if isinstance(choice, str):
            return choice
        if choice.get("type") != "function":
            raise _Reject("unsupported_field", f"'{param}' of type mcp is not supported.", param)
        return str(choice["name"])

    common: dict[str, _RespSetter] = {
        "instructions": put("instructions", _str),
        "tools": put("tools", tools),
        "tool_choice": put("tool_choice", tool_choice),
        "metadata": put("metadata", metadata),
        "conversation": conversation,
        "input": refuse,
    }
    if beta:
        return common | {
            "modalities": put("output_modalities", _modalities),
            "voice": put("voice", _str),
            "output_audio_format": output_format,
            "temperature": put("temperature", lambda v, p: _num(v, p, 0.0, 2.0)),
            "max_response_output_tokens": put("max_output_tokens", max_tokens),
        }
    return common | {
        "output_modalities": put("output_modalities", _modalities),
        "audio.output.voice": put("voice", _str),
        "audio.output.format": output_format,
        "max_output_tokens": put("max_output_tokens", max_tokens),
        "prompt": unsupported,
        "reasoning": unsupported,
        "parallel_tool_calls": unsupported,
    }


# --------------------------------------------------------------------------------------------------
# Dialect tables


@dataclass(frozen=True, slots=True)
class _Dialect:
    name: str
    beta: bool
    default_voice: str
    session_fields: Mapping[str, _Setter]
    transcription_fields: Mapping[str, _Setter]
    session_containers: frozenset[str]
    response_fields: Mapping[str, _RespSetter]
    render_session: Callable[[_Session, str], dict[str, JSON]]
    # server event names
    item_added: str
    item_done: str | None  # GA finalises items with conversation.item.done; beta has none
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_delta: str
    text_done: str
    name_on_args_done: bool  # GA response.function_call_arguments.done carries the name
    part_types: Mapping[tuple[str, str], str]  # (role, canonical content kind) -> wire part type


def _dialect(beta: bool) -> _Dialect:
    realtime, transcription = _session_fields(beta)
    assistant_text, assistant_audio = ("text", "audio") if beta else ("output_text", "output_audio")
    return _Dialect(
        name="openai_beta" if beta else "openai_ga",
        beta=beta,
        default_voice="alloy" if beta else "marin",
        session_fields=realtime,
        transcription_fields=transcription,
        session_containers=frozenset() if beta else frozenset({"audio", "audio.input", "audio.output"}),
        response_fields=_response_fields(beta),
        render_session=_render_beta_session if beta else _render_ga_session,
        item_added="conversation.item.created" if beta else "conversation.item.added",
        item_done=None if beta else "conversation.item.done",
        audio_delta="response.audio.delta" if beta else "response.output_audio.delta",
        audio_done="response.audio.done" if beta else "response.output_audio.done",
        transcript_delta="response.audio_transcript.delta" if beta else "response.output_audio_transcript.delta",
        transcript_done="response.audio_transcript.done" if beta else "response.output_audio_transcript.done",
        text_delta="response.text.delta" if beta else "response.output_text.delta",
        text_done="response.text.done" if beta else "response.output_text.done",
        name_on_args_done=not beta,
        part_types={
            ("user", "text"): "input_text",
            ("user", "audio"): "input_audio",
            ("system", "text"): "input_text",
            ("system", "audio"): "input_text",
            ("assistant", "text"): assistant_text,
            ("assistant", "audio"): assistant_audio,
        },
    )


_DIALECTS: Mapping[bool, _Dialect] = {False: _dialect(False), True: _dialect(True)}


# --------------------------------------------------------------------------------------------------
# Response bookkeeping (Down direction)


@dataclass(slots=True)
class _Part:
    index: int
    kind: str  # "audio" | "text"
    chunks: list[str] = field(default_factory=list)  # transcript or text deltas so far


@dataclass(slots=True)
class _OutItem:
    item_id: str
    output_index: int
    kind: str  # "message" | "function_call"
    parts: dict[str, _Part] = field(default_factory=dict)  # by kind: one part per kind per item
    call: ev.FunctionCall | None = None
    args_done: bool = False
    done: bool = False


@dataclass(slots=True)
class _Response:
    id: str
    items: dict[str, _OutItem] = field(default_factory=dict)
    output: list[dict[str, JSON]] = field(default_factory=list)  # final wire items, by output_index
    interrupted: bool = False


_STATUS_REASONS = frozenset({"turn_detected", "client_cancelled", "max_output_tokens", "content_filter"})
# Notices about the gateway's own plumbing, logged and counted by the transformer but not sent: a Gemini
# reconfiguration reconnects inside the gateway (the client already has its session.updated), and the history
# it restores may hold an item with nothing to replay. Neither is an error of the client's.
_SILENT_NOTICES = frozenset({"reconnect_required", "history_item_skipped"})
# ProviderError codes that are the server's fault (type server_error), besides fatal/retryable ones.
_SERVER_ERROR_CODES = frozenset({"server_error", "internal_error", "provider_unavailable", "provider_disconnected"})


class _Head(msgspec.Struct):
    """Just enough of a client event to dispatch it; ``audio`` makes append a single typed decode."""

    type: str
    event_id: str | None = None
    audio: str | None = None

    def __repr__(self) -> str:  # keep base64 audio out of logs and tracebacks
        size = "None" if self.audio is None else f"<{len(self.audio)} chars>"
        return f"_Head(type={self.type!r}, event_id={self.event_id!r}, audio={size})"


_HEAD = msgspec.json.Decoder(_Head)
_ENCODE = msgspec.json.Encoder()

_Handler = Callable[["OpenAIClientCodec", _Head, "str | bytes"], Out]


class OpenAIClientCodec:
    """OpenAI Realtime (GA or beta) client side <-> canonical events, for one session.

    ``open()`` -> ``session.created``; ``feed(frame)`` -> local acks/errors + Up events; ``encode(Down)``
    -> server events with the full §1.6 ordering. See the module docstring for the choices it makes.
    """

    dialect: str  # "openai_ga" | "openai_beta" (instance attribute: one class serves both)
    _INBOUND: ClassVar[Mapping[bool, Mapping[str, _Handler]]]  # by "is beta"
    _OUTBOUND: ClassVar[Mapping[type[ev.Event], Callable[[OpenAIClientCodec, Any], Out]]]

    def __init__(self, meta: SessionMeta, *, beta: bool, id_factory: IdFactory | None = None) -> None:
        self.meta = meta
        self._d = _DIALECTS[beta]
        self._inbound = self._INBOUND[beta]
        self.dialect = self._d.name
        self._ids = id_factory or random_ids()
        self._session_id = self._ids("sess")
        self._conversation_id = self._ids("conv")
        self._state = _Session(model=meta.model, voice=self._d.default_voice)
        self._out_conv = audio.RateConverter(self._state.output_format.rate)
        # Bytes appended since the last commit/clear (empty commit -> error). None: not known, after a
        # resume (what the dead transformer took in may still be uncommitted upstream): the provider judges.
        self._in_bytes: int | None = 0
        self._items: OrderedDict[str, ev.Item] = OrderedDict()
        self._last_item_id: str | None = None
        self._call_names: dict[str, str] = {}  # call_id -> function name (Gemini needs it on results)
        self._responses: dict[str, _Response] = {}
        self._done_responses: OrderedDict[str, None] = OrderedDict()  # late events for these are dropped
        self._transcripts: dict[str, list[str]] = {}  # user item id -> input transcript deltas
        # Provider params already reported as unsupported: a new upstream connection (reconnect, Gemini
        # reconfiguration) reports its whole config again, and the client has been told once.
        self._unsupported_told: set[str] = set()

    def __repr__(self) -> str:
        return f"OpenAIClientCodec({self.dialect}, sid={self.meta.sid}, responses={len(self._responses)})"

    # -- helpers ------------------------------------------------------------------------------------

    def _frame(self, type_: str, **fields: JSON) -> str:
        return _ENCODE.encode({"type": type_, "event_id": self._ids("event"), **fields}).decode()

    def _error(
        self,
        code: str,
        message: str,
        *,
        param: str | None = None,
        client_event_id: str | None = None,
        type_: str = "invalid_request_error",
    ) -> str:
        err: dict[str, str | None] = {
            "type": type_,
            "code": code,
            "message": message,
            "param": param,
            "event_id": client_event_id,
        }
        return self._frame("error", error=err)

    def _notes_out(self, notes: _Notes, client_event_id: str | None) -> list[str]:
        return [
            self._error("unsupported_field", message, param=param, client_event_id=client_event_id)
            for param, message in notes.items
        ]

    @staticmethod
    def _body(frame: str | bytes) -> dict[str, JSON]:
        msg = msgspec.json.decode(frame)
        if not isinstance(msg, dict):  # _HEAD already accepted it as an object; keep mypy honest
            raise _invalid_type("event", "an object")
        return msg

    def _remember(self, item: ev.Item) -> None:
        self._items[item.id] = item
        self._items.move_to_end(item.id)
        while len(self._items) > MAX_STORED_ITEMS:
            self._items.popitem(last=False)
        self._last_item_id = item.id
        if isinstance(item, ev.FunctionCall):
            self._call_names[item.call_id] = item.name

    def _render_item(self, item: ev.Item, status: str | None = None) -> dict[str, JSON]:
        base: dict[str, JSON] = {"id": item.id, "object": "realtime.item"}
        if isinstance(item, ev.Message):
            content: list[dict[str, JSON]] = []
            for c in item.content:
                kind = "text" if isinstance(c, ev.TextContent) else "audio"
                wire = self._d.part_types[(item.role, kind)]
                if isinstance(c, ev.TextContent):
                    content.append({"type": wire, "text": c.text})
                elif wire == "input_text":  # system "audio" (only via a provider): its transcript
                    content.append({"type": wire, "text": c.transcript or ""})
                else:
                    content.append({"type": wire, "transcript": c.transcript})
            return base | {
                "type": "message",
                "role": item.role,
                "status": status or item.status or "completed",
                "content": content,
            }
        if isinstance(item, ev.FunctionCall):
            return base | {
                "type": "function_call",
                "status": status or "completed",
                "call_id": item.call_id,
                "name": item.name,
                "arguments": item.arguments,
            }
        return base | {"type": "function_call_output", "call_id": item.call_id, "output": item.output}

    def _item_added_frames(self, item: ev.Item, previous_item_id: str | None, *, done: bool) -> list[str]:
        """Ack of a conversation item: GA ``item.added`` (+ ``item.done``), beta ``item.created``."""
        prev = previous_item_id if previous_item_id is not None else self._last_item_id
        wire = self._render_item(item)
        frames = [self._frame(self._d.item_added, previous_item_id=prev, item=wire)]
        if done and self._d.item_done is not None:
            frames.append(self._frame(self._d.item_done, previous_item_id=prev, item=wire))
        return frames

    # -- open / resume ------------------------------------------------------------------------------

    def open(self) -> Out:
        session = self._d.render_session(self._state, self._session_id)
        return Out(wire=[self._frame("session.created", session=session)])

    def resume(self, config: ev.SessionConfig | None, items: list[ev.Item]) -> None:
        """Rebuild state on a replacement transformer from the checkpoint; sends nothing.

        The client's audio formats come back with the config (``client_input_format``/
        ``client_output_format``), so a G.711 client keeps G.711 across a transformer failover. Not
        recoverable from canonical state: responses in flight (their next event re-announces them).
        """
        self._in_bytes = None
        if config is not None:
            base = _Session(model=self.meta.model, voice=self._d.default_voice)
            self._state = _session_from_config(config, base, self._d.beta)
            self._out_conv = audio.RateConverter(self._state.output_format.rate)
        for item in items:
            self._remember(item)

    # -- feed: client -> canonical ----------------------------------------------------------------

    def feed(self, frame: str | bytes) -> Out:
        try:
            head = _HEAD.decode(frame)
        except msgspec.ValidationError as exc:
            return Out(wire=[self._error("invalid_event", f"Invalid event: {exc}")])
        except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter on bad UTF-8
            return Out(wire=[self._error("invalid_json", "The event is not valid JSON.")])
        handler = self._inbound.get(head.type)
        if handler is None:
            return Out(
                wire=[
                    self._error(
                        "invalid_value",
                        "Invalid value for 'type': unknown event type.",
                        param="type",
                        client_event_id=head.event_id,
                    )
                ]
            )
        try:
            return handler(self, head, frame)
        except _Reject as rej:
            return Out(wire=[self._error(rej.code, rej.message, param=rej.param, client_event_id=head.event_id)])
        except Exception as exc:  # a codec bug must not kill the session; the text may hold payload
            log.exception("client event failed", extra={"sid": self.meta.sid, "exc_type": type(exc).__name__})
            return Out(
                wire=[
                    self._error(
                        "internal_error",
                        "The gateway failed to process this event.",
                        client_event_id=head.event_id,
                        type_="server_error",
                    )
                ]
            )

    def _on_append(self, head: _Head, frame: str | bytes) -> Out:
        # The hot path: one typed decode (no dict), one base64 decode, at most one G.711 expansion.
        if head.audio is None:
            raise _Reject("missing_required_parameter", "Missing required parameter: 'audio'.", "audio")
        try:
            data = audio.b64decode_any(head.audio)
        except ValueError:
            raise _Reject("invalid_value", "Invalid 'audio': expected base64-encoded audio.", "audio") from None
        if not data:
            return Out()
        fmt = self._state.input_format
        pcm = audio.decode_to_pcm16(data, fmt)
        self._in_bytes = (self._in_bytes or 0) + len(pcm)
        return Out(events=[ev.InputAudio(pcm=pcm, rate=fmt.rate)])

    def _on_commit(self, head: _Head, frame: str | bytes) -> Out:
        _only(self._body(frame), frozenset({"type", "event_id"}))
        if self._in_bytes == 0:
            raise _Reject(
                "input_audio_buffer_commit_empty", "Error committing input audio buffer: the buffer is empty."
            )
        self._in_bytes = 0
        # No local ack: input_audio_buffer.committed comes from the provider (InputCommitted).
        return Out(events=[ev.InputAudioCommit()])

    def _on_clear(self, head: _Head, frame: str | bytes) -> Out:
        _only(self._body(frame), frozenset({"type", "event_id"}))
        self._in_bytes = 0
        return Out(wire=[self._frame("input_audio_buffer.cleared")], events=[ev.InputAudioClear()])

    def _on_output_clear(self, head: _Head, frame: str | bytes) -> Out:
        raise _Reject("unsupported_event", "output_audio_buffer.clear is only available over WebRTC/SIP.", "type")

    def _on_session_update(self, head: _Head, frame: str | bytes, *, transcription_event: bool = False) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "session"}))
        session = _obj(_required(msg, "session"), "session")
        new = self._state.copy()
        if transcription_event:  # beta transcription_session.update
            new.kind = "transcription"
            table = self._d.transcription_fields
        elif self._d.beta:
            table = self._d.session_fields
        else:
            kind = _required(session, "type", "session.type")  # GA requires it (protocols.md §1.2)
            new.kind = _enum(kind, "session.type", ("realtime", "transcription"))
            table = self._d.session_fields if new.kind == "realtime" else self._d.transcription_fields
        for path, value in _flatten(session, self._d.session_containers):
            setter = table.get(path)
            if setter is None:
                raise _Reject("unknown_parameter", f"Unknown parameter: 'session.{path}'.", f"session.{path}")
            setter(new, value, path)
        self._state = new
        if self._out_conv.out_rate != new.output_format.rate:
            self._out_conv = audio.RateConverter(new.output_format.rate)
        if transcription_event:
            reply = self._frame(
                "transcription_session.updated", session=_render_beta_transcription_session(new, self._session_id)
            )
        else:
            reply = self._frame("session.updated", session=self._d.render_session(new, self._session_id))
        return Out(wire=[reply], events=[new.to_config()])

    def _on_transcription_session_update(self, head: _Head, frame: str | bytes) -> Out:
        return self._on_session_update(head, frame, transcription_event=True)

    def _on_item_create(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item", "previous_item_id"}))
        prev = _opt_str(msg.get("previous_item_id"), "previous_item_id")
        notes = _Notes()
        item = _parse_item(_required(msg, "item"), "item", lambda: self._ids("item"), notes, self._call_names)
        wire = [*self._item_added_frames(item, prev, done=True), *self._notes_out(notes, head.event_id)]
        self._remember(item)
        return Out(wire=wire, events=[ev.ItemCreate(item=item, previous_item_id=prev)])

    def _on_item_retrieve(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item_id"}))
        item_id = _str(_required(msg, "item_id"), "item_id")
        item = self._items.get(item_id)
        if item is None:
            raise _Reject("item_not_found", "No conversation item with this 'item_id'.", "item_id")
        return Out(wire=[self._frame("conversation.item.retrieved", item=self._render_item(item))])

    def _on_item_truncate(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item_id", "content_index", "audio_end_ms"}))
        item_id = _str(_required(msg, "item_id"), "item_id")
        content_index = _int(_required(msg, "content_index"), "content_index")
        audio_end_ms = _int(_required(msg, "audio_end_ms"), "audio_end_ms")
        ack = self._frame(
            "conversation.item.truncated", item_id=item_id, content_index=content_index, audio_end_ms=audio_end_ms
        )
        return Out(
            wire=[ack],
            events=[ev.ItemTruncate(item_id=item_id, content_index=content_index, audio_end_ms=audio_end_ms)],
        )

    def _on_item_delete(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item_id"}))
        item_id = _str(_required(msg, "item_id"), "item_id")
        self._items.pop(item_id, None)
        if self._last_item_id == item_id:
            self._last_item_id = next(reversed(self._items), None)
        return Out(
            wire=[self._frame("conversation.item.deleted", item_id=item_id)], events=[ev.ItemDelete(item_id=item_id)]
        )

    def _on_response_create(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "response"}))
        raw = msg.get("response")
        if raw is None:  # the SDK sends no "response" key when called without arguments
            return Out(events=[ev.ResponseCreate()])
        opts: dict[str, JSON] = {}
        notes = _Notes()
        fields = self._d.response_fields
        containers = frozenset() if self._d.beta else frozenset({"audio", "audio.output"})
        for path, value in _flatten(_obj(raw, "response"), containers):
            setter = fields.get(path)
            if setter is None:
                raise _Reject("unknown_parameter", f"Unknown parameter: 'response.{path}'.", f"response.{path}")
            if value is not None:
                setter(opts, value, f"response.{path}", self._state, notes)
        options = ev.ResponseOptions(**opts) if opts else None
        return Out(wire=self._notes_out(notes, head.event_id), events=[ev.ResponseCreate(options=options)])

    def _on_response_cancel(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "response_id"}))
        # Forwarded even when no response is known here: one may be starting upstream right now.
        return Out(events=[ev.ResponseCancel(response_id=_opt_str(msg.get("response_id"), "response_id"))])

    # -- encode: canonical -> client --------------------------------------------------------------

    def encode(self, event: ev.Event) -> Out:
        handler = self._OUTBOUND.get(type(event))
        if handler is None:
            log.warning("no client mapping for event", extra={"sid": self.meta.sid, "event": type(event).__name__})
            return Out()
        try:
            return handler(self, event)
        except Exception as exc:  # never let one bad event stop the stream to the client
            log.exception("encode failed", extra={"sid": self.meta.sid, "exc_type": type(exc).__name__})
            return Out()

    def _nothing(self, event: ev.Event) -> Out:
        return Out()

    def _out_speech_started(self, e: ev.SpeechStarted) -> Out:
        return Out(
            wire=[self._frame("input_audio_buffer.speech_started", audio_start_ms=e.audio_start_ms, item_id=e.item_id)]
        )

    def _out_speech_stopped(self, e: ev.SpeechStopped) -> Out:
        return Out(
            wire=[self._frame("input_audio_buffer.speech_stopped", audio_end_ms=e.audio_end_ms, item_id=e.item_id)]
        )

    def _out_input_committed(self, e: ev.InputCommitted) -> Out:
        self._in_bytes = 0
        prev = e.previous_item_id if e.previous_item_id is not None else self._last_item_id
        item = ev.Message(id=e.item_id, role="user", content=[ev.AudioContent(transcript=None)], status="completed")
        wire = [
            self._frame("input_audio_buffer.committed", previous_item_id=prev, item_id=e.item_id),
            *self._item_added_frames(item, prev, done=True),
        ]
        self._remember(item)
        return Out(wire=wire)

    def _out_input_transcript(self, e: ev.InputTranscript) -> Out:
        if not e.final:
            self._transcripts.setdefault(e.item_id, []).append(e.text)
            return Out(
                wire=[
                    self._frame(
                        "conversation.item.input_audio_transcription.delta",
                        item_id=e.item_id,
                        content_index=0,
                        delta=e.text,
                    )
                ]
            )
        self._transcripts.pop(e.item_id, None)
        item = self._items.get(e.item_id)
        if isinstance(item, ev.Message):  # keep the store's copy whole for conversation.item.retrieve
            content = [
                ev.AudioContent(transcript=e.text) if isinstance(c, ev.AudioContent) else c for c in item.content
            ]
            self._items[e.item_id] = msgspec.structs.replace(item, content=content)
        return Out(
            wire=[
                self._frame(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=e.item_id,
                    content_index=0,
                    transcript=e.text,
                    # required by both SDKs' types; canonical transcripts carry no usage
                    usage={"type": "tokens", "input_tokens": 0, "output_tokens": 0, "total_tokens": 0},
                )
            ]
        )

    def _response_object(self, r: _Response, status: str, **extra: JSON) -> dict[str, JSON]:
        s = self._state
        obj: dict[str, JSON] = {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": list(r.output),
            "conversation_id": self._conversation_id,
            "max_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
            "metadata": None,
            "usage": None,
        }
        if self._d.beta:
            obj |= {
                "modalities": ["text", "audio"] if "audio" in s.output_modalities else ["text"],
                "voice": s.voice,
                "output_audio_format": _BETA_FORMAT[s.output_format.encoding],
                "temperature": s.temperature if s.temperature is not None else 0.8,
            }
        else:
            obj |= {
                "output_modalities": list(s.output_modalities),
                "audio": {
                    "output": {"format": _GA_FORMAT[s.output_format.encoding](s.output_format), "voice": s.voice}
                },
            }
        return obj | extra

    def _response(self, response_id: str, wire: list[str]) -> _Response | None:
        """The open response, created (with ``response.created``) on first sight. None if already done."""
        r = self._responses.get(response_id)
        if r is None:
            if response_id in self._done_responses:
                log.debug("late event for a finished response", extra={"sid": self.meta.sid})
                return None
            r = self._responses[response_id] = _Response(id=response_id)
            wire.append(self._frame("response.created", response=self._response_object(r, "in_progress")))
        return r

    def _out_response_started(self, e: ev.ResponseStarted) -> Out:
        wire: list[str] = []
        self._response(e.response_id, wire)
        return Out(wire=wire)

    def _open_item(
        self, r: _Response, item_id: str, kind: str, wire: list[str], wire_item: dict[str, JSON]
    ) -> _OutItem:
        it = r.items[item_id] = _OutItem(item_id=item_id, output_index=len(r.items), kind=kind)
        wire.append(
            self._frame("response.output_item.added", response_id=r.id, output_index=it.output_index, item=wire_item)
        )
        wire.append(self._frame(self._d.item_added, previous_item_id=self._last_item_id, item=wire_item))
        self._last_item_id = item_id
        return it

    def _message_item(self, r: _Response, item_id: str, wire: list[str]) -> _OutItem:
        it = r.items.get(item_id)
        if it is None:
            empty = {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            it = self._open_item(r, item_id, "message", wire, empty)
        return it

    def _part_fields(self, r: _Response, it: _OutItem, part: _Part) -> dict[str, JSON]:
        return {
            "response_id": r.id,
            "item_id": it.item_id,
            "output_index": it.output_index,
            "content_index": part.index,
        }

    def _wire_part(self, kind: str, text: str) -> dict[str, JSON]:
        wire_type = self._d.part_types[("assistant", kind)]
        return {"type": wire_type, "transcript": text} if kind == "audio" else {"type": wire_type, "text": text}

    def _part(self, r: _Response, it: _OutItem, kind: str, wire: list[str]) -> _Part:
        part = it.parts.get(kind)
        if part is None:
            part = it.parts[kind] = _Part(index=len(it.parts), kind=kind)
            fields = self._part_fields(r, it, part)
            wire.append(self._frame("response.content_part.added", **fields, part=self._wire_part(kind, "")))
        return part

    def _live(self, response_id: str, item_id: str, wire: list[str]) -> tuple[_Response, _OutItem] | None:
        r = self._response(response_id, wire)
        if r is None or r.interrupted:  # barge-in: output after the cut is not played
            return None
        it = self._message_item(r, item_id, wire)
        return None if it.done else (r, it)

    def _out_audio(self, e: ev.OutputAudio) -> Out:
        wire: list[str] = []
        live = self._live(e.response_id, e.item_id, wire)
        if live is None:
            return Out(wire=wire)
        r, it = live
        part = self._part(r, it, "audio", wire)
        pcm = self._out_conv.convert(e.pcm, e.rate)
        if pcm:  # the resampler may hold a few ms back; it comes out with later chunks or the flush
            data = audio.b64encode_std(audio.encode_from_pcm16(pcm, self._state.output_format))
            wire.append(self._frame(self._d.audio_delta, **self._part_fields(r, it, part), delta=data))
        return Out(wire=wire)

    def _out_transcript(self, e: ev.OutputTranscript) -> Out:
        wire: list[str] = []
        live = self._live(e.response_id, e.item_id, wire)
        if live is None:
            return Out(wire=wire)
        r, it = live
        part = self._part(r, it, "audio", wire)
        part.chunks.append(e.delta)
        wire.append(self._frame(self._d.transcript_delta, **self._part_fields(r, it, part), delta=e.delta))
        return Out(wire=wire)

    def _out_text(self, e: ev.OutputText) -> Out:
        wire: list[str] = []
        live = self._live(e.response_id, e.item_id, wire)
        if live is None:
            return Out(wire=wire)
        r, it = live
        part = self._part(r, it, "text", wire)
        part.chunks.append(e.delta)
        wire.append(self._frame(self._d.text_delta, **self._part_fields(r, it, part), delta=e.delta))
        return Out(wire=wire)

    def _close_part(
        self, r: _Response, it: _OutItem, part: _Part, final: str | None, status: str, wire: list[str]
    ) -> str:
        text = final if final is not None else "".join(part.chunks)
        fields = self._part_fields(r, it, part)
        if part.kind == "audio":
            if status == "completed":
                tail = self._out_conv.flush()
                if tail:
                    data = audio.b64encode_std(audio.encode_from_pcm16(tail, self._state.output_format))
                    wire.append(self._frame(self._d.audio_delta, **fields, delta=data))
            else:  # cut short: what the resampler still holds belongs to audio nobody should hear
                self._out_conv.reset()
            wire.append(self._frame(self._d.audio_done, **fields))
            wire.append(self._frame(self._d.transcript_done, **fields, transcript=text))
        else:
            wire.append(self._frame(self._d.text_done, **fields, text=text))
        wire.append(self._frame("response.content_part.done", **fields, part=self._wire_part(part.kind, text)))
        return text

    def _close_message(
        self, r: _Response, it: _OutItem, final: ev.Message | None, status: str, wire: list[str]
    ) -> None:
        finals: dict[str, str] = {}
        for c in final.content if final is not None else ():
            kind = "text" if isinstance(c, ev.TextContent) else "audio"
            text = c.text if isinstance(c, ev.TextContent) else c.transcript
            if text is not None and kind not in finals:
                finals[kind] = text
        # Content the provider only gave in the final item: open it and send it as one delta, so a
        # client that builds text from deltas sees it too.
        for kind, text in finals.items():
            if kind not in it.parts:
                part = self._part(r, it, kind, wire)
                delta_type = self._d.text_delta if kind == "text" else self._d.transcript_delta
                wire.append(self._frame(delta_type, **self._part_fields(r, it, part), delta=text))
        content: list[ev.Content] = []
        for part in sorted(it.parts.values(), key=lambda p: p.index):
            text = self._close_part(r, it, part, finals.get(part.kind), status, wire)
            content.append(ev.TextContent(text=text) if part.kind == "text" else ev.AudioContent(transcript=text))
        item = ev.Message(id=it.item_id, role="assistant", content=content, status=status)
        self._finish_item(r, it, item, status, wire)

    def _finish_item(self, r: _Response, it: _OutItem, item: ev.Item, status: str, wire: list[str]) -> None:
        it.done = True
        wire_item = self._render_item(item, status)
        if self._d.item_done is not None:
            wire.append(self._frame(self._d.item_done, previous_item_id=None, item=wire_item))
        wire.append(
            self._frame("response.output_item.done", response_id=r.id, output_index=it.output_index, item=wire_item)
        )
        r.output.append(wire_item)
        self._remember(item)

    def _call_item(self, r: _Response, call: ev.FunctionCall, wire: list[str]) -> _OutItem:
        it = r.items.get(call.id)
        if it is None:
            added = self._render_item(msgspec.structs.replace(call, arguments=""), "in_progress")
            it = self._open_item(r, call.id, "function_call", wire, added)
        if not it.args_done:  # canonical calls are whole: one delta with all arguments, then done
            it.args_done = True
            it.call = call
            self._call_names[call.call_id] = call.name
            common = {"response_id": r.id, "item_id": call.id, "output_index": it.output_index, "call_id": call.call_id}
            wire.append(self._frame("response.function_call_arguments.delta", **common, delta=call.arguments))
            named = {"name": call.name} if self._d.name_on_args_done else {}
            wire.append(
                self._frame("response.function_call_arguments.done", **common, **named, arguments=call.arguments)
            )
        return it

    def _out_tool_call(self, e: ev.ToolCall) -> Out:
        wire: list[str] = []
        r = self._response(e.response_id, wire)
        if r is not None:
            call = ev.FunctionCall(id=e.item_id, call_id=e.call_id, name=e.name, arguments=e.arguments)
            self._call_item(r, call, wire)
        return Out(wire=wire)

    def _out_output_done(self, e: ev.OutputDone) -> Out:
        wire: list[str] = []
        r = self._response(e.response_id, wire)
        if r is None:
            return Out(wire=wire)
        item = e.item
        if isinstance(item, ev.FunctionCall):
            it = self._call_item(r, item, wire)
            if not it.done:
                self._finish_item(r, it, item, "completed", wire)
        elif isinstance(item, ev.Message):
            it = r.items.get(item.id) or self._message_item(r, item.id, wire)
            if not it.done:
                self._close_message(r, it, item, item.status or "completed", wire)
        else:  # a FunctionCallOutput is never model output; nothing in the dialect carries it here
            log.warning("unexpected output item kind", extra={"sid": self.meta.sid})
        return Out(wire=wire)

    def _out_response_done(self, e: ev.ResponseDone) -> Out:
        wire: list[str] = []
        r = self._response(e.response_id, wire)
        if r is None:
            return Out(wire=wire)
        item_status = "completed" if e.status == "completed" else "incomplete"
        for it in list(r.items.values()):  # never leave an item open: close it with what we have
            if it.done:
                continue
            if it.kind == "message":
                self._close_message(r, it, None, item_status, wire)
            elif it.call is not None:
                self._finish_item(r, it, it.call, item_status, wire)
        r.output.sort(key=lambda item: r.items[item["id"]].output_index)
        details: JSON = None
        if e.status == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": e.reason or "response_failed"}}
        elif e.status != "completed":
            details = {"type": e.status}
            if e.reason in _STATUS_REASONS:
                details["reason"] = e.reason
        usage = usage_to_openai(e.usage) if e.usage is not None else None
        response = self._response_object(r, e.status, status_details=details, usage=usage)
        wire.append(self._frame("response.done", response=response))
        del self._responses[r.id]
        self._done_responses[r.id] = None
        while len(self._done_responses) > 64:
            self._done_responses.popitem(last=False)
        return Out(wire=wire)

    def _out_interrupted(self, e: ev.Interrupted) -> Out:
        targets = [self._responses[e.response_id]] if e.response_id in self._responses else []
        if e.response_id is None:
            targets = list(self._responses.values())
        for r in targets:
            r.interrupted = True
        self._out_conv.reset()
        return Out()

    def _out_rate_limits(self, e: ev.RateLimits) -> Out:
        limits = [
            {"name": x.name, "limit": x.limit, "remaining": x.remaining, "reset_seconds": x.reset_seconds}
            for x in e.limits
        ]
        return Out(wire=[self._frame("rate_limits.updated", rate_limits=limits)])

    def _out_provider_error(self, e: ev.ProviderError) -> Out:
        server = e.fatal or e.retryable or e.code in _SERVER_ERROR_CODES
        frame = self._error(
            e.code,
            e.message,
            param=e.param,
            client_event_id=e.client_event_id,
            type_="server_error" if server else "invalid_request_error",
        )
        return Out(wire=[frame], close=Close(1011, "provider unavailable") if e.fatal else None)

    def _out_notice(self, e: ev.Notice) -> Out:
        if e.code in _SILENT_NOTICES:
            return Out()
        if e.code == "unsupported_field" and e.param is not None:
            if e.param in self._unsupported_told:
                return Out()
            self._unsupported_told.add(e.param)
        return Out(wire=[self._error(e.code or "unsupported_field", e.message, param=e.param)])


_INBOUND_COMMON: Mapping[str, _Handler] = {
    "input_audio_buffer.append": OpenAIClientCodec._on_append,
    "input_audio_buffer.commit": OpenAIClientCodec._on_commit,
    "input_audio_buffer.clear": OpenAIClientCodec._on_clear,
    "output_audio_buffer.clear": OpenAIClientCodec._on_output_clear,
    "session.update": OpenAIClientCodec._on_session_update,
    "conversation.item.create": OpenAIClientCodec._on_item_create,
    "conversation.item.retrieve": OpenAIClientCodec._on_item_retrieve,
    "conversation.item.truncate": OpenAIClientCodec._on_item_truncate,
    "conversation.item.delete": OpenAIClientCodec._on_item_delete,
    "response.create": OpenAIClientCodec._on_response_create,
    "response.cancel": OpenAIClientCodec._on_response_cancel,
}
OpenAIClientCodec._INBOUND = {
    False: _INBOUND_COMMON,  # GA: transcription sessions are session.update with session.type
    True: {**_INBOUND_COMMON, "transcription_session.update": OpenAIClientCodec._on_transcription_session_update},
}

OpenAIClientCodec._OUTBOUND = {
    ev.SessionReady: OpenAIClientCodec._nothing,  # session.created went out in open()
    ev.GoAway: OpenAIClientCodec._nothing,  # the worker reconnects; OpenAI has no such event
    ev.SpeechStarted: OpenAIClientCodec._out_speech_started,
    ev.SpeechStopped: OpenAIClientCodec._out_speech_stopped,
    ev.InputCommitted: OpenAIClientCodec._out_input_committed,
    ev.InputTranscript: OpenAIClientCodec._out_input_transcript,
    ev.ResponseStarted: OpenAIClientCodec._out_response_started,
    ev.OutputAudio: OpenAIClientCodec._out_audio,
    ev.OutputTranscript: OpenAIClientCodec._out_transcript,
    ev.OutputText: OpenAIClientCodec._out_text,
    ev.OutputDone: OpenAIClientCodec._out_output_done,
    ev.ToolCall: OpenAIClientCodec._out_tool_call,
    ev.ToolCallCancelled: OpenAIClientCodec._nothing,  # no OpenAI event (protocols.md §3)
    ev.ResponseDone: OpenAIClientCodec._out_response_done,
    ev.Interrupted: OpenAIClientCodec._out_interrupted,
    ev.RateLimits: OpenAIClientCodec._out_rate_limits,
    ev.ProviderError: OpenAIClientCodec._out_provider_error,
    ev.Notice: OpenAIClientCodec._out_notice,
}
