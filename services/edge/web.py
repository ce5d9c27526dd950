"""The browser client's static files (services/edge/web/), served by the edge on plain HTTP GET.

``GET /`` is the page and ``GET /web/<file>`` its assets; a WebSocket upgrade on ``/`` (the seed URL) never
reaches here. Everything the page loads comes from the edge: the Content-Security-Policy below makes the
browser refuse anything else, so the page works offline and cannot leak to a CDN.
"""

from __future__ import annotations

import functools
import http
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

__all__ = ["CSP", "ROUTES", "WEB_DIR"]

WEB_DIR = Path(__file__).with_name("web")

_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",  # AudioWorklet.addModule insists on a JavaScript type
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}

# 'self' covers ws:// and wss:// to the same host (CSP3): the page talks to the edge that served it, nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "media-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Handler = Callable[[Any, ServerConnection], Awaitable[Response]]


@functools.cache
def _body(name: str) -> bytes:
    return (WEB_DIR / name).read_bytes()


def _handler(name: str) -> Handler:
    headers = [
        ("Content-Type", _TYPES[Path(name).suffix]),
        ("Cache-Control", "no-cache"),
        ("Content-Security-Policy", CSP),
        ("X-Content-Type-Options", "nosniff"),
    ]

    async def serve_file(edge: Any, connection: ServerConnection) -> Response:
        return Response(http.HTTPStatus.OK, "OK", Headers(headers), _body(name))

    return serve_file


def _routes() -> dict[str, Handler]:
    files = sorted(p.name for p in WEB_DIR.iterdir() if p.suffix in _TYPES)
    return {"/": _handler("index.html"), **{f"/web/{name}": _handler(name) for name in files}}


# Path -> handler, in the shape of the edge's own HTTP table (handler(edge, connection)).
ROUTES: dict[str, Handler] = _routes()
