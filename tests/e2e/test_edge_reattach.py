"""A reattach that cannot succeed ends within its budget, and the client is told in its dialect; the
edge's admin port (RS_ADMIN_PORT) serves /metrics and /healthz instead of the client port.

This module runs its own stack with no spare worker: each test starts one worker, attaches a session to
it and kill -9s it, so the edge's reattach finds no worker of the provider and must give up.
"""

from __future__ import annotations

import asyncio
import json
import signal
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.dev.stack import Stack, free_port
from shared.session import session_key
from shared.store import Store

from ..conftest import Infra
from .helpers import ACCOUNT, API_KEY, GEMINI_WS_PATH, TIMEOUT_S

pytestmark = pytest.mark.e2e

BUDGET_MS = 1_500
# kill -> noticed (a probe finds no responders: ~0.2 s) -> budget -> the close; generous for a busy machine
GIVE_UP_WITHIN_S = BUDGET_MS / 1000 + 2.5


@dataclass
class ReattachStack:
    stack: Stack
    edge_port: int
    admin_port: int


@pytest.fixture(scope="module")
def lone(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReattachStack]:
    stack = Stack(tmp_path_factory.mktemp("reattach"))
    stack.env["REDIS_URL"] = infra.redis_url
    try:
        stack.start_nats()  # a bus of its own: no other stack's workers may take the session
        stack.start_fakes()
        port, admin_port = free_port(), free_port()
        stack.env.update({
            "PORT": str(port), "HOST": "127.0.0.1", "RS_REATTACH_BUDGET_MS": str(BUDGET_MS),
            "RS_ADMIN_PORT": str(admin_port),  # /metrics and /healthz there, not on the client port
        })
        stack.start_instance("checkpoint", "ckpt-r")
        stack.start_instance("transformer", "tr-r")
        stack.start_instance("edge", "edge-r")
        yield ReattachStack(stack, port, admin_port)
    finally:
        stack.stop()


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _gave_up(lone: ReattachStack) -> float:
    status, text = _get(lone.admin_port, "/metrics")
    assert status == 200
    prefix = 'rs_reattach_gave_up_total{role="worker"} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


async def _recv_json(ws: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))


async def _attached_to(infra: Infra, client_sid: str, worker: str) -> None:
    """Wait until the edge recorded the session's worker: the kill must hit a session fully attached."""
    async with Store.connect(infra.redis_url) as store, asyncio.timeout(TIMEOUT_S):
        while (await store.snapshot(session_key(ACCOUNT, client_sid))).record.get("route_worker") != worker:
            await asyncio.sleep(0.02)


async def _kill_the_only_worker(lone: ReattachStack, worker: str) -> float:
    proc = lone.stack.procs[-1]
    assert proc.name == worker
    proc.kill(signal.SIGKILL)
    await asyncio.to_thread(proc.popen.wait, 5)
    return asyncio.get_running_loop().time()


async def test_openai_client_gets_an_error_event_then_1011_when_no_worker_can_resume(
    lone: ReattachStack, infra: Infra
) -> None:
    worker, client_sid = f"wk-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(lone.stack.start_instance, "provider-worker", worker)
    url = f"ws://127.0.0.1:{lone.edge_port}/v1/realtime?model=gpt-realtime&rs_core=openai&rs_u_sessid={client_sid}"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {API_KEY}"}) as ws:
        assert (await _recv_json(ws))["type"] == "session.created"
        await _attached_to(infra, client_sid, worker)
        gave_up_before = await asyncio.to_thread(_gave_up, lone)
        killed_at = await _kill_the_only_worker(lone, worker)
        errors = []
        async with asyncio.timeout(GIVE_UP_WITHIN_S):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    event = json.loads(await ws.recv())
                    if event["type"] == "error":
                        errors.append(event["error"])
        elapsed = asyncio.get_running_loop().time() - killed_at
    assert [(e["type"], e["code"]) for e in errors] == [("server_error", "session_unavailable")]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "session unavailable" in closed.value.rcvd.reason
    assert elapsed >= BUDGET_MS / 1000, "it gave up only once the budget was spent"
    assert await asyncio.to_thread(_gave_up, lone) == gave_up_before + 1


async def test_gemini_client_gets_1011_with_a_reason_when_no_worker_can_resume(
    lone: ReattachStack, infra: Infra
) -> None:
    worker, client_sid = f"wk-{uuid.uuid4().hex[:6]}", f"gone-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(lone.stack.start_instance, "provider-worker", worker)
    url = f"ws://127.0.0.1:{lone.edge_port}{GEMINI_WS_PATH}?rs_u_sessid={client_sid}"
    async with websockets.connect(url, additional_headers={"x-goog-api-key": API_KEY}) as ws:
        await ws.send(json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview"}}))
        assert "setupComplete" in await _recv_json(ws)
        await _attached_to(infra, client_sid, worker)
        killed_at = await _kill_the_only_worker(lone, worker)
        frames = []
        async with asyncio.timeout(GIVE_UP_WITHIN_S):
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    frames.append(json.loads(await ws.recv()))
        elapsed = asyncio.get_running_loop().time() - killed_at
    assert frames == []  # Gemini's server says nothing before a close: the close is the message
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    assert "no worker could resume it" in closed.value.rcvd.reason
    assert elapsed >= BUDGET_MS / 1000


async def test_metrics_and_healthz_move_to_the_admin_port(lone: ReattachStack) -> None:
    status, body = await asyncio.to_thread(_get, lone.admin_port, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    status, body = await asyncio.to_thread(_get, lone.admin_port, "/metrics")
    assert status == 200 and "rs_liveness_probes_total" in body
    for path in ("/metrics", "/healthz"):
        assert (await asyncio.to_thread(_get, lone.edge_port, path))[0] == 404
    assert (await asyncio.to_thread(_get, lone.admin_port, "/v1/realtime"))[0] == 404
    with pytest.raises(InvalidStatus) as info:  # no sessions on the admin port
        async with websockets.connect(f"ws://127.0.0.1:{lone.admin_port}/v1/realtime",
                                      additional_headers={"Authorization": f"Bearer {API_KEY}"}):
            pass
    assert info.value.response.status_code == 404
