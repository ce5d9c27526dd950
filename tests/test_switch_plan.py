"""The make-before-break plan (services/provider_worker/switchplan.py), with literal inputs."""

from __future__ import annotations

import pytest

from services.provider_worker.switchplan import (
    TRANSITIONS,
    Action,
    OpenRequest,
    Phase,
    Signal,
    SwitchPlan,
    TurnLog,
    age_left_s,
    delta_items,
    from_own_log,
    given_ids,
)
from shared import events as ev


def _plan(recycle: bool = False) -> SwitchPlan:
    return SwitchPlan(to="gemini", reason="manual", recycle=recycle, started_ms=1_000)


def test_prepared_while_the_old_one_answers_waits_for_the_turn_end() -> None:
    plan = _plan()
    assert plan.on(Signal.PREPARED, busy=True, now_ms=1_030) is Action.WAIT
    assert plan.phase is Phase.READY
    assert plan.on(Signal.TURN_END, busy=False, now_ms=2_000) is Action.CUT_OVER
    assert plan.phase is Phase.CUTOVER
    assert plan.gap_ms(2_012) == 12  # from the turn end


def test_prepared_between_turns_cuts_over_at_once_and_counts_the_gap_from_the_cutover() -> None:
    plan = _plan()
    assert plan.on(Signal.PREPARED, busy=False, now_ms=1_030) is Action.CUT_OVER
    assert plan.gap_ms(1_035) == 5


def test_a_turn_that_ends_before_the_new_upstream_is_ready_counts_from_its_end() -> None:
    plan = _plan()
    plan.turn_ended(1_010)  # the response ended while the new one was still dialling
    assert plan.on(Signal.PREPARED, busy=False, now_ms=1_040) is Action.CUT_OVER
    assert plan.gap_ms(1_045) == 35
    plan.turn_ended(1_050)  # no longer active: the first end stays
    assert plan.turn_end_ms == 1_010


def test_a_new_response_before_the_new_upstream_is_ready_is_waited_for() -> None:
    plan = _plan()
    plan.turn_ended(1_010)
    assert plan.on(Signal.PREPARED, busy=True, now_ms=1_040) is Action.WAIT
    assert plan.on(Signal.TURN_END, busy=False, now_ms=3_000) is Action.CUT_OVER


def test_a_turn_end_with_another_response_already_open_waits() -> None:
    plan = _plan()
    plan.on(Signal.PREPARED, busy=True, now_ms=1_030)
    assert plan.on(Signal.TURN_END, busy=True, now_ms=2_000) is Action.WAIT
    assert plan.phase is Phase.READY


@pytest.mark.parametrize("phase", [Phase.PREPARING, Phase.READY])
def test_the_new_upstream_failing_gives_up_and_the_old_one_stays(phase: Phase) -> None:
    plan = _plan()
    plan.phase = phase
    signal = Signal.PREPARE_FAILED if phase is Phase.PREPARING else Signal.NEW_LOST
    assert plan.on(signal, busy=True, now_ms=1_500) is Action.GIVE_UP
    assert plan.phase is Phase.DONE and not plan.active


@pytest.mark.parametrize("phase", [Phase.PREPARING, Phase.READY])
def test_the_old_upstream_dying_first_falls_back_to_break_before_make(phase: Phase) -> None:
    plan = _plan()
    plan.phase = phase
    assert plan.on(Signal.OLD_LOST, busy=True, now_ms=1_500) is Action.FALL_BACK


def test_a_recycle_deadline_cuts_over_mid_response_when_ready_else_falls_back() -> None:
    ready = _plan(recycle=True)
    ready.on(Signal.PREPARED, busy=True, now_ms=1_030)
    assert ready.on(Signal.DEADLINE, busy=True, now_ms=9_000) is Action.CUT_OVER
    preparing = _plan(recycle=True)
    assert preparing.on(Signal.DEADLINE, busy=True, now_ms=9_000) is Action.FALL_BACK


def test_a_finished_plan_ignores_everything() -> None:
    plan = _plan()
    plan.on(Signal.PREPARED, busy=False, now_ms=1_030)
    for signal in Signal:
        for busy in (False, True):
            assert plan.on(signal, busy=busy, now_ms=2_000) is Action.WAIT
            assert plan.phase is Phase.CUTOVER


def test_every_transition_leaves_an_active_phase() -> None:
    assert {phase for phase, _, _ in TRANSITIONS} == {Phase.PREPARING, Phase.READY}


def _msg(item_id: str, text: str) -> ev.Message:
    return ev.Message(id=item_id, role="user", content=[ev.TextContent(text=text)])


def test_the_delta_is_what_the_prepared_upstream_was_not_given_in_history_order() -> None:
    items = [_msg("a", "one"), _msg("b", "two"), _msg("c", "aside"), _msg("d", "reply")]
    assert [i.id for i in delta_items(frozenset({"a", "b"}), items)] == ["c", "d"]
    assert delta_items({"a", "b", "c", "d"}, items) == []
    assert [i.id for i in delta_items((), items)] == ["a", "b", "c", "d"]


def test_a_spoken_turn_not_transcribed_when_prepared_is_not_given_and_the_delta_sends_it() -> None:
    """The prepared upstream's setup skipped the spoken turn (no transcript yet); by the cutover the
    transcript is in the log: the delta holds it (else the new provider's context lacks the turn)."""
    spoken = ev.Message(id="u2", role="user", content=[ev.AudioContent()])
    given = given_ids([_msg("a", "one"), spoken, ev.FunctionCall(id="f", call_id="c", name="n", arguments="{}")])
    assert given == frozenset({"a", "f"})
    heard = ev.Message(id="u2", role="user", content=[ev.AudioContent(transcript="audio 0.7s")])
    assert delta_items(given, [_msg("a", "one"), heard]) == [heard]
    with_audio = ev.Message(id="u3", role="user", content=[ev.AudioContent(pcm=b"\x00\x00", rate=24_000)])
    assert given_ids([with_audio]) == frozenset({"u3"})  # restored as its audio: given


def test_the_age_left_of_a_connection() -> None:
    assert age_left_s(100.0, 3_300.0, 200.0) == 3_200.0
    assert age_left_s(100.0, 3.0, 200.0) == 0.0  # overdue: now
    assert age_left_s(100.0, None, 200.0) is None
    assert age_left_s(100.0, 0.0, 200.0) is None


# -- the worker's own log of the conversation -------------------------------------------------------------


def test_the_turn_log_folds_the_last_turn_like_the_checkpoint() -> None:
    turns = TurnLog()
    said = ev.Message(id="u1", role="user", content=[ev.TextContent(text="one")])
    answer = ev.Message(id="a1", role="assistant", content=[ev.AudioContent(transcript="turn 1: one")])
    for event in (ev.ItemCreate(item=said), ev.InputAudio(pcm=b"\x00\x00", rate=24_000),
                  ev.ResponseStarted(response_id="r1"), ev.OutputDone(response_id="r1", item=answer),
                  ev.InputCommitted(item_id="u2"), ev.InputTranscript(item_id="u2", text="aud"),
                  ev.InputTranscript(item_id="u2", text="io")):
        turns.feed(event)
    spoken = ev.Message(id="u2", role="user", content=[ev.AudioContent(transcript="audio")])
    assert turns.items() == [said, answer, spoken]  # partial transcripts joined, as the checkpoint does
    turns.feed(ev.InputTranscript(item_id="u2", text="audio 0.7s", final=True))
    turns.feed(ev.InputCommitted(item_id="u2"))  # again: the richer version stays
    turns.feed(ev.ItemDelete(item_id="u1"))
    assert turns.items() == [answer, ev.Message(id="u2", role="user", content=[
        ev.AudioContent(transcript="audio 0.7s")])]
    # the prepared upstream had the first answer: the cutover adds only the spoken turn
    assert delta_items(given_ids([answer]), turns.items()) == turns.items()[1:]


def test_the_turn_log_covers_a_base_until_it_evicts() -> None:
    turns = TurnLog(limit=2)
    assert not turns.covers(None)  # no confirmed fold yet: the checkpoint's way
    mark = turns.mark()
    for n in range(2):
        turns.feed(ev.ItemCreate(item=_msg(f"u{n}", "hi")))
    assert turns.covers(mark)
    turns.feed(ev.ItemCreate(item=_msg("u2", "hi")))  # u0 left the log: a snapshot from before may lack it
    assert not turns.covers(mark)
    assert turns.covers(turns.mark())
    assert [i.id for i in turns.items()] == ["u1", "u2"]


def test_a_cutover_takes_the_last_turn_from_its_own_log_only_when_that_is_sound() -> None:
    turns = TurnLog(limit=2)
    base = turns.mark()
    assert from_own_log(turns, base, audio_seq=0, committed_seq=0, items=[])  # text turns only
    assert from_own_log(turns, base, audio_seq=7, committed_seq=7, items=[])  # the audio sent is committed
    assert not from_own_log(turns, base, audio_seq=8, committed_seq=7, items=[])  # uncommitted: the stream's
    assert not from_own_log(turns, None, audio_seq=0, committed_seq=0, items=[])  # no confirmed base
    for n in range(3):
        turns.feed(ev.ItemCreate(item=_msg(f"u{n}", "hi")))
    assert not from_own_log(turns, base, audio_seq=0, committed_seq=0, items=[])  # evicted since the base


def test_a_spoken_turn_committed_but_not_transcribed_yet_is_not_taken_from_the_own_log() -> None:
    """Gemini commits a manual turn at once (its transcript comes later): the log holds an empty user
    message, which no history can say; its audio is only in the stream (the checkpoint's way replays it)."""
    turns = TurnLog()
    base = turns.mark()
    turns.feed(ev.InputCommitted(item_id="u1"))
    assert not from_own_log(turns, base, audio_seq=7, committed_seq=7, items=turns.items())
    held = [ev.Message(id="u1", role="user", content=[ev.AudioContent(pcm=b"\x00\x00", rate=24_000)])]
    assert from_own_log(turns, base, audio_seq=7, committed_seq=7, items=held)  # its audio held (no transcription)
    turns.feed(ev.InputTranscript(item_id="u1", text="audio 0.7s", final=True))
    assert from_own_log(turns, base, audio_seq=7, committed_seq=7, items=turns.items())


CREATE = ev.ResponseCreate()


def test_a_request_sent_upstream_is_open_until_a_response_starts() -> None:
    asks = OpenRequest()
    asks.input()
    asks.asked(CREATE, sent=True)
    assert asks.create is CREATE
    asks.answered()
    assert asks.take() is None
    asks.asked(CREATE, sent=True)  # asked again with no new input (the model speaks again): open
    assert asks.take() is CREATE
    assert asks.take() is None  # taken: re-sent or judged once


def test_a_request_the_codec_absorbed_is_open_until_the_providers_own_answer_starts() -> None:
    """Gemini answers a manual turn's end by itself: the client's create is absorbed. A cutover before that
    answer starts owes the new provider the request; after it started, the create asked for nothing more."""
    asks = OpenRequest()
    asks.input()  # the commit (activityEnd)
    asks.asked(CREATE, sent=False)
    assert asks.create is CREATE
    asks.answered()  # Gemini's answer started
    assert asks.create is None
    asks.input()
    asks.answered()  # ... and the next one started before the client's create arrived
    asks.asked(CREATE, sent=False)
    assert asks.take() is None
