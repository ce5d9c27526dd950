"""Gemini Live provider plugin: how to reach BidiGenerateContent and which codec speaks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import msgspec

from shared import events as ev
from shared.codecs.base import Out, ProviderCodec
from shared.codecs.gemini_provider import GeminiProviderCodec
from shared.providers import Capabilities
from shared.session import SessionMeta

__all__ = ["GeminiCodec", "GeminiProvider"]

DEFAULT_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)


class GeminiCodec(GeminiProviderCodec):
    """The Gemini codec plus ``append_history`` (the ``AppendsHistory`` protocol). Here, not in the codec
    module, which another owner keeps."""

    def append_history(self, items: list[ev.Item]) -> Out:
        """The items as one ``clientContent`` with ``turnComplete: false``: context, no answer asked (the
        way ``connect`` sends the history; held until ``setupComplete`` like every frame before it)."""
        out = Out()
        turns, skipped = self._turns(items)
        if turns:
            self._send(out, [msgspec.json.encode({"clientContent": {"turns": turns, "turnComplete": False}}).decode()])
        if skipped:
            out.events.append(ev.Notice(
                code="history_item_skipped", message=f"{skipped} history item(s) had no text or transcript to replay"))
        if items:
            self._last_item_id = items[-1].id
        return out


class GeminiProvider:
    """Gemini Live over WebSocket (the Gemini Live API reference): key in ``x-goog-api-key``, model in ``setup``.

    One ``setup`` per connection, so config changes need a reconnect (the codec's ``needs_reconnect``) and
    the config must be known before the first frame (``config_before_connect=True``).
    """

    name: ClassVar[str] = "gemini"
    default_model: ClassVar[str] = "gemini-live-2.5-flash-preview"
    capabilities: ClassVar[Capabilities] = Capabilities(config_before_connect=True)
    max_session_s: float | None = None  # Gemini announces the end of a connection itself (goAway)

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._api_key = settings.get("GEMINI_API_KEY", "")
        self._url = settings.get("GEMINI_LIVE_URL") or DEFAULT_URL
        self._model = settings.get("GEMINI_MODEL") or self.default_model

    def __repr__(self) -> str:  # never the key
        return f"GeminiProvider(url={self._url!r}, model={self._model!r})"

    def model_for(self, requested: str | None) -> str:
        if requested and requested.removeprefix("models/").startswith("gemini"):
            return requested.removeprefix("models/")
        return self._model

    def endpoint(self, model: str) -> tuple[str, list[tuple[str, str]]]:
        # the model travels in setup.model, not in the URL
        return self._url, [("x-goog-api-key", self._api_key)]

    def codec(
        self, meta: SessionMeta, model: str, *, resumption_handle: str | None = None
    ) -> ProviderCodec:
        return GeminiCodec(meta, model, resumption_handle=resumption_handle)
