"""The reattach retry schedule (services/edge/backoff.py), with a seeded random."""

from __future__ import annotations

import random

import pytest

from services.edge.backoff import BACKOFF_BASE_S, BACKOFF_CAP_S, backoff_delay, next_delay


def test_steps_double_up_to_the_cap_with_jitter_in_the_upper_half() -> None:
    rng = random.Random(7)
    for attempt, step in [(0, 0.05), (1, 0.1), (2, 0.2), (3, 0.4), (5, 1.6), (6, 2.0), (40, 2.0), (10_000, 2.0)]:
        for _ in range(50):
            assert step / 2 <= backoff_delay(attempt, rng) <= step


def test_jitter_spreads_sessions_that_retry_together() -> None:
    rng = random.Random(1)
    delays = {round(backoff_delay(6, rng), 6) for _ in range(20)}
    assert len(delays) == 20


def test_a_seeded_schedule_is_reproducible() -> None:
    first = [backoff_delay(n, random.Random(42)) for n in range(8)]
    assert first == [backoff_delay(n, random.Random(42)) for n in range(8)]


def test_the_schedule_spends_the_budget_then_gives_up() -> None:
    rng = random.Random(3)
    elapsed, attempt, waits = 0.0, 0, []
    while (delay := next_delay(attempt, elapsed, 30.0, rng)) is not None:
        waits.append(delay)
        elapsed += delay
        attempt += 1
    assert elapsed == pytest.approx(30.0)  # the last wait ends on the budget: one last attempt there
    assert waits[0] <= BACKOFF_BASE_S
    assert max(waits) <= BACKOFF_CAP_S
    assert 20 <= len(waits) <= 40  # a few fast retries, then one every 1-2 s


def test_the_last_wait_is_cut_to_the_budget_and_none_after_it() -> None:
    assert next_delay(10, 29.5, 30.0, random.Random(0)) == 0.5
    assert next_delay(0, 0.0, 0.01, random.Random(0)) == 0.01
    assert next_delay(0, 30.0, 30.0, random.Random(0)) is None
