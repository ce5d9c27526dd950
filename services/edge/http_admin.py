"""A small HTTP/1.1 listener for the edge's operator port (``RS_ADMIN_PORT``).

The client port is a WebSocket server, and WebSocket servers take only ``GET`` without a body; the switch
API is a ``POST`` with a JSON body, so the operator endpoints get a listener of their own. One request per
connection (``Connection: close``), bounded head and body, no keep-alive: this port serves scrapes and
occasional admin calls, not traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import http
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

__all__ = ["HttpRequest", "HttpResponse", "parse_head", "serve_http"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
READ_TIMEOUT_S = 10.0


@dataclasses.dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes = b""


@dataclasses.dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"

    def encode(self) -> bytes:
        phrase = http.HTTPStatus(self.status).phrase
        head = (
            f"HTTP/1.1 {self.status} {phrase}\r\nContent-Type: {self.content_type}\r\n"
            f"Content-Length: {len(self.body)}\r\nConnection: close\r\n\r\n"
        )
        return head.encode("latin-1") + self.body


class BadRequest(ValueError):
    pass


def parse_head(head: bytes) -> HttpRequest:
    """Request line and headers (without the blank line). Raises BadRequest."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest("malformed request line") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest("HTTP/1.x only")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise BadRequest("malformed header")
        headers[name.strip().lower()] = value.strip()
    parts = urlsplit(target)
    return HttpRequest(method.upper(), parts.path, dict(parse_qsl(parts.query)), headers)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def serve_http(host: str, port: int, handler: Handler) -> asyncio.Server:
    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            response = await _answer(reader, handler)
            writer.write(response.encode())
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(on_connection, host, port, limit=MAX_HEAD_BYTES)


async def _answer(reader: asyncio.StreamReader, handler: Handler) -> HttpResponse:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT_S)
        request = parse_head(head[:-4])
        length = int(request.headers.get("content-length", "0") or "0")
        if length < 0 or length > MAX_BODY_BYTES:
            return HttpResponse(413, b"request body too large\n")
        body = await asyncio.wait_for(reader.readexactly(length), READ_TIMEOUT_S) if length else b""
    except (asyncio.LimitOverrunError, ValueError):
        return HttpResponse(400, b"bad request\n")
    except TimeoutError:
        return HttpResponse(408, b"request timeout\n")
    try:
        return await handler(dataclasses.replace(request, body=body))
    except Exception:
        log.exception("admin request failed", extra={"path": request.path})
        return HttpResponse(500, b"internal error\n")
