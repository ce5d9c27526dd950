"""Pipecat's OpenAI Realtime service in a minimal pipeline, no transport (runs in the pipecat venv).

Pipeline: user context aggregator -> OpenAIRealtimeLLMService -> assistant context aggregator; frames are
queued into the worker (context runs, raw input audio) and an observer records every frame that moves.
Pipecat cannot add a header or a query (it appends ``?model=`` to the base URL), so the provider behind the
gateway is chosen by the model name: ``gemini-...`` runs on Gemini.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import _harness as h
from loguru import logger
from pipecat.adapters.llm.schemas.function_schema import FunctionSchema
from pipecat.adapters.llm.schemas.tools_schema import ToolsSchema
from pipecat.frames.frames import (
    ErrorFrame,
    FunctionCallInProgressFrame,
    InputAudioRawFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMRunFrame,
    LLMTextFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
)
from pipecat.observers.base_observer import BaseObserver, FramePushed
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.services.llm_service import FunctionCallParams
from pipecat.services.openai.realtime import events
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat.workers.runner import WorkerRunner

MODELS = {"openai": "gpt-realtime", "gemini": "gemini-2.5-flash-native-audio-preview"}
GEMINI_MODEL = "models/gemini-2.5-flash-native-audio-preview-12-2025"


def _loguru_errors() -> None:
    """Pipecat logs through loguru, not logging: its ERROR records go to the same capture."""
    logger.remove()
    logger.add(
        lambda msg: h.CAPTURE.sink is not None and h.CAPTURE.sink.append(str(msg).strip()[:2000]),
        level="ERROR",
        format="{name}: {message}",
    )


class _Recorder(BaseObserver):
    def __init__(self, result: h.Result) -> None:
        super().__init__()
        self.result = result
        self.seen: set[int] = set()
        self.text: list[str] = []
        self.audio = bytearray()
        self.responses_done = 0
        self.calls: set[str] = set()

    async def on_push_frame(self, data: FramePushed) -> None:
        frame = data.frame
        if frame.id in self.seen:  # a frame is pushed again by every processor that passes it on
            return
        self.seen.add(frame.id)
        self.result.event(type(frame).__name__)
        if isinstance(frame, ErrorFrame):
            self.result.errors.append(f"ErrorFrame(fatal={frame.fatal}): {frame.error}"[:600])
        elif isinstance(frame, OutputAudioRawFrame):
            self.audio.extend(frame.audio)
            self.result.audio_bytes = len(self.audio)
        elif isinstance(frame, LLMTextFrame):  # the transcript also comes as TTSTextFrames: count it once
            self.text.append(frame.text)
        elif isinstance(frame, TranscriptionFrame):
            self.result.user_transcripts.append(frame.text)
        elif isinstance(frame, FunctionCallInProgressFrame) and frame.tool_call_id not in self.calls:
            self.calls.add(frame.tool_call_id)  # broadcast both ways as two frames
            self.result.tool_calls.append({"name": frame.function_name, "arguments": json.dumps(frame.arguments)})
        elif isinstance(frame, LLMFullResponseEndFrame):
            self.result.transcripts.append("".join(self.text))
            self.text.clear()
            self.responses_done += 1


async def _get_weather(params: FunctionCallParams) -> None:
    await params.result_callback(h.TOOL_OUTPUT)


TOOLS = ToolsSchema(
    standard_tools=[
        FunctionSchema(
            name=h.TOOL_NAME,
            description="Current weather for the place the user names.",
            properties={"text": {"type": "string"}},
            required=["text"],
        )
    ]
)


@contextlib.asynccontextmanager
async def _pipeline(
    args: argparse.Namespace, result: h.Result, context: LLMContext, *, vad: bool
) -> AsyncIterator[tuple[PipelineWorker, Any]]:
    llm: Any
    if args.dialect == "gemini":
        from google.genai.types import HttpOptions
        from pipecat.services.google.gemini_live.llm import GeminiLiveLLMService

        # Gemini Live: google-genai underneath, which takes headers; automatic activity detection is its default.
        llm = GeminiLiveLLMService(
            api_key=h.API_KEY,
            http_options=HttpOptions(base_url=args.base, api_version="v1beta", headers={"X-RS-Core": args.provider}),
            settings=GeminiLiveLLMService.Settings(model=GEMINI_MODEL),
        )
    else:
        td: Any = events.TurnDetection(silence_duration_ms=300, prefix_padding_ms=10) if vad else False
        llm = OpenAIRealtimeLLMService(
            api_key=h.API_KEY,
            base_url=f"{args.base}/v1/realtime",
            settings=OpenAIRealtimeLLMService.Settings(
                model=MODELS[args.provider],
                session_properties=events.SessionProperties(
                    audio=events.AudioConfiguration(input=events.AudioInput(turn_detection=td))
                ),
            ),
        )
    llm.register_function(h.TOOL_NAME, _get_weather)
    pair = LLMContextAggregatorPair(context)
    recorder = _Recorder(result)
    worker = PipelineWorker(
        Pipeline([pair.user(), llm, pair.assistant()]),
        params=PipelineParams(audio_in_sample_rate=h.RATE, audio_out_sample_rate=h.RATE),
        observers=[recorder],
        idle_timeout_secs=None,
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        yield worker, llm
    finally:
        await worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, 10)
        result.audio_hz = h.dominant_hz(bytes(recorder.audio))


async def _has(result: h.Result, pattern: str, what: str) -> None:
    # Pipecat treats a server error as the end of the connection: no answer follows an ErrorFrame.
    await h.wait_for(
        lambda: any(re.search(pattern, t) for t in result.transcripts),
        h.SCENARIO_TIMEOUT_S,
        what,
        give_up=lambda: bool(result.errors),
    )


async def text(args: argparse.Namespace, result: h.Result) -> None:
    context = LLMContext(messages=[{"role": "user", "content": h.TEXT_PROMPT}])
    async with _pipeline(args, result, context, vad=False) as (worker, _):
        await worker.queue_frames([LLMRunFrame()])
        await _has(result, rf"^turn 1: {h.TEXT_PROMPT}$", "the text answer")


async def audio(args: argparse.Namespace, result: h.Result) -> None:
    async with _pipeline(args, result, LLMContext(), vad=True) as (worker, llm):
        if args.dialect == "gemini":
            # The Gemini Live service takes input audio only once it has its (here empty) context and a session,
            # as in Pipecat's examples (an LLMRunFrame when the client connects), and drops audio until then: a
            # transport's audio keeps flowing, ours is queued at once, so start speaking once it listens.
            await worker.queue_frames([LLMRunFrame()])
            await h.wait_for(lambda: llm._ready_for_realtime_input, 15, "the Gemini Live session to be ready")
        frames = [
            InputAudioRawFrame(audio=chunk, sample_rate=h.RATE, num_channels=1)
            for chunk in h.chunks(h.pcm_tone(h.TONE_MS) + h.pcm_silence(h.TRAILING_MS))
        ]
        await worker.queue_frames(frames)
        await _has(result, r"^turn 1: audio \d+\.\ds$", "the answer to the spoken turn")


async def tool(args: argparse.Namespace, result: h.Result) -> None:
    context = LLMContext(messages=[{"role": "user", "content": h.TOOL_PROMPT}], tools=TOOLS)
    async with _pipeline(args, result, context, vad=False) as (worker, _):
        await worker.queue_frames([LLMRunFrame()])
        # How the result reads depends on the service (OpenAI: JSON-encoded; Gemini Live: wrapped): the test
        # checks the exact text.
        await _has(result, rf"^turn 1: tool {h.TOOL_NAME} returned ", "the answer after the tool")


async def bargein(args: argparse.Namespace, result: h.Result) -> None:
    """The interruption a transport starts when the user speaks over the answer (an InterruptionFrame): with
    turn detection off, Pipecat clears the input, cancels the response and truncates what was played."""
    result.marker = h.barge_prompt()
    context = LLMContext(messages=[{"role": "user", "content": result.marker}])
    server_events: list[str] = []
    parse = events.parse_server_event

    def spy_parse(message: str) -> Any:  # observed only: every server event passes here
        evt = parse(message)
        server_events.append(evt.type)
        return evt

    events.parse_server_event = spy_parse
    try:
        async with _pipeline(args, result, context, vad=False) as (worker, llm):
            send = llm.send_client_event

            async def spy_send(event: Any) -> None:
                h.note_truncate(result, event)
                await send(event)

            llm.send_client_event = spy_send
            await worker.queue_frames([LLMRunFrame()])
            await h.wait_for(lambda: h.audio_ms(result.audio_bytes) >= h.BARGE_AFTER_MS, 15, "the answer's audio")
            await worker.queue_frames([InterruptionFrame()])
            await h.wait_for(lambda: "conversation.item.truncated" in server_events, 10, "the truncate's ack")
            await h.wait_for(lambda: "response.done" in server_events, 10, "the cancelled response's end")
    finally:
        events.parse_server_event = parse


if __name__ == "__main__":
    h.main({"text": text, "audio": audio, "tool": tool, "bargein": bargein}, setup=_loguru_errors)
