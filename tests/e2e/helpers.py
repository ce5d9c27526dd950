"""Helpers for end-to-end tests: credentials, fake debug views, audio checks."""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.request
from typing import Any

from shared.audio import dominant_hz, tone
from shared.auth import seed_token

ACCOUNT = "996-sdassds-86-asd"
SECRET = "secretkey-996"
API_KEY = f"{ACCOUNT}:{SECRET}"
GEMINI_WS_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
TIMEOUT_S = 20.0
# Warnings the gateway sends when the provider cannot honour a field (never a silent drop).
WARNING_CODES = frozenset({"unsupported_field"})

__all__ = [
    "ACCOUNT",
    "API_KEY",
    "GEMINI_WS_PATH",
    "SECRET",
    "TIMEOUT_S",
    "WARNING_CODES",
    "assert_not_error",
    "b64",
    "dominant_hz",
    "events_until",
    "fake_session_with",
    "seed_url",
    "tone",
    "unb64",
]


async def events_until(conn: Any, *types: str) -> list[Any]:
    """Every event an SDK connection receives up to the first of ``types``, errors included (the caller says
    which it accepts)."""
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            seen.append(event)
            if event.type in types:
                return seen


def seed_url(base: str, session_id: str, rs_api: str, rs_core: str) -> str:
    token = seed_token(SECRET, session_id)
    return f"{base}/?rs_accid={ACCOUNT}&rs_u_sessid={session_id}&rs_auth={token}&rs_api={rs_api}&rs_core={rs_core}"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


async def fake_session_with(http_base: str, marker: str, *, min_items: int = 0, timeout: float = TIMEOUT_S) -> dict:
    """The fake's live upstream session whose conversation mentions ``marker`` (polls /debug/sessions)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        data = await loop.run_in_executor(None, _get_json, f"{http_base}/debug/sessions?all=1")
        for session in data["sessions"]:
            texts = " ".join(str(item.get("text") or "") for item in session["items"])
            if marker in texts and len(session["items"]) >= min_items:
                return session
        if loop.time() > deadline:
            raise AssertionError(f"no fake session mentions {marker!r}: {data}")
        await asyncio.sleep(0.05)


def assert_not_error(event: Any) -> None:
    """An SDK event that is an error fails the test, unless it is a warning naming an unmappable field."""
    if event.type == "error":
        assert event.error.code in WARNING_CODES and event.error.param, f"error event: {event}"
