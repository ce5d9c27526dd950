"""Bad input over every dialect, through the real stack: the answer the dialect's real server gives, never a
crash, never a hang, and the session usable afterwards where the real server keeps it.

OpenAI (GA and beta): an ``error`` event for each bad event and the session goes on. Gemini: its server
answers a bad message by closing the socket (1007 unreadable or invalid, 1009 too big).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from ..conftest import RunningStack
from .helpers import API_KEY, GEMINI_WS_PATH, TIMEOUT_S

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024
NESTED = "[" * 100_000 + "]" * 100_000


def _append(audio: str) -> str:
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


def _big_append(size: int) -> str:
    """An append of ``size`` bytes on the wire (valid base64 of silence)."""
    head = len(_append(""))
    raw = b"\0" * ((size - head) // 4 * 3)
    frame = _append(base64.b64encode(raw).decode())
    return frame + " " * (size - len(frame))  # JSON allows trailing whitespace: exactly ``size`` bytes


# (name, frame, the error code the client gets; None: no answer, the event is taken)
OPENAI_CASES: list[tuple[str, str | bytes, str | None]] = [
    ("not JSON", "hello", "invalid_json"),
    ("binary garbage", b"\x00\x01\x02\xff", "invalid_json"),
    ("invalid UTF-8", b'{"type": "input_audio_buffer.append", "audio": "\xff\xfe"}', "invalid_json"),
    ("2 MiB frame", _big_append(2 * MIB), "frame_too_large"),
    ("16 MiB frame", _big_append(16 * MIB), "frame_too_large"),
    ("deeply nested JSON", '{"type": "session.update", "session": ' + NESTED + "}", "invalid_json"),
    ("wrong type of type", '{"type": 123}', "invalid_event"),
    ("wrong type of audio", '{"type": "input_audio_buffer.append", "audio": 5}', "invalid_event"),
    ("unknown event", '{"type": "no.such.event"}', "invalid_value"),
    ("bad base64", _append("!!!not base64"), "invalid_value"),
    ("odd-length audio", _append(base64.b64encode(b"\x01\x02\x03").decode()), None),
    ("commit before any append", '{"type": "input_audio_buffer.commit"}', "input_audio_buffer_commit_empty"),
    ("truncate of an unknown item", json.dumps({
        "type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, "audio_end_ms": 10}),
     "item_not_found"),
    ("delete of an unknown item", '{"type": "conversation.item.delete", "item_id": "item_nope"}', "item_not_found"),
]

SETUP = json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview",
                              "generationConfig": {"responseModalities": ["AUDIO"]}}})


def _realtime(data: str) -> str:
    return json.dumps({"realtimeInput": {"audio": {"data": data, "mimeType": "audio/pcm;rate=16000"}}})


# (name, frames after the connect, close code; None: the session lives on)
GEMINI_CASES: list[tuple[str, list[str | bytes], int | None]] = [
    ("a message before setup", [_realtime("AAAA")], 1007),
    ("not JSON", [SETUP, "hello"], 1007),
    ("binary garbage", [SETUP, b"\x00\x01\x02\xff"], 1007),
    ("invalid UTF-8", [SETUP, b'{"realtimeInput": {"text": "\xff\xfe"}}'], 1007),
    ("2 MiB frame", [SETUP, _realtime(base64.b64encode(b"\0" * (3 * MIB // 2)).decode())], 1009),
    ("16 MiB first frame", [_realtime(base64.b64encode(b"\0" * (12 * MIB - 100)).decode())], 1009),
    ("deeply nested JSON", [SETUP, '{"clientContent": ' + NESTED + "}"], 1007),
    ("deeply nested setup", ['{"setup": ' + NESTED + "}"], 1007),
    ("wrong type", [SETUP, '{"realtimeInput": 5}'], 1007),
    ("unknown message", [SETUP, '{"noSuchMessage": {}}'], 1007),
    ("bad base64", [SETUP, _realtime("!!!not base64")], 1007),
    ("two setups", [SETUP, SETUP], 1007),
    ("odd-length audio", [SETUP, _realtime(base64.b64encode(b"\x01\x02\x03").decode())], None),
]

FAILURE_MARKS = ("RecursionError", "MaxPayloadError", "Traceback", "codec failed")


class _Logs:
    """What the services wrote during one test: no traceback may appear there."""

    def __init__(self, running: RunningStack) -> None:
        self.paths: list[Path] = [proc.log_path for proc in running.services.values()]
        self.sizes = {path: path.stat().st_size for path in self.paths}

    def new_failures(self) -> list[str]:
        found = []
        for path in self.paths:
            with path.open("rb") as f:
                f.seek(self.sizes[path])
                text = f.read().decode(errors="replace")
            lines = text.splitlines()
            found += [f"{path.name}: {line[:300]}" for line in lines if any(m in line for m in FAILURE_MARKS)]
        return found


async def _next_json(ws: websockets.ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def _openai_turn(ws: websockets.ClientConnection, marker: str) -> None:
    """A text turn that completes: the session is usable."""
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hello {marker}"}]}}))
    await ws.send(json.dumps({"type": "response.create"}))
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            msg = await _next_json(ws)
            assert msg["type"] != "error", msg
            if msg["type"] == "response.done":
                assert msg["response"]["status"] == "completed", msg
                return


@pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
async def test_openai_bad_input_corpus(running: RunningStack, beta: bool) -> None:
    logs = _Logs(running)
    headers = {"Authorization": f"Bearer {API_KEY}"} | ({"OpenAI-Beta": "realtime=v1"} if beta else {})
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime&rs_core=openai"
    async with websockets.connect(url, additional_headers=headers, max_size=None) as ws:
        assert (await _next_json(ws))["type"] == "session.created"
        for name, frame, code in OPENAI_CASES:
            await ws.send(frame)
            if code is None:
                continue
            msg = await _next_json(ws)  # the very next frame: just the error, no success event before it
            assert msg["type"] == "error", (name, msg)
            assert (msg["error"]["type"], msg["error"]["code"]) == ("invalid_request_error", code), (name, msg)
            assert msg["error"]["message"], name
        # The session survived every one of them, the odd-length append included.
        await ws.send('{"type": "input_audio_buffer.clear"}')
        assert (await _next_json(ws))["type"] == "input_audio_buffer.cleared"
        await _openai_turn(ws, uuid.uuid4().hex[:8])
    assert logs.new_failures() == []


async def _gemini_outcome(ws: websockets.ClientConnection) -> int | None:
    """The close code the server ended with, or None when the session still answers a text turn."""
    await ws.send(json.dumps({"clientContent": {
        "turns": [{"role": "user", "parts": [{"text": "still there?"}]}], "turnComplete": True}}))
    try:
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("serverContent", {}).get("turnComplete"):
                    return None
    except ConnectionClosed:
        assert ws.close_code is not None
        return ws.close_code


@pytest.mark.parametrize(("name", "frames", "code"), GEMINI_CASES, ids=[c[0] for c in GEMINI_CASES])
async def test_gemini_bad_input_corpus(
    running: RunningStack, name: str, frames: list[str | bytes], code: int | None
) -> None:
    logs = _Logs(running)
    url = f"{running.ws_base}{GEMINI_WS_PATH}?key={API_KEY}&rs_core=gemini"
    async with websockets.connect(url, max_size=None) as ws:
        for i, frame in enumerate(frames):
            await ws.send(frame)
            if i == 0 and frame is SETUP:
                assert "setupComplete" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        outcome = await _gemini_outcome(ws)
        assert outcome == code, (name, outcome, ws.close_reason)
        if code is not None:
            assert ws.close_reason, name  # the client hears why
    assert logs.new_failures() == []


async def test_a_large_item_is_echoed_whole(running: RunningStack) -> None:
    """A legal 700 KB text item: GA echoes it twice (added, done), more than one bus message holds; the
    transformer sends the frames in messages of their own and the client gets both."""
    logs = _Logs(running)
    text = "x" * 700_000
    url = f"{running.ws_base}/v1/realtime?model=gpt-realtime&rs_core=openai"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}, max_size=None) as ws:
        assert (await _next_json(ws))["type"] == "session.created"
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "id": "item_big", "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
        seen = []
        async with asyncio.timeout(TIMEOUT_S):
            while len(seen) < 2:
                msg = await _next_json(ws)
                assert msg["type"] != "error", msg
                if msg["type"] in ("conversation.item.added", "conversation.item.done"):
                    assert msg["item"]["content"][0]["text"] == text
                    seen.append(msg["type"])
        assert seen == ["conversation.item.added", "conversation.item.done"]
        await ws.send('{"type": "conversation.item.delete", "item_id": "item_big"}')
        assert (await _next_json(ws))["type"] == "conversation.item.deleted"
    assert logs.new_failures() == []
