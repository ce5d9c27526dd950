"""The provider-neutral conversation model (:class:`Item`) and the fakes' deterministic "brain" (:func:`plan_reply`).

Both fakes answer the same way to the same history, which is what lets an end-to-end test compare a conversation
that moved from one provider to the other. Pure: no clock, no I/O.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.fakes.audio import dominant_hz

# ---------------------------------------------------------------------------------------------------------------------
# Conversation model and the deterministic "brain"


class IdGen:
    """Per-session ids: a random token (replayed ids from older sessions never collide) + a counter."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(5)
        self._n = 0

    def __call__(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self.token}{self._n:05d}"


_UNSET: Any = object()


@dataclass(eq=False)
class Item:
    """One conversation item, provider-neutral. ``to_debug()`` is the normalised shape `/debug/sessions` shows.

    ``role`` is ``user`` / ``assistant`` / ``system`` (Gemini ``model`` becomes ``assistant``). ``pcm`` is s16le
    at ``rate``. ``parts`` holds an OpenAI item's wire content parts with the audio elided (empty for Gemini).
    """

    id: str
    type: str  # "message" | "function_call" | "function_call_output"
    role: str | None = None
    text: str | None = None
    pcm: bytes | None = dataclasses.field(default=None, repr=False)
    rate: int | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None
    status: str = "completed"
    parts: list[dict[str, Any]] = field(default_factory=list)
    _hz: Any = dataclasses.field(default=_UNSET, repr=False)

    @property
    def is_user_message(self) -> bool:
        return self.type == "message" and self.role == "user"

    @property
    def audio_ms(self) -> int | None:
        if self.pcm is None or not self.rate:
            return None
        return round(len(self.pcm) // 2 * 1000 / self.rate)

    def audio_hz(self) -> int | None:
        """Dominant frequency, computed on first use only (an FFT per item would cost the bench)."""
        if self._hz is _UNSET:
            self._hz = dominant_hz(self.pcm, self.rate) if self.pcm and self.rate else None
        return self._hz

    def set_pcm(self, pcm: bytes | None) -> None:
        self.pcm = pcm
        self._hz = _UNSET

    def copy(self) -> Item:
        return dataclasses.replace(self, parts=[dict(p) for p in self.parts])

    def to_debug(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "role": self.role,
            "text": self.text,
            "audio_ms": self.audio_ms,
            "audio_hz": self.audio_hz(),
            "call_id": self.call_id,
            "name": self.name,
            "arguments": self.arguments,
            "output": self.output,
            "status": self.status,
        }


@dataclass(frozen=True, slots=True)
class Reply:
    """What the next response will be. ``tool`` set means a function call with JSON ``arguments``."""

    n: int
    text: str
    tool: str | None = None
    arguments: str | None = None


def plan_reply(context: Sequence[Item], tool_names: Sequence[str] = ()) -> Reply:
    """The fakes' whole "model", shared so both providers answer identically.

    * ``n`` = user messages in the context (so replayed history changes it);
    * a function output after the last user message -> ``turn <n>: tool <name> returned <output>``;
    * else a configured tool whose name occurs in the last user text -> call it with ``{"text": <that text>}``;
    * else ``turn <n>: <last user text>``.
    """
    n = 0
    last_user = -1
    last_output = -1
    for i, item in enumerate(context):
        if item.is_user_message:
            n += 1
            last_user = i
        elif item.type == "function_call_output":
            last_output = i
    if last_output > last_user:
        out = context[last_output]
        name = out.name or next(
            (it.name for it in context if it.type == "function_call" and it.call_id == out.call_id), None
        )
        return Reply(n, f"turn {n}: tool {name or 'unknown'} returned {out.output}")
    user_text = (context[last_user].text or "") if last_user >= 0 else ""
    for name in tool_names:
        if name and name in user_text:
            return Reply(n, user_text, tool=name, arguments=json.dumps({"text": user_text}, ensure_ascii=False))
    return Reply(n, f"turn {n}: {user_text}")


def tool_output_text(response: Any) -> str:
    """A Gemini function response as the string a reply quotes.

    ``{"output": x}`` -> ``x`` (the usual wrapping of a plain-string OpenAI output), otherwise compact JSON with
    `json.dumps` defaults, so an OpenAI output ``'{"ok": true}'`` that went through ``json.loads`` reads the same.
    """
    if isinstance(response, dict) and set(response) == {"output"}:
        inner = response["output"]
        return inner if isinstance(inner, str) else json.dumps(inner, ensure_ascii=False)
    return json.dumps(response, ensure_ascii=False)


_WORDS = re.compile(r"\S*\s*")


def split_text(text: str, slots: int) -> list[str]:
    """Spread ``text`` over ``slots`` deltas at word boundaries; ``"".join(result) == text``. Slots may be empty."""
    if slots <= 0:
        return []
    pieces = [p for p in _WORDS.findall(text) if p]
    count = len(pieces)
    return ["".join(pieces[i * count // slots : (i + 1) * count // slots]) for i in range(slots)]


def text_tokens(text: str | None) -> int:
    """Deterministic token estimate: 4 characters a token."""
    return (len(text) + 3) // 4 if text else 0


def audio_tokens(ms: int | None) -> int:
    """Deterministic token estimate: 20 tokens a second of audio."""
    return -(-ms // 50) if ms else 0


def context_tokens(items: Iterable[Item]) -> tuple[int, int]:
    """(text tokens, audio tokens) of a prompt; audio items count as audio only."""
    text = audio = 0
    for item in items:
        if item.pcm:
            audio += audio_tokens(item.audio_ms)
        else:
            text += text_tokens(item.text) + text_tokens(item.arguments) + text_tokens(item.output)
    return text, audio
