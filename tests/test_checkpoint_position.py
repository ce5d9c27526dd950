"""The checkpoint records in Redis the stream position it has folded, and a worker about to restore a
conversation waits for it (with a deadline). A real nats-server (of this module) and Redis."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from services.checkpoint.checkpoint import Checkpoint
from services.dev.stack import Stack
from services.provider_worker.worker import ProviderWorker
from shared import bus
from shared import events as ev
from shared.config import load_config
from shared.runtime import stream_id
from shared.store import Store

from .conftest import Infra


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # A bus of its own: another stack's checkpoint on a shared bus would fold this module's messages.
    stack = Stack(Path(tmp_path_factory.mktemp("ckpt-position")))
    try:
        yield stack.start_nats()
    finally:
        stack.stop()


@pytest.fixture
async def wired(nats_url: str, infra: Infra) -> AsyncIterator[tuple[NATS, Store, ProviderWorker]]:
    nc = await bus.connect(nats_url, name="test-ckpt-position")
    async with Store.connect(infra.redis_url, ttl_s=600) as store:
        await bus.ensure_stream(nc, first_seq=await store.stream_floor())
        worker = ProviderWorker(load_config(env={}, dotenv=None), providers=["openai"])
        worker.nc, worker.store = nc, store
        try:
            yield nc, store, worker
        finally:
            await nc.close()


async def _publish_log(nc: NATS, sid: str, seq: int) -> int:
    """One up envelope the checkpoint folds (an item); its stream position."""
    item = ev.ItemCreate(item=ev.Message(id=f"i{seq}", role="user", content=[ev.TextContent(text="hi")]))
    ack = await nc.jetstream().publish(bus.Subjects.up(sid, "log"), bus.envelope(1, seq, [item]))
    return ack.seq


@contextlib.asynccontextmanager
async def _checkpoint(nc: NATS, store: Store) -> AsyncIterator[Checkpoint]:
    checkpoint = Checkpoint(load_config(env={}, dotenv=None))
    async with checkpoint.running(nc, store):
        yield checkpoint


async def test_the_folded_position_reaches_the_newest_message(wired: tuple[NATS, Store, ProviderWorker]) -> None:
    nc, store, worker = wired
    sid = uuid.uuid4().hex
    async with _checkpoint(nc, store):
        positions = [await _publish_log(nc, sid, seq) for seq in (1, 2, 3)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await worker._await_checkpoint(sid, timeout_s=5.0)
        assert loop.time() - started < 1.0
        assert await store.folded(await stream_id(nc)) >= positions[-1]
        assert [i.id for i in (await store.snapshot(sid)).items] == ["i1", "i2", "i3"], "folded, not just noted"


async def test_the_worker_waits_for_a_checkpoint_that_is_behind_and_gives_up_at_the_deadline(
    wired: tuple[NATS, Store, ProviderWorker],
) -> None:
    nc, store, worker = wired
    sid = uuid.uuid4().hex
    position = await _publish_log(nc, sid, 1)  # no checkpoint running: nobody folds it
    assert await store.folded(await stream_id(nc)) < position
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert not await worker._await_checkpoint(sid, timeout_s=0.3)
    assert 0.3 <= loop.time() - started < 1.0
    # A checkpoint that comes back folds it, and the wait (started before) ends as soon as it has.
    waiting = asyncio.create_task(worker._await_checkpoint(sid, timeout_s=10.0))
    await asyncio.sleep(0)
    assert not waiting.done()
    async with _checkpoint(nc, store):
        assert await asyncio.wait_for(waiting, 5.0)
    assert [i.id for i in (await store.snapshot(sid)).items] == ["i1"]


async def test_a_session_with_nothing_in_the_stream_does_not_wait(wired: tuple[NATS, Store, ProviderWorker]) -> None:
    _, _, worker = wired
    assert await worker._await_checkpoint(uuid.uuid4().hex, timeout_s=5.0)


async def test_positions_are_kept_per_stream_incarnation(infra: Infra) -> None:
    """Two buses (test stacks, or a restarted nats-server) sharing one Redis never read each other's."""
    async with Store.connect(infra.redis_url, ttl_s=600) as store:
        a, b = f"a-{uuid.uuid4().hex}", f"b-{uuid.uuid4().hex}"
        await store.note_folded(a, 500)
        await store.note_folded(a, 400)  # a late writer (another instance) never lowers it
        assert await store.folded(a) == 500
        assert await store.folded(b) == 0
