"""A tiny async HTTP client for the fakes' side door: set and reset knobs, read ``/debug/sessions``.

Used by tests, the bench and the chaos runner; it talks HTTP to a fake, so it works on a fake in another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl as ssl_module
from typing import Any
from urllib.parse import urlencode

# ---------------------------------------------------------------------------------------------------------------------
# Tiny HTTP client for the side door (tests, chaos scripts)


async def http_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    host: str = "127.0.0.1",
    ssl_context: ssl_module.SSLContext | None = None,
    timeout: float = 5.0,
) -> tuple[int, bytes]:
    """One HTTP/1.1 request -> (status, body). The server closes after answering, so read to EOF."""

    async def go() -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=host if ssl_context else None
        )
        try:
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl_module.SSLError):
                await writer.wait_closed()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1]), body

    return await asyncio.wait_for(go(), timeout)


async def set_knobs(
    port: int, *, session: str | None = None, ssl_context: ssl_module.SSLContext | None = None, **knobs: Any
) -> dict[str, Any]:
    """``GET /control?...`` (the query form). Raises RuntimeError on a non-200 answer."""
    params = {k: ("none" if v is None else str(v)) for k, v in knobs.items()}
    if session is not None:
        params["session"] = session
    status, body = await http_request(port, f"/control?{urlencode(params)}", ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/control answered {status}: {body.decode(errors='replace')}")
    return json.loads(body)


async def reset_knobs(
    port: int, *, session: str | None = None, ssl_context: ssl_module.SSLContext | None = None
) -> None:
    query = f"?{urlencode({'session': session})}" if session else ""
    status, body = await http_request(port, f"/control{query}", method="DELETE", ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/control answered {status}: {body.decode(errors='replace')}")


async def debug_sessions(
    port: int, *, include_closed: bool = False, ssl_context: ssl_module.SSLContext | None = None
) -> list[dict[str, Any]]:
    """``GET /debug/sessions`` -> the session list (closed ones too with ``include_closed``)."""
    path = "/debug/sessions" + ("?all=1" if include_closed else "")
    status, body = await http_request(port, path, ssl_context=ssl_context)
    if status != 200:
        raise RuntimeError(f"/debug/sessions answered {status}")
    return json.loads(body)["sessions"]
