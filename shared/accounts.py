"""Accounts: the ``ACCOUNTS`` setting first, then (``ENABLE_DB=true``) the ones kept in Redis.

Redis keys (written by ``rtswitch accounts``, read by every edge):
- ``rs:acct:ids``      set of account ids
- ``rs:acct:<id>``     hash: secret, disabled ("0"/"1"), provider, fallback ("gemini,azure"), max_sessions,
                       fps, created_at, rotated_at
- ``rs:acct:version``  int, bumped by every change: edges poll it (cheap GET) and reload on a change

Secrets are stored as they are: the seed's HMAC and the client tokens need the secret itself as the key,
so a hash would not do. Redis holding them must be as private as the ``.env`` that holds the others.

``AccountBook`` is the edge's in-memory view (no I/O): the secrets the Authenticator checks, and per account
the defaults and limits other parts of the edge look up (``provider_for``, ``fallback_for``,
``limits_for``). ``AccountStore`` is the Redis side.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Literal

import msgspec
import redis.asyncio as aioredis

__all__ = ["Account", "AccountBook", "AccountError", "AccountStore", "Limits", "new_secret"]

IDS_KEY = "rs:acct:ids"
VERSION_KEY = "rs:acct:version"
_ACCOUNT_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


def _key(account: str) -> str:
    return f"rs:acct:{account}"


def new_secret() -> str:
    return "rss_" + secrets.token_urlsafe(32)


class AccountError(ValueError):
    """A refused account operation; the message is for the operator."""


class Limits(msgspec.Struct, frozen=True):
    """Per-account limits for the edge's limiter; None: no limit of that kind."""

    max_sessions: int | None = None  # concurrent sessions of the account, fleet-wide
    frames_per_s: float | None = None  # client frames per second per session


class Account(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    secret: str
    source: Literal["env", "db"]
    disabled: bool = False
    provider: str | None = None  # the account's default provider (a client's own choice still wins)
    fallback: tuple[str, ...] = ()  # the account's fallback order, for every provider (empty: the config's)
    limits: Limits = Limits()
    created_at: float = 0.0
    rotated_at: float = 0.0


def check_account_id(account: str) -> str:
    if not account or len(account) > 128 or not set(account) <= _ACCOUNT_ID_CHARS:
        raise AccountError("account id: 1-128 of letters, digits, '-', '_', '.'")
    return account


def _from_hash(account: str, raw: Mapping[bytes, bytes]) -> Account:
    text = {k.decode(): v.decode() for k, v in raw.items()}

    def number(name: str, kind: type[int] | type[float]) -> float | None:
        value = text.get(name, "")
        return kind(value) if value else None

    max_sessions = number("max_sessions", int)
    return Account(
        id=account,
        secret=text["secret"],
        source="db",
        disabled=text.get("disabled") == "1",
        provider=text.get("provider") or None,
        fallback=tuple(p for p in text.get("fallback", "").split(",") if p),
        limits=Limits(None if max_sessions is None else int(max_sessions), number("fps", float)),
        created_at=float(text.get("created_at") or 0),
        rotated_at=float(text.get("rotated_at") or 0),
    )


class AccountBook:
    """The accounts an edge knows: ``ACCOUNTS`` first (it wins on an id in both), then the database's."""

    def __init__(self, env_accounts: Mapping[str, str]) -> None:
        self._env = {a: Account(id=a, secret=s, source="env") for a, s in env_accounts.items()}
        self._all: dict[str, Account] = dict(self._env)
        self.version = -1  # the database version loaded; -1: none yet

    def load(self, db_accounts: Mapping[str, Account], version: int) -> None:
        self._all = {**db_accounts, **self._env}
        self.version = version

    def secrets(self) -> dict[str, str]:
        """What the Authenticator checks: every enabled account's secret."""
        return {a.id: a.secret for a in self._all.values() if not a.disabled}

    def get(self, account: str) -> Account | None:
        return self._all.get(account)

    def provider_for(self, account: str) -> str | None:
        """The account's default provider, or None (then the edge's RS_DEFAULT_PROVIDER)."""
        found = self._all.get(account)
        return found.provider if found else None

    def fallback_for(self, account: str, provider: str, default: Mapping[str, tuple[str, ...]]) -> tuple[str, ...]:
        """Where a session of ``account`` on ``provider`` goes when it must leave it: the account's order
        (without ``provider`` itself) when it has one, else ``default`` (the config's ``fallback``)."""
        found = self._all.get(account)
        if found is not None and found.fallback:
            return tuple(p for p in found.fallback if p != provider)
        return default.get(provider, ())

    def limits_for(self, account: str) -> Limits:
        found = self._all.get(account)
        return found.limits if found else Limits()


class AccountStore:
    """Accounts in Redis. Every change bumps ``rs:acct:version`` in the same transaction."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client

    async def version(self) -> int:
        raw = await self.redis.get(VERSION_KEY)
        return int(raw) if raw else 0

    async def load(self) -> tuple[dict[str, Account], int]:
        """Every account and the version they belong to (read in one MULTI so they match)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.get(VERSION_KEY)
            pipe.smembers(IDS_KEY)
            version_raw, ids = await pipe.execute()
        names = sorted(i.decode() for i in ids)
        async with self.redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.hgetall(_key(name))
            hashes = await pipe.execute()
        accounts = {n: _from_hash(n, h) for n, h in zip(names, hashes, strict=True) if h}
        return accounts, int(version_raw or 0)

    async def get(self, account: str) -> Account | None:
        raw = await self.redis.hgetall(_key(account))
        return _from_hash(account, raw) if raw else None

    async def _write(self, account: str, fields: Mapping[str, str], *, add: bool = False) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(_key(account), mapping=dict(fields))
            if add:
                pipe.sadd(IDS_KEY, account)
            pipe.incr(VERSION_KEY)
            await pipe.execute()

    async def add(
        self, account: str, *, secret: str | None = None, provider: str | None = None,
        fallback: tuple[str, ...] = (), now: float | None = None,
    ) -> str:
        """A new account; returns its secret (the caller shows it once)."""
        check_account_id(account)
        if await self.redis.exists(_key(account)):
            raise AccountError(f"account {account} exists (rotate its secret instead)")
        secret = secret or new_secret()
        stamp = str(time.time() if now is None else now)
        await self._write(account, {
            "secret": secret, "disabled": "0", "provider": provider or "", "fallback": ",".join(fallback),
            "max_sessions": "", "fps": "", "created_at": stamp, "rotated_at": stamp,
        }, add=True)
        return secret

    async def _existing(self, account: str) -> Account:
        found = await self.get(account)
        if found is None:
            raise AccountError(f"no account {account} in the database")
        return found

    async def rotate(self, account: str, *, now: float | None = None) -> str:
        """A new secret; the old one (and every client token minted with it) stops working."""
        await self._existing(account)
        secret = new_secret()
        await self._write(account, {"secret": secret, "rotated_at": str(time.time() if now is None else now)})
        return secret

    async def set_disabled(self, account: str, disabled: bool) -> None:
        await self._existing(account)
        await self._write(account, {"disabled": "1" if disabled else "0"})

    async def set_limits(self, account: str, *, max_sessions: int | None, frames_per_s: float | None,
                         clear: bool = False) -> Limits:
        """Sets the limits given (``clear``: both unset first); returns the account's limits now."""
        current = (await self._existing(account)).limits
        if clear:
            current = Limits()
        limits = Limits(current.max_sessions if max_sessions is None else max_sessions,
                        current.frames_per_s if frames_per_s is None else frames_per_s)
        await self._write(account, {
            "max_sessions": "" if limits.max_sessions is None else str(limits.max_sessions),
            "fps": "" if limits.frames_per_s is None else str(limits.frames_per_s),
        })
        return limits

    async def set_defaults(self, account: str, *, provider: str | None, fallback: tuple[str, ...] | None) -> None:
        """``provider`` / ``fallback``: None keeps the value, "" / () clears it."""
        await self._existing(account)
        fields: dict[str, str] = {}
        if provider is not None:
            fields["provider"] = provider
        if fallback is not None:
            fields["fallback"] = ",".join(fallback)
        if fields:
            await self._write(account, fields)
