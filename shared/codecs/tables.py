"""Mapping tables between OpenAI Realtime, Gemini Live and the canonical vocabulary, as data.

Codecs look things up here instead of branching on names: a new voice, status or event alias is one
row. Functions below are thin lookups over the tables (plus the few numeric conversions a table cannot
hold, e.g. a VAD threshold band). Everything is read-only module data.

Sources: the OpenAI Realtime API reference (session, server events), the Gemini Live API reference (setup
enums, usage), docs/codec-contract.md (the mapping); google-genai ``types.py`` for the Gemini enums.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shared import events as ev

__all__ = [
    "GEMINI_TO_OPENAI_VOICE",
    "GEMINI_TURN_COMPLETE_REASON",
    "GEMINI_VOICES",
    "OPENAI_BETA_SERVER_ALIASES",
    "OPENAI_RESPONSE_PASSTHROUGH",
    "OPENAI_RESPONSE_STATUS",
    "OPENAI_RETRYABLE_ERRORS",
    "OPENAI_SESSION_PASSTHROUGH",
    "OPENAI_TO_GEMINI_VOICE",
    "OPENAI_VOICES",
    "eagerness_for",
    "end_sensitivity_for",
    "gemini_turn_outcome",
    "merge_usage",
    "openai_status",
    "start_sensitivity_for",
    "threshold_for",
    "to_gemini_voice",
    "to_openai_voice",
    "usage_from_gemini",
    "usage_from_openai",
    "usage_to_gemini",
    "usage_to_openai",
]

# --------------------------------------------------------------------------------------------------
# Voices (the OpenAI Realtime API reference: OpenAI GA voices; the Gemini Live API reference: its 30 voices)

OPENAI_VOICES: frozenset[str] = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)

GEMINI_VOICES: frozenset[str] = frozenset(
    {
        "Zephyr", "Puck", "Charon", "Kore", "Fenrir", "Leda", "Orus", "Aoede", "Callirrhoe", "Autonoe",
        "Enceladus", "Iapetus", "Umbriel", "Algieba", "Despina", "Erinome", "Algenib", "Rasalgethi",
        "Laomedeia", "Achernar", "Alnilam", "Schedar", "Gacrux", "Pulcherrima", "Achird",
        "Zubenelgenubi", "Vindemiatrix", "Sadachbia", "Sadaltager", "Sulafat",
    }
)  # fmt: skip

# One Gemini voice per OpenAI voice, all distinct so the classic pairs round-trip. marin and cedar
# (GA-only, the "natural" pair) take the closest unused Gemini voices: Sulafat ("warm") and Algieba
# ("smooth") rather than reusing Aoede/Charon, which would make the reverse lookup ambiguous.
OPENAI_TO_GEMINI_VOICE: Mapping[str, str] = MappingProxyType(
    {
        "alloy": "Puck",
        "ash": "Charon",
        "ballad": "Fenrir",
        "coral": "Kore",
        "echo": "Orus",
        "sage": "Aoede",
        "shimmer": "Leda",
        "verse": "Zephyr",
        "marin": "Sulafat",
        "cedar": "Algieba",
    }
)

# Every Gemini voice -> an OpenAI voice: the inverse of the table above, then the other 20 by the
# character Google gives them (bright/upbeat -> alloy/coral, firm/informative -> ash/echo, soft/
# gentle -> sage/shimmer, warm/mature -> marin/cedar).
GEMINI_TO_OPENAI_VOICE: Mapping[str, str] = MappingProxyType(
    {
        **{g: o for o, g in OPENAI_TO_GEMINI_VOICE.items()},
        "Callirrhoe": "coral",
        "Autonoe": "shimmer",
        "Enceladus": "ballad",
        "Iapetus": "echo",
        "Umbriel": "alloy",
        "Despina": "sage",
        "Erinome": "coral",
        "Algenib": "ash",
        "Rasalgethi": "echo",
        "Laomedeia": "shimmer",
        "Achernar": "sage",
        "Alnilam": "ash",
        "Schedar": "cedar",
        "Gacrux": "marin",
        "Pulcherrima": "coral",
        "Achird": "alloy",
        "Zubenelgenubi": "verse",
        "Vindemiatrix": "sage",
        "Sadachbia": "verse",
        "Sadaltager": "cedar",
    }
)

_GEMINI_BY_LOWER: Mapping[str, str] = MappingProxyType({v.lower(): v for v in GEMINI_VOICES})


def to_gemini_voice(voice: str | None) -> str | None:
    """A Gemini voice name for ``voice``; a Gemini voice passes through (canonical casing).

    ``None`` when the voice is unknown to both families (the caller reports it).
    """
    if voice is None:
        return None
    key = voice.strip().lower()
    return _GEMINI_BY_LOWER.get(key) or OPENAI_TO_GEMINI_VOICE.get(key)


def to_openai_voice(voice: str | None) -> str | None:
    """An OpenAI voice name for ``voice``; an OpenAI voice passes through. ``None`` when unknown."""
    if voice is None:
        return None
    key = voice.strip().lower()
    if key in OPENAI_VOICES:
        return key
    gemini = _GEMINI_BY_LOWER.get(key)
    return GEMINI_TO_OPENAI_VOICE.get(gemini) if gemini else None


# --------------------------------------------------------------------------------------------------
# VAD: OpenAI threshold (0..1, default 0.5, higher = needs louder speech) and semantic_vad eagerness
# <-> Gemini start/end-of-speech sensitivity (two levels each; unspecified = server default, HIGH on
# Gemini Live). Bands are (upper bound exclusive, value); None means "leave the server default".

_THRESHOLD_BANDS: tuple[tuple[float, str | None], ...] = (
    (0.4, "START_SENSITIVITY_HIGH"),  # a low threshold triggers on quieter speech
    (0.6, None),  # around OpenAI's default 0.5: Gemini's own default
    (float("inf"), "START_SENSITIVITY_LOW"),
)

_EAGERNESS_TO_END: Mapping[str, str | None] = MappingProxyType(
    {
        "high": "END_SENSITIVITY_HIGH",  # end the turn early -> answer sooner
        "low": "END_SENSITIVITY_LOW",  # wait longer for the user to finish
        "medium": None,
        "auto": None,
    }
)

_START_TO_THRESHOLD: Mapping[str, float] = MappingProxyType(
    {"START_SENSITIVITY_HIGH": 0.3, "START_SENSITIVITY_LOW": 0.7}
)
_END_TO_EAGERNESS: Mapping[str, str] = MappingProxyType(
    {"END_SENSITIVITY_HIGH": "high", "END_SENSITIVITY_LOW": "low"}
)


def start_sensitivity_for(threshold: float | None) -> str | None:
    if threshold is None:
        return None
    for upper, value in _THRESHOLD_BANDS:
        if threshold < upper:
            return value
    return None


def end_sensitivity_for(eagerness: str | None) -> str | None:
    return None if eagerness is None else _EAGERNESS_TO_END.get(eagerness.lower())


def threshold_for(start_sensitivity: str | None) -> float | None:
    return None if start_sensitivity is None else _START_TO_THRESHOLD.get(start_sensitivity.upper())


def eagerness_for(end_sensitivity: str | None) -> str | None:
    return None if end_sensitivity is None else _END_TO_EAGERNESS.get(end_sensitivity.upper())


# --------------------------------------------------------------------------------------------------
# Statuses and finish reasons

Outcome = tuple[str, str | None]  # (canonical ResponseDone.status, reason)

# OpenAI response.status -> canonical status (the OpenAI Realtime API reference response object). in_progress never
# ends a response; treat it as completed rather than invent a failure.
OPENAI_RESPONSE_STATUS: Mapping[str, str] = MappingProxyType(
    {
        "completed": "completed",
        "cancelled": "cancelled",
        "failed": "failed",
        "incomplete": "incomplete",
        "in_progress": "completed",
    }
)


def openai_status(status: str | None) -> str:
    return OPENAI_RESPONSE_STATUS.get(status or "completed", "failed")


# Gemini serverContent.turnCompleteReason -> canonical outcome (google-genai TurnCompleteReason).
GEMINI_TURN_COMPLETE_REASON: Mapping[str, Outcome] = MappingProxyType(
    {
        "TURN_COMPLETE_REASON_UNSPECIFIED": ("completed", None),
        "NEED_MORE_INPUT": ("completed", None),
        "MALFORMED_FUNCTION_CALL": ("failed", "malformed_function_call"),
        "RESPONSE_REJECTED": ("failed", "response_rejected"),
        "MAX_REGENERATION_REACHED": ("failed", "max_regeneration_reached"),
        "BLOCKLIST": ("incomplete", "content_filter"),
        # Gemini finishReason spellings, in case they show up here too
        "STOP": ("completed", None),
        "MAX_TOKENS": ("incomplete", "max_output_tokens"),
        "SAFETY": ("incomplete", "content_filter"),
        "RECITATION": ("incomplete", "content_filter"),
        "PROHIBITED_CONTENT": ("incomplete", "content_filter"),
        "SPII": ("incomplete", "content_filter"),
    }
)

# The ~20 *_PROHIBITED* / *_SAFETY / *_CELEBRITY ... reasons are all content filtering.
_FILTER_MARKERS: tuple[str, ...] = ("PROHIBITED", "SAFETY", "BLOCKLIST", "CELEBRITY", "PEOPLE", "MINORS")


def gemini_turn_outcome(reason: str | None) -> Outcome:
    """Canonical (status, reason) for a Gemini ``turnCompleteReason`` (``None`` = plain completion)."""
    if not reason:
        return ("completed", None)
    known = GEMINI_TURN_COMPLETE_REASON.get(reason.upper())
    if known is not None:
        return known
    if any(m in reason.upper() for m in _FILTER_MARKERS):
        return ("incomplete", "content_filter")
    return ("completed", reason.lower())


# OpenAI error.type / error.code values worth retrying (the OpenAI Realtime API reference error).
OPENAI_RETRYABLE_ERRORS: frozenset[str] = frozenset(
    {"server_error", "rate_limit_exceeded", "rate_limit_error", "overloaded_error", "session_expired"}
)

# --------------------------------------------------------------------------------------------------
# OpenAI-only fields: the client codecs carry them in SessionConfig.extra / ResponseOptions.extra as
# {"session.<wire path>": JSON text}; the OpenAI provider codec puts them back where GA keeps them (beta
# spellings included), every other provider reports them. key -> GA wire path (dots nest).

OPENAI_SESSION_PASSTHROUGH: Mapping[str, str] = MappingProxyType(
    {
        "session.tracing": "tracing",
        "session.truncation": "truncation",
        "session.prompt": "prompt",
        "session.include": "include",
        "session.reasoning": "reasoning",
        "session.parallel_tool_calls": "parallel_tool_calls",
        "session.tool_choice": "tool_choice",  # an MCP tool choice (functions have a canonical slot)
        "session.audio.input.noise_reduction": "audio.input.noise_reduction",
        "session.input_audio_noise_reduction": "audio.input.noise_reduction",  # beta
        "session.audio.input.transcription.prompt": "audio.input.transcription.prompt",
        "session.input_audio_transcription.prompt": "audio.input.transcription.prompt",  # beta
        "session.audio.input.transcription.keywords": "audio.input.transcription.keywords",
        "session.audio.input.transcription.languages": "audio.input.transcription.languages",
        "session.audio.input.transcription.delay": "audio.input.transcription.delay",
    }
)
OPENAI_SESSION_TOOL_PREFIX = "session.tools["  # GA MCP tools, appended to the function tools

OPENAI_RESPONSE_PASSTHROUGH: Mapping[str, str] = MappingProxyType(
    {
        "response.prompt": "prompt",
        "response.reasoning": "reasoning",
        "response.parallel_tool_calls": "parallel_tool_calls",
        "response.tool_choice": "tool_choice",  # an MCP tool choice
    }
)

# --------------------------------------------------------------------------------------------------
# OpenAI beta server event names -> GA names (the OpenAI Realtime API reference). The codecs dispatch on GA names.

OPENAI_BETA_SERVER_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "response.audio.delta": "response.output_audio.delta",
        "response.audio.done": "response.output_audio.done",
        "response.audio_transcript.delta": "response.output_audio_transcript.delta",
        "response.audio_transcript.done": "response.output_audio_transcript.done",
        "response.text.delta": "response.output_text.delta",
        "response.text.done": "response.output_text.done",
        "conversation.item.created": "conversation.item.added",
        "transcription_session.updated": "session.updated",
        "transcription_session.created": "session.created",
    }
)

# --------------------------------------------------------------------------------------------------
# Usage: Gemini usageMetadata <-> canonical Usage <-> OpenAI response.usage

# Gemini *TokensDetails modality -> (input field, output field) of Usage. MODALITY_UNSPECIFIED counts
# as TEXT (google-genai MediaModality docstring); IMAGE/VIDEO/DOCUMENT have no canonical field.
_GEMINI_MODALITY_FIELDS: Mapping[str, tuple[str, str]] = MappingProxyType(
    {
        "TEXT": ("input_text_tokens", "output_text_tokens"),
        "MODALITY_UNSPECIFIED": ("input_text_tokens", "output_text_tokens"),
        "AUDIO": ("input_audio_tokens", "output_audio_tokens"),
    }
)


def _int(value: object) -> int:
    # proto-JSON may send int64 as a string; anything else counts as 0 rather than failing a turn
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _get(meta: Mapping[str, object], camel: str, snake: str) -> object:
    return meta[camel] if camel in meta else meta.get(snake)


def _details(meta: Mapping[str, object], camel: str, snake: str) -> dict[str, int]:
    out: dict[str, int] = {}
    raw = _get(meta, camel, snake)
    if not isinstance(raw, list):
        return out
    for entry in raw:
        if isinstance(entry, dict):
            modality = entry.get("modality")
            count = _int(_get(entry, "tokenCount", "token_count"))
            if isinstance(modality, str):
                out[modality.upper()] = out.get(modality.upper(), 0) + count
    return out


def usage_from_gemini(meta: Mapping[str, object]) -> ev.Usage:
    """Gemini ``usageMetadata`` (camel or snake keys) -> canonical Usage.

    ``promptTokenCount`` -> input, ``responseTokenCount`` (Vertex: ``candidatesTokenCount``) -> output,
    ``thoughtsTokenCount`` -> reasoning, ``totalTokenCount`` -> total (computed when absent),
    ``cachedContentTokenCount`` -> cached, ``prompt/responseTokensDetails[{modality, tokenCount}]`` ->
    text/audio splits. An empty ``{}`` (real traffic sends one with ``turnComplete``) is all zeros.
    """
    prompt = _int(_get(meta, "promptTokenCount", "prompt_token_count"))
    response = _int(_get(meta, "responseTokenCount", "response_token_count")) or _int(
        _get(meta, "candidatesTokenCount", "candidates_token_count")
    )
    thoughts = _int(_get(meta, "thoughtsTokenCount", "thoughts_token_count"))
    total = _int(_get(meta, "totalTokenCount", "total_token_count")) or prompt + response + thoughts
    fields: dict[str, int] = {}
    for side, (camel, snake) in enumerate(
        (("promptTokensDetails", "prompt_tokens_details"), ("responseTokensDetails", "response_tokens_details"))
    ):
        for modality, count in _details(meta, camel, snake).items():
            names = _GEMINI_MODALITY_FIELDS.get(modality)
            if names is not None:
                fields[names[side]] = fields.get(names[side], 0) + count
    return ev.Usage(
        input_tokens=prompt,
        output_tokens=response,
        total_tokens=total,
        cached_tokens=_int(_get(meta, "cachedContentTokenCount", "cached_content_token_count")),
        reasoning_tokens=thoughts,
        **fields,
    )


_USAGE_FIELDS: tuple[str, ...] = tuple(ev.Usage.__struct_fields__)


def merge_usage(old: ev.Usage | None, new: ev.Usage) -> ev.Usage:
    """The usage of one turn from several ``usageMetadata`` messages: a later message wins field by field,
    but a field it leaves at 0 keeps the earlier count. Real Gemini 3.1 traffic sends the prompt count
    mid-turn (with an empty ``serverContent``) and then ``usageMetadata: {}`` with ``turnComplete``."""
    if old is None:
        return new
    return ev.Usage(**{name: getattr(new, name) or getattr(old, name) for name in _USAGE_FIELDS})


def usage_to_gemini(usage: ev.Usage) -> dict[str, object]:
    """Canonical Usage -> Gemini ``usageMetadata`` (camelCase, as the SDK expects from a server)."""
    meta: dict[str, object] = {
        "promptTokenCount": usage.input_tokens,
        "responseTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens or usage.input_tokens + usage.output_tokens + usage.reasoning_tokens,
    }
    if usage.cached_tokens:
        meta["cachedContentTokenCount"] = usage.cached_tokens
    if usage.reasoning_tokens:
        meta["thoughtsTokenCount"] = usage.reasoning_tokens
    for key, text, audio in (
        ("promptTokensDetails", usage.input_text_tokens, usage.input_audio_tokens),
        ("responseTokensDetails", usage.output_text_tokens, usage.output_audio_tokens),
    ):
        details = [{"modality": m, "tokenCount": n} for m, n in (("TEXT", text), ("AUDIO", audio)) if n]
        if details:
            meta[key] = details
    return meta


def usage_from_openai(usage: Mapping[str, object]) -> ev.Usage:
    """OpenAI ``response.usage`` -> canonical Usage (missing or malformed fields count as 0)."""
    inp = usage.get("input_token_details")
    out = usage.get("output_token_details")
    inp = inp if isinstance(inp, dict) else {}
    out = out if isinstance(out, dict) else {}
    input_tokens = _int(usage.get("input_tokens"))
    output_tokens = _int(usage.get("output_tokens"))
    return ev.Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=_int(usage.get("total_tokens")) or input_tokens + output_tokens,
        input_text_tokens=_int(inp.get("text_tokens")),
        input_audio_tokens=_int(inp.get("audio_tokens")),
        cached_tokens=_int(inp.get("cached_tokens")),
        output_text_tokens=_int(out.get("text_tokens")),
        output_audio_tokens=_int(out.get("audio_tokens")),
    )


def usage_to_openai(usage: ev.Usage) -> dict[str, object]:
    """Canonical Usage -> OpenAI ``response.usage``."""
    return {
        "total_tokens": usage.total_tokens or usage.input_tokens + usage.output_tokens,
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "input_token_details": {
            "text_tokens": usage.input_text_tokens,
            "audio_tokens": usage.input_audio_tokens,
            "cached_tokens": usage.cached_tokens,
        },
        "output_token_details": {
            "text_tokens": usage.output_text_tokens,
            "audio_tokens": usage.output_audio_tokens,
        },
    }
