"""Fake Gemini Live server (``BidiGenerateContent``), written from the provider's wire protocol
(what the google-genai SDK sends and accepts; see docs/fakes.md).

Independent of the gateway (it imports nothing of ``shared``). One :class:`GeminiSession` per connection:

* the client speaks first: the first frame must be ``setup`` (else close 1007), answered by ``{"setupComplete":{}}``;
* every incoming key is normalised snake -> camel at every level before dispatch, except inside free-form
  ``google.protobuf.Struct``/schema payloads (``response``, ``args``, ``parameters``, ``*JsonSchema``), whose keys
  are user data and which the real proto-JSON parser keeps verbatim too;
* base64 is accepted in both alphabets, padded or not; server frames are camelCase JSON text frames;
* there is no in-band error: bad input closes the socket with 1007 and a short reason, a missing API key with 1008.
  The key check happens after the upgrade, when the first frame arrives, so the SDK reports ``APIError(1008)``
  from ``connect()`` ("1008 policy or auth", as the real server) instead of a failed handshake;
* responses are deterministic (``services.fakes.conversation.plan_reply``) and streamed by a task, so pacing and
  barge-in (``interrupted``) work; a tool call leaves the turn open until ``toolResponse`` continues it.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
import ssl as ssl_module
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.fakes.audio import stand_in_transcript, tone
from services.fakes.conversation import (
    IdGen,
    Item,
    audio_tokens,
    context_tokens,
    plan_reply,
    split_text,
    text_tokens,
    tool_output_text,
)
from services.fakes.knobs import Knobs
from services.fakes.server import FakeServer, json_response
from services.fakes.session import SessionBase, Streamer
from services.fakes.vad import EnergyVad, SpeechStarted
from services.fakes.wire import Spec, b64decode_any, b64encode, find_unknown_key, json_decode, json_encode

__all__ = ["GeminiFake", "GeminiSession", "camelize", "start"]

PATH_RE = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(v1|v1beta|v1alpha)\.GenerativeService\."
    r"(BidiGenerateContent|BidiGenerateContentConstrained)$"
)
OUTPUT_RATE = 24_000
DEFAULT_INPUT_RATE = 16_000
SETUP_TIMEOUT_S = 30.0
_RATE_RE = re.compile(r"rate=(\d+)")
_HANDLES_KEPT = 10_000

# Close reasons in the real server's wording where it is known.
INVALID_ARGUMENT = "Request contains an invalid argument."
NO_KEY = "Method doesn't allow unregistered callers. Please use API Key or other form of API consumer identity."
CAP_REASON = "Deadline expired before operation could complete."

# Struct / schema payloads: their keys are user data, never renamed (see module docstring).
_OPAQUE = frozenset({"response", "args", "parameters", "parametersJsonSchema", "responseJsonSchema", "responseSchema"})

_MESSAGES: Spec = {
    "setup": {
        **dict.fromkeys(
            (
                "model",
                "generationConfig",
                "systemInstruction",
                "tools",
                "contextWindowCompression",
                "inputAudioTranscription",
                "outputAudioTranscription",
                "proactivity",
                "historyConfig",
                "avatarConfig",
                "safetySettings",
                "labels",
                "explicitVadSignal",
            )
        ),
        "sessionResumption": {"handle": None, "transparent": None},
        "realtimeInputConfig": {
            "automaticActivityDetection": dict.fromkeys(
                (
                    "disabled",
                    "startOfSpeechSensitivity",
                    "endOfSpeechSensitivity",
                    "prefixPaddingMs",
                    "silenceDurationMs",
                )
            ),
            "activityHandling": None,
            "turnCoverage": None,
        },
    },
    "realtimeInput": dict.fromkeys(
        ("audio", "video", "text", "mediaChunks", "audioStreamEnd", "activityStart", "activityEnd")
    ),
    "clientContent": dict.fromkeys(("turns", "turnComplete")),
    "toolResponse": dict.fromkeys(("functionResponses",)),
    "contextUpdate": dict.fromkeys(("systemInstruction", "tools")),
}


@functools.lru_cache(maxsize=512)
def _camel(key: str) -> str:
    head, *rest = key.split("_")
    return head + "".join(word[:1].upper() + word[1:] for word in rest)


def camelize(value: Any) -> Any:
    """snake_case -> camelCase keys at every level, Struct/schema payloads excepted (kept verbatim)."""
    if isinstance(value, dict):
        out = {}
        for key, sub in value.items():
            name = _camel(key) if isinstance(key, str) else key
            out[name] = sub if name in _OPAQUE else camelize(sub)
        return out
    if isinstance(value, list):
        return [camelize(sub) for sub in value]
    return value


class _Fatal(Exception):
    """Close the session with this code and reason (Gemini has no in-band error)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Turn(Streamer):
    """One model turn being streamed; ``input_transcript`` goes out first when input transcription is on."""

    def __init__(self, input_transcript: str | None) -> None:
        super().__init__()
        self.input_transcript = input_transcript


def _unknown_field(path: str) -> _Fatal:
    *parent, name = path.split(".")
    where = ".".join(parent) or "message"
    return _Fatal(1007, f"Invalid JSON payload received. Unknown name \"{name}\" at '{where}': Cannot find field.")


class GeminiSession(SessionBase):
    """One fake Gemini Live session. Owns the history, the VAD or manual activity buffer, pending tool calls."""

    provider = "gemini"

    def __init__(self, server: GeminiFake, ws: ServerConnection) -> None:
        self.ids = IdGen()
        super().__init__(server, ws, f"gsess_{self.ids.token}")
        self.server: GeminiFake = server
        match = PATH_RE.match(self.path)
        self.dialect = match.group(1) if match else "v1beta"
        request = ws.request
        assert request is not None
        self.has_key = bool(
            request.headers.get("x-goog-api-key")
            or request.headers.get("Authorization", "").startswith("Token ")
            or self.query.get("key")
            or self.query.get("access_token")
        )
        self.setup: dict[str, Any] = {}
        self.input_rate = DEFAULT_INPUT_RATE
        self.text_mode = False
        self.manual_activity = False
        self.interrupts = True
        self.silence_ms = 500
        self.prefix_ms = 300
        self.vad: EnergyVad | None = None
        self.activity: bytearray | None = None  # manual mode: audio between activityStart and activityEnd
        self.pending_calls: dict[str, str] = {}  # function call id -> name, until toolResponse
        self.active: _Turn | None = None
        self.resumed_from: str | None = None
        self.handles: list[str] = []

    # -- plumbing ---------------------------------------------------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        await self.outbox.send(json_encode(message))

    def config_view(self) -> Any:
        return self.setup

    def extra_debug(self) -> dict[str, Any]:
        return {
            "resumed_from": self.resumed_from,
            "handles": self.handles[-5:],
            "pending_calls": sorted(self.pending_calls),
        }

    @property
    def include_thoughts(self) -> bool:
        """``generationConfig.thinkingConfig.includeThoughts``: thinking models then send thought parts first."""
        thinking = (self.setup.get("generationConfig") or {}).get("thinkingConfig") or {}
        return isinstance(thinking, dict) and bool(thinking.get("includeThoughts"))

    @property
    def tool_names(self) -> list[str]:
        names = []
        for tool in self.setup.get("tools") or []:
            if isinstance(tool, dict):
                names += [d.get("name", "") for d in tool.get("functionDeclarations") or [] if isinstance(d, dict)]
        return names

    def _parse(self, raw: str | bytes) -> tuple[str, Any]:
        """One client frame -> (its single top-level key, camelCase body); anything else is fatal."""
        try:
            msg = json_decode(raw)
        except msgspec.DecodeError:
            raise _Fatal(1007, "Invalid JSON payload received.") from None
        if not isinstance(msg, dict) or len(msg) != 1:
            raise _Fatal(1007, INVALID_ARGUMENT)
        msg = camelize(msg)
        if unknown := find_unknown_key(msg, _MESSAGES, ""):
            raise _unknown_field(unknown)
        key, body = next(iter(msg.items()))
        if not isinstance(body, dict):
            raise _Fatal(1007, INVALID_ARGUMENT)
        return key, body

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            try:
                first = await asyncio.wait_for(self.ws.recv(), SETUP_TIMEOUT_S)
            except TimeoutError:
                raise _Fatal(1007, "setup was not received in time.") from None
            if not self.has_key:
                raise _Fatal(1008, NO_KEY)
            key, body = self._parse(first)
            if key != "setup":
                raise _Fatal(1007, "The first message must be setup.")
            await self._on_setup(body)
            async for raw in self.ws:
                key, body = self._parse(raw)
                await _HANDLERS[key](self, body)
        except _Fatal as fatal:
            await self.outbox.close(fatal.code, fatal.reason)
            await self.outbox.wait_finished(5.0)  # the close must go out before the handler returns
        except ConnectionClosed:
            pass

    async def _after_setup_timers(self) -> None:
        self.start_timers()
        go_away = self.knobs().go_away_after_s
        if go_away is not None:
            self.spawn(self._after(go_away, self._go_away), name="fake-gemini-goaway")

    def on_knobs_set(self, names: Collection[str]) -> None:
        # go_away_after_s set on a live session (chaos): its goAway counts from now.
        go_away = self.knobs().go_away_after_s
        if "go_away_after_s" in names and go_away is not None:
            self.spawn(self._after(go_away, self._go_away), name="fake-gemini-goaway")

    async def _go_away(self) -> None:
        left = self.knobs().go_away_time_left_s
        await self.send({"goAway": {"timeLeft": f"{left:g}s"}})
        self.spawn(self._after(left, self.on_session_cap), name="fake-gemini-goaway-close")

    async def on_session_cap(self) -> None:
        await self.outbox.close(self.knobs().session_cap_code or 1011, CAP_REASON)

    # -- setup ------------------------------------------------------------------------------------------------------

    async def _on_setup(self, setup: dict[str, Any]) -> None:
        model = setup.get("model")
        if not isinstance(model, str) or not model.startswith(("models/", "tunedModels/")):
            raise _Fatal(1007, INVALID_ARGUMENT)  # the SDK always sends models/<name>
        generation = setup.get("generationConfig") or {}
        modalities = generation.get("responseModalities") or ["AUDIO"]
        if not isinstance(modalities, list) or len(modalities) != 1 or modalities[0] not in ("AUDIO", "TEXT"):
            raise _Fatal(1007, INVALID_ARGUMENT)
        realtime = setup.get("realtimeInputConfig") or {}
        detection = realtime.get("automaticActivityDetection") or {}
        handle = (setup.get("sessionResumption") or {}).get("handle")
        if handle:
            snapshot = self.server.handles.get(handle)
            if snapshot is None:
                raise _Fatal(1007, "Invalid session resumption handle.")  # wording/code not verified
            self.items = [item.copy() for item in snapshot]
            self.resumed_from = handle
        self.setup = setup
        self.model = model.split("/", 1)[1]
        self.text_mode = modalities[0] == "TEXT"
        self.manual_activity = bool(detection.get("disabled"))
        self.interrupts = realtime.get("activityHandling", "START_OF_ACTIVITY_INTERRUPTS") != "NO_INTERRUPTION"
        self.silence_ms = int(detection.get("silenceDurationMs") or 500)
        self.prefix_ms = int(detection.get("prefixPaddingMs") or 300)
        await self.send({"setupComplete": {}})
        await self._after_setup_timers()

    async def _on_second_setup(self, body: dict[str, Any]) -> None:
        raise _Fatal(1007, "setup must be sent once, as the first message.")

    async def _on_context_update(self, body: dict[str, Any]) -> None:
        if "systemInstruction" in body:
            self.setup["systemInstruction"] = body["systemInstruction"]
        if "tools" in body:
            tools = body["tools"]
            self.setup["tools"] = tools.get("tools", []) if isinstance(tools, dict) else tools

    # -- realtime input ---------------------------------------------------------------------------------------------

    async def _on_realtime_input(self, body: dict[str, Any]) -> None:
        # Order within one message: open activity, audio, text, close activity, end of stream.
        if body.get("activityStart") is not None:
            await self._activity_start()
        if body.get("audio") is not None:
            await self._audio_blob(body["audio"], "realtime_input.audio")
        chunks = body.get("mediaChunks") or []
        if not isinstance(chunks, list):
            raise _Fatal(1007, INVALID_ARGUMENT)
        for i, blob in enumerate(chunks):
            await self._audio_blob(blob, f"realtime_input.media_chunks[{i}]")
        if body.get("video") is not None:
            self._blob_bytes(body["video"], "realtime_input.video")  # validated, not "seen"
        if body.get("text") is not None:
            text = body["text"]
            if not isinstance(text, str):
                raise _Fatal(1007, INVALID_ARGUMENT)
            await self._user_interrupts()
            self.items.append(Item(id=self.ids("item"), type="message", role="user", text=text))
            await self._start_turn(None)
        if body.get("activityEnd") is not None:
            await self._activity_end()
        if body.get("audioStreamEnd"):
            if self.manual_activity:
                raise _Fatal(1007, "audioStreamEnd is only allowed with automatic activity detection.")
            if self.vad is not None and (stopped := self.vad.flush()) is not None:
                await self._user_audio_turn(stopped.pcm, self.vad.rate)

    def _blob_bytes(self, blob: Any, where: str) -> tuple[bytes, str]:
        if not isinstance(blob, dict) or not isinstance(blob.get("mimeType"), str):
            raise _Fatal(1007, f"Invalid value at '{where}': mimeType is required.")
        try:
            return b64decode_any(blob.get("data")), blob["mimeType"]
        except ValueError:
            raise _Fatal(1007, f"Invalid value at '{where}.data' (TYPE_BYTES), Base64 decoding failed.") from None

    async def _audio_blob(self, blob: Any, where: str) -> None:
        data, mime = self._blob_bytes(blob, where)
        if mime.startswith(("image/", "video/")):
            return  # media chunks may carry video frames; the fake does not look at them
        if not mime.startswith("audio/pcm"):
            raise _Fatal(1007, f"Unsupported mime type {mime[:40]!r} at '{where}'.")
        rate_match = _RATE_RE.search(mime)
        rate = int(rate_match.group(1)) if rate_match else DEFAULT_INPUT_RATE
        self.input_rate = rate
        if self.manual_activity:
            if self.activity is not None:  # TURN_INCLUDES_ONLY_ACTIVITY: audio outside activity is ignored
                self.activity += data
            return
        if self.vad is None or self.vad.rate != rate:
            # A rate change mid-stream restarts detection (the partial segment is dropped).
            start = self.vad.elapsed_ms if self.vad else 0
            self.vad = EnergyVad(
                rate,
                threshold_rms=self.knobs().vad_rms,
                silence_ms=self.silence_ms,
                prefix_padding_ms=self.prefix_ms,
                start_ms=start,
            )
        for event in self.vad.feed(data):
            if isinstance(event, SpeechStarted):
                await self._user_interrupts()
            else:
                await self._user_audio_turn(event.pcm, rate)

    async def _activity_start(self) -> None:
        if not self.manual_activity:
            raise _Fatal(1007, "activityStart requires automaticActivityDetection.disabled.")
        if self.activity is None:
            self.activity = bytearray()
            await self._user_interrupts()

    async def _activity_end(self) -> None:
        if not self.manual_activity:
            raise _Fatal(1007, "activityEnd requires automaticActivityDetection.disabled.")
        if self.activity is None:
            return
        pcm, self.activity = bytes(self.activity), None
        if len(pcm) >= 2:
            await self._user_audio_turn(pcm, self.input_rate)

    async def _user_interrupts(self) -> None:
        """User activity: cancel pending tool calls and barge into a streaming turn (unless NO_INTERRUPTION)."""
        if not self.interrupts:
            return
        if self.pending_calls:
            ids, self.pending_calls = list(self.pending_calls), {}
            await self.send({"toolCallCancellation": {"ids": ids}})
        if self.active is not None and not self.active.done:
            await self.active.cancel("interrupted")

    async def _user_audio_turn(self, pcm: bytes, rate: int) -> None:
        pcm = pcm[: len(pcm) // 2 * 2]
        text = stand_in_transcript(len(pcm) // 2, rate)
        self.items.append(Item(id=self.ids("item"), type="message", role="user", text=text, pcm=pcm, rate=rate))
        await self._start_turn(text if "inputAudioTranscription" in self.setup else None)

    # -- client content and tool responses --------------------------------------------------------------------------

    async def _on_client_content(self, body: dict[str, Any]) -> None:
        turns = body.get("turns") or []
        if not isinstance(turns, list):
            raise _Fatal(1007, INVALID_ARGUMENT)
        await self._user_interrupts()  # client content interrupts any current generation
        for i, turn in enumerate(turns):
            self.items += self._turn_items(turn, f"client_content.turns[{i}]")
        if body.get("turnComplete"):
            await self._start_turn(None)

    def _turn_items(self, turn: Any, where: str) -> list[Item]:
        if not isinstance(turn, dict) or not isinstance(turn.get("parts", []), list):
            raise _Fatal(1007, INVALID_ARGUMENT)
        role = {"user": "user", "model": "assistant"}.get(turn.get("role", "user"))
        if role is None:
            raise _Fatal(1007, f"Invalid value at '{where}.role': must be user or model.")
        items: list[Item] = []
        texts: list[str] = []
        pcm = bytearray()
        rate = DEFAULT_INPUT_RATE if role == "user" else OUTPUT_RATE
        for j, part in enumerate(turn.get("parts", [])):
            if not isinstance(part, dict):
                raise _Fatal(1007, INVALID_ARGUMENT)
            if isinstance(part.get("text"), str):
                if not part.get("thought"):
                    texts.append(part["text"])
            elif "inlineData" in part:
                data, mime = self._blob_bytes(part["inlineData"], f"{where}.parts[{j}].inline_data")
                if mime.startswith("audio/pcm"):
                    rate_match = _RATE_RE.search(mime)
                    rate = int(rate_match.group(1)) if rate_match else rate
                    pcm += data[: len(data) // 2 * 2]
                    texts.append(stand_in_transcript(len(data) // 2, rate))
            elif isinstance(part.get("functionCall"), dict):
                call = part["functionCall"]
                call_id = call.get("id") or self.ids("fc")
                arguments = json.dumps(call.get("args") or {}, ensure_ascii=False)
                items.append(
                    Item(id=call_id, type="function_call", call_id=call_id, name=call.get("name"), arguments=arguments)
                )
            elif isinstance(part.get("functionResponse"), dict):
                resp = part["functionResponse"]
                items.append(
                    Item(
                        id=self.ids("item"),
                        type="function_call_output",
                        call_id=resp.get("id"),
                        name=resp.get("name"),
                        output=tool_output_text(resp.get("response")),
                    )
                )
        if texts or pcm or not items:
            message = Item(
                id=self.ids("item"),
                type="message",
                role=role,
                text=" ".join(texts),
                pcm=bytes(pcm) or None,
                rate=rate if pcm else None,
            )
            items.insert(0, message)
        return items

    async def _on_tool_response(self, body: dict[str, Any]) -> None:
        responses = body.get("functionResponses")
        if not isinstance(responses, list) or not responses:
            raise _Fatal(1007, INVALID_ARGUMENT)
        for i, resp in enumerate(responses):
            where = f"tool_response.function_responses[{i}]"
            if not isinstance(resp, dict) or not isinstance(resp.get("id"), str) or not resp["id"]:
                raise _Fatal(1007, f"Invalid value at '{where}.id': the function call id is required.")
            if not isinstance(resp.get("name"), str) or not resp["name"]:
                raise _Fatal(1007, f"Invalid value at '{where}.name': the function name is required.")
            self.pending_calls.pop(resp["id"], None)
            self.items.append(
                Item(
                    id=self.ids("item"),
                    type="function_call_output",
                    call_id=resp["id"],
                    name=resp["name"],
                    output=tool_output_text(resp.get("response")),
                )
            )
        if not self.pending_calls:  # the model continues on its own once every call is answered
            await self._start_turn(None)

    # -- model turns ------------------------------------------------------------------------------------------------

    async def _start_turn(self, input_transcript: str | None) -> None:
        if self.active is not None and not self.active.done:
            await self.active.wait()  # NO_INTERRUPTION: the new turn follows the current one
        turn = _Turn(input_transcript)
        self.active = turn
        self.responses += 1
        turn.task = self.spawn(self._run_turn(turn), name="fake-gemini-turn")

    def _usage(self, context: list[Item], out_text: str, out_audio_ms: int) -> dict[str, Any]:
        in_text, in_audio = context_tokens(context)
        out_modality = "TEXT" if self.text_mode else "AUDIO"
        out_tokens = text_tokens(out_text) if self.text_mode else audio_tokens(out_audio_ms)
        thoughts = self.knobs().thoughts_tokens
        usage: dict[str, Any] = {
            "promptTokenCount": in_text + in_audio,
            "responseTokenCount": out_tokens,
            # Thinking models count thoughts in the total but not in responseTokenCount.
            "totalTokenCount": in_text + in_audio + out_tokens + thoughts,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": in_text},
                {"modality": "AUDIO", "tokenCount": in_audio},
            ],
            "responseTokensDetails": [{"modality": out_modality, "tokenCount": out_tokens}],
        }
        if thoughts:
            usage["thoughtsTokenCount"] = thoughts
        return usage

    async def _run_turn(self, turn: _Turn) -> None:
        """The real order: inputTranscription, modelTurn parts (+ outputTranscription), generationComplete,
        turnComplete + usageMetadata; or interrupted + turnComplete on barge-in; or a toolCall that keeps the
        turn open."""
        await self.fault_point("request")
        if turn.input_transcript is not None:
            await self.send({"serverContent": {"inputTranscription": {"text": turn.input_transcript}}})
        context = list(self.items)
        plan = plan_reply(context, self.tool_names)
        await turn.hold(self.knobs().first_audio_delay_ms / 1000)
        if turn.cancel_reason is None and self.include_thoughts:
            thought = {"text": f"thinking about turn {plan.n}", "thought": True}
            await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [thought]}}})
        if plan.tool is not None and turn.cancel_reason is None:
            call_id = f"fc_{plan.n}"
            args = {"text": plan.text}
            self.items.append(
                Item(
                    id=call_id,
                    type="function_call",
                    call_id=call_id,
                    name=plan.tool,
                    arguments=json.dumps(args, ensure_ascii=False),
                )
            )
            self.pending_calls[call_id] = plan.tool
            await self.send({"toolCall": {"functionCalls": [{"id": call_id, "name": plan.tool, "args": args}]}})
            await self.fault_point("response")
            return  # no turnComplete: the turn stays open until toolResponse continues it
        knobs = self.knobs()
        said: list[str] = []
        sent = bytearray()
        if self.text_mode:
            for i, piece in enumerate(split_text(plan.text, max(1, len(plan.text.split())))):
                if not await turn.pace(i, self.knobs()):
                    break
                await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [{"text": piece}]}}})
                said.append(piece)
                if i == 0:
                    await self.fault_point("response")
        else:
            await self._stream_audio(turn, knobs, plan.text, said, sent)
        out_text = "".join(said)
        if turn.cancel_reason is None:
            await self.send({"serverContent": {"generationComplete": True}})
        else:
            await self.send({"serverContent": {"interrupted": True}})
        audio_ms = round(len(sent) / 2 * 1000 / OUTPUT_RATE)
        await self.send(
            {"serverContent": {"turnComplete": True}, "usageMetadata": self._usage(context, out_text, audio_ms)}
        )
        self.items.append(
            Item(
                id=self.ids("item"),
                type="message",
                role="assistant",
                text=out_text,
                pcm=bytes(sent) or None,
                rate=OUTPUT_RATE if sent else None,
                status="incomplete" if turn.cancel_reason else "completed",
            )
        )
        if "sessionResumption" in self.setup:
            await self._issue_handle()

    async def _stream_audio(self, turn: _Turn, knobs: Knobs, text: str, said: list[str], sent: bytearray) -> None:
        pcm = tone(knobs.tone_hz, knobs.response_ms, OUTPUT_RATE)
        step = max(2, OUTPUT_RATE * knobs.chunk_ms // 1000 * 2)
        chunks = [pcm[i : i + step] for i in range(0, len(pcm), step)] or [b""]
        pieces = split_text(text, len(chunks))
        transcribe = "outputAudioTranscription" in self.setup
        for i, chunk in enumerate(chunks):
            if not await turn.pace(i, self.knobs()):
                break
            if chunk:
                part = {"inlineData": {"mimeType": f"audio/pcm;rate={OUTPUT_RATE}", "data": b64encode(chunk)}}
                await self.send({"serverContent": {"modelTurn": {"role": "model", "parts": [part]}}})
                sent += chunk
                if i == 0:
                    await self.fault_point("response")
            if pieces[i]:
                said.append(pieces[i])
                if transcribe:
                    await self.send({"serverContent": {"outputTranscription": {"text": pieces[i]}}})

    async def _issue_handle(self) -> None:
        handle = self.ids("handle")
        self.server.remember_handle(handle, [item.copy() for item in self.items])
        self.handles.append(handle)
        await self.send({"sessionResumptionUpdate": {"newHandle": handle, "resumable": True}})


# Top-level client messages , after camelCase normalisation.
_HANDLERS: dict[str, Callable[[GeminiSession, dict[str, Any]], Awaitable[None]]] = {
    "setup": GeminiSession._on_second_setup,
    "realtimeInput": GeminiSession._on_realtime_input,
    "clientContent": GeminiSession._on_client_content,
    "toolResponse": GeminiSession._on_tool_response,
    "contextUpdate": GeminiSession._on_context_update,
}


class GeminiFake(FakeServer):
    """Fake Gemini Live endpoint; keeps resumption handles in memory across its sessions."""

    name = "fake-gemini"

    def __init__(self, *, knobs: Knobs | None = None) -> None:
        super().__init__(knobs=knobs)
        self.handles: dict[str, list[Item]] = {}

    def remember_handle(self, handle: str, items: list[Item]) -> None:
        self.handles[handle] = items
        while len(self.handles) > _HANDLES_KEPT:  # dicts keep insertion order: drop the oldest
            self.handles.pop(next(iter(self.handles)))

    def check_upgrade(
        self, conn: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        if not PATH_RE.match(path):
            return json_response(conn, 404, {"error": {"code": 404, "message": "Not Found", "status": "NOT_FOUND"}})
        return None  # the API key is checked after the upgrade (close 1008), see the module docstring

    def refusal(self, conn: ServerConnection, status: int) -> Response:
        state = "RESOURCE_EXHAUSTED" if status == 429 else "UNAVAILABLE"
        return json_response(conn, status, {"error": {"code": status, "message": "refused by fake", "status": state}})

    def new_session(self, ws: ServerConnection) -> GeminiSession:
        return GeminiSession(self, ws)


async def start(
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    ssl_context: ssl_module.SSLContext | None = None,
    knobs: Knobs | None = None,
) -> GeminiFake:
    """Start the fake in this event loop (``wss`` when ``ssl_context`` is given; the SDK needs it, 4.2).

    ``port=0`` picks a free port (``server.port``); stop with ``close()``. ``knobs`` defaults to ``FAKE_*`` env.
    """
    server = GeminiFake(knobs=knobs)
    await server.start(host, port, ssl=ssl_context)
    return server
