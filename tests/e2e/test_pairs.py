"""Every dialect/provider pair end to end through the four real processes and the fakes.

OpenAI dialect: driven by the official ``openai`` SDK (GA and beta). Gemini dialect: a raw websockets
client here (the google-genai SDK over TLS is covered in test_gemini_sdk.py).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI

from ..conftest import RunningStack
from .helpers import (
    API_KEY,
    GEMINI_WS_PATH,
    TIMEOUT_S,
    assert_not_error,
    b64,
    dominant_hz,
    fake_session_with,
    seed_url,
    tone,
    unb64,
)

pytestmark = pytest.mark.e2e

# Event names that differ between the dialects the SDK speaks.
NAMES = {
    False: {"audio": "response.output_audio.delta", "transcript_done": "response.output_audio_transcript.done"},
    True: {"audio": "response.audio.delta", "transcript_done": "response.audio_transcript.done"},
}


async def _until(conn: Any, event_type: str) -> list[Any]:
    """Events up to and including the first of ``event_type``; an error event that is not a warning
    about an unmappable field fails the test."""
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            seen.append(event)
            assert_not_error(event)
            if event.type == event_type:
                return seen


def _session(beta: bool, *, transcription: bool) -> dict[str, Any]:
    if beta:
        return {
            "modalities": ["text", "audio"],
            "voice": "alloy",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm16",
            "turn_detection": None,
            "input_audio_transcription": {"model": "whisper-1"} if transcription else None,
        }
    return {
        "type": "realtime",
        "output_modalities": ["audio"],
        "audio": {
            "input": {
                "format": {"type": "audio/pcm", "rate": 24_000},
                "turn_detection": None,
                "transcription": {"model": "gpt-4o-mini-transcribe"} if transcription else None,
            },
            "output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": "marin"},
        },
    }


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_openai_sdk_text_and_spoken_turns(running: RunningStack, provider: str, beta: bool) -> None:
    marker = uuid.uuid4().hex[:10]
    names = NAMES[beta]
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{running.ws_base}/v1")
    connect = client.beta.realtime.connect if beta else client.realtime.connect
    model = "gpt-4o-realtime-preview" if beta else "gpt-realtime"
    async with connect(model=model, extra_query={"rs_core": provider}) as conn:
        created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert created.type == "session.created"
        await conn.session.update(session=_session(beta, transcription=True))  # type: ignore[arg-type]
        await _until(conn, "session.updated")

        # Text turn.
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hello {marker}"}]}
        )
        await conn.response.create()
        events = await _until(conn, "response.done")
        done = [e for e in events if e.type == names["transcript_done"]]
        assert [e.transcript for e in done] == [f"turn 1: hello {marker}"]
        audio = b"".join(unb64(e.delta) for e in events if e.type == names["audio"])
        assert len(audio) > 4_800
        assert abs(dominant_hz(audio, 24_000) - 440) < 440 * 0.01
        assert events[-1].response.status == "completed"

        # Spoken turn: one second of tone at 24 kHz, manual commit.
        pcm = tone(440, 1_000, 24_000)
        for i in range(0, len(pcm), 960):  # 20 ms frames
            await conn.input_audio_buffer.append(audio=b64(pcm[i : i + 960]))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await _until(conn, "response.done")
        types = [e.type for e in events]
        assert "input_audio_buffer.committed" in types
        done = [e for e in events if e.type == names["transcript_done"]]
        assert [e.transcript for e in done] == ["turn 2: audio 1.0s"]

    fake = await fake_session_with(running.fake_http(provider), marker, min_items=4)
    kinds = [(i["type"], i["role"]) for i in fake["items"]]
    assert kinds[:4] == [("message", "user"), ("message", "assistant"), ("message", "user"), ("message", "assistant")]
    spoken = fake["items"][2]
    assert spoken["text"] == "audio 1.0s"  # the duration survived resampling to the provider's rate
    assert abs(spoken["audio_hz"] - 440) <= 5  # and so did the pitch


@pytest.mark.parametrize("provider", ["gemini", "openai"])
async def test_gemini_dialect_text_and_spoken_turns(running: RunningStack, provider: str) -> None:
    marker = uuid.uuid4().hex[:10]
    url = f"{running.ws_base}{GEMINI_WS_PATH}?key={API_KEY}&rs_core={provider}"
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": "models/gemini-live-2.5-flash-preview",
            "generationConfig": {"responseModalities": ["AUDIO"]},
            "outputAudioTranscription": {},
            "inputAudioTranscription": {},
            "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},
        }}))
        first = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        assert "setupComplete" in first

        await ws.send(json.dumps({"clientContent": {
            "turns": [{"role": "user", "parts": [{"text": f"hello {marker}"}]}], "turnComplete": True}}))
        audio, transcript, rates = await _gemini_turn(ws)
        assert transcript == f"turn 1: hello {marker}"
        assert rates == {24_000}
        assert abs(dominant_hz(audio, 24_000) - 440) < 440 * 0.01

        # Spoken turn at Gemini's 16 kHz, manual activity (as the SDK's send_realtime_input does it).
        await ws.send(json.dumps({"realtime_input": {"activityStart": {}}}))
        pcm = tone(440, 1_000, 16_000)
        for i in range(0, len(pcm), 640):
            chunk = {"data": b64(pcm[i : i + 640]), "mime_type": "audio/pcm;rate=16000"}
            await ws.send(json.dumps({"realtime_input": {"audio": chunk}}))
        await ws.send(json.dumps({"realtime_input": {"activityEnd": {}}}))
        audio, transcript, _ = await _gemini_turn(ws)
        assert transcript == "turn 2: audio 1.0s"
        assert len(audio) > 4_800

    fake = await fake_session_with(running.fake_http(provider), marker, min_items=4)
    spoken = fake["items"][2]
    assert (spoken["type"], spoken["role"], spoken["text"]) == ("message", "user", "audio 1.0s")
    assert abs(spoken["audio_hz"] - 440) <= 5
    assert fake["input_rate"] == (24_000 if provider == "openai" else 16_000)


async def _gemini_turn(ws: websockets.ClientConnection) -> tuple[bytes, str, set[int]]:
    audio, transcript, rates = bytearray(), [], set()
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            msg = json.loads(await ws.recv())
            assert set(msg) <= {"serverContent", "usageMetadata", "toolCall", "toolCallCancellation",
                                "goAway", "sessionResumptionUpdate", "setupComplete"}, msg
            content = msg.get("serverContent", {})
            for part in content.get("modelTurn", {}).get("parts", []):
                if "inlineData" in part:
                    rates.add(int(part["inlineData"]["mimeType"].split("rate=")[1]))
                    audio += unb64(part["inlineData"]["data"])
            if "outputTranscription" in content:
                transcript.append(content["outputTranscription"]["text"])
            if content.get("turnComplete"):
                return bytes(audio), "".join(transcript), rates


async def test_seed_url_openai_style_on_gemini(running: RunningStack) -> None:
    """The seed README's own example: rs_api=OPENAI (beta names) with rs_core=GEMINI, a raw socket."""
    marker = uuid.uuid4().hex[:10]
    url = seed_url(running.ws_base, f"seed-{marker}", "OPENAI", "GEMINI")
    async with websockets.connect(url, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "session.update", "session": {
            "modalities": ["text", "audio"], "voice": "alloy", "input_audio_format": "pcm16",
            "output_audio_format": "pcm16", "turn_detection": None}}))
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hi {marker}"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT_S):
            while not seen or seen[-1]["type"] != "response.done":
                seen.append(json.loads(await ws.recv()))
                assert seen[-1]["type"] != "error", seen[-1]
    types = [e["type"] for e in seen]
    assert "response.audio.delta" in types and "response.output_audio.delta" not in types
    transcripts = [e["transcript"] for e in seen if e["type"] == "response.audio_transcript.done"]
    assert transcripts == [f"turn 1: hi {marker}"]


async def test_a_config_change_mid_answer_on_gemini_waits_for_the_turn_end(running: RunningStack) -> None:
    """Gemini takes a new configuration only on a new connection. A session.update while an answer streams
    (the Agents SDK sends one) must not cut the answer: the reconnect waits for the turn end."""
    from services.fakes.common import set_knobs

    marker = uuid.uuid4().hex[:10]
    port = running.fake_ports["gemini"]
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{running.ws_base}/v1")
    async with client.realtime.connect(model="gpt-realtime", extra_query={"rs_core": "gemini"}) as conn:
        await conn.session.update(session=_session(False, transcription=False))  # type: ignore[arg-type]
        await _until(conn, "session.updated")
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"one {marker}"}]})
        await conn.response.create()
        await _until(conn, "response.done")
        fake = await fake_session_with(running.fake_http("gemini"), marker, min_items=2)
        await set_knobs(port, session=fake["id"], response_ms=1500, pace=1.0)  # a 1.5 s answer, in real time
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"two {marker}"}]})
        await conn.response.create()
        await _until(conn, "response.output_audio.delta")  # the answer is streaming
        await conn.session.update(session={"type": "realtime", "instructions": f"be brief {marker}"})
        events = await _until(conn, "response.done")
        assert events[-1].response.status == "completed"
        audio = b"".join(unb64(e.delta) for e in events if e.type == "response.output_audio.delta")
        assert len(audio) > 24_000 * 2 * 1.0  # most of the 1.5 s (the first delta came before the update)
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"three {marker}"}]})
        await conn.response.create()
        events = await _until(conn, "response.done")
        assert events[-1].response.status == "completed"
    # The connection ended only after the answer, and the next one has the new instructions and the history.
    from services.fakes.common import debug_sessions

    async with asyncio.timeout(TIMEOUT_S):
        while True:
            sessions = [s for s in await debug_sessions(port, include_closed=True)
                        if any(marker in str(i.get("text")) for i in s["items"])]
            if any(f"be brief {marker}" in json.dumps(s["config"]) for s in sessions):
                break
            await asyncio.sleep(0.05)
    first = min(sessions, key=lambda s: s["created_at"])
    assert first["close_reason"] == "reconfigure" and first["items"][-1]["audio_ms"] == 1500
    last = max(sessions, key=lambda s: s["created_at"])
    said = [i["text"] for i in last["items"] if i["role"] == "user"]
    assert said == [f"one {marker}", f"two {marker}", f"three {marker}"]
