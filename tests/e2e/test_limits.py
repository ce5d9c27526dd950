"""The edge's limits through the real stack: a flooding client is rate limited without moving its
neighbours' latency, a session id connected twice is taken over (same edge and across edges), and an
account's concurrent sessions are capped at the upgrade (429)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import nats
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from services.dev.stack import free_port, wait_port
from shared.config import DEFAULT_ACCOUNTS
from shared.session import session_key

from ..conftest import RunningStack
from .helpers import ACCOUNT, API_KEY, GEMINI_WS_PATH, TIMEOUT_S

pytestmark = pytest.mark.e2e

HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# The cap is fleet-wide (Redis leases): an account of its own, so no other test's sessions count against it.
CAP_ACCOUNT, CAP_SECRET = f"cap-{uuid.uuid4().hex[:8]}", f"secret-{uuid.uuid4().hex}"
CAP_HEADERS = {"Authorization": f"Bearer {CAP_ACCOUNT}:{CAP_SECRET}"}
NEIGHBOURS = 10
TURNS = 3
FLOOD_FRAMES = 40_000  # bounded in count ...
FLOOD_S = 8.0  # ... and in time
FLOOD_RATE = 10_000  # frames per second the flooder aims at


@dataclass
class SecondEdge:
    port: int

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def second_edge(running: RunningStack) -> Iterator[SecondEdge]:
    """Another edge on the same bus, with at most 2 concurrent sessions per account."""
    port = free_port()
    proc = running.stack.start_instance(
        "edge", f"edge-limits-{uuid.uuid4().hex[:6]}", env={
            "PORT": str(port), "RS_MAX_SESSIONS_PER_ACCOUNT": "2",
            "ACCOUNTS": f"{DEFAULT_ACCOUNTS},{CAP_ACCOUNT}={CAP_SECRET}"})
    wait_port(port)
    try:
        yield SecondEdge(port)
    finally:
        proc.stop()


def _openai_url(base: str, session: str | None = None) -> str:
    url = f"{base}/v1/realtime?model=gpt-realtime&rs_core=openai"
    return url + (f"&rs_u_sessid={session}" if session else "")


async def _connect_openai(
    base: str, session: str | None = None, headers: dict[str, str] = HEADERS
) -> websockets.ClientConnection:
    ws = await websockets.connect(_openai_url(base, session), additional_headers=headers, max_size=None)
    created = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert created["type"] == "session.created", created
    return ws


async def _text_turn(ws: websockets.ClientConnection, text: str) -> float:
    """One text turn; returns the time to its first audio (seconds from response.create)."""
    await ws.send(json.dumps({"type": "conversation.item.create", "item": {
        "type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}}))
    await ws.send(json.dumps({"type": "response.create"}))
    sent = time.perf_counter()
    first: float | None = None
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            msg = json.loads(await ws.recv())
            assert msg["type"] != "error", msg
            if msg["type"] == "response.output_audio.delta" and first is None:
                first = time.perf_counter() - sent
            if msg["type"] == "response.done":
                assert first is not None, "a turn without audio"
                return first


async def _neighbours(base: str) -> list[float]:
    async def one(i: int) -> list[float]:
        ws = await _connect_openai(base)
        try:
            return [await _text_turn(ws, f"neighbour {i} turn {t}") for t in range(TURNS)]
        finally:
            await ws.close()

    results = await asyncio.gather(*(one(i) for i in range(NEIGHBOURS)))
    return [x for r in results for x in r]


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]


# The flooder runs in a process of its own: its CPU is not the neighbours' test client's.
FLOODER = r"""
import asyncio, base64, json, sys, time
import websockets

async def main(url, key, frames, seconds, rate):
    frame = json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(bytes(160)).decode()})
    errors, other = [], 0
    async with websockets.connect(url, additional_headers={"Authorization": "Bearer " + key}, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"

        async def read():
            nonlocal other
            async for raw in ws:
                msg = json.loads(raw)
                if msg["type"] == "error":
                    errors.append(msg["error"]["code"])
                elif msg["type"] == "input_audio_buffer.cleared":
                    return
                else:
                    other += 1

        reader = asyncio.create_task(read())
        print("flooding", flush=True)
        sent, start = 0, time.perf_counter()
        while sent < frames and time.perf_counter() - start < seconds:
            due = min(frames, int((time.perf_counter() - start) * rate) + 100)
            while sent < due:
                await ws.send(frame)
                sent += 1
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - start
        # Over: a quiet moment refills the bucket, then the session still answers.
        await asyncio.sleep(1.5)
        await ws.send(json.dumps({"type": "input_audio_buffer.clear"}))
        await asyncio.wait_for(reader, 20)
    print(json.dumps({"sent": sent, "seconds": elapsed, "errors": errors}), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])))
"""


async def test_a_flooding_client_is_limited_and_its_neighbours_do_not_notice(running: RunningStack) -> None:
    baseline = await _neighbours(running.ws_base)
    flood_session = f"flood-{uuid.uuid4().hex[:8]}"
    nc = await nats.connect(running.stack.nats_url or running.stack.env["NATS_URL"])
    on_bus = 0

    async def count(msg: nats.aio.msg.Msg) -> None:
        nonlocal on_bus
        on_bus += 1

    await nc.subscribe(f"rs.s.{session_key(ACCOUNT, flood_session)}.cin", cb=count)
    await nc.flush()
    flooder = subprocess.Popen(
        [sys.executable, "-c", FLOODER, _openai_url(running.ws_base, flood_session), API_KEY,
         str(FLOOD_FRAMES), str(FLOOD_S), str(FLOOD_RATE)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=running.stack.env)
    try:
        assert flooder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(flooder.stdout.readline), TIMEOUT_S)
        assert line.strip() == "flooding", line
        flooded = await _neighbours(running.ws_base)
        out, _ = await asyncio.wait_for(asyncio.to_thread(flooder.communicate), 60)
    finally:
        if flooder.poll() is None:
            flooder.kill()
        await nc.close()
    assert flooder.returncode == 0, out
    report = json.loads(out.strip().splitlines()[-1])
    rate = report["sent"] / report["seconds"]
    print(f"\nflood: {report['sent']} frames at {rate:.0f}/s, {on_bus} reached the bus; neighbours' time to first "
          f"audio p95: {_p95(baseline) * 1000:.0f} ms without, {_p95(flooded) * 1000:.0f} ms with the flood")
    assert report["sent"] >= 5_000 and rate >= 2_000, report  # it did flood
    assert report["errors"] == ["rate_limit_exceeded"], report  # one error for the whole flood
    # Dropped before the bus: at most the burst and the rate (defaults 1000 + 250/s), plus the final clear.
    assert on_bus <= 1_000 + 250 * (report["seconds"] + 2) + 1, on_bus
    assert _p95(flooded) <= max(3 * _p95(baseline), _p95(baseline) + 0.3), (baseline, flooded)


async def _closed_by_takeover(ws: websockets.ClientConnection) -> dict | None:
    """What the taken-over connection hears: the error event (OpenAI), then the close 4000."""
    error = None
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("type") == "error":
                    error = msg
    assert (ws.close_code, ws.close_reason) == (4000, "session taken over by another connection")
    return error


@pytest.mark.parametrize("across", [False, True], ids=["same-edge", "across-edges"])
async def test_a_second_connection_takes_the_session_over(
    running: RunningStack, second_edge: SecondEdge, across: bool
) -> None:
    session = f"takeover-{uuid.uuid4().hex[:8]}"
    old = await _connect_openai(running.ws_base, session)
    await _text_turn(old, "first connection")
    new = await _connect_openai(second_edge.ws_base if across else running.ws_base, session)
    try:
        error = await _closed_by_takeover(old)
        assert error is not None and error["error"]["code"] == "session_taken_over", error
        await _text_turn(new, "second connection")  # the new one has the conversation
    finally:
        await new.close()


async def test_gemini_takeover_closes_with_4000(running: RunningStack, second_edge: SecondEdge) -> None:
    session = f"takeover-g-{uuid.uuid4().hex[:8]}"
    setup = json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview"}})
    connections = []
    for base in (running.ws_base, second_edge.ws_base):
        ws = await websockets.connect(f"{base}{GEMINI_WS_PATH}?key={API_KEY}&rs_core=gemini&rs_u_sessid={session}")
        await ws.send(setup)
        assert "setupComplete" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        connections.append(ws)
    old, new = connections
    try:
        assert await _closed_by_takeover(old) is None  # Gemini has no error message: the close says it
    finally:
        await new.close()


async def test_sessions_per_account_are_capped_at_the_upgrade(second_edge: SecondEdge) -> None:
    held = [await _connect_openai(second_edge.ws_base, f"cap-{uuid.uuid4().hex[:8]}", CAP_HEADERS) for _ in range(2)]
    try:
        with pytest.raises(InvalidStatus) as refused:
            await _connect_openai(second_edge.ws_base, headers=CAP_HEADERS)
        assert refused.value.response.status_code == 429
        assert b"too many concurrent sessions" in refused.value.response.body
        # A reconnect of a session already held is a takeover, not a new seat.
        session = held[0].request.path.split("rs_u_sessid=")[1]  # type: ignore[union-attr]
        again = await _connect_openai(second_edge.ws_base, session, CAP_HEADERS)
        await _closed_by_takeover(held[0])
        held[0] = again
        # A seat comes free when a session ends.
        await held.pop().close()
        async with asyncio.timeout(TIMEOUT_S):
            while True:
                try:
                    held.append(await _connect_openai(second_edge.ws_base, headers=CAP_HEADERS))
                    break
                except InvalidStatus as exc:
                    assert exc.response.status_code == 429
                    await asyncio.sleep(0.05)  # the edge counts the closed one out when its handler ends
    finally:
        for ws in held:
            await ws.close()
