"""GeminiProviderCodec: canonical <-> Gemini Live, from recorded frames (the Gemini Live API reference).

No network, no event loop: frames in, events out.
"""

from __future__ import annotations

import base64
import itertools
import json
from pathlib import Path

import pytest
from msgspec.structs import replace as msgspec_replace

from shared import events as ev
from shared.audio import b64decode_any, dominant_hz, tone
from shared.codecs.gemini_provider import GeminiProviderCodec, parse_duration_ms
from shared.session import SessionMeta

FRAMES = Path(__file__).parent / "frames"
META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="openai_ga", provider="gemini")
TONE_24K = tone(440, 10, 24_000)  # the audio inside the recorded inlineData parts
SETUP_COMPLETE = b'{"setupComplete":{}}'
MANUAL = ev.SessionConfig(turn_detection=None)


def frames(name: str) -> list[bytes]:
    return (FRAMES / f"provider_gemini_{name}.jsonl").read_bytes().splitlines()


def make(
    config: ev.SessionConfig | None = None,
    history: list[ev.Item] | None = None,
    *,
    ready: bool = True,
    resumption_handle: str | None = None,
) -> GeminiProviderCodec:
    counter = itertools.count(1)
    codec = GeminiProviderCodec(
        META,
        "gemini-live-2.5-flash-preview",
        id_factory=lambda p: f"{p}_{next(counter)}",
        resumption_handle=resumption_handle,
    )
    codec.connect(config or ev.SessionConfig(), history or [])
    if ready:
        codec.feed(SETUP_COMPLETE)
    return codec


def feed_all(codec: GeminiProviderCodec, lines: list[bytes]) -> list[ev.Event]:
    return [e for line in lines for e in codec.feed(line).events]


def wire(out_wire: list[str]) -> list[dict[str, object]]:
    return [json.loads(f) for f in out_wire]


def kinds(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


# --------------------------------------------------------------------------------------------------
# connect()


def test_connect_sends_one_setup_built_from_the_whole_config() -> None:
    config = ev.SessionConfig(
        instructions="You are terse.",
        voice="coral",
        output_modalities=["audio"],
        temperature=0.7,
        max_output_tokens=256,
        turn_detection=ev.TurnDetection(
            type="semantic_vad",
            threshold=0.8,
            eagerness="high",
            prefix_padding_ms=20,
            silence_duration_ms=100,
            interrupt_response=False,
        ),
        input_transcription=True,
        tools=[
            ev.Tool(
                name="get_weather",
                description="weather",
                parameters='{"type":"object","properties":{"city":{"type":"string"}}}',
            )
        ],
        tool_choice="required",
    )
    codec = GeminiProviderCodec(META, "gemini-live-2.5-flash-preview")
    out = codec.connect(config, [])
    assert wire(out.wire) == [
        {
            "setup": {
                "model": "models/gemini-live-2.5-flash-preview",
                "generationConfig": {
                    "responseModalities": ["AUDIO"],
                    "temperature": 0.7,
                    "maxOutputTokens": 256,
                    "speechConfig": {"voiceConfig": {"prebuiltVoiceConfig": {"voiceName": "Kore"}}},
                },
                "systemInstruction": {"parts": [{"text": "You are terse."}]},
                "tools": [
                    {
                        "functionDeclarations": [
                            {
                                "name": "get_weather",
                                "description": "weather",
                                "parametersJsonSchema": {
                                    "type": "object",
                                    "properties": {"city": {"type": "string"}},
                                },
                            }
                        ]
                    }
                ],
                "realtimeInputConfig": {
                    "automaticActivityDetection": {
                        "disabled": False,
                        "startOfSpeechSensitivity": "START_SENSITIVITY_LOW",
                        "endOfSpeechSensitivity": "END_SENSITIVITY_HIGH",
                        "prefixPaddingMs": 20,
                        "silenceDurationMs": 100,
                    },
                    "activityHandling": "NO_INTERRUPTION",
                },
                "inputAudioTranscription": {},
                "outputAudioTranscription": {},
                "sessionResumption": {},
            }
        }
    ]
    assert [(e.code, e.param) for e in out.events] == [("unsupported_field", "tool_choice")]


def test_manual_turns_disable_automatic_activity_detection() -> None:
    out = GeminiProviderCodec(META, "gemini-x").connect(MANUAL, [])
    setup = wire(out.wire)[0]["setup"]
    assert setup["realtimeInputConfig"] == {"automaticActivityDetection": {"disabled": True}}
    assert "inputAudioTranscription" not in setup
    assert setup["outputAudioTranscription"] == {}  # always: OpenAI clients need output transcripts


def test_setup_with_a_resumption_handle_resumes_instead_of_replaying_history() -> None:
    codec = GeminiProviderCodec(META, "gemini-x", resumption_handle="h-1")
    out = codec.connect(
        ev.SessionConfig(), [ev.Message(id="m1", role="user", content=[ev.TextContent(text="hi")])]
    )
    assert wire(out.wire)[0]["setup"]["sessionResumption"] == {"handle": "h-1"}
    assert codec.feed(SETUP_COMPLETE).wire == []


def test_history_is_held_until_setup_complete_then_sent_as_one_client_content() -> None:
    history: list[ev.Item] = [
        ev.Message(id="u1", role="user", content=[ev.AudioContent(transcript="weather in Paris?")]),
        ev.FunctionCall(id="f1", call_id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
        ev.FunctionCallOutput(id="o1", call_id="call_1", output="sunny"),
        ev.Message(id="a1", role="assistant", content=[ev.AudioContent(transcript="It is sunny.")]),
        ev.Message(id="a2", role="assistant", content=[ev.TextContent(text="Anything else?")]),
        ev.Message(id="u2", role="user", content=[ev.AudioContent()]),  # nothing to replay
    ]
    codec = GeminiProviderCodec(META, "gemini-x")
    out = codec.connect(ev.SessionConfig(), history)
    assert len(out.wire) == 1  # the setup only: Gemini wants it alone until setupComplete
    assert [e.code for e in out.events] == ["history_item_skipped"]
    ready = codec.feed(SETUP_COMPLETE)
    assert ready.events == [ev.SessionReady(provider="gemini", model="gemini-x")]
    assert wire(ready.wire) == [
        {
            "clientContent": {
                "turnComplete": False,
                "turns": [
                    {"role": "user", "parts": [{"text": "weather in Paris?"}]},
                    {
                        "role": "model",
                        "parts": [
                            {
                                "functionCall": {
                                    "id": "call_1",
                                    "name": "get_weather",
                                    "args": {"city": "Paris"},
                                }
                            }
                        ],
                    },
                    {
                        "role": "user",
                        "parts": [
                            {
                                "functionResponse": {
                                    "id": "call_1",
                                    "name": "get_weather",
                                    "response": {"output": "sunny"},
                                }
                            }
                        ],
                    },
                    {"role": "model", "parts": [{"text": "It is sunny."}, {"text": "Anything else?"}]},
                ],
            }
        }
    ]
    assert codec.feed(SETUP_COMPLETE).events == []  # only the first one


def test_frames_encoded_before_setup_complete_are_held_and_clear_drops_held_audio() -> None:
    codec = make(ready=False)
    pcm = tone(440, 20, 16_000)
    assert codec.encode(ev.InputAudio(pcm=pcm, rate=16_000)).wire == []
    codec.encode(ev.InputAudioClear())
    assert codec.encode(ev.InputAudio(pcm=pcm, rate=16_000)).wire == []
    released = wire(codec.feed(SETUP_COMPLETE).wire)
    assert len(released) == 1 and b64decode_any(released[0]["realtimeInput"]["audio"]["data"]) == pcm


# --------------------------------------------------------------------------------------------------
# encode()


def test_input_audio_is_resampled_to_16k_with_a_truthful_mime() -> None:
    codec = make()
    pcm24 = tone(440, 400, 24_000)
    sent = [
        f
        for i in range(0, len(pcm24), 960)
        for f in wire(codec.encode(ev.InputAudio(pcm=pcm24[i : i + 960], rate=24_000)).wire)
    ]
    sent += wire(codec.encode(ev.InputAudioCommit()).wire)
    audio = [f["realtimeInput"]["audio"] for f in sent if "audio" in f["realtimeInput"]]
    assert {a["mimeType"] for a in audio} == {"audio/pcm;rate=16000"}
    pcm16 = b"".join(b64decode_any(a["data"]) for a in audio)
    assert abs(len(pcm16) - len(pcm24) * 2 // 3) <= 4
    assert dominant_hz(pcm16, 16_000) == pytest.approx(440, abs=2)
    assert sent[-1] == {"realtimeInput": {"audioStreamEnd": True}}  # server VAD: commit flushes


def test_manual_turn_wraps_audio_in_activity_and_commit_synthesizes_the_user_item() -> None:
    codec = make(MANUAL, [ev.Message(id="m0", role="user", content=[ev.TextContent(text="hi")])])
    pcm = tone(440, 20, 16_000)
    first = wire(codec.encode(ev.InputAudio(pcm=pcm, rate=16_000)).wire)
    assert first[0] == {"realtimeInput": {"activityStart": {}}} and "audio" in first[1]["realtimeInput"]
    assert len(codec.encode(ev.InputAudio(pcm=pcm, rate=16_000)).wire) == 1  # activity already open
    out = codec.encode(ev.InputAudioCommit(item_id="item_client"))
    assert wire(out.wire) == [{"realtimeInput": {"activityEnd": {}}}]
    assert out.events == [ev.InputCommitted(item_id="item_client", previous_item_id="m0")]
    # Gemini answers activityEnd by itself: the client's response.create is a no-op
    assert codec.encode(ev.ResponseCreate()).wire == []


def test_manual_commit_without_audio_sends_nothing() -> None:
    out = make(MANUAL).encode(ev.InputAudioCommit())
    assert out.wire == [] and out.events == []


def test_activity_passthrough_with_manual_turns() -> None:
    codec = make(MANUAL)
    assert wire(codec.encode(ev.ActivityStart()).wire) == [{"realtimeInput": {"activityStart": {}}}]
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    out = codec.encode(ev.ActivityEnd())
    assert wire(out.wire) == [{"realtimeInput": {"activityEnd": {}}}]
    assert kinds(out.events) == ["InputCommitted"]


def test_audio_stream_end_passes_through_with_server_vad() -> None:
    out = make().encode(ev.AudioStreamEnd())
    assert wire(out.wire) == [{"realtimeInput": {"audioStreamEnd": True}}]
    assert out.events == []


def test_activity_start_with_server_vad_is_reported_not_sent() -> None:
    out = make().encode(ev.ActivityStart())
    assert out.wire == [] and [e.code for e in out.events] == ["unsupported_event"]


def test_text_items_wait_for_response_create_then_go_as_one_client_content() -> None:
    """Two user messages stay two user turns (as in the history a new connection is sent: the same count)."""
    codec = make()
    a = codec.encode(
        ev.ItemCreate(item=ev.Message(id="m1", role="user", content=[ev.TextContent(text="Hello")]))
    )
    b = codec.encode(
        ev.ItemCreate(item=ev.Message(id="m2", role="user", content=[ev.TextContent(text="there")]))
    )
    assert a.wire == [] and b.wire == []
    out = codec.encode(ev.ResponseCreate(options=ev.ResponseOptions(instructions="x", out_of_band=True)))
    assert wire(out.wire) == [
        {
            "clientContent": {
                "turns": [
                    {"role": "user", "parts": [{"text": "Hello"}]},
                    {"role": "user", "parts": [{"text": "there"}]},
                ],
                "turnComplete": True,
            }
        }
    ]
    assert [(e.code, e.param) for e in out.events] == [
        ("unsupported_field", "response.instructions"),
        ("unsupported_field", "response.conversation"),
    ]
    # nothing pending: ask the model to speak now
    assert wire(codec.encode(ev.ResponseCreate()).wire) == [{"clientContent": {"turnComplete": True}}]


def test_config_change_after_setup_asks_the_worker_to_reconnect() -> None:
    codec = make(ev.SessionConfig(instructions="a"))
    assert codec.encode(ev.SessionConfig(instructions="a")).events == []  # unchanged
    assert not codec.needs_reconnect
    out = codec.encode(ev.SessionConfig(instructions="b"))
    assert out.wire == [] and [e.code for e in out.events] == ["reconnect_required"]
    assert codec.needs_reconnect and codec.pending_config == ev.SessionConfig(instructions="b")
    assert codec.encode(ev.SessionConfig(instructions="c")).events == []  # said once
    assert codec.pending_config == ev.SessionConfig(instructions="c")


def test_truncate_is_kept_for_history_and_delete_is_reported() -> None:
    codec = make()
    trunc = ev.ItemTruncate(item_id="item_9", audio_end_ms=800)
    assert codec.encode(trunc).wire == [] and codec.truncations == {"item_9": trunc}
    out = codec.encode(ev.ItemDelete(item_id="item_9"))
    assert out.wire == [] and [e.code for e in out.events] == ["unsupported_event"]


# --------------------------------------------------------------------------------------------------
# feed()


def test_full_audio_turn() -> None:
    codec = make(ev.SessionConfig(input_transcription=True), ready=False)
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    events = feed_all(codec, frames("audio_turn"))
    assert events == [
        ev.SessionReady(provider="gemini", model="gemini-live-2.5-flash-preview"),
        # Gemini has no VAD events nor user items: synthesized at the first input transcription
        ev.SpeechStarted(item_id="item_1"),
        ev.SpeechStopped(item_id="item_1"),
        ev.InputCommitted(item_id="item_1"),
        ev.InputTranscript(item_id="item_1", text="What's the "),
        ev.InputTranscript(item_id="item_1", text="weather?"),
        ev.ResponseStarted(response_id="resp_2"),
        ev.OutputAudio(response_id="resp_2", item_id="item_3", pcm=TONE_24K[:240], rate=24_000),
        ev.OutputTranscript(response_id="resp_2", item_id="item_3", delta="It is "),
        ev.OutputAudio(response_id="resp_2", item_id="item_3", pcm=TONE_24K[240:], rate=24_000),
        # the transcript may trail generationComplete: the item closes at turnComplete, whole
        ev.OutputTranscript(response_id="resp_2", item_id="item_3", delta="sunny."),
        ev.InputTranscript(item_id="item_1", text="What's the weather?", final=True),
        ev.OutputDone(
            response_id="resp_2",
            item=ev.Message(
                id="item_3",
                role="assistant",
                status="completed",
                content=[ev.AudioContent(transcript="It is sunny.")],
            ),
        ),
        ev.ResponseDone(
            response_id="resp_2",
            status="completed",
            usage=ev.Usage(
                input_tokens=120,
                output_tokens=210,
                total_tokens=330,
                input_text_tokens=20,
                input_audio_tokens=100,
                output_audio_tokens=210,
            ),
        ),
    ]
    assert codec.resumption_handle == "handle-1"


def test_model_turn_start_synthesizes_the_user_item_when_no_transcript_came_first() -> None:
    codec = make()
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    events = codec.feed(frames("barge_in")[0]).events
    assert kinds(events) == [
        "SpeechStarted",
        "SpeechStopped",
        "InputCommitted",
        "ResponseStarted",
        "OutputAudio",
    ]


def test_text_turn_skips_thoughts() -> None:
    codec = make(ev.SessionConfig(output_modalities=["text"]))
    codec.encode(ev.ItemCreate(item=ev.Message(id="m1", role="user", content=[ev.TextContent(text="2+2?")])))
    codec.encode(ev.ResponseCreate())
    events = feed_all(codec, frames("text_turn"))
    assert events == [
        ev.ResponseStarted(response_id="resp_1"),
        ev.OutputText(response_id="resp_1", item_id="item_2", delta="Two plus two "),
        ev.OutputText(response_id="resp_1", item_id="item_2", delta="is four."),
        ev.OutputDone(
            response_id="resp_1",
            item=ev.Message(
                id="item_2",
                role="assistant",
                status="completed",
                content=[ev.TextContent(text="Two plus two is four.")],
            ),
        ),
        ev.ResponseDone(response_id="resp_1"),
    ]


def test_tool_call_round_trip() -> None:
    codec = make()
    events = feed_all(codec, frames("tool_call"))
    assert events == [
        ev.ResponseStarted(response_id="resp_1"),
        ev.ToolCall(
            response_id="resp_1",
            item_id="item_2",
            call_id="fc_1",
            name="get_weather",
            arguments='{"city":"Paris"}',
        ),
        ev.OutputDone(
            response_id="resp_1",
            item=ev.FunctionCall(
                id="item_2", call_id="fc_1", name="get_weather", arguments='{"city":"Paris"}'
            ),
        ),
        ev.ResponseDone(response_id="resp_1"),
    ]
    # the client answers: toolResponse at once, name remembered from the call, JSON object passed as is
    out = codec.encode(
        ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="fc_1", output='{"sky":"clear"}'))
    )
    assert wire(out.wire) == [
        {
            "toolResponse": {
                "functionResponses": [
                    {"id": "fc_1", "name": "get_weather", "response": {"sky": "clear"}},
                ]
            }
        }
    ]
    assert codec.encode(ev.ResponseCreate()).wire == []  # Gemini continues by itself
    # ... in a new response, with no synthesized user item
    events = feed_all(codec, frames("tool_continue"))
    assert kinds(events) == [
        "ResponseStarted",
        "OutputTranscript",
        "OutputAudio",
        "OutputDone",
        "ResponseDone",
    ]
    assert events[0] == ev.ResponseStarted(response_id="resp_3")


@pytest.mark.parametrize(
    ("output", "response"),
    [("sunny", {"output": "sunny"}), ("[1, 2]", {"output": "[1, 2]"}), ('{"a": 1}', {"a": 1})],
)
def test_tool_output_that_is_not_a_json_object_is_wrapped(output: str, response: dict[str, object]) -> None:
    codec = make()
    out = codec.encode(
        ev.ItemCreate(item=ev.FunctionCallOutput(id="o", call_id="c9", output=output, name="f"))
    )
    assert wire(out.wire)[0]["toolResponse"]["functionResponses"][0] == {
        "id": "c9",
        "name": "f",
        "response": response,
    }


def test_barge_in() -> None:
    codec = make()
    codec.encode(ev.ItemCreate(item=ev.Message(id="m1", role="user", content=[ev.TextContent(text="story")])))
    codec.encode(ev.ResponseCreate())
    events = feed_all(codec, frames("barge_in"))
    assert events == [
        ev.ResponseStarted(response_id="resp_1"),
        ev.OutputAudio(response_id="resp_1", item_id="item_2", pcm=TONE_24K[:240], rate=24_000),
        ev.OutputTranscript(response_id="resp_1", item_id="item_2", delta="Once upon"),
        ev.SpeechStarted(item_id="item_3"),
        ev.Interrupted(response_id="resp_1"),
        ev.OutputDone(
            response_id="resp_1",
            item=ev.Message(
                id="item_2",
                role="assistant",
                status="incomplete",
                content=[ev.AudioContent(transcript="Once upon")],
            ),
        ),
        ev.ResponseDone(response_id="resp_1", status="cancelled", reason="turn_detected"),
        # the late transcript of the cut turn and its turnComplete add nothing
    ]
    # the speech that barged in becomes the next user item
    events = codec.feed(b'{"serverContent":{"inputTranscription":{"text":"wait"}}}').events
    assert events == [
        ev.SpeechStopped(item_id="item_3"),
        ev.InputCommitted(item_id="item_3", previous_item_id="item_2"),
        ev.InputTranscript(item_id="item_3", text="wait"),
    ]


def test_client_cancel_closes_the_response_locally_and_drops_the_rest() -> None:
    codec = make()
    assert kinds(codec.encode(ev.ResponseCancel()).events) == ["ProviderError"]  # nothing in flight
    codec.encode(ev.ItemCreate(item=ev.Message(id="m1", role="user", content=[ev.TextContent(text="talk")])))
    codec.encode(ev.ResponseCreate())
    turn = frames("barge_in")
    codec.feed(turn[0])
    out = codec.encode(ev.ResponseCancel(response_id="resp_1"))
    assert out.wire == []  # Gemini has no cancel message
    assert out.events == [
        ev.OutputDone(
            response_id="resp_1",
            item=ev.Message(id="item_2", role="assistant", status="incomplete", content=[ev.AudioContent()]),
        ),
        ev.ResponseDone(response_id="resp_1", status="cancelled", reason="client_cancelled"),
    ]
    assert feed_all(codec, [turn[1], turn[4]]) == []  # rest of the turn dropped, turnComplete silent
    assert kinds(codec.feed(turn[0]).events) == ["ResponseStarted", "OutputAudio"]  # next turn flows again


def test_usage_alone_is_kept_for_the_next_response_done() -> None:
    codec = make()
    codec.feed(b'{"usageMetadata":{"promptTokenCount":5,"responseTokenCount":7}}')
    events = feed_all(codec, frames("text_turn"))
    assert events[-1] == ev.ResponseDone(
        response_id="resp_1", usage=ev.Usage(input_tokens=5, output_tokens=7, total_tokens=12)
    )


def test_lifecycle_messages() -> None:
    codec = make()
    events = feed_all(codec, frames("lifecycle"))
    assert events == [
        ev.ToolCallCancelled(call_ids=["fc_1", "fc_2"]),
        ev.GoAway(time_left_ms=50_000),
        ev.GoAway(time_left_ms=1_500),
    ]
    assert codec.resumption_handle == "handle-2"  # the non-resumable update keeps the last good handle


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("50s", 50_000),
        ("1.5s", 1_500),
        ("0.25s", 250),
        ({"seconds": "3", "nanos": 500_000_000}, 3_500),
        ("x", None),
    ],
)
def test_parse_duration(value: object, ms: int | None) -> None:
    assert parse_duration_ms(value) == ms


def test_snake_case_keys_and_binary_frames_are_accepted() -> None:
    codec = make()
    data = base64.b64encode(TONE_24K).decode()
    frame = {
        "server_content": {
            "model_turn": {"parts": [{"inline_data": {"mime_type": "audio/pcm;rate=24000", "data": data}}]},
            "turn_complete": True,
        },
        "usage_metadata": {"prompt_token_count": 3, "response_token_count": 4, "total_token_count": 7},
    }
    events = codec.feed(json.dumps(frame).encode()).events
    assert kinds(events) == ["ResponseStarted", "OutputAudio", "OutputDone", "ResponseDone"]
    assert events[1].pcm == TONE_24K and events[1].rate == 24_000
    assert events[-1].usage == ev.Usage(input_tokens=3, output_tokens=4, total_tokens=7)


def test_output_rate_comes_from_the_mime_type() -> None:
    data = base64.b64encode(tone(440, 10, 16_000)).decode()
    frame = {
        "serverContent": {
            "modelTurn": {
                "parts": [{"inlineData": {"mimeType": "audio/L16;codec=pcm;rate=16000", "data": data}}]
            }
        }
    }
    audio = [e for e in make().feed(json.dumps(frame)).events if isinstance(e, ev.OutputAudio)]
    assert audio[0].rate == 16_000


def test_unknown_keys_are_reported_once_per_key() -> None:
    codec = make()
    first = codec.feed(b'{"somethingNew":{},"serverContent":{"brandNewField":1}}').events
    assert sorted((e.code, e.param) for e in first) == [
        ("unknown_provider_event", "serverContent.brandNewField"),
        ("unknown_provider_event", "somethingNew"),
    ]
    assert codec.feed(b'{"something_new":{}}').events == []


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"[]",
        b'"text"',
        b'{"serverContent":"nope"}',
        b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm","data":"@@"}}]}}}',
        b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"video/mp4","data":"AAAA"}}]}}}',
        b'{"serverContent":{"inputTranscription":"nope"}}',
        b'{"toolCall":{"functionCalls":[]}}',
        b'{"toolCallCancellation":{"ids":"x"}}',
        b'{"voiceActivity":7}',
    ],
)
def test_malformed_provider_frames_never_raise(frame: bytes) -> None:
    events = make().feed(frame).events
    assert len(events) == 1 and isinstance(events[0], ev.Notice)
    assert events[0].code == "malformed_provider_event"


def test_voice_activity_signals_map_to_speech_events() -> None:
    codec = make()
    events = feed_all(
        codec,
        [
            b'{"voiceActivity":{"voiceActivityType":"ACTIVITY_START"}}',
            b'{"voiceActivity":{"type":"ACTIVITY_END"}}',
        ],
    )
    assert events == [ev.SpeechStarted(item_id="item_1"), ev.SpeechStopped(item_id="item_1")]


def test_result_of_a_call_known_only_from_history_goes_as_content_not_tool_response() -> None:
    call = ev.FunctionCall(id="f1", call_id="call_1", name="get_weather", arguments="{}")
    codec = make(history=[call])
    out = codec.encode(ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="call_1", output="sunny")))
    assert out.wire == []  # no live toolCall to answer: Gemini would reject a toolResponse
    assert wire(codec.encode(ev.ResponseCreate()).wire) == [
        {
            "clientContent": {
                "turnComplete": True,
                "turns": [
                    {
                        "role": "user",
                        "parts": [
                            {
                                "functionResponse": {
                                    "id": "call_1",
                                    "name": "get_weather",
                                    "response": {"output": "sunny"},
                                }
                            }
                        ],
                    },
                ],
            }
        }
    ]


def test_tool_call_after_a_client_cancel_still_reaches_the_client() -> None:
    codec = make()
    codec.feed(frames("barge_in")[0])
    codec.encode(ev.ResponseCancel())
    events = feed_all(codec, frames("tool_call"))
    assert kinds(events) == ["ResponseStarted", "ToolCall", "OutputDone", "ResponseDone"]
    codec.encode(ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="fc_1", output="{}")))
    feed_all(codec, frames("tool_continue"))  # held for the client's response.create (below)
    assert kinds(codec.encode(ev.ResponseCreate()).events)[0] == "ResponseStarted"  # not dropped


def _after_tool_result(meta: SessionMeta = META) -> GeminiProviderCodec:
    counter = itertools.count(1)
    codec = GeminiProviderCodec(meta, "gemini-live-2.5-flash-preview", id_factory=lambda p: f"{p}_{next(counter)}")
    codec.connect(ev.SessionConfig(), [])
    codec.feed(SETUP_COMPLETE)
    feed_all(codec, frames("tool_call"))
    codec.encode(ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="fc_1", output="{}")))
    return codec


CONTINUATION = ["ResponseStarted", "OutputTranscript", "OutputAudio", "OutputDone", "ResponseDone"]


def test_gemini_answer_to_a_tool_result_waits_for_the_openai_clients_response_create() -> None:
    # LiveKit matches replies by the metadata of its response.create, which the client codec echoes in the
    # next response it announces: the answer Gemini starts by itself must not be announced before it.
    codec = _after_tool_result()
    lines = frames("tool_continue")
    first = codec.feed(lines[0])
    assert first.events == [] and first.wake is not None and first.wake.after_s > 0
    assert feed_all(codec, lines[1:]) == []  # the whole turn, turnComplete included, is held
    out = codec.encode(ev.ResponseCreate())
    assert out.wire == []  # Gemini needs no clientContent to go on
    assert kinds(out.events) == CONTINUATION  # in order, after the create
    assert out.events[0] == ev.ResponseStarted(response_id="resp_3")
    # the next turn is not held
    assert kinds(feed_all(codec, frames("text_turn")))[0] == "ResponseStarted"


def test_a_response_create_before_geminis_answer_means_nothing_is_held() -> None:
    codec = _after_tool_result()
    assert codec.encode(ev.ResponseCreate()).events == []
    assert kinds(feed_all(codec, frames("tool_continue"))) == CONTINUATION


def test_without_a_response_create_the_answer_goes_out_at_the_wake_and_a_late_create_gets_an_empty_response() -> None:
    codec = _after_tool_result()
    wake = codec.feed(frames("tool_continue")[0]).wake
    assert wake is not None
    feed_all(codec, frames("tool_continue")[1:])
    assert codec.wake(wake.token - 1).events == []  # a stale timer
    assert kinds(codec.wake(wake.token).events) == CONTINUATION
    assert codec.wake(wake.token).events == []  # once
    # the create that comes after all is answered (it carried metadata the client waits for), empty
    out = codec.encode(ev.ResponseCreate())
    assert out.wire == []
    assert out.events == [ev.ResponseStarted(response_id="resp_5"), ev.ResponseDone(response_id="resp_5")]
    # and a later create asks Gemini as usual
    assert wire(codec.encode(ev.ResponseCreate()).wire) == [{"clientContent": {"turnComplete": True}}]


def test_a_gemini_client_gets_the_answer_to_its_tool_response_at_once() -> None:
    # a Gemini client sends no response.create after a toolResponse: nothing to wait for
    codec = _after_tool_result(msgspec_replace(META, dialect="gemini"))
    out = codec.feed(frames("tool_continue")[0])
    assert kinds(out.events) == ["ResponseStarted", "OutputTranscript"] and out.wake is None


def test_response_create_after_a_server_vad_commit_is_a_no_op() -> None:
    codec = make()
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    out = codec.encode(ev.InputAudioCommit())
    assert kinds(out.events) == ["InputCommitted"]
    assert codec.encode(ev.ResponseCreate()).wire == []


def test_manual_turn_transcripts_wait_for_the_clients_commit() -> None:
    codec = make(MANUAL)
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    assert codec.feed(b'{"serverContent":{"inputTranscription":{"text":"hello"}}}').events == []
    out = codec.encode(ev.InputAudioCommit(item_id="item_u"))
    assert out.events == [
        ev.InputCommitted(item_id="item_u"),
        ev.InputTranscript(item_id="item_u", text="hello"),
    ]
    assert codec.feed(b'{"serverContent":{"inputTranscription":{"text":" you"}}}').events == [
        ev.InputTranscript(item_id="item_u", text=" you"),
    ]
    events = feed_all(codec, frames("text_turn"))
    assert kinds(events)[0] == "ResponseStarted"  # no second user item
    assert ev.InputTranscript(item_id="item_u", text="hello you", final=True) in events


def test_turn_complete_reason_maps_to_a_status() -> None:
    codec = make()
    codec.feed(frames("text_turn")[1])
    events = codec.feed(
        b'{"serverContent":{"turnComplete":true,"turnCompleteReason":"GENERATED_AUDIO_SAFETY"}}'
    ).events
    assert events[-1] == ev.ResponseDone(response_id="resp_1", status="incomplete", reason="content_filter")


def test_a_bad_part_does_not_cost_the_good_ones_in_the_same_frame() -> None:
    good = base64.b64encode(TONE_24K).decode()
    frame = {
        "serverContent": {
            "modelTurn": {
                "parts": [
                    {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": good}},
                    {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": "@@"}},
                ]
            },
            "outputTranscription": {"text": "hi"},
        }
    }
    events = make().feed(json.dumps(frame)).events
    assert kinds(events) == ["ResponseStarted", "OutputAudio", "Notice", "OutputTranscript"]


def test_response_create_that_arrives_after_the_turn_already_ended_is_still_a_no_op() -> None:
    # Gemini answers activityEnd by itself and can finish before the client's response.create arrives:
    # that late response.create must not start a second answer.
    codec = make(MANUAL)
    codec.encode(ev.InputAudio(pcm=tone(440, 20, 16_000), rate=16_000))
    codec.encode(ev.InputAudioCommit(item_id="item_client"))
    codec.feed(b'{"serverContent":{"modelTurn":{"parts":[{"text":"turn 1: audio 0.0s"}]}}}')
    codec.feed(b'{"serverContent":{"turnComplete":true}}')
    assert codec.encode(ev.ResponseCreate()).wire == []
    # and a later text turn still gets its answer
    codec.encode(ev.ItemCreate(item=ev.Message(id="t1", role="user", content=[ev.TextContent(text="hi")])))
    assert "clientContent" in wire(codec.encode(ev.ResponseCreate()).wire)[0]


def test_client_audio_formats_never_reach_gemini() -> None:
    # They travel in SessionConfig for a transformer failover only: the provider speaks its own PCM.
    formats = {"client_input_format": "pcmu/8000", "client_output_format": "pcma/8000"}
    codec = GeminiProviderCodec(META, "gemini-live-2.5-flash-preview")
    out = codec.connect(ev.SessionConfig(instructions="a", **formats), [])
    plain = GeminiProviderCodec(META, "gemini-live-2.5-flash-preview").connect(ev.SessionConfig(instructions="a"), [])
    assert out.events == [] and out.wire == plain.wire
    codec.feed(SETUP_COMPLETE)
    # A client that only switches its own audio format must not cost a reconnect.
    out = codec.encode(ev.SessionConfig(instructions="a"))
    assert out.wire == [] and out.events == [] and not codec.needs_reconnect
    assert [e.code for e in codec.encode(ev.SessionConfig(instructions="b")).events] == ["reconnect_required"]


# --------------------------------------------------------------------------------------------------
# usage of cut turns, generationComplete before a barge-in, calls without id (issue 10)

AUDIO_PART = (
    b'{"serverContent":{"modelTurn":{"parts":[{"inlineData":{"mimeType":"audio/pcm;rate=24000",'
    b'"data":"AAAAAA=="}}]}}}'
)
CUT_USAGE = b'{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":11,"responseTokenCount":4}}'


def test_interrupted_turn_keeps_its_usage_on_the_cut_response() -> None:
    codec = make()
    events = feed_all(codec, [AUDIO_PART, b'{"serverContent":{"interrupted":true}}'])
    # response.done waits for the turnComplete that carries the usage
    assert kinds(events) == ["ResponseStarted", "OutputAudio", "SpeechStarted", "Interrupted", "OutputDone"]
    (done,) = codec.feed(CUT_USAGE).events
    assert done == ev.ResponseDone(
        response_id="resp_1", status="cancelled", reason="turn_detected",
        usage=ev.Usage(input_tokens=11, output_tokens=4, total_tokens=15),
    )
    # the next turn reports only its own usage (none here), not the cut turn's
    nxt = feed_all(codec, [AUDIO_PART, b'{"serverContent":{"turnComplete":true}}'])
    assert isinstance(nxt[-1], ev.ResponseDone) and nxt[-1].response_id != "resp_1" and nxt[-1].usage is None


def test_a_tool_call_after_interrupted_closes_the_cut_response_first() -> None:
    codec = make()
    feed_all(codec, [AUDIO_PART, b'{"serverContent":{"interrupted":true}}'])
    events = codec.feed(b'{"toolCall":{"functionCalls":[{"id":"c1","name":"f","args":{}}]}}').events
    assert events[0] == ev.ResponseDone(response_id="resp_1", status="cancelled", reason="turn_detected")
    assert kinds(events)[1:] == ["SpeechStopped", "InputCommitted", "ResponseStarted", "ToolCall", "OutputDone",
                                 "ResponseDone"]


def test_generation_complete_before_interrupted_is_told() -> None:
    codec = make()
    events = feed_all(codec, [
        AUDIO_PART, b'{"serverContent":{"generationComplete":true}}', b'{"serverContent":{"interrupted":true}}',
    ])
    assert ev.Interrupted(response_id="resp_1", generation_complete=True) in events
    # without generationComplete the flag stays off
    events = feed_all(make(), [AUDIO_PART, b'{"serverContent":{"interrupted":true}}'])
    assert ev.Interrupted(response_id="resp_1") in events


def test_usage_of_a_client_cancelled_turn_does_not_leak_into_the_next() -> None:
    codec = make()
    codec.feed(AUDIO_PART)
    codec.encode(ev.ResponseCancel())
    assert codec.feed(CUT_USAGE).events == []
    events = feed_all(codec, [AUDIO_PART, b'{"serverContent":{"turnComplete":true}}'])
    assert isinstance(events[-1], ev.ResponseDone) and events[-1].usage is None


def test_empty_usage_at_turn_complete_keeps_the_counts_sent_mid_turn() -> None:
    codec = make()
    events = feed_all(codec, [
        b'{"serverContent":{},"usageMetadata":{"promptTokenCount":960,"totalTokenCount":960}}',
        AUDIO_PART,
        b'{"serverContent":{"turnComplete":true},"usageMetadata":{}}',
    ])
    assert events[-1].usage == ev.Usage(input_tokens=960, total_tokens=960)  # type: ignore[attr-defined]


def test_thoughts_tokens_become_reasoning_tokens() -> None:
    codec = make()
    events = feed_all(codec, [AUDIO_PART, (
        b'{"serverContent":{"turnComplete":true},"usageMetadata":{"promptTokenCount":10,'
        b'"responseTokenCount":5,"thoughtsTokenCount":7,"totalTokenCount":22}}'
    )])
    assert events[-1].usage == ev.Usage(  # type: ignore[attr-defined]
        input_tokens=10, output_tokens=5, reasoning_tokens=7, total_tokens=22
    )


def test_call_without_id_gets_one_that_never_goes_back_upstream() -> None:
    codec = make()
    events = codec.feed(b'{"toolCall":{"functionCalls":[{"name":"lookup","args":{"q":"x"}}]}}').events
    (call,) = [e for e in events if isinstance(e, ev.ToolCall)]
    assert call.call_id == "call_2" and call.name == "lookup"
    out = codec.encode(ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id=call.call_id, output='{"a":1}')))
    assert wire(out.wire) == [{"toolResponse": {"functionResponses": [{"name": "lookup", "response": {"a": 1}}]}}]


# --------------------------------------------------------------------------------------------------
# fields Gemini cannot honour: a Notice, never an error (issue 10 item 5)


def test_fields_gemini_cannot_honour_are_notices_not_errors() -> None:
    codec = make()
    first = ev.Message(id="m1", role="user", content=[ev.TextContent(text="a")])
    assert codec.encode(ev.ItemCreate(item=first)).events == []
    assert codec.encode(ev.ItemCreate(item=first, previous_item_id="m1")).events == []  # appending: honoured
    out = codec.encode(ev.ItemCreate(
        item=ev.Message(id="m2", role="system", content=[ev.TextContent(text="be brief")]), previous_item_id="m0"
    ))
    assert [(type(e), e.param) for e in out.events] == [  # type: ignore[attr-defined]
        (ev.Notice, "previous_item_id"), (ev.Notice, "item.role")
    ]
    out = codec.encode(ev.ResponseCreate(options=ev.ResponseOptions(instructions="x", metadata={"k": "v"})))
    assert {type(e) for e in out.events} == {ev.Notice} and out.wire  # the turn still goes out
    assert kinds(codec.encode(ev.ItemDelete(item_id="m1")).events) == ["Notice"]
    assert kinds(codec.encode(ev.SwitchRequest(provider="openai")).events) == ["Notice"]


def test_some_models_end_a_tool_call_turn_with_finished_and_turn_complete() -> None:
    # livekit/agents PR #3192 (maintainers): "some gemini live models return a output_transcription.finished
    # and turn_complete message after a tool call while some don't"; PR #4699: generationComplete too.
    codec = make()
    calls = codec.feed(b'{"toolCall":{"functionCalls":[{"id":"c1","name":"f","args":{}}]}}').events
    assert kinds(calls)[-1] == "ResponseDone"
    tail = feed_all(codec, [
        b'{"serverContent":{"outputTranscription":{"finished":true}}}',
        b'{"serverContent":{"generationComplete":true}}',
        b'{"serverContent":{"turnComplete":true}}',
    ])
    assert tail == []  # the tool call's response is already closed: no second, empty one
    codec.encode(ev.ItemCreate(item=ev.FunctionCallOutput(id="o1", call_id="c1", output="{}")))
    codec.encode(ev.ResponseCreate())
    after = feed_all(codec, [AUDIO_PART, b'{"serverContent":{"turnComplete":true}}'])
    assert kinds(after) == ["ResponseStarted", "OutputAudio", "OutputDone", "ResponseDone"]


def test_a_config_change_gemini_would_not_see_costs_no_reconnect() -> None:
    # The Agents SDK sends session.update with OpenAI-only fields (tracing) while an answer streams: the setup
    # Gemini would get is the same, so nothing is reconnected (a reconnect would cut the answer).
    codec = GeminiProviderCodec(META, "gemini-live-2.5-flash-preview")
    codec.connect(ev.SessionConfig(instructions="a"), [])
    codec.feed(SETUP_COMPLETE)
    out = codec.encode(ev.SessionConfig(instructions="a", extra={"tracing": "auto"}))
    assert out.wire == [] and out.events == [] and not codec.needs_reconnect
    assert [e.code for e in codec.encode(ev.SessionConfig(instructions="b")).events] == ["reconnect_required"]


def test_a_spoken_turn_whose_answer_was_cut_stays_its_own_user_turn_in_the_history() -> None:
    """Issue 12 item 4: a goAway rotation cut the answer to a spoken turn; the next connection's history had it
    merged with the next user message (one user turn fewer: the turn numbers after it were off by one)."""
    history: list[ev.Item] = [
        ev.Message(id="u1", role="user", content=[ev.TextContent(text="one")]),
        ev.Message(id="a1", role="assistant", content=[ev.AudioContent(transcript="turn 1: one")]),
        ev.Message(id="u2", role="user", content=[ev.AudioContent(transcript="audio 0.6s")]),  # answer cut
        ev.Message(id="u3", role="user", content=[ev.TextContent(text="three")]),
    ]
    codec = GeminiProviderCodec(META, "gemini-x")
    codec.connect(ev.SessionConfig(), history)
    turns = wire(codec.feed(SETUP_COMPLETE).wire)[0]["clientContent"]["turns"]
    assert turns == [
        {"role": "user", "parts": [{"text": "one"}]},
        {"role": "model", "parts": [{"text": "turn 1: one"}]},
        {"role": "user", "parts": [{"text": "audio 0.6s"}]},
        {"role": "user", "parts": [{"text": "three"}]},
    ]
