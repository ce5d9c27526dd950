"""Client tokens (shared/auth.py) and how the routes honour what they bind (services/edge/routing.py)."""

from __future__ import annotations

import pytest

from services.edge.routing import RouteError, resolve
from shared.auth import Authenticator, AuthError, mint_token, seed_token

ACCOUNTS = {"acme": "acme-secret", "other": "other-secret"}
INSTALLED = frozenset({"openai", "gemini"})
GEMINI = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"


def _auth() -> Authenticator:
    return Authenticator(ACCOUNTS, max_token_s=600)


def test_token_names_its_account_until_it_expires() -> None:
    token = mint_token("acme-secret", "acme", expires=1_000)
    assert token.startswith("ek_") and token != mint_token("acme-secret", "acme", expires=1_000)  # nonce
    grant = _auth().check_token(token, now=999.0)
    assert (grant.a, grant.e, grant.s, grant.p) == ("acme", 1_000, None, None)
    with pytest.raises(AuthError) as expired:
        _auth().check_token(token, now=1_001.0)
    assert expired.value.status == 401


@pytest.mark.parametrize("token", [
    mint_token("wrong-secret", "acme", expires=1_000),  # not minted with the account's secret
    mint_token("acme-secret", "nobody", expires=1_000),  # unknown account
    "ek_garbage", "ek_" + "A" * 20 + ".xyz", "ek_.",
])
def test_forged_or_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(AuthError) as refused:
        _auth().check_token(token, now=0.0)
    assert refused.value.status == 403


def test_a_tampered_payload_breaks_the_mac() -> None:
    token = mint_token("acme-secret", "acme", expires=1_000)
    body, mac = token.removeprefix("ek_").split(".")
    other = mint_token("acme-secret", "acme", expires=9_999).removeprefix("ek_").split(".")[0]
    with pytest.raises(AuthError):
        _auth().check_token(f"ek_{other}.{mac}", now=0.0)
    assert _auth().check_token(f"ek_{body}.{mac}", now=0.0).e == 1_000


def test_rotating_the_secret_revokes_tokens() -> None:
    auth = _auth()
    token = mint_token("acme-secret", "acme", expires=1_000)
    auth.replace({**ACCOUNTS, "acme": "rotated"})
    with pytest.raises(AuthError):
        auth.check_token(token, now=0.0)


def test_tokens_cannot_stand_for_the_secret_where_tokens_are_minted() -> None:
    token = mint_token("acme-secret", "acme", expires=1_000)
    with pytest.raises(AuthError):
        _auth().check_api_key(token)  # the client_secrets endpoint takes the secret only
    assert _auth().identify(token, now=0.0).account == "acme"
    assert _auth().identify("acme:acme-secret", now=0.0).account == "acme"


def test_seed_rs_exp_is_capped_by_the_token_lifetime() -> None:
    auth = _auth()
    near = seed_token("acme-secret", "s1", 1_600)
    assert auth.check_seed("acme", "s1", near, expires="1600", now=1_000.0) == "acme"
    far = seed_token("acme-secret", "s1", 1_601)
    with pytest.raises(AuthError) as capped:
        auth.check_seed("acme", "s1", far, expires="1601", now=1_000.0)
    assert capped.value.status == 400
    assert auth.check_seed("acme", "s1", seed_token("acme-secret", "s1"), now=1_000.0) == "acme"  # no rs_exp: seed


def _route(path: str, headers: dict[str, str] | None = None, now: float = 0.0):  # type: ignore[no-untyped-def]
    return resolve(path, headers or {}, _auth(), INSTALLED, now=now)


def test_routes_take_tokens_and_honour_their_bindings() -> None:
    free = mint_token("acme-secret", "acme", expires=1_000)
    bound = mint_token("acme-secret", "acme", expires=1_000, session_id="s-7", provider="gemini")
    # OpenAI path: Bearer token; a bound session is used when the client names none.
    route = _route("/v1/realtime?model=gpt-realtime", {"authorization": f"Bearer {bound}"})
    assert (route.account, route.client_session_id, route.provider) == ("acme", "s-7", "gemini")
    route = _route("/v1/realtime?model=gpt-realtime&rs_u_sessid=mine", {"authorization": f"Bearer {free}"})
    assert (route.client_session_id, route.provider) == ("mine", "openai")
    # Gemini path: the token is the key; a bound session is not "minted" (a resumption handle cannot move it).
    route = _route(f"{GEMINI}?key={bound}")
    assert (route.account, route.client_session_id, route.provider, route.minted) == ("acme", "s-7", "gemini", False)
    # Seed URL: the token is rs_auth.
    route = _route(f"/?rs_accid=acme&rs_u_sessid=s-7&rs_auth={bound}&rs_api=OPENAI_GA&rs_core=GEMINI")
    assert (route.account, route.provider, route.seed) == ("acme", "gemini", True)


@pytest.mark.parametrize(("path", "headers", "status"), [
    ("/v1/realtime?rs_u_sessid=elsewhere", "bearer", 403),  # another session
    ("/v1/realtime?rs_core=openai", "bearer", 403),  # another provider
    ("/openai/v1/realtime", "bearer", 403),  # another provider by path prefix
    (f"{GEMINI}?rs_u_sessid=elsewhere", "key", 403),
    ("/?rs_accid=acme&rs_u_sessid=elsewhere&rs_auth={t}&rs_api=OPENAI&rs_core=GEMINI", "", 403),
    ("/?rs_accid=other&rs_u_sessid=s-7&rs_auth={t}&rs_api=OPENAI&rs_core=GEMINI", "", 403),  # another account
    ("/?rs_accid=acme&rs_u_sessid=s-7&rs_auth={t}&rs_api=OPENAI&rs_core=OPENAI", "", 403),
])
def test_routes_refuse_what_the_token_does_not_bind(path: str, headers: str, status: int) -> None:
    bound = mint_token("acme-secret", "acme", expires=1_000, session_id="s-7", provider="gemini")
    sent = {"bearer": {"authorization": f"Bearer {bound}"}, "key": {"x-goog-api-key": bound}, "": {}}[headers]
    with pytest.raises(RouteError) as refused:
        _route(path.replace("{t}", bound), sent)
    assert refused.value.status == status


def test_expired_token_is_refused_at_the_upgrade() -> None:
    token = mint_token("acme-secret", "acme", expires=1_000)
    with pytest.raises(RouteError) as refused:
        _route("/v1/realtime", {"authorization": f"Bearer {token}"}, now=1_001.0)
    assert refused.value.status == 401
