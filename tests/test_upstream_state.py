"""The worker's upstream state machine and policies (sans I/O): transitions, backoff, stall, turn latency,
failure reasons, the switch announcement. Literal inputs, time passed in."""

from __future__ import annotations

import pytest
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Close
from websockets.http11 import Response

from services.provider_worker.upstream import (
    TRANSITIONS,
    Backoff,
    IllegalTransition,
    StallWatch,
    Trigger,
    TurnTimer,
    Upstream,
    ends_connection,
    error_failure,
    failure_reason,
    step,
    switched_event,
)
from shared import events as ev

U, T = Upstream, Trigger


def _run(*triggers: Trigger, start: Upstream = U.IDLE) -> list[Upstream]:
    states, state = [], start
    for trigger in triggers:
        state = step(state, trigger)
        states.append(state)
    return states


def test_a_connection_lifecycle() -> None:
    assert _run(T.DIAL, T.OPENED, T.LOST, T.DIAL, T.OPENED) == [U.CONNECTING, U.OPEN, U.BACKOFF, U.CONNECTING, U.OPEN]


def test_a_failed_connect_backs_off_and_dials_again() -> None:
    assert _run(T.DIAL, T.LOST, T.DIAL) == [U.CONNECTING, U.BACKOFF, U.CONNECTING]


@pytest.mark.parametrize(("trigger", "closing"), [
    (T.GOING_AWAY, U.ROTATING), (T.RECONFIGURE, U.RECONFIGURING), (T.STALLED, U.ABANDONED)])
def test_closing_on_purpose_keeps_its_first_reason_until_lost(trigger: Trigger, closing: Upstream) -> None:
    states = _run(T.DIAL, T.OPENED, trigger, T.GOING_AWAY, T.RECONFIGURE, T.STALLED, T.LOST)
    assert states == [U.CONNECTING, U.OPEN, closing, closing, closing, closing, U.BACKOFF]


def test_a_go_away_or_a_reconfiguration_may_come_during_the_setup() -> None:
    assert _run(T.DIAL, T.GOING_AWAY) == [U.CONNECTING, U.ROTATING]
    assert _run(T.DIAL, T.RECONFIGURE) == [U.CONNECTING, U.RECONFIGURING]


def test_fatal_and_drop_end_it_from_anywhere_live() -> None:
    for state in (U.IDLE, U.CONNECTING, U.OPEN, U.ROTATING, U.RECONFIGURING, U.ABANDONED, U.SWITCHING, U.HANDOVER,
                  U.BACKOFF):
        assert step(state, T.FATAL) is U.FAILED
        assert step(state, T.DROP) is U.CLOSED
    assert step(U.FAILED, T.DROP) is U.CLOSED
    assert step(U.CLOSED, T.DROP) is U.CLOSED


@pytest.mark.parametrize(("state", "trigger"), [
    (U.IDLE, T.OPENED), (U.OPEN, T.DIAL), (U.BACKOFF, T.LOST), (U.CLOSED, T.DIAL), (U.FAILED, T.DIAL),
    (U.BACKOFF, T.STALLED), (U.CONNECTING, T.STALLED)])
def test_impossible_transitions_are_refused(state: Upstream, trigger: Trigger) -> None:
    assert (state, trigger) not in TRANSITIONS
    with pytest.raises(IllegalTransition):
        step(state, trigger)


def test_input_goes_to_the_socket_only_while_it_takes_it() -> None:
    assert {s for s in Upstream if s.sends} == {U.OPEN, U.ROTATING, U.RECONFIGURING, U.SWITCHING}


# -- backoff -------------------------------------------------------------------------------------


def test_failed_connects_double_the_delay_up_to_the_cap_with_jitter() -> None:
    b = Backoff(base_s=0.1, cap_s=1.0)
    assert [b.after(lived_s=None, rand=0.999999) for _ in range(6)] == pytest.approx([0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert b.connect_failures == 6
    assert b.after(lived_s=None, rand=0.0) == pytest.approx(0.5), "jitter: half the delay at the low end"


def test_a_long_lived_connection_resets_the_streak() -> None:
    b = Backoff(base_s=0.1, short_lived_s=3.0)
    for _ in range(3):
        b.after(lived_s=None, rand=0.5)
    assert b.after(lived_s=60.0, rand=0.999999) == pytest.approx(0.1), "an unplanned loss waits the base"
    assert b.connect_failures == 0 and b.streak == 0
    assert b.after(lived_s=60.0, planned=True, rand=0.5) == 0.0, "a planned rotation is immediate"


def test_planned_rotations_of_short_lived_connections_back_off() -> None:
    """A provider that sends goAway right after every setup is not redialled at once, forever."""
    b = Backoff(base_s=0.1, cap_s=5.0, short_lived_s=3.0)
    delays = [b.after(lived_s=0.05, planned=True, rand=0.999999) for _ in range(8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    assert b.connect_failures == 0, "they opened: not a reason to give up"
    assert sum(delays) > 20, "8 redials take over 20 s, not a quarter of a second"


def test_an_abnormal_close_counts_towards_giving_up() -> None:
    b = Backoff()
    b.after(lived_s=10.0, failed=True, rand=0.5)
    b.after(lived_s=None, rand=0.5)
    assert b.connect_failures == 2


def test_a_reconfiguration_is_immediate() -> None:
    b = Backoff()
    assert b.after(lived_s=0.1, reconfigure=True, rand=0.9) == 0.0
    assert b.streak == 0


# -- stall -----------------------------------------------------------------------------------------


def test_no_stall_without_an_open_response() -> None:
    w = StallWatch(limit_s=2.0)
    w.bytes_in(0.0)
    assert w.remaining(100.0) is None


def test_a_response_open_and_silent_for_the_limit_stalls() -> None:
    w = StallWatch(limit_s=2.0)
    w.bytes_in(0.0)
    w.response(True, 10.0)  # counted from the start of the response, not from bytes long before it
    assert w.remaining(11.0) == pytest.approx(1.0)
    w.bytes_in(11.5)
    assert w.remaining(13.0) == pytest.approx(0.5)
    assert w.remaining(13.5) == 0.0
    assert w.stalled_for(14.0) == pytest.approx(2.5)
    w.response(False, 14.0)
    assert w.remaining(20.0) is None


def test_a_response_staying_open_does_not_restart_the_clock() -> None:
    w = StallWatch(limit_s=2.0)
    w.response(True, 0.0)
    w.response(True, 1.5)
    assert w.remaining(2.0) == 0.0


# -- turn latency ----------------------------------------------------------------------------------


def test_turn_latency_from_speech_stopped_to_first_audio() -> None:
    t = TurnTimer()
    t.turn_end(10.0)  # speech stopped
    t.turn_end(10.2)  # the commit: the earlier end counts
    assert t.first_audio("r1", 10.45) == pytest.approx(450.0)
    assert t.first_audio("r1", 10.5) is None, "once per response"


def test_turn_latency_from_a_response_create() -> None:
    t = TurnTimer()
    t.turn_end(5.0)
    assert t.first_audio("r1", 5.3) == pytest.approx(300.0)


def test_a_response_without_a_turn_end_is_not_timed() -> None:
    t = TurnTimer()
    assert t.first_audio("r1", 1.0) is None


def test_a_barge_in_starts_the_turn_afresh() -> None:
    t = TurnTimer()
    t.turn_end(1.0)
    t.user_speaking()
    t.turn_end(4.0)
    assert t.first_audio("r2", 4.2) == pytest.approx(200.0)


def test_a_response_ended_without_audio_drops_its_turn_end() -> None:
    t = TurnTimer()
    t.turn_end(1.0)
    t.response_done("r1")  # a text-only answer, or cut before its audio
    assert t.first_audio("r2", 9.0) is None


def test_the_end_of_an_answered_response_keeps_the_next_turn_end() -> None:
    t = TurnTimer()
    t.turn_end(1.0)
    assert t.first_audio("r1", 1.5) == pytest.approx(500.0)
    t.turn_end(2.0)  # the user ended the next turn while r1 was still playing
    t.response_done("r1")
    assert t.first_audio("r2", 2.25) == pytest.approx(250.0)


# -- failure reasons -------------------------------------------------------------------------------


def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", {}))  # type: ignore[arg-type]


@pytest.mark.parametrize(("exc", "opened", "reason"), [
    (ConnectionRefusedError(), False, "connect"),
    (TimeoutError(), False, "connect"),
    (_status(429), False, "http_429"),
    (_status(503), False, "http_5xx"),
    (_status(500), False, "http_5xx"),
    (_status(401), False, None),
    (ConnectionClosedError(Close(1011, "boom"), None), True, "close_1011"),
    (ConnectionClosedError(None, None), True, None),
    (ConnectionClosedOK(Close(1000, ""), None), True, None),
])
def test_failure_reasons(exc: BaseException, opened: bool, reason: str | None) -> None:
    assert failure_reason(exc, opened=opened) == reason


def test_provider_error_events_are_failures_when_the_codec_marks_them_the_providers() -> None:
    assert error_failure(ev.ProviderError(code="server_error", message="", retryable=True)) == "error"
    assert error_failure(ev.ProviderError(code="overloaded_error", message="", fatal=True)) == "error"
    assert error_failure(ev.ProviderError(code="invalid_value", message="")) is None


def test_the_session_cap_error_is_a_recycle_not_a_failure() -> None:
    expired = ev.ProviderError(code="session_expired", message="maximum duration", retryable=True)
    assert ends_connection(expired)
    assert error_failure(expired) is None
    assert not ends_connection(ev.ProviderError(code="server_error", message="", retryable=True))


# -- switch ----------------------------------------------------------------------------------------


def test_the_switch_announcement() -> None:
    assert switched_event("openai", "latency", 1_000_000, "gemini", 1_000_350) == ev.Switched(
        from_provider="openai", to_provider="gemini", reason="latency", gap_ms=350)


def test_no_announcement_without_a_switch() -> None:
    assert switched_event("", "", 0, "gemini", 5) is None


def test_a_clock_behind_the_deciders_gives_no_negative_gap() -> None:
    assert switched_event("gemini", "", 2_000, "openai", 1_990) == ev.Switched(
        from_provider="gemini", to_provider="openai", reason="manual", gap_ms=0)


def test_a_switch_wins_over_any_other_reason_to_close_and_redials() -> None:
    assert _run(T.DIAL, T.OPENED, T.SWITCH, T.LOST, T.DIAL) == [
        U.CONNECTING, U.OPEN, U.SWITCHING, U.BACKOFF, U.CONNECTING]
    assert _run(T.DIAL, T.OPENED, T.GOING_AWAY, T.SWITCH, T.STALLED) == [
        U.CONNECTING, U.OPEN, U.ROTATING, U.SWITCHING, U.SWITCHING]
    with pytest.raises(IllegalTransition):
        step(U.BACKOFF, T.SWITCH)  # nothing to close: the worker just dials the new provider


def test_a_handover_goes_from_open_straight_to_the_prepared_connection() -> None:
    # Make-before-break: no BACKOFF between the old connection and the prepared one.
    assert _run(T.DIAL, T.OPENED, T.HAND_OVER, T.DIAL, T.OPENED) == [
        U.CONNECTING, U.OPEN, U.HANDOVER, U.CONNECTING, U.OPEN]
    assert not U.HANDOVER.sends  # input waits for the new upstream during the cutover
    assert step(U.HANDOVER, T.LOST) is U.BACKOFF
    assert step(U.HANDOVER, T.SWITCH) is U.SWITCHING  # a switch "now" arriving meanwhile
    assert step(U.HANDOVER, T.GOING_AWAY) is U.HANDOVER
    for state in (U.IDLE, U.CONNECTING, U.ROTATING, U.SWITCHING, U.BACKOFF):
        with pytest.raises(IllegalTransition):
            step(state, T.HAND_OVER)  # only a live, open connection is handed over
