"""Benchmark of the design targets (docs/architecture.md, targets) on this machine with the fake providers.

``python -m ops.bench.run [--sessions 1,20,100] [--seconds 10] [--json out.json]``

Phases (``--phases``, all by default, in this order):

* ``memory``: RSS of edge+transformer+worker+checkpoint (and nats-server, redis-server apart) with 0
  and with N idle sessions after one turn each; per session = delta / N. Runs first, on the fresh
  stack: after the load phases the allocators hold freed memory that idle sessions would reuse.
* ``latency``: per session count, the same raw-websocket client (ops.bench.client) streams 20 ms
  frames and times commit+response.create -> first output audio delta, first straight against the
  fake (the baseline), then through the gateway. Added = gateway - direct, per percentile.
* ``capacity``: more sessions until added p99 > 20 ms, errors, lost requests, sessions the edge took
  for dead, or the offered frame rate is not met; the largest count under the budget.
* ``compression``: permessage-deflate on the client link (an edge with RS_CLIENT_COMPRESSION=deflate)
  vs off, at ``--compression-sessions``.
* ``failover``: kill -9 of the worker holding live sessions (two workers) -> first audio of the next
  response, client side, over ``--kills`` kills.
* ``switch``: one session moved between the fakes ``--switches`` times per kind through an edge with
  automatic switching: manual at the turn end (turn end -> rs.switched), a provider failure (the failed
  response.done -> first audio of the re-ask, answered by the other provider), a stall (last bytes -> the
  response ended; -> next audio); the baseline is a client connected straight to the fake doing the same
  by itself (a new connection, the conversation restored on it).

``--peer litellm`` (``rtswitch bench --peer litellm``): the comparison with LiteLLM's proxy in the same run
(ops.bench.peer: background streaming sessions, probes alternating direct / LiteLLM / ours, CPU per client
frame, capacity of each); with ``--peer`` and no ``--phases`` only that runs. LiteLLM gets its own venv
(ops.bench.litellm, cached); when pip cannot reach the index the comparison is reported as skipped.

Clients run in their own processes (``python -m ops.bench.client``, one asyncio loop each, two from
100 sessions) so the measuring loops are not starved by the orchestrator; the stack is subprocesses
(services.dev.stack.Stack). Method and results: docs/bench.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import functools
import json
import math
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import nats
import psutil
import websockets

from ops.bench.client import AUDIO_DELTA, LoadSpec, TimedSession, commit_frames, frame_message, session_update
from services.dev.stack import Proc, Stack, free_port
from services.fakes.control import reset_knobs, set_knobs
from shared import bus
from shared.config import Config
from shared.session import session_key
from shared.store import Store

__all__ = ["main", "percentile", "run_bench"]

ROOT = Path(__file__).resolve().parents[2]
ACCOUNT = "996-sdassds-86-asd"
API_KEY = f"{ACCOUNT}:secretkey-996"  # the default account of shared.config
MODEL = "gpt-realtime"
ADDED_P99_BUDGET_MS = 20.0  # capacity: "live sessions before added p99 > 20 ms"
FRAME_RATE_FLOOR = 0.95  # capacity: offered frames/s below this share of nominal = the machine is saturated
PHASES = ("memory", "latency", "capacity", "compression", "failover", "switch")
# Processes whose CPU and RSS are reported: label -> stack process name.
STACK_PROCS = {
    "edge": "edge-a", "transformer": "tr-a", "worker": "wk-a", "checkpoint": "ckpt-a",
    "nats": "nats", "redis": "redis", "fake": "fake-openai",
}
SERVICES = ("edge", "transformer", "worker", "checkpoint")
INFRA = ("nats", "redis")


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation: every reported value was observed)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _summary(values: Sequence[float]) -> dict[str, float | int]:
    return {"n": len(values), "p50": percentile(values, 50), "p99": percentile(values, 99),
            "max": max(values) if values else math.nan}


# -- the stack ---------------------------------------------------------------------------------------


class BenchStack:
    """nats-server, redis-server, the fakes and one edge, transformer, worker and checkpoint."""

    def __init__(self, workdir: Path, log_level: str) -> None:
        self.stack = Stack(workdir)
        self.stack.env.update({"LOG_LEVEL": log_level, "HOST": "127.0.0.1"})
        for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "NATS_URL", "REDIS_URL"):
            self.stack.env.pop(key, None)
        self.procs: dict[str, Proc] = {}
        self.edge_port = 0
        try:
            self.stack.start_nats()
            self.stack.start_redis()
            self.stack.start_fakes()
            self.fake_port = self.stack.fake_ports["openai"]
            started = [self.start(command, instance, wait=False) for command, instance in (
                ("checkpoint", "ckpt-a"), ("transformer", "tr-a"), ("provider-worker", "wk-a"),
            )]
            for proc in started:  # started side by side: each spends most of its start importing
                proc.wait_ready()
            self.edge_port = self.start_edge("edge-a")
        except BaseException:
            self.stack.stop()
            raise

    def start(self, command: str, instance: str, *, wait: bool = True, **env: str) -> Proc:
        proc = self.stack.start_instance(command, instance, env=env, wait=wait)
        self.procs[instance] = proc
        return proc

    def start_edge(self, instance: str, **env: str) -> int:
        """An edge on a free port; a port taken between the pick and the bind (a busy machine) is re-picked."""
        for attempt in range(3):
            port = free_port()
            try:
                self.start("edge", instance, PORT=str(port), **env)
                return port
            except RuntimeError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def pid(self, name: str) -> int | None:
        proc = self.procs.get(name) or next((p for p in self.stack.procs if p.name == name), None)
        return proc.pid if proc is not None and proc.alive() else None

    def edge_healthz(self, port: int | None = None) -> dict[str, Any]:
        url = f"http://127.0.0.1:{port or self.edge_port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def wait_idle(self, timeout_s: float = 60.0, port: int | None = None) -> None:
        """No live session on the edge (the previous phase's clients have gone)."""
        deadline = time.monotonic() + timeout_s
        while self.edge_healthz(port)["sessions"] != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("edge still holds sessions")
            time.sleep(0.1)

    def stop(self) -> None:
        self.stack.stop()


class Sampler:
    """CPU% (of one core) and RSS of named processes over a window."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.procs: dict[str, psutil.Process] = {}
        for label, pid in pids.items():
            if pid is not None:
                with contextlib.suppress(psutil.Error):
                    self.procs[label] = psutil.Process(pid)

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._cpu0 = {label: _cpu_s(p) for label, p in self.procs.items()}

    def stop(self) -> tuple[dict[str, float], dict[str, float]]:
        elapsed = max(1e-6, time.monotonic() - self._t0)
        cpu: dict[str, float] = {}
        rss: dict[str, float] = {}
        for label, p in self.procs.items():
            with contextlib.suppress(psutil.Error):
                cpu[label] = round((_cpu_s(p) - self._cpu0[label]) / elapsed * 100, 1)
                rss[label] = round(p.memory_info().rss / 1e6, 1)
        return cpu, rss


def _cpu_s(p: psutil.Process) -> float:
    try:
        t = p.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def rss_bytes(pids: dict[str, int | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for label, pid in pids.items():
        if pid is not None:
            with contextlib.suppress(psutil.Error):
                out[label] = psutil.Process(pid).memory_info().rss
    return out


# -- load runs ---------------------------------------------------------------------------------------


@dataclass
class ClientProcs:
    """Client processes (``python -m ops.bench.client``) holding the sessions between them."""

    specs: list[LoadSpec]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    def start(self) -> list[dict[str, Any]]:
        for spec in self.specs:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ops.bench.client"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
            )
            assert proc.stdin is not None
            proc.stdin.write(msgspec.json.encode(spec).decode() + "\n")
            proc.stdin.flush()
            self.procs.append(proc)
        return [self._recv(proc, "ready", 180.0) for proc in self.procs]

    def send(self, command: dict[str, Any]) -> None:
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()

    def results(self, timeout_s: float) -> list[dict[str, Any]]:
        out = [self._recv(proc, "result", timeout_s) for proc in self.procs]
        for proc in self.procs:
            proc.wait(10)
        return out

    @staticmethod
    def _recv(proc: subprocess.Popen[str], kind: str, timeout_s: float) -> dict[str, Any]:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
        line = proc.stdout.readline() if ready else ""
        if not line:
            raise TimeoutError(f"client process {proc.pid} gave no {kind} within {timeout_s:.0f} s "
                               f"(exit code {proc.poll()})")
        message = json.loads(line)
        if kind not in message:
            raise RuntimeError(f"client process {proc.pid}: {message}")
        return message[kind]  # type: ignore[no-any-return]

    def pids(self) -> list[int | None]:
        return [p.pid for p in self.procs]

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


def _split(sessions: int, procs: int) -> list[tuple[int, int]]:
    """(first index, count) per client process."""
    procs = max(1, min(procs, sessions))
    base, extra = divmod(sessions, procs)
    out, start = [], 0
    for i in range(procs):
        count = base + (1 if i < extra else 0)
        out.append((start, count))
        start += count
    return out


@dataclass
class BenchArgs:
    seconds: float = 10.0
    warmup_s: float = 1.0
    turn_ms: int = 1000
    frame_ms: int = 20
    client_procs: int = 0  # 0: one per 100 sessions, at least one, at most two


class Bench:
    def __init__(self, stack: BenchStack, args: BenchArgs, log: Callable[[str], None]) -> None:
        self.s = stack
        self.args = args
        self.log = log
        self.runs = 0

    def url(self, target: str, edge_port: int | None = None) -> str:
        if target == "direct":
            return f"ws://127.0.0.1:{self.s.fake_port}/v1/realtime?model={MODEL}"
        return f"ws://127.0.0.1:{edge_port or self.s.edge_port}/v1/realtime?model={MODEL}"

    async def moved(self, prefix: str, sessions: int) -> int:
        """Sessions of a load run whose epoch was bumped after they opened: the edge declared their
        transformer or worker dead. No process dies during a load run, so each one is a heartbeat that
        came late under load (rs_reattaches_total would only count the moves that finished)."""
        async with Store.connect(self.s.stack.redis_url) as store:
            epochs = [await store.epoch(session_key(ACCOUNT, f"{prefix}-{i}")) for i in range(sessions)]
        return sum(1 for epoch in epochs if epoch > 1)

    def procs_for(self, sessions: int) -> int:
        if self.args.client_procs:
            return self.args.client_procs
        return 1 if sessions < 100 else 2

    def stack_pids(self) -> dict[str, int | None]:
        return {label: self.s.pid(name) for label, name in STACK_PROCS.items()}

    def load(
        self, target: str, sessions: int, *, seconds: float | None = None, compression: str | None = None,
        edge_port: int | None = None, extra_pids: dict[str, int | None] | None = None,
    ) -> dict[str, Any]:
        """One timed load run; returns latency summaries, frame rate, CPU% and RSS of every process."""
        a = self.args
        seconds = a.seconds if seconds is None else seconds
        self.runs += 1
        prefix = f"bench-{os.getpid()}-{self.runs}"  # client session ids: the bench can read their epochs
        specs = [
            LoadSpec(
                url=self.url(target, edge_port), headers={"Authorization": f"Bearer {API_KEY}"},
                session_prefix=prefix if target == "gateway" else "",
                sessions=count, index_base=first, total_sessions=sessions, seconds=seconds,
                warmup_s=min(a.warmup_s, seconds / 2), frame_ms=a.frame_ms, turn_ms=a.turn_ms,
                compression=compression,
            )
            for first, count in _split(sessions, self.procs_for(sessions))
        ]
        clients = ClientProcs(specs)
        try:
            ready = clients.start()
            pids = {**self.stack_pids(), **(extra_pids or {})}
            pids.update({f"client{i}": pid for i, pid in enumerate(clients.pids())})
            sampler = Sampler(pids)
            t0 = time.monotonic() + 0.5
            clients.send({"go": t0})
            warm = t0 + min(a.warmup_s, seconds / 2)
            time.sleep(max(0.0, warm - time.monotonic()))
            sampler.start()
            time.sleep(max(0.0, t0 + seconds - time.monotonic()))
            cpu, rss = sampler.stop()
            results = clients.results(seconds + 120)
        finally:
            clients.kill()
        merged = _merge(target, sessions, ready, results, cpu, rss, seconds, a.frame_ms)
        merged["declared_dead"] = 0 if target == "direct" else asyncio.run(self.moved(prefix, sessions))
        return merged

    def pair(self, sessions: int, **kw: Any) -> dict[str, Any]:
        """Direct baseline then gateway, same client code, same session count, same run."""
        self.log(f"  {sessions} sessions: direct")
        direct = self.load("direct", sessions, **{k: v for k, v in kw.items() if k == "seconds"})
        self.s.wait_idle()
        self.settle(probe=False)  # a direct run leaves work in the fake and the clients at most
        self.log(f"  {sessions} sessions: gateway{' (' + kw['compression'] + ')' if kw.get('compression') else ''}")
        gateway = self.load("gateway", sessions, **kw)
        self.s.wait_idle(port=kw.get("edge_port"))
        gateway["recovery_s"] = self.settle()
        return _row(sessions, direct, gateway)

    def settle(self, *, probe: bool = True, quiet_pct: float = 30.0, timeout_s: float = 300.0) -> float:
        """Wait until the stack serves again and is quiet, so the next run does not pay for this one;
        returns the seconds it took. Quiet: its processes together under ``quiet_pct`` of one core for
        half a second. Serving: a probe session opens and gets first audio within 5 s (after overload,
        queued reattaches can keep the worker busy long after the clients left, at little CPU)."""
        started = time.monotonic()
        pids = {label: pid for label, pid in self.stack_pids().items() if label != "redis"}
        while time.monotonic() - started < timeout_s:
            sampler = Sampler(pids)
            sampler.start()
            time.sleep(0.5)
            cpu, _ = sampler.stop()
            if sum(cpu.values()) < quiet_pct and (not probe or asyncio.run(self.probe())):
                break
        return round(time.monotonic() - started, 1)

    async def probe(self, timeout_s: float = 5.0) -> bool:
        """One fresh gateway session: connect, first turn, first audio within ``timeout_s``."""
        commit, create = commit_frames()
        try:
            async with asyncio.timeout(timeout_s), websockets.connect(
                self.url("gateway"), additional_headers={"Authorization": f"Bearer {API_KEY}"},
                compression=None, max_size=None,
            ) as ws:
                await ws.send(session_update())
                for _ in range(5):
                    await ws.send(frame_message(self.args.frame_ms))
                await ws.send(commit)
                await ws.send(create)
                async for raw in ws:
                    if json.loads(raw)["type"] == AUDIO_DELTA:
                        return True
        except (TimeoutError, OSError, websockets.WebSocketException):
            pass
        return False


def _merge(
    target: str, sessions: int, ready: list[dict[str, Any]], results: list[dict[str, Any]],
    cpu: dict[str, float], rss: dict[str, float], seconds: float, frame_ms: int,
) -> dict[str, Any]:
    latency = [x for r in results for x in r["latency_ms"]]
    ttfa = [x for r in results for x in r["ttfa_ms"]]
    lag = [x for r in results for x in r["lag_ms"]]
    window = max((r["window_s"] for r in results), default=0.0) or seconds
    frames = sum(r["frames"] for r in results)
    errors: collections.Counter[str] = collections.Counter()
    for r in results:
        errors.update(r["errors"])
    connected = sum(r["connected"] for r in results)
    client_cpu = sum(v for k, v in cpu.items() if k.startswith("client"))
    return {
        "target": target,
        "sessions": sessions,
        "connected": connected,
        "connect_failures": sum(r["connect_failures"] for r in results),
        "latency_ms": _summary(latency),
        "ttfa_ms": _summary(ttfa),
        "client_lag_ms": _summary(lag),
        "frames_per_s": round(frames / window, 1),
        "nominal_frames_per_s": round(connected * 1000 / frame_ms, 1),
        "turns": sum(r["turns"] for r in results),
        "deferred_turns": sum(r["deferred"] for r in results),
        "lost": sum(r["lost"] for r in results),
        "closed_early": sum(r["closed_early"] for r in results),
        "errors": dict(errors),
        "deflate_sessions": sum(r.get("deflate", 0) for r in results),
        "cpu_pct": {k: v for k, v in cpu.items() if not k.startswith("client")} | {"clients": round(client_cpu, 1)},
        "rss_mb": {k: v for k, v in rss.items() if not k.startswith("client")},
        # CPU time a process spends per offered client frame (everything it does in the window / frames).
        "cpu_us_per_frame": {k: round(v * 1e4 / max(1.0, frames / window), 1)
                             for k, v in cpu.items() if not k.startswith("client")},
        "loadavg_1m": os.getloadavg()[0],  # other work on the machine shows here
    }


def _row(sessions: int, direct: dict[str, Any], gateway: dict[str, Any]) -> dict[str, Any]:
    d, g = direct["latency_ms"], gateway["latency_ms"]
    added = {p: round(g[p] - d[p], 3) for p in ("p50", "p99")}
    return {"sessions": sessions, "direct": direct, "gateway": gateway, "added_ms": added}


def _break_reason(row: dict[str, Any]) -> str | None:
    """Why this load is past capacity, or None."""
    for side in ("direct", "gateway"):
        r = row[side]
        if r["connect_failures"] or r["closed_early"]:
            return f"{side}: {r['connect_failures']} connect failures, {r['closed_early']} closed"
        if r["lost"]:
            return f"{side}: {r['lost']} requests unanswered"
        if r["errors"]:
            return f"{side}: errors {r['errors']}"
        if r["declared_dead"]:
            return f"{side}: {r['declared_dead']} sessions moved to a replacement (heartbeats late under load)"
        if r["frames_per_s"] < FRAME_RATE_FLOOR * r["nominal_frames_per_s"]:
            return f"{side}: offered {r['frames_per_s']:.0f} frames/s of {r['nominal_frames_per_s']:.0f}"
    if row["added_ms"]["p99"] > ADDED_P99_BUDGET_MS:
        return f"added p99 {row['added_ms']['p99']:.1f} ms > {ADDED_P99_BUDGET_MS:.0f} ms"
    return None


# -- phases ------------------------------------------------------------------------------------------


def phase_latency(bench: Bench, counts: Sequence[int]) -> list[dict[str, Any]]:
    asyncio.run(set_knobs(bench.s.fake_port, response_ms=40, chunk_ms=40, pace=0.0))
    return [bench.pair(n) for n in counts]


def phase_capacity(
    bench: Bench, counts: Sequence[int], seconds: float, known: list[dict[str, Any]], budget_s: float
) -> dict[str, Any]:
    asyncio.run(set_knobs(bench.s.fake_port, response_ms=40, chunk_ms=40, pace=0.0))
    reuse = {row["sessions"]: row for row in known if bench.args.seconds == seconds}
    steps: list[dict[str, Any]] = []
    best = 0
    broke: dict[str, Any] | None = None
    started = time.monotonic()
    for n in counts:
        if time.monotonic() - started > budget_s:
            broke = {"sessions": n, "reason": f"run-time budget of {budget_s:.0f} s spent before this step"}
            break
        row = reuse.get(n) or bench.pair(n, seconds=seconds)
        reason = _break_reason(row)
        direct, gateway = row["direct"], row["gateway"]
        steps.append({
            "sessions": n, "added_ms": row["added_ms"], "direct_p99": direct["latency_ms"]["p99"],
            "gateway_p99": gateway["latency_ms"]["p99"], "frames_per_s": gateway["frames_per_s"],
            "cpu_pct": gateway["cpu_pct"], "break": reason, "row": row,
        })
        if reason is not None:
            broke = {"sessions": n, "reason": reason}
            break
        best = n
    return {"max_sessions_under_budget": best, "budget_ms": ADDED_P99_BUDGET_MS, "steps": steps, "broke_at": broke}


def phase_memory(bench: Bench, sessions: int) -> dict[str, Any]:
    s = bench.s
    labels = {label: STACK_PROCS[label] for label in (*SERVICES, *INFRA)}

    def pids() -> dict[str, int | None]:
        return {label: s.pid(name) for label, name in labels.items()}

    asyncio.run(set_knobs(s.fake_port, response_ms=40, chunk_ms=40, pace=0.0))
    # Warm-up: lazy imports, codec tables, first-connection buffers are not per-session costs.
    idle_load(bench, min(5, sessions), hold=None)
    s.wait_idle()
    before = stable_rss(pids)
    stream_before = asyncio.run(stream_bytes(s.stack.nats_url))
    clients_result = idle_load(bench, sessions, hold=lambda: stable_rss(pids))
    after = clients_result["rss"]
    stream_after = clients_result["stream_bytes"]
    connected = clients_result["connected"]
    s.wait_idle()
    per = {label: (after.get(label, 0) - before.get(label, 0)) / max(1, connected) for label in labels}
    services = sum(per[label] for label in SERVICES)
    return {
        "sessions": sessions,
        "connected": connected,
        "rss_before_mb": {k: round(v / 1e6, 2) for k, v in before.items()},
        "rss_after_mb": {k: round(v / 1e6, 2) for k, v in after.items()},
        "per_session_kb": {k: round(v / 1024, 1) for k, v in per.items()},
        "services_per_session_kb": round(services / 1024, 1),
        "all_per_session_kb": round((services + sum(per[label] for label in INFRA)) / 1024, 1),
        # nats-server keeps the replay window in memory (bus.ensure_stream: max age 120 s): part of its
        # growth is the first turn's audio, held until it ages out, not a cost of the idle connection.
        "stream_kb_per_session": round((stream_after - stream_before) / max(1, connected) / 1024, 1),
    }


def idle_load(bench: Bench, sessions: int, hold: Callable[[], dict[str, int]] | None) -> dict[str, Any]:
    """Connect ``sessions`` sessions, one turn each; with ``hold``, call it while they sit idle."""
    specs = [
        LoadSpec(url=bench.url("gateway"), headers={"Authorization": f"Bearer {API_KEY}"}, sessions=count,
                 index_base=first, total_sessions=sessions, seconds=0)
        for first, count in _split(sessions, bench.procs_for(sessions))
    ]
    clients = ClientProcs(specs)
    try:
        ready = clients.start()
        rss = hold() if hold is not None else {}
        held = asyncio.run(stream_bytes(bench.s.stack.nats_url))
        clients.send({"close": True})
        clients.results(120)
    finally:
        clients.kill()
    return {"connected": sum(r["connected"] for r in ready), "rss": rss, "stream_bytes": held}


async def stream_bytes(nats_url: str) -> int:
    """Bytes held by the session stream (memory storage) right now."""
    nc = await nats.connect(nats_url)
    try:
        return int((await nc.jetstream().stream_info(bus.STREAM)).state.bytes)
    finally:
        await nc.close()


def stable_rss(pids: Callable[[], dict[str, int | None]], *, timeout_s: float = 15.0) -> dict[str, int]:
    """RSS once the sum stops moving (< 0.5 % over 1 s): the checkpoint and GC have caught up."""
    deadline = time.monotonic() + timeout_s
    last = rss_bytes(pids())
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = rss_bytes(pids())
        if abs(sum(now.values()) - sum(last.values())) < 0.005 * sum(last.values()):
            return now
        last = now
    return last


def phase_compression(bench: Bench, sessions: int, seconds: float) -> list[dict[str, Any]]:
    """Client link without and with permessage-deflate, back to back, against one direct baseline."""
    asyncio.run(set_knobs(bench.s.fake_port, response_ms=40, chunk_ms=40, pace=0.0))
    port = bench.s.start_edge("edge-z", RS_CLIENT_COMPRESSION="deflate")
    edge = bench.s.procs["edge-z"]
    try:
        bench.log(f"  {sessions} sessions: direct")
        direct = bench.load("direct", sessions, seconds=seconds)
        rows = []
        for mode in ("none", "deflate"):
            bench.settle()
            bench.log(f"  {sessions} sessions: gateway, client link {mode}")
            kw: dict[str, Any] = {}
            if mode == "deflate":
                kw = {"compression": "deflate", "edge_port": port, "extra_pids": {"edge": edge.pid}}
            gateway = bench.load("gateway", sessions, seconds=seconds, **kw)
            bench.s.wait_idle(port=kw.get("edge_port"))
            gateway["recovery_s"] = bench.settle()
            rows.append(_row(sessions, direct, gateway) | {"mode": mode})
        return rows
    finally:
        edge.stop()
        bench.s.procs.pop("edge-z", None)


async def _failover(bench: Bench, kills: int, sessions: int) -> dict[str, Any]:
    s = bench.s
    loop = asyncio.get_running_loop()
    await set_knobs(s.fake_port, response_ms=120_000, chunk_ms=40, pace=1.0)  # long, real-time responses
    frame = frame_message(20)
    commit, create = commit_frames()
    samples: list[float] = []
    cuts: list[float] = []
    retried = 0
    failures: list[str] = []

    class Live:
        def __init__(self, ws: Any, sid: str) -> None:
            self.ws, self.sid = ws, sid
            self.audio = asyncio.Event()
            self.done = asyncio.Event()
            self.statuses: list[str] = []

    async def reader(live: Live) -> None:
        async for raw in live.ws:
            msg = json.loads(raw)
            if msg["type"] == AUDIO_DELTA:
                live.audio.set()
            elif msg["type"] == "response.done":
                live.statuses.append(msg["response"]["status"])
                live.done.set()
            elif msg["type"] == "session.updated":
                live.done.set()

    async def ask(live: Live) -> None:
        live.audio.clear()
        live.done.clear()
        await live.ws.send(create)

    lives: list[Live] = []
    readers: list[asyncio.Task[None]] = []
    async with Store.connect(s.stack.redis_url) as store, contextlib.AsyncExitStack() as stack:
        for i in range(sessions):
            client_sid = f"bench-fo-{os.getpid()}-{i}"
            ws = await stack.enter_async_context(websockets.connect(
                f"{bench.url('gateway')}&rs_u_sessid={client_sid}",
                additional_headers={"Authorization": f"Bearer {API_KEY}"}, compression=None, max_size=None))
            live = Live(ws, session_key(ACCOUNT, client_sid))
            readers.append(asyncio.create_task(reader(live)))
            await ws.send(session_update())
            await asyncio.wait_for(live.done.wait(), 20)
            for _ in range(10):
                await ws.send(frame)
            await ws.send(commit)
            await ask(live)
            await asyncio.wait_for(live.audio.wait(), 20)
            lives.append(live)

        async def route(live: Live) -> str:
            return (await store.snapshot(live.sid)).record.get("route_worker", "")

        async def measure(live: Live, killed_at: float) -> None:
            nonlocal retried
            try:
                await asyncio.wait_for(live.done.wait(), 10)  # the cut response is closed
                cuts.append((time.monotonic() - killed_at) * 1000)
                for _ in range(3):
                    await ask(live)
                    try:
                        await asyncio.wait_for(live.audio.wait(), 5)
                        break
                    except TimeoutError:
                        retried += 1  # the request went nowhere (reported; a real client would repeat it)
                else:
                    raise TimeoutError("no audio after three requests")
                samples.append((time.monotonic() - killed_at) * 1000)
            except TimeoutError as exc:
                failures.append(f"{live.sid}: {exc or 'no cut response.done'}")

        for k in range(kills):
            routes = {live.sid: await route(live) for live in lives}
            victim = collections.Counter(routes.values()).most_common(1)[0][0]
            hit = [live for live in lives if routes[live.sid] == victim]
            for live in hit:  # each has an open response with audio flowing when the worker dies
                if not live.audio.is_set() or live.done.is_set():
                    await ask(live)
                    await asyncio.wait_for(live.audio.wait(), 20)
                live.done.clear()
            proc = s.procs[victim]
            killed_at = time.monotonic()
            proc.kill(signal.SIGKILL)
            await asyncio.gather(*(measure(live, killed_at) for live in hit))
            await loop.run_in_executor(None, proc.popen.wait, 5)
            # Capacity comes back under the same name (a restarted pod) before the next kill.
            await loop.run_in_executor(None, functools.partial(s.start, "provider-worker", victim))
            worst = max(samples[-len(hit):], default=0)
            bench.log(f"  kill {k + 1}/{kills}: {victim} held {len(hit)}; slowest first audio {worst:.0f} ms")
        for task in readers:
            task.cancel()
    await reset_knobs(s.fake_port)
    return {"kills": kills, "sessions": sessions, "first_audio_ms": _summary(samples), "cut_ms": _summary(cuts),
            "retried_requests": retried, "failures": failures}


def phase_failover(bench: Bench, kills: int, sessions: int) -> dict[str, Any]:
    if "wk-b" not in bench.s.procs:
        bench.s.start("provider-worker", "wk-b")
    return asyncio.run(_failover(bench, kills, sessions))


# -- switch ----------------------------------------------------------------------------------------------

# The worker's stall limit (RS_STALL_MS; the bench's worker runs with the default): the worker watches it.
SWITCH_STALL_MS: int = {f.name: f.default for f in msgspec.structs.fields(Config)}["stall_ms"]
# The switch phase's own edge: automatic switching on; a single failure or stall moves the session (the one
# measured is then the one that triggered the switch); no cool-down or dwell, so the session can go back
# and forth; a breaker that never opens (the phase fails one provider on purpose, 20 times).
SWITCH_EDGE_ENV = {
    "RS_AUTO_SWITCH": "true", "SWITCH_FAILURE_COUNT": "1",
    "RS_SWITCH_COOLDOWN_S": "0", "RS_SWITCH_MIN_DWELL_S": "0", "RS_BREAKER_SESSIONS": "100000",
}
SWITCH_KINDS = ("manual", "failure", "stall")
# measure -> (what it is, target in ms or None, which kind)
SWITCH_TARGETS: dict[str, tuple[str, float | None]] = {
    "manual": ("turn end -> new provider ready (manual switch at the turn end)", 50.0),
    "failure": ("provider failure -> next audio (switched now)", 500.0),
    "stall": ("last upstream bytes -> stall noticed (response ended)", SWITCH_STALL_MS + 200.0),
    "stall_audio": ("stall noticed -> next audio", None),
}
_OTHER = {"openai": "gemini", "gemini": "openai"}
# kind -> the fake's knobs that cause it: the connection drops (1011) / goes silent at a response's first output
_FAULTS: dict[str, dict[str, str]] = {"failure": {"close_on": "response"}, "stall": {"stall_on": "response"}}


async def _history(s: TimedSession, said: Sequence[tuple[str, str]]) -> float:
    """Direct baseline: a fresh connection to the fake brought to where the old one was (session
    config, then every item of the conversation). Returns when the last item was acknowledged."""
    await s.next("session.created")
    await s.send(json.loads(session_update()))
    await s.next("session.updated")
    at = time.monotonic()
    for role, text in said:
        await s.say(text, role)
        at, _ = await s.next("conversation.item.added", "conversation.item.created")
    return at


async def _turn(s: TimedSession, said: list[tuple[str, str]], text: str) -> list[tuple[float, dict[str, Any]]]:
    """One text turn answered; ``said`` gets the user item and the answer's transcript."""
    await s.say(text)
    await s.send({"type": "response.create"})
    events = await s.events_until("response.done")
    said += [("user", text), ("assistant", _said(events))]
    return events


def _said(events: Sequence[tuple[float, dict[str, Any]]]) -> str:
    return "".join(e.get("delta", "") for _, e in events if e["type"] == "response.output_audio_transcript.delta")


def _status(events: Sequence[tuple[float, dict[str, Any]]]) -> str:
    return str(events[-1][1]["response"]["status"])


async def _switch_gateway(bench: Bench, edge_port: int, n: int) -> dict[str, Any]:
    """One session through the gateway, moved between the fakes ``n`` times per kind."""
    s = bench.s
    fakes = s.stack.fake_ports
    headers = {"Authorization": f"Bearer {API_KEY}"}
    out: dict[str, list[float]] = {"manual": [], "manual_gap": [], "failure": [], "stall": [], "stall_audio": []}
    failures: list[str] = []
    provider = "openai"
    url = f"{bench.url('gateway', edge_port)}&rs_core={provider}&rs_u_sessid=bench-sw-{os.getpid()}"
    session = await TimedSession.open(url, headers)
    said: list[tuple[str, str]] = []
    try:
        await session.send(json.loads(session_update()))
        await session.next("session.updated")
        await _turn(session, said, "hello")
        for kind in SWITCH_KINDS:
            for i in range(n):
                target = _OTHER[provider]
                if kind == "manual":
                    await _turn(session, said, f"{kind} {i}")
                    ended = time.monotonic()  # the client's turn end: its response.done is in
                    await session.send({"type": "rs.switch", "provider": target, "when": "turn_end"})
                    at, switched = await session.next("rs.switched")
                    out["manual"].append((at - ended) * 1000)
                    out["manual_gap"].append(float(switched["gap_ms"]))
                else:
                    await set_knobs(fakes[provider], **_FAULTS[kind])
                    try:
                        events = await _turn(session, said, f"{kind} {i}")
                        if _status(events) != "failed":
                            failures.append(f"{kind} {i}: the faulty response ended {_status(events)}")
                            continue
                        failed_at = events[-1][0]
                        if kind == "stall":
                            # The last output before the silence (the cut response's closing events come
                            # with its response.done).
                            before = [at for at, e in events if e["type"].endswith(".delta")]
                            out["stall"].append((failed_at - max(before)) * 1000)
                        await session.send({"type": "response.create"})  # the client asks again at once
                        again = await session.events_until("response.done")
                    finally:
                        await reset_knobs(fakes[provider])
                    audio = [at for at, e in again if e["type"] == AUDIO_DELTA]
                    moved = [e for _, e in again if e["type"] == "rs.switched"]
                    if not audio or not moved or moved[0]["to"] != target:
                        failures.append(f"{kind} {i}: next answer {_status(again)}, switched {moved}")
                        continue
                    said[-1] = ("assistant", _said(again))
                    out["failure" if kind == "failure" else "stall_audio"].append((audio[0] - failed_at) * 1000)
                provider = target
    finally:
        await session.close()
    return {"samples": out, "failures": failures}


async def _switch_direct(bench: Bench, n: int) -> dict[str, Any]:
    """The baseline: what a client connected straight to a provider pays to do the same by itself: open a
    new connection and restore the conversation on it (the fake's own protocol: session config, every item),
    after its turn end, after the provider dropped it, or after its own stall watchdog fired."""
    port = bench.s.fake_port
    url, headers = bench.url("direct"), {"Authorization": "Bearer fake-openai-key"}
    out: dict[str, list[float]] = {"manual": [], "failure": [], "stall": [], "stall_audio": []}
    failures: list[str] = []
    said: list[tuple[str, str]] = []
    session = await TimedSession.open(url, headers)
    try:
        await _history(session, said)
        await _turn(session, said, "hello")
        for kind in SWITCH_KINDS:
            for i in range(n):
                if kind == "manual":
                    await _turn(session, said, f"{kind} {i}")
                    ended = time.monotonic()
                    fresh = await TimedSession.open(url, headers)
                    ready = await _history(fresh, said)
                    out["manual"].append((ready - ended) * 1000)
                else:
                    await set_knobs(port, **_FAULTS[kind])
                    await session.say(f"{kind} {i}")
                    await session.send({"type": "response.create"})
                    last = (await session.next(AUDIO_DELTA))[0]
                    if kind == "failure":
                        await session.closed.wait()
                        failed_at = session.closed_at or time.monotonic()
                    else:
                        # The client's own watchdog: nothing for the stall limit -> it gives the connection up.
                        while True:
                            try:
                                last = (await session.next(AUDIO_DELTA, timeout_s=SWITCH_STALL_MS / 1000))[0]
                            except TimeoutError:
                                break
                        failed_at = time.monotonic()
                        out["stall"].append((failed_at - last) * 1000)
                    await reset_knobs(port)
                    said.append(("user", f"{kind} {i}"))
                    fresh = await TimedSession.open(url, headers)
                    await _history(fresh, said)
                    await fresh.send({"type": "response.create"})
                    again = await fresh.events_until("response.done")
                    audio = [at for at, e in again if e["type"] == AUDIO_DELTA]
                    if not audio:
                        failures.append(f"direct {kind} {i}: no audio after reconnecting")
                    else:
                        out["failure" if kind == "failure" else "stall_audio"].append((audio[0] - failed_at) * 1000)
                    said.append(("assistant", _said(again)))
                await session.close()
                session = fresh
    finally:
        await session.close()
        await reset_knobs(port)
    return {"samples": out, "failures": failures}


def phase_switch(bench: Bench, n: int) -> dict[str, Any]:
    """Switches at a turn end, after a provider failure and after a stall, ``n`` of each, through an edge
    with automatic switching (its own, next to the bench's), against the direct baseline."""
    for port in bench.s.stack.fake_ports.values():
        asyncio.run(reset_knobs(port))
    bench.log(f"  {n} switches of each kind: direct baseline")
    direct = asyncio.run(_switch_direct(bench, n))
    port = bench.s.start_edge("edge-s", **SWITCH_EDGE_ENV)
    try:
        bench.log(f"  {n} switches of each kind: gateway")
        gateway = asyncio.run(_switch_gateway(bench, port, n))
    finally:
        bench.s.procs.pop("edge-s").stop()
    kinds: dict[str, Any] = {}
    for measure, (what, target) in SWITCH_TARGETS.items():
        g = _summary(gateway["samples"][measure])
        kinds[measure] = {
            "what": what, "target_ms": target, "direct": _summary(direct["samples"][measure]), "gateway": g,
            "met": None if target is None or not g["n"] else g["p99"] <= target,
        }
    kinds["manual"]["gateway_reported_gap"] = _summary(gateway["samples"]["manual_gap"])
    return {"switches": n, "stall_ms": SWITCH_STALL_MS, "kinds": kinds,
            "failures": direct["failures"] + gateway["failures"]}


# -- output ------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "event_loop": loop,
        "websockets": websockets.__version__,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _f(x: float, digits: int = 1) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _pair(d: dict[str, Any], digits: int = 2) -> str:
    return f"{_f(d['p50'], digits)} / {_f(d['p99'], digits)}"


def _table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _procs_cell(values: dict[str, float], order: Sequence[str], digits: int = 0) -> str:
    return " / ".join(_f(values.get(k, math.nan), digits) for k in order)


PROC_ORDER = ("edge", "transformer", "worker", "checkpoint", "nats", "redis", "fake", "clients")


Rows = tuple[list[str], list[list[str]]]
Label = Callable[[dict[str, Any]], str]


def _latency_rows(rows: Sequence[dict[str, Any]], label: Label) -> Rows:
    head = ["sessions", "direct p50 / p99 ms", "gateway p50 / p99 ms", "added p50 / p99 ms",
            "TTFA direct / gateway p50 ms", "frames/s", "samples", "lost / errors / declared dead",
            "recovery s"]
    out = []
    for r in rows:
        d, g = r["direct"], r["gateway"]
        errs = sum(d["errors"].values()) + sum(g["errors"].values())
        out.append([
            label(r), _pair(d["latency_ms"]), _pair(g["latency_ms"]),
            f"{r['added_ms']['p50']:.2f} / {r['added_ms']['p99']:.2f}",
            f"{_f(d['ttfa_ms']['p50'], 0)} / {_f(g['ttfa_ms']['p50'], 0)}",
            f"{g['frames_per_s']:.0f}", f"{d['latency_ms']['n']} / {g['latency_ms']['n']}",
            f"{d['lost'] + g['lost']} / {errs} / {g['declared_dead']}", _f(g.get("recovery_s", math.nan), 0),
        ])
    return head, out


def _resource_rows(rows: Sequence[dict[str, Any]], label: Label) -> Rows:
    head = ["sessions", "CPU % gateway run (" + " / ".join(PROC_ORDER) + ")",
            "CPU µs per frame (" + " / ".join(SERVICES + INFRA[:1]) + ")",
            "CPU % direct run (fake / clients)", "RSS MB (" + " / ".join(PROC_ORDER[:-1]) + ")",
            "client lag p99 ms", "load avg"]
    out = []
    for r in rows:
        g, d = r["gateway"], r["direct"]
        out.append([
            label(r), _procs_cell(g["cpu_pct"], PROC_ORDER), _procs_cell(g["cpu_us_per_frame"], SERVICES + INFRA[:1]),
            f"{_f(d['cpu_pct'].get('fake', math.nan), 0)} / {_f(d['cpu_pct'].get('clients', math.nan), 0)}",
            _procs_cell(g["rss_mb"], PROC_ORDER[:-1]),
            f"{_f(g['client_lag_ms']['p99'], 1)}", _f(g["loadavg_1m"], 2),
        ])
    return head, out


def render(report: dict[str, Any]) -> str:
    parts: list[str] = []
    m = report["machine"]
    parts.append(f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gb']} GB, {m['os']}, Python {m['python']}, "
                 f"{m['event_loop']}; {m['date']}; load average at start {m['loadavg_at_start']}")
    by_n: Callable[[dict[str, Any]], str] = lambda r: str(r["sessions"])  # noqa: E731
    if report.get("latency"):
        parts.append("\n### Added latency (commit + response.create -> first audio delta; gateway - direct)\n")
        parts.append(_table(*_latency_rows(report["latency"], by_n)))
        parts.append("\n### Resources during the gateway run\n")
        parts.append(_table(*_resource_rows(report["latency"], by_n)))
    cap = report.get("capacity")
    if cap:
        parts.append(f"\n### Capacity (largest session count with added p99 <= {cap['budget_ms']:.0f} ms)\n")
        rows = [[str(st["sessions"]), f"{st['added_ms']['p50']:.2f} / {st['added_ms']['p99']:.2f}",
                 _f(st["direct_p99"], 2), _f(st["gateway_p99"], 2), f"{st['frames_per_s']:.0f}",
                 _procs_cell(st["cpu_pct"], PROC_ORDER), st["break"] or "ok"] for st in cap["steps"]]
        parts.append(_table(["sessions", "added p50 / p99 ms", "direct p99", "gateway p99", "frames/s",
                             "CPU % (" + " / ".join(PROC_ORDER) + ")", "verdict"], rows))
        broke = cap["broke_at"]
        parts.append(f"\nLargest under budget: **{cap['max_sessions_under_budget']}** sessions"
                     + (f"; broke at {broke['sessions']}: {broke['reason']}" if broke else "; did not break"))
    mem = report.get("memory")
    if mem:
        parts.append(f"\n### Memory per idle session ({mem['connected']} idle sessions after one turn each)\n")
        labels = (*SERVICES, *INFRA)
        before, after = mem["rss_before_mb"], mem["rss_after_mb"]
        rows = [[label, _f(before.get(label, math.nan), 1), _f(after.get(label, math.nan), 1),
                 _f(mem["per_session_kb"][label], 1)] for label in labels]
        rows.append(["**services (edge+transformer+worker+checkpoint)**", "", "",
                     f"**{mem['services_per_session_kb']:.1f}**"])
        rows.append(["**all, with nats-server and redis-server**", "", "", f"**{mem['all_per_session_kb']:.1f}**"])
        head = ["process", "RSS 0 sessions MB", f"RSS {mem['connected']} sessions MB", "KB per session"]
        parts.append(_table(head, rows))
        parts.append(f"\nnats-server growth includes the replay window held in memory (max age 120 s): "
                     f"{mem['stream_kb_per_session']:.1f} KB of stream data per session at the time of measurement.")
    comp = report.get("compression")
    if comp:
        parts.append(f"\n### Client-link compression at {comp[0]['sessions']} sessions\n")
        rows = [[r["mode"], _pair(r["gateway"]["latency_ms"]),
                 f"{r['added_ms']['p50']:.2f} / {r['added_ms']['p99']:.2f}",
                 _f(r["gateway"]["cpu_pct"].get("edge", math.nan), 0),
                 _f(r["gateway"]["cpu_us_per_frame"].get("edge", math.nan), 0),
                 _f(r["gateway"]["cpu_pct"].get("clients", math.nan), 0),
                 str(r["gateway"]["deflate_sessions"])] for r in comp]
        parts.append(_table(["client link", "gateway p50 / p99 ms", "added p50 / p99 ms", "edge CPU %",
                             "edge CPU µs per frame", "clients CPU %", "sessions with deflate negotiated"], rows))
    fo = report.get("failover")
    if fo:
        parts.append(f"\n### Worker kill -9 -> first audio of the next response ({fo['kills']} kills, "
                     f"{fo['sessions']} live sessions, 2 workers)\n")
        fa, cut = fo["first_audio_ms"], fo["cut_ms"]
        parts.append(_table(["measure", "n", "p50 ms", "p99 ms", "max ms"], [
            [name, str(d["n"]), _f(d["p50"], 0), _f(d["p99"], 0), _f(d["max"], 0)]
            for name, d in (("kill -> cut response closed (response.done)", cut),
                            ("kill -> first audio from the replacement", fa))
        ]))
        parts.append(f"\nRequests repeated because the first went unanswered: {fo['retried_requests']}; "
                     f"failures: {len(fo['failures'])}")
    sw = report.get("switch")
    if sw:
        parts.append(f"\n### Switching providers ({sw['switches']} switches of each kind, one session, "
                     f"RS_STALL_MS {sw['stall_ms']}; direct = the client redials the provider itself)\n")
        rows = []
        for k in sw["kinds"].values():
            target = "-" if k["target_ms"] is None else f"<= {k['target_ms']:.0f} ms"
            met = "-" if k["met"] is None else ("met" if k["met"] else "NOT met")
            rows.append([k["what"], target, _pair(k["direct"], 0), _pair(k["gateway"], 0),
                         f"{k['direct']['n']} / {k['gateway']['n']}", met])
        parts.append(_table(["measure", "target (gateway p99)", "direct p50 / p99 ms", "gateway p50 / p99 ms",
                             "samples direct / gateway", "target"], rows))
        gap = sw["kinds"]["manual"]["gateway_reported_gap"]
        parts.append(f"\nThe gateway's own gap of the manual switches (rs.switched gap_ms): "
                     f"p50 {_f(gap['p50'], 0)} ms, p99 {_f(gap['p99'], 0)} ms; "
                     f"switches not carried out: {len(sw['failures'])}")
    if report.get("peer"):
        from ops.bench.peer import render_peer

        parts.append(render_peer(report["peer"]))
    for phase, error in report.get("phase_errors", {}).items():
        parts.append(f"\n**Phase {phase} did not finish**: {error}")
    return "\n".join(parts)


# -- main --------------------------------------------------------------------------------------------


@dataclass
class Options:
    sessions: list[int]
    seconds: float
    phases: list[str]
    capacity: list[int]
    capacity_seconds: float
    capacity_budget_s: float
    memory_sessions: int
    compression_sessions: int
    kills: int
    failover_sessions: int
    switches: int
    warmup_s: float
    turn_ms: int
    client_procs: int
    log_level: str
    workdir: Path | None
    json: Path | None = None
    peer: str | None = None
    peer_sessions: list[int] = field(default_factory=lambda: [1, 20, 50, 100])
    peer_seconds: float = 20.0
    peer_capacity: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100, 150, 200, 300, 400])
    peer_capacity_budget_s: float = 900.0


def run_bench(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": machine_facts(), "options": {
        k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()}}
    with _workdir(opts.workdir) as workdir:
        log(f"starting the stack in {workdir}")
        stack = BenchStack(workdir, opts.log_level)
        try:
            bench = Bench(stack, BenchArgs(seconds=opts.seconds, warmup_s=opts.warmup_s, turn_ms=opts.turn_ms,
                                           client_procs=opts.client_procs), log)
            for phase in PHASES:
                if phase not in opts.phases:
                    continue
                log(f"phase {phase}")
                started = time.monotonic()
                try:
                    run_phase(bench, phase, opts, report)
                except Exception as exc:  # a phase the machine could not finish is reported, the rest still run
                    log(f"phase {phase} failed: {type(exc).__name__}: {exc}")
                    report.setdefault("phase_errors", {})[phase] = f"{type(exc).__name__}: {exc}"
                    bench.settle()
                report.setdefault("phase_seconds", {})[phase] = round(time.monotonic() - started, 1)
            if opts.peer:
                log(f"phase peer ({opts.peer})")
                started = time.monotonic()
                try:
                    report["peer"] = run_peer(bench, opts, workdir, log)
                    if report["peer"].get("error"):  # rows measured before it are kept
                        raise RuntimeError(report["peer"]["error"])
                except Exception as exc:
                    log(f"phase peer failed: {type(exc).__name__}: {exc}")
                    report.setdefault("phase_errors", {})["peer"] = f"{type(exc).__name__}: {exc}"
                report.setdefault("phase_seconds", {})["peer"] = round(time.monotonic() - started, 1)
        finally:
            stack.stop()
    return report


def run_peer(bench: Bench, opts: Options, workdir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """The comparison with LiteLLM (ops.bench.peer) on this stack: LiteLLM in front of the same fake."""
    from ops.bench import litellm, peer

    try:
        python = litellm.ensure_venv(log)
    except litellm.IndexUnreachable as exc:
        log(f"LiteLLM comparison skipped: {exc}")
        return {"skipped": str(exc)}
    asyncio.run(set_knobs(bench.s.fake_port, response_ms=40, chunk_ms=40, pace=0.0))
    proxy = litellm.LiteLLM(python, workdir / "litellm", free_port(), bench.s.fake_port, MODEL)
    try:
        proxy.wait_ready()
        ours_pids = {label: STACK_PROCS[label] for label in (*peer.OURS_CPU, "redis")}
        systems = {
            "ours": peer.System("ours", bench.url("gateway"), {"Authorization": f"Bearer {API_KEY}"},
                                lambda: {label: bench.s.pid(name) for label, name in ours_pids.items()},
                                apart=("redis",)),
            "litellm": peer.System("litellm", proxy.url(), proxy.headers(), peer.litellm_pids(proxy)),
        }
        popts = peer.PeerOptions(sessions=opts.peer_sessions, seconds=opts.peer_seconds,
                                 capacity=opts.peer_capacity, capacity_budget_s=opts.peer_capacity_budget_s,
                                 warmup_s=min(2.0, opts.peer_seconds / 4))
        result = peer.phase_peer(peer.PeerBench(bench, systems, popts, ClientProcs, log), ADDED_P99_BUDGET_MS)
        result["litellm_version"] = peer.litellm_version(python)
        return result
    finally:
        proxy.stop()


# phase -> what it adds to the report (the capacity search reuses the latency rows already measured)
_PHASE_RUNNERS: dict[str, Callable[[Bench, Options, dict[str, Any]], Any]] = {
    "memory": lambda b, o, r: phase_memory(b, o.memory_sessions),
    "latency": lambda b, o, r: phase_latency(b, o.sessions),
    "capacity": lambda b, o, r: phase_capacity(b, o.capacity, o.capacity_seconds, r.get("latency", []),
                                               o.capacity_budget_s),
    "compression": lambda b, o, r: phase_compression(b, o.compression_sessions, o.seconds),
    "failover": lambda b, o, r: phase_failover(b, o.kills, o.failover_sessions),
    "switch": lambda b, o, r: phase_switch(b, o.switches),
}


def run_phase(bench: Bench, phase: str, opts: Options, report: dict[str, Any]) -> None:
    report[phase] = _PHASE_RUNNERS[phase](bench, opts, report)


@contextlib.contextmanager
def _workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="rtswitch-bench-") as tmp:
        yield Path(tmp)


def _ints(raw: str) -> list[int]:
    return [int(x) for x in raw.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> Options:
    p = argparse.ArgumentParser(prog="python -m ops.bench.run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sessions", type=_ints, default=[1, 20, 100], help="session counts of the latency table")
    p.add_argument("--seconds", type=float, default=10.0, help="measured seconds per load run")
    p.add_argument("--json", type=Path, help="write the full report here")
    p.add_argument("--phases", help=f"comma list of {', '.join(PHASES)} (default: all; with --peer: none)")
    p.add_argument("--peer", choices=["litellm"], help="also compare with this peer (ops.bench.peer)")
    p.add_argument("--peer-sessions", type=_ints, default=[1, 20, 50, 100],
                   help="background session counts of the peer table")
    p.add_argument("--peer-seconds", type=float, default=20.0,
                   help="seconds per peer window (the first quarter, at most 2 s, is not counted)")
    p.add_argument("--peer-capacity", type=_ints, default=[5, 10, 20, 50, 100, 150, 200, 300, 400],
                   help="peer capacity steps (each system stops at its first failing step)")
    p.add_argument("--peer-capacity-budget-s", type=float, default=900.0,
                   help="stop a system's capacity search after this many seconds")
    p.add_argument("--capacity", type=_ints, default=[5, 10, 15, 20, 30, 40, 50, 75, 100, 150, 200, 300, 400],
                   help="capacity steps, stopped at the first that breaks")
    p.add_argument("--capacity-seconds", type=float, help="seconds per capacity step (default --seconds)")
    p.add_argument("--capacity-budget-s", type=float, default=900.0, help="stop the capacity search after this")
    p.add_argument("--memory-sessions", type=int, default=200)
    p.add_argument("--compression-sessions", type=int, default=100)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--failover-sessions", type=int, default=4)
    p.add_argument("--switches", type=int, default=20, help="switch phase: switches of each kind")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of each run not counted")
    p.add_argument("--turn-ms", type=int, default=1000, help="one commit + response.create per session per turn")
    p.add_argument("--client-procs", type=int, default=0, help="client processes (0: 1 below 100 sessions, else 2)")
    p.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the services")
    p.add_argument("--workdir", type=Path, help="keep logs here (default: a temporary directory)")
    a = p.parse_args(argv)
    raw = a.phases if a.phases is not None else ("" if a.peer else ",".join(PHASES))
    phases = [x.strip() for x in raw.split(",") if x.strip()]
    unknown = set(phases) - set(PHASES)
    if unknown:
        p.error(f"unknown phases {sorted(unknown)}")
    opts = Options(
        sessions=a.sessions, seconds=a.seconds, phases=phases, capacity=a.capacity,
        capacity_seconds=a.capacity_seconds or a.seconds, capacity_budget_s=a.capacity_budget_s,
        memory_sessions=a.memory_sessions, compression_sessions=a.compression_sessions, kills=a.kills,
        failover_sessions=a.failover_sessions, switches=a.switches,
        warmup_s=a.warmup, turn_ms=a.turn_ms, client_procs=a.client_procs,
        log_level=a.log_level, workdir=a.workdir, json=a.json, peer=a.peer, peer_sessions=a.peer_sessions,
        peer_seconds=a.peer_seconds, peer_capacity=a.peer_capacity, peer_capacity_budget_s=a.peer_capacity_budget_s,
    )
    return opts


def main(argv: Sequence[str] | None = None) -> None:
    opts = parse_args(argv)
    out = opts.json

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    report = run_bench(opts, log)
    print(render(report), flush=True)
    if out is not None:
        out.write_text(json.dumps(report, indent=2, default=str))
        log(f"report written to {out}")
    if report.get("phase_errors"):
        sys.exit(1)


if __name__ == "__main__":
    main()
