"""OpenAI Realtime client dialect (GA and beta) <-> canonical events. Sans-I/O.

One :class:`OpenAIClientCodec` per client session, owned by the transformer. It owns the merged session
state (what ``session.updated`` echoes and what ``SessionConfig`` carries), a bounded store of
conversation items (``conversation.item.retrieve`` is answered from it), the client's input and output
audio formats with the output :class:`~shared.audio.RateConverter`, and the ids the client sees. The
response lifecycle (``response.created`` ... ``response.done``) is
:class:`~shared.codecs.openai_response.ResponseAssembler`'s, driven by its transition table. It never does
I/O, never reads the clock or the environment, and never raises out of ``open``/``feed``/``encode``.

GA and beta differ in names and shapes only. Every difference is a row of a :class:`_Dialect` table
(event names, part types, session fields and their parsers, session and response rendering), never an
``if beta`` in the flow.

Choices where the contract is silent (also in the module summary of the tests):

- ``error`` only for what the real OpenAI server would refuse: unknown client event ``type``, unknown or
  mistyped fields, bad values (codes as OpenAI uses them: ``invalid_value``, ``invalid_type``,
  ``unknown_parameter``, ``missing_required_parameter``); nothing goes Up: the update is atomic.
- A valid field the gateway cannot honour is approximated where that is faithful (a per-response option
  equal to the session's is simply the session's and is not sent on), otherwise ignored. Either way it is a
  notice, never an ``error``: counted (``rs_notices_total{code,param}``), logged once per session, and sent
  as ``{"type": "rs.notice", "code", "param", "message"}`` only to a client that opted in
  (``SessionMeta.notices``; once per code and param per session). Provider notices (``ev.Notice``) follow the
  same rule; the transformer counts those as they pass.
- Session fields with no canonical slot are kept (and echoed) and reported in ``SessionConfig.extra`` as
  ``{"session.<wire path>": <JSON text>}``: GA ``tracing``, ``truncation``, ``prompt``, ``include``,
  ``reasoning``, ``parallel_tool_calls``, ``audio.input.noise_reduction``, transcription
  ``prompt``/``keywords``/``languages``/``delay``, MCP tools and MCP ``tool_choice``; beta ``tracing``,
  ``input_audio_noise_reduction``, transcription ``prompt``. The OpenAI provider codec sends them on
  (``tables.OPENAI_SESSION_PASSTHROUGH``); other providers report them. A transcription session adds
  ``{"session.type": "\\"transcription\\""}`` and is canonical ``create_response=False``.
- ``response.create`` OpenAI-only fields (``prompt``, ``reasoning``, ``parallel_tool_calls``, an MCP
  ``tool_choice``) go in ``ResponseOptions.extra`` the same way. A per-response output format that differs
  from the session's is noticed (one output format per session). ``response.input`` (out-of-band input
  items) is refused: ignoring it would answer a different question.
- ``response.metadata`` is echoed in that response's ``response.created`` and ``response.done`` whatever the
  provider: each ``response.create`` queues its metadata and the next response announced takes it.
- ``tool_choice`` ``{"type": "function", "name": N}`` is canonical ``"N"`` (the provider codecs read any
  value other than ``auto``/``none``/``required`` as the one function to call).
- Audio inside ``conversation.item.create`` (``input_audio.audio``) is not forwarded (canonical items
  hold no audio): the item goes Up with its transcript, noticed. ``input_image`` and ``item_reference``
  parts: same treatment, the part is left out.
- ``previous_item_id`` is null at the root (a client's ``"root"`` is acknowledged as null, as the server does).
- ``conversation.item.delete``/``truncate`` of an id the store does not know are an ``error``
  (``item_not_found``) and nothing else, as the real server answers (the store is rebuilt from the
  checkpoint when a session moves to another transformer). ``retrieve`` answers an output item still
  streaming with its current state, else from the store; an unknown id is an ``error``.
- ``Interrupted`` produces no frame (the client learns from ``speech_started`` and the cancelled
  ``response.done``); output deltas of that response arriving later are not sent, and resampler audio
  still pending for it is dropped.
- A fatal ``ProviderError`` is an ``error`` frame, then a close 1011: the provider session is gone.
- Notices about the gateway's own plumbing produce no frame (the transformer logs and counts them):
  ``reconnect_required`` (Gemini takes a new configuration only on a new connection) and
  ``history_item_skipped`` (a restored history item with nothing to replay).
- The session object carries ``rs``: ``{"provider", "model"?, "notices"?}``, who serves the session (the
  SDK types accept undeclared fields). GA's ``model`` names the model serving once ``SessionReady`` said so;
  beta's SDK type lists OpenAI models only, so there it stays the requested one.
- ``{"type": "rs.switch", "provider": "GEMINI", "when": "now"|"turn_end"}`` is a ``SwitchRequest``
  (provider case-insensitive, ``when`` defaults to ``turn_end``); ``Switched`` is announced as
  ``rs.switched`` (and, to seed-URL clients, first as the seed's ``{"type": "switch", "name": "GEMINI"}``).
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
from shared.codecs import provider_trouble
from shared.codecs.base import Close, Out
from shared.codecs.openai_response import ResponseAssembler, ResponseNames
from shared.metrics import NOTICES
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


def _audio_format(v: JSON, param: str) -> audio.AudioFormat:
    try:
        return audio.openai_format(v)
    except ValueError:
        raise _Reject("invalid_value", f"Invalid value for '{param}': unsupported audio format.", param) from None


def _ga_format(v: JSON, param: str) -> audio.AudioFormat:
    """GA: ``{"type": "audio/pcm", "rate": 24000}``."""
    _only(_obj(v, param), frozenset({"type", "rate"}), f"{param}.")
    return _audio_format(v, param)


def _beta_format(v: JSON, param: str) -> audio.AudioFormat:
    """Beta: ``"pcm16"``, ``"g711_ulaw"``, ``"g711_alaw"``."""
    return _audio_format(_str(v, param), param)


_FormatParser = Callable[[JSON, str], audio.AudioFormat]


def _set_input_format(s: _Session, v: JSON, path: str, *, parse: _FormatParser) -> None:
    s.input_format = parse(v, _p(path))


def _set_output_format(s: _Session, v: JSON, path: str, *, parse: _FormatParser) -> None:
    s.output_format = parse(v, _p(path))


_TD_COMMON = frozenset({"type", "create_response", "interrupt_response"})
_TdKeys = Mapping[str, frozenset[str]]  # vad type -> allowed keys, per dialect
_GA_TD_KEYS: _TdKeys = {
    "server_vad": _TD_COMMON | {"threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"},
    "semantic_vad": _TD_COMMON | {"eagerness"},
}
_BETA_TD_KEYS: _TdKeys = {
    "server_vad": _TD_COMMON | {"threshold", "prefix_padding_ms", "silence_duration_ms"},
    "semantic_vad": _TD_COMMON | {"eagerness"},
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


def _turn_detection(v: JSON, param: str, keys: _TdKeys) -> ev.TurnDetection | None:
    if v is None:  # manual turns: the client commits and asks for responses itself
        return None
    td = _obj(v, param)
    kind = _enum(td.get("type", "server_vad"), f"{param}.type", ("server_vad", "semantic_vad"))
    _only(td, keys[kind], f"{param}.")
    fields = {k: _TD_FIELDS[k](val, f"{param}.{k}") for k, val in td.items() if k != "type" and val is not None}
    return ev.TurnDetection(type=kind, **fields)  # type: ignore[arg-type]


def _set_turn_detection(s: _Session, v: JSON, path: str, *, keys: _TdKeys) -> None:
    s.turn_detection = _turn_detection(v, _p(path), keys)


_GA_TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt", "keywords", "languages", "delay"})
_BETA_TRANSCRIPTION_KEYS = frozenset({"model", "language", "prompt"})


def _set_transcription(s: _Session, v: JSON, path: str, *, keys: frozenset[str]) -> None:
    if v is None:
        s.transcription = None
        return
    tr = _obj(v, _p(path))
    _only(tr, keys, f"{_p(path)}.")
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


def _set_tools(s: _Session, v: JSON, path: str, *, mcp: bool) -> None:
    s.tools = _tools(v, _p(path), mcp=mcp)


_TOOL_CHOICE_MODES = ("auto", "none", "required")


def _beta_tool_choice(v: JSON, param: str) -> str | dict[str, JSON]:
    return _enum(v, param, _TOOL_CHOICE_MODES)  # beta's SDK types tool_choice as a plain string


def _ga_tool_choice(v: JSON, param: str) -> str | dict[str, JSON]:
    if isinstance(v, str):
        return _enum(v, param, _TOOL_CHOICE_MODES)
    choice = _obj(v, param)
    kind = _enum(choice.get("type"), f"{param}.type", ("function", "mcp"))
    if kind == "function":
        _only(choice, frozenset({"type", "name"}), f"{param}.")
        _str(_required(choice, "name", f"{param}.name"), f"{param}.name")
    return dict(choice)


_ToolChoiceParser = Callable[[JSON, str], "str | dict[str, JSON]"]


def _set_tool_choice(s: _Session, v: JSON, path: str, *, parse: _ToolChoiceParser) -> None:
    s.tool_choice = parse(v, _p(path))


def _set_passthrough(s: _Session, v: JSON, path: str) -> None:
    if v is None:
        s.passthrough.pop(path, None)
    else:
        s.passthrough[path] = v


def _set_ga_type(s: _Session, v: JSON, path: str) -> None:
    s.kind = _enum(v, _p(path), ("realtime", "transcription"))


def _ga_session_fields() -> tuple[dict[str, _Setter], dict[str, _Setter]]:
    """(realtime session fields, transcription session fields) of GA, by flat wire path."""
    realtime: dict[str, _Setter] = {
        "type": _set_ga_type,
        "model": _set_model,
        "instructions": _set_instructions,
        "output_modalities": _set_modalities,
        "max_output_tokens": _set_max_output_tokens,
        "tools": partial(_set_tools, mcp=True),
        "tool_choice": partial(_set_tool_choice, parse=_ga_tool_choice),
        "audio.input.format": partial(_set_input_format, parse=_ga_format),
        "audio.input.transcription": partial(_set_transcription, keys=_GA_TRANSCRIPTION_KEYS),
        "audio.input.turn_detection": partial(_set_turn_detection, keys=_GA_TD_KEYS),
        "audio.input.noise_reduction": _set_passthrough,
        "audio.output.format": partial(_set_output_format, parse=_ga_format),
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


def _beta_session_fields() -> tuple[dict[str, _Setter], dict[str, _Setter]]:
    """(realtime session fields, transcription session fields) of beta, by wire name."""
    realtime: dict[str, _Setter] = {
        "model": _set_model,
        "instructions": _set_instructions,
        "modalities": _set_modalities,
        "voice": _set_voice,
        "speed": _set_speed,
        "temperature": _set_temperature,
        "max_response_output_tokens": _set_max_output_tokens,
        "tools": partial(_set_tools, mcp=False),
        "tool_choice": partial(_set_tool_choice, parse=_beta_tool_choice),
        "input_audio_format": partial(_set_input_format, parse=_beta_format),
        "output_audio_format": partial(_set_output_format, parse=_beta_format),
        "input_audio_transcription": partial(_set_transcription, keys=_BETA_TRANSCRIPTION_KEYS),
        "turn_detection": partial(_set_turn_detection, keys=_BETA_TD_KEYS),
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


def _session_from_config(cfg: ev.SessionConfig, base: _Session, transcription_path: str) -> _Session:
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
    s.temperature = cfg.temperature  # only a beta session ever sets it
    s.max_output_tokens = cfg.max_output_tokens
    s.turn_detection = cfg.turn_detection
    s.transcription_path = transcription_path
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
# Real GA traffic (gpt-realtime) shows silence_duration_ms 200; beta documents 500.
_GA_VAD_DEFAULTS: Mapping[str, JSON] = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 200}
_BETA_VAD_DEFAULTS: Mapping[str, JSON] = {"threshold": 0.5, "prefix_padding_ms": 300, "silence_duration_ms": 500}


def _render_turn_detection(
    td: ev.TurnDetection | None, keys: _TdKeys, defaults: Mapping[str, JSON]
) -> dict[str, JSON] | None:
    if td is None:
        return None
    out: dict[str, JSON] = {"type": td.type}
    if td.type == "semantic_vad":
        out["eagerness"] = td.eagerness or "auto"
    else:
        for key in ("threshold", "prefix_padding_ms", "silence_duration_ms"):
            value = getattr(td, key)
            out[key] = value if value is not None else defaults[key]
        out["idle_timeout_ms"] = td.idle_timeout_ms
    out["create_response"] = td.create_response
    out["interrupt_response"] = td.interrupt_response
    allowed = keys[td.type]  # the dialect's own fields only (beta has no idle_timeout_ms)
    return {k: v for k, v in out.items() if k == "type" or k in allowed}


def _render_ga_session(s: _Session, session_id: str) -> dict[str, JSON]:
    audio_in: dict[str, JSON] = {
        "format": _GA_FORMAT[s.input_format.encoding](s.input_format),
        "transcription": s.transcription,
        "noise_reduction": None,
        "turn_detection": _render_turn_detection(s.turn_detection, _GA_TD_KEYS, _GA_VAD_DEFAULTS),
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
            # what a real GA server shows when the client set none of them (passthrough values win)
            "tracing": None,
            "truncation": "auto",
            "prompt": None,
            "include": None,
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
        "turn_detection": _render_turn_detection(s.turn_detection, _BETA_TD_KEYS, _BETA_VAD_DEFAULTS),
        "tools": list(s.tools),
        "tool_choice": s.tool_choice,
        "temperature": s.temperature if s.temperature is not None else 0.8,
        "max_response_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
        "speed": s.speed if s.speed is not None else 1.0,
    }
    out.update(s.passthrough)
    return out


def _render_beta_transcription_session(s: _Session, session_id: str) -> dict[str, JSON]:
    td = _render_turn_detection(s.turn_detection, _BETA_TD_KEYS, _BETA_VAD_DEFAULTS)
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


def _option(key: str, conv: Callable[[JSON, str], JSON]) -> _RespSetter:
    def setter(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        opts[key] = conv(v, param)

    return setter


def _put_unless_session(
    key: str, conv: Callable[[JSON, str], JSON], current: Callable[[_Session], JSON]
) -> _RespSetter:
    """A per-response option equal to the session's is simply the session's: nothing to ask of the provider
    (Pipecat repeats ``output_modalities`` on every reply; a provider without per-response modalities
    must not be bothered with it)."""

    def setter(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        value = conv(v, param)
        if value != current(s):
            opts[key] = value

    return setter


def _passthrough_option(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
    """OpenAI-only fields: carried in ``ResponseOptions.extra``; OpenAI takes them, other providers notice."""
    extra = opts.setdefault("extra", {})
    extra[param] = _json_text(v)


def _output_format(parse: _FormatParser) -> _RespSetter:
    def setter(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        if parse(v, param) != s.output_format:  # one output format per session
            notes.add(param, f"'{param}' per response is not supported; the session's format is used.")

    return setter


def _conversation(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
    if _enum(v, param, ("auto", "none")) == "none":
        opts["out_of_band"] = True


def _refuse(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
    raise _Reject("unsupported_field", f"'{param}' is not supported by this gateway.", param)


def _metadata(v: JSON, param: str) -> dict[str, str]:
    return {k: _str(val, f"{param}.{k}") for k, val in _obj(v, param).items()}


def _max_tokens(v: JSON, param: str) -> int | None:
    return None if v == "inf" else _int(v, param, 1)


def _response_tools(v: JSON, param: str) -> list[ev.Tool]:
    return [
        ev.Tool(
            name=t["name"],
            description=t.get("description"),
            parameters=None if t.get("parameters") is None else _json_text(t["parameters"]),
        )
        for t in _tools(v, param, mcp=False)
    ]


def _response_tool_choice(parse: _ToolChoiceParser) -> _RespSetter:
    def setter(opts: dict[str, JSON], v: JSON, param: str, s: _Session, notes: _Notes) -> None:
        choice = parse(v, param)
        if isinstance(choice, str):
            opts["tool_choice"] = choice
        elif choice.get("type") == "function":
            opts["tool_choice"] = str(choice["name"])
        else:  # an MCP tool choice: OpenAI-only
            _passthrough_option(opts, v, param, s, notes)

    return setter


_COMMON_RESPONSE_FIELDS: Mapping[str, _RespSetter] = {
    "instructions": _option("instructions", _str),
    "tools": _option("tools", _response_tools),
    "metadata": _option("metadata", _metadata),
    "conversation": _conversation,
    # Out-of-band input items: ignoring them would answer a different question, and canonical responses
    # carry no items of their own.
    "input": _refuse,
}

_GA_RESPONSE_FIELDS: Mapping[str, _RespSetter] = {
    **_COMMON_RESPONSE_FIELDS,
    "tool_choice": _response_tool_choice(_ga_tool_choice),
    "output_modalities": _put_unless_session("output_modalities", _modalities, lambda s: s.output_modalities),
    "audio.output.voice": _put_unless_session("voice", _str, lambda s: s.voice),
    "audio.output.format": _output_format(_ga_format),
    "max_output_tokens": _put_unless_session("max_output_tokens", _max_tokens, lambda s: s.max_output_tokens),
    "prompt": _passthrough_option,
    "reasoning": _passthrough_option,
    "parallel_tool_calls": _passthrough_option,
}

_BETA_RESPONSE_FIELDS: Mapping[str, _RespSetter] = {
    **_COMMON_RESPONSE_FIELDS,
    "tool_choice": _response_tool_choice(_beta_tool_choice),
    "modalities": _put_unless_session("output_modalities", _modalities, lambda s: s.output_modalities),
    "voice": _put_unless_session("voice", _str, lambda s: s.voice),
    "output_audio_format": _output_format(_beta_format),
    "temperature": _put_unless_session("temperature", lambda v, p: _num(v, p, 0.0, 2.0), lambda s: s.temperature),
    "max_response_output_tokens": _put_unless_session("max_output_tokens", _max_tokens, lambda s: s.max_output_tokens),
}


# --------------------------------------------------------------------------------------------------
# The response object (response.created / response.done): the session-dependent fields per dialect


def _ga_response_fields(s: _Session) -> dict[str, JSON]:
    return {
        "output_modalities": list(s.output_modalities),
        "max_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
        "audio": {"output": {"format": _GA_FORMAT[s.output_format.encoding](s.output_format), "voice": s.voice}},
    }


def _beta_response_fields(s: _Session) -> dict[str, JSON]:
    return {
        "modalities": ["text", "audio"] if "audio" in s.output_modalities else ["text"],
        "voice": s.voice,
        "output_audio_format": _BETA_FORMAT[s.output_format.encoding],
        "temperature": s.temperature if s.temperature is not None else 0.8,
        "max_output_tokens": "inf" if s.max_output_tokens is None else s.max_output_tokens,
    }


# --------------------------------------------------------------------------------------------------
# Which session table a session.update uses


def _ga_session_kind(session: Mapping[str, JSON]) -> str:
    kind = _required(session, "type", "session.type")  # GA requires it (the OpenAI Realtime API reference)
    return _enum(kind, "session.type", ("realtime", "transcription"))


def _beta_session_kind(session: Mapping[str, JSON]) -> str:
    return "realtime"  # beta transcription sessions have their own event (transcription_session.update)


# --------------------------------------------------------------------------------------------------
# Dialect tables: every GA/beta difference is a row here


@dataclass(frozen=True, slots=True)
class _Dialect:
    name: str
    default_voice: str
    fields_by_kind: Mapping[str, Mapping[str, _Setter]]  # session kind -> session fields by flat path
    session_kind: Callable[[Mapping[str, JSON]], str]
    session_containers: frozenset[str]
    response_fields: Mapping[str, _RespSetter]
    response_containers: frozenset[str]
    render_session: Callable[[_Session, str], dict[str, JSON]]
    render_response: Callable[[_Session], dict[str, JSON]]
    transcription_path: str  # where the dialect keeps the transcription settings (extra keys)
    served_model_in_session: bool  # session.model may name any model (GA), not only OpenAI's (beta)
    names: ResponseNames  # server event names of a response
    part_types: Mapping[tuple[str, str], str]  # (role, canonical content kind) -> part type inside items
    item_fields: Mapping[str, JSON]  # fixed fields of every item (real beta servers send object, GA ones do not)


_USER_PARTS: Mapping[tuple[str, str], str] = {
    ("user", "text"): "input_text",
    ("user", "audio"): "input_audio",
    ("system", "text"): "input_text",
    ("system", "audio"): "input_text",
}
# Inside response.content_part.added/.done both real servers say "audio"/"text" (the OpenAI Realtime API reference).
_CONTENT_PART_TYPES: Mapping[str, str] = {"audio": "audio", "text": "text"}

_GA_REALTIME, _GA_TRANSCRIPTION = _ga_session_fields()
_BETA_REALTIME, _BETA_TRANSCRIPTION = _beta_session_fields()

_GA = _Dialect(
    name="openai_ga",
    default_voice="marin",
    fields_by_kind={"realtime": _GA_REALTIME, "transcription": _GA_TRANSCRIPTION},
    session_kind=_ga_session_kind,
    session_containers=frozenset({"audio", "audio.input", "audio.output"}),
    response_fields=_GA_RESPONSE_FIELDS,
    response_containers=frozenset({"audio", "audio.output"}),
    render_session=_render_ga_session,
    render_response=_ga_response_fields,
    transcription_path="audio.input.transcription",
    served_model_in_session=True,
    names=ResponseNames(
        item_added="conversation.item.added",
        item_done="conversation.item.done",
        audio_delta="response.output_audio.delta",
        audio_done="response.output_audio.done",
        transcript_delta="response.output_audio_transcript.delta",
        transcript_done="response.output_audio_transcript.done",
        text_delta="response.output_text.delta",
        text_done="response.output_text.done",
        name_on_args_done=True,
        content_part_types=_CONTENT_PART_TYPES,
    ),
    part_types={**_USER_PARTS, ("assistant", "text"): "output_text", ("assistant", "audio"): "output_audio"},
    item_fields={},
)
_BETA = _Dialect(
    name="openai_beta",
    default_voice="alloy",
    fields_by_kind={"realtime": _BETA_REALTIME, "transcription": _BETA_TRANSCRIPTION},
    session_kind=_beta_session_kind,
    session_containers=frozenset(),
    response_fields=_BETA_RESPONSE_FIELDS,
    response_containers=frozenset(),
    render_session=_render_beta_session,
    render_response=_beta_response_fields,
    transcription_path="input_audio_transcription",
    served_model_in_session=False,
    names=ResponseNames(
        item_added="conversation.item.created",
        item_done=None,
        audio_delta="response.audio.delta",
        audio_done="response.audio.done",
        transcript_delta="response.audio_transcript.delta",
        transcript_done="response.audio_transcript.done",
        text_delta="response.text.delta",
        text_done="response.text.done",
        name_on_args_done=False,
        content_part_types=_CONTENT_PART_TYPES,
    ),
    part_types={**_USER_PARTS, ("assistant", "text"): "text", ("assistant", "audio"): "audio"},
    item_fields={"object": "realtime.item"},
)
_DIALECTS: Mapping[bool, _Dialect] = {False: _GA, True: _BETA}  # by "is beta"

# Notices about the gateway's own plumbing, logged and counted by the transformer but not sent: a Gemini
# reconfiguration reconnects inside the gateway (the client already has its session.updated), and the history
# it restores may hold an item with nothing to replay. Neither concerns the client.
_SILENT_NOTICES = frozenset({"reconnect_required", "history_item_skipped"})
# ProviderError codes that are the server's fault (type server_error), besides fatal/retryable ones.
_SERVER_ERROR_CODES = frozenset({"server_error", "internal_error", "provider_unavailable", "provider_disconnected"})
# rs.switch "provider" values (upper or lower case on the wire; canonical lower case)
_SWITCH_PROVIDERS = frozenset({"openai", "gemini", "azure"})
_SWITCH_WHEN = ("now", "turn_end")


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
_NOT_DOWN: Any = object()  # OpenAIClientCodec.encode's "no row at all" (None is "deliberately nothing")


class OpenAIClientCodec:
    """OpenAI Realtime (GA or beta) client side <-> canonical events, for one session.

    ``open()`` -> ``session.created``; ``feed(frame)`` -> local acks/errors + Up events; ``encode(Down)``
    -> server events with the full §1.6 ordering (the response lifecycle is :class:`ResponseAssembler`'s).
    See the module docstring for the choices it makes.
    """

    dialect: str  # "openai_ga" | "openai_beta" (instance attribute: one class serves both)
    _INBOUND: ClassVar[Mapping[bool, Mapping[str, _Handler]]]  # by "is beta"
    _OUTBOUND: ClassVar[Mapping[type[ev.Event], Callable[[OpenAIClientCodec, Any], Out] | None]]

    def __init__(self, meta: SessionMeta, *, beta: bool, id_factory: IdFactory | None = None) -> None:
        self.meta = meta
        self._d = _DIALECTS[beta]
        self._inbound = self._INBOUND[beta]
        self.dialect = self._d.name
        self._ids = id_factory or random_ids()
        self._session_id = self._ids("sess")
        self._conversation_id = self._ids("conv")
        self._state = _Session(model=meta.model, voice=self._d.default_voice)
        self._provider = meta.provider  # who serves the session now (SessionReady, Switched)
        self._served_model: str | None = None  # the provider's model, once SessionReady names it
        self._out_conv = audio.RateConverter(self._state.output_format.rate)
        # Bytes appended since the last commit/clear (empty commit -> error). None: not known, after a
        # resume (what the dead transformer took in may still be uncommitted upstream): the provider judges.
        self._in_bytes: int | None = 0
        self._items: OrderedDict[str, ev.Item] = OrderedDict()
        self._last_item_id: str | None = None
        self._call_names: dict[str, str] = {}  # call_id -> function name (Gemini needs it on results)
        self._responses = ResponseAssembler(self, self._d.names, self._conversation_id)
        self._transcripts: dict[str, list[str]] = {}  # user item id -> input transcript deltas
        # (code, param) already logged (and shown, with rs_notices) this session: a new upstream connection
        # (reconnect, Gemini reconfiguration) reports its whole configuration again.
        self._noticed: set[tuple[str, str | None]] = set()

    def __repr__(self) -> str:
        return f"OpenAIClientCodec({self.dialect}, sid={self.meta.sid}, responses={len(self._responses)})"

    # -- what the response assembler needs (responses.Host) -----------------------------------------

    def frame(self, type_: str, **fields: JSON) -> str:
        return _ENCODE.encode({"type": type_, "event_id": self._ids("event"), **fields}).decode()

    _frame = frame

    def remember(self, item: ev.Item) -> None:
        """Keep an item for ``conversation.item.retrieve`` (bounded; the oldest are forgotten first)."""
        self._items[item.id] = item
        self._items.move_to_end(item.id)
        while len(self._items) > MAX_STORED_ITEMS:
            self._items.popitem(last=False)
        if isinstance(item, ev.FunctionCall):
            self._call_names[item.call_id] = item.name

    def link(self, item_id: str) -> str | None:
        prev, self._last_item_id = self._last_item_id, item_id
        return prev

    def response_fields(self) -> dict[str, JSON]:
        return self._d.render_response(self._state)

    def encode_audio(self, pcm: bytes, rate: int) -> str | None:
        out = self._out_conv.convert(pcm, rate)
        return audio.b64encode_std(audio.encode_from_pcm16(out, self._state.output_format)) if out else None

    def flush_audio(self) -> str | None:
        tail = self._out_conv.flush()
        return audio.b64encode_std(audio.encode_from_pcm16(tail, self._state.output_format)) if tail else None

    def reset_audio(self) -> None:
        self._out_conv.reset()

    def render_item(self, item: ev.Item, status: str | None = None) -> dict[str, JSON]:
        base: dict[str, JSON] = {"id": item.id, **self._d.item_fields}
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

    # -- helpers ------------------------------------------------------------------------------------

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

    def _notice(self, code: str, message: str, param: str | None, *, count: bool = True) -> list[str]:
        """Something the gateway approximated or ignored, never an ``error`` (the real server would have
        taken it): counted every time, logged once per session, sent as ``rs.notice`` only to a client
        that asked for notices (``rs_notices=1`` / ``X-RS-Notices: 1``)."""
        if count:  # provider notices are counted by the transformer as they pass
            NOTICES.labels(code, param or "").inc()
        key = (code, param)
        if key in self._noticed:
            return []
        self._noticed.add(key)
        log.info("notice", extra={"sid": self.meta.sid, "code": code, "param": param})
        if not self.meta.notices:
            return []
        return [self._frame("rs.notice", code=code, param=param, message=message)]

    def _notes_out(self, notes: _Notes) -> list[str]:
        return [frame for param, message in notes.items for frame in self._notice("unsupported_field", message, param)]

    @staticmethod
    def _body(frame: str | bytes) -> dict[str, JSON]:
        msg = msgspec.json.decode(frame)
        if not isinstance(msg, dict):  # _HEAD already accepted it as an object; keep mypy honest
            raise _invalid_type("event", "an object")
        return msg

    def _remember(self, item: ev.Item) -> None:
        """Store ``item`` and make it the conversation's last one."""
        self.remember(item)
        self._last_item_id = item.id

    def _item_added_frames(self, item: ev.Item, previous_item_id: str | None, *, done: bool) -> list[str]:
        """Ack of a conversation item: GA ``item.added`` (+ ``item.done``), beta ``item.created``."""
        prev = previous_item_id if previous_item_id is not None else self._last_item_id
        if prev == "root":  # the client asked for the start of the conversation: the server says null
            prev = None
        wire = self.render_item(item)
        names = self._d.names
        frames = [self._frame(names.item_added, previous_item_id=prev, item=wire)]
        if done and names.item_done is not None:
            frames.append(self._frame(names.item_done, previous_item_id=prev, item=wire))
        return frames

    def _render_session(self, session: _Session) -> dict[str, JSON]:
        """The session object, plus ``rs``: which provider (and model) serves it. The SDK's session types
        accept fields they do not declare (pydantic ``extra="allow"``), so typed clients are unaffected.
        GA's ``model`` is free text and names the model serving; beta's SDK type lists OpenAI models only,
        so there the served model is in ``rs.model`` alone."""
        obj = self._d.render_session(session, self._session_id)
        rs: dict[str, JSON] = {"provider": self._provider}
        if self.meta.notices:  # the client can see its opt-in took effect
            rs["notices"] = True
        if self._served_model is not None:
            rs["model"] = self._served_model
            if self._d.served_model_in_session:
                obj["model"] = self._served_model
        obj["rs"] = rs
        return obj

    # -- open / resume ------------------------------------------------------------------------------

    def open(self) -> Out:
        return Out(wire=[self._frame("session.created", session=self._render_session(self._state))])

    def resume(self, config: ev.SessionConfig | None, items: list[ev.Item]) -> None:
        """Rebuild state on a replacement transformer from the checkpoint; sends nothing.

        The client's audio formats come back with the config (``client_input_format``/
        ``client_output_format``), so a G.711 client keeps G.711 across a transformer failover. Not
        recoverable from canonical state: responses in flight (their next event re-announces them).
        """
        self._in_bytes = None
        if config is not None:
            base = _Session(model=self.meta.model, voice=self._d.default_voice)
            self._state = _session_from_config(config, base, self._d.transcription_path)
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
        except RecursionError:  # nesting deeper than any event has: refused like any unreadable JSON
            return Out(wire=[self._error("invalid_json", "The event is not valid JSON: nested too deeply.")])
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
        # beta transcription_session.update is its own event; otherwise the dialect reads the kind
        new.kind = "transcription" if transcription_event else self._d.session_kind(session)
        table = self._d.fields_by_kind[new.kind]
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
            reply = self._frame("session.updated", session=self._render_session(new))
        return Out(wire=[reply], events=[new.to_config()])

    def _on_transcription_session_update(self, head: _Head, frame: str | bytes) -> Out:
        return self._on_session_update(head, frame, transcription_event=True)

    def _on_item_create(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item", "previous_item_id"}))
        prev = _opt_str(msg.get("previous_item_id"), "previous_item_id")
        notes = _Notes()
        item = _parse_item(_required(msg, "item"), "item", lambda: self._ids("item"), notes, self._call_names)
        wire = [*self._item_added_frames(item, prev, done=True), *self._notes_out(notes)]
        self._remember(item)
        return Out(wire=wire, events=[ev.ItemCreate(item=item, previous_item_id=prev)])

    def _on_item_retrieve(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item_id"}))
        item_id = _str(_required(msg, "item_id"), "item_id")
        # an output item still streaming answers with what it holds so far, as the real server does
        item = self._responses.current_item(item_id) or self._items.get(item_id)
        if item is None:
            raise _Reject("item_not_found", "No conversation item with this 'item_id'.", "item_id")
        return Out(wire=[self._frame("conversation.item.retrieved", item=self.render_item(item))])

    def _known_item(self, item_id: str) -> None:
        """The real server refuses a truncate/delete of an id it does not hold with just an error (no ack
        first). Our store is rebuilt from the checkpoint on a resume, so it knows what the provider knows."""
        if self._responses.current_item(item_id) is None and item_id not in self._items:
            raise _Reject("item_not_found", f"Item with item_id '{item_id}' not found.", "item_id")

    def _on_item_truncate(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "item_id", "content_index", "audio_end_ms"}))
        item_id = _str(_required(msg, "item_id"), "item_id")
        content_index = _int(_required(msg, "content_index"), "content_index")
        audio_end_ms = _int(_required(msg, "audio_end_ms"), "audio_end_ms")
        self._known_item(item_id)
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
        self._known_item(item_id)
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
            self._responses.expect(None)
            return Out(events=[ev.ResponseCreate()])
        opts: dict[str, JSON] = {}
        notes = _Notes()
        fields = self._d.response_fields
        for path, value in _flatten(_obj(raw, "response"), self._d.response_containers):
            setter = fields.get(path)
            if setter is None:
                raise _Reject("unknown_parameter", f"Unknown parameter: 'response.{path}'.", f"response.{path}")
            if value is not None:
                setter(opts, value, f"response.{path}", self._state, notes)
        # metadata is the gateway's to honour (echoed in response.created/.done whatever the provider):
        # no provider needs it, and one without it would only report it
        self._responses.expect(opts.pop("metadata", None))
        options = ev.ResponseOptions(**opts) if opts else None
        return Out(wire=self._notes_out(notes), events=[ev.ResponseCreate(options=options)])

    def _on_response_cancel(self, head: _Head, frame: str | bytes) -> Out:
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "response_id"}))
        # Forwarded even when no response is known here: one may be starting upstream right now.
        return Out(events=[ev.ResponseCancel(response_id=_opt_str(msg.get("response_id"), "response_id"))])

    def _on_switch(self, head: _Head, frame: str | bytes) -> Out:
        """``{"type": "rs.switch", "provider": "GEMINI", "when": "now"|"turn_end"}`` -> SwitchRequest."""
        msg = self._body(frame)
        _only(msg, frozenset({"type", "event_id", "provider", "when"}))
        provider = _str(_required(msg, "provider"), "provider").lower()
        if provider not in _SWITCH_PROVIDERS:
            supported = ", ".join(sorted(_SWITCH_PROVIDERS))
            raise _Reject("invalid_value", f"Invalid value for 'provider'. Supported: {supported}.", "provider")
        when = _enum(msg.get("when", "turn_end"), "when", _SWITCH_WHEN)
        return Out(events=[ev.SwitchRequest(provider=provider, when=when)])  # type: ignore[arg-type]

    # -- encode: canonical -> client --------------------------------------------------------------

    def encode(self, event: ev.Event) -> Out:
        handler = self._OUTBOUND.get(type(event), _NOT_DOWN)
        if handler is None:  # deliberately nothing for the client (see the table)
            return Out()
        if handler is _NOT_DOWN:  # not a Down event: a caller bug, never a silent drop
            log.warning("no client mapping for event", extra={"sid": self.meta.sid, "event": type(event).__name__})
            return Out()
        try:
            return handler(self, event)
        except Exception as exc:  # never let one bad event stop the stream to the client
            log.exception("encode failed", extra={"sid": self.meta.sid, "exc_type": type(exc).__name__})
            return Out()

    def _out_ready(self, e: ev.SessionReady) -> Out:
        # session.created went out in open(); the next session.updated names who serves it now. The
        # canonical config keeps the model the client asked for: the worker maps it per provider.
        self._provider = e.provider
        self._served_model = e.model
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
        if prev == "root":
            prev = None
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

    def _out_response(self, e: ev.Event) -> Out:
        return Out(wire=self._responses.handle(e))

    def _out_rate_limits(self, e: ev.RateLimits) -> Out:
        limits = [
            {"name": x.name, "limit": x.limit, "remaining": x.remaining, "reset_seconds": x.reset_seconds}
            for x in e.limits
        ]
        return Out(wire=[self._frame("rate_limits.updated", rate_limits=limits)])

    def _out_provider_error(self, e: ev.ProviderError) -> Out:
        server = (e.fatal or e.retryable or e.code in _SERVER_ERROR_CODES
                  or provider_trouble.is_provider_trouble(e.code))
        frame = self._error(
            e.code,
            provider_trouble.readable(e.message) if server else e.message,
            param=e.param,
            client_event_id=e.client_event_id,
            type_="server_error" if server else "invalid_request_error",
        )
        return Out(wire=[frame], close=Close(1011, "provider unavailable") if e.fatal else None)

    def _out_notice(self, e: ev.Notice) -> Out:
        if e.code in _SILENT_NOTICES:
            return Out()
        return Out(wire=self._notice(e.code, e.message, e.param, count=False))

    def _out_switched(self, e: ev.Switched) -> Out:
        """Seed-URL clients get the seed's own ``{"type": "switch", "name": "GEMINI"}``; every OpenAI-dialect
        client gets ``rs.switched`` (unknown types do not break the SDKs: the OpenAI Realtime API reference)."""
        self._provider = e.to_provider
        wire: list[str] = []
        if self.meta.seed:
            wire.append(self._frame("switch", name=e.to_provider.upper()))
        wire.append(
            self._frame("rs.switched", **{"from": e.from_provider}, to=e.to_provider, reason=e.reason, gap_ms=e.gap_ms)
        )
        return Out(wire=wire)


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
    "rs.switch": OpenAIClientCodec._on_switch,
}
OpenAIClientCodec._INBOUND = {
    False: _INBOUND_COMMON,  # GA: transcription sessions are session.update with session.type
    True: {**_INBOUND_COMMON, "transcription_session.update": OpenAIClientCodec._on_transcription_session_update},
}

# Every canonical Down event has a row; None = deliberately nothing for the client (the test holds the
# table to events.DOWN_TYPES, so a new Down event cannot be dropped without a decision here).
OpenAIClientCodec._OUTBOUND = {
    ev.SessionReady: OpenAIClientCodec._out_ready,
    ev.GoAway: None,  # the worker reconnects; OpenAI has no such event
    ev.SpeechStarted: OpenAIClientCodec._out_speech_started,
    ev.SpeechStopped: OpenAIClientCodec._out_speech_stopped,
    ev.InputCommitted: OpenAIClientCodec._out_input_committed,
    ev.InputTranscript: OpenAIClientCodec._out_input_transcript,
    ev.ResponseStarted: OpenAIClientCodec._out_response,
    ev.OutputAudio: OpenAIClientCodec._out_response,
    ev.OutputTranscript: OpenAIClientCodec._out_response,
    ev.OutputText: OpenAIClientCodec._out_response,
    ev.OutputDone: OpenAIClientCodec._out_response,
    ev.ToolCall: OpenAIClientCodec._out_response,
    ev.ToolCallCancelled: None,  # no OpenAI event (docs/codec-contract.md)
    ev.ResponseDone: OpenAIClientCodec._out_response,
    # the client learns from speech_started and the cancelled response.done; the assembler stops the audio
    ev.Interrupted: OpenAIClientCodec._out_response,
    ev.RateLimits: OpenAIClientCodec._out_rate_limits,
    ev.ProviderError: OpenAIClientCodec._out_provider_error,
    ev.Notice: OpenAIClientCodec._out_notice,
    ev.Switched: OpenAIClientCodec._out_switched,
}
