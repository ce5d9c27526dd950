"""High availability on one machine: a 3-node nats-server cluster and Redis with a replica and Sentinel.

The stack is the one ``rtswitch dev --ha`` starts (``Stack.start_nats_cluster``, ``Stack.start_redis_ha``);
every process gets ``NATS_URL`` as the list of the three nodes and ``REDIS_SENTINELS``. Live sessions (the
official openai SDK, turns back to back) run while:

- one NATS node is killed with -9 (the session stream's leader: the hardest one), then started again;
- the Redis primary is killed with -9, Sentinel promotes the replica, the old primary comes back as a
  replica of the new one.

Each time every session must go on (every turn answered, in order), the conversation log in Redis must hold
every item exactly once and in order, and the longest silence a client heard between two audio deltas
around the kill is measured and printed next to the same measure before it.

The default suite runs a short version (2 sessions, one kill of each kind); ``-m slow`` kills every NATS
node in turn and fails Redis over twice (back to the first primary) under more sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import nats
import pytest
import redis.asyncio as aioredis
from openai import AsyncOpenAI

from ops.chaos.run import parse_metrics
from services.dev.stack import Proc, Stack, free_port, wait_port
from shared import bus
from shared import events as ev
from shared.session import session_key
from shared.store import Store

from .helpers import ACCOUNT, API_KEY, TIMEOUT_S

pytestmark = pytest.mark.e2e

SENTINEL_MASTER = "mymaster"
PAUSE_S = 0.2  # between a session's turns


@dataclass
class HaStack:
    stack: Stack
    edge_port: int
    procs: dict[str, Proc]
    metrics_ports: dict[str, int]  # instance -> the port of its /metrics

    def proc(self, name: str) -> Proc:
        return next(p for p in reversed(self.stack.procs) if p.name == name)

    def kill(self, name: str) -> float:
        """kill -9; returns the monotonic time of the kill."""
        proc = self.proc(name)
        assert proc.alive(), f"{name} is not running"
        at = time.monotonic()
        proc.kill(signal.SIGKILL)
        proc.popen.wait(5)
        return at

    def restart_nats(self, name: str) -> None:
        node = next(n for n in self.stack.nats_cluster if n.name == name)
        self.stack.start_nats_node(node)  # same ports, same store directory: it rejoins and catches up

    def restart_redis(self, name: str, replica_of: int) -> None:
        # Started as a replica of the promoted one (Sentinel would reconfigure it so anyway): never two
        # primaries at once, whatever the timing of Sentinel's next look.
        self.stack.start_redis_node(name, self.stack.redis_nodes[name], replica_of=replica_of)


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaStack]:
    stack = Stack(tmp_path_factory.mktemp("ha"))
    for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
        stack.env.pop(key, None)
    try:
        stack.start_nats_cluster()
        stack.start_redis_ha(master=SENTINEL_MASTER)
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1"})
        procs = {}
        metrics: dict[str, int] = {}
        for command, instance in (
            ("checkpoint", "ckpt-a"), ("transformer", "tr-a"), ("provider-worker", "wk-a"),
            ("provider-worker", "wk-b"), ("edge", "edge-a"),
        ):
            metrics[instance] = port if command == "edge" else free_port()  # the edge: on its client port
            env = {} if command == "edge" else {"RS_METRICS_PORT": str(metrics[instance])}
            procs[instance] = stack.start_instance(command, instance, env=env)
        wait_port(port)
        yield HaStack(stack, port, procs, metrics)
    finally:
        stack.stop()


@contextlib.asynccontextmanager
async def sentinel_store(ha: HaStack) -> AsyncIterator[Store]:
    async with Store.connect("", sentinels=ha.stack.env["REDIS_SENTINELS"], sentinel_master=SENTINEL_MASTER) as s:
        yield s


async def _eventually(check: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    while loop.time() < deadline:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:  # a server may still be coming back
            last_error = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout:.0f} s (last error: {last_error!r})")


@dataclass
class Talker:
    """One live session doing text turns back to back; every audio delta's arrival time is kept."""

    provider: str
    client_sid: str
    marker: str
    turns: list[tuple[str, str]] = field(default_factory=list)  # (asked, transcript heard)
    audio_at: list[float] = field(default_factory=list)
    failure: str = ""

    @property
    def sid(self) -> str:
        return session_key(ACCOUNT, self.client_sid)

    def expected_log(self) -> list[str]:
        return [text for asked, heard in self.turns for text in (asked, heard)]

    def gap_around(self, at: float, window_s: float = 15.0) -> tuple[float, float]:
        """(longest silence between two audio deltas in the ``window_s`` before ``at``, longest one that
        ends in the ``window_s`` from ``at`` on)."""
        times = self.audio_at
        before = [b - a for a, b in itertools.pairwise(times) if at - window_s <= a and b < at]
        after = [b - a for a, b in itertools.pairwise(times) if at <= b <= at + window_s]
        return max(before, default=0.0), max(after, default=0.0)


async def _turn(conn: Any, talker: Talker, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()
    transcript: list[str] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            if event.type == "error":
                assert event.error.code == "unsupported_field", event
            elif event.type == "response.output_audio.delta":
                talker.audio_at.append(time.monotonic())
            elif event.type == "response.output_audio_transcript.delta":
                transcript.append(event.delta)
            elif event.type == "response.done":
                assert event.response.status == "completed", event.response
                heard = "".join(transcript)
                assert heard == f"turn {len(talker.turns) + 1}: {text}", (talker.turns, heard)
                talker.turns.append((text, heard))
                return


async def _talk(ha: HaStack, talker: Talker, stop: asyncio.Event) -> None:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{ha.edge_port}/v1")
    try:
        async with client.realtime.connect(
            model="gpt-realtime", extra_query={"rs_core": talker.provider, "rs_u_sessid": talker.client_sid}
        ) as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            async with asyncio.timeout(TIMEOUT_S):
                while (await conn.recv()).type != "session.updated":
                    pass
            while not stop.is_set():
                await _turn(conn, talker, f"{talker.provider} {talker.marker} n{len(talker.turns) + 1}")
                with contextlib.suppress(TimeoutError):  # pacing: a caller's think time, not a synchronisation
                    await asyncio.wait_for(stop.wait(), PAUSE_S)
    except BaseException as exc:  # the test reports it with the session's name
        talker.failure = f"{type(exc).__name__}: {exc}"
        raise


async def _reattaches(ha: HaStack) -> float:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{ha.edge_port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    return sum(v for _, v in parse_metrics(await asyncio.to_thread(get)).get("rs_reattaches_total", []))


async def _reconnects(ha: HaStack, metric: str) -> float:
    """``metric`` summed over every process of the stack."""
    def get(port: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    total = 0.0
    for port in ha.metrics_ports.values():
        total += sum(v for _, v in parse_metrics(await asyncio.to_thread(get, port)).get(metric, []))
    return total


def _our_clients_on(ha: HaStack, node: str) -> int:
    """How many of our processes are connected to ``node`` (its /connz names them)."""
    http_port = next(n.http_port for n in ha.stack.nats_cluster if n.name == node)
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/connz?limit=1024", timeout=5) as resp:
        connz = json.loads(resp.read())
    ours = {"edge", "transformer", "provider-worker", "checkpoint"}
    return sum(1 for c in connz.get("connections") or [] if c.get("name") in ours)


async def _nats_node(ha: HaStack, role: str) -> str:
    """``leader``: the session stream's leader; ``follower``: a node leading neither the stream nor the
    checkpoint's consumer (every node holds a replica of both)."""
    nc = await nats.connect(servers=ha.stack.nats_url.split(","))
    try:
        js = nc.jetstream()
        stream = await js.stream_info(bus.STREAM)
        consumer = await js.consumer_info(bus.STREAM, bus.CHECKPOINT_CONSUMER)
    finally:
        await nc.close()
    assert stream.config.num_replicas == 3, stream.config
    assert stream.cluster is not None and stream.cluster.leader and consumer.cluster is not None
    if role == "leader":
        return stream.cluster.leader
    leaders = {stream.cluster.leader, consumer.cluster.leader}
    return next(n.name for n in ha.stack.nats_cluster if n.name not in leaders)


async def _primary_port(ha: HaStack) -> int:
    host, port = ha.stack.env["REDIS_SENTINELS"].split(",")[0].split(":")
    sentinel = aioredis.Redis(host=host, port=int(port))
    try:
        addr = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER)
        return int(addr[1])
    finally:
        await sentinel.aclose()


async def _under_load(
    ha: HaStack, talkers: list[Talker], rounds: list[tuple[str, Any]], *, turns_between: int = 2
) -> None:
    """``talkers`` talk while each ``(label, fault)`` of ``rounds`` runs: ``fault()`` kills something (returns
    the kill time) and brings it back. Checks that every session went on and logged everything once."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(_talk(ha, t, stop)) for t in talkers]
    kills: list[tuple[str, float, list[int]]] = []
    try:
        for label, fault in rounds:
            done = [len(t.turns) for t in talkers]

            async def progressed(done: list[int] = done) -> bool:
                for task in tasks:
                    if task.done():
                        task.result()  # a failed session fails the test here, with its error
                return all(len(t.turns) >= n + turns_between for t, n in zip(talkers, done, strict=True))

            await _eventually(progressed, f"{turns_between} turns of every session before {label}", 60)
            at = await fault()
            kills.append((label, at, [len(t.turns) for t in talkers]))
        after = [len(t.turns) for t in talkers]

        async def went_on() -> bool:
            for task in tasks:
                if task.done():
                    task.result()
            return all(len(t.turns) >= n + turns_between for t, n in zip(talkers, after, strict=True))

        await _eventually(went_on, "every session answering after the last fault", 60)
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    failures = [f"{t.client_sid}: {t.failure or r}" for t, r in zip(talkers, results, strict=True) if r is not None]
    assert not failures, "sessions that did not go on:\n" + "\n".join(failures)

    for label, at, _ in kills:
        gaps = [t.gap_around(at) for t in talkers]
        print(f"\n[ha] {label}: longest silence between audio deltas per session, before -> around the kill: "
              + ", ".join(f"{t.provider} {b * 1000:.0f} -> {a * 1000:.0f} ms" for t, (b, a) in zip(talkers, gaps,
                                                                                                 strict=True)))

    # Every item of every session in the log exactly once, in order, across the faults.
    async with sentinel_store(ha) as store:
        for talker in talkers:
            want = talker.expected_log()

            async def logged(talker: Talker = talker, want: list[str] = want) -> list[str] | None:
                texts = [i.text() for i in (await store.snapshot(talker.sid)).items if isinstance(i, ev.Message)]
                return texts if texts == want else None

            try:
                await _eventually(logged, f"the log of {talker.client_sid}", 30)
            except AssertionError:
                have = [i.text() for i in (await store.snapshot(talker.sid)).items if isinstance(i, ev.Message)]
                dupes = {x for x in have if have.count(x) > 1}
                missing = [x for x in want if x not in have]
                raise AssertionError(f"{talker.client_sid}: missing {missing}, duplicated {dupes}") from None


async def test_nats_node_and_redis_primary_killed_under_live_sessions(ha: HaStack) -> None:
    await _run_rounds(ha, ["openai", "gemini"], nats_nodes=["follower"], redis_failovers=1)


@pytest.mark.slow
async def test_three_nats_kills_and_two_redis_failovers(ha: HaStack) -> None:
    await _run_rounds(ha, ["openai", "gemini"] * 3, nats_nodes=["follower"] * 3, redis_failovers=2, turns_between=3)


@pytest.mark.slow
async def test_nats_stream_leader_killed_loses_nothing(ha: HaStack) -> None:
    await _run_rounds(ha, ["openai", "gemini"], nats_nodes=["leader"], redis_failovers=0)


async def _run_rounds(
    ha: HaStack, providers: list[str], *, nats_nodes: list[str], redis_failovers: int, turns_between: int = 2
) -> None:
    reattaches_before = await _reattaches(ha)
    marker = uuid.uuid4().hex[:6]
    talkers = [Talker(p, f"ha-{p}-{i}-{marker}", marker) for i, p in enumerate(providers)]

    def nats_round(role: str) -> tuple[str, Any]:
        async def fault() -> float:
            node = await _nats_node(ha, role)
            on_it = await asyncio.to_thread(_our_clients_on, ha, node)
            bus_before = await _reconnects(ha, "rs_bus_reconnects_total")
            at = ha.kill(node)
            print(f"\n[ha] nats: killed {node} (the stream's {role}), {on_it} of our processes on it")
            # The node stays down while the sessions take turns (awaited by the next round or the end),
            # then comes back; restarting it here at once would hide a client that never moved off it.
            for _ in range(turns_between):
                await _eventually(_turns_since(talkers, at), "turns with the node down", 60)
            await asyncio.to_thread(ha.restart_nats, node)

            async def replicas_current() -> bool:
                nc = await nats.connect(servers=ha.stack.nats_url.split(","))
                try:
                    info = await nc.jetstream().stream_info(bus.STREAM)
                    peers = info.cluster.replicas if info.cluster else []
                    return len(peers or []) == 2 and all(p.current for p in peers or [])
                finally:
                    await nc.close()

            await _eventually(replicas_current, f"{node} back and its stream replica current", 60)
            # Every process that was on the node counted its reconnect (rs_bus_reconnects_total).
            moved = await _reconnects(ha, "rs_bus_reconnects_total") - bus_before
            assert moved >= on_it, f"{on_it} processes were on {node}, {moved:.0f} bus reconnects counted"
            return at

        return (f"kill -9 a nats node (the stream's {role})", fault)

    def redis_round(lagging: bool) -> tuple[str, Any]:
        async def fault() -> float:
            old = await _primary_port(ha)
            name = next(n for n, p in ha.stack.redis_nodes.items() if p == old)
            redis_before = await _reconnects(ha, "rs_redis_reconnects_total")
            refolds_before = await _reconnects(ha, "rs_checkpoint_refolds_total")
            at = await _kill_primary_ahead_of_replica(ha, name) if lagging else ha.kill(name)

            async def promoted() -> int:
                port = await _primary_port(ha)
                return port if port != old else 0

            new = await _eventually(promoted, "Sentinel promoting the replica", 60)
            print(f"\n[ha] redis: {name} (:{old}) killed, Sentinel promoted :{new} after "
                  f"{time.monotonic() - at:.2f} s")
            await _eventually(_turns_since(talkers, at), "turns on the promoted primary", 60)
            # Commands that hit the dead primary were retried (how many depends on timing: none when no command
            # was in flight; printed, not asserted — the turns above and the exact log below are the contract).
            retried = await _reconnects(ha, "rs_redis_reconnects_total") - redis_before
            if lagging:
                # The batch whose WAIT the kill interrupted goes to the promoted primary again (once the
                # checkpoint's retries reach it: the sessions may be faster).
                async def refolded() -> float:
                    return await _reconnects(ha, "rs_checkpoint_refolds_total") - refolds_before

                await _eventually(refolded, "the checkpoint folding the interrupted batch again", 20)
            print(f"[ha] redis: {retried:.0f} commands retried across the failover, "
                  f"{await _reconnects(ha, 'rs_checkpoint_refolds_total') - refolds_before:.0f} checkpoint "
                  "batches folded again")
            await asyncio.to_thread(ha.restart_redis, name, new)

            async def in_sync() -> bool:
                # The next failover may promote this one: it must hold what the primary has first.
                node = aioredis.Redis(port=ha.stack.redis_nodes[name])
                primary = aioredis.Redis(port=new)
                try:
                    info = await node.info("replication")
                    offset = (await primary.info("replication"))["master_repl_offset"]
                finally:
                    await node.aclose()
                    await primary.aclose()
                return bool(info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")
                            and info.get("slave_repl_offset", 0) >= offset - 10_000)

            await _eventually(in_sync, f"{name} back as a replica in sync with :{new}", 60)
            return at

        return ("kill -9 the redis primary" + (" ahead of its replica" if lagging else ""), fault)

    # The first Redis round kills the primary while its replica lags (the case the checkpoint's WAIT is for).
    rounds = [nats_round(n) for n in nats_nodes] + [redis_round(i == 0) for i in range(redis_failovers)]
    await _under_load(ha, talkers, rounds, turns_between=turns_between)
    print(f"\n[ha] turns per session: {[len(t.turns) for t in talkers]}; edge reattaches during the run: "
          f"{await _reattaches(ha) - reattaches_before:.0f}")


async def _kill_primary_ahead_of_replica(ha: HaStack, primary: str) -> float:
    """kill -9 the Redis primary right after the checkpoint folded a batch the replica does not have: the
    replica is stopped (SIGSTOP, for less than Sentinel's down-after: it stays a candidate for promotion) and
    the primary drops its link (what it writes next stays in its own backlog) until the checkpoint notes a
    new stream position on the primary or WAITs for the replica (``Store.settle``); then the primary dies
    and the replica goes on. Replication being asynchronous, such a batch would be gone after the promotion
    had the checkpoint acked it on the primary's word alone."""
    replica = next(n for n in ha.stack.redis_nodes if n != primary)
    direct = aioredis.Redis(port=ha.stack.redis_nodes[primary])

    async def position() -> int:
        return int(await direct.get("rs:stream:last") or 0)

    try:
        ha.proc(replica).kill(signal.SIGSTOP)
        try:
            await direct.execute_command("CLIENT", "KILL", "TYPE", "replica")
            before = await position()  # read after the link is gone: a batch noted later is one the replica lacks

            async def folded() -> bool:
                # A batch noted since, or one being confirmed (a WAIT now cannot be: no replica is linked).
                waiting = any(c.get("cmd") == "wait" and "b" in c.get("flags", "") for c in await direct.client_list())
                return waiting or await position() > before

            await _eventually(folded, "a checkpoint batch on the primary while its replica is cut off", 5)
            at = ha.kill(primary)
        finally:
            ha.proc(replica).kill(signal.SIGCONT)
    finally:
        await direct.aclose()
    print(f"\n[ha] redis: killed {primary} right after a checkpoint batch its replica {replica} had not taken")
    return at


def _turns_since(talkers: list[Talker], at: float) -> Any:
    """A check: every session heard audio after ``at`` and completed a turn since this check was made."""
    start = [len(t.turns) for t in talkers]

    async def check() -> bool:
        return all(len(t.turns) > n and t.audio_at and t.audio_at[-1] > at for t, n in zip(talkers, start,
                                                                                        strict=True))

    return check
