"""``rtswitch call``: one conversation through the gateway, from the command line, in any client dialect.

    rtswitch call "hello there" "and again" --dialect gemini --provider openai --out reply.wav

Each text (or ``--wav``) is one user turn; the client prints what comes back as a transcript with timings
(time to first audio per turn), saves the reply audio as a WAV and exits non-zero on an error event, a
closed socket or a timeout. It speaks raw dialect frames over ``websockets`` (no SDK at runtime), so what it
prints is what a client of that dialect really receives.

The dialect-specific part is sans-I/O: a :class:`Dialect` builds the connect address and the frames of a
turn and turns each received frame into :class:`Note` s; :func:`run_call` is the only code that does I/O.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

__all__ = ["DIALECTS", "Dialect", "Note", "main", "parse_args", "run_call", "switch_frame"]

DEFAULT_URL = "ws://127.0.0.1:3000"
DEFAULT_KEY = "996-sdassds-86-asd:secretkey-996"  # the dev account (ACCOUNTS default)
GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
OUT_RATE = 24_000  # both dialects answer 24 kHz PCM16 mono
# `error` frames that are the gateway's notices, not failures: the session goes on (a field the provider
# cannot honour; the provider connection being re-established).
NOTICE_CODES = frozenset({"unsupported_field", "provider_reconnecting"})
OTHER_PROVIDER = {"openai": "gemini", "gemini": "openai"}

NoteKind = Literal["ready", "audio", "assistant", "user", "done", "error", "switched", "info"]


@dataclass(frozen=True)
class Note:
    """What one received frame means to the caller. ``audio`` carries PCM16 bytes, the others text."""

    kind: NoteKind
    text: str = ""
    audio: bytes = b""


# -- OpenAI (GA and beta) --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAINames:
    model: str
    audio_delta: str
    transcript_done: str
    session: dict[str, Any]  # session.update body: PCM16 24 kHz both ways, no server VAD (we commit)


OPENAI_GA = OpenAINames(
    "gpt-realtime", "response.output_audio.delta", "response.output_audio_transcript.done",
    {"type": "realtime", "output_modalities": ["audio"], "audio": {
        "input": {"format": {"type": "audio/pcm", "rate": 24_000}, "turn_detection": None,
                  "transcription": {"model": "whisper-1"}},
        "output": {"format": {"type": "audio/pcm", "rate": 24_000}}}},
)
OPENAI_BETA = OpenAINames(
    "gpt-4o-realtime-preview", "response.audio.delta", "response.audio_transcript.done",
    {"modalities": ["audio", "text"], "input_audio_format": "pcm16", "output_audio_format": "pcm16",
     "turn_detection": None, "input_audio_transcription": {"model": "whisper-1"}},
)


def _openai_notes(names: OpenAINames, event: dict[str, Any]) -> list[Note]:
    kind = str(event.get("type", ""))
    if kind == names.audio_delta:
        return [Note("audio", audio=base64.b64decode(event.get("delta", "")))]
    if kind == names.transcript_done:
        return [Note("assistant", str(event.get("transcript", "")))]
    if kind == "response.done":
        response = event.get("response") or {}
        status = response.get("status", "?")
        if status in ("failed", "incomplete"):
            return [Note("error", f"response {status}: {json.dumps(response.get('status_details'))}")]
        return [Note("done", f"response {status}")]
    if kind == "error":
        error = event.get("error") or {}
        if error.get("code") in NOTICE_CODES:
            param = f" {error['param']}" if error.get("param") else ""
            return [Note("info", f"notice {error['code']}{param}: {error.get('message')}")]
        return [Note("error", f"{error.get('code') or error.get('type')}: {error.get('message')}")]
    if kind == "conversation.item.input_audio_transcription.completed":
        return [Note("user", str(event.get("transcript", "")))]
    if kind == "session.created":
        session = event.get("session") or {}
        return [Note("ready", f"session.created {session.get('id', '')} model {session.get('model', '?')}")]
    if kind == "switch" or kind.startswith("rs.switch"):  # the gateway's announcement of a provider switch
        return [Note("switched", json.dumps(event))]
    if kind.startswith("rs."):
        return [Note("info", json.dumps(event))]
    return []


def _openai_turn(names: OpenAINames, text: str | None, pcm24k: bytes | None) -> list[dict[str, Any]]:
    if pcm24k is not None:
        frames: list[dict[str, Any]] = [
            {"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm24k[i : i + 48_000]).decode()}
            for i in range(0, len(pcm24k), 48_000)  # 1 s per frame
        ]
        return [*frames, {"type": "input_audio_buffer.commit"}, {"type": "response.create"}]
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text or ""}]}
    return [{"type": "conversation.item.create", "item": item}, {"type": "response.create"}]


# -- Gemini Live -----------------------------------------------------------------------------------------

GEMINI_MODEL = "gemini-live-2.5-flash-preview"


def _gemini_setup(model: str) -> dict[str, Any]:
    return {"setup": {
        "model": f"models/{model}",
        "generationConfig": {"responseModalities": ["AUDIO"]},
        "realtimeInputConfig": {"automaticActivityDetection": {"disabled": True}},  # we mark the turn
        "inputAudioTranscription": {},
        "outputAudioTranscription": {},
    }}


def _gemini_turn(text: str | None, pcm16k: bytes | None) -> list[dict[str, Any]]:
    if pcm16k is not None:
        chunks = [
            {"realtimeInput": {"audio": {"data": base64.b64encode(pcm16k[i : i + 32_000]).decode(),
                                         "mimeType": "audio/pcm;rate=16000"}}}
            for i in range(0, len(pcm16k), 32_000)  # 1 s per frame
        ]
        return [{"realtimeInput": {"activityStart": {}}}, *chunks, {"realtimeInput": {"activityEnd": {}}}]
    turn = {"role": "user", "parts": [{"text": text or ""}]}
    return [{"clientContent": {"turns": [turn], "turnComplete": True}}]


def _gemini_notes(message: dict[str, Any]) -> list[Note]:
    notes: list[Note] = []
    if "setupComplete" in message:
        notes.append(Note("ready", "setupComplete"))
    content = message.get("serverContent") or {}
    for part in (content.get("modelTurn") or {}).get("parts") or []:
        inline = part.get("inlineData") or {}
        if inline.get("data"):
            notes.append(Note("audio", audio=base64.b64decode(inline["data"])))
        elif part.get("text"):
            notes.append(Note("assistant", str(part["text"])))
    if (content.get("inputTranscription") or {}).get("text"):
        notes.append(Note("user", str(content["inputTranscription"]["text"])))
    if (content.get("outputTranscription") or {}).get("text"):
        notes.append(Note("assistant", str(content["outputTranscription"]["text"])))
    if content.get("interrupted"):
        notes.append(Note("info", "interrupted"))
    if content.get("turnComplete"):
        notes.append(Note("done", "turnComplete"))
    if "goAway" in message:
        notes.append(Note("info", f"goAway {json.dumps(message['goAway'])}"))
    for key in message:
        if "switch" in key.lower():  # the gateway's announcement of a provider switch (rsSwitched / switch)
            notes.append(Note("switched", json.dumps({key: message[key]})))
    return notes


# -- the dialect table -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dialect:
    name: str
    input_rate: int  # the rate user audio is sent at
    connect: Callable[[str, str, str], tuple[str, dict[str, str]]]  # (base url, key, provider) -> url, headers
    opening: Callable[[], list[dict[str, Any]]]  # frames sent right after connecting
    turn: Callable[[str | None, bytes | None], list[dict[str, Any]]]
    notes: Callable[[dict[str, Any]], list[Note]]
    switch: Callable[[str], dict[str, Any]]


def _openai_connect(names: OpenAINames, beta: bool) -> Callable[[str, str, str], tuple[str, dict[str, str]]]:
    def connect(base: str, key: str, provider: str) -> tuple[str, dict[str, str]]:
        headers = {"Authorization": f"Bearer {key}"}
        if beta:
            headers["OpenAI-Beta"] = "realtime=v1"
        return f"{base}/v1/realtime?{urlencode({'model': names.model, 'rs_core': provider})}", headers

    return connect


def _gemini_connect(base: str, key: str, provider: str) -> tuple[str, dict[str, str]]:
    # Raw clients may use ws://; only the google-genai SDK insists on wss://.
    return f"{base}{GEMINI_PATH}?{urlencode({'rs_core': provider})}", {"x-goog-api-key": key}


def _openai_dialect(name: str, names: OpenAINames, beta: bool) -> Dialect:
    return Dialect(
        name, 24_000, _openai_connect(names, beta),
        lambda: [{"type": "session.update", "session": names.session}],
        lambda text, pcm: _openai_turn(names, text, pcm),
        lambda event: _openai_notes(names, event),
        lambda provider: {"type": "rs.switch", "provider": provider},
    )


DIALECTS: dict[str, Dialect] = {
    "openai": _openai_dialect("openai", OPENAI_GA, beta=False),
    "openai-beta": _openai_dialect("openai-beta", OPENAI_BETA, beta=True),
    "gemini": Dialect(
        "gemini", 16_000, _gemini_connect, lambda: [_gemini_setup(GEMINI_MODEL)], _gemini_turn, _gemini_notes,
        lambda provider: {"rsSwitch": {"provider": provider}},
    ),
}


def switch_frame(dialect: str, provider: str) -> dict[str, Any]:
    """The dialect's control that asks the gateway to move the conversation to the other provider."""
    return DIALECTS[dialect].switch(OTHER_PROVIDER[provider])


# -- audio files -----------------------------------------------------------------------------------------


def read_wav(path: Path, rate: int) -> bytes:
    """A 16-bit WAV as PCM16 mono at ``rate`` (channels mixed down, resampled when needed)."""
    import numpy as np
    import soxr

    with wave.open(str(path), "rb") as wav:
        if wav.getsampwidth() != 2:
            raise ValueError(f"{path}: only 16-bit PCM WAV is supported (got {8 * wav.getsampwidth()}-bit)")
        channels, in_rate = wav.getnchannels(), wav.getframerate()
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    mono = samples.reshape(-1, channels).mean(axis=1) if channels > 1 else samples.astype(np.float64)
    if in_rate != rate:
        mono = soxr.resample(mono, in_rate, rate)
    return np.clip(np.rint(mono), -32768, 32767).astype("<i2").tobytes()


def write_wav(path: Path, pcm: bytes, rate: int = OUT_RATE) -> None:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(pcm)


# -- the conversation ------------------------------------------------------------------------------------


class CallFailed(Exception):
    pass


@dataclass
class Transcript:
    """Prints lines with the time since connecting; collects the reply audio."""

    t0: float = field(default_factory=time.monotonic)
    audio: bytearray = field(default_factory=bytearray)
    out: Any = sys.stdout

    def line(self, text: str) -> None:
        print(f"{time.monotonic() - self.t0:8.3f}s  {text}", file=self.out, flush=True)


async def _next_notes(ws: Any, dialect: Dialect, deadline: float) -> list[Note]:
    import websockets

    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise CallFailed("timed out waiting for the gateway")
    try:
        raw = await asyncio.wait_for(ws.recv(), remaining)
    except TimeoutError:
        raise CallFailed("timed out waiting for the gateway") from None
    except websockets.ConnectionClosed as exc:
        raise CallFailed(f"connection closed: code {exc.code} {exc.reason!r}") from None
    try:
        message = json.loads(raw)
    except ValueError:
        return [Note("info", f"non-JSON frame ({len(raw)} bytes)")]
    return dialect.notes(message) if isinstance(message, dict) else []


def _show(note: Note, log: Transcript) -> None:
    """Print one note that is not about a turn's progress (those the turn loop prints itself)."""
    labels = {"user": "user (heard): ", "info": "", "switched": "SWITCHED ", "ready": ""}
    if note.kind in labels:
        log.line(labels[note.kind] + note.text)


async def run_call(
    texts: list[str], *, dialect_name: str, provider: str, url: str = DEFAULT_URL, key: str = DEFAULT_KEY,
    wav: Path | None = None, out: Path | None = None, switch_after: int | None = None, timeout: float = 30.0,
    log: Transcript | None = None,
) -> bytes:
    """Run the conversation; returns the reply audio (PCM16 24 kHz). Raises :class:`CallFailed`."""
    import websockets

    dialect = DIALECTS[dialect_name]
    log = log or Transcript()
    turns: list[tuple[str, str | None, bytes | None]] = [(text, text, None) for text in texts]
    if wav is not None:
        pcm = read_wav(wav, dialect.input_rate)
        turns.append((f"[{wav.name}: {len(pcm) / 2 / dialect.input_rate:.1f} s of audio]", None, pcm))
    if not turns:
        raise CallFailed("nothing to say: give a text or --wav")
    address, headers = dialect.connect(url.rstrip("/"), key, provider)
    log.line(f"connecting {address} ({dialect.name} dialect, {provider} provider)")
    try:
        ws = await asyncio.wait_for(websockets.connect(address, additional_headers=headers, max_size=None), timeout)
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise CallFailed(f"cannot connect to {address}: {exc}") from None
    switch_sent = switched = False
    async with ws:
        for frame in dialect.opening():
            await ws.send(json.dumps(frame))
        deadline = time.monotonic() + timeout
        ready = False
        while not ready:  # session.created / setupComplete
            for note in await _next_notes(ws, dialect, deadline):
                _fail_on_error([note])
                ready = ready or note.kind == "ready"
                _show(note, log)
        for number, (label, text, pcm) in enumerate(turns, start=1):
            log.line(f"turn {number} > {label}")
            started = time.monotonic()
            for frame in dialect.turn(text, pcm):
                await ws.send(json.dumps(frame))
            first_audio: float | None = None
            turn_audio = 0
            said: list[str] = []  # Gemini streams the transcript in pieces: one line per turn
            deadline = started + timeout
            done = False
            while not done:
                for note in await _next_notes(ws, dialect, deadline):
                    if note.kind == "audio":
                        if first_audio is None:
                            first_audio = time.monotonic() - started
                            log.line(f"first audio after {first_audio * 1000:.0f} ms")
                        turn_audio += len(note.audio)
                        log.audio += note.audio
                    elif note.kind == "assistant":
                        said.append(note.text)
                    elif note.kind == "error":
                        raise CallFailed(f"error: {note.text}")
                    elif note.kind == "done":
                        done = True
                        log.line(f"assistant: {''.join(said)}")
                        ttfa = "no audio" if first_audio is None else f"first audio {first_audio * 1000:.0f} ms"
                        seconds = turn_audio / 2 / OUT_RATE
                        log.line(f"turn {number} done ({note.text}): {seconds:.2f} s of audio, {ttfa}")
                    else:
                        switched = switched or note.kind == "switched"
                        _show(note, log)
            if switch_after == number:
                frame = dialect.switch(OTHER_PROVIDER[provider])
                await ws.send(json.dumps(frame))
                switch_sent = True
                log.line(f"switch requested: {json.dumps(frame)}")
        if switch_sent and not switched:  # the switch came after the last turn: wait for its announcement
            deadline = time.monotonic() + timeout
            while not switched:
                for note in await _next_notes(ws, dialect, deadline):
                    if note.kind == "error":
                        raise CallFailed(f"error: {note.text}")
                    switched = switched or note.kind == "switched"
                    _show(note, log)
    audio = bytes(log.audio)
    if out is not None:
        write_wav(out, audio)
        log.line(f"saved {len(audio) / 2 / OUT_RATE:.2f} s of reply audio ({OUT_RATE} Hz mono) to {out}")
    return audio


def _fail_on_error(notes: list[Note]) -> None:
    for note in notes:
        if note.kind == "error":
            raise CallFailed(f"error: {note.text}")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="rtswitch call",
        description="Run one conversation through the gateway and print it. Each TEXT is one user turn.",
    )
    parser.add_argument("texts", nargs="*", metavar="TEXT", help="user turns, in order")
    parser.add_argument("--dialect", choices=sorted(DIALECTS), default="openai",
                        help="client dialect: openai (GA), openai-beta, gemini (default: openai)")
    parser.add_argument("--provider", choices=sorted(OTHER_PROVIDER), default="openai",
                        help="provider the conversation runs on (default: openai)")
    parser.add_argument("--url", default=os.environ.get("RS_URL", DEFAULT_URL),
                        help=f"edge address (default: RS_URL or {DEFAULT_URL})")
    parser.add_argument("--key", default=DEFAULT_KEY, help="ACCOUNT:SECRET (default: the dev account)")
    parser.add_argument("--wav", type=Path, help="16-bit WAV spoken as the last turn")
    parser.add_argument("--out", type=Path, help="save the reply audio here (WAV, 24 kHz mono)")
    parser.add_argument("--switch-after", type=int, metavar="N",
                        help="after turn N, ask the gateway to switch to the other provider")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per turn (default: 30)")
    args = parser.parse_args(argv)
    if not args.texts and args.wav is None:
        parser.error("give at least one TEXT or --wav")
    turns = len(args.texts) + (args.wav is not None)
    if args.switch_after is not None and not 1 <= args.switch_after <= turns:
        parser.error(f"--switch-after must name one of the {turns} turn(s)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        asyncio.run(run_call(
            args.texts, dialect_name=args.dialect, provider=args.provider, url=args.url, key=args.key,
            wav=args.wav, out=args.out, switch_after=args.switch_after, timeout=args.timeout,
        ))
    except (CallFailed, ValueError, OSError) as exc:
        print(f"rtswitch call: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
