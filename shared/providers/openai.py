"""OpenAI Realtime provider plugin: how to reach the GA endpoint and which codec speaks it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import urlencode

from shared import events as ev
from shared.codecs.base import Out, ProviderCodec, TakesConfigLive
from shared.codecs.openai_provider import OpenAIProviderCodec
from shared.providers import Capabilities
from shared.session import SessionMeta

__all__ = ["OpenAICodec", "OpenAIProvider"]

DEFAULT_URL = "wss://api.openai.com/v1/realtime"
# OpenAI ends a Realtime session after 60 minutes: ours are recycled at a turn boundary a little before.
DEFAULT_MAX_SESSION_S = 55 * 60.0


class OpenAICodec(TakesConfigLive, OpenAIProviderCodec):
    """The OpenAI GA codec with the contract's ``needs_reconnect`` default: OpenAI applies a
    ``session.update`` on the live connection. (Here, not in the codec module, which another owner keeps.)"""

    def append_history(self, items: list[ev.Item]) -> Out:
        """One ``conversation.item.create`` per item, appended (the ``AppendsHistory`` protocol)."""
        return self.history_frames(items)


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
        self.max_session_s: float | None = float(settings.get("RS_OPENAI_MAX_SESSION_S") or DEFAULT_MAX_SESSION_S)

    def __repr__(self) -> str:  # never the key
        return f"OpenAIProvider(url={self._url!r}, model={self._model!r})"

    def model_for(self, requested: str | None) -> str:
        return requested if requested and requested.startswith("gpt") else self._model

    def endpoint(self, model: str) -> tuple[str, list[tuple[str, str]]]:
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}{urlencode({'model': model})}", [("Authorization", f"Bearer {self._api_key}")]

    def codec(self, meta: SessionMeta, model: str, *, resumption_handle: str | None = None) -> ProviderCodec:
        return OpenAICodec(meta, model)  # OpenAI has no session resumption: history is replayed
