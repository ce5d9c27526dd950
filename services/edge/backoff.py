"""The reattach retry schedule: capped exponential backoff with jitter inside a total budget. Pure.

Jitter spreads the retries of the many sessions a dead process held, so a replacement that comes up is
not hit by all of them in the same instant. "Equal jitter": at least half the capped step, so a retry
never comes back at once.
"""

from __future__ import annotations

import random

__all__ = ["BACKOFF_BASE_S", "BACKOFF_CAP_S", "backoff_delay", "next_delay"]

BACKOFF_BASE_S = 0.05
BACKOFF_CAP_S = 2.0


def backoff_delay(
    attempt: int, rng: random.Random, *, base: float = BACKOFF_BASE_S, cap: float = BACKOFF_CAP_S
) -> float:
    """The wait after failed attempt number ``attempt`` (0-based): in [step/2, step], step = min(cap, base*2^n)."""
    step = min(cap, base * 2.0 ** min(attempt, 64))
    return step / 2 + rng.uniform(0.0, step / 2)


def next_delay(attempt: int, elapsed: float, budget: float, rng: random.Random) -> float | None:
    """The wait before the next attempt, or None once ``budget`` is spent (give up). The last wait is cut
    short so that a last attempt is made when the budget ends, not a whole step before."""
    if elapsed >= budget:
        return None
    return min(backoff_delay(attempt, rng), budget - elapsed)
