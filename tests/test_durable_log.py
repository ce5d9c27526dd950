"""The two durability steps of the conversation log, against real servers.

- ``bus.publish_logged``: a ``log`` envelope is published with JetStream acks and retried under one
  ``Nats-Msg-Id`` until the stream stores it (once), within a bound.
- ``Store.settle`` with a replica (Sentinel mode): WAIT until the replica holds the checkpoint's batch; a
  batch it did not confirm is held, for a bound, then the replica is given up for a while (``ReplicaWait``);
  no WAIT with one Redis. ``Store.failures`` counts retried commands of every pooled connection (the
  checkpoint folds a batch again when it moved).
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.dev.stack import Stack
from shared import bus
from shared import events as ev
from shared.store import ReplicaWait, Store, WaitState

# -- the retry schedule (sans-I/O) ------------------------------------------------------------------


def test_ack_retry_backs_off_exponentially_to_its_cap() -> None:
    retry = bus.AckRetry(start=100.0, max_s=10.0, first_s=0.05, cap_s=0.5)
    assert [retry.delay(100.0) for _ in range(6)] == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5]


def test_ack_retry_gives_up_when_the_next_try_would_end_past_the_bound() -> None:
    retry = bus.AckRetry(start=100.0, max_s=2.0, first_s=0.5, cap_s=0.5)
    assert retry.delay(101.4) == 0.5
    assert retry.delay(101.6) is None
    assert bus.AckRetry(start=0.0, max_s=0.0).delay(0.0) is None


def test_replica_wait_never_waits_with_one_redis() -> None:
    wait = ReplicaWait(replicas=0)
    assert wait.wanted(0.0) == 0


def test_replica_wait_holds_an_unconfirmed_batch_up_to_the_bound_then_gives_the_replica_up() -> None:
    wait = ReplicaWait(replicas=1, hold_s=5.0, retry_s=5.0)
    assert wait.wanted(10.0) == 1 and wait.answered(1, 10.0) and wait.state is WaitState.NORMAL
    assert not wait.answered(0, 11.0)  # the replica lags: hold the batch (not acked), WAIT again
    assert wait.state is WaitState.HOLDING and wait.wanted(12.0) == 1
    assert not wait.answered(0, 15.9)
    assert wait.answered(0, 16.0)  # held 5 s: ack it anyway, go without WAIT for retry_s
    assert wait.state is WaitState.DEGRADED
    assert wait.wanted(20.9) == 0
    assert wait.wanted(21.0) == 1
    assert wait.answered(0, 22.0)  # still gone: no hold this time
    assert wait.state is WaitState.DEGRADED and wait.wanted(26.9) == 0
    assert wait.answered(1, 27.0) and wait.state is WaitState.NORMAL  # back: the next lag holds again
    assert not wait.answered(0, 30.0)


def test_replica_wait_a_confirmed_retry_ends_the_hold() -> None:
    wait = ReplicaWait(replicas=1, hold_s=5.0)
    assert not wait.answered(0, 1.0)
    assert wait.answered(1, 2.0) and wait.state is WaitState.NORMAL
    assert not wait.answered(0, 9.0)  # a new hold counts from its own start
    assert not wait.answered(0, 13.9)


# -- acked publishes against a real nats-server -----------------------------------------------------


@pytest.fixture
async def bus_only(tmp_path: Path) -> AsyncIterator[tuple[Stack, NATS]]:
    stack = Stack(tmp_path)  # a server of its own: the test creates and deletes the stream
    try:
        url = stack.start_nats()
        nc = await bus.connect(url, name="test")
        yield stack, nc
        await nc.close()
    finally:
        stack.stop()


def _log_envelope(seq: int) -> bytes:
    item = ev.Message(id=f"u{seq}", role="user", content=[ev.TextContent(text="hello")])
    return bus.envelope(1, seq, [ev.ItemCreate(item=item)])


async def test_a_log_envelope_is_stored_once_and_its_sequence_returned(bus_only: tuple[Stack, NATS]) -> None:
    _, nc = bus_only
    await bus.ensure_stream(nc)
    sid = uuid.uuid4().hex
    first = await bus.publish_logged(nc, bus.Subjects.up(sid, "log"), _log_envelope(1))
    second = await bus.publish_logged(nc, bus.Subjects.up(sid, "log"), _log_envelope(2))
    assert 0 < first < second
    stored = await bus.replay_seq(nc, bus.Subjects.up(sid))
    assert [seq for seq, _ in stored] == [first, second]


async def test_a_log_envelope_published_before_the_stream_exists_is_stored_once_when_it_does(
    bus_only: tuple[Stack, NATS],
) -> None:
    """No stream (a restarted server before a member re-created it): the publish is retried with the same
    message id; the member subscribed meanwhile gets every try, the stream keeps one."""
    _, nc = bus_only
    sid = uuid.uuid4().hex
    live: list[bytes] = []

    async def member(msg: Msg) -> None:
        live.append(msg.data)

    await nc.subscribe(bus.Subjects.up(sid), cb=member)  # a subscriber: tries time out (no "no responders")
    payload = _log_envelope(1)
    publish = asyncio.create_task(bus.publish_logged(nc, bus.Subjects.up(sid, "log"), payload, attempt_s=0.2))
    deadline = asyncio.get_running_loop().time() + 10
    while len(live) < 2:  # tried at least twice before there is a stream
        assert asyncio.get_running_loop().time() < deadline, "the publish was not tried again"
        await asyncio.sleep(0.02)
    assert not publish.done()
    await bus.ensure_stream(nc)
    seq = await asyncio.wait_for(publish, 10)
    assert seq > 0
    assert [s for s, _ in await bus.replay_seq(nc, bus.Subjects.up(sid))] == [seq]
    assert len(live) >= 2 and set(live) == {payload}


async def test_a_log_envelope_never_acknowledged_is_given_up_within_the_bound(bus_only: tuple[Stack, NATS]) -> None:
    _, nc = bus_only
    sid = uuid.uuid4().hex
    loop = asyncio.get_running_loop()
    started = loop.time()
    seq = await bus.publish_logged(nc, bus.Subjects.up(sid, "log"), _log_envelope(1), max_s=0.5, attempt_s=0.1)
    assert seq == 0
    assert loop.time() - started < 2.0


# -- WAIT for the replica against a real primary and replica ----------------------------------------


@pytest.fixture(scope="module")
def redis_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("pair"))
    try:
        stack.start_redis_ha()
        yield stack
    finally:
        stack.stop()


async def _replica_linked(port: int) -> None:
    replica = aioredis.Redis(port=port)
    try:
        for _ in range(200):
            if (await replica.info("replication")).get("master_link_status") == "up":
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the replica never linked to the primary")
    finally:
        await replica.aclose()


async def test_settle_waits_for_the_replica_in_sentinel_mode(redis_pair: Stack) -> None:
    await _replica_linked(redis_pair.redis_nodes["redis-b"])
    async with Store.connect("", sentinels=redis_pair.env["REDIS_SENTINELS"]) as store:
        assert store.wait.replicas == 1
        sid = uuid.uuid4().hex
        item = ev.ItemCreate(item=ev.Message(id="u1", role="user", content=[ev.TextContent(text="kept")]))
        await store.apply(sid, 7, [item])
        assert await store.settle(7, 0.0)
        assert store.wait.state is WaitState.NORMAL
    # Confirmed: the replica has the write now, not just eventually.
    replica = Store(aioredis.Redis(port=redis_pair.redis_nodes["redis-b"]))
    try:
        assert [i.id for i in (await replica.snapshot(sid)).items] == ["u1"]
    finally:
        await replica.redis.aclose()


async def test_settle_holds_a_batch_a_stopped_replica_has_not_confirmed(redis_pair: Stack) -> None:
    await _replica_linked(redis_pair.redis_nodes["redis-b"])
    async with Store.connect("", sentinels=redis_pair.env["REDIS_SENTINELS"]) as store:
        store.wait.timeout_ms = 300
        replica = next(p for p in redis_pair.procs if p.name == "redis-b")
        replica.kill(signal.SIGSTOP)  # shorter than Sentinel's down-after: nobody fails anything over
        try:
            loop = asyncio.get_running_loop()
            await store.apply(uuid.uuid4().hex, 8, [ev.ItemDelete(item_id="x")])
            started = loop.time()
            assert not await store.settle(8, 100.0)  # not confirmed: hold
            assert 0.25 <= loop.time() - started < 0.9
            assert store.wait.state is WaitState.HOLDING
        finally:
            replica.kill(signal.SIGCONT)
        assert await store.settle(8, 101.0)  # the replica is back: the held batch is confirmed
        assert store.wait.state is WaitState.NORMAL


async def test_settle_with_one_redis_never_waits(redis_pair: Stack) -> None:
    async with Store.connect(redis_pair.redis_url) as store:
        assert store.wait.replicas == 0
        assert await store.settle(11, 0.0)
        assert await store.stream_floor() >= 12


async def test_every_connection_of_a_store_counts_into_its_failures(redis_pair: Stack) -> None:
    """The checkpoint folds a batch again when the count moved (a failover may have taken writes with it):
    the count must see failures on any pooled connection, though redis-py copies the retry per connection."""
    async with Store.connect(redis_pair.redis_url) as store:
        await asyncio.gather(*(store.redis.blpop([f"rs:test:{i}"], timeout=0.1) for i in range(2)))  # 2 connections
        before = store.failures
        admin = aioredis.Redis.from_url(redis_pair.redis_url)
        try:
            await admin.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        finally:
            await admin.aclose()
        # Each pooled connection was closed under the client: its next command fails once and is retried.
        assert await asyncio.gather(*(store.redis.blpop([f"rs:test:{i}"], timeout=0.1) for i in range(2))) == [None] * 2
        assert store.failures - before == 2
