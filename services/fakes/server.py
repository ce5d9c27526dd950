"""The fakes' websockets server with its plain-HTTP side door (``/healthz``, ``/debug/sessions``, ``/control``),
and the serve loop of ``python -m services.fakes.<provider>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl as ssl_module
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from services.fakes.knobs import Knobs, KnobStore, parse_knobs
from services.fakes.session import SessionBase
from services.fakes.wire import MAX_FRAME_BYTES

# Closed sessions kept for `/debug/sessions?all=1`; bounded so long chaos/bench runs do not grow without limit.
_CLOSED_KEPT = 2000


def json_response(conn: ServerConnection, status: int, obj: Any) -> Response:
    response = conn.respond(status, json.dumps(obj) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response


class FakeServer:
    """A websockets server for one fake provider, plus its plain-HTTP side door on the same port.

    HTTP routes (websockets' ``process_request``; it parses any method but cannot read a request body):

    * ``GET /healthz`` -> ``ok``
    * ``GET /debug/sessions[?all=1][&id=<sid>]`` -> ``{"sessions": [...]}`` (live only unless ``all=1``)
    * ``GET|POST /control?<knob>=<value>...[&session=<sid>]`` -> set knobs (global or per session), returns them;
      ``GET /control`` alone returns them; ``DELETE /control[?session=<sid>]`` or ``GET /control?reset=1``
      resets. Knob values go in the query string because a JSON body cannot be read here.

    Subclasses implement ``check_upgrade`` (path/auth of the WebSocket upgrade) and ``new_session``.
    """

    name: ClassVar[str] = "fake"

    def __init__(self, *, knobs: Knobs | None = None) -> None:
        self.knobs = KnobStore(knobs if knobs is not None else Knobs.from_env())
        self.sessions: dict[str, SessionBase] = {}
        self._closed: deque[str] = deque()
        self._server: Server | None = None
        self.host = "127.0.0.1"
        self.port = 0
        self.tls = False
        self._routes: dict[str, Callable[[ServerConnection, Request, dict[str, str]], Response]] = {
            "/healthz": self._http_health,
            "/debug/sessions": self._http_debug,
            "/control": self._http_control,
        }

    # -- lifecycle --------------------------------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, ssl: ssl_module.SSLContext | None = None) -> None:
        self._server = await serve(
            self._handle,
            host,
            port,
            process_request=self._process_request,
            max_size=MAX_FRAME_BYTES,
            ssl=ssl,
            # permessage-deflate is offered by the Gemini SDK and old openai SDKs: accept it (the default).
            compression="deflate",
        )
        sockname = self._server.sockets[0].getsockname()
        self.host, self.port, self.tls = host, sockname[1], ssl is not None

    @property
    def url(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.host}:{self.port}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- hooks for subclasses ---------------------------------------------------------------------------------------

    def check_upgrade(
        self, conn: ServerConnection, request: Request, path: str, query: dict[str, str]
    ) -> Response | None:
        raise NotImplementedError

    def refusal(self, conn: ServerConnection, status: int) -> Response:
        return json_response(conn, status, {"error": {"code": status, "message": "refused by fake (knob refuse)"}})

    def new_session(self, ws: ServerConnection) -> SessionBase:
        raise NotImplementedError

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        route = self._routes.get(split.path)
        if route is not None:
            return route(conn, request, query)
        rejected = self.check_upgrade(conn, request, split.path, query)
        if rejected is not None:
            return rejected
        refused = self.knobs.take_refusal()
        if refused is not None:
            return self.refusal(conn, refused)
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = self.new_session(ws)
        self.sessions[session.id] = session
        try:
            await session.run()
        except ConnectionClosed:
            pass
        finally:
            await session.teardown()
            self.knobs.forget(session.id)
            self._closed.append(session.id)
            while len(self._closed) > _CLOSED_KEPT:
                self.sessions.pop(self._closed.popleft(), None)

    def _http_health(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        return conn.respond(200, "ok")

    def _http_debug(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        show_all = query.get("all", "") not in ("", "0", "false")
        wanted = query.get("id")
        # ``text``: only sessions holding an item whose text starts so. The whole dump of a long run can pass
        # 10 MB, and websockets aborts (not closes) the socket after an HTTP answer: a body larger than what
        # the socket took at once is cut.
        prefix = query.get("text")
        sessions = [
            d for s in self.sessions.values() if (show_all or s.live) and (wanted is None or s.id == wanted)
            for d in (s.to_debug(),)
            if prefix is None or any((i.get("text") or "").startswith(prefix) for i in d["items"])
        ]
        return json_response(conn, 200, {"sessions": sessions})

    def _http_control(self, conn: ServerConnection, request: Request, query: dict[str, str]) -> Response:
        params = dict(query)
        session = params.pop("session", None)
        if session is not None and not (session in self.sessions and self.sessions[session].live):
            return json_response(conn, 404, {"error": f"no live session {session!r}"})
        if request.method == "DELETE" or params.pop("reset", "") not in ("", "0"):
            self.knobs.reset(session)
            return json_response(conn, 200, self.knobs.snapshot())
        if request.method not in ("GET", "POST"):
            return json_response(conn, 405, {"error": "use GET, POST or DELETE"})
        try:
            self.knobs.update(parse_knobs(params), session)
        except (ValueError, TypeError) as exc:
            return json_response(conn, 400, {"error": str(exc)})
        if session is not None:
            self.sessions[session].on_knobs_set(params.keys())
        return json_response(conn, 200, self.knobs.snapshot())


async def serve_until_signal(server: Any) -> None:
    """Print the fake's port (the first stdout line, which scripts read), serve until SIGINT/SIGTERM, close."""
    print(server.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on some platforms
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.close()
