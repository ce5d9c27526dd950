"""Accounts in a real Redis (AccountStore) and the edge's in-memory view of them (AccountBook)."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from shared.accounts import AccountBook, AccountError, AccountStore, Limits
from shared.auth import Authenticator, AuthError

ENV = {"env-acct": "env-secret"}
DEFAULT_FALLBACK = {"openai": ("gemini",), "gemini": ("openai",)}


def _id() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


async def test_add_rotate_disable_limits_defaults_round_trip(redis_client: aioredis.Redis) -> None:
    store = AccountStore(redis_client)
    account = _id()
    before = await store.version()
    secret = await store.add(account, provider="gemini", fallback=("gemini", "openai"), now=1_000.0)
    assert secret.startswith("rss_") and len(secret) > 40
    with pytest.raises(AccountError):
        await store.add(account)
    found = await store.get(account)
    assert found is not None
    assert (found.secret, found.provider, found.disabled) == (secret, "gemini", False)
    assert found.fallback == ("gemini", "openai")
    assert found.limits == Limits()

    rotated = await store.rotate(account, now=2_000.0)
    assert rotated != secret
    await store.set_disabled(account, True)
    assert await store.set_limits(account, max_sessions=3, frames_per_s=None) == Limits(3, None)
    assert await store.set_limits(account, max_sessions=None, frames_per_s=50.0) == Limits(3, 50.0)  # kept 3
    await store.set_defaults(account, provider="", fallback=None)
    found = await store.get(account)
    assert found is not None
    assert (found.secret, found.disabled, found.provider, found.fallback) == (rotated, True, None, ("gemini", "openai"))
    assert (found.created_at, found.rotated_at) == (1_000.0, 2_000.0)
    assert await store.version() == before + 6  # every change bumps the version the edges poll
    assert await store.set_limits(account, max_sessions=None, frames_per_s=None, clear=True) == Limits()

    every, version = await store.load()
    assert every[account].secret == rotated and version == await store.version()


async def test_changes_to_unknown_accounts_are_refused(redis_client: aioredis.Redis) -> None:
    store = AccountStore(redis_client)
    for change in (store.rotate(_id()), store.set_disabled(_id(), True),
                   store.set_limits(_id(), max_sessions=1, frames_per_s=None)):
        with pytest.raises(AccountError):
            await change
    with pytest.raises(AccountError):
        await store.add("bad id with spaces")


async def test_book_env_first_then_database_and_disabled_accounts_refused(redis_client: aioredis.Redis) -> None:
    store = AccountStore(redis_client)
    mine, off = _id(), _id()
    await store.add(mine, secret="db-secret", fallback=("azure", "gemini"))
    await store.add(off, secret="off-secret")
    await store.set_disabled(off, True)
    await store.set_limits(mine, max_sessions=2, frames_per_s=25.0)
    # An id in both: ACCOUNTS wins (the database cannot take over an operator's env account).
    await redis_client.delete("rs:acct:env-acct")
    await store.add("env-acct", secret="db-would-override")
    book = AccountBook(ENV)
    book.load(*await store.load())
    secrets = book.secrets()
    assert secrets["env-acct"] == "env-secret" and secrets[mine] == "db-secret" and off not in secrets
    auth = Authenticator(ENV)
    auth.replace(secrets)
    assert auth.check_api_key(f"{mine}:db-secret") == mine
    with pytest.raises(AuthError):
        auth.check_api_key(f"{off}:off-secret")
    assert book.limits_for(mine) == Limits(2, 25.0)
    assert book.limits_for("env-acct") == Limits() == book.limits_for("nobody")
    assert book.fallback_for(mine, "gemini", DEFAULT_FALLBACK) == ("azure",)  # itself left out
    assert book.fallback_for("env-acct", "gemini", DEFAULT_FALLBACK) == ("openai",)  # the config's
    await redis_client.delete("rs:acct:env-acct")
    await redis_client.srem("rs:acct:ids", "env-acct")


def test_book_without_database_is_the_env_accounts() -> None:
    book = AccountBook(ENV)
    assert book.secrets() == ENV and book.provider_for("env-acct") is None and book.version == -1
