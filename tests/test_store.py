"""The conversation log in a real Redis: ordering, idempotence, snapshots."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared import events as ev
from shared.session import SessionMeta, session_key
from shared.store import Store

from .conftest import Infra


@pytest.fixture
async def store(infra: Infra) -> AsyncIterator[Store]:
    async with Store.connect(infra.redis_url, ttl_s=600) as s:
        yield s


def _meta() -> SessionMeta:
    client_sid = f"s-{uuid.uuid4().hex[:8]}"
    return SessionMeta(
        sid=session_key("acc", client_sid), account="acc", client_session_id=client_sid,
        dialect="openai_ga", provider="openai",
    )


def test_session_key_is_subject_safe_and_account_scoped() -> None:
    key = session_key("acc", "a.b *>")
    assert key.isalnum()
    assert session_key("acc1", "same") != session_key("acc2", "same")


async def test_epoch_increases_at_every_open(store: Store) -> None:
    meta = _meta()
    first = await store.open_session(meta, edge="e1")
    second = await store.open_session(meta, edge="e1")
    assert second == first + 1 == await store.epoch(meta.sid)
    snap = await store.snapshot(meta.sid)
    assert snap.record["account"] == "acc" and snap.record["epoch"] == str(second)


async def test_items_keep_log_order_and_redelivery_adds_nothing(store: Store) -> None:
    sid = _meta().sid
    user = ev.ItemCreate(item=ev.Message(id="u1", role="user", content=[ev.TextContent(text="hi")]))
    answer = ev.OutputDone(
        response_id="r1", item=ev.Message(id="a1", role="assistant", content=[ev.AudioContent(transcript="turn 1: hi")])
    )
    spoken = ev.InputCommitted(item_id="u2")
    transcript = ev.InputTranscript(item_id="u2", text="audio 1.0s", final=True)
    call = ev.OutputDone(response_id="r2", item=ev.FunctionCall(id="f1", call_id="c1", name="get", arguments="{}"))
    result = ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="c1", output="not json"))
    log = [(10, [user]), (11, [ev.InputAudio(pcm=b"\0\0", rate=24_000)]), (12, [answer]), (13, [spoken]),
           (14, [transcript]), (15, [call]), (16, [result])]
    for position, events in log:
        await store.apply(sid, position, events)
    for position, events in reversed(log):  # at-least-once: everything again, out of order
        await store.apply(sid, position, events)
    snap = await store.snapshot(sid)
    assert [i.id for i in snap.items] == ["u1", "a1", "u2", "f1", "o1"]
    spoken_item = snap.items[2]
    assert isinstance(spoken_item, ev.Message) and spoken_item.text() == "audio 1.0s"
    out = snap.items[4]
    assert isinstance(out, ev.FunctionCallOutput) and out.output == "not json"


async def test_audio_frames_do_not_touch_redis(store: Store) -> None:
    sid = _meta().sid
    writes = await store.apply(sid, 1, [ev.InputAudio(pcm=b"\0" * 960, rate=24_000)])
    assert writes == 0
    assert (await store.snapshot(sid)).items == []


async def test_config_and_delete(store: Store) -> None:
    sid = _meta().sid
    cfg = ev.SessionConfig(instructions="be brief", turn_detection=None, voice="alloy")
    await store.apply(sid, 1, [cfg, ev.ItemCreate(item=ev.Message(id="x", role="user"))])
    await store.apply(sid, 2, [ev.ItemDelete(item_id="x")])
    snap = await store.snapshot(sid)
    assert snap.config == cfg and snap.items == []


async def test_client_audio_formats_survive_the_snapshot(store: Store) -> None:
    # A replacement transformer rebuilds the client codec from this config (ClientCodec.resume).
    sid = _meta().sid
    cfg = ev.SessionConfig(instructions="x", client_input_format="pcmu/8000", client_output_format="pcm16/16000")
    await store.apply(sid, 1, [cfg])
    snap = await store.snapshot(sid)
    assert snap.config == cfg and snap.config is not None
    assert (snap.config.client_input_format, snap.config.client_output_format) == ("pcmu/8000", "pcm16/16000")
    switched = msgspec.structs.replace(cfg, client_output_format="pcma/8000")
    await store.apply(sid, 2, [switched])
    assert (await store.snapshot(sid)).config == switched


async def test_provider_commits_are_kept_with_their_stream_position(store: Store) -> None:
    """Each commit of user audio keeps (stream position, up seq): where a replacement's replay starts."""
    meta = _meta()
    await store.open_session(meta, edge="e1")
    await store.apply(meta.sid, 12, [ev.InputCommitted(item_id="u1", up_seq=100)])
    await store.apply(meta.sid, 40, [ev.SpeechStopped(item_id="u2"), ev.InputCommitted(item_id="u2", up_seq=250)])
    await store.apply(meta.sid, 12, [ev.InputCommitted(item_id="u1", up_seq=100)])  # redelivered
    snap = await store.snapshot(meta.sid)
    assert [(c.position, c.up_seq) for c in snap.commits] == [(12, 100), (40, 250)]
    assert snap.record["committed_up_seq"] == "250"


async def test_the_snapshot_gives_a_truncated_answer_cut(store: Store) -> None:
    """A client's truncate (``rs:trunc``) is applied to the history a later connection is restored from."""
    sid = _meta().sid
    user = ev.ItemCreate(item=ev.Message(id="u1", role="user", content=[ev.TextContent(text="a story")]))
    answer = ev.OutputDone(response_id="r1", item=ev.Message(
        id="a1", role="assistant", content=[ev.AudioContent(transcript="Once upon a time")]))
    kept = ev.OutputDone(response_id="r2", item=ev.Message(
        id="a2", role="assistant", content=[ev.AudioContent(transcript="The end")]))
    await store.apply(sid, 1, [user])
    await store.apply(sid, 2, [answer])
    await store.apply(sid, 3, [ev.ItemTruncate(item_id="a1", audio_end_ms=1500)])
    await store.apply(sid, 4, [kept])
    items = (await store.snapshot(sid)).items
    assert [i.id for i in items] == ["u1", "a1", "a2"]
    assert [i.text() for i in items if isinstance(i, ev.Message)] == [
        "a story", "[cut off by the user after 1.5 s]", "The end"]
    # The client's own item store (a replacement transformer's) is rebuilt from the items as they were.
    client_view = (await store.snapshot(sid, cut=False)).items
    assert [i.text() for i in client_view if isinstance(i, ev.Message)] == ["a story", "Once upon a time", "The end"]
