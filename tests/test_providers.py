"""Provider plugins: entry-point loading, endpoints, capabilities, model choice, codecs."""

from __future__ import annotations

import pytest

from shared import events as ev
from shared.codecs.gemini_provider import GeminiProviderCodec
from shared.codecs.openai_provider import OpenAIProviderCodec
from shared.providers import UnknownProvider, installed_providers, load_provider
from shared.session import SessionMeta

META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="openai_ga", provider="openai")
SETTINGS = {"OPENAI_API_KEY": "sk-test", "GEMINI_API_KEY": "g-test"}


def test_builtins_are_registered_as_entry_points() -> None:
    assert {"openai", "gemini"} <= set(installed_providers())
    assert load_provider("openai").__name__ == "OpenAIProvider"
    assert load_provider("gemini").__name__ == "GeminiProvider"


def test_unknown_provider_names_the_installed_ones() -> None:
    with pytest.raises(UnknownProvider, match="installed"):
        load_provider("nope")


def test_openai_endpoint_defaults() -> None:
    provider = load_provider("openai")(SETTINGS)
    assert provider.name == "openai" and provider.default_model == "gpt-realtime"
    url, headers = provider.endpoint(provider.model_for(None))
    assert url == "wss://api.openai.com/v1/realtime?model=gpt-realtime"
    assert headers == [("Authorization", "Bearer sk-test")]  # GA: no OpenAI-Beta header
    assert "sk-test" not in repr(provider)


def test_openai_settings_override_url_and_model() -> None:
    provider = load_provider("openai")(
        {
            **SETTINGS,
            "OPENAI_REALTIME_URL": "ws://127.0.0.1:9/v1/realtime",
            "OPENAI_MODEL": "gpt-realtime-mini",
        }
    )
    assert provider.endpoint(provider.model_for("gemini-live"))[0] == (
        "ws://127.0.0.1:9/v1/realtime?model=gpt-realtime-mini"
    )


@pytest.mark.parametrize(
    ("requested", "model"),
    [
        (None, "gpt-realtime"),
        ("gpt-4o-realtime-preview", "gpt-4o-realtime-preview"),
        ("gemini-2.0", "gpt-realtime"),
    ],
)
def test_openai_model_for(requested: str | None, model: str) -> None:
    assert load_provider("openai")(SETTINGS).model_for(requested) == model


def test_openai_capabilities_and_codec() -> None:
    cls = load_provider("openai")
    assert not cls.capabilities.config_before_connect
    codec = cls(SETTINGS).codec(META, "gpt-realtime")
    assert isinstance(codec, OpenAIProviderCodec)
    assert codec.needs_reconnect is False, "OpenAI takes a session.update live"
    codec.encode(ev.SessionConfig(instructions="changed"))
    assert codec.needs_reconnect is False


def test_gemini_endpoint_defaults() -> None:
    provider = load_provider("gemini")(SETTINGS)
    assert provider.name == "gemini" and provider.default_model == "gemini-live-2.5-flash-preview"
    url, headers = provider.endpoint(provider.model_for(None))
    assert url == (
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
    assert headers == [("x-goog-api-key", "g-test")]
    assert "g-test" not in repr(provider)


@pytest.mark.parametrize(
    ("requested", "model"),
    [
        (None, "gemini-live-2.5-flash-preview"),
        ("gemini-2.0-flash-live-001", "gemini-2.0-flash-live-001"),
        ("models/gemini-2.0-flash-live-001", "gemini-2.0-flash-live-001"),
        ("gpt-realtime", "gemini-live-2.5-flash-preview"),
    ],
)
def test_gemini_model_for(requested: str | None, model: str) -> None:
    assert load_provider("gemini")(SETTINGS).model_for(requested) == model


def test_gemini_capabilities_and_codec() -> None:
    cls = load_provider("gemini")
    assert cls.capabilities.config_before_connect
    codec = cls(SETTINGS).codec(META, "gemini-x", resumption_handle="h")
    assert isinstance(codec, GeminiProviderCodec) and codec.resumption_handle == "h"
    assert codec.needs_reconnect is False
    codec.connect(ev.SessionConfig(), [])
    codec.encode(ev.SessionConfig(instructions="changed"))
    assert codec.needs_reconnect is True, "Gemini takes a config only in setup: the worker reconnects"
