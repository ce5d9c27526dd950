"""Make-before-break: a switch asked for mid-response opens the new upstream at once and cuts over at the
turn end; a recycle (Gemini goAway, the OpenAI session length) is the same move to the same provider,
invisible to the client. The four real processes and both fakes; the fakes' /debug/sessions say when
each upstream connection opened and closed.

Its own stacks: knobs on the fakes and a short OpenAI session length would otherwise reach other tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI

from services.dev.stack import Stack, free_port
from services.fakes.control import debug_sessions, reset_knobs, set_knobs

from ..conftest import Infra
from .helpers import API_KEY, TIMEOUT_S

pytestmark = pytest.mark.e2e

OTHER = {"openai": "gemini", "gemini": "openai"}
MAX_AGE_S = 3.0
# What a client may see during and after an invisible recycle: the turns' own events, nothing else.
TURN_EVENTS = {
    "conversation.item.added", "conversation.item.done", "conversation.item.created", "response.created",
    "response.output_item.added", "response.content_part.added", "response.output_audio.delta",
    "response.output_audio_transcript.delta", "response.output_audio.done", "response.output_audio_transcript.done",
    "response.content_part.done", "response.output_item.done", "response.done", "rate_limits.updated",
}


class MbbStack:
    def __init__(self, stack: Stack, edge_port: int) -> None:
        self.stack, self.edge_port = stack, edge_port

    def sdk(self, provider: str, client_sid: str) -> Any:
        client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{self.edge_port}/v1")
        return client.realtime.connect(
            model="gpt-realtime", extra_query={"rs_core": provider, "rs_u_sessid": client_sid})

    def port(self, provider: str) -> int:
        return self.stack.fake_ports[provider]


def _start(infra: Infra, workdir: Path, **env: str) -> MbbStack:
    stack = Stack(workdir, auto_switch=True)
    stack.env["REDIS_URL"] = infra.redis_url
    try:
        stack.start_nats()
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1", "RS_ADMIN_PORT": str(free_port()),
                          "RS_SWITCH_MIN_DWELL_S": "0", **env})
        for command, instance in (("checkpoint", "mbb-ckpt"), ("transformer", "mbb-tr"),
                                  ("provider-worker", "mbb-wk"), ("edge", "mbb-edge")):
            stack.start_instance(command, instance)
    except BaseException:
        stack.stop()
        raise
    return MbbStack(stack, port)


@pytest.fixture(scope="module")
def mbb(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MbbStack]:
    fs = _start(infra, tmp_path_factory.mktemp("mbb"))
    try:
        yield fs
    finally:
        fs.stack.stop()


@pytest.fixture(scope="module")
def aged(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MbbStack]:
    fs = _start(infra, tmp_path_factory.mktemp("mbb-age"), RS_OPENAI_MAX_SESSION_S=str(MAX_AGE_S))
    try:
        yield fs
    finally:
        fs.stack.stop()


def _marker() -> str:
    return uuid.uuid4().hex[:8]


async def _sessions_with(port: int, marker: str, *, count: int, min_items: int = 0) -> list[dict[str, Any]]:
    """The fake's upstream sessions (closed ones too) holding ``marker``, oldest first, once there are
    ``count`` of them and the newest holds ``min_items`` items."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            found = [s for s in await debug_sessions(port, include_closed=True)
                     if marker in " ".join(str(item.get("text") or "") for item in s["items"])]
            found.sort(key=lambda s: s["created_at"])
            if len(found) >= count and len(found[-1]["items"]) >= min_items:
                return found
            await asyncio.sleep(0.05)


def _user_texts(session: dict[str, Any]) -> list[str]:
    return [str(i.get("text")) for i in session["items"] if i.get("role") == "user"]


async def _until(conn: Any, *types: str) -> list[Any]:
    seen: list[Any] = []
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            event = await conn.recv()
            seen.append(event)
            assert event.type != "error", event
            if event.type in types:
                return seen


async def _say(conn: Any, text: str) -> tuple[str, list[Any]]:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]})
    await conn.response.create()
    events = await _until(conn, "response.done")
    return "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta"), events


async def _manual_turns(conn: Any) -> None:
    await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    await _until(conn, "session.updated")


@pytest.mark.parametrize("start", ["openai", "gemini"])
async def test_turn_end_switch_mid_response_connects_first_and_cuts_over_at_the_turn_end(
    mbb: MbbStack, start: str,
) -> None:
    marker, target = _marker(), OTHER[start]
    async with mbb.sdk(start, f"mbb-{marker}") as conn:
        await _manual_turns(conn)
        assert (await _say(conn, f"one {marker}"))[0] == f"turn 1: one {marker}"
        old = (await _sessions_with(mbb.port(start), f"one {marker}", count=1, min_items=2))[-1]["id"]
        try:
            # A response long enough to switch during it: 1.2 s of audio in real time.
            await set_knobs(mbb.port(start), session=old, response_ms=1200, pace=1.0)
            await conn.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"two {marker}"}]})
            await conn.response.create()
            await _until(conn, "response.output_audio.delta")
            await conn.send({"type": "rs.switch", "provider": target.upper(), "when": "turn_end"})  # type: ignore[arg-type]
            # Said while the old provider still answers: it must reach the new one once.
            await conn.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"aside {marker}"}]})
            seen = await _until(conn, "response.done")
            done_at = time.time()
            assert seen[-1].response.status == "completed"  # the old provider finished its answer
            assert "rs.switched" not in {e.type for e in seen}  # not before the turn end
            # Said at the turn end, while the worker cuts over.
            await conn.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"cut {marker}"}]})
            switched = (await _until(conn, "rs.switched"))[-1]
        finally:
            with contextlib.suppress(RuntimeError):  # gone with its connection once switched away
                await reset_knobs(mbb.port(start), session=old)
        assert (switched.to, switched.reason) == (target, "manual")  # type: ignore[attr-defined]
        print(f"\n{start} -> {target}: gap from the turn end to the new upstream ready {switched.gap_ms} ms")  # type: ignore[attr-defined]
        # Generous for a loaded 2-core machine (10-40 ms usual: the checkpoint folding the turn's end and
        # the stream read); a break-before-make switch adds the connect, setup and history on top.
        assert switched.gap_ms < 100  # type: ignore[attr-defined]
        text, _ = await _say(conn, f"three {marker}")
        assert text.endswith(f"three {marker}")
    new = (await _sessions_with(mbb.port(target), f"three {marker}", count=1, min_items=5))[-1]
    said = " | ".join(_user_texts(new))
    print(f"the new provider holds: {said}")
    for phrase in ("one", "two", "aside", "cut", "three"):  # each exactly once, in order
        assert said.count(f"{phrase} {marker}") == 1, said
    assert [said.index(f"{p} {marker}") for p in ("one", "two", "aside", "cut", "three")] == sorted(
        said.index(f"{p} {marker}") for p in ("one", "two", "aside", "cut", "three"))
    # Connected before the turn end: make-before-break.
    assert new["created_at"] < done_at, (new["created_at"], done_at)
    print(f"new upstream connected {round((done_at - new['created_at']) * 1000)} ms before the client saw the turn end")
    old_session = next(s for s in await debug_sessions(mbb.port(start), include_closed=True) if s["id"] == old)
    assert old_session["closed_at"] is not None and old_session["closed_at"] >= new["created_at"]


@pytest.mark.parametrize("fault", [
    {"refuse": 503, "refuse_count": 1},  # cannot connect
    {"session_cap_s": 0.2},  # connects, then is ended (1011) before the turn end
], ids=["refused", "dropped"])
async def test_switch_to_a_provider_that_cannot_be_had_keeps_the_old_upstream(
    mbb: MbbStack, fault: dict[str, Any],
) -> None:
    marker = _marker()
    async with mbb.sdk("openai", f"mbbf-{marker}") as conn:
        await _manual_turns(conn)
        assert (await _say(conn, f"one {marker}"))[0] == f"turn 1: one {marker}"
        old = (await _sessions_with(mbb.port("openai"), f"one {marker}", count=1, min_items=2))[-1]["id"]
        try:
            await set_knobs(mbb.port("openai"), session=old, response_ms=800, pace=1.0)
            await set_knobs(mbb.port("gemini"), **fault)
            await conn.conversation.item.create(item={
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": f"two {marker}"}]})
            await conn.response.create()
            await _until(conn, "response.output_audio.delta")
            await conn.send({"type": "rs.switch", "provider": "GEMINI", "when": "turn_end"})  # type: ignore[arg-type]
            seen = await _until(conn, "response.done")
            assert seen[-1].response.status == "completed"
        finally:
            await reset_knobs(mbb.port("gemini"))
            with contextlib.suppress(RuntimeError):
                await reset_knobs(mbb.port("openai"), session=old)
        text, events = await _say(conn, f"three {marker}")
        assert text == f"turn 3: three {marker}"
        assert "rs.switched" not in {e.type for e in events}
    sessions = await _sessions_with(mbb.port("openai"), f"three {marker}", count=1, min_items=6)
    assert [s["id"] for s in sessions] == [old]  # the same upstream went on


async def test_gemini_go_away_is_recycled_make_before_break_and_unseen(mbb: MbbStack) -> None:
    marker = _marker()
    port = mbb.port("gemini")
    await set_knobs(port, go_away_after_s=1.0, go_away_time_left_s=4.0)  # every new connection gets one
    try:
        async with mbb.sdk("gemini", f"mbbg-{marker}") as conn:
            await _manual_turns(conn)
            text, events = await _say(conn, f"one {marker}")
            assert text == f"turn 1: one {marker}"
            sessions = await _sessions_with(port, f"one {marker}", count=2, min_items=2)  # recycled
            first, second = sessions[0], sessions[1]
            assert second["created_at"] < (first["closed_at"] or time.time())  # made before the old one broke
            assert first["close_code"] in (1000, None), first["close_code"]  # closed by us, before the cap
            text, more = await _say(conn, f"two {marker}")
            assert text == f"turn 2: two {marker}"  # the history went along
            unexpected = {e.type for e in events + more} - TURN_EVENTS
            assert not unexpected, unexpected
    finally:
        await reset_knobs(port)
    newest = (await _sessions_with(port, f"two {marker}", count=1, min_items=4))[-1]
    assert _user_texts(newest)[-2:] == [f"one {marker}", f"two {marker}"]


async def test_openai_max_session_age_recycles_at_the_next_turn_boundary_unseen(aged: MbbStack) -> None:
    marker = _marker()
    port = aged.port("openai")
    async with aged.sdk("openai", f"mbba-{marker}") as conn:
        await _manual_turns(conn)
        text, events = await _say(conn, f"one {marker}")
        assert text == f"turn 1: one {marker}"
        first = (await _sessions_with(port, f"one {marker}", count=1, min_items=2))[0]
        try:
            # A turn that runs across the maximum age: the recycle waits for its end.
            await set_knobs(port, session=first["id"], response_ms=int((MAX_AGE_S + 1.5) * 1000), pace=1.0)
            text, more = await _say(conn, f"two {marker}")
        finally:
            with contextlib.suppress(RuntimeError):
                await reset_knobs(port, session=first["id"])
        done_at = time.time()
        assert text == f"turn 2: two {marker}"
        assert more[-1].response.status == "completed"
        sessions = await _sessions_with(port, f"two {marker}", count=2, min_items=4)
        old, new = sessions[0], sessions[1]
        assert old["id"] == first["id"]
        assert new["created_at"] - old["created_at"] >= MAX_AGE_S - 0.1  # at the age, not before
        assert new["created_at"] < done_at  # prepared while the long answer played
        assert old["closed_at"] is not None and old["closed_at"] >= new["created_at"]
        assert old["close_code"] in (1000, None), old["close_code"]
        text, last = await _say(conn, f"three {marker}")
        assert text == f"turn 3: three {marker}"
        unexpected = {e.type for e in events + more + last} - TURN_EVENTS
        assert not unexpected, unexpected
