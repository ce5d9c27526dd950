"""The chaos run (ops/chaos/run.py) as a test: concurrent SDK sessions while processes are kill -9'd, nats-server
and redis-server restarted, and the providers fail, on a schedule. A short run with every fault kind by default;
the long ones are marked ``slow``.

The script runs as a subprocess with its own nats-server and redis-server (a shared bus would let other
stacks' services join its queue groups), and reports through its exit status and ``--json``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ops.chaos.run import FAULTS, fault_plan, fault_table, kill_plan

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FAULT_KINDS = tuple(FAULTS)


def _chaos(tmp_path: Path, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path / "chaos.json"
    env = {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "REDIS_URL")}
    proc = subprocess.run(
        [sys.executable, "-m", "ops.chaos.run", *args, "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert out.exists(), f"no results written; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


def _assert_survived(proc: subprocess.CompletedProcess[str], result: dict[str, Any], sessions: int) -> None:
    report = f"\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    assert proc.returncode == 0, report
    assert "| sessions dropped" in proc.stdout  # the table was printed
    assert result["sessions"] == sessions
    assert result["providers"] == {"openai": sessions // 2, "gemini": sessions - sessions // 2}
    kills = result["kills"]
    assert kills["worker"] >= 1 and kills["transformer"] >= 1 and kills["checkpoint"] >= 1, report
    assert result["reattaches"]["total"] > 0, report
    assert result["dropped"] == 0 and result["lost"] == 0, report
    assert result["duplicates"] == 0 and result["wrong"] == 0, report
    assert result["turns"] >= sessions * 3, report  # the sessions really talked through the kills


# Known, not fixed here: a nats-server restart loses what was published while peers were re-subscribing
# (core NATS is at most once and the memory stream is re-created after the flushes): a request sent during
# the outage can vanish (the client waits for ever) and an answer can miss the Redis log. The run reports it
# in the nats row (lost / dropped); every other fault kind must lose nothing (docs/operations.md, "Chaos").
KNOWN_LOSSY = frozenset({"nats"})


def _assert_all_faults(proc: subprocess.CompletedProcess[str], result: dict[str, Any], sessions: int,
                       kinds: tuple[str, ...] = FAULT_KINDS) -> None:
    lost = {name: {k: v for k, v in d.items() if k not in ("store", "upstream")}
            for name, d in result["loss_detail"].items()}
    report = (f"\n{fault_table(result)}\ndropped: {result['dropped_detail']}\nlost: {json.dumps(lost)[:3000]}"
              f"\nwrong: {result['wrong_detail']}\n{proc.stderr[-500:]}")
    assert "| fault " in proc.stdout and f"| {kinds[-1]} " in proc.stdout, report  # the per-kind table was printed
    assert result["sessions"] == sessions
    faults = result["faults"]
    assert set(faults) >= set(kinds), report
    for kind in kinds:
        assert faults[kind]["injected"] >= 1, (kind, report)
        assert faults[kind]["sessions_hit"] >= 1 or kind == "checkpoint", (kind, report)
        if kind not in KNOWN_LOSSY:
            assert faults[kind]["lost"] == 0 and faults[kind]["dropped"] == 0, (kind, report)
    assert "(no fault)" not in faults, report  # nothing lost or dropped away from any fault
    assert result["duplicates"] == 0 and result["misordered"] == 0 and result["wrong"] == 0, report
    assert result["edge_reconnects"] >= 1 and result["reattaches"]["total"] > 0, report
    # The clients of a killed edge and of a killed worker heard a gap, and it was measured.
    assert faults["edge"]["gap"]["n"] >= 1 and faults["worker"]["gap"]["n"] >= 1, report
    assert result["turns"] >= sessions * 3, report


@pytest.mark.timeout(200)  # 48 s of conversation plus the stack's start, a dropped turn's timeout, the check
def test_chaos_short(tmp_path: Path) -> None:
    """Every fault kind but the nats-server restart once, 4 s apart, under 8 sessions (one on server VAD) for
    44 s: kill -9 of a worker, a transformer, the checkpoint and an edge (its clients reconnect to the other
    edge with their session id), a redis-server restart, and provider faults (drop, refused reconnects, stall,
    latency, goAway) on one session's upstream each: nothing lost, nothing wrong. The nats-server restart is
    known lossy (KNOWN_LOSSY): it runs in the slow all-faults runs, and tests/e2e/test_infra_restart.py checks
    that no response hangs after one."""
    kinds = tuple(k for k in FAULT_KINDS if k not in KNOWN_LOSSY)
    proc, result = _chaos(tmp_path, "--sessions", "8", "--duration", str(4 * len(kinds) + 4), "--kill-every", "4",
                          "--faults", ",".join(kinds), "--edges", "2", timeout=170)
    _assert_all_faults(proc, result, 8, kinds)
    assert result["vad_sessions"] == 1


def test_the_fault_plan_has_every_kind_once_per_round() -> None:
    assert fault_plan(11, FAULT_KINDS) == list(FAULT_KINDS)
    assert fault_plan(13, ("edge", "worker"))[:4] == ["worker", "edge", "worker", "edge"]
    assert fault_plan(5, ("worker", "transformer", "checkpoint")) == kill_plan(5)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_chaos_kills(tmp_path: Path) -> None:
    """The kills alone: 10 sessions for 60 s, a kill every 5 s (2 sessions on server VAD)."""
    proc, result = _chaos(tmp_path, "--sessions", "10", "--duration", "60", "--kill-every", "5", timeout=200)
    _assert_survived(proc, result, 10)
    assert result["vad_sessions"] == 2
    assert result["reattach_client"]["n"] > 0  # a client-side reattach time was measured


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chaos_with_switches(tmp_path: Path) -> None:
    """The short run plus a random switch every 2 s (an operator's, the client's own rs.switch, or a provider
    fault the policy answers) while the kills go on: still nothing lost, duplicated or miscounted, and the
    accounting follows the sessions that moved between the fakes."""
    proc, result = _chaos(tmp_path, "--sessions", "10", "--duration", "60", "--kill-every", "5",
                          "--switch-every", "2", timeout=250)
    _assert_survived(proc, result, 10)
    switches = result["switches"]
    assert switches["asked"] and switches["heard"] > 0 and switches["sessions_on_both_fakes"] > 0, switches
    assert sum(switches["edge"].values()) >= switches["heard"], switches  # every announced switch was counted
    assert result["misordered"] == 0


@pytest.mark.slow
@pytest.mark.timeout(1_200)
def test_chaos_long(tmp_path: Path) -> None:
    proc, result = _chaos(tmp_path, "--sessions", "50", "--duration", "300", "--kill-every", "10", timeout=1_100)
    _assert_survived(proc, result, 50)
    assert result["vad_sessions"] == 10


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=False, reason=(
    "found by this run, not triaged yet (docs/operations.md, Chaos): at 20 sessions on the shared 2-core machine "
    "(client loop lag p99 ~400 ms) a few transcripts miss a delta, a provider's turn count drifts, and the log "
    "and the latest upstream then miss items"))
def test_chaos_all_faults_long(tmp_path: Path) -> None:
    """Every fault kind over and over (a fault every 5 s for 4 minutes: each kind 4-5 times) under 20 sessions."""
    proc, result = _chaos(tmp_path, "--sessions", "20", "--duration", "240", "--kill-every", "5", "--faults", "all",
                          timeout=800)
    _assert_all_faults(proc, result, 20)
    assert all(f["injected"] >= 3 for f in result["faults"].values()), result["faults"]  # a few skipped: no target


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=False, reason=(
    "found by this run, not fixed yet (docs/operations.md, Chaos): with random switches on top of every fault at "
    "20 sessions (the machine overloaded, most switches the policy's latency ones) the provider's turn count "
    "drifts from the client's, transcripts miss a delta, and a session can hang after a nats restart"))
def test_chaos_all_faults_with_switches_long(tmp_path: Path) -> None:
    proc, result = _chaos(tmp_path, "--sessions", "20", "--duration", "240", "--kill-every", "5", "--faults", "all",
                          "--switch-every", "3", timeout=800)
    _assert_all_faults(proc, result, 20)
