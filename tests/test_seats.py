"""Concurrent sessions per account, fleet-wide: the lease decision (pure, literal times) and the leases in a real
Redis (services/edge/seats.py)."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis

from services.dev.stack import free_port
from services.edge.edge import Edge
from services.edge.limits import SeatDecision, seat_decision
from services.edge.seats import SEAT_KEY_PREFIX, FleetSeats
from shared.config import load_config


def test_a_new_session_is_let_in_under_the_limit_and_refused_at_it() -> None:
    assert seat_decision({"a": 110.0}, "b", 2, now=100.0) == SeatDecision(True, (), 1)
    assert seat_decision({"a": 110.0, "b": 110.0}, "c", 2, now=100.0) == SeatDecision(False, (), 2)


def test_the_same_session_again_takes_no_second_seat() -> None:
    """A resume or a takeover (same client session id) at the limit is let in: it holds a seat already."""
    assert seat_decision({"a": 110.0, "b": 110.0}, "b", 2, now=100.0) == SeatDecision(True, (), 1)


def test_a_lease_that_ran_out_no_longer_counts_and_is_dropped() -> None:
    leases = {"a": 110.0, "dead": 100.0, "older": 95.5}  # an edge killed -9: never renewed
    assert seat_decision(leases, "c", 2, now=100.0) == SeatDecision(True, ("dead", "older"), 1)
    assert seat_decision(leases, "c", 2, now=99.0) == SeatDecision(False, ("older",), 2)
    # a session whose own lease ran out is a new one again
    assert seat_decision({"a": 110.0, "b": 110.0, "c": 90.0}, "c", 2, now=100.0) == SeatDecision(False, ("c",), 2)


def test_no_limit_lets_everyone_in() -> None:
    assert seat_decision({"a": 110.0, "b": 110.0}, "c", 0, now=100.0).admit


def _account() -> str:
    return f"acct-{uuid.uuid4().hex[:10]}"


async def test_leases_in_redis_cap_the_account_across_edges(redis_client: aioredis.Redis) -> None:
    account = _account()
    edge_a, edge_b = FleetSeats(redis_client, 10.0), FleetSeats(redis_client, 10.0)  # two edges, one Redis
    assert await edge_a.acquire(account, "s1", 2, now=1_000.0)
    assert await edge_b.acquire(account, "s2", 2, now=1_000.0)
    assert not await edge_a.acquire(account, "s3", 2, now=1_001.0)
    assert not await edge_b.acquire(account, "s3", 2, now=1_001.0)
    assert await edge_b.acquire(account, "s1", 2, now=1_001.0)  # s1 reconnecting on the other edge
    await edge_a.release(account, "s1")
    assert await edge_b.acquire(account, "s3", 2, now=1_002.0)
    # edge B renews s2 and s3 until it dies (-9): then nothing renews them
    await edge_b.renew([(account, "s2"), (account, "s3")], now=1_009.0)
    assert not await edge_a.acquire(account, "s4", 2, now=1_015.0)  # renewed at 1009: live until 1019
    assert await edge_a.acquire(account, "s4", 2, now=1_019.5)  # both ran out: s4 in, the dead ones dropped
    scores = {m.decode(): s for m, s in await redis_client.zrange(SEAT_KEY_PREFIX + account, 0, -1, withscores=True)}
    assert scores == {"s4": 1_029.5}
    assert 0 < await redis_client.pttl(SEAT_KEY_PREFIX + account) <= 10_000  # the set itself goes with its leases


async def test_simultaneous_upgrades_of_one_account_never_overshoot(redis_client: aioredis.Redis) -> None:
    account = _account()
    seats = [FleetSeats(redis_client, 10.0) for _ in range(3)]
    results = await asyncio.gather(*(seats[i % 3].acquire(account, f"s{i}", 3, now=1_000.0) for i in range(12)))
    assert sum(results) == 3
    assert await redis_client.zcard(SEAT_KEY_PREFIX + account) == 3


async def test_an_unlimited_account_is_leased_too(redis_client: aioredis.Redis) -> None:
    """So a limit set later counts the sessions already open."""
    account = _account()
    seats = FleetSeats(redis_client, 10.0)
    assert await seats.acquire(account, "s1", 0, now=1_000.0)
    assert await seats.acquire(account, "s2", 0, now=1_000.0)
    assert not await seats.acquire(account, "s3", 2, now=1_001.0)


async def test_without_redis_the_edge_decides_with_its_own_count() -> None:
    """Redis not answering (nothing listens on its port): a session is neither refused nor kept waiting for it;
    the edge's own count of the account's connections decides (up to edges x limit fleet-wide meanwhile)."""
    edge = Edge(load_config({"RS_MAX_SESSIONS_PER_ACCOUNT": "1"}, dotenv=None))
    unreachable = aioredis.from_url(f"redis://127.0.0.1:{free_port()}", socket_connect_timeout=0.2)
    edge.fleet_seats = FleetSeats(unreachable, 10.0)
    try:
        assert await edge._take_seat("acct", "s1", 1)
        edge.seats.open("acct")  # the handler counts the connection that got through
        assert not await edge._take_seat("acct", "s2", 1)
    finally:
        await unreachable.aclose()
