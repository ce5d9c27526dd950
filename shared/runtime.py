"""Process lifecycle shared by every service: logging, signals, bus + store, heartbeats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Protocol

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from shared import bus
from shared.config import Config
from shared.store import Store

__all__ = [
    "BOOT",
    "Service",
    "TaskSet",
    "heartbeat_loop",
    "instance_id",
    "run",
    "serve_metrics",
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


async def _serve(service: Service, config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with contextlib.AsyncExitStack() as stack:  # unwinds in reverse: service, store, bus
        nc = await bus.connect(config.nats_url, name=service.name)
        stack.push_async_callback(_drain, nc)
        store = await stack.enter_async_context(Store.connect(
            config.redis_url, ttl_s=config.session_ttl_s, sentinels=config.redis_sentinels,
            sentinel_master=config.redis_sentinel_master,
        ))
        await stack.enter_async_context(service.running(nc, store))
        if config.metrics_port is not None:
            server = await serve_metrics(config.host, config.metrics_port, lambda: nc.is_connected)
            stack.push_async_callback(_close_server, server)
            print(f"{service.name} metrics on http://{config.host}:{config.metrics_port}/metrics", flush=True)
        log.info("ready")
        print(f"{service.name} ready", flush=True)
        await stop.wait()
        log.info("stopping")


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
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(service, config))


@contextlib.asynccontextmanager
async def task_group_of(*coros: object) -> AsyncIterator[list[asyncio.Task[object]]]:
    tasks = [asyncio.ensure_future(c) for c in coros]  # type: ignore[arg-type]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
