from __future__ import annotations

import pytest

from services.edge.routing import RouteError, resolve
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
