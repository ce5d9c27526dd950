"""What every framework client script shares; runs inside the framework's own venv (stdlib only).

A script runs its scenarios one after the other, each in a fresh session of the framework, and prints one
JSON object: ``{"scenarios": {name: Result}}``. A scenario's result holds what the framework surfaced
(event types, transcripts, audio), its ``error`` events and every log record at ERROR or above that any
logger emitted while the scenario ran. The pytest side asserts; the script only observes.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import math
import re
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

API_KEY = "996-sdassds-86-asd:secretkey-996"
RATE = 24_000
TONE_HZ = 440.0
TONE_MS = 1_000
TRAILING_MS = 1_500  # silence after the tone: more than any VAD here needs to end the turn
TOOL_NAME = "get_weather"
TOOL_PROMPT = f"Please call {TOOL_NAME} for Paris."  # the fakes call a tool whose name the user text names
TOOL_OUTPUT = "sunny, 21 C"
TEXT_PROMPT = "hello from the framework"
SCENARIO_TIMEOUT_S = 25.0
# Barge-in: the test slows the fakes' answers to real time; the framework interrupts once this much of the
# answer has arrived, as its own interruption path does when the user speaks over the assistant.
BARGE_PROMPT = "tell me a long story"
BARGE_AFTER_MS = 1_000


@dataclass
class Result:
    events: list[str] = field(default_factory=list)  # the framework's own event/frame type names, in order
    errors: list[str] = field(default_factory=list)  # error events/frames the framework surfaced
    error_logs: list[str] = field(default_factory=list)  # log records at ERROR or above, any logger
    transcripts: list[str] = field(default_factory=list)  # assistant text/transcript, one per response
    user_transcripts: list[str] = field(default_factory=list)
    audio_bytes: int = 0  # assistant PCM16 bytes received
    audio_hz: float | None = None  # dominant frequency of the assistant audio
    tool_calls: list[dict[str, Any]] = field(default_factory=list)  # {"name", "arguments"}
    exception: str | None = None  # the scenario raised (or timed out)
    truncates: list[dict[str, Any]] = field(default_factory=list)  # conversation.item.truncate the framework sent
    marker: str | None = None  # the user text that names this scenario's session on the provider (fakes' debug)
    seconds: float = 0.0

    def event(self, name: str) -> None:
        if not self.events or self.events[-1] != name:  # collapse delta runs
            self.events.append(name)


class _Capture(logging.Handler):
    """Collects ERROR records from every logger into the running scenario's result."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.sink: list[str] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.sink is None:
            return
        text = f"{record.name}: {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            text += f" [{type(record.exc_info[1]).__name__}: {record.exc_info[1]}]"
        # A pydantic union error lists every member: keep what failed, not the list.
        self.sink.append(re.sub(r"tagged-union\[[^\]]*\]", "tagged-union[...]", text)[:2000])


CAPTURE = _Capture()


def install_capture() -> None:
    root = logging.getLogger()
    root.addHandler(CAPTURE)
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    # Loggers that do not propagate still reach us: attach to them too.
    for logger in logging.Logger.manager.loggerDict.values():
        if isinstance(logger, logging.Logger) and not logger.propagate:
            logger.addHandler(CAPTURE)


def pcm_tone(ms: int, rate: int = RATE, hz: float = TONE_HZ, amplitude: float = 0.5) -> bytes:
    n = rate * ms // 1000
    peak = int(32767 * amplitude)
    return struct.pack(f"<{n}h", *(int(peak * math.sin(2 * math.pi * hz * i / rate)) for i in range(n)))


def pcm_silence(ms: int, rate: int = RATE) -> bytes:
    return b"\x00\x00" * (rate * ms // 1000)


def dominant_hz(pcm: bytes, rate: int = RATE) -> float | None:
    """Frequency from zero crossings: enough to tell the fakes' 440 Hz tone from noise or silence."""
    n = len(pcm) // 2
    if n < rate // 10:
        return None
    samples = struct.unpack(f"<{n}h", pcm[: n * 2])
    crossings = sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))
    return round(crossings / 2 / (n / rate), 1)


def audio_ms(pcm_bytes: int, rate: int = RATE) -> int:
    return pcm_bytes // 2 * 1000 // rate


def barge_prompt() -> str:
    """A user text unique to this run: the test finds the provider's session by it."""
    return f"{BARGE_PROMPT} ({time.time_ns()})"


def note_truncate(result: Result, event: Any) -> None:
    """Record a client event if it is a truncate (a dict or the framework's own event model)."""
    get = event.get if isinstance(event, dict) else lambda k: getattr(event, k, None)
    if get("type") == "conversation.item.truncate":
        result.truncates.append({"item_id": get("item_id"), "audio_end_ms": get("audio_end_ms")})


def chunks(pcm: bytes, ms: int = 20, rate: int = RATE) -> list[bytes]:
    size = rate * ms // 1000 * 2
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


async def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, give_up: Callable[[], bool] = lambda: False
) -> None:
    """Polls a condition the framework's callbacks make true; raises with ``what`` at the deadline, or as soon
    as ``give_up`` says the framework itself has ended the conversation."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if give_up():
            raise RuntimeError(f"gave up waiting for {what}: the framework ended the conversation")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.02)


Scenario = Callable[[argparse.Namespace, Result], Awaitable[None]]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="ws://127.0.0.1:<port> of the edge")
    p.add_argument("--provider", required=True, choices=("openai", "gemini"))
    p.add_argument("--scenarios", default="text,audio,tool", help="comma-separated; bargein runs on its own")
    p.add_argument(
        "--dialect",
        default="openai",
        choices=("openai", "gemini"),
        help="the framework's OpenAI plugin (--base ws://...) or its Gemini Live one (--base https://..., TLS)",
    )
    return p.parse_args()


async def _run_one(fn: Scenario, args: argparse.Namespace) -> Result:
    result = Result()
    CAPTURE.sink = result.error_logs
    started = time.monotonic()
    try:
        await asyncio.wait_for(fn(args, result), SCENARIO_TIMEOUT_S)
    except BaseException as exc:  # everything is reported, nothing escapes the scenario
        if isinstance(exc, KeyboardInterrupt):
            raise
        result.exception = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
    CAPTURE.sink = None  # scenarios close their session themselves: close-time logs are already in
    result.seconds = round(time.monotonic() - started, 2)
    return result


def main(scenarios: dict[str, Scenario], setup: Callable[[], None] | None = None) -> None:
    args = parse_args()
    install_capture()
    if setup is not None:
        setup()
    out: dict[str, Any] = {"scenarios": {}}

    async def run_all() -> None:
        for name in args.scenarios.split(","):
            out["scenarios"][name] = asdict(await _run_one(scenarios[name], args))

    asyncio.run(run_all())
    sys.stdout.write("\n@@RESULT@@" + json.dumps(out) + "\n")
    sys.stdout.flush()
