"""A second edge on the shared stack that reads accounts from Redis (ENABLE_DB=true), and the CLI that
writes them. Import the fixture into a test module: ``from .db_edge import db_edge``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from services.dev.stack import Proc, free_port

from ..conftest import RunningStack

ROOT = Path(__file__).resolve().parents[2]
REFRESH_S = 0.1


@dataclass
class DbEdge:
    port: int
    proc: Proc
    env: dict[str, str]

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``rtswitch accounts ...`` as a user runs it (same REDIS_URL, ENABLE_DB=true)."""
        done = subprocess.run([sys.executable, "-m", "services.cli", "accounts", *args], env=self.env, cwd=ROOT,
                              capture_output=True, text=True, timeout=30)
        if check:
            assert done.returncode == 0, done.stderr
        return done

    def add(self, account: str, *args: str) -> str:
        """A new account; returns its ``<account>:<secret>`` key (the one line add prints)."""
        key = self.cli("add", account, *args).stdout.strip()
        assert key.startswith(f"{account}:rss_"), key
        return key

    def listed(self) -> dict[str, dict[str, object]]:
        return {row["id"]: row for row in json.loads(self.cli("list", "--json").stdout)}


@pytest.fixture(scope="module")
def db_edge(running: RunningStack) -> Iterator[DbEdge]:
    port = free_port()
    env = {**running.stack.env, "ENABLE_DB": "true", "RS_ACCOUNTS_REFRESH_S": str(REFRESH_S), "PORT": str(port)}
    proc = running.stack.start_instance("edge", f"edge-db-{port}", env=env)
    try:
        yield DbEdge(port, proc, env)
    finally:
        proc.stop()


async def upgrade_status(url: str, headers: dict[str, str] | None = None) -> int:
    """101 when the upgrade is accepted (the session's first event arrives), else the refusal's status."""
    try:
        async with websockets.connect(url, additional_headers=headers or {}) as ws:
            first = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert first["type"] in ("session.created", "rs.notice"), first
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


async def until_status(url: str, headers: dict[str, str], status: int, *, timeout: float = 10.0) -> None:
    """Edges follow account changes within RS_ACCOUNTS_REFRESH_S: wait for ``status`` with a deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await upgrade_status(url, headers)) != status:
        assert loop.time() < deadline, f"still {got}, expected {status}: {url}"
        await asyncio.sleep(REFRESH_S)
