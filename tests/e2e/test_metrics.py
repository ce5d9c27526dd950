"""Every process serves /metrics (the edge on RS_ADMIN_PORT, the others on RS_METRICS_PORT), and the named
metrics are there and move when a session runs: sessions, frames, per-hop latency (edge -> transformer ->
worker -> transformer -> edge), time to first audio, provider connects. Also /healthz on each, and no
session id or secret in any label.
"""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from openai import AsyncOpenAI

from ops.chaos.run import parse_metrics
from services.dev.stack import Stack, free_port, wait_port
from shared.audio import tone

from .helpers import API_KEY, SECRET, TIMEOUT_S, b64

pytestmark = pytest.mark.e2e

Samples = dict[str, list[tuple[dict[str, str], float]]]


@dataclass
class MetricsStack:
    stack: Stack
    edge_port: int
    metrics_ports: dict[str, int]  # process -> port of its /metrics


@pytest.fixture(scope="module")
def metrics_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MetricsStack]:
    stack = Stack(tmp_path_factory.mktemp("metrics"))
    for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
        stack.env.pop(key, None)
    try:
        stack.start_nats()
        stack.start_redis()
        stack.start_fakes()
        edge_port = free_port()
        stack.env.update({"PORT": str(edge_port), "HOST": "127.0.0.1"})
        ports = {name: free_port() for name in ("edge", "transformer", "provider-worker", "checkpoint")}
        for name, port in ports.items():
            env = {"RS_ADMIN_PORT": str(port)} if name == "edge" else {"RS_METRICS_PORT": str(port)}
            stack.start_service(name, env=env)
            wait_port(port)
        yield MetricsStack(stack, edge_port, ports)
    finally:
        stack.stop()


def _get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.read().decode()


async def _scrape(ms: MetricsStack) -> dict[str, Samples]:
    out: dict[str, Samples] = {}
    for name, port in ms.metrics_ports.items():
        status, text = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        out[name] = parse_metrics(text)
    return out


def _value(samples: Samples, metric: str, **labels: str) -> float:
    return sum(v for lb, v in samples.get(metric, []) if all(lb.get(k) == want for k, want in labels.items()))


async def _audio_turn(conn: object) -> None:
    """Spoken input, committed: the worker times the turn end -> the provider's first audio."""
    await conn.input_audio_buffer.append(audio=b64(tone(440, 400, 24_000)))  # type: ignore[attr-defined]
    await conn.input_audio_buffer.commit()  # type: ignore[attr-defined]
    await conn.response.create()  # type: ignore[attr-defined]
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()  # type: ignore[attr-defined]
            assert event.type != "error" or event.error.code == "unsupported_field", event
            if event.type == "response.done":
                assert event.response.status == "completed"
                return


async def test_every_process_serves_metrics_that_move(metrics_stack: MetricsStack) -> None:
    ms = metrics_stack
    for name, port in ms.metrics_ports.items():
        assert await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz") == (200, "ok\n") or name == "edge"
    before = await _scrape(ms)
    marker = uuid.uuid4().hex[:8]
    sessions_seen: dict[str, float] = {}
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{ms.edge_port}/v1")
    for provider in ("openai", "gemini"):
        async with client.realtime.connect(
            model="gpt-realtime", extra_query={"rs_core": provider, "rs_u_sessid": f"m-{provider}-{marker}"}
        ) as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            async with asyncio.timeout(TIMEOUT_S):
                while (await conn.recv()).type != "session.updated":
                    pass
            await _audio_turn(conn)
            during = await _scrape(ms)
            for name, service in (("edge", "edge"), ("transformer", "transformer"), ("provider-worker", "worker")):
                sessions_seen[name] = max(sessions_seen.get(name, 0), _value(during[name], "rs_sessions",
                                                                                 service=service))
    after = await _scrape(ms)

    def moved(process: str, metric: str, **labels: str) -> float:
        delta = _value(after[process], metric, **labels) - _value(before[process], metric, **labels)
        assert delta > 0, f"{process}: {metric}{labels} did not move ({_value(after[process], metric, **labels)})"
        return delta

    # Sessions: every holder counted the live session.
    assert all(sessions_seen[name] >= 1 for name in ("edge", "transformer", "provider-worker")), sessions_seen
    # Frames through every process.
    moved("edge", "rs_frames_total", service="edge", direction="in")
    moved("edge", "rs_frames_total", service="edge", direction="out")
    moved("transformer", "rs_frames_total", service="transformer", direction="in")
    moved("provider-worker", "rs_frames_total", service="worker", direction="up")
    moved("checkpoint", "rs_frames_total", service="checkpoint", direction="in")
    moved("edge", "rs_assign_seconds_count")
    # Per-hop latency, each hop observed by the process that receives it.
    hops = {
        "transformer": ("edge_transformer", "worker_transformer"),
        "provider-worker": ("transformer_worker",),
        "edge": ("transformer_edge",),
    }
    for process, names in hops.items():
        for hop in names:
            count = moved(process, "rs_hop_seconds_count", hop=hop)
            total = _value(after[process], "rs_hop_seconds_sum", hop=hop) - _value(
                before[process], "rs_hop_seconds_sum", hop=hop)
            print(f"\n[metrics] hop {hop}: {count:.0f} messages, mean {total / count * 1000:.2f} ms")
            assert 0 <= total / count < 1.0, f"{hop}: mean {total / count:.3f} s"
    for provider in ("openai", "gemini"):
        moved("provider-worker", "rs_time_to_first_audio_seconds_count", provider=provider)
        moved("provider-worker", "rs_provider_connects_total", provider=provider)
    # Present (they move on a restart: tests/e2e/test_ha.py, test_infra_restart.py), in every process.
    for process, samples in after.items():
        for metric in ("rs_bus_reconnects_total", "rs_redis_reconnects_total"):
            assert metric in samples, f"{process} does not export {metric}"
    # Labels never carry a session id, the account secret or a key.
    for process, samples in after.items():
        for metric, rows in samples.items():
            for labels, _ in rows:
                text = " ".join(labels.values())
                assert marker not in text and SECRET not in text and "fake-" not in text, (process, metric, labels)
