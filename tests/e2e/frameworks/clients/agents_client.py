"""openai-agents' RealtimeAgent against the gateway (runs in the openai-agents venv).

The runner connects with its own OpenAI Realtime model (GA dialect); the provider behind the gateway is
chosen with the ``X-RS-Core`` header, which the SDK lets a caller add.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
from typing import Any

import _harness as h

# The SDK's "Failed to validate server event" log names the event only when model data may be logged.
os.environ["OPENAI_AGENTS_DONT_LOG_MODEL_DATA"] = "0"

from agents import function_tool
from agents.realtime import RealtimeAgent, RealtimeRunner

MODEL = "gpt-realtime"


@function_tool(name_override=h.TOOL_NAME)
def get_weather(text: str) -> str:
    """Current weather for the place the user names."""
    return h.TOOL_OUTPUT


def _settings(vad: bool) -> dict[str, Any]:
    td = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 10} if vad else None
    return {"model_name": MODEL, "turn_detection": td, "voice": "marin"}


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace, result: h.Result, *, vad: bool, tools: bool):
    agent = RealtimeAgent(name="assistant", instructions="Be brief.", tools=[get_weather] if tools else [])
    runner = RealtimeRunner(agent, config={"model_settings": _settings(vad)})
    session = await runner.run(
        model_config={
            "api_key": h.API_KEY,
            "url": f"{args.base}/v1/realtime?model={MODEL}",
            # Custom headers replace the SDK's own Authorization header: send both.
            "headers": {"Authorization": f"Bearer {h.API_KEY}", "X-RS-Core": args.provider},
            "initial_model_settings": _settings(vad),
        }
    )
    audio = bytearray()
    done = asyncio.Event()

    async def pump() -> None:
        async for event in session:
            result.event(event.type)
            if event.type == "error":
                # A validation error lists the SDK's whole event union: keep what failed, not the list.
                result.errors.append(re.sub(r"tagged-union\[[^\]]*\]", "tagged-union[...]", repr(event.error))[:800])
            elif event.type == "audio":
                audio.extend(event.audio.data)
                result.audio_bytes = len(audio)
            elif event.type == "tool_start":
                result.tool_calls.append({"name": event.tool.name, "arguments": event.arguments})
            elif event.type == "raw_model_event":
                data = event.data
                result.event(f"model.{data.type}")
                if data.type == "exception":
                    result.errors.append(f"exception: {data.exception!r} ({data.context})")
                elif data.type == "raw_server_event":
                    raw = data.data
                    kind = raw.get("type", "")
                    result.event(f"server.{kind}")
                    if kind in ("response.output_audio_transcript.done", "response.output_text.done"):
                        result.transcripts.append(raw.get("transcript") or raw.get("text") or "")
                    elif kind == "conversation.item.input_audio_transcription.completed":
                        result.user_transcripts.append(raw.get("transcript", ""))

    task = asyncio.create_task(pump())
    try:
        async with session:
            yield session, result, done
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        result.audio_hz = h.dominant_hz(bytes(audio))


async def _has(result: h.Result, pattern: str, what: str) -> None:
    await h.wait_for(lambda: any(re.search(pattern, t) for t in result.transcripts), h.SCENARIO_TIMEOUT_S, what)


async def text(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=False, tools=False) as (session, _, _):
        await session.send_message(h.TEXT_PROMPT)
        await _has(result, rf"^turn 1: {h.TEXT_PROMPT}$", "the text answer")
        await h.wait_for(lambda: "audio_end" in result.events, 10, "audio_end")


async def audio(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=True, tools=False) as (session, _, _):
        for chunk in h.chunks(h.pcm_tone(h.TONE_MS) + h.pcm_silence(h.TRAILING_MS)):
            await session.send_audio(chunk)
        await _has(result, r"^turn 1: audio \d+\.\ds$", "the answer to the spoken turn")
        await h.wait_for(lambda: "audio_end" in result.events, 10, "audio_end")


async def tool(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=False, tools=True) as (session, _, _):
        await session.send_message(h.TOOL_PROMPT)
        await _has(result, rf"^turn 1: tool {h.TOOL_NAME} returned {h.TOOL_OUTPUT}$", "the answer after the tool")
        await h.wait_for(lambda: "tool_end" in result.events, 10, "tool_end")


async def bargein(args: argparse.Namespace, result: h.Result) -> None:
    """The SDK's interrupt (what it does when the user speaks over the answer): response.cancel, a truncate at
    the audio played so far, and the conversation.item.retrieve it sends when the truncate is acknowledged."""
    async with _session(args, result, vad=False, tools=False) as (session, _, _):
        model: Any = session._model  # observed only: every client event it sends passes here
        send = model._send_raw_message

        async def spy(event: Any) -> None:
            h.note_truncate(result, event)
            await send(event)

        model._send_raw_message = spy
        result.marker = h.barge_prompt()
        await session.send_message(result.marker)
        await h.wait_for(lambda: h.audio_ms(result.audio_bytes) >= h.BARGE_AFTER_MS, 15, "the answer's audio")
        await session.interrupt()
        await h.wait_for(lambda: "server.conversation.item.truncated" in result.events, 10, "the truncate's ack")
        await h.wait_for(lambda: "server.conversation.item.retrieved" in result.events, 10, "the retrieved item")
        await h.wait_for(lambda: "server.response.done" in result.events, 10, "the cancelled response's end")


if __name__ == "__main__":
    h.main({"text": text, "audio": audio, "tool": tool, "bargein": bargein})
