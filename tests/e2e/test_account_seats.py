"""Concurrent sessions per account are capped fleet-wide (leases in Redis, services/edge/seats.py): two edges with
RS_MAX_SESSIONS_PER_ACCOUNT=2 let the account hold 2 sessions in all, not 2 each; a closed session frees its seat;
a reconnect of a session held on the other edge takes no second seat; the seats of an edge killed -9 come free
once their leases run out (RS_SESSION_LEASE_S)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.dev.stack import Proc, free_port, wait_port
from shared.config import DEFAULT_ACCOUNTS

from ..conftest import RunningStack
from .helpers import TIMEOUT_S

pytestmark = pytest.mark.e2e

LIMIT = 2
LEASE_S = 6.0  # renewed every 2 s: a live session's lease has >= 4 s left whenever it is looked at
ACCOUNT = f"seats-{uuid.uuid4().hex[:8]}"  # its own account: no other test's sessions count against it
SECRET = f"secret-{uuid.uuid4().hex}"


@dataclass
class Edges:
    procs: dict[str, Proc]
    ports: dict[str, int]

    def url(self, edge: str, session: str) -> str:
        return f"ws://127.0.0.1:{self.ports[edge]}/v1/realtime?model=gpt-realtime&rs_core=openai&rs_u_sessid={session}"


@pytest.fixture(scope="module")
def edges(running: RunningStack) -> Iterator[Edges]:
    env = {"RS_MAX_SESSIONS_PER_ACCOUNT": str(LIMIT), "RS_SESSION_LEASE_S": str(LEASE_S),
           "ACCOUNTS": f"{DEFAULT_ACCOUNTS},{ACCOUNT}={SECRET}"}
    ports = {name: free_port() for name in ("e1", "e2")}
    procs: dict[str, Proc] = {}
    try:
        for name, port in ports.items():
            procs[name] = running.stack.start_instance(
                "edge", f"edge-seats-{name}-{uuid.uuid4().hex[:6]}", env={**env, "PORT": str(port)})
            wait_port(port)
        yield Edges(procs, ports)
    finally:
        for proc in procs.values():
            proc.stop()


async def _connect(edges: Edges, edge: str, session: str | None = None) -> websockets.ClientConnection:
    ws = await websockets.connect(edges.url(edge, session or f"s-{uuid.uuid4().hex[:8]}"),
                                  additional_headers={"Authorization": f"Bearer {ACCOUNT}:{SECRET}"}, max_size=None)
    created = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert created["type"] == "session.created", created
    return ws


async def _refused(edges: Edges, edge: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await _connect(edges, edge)
    assert refused.value.response.status_code == 429
    assert refused.value.response.body == f"too many concurrent sessions for this account (limit {LIMIT})\n".encode()


async def _let_in_once_free(edges: Edges, edge: str, within_s: float) -> tuple[websockets.ClientConnection, float]:
    """A new session on ``edge``, tried until a seat is free (429 meanwhile); with the seconds it took."""
    started = time.monotonic()
    async with asyncio.timeout(within_s):
        while True:
            try:
                return await _connect(edges, edge), time.monotonic() - started
            except InvalidStatus as exc:
                assert exc.response.status_code == 429
                await asyncio.sleep(0.1)  # a retry period: the seat frees on the edge's own time


async def _taken_over(ws: websockets.ClientConnection) -> None:
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                await ws.recv()
    assert ws.close_code == 4000


async def test_the_limit_holds_across_edges_and_frees_on_close_and_on_an_edge_killed(edges: Edges) -> None:
    one = await _connect(edges, "e1", "one")
    two = await _connect(edges, "e2", "two")
    held = [one, two]
    try:
        await _refused(edges, "e1")  # each edge holds 1 of its 2: the account holds 2 of 2
        await _refused(edges, "e2")
        # "two" reconnecting on e1 is the same session: let in without a seat, the old connection taken over
        again = await _connect(edges, "e1", "two")
        held.append(again)
        await _taken_over(two)
        await _refused(edges, "e2")  # the old edge gave no seat back: still 2 of 2
        # a session that ends frees its seat at once
        await one.close()
        three, _ = await _let_in_once_free(edges, "e2", TIMEOUT_S)
        held.append(three)
        await _refused(edges, "e1")
        # e1 (holding "two") killed -9: its lease is not given back, it runs out
        edges.procs["e1"].kill()
        edges.procs["e1"].popen.wait(5)
        killed = time.monotonic()
        await _refused(edges, "e2")
        four, waited = await _let_in_once_free(edges, "e2", LEASE_S + TIMEOUT_S)
        held.append(four)
        waited = time.monotonic() - killed
        assert 2.0 <= waited <= LEASE_S + 3.0, f"seat of the killed edge free after {waited:.1f} s"
        await _refused(edges, "e2")  # three and four: 2 of 2 again
    finally:
        for ws in held:
            await ws.close()
