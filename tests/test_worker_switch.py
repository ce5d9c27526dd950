"""A worker assigned a switched session announces it first on ``down`` once its upstream is ready, and sends
the session's signals. In process, with a real nats-server (of this module), Redis and the fake OpenAI."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from services.dev.stack import Stack
from services.fakes.knobs import Knobs
from services.fakes.openai.server import start as start_fake_openai
from services.provider_worker.worker import ProviderWorker
from shared import bus
from shared import events as ev
from shared.config import load_config
from shared.session import SessionMeta, session_key
from shared.store import Store

from .conftest import Infra


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    stack = Stack(Path(tmp_path_factory.mktemp("worker-switch")))  # a bus of its own: no other worker answers
    try:
        yield stack.start_nats()
    finally:
        stack.stop()


@pytest.fixture
async def worker(nats_url: str, infra: Infra) -> AsyncIterator[tuple[NATS, ProviderWorker]]:
    fake = await start_fake_openai(knobs=Knobs())
    nc = await bus.connect(nats_url, name="test-worker-switch")
    config = load_config(env={"OPENAI_API_KEY": "sk-test", "OPENAI_REALTIME_URL": f"{fake.url}/v1/realtime"},
                         dotenv=None)
    try:
        async with Store.connect(infra.redis_url, ttl_s=600) as store:
            await bus.ensure_stream(nc, first_seq=await store.stream_floor())
            w = ProviderWorker(config, providers=["openai"])
            async with w.running(nc, store):
                yield nc, w
    finally:
        await nc.close()
        await fake.close()


async def test_the_switched_announcement_is_the_first_event_on_down(worker: tuple[NATS, ProviderWorker]) -> None:
    nc, _ = worker
    client_sid = f"sw-{uuid.uuid4().hex[:8]}"
    sid = session_key("acc", client_sid)
    meta = SessionMeta(sid=sid, account="acc", client_session_id=client_sid, dialect="openai_ga", provider="openai")
    down: asyncio.Queue[ev.Envelope] = asyncio.Queue()
    signals: asyncio.Queue[bus.Signal] = asyncio.Queue()

    async def on_down(msg: object) -> None:
        down.put_nowait(ev.decode_envelope(msg.data))  # type: ignore[attr-defined]

    async def on_signal(msg: object) -> None:
        signals.put_nowait(bus.decode(msg.data, bus.Signal))  # type: ignore[attr-defined]

    await nc.subscribe(bus.Subjects.down(sid), cb=on_down)
    await nc.subscribe(bus.Subjects.signal(sid), cb=on_signal)
    decided_ms = int(time.time() * 1000) - 40  # the edge decided 40 ms ago
    request = bus.AssignRequest(meta=meta, epoch=1, switch_from="gemini", switch_reason="latency",
                                switch_started_ms=decided_ms)
    reply = bus.decode((await nc.request(bus.Subjects.assign_worker("openai"), bus.encode(request), timeout=5)).data,
                       bus.AssignReply)
    assert reply.ok
    first = await asyncio.wait_for(down.get(), 10)
    switched = first.events[0]
    assert isinstance(switched, ev.Switched), first.events
    assert (switched.from_provider, switched.to_provider, switched.reason) == ("gemini", "openai", "latency")
    assert 40 <= switched.gap_ms < 5_000
    # The session runs: a turn is answered, with busy, turn latency and idle signals for the edge.
    turn = [ev.ItemCreate(item=ev.Message(id="u1", role="user", content=[ev.TextContent(text="hello")])),
            ev.ResponseCreate()]
    await nc.publish(bus.Subjects.up(sid, "log"), bus.envelope(1, 1, turn))
    kinds: list[str] = []
    async with asyncio.timeout(10):
        while "idle" not in kinds:
            signal = await signals.get()
            assert signal.provider == "openai" and signal.epoch == 1
            kinds.append(signal.kind)
            if signal.kind == "turn":
                assert 0 < signal.value_ms < 5_000
    assert kinds == ["ready", "busy", "turn", "idle"]  # ready: the switch above, announced first
