"""The edge's limits (services/edge/limits.py): pure, time passed in."""

from __future__ import annotations

import json

from services.edge.limits import (
    TAKEOVER_CLOSE,
    TAKEOVER_REASON,
    AccountSessions,
    FloodGate,
    TokenBucket,
    frame_verdict,
    refusal_of,
)


def test_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(100.05) is False  # half a token
    assert bucket.take(100.11) is True  # ~0.1 s at 10/s: one more
    assert bucket.take(100.11) is False


def test_bucket_refills_to_the_burst_only() -> None:
    bucket = TokenBucket(rate=10, burst=2, now=0.0)
    assert bucket.take(0.0) and bucket.take(0.0)
    assert [bucket.take(60.0) for _ in range(3)] == [True, True, False]  # a minute idle: still 2


def test_bucket_clock_stepping_back_refills_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=5.0)
    assert bucket.take(5.0)
    assert bucket.take(4.0) is False
    assert bucket.take(4.05) is False


def test_flood_gate_tells_once_per_flood() -> None:
    gate = FloodGate(rate=1, burst=2, now=0.0)
    verdicts = [gate.admit(0.0) for _ in range(5)]
    assert verdicts == ["pass", "pass", "refuse", "drop", "drop"]
    assert gate.dropped == 3
    # Still flooding: the rate lets one through now and then, which does not make it a new flood.
    assert [gate.admit(0.9), gate.admit(0.9), gate.admit(1.5), gate.admit(1.6)] == ["drop", "drop", "pass", "drop"]
    assert gate.dropped == 6
    # A quiet second (no drop): the next flood is told again.
    assert [gate.admit(3.0), gate.admit(3.0), gate.admit(3.0), gate.admit(3.0)] == ["pass", "pass", "refuse", "drop"]


def test_flood_gate_off() -> None:
    gate = FloodGate(rate=0, burst=0, now=0.0)
    assert {gate.admit(0.0) for _ in range(10_000)} == {"pass"}


def test_frame_verdict_at_the_limit() -> None:
    assert frame_verdict(1024, 1024) == "pass"
    assert frame_verdict(1025, 1024) == "refuse"


def test_account_sessions() -> None:
    sessions = AccountSessions(limit=2)
    assert sessions.allows("a")
    sessions.open("a")
    sessions.open("a")
    assert sessions.allows("a") is False
    assert sessions.allows("b")  # per account
    sessions.close("a")
    assert sessions.allows("a")
    sessions.close("a")
    sessions.close("a")  # one too many: never negative
    assert sessions.held("a") == 0


def test_account_sessions_unlimited() -> None:
    sessions = AccountSessions(limit=0)
    for _ in range(1000):
        sessions.open("a")
    assert sessions.allows("a") and sessions.held("a") == 1000


def test_refusals_per_dialect() -> None:
    for dialect in ("openai_ga", "openai_beta"):
        big = refusal_of(dialect, "too_big", "frame of 2 MiB over the limit")
        assert big.close_code is None
        error = json.loads(big.frames[0])
        assert error["type"] == "error" and error["event_id"].startswith("event_rs_")
        assert (error["error"]["type"], error["error"]["code"]) == ("invalid_request_error", "frame_too_large")
        rate = json.loads(refusal_of(dialect, "rate_limited", "slow down").frames[0])
        assert rate["error"]["code"] == "rate_limit_exceeded"
    gemini = refusal_of("gemini", "too_big", "x" * 500)
    assert (gemini.frames, gemini.close_code, len(gemini.close_reason)) == ([], 1009, 123)
    assert refusal_of("gemini", "rate_limited", "slow down").close_code == 1008


def test_takeover_closes_every_dialect_with_4000() -> None:
    openai = refusal_of("openai_ga", "taken_over", TAKEOVER_REASON)
    assert json.loads(openai.frames[0])["error"]["code"] == "session_taken_over"
    assert (openai.close_code, openai.close_reason) == (TAKEOVER_CLOSE, TAKEOVER_REASON)
    gemini = refusal_of("gemini", "taken_over", TAKEOVER_REASON)
    assert (gemini.frames, gemini.close_code, gemini.close_reason) == ([], 4000, TAKEOVER_REASON)
