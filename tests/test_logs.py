"""Logs: JSON lines with the session id and epoch as keys (production), the human format for ``rtswitch dev``;
and no secret in any log line: a session through the whole stack (the seed URL's token, the SDK's
``account:secret`` key, the workers' provider keys) leaves none of them in any process's log.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets

from shared.auth import seed_token
from shared.config import load_config
from shared.runtime import setup_logging
from shared.session import session_key

from .conftest import RunningStack
from .e2e.helpers import ACCOUNT, SECRET, TIMEOUT_S, seed_url


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved_handlers, saved_level, saved_factory = root.handlers[:], root.level, logging.getLogRecordFactory()
    out = io.StringIO()
    try:
        yield out
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
        logging.setLogRecordFactory(saved_factory)


def _log_to(out: io.StringIO, fmt: str) -> None:
    setup_logging("INFO", "edge", fmt)
    logging.getLogger().handlers[0].setStream(out)  # type: ignore[attr-defined]


def test_json_lines_carry_session_and_epoch(captured: io.StringIO) -> None:
    _log_to(captured, "json")
    logging.getLogger("t").info("session open", extra={"sid": "acc__s1", "epoch": 3})
    line = json.loads(captured.getvalue().splitlines()[-1])
    assert (line["msg"], line["sid"], line["epoch"], line["service"], line["level"]) == (
        "session open", "acc__s1", 3, "edge", "info")


def test_text_format_for_rtswitch_dev(captured: io.StringIO) -> None:
    _log_to(captured, "text")
    logging.getLogger("t").warning("instance dead", extra={"instance": "wk-a", "how": "silent"})
    line = captured.getvalue().splitlines()[-1]
    assert " WARNING edge: instance dead  instance=wk-a how=silent" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_log_format_setting() -> None:
    assert load_config({}, dotenv=None).log_format == "json"
    assert load_config({"RS_LOG_FORMAT": "TEXT"}, dotenv=None).log_format == "text"


@pytest.mark.e2e
async def test_no_secret_in_any_log_line(running: RunningStack) -> None:
    sid = f"logs-{uuid.uuid4().hex[:8]}"
    token = seed_token(SECRET, sid)
    async with websockets.connect(seed_url(running.ws_base, sid, "OPENAI", "OPENAI")) as ws:
        await ws.send(json.dumps({"type": "conversation.item.create", "item": {
            "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"hello {sid}"}]}}))
        await ws.send(json.dumps({"type": "response.create"}))
        async with asyncio.timeout(TIMEOUT_S):
            while json.loads(await ws.recv())["type"] != "response.done":
                pass
    # The SDK's way in: the account secret in the Authorization header.
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=f"{ACCOUNT}:{SECRET}", websocket_base_url=f"{running.ws_base}/v1")
    async with client.realtime.connect(model="gpt-realtime", extra_query={"rs_u_sessid": f"{sid}-sdk"}) as conn:
        await conn.session.update(session={"type": "realtime"})
        async with asyncio.timeout(TIMEOUT_S):
            while (await conn.recv()).type != "session.updated":
                pass
    # A refused connection (wrong secret) is logged too: the wrong secret must not be.
    wrong = f"wrong-{uuid.uuid4().hex[:8]}"
    with pytest.raises(websockets.InvalidStatus):
        async with websockets.connect(f"{running.ws_base}/v1/realtime?model=gpt-realtime",
                                      additional_headers={"Authorization": f"Bearer {ACCOUNT}:{wrong}"}):
            pass

    secrets = {
        SECRET: "the account secret", token: "the seed URL's token", wrong: "a refused client's secret",
        **{v: k for k, v in running.stack.env.items() if k.endswith("_API_KEY") and v},
    }
    assert len(secrets) >= 5  # the secret, two tokens, and at least the OpenAI and Gemini keys
    # Our processes' logs (the fakes stand for the providers, whose logs are theirs).
    logs = [p for p in sorted(Path(running.stack.workdir).glob("*.log")) if not p.stem.startswith("fake-")]
    assert {p.stem for p in logs} >= {"edge", "transformer", "provider-worker", "checkpoint"}
    wrote = "\n".join(p.read_text(errors="replace") for p in logs)
    assert session_key(ACCOUNT, sid) in wrote, "the session is in the logs at all (by its key)"
    leaks = [f"{what} in {p.name}" for p in logs for value, what in secrets.items() if value in p.read_text(
        errors="replace")]
    assert not leaks, leaks
