"""The bench (ops/bench/run.py) runs end to end and produces its tables with a baseline column.

A smoke run with a few sessions for a few seconds: the tables are printed, every number is sane and
non-zero, the direct (baseline) column is measured in the same run. Targets are not asserted here
(timing assertions do not belong in tests; docs/bench.md has the measured numbers). The full run is
``-m slow``.

The bench starts its own stack (real nats-server, redis-server, services and fakes) as subprocesses.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("edge", "transformer", "worker", "checkpoint")


def _bench(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ops.bench.run", "--json", str(out), "--workdir", str(tmp_path / "stack"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def _positive(value: float) -> bool:
    return isinstance(value, (int, float)) and not math.isnan(value) and value > 0


def _check_load(run: dict[str, Any], sessions: int, *, strict: bool) -> None:
    """One load run (direct or gateway): sessions connected, answered, and measured. ``strict``: every
    session and every request (a load past the capacity the bench found may lose some: it is reported)."""
    where = f"{run['target']} at {sessions}"
    if strict:
        assert run["connected"] == sessions and run["connect_failures"] == 0, where
        assert run["lost"] == 0 and run["closed_early"] == 0, f"{where}: requests unanswered or sockets closed"
        assert not run["errors"], f"{where}: error events {run['errors']}"
        assert run["declared_dead"] == 0, f"{where}: sessions moved although no process died"
        assert run["ttfa_ms"]["n"] == sessions, where
    lat = run["latency_ms"]
    assert lat["n"] > 0 and _positive(lat["p50"]) and lat["p50"] <= lat["p99"] <= lat["max"], where
    assert _positive(run["ttfa_ms"]["p50"]), where
    assert _positive(run["frames_per_s"]) and run["turns"] > 0, where
    assert _positive(run["cpu_pct"]["fake"]) and _positive(run["cpu_pct"]["clients"]), where


def _check_row(row: dict[str, Any], *, strict: bool = True) -> None:
    n = row["sessions"]
    _check_load(row["direct"], n, strict=strict)
    _check_load(row["gateway"], n, strict=strict)
    gateway = row["gateway"]
    for service in SERVICES:  # the stack did the work, and its cost per frame is reported
        assert _positive(gateway["cpu_pct"][service]), (service, gateway["cpu_pct"])
        assert _positive(gateway["rss_mb"][service]), (service, gateway["rss_mb"])
        assert _positive(gateway["cpu_us_per_frame"][service]), (service, gateway["cpu_us_per_frame"])
    for p in ("p50", "p99"):  # added = gateway - direct, from the same run
        expected = gateway["latency_ms"][p] - row["direct"]["latency_ms"][p]
        assert math.isclose(row["added_ms"][p], expected, abs_tol=0.01)


def _check_tables(stdout: str) -> None:
    for title in ("### Added latency", "### Resources during the gateway run", "### Capacity",
                  "### Memory per idle session", "### Client-link compression", "### Worker kill -9"):
        assert title in stdout, f"missing table {title!r}"
    assert "direct p50 / p99 ms" in stdout and "added p50 / p99 ms" in stdout  # the baseline column


def _check_switch(report: dict[str, Any], stdout: str, switches: int) -> None:
    """The switch table: every kind measured for both systems (direct baseline and gateway), every switch
    carried out, each target's verdict the one its numbers give."""
    assert "### Switching providers" in stdout
    sw = report["switch"]
    assert sw["switches"] == switches and sw["failures"] == [], sw["failures"]
    assert set(sw["kinds"]) == {"manual", "failure", "stall", "stall_audio"}
    for measure, kind in sw["kinds"].items():
        for system in ("direct", "gateway"):
            d = kind[system]
            assert d["n"] == switches and _positive(d["p50"]) and d["p50"] <= d["p99"], (measure, system, d)
        assert kind["what"] in stdout
        if kind["target_ms"] is not None:
            assert kind["met"] == (kind["gateway"]["p99"] <= kind["target_ms"]), (measure, kind)
    # A stall is a silence of the limit's length: noticed no sooner (the gateway's client measures from the
    # last delta's arrival, which left the worker's watch a few ms earlier: its transit is allowed).
    assert sw["kinds"]["stall"]["direct"]["p50"] >= sw["stall_ms"], sw["kinds"]["stall"]
    assert sw["kinds"]["stall"]["gateway"]["p50"] >= sw["stall_ms"] - 50, sw["kinds"]["stall"]
    gap = sw["kinds"]["manual"]["gateway_reported_gap"]
    # Whole ms from the turn end to the new upstream ready: 0 when the cutover takes the last turn from the
    # worker's own log (docs/switching.md), never negative.
    assert gap["n"] == switches and 0 <= gap["p50"] <= gap["p99"], gap


def _check_report(
    report: dict[str, Any], stdout: str, *, sessions: list[int], memory: int, kills: int, strict: bool,
    switches: int,
) -> None:
    """``strict``: every load row loses nothing; else only the loads the capacity search passed."""
    _check_tables(stdout)
    assert report["machine"]["cores"] and report["machine"]["date"]
    capacity = report["capacity"]
    assert capacity["steps"]
    passed = capacity["max_sessions_under_budget"]
    # The capacity is the largest load the search passed (0 if the first step broke), and the table says so.
    assert passed == max((st["sessions"] for st in capacity["steps"] if st["break"] is None), default=0), capacity
    assert capacity["broke_at"] is not None or all(st["break"] is None for st in capacity["steps"]), capacity
    assert f"Largest under budget: **{passed}** sessions" in stdout
    for step in capacity["steps"]:
        _check_row(step["row"], strict=strict or step["break"] is None)
    assert [row["sessions"] for row in report["latency"]] == sessions
    for row in report["latency"]:
        _check_row(row, strict=strict or row["sessions"] <= passed)

    mem = report["memory"]
    assert mem["connected"] == memory
    for label in (*SERVICES, "nats", "redis"):
        assert _positive(mem["rss_before_mb"][label]) and _positive(mem["rss_after_mb"][label]), label
        assert math.isfinite(mem["per_session_kb"][label]), label
    assert math.isclose(mem["services_per_session_kb"], sum(mem["per_session_kb"][s] for s in SERVICES), abs_tol=0.5)

    none, deflate = report["compression"]
    assert (none["mode"], deflate["mode"]) == ("none", "deflate")
    _check_row(none, strict=strict or none["sessions"] <= passed)
    _check_row(deflate, strict=strict or deflate["sessions"] <= passed)
    assert none["gateway"]["deflate_sessions"] == 0, "compression is off by default"
    connected = deflate["gateway"]["connected"]
    assert connected > 0 and deflate["gateway"]["deflate_sessions"] == connected, "RS_CLIENT_COMPRESSION=deflate"

    failover = report["failover"]
    assert failover["kills"] == kills and not failover["failures"], failover["failures"]
    assert failover["retried_requests"] == 0, "a response.create sent after the cut must be answered"
    first_audio, cut = failover["first_audio_ms"], failover["cut_ms"]
    assert first_audio["n"] >= kills and cut["n"] == first_audio["n"]
    assert _positive(cut["p50"]) and first_audio["p50"] >= cut["p50"]  # the cut comes before the new audio

    _check_switch(report, stdout, switches)


@pytest.mark.timeout(180)
def test_bench_smoke(tmp_path: Path) -> None:
    report, stdout = _bench(
        tmp_path,
        "--sessions", "3", "--seconds", "2", "--warmup", "0.5", "--turn-ms", "400",
        "--capacity", "3", "--capacity-seconds", "2",
        "--memory-sessions", "4", "--compression-sessions", "3",
        "--kills", "1", "--failover-sessions", "2", "--switches", "2",
        timeout=170,
    )
    _check_report(report, stdout, sessions=[3], memory=4, kills=1, strict=True, switches=2)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_bench_full(tmp_path: Path) -> None:
    """The documented run (docs/bench.md): 1/20/100 sessions, capacity search, 200 idle, 20 kills."""
    report, stdout = _bench(tmp_path, timeout=3500)
    _check_report(report, stdout, sessions=[1, 20, 100], memory=200, kills=20, strict=False, switches=20)
