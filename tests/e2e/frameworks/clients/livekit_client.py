"""LiveKit's OpenAI realtime plugin, standalone (no LiveKit server): RealtimeModel / RealtimeSession driven
directly, as an AgentSession would (runs in the livekit venv).

The provider behind the gateway is chosen with ``rs_core`` in the base URL's query, which the plugin keeps.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import _harness as h
import aiohttp
from livekit import rtc
from livekit.agents import llm
from livekit.plugins.openai.realtime import RealtimeModel

MODEL = "gpt-realtime"
# A model for which the plugin's generate_reply() adds no placeholder "." user turn (2.5 models get one).
GEMINI_MODEL = "gemini-3.1-flash-live-preview"


@llm.function_tool(name=h.TOOL_NAME, description="Current weather for the place the user names.")
async def get_weather(text: str) -> str:
    return h.TOOL_OUTPUT


class _Observer:
    """Subscribes to the session's events and drains every generation's streams into the result."""

    def __init__(self, session: Any, result: h.Result, *, openai: bool) -> None:
        self.result = result
        self.audio = bytearray()
        self.calls: list[llm.FunctionCall] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.responses_done = 0
        self.messages: list[str] = []  # message ids of the generations, in order
        self.server_events: list[str] = []  # raw server event types (OpenAI plugin only)
        if openai:  # the OpenAI plugin's raw events (the Google plugin has none)
            session.on("openai_server_event_received", lambda e: self.server_events.append(str(e.get("type"))))
            session.on("openai_client_event_queued", lambda e: h.note_truncate(result, e))
        for name in (
            "input_speech_started",
            "input_speech_stopped",
            "input_audio_transcription_completed",
            "generation_created",
            "session_reconnected",
            "metrics_collected",
            "error",
        ):
            session.on(name, self._handler(name))

    def _handler(self, name: str) -> Any:
        def on(event: Any) -> None:
            self.result.event(name)
            if name == "error":
                self.result.errors.append(f"{event.label}: {event.error!r} recoverable={event.recoverable}"[:600])
            elif name == "input_audio_transcription_completed" and event.is_final:
                self.result.user_transcripts.append(event.transcript)
            elif name == "generation_created":
                self._spawn(self._drain(event))

        return on

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _drain(self, gen: llm.GenerationCreatedEvent) -> None:
        messages: list[asyncio.Task[None]] = []

        async def message(msg: llm.MessageGeneration) -> None:
            self.messages.append(msg.message_id)
            text: list[str] = []

            async def audio() -> None:
                async for frame in msg.audio_stream:
                    self.audio.extend(bytes(frame.data))
                    self.result.audio_bytes = len(self.audio)

            audio_task = asyncio.create_task(audio())
            async for delta in msg.text_stream:
                text.append(str(delta))
            await audio_task
            self.result.transcripts.append("".join(text))

        async def functions() -> None:
            async for call in gen.function_stream:
                self.calls.append(call)
                self.result.tool_calls.append({"name": call.name, "arguments": call.arguments})

        fn_task = asyncio.create_task(functions())
        async for msg in gen.message_stream:
            messages.append(asyncio.create_task(message(msg)))
        await asyncio.gather(fn_task, *messages)
        self.responses_done += 1
        self.result.event("generation_done")


@contextlib.asynccontextmanager
async def _session(args: argparse.Namespace, result: h.Result, *, vad: bool) -> AsyncIterator[tuple[Any, _Observer]]:
    td: Any = None
    if vad:
        from openai.types.realtime import realtime_audio_input_turn_detection as tdm

        td = tdm.ServerVad(type="server_vad", silence_duration_ms=300, prefix_padding_ms=10)
    async with aiohttp.ClientSession() as http:
        if args.dialect == "gemini":
            from google.genai import types
            from livekit.plugins import google

            # Gemini Live has automatic activity detection on by default: the spoken turn needs nothing set.
            model: Any = google.realtime.RealtimeModel(
                model=GEMINI_MODEL,
                api_key=h.API_KEY,
                http_options=types.HttpOptions(
                    base_url=args.base, api_version="v1beta", headers={"X-RS-Core": args.provider}
                ),
            )
        else:
            model = RealtimeModel(
                model=MODEL,
                base_url=f"{args.base.replace('ws://', 'http://')}/v1/realtime?rs_core={args.provider}",
                api_key=h.API_KEY,
                http_session=http,
                turn_detection=td,
            )
        session = model.session()
        observer = _Observer(session, result, openai=args.dialect == "openai")
        try:
            yield session, observer
        finally:
            await session.aclose()
            await model.aclose()
            for task in list(observer.tasks):
                task.cancel()
            result.audio_hz = h.dominant_hz(bytes(observer.audio))


async def _say(session: Any, text: str) -> None:
    ctx = session.chat_ctx.copy()
    ctx.add_message(role="user", content=text)
    await session.update_chat_ctx(ctx)


def _resolved(reply: asyncio.Future[Any]) -> None:
    """generate_reply's future resolves on the response.created echoing its metadata, before any output."""
    if not reply.done():
        reply.cancel()
        raise AssertionError("generate_reply() still pending after its response finished (no metadata echo)")
    reply.result()  # raises what the plugin raised


async def _has(result: h.Result, pattern: str, what: str) -> None:
    await h.wait_for(lambda: any(re.search(pattern, t) for t in result.transcripts), h.SCENARIO_TIMEOUT_S, what)


async def text(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=False) as (session, observer):
        await _say(session, h.TEXT_PROMPT)
        reply = session.generate_reply()
        await _has(result, rf"^turn 1: {h.TEXT_PROMPT}$", "the text answer")
        await h.wait_for(lambda: observer.responses_done >= 1, 10, "the generation's end")
        _resolved(reply)


async def audio(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=True) as (session, observer):
        for chunk in h.chunks(h.pcm_tone(h.TONE_MS) + h.pcm_silence(h.TRAILING_MS)):
            session.push_audio(rtc.AudioFrame(chunk, h.RATE, 1, len(chunk) // 2))
        await _has(result, r"^turn 1: audio \d+\.\ds$", "the answer to the spoken turn")
        await h.wait_for(lambda: observer.responses_done >= 1, 10, "the generation's end")


async def tool(args: argparse.Namespace, result: h.Result) -> None:
    async with _session(args, result, vad=False) as (session, observer):
        await session.update_tools([get_weather])
        await _say(session, h.TOOL_PROMPT)
        reply = session.generate_reply()
        await h.wait_for(lambda: observer.responses_done >= 1 and bool(observer.calls), 10, "the tool call")
        # What AgentSession does with a tool's result: add call and output to the context, then reply.
        call = observer.calls[0]
        ctx = session.chat_ctx.copy()
        ctx.items.append(
            llm.FunctionCallOutput(call_id=call.call_id, name=call.name, output=h.TOOL_OUTPUT, is_error=False)
        )
        await session.update_chat_ctx(ctx)
        # OpenAI answers a tool output when asked to; Gemini Live answers the tool response by itself.
        final = session.generate_reply() if args.dialect == "openai" else None
        # The test checks the exact text (the Google plugin's {"output": ...} reads differently per provider).
        await _has(result, rf"^turn 1: tool {h.TOOL_NAME} returned ", "the answer after the tool")
        await h.wait_for(lambda: observer.responses_done >= 2, 10, "the second generation's end")
        _resolved(reply)
        if final is not None:
            _resolved(final)


async def bargein(args: argparse.Namespace, result: h.Result) -> None:
    """What AgentSession does when the user speaks over the answer: interrupt() (response.cancel), then
    truncate() the assistant message at the audio played so far."""
    async with _session(args, result, vad=False) as (session, observer):
        result.marker = h.barge_prompt()
        await _say(session, result.marker)
        reply = session.generate_reply()
        await h.wait_for(lambda: h.audio_ms(len(observer.audio)) >= h.BARGE_AFTER_MS, 15, "the answer's audio")
        played = h.audio_ms(len(observer.audio))
        session.interrupt()
        session.truncate(message_id=observer.messages[0], modalities=["audio"], audio_end_ms=played)
        await h.wait_for(lambda: observer.responses_done >= 1, 10, "the interrupted generation's end")
        await h.wait_for(
            lambda: "conversation.item.truncated" in observer.server_events, 10, "the truncate's ack"
        )
        _resolved(reply)


if __name__ == "__main__":
    h.main({"text": text, "audio": audio, "tool": tool, "bargein": bargein})
