"""The chaos run (ops/chaos/run.py) as a test: concurrent SDK sessions while workers, a transformer and the
checkpoint are kill -9'd on a schedule. A short run by default; the long one is marked ``slow``.

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

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


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


@pytest.mark.timeout(240)  # 60 s of conversation plus the stack's start and the verification
def test_chaos_short(tmp_path: Path) -> None:
    """The issue's short run: 10 sessions for 60 s, a kill every 5 s (2 sessions on server VAD)."""
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
