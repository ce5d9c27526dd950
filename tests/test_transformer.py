"""The transformer in-process against a real nats-server and redis-server."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS

from services.dev.stack import Stack
from services.transformer.transformer import Transformer, tails_lost
from shared import bus
from shared import events as ev
from shared.bus import Subjects
from shared.codecs.base import Out
from shared.codecs.openai_client import OpenAIClientCodec
from shared.config import load_config
from shared.session import SessionMeta
from shared.store import Store

from .conftest import Infra


class _BrokenOnPoison(OpenAIClientCodec):
    """A codec with a bug: it raises on one particular frame."""

    def feed(self, frame: str | bytes) -> Out:
        data = frame if isinstance(frame, bytes) else frame.encode()
        if b"poison" in data:
            raise RuntimeError("codec bug")
        if b"switch-me" in data:  # stands for the dialect's switch control (the codec's own tests parse it)
            return Out(events=[ev.SwitchRequest(provider="gemini", when="now"), ev.InputAudioClear()])
        return super().feed(frame)


@pytest.fixture
async def transformer(
    infra: Infra, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> AsyncIterator[NATS]:
    monkeypatch.setattr("services.transformer.transformer.client_codec", lambda meta: _BrokenOnPoison(meta, beta=False))
    # A bus of its own: transformers of other test stacks on a shared bus would answer the assignment.
    stack = Stack(tmp_path)
    nats_url = stack.start_nats()
    try:
        config = load_config({"NATS_URL": nats_url, "REDIS_URL": infra.redis_url}, dotenv=None)
        service = Transformer(config)
        nc = await nats.connect(nats_url)
        async with Store.connect(infra.redis_url) as store, service.running(nc, store):
            yield nc
        await nc.close()
    finally:
        stack.stop()


async def test_a_codec_bug_becomes_an_error_in_the_dialect_and_the_session_lives_on(transformer: NATS) -> None:
    nc = transformer
    sid = uuid.uuid4().hex[:30]
    meta = SessionMeta(sid=sid, account="a", client_session_id="c", dialect="openai_ga", provider="openai")
    frames: asyncio.Queue[bus.ClientOut] = asyncio.Queue()

    async def on_cout(msg: nats.aio.msg.Msg) -> None:
        await frames.put(bus.decode(msg.data, bus.ClientOut))

    await nc.subscribe(Subjects.cout(sid), cb=on_cout)
    reply = await nc.request(Subjects.ASSIGN_TRANSFORMER, bus.encode(bus.AssignRequest(meta=meta, epoch=1)), timeout=5)
    assert bus.decode(reply.data, bus.AssignReply).ok
    greeting = await asyncio.wait_for(frames.get(), 5)
    assert json.loads(greeting.frames[0])["type"] == "session.created"

    poison = json.dumps({"type": "input_audio_buffer.clear", "poison": True}).encode()
    await nc.publish(Subjects.cin(sid), bus.encode(bus.ClientIn(1, 1, poison)))
    error = json.loads((await asyncio.wait_for(frames.get(), 5)).frames[0])
    assert error["type"] == "error" and error["error"]["code"] == "internal_error"

    await nc.publish(Subjects.cin(sid), bus.encode(bus.ClientIn(1, 2, b'{"type":"input_audio_buffer.clear"}')))
    after = json.loads((await asyncio.wait_for(frames.get(), 5)).frames[0])
    assert after["type"] == "input_audio_buffer.cleared"


async def test_a_switch_request_goes_to_the_edge_as_a_signal_and_never_upstream(transformer: NATS) -> None:
    nc = transformer
    sid = uuid.uuid4().hex[:30]
    meta = SessionMeta(sid=sid, account="a", client_session_id="c", dialect="openai_ga", provider="openai")
    signals: asyncio.Queue[bus.Signal] = asyncio.Queue()
    ups: asyncio.Queue[ev.Envelope] = asyncio.Queue()

    async def on_signal(msg: nats.aio.msg.Msg) -> None:
        await signals.put(bus.decode(msg.data, bus.Signal))

    async def on_up(msg: nats.aio.msg.Msg) -> None:
        await ups.put(ev.decode_envelope(msg.data))

    await nc.subscribe(Subjects.signal(sid), cb=on_signal)
    await nc.subscribe(Subjects.up(sid), cb=on_up)
    reply = await nc.request(Subjects.ASSIGN_TRANSFORMER, bus.encode(bus.AssignRequest(meta=meta, epoch=3)), timeout=5)
    assert bus.decode(reply.data, bus.AssignReply).ok
    await nc.publish(Subjects.cin(sid), bus.encode(bus.ClientIn(3, 1, b'{"type":"switch-me"}')))
    signal = await asyncio.wait_for(signals.get(), 5)
    assert (signal.kind, signal.provider, signal.when, signal.epoch) == ("switch", "gemini", "now", 3)
    envelope = await asyncio.wait_for(ups.get(), 5)
    assert [type(event) for event in envelope.events] == [ev.InputAudioClear]


def test_tails_lost_are_the_responses_that_heard_nothing_since_the_reconnect() -> None:
    at_reconnect = {"a": ("r1", (1, 5)), "b": ("r2", (1, 9)), "c": ("r3", (2, 1)), "d": ("r4", (1, 1))}
    now = {"a": ("r1", (1, 5)), "b": ("r2", (1, 10)), "c": (None, (2, 2)), "e": ("r9", (1, 1))}
    # a: same response, same newest envelope -> lost; b: heard more; c: ended; d: dropped meanwhile.
    assert tails_lost(at_reconnect, now) == ["a"]


async def test_a_response_whose_tail_was_lost_on_a_restarted_bus_is_ended(infra: Infra, tmp_path: Path) -> None:
    """nats-server restarted while a response streams: what the worker flushed before this transformer's
    subscriptions were back is gone (core NATS), its end among it. The transformer ends the response
    (failed, ``bus_interrupted``) once it heard nothing for the stall time, so the client is not left
    waiting (found by the chaos run's nats restarts)."""
    stack = Stack(tmp_path)
    nats_url = stack.start_nats()
    try:
        config = load_config({"NATS_URL": nats_url, "REDIS_URL": infra.redis_url, "RS_STALL_MS": "300"}, dotenv=None)
        service = Transformer(config)
        nc = await bus.connect(nats_url, name="transformer-under-test")
        peer = await bus.connect(nats_url, name="edge-and-worker")
        async with Store.connect(infra.redis_url) as store, service.running(nc, store):
            sid = uuid.uuid4().hex[:30]
            meta = SessionMeta(sid=sid, account="a", client_session_id="c", dialect="openai_ga", provider="openai")
            frames: asyncio.Queue[dict] = asyncio.Queue()

            async def on_cout(msg: nats.aio.msg.Msg) -> None:
                for frame in bus.decode(msg.data, bus.ClientOut).frames:
                    await frames.put(json.loads(frame))

            await peer.subscribe(Subjects.cout(sid), cb=on_cout)
            await nc.flush()  # the transformer's assignment subscription is on the server
            reply = await peer.request(
                Subjects.ASSIGN_TRANSFORMER, bus.encode(bus.AssignRequest(meta=meta, epoch=1)), timeout=5)
            assert bus.decode(reply.data, bus.AssignReply).ok
            assert (await asyncio.wait_for(frames.get(), 5))["type"] == "session.created"
            await peer.publish(Subjects.down(sid), bus.envelope(1, 1, [ev.ResponseStarted(response_id="r1")]))
            assert (await asyncio.wait_for(frames.get(), 5))["type"] == "response.created"

            await asyncio.to_thread(stack.restart_nats, 0.3)  # the response's tail never comes

            async with asyncio.timeout(10):
                while (done := await frames.get())["type"] != "response.done":
                    pass
            assert done["response"]["status"] == "failed", done
        await peer.close()
        await nc.close()
    finally:
        stack.stop()
