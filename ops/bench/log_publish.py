"""CPU per message of the acked ``log`` publish (``bus.publish_logged``) vs a core publish (docs/scaling.md).

``python -m ops.bench.log_publish``: on one nats-server and on a 3-node cluster (services.dev.stack, the
session stream as ``bus.ensure_stream`` makes it), publishes ``N`` log-sized envelopes (an ItemCreate with a
sentence of text) both ways and prints, per message: the publishing process's CPU (``time.process_time``),
the nats-servers' CPU (utime + stime of every node from /proc), and for the acked path the latency.
Acked publishes run as ``SESSIONS`` concurrent sequences (each awaits its ack before its next, like a
session does); core publishes are awaited one by one and timed until the stream holds them all.
"""

from __future__ import annotations

import asyncio
import os
import time

from nats.aio.client import Client as NATS

from services.dev.stack import Stack
from shared import bus
from shared import events as ev

N = 3000
SESSIONS = 20
_TICK = os.sysconf("SC_CLK_TCK")


def _envelope(seq: int) -> bytes:
    item = ev.Message(id=f"item_{seq:08d}", role="user", content=[ev.TextContent(text="what is the weather like " * 3)])
    return bus.envelope(1, seq, [ev.ItemCreate(item=item)])


def _server_cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    return total / _TICK


async def _stored(nc: NATS, count: int) -> None:
    js = nc.jetstream()
    while (await js.stream_info(bus.STREAM)).state.messages < count:
        await asyncio.sleep(0.01)


async def measure(label: str, url: str, pids: list[int]) -> None:
    nc = await bus.connect(url, name="bench")
    await bus.ensure_stream(nc)
    payloads = [_envelope(i) for i in range(N)]
    await bus.publish_logged(nc, bus.Subjects.up("warm", "log"), payloads[0])  # the first request sets up the inbox

    cpu, server, started = time.process_time(), _server_cpu_s(pids), time.perf_counter()
    for payload in payloads:
        await nc.publish(bus.Subjects.up("core", "log"), payload)
    await nc.flush()
    await _stored(nc, N + 1)
    core = (time.process_time() - cpu, _server_cpu_s(pids) - server, time.perf_counter() - started)

    latencies: list[float] = []

    async def session(index: int) -> None:
        for payload in payloads[index::SESSIONS]:
            at = time.perf_counter()
            assert await bus.publish_logged(nc, bus.Subjects.up(f"s{index}", "log"), payload)
            latencies.append(time.perf_counter() - at)

    cpu, server, started = time.process_time(), _server_cpu_s(pids), time.perf_counter()
    await asyncio.gather(*(session(i) for i in range(SESSIONS)))
    acked = (time.process_time() - cpu, _server_cpu_s(pids) - server, time.perf_counter() - started)
    await nc.close()
    latencies.sort()
    for name, (client_s, server_s, wall_s) in (("core", core), ("acked", acked)):
        print(f"{label:>9} {name:>5}: client {client_s / N * 1e6:6.1f} us/msg, nats-server {server_s / N * 1e6:6.1f} "
              f"us/msg, {N / wall_s:,.0f} msg/s", flush=True)
    p50, p99 = latencies[N // 2] * 1000, latencies[int(N * 0.99)] * 1000
    print(f"{label:>9} acked latency p50 {p50:.2f} ms, p99 {p99:.2f} ms ({SESSIONS} sessions in parallel)", flush=True)


def main() -> None:
    for label in ("1 server", "R3"):
        stack = Stack()
        try:
            url = stack.start_nats() if label == "1 server" else stack.start_nats_cluster()
            pids = [p.pid for p in stack.procs if p.name.startswith("nats")]
            asyncio.run(measure(label, url, pids))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
