"""nats-server and redis-server restart under live sessions (official openai SDK as the client).

This module runs its own stack with its own nats-server and redis-server on fixed ports, so they can be
killed (-9) and started again on the same port (the JetStream directory kept).

- NATS: the stream is memory storage, so a restarted server has neither the stream nor the checkpoint's
  durable consumer; the edge and the checkpoint create them again when their connection comes back, and
  the new stream's sequence goes on after the last one in the log (items are ordered by it). Heartbeats
  cannot flow while the bus is down: the edge must not take that for the death of every instance.
- Redis: tested both ways. *saved*: ``SAVE`` before the kill, the restart loads the dump (what a
  production Redis with persistence does; the log survives, a reattach afterwards restores the whole
  conversation). *lost*: the embedded dev config persists nothing, so the restart comes back empty; the
  live session must still continue (the provider holds the conversation) and a reattach afterwards must
  get an epoch above every earlier one (fencing would otherwise drop the replacement's output).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from openai import AsyncOpenAI

from ops.chaos.run import parse_metrics
from services.dev.stack import Proc, Stack, free_port
from shared import bus
from shared import events as ev
from shared.session import session_key
from shared.store import Store

from .helpers import ACCOUNT, API_KEY, TIMEOUT_S

pytestmark = pytest.mark.e2e

NATS_OUTAGE_S = 1.5  # well over the edge's 300 ms heartbeat deadline


@dataclass
class InfraStack:
    stack: Stack
    edge_port: int
    nats_port: int
    redis_port: int
    procs: dict[str, Proc]  # services by instance id

    @property
    def nats_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    def start(self, command: str, instance: str) -> Proc:
        proc = self.stack.start_instance(command, instance)
        self.procs[instance] = proc
        return proc

    def _kill(self, name: str) -> None:
        proc = next(p for p in reversed(self.stack.procs) if p.name == name and p.alive())
        proc.kill(signal.SIGKILL)
        proc.popen.wait(5)

    def restart_nats(self, down_s: float) -> None:
        self._kill("nats")
        time.sleep(down_s)  # the outage lasts longer than the heartbeat deadline (not a synchronisation)
        self.stack.start_nats(self.nats_port)  # same port, same JetStream directory

    def restart_redis(self, *, keep_data: bool) -> None:
        self._kill("redis")
        if not keep_data:
            (self.stack.workdir / "dump.rdb").unlink(missing_ok=True)
        self.stack.start_redis(self.redis_port)  # loads dump.rdb from its --dir when there is one

    def holder(self, sid: str) -> str:
        """The worker that attached ``sid`` last, from the workers' logs (the route record in Redis may
        be gone with the data)."""
        newest: tuple[float, str] = (0.0, "")
        for instance, proc in self.procs.items():
            if not instance.startswith("wk-"):
                continue
            for line in proc.log_path.read_text().splitlines():
                if '"session attached"' in line and f'"sid": "{sid}"' in line:
                    newest = max(newest, (json.loads(line)["ts"], instance))
        assert newest[1], f"no worker attached {sid}"
        return newest[1]


@pytest.fixture(scope="module")
def infra_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InfraStack]:
    stack = Stack(tmp_path_factory.mktemp("infra-restart"))
    try:
        nats_port, redis_port = free_port(), free_port()
        stack.start_nats(nats_port)
        stack.start_redis(redis_port)
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1"})
        infra = InfraStack(stack, port, nats_port, redis_port, {})
        for command, instance in (
            ("checkpoint", "ckpt-a"), ("transformer", "tr-a"), ("provider-worker", "wk-a"),
            ("provider-worker", "wk-b"), ("edge", "edge-a"),
        ):
            infra.start(command, instance)
        yield infra
    finally:
        stack.stop()


@pytest.fixture
async def store(infra_stack: InfraStack) -> AsyncIterator[Store]:
    async with Store.connect(infra_stack.redis_url) as s:
        yield s


async def _eventually(check: Any, what: str, timeout: float = TIMEOUT_S) -> Any:
    """Poll ``check()`` (async) until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last_error: Exception | None = None
    while loop.time() < deadline:
        try:
            result = await check()
            if result:
                return result
        except Exception as exc:  # the server may still be coming back
            last_error = exc
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not within {timeout:.0f} s (last error: {last_error!r})")


async def _turn(conn: Any, text: str) -> tuple[str, str]:
    """A text turn -> (response status, transcript); error events other than warnings fail the test."""
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
            elif event.type == "response.output_audio_transcript.delta":
                transcript.append(event.delta)
            elif event.type == "response.done":
                return event.response.status or "", "".join(transcript)


@contextlib.asynccontextmanager
async def _session(infra: InfraStack, provider: str, client_sid: str) -> AsyncIterator[Any]:
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{infra.edge_port}/v1")
    async with client.realtime.connect(
        model="gpt-realtime", extra_query={"rs_core": provider, "rs_u_sessid": client_sid}
    ) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        async with asyncio.timeout(TIMEOUT_S):
            while (await conn.recv()).type != "session.updated":
                pass
        yield conn


async def _reattaches(infra: InfraStack) -> float:
    loop = asyncio.get_running_loop()
    text = await loop.run_in_executor(None, _get, f"http://127.0.0.1:{infra.edge_port}/metrics")
    return sum(v for _, v in parse_metrics(text).get("rs_reattaches_total", []))


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


async def _texts(store: Store, sid: str) -> list[str]:
    return [i.text() for i in (await store.snapshot(sid)).items if isinstance(i, ev.Message)]


async def test_nats_restart(infra_stack: InfraStack, store: Store) -> None:
    marker = uuid.uuid4().hex[:8]
    sids = {p: f"nr-{p}-{marker}" for p in ("openai", "gemini")}
    async with _session(infra_stack, "openai", sids["openai"]) as oa, _session(
        infra_stack, "gemini", sids["gemini"]
    ) as gm:
        conns = {"openai": oa, "gemini": gm}
        for provider, conn in conns.items():
            assert await _turn(conn, f"one {provider} {marker}") == ("completed", f"turn 1: one {provider} {marker}")

            async def idle(sid: str = session_key(ACCOUNT, sids[provider])) -> bool:
                return len(await _texts(store, sid)) == 2  # everything logged: the restart loses nothing

            await _eventually(idle, f"turn 1 of the {provider} session in the log")
        before = await _reattaches(infra_stack)

        await asyncio.to_thread(infra_stack.restart_nats, NATS_OUTAGE_S)

        # Everyone reconnects; the stream and the checkpoint's durable consumer exist again.
        nc = await nats.connect(infra_stack.nats_url)
        try:
            js = nc.jetstream()

            async def bound_again() -> bool:
                try:
                    await js.stream_info(bus.STREAM)
                    await js.consumer_info(bus.STREAM, bus.CHECKPOINT_CONSUMER)
                except NotFoundError:
                    return False
                return True

            await _eventually(bound_again, "stream and durable consumer re-created")
            # Every instance beats again (their subscriptions and publishes survived the reconnect).
            beats: set[str] = set()

            async def on_beat(msg: Any) -> None:
                beats.add(msg.subject.rsplit(".", 1)[1])

            sub = await nc.subscribe(bus.Subjects.HEARTBEATS, cb=on_beat)

            async def all_beat() -> bool:
                return beats >= {"ckpt-a", "tr-a", "wk-a", "wk-b"}

            await _eventually(all_beat, f"heartbeats of every instance (got {beats})")
            await sub.unsubscribe()
        finally:
            await nc.close()

        # The idle sessions continue where they were: the provider still holds turn 1.
        for provider, conn in conns.items():
            assert await _turn(conn, f"two {provider} {marker}") == ("completed", f"turn 2: two {provider} {marker}")
        # The bus outage was not taken for the death of every instance.
        assert await _reattaches(infra_stack) == before

    # The log kept all of it, in order across the stream re-creation.
    for provider, client_sid in sids.items():
        sid = session_key(ACCOUNT, client_sid)
        want = [f"one {provider} {marker}", f"turn 1: one {provider} {marker}",
                f"two {provider} {marker}", f"turn 2: two {provider} {marker}"]

        async def logged(sid: str = sid, want: list[str] = want) -> bool:
            return await _texts(store, sid) == want

        await _eventually(logged, f"log of {provider} session in order (have {await _texts(store, sid)})")

    # Queue groups are back: a new session is assigned a transformer and a worker.
    async with _session(infra_stack, "openai", f"nr-new-{marker}") as conn:
        assert await _turn(conn, f"new {marker}") == ("completed", f"turn 1: new {marker}")


@pytest.mark.parametrize("keep_data", [True, False], ids=["saved", "lost"])
async def test_redis_restart(infra_stack: InfraStack, store: Store, keep_data: bool) -> None:
    marker = uuid.uuid4().hex[:8]
    client_sid = f"rr-{marker}"
    sid = session_key(ACCOUNT, client_sid)
    async with _session(infra_stack, "openai", client_sid) as conn:
        assert await _turn(conn, f"one {marker}") == ("completed", f"turn 1: one {marker}")

        async def logged_one() -> bool:
            return len(await _texts(store, sid)) == 2

        await _eventually(logged_one, "turn 1 in the log")
        epoch_before = await store.epoch(sid)
        assert epoch_before >= 1
        if keep_data:
            await store.redis.save()
        infra_stack.restart_redis(keep_data=keep_data)

        # The session goes on: the live provider session holds the conversation either way.
        assert await _turn(conn, f"two {marker}") == ("completed", f"turn 2: two {marker}")

        # A reattach after the restart (kill -9 of the worker holding the session, respawned).
        victim = infra_stack.holder(sid)
        infra_stack.procs[victim].kill(signal.SIGKILL)
        infra_stack.procs[victim].popen.wait(5)
        await asyncio.to_thread(infra_stack.start, "provider-worker", victim)

        async def moved() -> bool:
            return await store.epoch(sid) > epoch_before

        await _eventually(moved, "an epoch above the one before the restart")
        status, transcript = await _turn(conn, f"three {marker}")
        assert status == "completed"
        if keep_data:
            # Restored from the log that survived the restart: all three turns count.
            assert transcript == f"turn 3: three {marker}"
            want = [f"one {marker}", f"turn 1: one {marker}", f"two {marker}", f"turn 2: two {marker}",
                    f"three {marker}", f"turn 3: three {marker}"]

            async def logged_all() -> bool:
                return await _texts(store, sid) == want

            await _eventually(logged_all, "the whole conversation in the log")
        else:
            # The log before the restart is gone: the replacement restores what was logged since, plus
            # what the stream still holds; how many turns the provider then counts is not defined.
            assert transcript.startswith("turn ") and transcript.endswith(f": three {marker}"), transcript
