"""``rtswitch bench``: the bench as a subcommand. The same tables on stdout and the same JSON as
``python -m ops.bench.run`` (it runs it), its progress lines on stderr stamped with the elapsed time."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def test_rtswitch_bench_prints_the_tables_json_and_progress(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "services.cli", "bench", "--phases", "latency", "--sessions", "2", "--seconds", "1.5",
         "--warmup", "0.5", "--turn-ms", "400", "--json", str(out), "--workdir", str(tmp_path / "stack")],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["latency"], report.keys()
    progress = proc.stderr.splitlines()
    assert progress and all(re.match(r"\[bench \d\d:\d\d\] ", line) for line in progress), progress[:5]
    assert re.match(r"\[bench \d\d:\d\d\] bench finished \(exit 0\)", progress[-1])
    assert "latency" in proc.stdout.lower() and "|" in proc.stdout  # the bench's tables (markdown)


def test_rtswitch_bench_help_is_the_bench_s() -> None:
    proc = subprocess.run([sys.executable, "-m", "services.cli", "bench", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and "--phases" in proc.stdout and "--sessions" in proc.stdout
