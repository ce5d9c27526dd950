"""The edge's switch shell: feeds each session's ``SwitchPolicy`` and the fleet ``Breaker`` from the bus and
carries decisions out through the edge's worker reattach. The rules themselves are in ``switch_policy``.

Per session: the worker's signals (``Subjects.signal``) drive the policy; a decision taken at the turn end
waits for the worker's ``idle`` signal (at most ``TURN_END_WAIT_S``); the switch itself is a worker
reattach onto the target provider with the switch named in the assign request, so the new worker
restores the conversation and announces the switch to the client in order with its output.

Fleet: every edge publishes what its sessions experience on ``Subjects.health(provider)`` and folds what
all edges publish into its own breaker, so edges agree on which provider to avoid without a leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from services.edge.switch_policy import ANSWERED, Breaker, BreakerSettings, Decision, PolicySettings, SwitchPolicy
from shared import bus
from shared.bus import Subjects
from shared.config import Config
from shared.metrics import BREAKER_OPEN, SWITCH_GAP_SECONDS, SWITCHES
from shared.runtime import TaskSet

__all__ = ["SwitchCoordinator", "SwitchOutcome", "SwitchTarget"]

log = logging.getLogger(__name__)

TURN_END_WAIT_S = 30.0  # a response that never ends must not hold a switch forever
READY_WAIT_S = 10.0  # how long a switch waits for the new worker to say its upstream is ready


@dataclasses.dataclass(frozen=True, slots=True)
class SwitchTarget:
    """What the edge's reattach needs to carry a switch out."""

    provider: str
    previous: str
    reason: str
    when: str  # "now" or "turn_end"
    started_ms: int  # wall clock of the decision


@dataclasses.dataclass(frozen=True, slots=True)
class SwitchOutcome:
    ok: bool
    provider: str  # the provider serving the session afterwards
    reason: str
    gap_ms: float = 0.0
    error: str = ""


# The edge's side: start the switch (in the session's worker, or by reattaching it onto a worker of the
# target); False when it could not even start. Completion arrives as the worker's ready/failure signal.
Reattach = Callable[[str, SwitchTarget], Awaitable[bool]]


class SwitchFailed(Exception):
    pass


class _Session:
    def __init__(self, sid: str, policy: SwitchPolicy) -> None:
        self.sid = sid
        self.policy = policy
        self.busy = False
        self.idle = asyncio.Event()
        self.idle.set()
        self.worker_epoch = 0
        self.done: asyncio.Future[float] | None = None  # the switch under way: its gap (ready) or failure
        self.running: asyncio.Task[SwitchOutcome] | None = None
        self.sub: object | None = None


class SwitchCoordinator:
    def __init__(
        self, nc: NATS, config: Config, installed: Iterable[str], reattach: Reattach,
        clock: Callable[[], float] = time.monotonic,
        on_switched: Callable[[str, str], Awaitable[None]] | None = None,
        fallback_for: Callable[[str, str], tuple[str, ...]] | None = None,
    ) -> None:
        self.nc = nc
        self.installed = frozenset(installed)
        self.reattach = reattach
        self.on_switched = on_switched  # (sid, provider): the session runs on provider now
        self.fallback_for = fallback_for  # (account, provider) -> targets: an account's own order, if any
        self.clock = clock
        self.settings = PolicySettings(
            latency_threshold_ms=config.switch_latency_threshold_ms,
            failure_count=config.switch_failure_count,
            cooldown_s=config.switch_cooldown_s,
            min_dwell_s=config.switch_min_dwell_s,
            fallback=config.fallback,
            automatic=config.auto_switch,
        )
        self.breaker = Breaker(BreakerSettings(
            sessions=config.breaker_sessions, window_s=config.breaker_window_s, open_s=config.breaker_open_s))
        self.sessions: dict[str, _Session] = {}
        self._tasks = TaskSet()
        self._health_sub: object | None = None

    async def start(self) -> None:
        self._health_sub = await self.nc.subscribe(Subjects.HEALTH, cb=self._on_health)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self._health_sub.unsubscribe()  # type: ignore[union-attr]
        for sid in list(self.sessions):
            await self.detach(sid)

    # -- new sessions ---------------------------------------------------------------------------------

    def provider_for_new_session(self, wanted: str) -> str:
        """``wanted``, unless the fleet breaker keeps sessions away from it: then its first available
        fallback (a new session has no history to lose, so it goes where things work)."""
        now = self.clock()
        if not self.settings.automatic or self.breaker.available(wanted, now):
            return wanted  # RS_AUTO_SWITCH=false: sessions stay on the provider they asked for, breaker or not
        for name in self.settings.fallback.get(wanted, ()):
            if name in self.installed and self.breaker.available(name, now):
                log.info("breaker open: new session moved", extra={"from": wanted, "to": name})
                return name
        return wanted  # nowhere better: let it try (and fail in its dialect) rather than refuse here

    # -- per session ----------------------------------------------------------------------------------

    async def attach(self, sid: str, provider: str, worker_epoch: int, *, account: str = "") -> None:
        settings = self.settings
        if self.fallback_for is not None and account:
            names = self.installed | set(settings.fallback)
            settings = dataclasses.replace(settings, fallback={p: self.fallback_for(account, p) for p in names})
        session = _Session(sid, SwitchPolicy(settings, provider, now=self.clock()))
        session.worker_epoch = worker_epoch
        self.sessions[sid] = session
        session.sub = await self.nc.subscribe(Subjects.signal(sid), cb=functools.partial(self._on_signal, session))

    async def detach(self, sid: str) -> None:
        session = self.sessions.pop(sid, None)
        if session is None:
            return
        if session.running is not None:
            session.running.cancel()
        with contextlib.suppress(Exception):
            await session.sub.unsubscribe()  # type: ignore[union-attr]

    def worker_replaced(self, sid: str, epoch: int) -> None:
        """The edge moved the session's worker (failover or switch): older workers' signals are stale."""
        session = self.sessions.get(sid)
        if session is not None:
            session.worker_epoch = max(session.worker_epoch, epoch)
            session.busy = False
            session.idle.set()

    async def request(self, sid: str, provider: str, when: str, *, reason: str = "manual") -> SwitchOutcome:
        """A manual switch (client control or admin call); returns once it is done (or refused)."""
        session = self.sessions.get(sid)
        if session is None:
            return SwitchOutcome(False, "", reason, error="session not held by this edge")
        if provider not in self.installed:
            return SwitchOutcome(False, session.policy.provider, reason, error=f"unknown provider {provider!r}")
        if session.running is not None and not session.running.done():
            return SwitchOutcome(False, session.policy.provider, reason, error="a switch is already under way")
        decision = session.policy.manual(provider, "now" if when == "now" else "turn_end", now=self.clock())
        if decision is None:
            return SwitchOutcome(True, provider, reason)  # already there
        return await self._start(session, decision)

    # -- signals --------------------------------------------------------------------------------------

    async def _on_signal(self, session: _Session, msg: Msg) -> None:
        try:
            signal = bus.decode(msg.data, bus.Signal)
        except Exception:
            log.warning("undecodable signal", extra={"sid": session.sid})
            return
        if signal.kind == "switch":
            # The client's own control: carried out in a task (it may wait for the turn end).
            self._tasks.spawn(self._client_request(session, signal))
            return
        if signal.kind == "ready":
            if session.done is not None and not session.done.done():
                session.done.set_result(signal.value_ms)
            return
        if signal.kind == "failure" and signal.reason == "switch_failed":
            if session.done is not None and not session.done.done():
                session.done.set_exception(SwitchFailed(signal.provider))
            return
        if signal.epoch < session.worker_epoch:
            return  # from a worker the session has left
        now = self.clock()
        provider = signal.provider or session.policy.provider
        available = self._available_for(now)
        decision: Decision | None = None
        if signal.kind == "busy":
            session.busy = True
            session.idle.clear()
        elif signal.kind == "idle":
            session.busy = False
            session.idle.set()
            if signal.reason in ANSWERED:  # how the response ended: only an answer is the provider's success
                await self._publish_health(provider, session.sid, ok=True)
            session.policy.response_ended(signal.reason)
        elif signal.kind == "turn":  # a first audio: latency only (the response may still be cut)
            decision = session.policy.turn(signal.value_ms, now=now, available=available)
        elif signal.kind == "failure":
            await self._publish_health(provider, session.sid, ok=False)
            decision = session.policy.failure(now=now, available=available)
        elif signal.kind == "stall":
            await self._publish_health(provider, session.sid, ok=False)
            decision = session.policy.stall(now=now, available=available)
        if decision is not None:
            log.info("switch decided", extra={
                "sid": session.sid, "reason": decision.reason, "from": session.policy.provider,
                "to": decision.target, "when": decision.when})
            self._tasks.spawn(self._run(session, decision))

    async def _client_request(self, session: _Session, signal: bus.Signal) -> None:
        outcome = await self.request(session.sid, signal.provider.lower(), signal.when)
        if not outcome.ok:
            log.info("client switch not done", extra={"sid": session.sid, "error": outcome.error})

    def _available_for(self, now: float) -> Callable[[str], bool]:
        return lambda name: name in self.installed and self.breaker.available(name, now)

    # -- carrying a decision out ----------------------------------------------------------------------

    async def _run(self, session: _Session, decision: Decision) -> None:
        await self._start(session, decision)

    async def _start(self, session: _Session, decision: Decision) -> SwitchOutcome:
        session.running = asyncio.current_task()  # type: ignore[assignment]
        try:
            return await self._carry_out(session, decision)
        finally:
            session.running = None

    async def wait_idle(self, sid: str) -> None:
        """Until the session's worker has no response open (at most TURN_END_WAIT_S)."""
        session = self.sessions.get(sid)
        if session is not None and session.busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.idle.wait(), TURN_END_WAIT_S)

    async def _carry_out(self, session: _Session, decision: Decision) -> SwitchOutcome:
        previous = session.policy.provider
        started = time.perf_counter()
        target = SwitchTarget(decision.target, previous, decision.reason, decision.when, int(time.time() * 1000))
        session.done = asyncio.get_running_loop().create_future()
        try:
            if not await self.reattach(session.sid, target):
                raise SwitchFailed(f"no {decision.target} worker available")
            gap_ms = await asyncio.wait_for(session.done, TURN_END_WAIT_S + READY_WAIT_S)
        except (SwitchFailed, TimeoutError) as exc:
            session.policy.abandoned()
            error = str(exc) or f"{decision.target} not ready in time"
            log.warning("switch abandoned", extra={"sid": session.sid, "to": decision.target, "error": error})
            return SwitchOutcome(False, previous, decision.reason, error=error)
        finally:
            session.done = None
        session.policy.switched(decision.target, now=self.clock())
        if self.on_switched is not None:
            await self.on_switched(session.sid, decision.target)
        SWITCHES.labels(decision.reason, previous, decision.target).inc()
        SWITCH_GAP_SECONDS.observe(gap_ms / 1000)
        log.info("switched", extra={
            "sid": session.sid, "reason": decision.reason, "from": previous, "to": decision.target,
            "duration_ms": round((time.perf_counter() - started) * 1000, 1), "gap_ms": round(gap_ms, 1)})
        return SwitchOutcome(True, decision.target, decision.reason, gap_ms=gap_ms)

    # -- fleet health ---------------------------------------------------------------------------------

    async def _publish_health(self, provider: str, sid: str, *, ok: bool) -> None:
        with contextlib.suppress(Exception):
            health = bus.Health(provider=provider, session=sid, ok=ok)
            await self.nc.publish(Subjects.health(provider), bus.encode(health))

    async def _on_health(self, msg: Msg) -> None:
        try:
            health = bus.decode(msg.data, bus.Health)
        except Exception:
            return
        now = self.clock()
        if health.ok:
            if self.breaker.success(health.provider, now=now):
                BREAKER_OPEN.labels(health.provider).set(0)
                log.info("breaker closed", extra={"provider": health.provider})
        elif self.breaker.failure(health.provider, health.session, now=now):
            BREAKER_OPEN.labels(health.provider).set(1)
            log.warning("breaker open", extra={"provider": health.provider})
