"""Azure OpenAI Realtime, the third provider plugin, end to end through the real processes.

``running`` (conftest) calls ``Stack.start_fakes``, which also starts the OpenAI fake in ``--azure`` mode and
points ``AZURE_OPENAI_*`` at it. The Azure fake refuses an upgrade without ``api-version``, ``deployment`` and
a key, so a session it records proves the URL shape; its redacted headers show which key header came.

The last test runs a small stack of its own whose worker has no Azure settings: the worker must start, and a
session on Azure must end with a clear ``provider_not_configured`` error rather than hang or retry.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from websockets.exceptions import ConnectionClosed

from services.dev.stack import Stack, free_port
from services.fakes.common import debug_sessions

from ..conftest import Infra, RunningStack
from .helpers import API_KEY, GEMINI_WS_PATH, TIMEOUT_S, assert_not_error, b64, fake_session_with, seed_url, tone, unb64

pytestmark = pytest.mark.e2e

AZURE_ENV = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_REALTIME_URL", "AZURE_OPENAI_DEPLOYMENT", "AZURE_OPENAI_API_VERSION")


def _azure_fake(running: RunningStack) -> tuple[str, str, str]:
    """(fake http base, deployment, api-version) the workers were given (tests always run on the fakes)."""
    env = running.stack.env
    return running.fake_http("azure"), env["AZURE_OPENAI_DEPLOYMENT"], env["AZURE_OPENAI_API_VERSION"]


async def _until(conn: Any, event_type: str) -> list[Any]:
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            seen.append(event)
            assert_not_error(event)
            if event.type == event_type:
                return seen


def _transcripts(events: list[Any]) -> list[str]:
    return [e.transcript for e in events if e.type == "response.output_audio_transcript.done"]


async def _assert_not_on_openai(running: RunningStack, marker: str) -> None:
    for session in await debug_sessions(running.fake_ports["openai"], include_closed=True):
        assert marker not in json.dumps(session["items"]), "an rs_core=AZURE session reached the OpenAI fake"


def _assert_azure_handshake(fake: dict[str, Any], deployment: str, api_version: str) -> None:
    assert fake["path"] == "/openai/realtime"
    assert fake["query"] == {"api-version": api_version, "deployment": deployment}
    assert fake["model"] == deployment  # the fake takes the model from the deployment
    assert fake["dialect"] == "ga"  # a GA api-version and no OpenAI-Beta header
    # the key came as api-key (the fake lists secret headers redacted, by name); no Bearer fallback used
    assert fake["headers"].get("api-key") == "<redacted>"
    assert "authorization" not in fake["headers"] and "openai-beta" not in fake["headers"]


async def test_openai_sdk_ga_text_and_spoken_turns_on_azure(running: RunningStack) -> None:
    http, deployment, api_version = _azure_fake(running)
    marker = uuid.uuid4().hex[:10]
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{running.ws_base}/v1")
    async with client.realtime.connect(model="gpt-realtime", extra_query={"rs_core": "AZURE"}) as conn:
        created = await asyncio.wait_for(conn.recv(), TIMEOUT_S)
        assert created.type == "session.created"
        await conn.session.update(session={
            "type": "realtime",
            "output_modalities": ["audio"],
            "audio": {
                "input": {"format": {"type": "audio/pcm", "rate": 24_000}, "turn_detection": None},
                "output": {"format": {"type": "audio/pcm", "rate": 24_000}, "voice": "marin"},
            },
        })
        await _until(conn, "session.updated")

        # Text turn.
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hello {marker}"}]}
        )
        await conn.response.create()
        events = await _until(conn, "response.done")
        assert _transcripts(events) == [f"turn 1: hello {marker}"]
        assert events[-1].response.status == "completed"
        assert any(e.type == "response.output_audio.delta" for e in events)

        # Spoken turn: one second of 440 Hz at 24 kHz in 20 ms frames, manual commit.
        pcm = tone(440, 1_000, 24_000)
        for i in range(0, len(pcm), 960):
            await conn.input_audio_buffer.append(audio=b64(pcm[i : i + 960]))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await _until(conn, "response.done")
        assert "input_audio_buffer.committed" in [e.type for e in events]
        assert _transcripts(events) == ["turn 2: audio 1.0s"]

    fake = await fake_session_with(http, marker, min_items=4)
    _assert_azure_handshake(fake, deployment, api_version)
    spoken = fake["items"][2]
    assert (spoken["role"], spoken["text"]) == ("user", "audio 1.0s")
    assert abs(spoken["audio_hz"] - 440) <= 5
    await _assert_not_on_openai(running, marker)


async def test_seed_url_gemini_dialect_on_azure(running: RunningStack) -> None:
    http, deployment, api_version = _azure_fake(running)
    marker = uuid.uuid4().hex[:10]
    async with websockets.connect(seed_url(running.ws_base, f"az-{marker}", "GEMINI", "AZURE"), max_size=None) as ws:
        await ws.send(json.dumps({"setup": {
            "model": "models/gemini-live-2.5-flash-preview",  # rs_core wins over the model's provider
            "generationConfig": {"responseModalities": ["AUDIO"]},
            "outputAudioTranscription": {},
        }}))
        assert "setupComplete" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        await ws.send(json.dumps({"clientContent": {
            "turns": [{"role": "user", "parts": [{"text": f"hi {marker}"}]}], "turnComplete": True}}))
        audio, transcript = bytearray(), []
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                content = json.loads(await ws.recv()).get("serverContent", {})
                for part in content.get("modelTurn", {}).get("parts", []):
                    if "inlineData" in part:
                        audio += unb64(part["inlineData"]["data"])
                if "outputTranscription" in content:
                    transcript.append(content["outputTranscription"]["text"])
                if content.get("turnComplete"):
                    break
    assert "".join(transcript) == f"turn 1: hi {marker}"
    assert audio
    fake = await fake_session_with(http, marker, min_items=2)
    _assert_azure_handshake(fake, deployment, api_version)
    await _assert_not_on_openai(running, marker)


# -- a worker without Azure settings -----------------------------------------------------------------


@pytest.fixture(scope="module")
def no_azure(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Edge, transformer and a worker with no AZURE_* at all, on a bus of their own (services on a shared
    bus would join the ``running`` stack's queue groups). Yields the edge's ws base."""
    stack = Stack(tmp_path_factory.mktemp("no-azure"))
    for name in AZURE_ENV:
        stack.env.pop(name, None)
    port = free_port()
    stack.env.update({"REDIS_URL": infra.redis_url, "PORT": str(port), "HOST": "127.0.0.1"})
    try:
        stack.start_nats()
        for command in ("transformer", "provider-worker", "edge"):
            stack.start_service(command)  # waits for "<command> ready": the worker starts without Azure
        yield f"ws://127.0.0.1:{port}"
    finally:
        stack.stop()


async def test_unconfigured_azure_fails_the_session_with_a_clear_error(no_azure: str) -> None:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{no_azure}/v1")
    errors: list[Any] = []
    async with client.realtime.connect(model="gpt-realtime", extra_query={"rs_core": "azure"}) as conn:
        with pytest.raises(ConnectionClosed) as closed:  # the session ends: no silent hang, no retry loop
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    event = await conn.recv()
                    if event.type == "error":
                        errors.append(event.error)
    assert [(e.code, e.type) for e in errors] == [("provider_not_configured", "server_error")]
    assert "AZURE_OPENAI_API_KEY" in errors[0].message and "AZURE_OPENAI_DEPLOYMENT" in errors[0].message
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

    # Gemini dialect: no in-band error exists, the close says it.
    url = f"{no_azure}{GEMINI_WS_PATH}?key={API_KEY}&rs_core=AZURE"
    async with websockets.connect(url) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview"}}))
        with pytest.raises(ConnectionClosed) as closed:
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    await ws.recv()
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1011, "provider error: provider_not_configured")
