"""OpenAI Realtime provider plugin: how to reach the GA endpoint and which codec speaks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import urlencode

from shared.codecs.base import ProviderCodec, TakesConfigLive
from shared.codecs.openai_provider import OpenAIProviderCodec
from shared.providers import Capabilities
from shared.session import SessionMeta

__all__ = ["OpenAICodec", "OpenAIProvider"]

DEFAULT_URL = "wss://api.openai.com/v1/realtime"


class OpenAICodec(TakesConfigLive, OpenAIProviderCodec):
    """The OpenAI GA codec with the contract's ``needs_reconnect`` default: OpenAI applies a
    ``session.update`` on the live connection. (Here, not in the codec module, which another owner keeps.)"""


class OpenAIProvider:
    """OpenAI Realtime GA over WebSocket (the OpenAI Realtime API reference): ``?model=`` in the URL, Bearer key, no
    ``OpenAI-Beta`` header (its absence selects GA)."""

    name: ClassVar[str] = "openai"
    default_model: ClassVar[str] = "gpt-realtime"
    capabilities: ClassVar[Capabilities] = Capabilities()

    def __init__(self, settings: Mapping[str, str]) -> None:
        self._api_key = settings.get("OPENAI_API_KEY", "")
        self._url = settings.get("OPENAI_REALTIME_URL") or DEFAULT_URL
        self._model = settings.get("OPENAI_MODEL") or self.default_model

    def __repr__(self) -> str:  # never the key
        return f"OpenAIProvider(url={self._url!r}, model={self._model!r})"

    def model_for(self, requested: str | None) -> str:
        return requested if requested and requested.startswith("gpt") else self._model

    def endpoint(self, model: str) -> tuple[str, list[tuple[str, str]]]:
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}{urlencode({'model': model})}", [("Authorization", f"Bearer {self._api_key}")]

    def codec(self, meta: SessionMeta, model: str, *, resumption_handle: str | None = None) -> ProviderCodec:
        return OpenAICodec(meta, model)  # OpenAI has no session resumption: history is replayed
