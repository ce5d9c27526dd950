"""The checkpoint turns a live conversation into a structured, ordered log in Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from openai import AsyncOpenAI

from shared import events as ev
from shared.session import session_key
from shared.store import Store

from ..conftest import Infra, RunningStack
from .helpers import ACCOUNT, API_KEY, TIMEOUT_S, assert_not_error, b64, tone

pytestmark = pytest.mark.e2e


async def _until_done(conn: object) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()  # type: ignore[attr-defined]
            assert_not_error(event)
            if event.type == "response.done":
                return


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_conversation_log_is_structured_and_ordered(running: RunningStack, infra: Infra, provider: str) -> None:
    client_sid = f"ckpt-{uuid.uuid4().hex[:12]}"
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{running.ws_base}/v1")
    async with client.realtime.connect(
        model="gpt-realtime", extra_query={"rs_core": provider, "rs_u_sessid": client_sid}
    ) as conn:
        await conn.session.update(session={
            "type": "realtime", "instructions": "be brief",
            "audio": {"input": {"turn_detection": None, "transcription": {"model": "gpt-4o-mini-transcribe"}}},
        })
        await conn.conversation.item.create(
            item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]}
        )
        await conn.response.create()
        await _until_done(conn)
        await conn.input_audio_buffer.append(audio=b64(tone(440, 500, 24_000)))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        await _until_done(conn)

    sid = session_key(ACCOUNT, client_sid)
    async with Store.connect(infra.redis_url) as store:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                snap = await store.snapshot(sid)
                done = len(snap.items) >= 4 and isinstance(snap.items[3], ev.Message) and snap.items[2].text()
                if done:
                    break
                await asyncio.sleep(0.05)
    assert snap.record["account"] == ACCOUNT and snap.record["provider"] == provider
    assert snap.config is not None and snap.config.instructions == "be brief"
    roles = [(type(i).__name__, getattr(i, "role", None)) for i in snap.items]
    assert roles == [("Message", "user"), ("Message", "assistant"), ("Message", "user"), ("Message", "assistant")]
    texts = [i.text() for i in snap.items if isinstance(i, ev.Message)]
    assert texts == ["first", "turn 1: first", "audio 0.5s", "turn 2: audio 0.5s"]
