"""Kill any worker, lose nothing: kill -9 of the provider-worker, the transformer or the checkpoint
in the middle of a live conversation, with the official openai SDK as the client.

This module runs its own stack (two of each transformer and worker, its own fakes) so that killing
processes and slowing the fakes affects no other test.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from openai import AsyncOpenAI

from services.dev.stack import Proc, Stack, free_port
from services.fakes.common import debug_sessions, reset_knobs, set_knobs
from shared import audio, bus
from shared import events as ev
from shared.session import session_key
from shared.store import Store

from ..conftest import Infra
from .helpers import ACCOUNT, API_KEY, TIMEOUT_S, b64, events_until, tone, unb64

pytestmark = pytest.mark.e2e


@dataclass
class FailoverStack:
    stack: Stack
    edge_port: int
    procs: dict[str, Proc]  # by instance id

    def start(self, command: str, instance: str) -> Proc:
        proc = self.stack.start_instance(command, instance)
        self.procs[instance] = proc
        return proc


@pytest.fixture(scope="module")
def failover(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FailoverStack]:
    stack = Stack(tmp_path_factory.mktemp("failover"))
    stack.env["REDIS_URL"] = infra.redis_url
    try:
        # A bus of its own: services of other test stacks on a shared bus would join the same queue
        # groups and the same checkpoint consumer, and take sessions this module kills under.
        stack.start_nats()
        stack.start_fakes()
        port = free_port()
        stack.env.update({"PORT": str(port), "HOST": "127.0.0.1"})
        fs = FailoverStack(stack, port, {})
        for command, instance in (
            ("checkpoint", "ckpt-a"), ("transformer", "tr-a"), ("transformer", "tr-b"),
            ("provider-worker", "wk-a"), ("provider-worker", "wk-b"), ("edge", "edge-a"),
        ):
            fs.start(command, instance)
        yield fs
    finally:
        stack.stop()


@pytest.fixture
async def store(infra: Infra) -> AsyncIterator[Store]:
    async with Store.connect(infra.redis_url) as s:
        yield s


async def _route(store: Store, sid: str, role: str) -> str:
    return (await store.snapshot(sid)).record.get(f"route_{role}", "")


async def _route_epoch(store: Store, sid: str) -> int:
    return int((await store.snapshot(sid)).record.get("route_epoch", "0"))


async def _route_moves(store: Store, sid: str, role: str, before: int) -> str:
    """The instance of ``role`` once the edge has recorded a reattach: a route epoch newer than
    ``before`` (read before the kill; the replacement may reuse the old instance's name)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            record = (await store.snapshot(sid)).record
            if int(record.get("route_epoch", "0")) > before and record.get(f"route_{role}"):
                return record[f"route_{role}"]
            await asyncio.sleep(0.02)


async def _say(conn: Any, text: str) -> None:
    await conn.conversation.item.create(
        item={"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    )
    await conn.response.create()


def _transcript(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_audio_transcript.delta")


def _connect(fs: FailoverStack, provider: str, client_sid: str | None = None) -> Any:
    """An official openai SDK (GA) connection through this module's edge."""
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{fs.edge_port}/v1")
    query = {"rs_core": provider} | ({"rs_u_sessid": client_sid} if client_sid else {})
    return client.realtime.connect(model="gpt-realtime", extra_query=query)


def _ids(prefix: str) -> tuple[str, str, str]:
    """A marker, a client session id built from it, and that session's key."""
    marker = uuid.uuid4().hex[:8]
    client_sid = f"{prefix}-{marker}"
    return marker, client_sid, session_key(ACCOUNT, client_sid)


async def _configure(conn: Any, *, vad: bool = False, transcription: bool = False) -> None:
    """Manual turns, or server VAD ending a turn after 300 ms of silence; input transcription or not."""
    audio_in: dict[str, Any] = {
        "turn_detection": {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 10} if vad else None
    }
    if transcription:
        audio_in["transcription"] = {"model": "gpt-4o-mini-transcribe"}
    await conn.session.update(session={"type": "realtime", "audio": {"input": audio_in}})
    await events_until(conn, "session.updated")


async def _first_manual_turn(conn: Any, fake_port: int, marker: str) -> dict[str, Any]:
    """Manual turns, one text turn answered; the fake's upstream session that holds it."""
    await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
    await events_until(conn, "session.updated")
    await _say(conn, f"one {marker}")
    await events_until(conn, "response.done")
    return next(s for s in await debug_sessions(fake_port)
                if any(f"one {marker}" in str(i.get("text")) for i in s["items"]))


def _probes(fs: FailoverStack, result: str) -> float:
    """The edge's count of liveness probes with ``result`` (alive / gone / unresponsive)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{fs.edge_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    prefix = f'rs_liveness_probes_total{{result="{result}"}} '
    return sum(float(line[len(prefix):]) for line in text.splitlines() if line.startswith(prefix))


async def _kill_and_respawn(fs: FailoverStack, instance: str, command: str) -> None:
    fs.procs[instance].kill(signal.SIGKILL)
    fs.procs[instance].popen.wait(5)
    fs.start(command, instance)  # capacity comes back, under the same name (a restarted pod)


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_worker_killed_mid_response(failover: FailoverStack, store: Store, provider: str) -> None:
    marker, client_sid, sid = _ids("fo")
    fake_port = failover.stack.fake_ports[provider]
    async with _connect(failover, provider, client_sid) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await events_until(conn, "session.updated")
        await _say(conn, f"one {marker}")
        events = await events_until(conn, "response.done")
        assert _transcript(events) == f"turn 1: one {marker}"

        # A slow response (3 s of audio at real time), cut by kill -9 of the worker holding the session.
        await set_knobs(fake_port, pace=1.0, response_ms=3_000)
        try:
            await _say(conn, f"two {marker}")
            await events_until(conn, "response.output_audio.delta")
            victim = await _route(store, sid, "worker")
            assert victim in failover.procs
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            gone_before = await asyncio.to_thread(_probes, failover, "gone")
            await _kill_and_respawn(failover, victim, "provider-worker")
            events = await events_until(conn, "response.done")
            cut = events[-1].response
            assert cut.status in ("failed", "incomplete", "cancelled"), cut
            assert loop.time() - killed_at < 3.0, "the cut response must be closed promptly, not time out"
            # Noticed by a probe finding no responders (the killed process's connection is gone), not
            # by waiting out the heartbeat deadline.
            assert await asyncio.to_thread(_probes, failover, "gone") > gone_before
        finally:
            await reset_knobs(fake_port)

        # Spoken input right after the kill: none of it may be lost.
        await conn.input_audio_buffer.append(audio=b64(tone(440, 700, 24_000)))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert _transcript(events) == "turn 3: audio 0.7s"
        assert events[-1].response.status == "completed"
        assert await _route(store, sid, "worker") != ""

        await _say(conn, f"three {marker}")
        events = await events_until(conn, "response.done")
        assert _transcript(events) == f"turn 4: three {marker}"

    # The replacement's upstream conversation holds every earlier item, in order.
    sessions = await debug_sessions(fake_port, include_closed=True)
    latest = [s for s in sessions if any(f"three {marker}" in str(i.get("text")) for i in s["items"])]
    assert latest, sessions
    users = [i["text"] for i in latest[-1]["items"] if i["role"] == "user"]
    assert users == [f"one {marker}", f"two {marker}", "audio 0.7s", f"three {marker}"]


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_spoken_turn_survives_the_worker_dying_before_its_transcript(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """Server VAD and no input transcription: the log holds the spoken turn as an empty audio item, so
    only the stream has what was said. The worker dies while answering it: the replacement's provider
    hears the turn again (its audio is replayed from the commit before it) and answers it."""
    marker, client_sid, sid = _ids("vad")
    fake_port = failover.stack.fake_ports[provider]
    async with _connect(failover, provider, client_sid) as conn:
        await _configure(conn, vad=True)
        await _say(conn, f"one {marker}")
        await events_until(conn, "response.done")

        await set_knobs(fake_port, pace=1.0, response_ms=3_000)
        try:
            pcm = tone(440, 1_000, 24_000) + bytes(24_000 * 2 * 800 // 1_000)
            for i in range(0, len(pcm), 960):  # 20 ms frames
                await conn.input_audio_buffer.append(audio=b64(pcm[i:i + 960]))
            heard = await events_until(conn, "response.output_audio.delta")
            assert [e.type for e in heard].count("input_audio_buffer.committed") == 1
            assert not [e for e in heard if e.type.startswith("conversation.item.input_audio_transcription")]
            await _kill_and_respawn(failover, await _route(store, sid, "worker"), "provider-worker")
            cut = await events_until(conn, "response.done")
            assert cut[-1].response.status != "completed"
        finally:
            await reset_knobs(fake_port)
        events = await events_until(conn, "response.done")
        assert _transcript(events) == "turn 2: audio 1.3s"
        assert events[-1].response.status == "completed"


# The client's wire format: (session audio format, encode PCM16 for the wire, wire bytes per ms of audio).
_WIRE_FORMATS = {
    "pcm16": ({"type": "audio/pcm", "rate": 24_000}, lambda pcm: pcm, 48),
    "g711_ulaw": ({"type": "audio/pcmu"}, audio.pcm16_to_ulaw, 8),
}


@pytest.mark.parametrize("wire", list(_WIRE_FORMATS))
async def test_transformer_killed_mid_session(failover: FailoverStack, store: Store, wire: str) -> None:
    fmt, encode, bytes_per_ms = _WIRE_FORMATS[wire]
    rate = fmt.get("rate", 8_000)
    marker, client_sid, sid = _ids("tr")
    async with _connect(failover, "openai", client_sid) as conn:
        await conn.session.update(session={"type": "realtime", "instructions": "kept", "audio": {
            "input": {"turn_detection": None, "format": fmt}, "output": {"format": fmt}}})
        await events_until(conn, "session.updated")
        await _say(conn, f"one {marker}")
        await events_until(conn, "response.done")
        victim = await _route(store, sid, "transformer")
        before = await _route_epoch(store, sid)
        await _kill_and_respawn(failover, victim, "transformer")
        # Frames sent while nobody translates are not lost: they are in the stream. The replacement
        # decodes them in the client's format, and answers in it.
        await conn.input_audio_buffer.append(audio=b64(encode(tone(440, 500, rate))))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert _transcript(events) == "turn 2: audio 0.5s"
        played = sum(len(unb64(e.delta)) for e in events if e.type == "response.output_audio.delta")
        assert played == 400 * bytes_per_ms, "the fake's 400 ms answer, in the client's own format"
        assert [e.type for e in events].count("session.created") == 0, "a replacement greets nobody"
        assert await _route_moves(store, sid, "transformer", before), "the edge recorded the reattach"


async def test_slow_worker_is_fenced(failover: FailoverStack, store: Store) -> None:
    """A worker that is only frozen (SIGSTOP) is replaced; when it wakes it must not write into the session."""
    marker, client_sid, sid = _ids("slow")
    fake_port = failover.stack.fake_ports["openai"]
    async with _connect(failover, "openai", client_sid) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
        await events_until(conn, "session.updated")
        await set_knobs(fake_port, pace=1.0, response_ms=1_500)
        try:
            await _say(conn, f"one {marker}")
            first = await events_until(conn, "response.output_audio.delta")
            cut_id = first[-1].response_id
            victim = await _route(store, sid, "worker")
            before = await _route_epoch(store, sid)
            pid = failover.procs[victim].pid
            os.kill(pid, signal.SIGSTOP)
            try:
                events = await events_until(conn, "response.done")
                assert events[-1].response.id == cut_id and events[-1].response.status != "completed"
                assert await _route_moves(store, sid, "worker", before) != victim
            finally:
                os.kill(pid, signal.SIGCONT)
        finally:
            await reset_knobs(fake_port)
        # The woken worker still holds a provider socket full of the old response: none of it may reach us.
        await _say(conn, f"two {marker}")
        events = await events_until(conn, "response.done")
        assert all(getattr(e, "response_id", None) != cut_id for e in events)
        assert _transcript(events) == f"turn 2: two {marker}"


async def test_briefly_frozen_worker_keeps_its_sessions(failover: FailoverStack, store: Store) -> None:
    """A worker that misses beats for longer than the deadline but answers the edge's probe (a starved
    process) is slow, not dead: its sessions stay, no failover adds load where it is already short."""
    marker, client_sid, sid = _ids("frozen")
    async with _connect(failover, "openai", client_sid) as conn:
        await _say(conn, f"one {marker}")
        await events_until(conn, "response.done")
        worker = await _route(store, sid, "worker")
        epoch = await _route_epoch(store, sid)
        alive_before = await asyncio.to_thread(_probes, failover, "alive")
        pid = failover.procs[worker].pid
        os.kill(pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(0.6)  # twice the heartbeat deadline, less than the probe's patience
        finally:
            os.kill(pid, signal.SIGCONT)
        await _say(conn, f"two {marker}")
        events = await events_until(conn, "response.done")
        assert _transcript(events) == f"turn 2: two {marker}"
        assert events[-1].response.status == "completed"
        assert await _route(store, sid, "worker") == worker
        assert await _route_epoch(store, sid) == epoch, "no reattach"
        assert await asyncio.to_thread(_probes, failover, "alive") > alive_before


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_uncommitted_audio_survives_a_new_provider_connection(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """Audio appended but not committed lives only in the provider's input buffer: when that connection
    ends (the provider drops it; on Gemini a reconfiguration needs a new one), the new connection gets
    it again from the stream, so the commit that follows hears all of it."""
    marker = uuid.uuid4().hex[:8]
    fake_port = failover.stack.fake_ports[provider]
    async with _connect(failover, provider) as conn:
        upstream = await _first_manual_turn(conn, fake_port, marker)
        pcm = tone(440, 600, 24_000)
        for i in range(0, len(pcm), 960):
            await conn.input_audio_buffer.append(audio=b64(pcm[i:i + 960]))
        if provider == "openai":
            # Dropped instead of acknowledging the next change (Gemini reconnects for one anyway).
            await set_knobs(fake_port, session=upstream["id"], close_after=upstream["events_sent"])
        try:
            await conn.session.update(session={"type": "realtime", "instructions": f"terse {marker}"})
            await events_until(conn, "session.updated")
            async with asyncio.timeout(TIMEOUT_S):
                while upstream["id"] in {s["id"] for s in await debug_sessions(fake_port)}:
                    await asyncio.sleep(0.02)
        finally:
            await reset_knobs(fake_port)
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert [e for e in events if e.type == "error" and e.error.code != "provider_reconnecting"] == []
        assert _transcript(events) == "turn 2: audio 0.6s"


async def test_provider_going_away_is_replaced_at_a_turn_boundary(failover: FailoverStack, store: Store) -> None:
    """Gemini announces the end of the connection (goAway: its session cap). The worker replaces the
    connection at the next turn boundary, long before the end, with the history; the client is told
    nothing and notices nothing."""
    marker = uuid.uuid4().hex[:8]
    fake_port = failover.stack.fake_ports["gemini"]
    await set_knobs(fake_port, go_away_after_s=0.5, go_away_time_left_s=60)
    try:
        async with _connect(failover, "gemini") as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            seen = await events_until(conn, "session.updated")
            await set_knobs(fake_port, pace=1.0, response_ms=1_500)
            await _say(conn, f"one {marker}")  # goAway arrives while this is answered: rotated after it
            seen += await events_until(conn, "response.done")
            assert seen[-1].response.status == "completed"
            await reset_knobs(fake_port)
            async with asyncio.timeout(TIMEOUT_S):
                while True:
                    mine = [s for s in await debug_sessions(fake_port, include_closed=True)
                            if any(f"one {marker}" in str(i.get("text")) for i in s["items"])]
                    if len(mine) >= 2:
                        break
                    await asyncio.sleep(0.05)
            await _say(conn, f"two {marker}")
            second = await events_until(conn, "response.done")
            seen += second
            assert _transcript(second) == f"turn 2: two {marker}"
            assert [e for e in seen if e.type == "error"] == [], "the client is not told"
    finally:
        await reset_knobs(fake_port)
    latest = [s for s in await debug_sessions(fake_port, include_closed=True)
              if any(f"two {marker}" in str(i.get("text")) for i in s["items"])][-1]
    said = [str(i["text"]) for i in latest["items"] if i["role"] == "user"]
    assert said == [f"one {marker}", f"two {marker}"]


async def test_checkpoint_killed_and_restarted_without_loss(
    failover: FailoverStack, store: Store, infra: Infra
) -> None:
    marker, client_sid, sid = _ids("ck")
    failover.procs["ckpt-a"].kill(signal.SIGKILL)
    failover.procs["ckpt-a"].popen.wait(5)
    try:
        async with _connect(failover, "openai", client_sid) as conn:
            await _say(conn, f"one {marker}")
            await events_until(conn, "response.done")
            await _say(conn, f"two {marker}")
            await events_until(conn, "response.done")
        assert (await store.snapshot(sid)).items == []  # nobody has folded the stream yet
    finally:
        failover.start("checkpoint", "ckpt-a")
    async with asyncio.timeout(TIMEOUT_S):
        while len((await store.snapshot(sid)).items) < 4:
            await asyncio.sleep(0.05)
    snap = await store.snapshot(sid)
    texts = [i.text() for i in snap.items if isinstance(i, ev.Message)]
    assert texts == [f"one {marker}", f"turn 1: one {marker}", f"two {marker}", f"turn 2: two {marker}"]


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_tool_call_stays_answerable_after_the_worker_dies(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    marker, client_sid, sid = _ids("tool")
    async with _connect(failover, provider, client_sid) as conn:
        await conn.session.update(session={
            "type": "realtime", "audio": {"input": {"turn_detection": None}},
            "tools": [{"type": "function", "name": "get_weather", "description": "weather in a city",
                       "parameters": {"type": "object", "properties": {"text": {"type": "string"}}}}],
        })
        await events_until(conn, "session.updated")
        await _say(conn, f"please get_weather {marker}")
        events = await events_until(conn, "response.done")
        calls = [e for e in events if e.type == "response.function_call_arguments.done"]
        assert len(calls) == 1
        call_id = calls[0].call_id

        victim = await _route(store, sid, "worker")
        before = await _route_epoch(store, sid)
        await _kill_and_respawn(failover, victim, "provider-worker")
        await _route_moves(store, sid, "worker", before)

        await conn.conversation.item.create(
            item={"type": "function_call_output", "call_id": call_id, "output": f"sunny {marker}"}
        )
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert _transcript(events) == f"turn 1: tool get_weather returned sunny {marker}"


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_provider_drop_is_survived_by_reconnecting_with_history(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """The provider closes the socket mid-response (1011) and refuses the next two connects (503): the
    worker closes the cut response, tells the client, backs off, reconnects and restores the history."""
    marker = uuid.uuid4().hex[:8]
    fake_port = failover.stack.fake_ports[provider]
    async with _connect(failover, provider) as conn:
        upstream = await _first_manual_turn(conn, fake_port, marker)
        await set_knobs(fake_port, session=upstream["id"], close_after=upstream["events_sent"] + 4, close_code=1011)
        await set_knobs(fake_port, refuse=503, refuse_count=2)
        try:
            await _say(conn, f"two {marker}")
            events = await events_until(conn, "response.done")
            assert events[-1].response.status == "failed"
            # the failed response.done tells the client; the reconnect itself is a notice, never an error
            assert events[-1].response.status_details.error.code == "provider_disconnected"
            assert [e for e in events if e.type == "error"] == []
        finally:
            await reset_knobs(fake_port)
        await _say(conn, f"three {marker}")
        events = await events_until(conn, "response.done")
        assert _transcript(events).endswith(f"three {marker}")
    # The new upstream conversation holds all three user turns in order. (For Gemini the gateway sends
    # "two" and "three" as one user turn: the cut answer left two user items in a row, and Gemini expects
    # turns to alternate.)
    latest = [s for s in await debug_sessions(fake_port, include_closed=True)
              if any(f"three {marker}" in str(i.get("text")) for i in s["items"])][-1]
    said = " ".join(str(i["text"]) for i in latest["items"] if i["role"] == "user")
    assert said == f"one {marker} two {marker} three {marker}"


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_worker_killed_between_turns_then_a_spoken_turn(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """The worker dies while the session is idle; the next turn is spoken (manual commit): answered."""
    marker, client_sid, sid = _ids("idle")
    async with _connect(failover, provider, client_sid) as conn:
        await _configure(conn, transcription=True)
        for k in (1, 2):
            await conn.input_audio_buffer.append(audio=b64(tone(440, 500 + 100 * k, 24_000)))
            await conn.input_audio_buffer.commit()
            await conn.response.create()
            await events_until(conn, "response.done")
            await _say(conn, f"text {k} {marker}")
            await events_until(conn, "response.done")
        before = await _route_epoch(store, sid)
        await _kill_and_respawn(failover, await _route(store, sid, "worker"), "provider-worker")
        await _route_moves(store, sid, "worker", before)  # the next turn goes to the replacement
        await conn.input_audio_buffer.append(audio=b64(tone(440, 600, 24_000)))
        await conn.input_audio_buffer.commit()
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert events[-1].response.status == "completed", [e.type for e in events]
        assert _transcript(events) == "turn 5: audio 0.6s"
        await _say(conn, f"after {marker}")
        events = await events_until(conn, "response.done")
        assert events[-1].response.status == "completed", [e.type for e in events]
        assert _transcript(events) == f"turn 6: after {marker}"


async def test_a_response_create_answered_before_it_reached_the_stream_is_not_replayed(
    failover: FailoverStack, store: Store
) -> None:
    """Gemini answers a manual spoken turn by itself at activityEnd, so its response can start before the
    client's response.create (which the gateway then swallows) is in the stream. A replacement must not
    take that create for one nobody answered and ask Gemini again: an answer the client never asked
    for would barge into its next turn."""
    marker, client_sid, sid = _ids("owed")
    async with _connect(failover, "gemini", client_sid) as conn:
        await _configure(conn, transcription=True)
        await conn.input_audio_buffer.append(audio=b64(tone(440, 600, 24_000)))
        await conn.input_audio_buffer.commit()
        await events_until(conn, "response.created")  # answered before any response.create
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert _transcript(events) == "turn 1: audio 0.6s"
        async with asyncio.timeout(TIMEOUT_S):  # the checkpoint folds it
            while len((await store.snapshot(sid)).items) < 2:
                await asyncio.sleep(0.02)
        fake_port, before = failover.stack.fake_ports["gemini"], await _route_epoch(store, sid)
        old = {s["id"] for s in await debug_sessions(fake_port, include_closed=True)}
        await _kill_and_respawn(failover, await _route(store, sid, "worker"), "provider-worker")
        await _route_moves(store, sid, "worker", before)
        # The replacement restored the history upstream: an unsolicited answer would be under way.
        async with asyncio.timeout(TIMEOUT_S):
            while not any(s["id"] not in old and len(s["items"]) >= 2 for s in await debug_sessions(fake_port)):
                await asyncio.sleep(0.02)
        await _say(conn, f"two {marker}")
        events = await events_until(conn, "response.done")
        assert [e.type for e in events].count("response.created") == 1, [e.type for e in events]
        assert events[-1].response.status == "completed"
        assert _transcript(events) == f"turn 2: two {marker}"


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_re_ask_after_a_cut_vad_answer_is_answered(failover: FailoverStack, store: Store, provider: str) -> None:
    """Server VAD answers a spoken turn by itself; the worker dies while that answer plays. The client's
    response.create after the cut is the one nobody answered: the replacement acts on it."""
    marker, client_sid, sid = _ids("reask")
    fake_port = failover.stack.fake_ports[provider]
    async with _connect(failover, provider, client_sid) as conn:
        await _configure(conn, vad=True, transcription=True)
        await _say(conn, f"one {marker}")
        await events_until(conn, "response.done")
        await set_knobs(fake_port, pace=1.0, response_ms=3_000)
        try:
            pcm = tone(440, 1_000, 24_000) + bytes(24_000 * 2 * 800 // 1_000)
            for i in range(0, len(pcm), 960):
                await conn.input_audio_buffer.append(audio=b64(pcm[i:i + 960]))
            await events_until(conn, "response.output_audio.delta")
            await _kill_and_respawn(failover, await _route(store, sid, "worker"), "provider-worker")
            cut = await events_until(conn, "response.done")
            assert cut[-1].response.status != "completed"
        finally:
            await reset_knobs(fake_port)
        await conn.response.create()
        events = await events_until(conn, "response.done")
        assert events[-1].response.status == "completed"
        assert _transcript(events) == "turn 2: audio 1.3s"


@contextlib.asynccontextmanager
async def _signals(fs: FailoverStack, sid: str) -> AsyncIterator[list[bus.Signal]]:
    """The signals the session's members send its edge (collected while the block runs)."""
    nc = await bus.connect(fs.stack.nats_url, name="test-signals")
    seen: list[bus.Signal] = []

    async def on_signal(msg: Any) -> None:
        seen.append(bus.decode(msg.data, bus.Signal))

    await nc.subscribe(bus.Subjects.signal(sid), cb=on_signal)
    await nc.flush()
    try:
        yield seen
    finally:
        await nc.close()


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_a_stalled_response_is_ended_and_the_session_goes_on(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """The provider goes silent in the middle of a response (socket open, nothing sent): within
    RS_STALL_MS (2 s here) the client gets that response ended, the edge gets a stall signal, and the
    worker replaces the upstream connection: the next turn is answered, with the history."""
    marker, client_sid, sid = _ids("stall")
    fake_port = failover.stack.fake_ports[provider]
    loop = asyncio.get_running_loop()
    async with _signals(failover, sid) as signals, _connect(failover, provider, client_sid) as conn:
        upstream = await _first_manual_turn(conn, fake_port, marker)
        await set_knobs(fake_port, session=upstream["id"], stall_after=upstream["events_sent"] + 6)
        await _say(conn, f"two {marker}")
        stamped: list[tuple[float, Any]] = []
        async with asyncio.timeout(TIMEOUT_S):
            while not stamped or stamped[-1][1].type != "response.done":
                event = await conn.recv()
                stamped.append((loop.time(), event))
        types = [e.type for _, e in stamped]
        assert "response.created" in types, types
        done_at, done = stamped[-1]
        last_before = stamped[-2][0]
        assert done.response.status == "failed"
        assert done_at - last_before <= 2.0 + 0.2, f"ended {done_at - last_before:.3f} s after the last event"
        await _say(conn, f"three {marker}")
        events = await events_until(conn, "response.done")
        assert events[-1].response.status == "completed"
        assert _transcript(events).endswith(f"three {marker}")
    stalls = [s for s in signals if s.kind == "stall"]
    assert len(stalls) == 1 and stalls[0].provider == provider and stalls[0].value_ms >= 2_000, signals
    kinds = [s.kind for s in signals]
    assert kinds.count("busy") >= 3 and kinds.count("idle") >= 3, kinds
    turns = [s for s in signals if s.kind == "turn"]
    assert len(turns) >= 2 and all(0 <= s.value_ms < 5_000 for s in turns), turns  # a fake can answer within 1 ms
    said = [str(i["text"]) for s in await debug_sessions(fake_port, include_closed=True)
            if any(f"three {marker}" in str(i.get("text")) for i in s["items"]) for i in s["items"]
            if i["role"] == "user"]
    assert said[0] == f"one {marker}" and said[-1].endswith(f"three {marker}"), said


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_an_upstream_lost_right_after_every_setup_is_redialled_at_a_bounded_rate(
    failover: FailoverStack, store: Store, provider: str
) -> None:
    """The provider ends every connection right after its setup: Gemini with a goAway (a planned
    rotation, immediate when the connection is idle), OpenAI with a clean close 50 ms in. Without
    backoff the worker redialled ~30 times a second; with it, a handful in 4 s. The session goes on
    once the provider behaves again."""
    marker, client_sid, _ = _ids("redial")
    fake_port = failover.stack.fake_ports[provider]
    knobs: dict[str, Any] = (
        {"go_away_after_s": 0, "go_away_time_left_s": 60} if provider == "gemini"
        else {"session_cap_s": 0.05, "session_cap_code": 1000})
    await set_knobs(fake_port, **knobs)  # read at each connection's start: set before the first one
    try:
        started = time.time()
        async with _connect(failover, provider, client_sid) as conn:
            await conn.session.update(session={"type": "realtime", "audio": {"input": {"turn_detection": None}}})
            await asyncio.sleep(4.0)  # the rate is what is measured: a window of time, not a condition
            await reset_knobs(fake_port)
            ended = time.time()
            connects = [s for s in await debug_sessions(fake_port, include_closed=True)
                        if started <= s["created_at"] <= ended]
            assert 2 <= len(connects) <= 10, f"{len(connects)} connects in 4 s"
            await _say(conn, f"two {marker}")
            events = await events_until(conn, "response.done")
            assert events[-1].response.status == "completed"
            assert _transcript(events).endswith(f"two {marker}")
    finally:
        await reset_knobs(fake_port)


async def test_a_client_that_asked_for_notices_hears_of_a_worker_replacement(
    failover: FailoverStack, store: Store
) -> None:
    """The web client's timeline shows reattaches: a client with rs_notices=1 gets an rs.notice naming the
    replacement and how long the session was without a worker (others get nothing)."""
    marker, client_sid, sid = _ids("note")
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"ws://127.0.0.1:{failover.edge_port}/v1")
    query = {"rs_core": "openai", "rs_u_sessid": client_sid, "rs_notices": "1"}
    async with client.realtime.connect(model="gpt-realtime", extra_query=query) as conn:
        await _first_manual_turn(conn, failover.stack.fake_ports["openai"], marker)
        before = await _route_epoch(store, sid)
        await _kill_and_respawn(failover, await _route(store, sid, "worker"), "provider-worker")
        await _route_moves(store, sid, "worker", before)
        notice = (await events_until(conn, "rs.notice"))[-1]
        assert notice.code == "reattached", notice  # type: ignore[attr-defined]
        ms = int(re.search(r"resumed in (\d+) ms", notice.message).group(1))  # type: ignore[attr-defined,union-attr]
        assert 0 < ms < 10_000
        await _say(conn, f"after {marker}")
        events = await events_until(conn, "response.done")
        assert _transcript(events) == f"turn 2: after {marker}"
