"""Authentication: the seed's HMAC, API-key forms for the SDK paths, constant-time comparisons.

Seed rule (kept exactly): ``rs_auth = hex(HMAC-SHA256(key=account secret, msg=session id))``.
Optional ``rs_exp`` (unix seconds) is signed into the token so a leaked URL dies:
``hex(HMAC-SHA256(key=secret, msg=f"{session id}.{rs_exp}"))``.

SDK paths carry one string (``Authorization: Bearer …``, ``x-goog-api-key``, ``?key=``):
``<account id>:<account secret>``, or a bare secret that belongs to exactly one account.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

__all__ = ["AuthError", "Authenticator", "seed_token"]


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

    def __init__(self, accounts: Mapping[str, str]) -> None:
        self._accounts = dict(accounts)

    def secret_of(self, account: str) -> str | None:
        return self._accounts.get(account)

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
