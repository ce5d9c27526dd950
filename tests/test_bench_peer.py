"""The peer comparison's pure parts (ops/bench/peer.py): the capacity verdict and the table, on literal
windows. The measuring itself runs in tests/e2e/test_bench_peer.py."""

from __future__ import annotations

import math
from typing import Any

import pytest

from ops.bench.peer import break_reason, render_peer


def window(system: str, sessions: int, *, p50: float = 3.0, p99: float = 8.0, **over: Any) -> dict[str, Any]:
    w: dict[str, Any] = {
        "system": system, "sessions": sessions, "connected": sessions, "connect_failures": 0, "closed_early": 0,
        "frames_per_s": sessions * 50.0, "nominal_frames_per_s": sessions * 50.0, "lost_probes": 0,
        "probe_errors": [], "added_ms": {"p50": p50, "p99": p99}, "cpu_us_per_frame": 123.4, "loadavg_1m": 1.5,
        "system_ms": {"n": 40, "p50": 5.0, "p99": 10.0, "max": 12.0},
    }
    return w | over


@pytest.mark.parametrize(("over", "expected"), [
    ({}, None),
    ({"added_ms": {"p50": 3.0, "p99": 20.0}}, None),  # at the budget still passes
    ({"added_ms": {"p50": 3.0, "p99": 20.5}}, "added p99 20.5 ms > 20 ms"),
    ({"lost_probes": 2}, "2 probes unanswered"),
    ({"connected": 9, "connect_failures": 1}, "9 of 10 sessions streamed (1 failed to connect)"),
    ({"frames_per_s": 470.0}, "offered 470 frames/s of 500"),
    ({"probe_errors": ["x"]}, "probe errors ['x']"),
])
def test_break_reason(over: dict[str, Any], expected: str | None) -> None:
    assert break_reason(window("ours", 10, **over), 20.0) == expected


def test_render_peer_table_and_capacity_line() -> None:
    peer = {
        "litellm_version": "1.108.7", "budget_ms": 20.0, "seconds": 10.0,
        "rows": [{"sessions": 20, "litellm": window("litellm", 20, p50=1.18, p99=3.64),
                  "ours": window("ours", 20, p50=3.84, p99=11.82, cpu_us_per_frame=629.0)}],
        "capacity": {
            "ours": {"max_sessions_under_budget": 150, "steps": [], "broke_at": {"sessions": 200, "reason": "r"}},
            "litellm": {"max_sessions_under_budget": 400, "steps": [], "broke_at": None},
        },
    }
    text = render_peer(peer)
    assert "| 20 | 1.18 / 3.64 | 3.84 / 11.82 | 123 / 629 | 40 / 40 | 1.50 / 1.50 |" in text
    assert "ours **150 (broke at 200: r)**, LiteLLM **400 (did not break)**" in text


def test_render_peer_skipped_and_missing_numbers() -> None:
    assert "Skipped: no index" in render_peer({"skipped": "no index"})
    peer = {"budget_ms": 20.0, "rows": [{"sessions": 1, "litellm": window("litellm", 1, cpu_us_per_frame=math.nan),
                                         "ours": window("ours", 1)}],
            "capacity": {s: {"max_sessions_under_budget": 0, "steps": [], "broke_at": None}
                         for s in ("ours", "litellm")}}
    assert "| - / 123 |" in render_peer(peer)


def test_render_peer_keeps_rows_of_an_unfinished_run() -> None:
    peer = {"budget_ms": 20.0, "capacity": {}, "error": "TimeoutError: x",
            "rows": [{"sessions": 1, "litellm": window("litellm", 1), "ours": window("ours", 1)}]}
    text = render_peer(peer)
    assert "| 1 | 3.00 / 8.00 | 3.00 / 8.00 |" in text and "did not finish**: TimeoutError: x" in text
    assert "Capacity" not in text
