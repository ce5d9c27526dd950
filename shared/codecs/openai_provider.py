"""OpenAI Realtime (GA) upstream <-> canonical events. Sans-I/O, one instance per upstream connection.

The upstream is always spoken in GA (no ``OpenAI-Beta`` header, the OpenAI Realtime API reference); :meth:`feed` also
accepts the beta event names and both content-part spellings (``audio``/``output_audio``, §1.4) so a
beta-speaking upstream or a proxy in between does not break it.

Dispatch is data: ``_ENCODERS`` maps canonical Up types to builders, ``_HANDLERS`` maps GA server event
types to handlers, ``_IGNORED`` lists the server events that carry nothing a Down event needs (each
with the reason). Anything else becomes one ``Notice(unknown_provider_event)`` per type.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import msgspec

from shared import events as ev
from shared.audio import RateConverter, b64decode_any, b64encode_std
from shared.codecs import tables
from shared.codecs.base import Out
from shared.session import SessionMeta

__all__ = ["DEFAULT_TRANSCRIPTION_MODEL", "IdFactory", "OpenAIProviderCodec"]

IdFactory = Callable[[str], str]  # prefix ("resp", "item", ...) -> a new unique id
JsonObj = dict[str, object]

INPUT_RATE = 24_000  # GA audio/pcm is 24 kHz only (the OpenAI Realtime API reference)
OUTPUT_RATE = 24_000
DEFAULT_TRANSCRIPTION_MODEL = "gpt-4o-mini-transcribe"
MAX_ITEM_ID = 32  # OpenAI rejects longer item ids

_PCM_FORMAT: JsonObj = {"type": "audio/pcm", "rate": INPUT_RATE}
_VAD_FIELDS: Mapping[str, tuple[str, ...]] = {
    # GA accepts only these per VAD type; anything else set on the canonical TurnDetection is reported
    "server_vad": ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms"),
    "semantic_vad": ("eagerness",),
}
_ALL_VAD_FIELDS = ("threshold", "prefix_padding_ms", "silence_duration_ms", "idle_timeout_ms", "eagerness")

_encoder = msgspec.json.Encoder()


def _default_ids(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _wire(obj: JsonObj) -> str:
    return _encoder.encode(obj).decode()


class _Malformed(Exception):
    """A provider frame lacks a field a handler needs. Carries no payload."""


# Typed accessors over decoded JSON: a wrong or missing field is _Malformed, never a KeyError deep down.


def _str(d: JsonObj, key: str) -> str:
    v = d.get(key)
    if not isinstance(v, str):
        raise _Malformed(key)
    return v


def _opt_str(d: JsonObj, key: str) -> str | None:
    v = d.get(key)
    return v if isinstance(v, str) else None


def _obj(d: JsonObj, key: str) -> JsonObj:
    v = d.get(key)
    if not isinstance(v, dict):
        raise _Malformed(key)
    return v


def _opt_obj(d: JsonObj, key: str) -> JsonObj:
    v = d.get(key)
    return v if isinstance(v, dict) else {}


def _num(d: JsonObj, key: str, default: float = 0) -> float:
    v = d.get(key)
    return v if isinstance(v, int | float) and not isinstance(v, bool) else default


def _objs(d: JsonObj, key: str) -> list[JsonObj]:
    v = d.get(key)
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


# Content parts: GA and beta spellings both accepted on the way in (the OpenAI Realtime API reference).
_PART_IN: Mapping[str, Callable[[JsonObj], ev.Content]] = {
    "output_audio": lambda p: ev.AudioContent(transcript=_opt_str(p, "transcript")),
    "audio": lambda p: ev.AudioContent(transcript=_opt_str(p, "transcript")),
    "input_audio": lambda p: ev.AudioContent(transcript=_opt_str(p, "transcript")),
    "output_text": lambda p: ev.TextContent(text=_opt_str(p, "text") or ""),
    "text": lambda p: ev.TextContent(text=_opt_str(p, "text") or ""),
    "input_text": lambda p: ev.TextContent(text=_opt_str(p, "text") or ""),
}

Role = Literal["user", "assistant", "system"]
_ROLES: Mapping[str, Role] = {"user": "user", "assistant": "assistant", "system": "system"}

# Canonical role -> GA part type for replayed text. Audio bytes are not kept in items, so spoken
# content is replayed as its transcript, as text of the role's own kind.
_TEXT_PART_OUT: Mapping[str, str] = {"user": "input_text", "system": "input_text", "assistant": "output_text"}


def _tool_wire(tool: ev.Tool) -> tuple[JsonObj, bool]:
    """GA function tool; the bool says whether ``parameters`` was valid JSON Schema text."""
    params: object = {"type": "object", "properties": {}}
    ok = True
    if tool.parameters is not None:
        try:
            parsed = msgspec.json.decode(tool.parameters)
        except msgspec.DecodeError:
            parsed = None
        ok = isinstance(parsed, dict)
        if ok:
            params = parsed
    wire: JsonObj = {"type": "function", "name": tool.name, "parameters": params}
    if tool.description is not None:
        wire["description"] = tool.description
    return wire, ok


def _json_value(text: str) -> object:
    try:
        return msgspec.json.decode(text)
    except msgspec.DecodeError:  # extra values are JSON text by contract; a bare string is still a value
        return text


def _set_path(obj: JsonObj, path: str, value: object) -> bool:
    """Put ``value`` at a dotted ``path``, creating objects on the way; False when a parent is not an object
    (e.g. a transcription prompt while transcription is off)."""
    *parents, leaf = path.split(".")
    for key in parents:
        child = obj.setdefault(key, {})
        if not isinstance(child, dict):
            return False
        obj = child
    obj[leaf] = value
    return True


def _tool_choice(choice: str) -> object:
    # canonical tool_choice is a string: the three modes, or the name of the one function to call
    return choice if choice in ("auto", "none", "required") else {"type": "function", "name": choice}


class OpenAIProviderCodec:
    """Canonical events <-> OpenAI Realtime GA for one upstream connection.

    Owns: the input resampler (any rate -> 24 kHz), provider <-> canonical item ids, the open response,
    which fields were already reported as unsupported. Never does I/O, reads the clock or the environment.
    """

    provider = "openai"
    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(self, meta: SessionMeta, model: str, *, id_factory: IdFactory | None = None) -> None:
        self.meta = meta
        self.model = model
        # OpenAI names every response and item itself; the factory is kept for symmetry with the Gemini
        # codec (same constructor for the worker) and for any id this codec may have to mint later.
        self._ids = id_factory or _default_ids
        self._resampler = RateConverter(INPUT_RATE)
        self.config: ev.SessionConfig | None = None
        self._connected = False
        self._ready = False
        self._sent_voice: str | None = None
        self._reported: set[str] = set()  # "param:<name>", "type:<event type>": reported once each
        self._to_provider: dict[str, str] = {}  # canonical id -> provider id, only when they differ
        self._to_canonical: dict[str, str] = {}
        self._buffered_bytes = 0  # 24 kHz audio appended since the last commit/clear
        self._response_id: str | None = None
        self._interrupted: str | None = None  # response already reported as Interrupted
        self._call_names: dict[str, str] = {}  # function_call item id -> name (beta .done lacks it)
        self._called: set[str] = set()  # function_call item ids already emitted as ToolCall

    # ---------------------------------------------------------------------------------------------
    # ids

    def _pid(self, cid: str) -> str:
        """Provider item id for a canonical id: the same when it fits OpenAI's 32-char limit."""
        if len(cid) <= MAX_ITEM_ID:
            return cid
        pid = self._to_provider.get(cid)
        if pid is None:
            pid = "item_" + hashlib.blake2b(cid.encode(), digest_size=12).hexdigest()
            self._to_provider[cid] = pid
            self._to_canonical[pid] = cid
        return pid

    def _cid(self, pid: str) -> str:
        return self._to_canonical.get(pid, pid)

    def _opt_cid(self, pid: str | None) -> str | None:
        return None if pid is None else self._cid(pid)

    # ---------------------------------------------------------------------------------------------
    # reporting

    def _notice_once(self, key: str, code: str, message: str, param: str | None = None) -> list[ev.Event]:
        if key in self._reported:
            return []
        self._reported.add(key)
        return [ev.Notice(code=code, message=message, param=param)]

    def _unsupported(self, param: str, message: str) -> list[ev.Event]:
        return self._notice_once("param:" + param, "unsupported_field", message, param)

    # ---------------------------------------------------------------------------------------------
    # connect

    def connect(self, config: ev.SessionConfig, history: list[ev.Item]) -> Out:
        """``session.update`` from the whole config, then one ``conversation.item.create`` per item."""
        self._connected = True
        return self._session_update(config).extend(self.history_frames(history))

    def history_frames(self, items: list[ev.Item]) -> Out:
        """One ``conversation.item.create`` per item, appended; items with nothing to replay are counted in
        one ``history_item_skipped`` notice."""
        out = Out()
        skipped = 0
        for item in items:
            frame = self._item_create(item, None)
            if frame is None:
                skipped += 1
            else:
                out.wire.append(frame)
        if skipped:
            out.events.append(ev.Notice(
                code="history_item_skipped",
                message=f"{skipped} history item(s) had no text or transcript to replay",
            ))
        return out

    # ---------------------------------------------------------------------------------------------
    # session.update

    def _session_update(self, cfg: ev.SessionConfig) -> Out:
        out = Out()
        session: JsonObj = {"type": "realtime", "output_modalities": self._modalities(cfg.output_modalities)}
        if cfg.instructions is not None:
            session["instructions"] = cfg.instructions
        audio_in: JsonObj = {
            "format": _PCM_FORMAT,
            "turn_detection": self._turn_detection(cfg.turn_detection, out),
            "transcription": self._transcription(cfg),
        }
        audio_out: JsonObj = {"format": _PCM_FORMAT}
        voice = self._voice(cfg.voice, out, "voice")
        # GA refuses a voice change once the model has spoken: resend the voice only when it changes.
        if voice is not None and voice != self._sent_voice:
            audio_out["voice"] = voice
            self._sent_voice = voice
        if cfg.speed is not None:
            audio_out["speed"] = cfg.speed
        session["audio"] = {"input": audio_in, "output": audio_out}
        session["tools"] = self._tools(cfg.tools, out)
        if cfg.tool_choice is not None:
            session["tool_choice"] = _tool_choice(cfg.tool_choice)
        # whole-config semantics: no limit must reset a previous one
        session["max_output_tokens"] = cfg.max_output_tokens if cfg.max_output_tokens is not None else "inf"
        if cfg.temperature is not None:
            out.events += self._unsupported("temperature", "OpenAI Realtime GA has no temperature; ignored")
        for key in sorted(cfg.extra):  # OpenAI-only fields go back where GA keeps them
            value = _json_value(cfg.extra[key])
            if key.startswith(tables.OPENAI_SESSION_TOOL_PREFIX) and isinstance(session["tools"], list):
                session["tools"].append(value)
                continue
            path = tables.OPENAI_SESSION_PASSTHROUGH.get(key)
            if path is None or not _set_path(session, path, value):
                out.events += self._unsupported(key, "not supported by OpenAI Realtime; ignored")
        self.config = cfg
        out.wire.append(_wire({"type": "session.update", "session": session}))
        return out

    @staticmethod
    def _modalities(modalities: Sequence[str] | None) -> list[str]:
        # GA takes exactly one output modality; "audio" includes its transcript (the OpenAI Realtime API reference)
        return ["text"] if modalities == ["text"] else ["audio"]

    def _turn_detection(self, td: ev.TurnDetection | None, out: Out) -> JsonObj | None:
        if td is None:
            return None  # manual turns
        wire: JsonObj = {
            "type": td.type,
            "create_response": td.create_response,
            "interrupt_response": td.interrupt_response,
        }
        allowed = _VAD_FIELDS[td.type]
        for name in _ALL_VAD_FIELDS:
            value = getattr(td, name)
            if value is None:
                continue
            if name in allowed:
                wire[name] = value
            else:
                out.events += self._unsupported(
                    f"turn_detection.{name}", f"not supported with {td.type} by OpenAI Realtime; ignored"
                )
        return wire

    @staticmethod
    def _transcription(cfg: ev.SessionConfig) -> JsonObj | None:
        if not cfg.input_transcription:
            return None
        wire: JsonObj = {"model": cfg.transcription_model or DEFAULT_TRANSCRIPTION_MODEL}
        if cfg.transcription_language:
            wire["language"] = cfg.transcription_language
        return wire

    def _voice(self, voice: str | None, out: Out, param: str) -> str | None:
        if voice is None:
            return None
        mapped = tables.to_openai_voice(voice)
        if mapped is None:
            out.events += self._notice_once(
                "param:" + param, "unsupported_value", "unknown voice; provider default used", param
            )
        return mapped

    def _tools(self, tools: list[ev.Tool], out: Out) -> list[JsonObj]:
        wires: list[JsonObj] = []
        for i, tool in enumerate(tools):
            wire, ok = _tool_wire(tool)
            if not ok:
                out.events.append(ev.Notice(
                    code="invalid_tool_schema",
                    message="tool parameters are not a JSON Schema object; sent without parameters",
                    param=f"tools[{i}].parameters",
                ))
            wires.append(wire)
        return wires

    # ---------------------------------------------------------------------------------------------
    # items

    def _item_wire(self, item: ev.Item) -> JsonObj | None:
        return _ITEM_TO_WIRE[type(item)](self, item)

    def _message_wire(self, item: ev.Message) -> JsonObj | None:
        part_type = _TEXT_PART_OUT[item.role]
        content: list[JsonObj] = []
        for c in item.content:
            text = c.text if isinstance(c, ev.TextContent) else c.transcript
            if text:
                content.append({"type": part_type, "text": text})
            elif isinstance(c, ev.AudioContent) and c.pcm and c.rate and item.role == "user":
                # A spoken turn without a transcript, its audio held by the worker: the audio itself.
                content.append({"type": "input_audio", "audio": b64encode_std(_at_input_rate(c.pcm, c.rate))})
        if not content:
            return None
        return {"type": "message", "id": self._pid(item.id), "role": item.role, "content": content}

    def _call_wire(self, item: ev.FunctionCall) -> JsonObj:
        return {
            "type": "function_call",
            "id": self._pid(item.id),
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }

    def _output_wire(self, item: ev.FunctionCallOutput) -> JsonObj:
        return {
            "type": "function_call_output",
            "id": self._pid(item.id),
            "call_id": item.call_id,
            "output": item.output,
        }

    def _item_create(self, item: ev.Item, previous: str | None) -> str | None:
        wire = self._item_wire(item)
        if wire is None:
            return None
        msg: JsonObj = {"type": "conversation.item.create", "item": wire}
        if previous is not None:
            msg["previous_item_id"] = self._pid(previous)
        return _wire(msg)

    # ---------------------------------------------------------------------------------------------
    # encode: canonical Up -> GA client events

    def encode(self, event: ev.Event) -> Out:
        handler = _ENCODERS.get(type(event))
        if handler is None:
            return Out(events=self._notice_once(
                "type:" + type(event).__name__, "unsupported_event",
                f"{type(event).__name__} cannot be sent to OpenAI Realtime",
            ))
        return handler(self, event)

    def _enc_config(self, e: ev.SessionConfig) -> Out:
        if not self._connected:
            self.config = e  # connect() will send it
            return Out()
        if self.config is not None and e.for_provider() == self.config.for_provider():
            # The client codec acks locally; nothing changed upstream (a client audio format is not ours).
            return Out()
        return self._session_update(e)

    def _append(self, pcm: bytes) -> list[str]:
        if not pcm:
            return []  # soxr emits in bursts; an empty chunk is normal
        self._buffered_bytes += len(pcm)
        return [_wire({"type": "input_audio_buffer.append", "audio": b64encode_std(pcm)})]

    def _enc_audio(self, e: ev.InputAudio) -> Out:
        try:
            pcm = self._resampler.convert(e.pcm, e.rate)
        except ValueError:
            return Out(events=self._notice_once(
                "param:rate", "invalid_audio", "input audio with an invalid rate was dropped", "rate"
            ))
        return Out(wire=self._append(pcm))

    def _commit(self) -> list[str]:
        # the resampler holds a few ms back: flush them into the buffer before it is committed
        wire = self._append(self._resampler.flush())
        wire.append(_wire({"type": "input_audio_buffer.commit"}))
        self._buffered_bytes = 0
        return wire

    def _enc_commit(self, e: ev.InputAudioCommit) -> Out:
        # an empty-buffer commit is answered by the client codec (contract); forward as asked
        return Out(wire=self._commit())

    def _clear(self) -> list[str]:
        self._resampler.reset()
        self._buffered_bytes = 0
        return [_wire({"type": "input_audio_buffer.clear"})]

    def _enc_clear(self, e: ev.InputAudioClear) -> Out:
        return Out(wire=self._clear())

    def _enc_activity_start(self, e: ev.ActivityStart) -> Out:
        # Gemini manual turn start: whatever is buffered belongs to no turn (docs/codec-contract.md)
        return Out(wire=self._clear())

    def _end_turn(self) -> list[str]:
        wire = self._append(self._resampler.flush())
        if self._buffered_bytes:  # committing an empty buffer is an upstream error
            wire.append(_wire({"type": "input_audio_buffer.commit"}))
            self._buffered_bytes = 0
        wire.append(_wire({"type": "response.create"}))
        return wire

    def _enc_activity_end(self, e: ev.ActivityEnd) -> Out:
        return Out(wire=self._end_turn())

    def _enc_stream_end(self, e: ev.AudioStreamEnd) -> Out:
        if self.config is not None and self.config.turn_detection is not None:
            # server VAD ends the turn by itself; just push the resampler tail
            return Out(wire=self._append(self._resampler.flush()))
        return Out(wire=self._end_turn())

    def _enc_item_create(self, e: ev.ItemCreate) -> Out:
        out = Out()
        frame = self._item_create(e.item, e.previous_item_id)
        if frame is None:
            out.events.append(ev.Notice(
                code="unsupported_value", message="message has no text or transcript to send", param="item"
            ))
        else:
            out.wire.append(frame)
        return out

    def _enc_truncate(self, e: ev.ItemTruncate) -> Out:
        return Out(wire=[_wire({
            "type": "conversation.item.truncate",
            "item_id": self._pid(e.item_id),
            "content_index": e.content_index,
            "audio_end_ms": e.audio_end_ms,
        })])

    def _enc_delete(self, e: ev.ItemDelete) -> Out:
        return Out(wire=[_wire({"type": "conversation.item.delete", "item_id": self._pid(e.item_id)})])

    def _enc_response_create(self, e: ev.ResponseCreate) -> Out:
        out = Out()
        msg: JsonObj = {"type": "response.create"}
        if e.options is not None:
            response = self._response_overrides(e.options, out)
            if response:
                msg["response"] = response
        out.wire.append(_wire(msg))
        return out

    def _response_overrides(self, o: ev.ResponseOptions, out: Out) -> JsonObj:
        r: JsonObj = {}
        if o.output_modalities is not None:
            r["output_modalities"] = self._modalities(o.output_modalities)
        if o.instructions is not None:
            r["instructions"] = o.instructions
        voice = self._voice(o.voice, out, "response.voice")
        if voice is not None:
            r["audio"] = {"output": {"voice": voice}}
        if o.tools is not None:
            r["tools"] = self._tools(o.tools, out)
        if o.tool_choice is not None:
            r["tool_choice"] = _tool_choice(o.tool_choice)
        if o.max_output_tokens is not None:
            r["max_output_tokens"] = o.max_output_tokens
        if o.out_of_band:
            r["conversation"] = "none"
        if o.metadata is not None:
            r["metadata"] = dict(o.metadata)
        if o.temperature is not None:
            # Its own param: a session temperature reported earlier must not silence this one.
            out.events += self._unsupported("response.temperature", "OpenAI Realtime GA has no temperature; ignored")
        for key in sorted(o.extra):  # OpenAI-only options (prompt, reasoning...) go as they came
            path = tables.OPENAI_RESPONSE_PASSTHROUGH.get(key)
            if path is None or not _set_path(r, path, _json_value(o.extra[key])):
                out.events += self._unsupported(key, "not supported by OpenAI Realtime; ignored")
        return r

    def _enc_cancel(self, e: ev.ResponseCancel) -> Out:
        msg: JsonObj = {"type": "response.cancel"}
        if e.response_id is not None:
            msg["response_id"] = e.response_id
        return Out(wire=[_wire(msg)])

    # ---------------------------------------------------------------------------------------------
    # feed: GA (or beta) server events -> canonical Down

    def feed(self, frame: str | bytes) -> Out:
        try:
            msg = msgspec.json.decode(frame)
        except msgspec.DecodeError:
            return self._malformed("frame")
        if not isinstance(msg, dict) or not isinstance(msg.get("type"), str):
            return self._malformed("frame")
        etype: str = msg["type"]
        etype = tables.OPENAI_BETA_SERVER_ALIASES.get(etype, etype)
        handler = _HANDLERS.get(etype)
        if handler is None:
            if etype in _IGNORED:
                return Out()
            return Out(events=self._notice_once(
                "type:" + etype, "unknown_provider_event", "OpenAI sent an event type the gateway does not map",
                etype,
            ))
        try:
            return handler(self, msg)
        except (_Malformed, ValueError):  # ValueError: bad base64 audio
            return self._malformed(etype)

    def _malformed(self, what: str) -> Out:
        return Out(events=self._notice_once(
            "malformed:" + what, "malformed_provider_event", "OpenAI sent a frame the gateway cannot read", what
        ))

    def _on_session_updated(self, m: JsonObj) -> Out:
        # The first session.updated after connect() acknowledges our configuration: the upstream is
        # ready. Later ones answer live updates the client codec already acked locally.
        if not self._connected or self._ready:
            return Out()
        self._ready = True
        return Out(events=[ev.SessionReady(provider=self.provider, model=self.model)])

    def _on_speech_started(self, m: JsonObj) -> Out:
        events: list[ev.Event] = [ev.SpeechStarted(
            item_id=self._cid(_str(m, "item_id")), audio_start_ms=int(_num(m, "audio_start_ms"))
        )]
        td = self.config.turn_detection if self.config is not None else None
        if self._response_id is not None and td is not None and td.interrupt_response:
            # Server VAD cancels the response in flight now; say so at once so the edge drops queued
            # audio, instead of waiting for response.done(cancelled) after the item events.
            self._interrupted = self._response_id
            events.append(ev.Interrupted(response_id=self._response_id))
        return Out(events=events)

    def _on_speech_stopped(self, m: JsonObj) -> Out:
        return Out(events=[ev.SpeechStopped(
            item_id=self._cid(_str(m, "item_id")), audio_end_ms=int(_num(m, "audio_end_ms"))
        )])

    def _on_committed(self, m: JsonObj) -> Out:
        self._buffered_bytes = 0  # server VAD commits by itself
        return Out(events=[ev.InputCommitted(
            item_id=self._cid(_str(m, "item_id")), previous_item_id=self._opt_cid(_opt_str(m, "previous_item_id"))
        )])

    def _on_transcript_delta(self, m: JsonObj) -> Out:
        delta = _opt_str(m, "delta")
        if not delta:
            return Out()
        return Out(events=[ev.InputTranscript(item_id=self._cid(_str(m, "item_id")), text=delta)])

    def _on_transcript_done(self, m: JsonObj) -> Out:
        return Out(events=[ev.InputTranscript(
            item_id=self._cid(_str(m, "item_id")), text=_opt_str(m, "transcript") or "", final=True
        )])

    def _on_transcript_failed(self, m: JsonObj) -> Out:
        err = _opt_obj(m, "error")
        return Out(events=[ev.ProviderError(
            code=_opt_str(err, "code") or "input_transcription_failed",
            message=_opt_str(err, "message") or "input audio transcription failed",
        )])

    def _on_response_created(self, m: JsonObj) -> Out:
        rid = _str(_obj(m, "response"), "id")
        self._response_id = rid
        return Out(events=[ev.ResponseStarted(response_id=rid)])

    def _rid(self, m: JsonObj) -> str:
        rid = _opt_str(m, "response_id") or self._response_id
        if rid is None:
            raise _Malformed("response_id")
        return rid

    def _on_item_added(self, m: JsonObj) -> Out:
        # Pure structure (the client codec synthesizes output_item.added), except that beta's
        # function_call_arguments.done has no name: remember it from here.
        item = _obj(m, "item")
        if item.get("type") == "function_call":
            self._call_names[_str(item, "id")] = _opt_str(item, "name") or ""
        return Out()

    def _on_audio_delta(self, m: JsonObj) -> Out:
        pcm = b64decode_any(_str(m, "delta"))
        return Out(events=[ev.OutputAudio(
            response_id=self._rid(m), item_id=self._cid(_str(m, "item_id")), pcm=pcm, rate=OUTPUT_RATE
        )])

    def _on_audio_transcript_delta(self, m: JsonObj) -> Out:
        return Out(events=[ev.OutputTranscript(
            response_id=self._rid(m), item_id=self._cid(_str(m, "item_id")), delta=_str(m, "delta")
        )])

    def _on_text_delta(self, m: JsonObj) -> Out:
        return Out(events=[ev.OutputText(
            response_id=self._rid(m), item_id=self._cid(_str(m, "item_id")), delta=_str(m, "delta")
        )])

    def _tool_call(self, rid: str, pid: str, call_id: str, name: str, arguments: str) -> ev.ToolCall:
        self._called.add(pid)
        return ev.ToolCall(
            response_id=rid, item_id=self._cid(pid), call_id=call_id, name=name, arguments=arguments
        )

    def _on_arguments_done(self, m: JsonObj) -> Out:
        pid = _str(m, "item_id")
        name = _opt_str(m, "name") or self._call_names.get(pid)
        if name is None:
            raise _Malformed("name")
        return Out(events=[self._tool_call(self._rid(m), pid, _str(m, "call_id"), name, _str(m, "arguments"))])

    def _on_item_done(self, m: JsonObj) -> Out:
        item = _obj(m, "item")
        kind = _opt_str(item, "type") or ""
        build = _OUTPUT_ITEMS.get(kind)
        if build is None:
            return Out(events=self._notice_once(
                "item:" + kind, "unsupported_item", "OpenAI produced an output item the gateway does not map", kind
            ))
        return Out(events=build(self, self._rid(m), item))

    def _done_message(self, rid: str, item: JsonObj) -> list[ev.Event]:
        content: list[ev.Content] = []
        for part in _objs(item, "content"):
            build = _PART_IN.get(_opt_str(part, "type") or "")
            if build is not None:
                content.append(build(part))
        role = _ROLES.get(_opt_str(item, "role") or "assistant")
        if role is None:
            raise _Malformed("role")
        msg = ev.Message(
            id=self._cid(_str(item, "id")), role=role, content=content, status=_opt_str(item, "status")
        )
        return [ev.OutputDone(response_id=rid, item=msg)]

    def _done_call(self, rid: str, item: JsonObj) -> list[ev.Event]:
        pid = _str(item, "id")
        call = ev.FunctionCall(
            id=self._cid(pid),
            call_id=_str(item, "call_id"),
            name=_str(item, "name"),
            arguments=_opt_str(item, "arguments") or "",
        )
        events: list[ev.Event] = []
        if pid not in self._called:  # no function_call_arguments.done seen: the contract wants ToolCall first
            events.append(self._tool_call(rid, pid, call.call_id, call.name, call.arguments))
        events.append(ev.OutputDone(response_id=rid, item=call))
        return events

    def _on_response_done(self, m: JsonObj) -> Out:
        resp = _obj(m, "response")
        rid = _str(resp, "id")
        status = tables.openai_status(_opt_str(resp, "status"))
        details = _opt_obj(resp, "status_details")
        reason = _opt_str(details, "reason")
        if reason is None and status == "failed":
            reason = _opt_str(_opt_obj(details, "error"), "code") or _opt_str(_opt_obj(details, "error"), "type")
        usage = resp.get("usage")
        events: list[ev.Event] = []
        if status == "cancelled" and reason == "turn_detected" and self._interrupted != rid:
            events.append(ev.Interrupted(response_id=rid))
        events.append(ev.ResponseDone(
            response_id=rid,
            status=status,  # type: ignore[arg-type]  # openai_status returns one of the literals
            reason=reason,
            usage=tables.usage_from_openai(usage) if isinstance(usage, dict) else None,
        ))
        if self._response_id == rid:
            self._response_id = None
        self._interrupted = None
        return Out(events=events)

    def _on_rate_limits(self, m: JsonObj) -> Out:
        limits = [
            ev.RateLimit(
                name=_str(r, "name"),
                limit=int(_num(r, "limit")),
                remaining=int(_num(r, "remaining")),
                reset_seconds=float(_num(r, "reset_seconds")),
            )
            for r in _objs(m, "rate_limits")
        ]
        return Out(events=[ev.RateLimits(limits=limits)])

    def _on_error(self, m: JsonObj) -> Out:
        err = _opt_obj(m, "error")
        etype = _opt_str(err, "type") or "error"
        code = _opt_str(err, "code") or etype
        return Out(events=[ev.ProviderError(
            code=code,
            message=_opt_str(err, "message") or "",
            retryable=etype in tables.OPENAI_RETRYABLE_ERRORS or code in tables.OPENAI_RETRYABLE_ERRORS,
            param=_opt_str(err, "param"),
            client_event_id=_opt_str(err, "event_id"),
        )])


def _at_input_rate(pcm: bytes, rate: int) -> bytes:
    """One whole clip (a restored spoken turn) at the session's input rate."""
    converter = RateConverter(INPUT_RATE)
    return converter.convert(pcm, rate) + converter.flush()


def _nothing(codec: OpenAIProviderCodec, m: JsonObj) -> Out:
    return Out()


_ITEM_TO_WIRE: dict[type, Callable[..., JsonObj | None]] = {
    ev.Message: OpenAIProviderCodec._message_wire,
    ev.FunctionCall: OpenAIProviderCodec._call_wire,
    ev.FunctionCallOutput: OpenAIProviderCodec._output_wire,
}

_OUTPUT_ITEMS: dict[str, Callable[[OpenAIProviderCodec, str, JsonObj], list[ev.Event]]] = {
    "message": OpenAIProviderCodec._done_message,
    "function_call": OpenAIProviderCodec._done_call,
}

_ENCODERS: dict[type, Callable[..., Out]] = {
    ev.SessionConfig: OpenAIProviderCodec._enc_config,
    ev.InputAudio: OpenAIProviderCodec._enc_audio,
    ev.InputAudioCommit: OpenAIProviderCodec._enc_commit,
    ev.InputAudioClear: OpenAIProviderCodec._enc_clear,
    ev.ActivityStart: OpenAIProviderCodec._enc_activity_start,
    ev.ActivityEnd: OpenAIProviderCodec._enc_activity_end,
    ev.AudioStreamEnd: OpenAIProviderCodec._enc_stream_end,
    ev.ItemCreate: OpenAIProviderCodec._enc_item_create,
    ev.ItemTruncate: OpenAIProviderCodec._enc_truncate,
    ev.ItemDelete: OpenAIProviderCodec._enc_delete,
    ev.ResponseCreate: OpenAIProviderCodec._enc_response_create,
    ev.ResponseCancel: OpenAIProviderCodec._enc_cancel,
    # never meant for a provider (the transformer hands it to the edge); explicit, so not reported
    ev.SwitchRequest: lambda codec, e: Out(),
}

_HANDLERS: dict[str, Callable[[OpenAIProviderCodec, JsonObj], Out]] = {
    "session.created": _nothing,  # the client codec sent its own session.created in open()
    "session.updated": OpenAIProviderCodec._on_session_updated,
    "input_audio_buffer.speech_started": OpenAIProviderCodec._on_speech_started,
    "input_audio_buffer.speech_stopped": OpenAIProviderCodec._on_speech_stopped,
    "input_audio_buffer.committed": OpenAIProviderCodec._on_committed,
    "conversation.item.input_audio_transcription.delta": OpenAIProviderCodec._on_transcript_delta,
    "conversation.item.input_audio_transcription.completed": OpenAIProviderCodec._on_transcript_done,
    "conversation.item.input_audio_transcription.failed": OpenAIProviderCodec._on_transcript_failed,
    "response.created": OpenAIProviderCodec._on_response_created,
    "response.output_item.added": OpenAIProviderCodec._on_item_added,
    "response.output_audio.delta": OpenAIProviderCodec._on_audio_delta,
    "response.output_audio_transcript.delta": OpenAIProviderCodec._on_audio_transcript_delta,
    "response.output_text.delta": OpenAIProviderCodec._on_text_delta,
    "response.function_call_arguments.done": OpenAIProviderCodec._on_arguments_done,
    "response.output_item.done": OpenAIProviderCodec._on_item_done,
    "response.done": OpenAIProviderCodec._on_response_done,
    "rate_limits.updated": OpenAIProviderCodec._on_rate_limits,
    "error": OpenAIProviderCodec._on_error,
}

# Server events deliberately mapped to nothing, and why. Everything here is either an ack the client
# codec answers locally (contract "Acks"), or structure the client codec derives from the deltas and
# OutputDone (contract "Down event semantics"), or a transport other than WebSocket.
_IGNORED: frozenset[str] = frozenset(
    {
        # acks answered locally by the client codec
        "input_audio_buffer.cleared",
        "conversation.item.added",  # beta conversation.item.created is aliased here
        "conversation.item.done",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "conversation.item.deleted",
        "conversation.created",
        # derivable structure: the *.done duplicates repeat what the deltas and output_item.done carry
        "response.content_part.added",
        "response.content_part.done",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.output_text.done",
        "response.function_call_arguments.delta",  # ToolCall carries the complete arguments
        # diarized segments repeat the completed transcript
        "conversation.item.input_audio_transcription.segment",
        # the idle timeout is followed by the usual committed/response events
        "input_audio_buffer.timeout_triggered",
        # WebRTC/SIP only (the OpenAI Realtime API reference)
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "output_audio_buffer.cleared",
        "input_audio_buffer.dtmf_event_received",
    }
)
