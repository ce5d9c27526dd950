"""The switch with the official google-genai SDK as the client: a live Gemini-dialect conversation moves
between providers, asked in-band by the client and by the operator's admin API, and the SDK goes on with
its normal API. The history must reach the new provider (its fake's /debug/sessions) and the fakes'
``turn <n>`` count must go on.

The SDK only dials wss://, so this module runs test_switch.py's switching stack with a TLS edge. It does
not opt in to notices: the SDK turns a message with no key it knows into an exception (its
``LiveServerMessage`` has no room for ``rsSwitched``), so every raw frame the SDK reads is checked to carry
only keys of the Live API.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from google import genai
from google.genai import errors, types

from ..conftest import Infra
from .helpers import TIMEOUT_S
from .test_gemini_sdk import MODEL, SERVER_KEYS, _assert_spoke, _config, _receive_turn
from .test_switch import OTHER, SwitchStack, _admin_switch, _fake_session, _switch_stack, _user_texts
from .tls_stack import EdgeCert, genai_client, issue_edge_cert

pytestmark = pytest.mark.e2e


@dataclass
class TlsSwitchStack(SwitchStack):
    cert: EdgeCert

    def client(self, provider: str, client_sid: str, *, notices: bool = False) -> genai.Client:
        headers = {"X-RS-Core": provider, "X-RS-Session": client_sid}
        if notices:  # not for SDK clients: see the module's docstring
            headers["X-RS-Notices"] = "1"
        return genai_client(self.edge_port, self.cert.ssl_context, headers=headers)


@pytest.fixture(scope="module")
def tls_switching(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsSwitchStack]:
    workdir = tmp_path_factory.mktemp("genai_switch")
    cert = issue_edge_cert(workdir)
    with _switch_stack(infra, workdir, **cert.env) as fs:
        yield TlsSwitchStack(fs.stack, fs.edge_port, fs.admin_port, cert)


class _RecordingSocket:
    """The SDK session's websocket, every frame it reads kept (the SDK drops keys it does not know)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self.frames: list[str | bytes] = []

    async def recv(self, *args: Any, **kwargs: Any) -> str | bytes:
        frame = await self._ws.recv(*args, **kwargs)
        self.frames.append(frame)
        return frame

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ws, name)


@asynccontextmanager
async def _session(
    fs: TlsSwitchStack, provider: str, client_sid: str, *, notices: bool = False
) -> AsyncIterator[tuple[genai.live.AsyncSession, _RecordingSocket]]:
    client = fs.client(provider, client_sid, notices=notices)
    async with client.aio.live.connect(model=MODEL, config=_config()) as session:
        recorder = _RecordingSocket(session._ws)
        session._ws = recorder
        yield session, recorder
    if notices:
        return
    for frame in recorder.frames:  # nothing of ours reached the SDK: only the Live API's own keys
        assert set(json.loads(frame)) <= SERVER_KEYS, frame


async def _say(session: genai.live.AsyncSession, text: str, *, realtime: bool = False) -> str:
    """A text turn through the SDK's normal API (client content, or realtime input text): its transcript."""
    if realtime:
        await session.send_realtime_input(text=text)
    else:
        await session.send_client_content(
            turns=types.Content(role="user", parts=[types.Part(text=text)]), turn_complete=True)
    turn = await _receive_turn(session)
    _assert_spoke(turn, turn.transcript)  # a whole answer: audio, turnComplete, usage
    return turn.transcript


async def _moved(fs: SwitchStack, provider: str, marker: str, turns: int) -> dict[str, Any]:
    """The upstream session on ``provider`` holding the whole conversation so far (``turns`` user turns and
    their answers): a session from before a switch back holds fewer items."""
    return await _fake_session(fs.fake_port(provider), marker, min_items=2 * turns)


# -- in-band: the client's own rsSwitch ---------------------------------------------------------------


@pytest.mark.parametrize("start", ["openai", "gemini"])
async def test_sdk_in_band_switch_there_and_back_keeps_the_conversation(
    tls_switching: TlsSwitchStack, start: str
) -> None:
    marker = uuid.uuid4().hex[:8]
    target = OTHER[start]
    async with _session(tls_switching, start, f"gsdk-{marker}") as (session, _):
        assert await _say(session, f"one {marker}") == f"turn 1: one {marker}"
        for turn, (provider, realtime) in enumerate(((target, True), (start, False)), start=2):
            # Our extension, not the Live API's: the SDK has no method for it, nor a send of any message,
            # so it goes on the SDK's own websocket, as any Gemini client would send it.
            await session._ws.send(json.dumps({"rsSwitch": {"provider": provider.upper()}}))
            # The SDK hears nothing of the switch (no opt-in): the new upstream holding the history says
            # it happened. The next turn then goes through the SDK's normal API.
            await _moved(tls_switching, provider, f"one {marker}", turn - 1)
            said = f"{turn} {marker}"
            assert await _say(session, said, realtime=realtime) == f"turn {turn}: {said}"
            moved = await _moved(tls_switching, provider, said, turn)
            assert moved["closed_at"] is None
            assert _user_texts(moved) == [f"one {marker}", *(f"{n} {marker}" for n in range(2, turn + 1))]


# -- the operator's switch while the SDK session is live -----------------------------------------------


@pytest.mark.parametrize("start", ["openai", "gemini"])
async def test_sdk_session_goes_on_through_an_admin_switch(tls_switching: TlsSwitchStack, start: str) -> None:
    marker = uuid.uuid4().hex[:8]
    target, client_sid = OTHER[start], f"gadm-{marker}"
    loop = asyncio.get_running_loop()
    async with _session(tls_switching, start, client_sid) as (session, recorder):
        assert await _say(session, f"one {marker}") == f"turn 1: one {marker}"
        # The admin API answers once the session runs on the new provider.
        status, body = await loop.run_in_executor(
            None, _admin_switch, tls_switching, client_sid, {"provider": target, "when": "now"})
        assert status == 200, body
        assert (body["provider"], body["reason"]) == (target, "manual")
        heard = len(recorder.frames)
        assert await _say(session, f"two {marker}", realtime=True) == f"turn 2: two {marker}"
        # The switch left nothing for the SDK to read between the turns (the turn's own frames start with
        # its answer), and the socket is still open.
        assert "serverContent" in json.loads(recorder.frames[heard])
        assert await _say(session, f"three {marker}") == f"turn 3: three {marker}"
    moved = await _moved(tls_switching, target, f"three {marker}", 3)
    assert _user_texts(moved) == [f"one {marker}", f"two {marker}", f"three {marker}"]
    old = await _fake_session(tls_switching.fake_port(start), f"one {marker}", min_items=2)
    assert old["closed_at"] is not None, "the switch closed the old upstream"


async def test_sdk_fails_on_the_switch_notice_it_opted_in_to(tls_switching: TlsSwitchStack) -> None:
    """Why the SDK must not opt in to notices (docs/entry-points.md): the in-band ``rsSwitched`` has no key the
    SDK knows, and its ``receive()`` raises on such a message. Should a new SDK version take it, SDK users
    could be told to opt in."""
    marker = uuid.uuid4().hex[:8]
    client_sid = f"gnot-{marker}"
    loop = asyncio.get_running_loop()
    async with _session(tls_switching, "openai", client_sid, notices=True) as (session, recorder):
        assert await _say(session, f"one {marker}") == f"turn 1: one {marker}"
        status, body = await loop.run_in_executor(
            None, _admin_switch, tls_switching, client_sid, {"provider": "gemini", "when": "now"})
        assert status == 200, body
        with pytest.raises((TypeError, errors.APIError)):  # TypeError today: it compares None with 400
            async with asyncio.timeout(TIMEOUT_S):
                async for _msg in session.receive():
                    pass
        assert json.loads(recorder.frames[-1])["rsSwitched"]["to"] == "gemini"
