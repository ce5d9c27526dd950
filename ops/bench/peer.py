"""The peer comparison (``--peer litellm``): our four processes against LiteLLM's one-process proxy, in the
same run, in front of the same fake OpenAI, under the same load.

Per background session count N and per system (ours, LiteLLM; the order alternates from one N to the next):

* N background sessions (``ops.bench.client`` processes, ``turns=False``) stream a 20 ms PCM16 frame every
  20 ms through the system for a window;
* meanwhile the orchestrator probes, alternating a session straight to the fake and one through the system:
  5 frames, ``input_audio_buffer.commit`` + ``response.create`` -> first ``response.output_audio.delta``.
  Added = system - direct, per percentile, from the probes of the same window (the fake carries the same
  background load for both);
* CPU of the system's processes over the window (from /proc via psutil): ours = edge + transformer +
  worker + checkpoint + nats-server (redis-server reported apart), LiteLLM = its process and children;
  divided by the background frames of the window: CPU µs per client frame.

Capacity: per system, the step search over ``capacity`` session counts; a step fails when added p99 exceeds
the budget (20 ms) in two windows (a latency verdict is re-measured once: the machine is shared),
a probe goes unanswered, a background session fails, or the background frame rate falls
under 95 % of nominal (the machine, not the system, is then the limit). The largest passing count is the
system's capacity. Each system's search stops at its first failing step or when its time budget is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import websockets

from ops.bench.client import AUDIO_DELTA, LoadSpec, commit_frames, frame_message, session_update

__all__ = ["PeerOptions", "System", "phase_peer", "render_peer"]

SYSTEMS = ("ours", "litellm")
SYSTEM_NAMES = {"ours": "ours", "litellm": "LiteLLM"}
OURS_CPU = ("edge", "transformer", "worker", "checkpoint", "nats")  # CPU per frame: our processes + nats-server
PROBE_GAP_S = 0.05  # between two probes: the probe sessions add little load of their own
PROBE_TIMEOUT_S = 10.0


@dataclass
class PeerOptions:
    sessions: list[int]
    seconds: float
    capacity: list[int]
    capacity_budget_s: float
    warmup_s: float = 2.0


@dataclass
class System:
    """One system under test: where clients connect, with what, and which processes do its work."""

    name: str
    url: str
    headers: dict[str, str]
    pids: Callable[[], dict[str, int | None]]  # label -> pid, for CPU; every label counts unless in `apart`
    apart: tuple[str, ...] = ()  # reported, not in the per-frame total


@dataclass
class _Probe:
    """One probe session: times commit + response.create -> first audio delta of that response."""

    url: str
    headers: dict[str, str]
    ws: Any = None
    latencies: list[float] = field(default_factory=list)
    lost: int = 0
    errors: list[str] = field(default_factory=list)

    async def open(self) -> _Probe:
        await self.close()
        self.ws = await websockets.connect(self.url, additional_headers=self.headers, compression=None,
                                           max_size=None, ping_interval=None, open_timeout=30)
        try:
            await self._until("session.created")
            await self.ws.send(session_update())
            await self._until("session.updated")
        except BaseException:
            await self.close()  # never a half-open session for the next probe
            raise
        return self

    async def _until(self, kind: str) -> float:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            while True:
                raw = await self.ws.recv()
                now = time.monotonic()
                event = json.loads(raw)
                if event.get("type") == "error":
                    self.errors.append(str(event.get("error", {}).get("code")))
                if event.get("type") == kind:
                    return now

    async def once(self, frame: str, commit: str, create: str) -> None:
        """One probe; an unanswered one (or a session that could not be opened) counts as lost."""
        try:
            if self.ws is None:
                await self.open()
            for _ in range(5):  # 100 ms: a smaller commit is refused
                await self.ws.send(frame)
            started = time.monotonic()
            await self.ws.send(commit)
            await self.ws.send(create)
            await self._until("response.created")  # deltas before it would be an older response's
            self.latencies.append((await self._until(AUDIO_DELTA) - started) * 1000)
            await self._until("response.done")
        except (TimeoutError, OSError, websockets.WebSocketException):
            # A fresh session for the next probe, so that this response's late events cannot be taken
            # for the next one's.
            self.lost += 1
            await self.close()

    async def close(self) -> None:
        ws, self.ws = self.ws, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 5)


async def _probe_window(direct_url: str, system: System, start: float, end: float, frame_ms: int,
                        limit: int) -> tuple[_Probe, _Probe]:
    """Alternate direct / system probes from ``start`` until ``end`` (or ``limit`` probes each)."""
    frame = frame_message(frame_ms)
    commit, create = commit_frames()
    direct = _Probe(direct_url, {"Authorization": "Bearer bench"})
    through = _Probe(system.url, system.headers)
    try:
        for probe in (direct, through):  # opened before the window; one that fails is retried by its first probe
            with contextlib.suppress(TimeoutError, OSError, websockets.WebSocketException):
                await probe.open()
        await asyncio.sleep(max(0.0, start - time.monotonic()))
        while time.monotonic() < end and len(through.latencies) + through.lost < limit:
            for probe in (direct, through):
                await probe.once(frame, commit, create)
                await asyncio.sleep(PROBE_GAP_S)
    finally:
        await direct.close()
        await through.close()
    return direct, through


def _pct(values: Sequence[float], p: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def _summary(values: Sequence[float]) -> dict[str, float | int]:
    return {"n": len(values), "p50": round(_pct(values, 50), 3), "p99": round(_pct(values, 99), 3),
            "max": round(max(values), 3) if values else math.nan}


def _cpu_seconds(procs: dict[str, psutil.Process]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, p in procs.items():
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            out[label] = t.user + t.system
    return out


def _processes(pids: dict[str, int | None]) -> dict[str, psutil.Process]:
    """label -> process, children included (a proxy's workers count as the proxy)."""
    out: dict[str, psutil.Process] = {}
    for label, pid in pids.items():
        if pid is None:
            continue
        with contextlib.suppress(psutil.Error):
            parent = psutil.Process(pid)
            out[label] = parent
            for i, child in enumerate(parent.children(recursive=True)):
                out[f"{label}.{i}"] = child
    return out


class PeerBench:
    """Runs windows for the systems; ``bench`` is ops.bench.run.Bench (client processes, fake port, settle)."""

    def __init__(self, bench: Any, systems: dict[str, System], opts: PeerOptions, client_procs: Callable[
            [list[LoadSpec]], Any], log: Callable[[str], None]) -> None:
        self.bench = bench
        self.systems = systems
        self.opts = opts
        self.client_procs = client_procs
        self.log = log
        self.windows = 0

    def direct_url(self) -> str:
        return self.bench.url("direct")

    def quiet(self, system: System, timeout_s: float = 120.0, pct: float = 30.0) -> float:
        """Wait until the system's processes together use under ``pct`` % of a core for half a second."""
        started = time.monotonic()
        while time.monotonic() - started < timeout_s:
            procs = _processes(system.pids())
            before = _cpu_seconds(procs)
            t0 = time.monotonic()
            time.sleep(0.5)
            after = _cpu_seconds(procs)
            used = sum(after.get(k, v) - v for k, v in before.items()) / (time.monotonic() - t0) * 100
            if used < pct:
                break
        return round(time.monotonic() - started, 1)

    def window(self, system: System, sessions: int, seconds: float, probes: int = 10_000) -> dict[str, Any]:
        """One window: ``sessions`` background streams through ``system`` while probes alternate."""
        from ops.bench.run import _split  # the bench's own split of sessions over client processes

        self.windows += 1
        frame_ms = self.bench.args.frame_ms
        warm = min(self.opts.warmup_s, seconds / 2)
        specs = [
            LoadSpec(url=system.url, headers=system.headers, sessions=count, index_base=first,
                     total_sessions=sessions, seconds=seconds, warmup_s=warm, frame_ms=frame_ms,
                     turns=False)
            for first, count in _split(sessions, self.bench.procs_for(sessions))
        ]
        clients = self.client_procs(specs)
        try:
            ready = clients.start()
            t0 = time.monotonic() + 0.5
            clients.send({"go": t0})
            procs = _processes(system.pids())
            cpu0: dict[str, float] = {}
            cpu1: dict[str, float] = {}
            span = [0.0, 0.0]

            async def run() -> tuple[_Probe, _Probe]:
                loop = asyncio.get_running_loop()

                def begin() -> None:
                    cpu0.update(_cpu_seconds(procs))
                    span[0] = time.monotonic()

                def finish() -> None:
                    cpu1.update(_cpu_seconds(procs))
                    span[1] = time.monotonic()

                loop.call_at(t0 + warm, begin)
                loop.call_at(t0 + seconds, finish)
                result = await _probe_window(self.direct_url(), system, t0 + warm, t0 + seconds, frame_ms, probes)
                await asyncio.sleep(max(0.0, t0 + seconds - time.monotonic() + 0.05))
                return result

            direct, through = asyncio.run(run())
            results = clients.results(seconds + 120)
        finally:
            clients.kill()
        elapsed = max(1e-6, span[1] - span[0])
        frames = sum(r["frames"] for r in results)
        window_s = max((r["window_s"] for r in results), default=0.0) or elapsed
        fps = frames / window_s
        cpu_pct: dict[str, float] = {}
        for label, start in cpu0.items():
            group = label.split(".", 1)[0]
            cpu_pct[group] = cpu_pct.get(group, 0.0) + (cpu1.get(label, start) - start) / elapsed * 100
        counted = sum(v for k, v in cpu_pct.items() if k not in system.apart)
        connected = sum(r["connected"] for r in results)
        out = {
            "system": system.name, "sessions": sessions, "connected": connected,
            "connect_failures": max(sum(r["connect_failures"] for r in results),
                                    sum(x["connect_failures"] for x in ready)),
            "closed_early": sum(r["closed_early"] for r in results),
            "frames_per_s": round(fps, 1), "nominal_frames_per_s": round(connected * 1000 / frame_ms, 1),
            "direct_ms": _summary(direct.latencies), "system_ms": _summary(through.latencies),
            "lost_probes": direct.lost + through.lost, "probe_errors": direct.errors + through.errors,
            "cpu_pct": {k: round(v, 1) for k, v in cpu_pct.items()},
            "cpu_pct_counted": round(counted, 1),
            "cpu_us_per_frame": round(counted * 1e4 / fps, 1) if fps > 0 else math.nan,
            "loadavg_1m": round(os.getloadavg()[0], 2),
        }
        out["added_ms"] = {p: round(out["system_ms"][p] - out["direct_ms"][p], 3) for p in ("p50", "p99")}
        return out

    def row(self, sessions: int, order: Sequence[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"sessions": sessions}
        for name in order:
            system = self.systems[name]
            self.quiet(system)
            self.log(f"  {sessions} background sessions: {SYSTEM_NAMES[name]}")
            row[name] = self.window(system, sessions, self.opts.seconds)
        return row


def break_reason(w: dict[str, Any], budget_ms: float, floor: float = 0.95) -> str | None:
    """Why a window is past capacity, or None."""
    if w["connect_failures"] or w["closed_early"] or w["connected"] < w["sessions"]:
        return f"{w['connected']} of {w['sessions']} sessions streamed ({w['connect_failures']} failed to connect)"
    if w["lost_probes"]:
        return f"{w['lost_probes']} probes unanswered"
    if w["probe_errors"]:
        return f"probe errors {w['probe_errors']}"
    if w["frames_per_s"] < floor * w["nominal_frames_per_s"]:
        return f"offered {w['frames_per_s']:.0f} frames/s of {w['nominal_frames_per_s']:.0f}"
    if w["added_ms"]["p99"] > budget_ms:
        return f"added p99 {w['added_ms']['p99']:.1f} ms > {budget_ms:.0f} ms"
    return None


def phase_peer(peer: PeerBench, budget_ms: float) -> dict[str, Any]:
    opts = peer.opts
    rows = []
    try:
        for i, n in enumerate(opts.sessions):
            order = SYSTEMS if i % 2 == 0 else SYSTEMS[::-1]
            rows.append(peer.row(n, order))
    except Exception as exc:  # the rows measured so far are still reported (the bench exits 1)
        return {"rows": rows, "capacity": {}, "budget_ms": budget_ms, "seconds": opts.seconds,
                "error": f"{type(exc).__name__}: {exc}"}
    known = {(name, row["sessions"]): row[name] for row in rows for name in SYSTEMS}
    capacity: dict[str, Any] = {}
    for name in SYSTEMS:
        steps: list[dict[str, Any]] = []
        best, broke = 0, None
        started = time.monotonic()
        for n in opts.capacity:
            if time.monotonic() - started > opts.capacity_budget_s:
                broke = {"sessions": n, "reason": f"time budget of {opts.capacity_budget_s:.0f} s spent"}
                break
            w = known.get((name, n))
            if w is None:
                peer.quiet(peer.systems[name])
                peer.log(f"  capacity {SYSTEM_NAMES[name]}: {n} sessions")
                w = peer.window(peer.systems[name], n, opts.seconds)
            reason = break_reason(w, budget_ms)
            first: str | None = None
            if reason is not None and reason.startswith("added p99"):
                # One slow window on a shared machine is as likely someone else's burst as the system's
                # limit: a latency verdict is re-measured once and the step fails only if both windows do.
                peer.quiet(peer.systems[name])
                peer.log(f"  capacity {SYSTEM_NAMES[name]}: {n} sessions again ({reason})")
                first, w = reason, peer.window(peer.systems[name], n, opts.seconds)
                reason = break_reason(w, budget_ms)
                reason = None if reason is None else f"{reason} (twice; first: {first})"
            steps.append({"sessions": n, "added_ms": w["added_ms"], "frames_per_s": w["frames_per_s"],
                          "cpu_us_per_frame": w["cpu_us_per_frame"], "break": reason, "first_try": first})
            if reason is not None:
                broke = {"sessions": n, "reason": reason}
                break
            best = n
        capacity[name] = {"max_sessions_under_budget": best, "steps": steps, "broke_at": broke}
    return {"rows": rows, "capacity": capacity, "budget_ms": budget_ms, "seconds": opts.seconds}


def _f(x: float, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def render_peer(peer: dict[str, Any]) -> str:
    if peer.get("skipped"):
        return f"\n### Ours vs LiteLLM\n\nSkipped: {peer['skipped']}"
    head = ["background sessions", "LiteLLM added p50 / p99 ms", "ours added p50 / p99 ms",
            "CPU µs per client frame, LiteLLM / ours (ours: edge+transformer+worker+checkpoint+nats-server)",
            "probes LiteLLM / ours", "load avg"]
    lines = [f"\n### Ours vs LiteLLM {peer.get('litellm_version', '')} (same run, same fake; "
             f"added = system - direct, probes alternating)\n",
             "| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for row in peer["rows"]:
        ll, us = row["litellm"], row["ours"]
        lines.append("| " + " | ".join([
            str(row["sessions"]),
            f"{_f(ll['added_ms']['p50'])} / {_f(ll['added_ms']['p99'])}",
            f"{_f(us['added_ms']['p50'])} / {_f(us['added_ms']['p99'])}",
            f"{_f(ll['cpu_us_per_frame'], 0)} / {_f(us['cpu_us_per_frame'], 0)}",
            f"{ll['system_ms']['n']} / {us['system_ms']['n']}",
            f"{_f(ll['loadavg_1m'])} / {_f(us['loadavg_1m'])}",
        ]) + " |")
    cap = peer["capacity"]
    if peer.get("error"):
        lines.append(f"\n**The comparison did not finish**: {peer['error']}")
        return "\n".join(lines)

    def one(name: str) -> str:
        c = cap[name]
        broke = c["broke_at"]
        return f"{c['max_sessions_under_budget']}" + (f" (broke at {broke['sessions']}: {broke['reason']})"
                                                      if broke else " (did not break)")

    lines.append(f"\nCapacity (largest streaming session count with added p99 <= {peer['budget_ms']:.0f} ms): "
                 f"ours **{one('ours')}**, LiteLLM **{one('litellm')}**")
    return "\n".join(lines)


def litellm_pids(proc: Any) -> Callable[[], dict[str, int | None]]:
    return lambda: {"litellm": proc.pid if proc.popen.poll() is None else None}


def litellm_version(python: Path) -> str:
    import subprocess

    out = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
                         capture_output=True, text=True, timeout=60)
    return out.stdout.strip()
