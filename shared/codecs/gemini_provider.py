"""Gemini Live (BidiGenerateContent) upstream <-> canonical events. Sans-I/O, one per upstream connection.

Gemini differs from the canonical (OpenAI-shaped) model in ways this codec absorbs (the Gemini Live API reference):

- one ``setup`` per connection, answered by ``setupComplete``: frames produced before it arrives are held
  and released by ``feed(setupComplete)`` (history first); a later config change sets ``needs_reconnect``;
- no ids, no ``response.created``, no user items: responses and items get minted ids, the user item is
  synthesized (``InputCommitted``) from a commit, the first input transcription or the model turn start;
- no acks, no truncate/delete/cancel: truncations are kept for history, deletes are reported, a cancel
  closes the response locally and drops the rest of its output;
- Gemini answers a tool result by itself, an OpenAI client asks with ``response.create`` (whose ``metadata``
  the client codec echoes in the response it announces next): for an OpenAI-dialect client the codec holds
  that self-started answer until the client's ``ResponseCreate`` arrives, at most ``HOLD_FOR_CREATE_S``
  (``Out.wake``), so the response is announced after the client's request, with its metadata;
- keys arrive camelCase or snake_case at every level; frames may be text or binary.

Dispatch is data: ``_ENCODERS`` (canonical Up type -> builder), ``_TOP_LEVEL`` and ``_CONTENT`` (server
message keys -> handlers, in processing order). Unknown keys become one ``Notice`` per key.
"""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgspec

from shared import events as ev
from shared.audio import RateConverter, b64decode_any, b64encode_std, parse_pcm_mime
from shared.codecs import tables
from shared.codecs.base import Out, Wake
from shared.session import SessionMeta

__all__ = ["HOLD_FOR_CREATE_S", "INPUT_MIME", "GeminiProviderCodec", "IdFactory", "parse_duration_ms"]

IdFactory = Callable[[str], str]  # prefix ("resp", "item", "call") -> a new unique id
JsonObj = dict[str, object]

INPUT_RATE = 16_000  # native Gemini input rate; the mime type says so truthfully
OUTPUT_RATE = 24_000  # what Gemini sends when a mime type lacks a rate
INPUT_MIME = "audio/pcm;rate=16000"
MAX_HELD_BYTES = 8 * 1024 * 1024  # wire text held until setupComplete (~60 s of 16 kHz audio)
# How long Gemini's answer to a tool result waits for an OpenAI client's response.create: far above a client's
# round trip (the create follows the item's ack), short enough that a client that never asks still hears it.
HOLD_FOR_CREATE_S = 2.0

_encoder = msgspec.json.Encoder()


def _default_ids(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def _wire(obj: JsonObj) -> str:
    return _encoder.encode(obj).decode()


class _Malformed(Exception):
    """A provider message lacks a field a handler needs. Carries no payload."""


# --------------------------------------------------------------------------------------------------
# Key casing: the server may use either spelling at every level (the Gemini Live API reference). Lookups try
# camelCase, then snake_case; user data (function ``args``) is never re-keyed.

_CAMEL_PART = re.compile(r"_([a-z0-9])")
_SNAKE_PART = re.compile(r"(?<!^)([A-Z])")


@functools.lru_cache(maxsize=512)
def _camel(key: str) -> str:
    return _CAMEL_PART.sub(lambda m: m.group(1).upper(), key)


@functools.lru_cache(maxsize=512)
def _snake(key: str) -> str:
    return _SNAKE_PART.sub(lambda m: "_" + m.group(1).lower(), key)


def _g(d: JsonObj, camel: str) -> object:
    v = d.get(camel)
    return d.get(_snake(camel)) if v is None else v


def _gs(d: JsonObj, camel: str) -> str | None:
    v = _g(d, camel)
    return v if isinstance(v, str) else None


def _gl(d: JsonObj, camel: str) -> list[JsonObj]:
    v = _g(d, camel)
    return [x for x in v if isinstance(x, dict)] if isinstance(v, list) else []


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*s\s*$")


def parse_duration_ms(value: object) -> int | None:
    """Protobuf Duration as proto-JSON (``"50s"``, ``"1.5s"``) or object (``{seconds, nanos}``) -> ms."""
    if isinstance(value, str):
        m = _DURATION.match(value)
        return round(float(m.group(1)) * 1000) if m else None
    if isinstance(value, dict):
        seconds, nanos = _g(value, "seconds") or 0, _g(value, "nanos") or 0
        try:
            return round(float(seconds) * 1000 + float(nanos) / 1e6)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return round(value * 1000)
    return None


def _response_object(output: str) -> JsonObj:
    """functionResponse.response must be an object: a JSON object output as is, anything else wrapped."""
    try:
        parsed = msgspec.json.decode(output)
    except msgspec.DecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"output": output}


def _args_object(arguments: str) -> JsonObj:
    try:
        parsed = msgspec.json.decode(arguments)
    except msgspec.DecodeError:
        parsed = None
    return parsed if isinstance(parsed, dict) else {"arguments": arguments}


# Canonical role -> Gemini Content role. Gemini has no system turn inside a conversation.
_ROLE: Mapping[str, str] = {"user": "user", "system": "user", "assistant": "model"}


@dataclass(slots=True)
class _UserTurn:
    """The user item of the current turn: Gemini never names it, so the codec does."""

    id: str
    committed: bool = False
    speech_started: bool = False
    speech_stopped: bool = False
    texts: list[str] = field(default_factory=list)
    final_sent: bool = False


@dataclass(slots=True)
class _Response:
    id: str
    item_id: str | None = None  # the assistant message item, minted on its first output
    audio: bool = False
    transcript: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    generated: bool = False  # generationComplete arrived: the model is done, the client may still be playing


class GeminiProviderCodec:
    """Canonical events <-> Gemini Live for one upstream connection.

    Owns: the input resampler (any rate -> 16 kHz), the frames held until ``setupComplete``, minted ids
    for responses/items/user turns, the open response, tool-call names, the resumption handle. Never does
    I/O, reads the clock or the environment.

    For the worker: ``resumption_handle`` (latest ``sessionResumptionUpdate.newHandle``),
    ``needs_reconnect`` + ``pending_config`` (a config change Gemini can only take on a new connection),
    ``truncations`` (client truncations Gemini cannot apply, by item id, for the history).
    """

    provider = "gemini"
    input_rate = INPUT_RATE
    output_rate = OUTPUT_RATE

    def __init__(
        self,
        meta: SessionMeta,
        model: str,
        *,
        id_factory: IdFactory | None = None,
        resumption_handle: str | None = None,
    ) -> None:
        self.meta = meta
        self.model = model
        self.resumption_handle = resumption_handle
        self.needs_reconnect = False
        self.pending_config: ev.SessionConfig | None = None
        self.truncations: dict[str, ev.ItemTruncate] = {}
        self.config: ev.SessionConfig | None = None
        self._ids = id_factory or _default_ids
        self._resampler = RateConverter(INPUT_RATE)
        self._reported: set[str] = set()
        self._setup_sent = False
        self._setup_done = False
        self._held: list[tuple[str, bool]] = []  # (frame, is_audio) until setupComplete
        self._held_bytes = 0
        # conversation
        self._last_item_id: str | None = None
        self._pending_items: list[ev.Item] = []  # message items wait for ResponseCreate
        self._content_calls: set[str] = set()  # call ids that exist upstream as content, not live calls
        self._live_calls: set[str] = set()  # toolCall ids awaiting a toolResponse
        self._call_names: dict[str, str] = {}
        self._skip_response_create = False
        self._trigger = "audio"  # what the next model turn answers: audio | content | tool
        # input
        self._activity_open = False
        self._audio_since_commit = False
        self._user: _UserTurn | None = None
        # output
        self._resp: _Response | None = None
        self._turn_closed = False  # the response of the current turn was already closed towards the client
        self._drop_output = False  # client cancel / barge-in: discard the rest of this turn's output
        # A barge-in cut: its ResponseDone waits for the turnComplete that follows ``interrupted`` and
        # carries the usage of the cut turn (real traffic sends usageMetadata only there).
        self._cut: _Response | None = None
        self._usage: ev.Usage | None = None  # this turn's usage so far; cleared at every turn end
        self._minted_calls: set[str] = set()  # toolCall ids Gemini did not send (3.1 sends calls without id)
        # An OpenAI client's tool result: its response.create is owed. Gemini's own answer to the result is
        # withheld (every Down event from its ResponseStarted on, in order) until that create or the wake.
        self._create_owed = False
        self._withheld: list[ev.Event] | None = None
        self._hold_token = 0
        self._late_create = False  # the hold ran out: the create still to come gets an empty response

    # ---------------------------------------------------------------------------------------------
    # helpers

    @property
    def _vad(self) -> bool:
        return self.config is None or self.config.turn_detection is not None

    def _notice_once(self, key: str, code: str, message: str, param: str | None = None) -> list[ev.Event]:
        if key in self._reported:
            return []
        self._reported.add(key)
        return [ev.Notice(code=code, message=message, param=param)]

    def _unsupported(self, param: str, message: str) -> list[ev.Event]:
        return self._notice_once("param:" + param, "unsupported_field", message, param)

    def _send(self, out: Out, frames: list[str], *, audio: bool = False) -> None:
        """Frames go out at once after setupComplete; before it they are held (Gemini wants setup alone)."""
        if self._setup_done:
            out.wire.extend(frames)
            return
        for frame in frames:
            if self._held_bytes + len(frame) > MAX_HELD_BYTES:
                out.events += self._notice_once(
                    "held_overflow", "input_dropped", "Gemini setup is slow; input beyond the buffer was dropped"
                )
                continue
            self._held.append((frame, audio))
            self._held_bytes += len(frame)

    # ---------------------------------------------------------------------------------------------
    # connect: setup, then (after setupComplete) the history as one clientContent

    def connect(self, config: ev.SessionConfig, history: list[ev.Item]) -> Out:
        out = Out()
        self.config = config
        self._setup_sent = True
        out.wire.append(_wire({"setup": self._setup(config, out)}))
        if history and self.resumption_handle is None:
            # A resumed session already holds its conversation server-side; replaying would duplicate it.
            turns, skipped = self._turns(history)
            if turns:
                self._held.insert(0, (_wire({"clientContent": {"turns": turns, "turnComplete": False}}), False))
            if skipped:
                out.events.append(ev.Notice(
                    code="history_item_skipped",
                    message=f"{skipped} history item(s) had no text or transcript to replay",
                ))
            self._last_item_id = history[-1].id
        return out

    def _same_setup(self, a: ev.SessionConfig, b: ev.SessionConfig) -> bool:
        """Whether Gemini would get the same ``setup`` for both (the comparison reports nothing)."""
        reported = set(self._reported)
        try:
            return self._setup(a, Out()) == self._setup(b, Out())
        finally:
            self._reported = reported

    def _setup(self, cfg: ev.SessionConfig, out: Out) -> JsonObj:
        model = self.model if self.model.startswith("models/") else f"models/{self.model}"
        gen: JsonObj = {"responseModalities": ["TEXT"] if cfg.output_modalities == ["text"] else ["AUDIO"]}
        if cfg.temperature is not None:
            gen["temperature"] = cfg.temperature
        if cfg.max_output_tokens is not None:
            gen["maxOutputTokens"] = cfg.max_output_tokens
        if cfg.voice is not None:
            voice = tables.to_gemini_voice(cfg.voice)
            if voice is None:
                out.events += self._notice_once(
                    "param:voice", "unsupported_value", "unknown voice; provider default used", "voice"
                )
            else:
                gen["speechConfig"] = {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": voice}}}
        setup: JsonObj = {"model": model, "generationConfig": gen}
        if cfg.instructions:
            setup["systemInstruction"] = {"parts": [{"text": cfg.instructions}]}
        if cfg.tools:
            setup["tools"] = [{"functionDeclarations": [self._declaration(i, t, out) for i, t in enumerate(cfg.tools)]}]
        setup["realtimeInputConfig"] = self._input_config(cfg.turn_detection, out)
        if cfg.input_transcription:
            setup["inputAudioTranscription"] = {}
        # Always on: OpenAI clients need the transcript of spoken output (docs/codec-contract.md "modalities").
        setup["outputAudioTranscription"] = {}
        setup["sessionResumption"] = {"handle": self.resumption_handle} if self.resumption_handle else {}
        for param, reported in _SETUP_UNSUPPORTED.items():
            if reported(cfg):
                out.events += self._unsupported(param, "not supported by Gemini Live; ignored")
        for key in sorted(cfg.extra):
            out.events += self._unsupported(key, "not supported by Gemini Live; ignored")
        return setup

    def _declaration(self, i: int, tool: ev.Tool, out: Out) -> JsonObj:
        decl: JsonObj = {"name": tool.name}
        if tool.description is not None:
            decl["description"] = tool.description
        if tool.parameters is not None:
            try:
                schema = msgspec.json.decode(tool.parameters)
            except msgspec.DecodeError:
                schema = None
            if isinstance(schema, dict):
                # parametersJsonSchema takes JSON Schema as is (no UPPERCASE Schema conversion needed)
                decl["parametersJsonSchema"] = schema
            else:
                out.events.append(ev.Notice(
                    code="invalid_tool_schema",
                    message="tool parameters are not a JSON Schema object; sent without parameters",
                    param=f"tools[{i}].parameters",
                ))
        return decl

    def _input_config(self, td: ev.TurnDetection | None, out: Out) -> JsonObj:
        if td is None:
            return {"automaticActivityDetection": {"disabled": True}}
        aad: JsonObj = {"disabled": False}
        start = tables.start_sensitivity_for(td.threshold)
        if start is not None:
            aad["startOfSpeechSensitivity"] = start
        end = tables.end_sensitivity_for(td.eagerness)
        if end is not None:
            aad["endOfSpeechSensitivity"] = end
        if td.prefix_padding_ms is not None:
            aad["prefixPaddingMs"] = td.prefix_padding_ms
        if td.silence_duration_ms is not None:
            aad["silenceDurationMs"] = td.silence_duration_ms
        cfg: JsonObj = {"automaticActivityDetection": aad}
        if not td.interrupt_response:
            cfg["activityHandling"] = "NO_INTERRUPTION"
        if not td.create_response:
            out.events += self._unsupported(
                "turn_detection.create_response", "Gemini Live always answers a detected turn"
            )
        if td.idle_timeout_ms is not None:
            out.events += self._unsupported("turn_detection.idle_timeout_ms", "not supported by Gemini Live; ignored")
        return cfg

    # ---------------------------------------------------------------------------------------------
    # items -> Content turns

    def _parts(self, item: ev.Item) -> tuple[str, list[JsonObj]]:
        return _ITEM_PARTS[type(item)](self, item)

    def _message_parts(self, item: ev.Message) -> tuple[str, list[JsonObj]]:
        parts: list[JsonObj] = []
        for c in item.content:
            # audio bytes are not kept in items: spoken content is replayed as its transcript, or as the
            # audio itself when the worker still holds it (a spoken turn never transcribed)
            text = c.text if isinstance(c, ev.TextContent) else c.transcript
            if text:
                parts.append({"text": text})
            elif isinstance(c, ev.AudioContent) and c.pcm and c.rate and item.role == "user":
                converter = RateConverter(INPUT_RATE)
                pcm = converter.convert(c.pcm, c.rate) + converter.flush()
                parts.append({"inlineData": {"mimeType": INPUT_MIME, "data": b64encode_std(pcm)}})
        return _ROLE[item.role], parts

    def _call_parts(self, item: ev.FunctionCall) -> tuple[str, list[JsonObj]]:
        self._content_calls.add(item.call_id)
        self._call_names[item.call_id] = item.name
        call = {"id": item.call_id, "name": item.name, "args": _args_object(item.arguments)}
        return "model", [{"functionCall": call}]

    def _output_parts(self, item: ev.FunctionCallOutput) -> tuple[str, list[JsonObj]]:
        name = self._call_names.get(item.call_id) or item.name or ""
        resp = {"id": item.call_id, "name": name, "response": _response_object(item.output)}
        return "user", [{"functionResponse": resp}]

    def _turns(self, items: list[ev.Item]) -> tuple[list[JsonObj], int]:
        """Items -> Content turns, consecutive same-role items merged (Gemini expects alternation), except two
        user messages: a spoken turn whose answer a lost connection cut, then the next one, stay two user turns
        (merged, the provider would hear one turn fewer and see two requests as one)."""
        turns: list[JsonObj] = []
        skipped = 0
        previous: ev.Item | None = None
        for item in items:
            role, parts = self._parts(item)
            if not parts:
                skipped += 1
                continue
            two_asks = role == "user" and isinstance(item, ev.Message) and isinstance(previous, ev.Message)
            previous = item
            if turns and turns[-1]["role"] == role and not two_asks:
                turns[-1]["parts"].extend(parts)  # type: ignore[attr-defined]  # built just below
            else:
                turns.append({"role": role, "parts": parts})
        return turns, skipped

    # ---------------------------------------------------------------------------------------------
    # encode: canonical Up -> Gemini client messages

    def encode(self, event: ev.Event) -> Out:
        handler = _ENCODERS.get(type(event))
        if handler is None:
            return Out(events=self._notice_once(
                "type:" + type(event).__name__, "unsupported_event",
                f"{type(event).__name__} cannot be sent to Gemini Live",
            ))
        return handler(self, event)

    def _enc_config(self, e: ev.SessionConfig) -> Out:
        if not self._setup_sent:
            self.config = e  # connect() will send it
            return Out()
        current = self.pending_config or self.config
        if current is not None and (e.for_provider() == current.for_provider() or self._same_setup(e, current)):
            # Nothing Gemini sees changed (a client audio format, an OpenAI-only field such as ``tracing``):
            # no reconnect, which would cut an answer in flight for nothing.
            self.config = e if self.pending_config is None else self.config
            return Out()
        # Gemini takes exactly one setup per connection (anchor §3.6 #6): the worker must reconnect.
        self.pending_config = e
        if self.needs_reconnect:
            return Out()
        self.needs_reconnect = True
        return Out(events=[ev.Notice(
            code="reconnect_required",
            message="Gemini Live applies a new configuration only on a new connection; reconnecting",
        )])

    def _audio_frame(self, pcm: bytes) -> str:
        return _wire({"realtimeInput": {"audio": {"data": b64encode_std(pcm), "mimeType": INPUT_MIME}}})

    def _enc_audio(self, e: ev.InputAudio) -> Out:
        out = Out()
        try:
            pcm = self._resampler.convert(e.pcm, e.rate)
        except ValueError:
            out.events += self._notice_once(
                "param:rate", "invalid_audio", "input audio with an invalid rate was dropped", "rate"
            )
            return out
        self._audio_since_commit = True
        if not self._vad and not self._activity_open:
            # manual turns: Gemini wants audio inside activityStart ... activityEnd (the Gemini Live API reference)
            self._activity_open = True
            self._send(out, [_wire({"realtimeInput": {"activityStart": {}}})])
        if pcm:
            self._send(out, [self._audio_frame(pcm)], audio=True)
        return out

    def _flush_audio(self, out: Out) -> None:
        tail = self._resampler.flush()
        if tail:
            self._send(out, [self._audio_frame(tail)], audio=True)

    def _end_activity(self, out: Out, item_id: str | None) -> None:
        """Close a manual turn: activityEnd upstream, the user item downstream; Gemini answers by itself."""
        self._flush_audio(out)
        self._send(out, [_wire({"realtimeInput": {"activityEnd": {}}})])
        self._activity_open = False
        out.events += self._commit_user(item_id, from_vad=False)
        self._skip_response_create = True
        self._trigger = "audio"

    def _enc_commit(self, e: ev.InputAudioCommit) -> Out:
        out = Out()
        if not self._vad:
            if self._activity_open:
                self._end_activity(out, e.item_id)
            return out  # nothing was sent: the client codec answers an empty commit itself
        self._flush_audio(out)
        # server VAD: audioStreamEnd flushes what Gemini buffered so the turn ends now
        self._send(out, [_wire({"realtimeInput": {"audioStreamEnd": True}})])
        out.events += self._commit_user(e.item_id, from_vad=False)
        self._skip_response_create = True
        self._trigger = "audio"
        return out

    def _enc_clear(self, e: ev.InputAudioClear) -> Out:
        # Gemini has no way to unsend audio: drop what is still ours (resampler tail, frames held
        # before setupComplete, an uncommitted user item) and send nothing.
        self._resampler.reset()
        if self._held:
            self._held = [(f, a) for f, a in self._held if not a]
            self._held_bytes = sum(len(f) for f, _ in self._held)
        self._audio_since_commit = False
        if self._user is not None and not self._user.committed:
            self._user = None
        return Out()

    def _enc_activity_start(self, e: ev.ActivityStart) -> Out:
        out = Out()
        if self._vad:
            out.events += self._notice_once(
                "type:ActivityStart", "unsupported_event", "activityStart needs automatic activity detection off"
            )
        elif not self._activity_open:
            self._activity_open = True
            self._send(out, [_wire({"realtimeInput": {"activityStart": {}}})])
        return out

    def _enc_activity_end(self, e: ev.ActivityEnd) -> Out:
        out = Out()
        if self._vad:
            out.events += self._notice_once(
                "type:ActivityEnd", "unsupported_event", "activityEnd needs automatic activity detection off"
            )
        elif self._activity_open:
            self._end_activity(out, None)
        return out

    def _enc_stream_end(self, e: ev.AudioStreamEnd) -> Out:
        out = Out()
        if self._vad:
            self._flush_audio(out)
            self._send(out, [_wire({"realtimeInput": {"audioStreamEnd": True}})])
        elif self._activity_open:
            # audioStreamEnd is only valid with automatic VAD; with manual turns the closed mic ends the turn
            self._end_activity(out, None)
        return out

    def _enc_item_create(self, e: ev.ItemCreate) -> Out:
        item = e.item
        out = Out()
        if e.previous_item_id is not None and e.previous_item_id != self._last_item_id:
            # Gemini only appends: the item goes at the end (reported, never an error: the input is valid)
            out.events += self._unsupported("previous_item_id", "Gemini Live only appends items; added at the end")
        if isinstance(item, ev.Message) and item.role == "system":
            out.events += self._unsupported("item.role", "Gemini Live has no system turn; sent as a user turn")
        self._last_item_id = item.id
        if isinstance(item, ev.FunctionCallOutput) and item.call_id not in self._content_calls:
            return out.extend(self._tool_response(item))
        # Messages (and replayed calls/outputs) wait for ResponseCreate: one clientContent per turn.
        self._pending_items.append(item)
        return out

    def _tool_response(self, item: ev.FunctionCallOutput) -> Out:
        out = Out()
        name = self._call_names.get(item.call_id) or item.name
        if name is None:
            out.events += self._notice_once(
                "param:name", "unsupported_value", "function result without a known function name", "item.name"
            )
        self._live_calls.discard(item.call_id)
        resp: JsonObj = {"id": item.call_id, "name": name or "", "response": _response_object(item.output)}
        if item.call_id in self._minted_calls:
            self._minted_calls.discard(item.call_id)
            del resp["id"]  # Gemini named no id: it matches the response by name
        self._send(out, [_wire({"toolResponse": {"functionResponses": [resp]}})])
        # Gemini continues by itself after a tool response: the client's response.create is a no-op
        self._skip_response_create = True
        # ... except that an OpenAI client waits for the answer to its response.create (by its metadata)
        self._create_owed = self.meta.dialect != "gemini"
        self._late_create = False
        self._trigger = "tool"
        # ... in a turn of its own: its turnComplete (with its usage) closes a response even without output
        self._turn_closed = False
        return out

    def _enc_response_create(self, e: ev.ResponseCreate) -> Out:
        out = Out(events=self._release())  # the answer it asked for, held until now: announced after it
        if e.options is not None:
            for param, is_set in _RESPONSE_UNSUPPORTED.items():
                if is_set(e.options):
                    out.events += self._unsupported(
                        "response." + param, "Gemini Live has no per-response options; ignored"
                    )
        if self._pending_items:
            turns, skipped = self._turns(self._pending_items)
            self._pending_items = []
            if skipped:
                out.events.append(ev.Notice(
                    code="unsupported_value", message="message has no text or transcript to send", param="item"
                ))
            content: JsonObj = {"turns": turns, "turnComplete": True} if turns else {"turnComplete": True}
        elif self._skip_response_create:
            self._skip_response_create = False
            if self._late_create:
                self._late_create = False
                if self._resp is None:  # the client's request gets a response, and takes its metadata
                    rid = self._ids("resp")
                    out.events += [ev.ResponseStarted(response_id=rid), ev.ResponseDone(response_id=rid)]
            return out
        else:
            content = {"turnComplete": True}  # no new input: ask the model to speak now
        self._send(out, [_wire({"clientContent": content})])
        self._skip_response_create = False
        self._trigger = "content"
        return out

    def _enc_truncate(self, e: ev.ItemTruncate) -> Out:
        # No Gemini equivalent; keep it so the history written for the next connection is cut too.
        self.truncations[e.item_id] = e
        return Out()

    def _enc_delete(self, e: ev.ItemDelete) -> Out:
        return Out(events=self._notice_once(
            "type:ItemDelete", "unsupported_event", "Gemini Live cannot delete conversation items", "item_id"
        ))

    def _enc_cancel(self, e: ev.ResponseCancel) -> Out:
        resp = self._resp
        if resp is None or self._drop_output or (e.response_id is not None and e.response_id != resp.id):
            return Out(events=[ev.ProviderError(
                code="response_cancel_not_active", message="there is no response in progress to cancel"
            )])
        # Gemini has no cancel: close the response here and drop the rest of its output.
        events = self._close_response("cancelled", "client_cancelled", item_status="incomplete")
        self._drop_output = True
        self._turn_closed = True
        return Out(events=events)

    # ---------------------------------------------------------------------------------------------
    # user turn bookkeeping

    def _new_user(self, item_id: str | None = None) -> _UserTurn:
        self._user = _UserTurn(id=item_id or self._ids("item"))
        return self._user

    def _commit_user(self, item_id: str | None, *, from_vad: bool) -> list[ev.Event]:
        """InputCommitted for the current user item (made if needed), once per item."""
        user = self._user
        if user is None or user.committed:
            user = self._new_user(item_id)
        elif item_id is not None and not user.speech_started:
            user.id = item_id  # the client named the item and nothing downstream has used our id yet
        events: list[ev.Event] = []
        if from_vad and self._vad:
            # Gemini sends no VAD events by default: synthesize the OpenAI sequence (approximate timing)
            if not user.speech_started:
                events.append(ev.SpeechStarted(item_id=user.id))
            if not user.speech_stopped:
                events.append(ev.SpeechStopped(item_id=user.id))
            user.speech_started = user.speech_stopped = True
        events.append(ev.InputCommitted(item_id=user.id, previous_item_id=self._last_item_id))
        user.committed = True
        self._last_item_id = user.id
        self._audio_since_commit = False
        if user.texts:  # transcripts that arrived while a manual turn was still open
            events.append(ev.InputTranscript(item_id=user.id, text="".join(user.texts)))
        return events

    def _finalize_user(self) -> list[ev.Event]:
        user = self._user
        if user is None or not user.committed:
            return []
        self._user = None
        if user.texts and not user.final_sent:
            return [ev.InputTranscript(item_id=user.id, text="".join(user.texts), final=True)]
        return []

    # ---------------------------------------------------------------------------------------------
    # response bookkeeping

    def _ensure_response(self) -> tuple[_Response, list[ev.Event]]:
        if self._resp is not None:
            return self._resp, []
        events = self._finish_cut()  # new output without the turnComplete of the cut turn: close it first
        user = self._user
        if self._trigger == "audio" and (
            (user is not None and not user.committed) or (user is None and self._audio_since_commit)
        ):
            events += self._commit_user(None, from_vad=True)  # the turn answers audio we never committed
        self._resp = _Response(id=self._ids("resp"))
        self._turn_closed = False
        events.append(ev.ResponseStarted(response_id=self._resp.id))
        return self._resp, events

    def _ensure_item(self, resp: _Response) -> str:
        if resp.item_id is None:
            resp.item_id = self._ids("item")
            self._last_item_id = resp.item_id
        return resp.item_id

    def _close_item(self, resp: _Response, status: str) -> list[ev.Event]:
        if resp.item_id is None:
            return []
        content: list[ev.Content] = []
        if resp.audio or resp.transcript:
            content.append(ev.AudioContent(transcript="".join(resp.transcript) or None))
        if resp.text:
            content.append(ev.TextContent(text="".join(resp.text)))
        msg = ev.Message(id=resp.item_id, role="assistant", content=content, status=status)
        resp.item_id = None
        resp.audio, resp.transcript, resp.text = False, [], []
        return [ev.OutputDone(response_id=resp.id, item=msg)]

    def _close_response(self, status: str, reason: str | None, *, item_status: str) -> list[ev.Event]:
        resp = self._resp
        if resp is None:
            return []
        events = self._close_item(resp, item_status)
        events.append(self._response_done(resp, status, reason))
        self._resp = None
        return events

    def _response_done(self, resp: _Response, status: str, reason: str | None) -> ev.ResponseDone:
        usage, self._usage = self._usage, None
        return ev.ResponseDone(
            response_id=resp.id,
            status=status,  # type: ignore[arg-type]  # values come from the tables' literals
            reason=reason,
            usage=usage,
        )

    def _finish_cut(self) -> list[ev.Event]:
        cut, self._cut = self._cut, None
        return [] if cut is None else [self._response_done(cut, "cancelled", "turn_detected")]

    # ---------------------------------------------------------------------------------------------
    # feed: Gemini server messages -> canonical Down

    def feed(self, frame: str | bytes) -> Out:
        out = self._read(frame)
        if self._withheld is not None:
            self._withheld += out.events
            out.events = []
        elif self._create_owed:
            at = next((i for i, e in enumerate(out.events) if isinstance(e, ev.ResponseStarted)), None)
            if at is not None:  # Gemini answers the tool result before the client asked: hold it
                self._withheld, out.events = out.events[at:], out.events[:at]
                self._hold_token += 1
                out.wake = Wake(self._hold_token, HOLD_FOR_CREATE_S)
        return out

    def wake(self, token: int) -> Out:
        """The hold's time is up and no response.create came: the answer goes out as it is (no metadata),
        and the create still to come gets an empty response of its own (its metadata must not land on a
        later response)."""
        if token != self._hold_token or self._withheld is None:
            return Out()
        self._late_create = True
        return Out(events=self._release())

    def _release(self) -> list[ev.Event]:
        held, self._withheld = self._withheld or [], None
        self._create_owed = False
        return held

    def _read(self, frame: str | bytes) -> Out:
        try:
            msg = msgspec.json.decode(frame)
        except msgspec.DecodeError:
            return self._malformed("frame")
        if not isinstance(msg, dict):
            return self._malformed("frame")
        out = Out()
        present: dict[str, object] = {}
        for key, value in msg.items():
            camel = _camel(key)
            if camel in _TOP_LEVEL:
                present[camel] = value
            else:
                out.events += self._notice_once(
                    "key:" + camel, "unknown_provider_event", "Gemini sent a message the gateway does not map", camel
                )
        for camel, handler in _TOP_LEVEL.items():  # table order = processing order
            if camel in present:
                try:
                    out.extend(handler(self, present[camel]))
                except (_Malformed, ValueError):  # ValueError: bad base64 or mime type
                    out.extend(self._malformed(camel))
        return out

    def _malformed(self, what: str) -> Out:
        return Out(events=self._notice_once(
            "malformed:" + what, "malformed_provider_event", "Gemini sent a message the gateway cannot read", what
        ))

    def _on_setup_complete(self, value: object) -> Out:
        if self._setup_done:
            return Out()
        self._setup_done = True
        held, self._held, self._held_bytes = self._held, [], 0
        return Out(wire=[f for f, _ in held], events=[ev.SessionReady(provider=self.provider, model=self.model)])

    def _on_resumption(self, value: object) -> Out:
        if isinstance(value, dict):
            handle = _gs(value, "newHandle")
            if handle and _g(value, "resumable") is not False:
                self.resumption_handle = handle
        return Out()

    def _on_usage(self, value: object) -> Out:
        if isinstance(value, dict):  # for the ResponseDone of this turn
            self._usage = tables.merge_usage(self._usage, tables.usage_from_gemini(value))
        return Out()

    def _on_tool_cancel(self, value: object) -> Out:
        raw = _g(value, "ids") if isinstance(value, dict) else None
        ids = [i for i in raw if isinstance(i, str)] if isinstance(raw, list) else []
        if not ids:
            raise _Malformed("ids")
        self._live_calls.difference_update(ids)
        return Out(events=[ev.ToolCallCancelled(call_ids=ids)])

    def _on_voice_activity(self, value: object) -> Out:
        if not isinstance(value, dict):
            raise _Malformed("voiceActivity")
        kind = _gs(value, "voiceActivityType") or _gs(value, "type") or _gs(value, "vadSignalType") or ""
        return _VOICE_ACTIVITY.get(kind, _no_activity)(self)

    def _speech_start(self) -> Out:
        user = self._user
        events: list[ev.Event] = []
        if user is not None and user.committed:
            events += self._finalize_user()
            user = None
        user = user or self._new_user()
        if not user.speech_started:
            user.speech_started = True
            events.append(ev.SpeechStarted(item_id=user.id))
        return Out(events=events)

    def _speech_stop(self) -> Out:
        user = self._user
        if user is None or user.speech_stopped or not user.speech_started:
            return Out()
        user.speech_stopped = True
        return Out(events=[ev.SpeechStopped(item_id=user.id)])

    def _on_go_away(self, value: object) -> Out:
        left = parse_duration_ms(_g(value, "timeLeft")) if isinstance(value, dict) else None
        return Out(events=[ev.GoAway(time_left_ms=left or 0)])  # unknown -> "now": the safe reading

    def _on_tool_call(self, value: object) -> Out:
        if not isinstance(value, dict):
            raise _Malformed("toolCall")
        calls = _gl(value, "functionCalls")
        if not calls:
            raise _Malformed("functionCalls")
        events: list[ev.Event] = []
        if self._resp is not None:  # the model spoke before calling: that message is complete
            events += self._close_item(self._resp, "completed")
        # Calls pass even after a local cancel: Gemini waits for their results before it goes on, and
        # no turnComplete follows a toolCall to end the drop.
        self._drop_output = False
        resp, started = self._ensure_response()
        events += started
        for fc in calls:
            call_id = _gs(fc, "id")
            if call_id is None:  # real 3.1 traffic: calls without id; Gemini must not get ours back
                call_id = self._ids("call")
                self._minted_calls.add(call_id)
            name = _gs(fc, "name") or ""
            args = _g(fc, "args")
            arguments = _encoder.encode(args if isinstance(args, dict) else {}).decode()
            item_id = self._ids("item")
            self._call_names[call_id] = name
            self._live_calls.add(call_id)
            self._last_item_id = item_id
            events.append(ev.ToolCall(
                response_id=resp.id, item_id=item_id, call_id=call_id, name=name, arguments=arguments
            ))
            events.append(ev.OutputDone(
                response_id=resp.id,
                item=ev.FunctionCall(id=item_id, call_id=call_id, name=name, arguments=arguments),
            ))
        # Gemini sends no turnComplete after toolCall: the response ends here (contract "ResponseDone")
        events += self._close_response("completed", None, item_status="completed")
        self._turn_closed = True
        return Out(events=events)

    def _on_server_content(self, value: object) -> Out:
        if not isinstance(value, dict):
            raise _Malformed("serverContent")
        out = Out()
        for key in value:
            camel = _camel(key)
            if camel not in _CONTENT and camel not in _CONTENT_IGNORED:
                out.events += self._notice_once(
                    "key:serverContent." + camel, "unknown_provider_event",
                    "Gemini sent content the gateway does not map", "serverContent." + camel,
                )
        for camel, handler in _CONTENT.items():  # table order = processing order
            sub = _g(value, camel)
            if sub is not None and sub is not False:
                # one bad field must not cost the others in the frame (nor events already minted)
                try:
                    out.extend(handler(self, sub, value))
                except (_Malformed, ValueError):
                    out.extend(self._malformed("serverContent." + camel))
        return out

    def _on_input_transcription(self, tr: object, content: JsonObj) -> Out:
        if not isinstance(tr, dict):
            raise _Malformed("inputTranscription")
        text = _gs(tr, "text") or ""
        finished = _g(tr, "finished") is True
        if not text and not finished:
            return Out()
        user = self._user or self._new_user()
        events: list[ev.Event] = []
        if not user.committed:
            if not self._vad and self._activity_open:
                user.texts.append(text)  # manual turn still open: the client's commit names the item
                return Out()
            events += self._commit_user(None, from_vad=True)
        if text:
            user.texts.append(text)
            events.append(ev.InputTranscript(item_id=user.id, text=text))
        if finished and not user.final_sent:
            user.final_sent = True
            events.append(ev.InputTranscript(item_id=user.id, text="".join(user.texts), final=True))
        return Out(events=events)

    def _on_model_turn(self, turn: object, content: JsonObj) -> Out:
        if not isinstance(turn, dict):
            raise _Malformed("modelTurn")
        if self._drop_output:
            return Out()
        out = Out()
        for part in _gl(turn, "parts"):
            if _g(part, "thought") is True:
                continue  # thinking is not output (docs/codec-contract.md "text out")
            kind = next((k for k in _PARTS if _g(part, k) is not None), None)
            if kind is None:
                names = ",".join(sorted(_camel(k) for k in part))
                out.events += self._notice_once(
                    "part:" + names, "unsupported_output", "Gemini sent a part the gateway does not map", names
                )
                continue
            try:
                out.extend(_PARTS[kind](self, _g(part, kind)))
            except (_Malformed, ValueError):  # bad base64 / mime: skip the part, keep the others
                out.extend(self._malformed("modelTurn.parts." + kind))
        return out

    def _on_inline_data(self, blob: object) -> Out:
        if not isinstance(blob, dict):
            raise _Malformed("inlineData")
        rate = parse_pcm_mime(_gs(blob, "mimeType") or "audio/pcm", default_rate=OUTPUT_RATE)
        pcm = b64decode_any(_gs(blob, "data") or "")
        resp, events = self._ensure_response()
        item_id = self._ensure_item(resp)
        resp.audio = True
        events.append(ev.OutputAudio(response_id=resp.id, item_id=item_id, pcm=pcm, rate=rate))
        return Out(events=events)

    def _on_text_part(self, text: object) -> Out:
        if not isinstance(text, str) or not text:
            return Out()
        resp, events = self._ensure_response()
        item_id = self._ensure_item(resp)
        resp.text.append(text)
        events.append(ev.OutputText(response_id=resp.id, item_id=item_id, delta=text))
        return Out(events=events)

    def _on_output_transcription(self, tr: object, content: JsonObj) -> Out:
        if not isinstance(tr, dict):
            raise _Malformed("outputTranscription")
        text = _gs(tr, "text")
        if not text or self._drop_output:
            return Out()
        resp, events = self._ensure_response()  # transcripts are not ordered with modelTurn (§2.4)
        item_id = self._ensure_item(resp)
        resp.transcript.append(text)
        events.append(ev.OutputTranscript(response_id=resp.id, item_id=item_id, delta=text))
        return Out(events=events)

    def _on_interrupted(self, flag: object, content: JsonObj) -> Out:
        # Barge-in: Gemini sends only interrupted (then turnComplete + usageMetadata). Synthesize what
        # OpenAI says: speech_started, the cut response's items (incomplete) now, and response.done
        # (cancelled) at the turnComplete, which carries the usage of the cut turn.
        out = self._speech_start()
        if not self._drop_output:
            resp = self._resp
            out.events.append(ev.Interrupted(
                response_id=resp.id if resp is not None else None,
                generation_complete=resp is not None and resp.generated,
            ))
            if resp is not None:
                out.events += self._close_item(resp, "incomplete")
                self._cut, self._resp = resp, None
        self._drop_output = True  # late transcripts of the cut turn must not open a new response
        self._turn_closed = True
        self._trigger = "audio"
        self._audio_since_commit = True  # the barge-in speech is uncommitted audio
        return out

    def _on_generation_complete(self, flag: object, content: JsonObj) -> Out:
        # OutputDone waits for turnComplete: outputTranscription may still trail generationComplete
        # (no ordering guarantee, the Gemini Live API reference) and the item must carry the whole transcript.
        # Remembered for a barge-in that follows: the Interrupted event says the model had finished.
        if self._resp is not None:
            self._resp.generated = True
        return Out()

    def _on_turn_complete(self, flag: object, content: JsonObj) -> Out:
        events = self._finalize_user() + self._finish_cut()
        if not self._turn_closed and not self._drop_output:
            status, reason = tables.gemini_turn_outcome(_gs(content, "turnCompleteReason"))
            _, started = self._ensure_response()  # a turn without output is still a (empty) response
            events += started
            item_status = "completed" if status == "completed" else "incomplete"
            events += self._close_response(status, reason, item_status=item_status)
        self._resp = None
        self._usage = None  # a turn closed earlier (cancel, tool call) must not leak its usage into the next
        self._turn_closed = False
        self._drop_output = False
        self._trigger = "audio"
        # A response.create still owed for an earlier commit/tool result stays owed past turnComplete: the
        # fake (and a fast model) can finish the turn before the client's response.create arrives, and
        # that late response.create must not start a second answer. Pending items always win over it.
        return Out(events=events)


def _no_activity(codec: GeminiProviderCodec) -> Out:
    return Out()


_ITEM_PARTS: dict[type, Callable[..., tuple[str, list[JsonObj]]]] = {
    ev.Message: GeminiProviderCodec._message_parts,
    ev.FunctionCall: GeminiProviderCodec._call_parts,
    ev.FunctionCallOutput: GeminiProviderCodec._output_parts,
}

# SessionConfig fields Gemini Live cannot take, each with the test that it was set.
_SETUP_UNSUPPORTED: dict[str, Callable[[ev.SessionConfig], bool]] = {
    "tool_choice": lambda c: c.tool_choice not in (None, "auto"),  # no toolConfig in Live setup
    "speed": lambda c: c.speed is not None,
    "transcription_model": lambda c: c.input_transcription and c.transcription_model is not None,
    "transcription_language": lambda c: c.input_transcription and c.transcription_language is not None,
}

# ResponseOptions fields Gemini cannot take per response (docs/codec-contract.md "cannot be mapped").
_RESPONSE_UNSUPPORTED: dict[str, Callable[[ev.ResponseOptions], bool]] = {
    "instructions": lambda o: o.instructions is not None,
    "output_modalities": lambda o: o.output_modalities is not None,
    "voice": lambda o: o.voice is not None,
    "temperature": lambda o: o.temperature is not None,
    "max_output_tokens": lambda o: o.max_output_tokens is not None,
    "tools": lambda o: o.tools is not None,
    "tool_choice": lambda o: o.tool_choice is not None,
    "conversation": lambda o: o.out_of_band,
    "metadata": lambda o: bool(o.metadata),
}

_ENCODERS: dict[type, Callable[..., Out]] = {
    ev.SessionConfig: GeminiProviderCodec._enc_config,
    ev.InputAudio: GeminiProviderCodec._enc_audio,
    ev.InputAudioCommit: GeminiProviderCodec._enc_commit,
    ev.InputAudioClear: GeminiProviderCodec._enc_clear,
    ev.ActivityStart: GeminiProviderCodec._enc_activity_start,
    ev.ActivityEnd: GeminiProviderCodec._enc_activity_end,
    ev.AudioStreamEnd: GeminiProviderCodec._enc_stream_end,
    ev.ItemCreate: GeminiProviderCodec._enc_item_create,
    ev.ItemTruncate: GeminiProviderCodec._enc_truncate,
    ev.ItemDelete: GeminiProviderCodec._enc_delete,
    ev.ResponseCreate: GeminiProviderCodec._enc_response_create,
    ev.ResponseCancel: GeminiProviderCodec._enc_cancel,
}

# Top-level server keys (the Gemini Live API reference), in processing order for frames carrying several:
# usage before serverContent so a turnComplete in the same frame reports it; VAD signals before the
# interrupted they may announce.
_TOP_LEVEL: dict[str, Callable[[GeminiProviderCodec, object], Out]] = {
    "setupComplete": GeminiProviderCodec._on_setup_complete,
    "sessionResumptionUpdate": GeminiProviderCodec._on_resumption,
    "usageMetadata": GeminiProviderCodec._on_usage,
    "toolCallCancellation": GeminiProviderCodec._on_tool_cancel,
    "voiceActivity": GeminiProviderCodec._on_voice_activity,
    "voiceActivityDetectionSignal": GeminiProviderCodec._on_voice_activity,
    "serverContent": GeminiProviderCodec._on_server_content,
    "toolCall": GeminiProviderCodec._on_tool_call,
    "goAway": GeminiProviderCodec._on_go_away,
}

_VOICE_ACTIVITY: dict[str, Callable[[GeminiProviderCodec], Out]] = {
    "ACTIVITY_START": GeminiProviderCodec._speech_start,
    "ACTIVITY_END": GeminiProviderCodec._speech_stop,
    "VAD_SIGNAL_TYPE_SOS": GeminiProviderCodec._speech_start,
    "VAD_SIGNAL_TYPE_EOS": GeminiProviderCodec._speech_stop,
}

# serverContent keys, in processing order: the user's words before the model's, output before the
# interruption or turn end that closes it.
_CONTENT: dict[str, Callable[[GeminiProviderCodec, object, JsonObj], Out]] = {
    "inputTranscription": GeminiProviderCodec._on_input_transcription,
    "modelTurn": GeminiProviderCodec._on_model_turn,
    "outputTranscription": GeminiProviderCodec._on_output_transcription,
    "interrupted": GeminiProviderCodec._on_interrupted,
    "generationComplete": GeminiProviderCodec._on_generation_complete,
    "turnComplete": GeminiProviderCodec._on_turn_complete,
}

# serverContent keys deliberately mapped to nothing, and why.
_CONTENT_IGNORED: frozenset[str] = frozenset(
    {
        "turnCompleteReason",  # read by the turnComplete handler
        "interimInputTranscription",  # provisional text, superseded by inputTranscription
        "waitingForInput",  # implied by turnComplete
        "interactionStatus",  # sent with turnComplete (the Gemini Live API reference)
        "groundingMetadata",  # search grounding: no canonical field
        "urlContextMetadata",
    }
)

# modelTurn part kinds -> handlers
_PARTS: dict[str, Callable[[GeminiProviderCodec, object], Out]] = {
    "inlineData": GeminiProviderCodec._on_inline_data,
    "text": GeminiProviderCodec._on_text_part,
}
