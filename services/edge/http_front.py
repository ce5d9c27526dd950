"""HTTP front of the client port: plain HTTP requests answered here, WebSocket upgrades to websockets.

The client port is a ``websockets`` server, and its HTTP parser takes only ``GET`` without a body; the
OpenAI-shaped ``POST /v1/realtime/client_secrets`` cannot reach it. So every connection's asyncio protocol
is a ``FrontConnection``: websockets' own ``ServerConnection`` (made by ``serve(create_connection=...)``,
so TLS, permessage-deflate, limits and close codes are websockets' unchanged) that looks at the request
head before websockets does:

- an upgrade (``Connection: upgrade``), or a head we cannot parse: every byte read so far is fed to
  websockets, which from then on sees the stream exactly as if it had read it itself;
- anything else: the head and the body (``Content-Length``, bounded) are read here, the handler answers, the
  response goes out with ``Connection: close`` and the transport is closed. websockets' handshake task
  sees the connection end before any request and drops it (its normal path for a peer that goes away).

One request per connection (no keep-alive): the plain HTTP endpoints serve page loads, probes and token
requests, not traffic.

``client_secrets`` below is the one POST: OpenAI's ``POST /v1/realtime/client_secrets`` (the official SDKs'
``client.realtime.client_secrets.create``), minting a client token (shared/auth.py) for a browser.
"""

from __future__ import annotations

import dataclasses
import http
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal

import msgspec
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from services.edge.http_admin import BadRequest, HttpRequest, parse_head
from services.edge.routing import session_id_or_none
from shared.auth import Authenticator, AuthError, mint_token
from shared.config import Config

__all__ = ["CLIENT_SECRETS_PATHS", "FrontHandler", "client_secrets", "front_connection", "plain_response"]

log = logging.getLogger(__name__)

MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024

FrontHandler = Callable[[HttpRequest, ServerConnection], Awaitable[Response]]


def plain_response(status: int, text: str) -> Response:
    return Response(status, http.HTTPStatus(status).phrase, Headers([("Content-Type", "text/plain; charset=utf-8")]),
                    text.encode())


def _encode(response: Response) -> bytes:
    headers = Headers(response.headers)
    headers["Content-Length"] = str(len(response.body))
    headers["Connection"] = "close"
    head = f"HTTP/1.1 {response.status_code} {response.reason_phrase}\r\n".encode("latin-1")
    return head + headers.serialize() + response.body


def _is_upgrade(request: HttpRequest) -> bool:
    return "upgrade" in request.headers.get("connection", "").lower()


class FrontConnection(ServerConnection):
    """websockets' connection, with the request head looked at first (see the module docstring)."""

    http_handler: ClassVar[FrontHandler]

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._passing = False  # the bytes go to websockets
        self._buffer = bytearray()
        self._request: HttpRequest | None = None
        self._body_at = 0
        self._body_length = 0
        self._answering = False

    def data_received(self, data: bytes) -> None:
        if self._passing:
            super().data_received(data)
            return
        if self._answering:
            return  # one request per connection: anything after it is ignored
        self._buffer += data
        if self._request is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    self._reply(plain_response(431, "request head too large\n"))
                return
            try:
                request = parse_head(bytes(self._buffer[:end]))
            except BadRequest:
                request = None
            if request is None or _is_upgrade(request):
                self._pass_on()  # websockets' parser decides (and refuses in its own words)
                return
            try:
                length = int(request.headers.get("content-length", "0") or "0")
            except ValueError:
                length = -1
            if "transfer-encoding" in request.headers or not 0 <= length <= MAX_BODY_BYTES:
                self._reply(plain_response(413 if length > MAX_BODY_BYTES else 400, "bad request body\n"))
                return
            self._request, self._body_at, self._body_length = request, end + 4, length
            if request.headers.get("expect", "").lower() == "100-continue" and len(self._buffer) < end + 4 + length:
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # curl waits for it before a body
        if len(self._buffer) - self._body_at >= self._body_length:
            body = bytes(self._buffer[self._body_at:self._body_at + self._body_length])
            request, self._buffer = self._request, bytearray()
            self._answering = True
            self.transport.pause_reading()
            assert request is not None
            task = self.loop.create_task(self._answer(dataclasses.replace(request, body=body)))
            # The handshake task of websockets is in server.handler_tasks; ours rides along with it.
            self.server.handler_tasks.add(task)
            task.add_done_callback(self.server.handler_tasks.discard)

    def eof_received(self) -> None:
        if self._passing:
            super().eof_received()
        elif not self._answering:
            self.transport.close()  # a peer that went away mid-head: nothing to answer

    def _pass_on(self) -> None:
        self._passing = True
        buffered, self._buffer = bytes(self._buffer), bytearray()
        super().data_received(buffered)

    async def _answer(self, request: HttpRequest) -> None:
        try:
            response = await self.http_handler(request, self)
        except Exception:
            log.exception("http request failed", extra={"path": request.path})
            response = plain_response(500, "internal error\n")
        self._reply(response)

    def _reply(self, response: Response) -> None:
        self._answering = True
        if not self.transport.is_closing():
            self.transport.write(_encode(response))
            self.transport.close()  # flushes first (TLS: close_notify after the data)


def front_connection(handler: FrontHandler) -> type[ServerConnection]:
    """The ``create_connection`` class for ``websockets.serve``, answering plain HTTP with ``handler``."""

    class EdgeFrontConnection(FrontConnection):
        http_handler = staticmethod(handler)

    return EdgeFrontConnection


# -- POST /v1/realtime/client_secrets -------------------------------------------------------------------

CLIENT_SECRETS_PATHS = frozenset({"/v1/realtime/client_secrets", "/realtime/client_secrets"})
DEFAULT_TOKEN_S = 600  # OpenAI's default
MIN_TOKEN_S = 10  # OpenAI's minimum


class _ExpiresAfter(msgspec.Struct):
    anchor: Literal["created_at"] = "created_at"
    seconds: int = DEFAULT_TOKEN_S


class _SecretRequest(msgspec.Struct):
    expires_after: _ExpiresAfter | None = None
    session: dict[str, Any] | None = None
    rs_u_sessid: str | None = None  # ours: bind the token to this session id
    rs_core: str | None = None  # ours: bind the token to this provider


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status, http.HTTPStatus(status).phrase, Headers([("Content-Type", "application/json")]),
                    json.dumps(body).encode())


def _error(status: int, message: str, code: str | None = None) -> Response:
    """OpenAI's error body: the SDK raises the matching APIStatusError with this message."""
    kind = "invalid_request_error" if status < 500 else "server_error"
    return _json(status, {"error": {"message": message, "type": kind, "code": code, "param": None}})


async def client_secrets(
    request: HttpRequest, auth: Authenticator, config: Config, *,
    installed: frozenset[str], now: float,
) -> Response:
    """Mint a client token: Bearer ``<account>:<secret>`` (a token cannot mint tokens); the body in OpenAI's
    shape; the answer ``{"value": "ek_...", "expires_at": ..., "session": {...}}``."""
    if request.method != "POST":
        return _error(405, "use POST")
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    try:
        if scheme.lower() != "bearer" or not key.strip():
            raise AuthError(401, "missing bearer token")
        account = auth.check_api_key(key)
    except AuthError as exc:
        return _error(exc.status, exc.reason, "invalid_api_key")
    try:
        body = msgspec.json.decode(request.body or b"{}", type=_SecretRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        return _error(400, f"invalid body: {exc}")
    seconds = body.expires_after.seconds if body.expires_after else DEFAULT_TOKEN_S
    if not MIN_TOKEN_S <= seconds <= config.token_max_s:
        return _error(400, f"expires_after.seconds must be between {MIN_TOKEN_S} and {config.token_max_s}")
    session_id = body.rs_u_sessid
    if session_id is not None and session_id_or_none(session_id) is None:
        return _error(400, "rs_u_sessid must be 1-256 printable characters without spaces")
    provider = body.rs_core.strip().lower() if body.rs_core else None
    if provider is not None and provider not in installed:
        return _error(400, f"unknown provider {body.rs_core!r}")
    expires = int(now) + seconds
    token = mint_token(auth.secret_of(account) or "", account, expires=expires, session_id=session_id,
                       provider=provider)
    # The session config is echoed (the SDK's response type wants it), not applied: the client sends its
    # own session.update once connected.
    session = {"type": "realtime", **(body.session or {})}
    return _json(200, {"value": token, "expires_at": expires, "session": session})
