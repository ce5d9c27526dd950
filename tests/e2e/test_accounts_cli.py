"""``rtswitch accounts`` against a real Redis, and an edge with ENABLE_DB=true following every change."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis

from shared.session import session_key

from ..conftest import RunningStack
from .db_edge import DbEdge, db_edge, until_status, upgrade_status
from .helpers import API_KEY

__all__ = ["db_edge"]

pytestmark = pytest.mark.e2e


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_add_rotate_disable_reach_the_edge_and_secrets_are_shown_once(
    db_edge: DbEdge, running: RunningStack
) -> None:
    account = f"cli-{uuid.uuid4().hex[:8]}"
    url = f"{db_edge.ws_base}/v1/realtime?model=gpt-realtime"
    assert await upgrade_status(url, _bearer(f"{account}:rss_guess")) == 403
    key = db_edge.add(account)
    await until_status(url, _bearer(key), 101)
    assert await upgrade_status(url, _bearer(API_KEY)) == 101  # ACCOUNTS still first
    # The edge without ENABLE_DB does not know the account.
    assert await upgrade_status(f"{running.ws_base}/v1/realtime?model=gpt-realtime", _bearer(key)) == 403

    rotated = db_edge.cli("rotate", account).stdout.strip()
    assert rotated.startswith(f"{account}:rss_") and rotated != key
    await until_status(url, _bearer(key), 403)
    assert await upgrade_status(url, _bearer(rotated)) == 101

    db_edge.cli("disable", account)
    await until_status(url, _bearer(rotated), 403)
    db_edge.cli("disable", account, "--enable")
    await until_status(url, _bearer(rotated), 101)

    listed = db_edge.listed()
    assert listed[account]["source"] == "db" and listed[account]["disabled"] is False
    text = db_edge.cli("list").stdout + db_edge.cli("list", "--json").stdout
    for secret in (key, rotated):
        bare = secret.split(":", 1)[1]
        assert bare not in text, "list never shows a secret"
        assert bare not in db_edge.proc.log_path.read_text(errors="replace"), "the edge never logs a secret"


async def test_limits_and_defaults_are_stored_and_the_default_provider_is_used(
    db_edge: DbEdge, redis_client: aioredis.Redis
) -> None:
    account = f"cli-{uuid.uuid4().hex[:8]}"
    key = db_edge.add(account, "--provider", "gemini", "--fallback", "azure,openai")
    done = db_edge.cli("limits", account, "--max-sessions", "4", "--fps", "60")
    assert '"max_sessions": 4' in done.stdout and '"fps": 60.0' in done.stdout
    row = db_edge.listed()[account]
    assert (row["provider"], row["fallback"]) == ("gemini", ["azure", "openai"])
    assert (row["max_sessions"], row["fps"]) == (4, 60.0)

    # No provider in the request (no rs_core, no model): the account's default decides.
    session = f"dflt-{uuid.uuid4().hex[:8]}"
    await until_status(f"{db_edge.ws_base}/v1/realtime?rs_u_sessid={session}", _bearer(key), 101)
    record = await redis_client.hgetall(f"rs:sess:{session_key(account, session)}")
    assert record[b"provider"] == b"gemini"

    db_edge.cli("defaults", account, "--provider", "", "--fallback", "")
    db_edge.cli("limits", account, "--clear")
    row = db_edge.listed()[account]
    assert (row["provider"], row["fallback"], row["max_sessions"], row["fps"]) == (None, [], None, None)


def test_cli_refuses_what_it_cannot_do(db_edge: DbEdge) -> None:
    account = f"cli-{uuid.uuid4().hex[:8]}"
    assert "no account" in db_edge.cli("rotate", account, check=False).stderr
    db_edge.add(account)
    duplicate = db_edge.cli("add", account, check=False)
    assert duplicate.returncode == 1 and "exists" in duplicate.stderr and "rss_" not in duplicate.stdout
    assert "ACCOUNTS" in db_edge.cli("rotate", API_KEY.split(":")[0], check=False).stderr
    assert db_edge.cli("add", "x-" + account, "--provider", "nope", check=False).returncode == 2
