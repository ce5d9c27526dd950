"""The replay plan: which input and which response.create a new provider connection gets again, one test
per rule, with literal envelopes (positions are stream sequences, seqs are up envelope seqs)."""

from __future__ import annotations

from services.provider_worker.replay import (
    Replay,
    TurnAudio,
    before_untranscribed_turn,
    commit_point,
    ends_untranscribed,
    has_audio,
    needs_down,
    owed_create,
    plan_replay,
    read_since_s,
    replay_start,
)
from shared import events as ev
from shared.store import Commit, Snapshot

AUDIO = ev.InputAudio(pcm=b"\x01\x00" * 480, rate=24_000)
CREATE = ev.ResponseCreate()


def _snap(committed: int = 0, items: list[ev.Item] | None = None, commits: list[Commit] | None = None) -> Snapshot:
    record = {"committed_up_seq": str(committed)} if committed else {}
    return Snapshot(config=None, items=items or [], epoch=1, record=record, commits=commits or [])


def _env(seq: int, *events: ev.Event) -> ev.Envelope:
    return ev.Envelope(1, seq, list(events))  # type: ignore[arg-type]


def _user_text(item_id: str) -> ev.ItemCreate:
    return ev.ItemCreate(item=ev.Message(id=item_id, role="user", content=[ev.TextContent(text="hi")]))


SPOKEN_UNTRANSCRIBED = ev.Message(id="u2", role="user", content=[ev.AudioContent()])
SPOKEN_TRANSCRIBED = ev.Message(id="u2", role="user", content=[ev.AudioContent(transcript="hello")])


def test_input_after_the_commit_point_is_replayed_and_before_it_is_not() -> None:
    up = [(10, _env(1, AUDIO)), (11, _env(2, ev.InputAudioCommit())), (12, _env(3, AUDIO)), (13, _env(4, AUDIO))]
    plan = plan_replay(_snap(committed=2), up, [])
    assert plan == Replay(events=[AUDIO, AUDIO], last_seq=4)


def test_a_reconnect_replays_only_what_this_worker_already_took() -> None:
    up = [(12, _env(3, AUDIO)), (13, _env(4, AUDIO)), (14, _env(5, AUDIO))]
    assert plan_replay(_snap(committed=2), up, [], upto=4).events == [AUDIO, AUDIO]


def test_requests_that_would_act_twice_or_are_in_the_log_are_not_replayed() -> None:
    known = ev.Message(id="u1", role="user", content=[ev.TextContent(text="hi")])
    up = [(20, _env(5, _user_text("u1"), _user_text("u9"), ev.ResponseCancel(), ev.ItemDelete(item_id="x"),
                    ev.ItemTruncate(item_id="a1", audio_end_ms=100)))]
    down = [(21, _env(1, ev.ResponseStarted(response_id="r1")))]
    plan = plan_replay(_snap(committed=4, items=[known]), up, down)
    assert plan.events == [_user_text("u9")], "only the item the log does not hold yet"


def test_an_untranscribed_spoken_turn_replays_from_the_commit_before_it() -> None:
    commits = [Commit(position=30, up_seq=3), Commit(position=60, up_seq=8)]
    assert before_untranscribed_turn([SPOKEN_UNTRANSCRIBED], [3, 8], 8) == 3
    assert commit_point(_snap(committed=8, items=[SPOKEN_UNTRANSCRIBED], commits=commits)) == 3
    up = [(40 + seq, _env(seq, AUDIO)) for seq in range(4, 10)]
    plan = plan_replay(_snap(committed=8, items=[SPOKEN_UNTRANSCRIBED], commits=commits), up, [])
    assert len(plan.events) == 6, "the turn's audio (4..8) and what came after (9)"


def test_a_transcribed_spoken_turn_keeps_its_commit_point() -> None:
    assert before_untranscribed_turn([SPOKEN_TRANSCRIBED], [3, 8], 8) == 8


def test_an_untranscribed_turn_whose_earlier_commit_aged_out_replays_the_whole_window() -> None:
    assert before_untranscribed_turn([SPOKEN_UNTRANSCRIBED], [8], 8) == 0


def test_the_read_starts_shortly_before_the_commit_point_by_the_vad_silence() -> None:
    commits = [Commit(position=30, up_seq=3), Commit(position=60, up_seq=8)]
    assert replay_start(_snap(committed=8, commits=commits), 8) == Commit(60, 8)
    assert replay_start(_snap(), 0) is None, "nothing committed: read it all"
    assert read_since_s(None, None) is None, "the commit aged out of the stream: read it all"
    assert read_since_s(2.0, None) == 5.0
    assert read_since_s(2.0, ev.TurnDetection(silence_duration_ms=700)) == 5.7
    assert read_since_s(2.0, ev.TurnDetection()) == 5.5
    assert read_since_s(2.0, ev.TurnDetection(type="semantic_vad")) == 13.0


def test_a_create_nothing_answered_is_owed_and_replayed() -> None:
    up = [(10, _env(5, _user_text("u1"))), (11, _env(6, CREATE))]
    assert needs_down(up)
    assert owed_create(up, []) is CREATE
    # Even at or before the commit point: the dead worker never acted on it.
    assert plan_replay(_snap(committed=6), up, []).events == [CREATE]


def test_a_create_followed_by_a_response_start_or_end_is_not_owed() -> None:
    up = [(10, _env(5, _user_text("u1"))), (11, _env(6, CREATE))]
    assert owed_create(up, [(12, _env(1, ev.ResponseStarted(response_id="r1")))]) is None
    assert owed_create(up, [(12, _env(1, ev.ResponseDone(response_id="r1")))]) is None


def test_a_create_absorbed_by_an_answer_that_ended_before_it_is_not_owed() -> None:
    """Gemini answers a manual turn at activityEnd: the answer may end before the client's create
    reaches the stream; it was the only create since the user's input."""
    up = [(10, _env(5, _user_text("u1"))), (13, _env(6, CREATE))]
    down = [(11, _env(1, ev.ResponseStarted(response_id="r1"))), (12, _env(2, ev.ResponseDone(response_id="r1")))]
    assert owed_create(up, down) is None


def test_a_re_ask_after_a_cut_answer_is_owed() -> None:
    """Two creates since the last input, the answer to the first ended (cut) before the second: the
    second is a re-ask, and it is owed."""
    up = [(10, _env(5, _user_text("u1"))), (11, _env(6, CREATE)), (14, _env(7, ev.ResponseCreate()))]
    down = [(12, _env(1, ev.ResponseStarted(response_id="r1"))),
            (13, _env(2, ev.ResponseDone(response_id="r1", status="failed")))]
    owed = owed_create(up, down)
    assert owed is up[2][1].events[0]


def test_a_re_ask_after_an_answer_cut_at_a_cutover_is_owed_when_the_commit_came_down_after_the_ask() -> None:
    """Manual turn: commit, create; the provider's commit reaches the stream after the create, its answer
    is cut (``failed``) by a switch's cutover, and the client asks again: the re-ask is the only create
    since that commit, but a cut answer absorbs nothing, so it is owed."""
    re_ask = ev.ResponseCreate()
    up = [(10, _env(5, AUDIO)), (11, _env(6, ev.InputAudioCommit())), (12, _env(7, CREATE)), (17, _env(8, re_ask))]
    down = [(13, _env(1, ev.InputCommitted(item_id="u2"))), (14, _env(2, ev.ResponseStarted(response_id="r1"))),
            (15, _env(3, ev.ResponseDone(response_id="r1", status="failed", reason="provider_disconnected")))]
    assert owed_create(up, down) is re_ask
    # The same order with an answer that completed: the create was absorbed (not owed).
    done = [*down[:2], (15, _env(3, ev.ResponseDone(response_id="r1")))]
    assert owed_create(up, done) is None


def test_a_provider_commit_counts_as_the_users_last_input() -> None:
    """A VAD turn: the commit comes down, not up. A response to an older input ended before it, so the
    create after the commit is not absorbed by that answer."""
    up = [(10, _env(5, _user_text("u1"))), (14, _env(7, CREATE))]
    down = [(11, _env(1, ev.ResponseDone(response_id="r0"))), (12, _env(2, ev.InputCommitted(item_id="u2")))]
    assert owed_create(up, down) is CREATE


def test_no_create_needs_no_down_read() -> None:
    up = [(10, _env(5, AUDIO))]
    assert not needs_down(up)
    assert owed_create(up, []) is None
    assert plan_replay(_snap(), [], []) == Replay(events=[], last_seq=0)


# -- the audio of spoken turns without a transcript ------------------------------------------------------


def _pcm(value: int, samples: int) -> bytes:
    return value.to_bytes(2, "little", signed=True) * samples


def test_a_committed_turn_takes_the_audio_up_to_its_commit_and_the_history_carries_it() -> None:
    held = TurnAudio()
    held.add(1, _pcm(1, 10), 24_000)
    held.add(2, _pcm(2, 10), 24_000)
    held.add(3, _pcm(3, 10), 24_000)  # after the commit point: the next turn's
    held.committed("u2", 2)
    items: list[ev.Item] = [ev.Message(id="u1", role="user", content=[ev.TextContent(text="one")]),
                            SPOKEN_UNTRANSCRIBED]
    restored = held.restore(items)
    assert restored[0] is items[0]
    assert restored[1] == ev.Message(id="u2", role="user", content=[
        ev.AudioContent(pcm=_pcm(1, 10) + _pcm(2, 10), rate=24_000)])
    assert has_audio(restored[1]) and not has_audio(items[1])
    held.committed("u3", 3)
    assert held.restore([ev.Message(id="u3", role="user", content=[])])[0] == ev.Message(
        id="u3", role="user", content=[ev.AudioContent(pcm=_pcm(3, 10), rate=24_000)])


def test_a_transcribed_turn_is_said_as_text_and_its_audio_let_go() -> None:
    held = TurnAudio()
    held.add(1, _pcm(1, 10), 24_000)
    held.committed("u2", 1)
    assert held.restore([SPOKEN_TRANSCRIBED]) == [SPOKEN_TRANSCRIBED]  # it has text: left as it is
    held.transcribed("u2")
    assert held.restore([SPOKEN_UNTRANSCRIBED]) == [SPOKEN_UNTRANSCRIBED]


def test_cleared_input_and_the_silence_before_speech_are_not_the_turn() -> None:
    held = TurnAudio()
    held.add(1, _pcm(1, 10), 24_000)
    held.cleared()
    held.add(2, _pcm(2, 10), 24_000)  # silence before the provider heard speech start (in seq 3)
    held.add(3, _pcm(3, 10), 24_000)
    held.speech_started(3)
    held.committed("u2", 3)
    content = held.restore([SPOKEN_UNTRANSCRIBED])[0].content  # type: ignore[union-attr]
    assert content == [ev.AudioContent(pcm=_pcm(3, 10), rate=24_000)]


def test_held_audio_is_bounded_oldest_turn_first() -> None:
    held = TurnAudio(limit_bytes=50)
    for n, item in enumerate(("a", "b", "c"), start=1):
        held.add(n, _pcm(n, 10), 24_000)  # 20 bytes a turn
        held.committed(item, n)
    assert not has_audio(held.restore([ev.Message(id="a", role="user", content=[])])[0])
    assert has_audio(held.restore([ev.Message(id="c", role="user", content=[])])[0])


def test_a_turn_restored_with_its_audio_is_not_replayed_again() -> None:
    commits = [Commit(position=30, up_seq=3), Commit(position=60, up_seq=8)]
    with_audio = ev.Message(id="u2", role="user", content=[ev.AudioContent(pcm=_pcm(1, 10), rate=24_000)])
    assert commit_point(_snap(committed=8, items=[with_audio], commits=commits)) == 8


def test_only_a_last_spoken_turn_without_transcript_or_audio_is_untranscribed() -> None:
    assert ends_untranscribed([SPOKEN_UNTRANSCRIBED])
    assert not ends_untranscribed([SPOKEN_TRANSCRIBED])
    assert not ends_untranscribed([ev.Message(id="u2", role="user", content=[ev.AudioContent(pcm=b"\x00\x00")])])
    assert not ends_untranscribed([SPOKEN_UNTRANSCRIBED, ev.Message(id="a1", role="assistant")])
    assert not ends_untranscribed([])
