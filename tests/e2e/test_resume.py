"""Resume with missed events: a client whose socket is cut while a response streams reconnects to the other
edge with ``rs_resume=<last event seq>`` and gets exactly the events after it, in order, then the rest of the
response, none twice (docs/entry-points.md, "Resume with missed events").

Its own stack: two edges, one transformer, one worker, fakes that stream a 3 s response in real time (75
chunks of 40 ms), so the cut lands in the middle of it. Raw WebSocket clients (the SDKs are not needed for
the cut): OpenAI GA reads the seq from ``event_id`` (``event_rs_<seq>``), Gemini counts the messages.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import websockets
from openai import AsyncOpenAI
from openai.types.websocket_reconnection import ReconnectingEvent, ReconnectingOverrides
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from services.dev.stack import Proc, Stack, free_port
from shared import bus
from shared.bus import Subjects
from shared.session import session_key
from shared.store import Store

from ..conftest import Infra
from .helpers import ACCOUNT, API_KEY, GEMINI_WS_PATH, TIMEOUT_S

pytestmark = pytest.mark.e2e

RESPONSE_MS = 3000
CHUNK_MS = 40
AUDIO_BYTES = RESPONSE_MS * 24 * 2  # 24 kHz PCM16 mono, both dialects
CUT_AFTER_CHUNKS = 8  # audio chunks the client reads before its socket is cut
MISSED = 6  # events published while the client is away (it reconnects once the bus has carried them)


@dataclass
class ResumeStack:
    stack: Stack
    ports: dict[str, int]  # edge instance -> client port
    edges: dict[str, Proc]
    nats_url: str

    def ensure_edges(self) -> None:
        for name, port in self.ports.items():
            proc = self.edges.get(name)
            if proc is None or not proc.alive():
                self.edges[name] = self.stack.start_instance("edge", name, env={"PORT": str(port)})

    def url(self, edge: str, path: str) -> str:
        return f"ws://127.0.0.1:{self.ports[edge]}{path}"


@pytest.fixture(scope="module")
def rstack(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ResumeStack]:
    stack = Stack(tmp_path_factory.mktemp("resume"))
    stack.env["REDIS_URL"] = infra.redis_url
    stack.env.update({
        "HOST": "127.0.0.1", "FAKE_RESPONSE_MS": str(RESPONSE_MS), "FAKE_CHUNK_MS": str(CHUNK_MS), "FAKE_PACE": "1.0",
    })
    try:
        nats_url = stack.start_nats()  # a bus of its own: no other stack's members may take these sessions
        stack.start_fakes()
        for command, instance in (("checkpoint", "ckpt-m"), ("transformer", "tr-m"), ("provider-worker", "wk-m")):
            stack.start_instance(command, instance)
        rs = ResumeStack(stack, {"edge-m1": free_port(), "edge-m2": free_port()}, {}, nats_url)
        rs.ensure_edges()
        yield rs
    finally:
        stack.stop()


class Published:
    """The newest event seq the transformer published for a session (watching its cout on the bus)."""

    def __init__(self) -> None:
        self.newest = 0
        self.changed = asyncio.Event()

    @contextlib.asynccontextmanager
    async def watching(self, nats_url: str, session_id: str) -> AsyncIterator[Published]:
        nc = await bus.connect(nats_url, name="test-resume")

        async def on_cout(msg: Any) -> None:
            out = bus.decode(msg.data, bus.ClientOut)
            if out.first:
                self.newest = max(self.newest, out.first + len(out.frames) - 1)
                self.changed.set()

        try:
            await nc.subscribe(Subjects.cout(session_key(ACCOUNT, session_id)), cb=on_cout)
            await nc.flush()
            yield self
        finally:
            await nc.close()

    async def reach(self, seq: int) -> None:
        async with asyncio.timeout(TIMEOUT_S):
            while self.newest < seq:
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def store(infra: Infra) -> AsyncIterator[Store]:
    async with Store.connect(infra.redis_url) as s:
        yield s


async def _read_until_cut(ws: ClientConnection, into: list[Any], *, decode: bool = True) -> None:
    """Everything the socket still delivers until it is closed under us."""
    with contextlib.suppress(ConnectionClosed):
        while True:
            raw = await asyncio.wait_for(ws.recv(), TIMEOUT_S)
            into.append(json.loads(raw) if decode else raw)


def _seq(event: dict[str, Any]) -> int:
    event_id = event["event_id"]
    assert event_id.startswith("event_rs_"), event
    return int(event_id.removeprefix("event_rs_"))


def _openai_audio(events: list[dict[str, Any]]) -> int:
    return sum(len(base64.b64decode(e["delta"])) for e in events if e["type"] == "response.output_audio.delta")


async def _cut(rs: ResumeStack, edge: str, how: str, ws: ClientConnection) -> None:
    if how == "kill":
        rs.edges[edge].kill(signal.SIGKILL)
    else:  # the TCP connection dropped under the client: no close frame, the edge lives on
        assert ws.transport is not None
        ws.transport.abort()


@pytest.mark.parametrize("how", ["kill", "tcp_drop"])
async def test_openai_resume_on_the_other_edge(rstack: ResumeStack, store: Store, how: str) -> None:
    rstack.ensure_edges()
    session_id = f"resume-oa-{uuid.uuid4().hex[:8]}"
    path = f"/v1/realtime?model=gpt-realtime&rs_u_sessid={session_id}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    before: list[dict[str, Any]] = []
    published = Published()
    async with published.watching(rstack.nats_url, session_id):
        ws = await websockets.connect(rstack.url("edge-m1", path), additional_headers=headers, max_size=None)
        await _openai_until_cut(rstack, ws, before, how)
        last = _seq(before[-1])
        await published.reach(last + MISSED)  # the response goes on while the client is away
    await _check_openai_resume(rstack, store, session_id, path, headers, before)


async def _openai_until_cut(rstack: ResumeStack, ws: ClientConnection, before: list[dict[str, Any]], how: str) -> None:
    try:
        before.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
        assert before[0]["type"] == "session.created"
        await ws.send(json.dumps({"type": "response.create", "response": {"output_modalities": ["audio"]}}))
        chunks = 0
        while chunks < CUT_AFTER_CHUNKS:
            event = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            before.append(event)
            assert event["type"] != "error", event
            chunks += event["type"] == "response.output_audio.delta"
        await _cut(rstack, "edge-m1", how, ws)
        await _read_until_cut(ws, before)
    finally:
        await ws.close()


async def _check_openai_resume(
    rstack: ResumeStack, store: Store, session_id: str, path: str, headers: dict[str, str], before: list[dict[str, Any]]
) -> None:
    seqs = [_seq(e) for e in before]
    assert seqs == list(range(1, len(seqs) + 1)), seqs  # numbered from 1, one by one
    last = seqs[-1]
    assert not any(e["type"] == "response.done" for e in before), "the cut must land inside the response"
    response_id = next(e["response"]["id"] for e in before if e["type"] == "response.created")

    after: list[dict[str, Any]] = []
    async with websockets.connect(
        rstack.url("edge-m2", f"{path}&rs_resume={last}"), additional_headers=headers, max_size=None
    ) as ws2:
        while not (after and after[-1]["type"] == "response.done"):
            after.append(json.loads(await asyncio.wait_for(ws2.recv(), TIMEOUT_S)))
        done = after[-1]
        # Then the connection is live: what comes next gets the next numbers.
        await ws2.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "x"}}))
        while after[-1]["type"] != "session.updated":
            after.append(json.loads(await asyncio.wait_for(ws2.recv(), TIMEOUT_S)))
    assert [_seq(e) for e in after] == list(range(last + 1, last + 1 + len(after))), [e["type"] for e in after]
    assert done["response"]["id"] == response_id and done["response"]["status"] == "completed", done
    assert all(e["type"] != "session.created" for e in after)  # the same session, its members kept
    # The whole response, each chunk once: before the cut and after it add up to the response's audio.
    assert _openai_audio(before) + _openai_audio(after) == AUDIO_BYTES
    record = await store.session_record(session_key(ACCOUNT, session_id))
    assert record["edge"] == "edge-m2" and record["route_transformer"] == "tr-m"


async def test_gemini_resume_on_the_other_edge(rstack: ResumeStack) -> None:
    rstack.ensure_edges()
    session_id = f"resume-gm-{uuid.uuid4().hex[:8]}"
    path = f"{GEMINI_WS_PATH}?key={API_KEY}&rs_u_sessid={session_id}"
    setup = json.dumps({"setup": {"model": "models/gemini-2.0-flash-live-001",
                                  "generationConfig": {"responseModalities": ["AUDIO"]}}})
    before: list[dict[str, Any]] = []
    ws = await websockets.connect(rstack.url("edge-m1", path), max_size=None)
    try:
        await ws.send(setup)
        assert "setupComplete" in json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        async with Published().watching(rstack.nats_url, session_id) as published:
            await ws.send(json.dumps({"clientContent": {
                "turns": [{"role": "user", "parts": [{"text": "tell me something long"}]}], "turnComplete": True}}))
            while sum(_gemini_audio_chunks(m) for m in before) < CUT_AFTER_CHUNKS:
                before.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
            await _cut(rstack, "edge-m1", "kill", ws)
            await _read_until_cut(ws, before)
            await published.reach(len(before) + MISSED)  # the response goes on while the client is away
    finally:
        await ws.close()
    # The client counts the messages it got, setupComplete (and the gateway's own rs* messages) aside.
    count = len(before)
    assert not any(_turn_complete(m) for m in before), "the cut must land inside the response"

    after: list[dict[str, Any]] = []
    async with websockets.connect(rstack.url("edge-m2", f"{path}&rs_resume={count}"), max_size=None) as ws2:
        await ws2.send(setup)
        assert "setupComplete" in json.loads(await asyncio.wait_for(ws2.recv(), TIMEOUT_S))
        while not (after and _turn_complete(after[-1])):
            message = json.loads(await asyncio.wait_for(ws2.recv(), TIMEOUT_S))
            assert "setupComplete" not in message, "one setupComplete per connection"
            after.append(message)
    assert sum(_turn_complete(m) for m in before + after) == 1
    assert sum(_gemini_audio(m) for m in before + after) == AUDIO_BYTES  # every chunk once, none twice


def _gemini_parts(message: dict[str, Any]) -> list[dict[str, Any]]:
    turn = message.get("serverContent", {}).get("modelTurn") or {}
    return list(turn.get("parts") or [])


def _gemini_audio_chunks(message: dict[str, Any]) -> int:
    return sum(1 for part in _gemini_parts(message) if "inlineData" in part)


def _gemini_audio(message: dict[str, Any]) -> int:
    return sum(len(base64.b64decode(p["inlineData"]["data"])) for p in _gemini_parts(message) if "inlineData" in p)


def _turn_complete(message: dict[str, Any]) -> bool:
    return bool(message.get("serverContent", {}).get("turnComplete"))


async def test_a_closed_session_resumes_with_new_members_and_replays_what_was_not_read(rstack: ResumeStack) -> None:
    """The client left (a clean close: its members were told), then comes back claiming fewer events than
    were sent: the stream's last ones are replayed, and the new transformer numbers on after them."""
    rstack.ensure_edges()
    session_id = f"resume-fresh-{uuid.uuid4().hex[:8]}"
    path = f"/v1/realtime?model=gpt-realtime&rs_u_sessid={session_id}"
    headers = {"Authorization": f"Bearer {API_KEY}"}
    first: list[dict[str, Any]] = []
    async with websockets.connect(rstack.url("edge-m1", path), additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime", "instructions": "a"}}))
        while not (first and first[-1]["type"] == "session.updated"):
            first.append(json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S)))
    last = _seq(first[-1])
    assert [_seq(e) for e in first] == list(range(1, last + 1))
    claimed = last - 1  # as if the session.updated never reached the client
    again: list[dict[str, Any]] = []
    async with websockets.connect(
        rstack.url("edge-m2", f"{path}&rs_resume={claimed}"), additional_headers=headers, max_size=None
    ) as ws2:
        while not (again and again[-1]["type"] == "session.created"):
            again.append(json.loads(await asyncio.wait_for(ws2.recv(), TIMEOUT_S)))
    assert again[0] == first[-1]  # the very frame, its event_id included
    # Then whatever the old members sent after the client left, then the new transformer, numbering on.
    assert [_seq(e) for e in again] == list(range(last, last + len(again)))


async def test_a_seq_the_stream_no_longer_holds_resumes_without_replay_and_says_so(rstack: ResumeStack) -> None:
    """Nothing of the session is in the stream (here: it never had a connection; in production: the window
    moved on): no replay, the opt-in notice, and numbering above the client's seq."""
    rstack.ensure_edges()
    path = f"/v1/realtime?model=gpt-realtime&rs_u_sessid=resume-gone-{uuid.uuid4().hex[:8]}&rs_notices=1&rs_resume=40"
    async with websockets.connect(
        rstack.url("edge-m2", path), additional_headers={"Authorization": f"Bearer {API_KEY}"}, max_size=None
    ) as ws:
        notice = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
        created = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
    assert notice["type"] == "rs.notice" and notice["code"] == "resume_gap" and notice["param"] == "rs_resume"
    assert created["type"] == "session.created" and _seq(created) == 41


async def test_the_openai_sdk_reconnects_by_itself_and_resumes(rstack: ResumeStack) -> None:
    """The official openai SDK redials a dropped connection on its own (``on_reconnecting``); the handler adds
    ``rs_resume`` with the number of the last ``event_id`` seen, and the response plays on, each event once."""
    rstack.ensure_edges()
    session_id = f"resume-sdk-{uuid.uuid4().hex[:8]}"
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{rstack.ports['edge-m1']}/v1")
    seqs: list[int] = []
    redials: list[int] = []

    def on_reconnecting(event: ReconnectingEvent) -> ReconnectingOverrides:
        redials.append(event.close_code)
        return {"extra_query": {**event.extra_query, "rs_resume": str(seqs[-1])}}

    audio, chunks = 0, 0
    async with client.realtime.connect(
        model="gpt-realtime", extra_query={"rs_u_sessid": session_id}, on_reconnecting=on_reconnecting
    ) as conn:
        await conn.response.create(response={"output_modalities": ["audio"]})
        async with asyncio.timeout(TIMEOUT_S):
            async for event in conn:
                assert event.type != "error", event
                seqs.append(int(event.event_id.removeprefix("event_rs_")))
                if event.type == "response.output_audio.delta":
                    audio += len(base64.b64decode(event.delta))
                    chunks += 1
                    if chunks == CUT_AFTER_CHUNKS:
                        conn._connection.transport.abort()  # the TCP connection drops under the SDK
                if event.type == "response.done":
                    assert event.response.status == "completed"
                    break
    assert redials == [1006]
    assert seqs == list(range(1, len(seqs) + 1))
    assert audio == AUDIO_BYTES
