"""Gemini Live client codec, the Gemini Live API reference Pure: no network, no event loop.

Every frame the codec produces here goes through :class:`tests.codecs.Checked` with
:func:`tests.codecs.validate_gemini`: camelCase top-level keys the SDK maps, and google-genai's own
``LiveServerMessage`` (which forbids unknown fields at every level).
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest

from shared import audio
from shared import events as ev
from shared.codecs.base import Close
from shared.codecs.gemini_client import GeminiClientCodec
from shared.session import SessionMeta
from tests.codecs import Checked, SeqIds, meta, read_frames, validate_gemini

SDK_FRAMES = read_frames("client_gemini_sdk.jsonl")
SETUP = SDK_FRAMES[0]
# The same setup without sessionResumption: frame-order tests then see no resumption updates.
SETUP_PLAIN = json.dumps({"setup": {k: v for k, v in json.loads(SETUP)["setup"].items() if k != "sessionResumption"}})
PCM16K = audio.tone(440, 20, 16000)


def make() -> Checked:
    return Checked(GeminiClientCodec(meta("gemini"), id_factory=SeqIds()), validate_gemini)


def setup(**fields: Any) -> str:
    return json.dumps({"setup": {"model": "models/gemini-live-2.5-flash-preview", **fields}})


def ready(codec: Checked, frame: str = SETUP_PLAIN) -> Checked:
    codec.feed(frame)
    codec.encode(ev.SessionReady(provider="openai"))
    return codec


def one(out: Any) -> dict[str, Any]:
    (frame,) = out.wire
    return json.loads(frame)


def test_validator_rejects_unknown_or_snake_keys() -> None:
    validate_gemini('{"serverContent":{"turnComplete":true}}')
    for bad in ('{"server_content":{"turnComplete":true}}', '{"error":{}}', '{"serverContent":{"turnDone":true}}'):
        with pytest.raises(Exception):  # noqa: B017 - AssertionError or pydantic ValidationError
            validate_gemini(bad)


# --------------------------------------------------------------------------------------------------
# setup


def test_first_frame_must_be_setup() -> None:
    out = make().feed('{"realtime_input": {"audioStreamEnd": true}}')
    assert out == type(out)(close=Close(1007, "first message must be setup"))


def test_recorded_sdk_setup_becomes_the_whole_session_config() -> None:
    codec = make()
    (config,) = codec.feed(SETUP).events
    assert isinstance(config, ev.SessionConfig)
    weather = ev.Tool(
        name="get_weather",
        description="weather",
        parameters='{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}',
    )
    assert config == ev.SessionConfig(
        model="gemini-live-2.5-flash-preview",
        instructions="You are terse.",
        voice="Kore",
        output_modalities=["audio"],
        temperature=0.7,
        # LOW start sensitivity -> a high threshold; LOW end sensitivity -> low eagerness (tables.py)
        turn_detection=ev.TurnDetection(threshold=0.7, eagerness="low", prefix_padding_ms=20, silence_duration_ms=100),
        input_transcription=True,
        tools=[weather],
        extra={
            "setup.generationConfig.speechConfig.languageCode": '"en-US"',
            "setup.realtimeInputConfig.turnCoverage": '"TURN_INCLUDES_ONLY_ACTIVITY"',
            "setup.contextWindowCompression": '{"triggerTokens":25600,"slidingWindow":{"targetTokens":12800}}',
        },
    )
    assert codec.frames == []  # setupComplete waits for the provider


def test_setup_complete_is_sent_once_on_session_ready() -> None:
    codec = make()
    codec.feed(SETUP)
    assert one(codec.encode(ev.SessionReady(provider="openai"))) == {"setupComplete": {}}
    assert codec.encode(ev.SessionReady(provider="openai")).wire == []  # reconnect: not again


def test_output_before_session_ready_is_preceded_by_setup_complete() -> None:
    codec = make()
    codec.feed(SETUP)
    out = codec.encode(ev.OutputText(response_id="r", item_id="i", delta="hi"))
    assert [json.loads(f) for f in out.wire] == [
        {"setupComplete": {}},
        {"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}},
    ]
    assert codec.encode(ev.SessionReady(provider="openai")).wire == []


def test_second_setup_closes() -> None:
    codec = make()
    codec.feed(SETUP)
    assert codec.feed(SETUP).close == Close(1007, "setup already received")


def test_manual_activity_and_no_interruption() -> None:
    frame = setup(realtimeInputConfig={"automaticActivityDetection": {"disabled": True}})
    (config,) = make().feed(frame).events
    assert config.turn_detection is None
    frame = setup(realtime_input_config={"activity_handling": "NO_INTERRUPTION"})
    (config,) = make().feed(frame).events
    assert config.turn_detection == ev.TurnDetection(interrupt_response=False)


def test_setup_variants() -> None:
    frame = setup(
        generation_config={"response_modalities": ["TEXT"], "max_output_tokens": 99, "top_k": 3},
        system_instruction="plain string",
        tools=[
            {
                "function_declarations": [
                    {"name": "f", "parameters_json_schema": {"type": "object", "properties": {"a_b": {}}}}
                ]
            },
            {"google_search": {}},
        ],
        proactivity={"proactive_audio": True},
    )
    (config,) = make().feed(frame).events
    assert config.output_modalities == ["text"] and config.max_output_tokens == 99
    assert config.instructions == "plain string"
    # JSON Schema is kept verbatim: property names are data, never re-cased
    assert config.tools == [ev.Tool(name="f", parameters='{"type":"object","properties":{"a_b":{}}}')]
    assert config.extra == {
        "setup.generationConfig.topK": "3",
        "setup.tools[1].googleSearch": "{}",
        "setup.proactivity": '{"proactiveAudio":true}',
    }


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("not json", "invalid JSON"),
        (b"\xff\xfe", "invalid JSON"),
        ("[]", "expected one message field per frame"),
        ('{"setup": {}, "realtimeInput": {}}', "expected one message field per frame"),
        ('{"setup": {"model": 5}}', "invalid model: expected a string"),
        ('{"setup": {"generationConfig": {"responseModalities": ["IMAGE"]}}}', "unsupported generationConfig"),
        ('{"setup": {"realtimeInputConfig": {"activityHandling": "SOMETIMES"}}}', "invalid realtimeInputConfig"),
    ],
)
def test_bad_setup_closes_1007(frame: str | bytes, reason: str) -> None:
    out = make().feed(frame)
    assert out.events == [] and out.close is not None
    assert out.close.code == 1007 and out.close.reason.startswith(reason)


# --------------------------------------------------------------------------------------------------
# realtimeInput, clientContent, toolResponse, contextUpdate


def test_recorded_sdk_session_becomes_canonical_events() -> None:
    codec = make()
    outs = [codec.feed(frame) for frame in SDK_FRAMES]
    assert all(out.close is None for out in outs)
    events = [e for out in outs[1:] for e in out.events]
    fco = ev.FunctionCallOutput(id="item_5", call_id="fc_1", name="get_weather", output='{"result":"sunny"}')
    assert events[:-1] == [
        ev.InputAudio(pcm=PCM16K, rate=16000),  # URL-safe base64 from the SDK
        ev.AudioStreamEnd(),
        ev.InputAudio(pcm=PCM16K, rate=16000),
        ev.InputAudio(pcm=PCM16K, rate=16000),  # the seed's media_chunks without rate= is 16 kHz
        ev.ItemCreate(
            item=ev.Message(id="item_1", role="user", content=[ev.TextContent(text="hello by realtime text")])
        ),
        ev.ResponseCreate(),
        ev.ItemCreate(item=ev.Message(id="item_2", role="user", content=[ev.TextContent(text="hello")])),
        ev.ResponseCreate(),
        ev.ItemCreate(item=ev.Message(id="item_3", role="user", content=[ev.TextContent(text="hello again")])),
        ev.ResponseCreate(),  # deprecated snake turn_complete counts too
        ev.ItemCreate(
            item=ev.FunctionCallOutput(id="item_4", call_id="fc_1", name="get_weather", output='{"result":"sunny"}')
        ),
        ev.ResponseCreate(),
    ]
    assert fco.call_id == "fc_1"
    updated = events[-1]
    assert isinstance(updated, ev.SessionConfig) and updated.instructions == "Now be verbose."
    assert updated.voice == "Kore"  # contextUpdate merges into the setup


def test_manual_turns_recording() -> None:
    codec = make()
    events = [e for frame in read_frames("client_gemini_manual.jsonl") for e in codec.feed(frame).events]
    # the recorded turn holds 20 ms of audio: too short to be a turn (MIN_TURN_MS), so it is dropped
    assert events[1:] == [ev.ActivityStart(), ev.InputAudio(pcm=PCM16K, rate=16000), ev.InputAudioClear()]


def _audio(ms: int, rate: int = 16000) -> str:
    blob = {"data": base64.b64encode(audio.tone(440, ms, rate)).decode(), "mimeType": f"audio/pcm;rate={rate}"}
    return json.dumps({"realtimeInput": {"audio": blob}})


@pytest.mark.parametrize(
    ("chunks", "rate", "last"),
    [
        ([], 16000, ev.InputAudioClear()),  # empty activity: real Gemini would close 1007; we drop it
        ([1], 16000, ev.InputAudioClear()),
        ([50, 49], 16000, ev.InputAudioClear()),  # 99 ms in two chunks
        ([99], 8000, ev.InputAudioClear()),
        ([50, 50], 16000, ev.ActivityEnd()),  # 100 ms: a turn
        ([100], 24000, ev.ActivityEnd()),
    ],
)
def test_push_to_talk_turn_shorter_than_100_ms_is_dropped(chunks: list[int], rate: int, last: ev.Event) -> None:
    codec = make()
    codec.feed(setup(realtimeInputConfig={"automaticActivityDetection": {"disabled": True}}))
    codec.feed('{"realtimeInput": {"activityStart": {}}}')
    for ms in chunks:
        codec.feed(_audio(ms, rate))
    out = codec.feed('{"realtimeInput": {"activityEnd": {}}}')
    assert out.events == [last] and out.close is None
    # the next turn counts from zero again
    codec.feed('{"realtimeInput": {"activityStart": {}}}')
    codec.feed(_audio(120))
    assert codec.feed('{"realtimeInput": {"activityEnd": {}}}').events == [ev.ActivityEnd()]


def test_commit_empty_from_openai_does_not_end_the_call() -> None:
    codec = ready(make())
    out = codec.encode(ev.ProviderError(code="input_audio_buffer_commit_empty", message="buffer too small"))
    assert out.close is None and out.wire == []


def test_activity_markers_need_manual_turns() -> None:
    codec = make()
    codec.feed(SETUP)  # automatic activity detection on
    out = codec.feed('{"realtime_input": {"activityStart": {}}}')
    assert out.close == Close(1007, "activityStart requires automaticActivityDetection.disabled")


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"video": {"data": "_9j_", "mime_type": "image/jpeg"}}, "video input is not supported"),
        ({"mediaChunks": [{"data": "_9j_", "mimeType": "image/jpeg"}]}, "video input is not supported"),
        ({"audio": {"data": "AAAA", "mimeType": "audio/wav"}}, "unsupported audio mime type"),
        ({"audio": {"data": "!!!", "mimeType": "audio/pcm;rate=16000"}}, "invalid base64"),
        ({"audio": {"data": "AAAA", "mimeType": "audio/pcm;rate=16000;channels=2"}}, "unsupported audio mime type"),
        ({"audioStreamEnd": "yes"}, "invalid realtimeInput.audioStreamEnd"),
        ({"bogus": 1}, "unknown realtimeInput.bogus"),
    ],
)
def test_bad_realtime_input_closes_1007(body: dict[str, Any], reason: str) -> None:
    codec = make()
    codec.feed(SETUP)
    out = codec.feed(json.dumps({"realtime_input": body}))
    assert out.events == [] and out.close is not None
    assert out.close.code == 1007 and out.close.reason.startswith(reason)


def test_audio_rate_comes_from_the_mime_type() -> None:
    codec = make()
    codec.feed(SETUP)
    pcm = audio.tone(300, 20, 24000)
    frame = {"realtimeInput": {"audio": {"data": base64.b64encode(pcm).decode(), "mimeType": "audio/pcm;rate=24000"}}}
    assert codec.feed(json.dumps(frame)).events == [ev.InputAudio(pcm=pcm, rate=24000)]


def test_client_content_history_with_calls() -> None:
    codec = make()
    codec.feed(SETUP)
    turns = [
        {"role": "user", "parts": [{"text": "weather?"}, {"text": " in Paris"}]},
        {
            "role": "model",
            "parts": [{"function_call": {"id": "fc_9", "name": "get_weather", "args": {"city_name": "Paris"}}}],
        },
        {
            "role": "user",
            "parts": [{"function_response": {"id": "fc_9", "name": "get_weather", "response": {"temp_c": 20}}}],
        },
        {"role": "model", "parts": [{"text": "20 degrees"}]},
    ]
    out = codec.feed(json.dumps({"client_content": {"turns": turns}}))
    items = [e.item for e in out.events]
    assert items == [
        ev.Message(
            id="item_1", role="user", content=[ev.TextContent(text="weather?"), ev.TextContent(text=" in Paris")]
        ),
        ev.FunctionCall(id="item_2", call_id="fc_9", name="get_weather", arguments='{"city_name":"Paris"}'),
        ev.FunctionCallOutput(id="item_3", call_id="fc_9", name="get_weather", output='{"temp_c":20}'),
        ev.Message(id="item_4", role="assistant", content=[ev.TextContent(text="20 degrees")]),
    ]  # no ResponseCreate: turnComplete was not set; user data (args/response keys) kept verbatim


def test_tool_response_without_id_closes() -> None:
    codec = make()
    codec.feed(SETUP)
    out = codec.feed('{"tool_response": {"functionResponses": [{"name": "f", "response": {}}]}}')
    assert out.close == Close(1007, "toolResponse.functionResponses[0].id is required")


def test_feed_never_raises_on_mangled_frames() -> None:
    rng = random.Random(11)
    recorded = [f.encode() for f in SDK_FRAMES]
    for _ in range(400):
        codec = make()
        codec.feed(SETUP)
        frame = bytearray(rng.choice(recorded[1:]))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        out = codec.feed(bytes(frame[: rng.randint(0, len(frame))]))
        assert out.close is None or out.close.code == 1007  # client's fault; 1011 would be a codec bug
        assert out.close is None or len(out.close.reason.encode()) <= 123


# --------------------------------------------------------------------------------------------------
# encode()


def test_audio_turn_with_transcripts_and_usage() -> None:
    codec = ready(make())
    pcm24 = audio.tone(500, 40, 24000)
    frames = codec.encode_all(
        ev.SpeechStarted(item_id="u1"),
        ev.InputCommitted(item_id="u1"),
        ev.InputTranscript(item_id="u1", text="hel"),
        ev.InputTranscript(item_id="u1", text="lo"),
        ev.InputTranscript(item_id="u1", text="hello there", final=True),
        ev.ResponseStarted(response_id="r1"),
        ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm24, rate=24000),
        ev.OutputTranscript(response_id="r1", item_id="a1", delta="Hi"),
        ev.OutputDone(
            response_id="r1", item=ev.Message(id="a1", role="assistant", content=[ev.AudioContent(transcript="Hi")])
        ),
        ev.RateLimits(limits=[]),
        ev.ResponseDone(
            response_id="r1",
            usage=ev.Usage(
                input_tokens=7,
                output_tokens=9,
                total_tokens=16,
                input_audio_tokens=7,
                output_audio_tokens=6,
                output_text_tokens=3,
            ),
        ),
    )
    assert frames == [
        {"serverContent": {"inputTranscription": {"text": "hel"}}},
        {"serverContent": {"inputTranscription": {"text": "lo"}}},
        {"serverContent": {"inputTranscription": {"text": " there"}}},  # only what deltas did not cover
        {
            "serverContent": {
                "modelTurn": {
                    "parts": [
                        {"inlineData": {"mimeType": "audio/pcm;rate=24000", "data": base64.b64encode(pcm24).decode()}}
                    ]
                }
            }
        },
        {"serverContent": {"outputTranscription": {"text": "Hi"}}},
        {"serverContent": {"generationComplete": True}},
        {
            "serverContent": {"turnComplete": True},
            "usageMetadata": {
                "promptTokenCount": 7,
                "responseTokenCount": 9,
                "totalTokenCount": 16,
                "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 7}],
                "responseTokensDetails": [
                    {"modality": "TEXT", "tokenCount": 3},
                    {"modality": "AUDIO", "tokenCount": 6},
                ],
            },
        },
    ]
    msg = validate_gemini(json.dumps(frames[3]))
    assert msg.data == pcm24  # the SDK's own accessor gets the PCM back


def test_transcripts_only_when_the_client_asked() -> None:
    codec = ready(make(), setup(generationConfig={"responseModalities": ["AUDIO"]}))
    assert codec.encode(ev.OutputTranscript(response_id="r", item_id="a", delta="x")).wire == []
    assert codec.encode(ev.InputTranscript(item_id="u", text="y", final=True)).wire == []


def test_output_audio_at_16k_is_resampled_to_24k() -> None:
    codec = ready(make())
    pcm16 = audio.tone(700, 300, 16000)
    frames = codec.encode_all(
        *(
            ev.OutputAudio(response_id="r", item_id="a", pcm=pcm16[i : i + 640], rate=16000)
            for i in range(0, len(pcm16), 640)
        ),
        ev.ResponseDone(response_id="r"),
    )
    pcm = b"".join(
        base64.b64decode(p["inlineData"]["data"])
        for f in frames
        for p in f.get("serverContent", {}).get("modelTurn", {}).get("parts", [])
    )
    assert abs(len(pcm) - 300 * 48) <= 96 and abs(audio.dominant_hz(pcm, 24000) - 700) < 5
    assert frames[-2:] == [{"serverContent": {"generationComplete": True}}, {"serverContent": {"turnComplete": True}}]


def test_text_output() -> None:
    codec = ready(make())
    assert codec.encode_all(ev.OutputText(response_id="r", item_id="a", delta="hi")) == [
        {"serverContent": {"modelTurn": {"parts": [{"text": "hi"}]}}}
    ]


def test_barge_in() -> None:
    codec = ready(make())
    pcm = audio.tone(300, 20, 24000)
    frames = codec.encode_all(
        ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm, rate=24000),
        ev.SpeechStarted(item_id="u2"),
        ev.Interrupted(response_id="r1"),
        ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm, rate=24000),  # late: dropped
        ev.OutputDone(response_id="r1", item=ev.Message(id="a1", role="assistant", status="incomplete")),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"),
    )
    assert [list(f["serverContent"]) for f in frames] == [["modelTurn"], ["interrupted"], ["turnComplete"]]


def test_cancel_without_interrupted_still_tells_the_client_to_stop() -> None:
    codec = ready(make())
    frames = codec.encode_all(
        ev.OutputText(response_id="r1", item_id="a1", delta="x"),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="client_cancelled"),
    )
    assert frames[1:] == [{"serverContent": {"interrupted": True}}, {"serverContent": {"turnComplete": True}}]


def test_failed_response_still_completes_the_turn() -> None:
    frames = ready(make()).encode_all(
        ev.OutputText(response_id="r1", item_id="a1", delta="x"),
        ev.ResponseDone(response_id="r1", status="failed", reason="malformed_function_call"),
    )
    assert frames[-1] == {"serverContent": {"turnComplete": True, "turnCompleteReason": "MALFORMED_FUNCTION_CALL"}}


@pytest.mark.parametrize("reason", ["worker_replaced", "provider_disconnected"])
def test_response_cut_by_a_failover_is_interrupted_then_completed(reason: str) -> None:
    frames = ready(make()).encode_all(
        ev.OutputText(response_id="r1", item_id="a1", delta="x"),
        ev.ResponseDone(response_id="r1", status="failed", reason=reason),
    )
    assert frames[1:] == [{"serverContent": {"interrupted": True}}, {"serverContent": {"turnComplete": True}}]


def test_tool_calls() -> None:
    codec = ready(make())
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.ToolCall(response_id="r1", item_id="i1", call_id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
        ev.ToolCall(response_id="r1", item_id="i2", call_id="call_2", name="noargs", arguments=""),
        ev.ToolCall(response_id="r1", item_id="i3", call_id="call_3", name="broken", arguments="{not json"),
        ev.OutputDone(
            response_id="r1",
            item=ev.FunctionCall(id="i1", call_id="call_1", name="get_weather", arguments='{"city":"Paris"}'),
        ),
        ev.ResponseDone(response_id="r1", usage=ev.Usage(input_tokens=1, output_tokens=2, total_tokens=3)),
        ev.ToolCallCancelled(call_ids=["call_2", "call_3"]),
    )
    assert frames == [
        {"toolCall": {"functionCalls": [{"id": "call_1", "name": "get_weather", "args": {"city": "Paris"}}]}},
        {"toolCall": {"functionCalls": [{"id": "call_2", "name": "noargs", "args": {}}]}},
        {"toolCall": {"functionCalls": [{"id": "call_3", "name": "broken", "args": {"arguments": "{not json"}}]}},
        # no turnComplete after a tool-call-only response (Gemini continues after toolResponse)
        {"usageMetadata": {"promptTokenCount": 1, "responseTokenCount": 2, "totalTokenCount": 3}},
        {"toolCallCancellation": {"ids": ["call_2", "call_3"]}},
    ]


@pytest.mark.parametrize(("ms", "text"), [(50_000, "50s"), (1_500, "1.5s"), (0, "0s")])
def test_go_away(ms: int, text: str) -> None:
    assert ready(make()).encode_all(ev.GoAway(time_left_ms=ms)) == [{"goAway": {"timeLeft": text}}]


def test_provider_errors_close_and_notices_stay_off_the_wire() -> None:
    codec = ready(make())
    assert codec.encode(ev.ProviderError(code="invalid_value", message="no")).close == Close(
        1007, "provider error: invalid_value"
    )
    assert codec.encode(ev.ProviderError(code="boom", message="x", fatal=True)).close == Close(
        1011, "provider error: boom"
    )
    long = codec.encode(ev.ProviderError(code="x" * 300, message="m", retryable=True)).close
    assert long is not None and long.code == 1011 and len(long.reason.encode()) <= 123
    notice = codec.encode(ev.Notice(code="unsupported_field", message="m", param="setup.proactivity"))
    assert notice.wire == [] and notice.events == [] and notice.close is None


def test_resume_restores_config_without_a_second_setup_complete() -> None:
    first = make()
    (config,) = first.feed(SETUP).events
    second = make()
    second.codec.resume(config, [])
    assert second.encode(ev.SessionReady(provider="openai")).wire == []
    out = second.feed('{"contextUpdate": {"systemInstruction": "again"}}')
    (updated,) = out.events
    assert updated == ev.SessionConfig(
        **{**{f: getattr(config, f) for f in config.__struct_fields__}, "instructions": "again"}
    )
    assert second.encode(ev.InputTranscript(item_id="u", text="kept", final=True)).wire  # input transcription on


def test_repr_has_no_payload() -> None:
    codec = make()
    codec.feed(SETUP)
    out = codec.feed(SDK_FRAMES[1])
    assert "<640 B>" in repr(out) and "sid0" in repr(codec.codec)


def test_audio_held_by_the_resampler_at_barge_in_is_not_played_later() -> None:
    codec = ready(make())
    pcm1, pcm2 = audio.tone(400, 300, 16000), audio.tone(800, 200, 16000)
    codec.encode_all(
        *(
            ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm1[i : i + 640], rate=16000)
            for i in range(0, len(pcm1), 640)
        ),
        ev.Interrupted(response_id="r1"),
        ev.ResponseDone(response_id="r1", status="cancelled"),
    )
    frames = codec.encode_all(
        *(
            ev.OutputAudio(response_id="r2", item_id="a2", pcm=pcm2[i : i + 640], rate=16000)
            for i in range(0, len(pcm2), 640)
        ),
        ev.ResponseDone(response_id="r2"),
    )
    pcm = b"".join(
        base64.b64decode(p["inlineData"]["data"])
        for f in frames
        for p in f.get("serverContent", {}).get("modelTurn", {}).get("parts", [])
    )
    assert abs(len(pcm) - 200 * 48) <= 96  # 200 ms at 24 kHz: nothing left over from r1


def test_resume_without_config_accepts_the_replayed_setup() -> None:
    codec = make()
    codec.codec.resume(None, [])
    (config,) = codec.feed(SETUP).events  # replayed by the new transformer: not a second setup
    assert config.voice == "Kore"
    assert one(codec.encode(ev.SessionReady(provider="openai"))) == {"setupComplete": {}}
    other = make()
    other.codec.resume(None, [])
    assert other.feed(SDK_FRAMES[1]).events == [ev.InputAudio(pcm=PCM16K, rate=16000)]  # no setup replayed


def test_session_resumption_hands_out_the_session_id_at_each_turn_end() -> None:
    # The edge resumes a session from setup.sessionResumption.handle; the handle is the session id, so it
    # works on any provider and outlives any socket (the conversation is in the gateway's log).
    codec = ready(make(), SETUP)
    frames = codec.encode_all(ev.ResponseStarted(response_id="r1"), ev.ResponseDone(response_id="r1"))
    assert frames[-1] == {"sessionResumptionUpdate": {"newHandle": "client-1", "resumable": True}}
    plain = ready(make())
    frames = plain.encode_all(ev.ResponseStarted(response_id="r1"), ev.ResponseDone(response_id="r1"))
    assert all("sessionResumptionUpdate" not in f for f in frames)


# --------------------------------------------------------------------------------------------------
# issue 10: usage of cut turns, generationComplete before interrupted, no turnComplete after toolCall


def test_cut_turn_carries_its_usage_and_thoughts_on_turn_complete() -> None:
    codec = ready(make())
    frames = codec.encode_all(
        ev.OutputText(response_id="r1", item_id="a1", delta="x"),
        ev.Interrupted(response_id="r1"),
        ev.ResponseDone(
            response_id="r1", status="cancelled", reason="turn_detected",
            usage=ev.Usage(input_tokens=5, output_tokens=2, reasoning_tokens=3, total_tokens=10),
        ),
    )
    assert frames[1:] == [
        {"serverContent": {"interrupted": True}},
        {
            "serverContent": {"turnComplete": True},
            "usageMetadata": {
                "promptTokenCount": 5, "responseTokenCount": 2, "totalTokenCount": 10, "thoughtsTokenCount": 3,
            },
        },
    ]


def test_generation_complete_before_interrupted_goes_through() -> None:
    codec = ready(make())
    frames = codec.encode_all(
        ev.OutputText(response_id="r1", item_id="a1", delta="x"),
        ev.Interrupted(response_id="r1", generation_complete=True),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"),
    )
    assert frames[1:] == [
        {"serverContent": {"generationComplete": True}},
        {"serverContent": {"interrupted": True}},
        {"serverContent": {"turnComplete": True}},
    ]


def test_spoken_text_then_tool_call_sends_no_turn_complete() -> None:
    codec = ready(make())
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputText(response_id="r1", item_id="a1", delta="Let me check."),
        ev.OutputDone(response_id="r1", item=ev.Message(id="a1", role="assistant", content=[])),
        ev.ToolCall(response_id="r1", item_id="i1", call_id="c1", name="lookup", arguments="{}"),
        ev.ResponseDone(response_id="r1", usage=ev.Usage(input_tokens=1, output_tokens=2, total_tokens=3)),
    )
    assert frames == [
        {"serverContent": {"modelTurn": {"parts": [{"text": "Let me check."}]}}},
        {"toolCall": {"functionCalls": [{"id": "c1", "name": "lookup", "args": {}}]}},
        {"usageMetadata": {"promptTokenCount": 1, "responseTokenCount": 2, "totalTokenCount": 3}},
    ]


# --------------------------------------------------------------------------------------------------
# switch contract (issue 11)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"provider": "OPENAI", "when": "now"}, ev.SwitchRequest(provider="openai", when="now")),
        ({"provider": "Gemini"}, ev.SwitchRequest(provider="gemini", when="turn_end")),
        ({"provider": "azure", "when": "TURN_END"}, ev.SwitchRequest(provider="azure", when="turn_end")),
    ],
)
def test_rs_switch_becomes_a_switch_request(body: dict[str, str], expected: ev.SwitchRequest) -> None:
    codec = ready(make())
    out = codec.feed(json.dumps({"rsSwitch": body}))
    assert out.events == [expected] and out.wire == [] and out.close is None
    assert codec.feed(json.dumps({"rs_switch": body})).events == [expected]  # SDK-style snake case too


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"when": "now"}, "invalid rsSwitch.provider: expected a string"),
        ({"provider": " "}, "invalid rsSwitch.provider"),
        ({"provider": "openai", "when": "later"}, "invalid rsSwitch.when"),
        ({"provider": "openai", "now": True}, "unknown rsSwitch.now"),
    ],
)
def test_bad_rs_switch_closes_1007(body: dict[str, object], reason: str) -> None:
    assert ready(make()).feed(json.dumps({"rsSwitch": body})).close == Close(1007, reason)


SWITCHED = ev.Switched(from_provider="gemini", to_provider="openai", reason="manual", gap_ms=420)


def test_switched_reaches_only_clients_that_opted_in() -> None:
    assert ready(make()).encode(SWITCHED).wire == []  # LiveServerMessage forbids unknown fields
    opted = GeminiClientCodec(
        SessionMeta(sid="s", account="a", client_session_id="c", dialect="gemini", provider="gemini", notices=True),
        id_factory=SeqIds(),
    )
    opted.feed(SETUP_PLAIN)
    opted.encode(ev.SessionReady(provider="gemini"))
    (frame,) = opted.encode(SWITCHED).wire
    assert json.loads(frame) == {"rsSwitched": {"from": "gemini", "to": "openai", "reason": "manual", "gapMs": 420}}


def test_every_down_event_has_an_explicit_row() -> None:
    assert set(GeminiClientCodec._OUTBOUND) == set(ev.DOWN_TYPES)  # the table is the contract


def test_switched_to_a_seed_client_is_the_seeds_own_event() -> None:
    seed = GeminiClientCodec(
        SessionMeta(sid="s", account="a", client_session_id="c", dialect="gemini", provider="gemini", seed=True),
        id_factory=SeqIds(),
    )
    seed.feed(SETUP_PLAIN)
    seed.encode(ev.SessionReady(provider="gemini"))
    assert [json.loads(f) for f in seed.encode(SWITCHED).wire] == [{"type": "switch", "name": "OPENAI"}]


def test_a_seed_client_that_opted_in_gets_rs_switched_not_the_seed_event() -> None:
    meta = SessionMeta(sid="s", account="a", client_session_id="c", dialect="gemini", provider="gemini",
                       seed=True, notices=True)
    codec = GeminiClientCodec(meta, id_factory=SeqIds())
    codec.feed(SETUP_PLAIN)
    codec.encode(ev.SessionReady(provider="gemini"))
    assert [set(json.loads(f)) for f in codec.encode(SWITCHED).wire] == [{"rsSwitched"}]


def test_notices_reach_only_clients_that_opted_in_once_each() -> None:
    notice = ev.Notice(code="reattached", param="epoch 3", message="worker replaced; resumed in 300 ms")
    plain = GeminiClientCodec(
        SessionMeta(sid="s", account="a", client_session_id="c", dialect="gemini", provider="gemini"),
        id_factory=SeqIds())
    for codec in (plain,):
        codec.feed(SETUP_PLAIN)
        codec.encode(ev.SessionReady(provider="gemini"))
    assert plain.encode(notice).wire == []
    opted = GeminiClientCodec(
        SessionMeta(sid="s", account="a", client_session_id="c", dialect="gemini", provider="gemini", notices=True),
        id_factory=SeqIds())
    opted.feed(SETUP_PLAIN)
    opted.encode(ev.SessionReady(provider="gemini"))
    assert [json.loads(f) for f in opted.encode(notice).wire] == [{"rsNotice": {
        "code": "reattached", "param": "epoch 3", "message": "worker replaced; resumed in 300 ms"}}]
    assert opted.encode(notice).wire == []
    assert opted.encode(ev.Notice(code="reconnect_required", message="x")).wire == []
