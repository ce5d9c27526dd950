"""Azure OpenAI Realtime provider plugin: entry point, endpoint shape, key header, deployment as model,
the unconfigured rule (worker starts, sessions fail with a clear error), config validation, routing."""

from __future__ import annotations

from importlib.metadata import entry_points
from urllib.parse import parse_qs, urlsplit

import pytest

from services.edge.routing import resolve
from services.provider_worker.worker import ProviderWorker
from shared import events as ev
from shared.auth import Authenticator, seed_token
from shared.codecs.openai_provider import OpenAIProviderCodec
from shared.config import ConfigError, load_config
from shared.providers import ProviderNotConfigured, installed_providers, load_provider
from shared.providers.azure import DEFAULT_API_VERSION, AzureProvider
from shared.session import SessionMeta

META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="openai_ga", provider="azure")
RESOURCE = "wss://contoso.openai.azure.com/openai/realtime"
SETTINGS = {
    "AZURE_OPENAI_API_KEY": "az-secret",
    "AZURE_OPENAI_REALTIME_URL": RESOURCE,
    "AZURE_OPENAI_DEPLOYMENT": "my-realtime",
}


def test_registered_as_an_entry_point_like_any_third_party_plugin() -> None:
    (entry,) = [e for e in entry_points(group="rtswitch.providers") if e.name == "azure"]
    assert entry.value == "shared.providers.azure:AzureProvider"
    assert "azure" in installed_providers()
    assert load_provider("azure") is AzureProvider
    assert AzureProvider.name == "azure"


def test_endpoint_is_the_resource_url_with_api_version_and_deployment() -> None:
    provider = AzureProvider(SETTINGS)
    url, headers = provider.endpoint(provider.model_for(None))
    assert url == f"{RESOURCE}?api-version={DEFAULT_API_VERSION}&deployment=my-realtime"
    assert DEFAULT_API_VERSION == "2025-08-28" and not DEFAULT_API_VERSION.endswith("-preview")  # GA protocol
    # the key goes in api-key only: no Bearer, no OpenAI-Beta (which would select the beta protocol)
    assert headers == [("api-key", "az-secret")]
    assert "az-secret" not in repr(provider) and "az-secret" not in url


def test_endpoint_keeps_an_existing_query_and_takes_the_configured_api_version() -> None:
    provider = AzureProvider({
        **SETTINGS, "AZURE_OPENAI_REALTIME_URL": f"{RESOURCE}?foo=1", "AZURE_OPENAI_API_VERSION": "2025-09-01"})
    url, _ = provider.endpoint(provider.model_for("gpt-realtime"))
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == RESOURCE
    assert parse_qs(parts.query) == {"foo": ["1"], "api-version": ["2025-09-01"], "deployment": ["my-realtime"]}


@pytest.mark.parametrize("requested", [None, "gpt-realtime", "gpt-4o-realtime-preview", "gemini-live-2.5"])
def test_model_for_is_always_the_deployment(requested: str | None) -> None:
    assert AzureProvider(SETTINGS).model_for(requested) == "my-realtime"


def test_capabilities_and_codec_are_openais() -> None:
    openai = load_provider("openai")
    assert AzureProvider.capabilities == openai.capabilities
    codec = AzureProvider(SETTINGS).codec(META, "my-realtime", resumption_handle="ignored")
    assert isinstance(codec, OpenAIProviderCodec)
    # it speaks GA and reports itself as azure once the upstream confirms the config
    first = codec.connect(ev.SessionConfig(), [])
    assert first.wire and '"type":"session.update"' in first.wire[0]
    out = codec.feed('{"type":"session.updated","event_id":"e1","session":{"type":"realtime"}}')
    assert [e for e in out.events if isinstance(e, ev.SessionReady)] == [
        ev.SessionReady(provider="azure", model="my-realtime")
    ]


@pytest.mark.parametrize(
    ("settings", "missing"),
    [
        ({}, ["AZURE_OPENAI_API_KEY", "AZURE_OPENAI_REALTIME_URL", "AZURE_OPENAI_DEPLOYMENT"]),
        ({"AZURE_OPENAI_API_KEY": "az-secret", "AZURE_OPENAI_DEPLOYMENT": "d"}, ["AZURE_OPENAI_REALTIME_URL"]),
        ({**SETTINGS, "AZURE_OPENAI_API_KEY": ""}, ["AZURE_OPENAI_API_KEY"]),
    ],
)
def test_unconfigured_builds_but_refuses_to_connect_naming_what_is_missing(
    settings: dict[str, str], missing: list[str]
) -> None:
    provider = AzureProvider(settings)  # never raises: the worker must start
    with pytest.raises(ProviderNotConfigured) as info:
        provider.endpoint(provider.model_for(None))
    message = str(info.value)
    assert "azure" in message
    for name in missing:
        assert name in message
    assert "az-secret" not in message  # names, never values


def test_a_worker_without_azure_settings_starts_and_holds_the_provider() -> None:
    worker = ProviderWorker(load_config({}, dotenv=None))
    assert {"openai", "gemini", "azure"} <= set(worker.providers)
    with pytest.raises(ProviderNotConfigured):
        worker.providers["azure"].endpoint("")


def test_config_round_trip_reaches_the_provider() -> None:
    config = load_config({**SETTINGS, "AZURE_OPENAI_API_VERSION": "2025-09-01"}, dotenv=None)
    url, headers = AzureProvider(config.provider_settings()).endpoint("my-realtime")
    assert url == f"{RESOURCE}?api-version=2025-09-01&deployment=my-realtime"
    assert headers == [("api-key", "az-secret")]
    # the default api-version in Config is the provider's
    assert load_config({}, dotenv=None).provider_settings()["AZURE_OPENAI_API_VERSION"] == DEFAULT_API_VERSION


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AZURE_OPENAI_REALTIME_URL", "https://contoso.openai.azure.com/openai/realtime"),
        ("AZURE_OPENAI_API_VERSION", "2025-04-01-preview"),  # would make Azure speak beta
        ("AZURE_OPENAI_API_VERSION", "latest"),
        ("AZURE_OPENAI_DEPLOYMENT", "has space"),
        ("AZURE_OPENAI_DEPLOYMENT", "d" * 65),
    ],
)
def test_invalid_azure_values_fail_fast_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_config({name: value}, dotenv=None)


@pytest.mark.parametrize("core", ["AZURE", "azure", "Azure"])
def test_rs_core_azure_routes_because_it_is_installed(core: str) -> None:
    installed = frozenset(installed_providers())
    auth = Authenticator({"acc": "sec"})
    path = f"/?rs_accid=acc&rs_u_sessid=s1&rs_auth={seed_token('sec', 's1')}&rs_api=GEMINI&rs_core={core}"
    assert resolve(path, {}, auth, installed, now=0).provider == "azure"
    headers = {"authorization": "Bearer acc:sec"}
    assert resolve(f"/v1/realtime?model=gpt-realtime&rs_core={core}", headers, auth, installed, now=0).provider == (
        "azure"
    )
