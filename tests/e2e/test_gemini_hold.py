"""An OpenAI-dialect client on the Gemini provider: Gemini answers a tool result by itself, the client asks with
``response.create`` (whose ``metadata`` it matches replies by). The worker holds Gemini's answer until that
create arrives (docs/codec-contract.md), at most ``HOLD_FOR_CREATE_S``; this file covers the bound, which the
framework tests never reach: a client that sends no create gets the answer once the hold runs out (no
metadata), and the create it sends later gets an empty response with its own metadata, never a later one.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from shared.codecs.gemini_provider import HOLD_FOR_CREATE_S

from ..conftest import RunningStack
from .helpers import API_KEY, TIMEOUT_S

pytestmark = pytest.mark.e2e

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for the place the user names.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


class _Conn:
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))

    async def until(self, kind: str) -> list[dict[str, Any]]:
        """Every event up to the first of ``kind`` (included); an ``error`` fails the test."""
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                event = json.loads(await self.ws.recv())
                assert event["type"] != "error", event
                seen.append(event)
                if event["type"] == kind:
                    return seen


def _user(text: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]},
    }


def _created(events: list[dict[str, Any]]) -> dict[str, Any]:
    return next(e for e in events if e["type"] == "response.created")["response"]


async def test_tool_answer_without_a_response_create_comes_after_the_hold(running: RunningStack) -> None:
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime&rs_core=gemini"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        conn = _Conn(ws)
        await conn.until("session.created")
        session = {"type": "realtime", "tools": [TOOL], "audio": {"input": {"turn_detection": None}}}
        await conn.send({"type": "session.update", "session": session})
        await conn.until("session.updated")

        await conn.send(_user("Please call get_weather for Paris."))
        await conn.send({"type": "response.create", "response": {"metadata": {"turn": "call"}}})
        events = await conn.until("response.done")
        assert _created(events)["metadata"] == {"turn": "call"}
        call = next(e["item"] for e in events if e["type"] == "response.output_item.done")
        assert call["type"] == "function_call"

        # The result, and no response.create: Gemini's answer is held, then goes out without metadata.
        sent = time.monotonic()
        await conn.send({
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call["call_id"], "output": "sunny"},
        })
        events = await conn.until("response.done")
        created_at = time.monotonic() - sent
        assert created_at >= HOLD_FOR_CREATE_S * 0.9, f"answer after {created_at:.2f}s: not held"
        assert _created(events)["metadata"] is None
        done = events[-1]["response"]
        assert done["status"] == "completed" and done["output"], done

        # The create that comes after all: a response of its own, empty, carrying its metadata.
        await conn.send({"type": "response.create", "response": {"metadata": {"turn": "late"}}})
        events = await conn.until("response.done")
        assert _created(events)["metadata"] == {"turn": "late"}
        assert events[-1]["response"]["metadata"] == {"turn": "late"}
        assert events[-1]["response"]["output"] == []

        # ... so the next turn's metadata is its own.
        await conn.send(_user("hello again"))
        await conn.send({"type": "response.create", "response": {"metadata": {"turn": "next"}}})
        events = await conn.until("response.done")
        assert _created(events)["metadata"] == {"turn": "next"}
        assert events[-1]["response"]["output"], events[-1]
