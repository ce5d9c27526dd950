"""Checkpoint: turns the session stream into the structured conversation log in Redis.

A durable JetStream pull consumer (shared by every checkpoint instance) reads ``up`` and ``down``
envelopes; each is folded into Redis by ``Store.apply`` with the stream sequence as the item position,
so redelivery and several instances never duplicate or reorder an item. A restarted checkpoint resumes
from the consumer's acknowledged position. A batch is acked only once Redis holds it: with a replica
(Sentinel mode), once the replica confirms it too (``Store.settle``: WAIT, bounded), and folded again when
a Redis command failed meanwhile (a failover may have taken the old primary's writes with it).

After each batch, and once a second when idle, the checkpoint records in Redis the position up to which
the log holds the stream (the consumer's ack floor: with several instances, or a redelivery pending,
everything below it is folded, not just what this instance took). A worker about to restore a
conversation waits until that position reaches the newest log message of its session
(``Store.note_folded`` / ``Store.folded``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import bus
from shared import events as ev
from shared.config import Config
from shared.metrics import CHECKPOINT_REFOLDS, frame_counter
from shared.runtime import heartbeat_loop, instance_id, stream_id
from shared.store import Store

__all__ = ["DURABLE", "Checkpoint"]

log = logging.getLogger(__name__)

DURABLE = bus.CHECKPOINT_CONSUMER
BATCH = 256
FETCH_PAUSE_S = 0.02  # the log trails the stream by at most this much more (replacements wait for it)


class Checkpoint:
    name = "checkpoint"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = instance_id("checkpoint", config.instance_id)
        self.applied = 0
        self.stream_id = ""  # the stream incarnation bound to (see shared.runtime.stream_id)

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        psub = await self._bind(nc, store)  # here, not in the task: a bus without JetStream fails the start
        consumer = asyncio.create_task(self._consume(nc, store, psub))
        beat = asyncio.create_task(heartbeat_loop(nc, "checkpoint", self.instance, lambda: 0))
        try:
            yield
        finally:
            beat.cancel()
            consumer.cancel()
            with contextlib.suppress(BaseException):
                await consumer

    async def _bind(self, nc: NATS, store: Store) -> JetStreamContext.PullSubscription:
        """The stream and the durable consumer, created idempotently: every instance binds to the same
        consumer (work is shared). Again after a bus reconnect: a restarted nats-server has lost both
        (memory storage); the new stream's sequence goes on after the last one folded into the log."""
        await bus.ensure_stream(nc, first_seq=await store.stream_floor())
        self.stream_id = await stream_id(nc)
        js = nc.jetstream()
        await js.add_consumer(
            bus.STREAM,
            ConsumerConfig(
                durable_name=DURABLE,
                filter_subjects=bus.Subjects.CHECKPOINT_SUBJECTS,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_ack_pending=20_000,
                # Each message is acked within milliseconds of its delivery. What a killed instance had
                # fetched is redelivered only after this: until then the log lacks it and a replacement
                # worker waits for it (ProviderWorker._await_checkpoint), so it is short.
                ack_wait=2,
            ),
        )
        return await js.pull_subscribe_bind(DURABLE, bus.STREAM)

    async def _consume(self, nc: NATS, store: Store, psub: JetStreamContext.PullSubscription) -> None:
        reconnects = nc.stats["reconnects"]
        backoff = 0.05
        while True:
            if nc.stats["reconnects"] != reconnects and nc.is_connected:
                seen = nc.stats["reconnects"]
                try:
                    old, psub = psub, await self._bind(nc, store)
                except Exception as exc:
                    log.warning("rebind after a bus reconnect failed", extra={"error": type(exc).__name__})
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                reconnects = seen
                log.info("stream and consumer bound again after a bus reconnect")
                with contextlib.suppress(Exception):
                    await old.unsubscribe()
            try:
                msgs = await psub.fetch(BATCH, timeout=1.0)
            except nats.errors.TimeoutError:
                await self._note_folded(nc, store)  # idle: an ack of another instance may have moved it
                continue
            except (nats.errors.Error, nats.js.errors.Error, OSError) as exc:
                log.warning("fetch failed", extra={"error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.05
            batch: list[tuple[str, int, list[ev.Event]]] = []
            good: list[Msg] = []
            for msg in msgs:
                sid = msg.subject.split(".")[2]
                try:
                    env = ev.decode_envelope(msg.data)
                except Exception:
                    log.error("undecodable envelope", extra={"sid": sid})
                    await msg.term()
                    continue
                batch.append((sid, msg.metadata.sequence.stream, list(env.events)))
                good.append(msg)
            if batch:
                await self._fold(store, batch, good)
            for msg in good:
                frame_counter("checkpoint", "in").inc()
                self.applied += 1
                if msg is good[-1]:
                    # Confirmed: the server has taken this batch's acks before the ack floor is read.
                    with contextlib.suppress(nats.errors.TimeoutError):
                        await msg.ack_sync(timeout=1.0)
                else:
                    await msg.ack()
            if msgs:
                await self._note_folded(nc, store)
            if len(msgs) < BATCH:
                # Caught up: let the stream fill a little before the next pull. Without the pause each pull
                # returns one or two messages and its request/reply costs more than folding them.
                await asyncio.sleep(FETCH_PAUSE_S)

    async def _fold(self, store: Store, batch: list[tuple[str, int, list[ev.Event]]], msgs: list[Msg]) -> None:
        """Fold a batch into Redis before any of it is acked: every envelope (``Store.apply``), then
        ``Store.settle`` (with a replica: WAIT until it holds the batch; again while it does not, for a
        bound). A Redis command that failed meanwhile (a failover: what the old primary acked may be gone
        with it) folds the whole batch again (the writes are idempotent); Redis down: hold the batch (no
        ack) and retry, the stream keeps the rest."""
        backoff = 0.05
        loop = asyncio.get_running_loop()
        failures = store.failures
        while True:
            try:
                for sid, position, events in batch:
                    await store.apply(sid, position, events)
                # Held while the replica has not confirmed (bounded by ReplicaWait); a failure meanwhile refolds.
                while not await store.settle(batch[-1][1], loop.time()) and store.failures == failures:
                    for msg in msgs:  # held longer than ack_wait: not redelivered meanwhile
                        with contextlib.suppress(nats.errors.Error):
                            await msg.in_progress()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("store unavailable", extra={"error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if store.failures == failures:
                return
            failures = store.failures
            CHECKPOINT_REFOLDS.inc()
            log.info("redis failed during a batch: folding it again", extra={"envelopes": len(batch)})

    async def _note_folded(self, nc: NATS, store: Store) -> None:
        """Record the consumer's ack floor in Redis: every message below it is in the log."""
        try:
            info = await nc.jetstream().consumer_info(bus.STREAM, DURABLE)
            floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
            if floor:  # written even when unchanged: a Redis restarted without its data lost it
                await store.note_folded(self.stream_id, floor)
        except (nats.errors.Error, nats.js.errors.Error, RedisConnectionError, RedisTimeoutError, OSError) as exc:
            log.warning("folded position not recorded", extra={"error": type(exc).__name__})
