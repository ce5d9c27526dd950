"""Edge: holds client sockets, authenticates, attaches sessions, forwards frames, serves HTTP.

Per connection: resolve the route (services.edge.routing), record the session and bump its epoch in Redis,
subscribe to the session's ``cout``, ask a transformer and then a worker to attach (queue-group
requests), then forward client frames to ``cin`` and ``cout`` frames to the client. Nothing reaches
the bus before authentication passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import http
import json
import logging
import random
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

import msgspec
import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.edge import web
from services.edge.backoff import next_delay
from services.edge.http_admin import HttpRequest, HttpResponse, serve_http
from services.edge.http_front import CLIENT_SECRETS_PATHS, client_secrets, front_connection, plain_response
from services.edge.limits import TAKEOVER_REASON, AccountSessions, Fault, FloodGate, frame_verdict, refusal_of
from services.edge.liveness import PROBE_TIMEOUT_S, Liveness, Outcome, Probe
from services.edge.resume import (
    GEMINI_SETUP_COMPLETE,
    RECENT_S,
    RESUME_GRACE_S,
    Batch,
    Delivery,
    ResumeMerge,
    covers,
    incarnation,
    resume_notice,
)
from services.edge.routing import Route, RouteError, model_choice, resolve, session_id_or_none
from services.edge.seats import FleetSeats
from services.edge.switching import SwitchCoordinator, SwitchTarget
from shared import bus
from shared.accounts import AccountBook, AccountStore
from shared.auth import Authenticator, AuthError
from shared.bus import Subjects
from shared.codecs.refusals import Refusal, read_gemini_setup, refusal
from shared.config import Config
from shared.metrics import (
    ASSIGN_SECONDS,
    PROBES,
    REATTACH_GAVE_UP,
    REATTACH_SECONDS,
    REATTACHES,
    REFUSALS,
    SESSIONS,
    frame_counter,
    observe_hop,
)
from shared.providers import installed_providers
from shared.runtime import TaskSet, instance_id
from shared.session import Dialect, SessionMeta, session_key
from shared.store import Store

__all__ = ["Edge"]

log = logging.getLogger(__name__)

ASSIGN_TIMEOUT_S = 2.0
ASSIGN_ATTEMPTS = 4
FIRST_FRAME_TIMEOUT_S = 30.0
# Frames are read up to this size (or RS_MAX_FRAME_BYTES, if larger) so that one over the limit is answered
# in the dialect and the call goes on; OpenAI documents 15 MiB as the largest audio append. Larger ones end
# the connection with 1009 (the WebSocket library's answer) before they are buffered whole.
READ_CEILING_BYTES = 16 * 1024 * 1024


class AssignError(Exception):
    pass


SEAT_TIMEOUT_S = 1.0  # a seat lease not answered by Redis in this long: this edge's own count decides
WATCHDOG_INTERVAL_S = 0.05  # how often the liveness machine is asked what is due
# A member whose last beat is older than this is not kept for a resuming connection (a fresh one is asked).
KEEP_FRESH_S = 1.0
RESUME_READ_S = 3.0  # the longest a resume's stream reads may take (the client waits for them)
ABNORMAL_CLOSURE = 1006  # what the WebSocket library reports for a connection that ended without a close frame


@dataclasses.dataclass(frozen=True, slots=True)
class _Kept:
    """The running members a resuming connection takes on (instead of attaching new ones)."""

    provider: str
    transformer: tuple[str, str]  # (instance, boot)
    worker: tuple[str, str]
    transformer_epoch: int  # what the transformer stamps on cout (its newest message in the stream)
    worker_epoch: int


class _Live:
    """One client connection held by this edge: its socket, route and epochs."""

    def __init__(self, meta: SessionMeta, ws: ServerConnection, epoch: int) -> None:
        self.meta = meta
        self.ws = ws
        self.epoch = epoch  # latest epoch of the session
        self.transformer_epoch = epoch  # cout from an older epoch comes from a replaced transformer
        self.worker_epoch = epoch
        self.delivered_down = (0, 0)  # newest provider output (worker epoch, down seq) sent to the client
        self.transformer = ""
        self.worker = ""
        self.closed = False
        self.taken_over = False  # another connection has the session now: nothing more is sent here
        self.taken = asyncio.Event()  # set with taken_over
        self.keep_members = False  # the connection that took over runs on this session's members: no close
        self.merge: ResumeMerge | None = None  # a resuming connection (rs_resume): replay + live, once each
        self.send_lock = asyncio.Lock()


class Edge:
    name = "edge"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = instance_id("edge", config.instance_id)
        self.accounts = AccountBook(config.accounts)  # ACCOUNTS, then (ENABLE_DB) Redis: see _watch_accounts
        self.auth = Authenticator(self.accounts.secrets(), max_token_s=config.token_max_s)
        self.installed = frozenset(installed_providers())
        self.nc: NATS | None = None
        self.gate: bus.OutageGate | None = None  # session traffic held over a bus outage (bus.OutageGate)
        self.store: Store | None = None
        self.server: Server | None = None
        self.live = 0
        self.sessions: dict[str, _Live] = {}
        self.liveness = Liveness()  # who holds our sessions and whether they live (monotonic time)
        self.switching: SwitchCoordinator | None = None
        self.worker_providers: dict[str, tuple[str, ...]] = {}  # worker instance -> providers it serves
        self._tasks = TaskSet()
        self._reconnects = 0
        # Sessions per account: fleet-wide leases in Redis; this edge's own count decides while Redis is away.
        self.seats = AccountSessions(config.max_sessions_per_account)
        self.fleet_seats: FleetSeats | None = None
        self.leases: dict[tuple[str, str], int] = {}  # (account, client session id) -> connections here
        self.holders: dict[str, _Live] = {}  # session -> the newest connection holding it here (takeover)

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        self.nc, self.store = nc, store
        self.gate = bus.OutageGate(nc)
        await bus.ensure_stream(nc, first_seq=await store.stream_floor())
        self._reconnects = nc.stats["reconnects"]
        tls: ssl.SSLContext | None = None
        if self.config.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.tls_cert, self.config.tls_key or None)
        beats = await nc.subscribe(Subjects.HEARTBEATS, cb=self._on_heartbeat)
        self.switching = SwitchCoordinator(
            nc, self.config, self.installed, self._carry_switch, on_switched=self._switched,
            fallback_for=lambda account, provider: self.accounts.fallback_for(account, provider, self.config.fallback))
        await self.switching.start()
        switch_requests = await nc.subscribe(
            Subjects.edge_switch(self.instance), cb=self._tasks.each_in_a_task(self._on_switch_command))
        takeovers = await nc.subscribe(Subjects.edge_takeover(self.instance), cb=self._on_takeover)
        watchdog = asyncio.create_task(self._watchdog())
        self.fleet_seats = FleetSeats(store.redis, self.config.session_lease_s)
        renewals = asyncio.create_task(self._renew_leases())
        accounts = await self._start_accounts(store)
        async with contextlib.AsyncExitStack() as admin, serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            create_connection=front_connection(self._front_http),  # plain HTTP (POST too) answered first
            max_size=max(self.config.max_frame_bytes, READ_CEILING_BYTES),
            # Off by default: audio is base64 noise, deflate costs CPU for little gain (docs/decisions.md,
            # measured in docs/bench.md).
            compression="deflate" if self.config.client_compression == "deflate" else None,
            ssl=tls,
            ping_interval=20,
            ping_timeout=20,
        ) as server:
            self.server = server
            scheme = "wss" if tls else "ws"
            print(f"edge listening on {scheme}://{self.config.host}:{self.port}", flush=True)
            if self.config.admin_port is not None:
                # Operators keep /metrics and /healthz off the client-facing port (no session counts or
                # internals to the internet), and the switch API (a POST with a body) lives here.
                listener = await serve_http(self.config.host, self.config.admin_port, self._admin_http)
                admin.push_async_callback(_close_server, listener)
                print(f"edge admin on http://{self.config.host}:{self.config.admin_port}", flush=True)
            try:
                yield
            finally:
                watchdog.cancel()
                renewals.cancel()
                if accounts is not None:
                    accounts.cancel()
                await self.switching.stop()
                for sub in (beats, switch_requests, takeovers):
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()

    # -- accounts ---------------------------------------------------------------------------------

    async def _start_accounts(self, store: Store) -> asyncio.Task[None] | None:
        """ENABLE_DB: the database's accounts loaded before the port opens, then followed."""
        if not self.config.enable_db:
            return None
        accounts = AccountStore(store.redis)
        await self._reload_accounts(accounts)
        return asyncio.create_task(self._watch_accounts(accounts))

    async def _reload_accounts(self, accounts: AccountStore) -> None:
        found, version = await accounts.load()
        self.accounts.load(found, version)
        self.auth.replace(self.accounts.secrets())
        log.info("accounts loaded", extra={"accounts": len(found), "version": version})

    async def _watch_accounts(self, accounts: AccountStore) -> None:
        """A GET of the version every RS_ACCOUNTS_REFRESH_S; a change (add, rotate, disable...) reloads."""
        while True:
            await asyncio.sleep(self.config.accounts_refresh_s)  # a poll period, not a synchronisation
            try:
                if await accounts.version() != self.accounts.version:
                    await self._reload_accounts(accounts)
            except Exception as exc:  # Redis away: keep the accounts we have, try again next period
                log.warning("accounts reload failed", extra={"error": repr(exc)})

    # -- HTTP and upgrade checks -----------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if "upgrade" not in request.headers.get("Connection", "").lower():
            if self.config.admin_port is not None:  # served on the admin port only
                return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
            return await self._admin_request(connection, request)
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        try:
            route = resolve(request.path, headers, self.auth, self.installed, now=time.time())
        except RouteError as exc:
            REFUSALS.labels(str(exc.status)).inc()
            log.info("refused", extra={"status": exc.status, "reason": exc.reason})
            return connection.respond(exc.status, exc.reason + "\n")
        reconnect = session_key(route.account, route.client_session_id) in self.holders  # a takeover: no new seat
        own = self.accounts.limits_for(route.account).max_sessions  # the account's record wins over the default
        limit = self.config.max_sessions_per_account if own is None else own
        if not reconnect and not await self._take_seat(route.account, route.client_session_id, limit):
            REFUSALS.labels("429").inc()
            log.info("refused", extra={"status": 429, "reason": "too many sessions", "account": route.account})
            return connection.respond(
                http.HTTPStatus.TOO_MANY_REQUESTS, f"too many concurrent sessions for this account (limit {limit})\n")
        connection.rs_route = route  # type: ignore[attr-defined]
        return None

    async def _take_seat(self, account: str, member: str, limit: int) -> bool:
        """The fleet-wide check-and-add of a seat lease (services/edge/seats.py); this edge's own count while
        Redis cannot answer (a session must not wait on it)."""
        if self.fleet_seats is not None:
            try:
                return await asyncio.wait_for(
                    self.fleet_seats.acquire(account, member, limit, time.time()), SEAT_TIMEOUT_S)
            except Exception as exc:
                log.warning("seat lease unavailable, this edge's count decides", extra={"error": repr(exc)})
        return self.seats.allows(account, limit)

    async def _renew_leases(self) -> None:
        """Every lease_s / 3: the seats of the sessions held here stay leased (an edge gone -9 renews nothing)."""
        assert self.fleet_seats is not None
        while True:
            await asyncio.sleep(self.config.session_lease_s / 3)  # a renewal period, not a synchronisation
            try:
                await self.fleet_seats.renew(list(self.leases), time.time())
            except Exception as exc:  # Redis away: the next period adds them again
                log.warning("seat lease renewal failed", extra={"error": repr(exc)})

    async def _give_seat_back(self, account: str, member: str) -> None:
        assert self.fleet_seats is not None
        try:
            await self.fleet_seats.release(account, member)
        except Exception as exc:  # Redis away: the lease runs out by itself
            log.warning("seat lease release failed", extra={"error": repr(exc)})

    async def _admin_request(self, connection: ServerConnection, request: Request) -> Response:
        handler = _HTTP.get(request.path.split("?", 1)[0])
        if handler is None or "upgrade" in request.headers.get("Connection", "").lower():
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        return await handler(self, connection)

    async def _front_http(self, request: HttpRequest, connection: ServerConnection) -> Response:
        """Plain HTTP on the client port (services/edge/http_front.py): token minting, then the GETs."""
        if request.path in CLIENT_SECRETS_PATHS:
            return await client_secrets(
                request, self.auth, self.config, installed=self.installed, now=time.time())
        if self.config.admin_port is not None:  # the GETs are served on the admin port only
            return plain_response(404, "not found\n")
        if request.method != "GET":
            return plain_response(405, "method not allowed\n")
        handler = _HTTP.get(request.path)
        return plain_response(404, "not found\n") if handler is None else await handler(self, connection)

    async def _health(self) -> tuple[int, dict[str, Any]]:
        assert self.nc is not None and self.store is not None
        redis_ok = await self.store.ping()
        body = {
            "status": "ok" if (self.nc.is_connected and redis_ok) else "degraded",
            "instance": self.instance,
            "sessions": self.live,
            "nats": "connected" if self.nc.is_connected else "disconnected",
            "redis": "ok" if redis_ok else "unavailable",
        }
        return (http.HTTPStatus.OK if body["status"] == "ok" else http.HTTPStatus.SERVICE_UNAVAILABLE), body

    async def _healthz(self, connection: ServerConnection) -> Response:
        return _json_response(*await self._health())

    async def _metrics(self, connection: ServerConnection) -> Response:
        return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST)]), generate_latest())

    # -- the operator port ------------------------------------------------------------------------

    async def _admin_http(self, request: HttpRequest) -> HttpResponse:
        if request.method == "GET" and request.path == "/metrics":
            return HttpResponse(200, generate_latest(), CONTENT_TYPE_LATEST)
        if request.method == "GET" and request.path == "/healthz":
            status, body = await self._health()
            return _json_http(status, body)
        session, _, action = request.path.removeprefix("/admin/sessions/").rpartition("/")
        if request.path.startswith("/admin/sessions/") and action == "switch" and session:
            if request.method != "POST":
                return _json_http(405, {"error": "POST only"})
            return await self._admin_switch(request, session)
        return HttpResponse(404, b"not found\n")

    async def _admin_switch(self, request: HttpRequest, client_session_id: str) -> HttpResponse:
        """``POST /admin/sessions/<client session id>/switch`` {"provider", "when"}: answered once done."""
        assert self.nc is not None and self.store is not None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer":
                raise AuthError(401, "missing bearer token")
            account = self.auth.check_api_key(token)
        except AuthError as exc:
            return _json_http(exc.status, {"error": exc.reason})
        try:
            order = msgspec.json.decode(request.body or b"{}", type=_SwitchBody)
        except msgspec.ValidationError as exc:
            return _json_http(400, {"error": str(exc)})
        except msgspec.DecodeError:
            return _json_http(400, {"error": "body must be JSON: {\"provider\": ..., \"when\": ...}"})
        provider = order.provider.lower()
        if provider not in self.installed:
            return _json_http(400, {"error": f"unknown provider {order.provider!r}"})
        sid = session_key(account, client_session_id)
        command = bus.SwitchCommand(sid=sid, provider=provider, when=order.when)
        if sid in self.sessions:
            result = await self._switch_here(command)
        else:
            edge = await self.store.session_edge(sid)
            if not edge:
                return _json_http(404, {"error": "no such session"})
            try:
                reply = await self.nc.request(Subjects.edge_switch(edge), bus.encode(command), timeout=SWITCH_REQUEST_S)
                result = bus.decode(reply.data, bus.SwitchResult)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                return _json_http(404, {"error": "session not live on any edge"})
        if not result.ok:
            return _json_http(409 if result.error != "session not held by this edge" else 404, {
                "error": result.error, "provider": result.provider})
        return _json_http(200, {
            "provider": result.provider, "reason": result.reason, "gap_ms": round(result.gap_ms, 1)})

    async def _switch_here(self, command: bus.SwitchCommand) -> bus.SwitchResult:
        assert self.switching is not None
        outcome = await self.switching.request(command.sid, command.provider, command.when)
        return bus.SwitchResult(
            ok=outcome.ok, provider=outcome.provider, reason=outcome.reason, gap_ms=outcome.gap_ms, error=outcome.error)

    async def _on_switch_command(self, msg: Msg) -> None:
        """Another edge took an operator's switch call for a session this edge holds."""
        command = bus.decode(msg.data, bus.SwitchCommand)
        result = await self._switch_here(command)
        with contextlib.suppress(Exception):
            await msg.respond(bus.encode(result))

    # -- sessions --------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        route: Route = ws.rs_route  # type: ignore[attr-defined]
        # Counted from the upgrade on: a Gemini connection that never sends its setup holds a seat too.
        lease = (route.account, route.client_session_id)
        self.seats.open(route.account)
        self.leases[lease] = self.leases.get(lease, 0) + 1
        try:
            await self._handle_route(ws, route)
        finally:
            self.seats.close(route.account)
            self.leases[lease] -= 1
            if not self.leases[lease]:
                del self.leases[lease]
                # A connection taken over gives no seat back: the session goes on on another connection.
                if self.fleet_seats is not None and not getattr(ws, "rs_taken_over", False):
                    self._tasks.spawn(self._give_seat_back(*lease))

    async def _handle_route(self, ws: ServerConnection, route: Route) -> None:
        first: bytes | None = None
        provider = route.provider
        model = route.model
        client_session_id = route.client_session_id
        if route.dialect == "gemini":
            # Gemini clients speak first (setup); its model may choose the provider.
            try:
                raw = await asyncio.wait_for(ws.recv(), FIRST_FRAME_TIMEOUT_S)
            except (TimeoutError, ConnectionClosed):
                await ws.close(1008, "setup expected")
                return
            first = raw.encode() if isinstance(raw, str) else raw
            if frame_verdict(len(first), self.config.max_frame_bytes) != "pass":
                end = refusal_of("gemini", "too_big", self._too_big(len(first)))
                await ws.close(end.close_code or 1009, end.close_reason)
                return
            try:
                setup = read_gemini_setup(first)
            except RecursionError:  # nested too deeply to read: the codec closes it as invalid JSON
                setup = read_gemini_setup(b"{}")
            by_model: str | None = None
            if setup.model:
                by_model, model = model_choice(setup.model, self.installed)
            # Gemini-native resumption: our handles are session ids (see GeminiClientCodec). Only when the
            # client named no session otherwise; the key still decides the account.
            handle = session_id_or_none(setup.resumption_handle)
            if route.minted and handle:
                client_session_id = handle
            provider = provider or by_model  # rs_core / X-RS-Core and the path prefix come first
        provider = provider or self.accounts.provider_for(route.account) or self.config.default_provider
        if self.switching is not None:
            provider = self.switching.provider_for_new_session(provider)  # the fleet breaker may say no
        meta = SessionMeta(
            sid=session_key(route.account, client_session_id),
            account=route.account,
            client_session_id=client_session_id,
            dialect=route.dialect,
            provider=provider,
            model=model,
            seed=route.seed,
            notices=route.notices,
        )
        self.live += 1
        SESSIONS.labels("edge").set(self.live)
        try:
            await self._run_session(ws, meta, first, route.resume)
        finally:
            self.live -= 1
            SESSIONS.labels("edge").set(self.live)

    async def _run_session(
        self, ws: ServerConnection, meta: SessionMeta, first: bytes | None, resume: int | None = None
    ) -> None:
        assert self.nc is not None and self.store is not None and self.gate is not None
        nc, sid, outage = self.nc, meta.sid, self.gate
        kept: _Kept | None = None
        if resume is None:
            holder = await self.store.session_edge(sid)  # read before open_session names this edge
        else:
            record = await self.store.session_record(sid)  # read before open_session rewrites it
            holder = record.get("edge") or None
            kept = await self._members_to_keep(sid, record)
            if kept is not None:
                meta = msgspec.structs.replace(meta, provider=kept.provider)
        epoch = await self.store.open_session(meta, edge=self.instance)
        live = _Live(meta, ws, epoch)
        if resume is not None:
            # A resuming Gemini connection gets setupComplete from the edge at once (the SDK drops any other
            # first message); the transformer's own, if a new one answers the setup, is dropped.
            gemini = meta.dialect == "gemini"
            live.merge = ResumeMerge(resume, drop_once=GEMINI_SETUP_COMPLETE if gemini else None)
        await self._take_over(live, holder, members_kept=kept is not None)
        if kept is not None and (await self.store.session_record(sid)).get("route_released") == "1":
            kept = None  # the old edge told them to go just before our takeover reached it: new members
        if kept is not None:
            live.transformer, live.worker = kept.transformer[0], kept.worker[0]
            live.transformer_epoch, live.worker_epoch = kept.transformer_epoch, kept.worker_epoch
        elif holder:
            # The members serving the session's previous connection: an edge killed (-9) never told them it
            # ended, and left there they would serve this one too (every input translated and sent upstream
            # twice). A close below this epoch lets them go; the members assigned next are at this epoch.
            # Members a resume keeps are not closed: they go on serving this connection.
            await nc.publish(Subjects.ctl(sid), bus.encode(bus.Control(kind="close", epoch=epoch - 1)))
        log.info("session open", extra={
            "sid": sid, "epoch": epoch, "dialect": meta.dialect, "provider": meta.provider, "resume": resume,
            "kept": kept is not None})
        cout = await nc.subscribe(Subjects.cout(sid), cb=functools.partial(self._on_cout, live))
        try:
            # What the client missed is read before new members (if any) add to the stream: their frames
            # reach the merge live, and must not pass for history that covers the client's seq.
            missed = await self._read_missed(sid, resume) if resume is not None else []
            if kept is not None:
                members = {"transformer": kept.transformer, "worker": kept.worker}
                worker_epoch = kept.worker_epoch
            else:
                started = time.perf_counter()
                request = bus.encode(bus.AssignRequest(
                    meta=meta, epoch=epoch, reply_to_edge=self.instance, seq_floor=resume or 0))
                try:
                    transformer = await self._assign(Subjects.ASSIGN_TRANSFORMER, request)
                    worker = await self._assign(Subjects.assign_worker(meta.provider), request)
                except AssignError as exc:
                    await self._refuse_in_dialect(None, ws, meta.dialect, "service_unavailable", str(exc))
                    return
                live.transformer, live.worker = transformer.instance, worker.instance
                self.worker_providers[worker.instance] = tuple(worker.providers)  # before its first beat reaches us
                ASSIGN_SECONDS.observe(time.perf_counter() - started)
                members = {
                    "transformer": (transformer.instance, transformer.boot), "worker": (worker.instance, worker.boot)}
                worker_epoch = epoch
            self.sessions[sid] = live
            self.liveness.attach(sid, members, time.monotonic())
            if kept is None:
                await self.store.set_route(
                    sid, transformer=live.transformer, worker=live.worker, epoch=str(epoch), released="0")
            if self.switching is not None:
                await self.switching.attach(sid, meta.provider, worker_epoch, account=meta.account)
            if live.merge is not None:
                await self._send_missed(live, live.merge, missed)
            # cin seq is monotonic across reconnects and reattaches: the connection's epoch in the high bits.
            # The transformer stamps each up envelope with the cin seq that produced it, so the stream tells
            # a replacement exactly which client frames were already turned into canonical events.
            seq = epoch << 32
            if first is not None and kept is None:  # a kept transformer has the session's setup already
                seq += 1
                await outage.publish(Subjects.cin(sid), bus.encode(bus.ClientIn(live.epoch, seq, first, False)))
            rate = self.accounts.limits_for(meta.account).frames_per_s  # the account's own limit, if it has one
            rate = self.config.rate_limit_fps if rate is None else rate
            gate = FloodGate(rate, self.config.rate_burst, time.monotonic())
            limit = self.config.max_frame_bytes
            async for message in ws:
                data = message.encode() if isinstance(message, str) else message
                # Limits before the bus: a flood or an oversized frame costs this connection, not the
                # transformer and worker its neighbours share (docs/entry-points.md, "Limits").
                verdict = gate.admit(time.monotonic())
                if verdict != "pass":
                    if verdict == "refuse":
                        log.warning("rate limited", extra={"sid": sid, "dropped": gate.dropped})
                        if await self._refuse_frame(live, "rate_limited", (
                                f"Too many events: at most {rate:g} per second (burst "
                                f"{self.config.rate_burst}); events over the limit are dropped.")):
                            break
                    continue
                if frame_verdict(len(data), limit) != "pass":
                    log.info("frame too large", extra={"sid": sid, "bytes": len(data), "limit": limit})
                    if await self._refuse_frame(live, "too_big", self._too_big(len(data))):
                        break
                    continue
                seq += 1
                frame = bus.ClientIn(live.epoch, seq, data, not isinstance(message, str))
                await outage.publish(Subjects.cin(sid), bus.encode(frame))
                frame_counter("edge", "in").inc()
        except ConnectionClosed:
            pass
        finally:
            live.closed = True
            if self.sessions.get(sid) is live:
                del self.sessions[sid]
                self.liveness.detach(sid)
                if self.switching is not None:
                    await self.switching.detach(sid)
            with contextlib.suppress(Exception):
                await cout.unsubscribe()
            # Members are told the client left in a task of their own: a dropped connection gives the client
            # RESUME_GRACE_S to come back (rs_resume) first, and the handler (and its seat) ends now.
            self._tasks.spawn(self._release(live))

    async def _release(self, live: _Live) -> None:
        """The connection ended: tell the session's members the client left (``close``), unless a connection
        that took the session over runs on them. A connection that ended without a close frame (TCP
        dropped, a network change) waits RESUME_GRACE_S for such a takeover first."""
        assert self.nc is not None and self.store is not None
        sid = live.meta.sid
        try:
            if live.ws.close_code == ABNORMAL_CLOSURE and not live.taken_over:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(live.taken.wait(), RESUME_GRACE_S)
        finally:
            if self.holders.get(sid) is live:
                del self.holders[sid]
        if live.keep_members:
            log.info("session closed, members kept", extra={"sid": sid, "epoch": live.epoch})
            return
        if not live.taken_over:
            # A later rs_resume must not take on members told to go (see _members_to_keep).
            with contextlib.suppress(Exception):
                await self.store.set_route(sid, released="1")
        with contextlib.suppress(Exception):
            await self.nc.publish(Subjects.ctl(sid), bus.encode(bus.Control(kind="close", epoch=live.epoch)))
        log.info("session closed", extra={"sid": sid, "epoch": live.epoch})

    # -- resume (rs_resume) -----------------------------------------------------------------------

    async def _members_to_keep(self, sid: str, record: dict[str, str]) -> _Kept | None:
        """The session's transformer and worker, when both still run it: the record names them, they were
        not told the client left, they beat, and the stream has the transformer's newest cout (its epoch).
        Then the resuming connection takes them on and the response in flight goes on."""
        assert self.nc is not None
        transformer, worker = record.get("route_transformer", ""), record.get("route_worker", "")
        provider = record.get("provider", "")
        if not (transformer and worker and provider) or record.get("route_released") == "1":
            return None
        now = time.monotonic()
        t_key = incarnation(self.liveness.beats, transformer, now, KEEP_FRESH_S)
        w_key = incarnation(self.liveness.beats, worker, now, KEEP_FRESH_S)
        if t_key is None or w_key is None:
            return None
        try:
            async with asyncio.timeout(RESUME_READ_S):
                newest = await bus.last_in_stream(self.nc, Subjects.cout(sid))
        except Exception:
            log.warning("cout lookup failed", extra={"sid": sid}, exc_info=True)
            return None
        if newest is None:
            return None
        last = bus.decode(newest[0], bus.ClientOut)
        return _Kept(provider, t_key, w_key, last.epoch, last.down[0] or last.epoch)

    async def _read_missed(self, sid: str, after: int) -> list[Batch]:
        """The session's cout in the stream: the last RECENT_S, or the whole window when that does not
        reach back to the client's seq."""
        batches = await self._read_cout(sid, RECENT_S)
        if not covers(after, batches):
            batches = await self._read_cout(sid, None)
        return batches

    async def _send_missed(self, live: _Live, merge: ResumeMerge, batches: list[Batch]) -> None:
        """Send what the client missed (``batches`` after its seq), then the live frames held meanwhile;
        from then on live frames go straight through the merge (_on_cout)."""
        sid, after = live.meta.sid, merge.after
        # The provider output the client already has: a transformer replaced later re-sends only what
        # came after it (AssignRequest.delivered_down).
        had = [batch.down for batch in batches if batch.first and batch.first <= after]
        live.delivered_down = max([live.delivered_down, *had])
        async with live.send_lock:
            if merge.drop_once is not None:
                await self._send_delivery(live, Delivery(frames=[merge.drop_once]))
            replay = merge.replayed(batches)
            if merge.gap:
                log.info("resume older than the window", extra={"sid": sid, "after": after, "now": merge.after})
                if live.meta.notices:
                    replay.frames.append(resume_notice(
                        live.meta.dialect, after, merge.after, f"event_rs_edge_{uuid.uuid4().hex[:20]}"))
            await self._send_delivery(live, replay)
            held = merge.finish()
            await self._send_delivery(live, held)
        log.info("resumed", extra={"sid": sid, "after": after, "replayed": len(replay.frames),
                                   "held": len(held.frames), "last": merge.after})

    async def _read_cout(self, sid: str, since_s: float | None) -> list[Batch]:
        assert self.nc is not None
        try:
            read = await bus.replay_seq(self.nc, Subjects.cout(sid), since_s=since_s, max_s=RESUME_READ_S)
        except Exception:
            log.exception("cout replay failed", extra={"sid": sid})
            return []
        outs = [bus.decode(data, bus.ClientOut) for _, data in read]
        return [_batch(out) for out in outs]

    async def _send_delivery(self, live: _Live, delivery: Delivery) -> None:
        """Send under ``live.send_lock`` (held by the caller)."""
        try:
            for frame in delivery.frames:
                await live.ws.send(frame)
            if delivery.close is not None:
                await live.ws.close(*delivery.close)
        except ConnectionClosed:
            pass
        live.delivered_down = max(live.delivered_down, delivery.down)
        frame_counter("edge", "out").inc(len(delivery.frames))

    def _too_big(self, size: int) -> str:
        return (f"Event too large: {size} bytes; the largest this server accepts is "
                f"{self.config.max_frame_bytes} bytes. Send audio in smaller appends.")

    async def _refuse_frame(self, live: _Live, fault: Fault, message: str) -> bool:
        """Answer a refused client frame in its dialect; True when that closed the connection."""
        end = refusal_of(live.meta.dialect, fault, message)
        with contextlib.suppress(ConnectionClosed):
            async with live.send_lock:  # not in the middle of a cout batch
                for frame in end.frames:
                    await live.ws.send(frame)
                if end.close_code is not None:
                    await live.ws.close(end.close_code, end.close_reason)
        return end.close_code is not None

    async def _take_over(self, live: _Live, holder: str | None, *, members_kept: bool = False) -> None:
        """A connection with a session id already held: the new one wins. A connection here is closed at
        once; the edge named in the session record (another one) is told on the bus (``_on_takeover``)."""
        assert self.nc is not None
        sid = live.meta.sid
        previous = self.holders.get(sid)
        self.holders[sid] = live
        if previous is not None and previous.epoch < live.epoch:
            previous.keep_members = members_kept
            self._tasks.spawn(self._close_taken_over(previous))
        if holder and holder != self.instance:
            notice = bus.Takeover(sid=sid, epoch=live.epoch, by=self.instance, members_kept=members_kept)
            with contextlib.suppress(Exception):
                await self.nc.publish(Subjects.edge_takeover(holder), bus.encode(notice))

    async def _on_takeover(self, msg: Msg) -> None:
        notice = bus.decode(msg.data, bus.Takeover)
        live = self.holders.get(notice.sid)
        if live is not None and live.epoch < notice.epoch:
            log.info("session taken over", extra={"sid": notice.sid, "epoch": live.epoch, "by": notice.by})
            live.keep_members = notice.members_kept
            self._tasks.spawn(self._close_taken_over(live))

    async def _close_taken_over(self, live: _Live) -> None:
        live.taken_over = True
        live.ws.rs_taken_over = True  # type: ignore[attr-defined]  # its handler keeps the seat lease
        live.taken.set()
        await self._refuse_frame(live, "taken_over", TAKEOVER_REASON)

    async def _on_cout(self, live: _Live, msg: Msg) -> None:
        out = bus.decode(msg.data, bus.ClientOut)
        if out.epoch < live.transformer_epoch:
            return  # fenced: a transformer that was replaced
        if out.epoch > live.epoch or live.taken_over:
            return  # a newer connection's transformer: this connection was taken over
        if live.merge is not None:  # a resuming connection: in seq order, once (held during the replay)
            async with live.send_lock:
                await self._send_delivery(live, live.merge.live(_batch(out)))
            observe_hop("transformer_edge", out.sent)
            return
        try:
            async with live.send_lock:
                for frame in out.frames:
                    await live.ws.send(frame)
                if out.close_code is not None:
                    await live.ws.close(out.close_code, out.close_reason)
        except ConnectionClosed:
            pass
        live.delivered_down = max(live.delivered_down, out.down)
        frame_counter("edge", "out").inc(len(out.frames))
        observe_hop("transformer_edge", out.sent)  # metric observation point

    # -- liveness and reattach -------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        beat = bus.decode(msg.data, bus.Heartbeat)
        self.liveness.beat(beat.instance, beat.boot, time.monotonic())
        if beat.kind == "worker":
            self.worker_providers[beat.instance] = tuple(beat.providers)

    async def _watchdog(self) -> None:
        """Feed the liveness machine the bus state and carry out what it finds due: probes, reattaches."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            self._watch_bus(now)
            for action in self.liveness.due(now):
                if isinstance(action, Probe):
                    self._tasks.spawn(self._probe(action.instance, action.boot))
                else:
                    live = self.sessions.get(action.sid)
                    if live is None or live.closed:
                        self.liveness.reattach_over(action.sid)
                        continue
                    self._tasks.spawn(self._reattach(live, action.role, action.instance))

    async def _probe(self, instance: str, boot: str) -> None:
        """Ask one process incarnation whether it is alive; the machine judges the outcome."""
        assert self.nc is not None
        outcome: Outcome
        try:
            await self.nc.request(Subjects.probe(instance, boot), b"", timeout=PROBE_TIMEOUT_S)
            outcome = "answered"
        except nats.errors.NoRespondersError:
            outcome = "no_responders"
        except nats.errors.TimeoutError:
            outcome = "timeout"
        except Exception as exc:  # the bus itself failed us: that says nothing about the instance
            log.warning("probe failed", extra={"instance": instance, "error": type(exc).__name__})
            outcome = "failed"
        now = time.monotonic()
        self._watch_bus(now)
        finding = self.liveness.probe_result(instance, boot, outcome, now)
        if finding is not None:
            PROBES.labels(finding).inc()
        if finding in ("gone", "unresponsive"):
            log.warning("instance dead", extra={"instance": instance, "how": finding})

    def _watch_bus(self, now: float) -> None:
        """Tell the machine when the bus itself was down (then missed beats are no sign of death). On coming
        back, the stream is created again: memory storage, so a restarted nats-server has lost it."""
        assert self.nc is not None
        if not self.nc.is_connected:
            self.liveness.bus_outage(now)
        elif self.nc.stats["reconnects"] != self._reconnects:
            self._reconnects = self.nc.stats["reconnects"]
            self.liveness.bus_outage(now)
            self._tasks.spawn(self._ensure_stream())

    async def _ensure_stream(self) -> None:
        assert self.nc is not None and self.store is not None
        try:
            await bus.ensure_stream(self.nc, first_seq=await self.store.stream_floor())
            log.info("stream ensured after a bus reconnect")
        except Exception:
            log.exception("stream not re-created after a bus reconnect")

    # -- switching -------------------------------------------------------------------------------

    async def _carry_switch(self, sid: str, target: SwitchTarget) -> bool:
        """Start a decided switch: in the session's worker when it serves the target (make-before-break),
        else by reattaching the session onto a worker of the target (break-before-make, at the turn end)."""
        assert self.nc is not None and self.switching is not None
        live = self.sessions.get(sid)
        if live is None or live.closed:
            return False
        if target.provider in self.worker_providers.get(live.worker, ()):
            order = bus.Control(
                kind="switch", epoch=live.worker_epoch, provider=target.provider, reason=target.reason,
                when="now" if target.when == "now" else "turn_end", started_ms=target.started_ms)
            await self.nc.publish(Subjects.ctl(sid), bus.encode(order))
            return True
        if not any(target.provider in served for served in self.worker_providers.values()):
            return False  # no live worker serves it: stay where we are
        if target.when == "turn_end":
            await self.switching.wait_idle(sid)
        if live.closed:
            return False
        return await self._reattach(live, "worker", live.worker, switch=target)

    async def _switched(self, sid: str, provider: str) -> None:
        """The session runs on ``provider`` now: later reattaches and the session record follow it."""
        assert self.store is not None
        live = self.sessions.get(sid)
        if live is not None and live.meta.provider != provider:
            live.meta = msgspec.structs.replace(live.meta, provider=provider)
        with contextlib.suppress(Exception):
            await self.store.set_provider(sid, provider)

    async def _reattach(self, live: _Live, role: str, dead: str, *, switch: SwitchTarget | None = None) -> bool:
        """Bump the epoch (fencing), tell the survivors, and attach a replacement that resumes. With
        ``switch``, the replacement is a worker of the target provider that announces the switch."""
        assert self.nc is not None and self.store is not None
        sid = live.meta.sid
        started = time.perf_counter()
        meta = live.meta if switch is None else msgspec.structs.replace(live.meta, provider=switch.provider)
        try:
            epoch = await self.store.bump_epoch(sid, above=live.epoch)
            live.epoch = epoch
            if role == "transformer":
                # Fenced now, not once the replacement answers: a replaced transformer that was only slow
                # must not add output after ``delivered_down`` is taken (the replacement re-sends from it).
                live.transformer_epoch = epoch
            await self.nc.publish(
                Subjects.ctl(sid), bus.encode(bus.Control(kind="replace", epoch=epoch, role=role, drop=dead))
            )
            if role == "worker":
                subject = Subjects.assign_worker(meta.provider)
                peer_epoch = live.transformer_epoch
            else:
                subject = Subjects.ASSIGN_TRANSFORMER
                peer_epoch = live.worker_epoch
            request = bus.encode(bus.AssignRequest(
                meta=meta, epoch=epoch, peer_epoch=peer_epoch, resume=True, reply_to_edge=self.instance,
                delivered_down=live.delivered_down,
                switch_from=switch.previous if switch else "", switch_reason=switch.reason if switch else "",
                switch_started_ms=switch.started_ms if switch else 0,
                resume_started_ms=0 if switch else int(time.time() * 1000 - (time.perf_counter() - started) * 1000)))
            reply = await self._assign_within_budget(live, role, subject, request)
            if reply is None:
                return False
            instance = reply.instance
            live.meta = meta
            if role == "worker":
                live.worker, live.worker_epoch = instance, epoch
                self.worker_providers[instance] = tuple(reply.providers)
            else:
                live.transformer, live.transformer_epoch = instance, epoch
            if self.sessions.get(sid) is live:
                self.liveness.moved(sid, role, instance, reply.boot, time.monotonic())
            await self.store.set_route(sid, **{role: instance, "epoch": str(epoch)})
            if role == "worker" and self.switching is not None:
                self.switching.worker_replaced(sid, epoch)
            REATTACHES.labels(role).inc()
            REATTACH_SECONDS.observe(time.perf_counter() - started)
            log.info("reattached", extra={"sid": sid, "epoch": epoch, "role": role, "instance": instance})
            return True
        except Exception:
            log.exception("reattach failed", extra={"sid": sid, "role": role})
            return False
        finally:
            if self.sessions.get(sid) is live:
                self.liveness.reattach_over(sid)

    async def _assign_within_budget(
        self, live: _Live, role: str, subject: str, request: bytes
    ) -> bus.AssignReply | None:
        """A replacement for ``role``, retried on the backoff schedule within the reattach budget; None when
        the client left meanwhile or the budget ran out (then the client is told in its dialect)."""
        budget = self.config.reattach_budget_ms / 1000
        rng = random.Random()
        begun = time.monotonic()
        attempt = 0
        while not live.closed:
            remaining = budget - (time.monotonic() - begun)
            reply = await self._assign_once(subject, request, timeout=min(ASSIGN_TIMEOUT_S, max(remaining, 0.05)))
            if reply is not None:
                return reply
            delay = next_delay(attempt, time.monotonic() - begun, budget, rng)
            if delay is None:
                break
            if attempt == 0:
                log.warning("no replacement yet", extra={"sid": live.meta.sid, "role": role})
            attempt += 1
            await asyncio.sleep(delay)  # backoff between requests, not a wait for a condition
        if live.closed:
            return None
        REATTACH_GAVE_UP.labels(role).inc()
        log.error("reattach gave up", extra={"sid": live.meta.sid, "role": role, "attempts": attempt + 1})
        await self._refuse_in_dialect(
            live, live.ws, live.meta.dialect, "session_unavailable",
            f"session unavailable: no {role} could resume it within {budget:g} s")
        return None

    async def _assign_once(self, subject: str, request: bytes, *, timeout: float) -> bus.AssignReply | None:
        """One queue-group request: the reply of a member that took the session, or None."""
        assert self.nc is not None
        try:
            msg = await self.nc.request(subject, request, timeout=timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return None
        reply = bus.decode(msg.data, bus.AssignReply)
        return reply if reply.ok else None

    async def _assign(self, subject: str, request: bytes) -> bus.AssignReply:
        """Queue-group request with retries: a service that is starting or restarting gets a moment."""
        delay = 0.05
        for _ in range(ASSIGN_ATTEMPTS):
            reply = await self._assign_once(subject, request, timeout=ASSIGN_TIMEOUT_S)
            if reply is not None:
                return reply
            await asyncio.sleep(delay)
            delay *= 3
        raise AssignError(f"no {Subjects.assign_role(subject)} available")

    async def _refuse_in_dialect(
        self, live: _Live | None, ws: ServerConnection, dialect: Dialect, code: str, reason: str
    ) -> None:
        """End a session we cannot serve the way the dialect's own server would (shared/codecs/refusals)."""
        end = refusal(dialect, code, reason, event_id=f"event_rs_edge_{uuid.uuid4().hex[:20]}")
        with contextlib.suppress(ConnectionClosed):
            if live is None:
                await _send_refusal(ws, end)
            else:
                async with live.send_lock:  # not in the middle of a cout batch
                    await _send_refusal(ws, end)


async def _send_refusal(ws: ServerConnection, end: Refusal) -> None:
    for frame in end.frames:
        await ws.send(frame)
    await ws.close(end.close_code, end.close_reason)


def _batch(out: bus.ClientOut) -> Batch:
    close = (out.close_code, out.close_reason) if out.close_code is not None else None
    return Batch(out.first, tuple(out.frames), out.down, close)


class _SwitchBody(msgspec.Struct, forbid_unknown_fields=True):
    provider: str
    when: Literal["now", "turn_end"] = "turn_end"


SWITCH_REQUEST_S = 45.0  # an operator's switch waits at most for a turn end plus the new upstream


def _json_http(status: int, body: dict[str, Any]) -> HttpResponse:
    return HttpResponse(int(status), json.dumps(body).encode(), "application/json")


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await server.wait_closed()


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    return Response(status, http.HTTPStatus(status).phrase, Headers([("Content-Type", "application/json")]), data)


_HTTP = {
    "/healthz": Edge._healthz,
    "/metrics": Edge._metrics,
    **web.ROUTES,  # the browser client: GET / and /web/* (a WebSocket upgrade on / is the seed URL)
}
