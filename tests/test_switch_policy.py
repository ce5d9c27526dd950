"""Switch policy and fleet breaker: literal signals, time passed in."""

from __future__ import annotations

import dataclasses

import pytest

from services.edge.switch_policy import (
    Breaker,
    BreakerSettings,
    Decision,
    PolicySettings,
    SwitchPolicy,
    parse_fallback,
)
from shared.config import ConfigError, load_config

SETTINGS = PolicySettings(latency_threshold_ms=500, failure_count=3, cooldown_s=60, min_dwell_s=20)


def policy(provider: str = "openai", **overrides: object) -> SwitchPolicy:
    settings = dataclasses.replace(SETTINGS, **overrides)  # type: ignore[arg-type]
    return SwitchPolicy(settings, provider, now=0.0)


def test_latency_switches_after_exactly_n_slow_turns_and_not_before() -> None:
    p = policy()
    assert p.turn(501, now=1) is None
    assert p.turn(900, now=2) is None
    assert p.turn(600, now=3) == Decision("gemini", "latency", "turn_end")


def test_a_fast_turn_resets_the_slow_count() -> None:
    p = policy()
    p.turn(800, now=1)
    p.turn(800, now=2)
    assert p.turn(500, now=3) is None  # at the threshold is not over it
    assert p.turn(800, now=4) is None
    assert p.turn(800, now=5) is None
    assert p.turn(800, now=6) is not None


def test_failures_switch_now_after_n_consecutive() -> None:
    p = policy()
    assert p.failure(now=1) is None
    assert p.failure(now=2) is None
    assert p.failure(now=3) == Decision("gemini", "failure", "now")


def test_an_answered_turn_breaks_a_failure_run() -> None:
    p = policy()
    p.failure(now=1)
    p.failure(now=2)
    p.turn(100, now=3)
    p.response_ended("completed")
    assert p.failure(now=4) is None


@pytest.mark.parametrize(("status", "breaks"), [
    ("completed", True), ("incomplete", True), ("failed", False), ("cancelled", False), ("", False)])
def test_only_an_answer_breaks_a_failure_run(status: str, breaks: bool) -> None:
    p = policy()
    p.failure(now=1)
    p.failure(now=2)
    p.response_ended(status)
    assert (p.failure(now=3) is None) is breaks


def test_a_first_audio_alone_does_not_break_a_failure_run() -> None:
    """A provider that drops every response right after its first audio: each drop is a failure, and the
    first audio before it (a fast turn) is not an answer; the run goes on and the session is moved."""
    p = policy()
    assert p.turn(100, now=1) is None
    assert p.failure(now=1.1) is None
    assert p.turn(120, now=2) is None
    assert p.failure(now=2.1) is None
    assert p.turn(90, now=3) is None
    assert p.failure(now=3.1) == Decision("gemini", "failure", "now")


def test_the_latency_rule_still_reads_first_audio_of_cut_responses() -> None:
    p = policy()
    for t in (1, 2):
        assert p.turn(900, now=t) is None
        assert p.failure(now=t + 0.1) is None
        p.response_ended("completed")  # a re-ask was answered
    assert p.turn(900, now=3) == Decision("gemini", "latency", "turn_end")


def test_one_stall_switches_now() -> None:
    assert policy().stall(now=1) == Decision("gemini", "stall", "now")


def test_one_decision_at_a_time() -> None:
    p = policy()
    assert p.stall(now=1) is not None
    assert p.stall(now=2) is None
    assert p.failure(now=2) is None


def test_no_switch_back_inside_the_cooldown_no_flapping() -> None:
    p = policy()
    assert p.stall(now=10) == Decision("gemini", "stall", "now")
    p.switched("gemini", now=10.2)
    # gemini fails at once: openai is in its cool-down, so nothing to switch to
    assert p.stall(now=11) is None
    for t in (12, 13, 14):
        assert p.failure(now=t) is None
    # after the cool-down openai may take it again
    assert p.stall(now=10.2 + 60 + 0.1) == Decision("openai", "stall", "now")


def test_latency_waits_the_dwell_time_after_a_switch() -> None:
    p = policy(fallback={"openai": ("gemini",), "gemini": ("azure",)})
    p.switched("gemini", now=100)
    for t in (101, 102, 103, 104):
        assert p.turn(900, now=t) is None  # slow, but within min_dwell_s of the switch
    assert p.turn(900, now=121) == Decision("azure", "latency", "turn_end")


def test_alternating_faults_never_flap() -> None:
    p = policy()
    decisions = []
    now = 0.0
    for _ in range(40):  # a slow turn, a failure, a good turn... forever
        now += 1
        for outcome in (p.turn(900, now=now), p.failure(now=now), p.turn(100, now=now + 0.5)):
            if outcome is not None:
                decisions.append(outcome)
                p.switched(outcome.target, now=now)
        p.response_ended("completed")  # the good turn was answered
    assert decisions == []


def test_manual_is_obeyed_despite_cooldown_but_not_to_the_current_provider() -> None:
    p = policy()
    p.switched("gemini", now=5)
    assert p.manual("gemini", "now", now=6) is None
    assert p.manual("openai", "turn_end", now=6) == Decision("openai", "manual", "turn_end")


def test_abandoned_switch_counts_afresh() -> None:
    p = policy()
    p.stall(now=1)
    p.abandoned()
    assert p.provider == "openai"
    assert p.failure(now=2) is None


def test_automatic_off_leaves_only_manual() -> None:
    p = policy(automatic=False)
    assert p.stall(now=1) is None
    assert p.manual("gemini", "now", now=1) == Decision("gemini", "manual", "now")


def test_unavailable_targets_are_skipped_in_fallback_order() -> None:
    p = policy(fallback={"openai": ("azure", "gemini")})
    assert p.stall(now=1, available=lambda name: name != "azure") == Decision("gemini", "stall", "now")


def test_parse_fallback() -> None:
    order = parse_fallback("openai=gemini,azure; gemini=OPENAI")
    assert order["openai"] == ("gemini", "azure")
    assert order["gemini"] == ("openai",)
    assert order["azure"] == ("openai", "gemini")  # default kept
    for bad in ("openai", "openai=", "openai=openai", "=gemini"):
        with pytest.raises(ValueError):
            parse_fallback(bad)


# -- breaker -------------------------------------------------------------------------------------

BREAKER = BreakerSettings(sessions=3, window_s=10, open_s=30)


def test_breaker_opens_on_distinct_sessions_within_the_window() -> None:
    b = Breaker(BREAKER)
    assert not b.failure("openai", "s1", now=0)
    assert not b.failure("openai", "s1", now=1)  # the same session twice counts once
    assert not b.failure("openai", "s2", now=2)
    assert b.failure("openai", "s3", now=3)
    assert b.state("openai", 3) == "open"
    assert not b.available("openai", 4)
    assert b.available("gemini", 4)


def test_breaker_window_expires_old_failures() -> None:
    b = Breaker(BREAKER)
    b.failure("openai", "s1", now=0)
    b.failure("openai", "s2", now=1)
    assert not b.failure("openai", "s3", now=12)
    assert b.state("openai", 12) == "closed"


def test_breaker_half_open_lets_one_trial_and_closes_on_success() -> None:
    b = Breaker(BREAKER)
    for n, sid in enumerate(("a", "b", "c")):
        b.failure("openai", sid, now=n)
    assert b.state("openai", 40) == "half_open"
    assert b.available("openai", 40)
    assert not b.available("openai", 40.1)  # one trial at a time
    assert b.success("openai", now=41)
    assert b.state("openai", 41) == "closed"
    assert b.available("openai", 41)


def test_breaker_half_open_failure_reopens() -> None:
    b = Breaker(BREAKER)
    for n, sid in enumerate(("a", "b", "c")):
        b.failure("openai", sid, now=n)
    assert b.available("openai", 40)
    assert b.failure("openai", "d", now=41)
    assert b.state("openai", 41) == "open"
    assert b.state("openai", 41 + 30) == "half_open"


def test_policy_uses_the_breaker_and_a_half_open_trial_is_not_wasted_on_cooldown() -> None:
    b = Breaker(BREAKER)
    for n, sid in enumerate(("a", "b", "c")):
        b.failure("gemini", sid, now=n)
    p = policy()
    assert p.stall(now=5, available=lambda name: b.available(name, 5)) is None  # gemini's breaker is open
    assert p.stall(now=40, available=lambda name: b.available(name, 40)) == Decision("gemini", "stall", "now")


def test_config_reads_the_switch_settings() -> None:
    config = load_config({"RS_FALLBACK": "openai=azure,gemini", "RS_AUTO_SWITCH": "false"}, dotenv=None)
    assert config.fallback["openai"] == ("azure", "gemini")
    assert config.auto_switch is False
    with pytest.raises(ConfigError, match="RS_FALLBACK"):
        load_config({"RS_FALLBACK": "openai=openai"}, dotenv=None)
