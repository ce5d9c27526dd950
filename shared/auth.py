"""Authentication: the seed's HMAC, API-key forms for the SDK paths, constant-time comparisons.

Seed rule (kept exactly): ``rs_auth = hex(HMAC-SHA256(key=account secret, msg=session id))``.
Optional ``rs_exp`` (unix seconds) is signed into the token so a leaked URL dies:
``hex(HMAC-SHA256(key=secret, msg=f"{session id}.{rs_exp}"))``.

SDK paths carry one string (``Authorization: Bearer …``, ``x-goog-api-key``, ``?key=``):
``<account id>:<account secret>``, a bare secret that belongs to exactly one account, or a client token.

Client tokens (``POST /v1/realtime/client_secrets``) are self-contained: ``ek_<payload>.<mac>``, payload the
base64url JSON ``{"a": account, "e": expires (unix s), "s": session id?, "p": provider?, "n": nonce}``,
mac ``base64url(HMAC-SHA256(key=HMAC-SHA256(account secret, "rs-client-token-v1"), msg=payload))``. Nothing
is stored: any edge checks any token; rotating the account's secret revokes every token minted with it.
A token is accepted wherever the account's secret is (Bearer, Gemini key, ``rs_auth`` on the seed URL) and
only for a new connection: a session it opened may outlive it (as OpenAI's client secrets do).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

import msgspec

__all__ = ["TOKEN_PREFIX", "AuthError", "Authenticator", "Grant", "Identity", "mint_token", "seed_token"]

TOKEN_PREFIX = "ek_"  # OpenAI's prefix for ephemeral keys: clients that sniff it treat ours alike
_TOKEN_KEY_LABEL = b"rs-client-token-v1"


class Grant(msgspec.Struct, frozen=True, omit_defaults=True):
    """What a client token carries (short field names: it travels in URLs)."""

    a: str  # account
    e: int  # expires, unix seconds
    n: str  # nonce: two tokens minted in the same second differ
    s: str | None = None  # bound session id (client's id)
    p: str | None = None  # bound provider


class Identity(msgspec.Struct, frozen=True):
    """Who a credential names, and what a token binds (None: not bound)."""

    account: str
    session_id: str | None = None
    provider: str | None = None


_GRANT_DEC = msgspec.json.Decoder(Grant)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _token_mac(secret: str, payload: str) -> str:
    key = hmac.new(secret.encode(), _TOKEN_KEY_LABEL, hashlib.sha256).digest()
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest())


def mint_token(
    secret: str, account: str, *, expires: int, session_id: str | None = None, provider: str | None = None
) -> str:
    grant = Grant(a=account, e=expires, n=secrets.token_hex(6), s=session_id, p=provider)
    payload = _b64(msgspec.json.encode(grant))
    return f"{TOKEN_PREFIX}{payload}.{_token_mac(secret, payload)}"


class AuthError(Exception):
    """Refused. ``status`` is the HTTP status for the upgrade; ``reason`` is short and leaks nothing."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def seed_token(secret: str, session_id: str, expires: int | None = None) -> str:
    message = session_id if expires is None else f"{session_id}.{expires}"
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


class Authenticator:
    """Checks credentials against the configured accounts. No I/O; the clock is passed in."""

    def __init__(self, accounts: Mapping[str, str], *, max_token_s: int = 7_200) -> None:
        self._accounts = dict(accounts)
        self.max_token_s = max_token_s  # longest client token, and the furthest rs_exp a seed URL may carry

    def replace(self, accounts: Mapping[str, str]) -> None:
        """New account secrets (the account book reloaded); later checks use them."""
        self._accounts = dict(accounts)

    def secret_of(self, account: str) -> str | None:
        return self._accounts.get(account)

    def check_token(self, token: str, *, now: float) -> Grant:
        """A client token (``ek_...``). Returns its grant or raises AuthError."""
        payload, sep, mac = token.strip().removeprefix(TOKEN_PREFIX).partition(".")
        try:
            grant = _GRANT_DEC.decode(_unb64(payload)) if sep else None
        except (binascii.Error, ValueError, msgspec.DecodeError):
            grant = None
        secret = self._accounts.get(grant.a) if grant is not None else None
        if grant is None or secret is None or not hmac.compare_digest(_token_mac(secret, payload), mac):
            raise AuthError(403, "authentication failed")
        if grant.e < now:
            raise AuthError(401, "token expired")
        return grant

    def identify(self, key: str, *, now: float) -> Identity:
        """SDK-path credential: a client token, or what ``check_api_key`` takes."""
        key = key.strip()
        if key.startswith(TOKEN_PREFIX):
            grant = self.check_token(key, now=now)
            return Identity(grant.a, grant.s, grant.p)
        return Identity(self.check_api_key(key))

    def check_seed(
        self, account: str, session_id: str, token: str, *, expires: str | None = None, now: float = 0.0
    ) -> str:
        """Seed query auth. Returns the account id or raises AuthError."""
        secret = self._accounts.get(account)
        if secret is None:
            # Same answer as a bad token: do not tell a prober which account ids exist.
            raise AuthError(403, "authentication failed")
        exp: int | None = None
        if expires:
            try:
                exp = int(expires)
            except ValueError:
                raise AuthError(400, "rs_exp must be unix seconds") from None
            if exp < now:
                raise AuthError(401, "token expired")
            if exp > now + self.max_token_s:  # a leaked URL must die within the same bound as a token
                raise AuthError(400, f"rs_exp is more than {self.max_token_s} s ahead")
        if token.strip().startswith(TOKEN_PREFIX):
            grant = self.check_token(token, now=now)
            if grant.a != account or grant.s not in (None, session_id):
                raise AuthError(403, "authentication failed")
            return account
        expected = seed_token(secret, session_id, exp)
        if not hmac.compare_digest(expected.encode(), token.strip().lower().encode()):
            raise AuthError(403, "authentication failed")
        return account

    def check_api_key(self, key: str) -> str:
        """SDK-path key: ``<account>:<secret>`` or a bare secret. Returns the account id."""
        key = key.strip()
        if not key:
            raise AuthError(401, "missing API key")
        account, sep, secret = key.partition(":")
        if sep:
            known = self._accounts.get(account)
            if known is not None and hmac.compare_digest(known.encode(), secret.encode()):
                return account
            raise AuthError(403, "authentication failed")
        # Bare secret: compare against every account so timing does not depend on which one matched.
        found: str | None = None
        for acc, secret_ in self._accounts.items():
            if hmac.compare_digest(secret_.encode(), key.encode()):
                found = acc
        if found is None:
            raise AuthError(403, "authentication failed")
        return found
