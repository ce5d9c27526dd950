"""The fake OpenAI Realtime server (services.fakes.openai) and the shared fake machinery (services.fakes.*).

Driven with raw ``websockets`` clients (exact frames, error cases) and with the official ``openai`` SDK (GA and beta
dialects, Azure routing) against the real server's documented behaviour. Every wait is for a specific event
under ``TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import sys
import time
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from openai import AsyncAzureOpenAI, AsyncOpenAI
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.fakes import openai as fake_openai
from services.fakes.audio import PCMA, PCMU, decode_to_pcm16, dominant_hz, encode_from_pcm16, tone
from services.fakes.control import debug_sessions, http_request, reset_knobs, set_knobs
from services.fakes.conversation import Item, plan_reply, split_text
from services.fakes.knobs import Knobs
from services.fakes.openai.server import OpenAIFake
from services.fakes.vad import EnergyVad, SpeechStarted, SpeechStopped
from services.fakes.wire import b64decode_any, b64decode_std

TIMEOUT_S = 5.0
SECRET = "sk-test-secret-value"
RATE = 24_000


def silence(ms: int, rate: int = RATE) -> bytes:
    return bytes(rate * ms // 1000 * 2)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def chunks(data: bytes, rate: int = RATE, ms: int = 20) -> list[bytes]:
    step = rate * ms // 1000 * 2
    return [data[i : i + step] for i in range(0, len(data), step)]


def collapse(types: list[str]) -> list[str]:
    """Runs of the same delta type -> one entry, so an order assertion does not depend on the chunk count."""
    out: list[str] = []
    for t in types:
        if not (t.endswith(".delta") and out and out[-1] == t):
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# shared fake machinery: pure helpers


def test_vad_reports_padded_start_silence_stop_and_the_segment() -> None:
    vad = EnergyVad(RATE, silence_ms=500, prefix_padding_ms=300)
    audio = silence(500) + tone(440, 600, RATE) + silence(600)
    events = [e for chunk in chunks(audio) for e in vad.feed(chunk)]
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert started == SpeechStarted(200)  # 500 ms onset minus 300 ms prefix padding
    assert isinstance(stopped, SpeechStopped)
    assert stopped.end_ms == 1600  # 1100 ms end of speech + 500 ms of silence
    assert len(stopped.pcm) == (300 + 600 + 500) * RATE // 1000 * 2
    assert not vad.in_speech and vad.elapsed_ms == 1700


def test_vad_quiet_audio_and_flush() -> None:
    vad = EnergyVad(16_000)
    assert vad.feed(tone(440, 500, 16_000, amplitude=300)) == []  # RMS ~212 < 500
    assert vad.flush() is None
    events = vad.feed(tone(440, 250, 16_000))
    assert events == [SpeechStarted(200)]
    stopped = vad.flush()
    assert stopped is not None and stopped.end_ms == 750
    assert len(stopped.pcm) == (300 + 250) * 16 * 2


def _ref_ulaw_encode(x: np.ndarray) -> np.ndarray:
    """Independent reference (the classic Sun g711.c algorithm), to check the fakes' tables."""
    x = x.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8)


def test_g711_tables_agree_with_an_independent_reference() -> None:
    pcm = tone(440, 200, 8000)
    samples = np.frombuffer(pcm, "<i2")
    ulaw = _ref_ulaw_encode(samples).tobytes()
    decoded = np.frombuffer(decode_to_pcm16(ulaw, PCMU), "<i2")
    assert np.max(np.abs(decoded.astype(int) - samples)) <= 1024  # within one quantisation step
    assert decode_to_pcm16(bytes([0xFF, 0x7F, 0x00]), PCMU) == np.array([0, 0, -32124], "<i2").tobytes()
    assert decode_to_pcm16(bytes([0xD5, 0x55]), PCMA) == np.array([8, -8], "<i2").tobytes()
    if sys.version_info < (3, 13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import audioop

        codes = bytes(range(256))
        assert decode_to_pcm16(codes, PCMU) == audioop.ulaw2lin(codes, 2)
        assert decode_to_pcm16(codes, PCMA) == audioop.alaw2lin(codes, 2)
    for encoding in (PCMU, PCMA):  # encode(decode(code)) decodes to the same value
        codes = bytes(range(256))
        linear = decode_to_pcm16(codes, encoding)
        assert decode_to_pcm16(encode_from_pcm16(linear, encoding), encoding) == linear


def test_dominant_hz_tells_a_mislabelled_rate_apart() -> None:
    pcm16k = tone(440, 1000, 16_000)
    assert dominant_hz(pcm16k, 16_000) == 440
    assert dominant_hz(pcm16k, 24_000) == 660  # 16 kHz audio declared as 24 kHz
    assert dominant_hz(silence(500), RATE) is None
    assert dominant_hz(tone(1000, 10, RATE), RATE) is None  # too short to say


def test_base64_helpers() -> None:
    assert b64decode_any("_9j_") == b"\xff\xd8\xff"  # URL-safe, as the Gemini SDK sends it
    assert b64decode_any("AQ") == b64decode_any("AQ==") == b"\x01"
    assert b64decode_std("AQ==") == b"\x01"
    for bad in ("_9j_", "AQ", "!!!!"):
        with pytest.raises(ValueError):
            b64decode_std(bad)
    for bad in ("A", "AQ=A", "!!!!", "AQ===", 5):
        with pytest.raises(ValueError):
            b64decode_any(bad)


def test_plan_reply_and_split_text() -> None:
    user = Item(id="u1", type="message", role="user", text="hello")
    assert plan_reply([user]) == plan_reply([user], ["absent"])
    assert plan_reply([user, user]).text == "turn 2: hello"
    call = plan_reply([Item(id="u", type="message", role="user", text="use get_time now")], ["x", "get_time"])
    assert (call.tool, json.loads(call.arguments or "")) == ("get_time", {"text": "use get_time now"})
    done = [
        Item(id="u", type="message", role="user", text="use get_time"),
        Item(id="c", type="function_call", call_id="call_1", name="get_time", arguments="{}"),
        Item(id="o", type="function_call_output", call_id="call_1", output="noon"),
    ]
    assert plan_reply(done, ["get_time"]).text == "turn 1: tool get_time returned noon"
    for slots in (1, 3, 10):
        assert "".join(split_text("turn 1: hello  there", slots)) == "turn 1: hello  there"
    assert len(split_text("a b", 10)) == 10


def test_knobs_from_env_and_validation() -> None:
    knobs = Knobs.from_env({"FAKE_LATENCY_MS": "25", "FAKE_STALL_AFTER": "none", "FAKE_PACE": "0.25", "OTHER": "1"})
    assert (knobs.latency_ms, knobs.stall_after, knobs.pace) == (25.0, None, 0.25)
    with pytest.raises(ValueError):
        Knobs.from_env({"FAKE_CHUNK_MS": "0"})
    with pytest.raises(ValueError):
        Knobs.from_env({"FAKE_PACE": "fast"})
    faults = Knobs.from_env({"FAKE_STALL_ON": "request", "FAKE_CLOSE_ON": "none", "FAKE_FIRST_AUDIO_DELAY_MS": "80"})
    assert (faults.stall_on, faults.close_on, faults.first_audio_delay_ms) == ("request", None, 80.0)
    with pytest.raises(ValueError, match="stall_on"):
        Knobs.from_env({"FAKE_STALL_ON": "sometimes"})
    with pytest.raises(ValueError):
        Knobs.from_env({"FAKE_THOUGHTS_TOKENS": "-1"})


# ---------------------------------------------------------------------------------------------------------------------
# raw-client plumbing


@pytest.fixture
async def server() -> AsyncIterator[OpenAIFake]:
    srv = await fake_openai.start(knobs=Knobs())
    yield srv
    await srv.close()


class Raw:
    """A raw websockets client that records every server event, so order can be asserted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[dict[str, Any]] = []

    async def send(self, **event: Any) -> None:
        await self.ws.send(json.dumps(event))

    async def next(self) -> dict[str, Any]:
        event = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
        self.events.append(event)
        return event

    async def until(self, etype: str) -> dict[str, Any]:
        while True:
            event = await self.next()
            if event["type"] == etype:
                return event

    async def collect_until(self, etype: str) -> list[dict[str, Any]]:
        start = len(self.events)
        await self.until(etype)
        return self.events[start:]

    async def append(self, pcm: bytes, rate: int = RATE) -> None:
        for chunk in chunks(pcm, rate):
            await self.send(type="input_audio_buffer.append", audio=b64(chunk))


@asynccontextmanager
async def raw_session(
    port: int,
    *,
    beta: bool = False,
    path: str = "/v1/realtime?model=gpt-realtime",
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Raw]:
    extra = {"Authorization": f"Bearer {SECRET}", **({"OpenAI-Beta": "realtime=v1"} if beta else {}), **(headers or {})}
    async with connect(f"ws://127.0.0.1:{port}{path}", additional_headers=extra, max_size=None) as ws:
        client = Raw(ws)
        first = await client.next()
        assert first["type"] == "session.created"
        yield client


def session_id(client: Raw) -> str:
    return client.events[0]["session"]["id"]


async def only_session(port: int) -> dict[str, Any]:
    sessions = await debug_sessions(port)
    assert len(sessions) == 1
    return sessions[0]


# ---------------------------------------------------------------------------------------------------------------------
# SDK: GA and beta


AUDIO_TURN_ORDER = [
    "session.updated",
    "input_audio_buffer.committed",
    "conversation.item.added",
    "conversation.item.done",
    "conversation.item.input_audio_transcription.delta",
    "conversation.item.input_audio_transcription.completed",
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.delta",
    "response.output_audio_transcript.delta",
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "conversation.item.done",
    "response.output_item.done",
    "response.done",
    "rate_limits.updated",
]


async def test_ga_sdk_manual_audio_turn_follows_protocol_order(server: OpenAIFake) -> None:
    client = AsyncOpenAI(api_key=SECRET, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    events: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime", extra_query={"foo": "bar"}) as conn:
        created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert created.type == "session.created" and created.session.type == "realtime"
        await conn.session.update(
            session={
                "type": "realtime",
                "instructions": "be brief",
                "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
            }
        )
        await conn.input_audio_buffer.append(audio=b64(tone(440, 1000, RATE)))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        while not events or events[-1].type != "rate_limits.updated":
            events.append(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
    types = [e.type for e in events]
    assert collapse(types) == AUDIO_TURN_ORDER
    ids = [created.event_id, *(e.event_id for e in events)]
    assert len(set(ids)) == len(ids) and all(ids)
    by_type = {e.type: e for e in events}
    user_item = events[types.index("conversation.item.added")].item
    assert user_item.role == "user" and user_item.content[0].type == "input_audio"
    assert by_type["conversation.item.input_audio_transcription.completed"].transcript == "audio 1.0s"
    # GA content_part events say `audio`; the item itself says `output_audio` (real GA servers do both).
    assert by_type["response.content_part.added"].part.type == "audio"
    assert by_type["response.content_part.done"].part.type == "audio"
    assert by_type["response.output_item.done"].item.content[0].type == "output_audio"
    transcript = "turn 1: audio 1.0s"
    assert "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta") == transcript
    assert by_type["response.output_audio_transcript.done"].transcript == transcript
    audio = b"".join(base64.b64decode(e.delta) for e in events if e.type == "response.output_audio.delta")
    assert len(audio) == 400 * RATE // 1000 * 2 and dominant_hz(audio, RATE) == 440
    assert sum(t == "response.output_audio.delta" for t in types) == 10  # 400 ms in 40 ms chunks
    done = by_type["response.done"].response
    assert done.status == "completed" and done.output[0].content[0].transcript == transcript
    assert done.usage.output_token_details.audio_tokens == 8 and done.usage.input_token_details.audio_tokens == 20

    (session,) = await debug_sessions(server.port, include_closed=True)
    assert session["dialect"] == "ga" and session["model"] == "gpt-realtime"
    assert session["query"] == {"model": "gpt-realtime", "foo": "bar"}
    assert session["headers"]["authorization"] == "<redacted>" and SECRET not in json.dumps(session)
    assert (session["input_rate"], session["turns"], session["responses"]) == (24_000, 1, 1)
    assert session["config"]["instructions"] == "be brief"
    assert session["config"]["audio"]["output"]["format"] == {"type": "audio/pcm", "rate": 24_000}  # merged, kept
    user, assistant = session["items"]
    assert user | {"id": None} == {
        "id": None,
        "type": "message",
        "role": "user",
        "text": "audio 1.0s",
        "audio_ms": 1000,
        "audio_hz": 440,
        "call_id": None,
        "name": None,
        "arguments": None,
        "output": None,
        "status": "completed",
    }
    assert (assistant["role"], assistant["text"], assistant["audio_ms"]) == ("assistant", transcript, 400)


async def test_beta_sdk_text_response_uses_beta_names_and_shapes(server: OpenAIFake) -> None:
    client = AsyncOpenAI(api_key=SECRET, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    events: list[Any] = []
    async with client.beta.realtime.connect(model="gpt-4o-realtime-preview") as conn:
        created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert created.session.modalities == ["text", "audio"] and created.session.input_audio_format == "pcm16"
        await conn.session.update(session={"modalities": ["text"], "turn_detection": None})
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}
        )
        await conn.response.create()
        while not events or events[-1].type != "rate_limits.updated":
            events.append(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
    assert collapse([e.type for e in events]) == [
        "session.updated",
        "conversation.item.created",
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "response.text.delta",
        "response.text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "rate_limits.updated",
    ]
    by_type = {e.type: e for e in events}
    assert by_type["response.text.done"].text == "turn 1: hello there"
    assert by_type["response.content_part.done"].part.type == "text"
    assert by_type["response.done"].response.modalities == ["text"]
    (session,) = await debug_sessions(server.port, include_closed=True)
    assert session["dialect"] == "beta" and session["headers"]["openai-beta"] == "realtime=v1"
    assert [i["text"] for i in session["items"]] == ["hello there", "turn 1: hello there"]


async def test_ga_sdk_function_call_round_trip(server: OpenAIFake) -> None:
    client = AsyncOpenAI(api_key=SECRET, websocket_base_url=f"ws://127.0.0.1:{server.port}/v1")
    tool = {"type": "function", "name": "get_weather", "description": "w", "parameters": {"type": "object"}}
    async with client.realtime.connect(model="gpt-realtime") as conn:
        await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        await conn.session.update(session={"type": "realtime", "output_modalities": ["text"], "tools": [tool]})
        text = "what does get_weather say for Paris?"
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
        )
        await conn.response.create()
        first: list[Any] = []
        while not first or first[-1].type != "response.done":
            first.append(await asyncio.wait_for(conn.recv(), TIMEOUT_S))
        assert collapse([e.type for e in first]) == [
            "session.updated",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "conversation.item.done",
            "response.output_item.done",
            "response.done",
        ]
        by_type = {e.type: e for e in first}
        added = by_type["response.output_item.added"].item
        assert (added.type, added.call_id, added.name, added.arguments) == (
            "function_call",
            "call_1",
            "get_weather",
            "",
        )
        args_done = by_type["response.function_call_arguments.done"]
        assert args_done.name == "get_weather" and json.loads(args_done.arguments) == {"text": text}
        assert by_type["response.done"].response.output[0].call_id == "call_1"

        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": "call_1", "output": '{"temp": 20}'}
        )
        await conn.response.create()
        while (event := await asyncio.wait_for(conn.recv(), TIMEOUT_S)).type != "response.output_text.done":
            pass
        assert event.text == 'turn 1: tool get_weather returned {"temp": 20}'
    (session,) = await debug_sessions(server.port, include_closed=True)
    assert [(i["type"], i["call_id"], i["name"]) for i in session["items"][1:3]] == [
        ("function_call", "call_1", "get_weather"),
        ("function_call_output", "call_1", None),
    ]


async def test_azure_routing_with_the_sdk_and_raw_rejections() -> None:
    server = await fake_openai.start(azure=True, knobs=Knobs())
    try:
        for api_version, beta in (("2025-04-01-preview", True), ("2025-08-28", False)):
            client = AsyncAzureOpenAI(
                api_key=SECRET,
                api_version=api_version,
                azure_endpoint=f"http://127.0.0.1:{server.port}",
                websocket_base_url=f"ws://127.0.0.1:{server.port}/openai",
            )
            realtime = client.beta.realtime if beta else client.realtime
            async with realtime.connect(model="my-deployment") as conn:
                created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
                assert created.type == "session.created" and created.session.model == "my-deployment"
                assert ("modalities" in created.session.model_dump()) is beta
        base = f"ws://127.0.0.1:{server.port}/openai/realtime"
        cases = [
            (f"{base}?api-version=2025-04-01-preview&deployment=d", {}, 401),
            (f"{base}?deployment=d", {"api-key": "k"}, 404),
            (f"{base}?api-version=2025-04-01-preview", {"api-key": "k"}, 404),
            (f"ws://127.0.0.1:{server.port}/v1/realtime?model=m", {"api-key": "k"}, 404),
        ]
        for url, headers, status in cases:
            with pytest.raises(InvalidStatus) as info:
                async with connect(url, additional_headers=headers):
                    pass
            assert info.value.response.status_code == status
    finally:
        await server.close()


# ---------------------------------------------------------------------------------------------------------------------
# raw: handshake, errors, VAD, barge-in, items, out-of-band


async def test_upgrade_requires_bearer_path_and_model(server: OpenAIFake) -> None:
    base = f"ws://127.0.0.1:{server.port}"
    cases = [
        ("/v1/realtime?model=m", {}, 401),
        ("/v1/realtime?model=m", {"Authorization": "Bearer "}, 401),
        ("/v2/realtime?model=m", {"Authorization": "Bearer k"}, 404),
        ("/v1/realtime", {"Authorization": "Bearer k"}, 400),
    ]
    for path, headers, status in cases:
        with pytest.raises(InvalidStatus) as info:
            async with connect(base + path, additional_headers=headers):
                pass
        assert info.value.response.status_code == status
    async with raw_session(server.port, path="/realtime?model=gpt-realtime") as client:
        assert client.events[0]["session"]["model"] == "gpt-realtime"


BAD_INPUT = [
    ("{not json", "invalid_json", None, None),
    (json.dumps([1, 2]), "invalid_type", None, None),
    (json.dumps({"type": "nope", "event_id": "e1"}), "invalid_value", "type", "e1"),
    (json.dumps({"event_id": "e2"}), "missing_required_parameter", "type", "e2"),
    (json.dumps({"type": "session.update", "event_id": "e3"}), "missing_required_parameter", "session", "e3"),
    (
        json.dumps({"type": "session.update", "session": {"instructions": "x"}}),
        "missing_required_parameter",
        "session.type",
        None,
    ),
    (
        json.dumps({"type": "session.update", "session": {"type": "realtime", "foo": 1}}),
        "unknown_parameter",
        "session.foo",
        None,
    ),
    (
        json.dumps(
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": {"type": "audio/mp3"}}}},
            }
        ),
        "invalid_value",
        "session.audio.input.format.type",
        None,
    ),
    (
        json.dumps({"type": "input_audio_buffer.commit", "event_id": "e4"}),
        "input_audio_buffer_commit_empty",
        None,
        "e4",
    ),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "@@@"}), "invalid_value", "audio", None),
    (json.dumps({"type": "input_audio_buffer.append", "audio": "AA", "extra": 1}), "unknown_parameter", "extra", None),
    (json.dumps({"type": "response.cancel", "event_id": "e5"}), "response_cancel_not_active", None, "e5"),
    (
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}]},
            }
        ),
        "invalid_value",
        "item.content[0].type",
        None,
    ),
    (
        json.dumps({"type": "conversation.item.create", "item": {"type": "function_call_output", "call_id": "c"}}),
        "missing_required_parameter",
        "item.output",
        None,
    ),
    (json.dumps({"type": "conversation.item.retrieve", "item_id": "missing"}), "item_not_found", "item_id", None),
    (
        json.dumps({"type": "response.create", "response": {"modalities": ["text"]}}),
        "unknown_parameter",
        "response.modalities",
        None,
    ),
]


async def test_bad_input_gets_an_in_band_error_and_the_session_stays_open(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        for frame, code, param, event_id in BAD_INPUT:
            await client.ws.send(frame)
            event = await client.next()
            assert event["type"] == "error", frame
            error = event["error"]
            assert (error["type"], error["code"], error["param"], error["event_id"]) == (
                "invalid_request_error",
                code,
                param,
                event_id,
            ), frame
            assert error["message"]
        # A valid append gets no reply: the next event answers the session.update that follows it.
        await client.send(type="input_audio_buffer.append", audio=b64(silence(20)))
        await client.send(type="session.update", session={"type": "realtime", "instructions": "still here"})
        assert (await client.next())["type"] == "session.updated"
        assert len({e["event_id"] for e in client.events}) == len(client.events)


async def test_server_vad_detects_the_turn_and_answers(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        await client.append(silence(500) + tone(440, 600, RATE) + silence(600))
        events = await client.collect_until("response.done")
        types = collapse([e["type"] for e in events])
        assert types[:6] == [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
        ]
        started, stopped, committed = events[:3]
        assert started["audio_start_ms"] == 200 and stopped["audio_end_ms"] == 1600
        assert started["item_id"] == stopped["item_id"] == committed["item_id"] == events[3]["item"]["id"]
        assert events[-1]["response"]["output"][0]["content"][0]["transcript"] == "turn 1: audio 1.4s"
    session = (await debug_sessions(server.port, include_closed=True))[0]
    assert (session["items"][0]["audio_ms"], session["items"][0]["audio_hz"]) == (1400, 440)


async def test_barge_in_cancels_the_response_then_truncate(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, pace=1.0, response_ms=5000)
        await client.send(
            type="conversation.item.create",
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        )
        await client.send(type="response.create")
        await client.until("response.output_audio.delta")
        await client.append(tone(440, 100, RATE))
        started = await client.until("input_audio_buffer.speech_started")
        tail = await client.collect_until("response.done")
        assert collapse([e["type"] for e in tail]) == [
            "response.output_audio.done",
            "response.output_audio_transcript.done",
            "response.content_part.done",
            "conversation.item.done",
            "response.output_item.done",
            "response.done",
        ]
        done = tail[-1]["response"]
        assert (done["status"], done["status_details"]["reason"]) == ("cancelled", "turn_detected")
        assert done["output"][0]["status"] == "incomplete"
        assert started["audio_start_ms"] == 0
        assistant_id = done["output"][0]["id"]

        await set_knobs(server.port, session=sid, pace=0, response_ms=200)
        await client.append(silence(600))
        await client.until("input_audio_buffer.speech_stopped")
        second = await client.until("response.done")
        assert second["response"]["output"][0]["content"][0]["transcript"] == "turn 2: audio 0.6s"

        await client.send(type="conversation.item.truncate", item_id=assistant_id, content_index=0, audio_end_ms=10**6)
        assert (await client.until("error"))["error"]["param"] == "audio_end_ms"
        await client.send(type="conversation.item.truncate", item_id=assistant_id, content_index=0, audio_end_ms=20)
        truncated = await client.until("conversation.item.truncated")
        assert (truncated["item_id"], truncated["audio_end_ms"]) == (assistant_id, 20)
        assistant = next(i for i in (await only_session(server.port))["items"] if i["id"] == assistant_id)
        assert (assistant["audio_ms"], assistant["text"], assistant["status"]) == (20, None, "incomplete")


async def test_client_cancel_in_beta_and_one_response_at_a_time(server: OpenAIFake) -> None:
    async with raw_session(server.port, beta=True) as client:
        await set_knobs(server.port, session=session_id(client), pace=1.0, response_ms=5000)
        await client.send(type="response.create")
        await client.until("response.audio.delta")
        await client.send(type="response.create", event_id="again")
        error = (await client.until("error"))["error"]
        assert (error["code"], error["event_id"]) == ("conversation_already_has_active_response", "again")
        await client.send(type="response.cancel")
        tail = [e["type"] for e in await client.collect_until("response.done")]
        closing = tail.index("response.audio.done")
        assert set(tail[:closing]) <= {"response.audio.delta", "response.audio_transcript.delta"}  # in flight
        assert tail[closing:] == [
            "response.audio.done",
            "response.audio_transcript.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.done",
        ]
        done = client.events[-1]["response"]
        assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
        assert done["output"][0]["content"][0]["type"] == "audio"


async def test_items_previous_item_id_retrieve_delete_and_replayed_history(server: OpenAIFake) -> None:
    def user(text: str, item_id: str) -> dict[str, Any]:
        return {"id": item_id, "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}

    async with raw_session(server.port) as client:
        await client.send(type="session.update", session={"type": "realtime", "output_modalities": ["text"]})
        await client.send(type="conversation.item.create", item=user("second", "b"))
        await client.send(type="conversation.item.create", item=user("first", "a"), previous_item_id="root")
        await client.send(
            type="conversation.item.create",
            previous_item_id="a",
            item={
                "id": "x",
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "ok"}],
            },
        )
        added = [e for e in await client.collect_until("conversation.item.done") if e["type"].endswith("added")]
        assert [(e["item"]["id"], e["previous_item_id"]) for e in added] == [("b", None)]
        await client.until("conversation.item.done")
        third = await client.until("conversation.item.added")
        assert (third["item"]["id"], third["previous_item_id"]) == ("x", "a")
        await client.send(type="conversation.item.create", item=user("dup", "a"))
        assert (await client.until("error"))["error"]["code"] == "duplicate_item_id"
        await client.send(type="conversation.item.retrieve", item_id="b")
        retrieved = await client.until("conversation.item.retrieved")
        assert retrieved["item"]["content"] == [{"type": "input_text", "text": "second"}]
        await client.send(type="response.create")
        done = await client.until("response.output_text.done")
        assert done["text"] == "turn 2: second"  # two user messages in the replayed history
        await client.send(type="conversation.item.delete", item_id="x")
        assert (await client.until("conversation.item.deleted"))["item_id"] == "x"
        items = (await only_session(server.port))["items"]
        assert [(i["id"], i["role"]) for i in items[:2]] == [("a", "user"), ("b", "user")]
        assert "x" not in {i["id"] for i in items}


async def test_out_of_band_response_stays_out_of_the_conversation(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        await client.send(
            type="response.create",
            response={
                "conversation": "none",
                "output_modalities": ["text"],
                "instructions": "classify",
                "metadata": {"purpose": "side"},
                "input": [
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "side question"}]}
                ],
            },
        )
        events = await client.collect_until("response.done")
        assert not any(e["type"].startswith("conversation.item") for e in events)
        response = events[-1]["response"]
        assert response["conversation_id"] is None and response["metadata"] == {"purpose": "side"}
        assert response["output"][0]["content"][0] == {"type": "output_text", "text": "turn 1: side question"}
        session = await only_session(server.port)
        assert session["items"] == [] and session["responses"] == 1
        assert session["response_log"][0]["instructions"] == "classify"
        assert session["response_log"][0]["conversation"] == "none"


async def test_g711_input_and_output_in_beta(server: OpenAIFake) -> None:
    async with raw_session(server.port, beta=True) as client:
        await client.send(
            type="session.update",
            session={"input_audio_format": "g711_ulaw", "output_audio_format": "g711_alaw", "turn_detection": None},
        )
        assert (await client.until("session.updated"))["session"]["input_audio_format"] == "g711_ulaw"
        ulaw = _ref_ulaw_encode(np.frombuffer(tone(440, 1000, 8000), "<i2")).tobytes()
        await client.send(type="input_audio_buffer.append", audio=b64(ulaw))
        await client.send(type="input_audio_buffer.commit")
        await client.send(type="response.create")
        events = await client.collect_until("response.done")
        alaw = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
        assert len(alaw) == 400 * 8  # 8 kHz, one byte a sample
        assert dominant_hz(decode_to_pcm16(alaw, PCMA), 8000) == 440
        assert events[-1]["response"]["output_audio_format"] == "g711_alaw"
        await client.send(type="conversation.item.retrieve", item_id=events[0]["item_id"])
        retrieved = await client.until("conversation.item.retrieved")
        assert base64.b64decode(retrieved["item"]["content"][0]["audio"])[:100] == ulaw[:100]
    session = (await debug_sessions(server.port, include_closed=True))[0]
    user = session["items"][0]
    assert (session["input_rate"], user["audio_ms"], user["audio_hz"], user["text"]) == (8000, 1000, 440, "audio 1.0s")


# ---------------------------------------------------------------------------------------------------------------------
# knobs, control and debug over HTTP


async def test_refuse_close_after_and_stall_knobs(server: OpenAIFake) -> None:
    await set_knobs(server.port, refuse=503, refuse_count=1)
    with pytest.raises(InvalidStatus) as info:
        async with raw_session(server.port):
            pass
    assert info.value.response.status_code == 503
    async with raw_session(server.port) as client:  # refuse_count used up
        await set_knobs(server.port, session=session_id(client), close_after=2, close_code=1011)
        await client.send(type="session.update", session={"type": "realtime"})
        await client.send(type="session.update", session={"type": "realtime"})
        assert (await client.next())["type"] == "session.updated"
        with pytest.raises(ConnectionClosed) as closed:
            await client.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, stall_after=1)
        await client.send(type="session.update", session={"type": "realtime"})
        deadline = time.monotonic() + TIMEOUT_S
        while (await debug_sessions(server.port))[0]["events_dropped"] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await reset_knobs(server.port, session=sid)
        await client.send(type="session.update", session={"type": "realtime"})
        assert (await client.next())["type"] == "session.updated"  # the stalled one is gone for good
        assert len(client.events) == 2


async def test_latency_and_session_cap(server: OpenAIFake) -> None:
    await set_knobs(server.port, latency_ms=150)
    started = time.monotonic()
    async with raw_session(server.port) as client:
        assert time.monotonic() - started >= 0.15
        await reset_knobs(server.port)
    await set_knobs(server.port, session_cap_s=0.2)
    async with raw_session(server.port) as client:
        error = (await client.until("error"))["error"]
        assert error["code"] == "session_expired" and "maximum duration" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            await client.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001


async def test_chunk_and_pace_knobs(server: OpenAIFake) -> None:
    await set_knobs(server.port, chunk_ms=20, response_ms=200, pace=1.0)
    async with raw_session(server.port) as client:
        await client.send(type="response.create")
        first = await client.until("response.output_audio.delta")
        t0 = time.monotonic()
        events = await client.collect_until("response.output_audio.done")
        elapsed = time.monotonic() - t0
    deltas = [first] + [e for e in events if e["type"] == "response.output_audio.delta"]
    assert [len(base64.b64decode(e["delta"])) for e in deltas] == [960] * 10
    assert elapsed >= 0.15  # ten 20 ms chunks in real time: nine intervals after the first


async def test_http_side_door(server: OpenAIFake) -> None:
    assert await http_request(server.port, "/healthz") == (200, b"ok")
    status, body = await http_request(server.port, "/control?latency_ms=fast")
    assert status == 400 and b"latency_ms" in body
    assert (await http_request(server.port, "/control?bogus=1"))[0] == 400
    assert (await http_request(server.port, "/control?session=nope&pace=1"))[0] == 404
    snapshot = await set_knobs(server.port, pace=0.25, response_ms=80)
    assert snapshot["global"]["pace"] == 0.25
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, latency_ms=5)
        status, body = await http_request(server.port, "/control")
        assert json.loads(body)["sessions"] == {sid: {"latency_ms": 5.0}}
        assert [s["id"] for s in await debug_sessions(server.port)] == [sid]
    status, body = await http_request(server.port, "/control", method="DELETE")
    assert status == 200 and json.loads(body)["global"] == Knobs().as_dict()
    deadline = time.monotonic() + TIMEOUT_S
    while await debug_sessions(server.port):  # the session goes from live to closed on its own
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    (closed,) = await debug_sessions(server.port, include_closed=True)
    assert closed["id"] == sid and closed["live"] is False and closed["close_code"] == 1000
    assert (await http_request(server.port, "/nowhere"))[0] == 404


async def wait_dropped(port: int, sid: str, at_least: int = 1) -> None:
    """Until the fake has dropped ``at_least`` events of session ``sid`` (a stall is in force)."""
    deadline = time.monotonic() + TIMEOUT_S
    while next(s for s in await debug_sessions(port) if s["id"] == sid)["events_dropped"] < at_least:
        assert time.monotonic() < deadline, "the fake never stalled"
        await asyncio.sleep(0.01)


async def assert_silent_until_cleared(port: int, client: Raw, sid: str) -> None:
    """A stalled session answers pings; once the knob is cleared, the next event is the answer to a new request
    (nothing the stall swallowed arrives late, because the outbox keeps order)."""
    await wait_dropped(port, sid)
    await asyncio.wait_for(await client.ws.ping(), TIMEOUT_S)
    seen = len(client.events)
    await reset_knobs(port, session=sid)
    await client.send(type="session.update", session={"type": "realtime"})
    assert (await client.next())["type"] == "session.updated"
    assert len(client.events) == seen + 1


async def test_stall_on_request_sends_nothing_of_the_response_and_answers_pings(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, stall_on="request")
        await client.send(type="response.create")
        await assert_silent_until_cleared(server.port, client, sid)
        assert [e["type"] for e in client.events] == ["session.created", "session.updated"]


async def test_stall_on_response_goes_silent_after_the_first_delta(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, stall_on="response")
        await client.send(type="response.create")
        await client.until("response.output_audio.delta")
        await assert_silent_until_cleared(server.port, client, sid)
        types = [e["type"] for e in client.events]
        assert types.count("response.output_audio.delta") == 1 and "response.done" not in types


@pytest.mark.parametrize("moment", ["request", "response"])
async def test_close_on_a_response_moment_closes_with_1011(server: OpenAIFake, moment: str) -> None:
    async with raw_session(server.port) as client:
        await set_knobs(server.port, session=session_id(client), close_on=moment)
        await client.send(type="response.create")
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.next()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
        types = [e["type"] for e in client.events]
        assert ("response.created" in types) is (moment == "response")
        assert types.count("response.output_audio.delta") == (1 if moment == "response" else 0)


async def test_first_audio_delay_holds_the_first_delta_and_a_cancel_cuts_it_short(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        sid = session_id(client)
        await set_knobs(server.port, session=sid, first_audio_delay_ms=300)
        await client.send(type="response.create")
        await client.until("response.created")
        t0 = time.monotonic()
        await client.until("response.output_audio.delta")
        assert time.monotonic() - t0 >= 0.3
        await client.until("response.done")
        await set_knobs(server.port, session=sid, first_audio_delay_ms=60_000)
        await client.send(type="response.create")
        await client.until("response.created")
        await client.send(type="response.cancel")
        tail = await client.collect_until("response.done")  # well within TIMEOUT_S, not after 60 s
        assert not any(e["type"] == "response.output_audio.delta" for e in tail)
        assert tail[-1]["response"]["status_details"]["reason"] == "client_cancelled"


async def test_refusal_429_reads_like_openai(server: OpenAIFake) -> None:
    await set_knobs(server.port, refuse=429, refuse_count=1)
    with pytest.raises(InvalidStatus) as info:
        async with raw_session(server.port):
            pass
    assert info.value.response.status_code == 429
    assert json.loads(info.value.response.body)["error"]["code"] == "rate_limit_exceeded"


async def test_truncate_reaches_an_item_that_is_still_streaming(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        await set_knobs(server.port, session=session_id(client), pace=1.0, response_ms=5000, chunk_ms=20)
        await client.send(type="response.create")
        first = await client.until("response.output_audio.delta")
        item_id = first["item_id"]
        for _ in range(2):
            await client.until("response.output_audio.delta")
        await client.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=4000)
        assert (await client.until("error"))["error"]["param"] == "audio_end_ms"  # not sent yet: refused
        await client.send(type="conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=40)
        truncated = await client.until("conversation.item.truncated")
        assert truncated == {**truncated, "item_id": item_id, "content_index": 0, "audio_end_ms": 40}
        # the response is still active: the cancel the Agents SDK sends right after its truncate finds it
        await client.send(type="response.cancel")
        tail = await client.collect_until("response.done")
        assert "error" not in [e["type"] for e in tail]
        done = tail[-1]["response"]
        assert done["status"] == "cancelled" and done["output"][0]["content"][0]["transcript"] is None
        item = next(i for i in (await only_session(server.port))["items"] if i["id"] == item_id)
        assert (item["audio_ms"], item["text"], item["status"]) == (40, None, "incomplete")


async def test_ga_text_parts_say_text_in_events_and_output_text_in_items(server: OpenAIFake) -> None:
    async with raw_session(server.port) as client:
        await client.send(type="session.update", session={"type": "realtime", "output_modalities": ["text"]})
        await client.send(type="response.create")
        events = await client.collect_until("response.done")
        parts = [e["part"]["type"] for e in events if e["type"].startswith("response.content_part.")]
        assert parts == ["text", "text"]
        assert events[-1]["response"]["output"][0]["content"][0]["type"] == "output_text"


async def test_module_entry_point_prints_the_port() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.fakes.openai", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert await http_request(port, "/healthz") == (200, b"ok")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
