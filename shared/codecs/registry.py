"""Client dialect name -> codec factory. The transformer builds one codec per session from its meta."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from shared.codecs.base import ClientCodec
from shared.codecs.gemini_client import GeminiClientCodec
from shared.codecs.openai_client import OpenAIClientCodec
from shared.session import SessionMeta

__all__ = ["CLIENT_CODECS", "client_codec"]


def _openai_ga(meta: SessionMeta) -> ClientCodec:
    return OpenAIClientCodec(meta, beta=False)  # type: ignore[return-value]  # dialect is per instance


def _openai_beta(meta: SessionMeta) -> ClientCodec:
    return OpenAIClientCodec(meta, beta=True)  # type: ignore[return-value]


def _gemini(meta: SessionMeta) -> ClientCodec:
    return GeminiClientCodec(meta)


CLIENT_CODECS: Mapping[str, Callable[[SessionMeta], ClientCodec]] = {
    "openai_ga": _openai_ga,
    "openai_beta": _openai_beta,
    "gemini": _gemini,
}


def client_codec(meta: SessionMeta) -> ClientCodec:
    """The codec for ``meta.dialect``. Raises ValueError for a dialect no codec speaks."""
    factory = CLIENT_CODECS.get(meta.dialect)
    if factory is None:
        raise ValueError(f"no client codec for dialect {meta.dialect!r}; known: {sorted(CLIENT_CODECS)}")
    return factory(meta)
