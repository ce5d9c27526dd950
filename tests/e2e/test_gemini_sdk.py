"""The official google-genai SDK as a drop-in client of the edge, over TLS, on both providers.

The SDK always speaks ``wss://`` (the Gemini Live API reference), so this module runs its own stack with a
TLS edge (a trustme CA, cert for 127.0.0.1), its own bus and its own fakes: slowing the fakes for the
interruption test affects no other module. The provider is chosen the two ways an SDK user can:
``setup.model`` (``gemini…`` -> gemini) and an ``X-RS-Core`` header through ``HttpOptions.headers``.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pydantic
import pytest
import trustme
import websockets
from google import genai
from google.genai import types

from services.dev.stack import Proc, Stack, free_port
from services.fakes.common import debug_sessions, reset_knobs, set_knobs
from shared.session import session_key
from shared.store import Store

from ..conftest import Infra
from .helpers import ACCOUNT, API_KEY, GEMINI_WS_PATH, TIMEOUT_S, b64, dominant_hz, tone
from .tls_stack import genai_client

pytestmark = pytest.mark.e2e

MODEL = "gemini-live-2.5-flash-preview"
IN_RATE = 16_000
OUT_RATE = 24_000
CHUNK = IN_RATE * 2 // 50  # 20 ms of 16 kHz PCM16
# Top-level keys a Gemini server message may carry (the Gemini Live API reference): all the SDK maps.
SERVER_KEYS = frozenset({
    "setupComplete", "serverContent", "toolCall", "toolCallCancellation", "usageMetadata", "goAway",
    "sessionResumptionUpdate", "voiceActivityDetectionSignal", "voiceActivity",
})
_CAMEL = re.compile(r"^[a-z][a-zA-Z0-9]*$")


@dataclass
class TlsStack:
    stack: Stack
    port: int
    ssl_context: ssl.SSLContext
    fake_ports: dict[str, int]
    workers: dict[str, Proc]  # by instance id: two, so one can be killed

    def client(self, *, api_key: str = API_KEY, headers: dict[str, str] | None = None) -> genai.Client:
        return genai_client(self.port, self.ssl_context, api_key=api_key, headers=headers)


@pytest.fixture(scope="module")
def tls_stack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    workdir = tmp_path_factory.mktemp("gemini_sdk")
    ca = trustme.CA()
    cert, key = workdir / "edge.crt", workdir / "edge.key"
    issued = ca.issue_cert("127.0.0.1")
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    stack = Stack(workdir)
    stack.env["REDIS_URL"] = infra.redis_url
    try:
        stack.start_nats()  # a bus of its own: no other stack's services join our queue groups
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1", "LOG_LEVEL": "INFO"})
        for command in ("checkpoint", "transformer"):
            stack.start_service(command)
        workers = {
            name: stack.start_instance("provider-worker", name)
            for name in ("sdk-wk-a", "sdk-wk-b")
        }
        stack.start_service("edge", "--tls-cert", str(cert), "--tls-key", str(key))  # = RS_TLS_CERT/RS_TLS_KEY
        yield TlsStack(stack, port, client_ctx, stack.fake_ports, workers)
    finally:
        stack.stop()


def _headers(provider: str, session: str | None = None) -> dict[str, str]:
    """gemini is chosen by setup.model (a gemini… model); openai needs the X-RS-Core header."""
    headers = {"X-RS-Core": "openai"} if provider == "openai" else {}
    if session is not None:
        headers["X-RS-Session"] = session
    return headers


def _config(
    *, vad: bool = False, input_transcription: bool = False, tools: list[types.Tool] | None = None,
    instructions: str | None = None, silence_ms: int = 200,
) -> types.LiveConnectConfig:
    if vad:
        detection = types.AutomaticActivityDetection(
            disabled=False, silence_duration_ms=silence_ms, prefix_padding_ms=0)
    else:
        detection = types.AutomaticActivityDetection(disabled=True)
    return types.LiveConnectConfig(
        response_modalities=[types.Modality.AUDIO],
        output_audio_transcription=types.AudioTranscriptionConfig(),
        input_audio_transcription=types.AudioTranscriptionConfig() if input_transcription else None,
        realtime_input_config=types.RealtimeInputConfig(automatic_activity_detection=detection),
        tools=tools,
        system_instruction=instructions,
    )


@dataclass
class Turn:
    messages: list[types.LiveServerMessage]

    @property
    def audio(self) -> bytes:
        return b"".join(m.data for m in self.messages if m.data)

    def _texts(self, field: str) -> str:
        parts = []
        for m in self.messages:
            sc = m.server_content
            t = getattr(sc, field, None) if sc is not None else None
            if t is not None and t.text:
                parts.append(t.text)
        return "".join(parts)

    @property
    def transcript(self) -> str:
        return self._texts("output_transcription")

    @property
    def heard(self) -> str:
        return self._texts("input_transcription")

    @property
    def interrupted(self) -> bool:
        return any(m.server_content is not None and m.server_content.interrupted for m in self.messages)

    @property
    def complete(self) -> bool:
        last = self.messages[-1].server_content if self.messages else None
        return bool(last is not None and last.turn_complete)

    @property
    def usage(self) -> list[types.UsageMetadata]:
        return [m.usage_metadata for m in self.messages if m.usage_metadata is not None]

    @property
    def tool_calls(self) -> list[types.FunctionCall]:
        return [fc for m in self.messages if m.tool_call for fc in (m.tool_call.function_calls or [])]


def _not_empty(msg: types.LiveServerMessage) -> None:
    """The SDK keeps only the top-level keys it knows (a frame with none of them makes it raise): a message
    with no field set means the edge sent a key the SDK dropped. Raw frames are checked key by key in
    test_raw_frames_are_live_server_messages."""
    assert msg.model_dump(exclude_none=True), msg


async def _receive_turn(
    session: genai.live.AsyncSession, *, until_tool_call: bool = False, timeout: float = TIMEOUT_S
) -> Turn:
    """SDK messages up to turnComplete (``receive()`` stops there by itself), or up to a tool call."""
    turn = Turn([])
    async with asyncio.timeout(timeout):
        async for msg in session.receive():
            _not_empty(msg)
            turn.messages.append(msg)
            if until_tool_call and msg.tool_call is not None:
                break
    return turn


async def _speak(session: genai.live.AsyncSession, pcm: bytes, *, realtime: bool = False) -> None:
    """16 kHz PCM16 in 20 ms chunks; with ``realtime`` at the pace of a microphone."""
    for i in range(0, len(pcm), CHUNK):
        await session.send_realtime_input(
            audio=types.Blob(data=pcm[i : i + CHUNK], mime_type=f"audio/pcm;rate={IN_RATE}"))
        if realtime:
            await asyncio.sleep(0.02)  # pacing a microphone, not synchronisation


def _assert_spoke(turn: Turn, transcript: str) -> None:
    assert turn.complete, turn.messages[-1:]
    assert turn.transcript == transcript
    assert len(turn.audio) > OUT_RATE * 2 // 10  # > 100 ms of 24 kHz audio
    assert abs(dominant_hz(turn.audio, OUT_RATE) - 440) < 440 * 0.01
    assert turn.usage, "usageMetadata comes with turnComplete"
    assert turn.usage[-1].total_token_count


async def _upstream_with(tls_stack: TlsStack, provider: str, text: str) -> dict[str, Any]:
    """The newest upstream session (on ``provider``'s fake) whose conversation holds ``text``."""
    sessions = await debug_sessions(tls_stack.fake_ports[provider], include_closed=True)
    found = [s for s in sessions if any(text in str(i.get("text")) for i in s["items"])]
    assert found, f"no {provider} upstream session mentions {text!r}"
    return found[-1]


def _upstream_tools(upstream: dict[str, Any], provider: str) -> dict[str, Any]:
    """Function name -> JSON Schema of its parameters, as the provider received them."""
    config = upstream["config"]
    if provider == "openai":
        return {t["name"]: t["parameters"] for t in config["tools"]}
    decls = [d for tool in config.get("tools", []) for d in tool.get("functionDeclarations", [])]
    return {d["name"]: d.get("parametersJsonSchema", d.get("parameters")) for d in decls}


def _upstream_instructions(upstream: dict[str, Any], provider: str) -> str:
    config = upstream["config"]
    if provider == "openai":
        return str(config["instructions"])
    return "".join(p.get("text", "") for p in config.get("systemInstruction", {}).get("parts", []))


# -- 1. spoken turns -------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_spoken_turn_manual_activity(tls_stack: TlsStack, provider: str) -> None:
    client = tls_stack.client(headers=_headers(provider))
    config = _config(vad=False, input_transcription=True)
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await _speak(session, tone(440, 1_000, IN_RATE))
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        turn = await _receive_turn(session)
        _assert_spoke(turn, "turn 1: audio 1.0s")
        assert turn.heard == "audio 1.0s"

        # A second spoken turn on the same connection counts on.
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await _speak(session, tone(440, 500, IN_RATE))
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        turn = await _receive_turn(session)
        _assert_spoke(turn, "turn 2: audio 0.5s")


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_too_short_push_to_talk_turn_keeps_the_call(tls_stack: TlsStack, provider: str) -> None:
    """A 40 ms push-to-talk blip is dropped (docs/decisions.md): OpenAI would refuse to commit it and the
    call used to end with 1007. The next real turn is the first one answered, on the same connection."""
    client = tls_stack.client(headers=_headers(provider))
    async with client.aio.live.connect(model=MODEL, config=_config(vad=False)) as session:
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await _speak(session, tone(440, 40, IN_RATE))
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        await session.send_realtime_input(activity_start=types.ActivityStart())
        await _speak(session, tone(440, 1_000, IN_RATE))
        await session.send_realtime_input(activity_end=types.ActivityEnd())
        turn = await _receive_turn(session)
        assert turn.complete, turn.messages[-1:]
        assert turn.transcript.startswith("turn 1: audio 1.0"), turn.transcript  # the blip was no turn


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_spoken_turn_vad_and_stream_end(tls_stack: TlsStack, provider: str) -> None:
    client = tls_stack.client(headers=_headers(provider))
    async with client.aio.live.connect(model=MODEL, config=_config(vad=True, silence_ms=200)) as session:
        # 0.8 s of tone + 0.2 s of silence: the VAD segment (speech + trailing silence) is 1.0 s.
        await _speak(session, tone(440, 800, IN_RATE) + bytes(IN_RATE * 2 // 5))
        await session.send_realtime_input(audio_stream_end=True)
        turn = await _receive_turn(session)
        _assert_spoke(turn, "turn 1: audio 1.0s")
        assert turn.heard == "", "no input transcription unless asked"


# -- 2. text turns ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_text_turns(tls_stack: TlsStack, provider: str) -> None:
    marker = uuid.uuid4().hex[:8]
    client = tls_stack.client(headers=_headers(provider))
    async with client.aio.live.connect(model=MODEL, config=_config()) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"hello {marker}")]), turn_complete=True)
        _assert_spoke(await _receive_turn(session), f"turn 1: hello {marker}")

        await session.send_realtime_input(text=f"again {marker}")
        _assert_spoke(await _receive_turn(session), f"turn 2: again {marker}")

    # The provider the header / the model chose is the one that answered.
    upstream = await _upstream_with(tls_stack, provider, marker)
    assert [i["text"] for i in upstream["items"] if i["role"] == "user"] == [f"hello {marker}", f"again {marker}"]


# -- 3. tool call answered by the client -------------------------------------------------------------


WEATHER_JSON_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def _weather_tool(form: str) -> types.Tool:
    if form == "schema":  # Gemini Schema, UPPERCASE types
        decl = types.FunctionDeclaration(
            name="get_weather", description="Weather for a city",
            parameters=types.Schema(
                type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}, required=["city"]),
        )
    else:
        decl = types.FunctionDeclaration(
            name="get_weather", description="Weather for a city",
            parameters_json_schema=WEATHER_JSON_SCHEMA,
        )
    return types.Tool(function_declarations=[decl])


@pytest.mark.parametrize("form", ["schema", "json_schema"])
@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_tool_call_answered_by_client(tls_stack: TlsStack, provider: str, form: str) -> None:
    marker = uuid.uuid4().hex[:8]
    client = tls_stack.client(headers=_headers(provider))
    async with client.aio.live.connect(model=MODEL, config=_config(tools=[_weather_tool(form)])) as session:
        question = f"call get_weather for Paris {marker}"
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=question)]), turn_complete=True)
        turn = await _receive_turn(session, until_tool_call=True)
        [call] = turn.tool_calls
        assert call.id and call.name == "get_weather"
        assert call.args == {"text": question}
        assert turn.transcript == "", "the model calls the tool instead of speaking"

        await session.send_tool_response(function_responses=types.FunctionResponse(
            id=call.id, name="get_weather", response={"forecast": "sunny"}))
        turn = await _receive_turn(session)
        prefix = "turn 1: tool get_weather returned "
        assert turn.transcript.startswith(prefix), turn.transcript
        # The output reaches OpenAI as JSON text and Gemini as an object: spacing may differ, not content.
        assert json.loads(turn.transcript.removeprefix(prefix)) == {"forecast": "sunny"}
        _assert_spoke(turn, turn.transcript)

    # Whichever form the client used, the provider got the declaration with a JSON Schema.
    upstream = await _upstream_with(tls_stack, provider, marker)
    assert _upstream_tools(upstream, provider) == {"get_weather": WEATHER_JSON_SCHEMA}


# -- 4. interruption ---------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_interruption_then_next_turn(tls_stack: TlsStack, provider: str) -> None:
    fake_port = tls_stack.fake_ports[provider]
    client = tls_stack.client(headers=_headers(provider))
    await set_knobs(fake_port, pace=1.0, response_ms=3_000)  # 3 s of audio at real time: time to barge in
    try:
        async with client.aio.live.connect(model=MODEL, config=_config(vad=True, silence_ms=200)) as session:
            await session.send_realtime_input(text="tell me a long story")
            first_audio = asyncio.get_running_loop().create_future()
            messages: list[types.LiveServerMessage] = []

            async def collect() -> Turn:
                async with asyncio.timeout(TIMEOUT_S):
                    async for msg in session.receive():
                        _not_empty(msg)
                        messages.append(msg)
                        if msg.data and not first_audio.done():
                            first_audio.set_result(None)
                return Turn(messages)

            receiver = asyncio.create_task(collect())
            await asyncio.wait_for(first_audio, TIMEOUT_S)
            # The user talks over the model, and the microphone stays open: 0.6 s of tone, then silence;
            # 0.2 s of it closes the VAD segment (0.8 s), the rest covers resampler latency on the way.
            speaker = asyncio.create_task(
                _speak(session, tone(440, 600, IN_RATE) + bytes(IN_RATE * 2 * 2 // 5), realtime=True))
            cut = await receiver
            # Only now (the cut response is over, the user still talks): the answer comes at full speed.
            await reset_knobs(fake_port)
            await speaker
            assert cut.interrupted and cut.complete
            assert cut.transcript != "turn 1: tell me a long story", "the cut response did not finish"
            assert not any(m.server_content.generation_complete for m in cut.messages if m.server_content)
            assert len(cut.audio) < OUT_RATE * 2 * 3, "not the whole 3 s"
            # the cut turn's usage comes with its turnComplete, as from the real server
            assert cut.usage and cut.usage[-1].total_token_count, cut.messages[-2:]

            # The barge-in itself is the next turn, and it is answered in full.
            turn = await _receive_turn(session)
            _assert_spoke(turn, "turn 2: audio 0.8s")
            assert not turn.interrupted
    finally:
        await reset_knobs(fake_port)


# -- 5. a new connection with the same session restores the conversation ----------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_reconnect_with_session_header_restores_conversation(tls_stack: TlsStack, provider: str) -> None:
    marker = uuid.uuid4().hex[:8]
    session_id = f"sdk-{marker}"
    client = tls_stack.client(headers=_headers(provider, session_id))
    async with client.aio.live.connect(model=MODEL, config=_config(instructions="be brief")) as session:
        for i, text in enumerate((f"one {marker}", f"two {marker}"), start=1):
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True)
            _assert_spoke(await _receive_turn(session), f"turn {i}: {text}")

    # A different config on the new connection: Gemini takes one setup per connection, so this is how an
    # SDK user changes it. The conversation carries over.
    config = _config(vad=False, input_transcription=True, instructions="be verbose")
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"three {marker}")]), turn_complete=True)
        _assert_spoke(await _receive_turn(session), f"turn 3: three {marker}")

    # Without the header, the same client would start from scratch.
    fresh = tls_stack.client(headers=_headers(provider))
    async with fresh.aio.live.connect(model=MODEL, config=_config()) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"four {marker}")]), turn_complete=True)
        _assert_spoke(await _receive_turn(session), f"turn 1: four {marker}")

    # The second upstream holds the whole conversation, under the second connection's config.
    upstream = await _upstream_with(tls_stack, provider, f"three {marker}")
    users = [i["text"] for i in upstream["items"] if i["role"] == "user"]
    assert users == [f"one {marker}", f"two {marker}", f"three {marker}"]
    assert _upstream_instructions(upstream, provider) == "be verbose"


# -- 6. raw frames: every one parses as a LiveServerMessage, camelCase known keys only --------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_raw_frames_are_live_server_messages(tls_stack: TlsStack, provider: str) -> None:
    url = f"wss://127.0.0.1:{tls_stack.port}{GEMINI_WS_PATH}"
    headers = {"x-goog-api-key": API_KEY, **_headers(provider)}
    frames: list[str | bytes] = []

    async def until(key: str, field: str | None = None) -> dict[str, Any]:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                frames.append(await ws.recv())
                msg = json.loads(frames[-1])
                if key in msg and (field is None or msg[key].get(field)):
                    return dict(msg[key])

    async with websockets.connect(url, ssl=tls_stack.ssl_context, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": f"models/{MODEL}", "generationConfig": {"responseModalities": ["AUDIO"]},
            "inputAudioTranscription": {}, "outputAudioTranscription": {},
            "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
            "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": WEATHER_JSON_SCHEMA}]}],
        }}))
        # A spoken turn, as the SDK sends it (snake_case keys, manual activity).
        await ws.send(json.dumps({"realtime_input": {"activityStart": {}}}))
        pcm = tone(440, 500, IN_RATE)
        for i in range(0, len(pcm), CHUNK):
            blob = {"data": b64(pcm[i : i + CHUNK]), "mime_type": "audio/pcm;rate=16000"}
            await ws.send(json.dumps({"realtime_input": {"audio": blob}}))
        await ws.send(json.dumps({"realtime_input": {"activityEnd": {}}}))
        await until("serverContent", "turnComplete")
        # A tool round trip.
        await ws.send(json.dumps({"client_content": {
            "turns": [{"role": "user", "parts": [{"text": "get_weather in Oslo"}]}], "turnComplete": True}}))
        call = (await until("toolCall"))["functionCalls"][0]
        await ws.send(json.dumps({"tool_response": {"functionResponses": [
            {"id": call["id"], "name": call["name"], "response": {"output": "rain"}}]}}))
        done = await until("serverContent", "turnComplete")
        assert done["turnComplete"] is True

    assert json.loads(frames[0]) == {"setupComplete": {}}
    seen: set[str] = set()
    for frame in frames:
        raw = json.loads(frame)
        assert raw and set(raw) <= SERVER_KEYS, raw.keys()
        assert all(_CAMEL.match(key) for key in raw), raw.keys()
        seen |= set(raw)
        msg = types.LiveServerMessage.model_validate_json(frame)  # extra="forbid": an unknown key raises
        for key in raw:  # each top-level key landed in its field
            assert getattr(msg, _snake(key)) is not None, key
    assert {"setupComplete", "serverContent", "usageMetadata", "toolCall"} <= seen
    # The check above can fail: the SDK's model refuses keys it does not know, at any depth.
    with pytest.raises(pydantic.ValidationError):
        types.LiveServerMessage.model_validate_json('{"serverContent": {"turnComplete": true, "bogus": 1}}')


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


# -- 7. auth failure -----------------------------------------------------------------------------------


async def test_wrong_key_is_refused(tls_stack: TlsStack) -> None:
    client = tls_stack.client(api_key="wrong")
    with pytest.raises(Exception) as info:
        async with client.aio.live.connect(model=MODEL, config=_config()):
            pass
    exc = info.value
    assert isinstance(exc, websockets.exceptions.InvalidStatus), type(exc)
    assert exc.response.status_code == 403
    assert "403" in str(exc)


# -- 8. Gemini-native session resumption through the gateway ----------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_sdk_session_resumption_handle_resumes_the_conversation(tls_stack: TlsStack, provider: str) -> None:
    """The SDK's own resumption: the handle from sessionResumptionUpdate, given back in a new connection's
    setup, continues the conversation, on either provider (the gateway's handle is its session id)."""
    marker = uuid.uuid4().hex[:8]
    client = tls_stack.client(headers=_headers(provider))
    config = _config()
    config.session_resumption = types.SessionResumptionConfig()
    async with client.aio.live.connect(model=MODEL, config=config) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"one {marker}")]), turn_complete=True)
        turn = await _receive_turn(session)
        _assert_spoke(turn, f"turn 1: one {marker}")
        # The update follows turnComplete, where receive() stopped: it is the next message.
        async with asyncio.timeout(TIMEOUT_S):
            async for msg in session.receive():
                if msg.session_resumption_update is not None:
                    update = msg.session_resumption_update
                    break
    assert update.resumable and update.new_handle

    resumed = _config()
    resumed.session_resumption = types.SessionResumptionConfig(handle=update.new_handle)
    async with client.aio.live.connect(model=MODEL, config=resumed) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"two {marker}")]), turn_complete=True)
        _assert_spoke(await _receive_turn(session), f"turn 2: two {marker}")

    other = tls_stack.client(api_key="wrong-account:nope", headers=_headers(provider))
    with pytest.raises(Exception, match="403"):  # a handle is no credential: the key still decides
        async with other.aio.live.connect(model=MODEL, config=resumed):
            pass


# -- 8. a worker killed mid-answer ------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_worker_killed_mid_answer_interrupts_it_and_the_session_goes_on(
    tls_stack: TlsStack, infra: Infra, provider: str
) -> None:
    """kill -9 of the worker while it streams an answer: the SDK hears that answer interrupted and the
    turn complete, never a hang or a closed socket, and the next turn is answered with the history."""
    marker = uuid.uuid4().hex[:8]
    session_id = f"kill-{marker}"
    fake_port = tls_stack.fake_ports[provider]
    client = tls_stack.client(headers=_headers(provider, session_id))
    async with Store.connect(infra.redis_url) as store, client.aio.live.connect(
        model=MODEL, config=_config()
    ) as session:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"one {marker}")]), turn_complete=True)
        _assert_spoke(await _receive_turn(session), f"turn 1: one {marker}")

        victim = ""
        await set_knobs(fake_port, pace=1.0, response_ms=3_000)  # a 3 s answer at real time
        try:
            await session.send_client_content(
                turns=types.Content(role="user", parts=[types.Part(text=f"two {marker}")]), turn_complete=True)
            async with asyncio.timeout(TIMEOUT_S):
                async for msg in session.receive():
                    if msg.data:
                        break  # the answer is playing
            victim = (await store.snapshot(session_key(ACCOUNT, session_id))).record["route_worker"]
            tls_stack.workers[victim].kill()
            tls_stack.workers[victim].popen.wait(5)
            cut = await _receive_turn(session)
            assert cut.interrupted and cut.complete, cut.messages[-3:]
        finally:
            await reset_knobs(fake_port)
            if victim:  # capacity back, under the same name (a restarted pod)
                tls_stack.workers[victim] = tls_stack.stack.start_instance("provider-worker", victim)

        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=f"three {marker}")]), turn_complete=True)
        turn = await _receive_turn(session)
        assert turn.complete and not turn.interrupted
        assert turn.transcript.startswith("turn ") and turn.transcript.endswith(f"three {marker}")

    upstream = await _upstream_with(tls_stack, provider, f"three {marker}")
    said = " ".join(str(i["text"]) for i in upstream["items"] if i["role"] == "user")
    assert said == f"one {marker} two {marker} three {marker}"
