"""Concurrent sessions per account across the fleet: leases in Redis (docs/entry-points.md, "Limits").

``rs:seats:<account>`` is a sorted set: member = a client session id, score = when its lease runs out (wall-clock
seconds). The upgrade takes a lease with a check-and-add under WATCH (the decision is ``limits.seat_decision``);
the edge renews the leases of the sessions it holds every ``lease_s / 3``; a session that ends gives its lease
back. An edge killed -9 renews nothing: its leases stop counting ``lease_s`` later. Edges' clocks must agree to
well within ``lease_s`` (NTP does).

While Redis cannot be asked (down, failing over), each edge decides alone with its own count
(``limits.AccountSessions``): an account may then get up to (edges x limit) until Redis answers again; its
leases are re-added at the next renewal.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from services.edge.limits import seat_decision

__all__ = ["SEAT_KEY_PREFIX", "FleetSeats"]

SEAT_KEY_PREFIX = "rs:seats:"
_ATTEMPTS = 20  # WATCH retries: only upgrades of the same account at the same instant collide


def _key(account: str) -> str:
    return SEAT_KEY_PREFIX + account


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class FleetSeats:
    def __init__(self, redis: aioredis.Redis, lease_s: float) -> None:
        self.redis = redis
        self.lease_s = lease_s

    async def acquire(self, account: str, member: str, limit: int, now: float) -> bool:
        """Takes (or renews) ``member``'s lease if the account is under ``limit`` (0: unlimited); False: refused."""
        key = _key(account)
        until = now + self.lease_s
        if not limit:  # nothing to check; still leased, so a limit set later counts these sessions
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zadd(key, {member: until})
                pipe.pexpire(key, int(self.lease_s * 1000))
                await pipe.execute()
            return True
        for _ in range(_ATTEMPTS):
            async with self.redis.pipeline(transaction=True) as pipe:
                try:
                    await pipe.watch(key)
                    leases = {_text(m): float(s) for m, s in await pipe.zrange(key, 0, -1, withscores=True)}
                    decision = seat_decision(leases, member, limit, now)
                    pipe.multi()
                    if decision.expired:
                        pipe.zrem(key, *decision.expired)
                    if decision.admit:
                        pipe.zadd(key, {member: until})
                        pipe.pexpire(key, int(self.lease_s * 1000))
                    await pipe.execute()
                    return decision.admit
                except WatchError:
                    continue  # another upgrade of this account changed the set: decide again
        return False  # the account's upgrades keep colliding: refused, the client retries

    async def renew(self, held: list[tuple[str, str]], now: float) -> None:
        """Pushes the leases of the sessions this edge holds (account, member) ``lease_s`` ahead. A lease that ran
        out meanwhile (Redis was away) is added again: the session is live."""
        if not held:
            return
        until = now + self.lease_s
        async with self.redis.pipeline(transaction=False) as pipe:
            for account, member in held:
                pipe.zadd(_key(account), {member: until})
            for account in {account for account, _ in held}:
                pipe.zremrangebyscore(_key(account), "-inf", now)
                pipe.pexpire(_key(account), int(self.lease_s * 1000))
            await pipe.execute()

    async def release(self, account: str, member: str) -> None:
        await self.redis.zrem(_key(account), member)
