"""An edge killed (-9) under a live session, the client back on another edge with its session id: the
members that served the old connection let go, so each turn reaches the provider once (found by the chaos
run's edge kills: the old transformer and worker stayed, and every later turn went upstream twice).

Two transformers and two workers, so the new connection's members may be other instances than the old
ones (on the same instance the re-assign replaces the old session anyway); a few kill-and-reconnect rounds
make that all but certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI

from services.dev.stack import Proc, Stack, free_port
from services.fakes.control import debug_sessions

from ..conftest import Infra
from .helpers import API_KEY, TIMEOUT_S

pytestmark = pytest.mark.e2e

ROUNDS = 3


@dataclass
class TwoEdges:
    stack: Stack
    ports: list[int]
    edges: list[Proc]

    def kill_and_respawn(self, i: int) -> None:
        self.edges[i].kill(signal.SIGKILL)
        self.edges[i].popen.wait(5)
        self.edges[i] = self.stack.start_instance("edge", f"edge-{i}", env={"PORT": str(self.ports[i])})


@pytest.fixture(scope="module")
def two_edges(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwoEdges]:
    stack = Stack(tmp_path_factory.mktemp("chaos-edge"))
    stack.env["REDIS_URL"] = infra.redis_url
    try:
        stack.start_nats()  # a bus of its own: no other stack's members may take the session
        stack.start_fakes()
        stack.env["HOST"] = "127.0.0.1"
        for command, instance in (("checkpoint", "ckpt-e"), ("transformer", "tr-a"), ("transformer", "tr-b"),
                                  ("provider-worker", "wk-a"), ("provider-worker", "wk-b")):
            stack.start_instance(command, instance)
        ports = [free_port(), free_port()]
        edges = [stack.start_instance("edge", f"edge-{i}", env={"PORT": str(p)}) for i, p in enumerate(ports)]
        yield TwoEdges(stack, ports, edges)
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def _connect(port: int, provider: str, client_sid: str) -> AsyncIterator[Any]:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{port}/v1")
    async with client.realtime.connect(
        model="gpt-realtime", extra_query={"rs_core": provider, "rs_u_sessid": client_sid}
    ) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        async with asyncio.timeout(TIMEOUT_S):
            while (await conn.recv()).type != "session.updated":
                pass
        yield conn


async def _turn(conn: Any, text: str) -> str:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()
    transcript: list[str] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            if event.type == "response.output_audio_transcript.delta":
                transcript.append(event.delta)
            elif event.type == "response.done":
                assert event.response.status == "completed", event
                return "".join(transcript)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_members_of_a_killed_edges_session_let_go_after_the_reconnect(
    two_edges: TwoEdges, provider: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    client_sid = f"ek-{provider}-{marker}"
    port = two_edges.stack.fake_ports[provider]
    turns = 0
    for rnd in range(ROUNDS):
        edge = rnd % 2
        async with _connect(two_edges.ports[edge], provider, client_sid) as conn:
            turns += 1
            # The provider counts the user turns it holds: a turn sent upstream twice counts twice.
            assert await _turn(conn, f"{marker} turn {turns}") == f"turn {turns}: {marker} turn {turns}"
            await asyncio.to_thread(two_edges.kill_and_respawn, edge)
    async with _connect(two_edges.ports[ROUNDS % 2], provider, client_sid) as conn:
        turns += 1
        assert await _turn(conn, f"{marker} turn {turns}") == f"turn {turns}: {marker} turn {turns}"

        async def mine() -> list[dict[str, Any]]:
            return [s for s in await debug_sessions(port)
                    if any((i["text"] or "").startswith(marker) for i in s["items"])]

        # One live upstream connection holds the conversation, each turn once; the old ones were let go.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT_S
        while len(live := await mine()) != 1 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        assert len(live) == 1, [s["id"] for s in live]
        said = [i["text"] for i in live[0]["items"] if i["role"] == "user" and (i["text"] or "").startswith(marker)]
        assert said == [f"{marker} turn {k}" for k in range(1, turns + 1)], said
