"""Batching on the bus: a provider's read burst coalesced into few ``down`` envelopes (``bus.ready``,
``bus.runs``, ``ProviderWorker._read_burst``), over a real local websocket."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import AsyncIterator

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from services.provider_worker import worker as worker_module
from services.provider_worker.worker import ProviderWorker, _pieces
from shared import bus
from shared import events as ev
from shared.codecs.base import Out
from shared.codecs.openai_provider import OpenAIProviderCodec
from tests.codecs import SeqIds, meta, read_frames

TURN = read_frames("provider_openai_audio_turn.jsonl")


def _codec() -> OpenAIProviderCodec:
    return OpenAIProviderCodec(meta("openai_ga"), "gpt-realtime", id_factory=SeqIds())


def _one_by_one(frames: list[str]) -> list[ev.Event]:
    codec = _codec()
    return [event for frame in frames for event in codec.feed(frame).events]


@pytest.fixture
async def sent(request: pytest.FixtureRequest) -> AsyncIterator[ClientConnection]:
    """A client connection whose server sent ``request.param`` frames at once; yielded once all arrived."""
    frames: list[str] = request.param

    async def serve(conn: ServerConnection) -> None:
        for frame in frames:
            await conn.send(frame)
        await conn.wait_closed()

    async with websockets.serve(serve, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}") as ws:
            deadline = time.monotonic() + 5
            while len(ws.recv_messages.frames) < len(frames):  # every frame received, none read yet
                assert time.monotonic() < deadline, "the frames never arrived"
                await asyncio.sleep(0.005)
            yield ws


def test_runs_cut_events_into_runs_of_one_part_in_order() -> None:
    audio = ev.OutputAudio(response_id="r", item_id="i", pcm=b"\0\0", rate=24000)
    done = ev.OutputDone(response_id="r", item=ev.Message(id="i", role="assistant"))
    finished = ev.ResponseDone(response_id="r")
    assert bus.runs([audio, audio, done, finished]) == [[audio, audio], [done], [finished]]
    assert bus.runs([done, done]) == [[done, done]]
    assert bus.runs([]) == []
    assert [bus.part(run) for run in bus.runs([audio, done, audio, done])] == ["live", "log", "live", "log"]


def test_pieces_keep_wire_frames_with_the_first_piece_and_an_empty_out_whole() -> None:
    audio = ev.OutputAudio(response_id="r", item_id="i", pcm=b"", rate=24000)
    done = ev.OutputDone(response_id="r", item=ev.Message(id="i", role="assistant"))
    pieces = _pieces(Out(wire=["pong"], events=[audio, done]))
    assert [(p.wire, p.events) for p in pieces] == [(["pong"], [audio]), ([], [done])]
    assert [(p.wire, p.events) for p in _pieces(Out())] == [([], [])]


@pytest.mark.parametrize("sent", [TURN], indirect=True)
async def test_a_burst_is_read_in_three_reads_that_decode_as_frame_by_frame(sent: ClientConnection) -> None:
    assert bus.ready(sent)
    session = types.SimpleNamespace(meta=meta("openai_ga"), first_output="")
    codec = _codec()
    reads: list[list[ev.Event]] = []
    while bus.ready(sent):
        out = await ProviderWorker._read_burst(session, codec, sent, await sent.recv())  # type: ignore[arg-type]
        reads.append(out.events)
    assert [event for events in reads for event in events] == _one_by_one(TURN)
    first_audio = next(i for i, frame in enumerate(TURN) if '"response.output_audio.delta"' in frame)
    done = next(i for i, frame in enumerate(TURN) if '"response.done"' in frame)
    # 1: up to the response's first audio (it does not wait for the rest of the burst); 2: up to the response
    # end (a turn end acts before anything after it is read); 3: the rest.
    assert reads[0] == _one_by_one(TURN[: first_audio + 1])
    assert isinstance(reads[0][-1], ev.OutputAudio)
    assert reads[1] == _one_by_one(TURN[: done + 1])[len(reads[0]):]
    assert isinstance(reads[1][-1], ev.ResponseDone)
    assert sum(isinstance(e, ev.OutputAudio) for e in reads[1]) == 1
    assert len(reads) == 3


@pytest.mark.parametrize("sent", [TURN[:1]], indirect=True)
async def test_a_single_ready_frame_is_not_waited_on(sent: ClientConnection) -> None:
    session = types.SimpleNamespace(meta=meta("openai_ga"), first_output="")
    out = await asyncio.wait_for(
        ProviderWorker._read_burst(session, _codec(), sent, await sent.recv()), 1)  # type: ignore[arg-type]
    assert out.events == _one_by_one(TURN[:1])
    assert not bus.ready(sent)


@pytest.mark.parametrize("sent", [TURN[8:11]], indirect=True)
async def test_a_burst_stops_at_the_byte_cap(sent: ClientConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(worker_module, "BURST_MAX_BYTES", len(TURN[8]) + len(TURN[9]))
    session = types.SimpleNamespace(meta=meta("openai_ga"), first_output="")
    codec = _codec()
    first = await ProviderWorker._read_burst(session, codec, sent, await sent.recv())  # type: ignore[arg-type]
    assert bus.ready(sent)  # the third frame waits for the next read
    rest = await ProviderWorker._read_burst(session, codec, sent, await sent.recv())  # type: ignore[arg-type]
    assert first.events + rest.events == _one_by_one(TURN[8:11])
    assert len(rest.events) == len(_one_by_one(TURN[8:11])) - len(_one_by_one(TURN[8:10]))


def test_ready_is_false_for_what_it_cannot_read() -> None:
    assert not bus.ready(object())
