"""bus.OutageGate against a real nats-server restarted (kill -9) while messages are published.

The subscriber reconnects later than the publisher (its reconnect wait is longer): without the gate, the
publisher's client flushes what it kept during the outage the moment it is back, before the subscriber is,
and the restarted server drops it (found by the chaos run's nats restarts: lost requests, hanging clients).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats

from services.dev.stack import Stack
from shared import bus

SUBJECT = "rs.test.gate"


async def _outage_then_publish(tmp_path: Path, gated: bool) -> list[bytes]:
    stack = Stack(tmp_path)
    url = stack.start_nats()
    try:
        publisher = await bus.connect(url, name="publisher")  # reconnects every 0.25 s
        subscriber = await nats.connect(url, reconnect_time_wait=0.6, max_reconnect_attempts=-1)
        got: list[bytes] = []

        async def on_msg(msg: nats.aio.msg.Msg) -> None:
            got.append(msg.data)

        await subscriber.subscribe(SUBJECT, cb=on_msg)
        await subscriber.flush()
        gate = bus.OutageGate(publisher)
        await gate.publish(SUBJECT, b"before")
        await publisher.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while got != [b"before"] and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert got == [b"before"]

        stack.kill9("nats")
        while publisher.is_connected and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for i in range(3):  # during the outage
            payload = f"during {i}".encode()
            await (gate.publish(SUBJECT, payload) if gated else publisher.publish(SUBJECT, payload))
        await asyncio.to_thread(stack.start_nats, int(url.rsplit(":", 1)[1]))
        deadline = loop.time() + 10
        while not (publisher.is_connected and subscriber.is_connected) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await gate.publish(SUBJECT, b"after")  # right after the reconnect: still in order behind the held ones
        deadline = loop.time() + 5
        while len(got) < 5 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        await publisher.close()
        await subscriber.close()
        return got
    finally:
        stack.stop()


async def test_what_is_published_during_an_outage_reaches_a_subscriber_that_comes_back_later(tmp_path: Path) -> None:
    got = await _outage_then_publish(tmp_path, gated=True)
    assert got == [b"before", b"during 0", b"during 1", b"during 2", b"after"]


async def test_without_the_gate_the_restarted_server_drops_it(tmp_path: Path) -> None:
    """The failure the gate is for, shown with the plain client (so the test above can fail)."""
    got = await _outage_then_publish(tmp_path, gated=False)
    assert b"during 0" not in got, got
