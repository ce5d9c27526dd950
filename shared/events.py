"""Canonical events: the only vocabulary on the bus.

Every event is a frozen, tagged msgspec Struct. Tags are short and never reused. Audio travels as raw
PCM16 LE mono ``bytes`` with its rate: never base64, never without a rate. Items (conversation entries)
are canonical too, with a stable id that every hop keeps.

Direction:
- ``Up``   client -> provider (produced by client codecs, consumed by provider codecs)
- ``Down`` provider -> client (produced by provider codecs, consumed by client codecs)
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

__all__ = [
    "CLIENT_SIDE_FIELDS",
    "DOWN_TYPES",
    "UP_TYPES",
    "ActivityEnd",
    "ActivityStart",
    "AudioContent",
    "AudioStreamEnd",
    "Content",
    "Down",
    "Envelope",
    "Event",
    "FunctionCall",
    "FunctionCallOutput",
    "GoAway",
    "InputAudio",
    "InputAudioClear",
    "InputAudioCommit",
    "InputCommitted",
    "InputTranscript",
    "Interrupted",
    "Item",
    "ItemCreate",
    "ItemDelete",
    "ItemTruncate",
    "Message",
    "Notice",
    "OutputAudio",
    "OutputDone",
    "OutputText",
    "OutputTranscript",
    "ProviderError",
    "RateLimit",
    "RateLimits",
    "ResponseCancel",
    "ResponseCreate",
    "ResponseDone",
    "ResponseOptions",
    "ResponseStarted",
    "SessionConfig",
    "SessionReady",
    "SpeechStarted",
    "SpeechStopped",
    "TextContent",
    "Tool",
    "ToolCall",
    "ToolCallCancelled",
    "TurnDetection",
    "Up",
    "Usage",
    "decode_envelope",
    "encode_envelope",
]


class Event(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k"):
    """Base of every canonical event."""


# --------------------------------------------------------------------------------------------------
# Conversation items


class TextContent(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k", tag="text"):
    text: str


class AudioContent(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k", tag="audio"
):
    """Spoken content. The audio itself is not kept in items (the stream holds it); its transcript is.
    ``pcm`` (s16le mono at ``rate``) is set only on the copy of the history a worker restores to a new
    provider connection, for a spoken turn it still holds the audio of and that has no transcript."""

    transcript: str | None = None
    duration_ms: int | None = None
    pcm: bytes | None = None
    rate: int | None = None

    def __repr__(self) -> str:  # keep PCM out of logs and test failure output
        audio = f"<{len(self.pcm)} B at {self.rate} Hz>" if self.pcm is not None else None
        return f"AudioContent(transcript={self.transcript!r}, duration_ms={self.duration_ms}, pcm={audio})"


Content = TextContent | AudioContent


class Message(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k", tag="msg"):
    id: str
    role: Literal["user", "assistant", "system"]
    content: list[Content] = []
    status: str | None = None

    def text(self) -> str:
        """All text of the message, transcripts included, in order."""
        parts: list[str] = []
        for c in self.content:
            if isinstance(c, TextContent):
                parts.append(c.text)
            elif c.transcript:
                parts.append(c.transcript)
        return "".join(parts)


class FunctionCall(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k", tag="fcall"):
    id: str
    call_id: str
    name: str
    arguments: str  # JSON text, exactly as the model produced it


class FunctionCallOutput(
    msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True, tag_field="k", tag="fout"
):
    id: str
    call_id: str
    output: str  # kept verbatim: JSON or not
    name: str | None = None  # Gemini needs the function name with the result


Item = Message | FunctionCall | FunctionCallOutput


# --------------------------------------------------------------------------------------------------
# Session configuration


class TurnDetection(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    type: Literal["server_vad", "semantic_vad"] = "server_vad"
    threshold: float | None = None
    prefix_padding_ms: int | None = None
    silence_duration_ms: int | None = None
    eagerness: str | None = None
    create_response: bool = True
    interrupt_response: bool = True
    idle_timeout_ms: int | None = None


class Tool(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: str | None = None  # JSON Schema as JSON text: keeps events free of Any


class SessionConfig(Event, tag="cfg"):
    """The whole effective session configuration (not a delta): every hop can rebuild from one event.

    ``turn_detection=None`` means manual turns (VAD disabled).
    """

    model: str | None = None
    instructions: str | None = None
    voice: str | None = None
    output_modalities: list[Literal["audio", "text"]] = msgspec.field(default_factory=lambda: ["audio"])
    temperature: float | None = None
    max_output_tokens: int | None = None
    turn_detection: TurnDetection | None = msgspec.field(default_factory=TurnDetection)
    input_transcription: bool = False
    transcription_model: str | None = None
    transcription_language: str | None = None
    tools: list[Tool] = []
    tool_choice: str | None = None
    speed: float | None = None
    # Fields the client set that the target provider may lack: codecs report them, never drop silently.
    extra: dict[str, str] = {}
    # The client's own wire audio formats, as ``AudioFormat.name`` (shared/audio.py: "pcmu/8000",
    # "pcm16/16000"). Provider codecs ignore them (they speak their provider's PCM); they are here so that
    # a replacement transformer can rebuild the client codec from the checkpoint (ClientCodec.resume).
    # None: the dialect has no session-wide format (Gemini names the rate on every chunk).
    client_input_format: str | None = None
    client_output_format: str | None = None

    def for_provider(self) -> SessionConfig:
        """This config without the client-side fields: what a provider codec compares to tell whether
        anything changed upstream (a client switching to G.711 must not reconfigure the provider)."""
        return msgspec.structs.replace(self, **dict.fromkeys(CLIENT_SIDE_FIELDS))


# SessionConfig fields that only the client codec reads.
CLIENT_SIDE_FIELDS: tuple[str, ...] = ("client_input_format", "client_output_format")


class ResponseOptions(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    instructions: str | None = None
    output_modalities: list[Literal["audio", "text"]] | None = None
    voice: str | None = None
    temperature: float | None = None
    max_output_tokens: int | None = None
    tools: list[Tool] | None = None
    tool_choice: str | None = None
    out_of_band: bool = False  # conversation: "none"
    metadata: dict[str, str] | None = None
    # Options with no canonical slot, ``{"response.<wire path>": <JSON text>}`` (OpenAI-only ones such as
    # ``prompt``, ``reasoning``): a provider that has them takes them, the others report them.
    extra: dict[str, str] = {}


# --------------------------------------------------------------------------------------------------
# Up: client -> provider


class InputAudio(Event, tag="in.audio"):
    pcm: bytes  # s16le mono
    rate: int  # Hz

    def __repr__(self) -> str:  # keep PCM out of logs and test failure output
        return f"InputAudio(<{len(self.pcm)} B>, rate={self.rate})"


class InputAudioCommit(Event, tag="in.commit"):
    item_id: str | None = None


class InputAudioClear(Event, tag="in.clear"):
    pass


class AudioStreamEnd(Event, tag="in.end"):
    """The client's microphone closed (Gemini ``audioStreamEnd``)."""


class ActivityStart(Event, tag="in.act0"):
    pass


class ActivityEnd(Event, tag="in.act1"):
    pass


class ItemCreate(Event, tag="item.create"):
    item: Item
    previous_item_id: str | None = None


class ItemTruncate(Event, tag="item.trunc"):
    item_id: str
    content_index: int = 0
    audio_end_ms: int = 0


class ItemDelete(Event, tag="item.del"):
    item_id: str


class ResponseCreate(Event, tag="resp.create"):
    options: ResponseOptions | None = None


class ResponseCancel(Event, tag="resp.cancel"):
    response_id: str | None = None


class SwitchRequest(Event, tag="switch.req"):
    """The client asks to move its conversation to another provider (OpenAI ``rs.switch``, Gemini
    ``rsSwitch``). Never reaches a provider: the transformer hands it to the edge as a ``bus.Signal``."""

    provider: str  # lower case, as in ``rs_core``: "openai", "gemini", "azure"
    when: Literal["now", "turn_end"] = "turn_end"


Up = (
    SessionConfig
    | InputAudio
    | InputAudioCommit
    | InputAudioClear
    | AudioStreamEnd
    | ActivityStart
    | ActivityEnd
    | ItemCreate
    | ItemTruncate
    | ItemDelete
    | ResponseCreate
    | ResponseCancel
    | SwitchRequest
)


# --------------------------------------------------------------------------------------------------
# Down: provider -> client


class SessionReady(Event, tag="ready"):
    """The provider session is open and configured (first time and after every reconnect)."""

    provider: str
    model: str | None = None


class SpeechStarted(Event, tag="vad.start"):
    item_id: str
    audio_start_ms: int = 0


class SpeechStopped(Event, tag="vad.stop"):
    item_id: str
    audio_end_ms: int = 0


class InputCommitted(Event, tag="in.committed"):
    """A user audio item now exists in the provider's conversation."""

    item_id: str
    previous_item_id: str | None = None
    # Stamped by the worker: the last up envelope seq the provider had when it committed. The checkpoint
    # keeps it, so a replacement worker knows which input it must replay (everything after it).
    up_seq: int = 0


class InputTranscript(Event, tag="in.tr"):
    item_id: str
    text: str  # delta, or the whole transcript when final
    final: bool = False


class ResponseStarted(Event, tag="resp.start"):
    response_id: str


class OutputAudio(Event, tag="out.audio"):
    response_id: str
    item_id: str
    pcm: bytes
    rate: int

    def __repr__(self) -> str:
        return f"OutputAudio(<{len(self.pcm)} B>, rate={self.rate}, item={self.item_id})"


class OutputTranscript(Event, tag="out.tr"):
    response_id: str
    item_id: str
    delta: str


class OutputText(Event, tag="out.text"):
    response_id: str
    item_id: str
    delta: str


class OutputDone(Event, tag="out.done"):
    """An output item is complete; ``item`` is its final canonical form."""

    response_id: str
    item: Item


class ToolCall(Event, tag="tool.call"):
    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str  # JSON text


class ToolCallCancelled(Event, tag="tool.cancel"):
    call_ids: list[str]


class Usage(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text_tokens: int = 0
    input_audio_tokens: int = 0
    cached_tokens: int = 0
    output_text_tokens: int = 0
    output_audio_tokens: int = 0
    # Thinking tokens (Gemini ``thoughtsTokenCount``): billed as output but not part of ``output_tokens``
    # (Gemini counts them outside ``responseTokenCount``); ``total_tokens`` includes them.
    reasoning_tokens: int = 0


class ResponseDone(Event, tag="resp.done"):
    response_id: str
    status: Literal["completed", "cancelled", "failed", "incomplete"] = "completed"
    reason: str | None = None  # turn_detected | client_cancelled | max_output_tokens | content_filter | ...
    usage: Usage | None = None


class Interrupted(Event, tag="interrupted"):
    """The user barged in: the response in flight was cut by the provider."""

    response_id: str | None = None
    # The provider had finished generating before the cut (Gemini ``generationComplete`` then
    # ``interrupted``: the model was done, the client was still playing it).
    generation_complete: bool = False


class RateLimit(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    limit: int
    remaining: int
    reset_seconds: float


class RateLimits(Event, tag="ratelimits"):
    limits: list[RateLimit]


class ProviderError(Event, tag="err"):
    code: str
    message: str
    retryable: bool = False
    fatal: bool = False  # the provider session is gone
    param: str | None = None
    client_event_id: str | None = None


class Notice(Event, tag="notice"):
    """Something the client should know that is not an error of its own: an unmappable field, a switch."""

    code: str
    message: str
    param: str | None = None


class GoAway(Event, tag="goaway"):
    time_left_ms: int


class Switched(Event, tag="switch.done"):
    """The conversation now runs on ``to_provider``. Published by the worker that took it over, first on
    its ``down``, so the client hears of it in order with the output; the client codec announces it in
    the dialect (seed clients: ``{"type": "switch"}``; OpenAI dialects: ``rs.switched``)."""

    from_provider: str
    to_provider: str
    reason: str  # "manual", "latency", "failure", "stall", "breaker", "recycle"
    gap_ms: int = 0  # from the decision to the new upstream being ready


Down = (
    SessionReady
    | SpeechStarted
    | SpeechStopped
    | InputCommitted
    | InputTranscript
    | ResponseStarted
    | OutputAudio
    | OutputTranscript
    | OutputText
    | OutputDone
    | ToolCall
    | ToolCallCancelled
    | ResponseDone
    | Interrupted
    | RateLimits
    | ProviderError
    | Notice
    | GoAway
    | Switched
)

UP_TYPES: tuple[type[Event], ...] = Up.__args__  # type: ignore[attr-defined]
DOWN_TYPES: tuple[type[Event], ...] = Down.__args__  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------------
# Bus envelope


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """One bus message on ``rs.s.<sid>.up`` / ``.down``: a batch of events from one input frame."""

    epoch: int  # fencing: consumers drop envelopes from an older epoch
    seq: int  # per (sid, subject, epoch) sender sequence
    events: list[Up | Down]
    # The sender's wall clock (per-hop latency, shared.metrics.observe_hop); last and defaulted: a message
    # without it still decodes, and a decoder without it ignores it.
    sent: float = msgspec.field(default_factory=time.time)


_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Envelope)


def encode_envelope(env: Envelope) -> bytes:
    return _ENCODER.encode(env)


def decode_envelope(data: bytes) -> Envelope:
    return _DECODER.decode(data)
