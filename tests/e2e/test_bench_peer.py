"""``rtswitch bench --peer litellm``: our stack against LiteLLM's proxy in one run, same fake, same load.

The smoke test (default suite) runs the comparison with 1 and 2 background sessions and a few probes and
checks that both systems are measured (probes answered, added latency, CPU per client frame, a capacity
step each) and that the table and the capacity line are printed. Nothing is timed: docs/bench.md has the
numbers. LiteLLM's venv is built on first use and cached (ops/bench/litellm.py); the test skips only when
pip cannot reach the package index. The full comparison (1/20/50/100 sessions and the capacity search) is
``-m slow`` and prints its table.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.bench import litellm

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _venv_or_skip() -> None:
    """Build (or reuse) LiteLLM's venv before the bench's clock starts; skip only on an unreachable index."""
    try:
        litellm.ensure_venv()
    except litellm.IndexUnreachable as exc:
        pytest.skip(str(exc))


def _peer(tmp_path: Path, *args: str, timeout: float) -> tuple[dict[str, Any], str]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--peer", "litellm", "--json", str(out),
         "--workdir", str(tmp_path / "stack"), *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stderr[-4000:]}"
    return json.loads(out.read_text()), proc.stdout


def _check_window(w: dict[str, Any], system: str, sessions: int, *, strict: bool) -> None:
    where = f"{system} at {sessions}"
    assert w["system"] == system and w["sessions"] == sessions, where
    if strict:
        assert w["connected"] == sessions and w["connect_failures"] == 0 and w["closed_early"] == 0, where
        assert w["lost_probes"] == 0 and w["probe_errors"] == [], (where, w["probe_errors"])
    for side in ("direct_ms", "system_ms"):
        d = w[side]
        assert d["n"] > 0 and d["p50"] > 0 and d["p50"] <= d["p99"] <= d["max"], (where, side, d)
    for p in ("p50", "p99"):  # added = system - direct, from the same window's probes
        assert math.isclose(w["added_ms"][p], w["system_ms"][p] - w["direct_ms"][p], abs_tol=0.01), where
    assert w["frames_per_s"] > 0 and _finite(w["cpu_us_per_frame"]) and w["cpu_us_per_frame"] > 0, where
    expected = {"litellm"} if system == "litellm" else {"edge", "transformer", "worker", "checkpoint", "nats"}
    assert expected <= set(w["cpu_pct"]), (where, w["cpu_pct"])


def _check(report: dict[str, Any], stdout: str, sessions: list[int], *, strict: bool) -> None:
    peer = report["peer"]
    if peer.get("skipped"):
        pytest.skip(peer["skipped"])
    assert not report.get("phase_errors"), report.get("phase_errors")
    assert [row["sessions"] for row in peer["rows"]] == sessions
    for row in peer["rows"]:
        for system in ("ours", "litellm"):
            _check_window(row[system], system, row["sessions"], strict=strict)
    assert peer["litellm_version"] == "1.108.7"
    for system in ("ours", "litellm"):
        cap = peer["capacity"][system]
        assert cap["steps"], system
        passed = max((st["sessions"] for st in cap["steps"] if st["break"] is None), default=0)
        assert cap["max_sessions_under_budget"] == passed, cap
    assert "### Ours vs LiteLLM 1.108.7" in stdout
    for row in peer["rows"]:
        ll, us = row["litellm"]["added_ms"], row["ours"]["added_ms"]
        cells = f"| {row['sessions']} | {ll['p50']:.2f} / {ll['p99']:.2f} | {us['p50']:.2f} / {us['p99']:.2f} |"
        assert cells in stdout, cells
    assert "Capacity (largest streaming session count with added p99 <= 20 ms): ours **" in stdout


@pytest.mark.timeout(1800)  # a cold venv build takes minutes; the comparison itself about one
def test_bench_peer_litellm_smoke(tmp_path: Path) -> None:
    _venv_or_skip()
    report, stdout = _peer(tmp_path, "--peer-sessions", "1,2", "--peer-seconds", "3", "--peer-capacity", "2",
                           timeout=400)
    _check(report, stdout, [1, 2], strict=True)


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_bench_peer_litellm_full(tmp_path: Path) -> None:
    """The documented comparison (docs/bench.md): 1/20/50/100 background sessions, then each system's
    capacity search; prints the table."""
    _venv_or_skip()
    report, stdout = _peer(tmp_path, timeout=5000)
    print(stdout)
    _check(report, stdout, [1, 20, 50, 100], strict=False)


def test_unreachable_index_is_reported_as_such(tmp_path: Path) -> None:
    """pip pointed at a closed port: IndexUnreachable (the bench reports the peer skipped), nothing cached."""
    env = {**os.environ, "RTSWITCH_LITELLM_CACHE": str(tmp_path), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_NO_CACHE_DIR": "1", "PIP_RETRIES": "0"}
    code = ("from ops.bench import litellm\n"
            "try:\n    litellm.ensure_venv()\nexcept litellm.IndexUnreachable as exc:\n    print('unreachable', exc)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("unreachable"), proc.stdout + proc.stderr[-2000:]
    assert not [p for p in tmp_path.iterdir() if p.is_dir()], "a failed build leaves no venv behind"
