from __future__ import annotations

import pytest

from services.edge.routing import RouteError, model_choice, resolve
from shared.auth import Authenticator, seed_token

ACC, SECRET = "996-sdassds-86-asd", "secretkey-996"
AUTH = Authenticator({ACC: SECRET})
INSTALLED = frozenset({"openai", "gemini"})
GEMINI_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def seed_path(**overrides: str) -> str:
    params = {
        "rs_accid": ACC,
        "rs_u_sessid": "s1",
        "rs_auth": seed_token(SECRET, "s1"),
        "rs_api": "OPENAI",
        "rs_core": "GEMINI",
    }
    params.update(overrides)
    return "/?" + "&".join(f"{k}={v}" for k, v in params.items() if v is not None)


def test_seed_url_routes_beta_dialect_to_rs_core() -> None:
    route = resolve(seed_path(), {}, AUTH, INSTALLED, now=0)
    assert (route.dialect, route.provider, route.account, route.client_session_id) == (
        "openai_beta", "gemini", ACC, "s1")


@pytest.mark.parametrize(
    ("rs_api", "dialect"), [("OPENAI_GA", "openai_ga"), ("GEMINI", "gemini"), ("openai", "openai_beta")]
)
def test_seed_rs_api_values(rs_api: str, dialect: str) -> None:
    assert resolve(seed_path(rs_api=rs_api), {}, AUTH, INSTALLED, now=0).dialect == dialect


@pytest.mark.parametrize("missing", ["rs_accid", "rs_u_sessid", "rs_auth", "rs_api", "rs_core"])
def test_seed_missing_parameter_is_400_naming_it(missing: str) -> None:
    path = seed_path(**{missing: None})  # type: ignore[arg-type]
    with pytest.raises(RouteError) as info:
        resolve(path, {}, AUTH, INSTALLED, now=0)
    assert info.value.status == 400 and missing in info.value.reason


@pytest.mark.parametrize(
    ("overrides", "status"),
    [({"rs_api": "SOAP"}, 400), ({"rs_core": "WATSON"}, 400), ({"rs_auth": "00"}, 403), ({"rs_accid": "x"}, 403),
     ({"rs_u_sessid": "has%20space"}, 400)],
)
def test_seed_refusals(overrides: dict[str, str], status: int) -> None:
    with pytest.raises(RouteError) as info:
        resolve(seed_path(**overrides), {}, AUTH, INSTALLED, now=0)
    assert info.value.status == status


def test_openai_sdk_path_ga_and_beta_and_provider_by_model() -> None:
    headers = {"authorization": f"Bearer {ACC}:{SECRET}"}
    ga = resolve("/v1/realtime?model=gpt-realtime", headers, AUTH, INSTALLED, now=0)
    assert (ga.dialect, ga.provider, ga.model) == ("openai_ga", "openai", "gpt-realtime")
    beta = resolve("/realtime?model=gemini-live-2.5", {**headers, "openai-beta": "realtime=v1"}, AUTH, INSTALLED, now=0)
    assert (beta.dialect, beta.provider) == ("openai_beta", "gemini")
    forced = resolve("/v1/realtime?model=gpt-realtime&rs_core=GEMINI", headers, AUTH, INSTALLED, now=0)
    assert forced.provider == "gemini"
    by_header = resolve("/v1/realtime?model=x", {**headers, "x-rs-core": "openai"}, AUTH, INSTALLED, now=0)
    assert by_header.provider == "openai"
    assert resolve("/v1/realtime?model=other", headers, AUTH, INSTALLED, now=0).provider is None  # -> default


def test_openai_sdk_path_needs_a_valid_bearer() -> None:
    with pytest.raises(RouteError) as missing:
        resolve("/v1/realtime", {}, AUTH, INSTALLED, now=0)
    assert missing.value.status == 401
    with pytest.raises(RouteError) as wrong:
        resolve("/v1/realtime", {"authorization": "Bearer nope"}, AUTH, INSTALLED, now=0)
    assert wrong.value.status == 403


def test_gemini_path_key_in_header_or_query() -> None:
    route = resolve(GEMINI_PATH, {"x-goog-api-key": SECRET}, AUTH, INSTALLED, now=0)
    assert (route.dialect, route.provider) == ("gemini", None)
    assert resolve(f"{GEMINI_PATH}?key={ACC}:{SECRET}&rs_core=openai", {}, AUTH, INSTALLED, now=0).provider == "openai"
    with pytest.raises(RouteError) as info:
        resolve(GEMINI_PATH, {}, AUTH, INSTALLED, now=0)
    assert info.value.status == 401


def test_unknown_path_is_404() -> None:
    with pytest.raises(RouteError) as info:
        resolve("/admin", {}, AUTH, INSTALLED, now=0)
    assert info.value.status == 404


def test_sdk_paths_take_the_session_id_from_a_header_when_the_query_has_none() -> None:
    headers = {"authorization": f"Bearer {ACC}:{SECRET}", "x-rs-session": "call-42"}
    assert resolve("/v1/realtime?model=gpt-realtime", headers, AUTH, INSTALLED, now=0).client_session_id == "call-42"
    query_wins = resolve("/v1/realtime?model=gpt-realtime&rs_u_sessid=q1", headers, AUTH, INSTALLED, now=0)
    assert query_wins.client_session_id == "q1"
    gemini = resolve(GEMINI_PATH, {"x-goog-api-key": SECRET, "x-rs-session": "g-7"}, AUTH, INSTALLED, now=0)
    assert gemini.client_session_id == "g-7"
    minted = resolve(GEMINI_PATH, {"x-goog-api-key": SECRET}, AUTH, INSTALLED, now=0).client_session_id
    assert minted.startswith("sess_")
    with pytest.raises(RouteError) as info:
        resolve(GEMINI_PATH, {"x-goog-api-key": SECRET, "x-rs-session": "has space"}, AUTH, INSTALLED, now=0)
    assert info.value.status == 400


BEARER = {"authorization": f"Bearer {ACC}:{SECRET}"}


@pytest.mark.parametrize(
    ("path", "headers", "provider", "model"),
    [
        # 1. rs_core / X-RS-Core beats everything
        ("/gemini/v1/realtime?model=openai:gpt-realtime&rs_core=openai", {}, "openai", "gpt-realtime"),
        ("/gemini/v1/realtime?model=gpt-realtime", {"x-rs-core": "openai"}, "openai", "gpt-realtime"),
        # 2. path prefix beats the model's prefix and family
        ("/gemini/v1/realtime?model=openai:gpt-realtime", {}, "gemini", "gpt-realtime"),
        ("/gemini/realtime?model=gpt-realtime", {}, "gemini", "gpt-realtime"),
        ("/openai/v1/realtime?model=gemini-live-2.5", {}, "openai", "gemini-live-2.5"),
        ("/OpenAI/v1/realtime/", {}, "openai", None),
        # 3. model prefix beats the family; the prefix is stripped
        ("/v1/realtime?model=gemini:gpt-realtime", {}, "gemini", "gpt-realtime"),
        ("/v1/realtime?model=OPENAI:gemini-live-2.5", {}, "openai", "gemini-live-2.5"),
        # 4. the family; a colon whose head is no provider is part of the name
        ("/v1/realtime?model=gemini-live-2.5", {}, "gemini", "gemini-live-2.5"),
        ("/v1/realtime?model=ft:gpt-4o:acme", {}, None, "ft:gpt-4o:acme"),
        # 5. nothing: the configured default (decided by the edge)
        ("/v1/realtime", {}, None, None),
    ],
)
def test_openai_sdk_path_provider_precedence(
    path: str, headers: dict[str, str], provider: str | None, model: str | None
) -> None:
    route = resolve(path, {**BEARER, **headers}, AUTH, INSTALLED, now=0)
    assert (route.dialect, route.provider, route.model) == ("openai_ga", provider, model)


def test_gemini_path_with_a_provider_prefix() -> None:
    key = {"x-goog-api-key": SECRET}
    assert resolve(f"/openai{GEMINI_PATH}", key, AUTH, INSTALLED, now=0).provider == "openai"
    assert resolve(f"/gemini{GEMINI_PATH}", key, AUTH, INSTALLED, now=0).provider == "gemini"
    assert resolve(f"/gemini{GEMINI_PATH}?rs_core=openai", key, AUTH, INSTALLED, now=0).provider == "openai"
    beta = resolve("/gemini/v1/realtime", {**BEARER, "openai-beta": "realtime=v1"}, AUTH, INSTALLED, now=0)
    assert (beta.dialect, beta.provider) == ("openai_beta", "gemini")


@pytest.mark.parametrize(
    ("path", "status"),
    [("/watson/v1/realtime", 400), ("/openai/", 404), ("/openai/nowhere", 404), ("/openai/openai/v1/realtime", 404)],
)
def test_provider_prefix_refusals(path: str, status: int) -> None:
    with pytest.raises(RouteError) as info:
        resolve(path, BEARER, AUTH, INSTALLED, now=0)
    assert info.value.status == status


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gemini:gemini-live-2.5", ("gemini", "gemini-live-2.5")),
        ("openai:gpt-realtime", ("openai", "gpt-realtime")),
        ("azure:gpt-realtime", (None, "azure:gpt-realtime")),  # not installed: no prefix, no family
        ("gpt-realtime", ("openai", "gpt-realtime")),
        ("models/gemini-2.0", ("gemini", "models/gemini-2.0")),
        ("mystery", (None, "mystery")),
        ("openai:", ("openai", None)),
        (None, (None, None)),
        ("", (None, None)),
    ],
)
def test_model_choice(model: str | None, expected: tuple[str | None, str | None]) -> None:
    assert model_choice(model, INSTALLED) == expected


@pytest.mark.parametrize(
    ("query", "headers", "notices"),
    [("", {}, False), ("rs_notices=1", {}, True), ("rs_notices=0", {}, False), ("", {"x-rs-notices": "1"}, True),
     ("", {"x-rs-notices": "true"}, True), ("rs_notices=0", {"x-rs-notices": "1"}, False)],
)
def test_notices_opt_in_on_every_entry_point(query: str, headers: dict[str, str], notices: bool) -> None:
    sep = "&" if query else ""
    seed = resolve(f"{seed_path()}{sep}{query}", headers, AUTH, INSTALLED, now=0)
    openai = resolve(f"/v1/realtime?{query}", {**BEARER, **headers}, AUTH, INSTALLED, now=0)
    gemini = resolve(f"{GEMINI_PATH}?{query}", {"x-goog-api-key": SECRET, **headers}, AUTH, INSTALLED, now=0)
    assert (seed.notices, openai.notices, gemini.notices) == (notices, notices, notices)
    assert (seed.seed, openai.seed, gemini.seed) == (True, False, False)


def test_seed_rs_model_loses_a_provider_prefix_but_rs_core_decides() -> None:
    route = resolve(seed_path(rs_model="openai:gpt-realtime"), {}, AUTH, INSTALLED, now=0)
    assert (route.provider, route.model) == ("gemini", "gpt-realtime")
