"""The fake Gemini Live server (services.fakes.gemini), against the real server's documented behaviour.

The official ``google-genai`` SDK forces ``wss://``, so its tests run the fake with a ``trustme`` certificate; raw
``websockets`` clients use plain ``ws://`` with ``?key=`` for exact frames, snake_case keys and the close codes.
Every wait is for a specific message under ``TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from google import genai
from google.genai import errors, types
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.fakes import gemini as fake_gemini
from services.fakes.audio import dominant_hz, tone
from services.fakes.control import debug_sessions, http_request, set_knobs
from services.fakes.gemini.server import CAP_REASON, GeminiFake, camelize
from services.fakes.knobs import Knobs

TIMEOUT_S = 5.0
PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
MODEL = "models/gemini-live-2.5-flash-preview"


def silence(ms: int, rate: int = 16_000) -> bytes:
    return bytes(rate * ms // 1000 * 2)


def urlsafe_unpadded(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


# ---------------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext, trustme.CA]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx, ca


@pytest.fixture
async def server() -> AsyncIterator[GeminiFake]:
    srv = await fake_gemini.start(knobs=Knobs())
    yield srv
    await srv.close()


@pytest.fixture
async def tls_server(tls: tuple[ssl.SSLContext, ssl.SSLContext, trustme.CA]) -> AsyncIterator[GeminiFake]:
    srv = await fake_gemini.start(ssl_context=tls[0], knobs=Knobs())
    yield srv
    await srv.close()


def sdk_client(port: int, client_ctx: ssl.SSLContext) -> genai.Client:
    return genai.Client(
        api_key="test-key",
        http_options=types.HttpOptions(
            base_url=f"https://127.0.0.1:{port}", api_version="v1beta", async_client_args={"ssl": client_ctx}
        ),
    )


class Raw:
    """A raw client that records every server message (decoded JSON), so order can be asserted."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))

    async def next(self) -> dict[str, Any]:
        message = json.loads(await asyncio.wait_for(self.ws.recv(), TIMEOUT_S))
        self.messages.append(message)
        return message

    async def until(self, predicate: Any) -> list[dict[str, Any]]:
        """Messages up to and including the first one ``predicate`` accepts."""
        start = len(self.messages)
        while not predicate(await self.next()):
            pass
        return self.messages[start:]

    async def turn(self) -> list[dict[str, Any]]:
        return await self.until(lambda m: m.get("serverContent", {}).get("turnComplete"))

    async def closed(self) -> tuple[int, str]:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await self.next()
        assert info.value.rcvd is not None
        return info.value.rcvd.code, info.value.rcvd.reason


@asynccontextmanager
async def raw(port: int, setup: dict[str, Any] | None = None, *, query: str = "?key=k") -> AsyncIterator[Raw]:
    async with connect(f"ws://127.0.0.1:{port}{PATH}{query}", max_size=None) as ws:
        client = Raw(ws)
        if setup is not None:
            await client.send({"setup": {"model": MODEL, **setup}})
            assert await client.next() == {"setupComplete": {}}
        yield client


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        part.get("text", "")
        for m in messages
        for part in m.get("serverContent", {}).get("modelTurn", {}).get("parts", [])
    )


async def user_text(client: Raw, text: str, *, complete: bool = True) -> None:
    await client.send(
        {"clientContent": {"turns": [{"role": "user", "parts": [{"text": text}]}], "turnComplete": complete}}
    )


async def only_session(port: int) -> dict[str, Any]:
    (session,) = await debug_sessions(port)
    return session


# ---------------------------------------------------------------------------------------------------------------------
# key normalisation


def test_camelize_renames_every_level_but_keeps_struct_payloads() -> None:
    message = {
        "tool_response": {"function_responses": [{"id": "fc_1", "name": "f", "response": {"snake_key": 1}}]},
        "realtime_input": {"media_chunks": [{"mime_type": "audio/pcm"}]},
        "setup": {"tools": [{"function_declarations": [{"name": "f", "parameters": {"properties": {"my_arg": {}}}}]}]},
    }
    assert camelize(message) == {
        "toolResponse": {"functionResponses": [{"id": "fc_1", "name": "f", "response": {"snake_key": 1}}]},
        "realtimeInput": {"mediaChunks": [{"mimeType": "audio/pcm"}]},
        "setup": {"tools": [{"functionDeclarations": [{"name": "f", "parameters": {"properties": {"my_arg": {}}}}]}]},
    }


# ---------------------------------------------------------------------------------------------------------------------
# SDK over TLS


async def test_sdk_audio_turn_with_transcriptions_usage_and_resumption(tls_server: GeminiFake, tls: Any) -> None:
    client = sdk_client(tls_server.port, tls[1])
    config = types.LiveConnectConfig(
        response_modalities=["AUDIO"],
        input_audio_transcription={},
        output_audio_transcription={},
        session_resumption=types.SessionResumptionConfig(),
    )
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_realtime_input(
            audio=types.Blob(data=tone(440, 1000, 16_000), mime_type="audio/pcm;rate=16000")
        )
        await session.send_realtime_input(audio_stream_end=True)
        messages = [m async for m in session.receive()]  # receive() stops after turnComplete
        resumption = await asyncio.wait_for(anext(aiter(session.receive())), TIMEOUT_S)

    first = messages[0].server_content
    assert first is not None and first.input_transcription is not None
    assert first.input_transcription.text == "audio 1.0s"
    audio = b"".join(m.data or b"" for m in messages)
    assert len(audio) == 400 * 24 * 2 and dominant_hz(audio, 24_000) == 440
    outputs = [
        m.server_content.output_transcription.text
        for m in messages
        if m.server_content and m.server_content.output_transcription
    ]
    assert "".join(outputs) == "turn 1: audio 1.0s"
    tail = [m.server_content for m in messages[-2:]]
    assert tail[0] is not None and tail[0].generation_complete
    assert tail[1] is not None and tail[1].turn_complete
    usage = messages[-1].usage_metadata
    assert usage is not None and usage.prompt_token_count == 20 and usage.total_token_count == 28
    assert resumption.session_resumption_update is not None and resumption.session_resumption_update.resumable
    assert resumption.session_resumption_update.new_handle

    (recorded,) = await debug_sessions(tls_server.port, include_closed=True, ssl_context=tls[1])
    assert recorded["model"] == "gemini-live-2.5-flash-preview" and recorded["dialect"] == "v1beta"
    assert recorded["headers"]["x-goog-api-key"] == "<redacted>" and "test-key" not in json.dumps(recorded)
    assert recorded["input_rate"] == 16_000 and recorded["turns"] == 1 and recorded["responses"] == 1
    user, model = recorded["items"]
    assert (user["role"], user["text"], user["audio_ms"], user["audio_hz"]) == ("user", "audio 1.0s", 1000, 440)
    assert (model["role"], model["text"], model["audio_ms"]) == ("assistant", "turn 1: audio 1.0s", 400)
    assert recorded["config"]["generationConfig"]["responseModalities"] == ["AUDIO"]


async def test_sdk_text_tool_call_round_trip(tls_server: GeminiFake, tls: Any) -> None:
    client = sdk_client(tls_server.port, tls[1])
    declaration = types.FunctionDeclaration(
        name="get_weather",
        description="weather",
        parameters={"type": "OBJECT", "properties": {"city": {"type": "STRING"}}},
    )
    config = types.LiveConnectConfig(
        response_modalities=["TEXT"], tools=[types.Tool(function_declarations=[declaration])]
    )
    calls: list[types.FunctionCall] = []
    texts: list[str] = []
    async with client.aio.live.connect(model="gemini-live-2.5-flash-preview", config=config) as session:
        await session.send_client_content(turns=types.Content(role="user", parts=[types.Part(text="hi")]))
        assert "".join([m.text or "" async for m in session.receive()]) == "turn 1: hi"
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text="get_weather Paris")])
        )
        async for message in session.receive():
            if message.tool_call and message.tool_call.function_calls:
                calls += message.tool_call.function_calls
                call = message.tool_call.function_calls[0]
                await session.send_tool_response(
                    function_responses=types.FunctionResponse(id=call.id, name=call.name, response={"output": "sunny"})
                )
            texts.append(message.text or "")
    assert [(c.id, c.name, c.args) for c in calls] == [("fc_2", "get_weather", {"text": "get_weather Paris"})]
    assert "".join(texts) == "turn 2: tool get_weather returned sunny"
    (recorded,) = await debug_sessions(tls_server.port, include_closed=True, ssl_context=tls[1])
    assert [(i["type"], i["call_id"], i["output"]) for i in recorded["items"][3:5]] == [
        ("function_call", "fc_2", None),
        ("function_call_output", "fc_2", "sunny"),
    ]


async def test_sdk_sees_close_codes_as_api_errors(tls_server: GeminiFake, tls: Any) -> None:
    await set_knobs(tls_server.port, ssl_context=tls[1], session_cap_s=0.05)
    client = sdk_client(tls_server.port, tls[1])
    async with client.aio.live.connect(
        model="gemini-live-2.5-flash-preview", config=types.LiveConnectConfig()
    ) as session:
        with pytest.raises(errors.APIError) as info:
            async for _ in session.receive():
                pass
    assert info.value.code == 1011


# ---------------------------------------------------------------------------------------------------------------------
# raw clients


async def test_snake_case_urlsafe_audio_and_media_chunks_at_a_declared_rate(server: GeminiFake) -> None:
    async with raw(server.port) as client:
        await client.send(
            {
                "setup": {
                    "model": MODEL,
                    "generation_config": {"response_modalities": ["AUDIO"]},
                    "output_audio_transcription": {},
                    "realtime_input_config": {"automatic_activity_detection": {"silence_duration_ms": 200}},
                }
            }
        )
        assert await client.next() == {"setupComplete": {}}
        audio = tone(440, 500, 24_000) + silence(300, 24_000)
        for i in range(0, len(audio), 1920):
            blob = {"data": urlsafe_unpadded(audio[i : i + 1920]), "mime_type": "audio/pcm;rate=24000"}
            await client.send({"realtime_input": {"media_chunks": [blob]}})
        messages = await client.turn()
        assert messages[-2] == {"serverContent": {"generationComplete": True}}
        transcript = "".join(
            m["serverContent"]["outputTranscription"]["text"]
            for m in messages
            if "outputTranscription" in m.get("serverContent", {})
        )
        assert transcript == "turn 1: audio 0.7s"  # 0.5 s speech + 0.2 s silence, no padding before it
        session = await only_session(server.port)
        assert session["config"]["realtimeInputConfig"]["automaticActivityDetection"] == {"silenceDurationMs": 200}
        assert (session["input_rate"], session["items"][0]["audio_hz"], session["items"][0]["audio_ms"]) == (
            24_000,
            440,
            700,
        )


async def test_output_order_of_an_audio_turn(server: GeminiFake) -> None:
    async with raw(server.port, {"outputAudioTranscription": {}, "inputAudioTranscription": {}}) as client:
        await set_knobs(server.port, session=(await only_session(server.port))["id"], response_ms=120, chunk_ms=40)
        await client.send(
            {
                "realtimeInput": {
                    "audio": {
                        "data": base64.b64encode(tone(440, 300, 16_000)).decode(),
                        "mimeType": "audio/pcm;rate=16000",
                    }
                }
            }
        )
        await client.send({"realtimeInput": {"audioStreamEnd": True}})
        messages = await client.turn()
    labels = [",".join([*sorted(m.get("serverContent", {})), *sorted(set(m) - {"serverContent"})]) for m in messages]
    assert labels == [
        "inputTranscription",
        "modelTurn",
        "outputTranscription",
        "modelTurn",
        "outputTranscription",
        "modelTurn",
        "outputTranscription",
        "generationComplete",
        "turnComplete,usageMetadata",
    ]
    part = messages[1]["serverContent"]["modelTurn"]["parts"][0]["inlineData"]
    assert part["mimeType"] == "audio/pcm;rate=24000" and len(base64.b64decode(part["data"])) == 1920
    assert messages[0]["serverContent"]["inputTranscription"]["text"] == "audio 0.3s"


FATAL = [
    ("first frame not setup", [{"clientContent": {"turns": [], "turnComplete": True}}], 1007, "first message"),
    ("invalid json", ["{nope"], 1007, "Invalid JSON"),
    ("two top-level keys", [{"setup": {"model": MODEL}, "clientContent": {}}], 1007, "invalid argument"),
    ("unknown setup field", [{"setup": {"model": MODEL, "bogus_field": 1}}], 1007, 'Unknown name "bogusField"'),
    ("model without models/", [{"setup": {"model": "gemini-x"}}], 1007, "invalid argument"),
    (
        "two modalities",
        [{"setup": {"model": MODEL, "generationConfig": {"responseModalities": ["AUDIO", "TEXT"]}}}],
        1007,
        "invalid argument",
    ),
    ("second setup", [{"setup": {"model": MODEL}}, {"setup": {"model": MODEL}}], 1007, "once"),
    (
        "bad base64",
        [{"setup": {"model": MODEL}}, {"realtimeInput": {"audio": {"data": "@@@@", "mimeType": "audio/pcm"}}}],
        1007,
        "Base64",
    ),
    (
        "not pcm",
        [{"setup": {"model": MODEL}}, {"realtimeInput": {"audio": {"data": "AAAA", "mimeType": "audio/mp3"}}}],
        1007,
        "mime",
    ),
    (
        "activity with auto VAD",
        [{"setup": {"model": MODEL}}, {"realtimeInput": {"activityStart": {}}}],
        1007,
        "disabled",
    ),
    (
        "tool response without id",
        [{"setup": {"model": MODEL}}, {"toolResponse": {"functionResponses": [{"name": "f", "response": {}}]}}],
        1007,
        "id",
    ),
    (
        "unknown resumption handle",
        [{"setup": {"model": MODEL, "sessionResumption": {"handle": "nope"}}}],
        1007,
        "handle",
    ),
]


@pytest.mark.parametrize(("frames", "code", "reason"), [case[1:] for case in FATAL], ids=[case[0] for case in FATAL])
async def test_bad_input_closes_with_a_code_and_reason(
    server: GeminiFake, frames: list[Any], code: int, reason: str
) -> None:
    async with raw(server.port) as client:
        for frame in frames:
            await client.ws.send(frame if isinstance(frame, str) else json.dumps(frame))
        got_code, got_reason = await client.closed()
        assert got_code == code and reason.lower() in got_reason.lower()
        assert client.messages in ([], [{"setupComplete": {}}])


async def test_missing_key_closes_1008_after_the_first_frame_and_bad_path_is_404(server: GeminiFake) -> None:
    async with raw(server.port, query="") as client:
        await client.send({"setup": {"model": MODEL}})
        code, reason = await client.closed()
        assert code == 1008 and "API Key" in reason
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            f"ws://127.0.0.1:{server.port}/ws/google.ai.generativelanguage.v2.GenerativeService.BidiGenerateContent"
        ):
            pass
    assert info.value.response.status_code == 404
    async with connect(f"ws://127.0.0.1:{server.port}{PATH}", additional_headers={"x-goog-api-key": "k"}) as ws:
        await ws.send(json.dumps({"setup": {"model": MODEL}}))
        assert json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)) == {"setupComplete": {}}


async def test_manual_activity_turns_and_barge_in(server: GeminiFake) -> None:
    setup = {
        "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
        "generationConfig": {"responseModalities": ["TEXT"]},
    }
    async with raw(server.port, setup) as client:
        audio = base64.b64encode(tone(440, 600, 16_000)).decode()
        await client.send(
            {"realtimeInput": {"audio": {"data": audio, "mimeType": "audio/pcm;rate=16000"}}}
        )  # outside activity: ignored
        await client.send({"realtimeInput": {"activityStart": {}}})
        await client.send({"realtimeInput": {"audio": {"data": audio, "mimeType": "audio/pcm;rate=16000"}}})
        await client.send({"realtimeInput": {"activityEnd": {}}})
        assert text_of(await client.turn()) == "turn 1: audio 0.6s"

        await set_knobs(server.port, session=(await only_session(server.port))["id"], pace=1.0)
        await user_text(client, "a long story please")
        await client.until(lambda m: "modelTurn" in m.get("serverContent", {}))
        await client.send({"realtimeInput": {"activityStart": {}}})
        tail = await client.turn()
        labels = [next(iter(m["serverContent"])) for m in tail]
        assert labels[-2:] == ["interrupted", "turnComplete"] and "generationComplete" not in labels
        assert set(labels[:-2]) <= {"modelTurn"}
    last = (await debug_sessions(server.port, include_closed=True))[0]["items"][-1]
    full = "turn 2: a long story please"
    assert last["status"] == "incomplete" and full.startswith(last["text"]) and last["text"] != full


async def test_vad_barge_in_interrupts_a_streaming_turn(server: GeminiFake) -> None:
    async with raw(server.port, {}) as client:
        await set_knobs(server.port, session=(await only_session(server.port))["id"], pace=1.0, response_ms=5000)
        await client.send({"realtimeInput": {"text": "tell me everything"}})
        await client.until(lambda m: "modelTurn" in m.get("serverContent", {}))
        speech = base64.b64encode(tone(440, 100, 16_000)).decode()
        await client.send({"realtimeInput": {"audio": {"data": speech, "mimeType": "audio/pcm;rate=16000"}}})
        tail = await client.turn()
        assert [next(iter(m["serverContent"])) for m in tail][-2:] == ["interrupted", "turnComplete"]
        assert "usageMetadata" in tail[-1]


async def test_tool_call_cancelled_by_new_user_content(server: GeminiFake) -> None:
    tools = [{"functionDeclarations": [{"name": "get_time", "description": "t"}]}]
    async with raw(server.port, {"tools": tools, "generationConfig": {"responseModalities": ["TEXT"]}}) as client:
        await user_text(client, "what does get_time say")
        call = await client.next()
        assert call == {
            "toolCall": {
                "functionCalls": [{"id": "fc_1", "name": "get_time", "args": {"text": "what does get_time say"}}]
            }
        }
        await user_text(client, "never mind")
        assert await client.next() == {"toolCallCancellation": {"ids": ["fc_1"]}}
        assert text_of(await client.turn()) == "turn 2: never mind"
        await client.send(
            {"toolResponse": {"functionResponses": [{"id": "fc_1", "name": "get_time", "response": {"t": 1}}]}}
        )
        assert text_of(await client.turn()) == 'turn 2: tool get_time returned {"t": 1}'


async def test_history_through_client_content_and_resumption(server: GeminiFake) -> None:
    setup = {"sessionResumption": {}, "generationConfig": {"responseModalities": ["TEXT"]}}
    async with raw(server.port, setup) as client:
        await client.send(
            {
                "clientContent": {
                    "turns": [
                        {"role": "user", "parts": [{"text": "one"}]},
                        {"role": "model", "parts": [{"text": "ok"}]},
                        {"role": "user", "parts": [{"text": "two"}]},
                    ],
                    "turnComplete": False,
                }
            }
        )
        await user_text(client, "three")
        assert text_of(await client.turn()) == "turn 3: three"  # history counts
        update = (await client.next())["sessionResumptionUpdate"]
        assert update["resumable"] is True
    async with raw(server.port, {**setup, "sessionResumption": {"handle": update["newHandle"]}}) as client:
        await client.send({"realtimeInput": {"text": "four"}})
        assert text_of(await client.turn()) == "turn 4: four"
        session = await only_session(server.port)
        assert session["resumed_from"] == update["newHandle"]
        assert [i["role"] for i in session["items"]] == [
            "user",
            "assistant",
            "user",
            "user",
            "assistant",
            "user",
            "assistant",
        ]


async def test_go_away_then_close_and_refuse(server: GeminiFake) -> None:
    await set_knobs(server.port, go_away_after_s=0.05, go_away_time_left_s=0.1)
    async with raw(server.port, {}) as client:
        assert await client.next() == {"goAway": {"timeLeft": "0.1s"}}
        assert await client.closed() == (1011, CAP_REASON)
    await set_knobs(server.port, go_away_after_s="none", refuse=429)
    with pytest.raises(InvalidStatus) as info:
        async with raw(server.port):
            pass
    assert info.value.response.status_code == 429
    status, body = await http_request(server.port, "/debug/sessions?all=1")
    assert status == 200 and json.loads(body)["sessions"][0]["close_code"] == 1011


async def test_go_away_set_on_a_live_session_counts_from_then(server: GeminiFake) -> None:
    """The knob is read at setup; set per session through /control it starts that session's goAway now."""
    async with raw(server.port, {}) as client:
        session = await only_session(server.port)
        await set_knobs(server.port, session=session["id"], go_away_after_s=0.05, go_away_time_left_s=0.1)
        assert await client.next() == {"goAway": {"timeLeft": "0.1s"}}
        assert await client.closed() == (1011, CAP_REASON)


def keys_of(messages: list[dict[str, Any]]) -> list[str]:
    """``serverContent`` members (or the top-level key) of each message, in order."""
    return [next(iter(m["serverContent"])) if "serverContent" in m else next(iter(m)) for m in messages]


async def test_tool_call_never_gets_turn_complete_and_thoughts_are_reported(server: GeminiFake) -> None:
    tools = [{"functionDeclarations": [{"name": "get_time", "description": "t"}]}]
    setup = {
        "tools": tools,
        "generationConfig": {"responseModalities": ["TEXT"], "thinkingConfig": {"includeThoughts": True}},
    }
    async with raw(server.port, setup) as client:
        await set_knobs(server.port, session=(await only_session(server.port))["id"], thoughts_tokens=7)
        await user_text(client, "what does get_time say")
        first = await client.until(lambda m: "toolCall" in m)
        assert first[0]["serverContent"]["modelTurn"]["parts"][0]["thought"] is True
        await client.send(
            {"toolResponse": {"functionResponses": [{"id": "fc_1", "name": "get_time", "response": {"t": 1}}]}}
        )
        after = await client.turn()
        # The first turnComplete after the toolCall is the one ending the continuation, never a bare one.
        assert keys_of(after)[-3:] == ["modelTurn", "generationComplete", "turnComplete"]
        assert text_of([m for m in after if not _is_thought(m)]) == 'turn 1: tool get_time returned {"t": 1}'
        usage = after[-1]["usageMetadata"]
        assert usage["thoughtsTokenCount"] == 7
        assert usage["totalTokenCount"] == usage["promptTokenCount"] + usage["responseTokenCount"] + 7


def _is_thought(message: dict[str, Any]) -> bool:
    parts = message.get("serverContent", {}).get("modelTurn", {}).get("parts", [])
    return any(p.get("thought") for p in parts)


async def test_usage_has_no_thoughts_field_by_default(server: GeminiFake) -> None:
    async with raw(server.port, {"generationConfig": {"responseModalities": ["TEXT"]}}) as client:
        await user_text(client, "hi")
        turn = await client.turn()
        assert keys_of(turn)[-2:] == ["generationComplete", "turnComplete"]
        assert "thoughtsTokenCount" not in turn[-1]["usageMetadata"]
        assert not any(_is_thought(m) for m in turn)


async def test_stall_on_request_and_on_response_keep_the_socket_open(server: GeminiFake) -> None:
    async with raw(server.port, {"generationConfig": {"responseModalities": ["TEXT"]}}) as client:
        sid = (await only_session(server.port))["id"]
        for moment, delivered in (("request", 0), ("response", 1)):
            await set_knobs(server.port, session=sid, stall_on=moment)
            seen = len(client.messages)
            dropped = (await only_session(server.port))["events_dropped"]
            await user_text(client, "hello there you")
            if delivered:
                await client.next()
            deadline = asyncio.get_running_loop().time() + TIMEOUT_S
            while (await only_session(server.port))["events_dropped"] <= dropped:
                assert asyncio.get_running_loop().time() < deadline, "the fake never stalled"
                await asyncio.sleep(0.01)
            await asyncio.wait_for(await client.ws.ping(), TIMEOUT_S)  # pings still answered
            await http_request(server.port, f"/control?session={sid}", method="DELETE")
            await user_text(client, "again")
            turn = await client.turn()
            # Nothing of the stalled turn arrives late: the next frames are the new turn's.
            assert len(client.messages) - seen == delivered + len(turn)
            assert text_of(turn).endswith("again")


@pytest.mark.parametrize("moment", ["request", "response"])
async def test_close_on_a_response_moment_closes_with_1011(server: GeminiFake, moment: str) -> None:
    async with raw(server.port, {}) as client:
        await set_knobs(server.port, session=(await only_session(server.port))["id"], close_on=moment)
        await client.send({"realtimeInput": {"text": "hi"}})
        assert (await client.closed())[0] == 1011
        audio = [m for m in client.messages if "modelTurn" in m.get("serverContent", {})]
        assert len(audio) == (1 if moment == "response" else 0)


async def test_first_audio_delay_and_503_refusal(server: GeminiFake) -> None:
    async with raw(server.port, {}) as client:
        await set_knobs(server.port, session=(await only_session(server.port))["id"], first_audio_delay_ms=300)
        t0 = asyncio.get_running_loop().time()
        await client.send({"realtimeInput": {"text": "hi"}})
        await client.until(lambda m: "modelTurn" in m.get("serverContent", {}))
        assert asyncio.get_running_loop().time() - t0 >= 0.3
    await set_knobs(server.port, refuse=503, refuse_count=1)
    with pytest.raises(InvalidStatus) as info:
        async with raw(server.port):
            pass
    assert info.value.response.status_code == 503
    assert json.loads(info.value.response.body)["error"]["status"] == "UNAVAILABLE"
    async with raw(server.port, {}):  # refuse_count used up
        pass


async def test_module_entry_point_serves_tls(tmp_path: Path, tls: Any) -> None:
    ca: trustme.CA = tls[2]
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(cert_file)
    cert.private_key_pem.write_to_path(key_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.fakes.gemini",
        "--port",
        "0",
        "--tls-cert",
        str(cert_file),
        "--tls-key",
        str(key_file),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        port = int(await asyncio.wait_for(proc.stdout.readline(), 15))
        assert await http_request(port, "/healthz", ssl_context=tls[1]) == (200, b"ok")
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), TIMEOUT_S) == 0
