"""``rtswitch call`` as a user runs it: a subprocess against a real stack, in every dialect on every provider.

The switch control is checked against a tiny local WebSocket server standing in for the edge: it records
what the client sends and answers the announcement, so the test does not depend on the edge's switch.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import wave
from pathlib import Path
from typing import Any

import pytest
import websockets

from services.dev.stack import free_port
from shared.audio import dominant_hz, tone

from ..conftest import RunningStack

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


async def call(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RS_URL", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli", "call", *args, env=env, cwd=str(ROOT),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_tone(path: Path, hz: float, ms: float, rate: int) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(tone(hz, ms, rate))


@pytest.mark.parametrize("provider", ["openai", "gemini"])
@pytest.mark.parametrize("dialect", ["openai", "openai-beta", "gemini"])
async def test_call_two_texts_and_a_wav(running: RunningStack, tmp_path: Path, dialect: str, provider: str) -> None:
    spoken, reply = tmp_path / "in.wav", tmp_path / "reply.wav"
    write_tone(spoken, 300, 1200, 44_100)  # any rate: the client resamples to the dialect's input rate
    rc, out, err = await call(
        "hello there", "and again", "--dialect", dialect, "--provider", provider,
        "--url", running.ws_base, "--wav", str(spoken), "--out", str(reply),
    )
    assert rc == 0, out + err
    lines = out.splitlines()
    for expected in ("assistant: turn 1: hello there", "assistant: turn 2: and again", "user (heard): audio 1.2s",
                     "assistant: turn 3: audio 1.2s"):
        assert any(line.endswith(expected) for line in lines), f"{expected!r} not in:\n{out}"
    assert sum("first audio after" in line for line in lines) == 3, out
    assert f"({dialect} dialect, {provider} provider)" in out
    with wave.open(str(reply), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 24_000)
        pcm = wav.readframes(wav.getnframes())
    assert len(pcm) > 3 * 24_000 * 2 // 10, "less than 0.1 s of reply audio per turn"
    assert abs(dominant_hz(pcm, 24_000) - 440) < 3, "the fakes answer a 440 Hz tone"


async def test_call_bad_key_exits_non_zero(running: RunningStack) -> None:
    rc, _, err = await call("hi", "--url", running.ws_base, "--key", "996-sdassds-86-asd:wrong")
    assert rc == 1
    assert "HTTP 403" in err


async def test_call_nothing_listening_exits_non_zero() -> None:
    port = free_port()
    rc, _, err = await call("hi", "--url", f"ws://127.0.0.1:{port}")
    assert rc == 1
    assert "cannot connect" in err


class TinyEdge:
    """Just enough of each dialect to hold a conversation; records frames, announces a switch."""

    def __init__(self, *, answer: bool = True) -> None:
        self.received: list[dict[str, Any]] = []
        self.answer = answer

    async def handler(self, ws: Any) -> None:
        gemini = "BidiGenerateContent" in ws.request.path
        if not gemini:
            await ws.send(json.dumps({"type": "session.created", "session": {"id": "s1", "model": "m"}}))
        async for raw in ws:
            frame = json.loads(raw)
            self.received.append(frame)
            if not self.answer:
                continue
            for reply in (self._gemini if gemini else self._openai)(frame):
                await ws.send(json.dumps(reply))

    @staticmethod
    def _openai(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if "refuse me" in json.dumps(frame):
            return [{"type": "error", "error": {"type": "invalid_request_error", "code": "x", "message": "no"}}]
        if frame.get("type") == "response.create":
            audio = base64.b64encode(tone(440, 200, 24_000)).decode()
            return [{"type": "response.output_audio.delta", "delta": audio},
                    {"type": "response.output_audio_transcript.done", "transcript": "ok"},
                    {"type": "response.done", "response": {"status": "completed"}}]
        if frame.get("type") == "rs.switch":
            return [{"type": "rs.switched", "from_provider": "openai", "to_provider": frame["provider"]}]
        return []

    @staticmethod
    def _gemini(frame: dict[str, Any]) -> list[dict[str, Any]]:
        if "setup" in frame:
            return [{"setupComplete": {}}]
        if "clientContent" in frame:
            return [{"serverContent": {"outputTranscription": {"text": "ok"}}},
                    {"serverContent": {"turnComplete": True}}]
        if "rsSwitch" in frame:
            return [{"rsSwitched": {"fromProvider": "openai", "toProvider": frame["rsSwitch"]["provider"]}}]
        return []


@pytest.mark.parametrize(("dialect", "control"), [
    ("openai", {"type": "rs.switch", "provider": "gemini"}),
    ("openai-beta", {"type": "rs.switch", "provider": "gemini"}),
    ("gemini", {"rsSwitch": {"provider": "gemini"}}),
])
@pytest.mark.parametrize("after", [1, 2])
async def test_switch_after_sends_the_control_and_prints_the_announcement(
    dialect: str, control: dict[str, Any], after: int
) -> None:
    edge = TinyEdge()
    async with websockets.serve(edge.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rc, out, err = await call(
            "one", "two", "--dialect", dialect, "--provider", "openai", "--url", f"ws://127.0.0.1:{port}",
            "--switch-after", str(after), "--timeout", "10",
        )
    assert rc == 0, out + err
    assert edge.received.count(control) == 1, edge.received
    # Sent after turn N's answer, before turn N+1's text.
    texts = [i for i, f in enumerate(edge.received) if "two" in json.dumps(f)]
    assert (edge.received.index(control) < texts[0]) == (after == 1)
    assert "SWITCHED" in out and "gemini" in out.split("SWITCHED", 1)[1], out


async def test_a_turn_without_answer_times_out() -> None:
    edge = TinyEdge(answer=False)
    async with websockets.serve(edge.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rc, _, err = await call("hi", "--url", f"ws://127.0.0.1:{port}", "--timeout", "1")
    assert rc == 1
    assert "timed out" in err


async def test_an_error_event_is_a_failure() -> None:
    edge = TinyEdge()
    async with websockets.serve(edge.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        rc, out, err = await call("fine", "refuse me", "--url", f"ws://127.0.0.1:{port}", "--timeout", "10")
    assert rc == 1
    assert "turn 1 done" in out and "turn 2 done" not in out
    assert "error: x: no" in err
