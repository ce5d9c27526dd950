from __future__ import annotations

import pytest

from shared.auth import Authenticator, AuthError, seed_token

SEED_ACCOUNT = "996-sdassds-86-asd"
SEED_SECRET = "secretkey-996"
SEED_SESSION = "test-session-browser"
SEED_TOKEN = "905b80fa2656d8f34c00e077260fc8972502591c384c9413228dbcb19dc7e041"


@pytest.fixture
def auth() -> Authenticator:
    return Authenticator({SEED_ACCOUNT: SEED_SECRET, "acme": "s3cret"})


def test_seed_vector_is_reproduced() -> None:
    assert seed_token(SEED_SECRET, SEED_SESSION) == SEED_TOKEN


def test_seed_vector_passes(auth: Authenticator) -> None:
    assert auth.check_seed(SEED_ACCOUNT, SEED_SESSION, SEED_TOKEN) == SEED_ACCOUNT


def test_uppercase_hex_is_accepted(auth: Authenticator) -> None:
    assert auth.check_seed(SEED_ACCOUNT, SEED_SESSION, SEED_TOKEN.upper()) == SEED_ACCOUNT


@pytest.mark.parametrize(
    ("account", "session", "token"),
    [
        (SEED_ACCOUNT, SEED_SESSION, SEED_TOKEN[:-1] + "0"),  # wrong hash
        (SEED_ACCOUNT, "other-session", SEED_TOKEN),  # token of another session
        ("acme", SEED_SESSION, SEED_TOKEN),  # token of another account
        ("nobody", SEED_SESSION, SEED_TOKEN),  # unknown account
        (SEED_ACCOUNT, SEED_SESSION, ""),
    ],
)
def test_bad_seed_credentials_are_refused_with_403(auth: Authenticator, account: str, session: str, token: str) -> None:
    with pytest.raises(AuthError) as info:
        auth.check_seed(account, session, token)
    assert info.value.status == 403


def test_unknown_account_and_bad_hash_look_the_same(auth: Authenticator) -> None:
    with pytest.raises(AuthError) as unknown:
        auth.check_seed("nobody", SEED_SESSION, SEED_TOKEN)
    with pytest.raises(AuthError) as bad:
        auth.check_seed(SEED_ACCOUNT, SEED_SESSION, "00" * 32)
    assert (unknown.value.status, unknown.value.reason) == (bad.value.status, bad.value.reason)


def test_expiry_is_signed_and_enforced(auth: Authenticator) -> None:
    token = seed_token(SEED_SECRET, SEED_SESSION, 2_000)
    assert auth.check_seed(SEED_ACCOUNT, SEED_SESSION, token, expires="2000", now=1_999.0) == SEED_ACCOUNT
    with pytest.raises(AuthError) as expired:
        auth.check_seed(SEED_ACCOUNT, SEED_SESSION, token, expires="2000", now=2_001.0)
    assert expired.value.status == 401
    with pytest.raises(AuthError):  # extending the expiry breaks the signature
        auth.check_seed(SEED_ACCOUNT, SEED_SESSION, token, expires="3000", now=2_001.0)
    with pytest.raises(AuthError) as garbage:
        auth.check_seed(SEED_ACCOUNT, SEED_SESSION, token, expires="soon")
    assert garbage.value.status == 400


def test_api_key_forms(auth: Authenticator) -> None:
    assert auth.check_api_key(f"{SEED_ACCOUNT}:{SEED_SECRET}") == SEED_ACCOUNT
    assert auth.check_api_key("s3cret") == "acme"
    for bad in ("acme:wrong", "nobody:s3cret", "wrong", ""):
        with pytest.raises(AuthError):
            auth.check_api_key(bad)
