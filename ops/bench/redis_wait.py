"""What the checkpoint's WAIT for the Redis replica costs (docs/scaling.md).

``python -m ops.bench.redis_wait``: a Redis primary, one replica and 3 Sentinels on this machine
(services.dev.stack). Folds ``BATCHES`` batches of ``SIZE`` log envelopes (an ItemCreate each) the way the
checkpoint does (``Store.apply`` each, then ``Store.settle``), once through Sentinel (settle WAITs for the
replica) and once straight to the primary (one-Redis mode: no WAIT), and prints the time per batch and the
CPU of this process per envelope.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from services.dev.stack import Stack
from shared import events as ev
from shared.store import Store, WaitState

BATCHES = 300
SIZES = (1, 20)


async def _fold(store: Store, size: int) -> tuple[list[float], float]:
    loop = asyncio.get_running_loop()
    sid = uuid.uuid4().hex
    took: list[float] = []
    cpu = time.process_time()
    position = 1
    for _ in range(BATCHES):
        started = time.perf_counter()
        for _ in range(size):
            item = ev.Message(id=f"i{position}", role="user", content=[ev.TextContent(text="what is the weather " * 3)])
            await store.apply(sid, position, [ev.ItemCreate(item=item)])
            position += 1
        assert await store.settle(position - 1, loop.time())
        took.append(time.perf_counter() - started)
    return sorted(took), (time.process_time() - cpu) / (BATCHES * size)


async def measure(stack: Stack) -> None:
    async with Store.connect("", sentinels=stack.env["REDIS_SENTINELS"]) as sentinel, \
            Store.connect(stack.redis_url) as single:
        await sentinel.ping()
        for size in SIZES:
            for label, store in (("WAIT 1 (Sentinel)", sentinel), ("no WAIT (one Redis)", single)):
                took, cpu = await _fold(store, size)
                assert store.wait.state is WaitState.NORMAL
                print(f"batch of {size:>2}, {label:>19}: p50 {took[len(took) // 2] * 1000:.2f} ms, "
                      f"p99 {took[int(len(took) * 0.99)] * 1000:.2f} ms per batch; client CPU "
                      f"{cpu * 1e6:.0f} us per envelope", flush=True)


def main() -> None:
    stack = Stack()
    try:
        stack.start_redis_ha()
        asyncio.run(measure(stack))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
