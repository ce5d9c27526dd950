"""Resume with missed events, the pure parts: the merge of replayed and live frames (services/edge/resume.py),
event numbering and event_id stamping (services/transformer/transformer.py), the rs_resume parameter."""

from __future__ import annotations

import json

import pytest

from services.edge.resume import (
    GEMINI_SETUP_COMPLETE,
    Batch,
    ResumeMerge,
    covers,
    incarnation,
    last_seq,
    resume_notice,
)
from services.edge.routing import RouteError, resolve
from services.transformer.transformer import last_numbered, numbered_runs, stamp_openai
from shared import bus
from shared.auth import Authenticator

INSTALLED = frozenset({"openai", "gemini"})


def b(first: int, *frames: str, close: tuple[int, str] | None = None) -> Batch:
    return Batch(first, tuple(frames), close=close)


# -- the merge -------------------------------------------------------------------------------------


def test_replay_then_held_live_none_twice_in_order() -> None:
    merge = ResumeMerge(after=3)
    # Live messages arrive while the stream is read: held, nothing sent yet.
    assert merge.live(b(6, "f6", "f7")).frames == []
    assert merge.live(b(8, "f8")).frames == []
    # The stream holds 1..7 (the live 6-7 among them), oldest first.
    replay = merge.replayed([b(1, "f1", "f2"), b(3, "f3", "f4"), b(5, "f5"), b(6, "f6", "f7")])
    assert replay.frames == ["f4", "f5", "f6", "f7"]
    assert merge.finish().frames == ["f8"]
    assert merge.live(b(9, "f9")).frames == ["f9"]
    assert merge.live(b(9, "f9")).frames == []  # a duplicate is dropped
    assert not merge.gap


def test_nothing_missed_sends_only_what_is_new() -> None:
    merge = ResumeMerge(after=5)
    assert merge.replayed([b(1, "f1", "f2", "f3", "f4", "f5")]).frames == []
    assert merge.finish().frames == []
    assert merge.live(b(6, "f6")).frames == ["f6"]


def test_client_ahead_of_the_stream_is_brought_back() -> None:
    merge = ResumeMerge(after=50)  # more than was ever sent: live frames above the stream's last still go
    assert merge.replayed([b(1, "f1", "f2")]).frames == []
    assert merge.after == 2
    merge.finish()
    assert merge.live(b(3, "f3")).frames == ["f3"]


def test_older_than_the_window_resumes_without_replay() -> None:
    merge = ResumeMerge(after=2)
    merge.live(b(11, "f11"))
    replay = merge.replayed([b(8, "f8", "f9"), b(10, "f10")])
    assert replay.frames == []
    assert merge.gap and merge.after == 10
    assert merge.finish().frames == ["f11"]


def test_unnumbered_frames_pass_in_live_order_and_the_edges_own_setup_complete_is_dropped_once() -> None:
    merge = ResumeMerge(after=1, drop_once=GEMINI_SETUP_COMPLETE)
    merge.live(b(0, GEMINI_SETUP_COMPLETE))
    merge.live(b(3, "f3"))
    merge.live(b(0, '{"rsNotice":{}}'))
    # Unnumbered frames in the stream are never replayed.
    assert merge.replayed([b(0, GEMINI_SETUP_COMPLETE), b(2, "f2")]).frames == ["f2"]
    assert merge.finish().frames == ["f3", '{"rsNotice":{}}']
    assert merge.live(b(0, GEMINI_SETUP_COMPLETE)).frames == [GEMINI_SETUP_COMPLETE]  # only once


def test_replayed_closes_are_history_live_ones_are_kept() -> None:
    merge = ResumeMerge(after=0)
    assert merge.replayed([b(1, "f1", close=(1000, "old"))]).close is None
    merge.finish()
    delivery = merge.live(b(2, "f2", close=(1011, "bye")))
    assert delivery.frames == ["f2"] and delivery.close == (1011, "bye")


def test_delivery_tracks_the_newest_provider_output() -> None:
    merge = ResumeMerge(after=0)
    delivery = merge.replayed([Batch(1, ("a",), (3, 7)), Batch(2, ("b",), (3, 9))])
    assert delivery.down == (3, 9)


@pytest.mark.parametrize(("after", "batches", "expected"), [
    (3, [b(1, "a", "b", "c"), b(4, "d")], True),
    (3, [b(4, "d")], True),
    (3, [b(5, "e")], False),
    (3, [], False),
    (0, [], True),
    (9, [b(5, "e")], True),  # the client has everything the stream holds
    (3, [b(0, "setup"), b(6, "f")], False),
])
def test_covers(after: int, batches: list[Batch], expected: bool) -> None:
    assert covers(after, batches) is expected


def test_last_seq() -> None:
    assert last_seq([b(1, "a", "b"), b(0, "x")]) == 2
    assert last_seq([]) == 0


def test_incarnation_is_the_newest_fresh_boot() -> None:
    beats = {("tr-1", "a"): 10.0, ("tr-1", "b"): 12.0, ("tr-2", "c"): 12.5}
    assert incarnation(beats, "tr-1", now=12.5, fresh_s=1.0) == ("tr-1", "b")
    assert incarnation(beats, "tr-1", now=14.0, fresh_s=1.0) is None
    assert incarnation(beats, "tr-3", now=12.5, fresh_s=1.0) is None


def test_resume_notice_in_each_dialect() -> None:
    openai = json.loads(resume_notice("openai_ga", 2, 10, "event_rs_edge_x"))
    assert openai["type"] == "rs.notice" and openai["code"] == "resume_gap"
    assert openai["event_id"] == "event_rs_edge_x"
    assert "event 11" in openai["message"]
    gemini = json.loads(resume_notice("gemini", 2, 10, "unused"))
    assert gemini["rsNotice"]["code"] == "resume_gap" and gemini["rsNotice"]["param"] == "rs_resume"


# -- numbering and stamping (transformer) ------------------------------------------------------------


def test_stamp_openai_replaces_the_top_level_event_id_only() -> None:
    frame = '{"type":"error","event_id":"event_abc","error":{"type":"x","event_id":"client_1"}}'
    stamped = '{"type":"error","event_id":"event_rs_42","error":{"type":"x","event_id":"client_1"}}'
    assert stamp_openai(frame, 42) == stamped
    assert stamp_openai('{"type":"switch","name":"GEMINI"}', 3) == '{"type":"switch","name":"GEMINI"}'
    assert stamp_openai('{"setupComplete":{}}', 3) == '{"setupComplete":{}}'


def test_gemini_gateway_messages_are_not_numbered() -> None:
    frames = [GEMINI_SETUP_COMPLETE, '{"serverContent":{}}', '{"serverContent":{"turnComplete":true}}',
              '{"rsNotice":{"code":"x"}}', '{"serverContent":{}}']
    assert numbered_runs("gemini", frames) == [
        (False, [GEMINI_SETUP_COMPLETE]), (True, frames[1:3]), (False, [frames[3]]), (True, [frames[4]])]
    assert numbered_runs("openai_ga", ['{"type":"rs.notice"}', '{"type":"x"}']) == [
        (True, ['{"type":"rs.notice"}', '{"type":"x"}'])]
    assert numbered_runs("gemini", []) == []


def test_last_numbered_skips_unnumbered_messages() -> None:
    outs = [bus.ClientOut(1, 1, ["a", "b"], first=4), bus.ClientOut(1, 2, ["s"], first=0)]
    assert last_numbered(outs) == 5
    assert last_numbered([bus.ClientOut(1, 1, ["s"])]) == 0


# -- the parameter ---------------------------------------------------------------------------------


AUTH = Authenticator({"acme": "secret"})


@pytest.mark.parametrize(("path", "headers", "expected"), [
    ("/v1/realtime?model=gpt-realtime&rs_resume=17", {}, 17),
    ("/v1/realtime?model=gpt-realtime", {"x-rs-resume": "5"}, 5),
    ("/v1/realtime?model=gpt-realtime&rs_resume=0", {"x-rs-resume": "5"}, 0),
    ("/v1/realtime?model=gpt-realtime", {}, None),
    ("/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?key=acme:secret&rs_resume=9",
     {}, 9),
])
def test_rs_resume_parameter(path: str, headers: dict[str, str], expected: int | None) -> None:
    headers = {"authorization": "Bearer acme:secret", **headers}
    assert resolve(path, headers, AUTH, INSTALLED, now=0).resume == expected


@pytest.mark.parametrize("value", ["-1", "x", "1.5", "9" * 16])
def test_rs_resume_must_be_a_seq(value: str) -> None:
    with pytest.raises(RouteError) as err:
        resolve(f"/v1/realtime?rs_resume={value}", {"authorization": "Bearer acme:secret"}, AUTH, INSTALLED, now=0)
    assert err.value.status == 400
