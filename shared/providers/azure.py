"""Azure OpenAI Realtime provider plugin: OpenAI's protocol on an Azure deployment.

Only the way in differs from OpenAI: the resource's own URL, ``?api-version=&deployment=`` instead of
``?model=``, and the key in an ``api-key`` header instead of ``Authorization: Bearer``. The wire protocol is
OpenAI GA, so the codec is :class:`OpenAIProviderCodec` itself (a subclass that only renames the
provider).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar
from urllib.parse import urlencode

from shared.codecs.base import ProviderCodec
from shared.providers import Capabilities, ProviderNotConfigured
from shared.providers.openai import OpenAICodec, OpenAIProvider
from shared.session import SessionMeta

__all__ = ["DEFAULT_API_VERSION", "REQUIRED_SETTINGS", "AzureProvider", "AzureProviderCodec"]

# A GA api-version: a ``-preview`` one makes Azure speak the beta protocol, which this codec does not send.
DEFAULT_API_VERSION = "2025-08-28"
# Without these there is no Azure resource to talk to; checked per session, never at process start.
REQUIRED_SETTINGS = ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_REALTIME_URL", "AZURE_OPENAI_DEPLOYMENT")


class AzureProviderCodec(OpenAICodec):
    """The OpenAI GA codec, reporting ``azure`` in ``SessionReady``."""

    provider = "azure"


class AzureProvider:
    """Azure OpenAI Realtime over WebSocket: ``<url>?api-version=<v>&deployment=<d>``, ``api-key`` header.

    The deployment *is* the model on Azure: whatever model the client asks for, the upstream is the
    configured deployment (a deployment name cannot be guessed from an OpenAI model name).
    """

    name: ClassVar[str] = "azure"
    default_model: ClassVar[str] = OpenAIProvider.default_model  # what deployments usually serve
    capabilities: ClassVar[Capabilities] = OpenAIProvider.capabilities  # same protocol, same abilities
    max_session_s: float | None = None  # no recycle by age configured for Azure (its cap is its own)

    def __init__(self, settings: Mapping[str, str]) -> None:
        # Never raises: a worker without Azure settings still starts and serves its other providers.
        self._api_key = settings.get("AZURE_OPENAI_API_KEY", "")
        self._url = settings.get("AZURE_OPENAI_REALTIME_URL", "")
        self._deployment = settings.get("AZURE_OPENAI_DEPLOYMENT", "")
        self._api_version = settings.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION
        self.missing = [name for name in REQUIRED_SETTINGS if not settings.get(name)]

    def __repr__(self) -> str:  # never the key
        return (
            f"AzureProvider(url={self._url!r}, deployment={self._deployment!r}, "
            f"api_version={self._api_version!r})"
        )

    def model_for(self, requested: str | None) -> str:
        return self._deployment

    def endpoint(self, model: str) -> tuple[str, list[tuple[str, str]]]:
        if self.missing:
            raise ProviderNotConfigured(
                f"provider azure is not configured on this worker (missing {', '.join(self.missing)})"
            )
        sep = "&" if "?" in self._url else "?"
        # the deployment, not ``model``: on Azure the deployment decides the model (model_for returns it)
        query = urlencode({"api-version": self._api_version, "deployment": self._deployment})
        return f"{self._url}{sep}{query}", [("api-key", self._api_key)]

    def codec(self, meta: SessionMeta, model: str, *, resumption_handle: str | None = None) -> ProviderCodec:
        return AzureProviderCodec(meta, model)  # no session resumption on Azure either: history is replayed
