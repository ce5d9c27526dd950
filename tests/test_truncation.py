"""A client's truncate applied to the history a later upstream connection is given (pure: literal items)."""

from __future__ import annotations

from services.provider_worker.switchplan import TurnLog
from shared import events as ev
from shared.store import apply_truncations, cut_transcript

ANSWER = "Once upon a time there was a fox"  # 32 characters: one per 100 ms of a 3200 ms answer


def _answer(transcript: str | None = ANSWER, duration_ms: int | None = None, item_id: str = "a1") -> ev.Message:
    return ev.Message(id=item_id, role="assistant",
                      content=[ev.AudioContent(transcript=transcript, duration_ms=duration_ms)], status="completed")


def test_without_the_audio_duration_only_a_marker_stays() -> None:
    assert cut_transcript(ANSWER, 1200, None) == "[cut off by the user after 1.2 s]"
    assert cut_transcript(ANSWER, 0, None) == "[cut off by the user after 0.0 s]"
    assert cut_transcript(ANSWER, 1200, 0) == "[cut off by the user after 1.2 s]"


def test_with_the_duration_the_heard_share_stays_cut_back_to_a_whole_word() -> None:
    # 1000 ms: 10 characters, "Once upon " and the cut before "a": "a" was not heard whole.
    assert cut_transcript(ANSWER, 1000, 3200) == "Once upon… [cut off by the user after 1.0 s]"
    # 1100 ms: 11 characters, the cut falls on the space after "a".
    assert cut_transcript(ANSWER, 1100, 3200) == "Once upon a… [cut off by the user after 1.1 s]"
    # 1500 ms: 15 characters, inside "time": that word was not heard whole.
    assert cut_transcript(ANSWER, 1500, 3200) == "Once upon a… [cut off by the user after 1.5 s]"
    # inside the first word: nothing heard whole
    assert cut_transcript(ANSWER, 200, 3200) == "[cut off by the user after 0.2 s]"


def test_an_answer_heard_to_its_end_stays_whole() -> None:
    assert cut_transcript(ANSWER, 3200, 3200) == ANSWER
    assert cut_transcript(ANSWER, 5000, 3200) == ANSWER


def test_the_truncation_applies_to_the_named_assistant_answer_only() -> None:
    user = ev.Message(id="u1", role="user", content=[ev.AudioContent(transcript="tell me a story")])
    kept = _answer(item_id="a0")
    cut = _answer(item_id="a1")
    call = ev.FunctionCall(id="f1", call_id="c1", name="get", arguments="{}")
    out = apply_truncations([user, kept, cut, call], {"a1": 800, "u1": 100, "f1": 5, "gone": 10})
    assert out[0] == user and out[1] == kept and out[3] == call  # only an assistant's speech can be cut
    assert out[2] == ev.Message(id="a1", role="assistant", status="completed",
                                content=[ev.AudioContent(transcript="[cut off by the user after 0.8 s]")])
    assert out[2].text() == "[cut off by the user after 0.8 s]"


def test_text_parts_and_an_answer_without_transcript_are_left_alone() -> None:
    text_answer = ev.Message(id="t1", role="assistant", content=[ev.TextContent(text="typed answer")])
    silent = _answer(transcript=None, item_id="s1")  # nothing to say: a restore skips it either way
    items: list[ev.Item] = [text_answer, silent]
    assert apply_truncations(items, {"t1": 100, "s1": 100}) is items


def test_no_truncations_returns_the_same_list() -> None:
    items: list[ev.Item] = [_answer()]
    assert apply_truncations(items, {}) is items
    assert apply_truncations(items, {"other": 10}) is items


def test_the_duration_of_the_audio_part_is_used() -> None:
    out = apply_truncations([_answer(duration_ms=3200)], {"a1": 1000})
    assert out[0].text() == "Once upon… [cut off by the user after 1.0 s]"  # type: ignore[union-attr]


def test_the_workers_own_log_cuts_a_truncated_answer_as_the_snapshot_does() -> None:
    """A make-before-break cutover may take the last turn from the worker's own log (``TurnLog``), not the
    checkpoint's: a truncate the client sent during that turn applies there too."""
    log = TurnLog()
    log.feed(ev.ItemCreate(item=ev.Message(id="u1", role="user", content=[ev.TextContent(text="a story")])))
    log.feed(ev.ItemTruncate(item_id="a1", audio_end_ms=1500))  # the truncate may come first (a barge-in)
    log.feed(ev.OutputDone(response_id="r1", item=_answer()))
    log.feed(ev.OutputDone(response_id="r2", item=_answer(transcript="The end", item_id="a2")))
    assert [i.text() for i in log.items() if isinstance(i, ev.Message)] == [
        "a story", "[cut off by the user after 1.5 s]", "The end"]
    log.feed(ev.ItemDelete(item_id="a1"))
    log.feed(ev.OutputDone(response_id="r3", item=_answer(item_id="a1")))  # an id used again: not cut
    assert [i.text() for i in log.items() if isinstance(i, ev.Message)] == ["a story", "The end", ANSWER]
