"""The OpenAI dialect end to end: {GA, beta} x {provider openai, provider gemini}, official ``openai`` SDK.

Every pair runs, through the four real processes and the fakes:

1. a spoken turn detected by server VAD (speech_started/stopped, committed, input transcription, answer);
2. a text turn with per-response options (honoured, or an ``rs.notice`` naming each one: never an ``error``);
3. tool calls answered by the client, with a JSON and a non-JSON output;
4. a barge-in on a slow response (cancelled ``turn_detected``), then ``conversation.item.truncate``;
5. a configuration change mid-session (Gemini: a reconnect inside the gateway, invisible to the client);
6. G.711 mu-law and A-law in and out.

Every server frame of every test is checked, from its raw JSON, against the SDK's pydantic server event
union with no field unknown to the SDK (``tests.codecs.validate_openai``; the gateway's own ``rs.*`` events
against their own field sets); ``test_raw_socket_frames`` also drives a plain WebSocket, without the SDK in
between. Any ``error`` event fails: the gateway sends one only for what OpenAI itself would refuse. The SDK
sessions opt in to notices (``rs_notices=1``); when the edge honours it (``session.rs.notices``), every field
the provider could not honour is named by one ``rs.notice``, else none is sent.

What the fakes "hear" (services/fakes/common.py): user audio as its duration (``audio 1.0s``), and a server
VAD segment as the speech plus the prefix padding and the silence that ended it (so a 1 s tone with a
300 ms silence timeout and 10 ms of padding is ``audio 1.3s``). Replies are ``turn <n>: <what was heard>``,
``n`` counting the user messages, so the turn number proves the history the provider holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from openai._models import construct_type_unchecked
from openai.types.beta.realtime import RealtimeServerEvent as BetaServerEvent
from openai.types.realtime import RealtimeServerEvent as GAServerEvent

from services.fakes.common import debug_sessions, reset_knobs, set_knobs
from shared import audio
from shared.codecs import tables

from ..codecs import validate_openai
from ..conftest import RunningStack
from .helpers import API_KEY, TIMEOUT_S, b64, dominant_hz, tone, unb64

pytestmark = pytest.mark.e2e

RATE = 24_000  # the SDK sessions' PCM rate
FRAME_MS = 20
TONE_MS = 1_000
VAD_SILENCE_MS = 300
PREFIX_MS = 10  # the fakes read 0 as "default 300": the smallest padding that stays out of the way
TRAILING_MS = 800  # silence streamed after the tone: more than the VAD needs to end the turn
HEARD_VAD = f"audio {(PREFIX_MS + TONE_MS + VAD_SILENCE_MS) / 1000:.1f}s"
HEARD_COMMIT = f"audio {TONE_MS / 1000:.1f}s"
NEW_INSTRUCTIONS = "Answer like a pirate."
NEW_VOICE = "coral"
SLOW_PACE, SLOW_MS = 1.0, 3_000  # a response that is still streaming when the user speaks

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"}},
        "required": ["city"],
    },
}


@dataclass(frozen=True)
class Dialect:
    """What differs between GA and beta, as the tests need it."""

    beta: bool
    model: str
    audio_delta: str
    transcript_done: str
    item_added: str

    def session(
        self,
        *,
        vad: bool,
        transcription: bool,
        fmt: str = "pcm16",
        instructions: str | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        td = (
            {"type": "server_vad", "silence_duration_ms": VAD_SILENCE_MS, "prefix_padding_ms": PREFIX_MS}
            if vad
            else None
        )
        extra: dict[str, Any] = {}
        if instructions is not None:
            extra["instructions"] = instructions
        if tools is not None:
            extra["tools"] = tools
        if self.beta:
            wire = {"pcm16": "pcm16", "pcmu": "g711_ulaw", "pcma": "g711_alaw"}[fmt]
            return {
                "modalities": ["text", "audio"],
                "voice": "alloy",
                "temperature": 0.8,
                "input_audio_format": wire,
                "output_audio_format": wire,
                "turn_detection": td,
                "input_audio_transcription": {"model": "whisper-1"} if transcription else None,
                **extra,
            }
        ga_format = {"type": "audio/pcm", "rate": RATE} if fmt == "pcm16" else {"type": f"audio/{fmt}"}
        return {
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": ga_format,
                    "turn_detection": td,
                    "transcription": {"model": "gpt-4o-mini-transcribe"} if transcription else None,
                },
                "output": {"format": ga_format, "voice": "marin"},
            },
            **extra,
        }

    def reconfigure(self, instructions: str, voice: str) -> dict[str, Any]:
        if self.beta:
            return {"instructions": instructions, "voice": voice}
        return {"type": "realtime", "instructions": instructions, "audio": {"output": {"voice": voice}}}

    def options(self, instructions: str) -> tuple[dict[str, Any], set[str]]:
        """Per-response options, and the params the gateway must name as unhonoured whatever the provider.

        A per-response output format differing from the session's cannot be honoured (one output format
        per session); beta's ``temperature`` has no place in OpenAI GA (the upstream) nor Gemini Live. The
        session's own modalities repeated per response (as Pipecat does) are simply the session's: no notice.
        """
        if self.beta:
            opts = {
                "instructions": instructions,
                "temperature": 0.7,
                "output_audio_format": "g711_ulaw",
                "modalities": ["text", "audio"],
            }
            return opts, {"response.output_audio_format", "response.temperature"}
        opts = {
            "instructions": instructions,
            "audio": {"output": {"format": {"type": "audio/pcmu"}}},
            "output_modalities": ["audio"],
        }
        return opts, {"response.audio.output.format"}


GA = Dialect(
    beta=False,
    model="gpt-realtime",
    audio_delta="response.output_audio.delta",
    transcript_done="response.output_audio_transcript.done",
    item_added="conversation.item.added",
)
BETA = Dialect(
    beta=True,
    model="gpt-4o-realtime-preview",
    audio_delta="response.audio.delta",
    transcript_done="response.audio_transcript.done",
    item_added="conversation.item.created",
)
DIALECTS = {False: GA, True: BETA}
# Session fields each provider cannot honour, as the client is told (param of the rs.notice):
# OpenAI GA (the upstream) has no temperature; Gemini Live has no choice of transcription model.
SESSION_WARNINGS: dict[tuple[bool, str], set[str]] = {
    (False, "openai"): set(),
    (True, "openai"): {"temperature"},
    (False, "gemini"): {"transcription_model"},
    (True, "gemini"): {"transcription_model"},
}
PAIRS = pytest.mark.parametrize(
    ("beta", "provider"),
    [(False, "openai"), (True, "openai"), (False, "gemini"), (True, "gemini")],
    ids=["ga-openai", "beta-openai", "ga-gemini", "beta-gemini"],
)


# --------------------------------------------------------------------------------------------------
# A client that validates every frame it receives


@dataclass
class Client:
    """Receives raw frames, validates each strictly against the SDK's union, then parses it as the SDK does.

    ``recv_text`` is the transport (the SDK connection's ``recv_bytes`` or a plain socket). An ``error`` event
    fails the test; the params of ``rs.notice`` events are collected in ``warnings``.
    """

    d: Dialect
    recv_text: Callable[[], Any]
    parse: Callable[[str], Any]
    warnings: list[str] = field(default_factory=list)
    received: int = 0

    async def recv(self) -> Any:
        raw = await self.recv_text()
        text = raw.decode() if isinstance(raw, bytes) else raw
        obj = validate_openai(text, beta=self.d.beta)
        self.received += 1
        event = self.parse(text)  # the SDK's parse: an rs.* type parses too, keeping its type
        assert event.type == obj["type"]
        assert event.type != "error", f"error event: {event}"
        if obj["type"] == "rs.notice":
            assert obj["code"] and obj["message"], obj
            self.warnings.append(obj["param"])
        return event

    async def until(self, event_type: str, timeout: float = TIMEOUT_S) -> list[Any]:
        """Events up to and including the first of ``event_type``."""
        seen: list[Any] = []
        async with asyncio.timeout(timeout):
            while True:
                seen.append(await self.recv())
                if seen[-1].type == event_type:
                    return seen


@dataclass
class SdkSession:
    conn: Any
    client: Client
    d: Dialect
    notices: bool  # the edge honoured rs_notices=1 (session.rs.notices): unhonoured fields are named

    def expect_warnings(self, params: set[str]) -> set[str]:
        return params if self.notices else set()

    async def configure(self, session: dict[str, Any]) -> Any:
        await self.conn.session.update(session=session)
        return (await self.client.until("session.updated"))[-1]

    async def say(self, text: str, response: dict[str, Any] | None = None) -> list[Any]:
        await self.conn.conversation.item.create(item=_user_text(text))
        if response is None:
            await self.conn.response.create()
        else:
            await self.conn.response.create(response=response)
        return await self.client.until("response.done")

    async def append(self, data: bytes, frame_bytes: int) -> None:
        for i in range(0, len(data), frame_bytes):
            await self.conn.input_audio_buffer.append(audio=b64(data[i : i + frame_bytes]))


@contextlib.asynccontextmanager
async def sdk_session(running: RunningStack, provider: str, beta: bool) -> AsyncIterator[SdkSession]:
    d = DIALECTS[beta]
    openai_client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{running.ws_base}/v1")
    connect = openai_client.beta.realtime.connect if beta else openai_client.realtime.connect
    async with connect(model=d.model, extra_query={"rs_core": provider, "rs_notices": "1"}) as conn:
        client = Client(d, conn.recv_bytes, conn.parse_event)
        created = await asyncio.wait_for(client.recv(), TIMEOUT_S)
        assert created.type == "session.created"
        rs = (created.session.model_extra or {})["rs"]  # the SDK keeps the gateway's field
        assert rs["provider"] == provider
        yield SdkSession(conn, client, d, notices=rs.get("notices", False))


def _user_text(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _of(events: list[Any], event_type: str) -> list[Any]:
    return [e for e in events if e.type == event_type]


def _index(events: list[Any], event_type: str) -> int:
    types = [e.type for e in events]
    assert event_type in types, f"no {event_type} in {types}"
    return types.index(event_type)


def _transcripts(d: Dialect, events: list[Any]) -> list[str]:
    return [e.transcript for e in _of(events, d.transcript_done)]


def _audio(d: Dialect, events: list[Any]) -> bytes:
    return b"".join(unb64(e.delta) for e in _of(events, d.audio_delta))


def _assert_tone(pcm: bytes, rate: int, min_ms: int = 300) -> None:
    assert len(pcm) >= rate * min_ms // 1000 * 2, f"only {len(pcm)} bytes of audio"
    assert abs(dominant_hz(pcm, rate) - 440) < 440 * 0.01


async def _fake_session(
    running: RunningStack,
    provider: str,
    marker: str,
    until: Callable[[dict[str, Any]], bool] = lambda s: True,
) -> dict[str, Any]:
    """The newest fake upstream session whose conversation or configuration mentions ``marker``, once
    ``until`` holds for it (the fake's debug view is polled: it may lag the events the client got)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT_S
    while True:
        sessions = await debug_sessions(running.fake_ports[provider], include_closed=True)
        found = [
            s
            for s in sessions
            if marker in " ".join(str(item.get("text") or "") for item in s["items"])
            or marker in json.dumps(s["config"])
        ]
        newest = max(found, key=lambda s: (s["live"], s["created_at"])) if found else None
        if newest is not None and until(newest):
            return newest
        assert loop.time() < deadline, f"no fake {provider} session mentions {marker!r} as expected: {newest}"
        await asyncio.sleep(0.05)


# --------------------------------------------------------------------------------------------------
# Steps of the session scenario (one connection per pair, turn numbers run on)


async def _spoken_vad_turn(s: SdkSession, n: int) -> None:
    """Tone then silence, 20 ms frames, server VAD: the provider detects, commits and answers."""
    d = s.d
    pcm = tone(440, TONE_MS, RATE) + bytes(RATE * TRAILING_MS // 1000 * 2)
    await s.append(pcm, RATE * FRAME_MS // 1000 * 2)
    events = await s.client.until("response.done")
    started = _of(events, "input_audio_buffer.speech_started")
    stopped = _of(events, "input_audio_buffer.speech_stopped")
    committed = _of(events, "input_audio_buffer.committed")
    assert len(started) == len(stopped) == len(committed) == 1, [e.type for e in events]
    assert (
        _index(events, "input_audio_buffer.speech_started")
        < _index(events, "input_audio_buffer.speech_stopped")
        < _index(events, "input_audio_buffer.committed")
        < _index(events, "response.created")
    )
    item_id = committed[0].item_id
    assert started[0].item_id == stopped[0].item_id == item_id
    added = [e for e in _of(events, d.item_added) if e.item.id == item_id]
    assert added and added[0].item.role == "user" and added[0].item.content[0].type == "input_audio"
    heard = _of(events, "conversation.item.input_audio_transcription.completed")
    assert [(e.item_id, e.transcript) for e in heard] == [(item_id, HEARD_VAD)]
    assert _transcripts(d, events) == [f"turn {n}: {HEARD_VAD}"]
    _assert_tone(_audio(d, events), RATE)
    done = events[-1].response
    assert done.status == "completed"
    assert [o.type for o in done.output] == ["message"]


async def _options_turn(s: SdkSession, running: RunningStack, provider: str, n: int, marker: str) -> None:
    """Per-response options: honoured by the provider, or named in an ``rs.notice``."""
    d = s.d
    instructions = f"Be brief {marker}"
    options, unsupported = d.options(instructions)
    metadata = {"client_event_id": f"lk_{marker}"}  # LiveKit finds its reply by this
    options = {**options, "metadata": metadata}
    if provider == "gemini":  # Gemini Live has no per-response instructions
        unsupported = unsupported | {"response.instructions"}
    before = len(s.client.warnings)
    events = await s.say(f"options {marker}", options)
    assert set(s.client.warnings[before:]) == s.expect_warnings(unsupported)
    assert _transcripts(d, events) == [f"turn {n}: options {marker}"]
    _assert_tone(_audio(d, events), RATE)  # the session's format, not the per-response one
    assert events[-1].response.status == "completed"
    created = _of(events, "response.created")
    assert [c.response.metadata for c in created] == [metadata]
    assert events[-1].response.metadata == metadata and events[-1].response.id == created[0].response.id
    if provider == "openai":  # the instructions reached the provider with this response only
        fake = await _fake_session(
            running, provider, marker, lambda f: f"options {marker}" in json.dumps(f["response_log"])
        )
        assert fake["response_log"][-1]["instructions"] == instructions
        assert fake["config"]["instructions"] == f"matrix {marker}"


async def _tool_turn(s: SdkSession, n: int, ask: str, output: str) -> None:
    """The fake calls get_weather; the client answers; the reply quotes the output as the provider got it."""
    d = s.d
    events = await s.say(ask)
    types = [e.type for e in events]
    order = [
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.done",
    ]
    assert [t for t in types if t in order] == order, types
    added = _of(events, "response.output_item.added")[0].item
    assert (added.type, added.name, added.status) == ("function_call", "get_weather", "in_progress")
    args_done = _of(events, "response.function_call_arguments.done")[0]
    assert json.loads(args_done.arguments) == {"text": ask}
    assert "".join(e.delta for e in _of(events, "response.function_call_arguments.delta")) == args_done.arguments
    if not d.beta:  # GA names the function on .done; beta's type has no name there
        assert args_done.name == "get_weather"
    item = _of(events, "response.output_item.done")[0].item
    assert (item.type, item.name, item.status, item.id) == ("function_call", "get_weather", "completed", added.id)
    assert item.call_id == args_done.call_id and json.loads(item.arguments) == {"text": ask}
    done = events[-1].response
    assert done.status == "completed"
    assert [(o.type, o.call_id) for o in done.output] == [("function_call", item.call_id)]
    assert not _of(events, d.audio_delta)

    await s.conn.conversation.item.create(
        item={"type": "function_call_output", "call_id": item.call_id, "output": output}
    )
    await s.conn.response.create()
    events = await s.client.until("response.done")
    ack = _of(events, d.item_added)[0].item
    assert (ack.type, ack.call_id, ack.output) == ("function_call_output", item.call_id, output)
    assert _transcripts(d, events) == [f"turn {n}: tool get_weather returned {output}"]
    assert events[-1].response.status == "completed"


async def _barge_in(s: SdkSession, running: RunningStack, provider: str, n: int, marker: str) -> None:
    """Speech during a slow response cancels it (turn_detected); the client truncates what it played."""
    d = s.d
    port = running.fake_ports[provider]
    fake_id = (await _fake_session(running, provider, marker))["id"]
    # Knobs for this upstream session only: the stack is shared with other tests.
    await set_knobs(port, session=fake_id, pace=SLOW_PACE, response_ms=SLOW_MS)
    try:
        await s.conn.conversation.item.create(item=_user_text(f"tell me a long story {marker}"))
        await s.conn.response.create()
        first = (await s.client.until(d.audio_delta))[-1]
        await s.append(tone(440, TONE_MS, RATE), RATE * FRAME_MS // 1000 * 2)
        events = await s.client.until("response.done")
    finally:  # before the next answer starts streaming
        with contextlib.suppress(RuntimeError):  # 404 once the session is gone: nothing left to reset
            await reset_knobs(port, session=fake_id)
    assert _index(events, "input_audio_buffer.speech_started") < len(events) - 1
    cut = events[-1].response
    assert cut.id == first.response_id
    assert cut.status == "cancelled" and cut.status_details.reason == "turn_detected"
    assert [(o.id, o.status) for o in cut.output] == [(first.item_id, "incomplete")]
    played = [first.delta] + [e.delta for e in _of(events, d.audio_delta) if e.item_id == first.item_id]
    played_ms = sum(len(unb64(x)) for x in played) // 2 * 1000 // RATE
    assert 0 < played_ms < 2_000, "the response was cut well before its 3 s"

    end_ms = played_ms // 2
    await s.conn.conversation.item.truncate(item_id=first.item_id, content_index=0, audio_end_ms=end_ms)
    truncated = (await s.client.until("conversation.item.truncated"))[-1]
    assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (first.item_id, 0, end_ms)

    await s.append(bytes(RATE * TRAILING_MS // 1000 * 2), RATE * FRAME_MS // 1000 * 2)
    events = await s.client.until("response.done")
    assert _index(events, "input_audio_buffer.speech_stopped") < _index(events, "input_audio_buffer.committed")
    assert _transcripts(d, events) == [f"turn {n}: {HEARD_VAD}"]
    assert events[-1].response.status == "completed"
    if provider == "openai":  # the truncation reached the provider's copy of the item
        fake = await _fake_session(running, provider, marker)
        item = next(i for i in fake["items"] if i["id"] == first.item_id)
        assert item["audio_ms"] == end_ms and item["text"] is None


async def _reconfigure(s: SdkSession, running: RunningStack, provider: str, n: int, marker: str) -> None:
    """New instructions and voice mid-session; the conversation goes on where it was, and the client sees
    nothing of the reconnect Gemini needs for it (any error frame fails the test)."""
    d = s.d
    before = await _fake_session(running, provider, marker)
    updated = await s.configure(d.reconfigure(NEW_INSTRUCTIONS, NEW_VOICE))
    assert updated.session.instructions == NEW_INSTRUCTIONS
    voice = updated.session.voice if d.beta else updated.session.audio.output.voice
    assert voice == NEW_VOICE
    events = await s.say(f"after the change {marker}")
    fake = await _fake_session(running, provider, marker)
    assert fake["live"]
    if provider == "openai":
        assert _transcripts(d, events) == [f"turn {n}: after the change {marker}"]
        assert fake["id"] == before["id"]  # changed in place
        assert fake["config"]["instructions"] == NEW_INSTRUCTIONS
        assert fake["config"]["audio"]["output"]["voice"] == NEW_VOICE
        return
    # One setup per Gemini connection: a new upstream session, its history restored from the gateway's log.
    assert fake["id"] != before["id"]
    old = next(
        x for x in await debug_sessions(running.fake_ports[provider], include_closed=True) if x["id"] == before["id"]
    )
    assert (old["live"], old["close_code"], old["close_reason"]) == (False, 1000, "reconfigure")
    setup = fake["config"]
    assert setup["systemInstruction"]["parts"] == [{"text": NEW_INSTRUCTIONS}]
    voice_name = setup["generationConfig"]["speechConfig"]["voiceConfig"]["prebuiltVoiceConfig"]["voiceName"]
    assert voice_name == tables.to_gemini_voice(NEW_VOICE) == "Kore"
    # Everything the user said is there, in order. The reply cut before any transcript has nothing to replay,
    # so the story and the speech that cut it are two user turns in a row: kept two (gemini_provider._turns
    # joins no two user messages), the fake counts every user message and the turn number goes on.
    said = [i["text"] for i in old["items"] if i["role"] == "user"]
    replayed = [i["text"] for i in fake["items"] if i["role"] == "user"]
    assert replayed == [*said, f"after the change {marker}"]
    assert replayed[-3:-1] == [f"tell me a long story {marker}", HEARD_VAD]
    assert _transcripts(d, events) == [f"turn {n}: after the change {marker}"]


@PAIRS
async def test_session_scenario(running: RunningStack, provider: str, beta: bool) -> None:
    """Steps 1-5 on one connection per pair; each turn number proves the provider kept the whole history."""
    marker = uuid.uuid4().hex[:10]
    d = DIALECTS[beta]
    async with sdk_session(running, provider, beta) as s:
        updated = await s.configure(
            d.session(vad=True, transcription=True, instructions=f"matrix {marker}", tools=[WEATHER_TOOL])
        )
        assert [t.name for t in updated.session.tools] == ["get_weather"]

        await _spoken_vad_turn(s, 1)
        # Session-level fields the provider cannot take are named, never dropped silently.
        assert set(s.client.warnings) == s.expect_warnings(SESSION_WARNINGS[beta, provider])

        await _options_turn(s, running, provider, 2, marker)
        await _tool_turn(
            s, 3, f"what does get_weather say for Paris {marker}", json.dumps({"temp_c": 21, "sky": "clear"})
        )
        await _tool_turn(s, 4, f"and get_weather for Oslo {marker}", "sunny, 21 C")
        await _barge_in(s, running, provider, 6, marker)  # turn 5 is the story that was cut
        told = len(s.client.warnings)
        await _reconfigure(s, running, provider, 7, marker)
        assert s.client.warnings[told:] == [], "the client was already told; a reconnect must not show"
        assert s.client.received > 100


# --------------------------------------------------------------------------------------------------
# G.711


G711 = {"pcmu": (audio.pcm16_to_ulaw, audio.ulaw_to_pcm16), "pcma": (audio.pcm16_to_alaw, audio.alaw_to_pcm16)}


@PAIRS
async def test_g711_in_and_out(running: RunningStack, provider: str, beta: bool) -> None:
    """mu-law then A-law at 8 kHz: the provider hears PCM of the right length and pitch, the client gets
    G.711 8 kHz back whose decoded pitch is the fake's 440 Hz."""
    marker = uuid.uuid4().hex[:10]
    d = DIALECTS[beta]
    async with sdk_session(running, provider, beta) as s:
        for n, (fmt, (encode, decode)) in enumerate(G711.items(), start=1):
            updated = await s.configure(d.session(vad=False, transcription=False, fmt=fmt, instructions=marker))
            wire_format = updated.session.input_audio_format if beta else updated.session.audio.input.format.type
            assert wire_format == {"pcmu": ("audio/pcmu", "g711_ulaw"), "pcma": ("audio/pcma", "g711_alaw")}[fmt][beta]
            await s.append(encode(tone(440, TONE_MS, 8_000)), 8_000 * FRAME_MS // 1000)  # 1 byte a sample
            await s.conn.input_audio_buffer.commit()
            await s.conn.response.create()
            events = await s.client.until("response.done")
            assert _of(events, "input_audio_buffer.committed")
            assert _transcripts(d, events) == [f"turn {n}: {HEARD_COMMIT}"]
            _assert_tone(decode(_audio(d, events)), 8_000)

    fake = await _fake_session(running, provider, marker)
    spoken = [i for i in fake["items"] if i["role"] == "user"]
    assert [i["text"] for i in spoken] == [HEARD_COMMIT, HEARD_COMMIT]
    for item in spoken:  # resampled 8 kHz -> the provider's rate: same duration, same pitch
        assert abs(item["audio_ms"] - TONE_MS) <= 20
        assert abs(item["audio_hz"] - 440) <= 5
    assert fake["input_rate"] == (24_000 if provider == "openai" else 16_000)


# --------------------------------------------------------------------------------------------------
# Raw frames, no SDK in between


@PAIRS
async def test_raw_socket_frames(running: RunningStack, provider: str, beta: bool) -> None:
    """A plain WebSocket on /v1/realtime (Bearer key, ``OpenAI-Beta`` for beta): every frame of a text turn,
    a spoken turn and a tool round trip validates against the SDK's types with no unknown field."""
    marker = uuid.uuid4().hex[:10]
    d = DIALECTS[beta]
    headers = {"Authorization": f"Bearer {API_KEY}"} | ({"OpenAI-Beta": "realtime=v1"} if beta else {})
    url = f"{running.ws_base}/v1/realtime?model={d.model}&rs_core={provider}"
    adapter = _sdk_parser(beta)
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        client = Client(d, ws.recv, adapter)

        async def send(event: dict[str, Any]) -> None:
            await ws.send(json.dumps(event))

        assert (await client.recv()).type == "session.created"
        await send(
            {
                "type": "session.update",
                "session": d.session(vad=False, transcription=True, instructions=f"raw {marker}", tools=[WEATHER_TOOL]),
            }
        )
        await client.until("session.updated")

        await send({"type": "conversation.item.create", "item": _user_text(f"hi {marker}")})
        await send({"type": "response.create"})
        assert _transcripts(d, await client.until("response.done")) == [f"turn 1: hi {marker}"]

        pcm = tone(440, TONE_MS, RATE)
        for i in range(0, len(pcm), RATE * FRAME_MS // 1000 * 2):
            await send({"type": "input_audio_buffer.append", "audio": b64(pcm[i : i + RATE * FRAME_MS // 1000 * 2])})
        await send({"type": "input_audio_buffer.commit"})
        await send({"type": "response.create"})
        events = await client.until("response.done")
        assert _transcripts(d, events) == [f"turn 2: {HEARD_COMMIT}"]
        assert [e.transcript for e in _of(events, "conversation.item.input_audio_transcription.completed")] == [
            HEARD_COMMIT
        ]

        ask = f"get_weather in Rome {marker}"
        await send({"type": "conversation.item.create", "item": _user_text(ask)})
        await send({"type": "response.create"})
        call = _of(await client.until("response.done"), "response.output_item.done")[0].item
        assert call.type == "function_call" and json.loads(call.arguments) == {"text": ask}
        output = json.dumps({"temp_c": 30})
        await send(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": call.call_id, "output": output},
            }
        )
        await send({"type": "response.create"})
        events = await client.until("response.done")
        assert _transcripts(d, events) == [f"turn 3: tool get_weather returned {output}"]
        assert client.received > 40


def _sdk_parser(beta: bool) -> Callable[[str], Any]:
    """What the SDK connection's ``parse_event`` does (lenient), for attribute access after the strict check."""
    union: Any = BetaServerEvent if beta else GAServerEvent
    return lambda text: construct_type_unchecked(value=json.loads(text), type_=union)
