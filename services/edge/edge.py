"""Edge: holds client sockets, authenticates, attaches sessions, forwards frames, serves HTTP.

Per connection: resolve the route (services.edge.routing), record the session and bump its epoch in Redis,
subscribe to the session's ``cout``, ask a transformer and then a worker to attach (queue-group
requests), then forward client frames to ``cin`` and ``cout`` frames to the client. Nothing reaches
the bus before authentication passes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

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
from services.edge.routing import Route, RouteError, provider_for_model, resolve, session_id_or_none
from shared import bus
from shared.auth import Authenticator
from shared.bus import Subjects
from shared.config import Config
from shared.metrics import ASSIGN_SECONDS, FRAMES, PROBES, REATTACH_SECONDS, REATTACHES, REFUSALS, SESSIONS
from shared.providers import installed_providers
from shared.runtime import TaskSet, instance_id
from shared.session import SessionMeta, session_key
from shared.store import Store

__all__ = ["Edge"]

log = logging.getLogger(__name__)

ASSIGN_TIMEOUT_S = 2.0
ASSIGN_ATTEMPTS = 4
FIRST_FRAME_TIMEOUT_S = 30.0


class AssignError(Exception):
    pass


# Liveness: an instance whose beat is late is asked directly on its probe subject (one probe per process
# at a time, whatever the number of its sessions). "No responders" means its connection is gone (a kill -9
# closes the socket at once): dead. An answer means slow, not dead: a CPU-starved process keeps its
# sessions instead of being failed over, which would add load where it is already short. No answer within
# PROBE_TIMEOUT_S means stopped (SIGSTOP, a hung loop): dead.
SUSPECT_AFTER_S = 0.15  # 1.5 beat intervals
PROBE_TIMEOUT_S = 1.0
HEARTBEAT_DEADLINE_S = 0.3  # 3 missed 100 ms beats: dead unless a probe answers
WATCHDOG_INTERVAL_S = 0.05
DEAD_MEMORY_S = 60.0  # how long a process found dead is remembered (sessions still being moved off it)
# After the edge's own NATS connection was down: nobody's beats could arrive, and the others reconnect a
# little later than we do (reconnect wait + jitter). Silence within this window proves nothing.
BUS_OUTAGE_GRACE_S = 1.0


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
        self.boots: dict[str, str] = {}  # role -> boot of the process that holds it
        self.attached_at = time.monotonic()
        self.reattaching = False
        self.closed = False
        self.send_lock = asyncio.Lock()


class _Resumption(msgspec.Struct):
    handle: str | None = None


class _Setup(msgspec.Struct, rename="camel"):
    model: str | None = None
    session_resumption: _Resumption | None = None


class _FirstFrame(msgspec.Struct):
    setup: _Setup | None = None


_first_frame = msgspec.json.Decoder(_FirstFrame)


def _error_frame(code: str, message: str) -> str:
    return json.dumps({
        "type": "error",
        "event_id": f"event_{int(time.time() * 1000)}",
        "error": {"type": "server_error", "code": code, "message": message, "param": None, "event_id": None},
    })


class Edge:
    name = "edge"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.instance = instance_id("edge", config.instance_id)
        self.auth = Authenticator(config.accounts)
        self.installed = frozenset(installed_providers())
        self.nc: NATS | None = None
        self.store: Store | None = None
        self.server: Server | None = None
        self.live = 0
        self.sessions: dict[str, _Live] = {}
        self.beats: dict[tuple[str, str], float] = {}  # (instance, boot) -> monotonic time of its last beat
        self.probes: dict[tuple[str, str], asyncio.Task[None]] = {}  # probes in flight, by process
        self.dead: dict[tuple[str, str], float] = {}  # processes found dead -> when
        self._tasks = TaskSet()
        self._bus_back_at = 0.0  # monotonic time the NATS connection was last seen down or came back
        self._reconnects = 0

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]  # type: ignore[no-any-return]

    @contextlib.asynccontextmanager
    async def running(self, nc: NATS, store: Store) -> AsyncIterator[None]:
        self.nc, self.store = nc, store
        await bus.ensure_stream(nc, first_seq=await store.stream_floor())
        self._reconnects = nc.stats["reconnects"]
        tls: ssl.SSLContext | None = None
        if self.config.tls_cert:
            tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.load_cert_chain(self.config.tls_cert, self.config.tls_key or None)
        beats = await nc.subscribe(Subjects.HEARTBEATS, cb=self._on_heartbeat)
        watchdog = asyncio.create_task(self._watchdog())
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            max_size=self.config.max_frame_bytes,
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
            try:
                yield
            finally:
                watchdog.cancel()
                with contextlib.suppress(Exception):
                    await beats.unsubscribe()

    # -- HTTP and upgrade checks -----------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if "upgrade" not in request.headers.get("Connection", "").lower():
            handler = _HTTP.get(path)
            if handler is None:
                return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
            return await handler(self, connection)
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        try:
            route = resolve(request.path, headers, self.auth, self.installed, now=time.time())
        except RouteError as exc:
            REFUSALS.labels(str(exc.status)).inc()
            log.info("refused", extra={"status": exc.status, "reason": exc.reason})
            return connection.respond(exc.status, exc.reason + "\n")
        connection.rs_route = route  # type: ignore[attr-defined]
        return None

    async def _healthz(self, connection: ServerConnection) -> Response:
        assert self.nc is not None and self.store is not None
        redis_ok = await self.store.ping()
        body = {
            "status": "ok" if (self.nc.is_connected and redis_ok) else "degraded",
            "instance": self.instance,
            "sessions": self.live,
            "nats": "connected" if self.nc.is_connected else "disconnected",
            "redis": "ok" if redis_ok else "unavailable",
        }
        status = http.HTTPStatus.OK if body["status"] == "ok" else http.HTTPStatus.SERVICE_UNAVAILABLE
        return _json_response(status, body)

    async def _metrics(self, connection: ServerConnection) -> Response:
        return Response(200, "OK", Headers([("Content-Type", CONTENT_TYPE_LATEST)]), generate_latest())

    # -- sessions --------------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        route: Route = ws.rs_route  # type: ignore[attr-defined]
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
            with contextlib.suppress(msgspec.DecodeError):
                setup = _first_frame.decode(first).setup
                if setup is not None and setup.model:
                    model = setup.model.removeprefix("models/")
                # Gemini-native resumption: our handles are session ids (see GeminiClientCodec). Only
                # when the client named no session otherwise; the key still decides the account.
                handle = setup.session_resumption.handle if setup and setup.session_resumption else None
                if route.minted and session_id_or_none(handle):
                    client_session_id = handle  # type: ignore[assignment]
            provider = provider or provider_for_model(model)
        provider = provider or self.config.default_provider
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
            await self._run_session(ws, meta, first)
        finally:
            self.live -= 1
            SESSIONS.labels("edge").set(self.live)

    async def _run_session(self, ws: ServerConnection, meta: SessionMeta, first: bytes | None) -> None:
        assert self.nc is not None and self.store is not None
        nc, sid = self.nc, meta.sid
        epoch = await self.store.open_session(meta, edge=self.instance)
        live = _Live(meta, ws, epoch)
        log.info("session open", extra={"sid": sid, "epoch": epoch, "dialect": meta.dialect, "provider": meta.provider})
        cout = await nc.subscribe(Subjects.cout(sid), cb=functools.partial(self._on_cout, live))
        try:
            started = time.perf_counter()
            request = bus.encode(bus.AssignRequest(meta=meta, epoch=epoch, reply_to_edge=self.instance))
            try:
                transformer = await self._assign(Subjects.ASSIGN_TRANSFORMER, request)
                worker = await self._assign(Subjects.assign_worker(meta.provider), request)
            except AssignError as exc:
                await self._refuse_in_dialect(ws, meta, str(exc))
                return
            live.transformer, live.worker = transformer.instance, worker.instance
            live.boots = {"transformer": transformer.boot, "worker": worker.boot}
            ASSIGN_SECONDS.observe(time.perf_counter() - started)
            live.attached_at = time.monotonic()
            self.sessions[sid] = live
            await self.store.set_route(sid, transformer=live.transformer, worker=live.worker, epoch=str(epoch))
            # cin seq is monotonic across reconnects and reattaches: the connection's epoch in the high bits.
            # The transformer stamps each up envelope with the cin seq that produced it, so the stream tells
            # a replacement exactly which client frames were already turned into canonical events.
            seq = epoch << 32
            if first is not None:
                seq += 1
                await nc.publish(Subjects.cin(sid), bus.encode(bus.ClientIn(live.epoch, seq, first, False)))
            async for message in ws:
                seq += 1
                data = message.encode() if isinstance(message, str) else message
                frame = bus.ClientIn(live.epoch, seq, data, not isinstance(message, str))
                await nc.publish(Subjects.cin(sid), bus.encode(frame))
                FRAMES.labels("edge", "in").inc()
        except ConnectionClosed:
            pass
        finally:
            live.closed = True
            if self.sessions.get(sid) is live:
                del self.sessions[sid]
            with contextlib.suppress(Exception):
                await cout.unsubscribe()
            with contextlib.suppress(Exception):
                await nc.publish(Subjects.ctl(sid), bus.encode(bus.Control(kind="close", epoch=live.epoch)))
            log.info("session closed", extra={"sid": sid, "epoch": live.epoch})

    async def _on_cout(self, live: _Live, msg: Msg) -> None:
        out = bus.decode(msg.data, bus.ClientOut)
        if out.epoch < live.transformer_epoch:
            return  # fenced: a transformer that was replaced
        try:
            async with live.send_lock:
                for frame in out.frames:
                    await live.ws.send(frame)
                if out.close_code is not None:
                    await live.ws.close(out.close_code, out.close_reason)
        except ConnectionClosed:
            pass
        live.delivered_down = max(live.delivered_down, out.down)
        FRAMES.labels("edge", "out").inc(len(out.frames))

    # -- liveness and reattach -------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        # Keyed by (instance, boot): a restarted process under the same name does not hold the sessions
        # of the one that died, so its beats must not keep them waiting.
        beat = bus.decode(msg.data, bus.Heartbeat)
        key = (beat.instance, beat.boot)
        self.beats[key] = time.monotonic()
        # Found dead, yet beating: it was stopped and woke up. What it held is moved already or still
        # with it; new sessions it takes are no business of that finding.
        self.dead.pop(key, None)

    async def _watchdog(self) -> None:
        """Notice a dead transformer or worker and reattach its sessions: a late beat starts a probe, a
        process found dead (probe) or silent past HEARTBEAT_DEADLINE_S without answering one loses them."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            now = time.monotonic()
            if self._bus_outage(now):
                continue
            for key, since in list(self.dead.items()):
                if now - since > DEAD_MEMORY_S:
                    del self.dead[key]
            for live in list(self.sessions.values()):
                if live.reattaching or live.closed:
                    continue
                for role, instance in (("transformer", live.transformer), ("worker", live.worker)):
                    key = (instance, live.boots.get(role, ""))
                    silent = now - max(self.beats.get(key, 0.0), live.attached_at)
                    if silent <= SUSPECT_AFTER_S:
                        continue
                    if key in self.dead:
                        live.reattaching = True
                        self._tasks.spawn(self._reattach(live, role, instance))
                        break
                    if key not in self.probes:
                        self.probes[key] = self._tasks.spawn(self._probe(key))

    async def _probe(self, key: tuple[str, str]) -> None:
        """Ask one process whether it is alive; an answer counts as a beat, "no responders" or a timeout
        past the heartbeat deadline marks it dead."""
        assert self.nc is not None
        instance, boot = key
        try:
            await self.nc.request(Subjects.probe(instance, boot), b"", timeout=PROBE_TIMEOUT_S)
            self.beats[key] = max(self.beats.get(key, 0.0), time.monotonic())
            PROBES.labels("alive").inc()
        except nats.errors.NoRespondersError:
            self._found_dead(key, "gone")
        except nats.errors.TimeoutError:
            if time.monotonic() - self.beats.get(key, 0.0) > HEARTBEAT_DEADLINE_S:
                self._found_dead(key, "unresponsive")
        except Exception as exc:  # the bus itself failed us: that says nothing about the instance
            log.warning("probe failed", extra={"instance": instance, "error": type(exc).__name__})
        finally:
            self.probes.pop(key, None)

    def _found_dead(self, key: tuple[str, str], how: str) -> None:
        if self._bus_outage(time.monotonic()):
            return
        self.dead[key] = time.monotonic()
        PROBES.labels(how).inc()
        log.warning("instance dead", extra={"instance": key[0], "how": how})

    def _bus_outage(self, now: float) -> bool:
        """Whether the bus itself was down lately (then missed beats are no sign of death). On coming back,
        the stream is created again: memory storage, so a restarted nats-server has lost it."""
        assert self.nc is not None
        if not self.nc.is_connected:
            self._bus_back_at = now
        elif self.nc.stats["reconnects"] != self._reconnects:
            self._reconnects = self.nc.stats["reconnects"]
            self._bus_back_at = now
            self._tasks.spawn(self._ensure_stream())
        return now - self._bus_back_at < BUS_OUTAGE_GRACE_S

    async def _ensure_stream(self) -> None:
        assert self.nc is not None and self.store is not None
        try:
            await bus.ensure_stream(self.nc, first_seq=await self.store.stream_floor())
            log.info("stream ensured after a bus reconnect")
        except Exception:
            log.exception("stream not re-created after a bus reconnect")

    async def _reattach(self, live: _Live, role: str, dead: str) -> None:
        """Bump the epoch (fencing), tell the survivors, and attach a replacement that resumes."""
        assert self.nc is not None and self.store is not None
        sid = live.meta.sid
        started = time.perf_counter()
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
                subject = Subjects.assign_worker(live.meta.provider)
                peer_epoch = live.transformer_epoch
            else:
                subject = Subjects.ASSIGN_TRANSFORMER
                peer_epoch = live.worker_epoch
            request = bus.encode(bus.AssignRequest(
                meta=live.meta, epoch=epoch, peer_epoch=peer_epoch, resume=True, reply_to_edge=self.instance,
                delivered_down=live.delivered_down))
            while not live.closed:
                try:
                    reply = await self._assign(subject, request)
                    instance = reply.instance
                    break
                except AssignError:
                    log.warning("no replacement yet", extra={"sid": sid, "role": role})
            else:
                return
            if role == "worker":
                live.worker, live.worker_epoch = instance, epoch
            else:
                live.transformer, live.transformer_epoch = instance, epoch
            live.boots[role] = reply.boot
            live.attached_at = time.monotonic()
            await self.store.set_route(sid, **{role: instance, "epoch": str(epoch)})
            REATTACHES.labels(role).inc()
            REATTACH_SECONDS.observe(time.perf_counter() - started)
            log.info("reattached", extra={"sid": sid, "epoch": epoch, "role": role, "instance": instance})
        except Exception:
            log.exception("reattach failed", extra={"sid": sid, "role": role})
        finally:
            live.reattaching = False

    async def _assign(self, subject: str, request: bytes) -> bus.AssignReply:
        """Queue-group request with retries: a service that is starting or restarting gets a moment."""
        assert self.nc is not None
        delay = 0.05
        for _ in range(ASSIGN_ATTEMPTS):
            try:
                msg = await self.nc.request(subject, request, timeout=ASSIGN_TIMEOUT_S)
                reply = bus.decode(msg.data, bus.AssignReply)
                if reply.ok:
                    return reply
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                pass
            await asyncio.sleep(delay)
            delay *= 3
        kind = subject.split(".")[2]
        raise AssignError(f"no {kind} available")

    async def _refuse_in_dialect(self, ws: ServerConnection, meta: SessionMeta, reason: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            if meta.dialect != "gemini":
                await ws.send(_error_frame("service_unavailable", reason))
            await ws.close(1011, reason[:120])


def _json_response(status: int, body: dict[str, Any]) -> Response:
    data = json.dumps(body).encode()
    return Response(status, http.HTTPStatus(status).phrase, Headers([("Content-Type", "application/json")]), data)


_HTTP = {
    "/healthz": Edge._healthz,
    "/metrics": Edge._metrics,
    **web.ROUTES,  # the browser client: GET / and /web/* (a WebSocket upgrade on / is the seed URL)
}
