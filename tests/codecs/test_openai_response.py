"""The response assembler's transition table, with literal inputs and a recording host (no codec)."""

from __future__ import annotations

import json
from typing import Any

from shared import events as ev
from shared.codecs.openai_response import KINDS, TRANSITIONS, Phase, ResponseAssembler, ResponseNames

NAMES = ResponseNames(
    item_added="conversation.item.added",
    item_done="conversation.item.done",
    audio_delta="response.output_audio.delta",
    audio_done="response.output_audio.done",
    transcript_delta="response.output_audio_transcript.delta",
    transcript_done="response.output_audio_transcript.done",
    text_delta="response.output_text.delta",
    text_done="response.output_text.done",
    name_on_args_done=True,
    content_part_types={"audio": "audio", "text": "text"},
)


class Host:
    """Frames as JSON with no event ids; audio passes through as its byte count."""

    def __init__(self) -> None:
        self.last: str | None = None
        self.stored: list[str] = []
        self.resets = 0

    def frame(self, type_: str, **fields: Any) -> str:
        return json.dumps({"type": type_, **fields})

    def render_item(self, item: ev.Item, status: str | None = None) -> dict[str, Any]:
        return {"id": item.id, "status": status}

    def remember(self, item: ev.Item) -> None:
        self.stored.append(item.id)

    def link(self, item_id: str) -> str | None:
        prev, self.last = self.last, item_id
        return prev

    def response_fields(self) -> dict[str, Any]:
        return {"voice": "marin"}

    def encode_audio(self, pcm: bytes, rate: int) -> str | None:
        return str(len(pcm)) if pcm else None

    def flush_audio(self) -> str | None:
        return None

    def reset_audio(self) -> None:
        self.resets += 1


def run(a: ResponseAssembler, *events: ev.Event) -> list[dict[str, Any]]:
    return [json.loads(f) for e in events for f in a.handle(e)]


def test_every_phase_and_event_kind_has_a_row() -> None:
    live = [p for p in Phase]
    assert {(p, k) for p in live for k in set(KINDS.values())} == set(TRANSITIONS)
    assert set(KINDS) == {
        ev.ResponseStarted,
        ev.OutputAudio,
        ev.OutputTranscript,
        ev.OutputText,
        ev.ToolCall,
        ev.OutputDone,
        ev.ResponseDone,
        ev.Interrupted,
    }


def test_first_event_announces_the_response_and_links_the_item_to_the_conversation() -> None:
    host = Host()
    host.last = "item_user"
    a = ResponseAssembler(host, NAMES, "conv_1")
    frames = run(a, ev.OutputText(response_id="r1", item_id="it1", delta="Hi"))
    assert [f["type"] for f in frames] == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert frames[0]["response"]["voice"] == "marin" and frames[0]["response"]["status"] == "in_progress"
    assert frames[2]["previous_item_id"] == "item_user" and host.last == "it1"
    assert frames[3]["part"] == {"type": "text", "text": ""}
    assert a.phase("r1") is Phase.OPEN


def test_metadata_of_response_create_is_echoed_in_created_and_done() -> None:
    a = ResponseAssembler(Host(), NAMES, "conv_1")
    a.expect({"client_event_id": "lk_1"})
    a.expect(None)
    first = run(a, ev.ResponseStarted(response_id="r1"), ev.ResponseDone(response_id="r1"))
    second = run(a, ev.ResponseStarted(response_id="r2"))
    assert [f["response"]["metadata"] for f in first] == [{"client_event_id": "lk_1"}] * 2
    assert second[0]["response"]["metadata"] is None


def test_output_after_a_cut_is_not_played_but_the_response_still_closes() -> None:
    host = Host()
    a = ResponseAssembler(host, NAMES, "conv_1")
    run(a, ev.OutputAudio(response_id="r1", item_id="it1", pcm=b"\0\0" * 10, rate=24_000))
    assert run(a, ev.Interrupted(response_id=None)) == [] and host.resets == 1
    assert a.phase("r1") is Phase.CUT
    assert run(a, ev.OutputAudio(response_id="r1", item_id="it1", pcm=b"\0\0", rate=24_000)) == []
    done = run(a, ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"))
    assert [f["type"] for f in done][-3:] == ["conversation.item.done", "response.output_item.done", "response.done"]
    assert done[-1]["response"]["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    assert a.phase("r1") is Phase.DONE and host.stored == ["it1"]


def test_late_events_of_a_finished_response_are_dropped_not_reannounced() -> None:
    a = ResponseAssembler(Host(), NAMES, "conv_1")
    run(a, ev.ResponseStarted(response_id="r1"), ev.ResponseDone(response_id="r1"))
    assert run(a, ev.OutputText(response_id="r1", item_id="x", delta="late")) == []
    assert run(a, ev.ResponseDone(response_id="r1")) == []
    assert len(a) == 0


def test_interrupting_an_unknown_response_does_nothing() -> None:
    a = ResponseAssembler(Host(), NAMES, "conv_1")
    assert run(a, ev.Interrupted(response_id="nope")) == []
    assert a.phase("nope") is Phase.ABSENT


def test_current_item_is_the_streaming_item_as_it_stands() -> None:
    a = ResponseAssembler(Host(), NAMES, "conv_1")
    run(
        a,
        ev.OutputTranscript(response_id="r1", item_id="it1", delta="Hel"),
        ev.OutputTranscript(response_id="r1", item_id="it1", delta="lo"),
    )
    assert a.current_item("it1") == ev.Message(
        id="it1", role="assistant", content=[ev.AudioContent(transcript="Hello")], status="in_progress"
    )
    run(a, ev.ResponseDone(response_id="r1"))
    assert a.current_item("it1") is None  # done: the codec's store answers from now on


def test_a_tool_call_is_one_delta_then_done_with_the_name() -> None:
    a = ResponseAssembler(Host(), NAMES, "conv_1")
    call = ev.ToolCall(response_id="r1", item_id="fc1", call_id="c1", name="f", arguments='{"a":1}')
    frames = run(a, call)
    assert [f["type"] for f in frames][-2:] == [
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
    ]
    assert frames[-1]["name"] == "f" and frames[-1]["arguments"] == '{"a":1}'
