"""Memory vs file storage for an R3 stream on a 3-node nats-server cluster on this machine (docs/scaling.md).

``python -m ops.bench.stream_storage``: starts the cluster (services.dev.stack), then per storage type 300
acknowledged publishes (latency) and 20,000 core publishes of 960 bytes (a 20 ms frame of 24 kHz PCM16 is
960 bytes) timed until the stream holds them all.
"""

from __future__ import annotations

import asyncio
import time

import nats
from nats.js.api import StorageType, StreamConfig

from services.dev.stack import Stack

PAYLOAD = b"x" * 960
ACKED = 300
CORE = 20_000


async def measure(url: str) -> None:
    nc = await nats.connect(servers=url.split(","))
    js = nc.jetstream()
    for storage in (StorageType.MEMORY, StorageType.FILE):
        name, prefix = f"T{storage.value}", f"t.{storage.value}"
        await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], storage=storage, num_replicas=3))
        latencies = []
        for _ in range(ACKED):
            started = time.perf_counter()
            await js.publish(f"{prefix}.acked", PAYLOAD)
            latencies.append(time.perf_counter() - started)
        started = time.perf_counter()
        for _ in range(CORE):
            await nc.publish(f"{prefix}.core", PAYLOAD)
        await nc.flush()
        while (await js.stream_info(name)).state.messages < CORE + ACKED:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - started
        latencies.sort()
        print(f"{storage.value:>6} R3: acked publish p50 {latencies[ACKED // 2] * 1000:.2f} ms, "
              f"p99 {latencies[int(ACKED * 0.99)] * 1000:.2f} ms; {CORE} core publishes stored in {elapsed:.2f} s "
              f"({CORE / elapsed:,.0f}/s)", flush=True)
    await nc.close()


def main() -> None:
    stack = Stack()
    try:
        asyncio.run(measure(stack.start_nats_cluster()))
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
