"""OpenAIProviderCodec: canonical <-> OpenAI Realtime GA, from recorded frames (the OpenAI Realtime API reference).

No network, no event loop: frames in, events out.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from openai.types.realtime.realtime_session_create_request import RealtimeSessionCreateRequest

from shared import events as ev
from shared.audio import b64decode_any, dominant_hz, tone
from shared.codecs.base import Out
from shared.codecs.openai_client import OpenAIClientCodec
from shared.codecs.openai_provider import OpenAIProviderCodec
from shared.session import SessionMeta
from tests.codecs import Checked, SeqIds, validate_openai
from tests.codecs import meta as client_meta

FRAMES = Path(__file__).parent / "frames"
META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="gemini", provider="openai")
TONE_24K = tone(440, 10, 24_000)  # the audio inside the recorded deltas


def frames(name: str) -> list[bytes]:
    return (FRAMES / f"provider_openai_{name}.jsonl").read_bytes().splitlines()


def ids() -> itertools.count[int]:
    return itertools.count(1)


def make(config: ev.SessionConfig | None = None, history: list[ev.Item] | None = None) -> OpenAIProviderCodec:
    counter = ids()
    codec = OpenAIProviderCodec(META, "gpt-realtime", id_factory=lambda p: f"{p}_{next(counter)}")
    codec.connect(config or ev.SessionConfig(), history or [])
    return codec


def feed_all(codec: OpenAIProviderCodec, lines: list[bytes]) -> list[ev.Event]:
    return [e for line in lines for e in codec.feed(line).events]


def wire(out_wire: list[str]) -> list[dict[str, object]]:
    return [json.loads(f) for f in out_wire]


# --------------------------------------------------------------------------------------------------
# connect()


def test_connect_sends_one_ga_session_update_built_from_the_whole_config() -> None:
    config = ev.SessionConfig(
        instructions="be brief",
        voice="Kore",  # a Gemini voice: mapped through the table
        output_modalities=["audio"],
        temperature=0.7,
        max_output_tokens=300,
        turn_detection=ev.TurnDetection(threshold=0.6, silence_duration_ms=500, prefix_padding_ms=300),
        input_transcription=True,
        tools=[ev.Tool(name="get_weather", description="weather", parameters='{"type":"object"}')],
        tool_choice="auto",
    )
    codec = OpenAIProviderCodec(META, "gpt-realtime")
    out = codec.connect(config, [])
    assert wire(out.wire) == [
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": "be brief",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": 24000},
                        "turn_detection": {
                            "type": "server_vad",
                            "create_response": True,
                            "interrupt_response": True,
                            "threshold": 0.6,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 500,
                        },
                        "transcription": {"model": "gpt-4o-mini-transcribe"},
                    },
                    "output": {"format": {"type": "audio/pcm", "rate": 24000}, "voice": "coral"},
                },
                "tools": [
                    {
                        "type": "function",
                        "name": "get_weather",
                        "parameters": {"type": "object"},
                        "description": "weather",
                    }
                ],
                "tool_choice": "auto",
                "max_output_tokens": 300,
            },
        }
    ]
    # GA has no temperature: reported once, never dropped silently
    assert out.events == [
        ev.Notice(code="unsupported_field", message=out.events[0].message, param="temperature")
    ]


def test_connect_manual_turns_and_no_transcription_are_nulls() -> None:
    codec = OpenAIProviderCodec(META, "gpt-realtime")
    out = codec.connect(ev.SessionConfig(turn_detection=None, output_modalities=["text"]), [])
    session = wire(out.wire)[0]["session"]
    assert session["audio"]["input"]["turn_detection"] is None
    assert session["audio"]["input"]["transcription"] is None
    assert session["output_modalities"] == ["text"]
    assert session["max_output_tokens"] == "inf"
    assert out.events == []


def test_connect_replays_history_as_items_keeping_ids() -> None:
    long_id = "conv_" + "x" * 40  # over OpenAI's 32-char limit
    history: list[ev.Item] = [
        ev.Message(id="sys_1", role="system", content=[ev.TextContent(text="You are terse.")]),
        ev.Message(id="u_1", role="user", content=[ev.AudioContent(transcript="weather in Paris?")]),
        ev.FunctionCall(id="fc_1", call_id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
        ev.FunctionCallOutput(id="fo_1", call_id="call_1", output='{"sky":"clear"}'),
        ev.Message(id=long_id, role="assistant", content=[ev.AudioContent(transcript="Clear skies.")]),
        ev.Message(id="u_2", role="user", content=[ev.AudioContent()]),  # audio without transcript
    ]
    out = OpenAIProviderCodec(META, "gpt-realtime").connect(ev.SessionConfig(), history)
    items = [f["item"] for f in wire(out.wire)[1:]]
    assert all(f["type"] == "conversation.item.create" for f in wire(out.wire)[1:])
    assert items[:4] == [
        {
            "type": "message",
            "id": "sys_1",
            "role": "system",
            "content": [{"type": "input_text", "text": "You are terse."}],
        },
        {
            "type": "message",
            "id": "u_1",
            "role": "user",
            "content": [{"type": "input_text", "text": "weather in Paris?"}],
        },
        {
            "type": "function_call",
            "id": "fc_1",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
        {"type": "function_call_output", "id": "fo_1", "call_id": "call_1", "output": '{"sky":"clear"}'},
    ]
    assistant = items[4]
    assert assistant["role"] == "assistant" and assistant["content"] == [
        {"type": "output_text", "text": "Clear skies."}
    ]
    assert len(assistant["id"]) <= 32
    assert len(items) == 5  # the transcript-less audio item cannot be replayed ...
    assert [e.code for e in out.events] == ["history_item_skipped"]  # ... and that is said


def test_long_canonical_ids_come_back_from_the_provider_unchanged() -> None:
    long_id = "conv_" + "y" * 40
    codec = make(history=[ev.Message(id=long_id, role="assistant", content=[ev.TextContent(text="hi")])])
    out = codec.encode(ev.ItemTruncate(item_id=long_id, audio_end_ms=500))
    short = wire(out.wire)[0]["item_id"]
    assert short != long_id and len(short) <= 32
    frame = {"type": "input_audio_buffer.committed", "item_id": "item_U1", "previous_item_id": short}
    assert codec.feed(json.dumps(frame)).events == [
        ev.InputCommitted(item_id="item_U1", previous_item_id=long_id)
    ]


# --------------------------------------------------------------------------------------------------
# encode()


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (ev.InputAudioCommit(), [{"type": "input_audio_buffer.commit"}]),
        (ev.InputAudioClear(), [{"type": "input_audio_buffer.clear"}]),
        (ev.ActivityStart(), [{"type": "input_audio_buffer.clear"}]),
        (ev.ResponseCancel(), [{"type": "response.cancel"}]),
        (ev.ResponseCancel(response_id="resp_1"), [{"type": "response.cancel", "response_id": "resp_1"}]),
        (ev.ResponseCreate(), [{"type": "response.create"}]),
        (ev.ItemDelete(item_id="item_1"), [{"type": "conversation.item.delete", "item_id": "item_1"}]),
        (
            ev.ItemTruncate(item_id="item_1", content_index=0, audio_end_ms=1500),
            [
                {
                    "type": "conversation.item.truncate",
                    "item_id": "item_1",
                    "content_index": 0,
                    "audio_end_ms": 1500,
                }
            ],
        ),
        (
            ev.ItemCreate(
                item=ev.Message(id="m1", role="user", content=[ev.TextContent(text="hi")]),
                previous_item_id="m0",
            ),
            [
                {
                    "type": "conversation.item.create",
                    "previous_item_id": "m0",
                    "item": {
                        "type": "message",
                        "id": "m1",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}],
                    },
                }
            ],
        ),
        (
            ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="call_1", output="done")),
            [
                {
                    "type": "conversation.item.create",
                    "item": {
                        "type": "function_call_output",
                        "id": "o1",
                        "call_id": "call_1",
                        "output": "done",
                    },
                }
            ],
        ),
    ],
)
def test_encode_maps_each_up_event(event: ev.Event, expected: list[dict[str, object]]) -> None:
    out = make().encode(event)
    assert wire(out.wire) == expected
    assert out.events == []


def test_input_audio_16k_is_resampled_to_24k_standard_base64() -> None:
    codec = make()
    pcm16k = tone(440, 400, 16_000)
    frames_out = [
        f
        for i in range(0, len(pcm16k), 640)
        for f in wire(codec.encode(ev.InputAudio(pcm=pcm16k[i : i + 640], rate=16_000)).wire)
    ]
    frames_out += wire(codec.encode(ev.InputAudioCommit()).wire)
    assert frames_out[-1] == {"type": "input_audio_buffer.commit"}
    appended = b"".join(b64decode_any(f["audio"]) for f in frames_out[:-1])
    assert all(f["type"] == "input_audio_buffer.append" for f in frames_out[:-1])
    assert all("-" not in f["audio"] and "_" not in f["audio"] for f in frames_out[:-1])  # standard alphabet
    assert abs(len(appended) - len(pcm16k) * 3 // 2) <= 4  # 400 ms at 24 kHz, tail flushed at commit
    assert dominant_hz(appended, 24_000) == pytest.approx(440, abs=2)


def test_input_audio_at_24k_passes_through_unchanged() -> None:
    codec = make()
    pcm = tone(300, 20, 24_000)
    [frame] = wire(codec.encode(ev.InputAudio(pcm=pcm, rate=24_000)).wire)
    assert b64decode_any(frame["audio"]) == pcm


def test_activity_end_commits_then_asks_for_a_response() -> None:
    codec = make(ev.SessionConfig(turn_detection=None))
    assert wire(codec.encode(ev.ActivityEnd()).wire) == [{"type": "response.create"}]  # nothing to commit
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 24_000), rate=24_000))
    assert wire(codec.encode(ev.ActivityEnd()).wire) == [
        {"type": "input_audio_buffer.commit"},
        {"type": "response.create"},
    ]


def test_audio_stream_end_commits_only_without_server_vad() -> None:
    manual = make(ev.SessionConfig(turn_detection=None))
    manual.encode(ev.InputAudio(pcm=tone(440, 20, 24_000), rate=24_000))
    assert [f["type"] for f in wire(manual.encode(ev.AudioStreamEnd()).wire)] == [
        "input_audio_buffer.commit",
        "response.create",
    ]
    vad = make()
    vad.encode(ev.InputAudio(pcm=tone(440, 20, 24_000), rate=24_000))
    assert vad.encode(ev.AudioStreamEnd()).wire == []


def test_response_create_options_become_ga_overrides() -> None:
    opts = ev.ResponseOptions(
        instructions="summarise",
        output_modalities=["text"],
        voice="Puck",
        tools=[ev.Tool(name="f")],
        tool_choice="f",
        max_output_tokens=50,
        out_of_band=True,
        metadata={"topic": "x"},
        temperature=0.2,
    )
    out = make().encode(ev.ResponseCreate(options=opts))
    assert wire(out.wire) == [
        {
            "type": "response.create",
            "response": {
                "output_modalities": ["text"],
                "instructions": "summarise",
                "audio": {"output": {"voice": "alloy"}},
                "tools": [
                    {"type": "function", "name": "f", "parameters": {"type": "object", "properties": {}}}
                ],
                "tool_choice": {"type": "function", "name": "f"},
                "max_output_tokens": 50,
                "conversation": "none",
                "metadata": {"topic": "x"},
            },
        }
    ]
    assert [(e.code, e.param) for e in out.events] == [("unsupported_field", "response.temperature")]


def test_temperature_is_reported_once_per_connection() -> None:
    codec = OpenAIProviderCodec(META, "gpt-realtime")
    assert len(codec.connect(ev.SessionConfig(temperature=0.5), []).events) == 1
    assert codec.encode(ev.SessionConfig(temperature=0.9, instructions="x")).events == []


def test_live_config_change_resends_voice_only_when_it_changes() -> None:
    codec = make(ev.SessionConfig(voice="ash"))
    assert codec.encode(ev.SessionConfig(voice="ash")).wire == []  # identical: nothing upstream
    [update] = wire(codec.encode(ev.SessionConfig(voice="ash", instructions="new")).wire)
    assert "voice" not in update["session"]["audio"]["output"]  # GA refuses voice changes after speech
    assert update["session"]["instructions"] == "new"
    [update] = wire(codec.encode(ev.SessionConfig(voice="sage", instructions="new")).wire)
    assert update["session"]["audio"]["output"]["voice"] == "sage"


def test_unknown_voice_and_bad_tool_schema_are_reported() -> None:
    out = OpenAIProviderCodec(META, "m").connect(
        ev.SessionConfig(voice="robot", tools=[ev.Tool(name="f", parameters="not json")]), []
    )
    assert "voice" not in wire(out.wire)[0]["session"]["audio"]["output"]
    assert [(e.code, e.param) for e in out.events] == [
        ("unsupported_value", "voice"),
        ("invalid_tool_schema", "tools[0].parameters"),
    ]


# --------------------------------------------------------------------------------------------------
# feed()


def test_full_audio_turn() -> None:
    codec = make(ev.SessionConfig(input_transcription=True))
    events = feed_all(codec, frames("audio_turn"))
    assert events == [
        ev.SessionReady(provider="openai", model="gpt-realtime"),
        ev.SpeechStarted(item_id="item_U1", audio_start_ms=120),
        ev.SpeechStopped(item_id="item_U1", audio_end_ms=1480),
        ev.InputCommitted(item_id="item_U1"),
        ev.ResponseStarted(response_id="resp_A1"),
        ev.OutputAudio(response_id="resp_A1", item_id="item_A2", pcm=TONE_24K[:240], rate=24_000),
        ev.OutputTranscript(response_id="resp_A1", item_id="item_A2", delta="Hello"),
        ev.OutputAudio(response_id="resp_A1", item_id="item_A2", pcm=TONE_24K[240:], rate=24_000),
        ev.OutputTranscript(response_id="resp_A1", item_id="item_A2", delta=" there!"),
        ev.OutputDone(
            response_id="resp_A1",
            item=ev.Message(
                id="item_A2",
                role="assistant",
                status="completed",
                content=[ev.AudioContent(transcript="Hello there!")],
            ),
        ),
        ev.ResponseDone(
            response_id="resp_A1",
            status="completed",
            usage=ev.Usage(
                input_tokens=120,
                output_tokens=210,
                total_tokens=330,
                input_text_tokens=20,
                input_audio_tokens=100,
                cached_tokens=64,
                output_text_tokens=40,
                output_audio_tokens=170,
            ),
        ),
        ev.RateLimits(
            limits=[
                ev.RateLimit(name="requests", limit=1000, remaining=999, reset_seconds=60.0),
                ev.RateLimit(name="tokens", limit=50000, remaining=49670, reset_seconds=0.396),
            ]
        ),
        ev.InputTranscript(item_id="item_U1", text="Hi, "),
        ev.InputTranscript(item_id="item_U1", text="assistant."),
        ev.InputTranscript(item_id="item_U1", text="Hi, assistant.", final=True),
    ]


def test_session_ready_only_for_the_first_session_updated_after_connect() -> None:
    updated = b'{"type":"session.updated","session":{}}'
    fresh = OpenAIProviderCodec(META, "gpt-realtime")
    assert fresh.feed(updated).events == []  # before connect(): not ours
    codec = make()
    assert codec.feed(updated).events == [ev.SessionReady(provider="openai", model="gpt-realtime")]
    assert codec.feed(updated).events == []


def test_text_turn() -> None:
    events = feed_all(make(), frames("text_turn"))
    assert events == [
        ev.ResponseStarted(response_id="resp_T1"),
        ev.OutputText(response_id="resp_T1", item_id="item_T2", delta="Two plus two "),
        ev.OutputText(response_id="resp_T1", item_id="item_T2", delta="is four."),
        ev.OutputDone(
            response_id="resp_T1",
            item=ev.Message(
                id="item_T2",
                role="assistant",
                status="completed",
                content=[ev.TextContent(text="Two plus two is four.")],
            ),
        ),
        ev.ResponseDone(
            response_id="resp_T1",
            usage=ev.Usage(
                input_tokens=20,
                output_tokens=10,
                total_tokens=30,
                input_text_tokens=20,
                output_text_tokens=10,
            ),
        ),
    ]


def test_tool_call_round_trip() -> None:
    codec = make()
    events = feed_all(codec, frames("tool_call"))
    call = ev.FunctionCall(id="item_F2", call_id="call_F3", name="get_weather", arguments='{"city":"Paris"}')
    assert events == [
        ev.ResponseStarted(response_id="resp_F1"),
        ev.ToolCall(
            response_id="resp_F1",
            item_id="item_F2",
            call_id="call_F3",
            name="get_weather",
            arguments='{"city":"Paris"}',
        ),
        ev.OutputDone(response_id="resp_F1", item=call),
        ev.ResponseDone(
            response_id="resp_F1", usage=ev.Usage(input_tokens=40, output_tokens=10, total_tokens=50)
        ),
    ]
    # the client answers; OpenAI does not continue on its own, so response.create goes up too
    out = codec.encode(
        ev.ItemCreate(item=ev.FunctionCallOutput(id="out_1", call_id="call_F3", output='{"sky":"clear"}'))
    )
    out.extend(codec.encode(ev.ResponseCreate()))
    assert wire(out.wire) == [
        {
            "type": "conversation.item.create",
            "item": {
                "type": "function_call_output",
                "id": "out_1",
                "call_id": "call_F3",
                "output": '{"sky":"clear"}',
            },
        },
        {"type": "response.create"},
    ]
    # the provider's acks for our item are swallowed (the client codec answered locally)
    ack = {"type": "conversation.item.added", "item": {"id": "out_1", "type": "function_call_output"}}
    assert codec.feed(json.dumps(ack)).events == []


def test_barge_in_reports_speech_interruption_items_then_cancelled_response() -> None:
    events = feed_all(make(), frames("barge_in"))
    assert events == [
        ev.ResponseStarted(response_id="resp_B1"),
        ev.OutputAudio(response_id="resp_B1", item_id="item_B2", pcm=TONE_24K[:240], rate=24_000),
        ev.OutputTranscript(response_id="resp_B1", item_id="item_B2", delta="Once upon"),
        ev.SpeechStarted(item_id="item_U9", audio_start_ms=3200),
        ev.Interrupted(response_id="resp_B1"),
        ev.OutputDone(
            response_id="resp_B1",
            item=ev.Message(
                id="item_B2",
                role="assistant",
                status="incomplete",
                content=[ev.AudioContent(transcript="Once upon")],
            ),
        ),
        ev.ResponseDone(response_id="resp_B1", status="cancelled", reason="turn_detected"),
    ]


def test_cancelled_response_without_prior_speech_event_still_reports_interruption() -> None:
    codec = make()
    done = {
        "type": "response.done",
        "response": {
            "id": "r1",
            "status": "cancelled",
            "status_details": {"type": "cancelled", "reason": "turn_detected"},
        },
    }
    assert codec.feed(json.dumps(done)).events == [
        ev.Interrupted(response_id="r1"),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"),
    ]
    done["response"]["status_details"]["reason"] = "client_cancelled"  # type: ignore[index]
    assert codec.feed(json.dumps(done)).events == [
        ev.ResponseDone(response_id="r1", status="cancelled", reason="client_cancelled"),
    ]


def test_beta_event_names_and_part_types_are_accepted() -> None:
    events = feed_all(make(), frames("beta_turn"))
    assert events == [
        ev.ResponseStarted(response_id="resp_R1"),
        ev.OutputAudio(response_id="resp_R1", item_id="item_R2", pcm=TONE_24K[:240], rate=24_000),
        ev.OutputTranscript(response_id="resp_R1", item_id="item_R2", delta="Hey"),
        ev.OutputText(response_id="resp_R1", item_id="item_R2", delta="(hey)"),
        ev.OutputDone(
            response_id="resp_R1",
            item=ev.Message(
                id="item_R2",
                role="assistant",
                status="completed",
                content=[ev.AudioContent(transcript="Hey"), ev.TextContent(text="(hey)")],
            ),
        ),
        # beta function_call_arguments.done has no name: taken from output_item.added
        ev.ToolCall(
            response_id="resp_R1", item_id="item_R3", call_id="call_R4", name="lookup", arguments="{}"
        ),
        ev.OutputDone(
            response_id="resp_R1",
            item=ev.FunctionCall(id="item_R3", call_id="call_R4", name="lookup", arguments="{}"),
        ),
        ev.ResponseDone(response_id="resp_R1"),
    ]


def test_errors_become_provider_errors() -> None:
    events = feed_all(make(), frames("errors"))
    assert events == [
        ev.ProviderError(
            code="invalid_value",
            message="Invalid value for 'voice'.",
            param="session.audio.output.voice",
            client_event_id="evt_client_7",
        ),
        ev.ProviderError(code="server_error", message="The server had an error.", retryable=True),
        ev.ProviderError(code="audio_unintelligible", message="Audio could not be transcribed."),
    ]


def test_output_item_done_without_arguments_done_still_emits_tool_call_first() -> None:
    codec = make()
    frame = {
        "type": "response.output_item.done",
        "response_id": "r1",
        "item": {"id": "i1", "type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
    }
    assert codec.feed(json.dumps(frame)).events == [
        ev.ToolCall(response_id="r1", item_id="i1", call_id="c1", name="f", arguments="{}"),
        ev.OutputDone(
            response_id="r1", item=ev.FunctionCall(id="i1", call_id="c1", name="f", arguments="{}")
        ),
    ]


def test_unknown_event_types_are_reported_once_per_type() -> None:
    codec = make()
    first = codec.feed(b'{"type":"response.mcp_call.in_progress","item_id":"x"}').events
    assert [(e.code, e.param) for e in first] == [("unknown_provider_event", "response.mcp_call.in_progress")]
    assert codec.feed(b'{"type":"response.mcp_call.in_progress","item_id":"y"}').events == []
    assert len(codec.feed(b'{"type":"something.else"}').events) == 1


def test_structural_events_are_ignored_deliberately() -> None:
    codec = make()
    for etype in (
        "response.content_part.added",
        "response.output_audio.done",
        "conversation.item.done",
        "input_audio_buffer.cleared",
        "conversation.item.truncated",
        "conversation.item.deleted",
    ):
        assert codec.feed(json.dumps({"type": etype})).events == []


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"[]",
        b"null",
        b'{"type":7}',
        b'{"no_type":true}',
        b'{"type":"response.output_audio.delta"}',
        b'{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"@@not base64@@"}',
        b'{"type":"response.created","response":"oops"}',
        b'{"type":"response.done","response":{}}',
        b'{"type":"input_audio_buffer.speech_started","item_id":5}',
        b'{"type":"response.output_item.done","item":{"type":"message","id":"i","role":"alien"},"response_id":"r"}',
        b'{"type":"rate_limits.updated","rate_limits":[{"limit":1}]}',
        "\u00ff\u00fe".encode("latin-1"),
    ],
)
def test_malformed_provider_frames_never_raise(frame: bytes) -> None:
    events = make().feed(frame).events
    assert all(isinstance(e, ev.Notice) and e.code == "malformed_provider_event" for e in events)
    assert len(events) == 1


def test_encode_of_a_down_event_is_reported_not_raised() -> None:
    out = make().encode(ev.GoAway(time_left_ms=1))
    assert out.wire == [] and [e.code for e in out.events] == ["unsupported_event"]


def test_speech_without_interrupt_response_does_not_interrupt() -> None:
    codec = make(ev.SessionConfig(turn_detection=ev.TurnDetection(interrupt_response=False)))
    lines = frames("barge_in")
    events = feed_all(codec, lines[:5])
    assert not any(isinstance(e, ev.Interrupted) for e in events)


def test_input_audio_with_an_invalid_rate_is_reported() -> None:
    out = make().encode(ev.InputAudio(pcm=b"\x00\x00", rate=0))
    assert out.wire == [] and [e.code for e in out.events] == ["invalid_audio"]


def test_client_audio_formats_never_reach_openai() -> None:
    # They travel in SessionConfig for a transformer failover only: the provider speaks its own PCM.
    formats = {"client_input_format": "pcmu/8000", "client_output_format": "pcm16/16000"}
    codec = OpenAIProviderCodec(META, "gpt-realtime")
    out = codec.connect(ev.SessionConfig(instructions="a", **formats), [])
    assert out.events == []  # nothing to report as unsupported
    assert out.wire == OpenAIProviderCodec(META, "gpt-realtime").connect(ev.SessionConfig(instructions="a"), []).wire
    # A client that only switches its own audio format changes nothing upstream...
    assert codec.encode(ev.SessionConfig(instructions="a")).wire == []
    # ...while a real change still goes out.
    [update] = wire(codec.encode(ev.SessionConfig(instructions="b", **formats)).wire)
    assert update["session"]["instructions"] == "b"


# --------------------------------------------------------------------------------------------------
# OpenAI-only fields pass through to OpenAI (issue 10)


def test_openai_only_session_fields_go_back_where_ga_keeps_them() -> None:
    config = ev.SessionConfig(
        input_transcription=True,
        extra={
            "session.tracing": '"auto"',
            "session.truncation": '{"type":"retention_ratio","retention_ratio":0.5}',
            "session.include": '["item.input_audio_transcription.logprobs"]',
            "session.input_audio_noise_reduction": '{"type":"near_field"}',  # beta spelling
            "session.audio.input.transcription.prompt": '"names: Oslo"',
            "session.tools[0]": '{"type":"mcp","server_label":"x","server_url":"https://example.invalid"}',
            "session.type": '"transcription"',  # no GA upstream equivalent here: reported
        },
    )
    codec = OpenAIProviderCodec(META, "gpt-realtime")
    out = codec.connect(config, [])
    (update,) = wire(out.wire)
    session = update["session"]
    assert session["tracing"] == "auto"
    assert session["truncation"] == {"type": "retention_ratio", "retention_ratio": 0.5}
    assert session["include"] == ["item.input_audio_transcription.logprobs"]
    assert session["audio"]["input"]["noise_reduction"] == {"type": "near_field"}
    assert session["audio"]["input"]["transcription"]["prompt"] == "names: Oslo"
    assert session["tools"] == [{"type": "mcp", "server_label": "x", "server_url": "https://example.invalid"}]
    assert [(e.code, e.param) for e in out.events if isinstance(e, ev.Notice)] == [
        ("unsupported_field", "session.type")
    ]
    RealtimeSessionCreateRequest.model_validate(session)  # still a session the SDK (and OpenAI) accepts


def test_a_transcription_prompt_without_transcription_is_reported_not_sent() -> None:
    config = ev.SessionConfig(extra={"session.audio.input.transcription.prompt": '"p"'})
    out = OpenAIProviderCodec(META, "gpt-realtime").connect(config, [])
    assert wire(out.wire)[0]["session"]["audio"]["input"]["transcription"] is None
    assert [e.param for e in out.events if isinstance(e, ev.Notice)] == ["session.audio.input.transcription.prompt"]


def test_openai_only_response_options_are_passed_through() -> None:
    codec = make()
    options = ev.ResponseOptions(
        extra={"response.prompt": '{"id":"pmpt_1"}', "response.parallel_tool_calls": "false", "response.x": "1"}
    )
    out = codec.encode(ev.ResponseCreate(options=options))
    (create,) = wire(out.wire)
    assert create["response"] == {"prompt": {"id": "pmpt_1"}, "parallel_tool_calls": False}
    assert [e.param for e in out.events if isinstance(e, ev.Notice)] == ["response.x"]


# --------------------------------------------------------------------------------------------------
# REAL OpenAI traffic (headers of the frame files name the public source: repository, path, commit)

REAL = ("real_ga_session", "real_ga_response_end", "real_beta_text")


def real_frames(name: str) -> list[bytes]:
    return [line for line in frames(name) if line and not line.startswith(b"#")]


def test_real_frames_differ_from_the_sdk_types_only_where_known() -> None:
    """What real servers send beyond the SDK's types (the facts the codecs must tolerate): GA transcript
    deltas carry ``obfuscation`` and GA sessions ``expires_at``; nothing else is unknown."""
    unknown: set[str] = set()
    for name in REAL:
        for line in real_frames(name):
            try:
                validate_openai(line.decode(), beta="beta" in name)
            except AssertionError as exc:
                unknown.add(str(exc).split(": ", 1)[1])
    assert unknown == {
        "['session.created.session.expires_at']",
        "['session.updated.session.expires_at']",
        "['response.output_audio_transcript.delta.obfuscation']",
    }


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("beta", [False, True], ids=["ga-client", "beta-client"])
def test_real_traffic_through_both_codecs_gives_frames_the_sdk_accepts(name: str, beta: bool) -> None:
    """Real server frames -> provider codec -> canonical -> client codec: every client frame validates
    strictly against the SDK's types (Checked), with nothing the provider codec could not read."""
    provider = make()
    events = feed_all(provider, real_frames(name))
    assert not [e for e in events if isinstance(e, ev.Notice)], events
    client = Checked(
        OpenAIClientCodec(client_meta("openai_beta" if beta else "openai_ga"), beta=beta, id_factory=SeqIds()),
        lambda frame: validate_openai(frame, beta=beta),
    )
    client.open()
    for event in events:
        client.encode(event)
    assert len(client.frames) > len(events)


def test_real_ga_session_maps_to_the_canonical_turns() -> None:
    events = feed_all(make(), real_frames("real_ga_session"))
    assert [type(e).__name__ for e in events] == [
        "SessionReady",
        "SpeechStarted",
        "SpeechStopped",
        "InputCommitted",
        "ResponseStarted",
        "OutputTranscript",
        "RateLimits",
        "SpeechStarted",
        "Interrupted",  # the user spoke over the story: server VAD cuts the response in flight
        "SpeechStopped",
        "InputCommitted",
        "ResponseStarted",
        "OutputTranscript",
    ]
    committed = [e for e in events if isinstance(e, ev.InputCommitted)]
    assert [c.previous_item_id for c in committed] == [None, "item_Ct1OZd4ZkrcbhoRueeC2O"]


def test_real_beta_text_response_keeps_the_clients_metadata() -> None:
    """The real beta server echoed the client's response.create metadata in response.created and
    response.done; the gateway does the same whatever the provider."""
    events = feed_all(make(), real_frames("real_beta_text"))
    done = next(e for e in events if isinstance(e, ev.OutputDone)).item
    assert isinstance(done, ev.Message) and done.content[0].text.startswith('{\n  "word": "pending"')
    client = Checked(
        OpenAIClientCodec(client_meta("openai_beta"), beta=True, id_factory=SeqIds()),
        lambda frame: validate_openai(frame, beta=True),
    )
    metadata = {"request_id": "a68f767f-0d18-4494-9012-f113cf16d43a"}
    client.feed(json.dumps({"type": "response.create", "response": {"modalities": ["text"], "metadata": metadata}}))
    frames_out = client.encode_all(*events)
    assert frames_out[0]["type"] == "response.created" and frames_out[-1]["type"] == "response.done"
    assert frames_out[0]["response"]["metadata"] == frames_out[-1]["response"]["metadata"] == metadata
    assert frames_out[-1]["response"]["usage"]["total_tokens"] == 151


def test_every_up_event_has_an_encoder_row() -> None:
    from shared.codecs.openai_provider import _ENCODERS

    assert set(_ENCODERS) == set(ev.UP_TYPES)
    assert make().encode(ev.SwitchRequest(provider="gemini")) == Out()


@pytest.mark.parametrize(("name", "beta"), [("real_ga_response_end", False), ("real_beta_text", True)])
def test_items_the_client_sees_have_the_real_servers_fields(name: str, beta: bool) -> None:
    """GA items carry no ``object`` (beta ones do), exactly as in the real captures."""
    lines = real_frames(name)
    real = next(json.loads(x) for x in lines if json.loads(x)["type"] == "response.output_item.done")["item"]
    client = Checked(
        OpenAIClientCodec(client_meta("openai_beta" if beta else "openai_ga"), beta=beta, id_factory=SeqIds()),
        lambda frame: validate_openai(frame, beta=beta),
    )
    ours = [f for f in client.encode_all(*feed_all(make(), lines)) if f["type"] == "response.output_item.done"]
    assert set(ours[0]["item"]) == set(real)
    assert ours[0]["item"]["content"] == real["content"]
