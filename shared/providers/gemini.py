"""Gemini Live provider plugin: how to reach BidiGenerateContent and which codec speaks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from shared.codecs.base import ProviderCodec
from shared.codecs.gemini_provider import GeminiProviderCodec
from shared.providers import Capabilities
from shared.session import SessionMeta

__all__ = ["GeminiProvider"]

DEFAULT_URL = (
    "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
)


class GeminiProvider:
    """Gemini Live over WebSocket (the Gemini Live API reference): key in ``x-goog-api-key``, model in ``setup``.

    One ``setup`` per connection, so config changes need a reconnect (the codec's ``needs_reconnect``) and
    the config must be known before the first frame (``config_before_connect=True``).
    """

    name: ClassVar[str] = "gemini"
    default_model: ClassVar[str] = "gemini-live-2.5-flash-preview"
    capabilities: ClassVar[Capabilities] = Capabilities(config_before_connect=True)

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
        return GeminiProviderCodec(meta, model, resumption_handle=resumption_handle)
