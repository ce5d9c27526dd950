"""The edge's switch shell against a real nats-server: signals in, decisions carried out, breaker state
shared by two edges over the bus. The reattach is the edge's; here a recorder stands in for it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from services.dev.stack import Stack
from services.edge.switching import SwitchCoordinator, SwitchTarget
from shared import bus
from shared.bus import Subjects
from shared.config import load_config

CONFIG = load_config(
    {"SWITCH_FAILURE_COUNT": "2", "RS_BREAKER_SESSIONS": "3", "RS_BREAKER_OPEN_S": "60"}, dotenv=None
)


@pytest.fixture
async def bus_url(tmp_path: Path) -> AsyncIterator[str]:
    stack = Stack(tmp_path)
    try:
        yield stack.start_nats()
    finally:
        stack.stop()


class Recorder:
    """The edge's reattach: records each switch, answers with the next worker epoch."""

    def __init__(self, nc: NATS, *, fail: bool = False) -> None:
        self.nc = nc
        self.calls: asyncio.Queue[tuple[str, SwitchTarget]] = asyncio.Queue()
        self.fail = fail

    async def __call__(self, sid: str, target: SwitchTarget) -> bool:
        await self.calls.put((sid, target))
        return not self.fail


async def signal(nc: NATS, sid: str, kind: str, **fields: object) -> None:
    await nc.publish(Subjects.signal(sid), bus.encode(bus.Signal(kind=kind, **fields)))  # type: ignore[arg-type]
    await nc.flush()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), timeout)


async def coordinator(url: str, recorder_fail: bool = False) -> tuple[NATS, SwitchCoordinator, Recorder]:
    nc = await nats.connect(url)
    recorder = Recorder(nc, fail=recorder_fail)
    coord = SwitchCoordinator(nc, CONFIG, ["openai", "gemini"], recorder)
    await coord.start()
    return nc, coord, recorder


async def test_failures_from_the_worker_switch_the_session_now(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s1", "openai", worker_epoch=1)
    await signal(nc, "s1", "failure", epoch=1, provider="openai", reason="connect")
    await signal(nc, "s1", "failure", epoch=1, provider="openai", reason="http_5xx")
    sid, target = await asyncio.wait_for(recorder.calls.get(), 5)
    assert (sid, target.provider, target.previous, target.reason) == ("s1", "gemini", "openai", "failure")
    await coord.stop()
    await nc.close()


async def test_only_a_completed_response_breaks_a_run_of_failures(bus_url: str) -> None:
    """Signals are handled in order. A failure, an answered turn (idle: completed), a failure: no switch.
    Then a first audio and a cut (idle: failed) do not break the run: the next failure switches."""
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s8", "openai", worker_epoch=1)
    for kind, reason in (("failure", "close_1011"), ("idle", "completed"), ("failure", "close_1011"), ("busy", "")):
        await signal(nc, "s8", kind, epoch=1, provider="openai", reason=reason)
    await until(lambda: coord.sessions["s8"].busy)  # the only busy: everything before it was handled
    assert recorder.calls.empty()
    await signal(nc, "s8", "turn", epoch=1, provider="openai", value_ms=100)
    await signal(nc, "s8", "idle", epoch=1, provider="openai", reason="failed")
    await until(lambda: not coord.sessions["s8"].busy)
    await signal(nc, "s8", "failure", epoch=1, provider="openai", reason="close_1011")
    _, target = await asyncio.wait_for(recorder.calls.get(), 5)
    assert (target.provider, target.reason) == ("gemini", "failure")
    await coord.stop()
    await nc.close()


async def test_signals_of_a_replaced_worker_are_ignored(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s2", "openai", worker_epoch=1)
    coord.worker_replaced("s2", 5)
    for _ in range(3):
        await signal(nc, "s2", "failure", epoch=4, provider="openai")
    await signal(nc, "s2", "stall", epoch=5, provider="openai", value_ms=2000)  # the current worker's
    _, target = await asyncio.wait_for(recorder.calls.get(), 5)
    assert target.reason == "stall"
    assert recorder.calls.empty()
    await coord.stop()
    await nc.close()


async def test_a_manual_switch_is_done_when_the_worker_says_ready(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s3", "openai", worker_epoch=1)
    request = asyncio.create_task(coord.request("s3", "gemini", "turn_end"))
    _, target = await asyncio.wait_for(recorder.calls.get(), 5)
    assert (target.provider, target.reason, target.when) == ("gemini", "manual", "turn_end")
    assert not request.done()
    await signal(nc, "s3", "ready", epoch=1, value_ms=42.0)
    outcome = await asyncio.wait_for(request, 5)
    assert outcome.ok and outcome.provider == "gemini" and outcome.gap_ms == 42.0
    # the session is on gemini now: a second request for gemini has nothing to do
    again = await coord.request("s3", "gemini", "now")
    assert again.ok and recorder.calls.empty()
    await coord.stop()
    await nc.close()


async def test_a_switch_the_worker_could_not_make_leaves_the_session_where_it_was(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s6", "openai", worker_epoch=1)
    request = asyncio.create_task(coord.request("s6", "gemini", "now"))
    await asyncio.wait_for(recorder.calls.get(), 5)
    await signal(nc, "s6", "failure", epoch=1, provider="gemini", reason="switch_failed")
    outcome = await asyncio.wait_for(request, 5)
    assert not outcome.ok and outcome.provider == "openai"
    assert coord.sessions["s6"].policy.provider == "openai"
    await coord.stop()
    await nc.close()


async def test_wait_idle_holds_until_the_worker_is_idle(bus_url: str) -> None:
    nc, coord, _ = await coordinator(bus_url)
    await coord.attach("s7", "openai", worker_epoch=1)
    await signal(nc, "s7", "busy", epoch=1)
    await until(lambda: coord.sessions["s7"].busy)
    waiting = asyncio.create_task(coord.wait_idle("s7"))
    healths: asyncio.Queue[bus.Health] = asyncio.Queue()

    async def on_health(msg: nats.aio.msg.Msg) -> None:
        await healths.put(bus.decode(msg.data, bus.Health))

    await nc.subscribe(Subjects.HEALTH, cb=on_health)
    await signal(nc, "s7", "turn", epoch=1, provider="openai", value_ms=120)  # a first audio: no health
    await signal(nc, "s7", "failure", epoch=1, provider="openai", reason="error")
    assert not (await asyncio.wait_for(healths.get(), 5)).ok  # both signals were handled...
    assert not waiting.done()  # ...and the turn end is still awaited
    await signal(nc, "s7", "idle", epoch=1, provider="openai", reason="completed")
    await asyncio.wait_for(waiting, 5)
    assert (await asyncio.wait_for(healths.get(), 5)).ok  # an answered turn: the provider's success
    await coord.stop()
    await nc.close()


async def test_the_clients_own_switch_signal_is_carried_out(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url)
    await coord.attach("s4", "gemini", worker_epoch=1)
    await signal(nc, "s4", "switch", epoch=1, provider="openai", when="now")
    _, target = await asyncio.wait_for(recorder.calls.get(), 5)
    assert (target.provider, target.previous, target.reason) == ("openai", "gemini", "manual")
    await coord.stop()
    await nc.close()


async def test_unknown_provider_and_no_worker_are_refused_and_the_session_stays(bus_url: str) -> None:
    nc, coord, recorder = await coordinator(bus_url, recorder_fail=True)
    await coord.attach("s5", "openai", worker_epoch=1)
    unknown = await coord.request("s5", "bogus", "now")
    assert not unknown.ok and "unknown provider" in unknown.error
    nobody = await coord.request("s5", "gemini", "now")
    assert not nobody.ok and nobody.provider == "openai"
    assert (await recorder.calls.get())[1].provider == "gemini"  # it was tried
    assert coord.sessions["s5"].policy.provider == "openai"
    await coord.stop()
    await nc.close()


async def test_the_breaker_travels_on_the_bus_between_edges(bus_url: str) -> None:
    nc_a, edge_a, _ = await coordinator(bus_url)
    nc_b, edge_b, _ = await coordinator(bus_url)
    for sid in ("x1", "x2", "x3"):
        await edge_a.attach(sid, "openai", worker_epoch=1)
        await signal(nc_a, sid, "stall", epoch=1, provider="openai", value_ms=2000)

    await until(lambda: edge_b.provider_for_new_session("openai") == "gemini")  # B never saw those sessions
    assert edge_b.provider_for_new_session("gemini") == "gemini"
    for coord, nc in ((edge_a, nc_a), (edge_b, nc_b)):
        await coord.stop()
        await nc.close()


async def test_an_accounts_own_fallback_order_is_the_sessions(bus_url: str) -> None:
    nc = await nats.connect(bus_url)
    recorder = Recorder(nc)
    orders = {"acme": ("azure", "gemini")}
    coord = SwitchCoordinator(
        nc, CONFIG, ["openai", "gemini", "azure"], recorder,
        fallback_for=lambda account, provider: tuple(p for p in orders.get(account, ("gemini",)) if p != provider))
    await coord.start()
    await coord.attach("a1", "openai", worker_epoch=1, account="acme")
    await coord.attach("b1", "openai", worker_epoch=1, account="other")
    for sid in ("a1", "b1"):
        await signal(nc, sid, "stall", epoch=1, provider="openai", value_ms=2000)
    targets = {sid: target.provider for sid, target in [await asyncio.wait_for(recorder.calls.get(), 5) for _ in "ab"]}
    assert targets == {"a1": "azure", "b1": "gemini"}
    await coord.stop()
    await nc.close()


async def test_without_automatic_switching_the_breaker_moves_no_new_session(bus_url: str) -> None:
    nc = await nats.connect(bus_url)
    manual_only = load_config({"RS_AUTO_SWITCH": "false", "RS_BREAKER_SESSIONS": "3"}, dotenv=None)
    coord = SwitchCoordinator(nc, manual_only, ["openai", "gemini"], Recorder(nc))
    await coord.start()
    for sid in ("m1", "m2", "m3"):
        await coord.attach(sid, "openai", worker_epoch=1)
        await signal(nc, sid, "stall", epoch=1, provider="openai", value_ms=2000)
    await until(lambda: coord.breaker.state("openai", coord.clock()) == "open")  # the fleet still knows
    assert coord.provider_for_new_session("openai") == "openai"
    await coord.stop()
    await nc.close()
