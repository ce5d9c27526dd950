"""Process lifecycle shared by every service: logging, signals, bus + store, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import bus
from shared.config import Config
from shared.startup import announced, redact
from shared.startup import say as _say
from shared.store import Store

__all__ = [
    "BOOT",
    "GC_THRESHOLD",
    "Service",
    "StartupError",
    "TaskSet",
    "gc_stats",
    "heartbeat_loop",
    "instance_id",
    "redact",
    "run",
    "serve_metrics",
    "settle_heap",
    "setup_logging",
    "stream_id",
]

log = logging.getLogger(__name__)

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


# One per process start. An instance id may be reused by a restarted process (a pod keeps its name); the
# boot tells the edge that the process holding its sessions is gone even though the name beats again.
BOOT = uuid.uuid4().hex[:12]


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra`` fields (sid, epoch, ...) become keys."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``rtswitch dev``'s human format: time, level, service, message, then the ``extra`` fields as k=v."""

    def format(self, record: logging.LogRecord) -> str:
        extras = " ".join(
            f"{key}={value}" for key, value in vars(record).items()
            if key not in _STD_ATTRS and not key.startswith("_") and key != "service"
        )
        clock = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{clock} {record.levelname:<7} {getattr(record, 'service', '') or record.name}: {record.getMessage()}"
        if extras:
            line += f"  {extras}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


FORMATTERS: dict[str, type[logging.Formatter]] = {"json": JsonFormatter, "text": TextFormatter}


def setup_logging(level: str = "INFO", service: str = "", fmt: str = "json") -> None:
    """JSON lines (production: one object per line, ``sid``/``epoch`` as keys) or ``text`` (rtswitch dev)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(FORMATTERS[fmt]())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("websockets", "nats", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    if service:
        old_factory = logging.getLogRecordFactory()

        def factory(*args: object, **kwargs: object) -> logging.LogRecord:
            record = old_factory(*args, **kwargs)  # type: ignore[arg-type]
            record.service = service
            return record

        logging.setLogRecordFactory(factory)


def instance_id(kind: str, configured: str = "") -> str:
    """Unique per process; subject-safe (no dots)."""
    if configured:
        return configured.replace(".", "-")
    host = socket.gethostname().split(".")[0].replace(".", "-")[:20]
    return f"{kind}-{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class TaskSet:
    """Fire-and-forget tasks that are kept referenced until they finish (asyncio holds only weak ones)."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def each_in_a_task(
        self, handler: Callable[[Msg], Coroutine[Any, Any, None]]
    ) -> Callable[[Msg], Awaitable[None]]:
        """A subscription callback that runs ``handler`` for each message in a task of its own. nats-py runs
        a subscription's callbacks one at a time: for assign requests (a dead instance's sessions all
        arrive at once, each waiting for its own flush) the last of 40 waited seconds (edge reattach p99
        1.8 s in the 50-session chaos run)."""

        async def callback(msg: Msg) -> None:
            self.spawn(handler(msg))

        return callback


async def stream_id(nc: NATS) -> str:
    """This incarnation of the session stream (its creation time): what the checkpoint's folded position
    in Redis is keyed by (``Store.note_folded``). A nats-server restart creates the stream anew."""
    info = await nc.jetstream().stream_info(bus.STREAM)
    return info.created.isoformat() if info.created is not None else "unknown"


class Service(Protocol):
    name: str

    def running(self, nc: NATS, store: Store) -> contextlib.AbstractAsyncContextManager[None]: ...


async def heartbeat_loop(
    nc: NATS, kind: str, instance: str, load: Callable[[], int], *, providers: list[str] | None = None,
    interval_s: float = 0.1,
) -> None:
    """100 ms beats with the instance's load; the edge watches them to notice a dead instance. It asks an
    instance whose beats are late on its probe subject: the answer tells slow from dead (see Edge)."""
    subject = bus.Subjects.heartbeat(kind, instance)

    async def answer(msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.respond(b"")

    probes = await nc.subscribe(bus.Subjects.probe(instance, BOOT), cb=answer)
    try:
        while True:
            with contextlib.suppress(Exception):
                beat = bus.Heartbeat(
                    kind=kind, instance=instance, sessions=load(), providers=providers or [], boot=BOOT
                )
                await nc.publish(subject, bus.encode(beat))
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(Exception):
            await probes.unsubscribe()


# Startup waits for NATS and Redis forever (a pod starts before its infrastructure), saying so at once and
# then every few attempts; SIGTERM/SIGINT stop it at any point.
STARTUP_BACKOFF_S = (0.25, 0.5, 1.0, 2.0)
STARTUP_CONNECT_TIMEOUT_S = 1.0


class StartupError(Exception):
    """The process cannot start as configured (too old a nats-server, a frame limit the bus cannot carry):
    the message says what to change; the process exits with status 2 and no traceback."""


async def _first_contact(
    service: str, what: str, url: str, attempt: Callable[[], Awaitable[None]]
) -> None:
    """Call ``attempt`` until it succeeds, with backoff; the operator hears the URL before the first try
    and each failure (then every 10th): a missing NATS or Redis is never a silent wait."""
    tries = 0
    if what != "NATS" or not announced(service):  # main() may have said it before its imports
        _say(service, f"connecting to {what} at {redact(url)}")
    while True:
        try:
            await attempt()
            if tries:
                _say(service, f"{what} at {redact(url)} answered after {tries} failed attempts")
            return
        except Exception as exc:  # any failure is retried: the error text is shown, never swallowed
            if tries % 10 == 0:
                detail = str(exc) or type(exc).__name__
                _say(service, f"{what} not reachable at {redact(url)} ({detail}); retrying")
            await asyncio.sleep(STARTUP_BACKOFF_S[min(tries, len(STARTUP_BACKOFF_S) - 1)])
            tries += 1


async def _nats_once(url: str) -> None:
    import nats  # the probe connection: no reconnects, so a refused connect fails at once

    nc = await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()], allow_reconnect=False,
        connect_timeout=STARTUP_CONNECT_TIMEOUT_S, error_cb=_fail,
    )
    await nc.close()


async def _fail(exc: Exception) -> None:
    raise exc  # nats-py retries an initial connect forever; raising from its error callback ends the try


async def _redis_once(url: str) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_connect_timeout=STARTUP_CONNECT_TIMEOUT_S, retry_on_error=[])
    try:
        await client.ping()
    finally:
        await client.aclose()


async def _start(service: Service, config: Config, stack: contextlib.AsyncExitStack) -> None:
    await _first_contact(service.name, "NATS", config.nats_url, functools.partial(_nats_once, config.nats_url))
    nc = await bus.connect(config.nats_url, name=service.name)
    stack.push_async_callback(_drain, nc)
    try:
        version = bus.check_server_version(nc)
        bus.check_frame_limit(nc, config.max_frame_bytes)  # one number for the edge and the bus
    except RuntimeError as exc:
        raise StartupError(str(exc)) from None
    log.info("nats connected", extra={"server_version": version, "max_payload": nc.max_payload})
    if not config.redis_sentinels:  # with Sentinel the client asks the sentinels for the primary itself
        await _first_contact(
            service.name, "Redis", config.redis_url, functools.partial(_redis_once, config.redis_url))
    store = await stack.enter_async_context(Store.connect(
        config.redis_url, ttl_s=config.session_ttl_s, sentinels=config.redis_sentinels,
        sentinel_master=config.redis_sentinel_master,
    ))
    await stack.enter_async_context(service.running(nc, store))
    if config.metrics_port is not None:
        server = await serve_metrics(config.host, config.metrics_port, lambda: nc.is_connected)
        stack.push_async_callback(_close_server, server)
        print(f"{service.name} metrics on http://{config.host}:{config.metrics_port}/metrics", flush=True)


async def _serve(service: Service, config: Config) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: service, store, bus
        starting = asyncio.ensure_future(_start(service, config, stack))
        stopping = asyncio.ensure_future(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped before it was up: nothing to drain but what was opened
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
            _say(service.name, "stopped before it was ready")
            return 0
        stopping.cancel()
        try:
            starting.result()
        except StartupError as exc:
            _say(service.name, f"cannot start: {exc}")
            log.error("cannot start", extra={"reason": str(exc)})
            return 2
        settle_heap()
        log.info("ready")
        print(f"{service.name} ready", flush=True)
        stats_dir = os.environ.get("RS_GC_STATS", "")
        with gc_stats(os.path.join(stats_dir, f"{service.name}-{os.getpid()}.json") if stats_dir else ""):
            await stop.wait()
        log.info("stopping")
    return 0


# Measured under the bench's load (docs/bench.md, "GC"): the per-frame path makes few tracked objects, so
# young collections are rare (the worker: ~50 a minute at 20 sessions with CPython's 700) and cheap
# (0.2 ms). 2000 makes them a third as frequent (0.3 ms each) and a full collection, which walks the
# sessions' live state, comes a third as often; 10,000 made each young collection 0.8-1.8 ms.
GC_THRESHOLD = (2000, 10, 10)


def settle_heap() -> None:
    """Once a service is up: collect, then move everything that survived start-up (modules, codec tables,
    the bus and store clients, ~50,000 objects) into the permanent generation, so a full collection no
    longer walks it (one took ~30 ms in the transformer and the worker: a latency spike of every live
    session). For measuring: ``RS_GC_THRESHOLD=a,b,c`` overrides GC_THRESHOLD, ``RS_GC_FREEZE=false``
    leaves the heap unfrozen."""
    raw = os.environ.get("RS_GC_THRESHOLD", "")
    threshold = tuple(int(x) for x in raw.split(",")) if raw else GC_THRESHOLD
    if os.environ.get("RS_GC_FREEZE", "true").lower() not in ("false", "0", "no"):
        gc.collect()
        gc.freeze()
    gc.set_threshold(*threshold)


def _spread(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"total_ms": 0.0, "p50_ms": None, "p99_ms": None, "max_ms": None}
    return {"total_ms": round(sum(ordered), 2), "p50_ms": round(ordered[len(ordered) // 2], 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
            "max_ms": round(ordered[-1], 3)}


@contextlib.contextmanager
def gc_stats(path: str) -> Iterator[None]:
    """Time every collection (gc.callbacks) while the service runs and write counts and pause percentiles
    per generation to ``path`` as JSON when it stops. Off by default (``RS_GC_STATS=<dir>`` turns it on:
    <dir>/<service>-<pid>.json)."""
    if not path:
        yield
        return
    # Wall time is what a session waits; CPU time (this thread's) is the collection's own cost, without
    # the preemptions a loaded machine adds to the wall time.
    pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
    cpu: dict[int, list[float]] = {0: [], 1: [], 2: []}
    started: list[float] = [0.0, 0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0], started[1] = time.perf_counter(), time.thread_time()
        else:
            pauses[info["generation"]].append((time.perf_counter() - started[0]) * 1000)
            cpu[info["generation"]].append((time.thread_time() - started[1]) * 1000)

    gc.callbacks.append(callback)
    began = time.monotonic()
    try:
        yield
    finally:
        gc.callbacks.remove(callback)
        summary: dict[str, object] = {"seconds": round(time.monotonic() - began, 1), "threshold": gc.get_threshold(),
                                      "frozen": gc.get_freeze_count()}
        for gen in pauses:
            summary[f"gen{gen}"] = {"n": len(pauses[gen]), "wall": _spread(pauses[gen]), "cpu": _spread(cpu[gen])}
        with contextlib.suppress(OSError), open(path, "w") as f:
            json.dump(summary, f)


async def serve_metrics(host: str, port: int, healthy: Callable[[], bool]) -> asyncio.Server:
    """A tiny HTTP listener for processes without a server of their own (``RS_METRICS_PORT``):
    ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (200 while the bus is connected, else 503)."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: nothing in them matters here
            parts = request.decode("latin-1").split()
            path = parts[1].split("?", 1)[0] if len(parts) >= 2 else ""
            if path == "/metrics":
                status, ctype, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest()
            elif path == "/healthz":
                ok = healthy()
                status, ctype, body = ("200 OK" if ok else "503 Service Unavailable"), "text/plain", (
                    b"ok\n" if ok else b"bus disconnected\n")
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"not found\n"
            head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Connection: close\r\n\r\n")
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError, UnicodeDecodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def _close_server(server: asyncio.Server) -> None:
    server.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(server.wait_closed(), 2)


async def _drain(nc: NATS) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), 2)


def run(service: Service, config: Config) -> None:
    setup_logging(config.log_level, service.name, config.log_format)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    status = 0
    with contextlib.suppress(KeyboardInterrupt):
        status = asyncio.run(_serve(service, config))
    if status:
        sys.exit(status)


@contextlib.asynccontextmanager
async def task_group_of(*coros: object) -> AsyncIterator[list[asyncio.Task[object]]]:
    tasks = [asyncio.ensure_future(c) for c in coros]  # type: ignore[arg-type]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
