"""OpenAI Realtime client codec (GA and beta), the OpenAI Realtime API reference Pure: no network, no event loop.

Every frame the codec produces here goes through :class:`tests.codecs.Checked`, which validates it
against the openai SDK's own server event types (strictly: unknown field names fail).
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import msgspec
import pytest
from openai.resources.beta.realtime.realtime import AsyncRealtimeConnection as BetaConnection
from openai.resources.realtime.realtime import AsyncRealtimeConnection as GAConnection
from openai.types.beta.realtime import SessionCreatedEvent as BetaSessionCreated
from openai.types.realtime import SessionCreatedEvent as GASessionCreated

from shared import audio
from shared import events as ev
from shared.codecs.openai_client import OpenAIClientCodec
from shared.codecs.registry import CLIENT_CODECS, client_codec
from shared.metrics import NOTICES
from tests.codecs import Checked, SeqIds, meta, read_frames, validate_openai

DIALECTS = pytest.mark.parametrize("beta", [False, True], ids=["ga", "beta"])
NAMES = {
    False: {
        "added": "conversation.item.added",
        "audio_delta": "response.output_audio.delta",
        "audio_done": "response.output_audio.done",
        "tr_delta": "response.output_audio_transcript.delta",
        "tr_done": "response.output_audio_transcript.done",
        "text_delta": "response.output_text.delta",
        "text_done": "response.output_text.done",
        # response.content_part.* parts say audio/text in both dialects; items say output_* in GA
        "part_audio": "audio",
        "part_text": "text",
        "item_audio": "output_audio",
        "item_text": "output_text",
    },
    True: {
        "added": "conversation.item.created",
        "audio_delta": "response.audio.delta",
        "audio_done": "response.audio.done",
        "tr_delta": "response.audio_transcript.delta",
        "tr_done": "response.audio_transcript.done",
        "text_delta": "response.text.delta",
        "text_done": "response.text.done",
        "part_audio": "audio",
        "part_text": "text",
        "item_audio": "audio",
        "item_text": "text",
    },
}


def make(beta: bool, model: str = "gpt-realtime", *, notices: bool = False, seed: bool = False) -> Checked:
    dialect = "openai_beta" if beta else "openai_ga"
    session_meta = msgspec.structs.replace(meta(dialect, model), notices=notices, seed=seed)
    codec = OpenAIClientCodec(session_meta, beta=beta, id_factory=SeqIds())
    return Checked(codec, lambda frame: validate_openai(frame, beta=beta))


def session_update(beta: bool, **fields: Any) -> str:
    session = fields if beta else {"type": "realtime", **fields}
    return json.dumps({"type": "session.update", "session": session})


def types(frames: list[dict[str, Any]]) -> list[str]:
    return [f["type"] for f in frames]


def errors(out: Any) -> list[dict[str, Any]]:
    return [json.loads(f)["error"] for f in out.wire if json.loads(f)["type"] == "error"]


# --------------------------------------------------------------------------------------------------
# The validator itself must be able to fail


def test_validator_rejects_a_misspelt_field() -> None:
    good = '{"type":"error","event_id":"e1","error":{"type":"invalid_request_error","message":"m"}}'
    validate_openai(good, beta=False)
    with pytest.raises(AssertionError, match="unknown to the SDK"):
        validate_openai(good.replace('"message":"m"', '"message":"m","mesage":"m"'), beta=False)
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError: a required field is missing
        validate_openai('{"type":"input_audio_buffer.committed","event_id":"e"}', beta=True)
    part = (
        '{"type":"response.content_part.added","event_id":"e","response_id":"r","item_id":"i",'
        '"output_index":0,"content_index":0,"part":{"type":"audio","transcript":""}}'
    )
    validate_openai(part, beta=False)
    with pytest.raises(Exception):  # noqa: B017 - the SDK literal (and the real GA server) say "audio" there
        validate_openai(part.replace('"audio"', '"output_audio"'), beta=False)
    with pytest.raises(AssertionError, match=r"rs\.switched fields"):
        validate_openai('{"type":"rs.switched","event_id":"e","from":"openai","to":"gemini"}', beta=False)


# --------------------------------------------------------------------------------------------------
# open(): session.created


@DIALECTS
def test_open_sends_session_created_with_the_dialect_defaults(beta: bool) -> None:
    codec = make(beta)
    (frame,) = codec.open().wire
    created = (BetaSessionCreated if beta else GASessionCreated).model_validate_json(frame)
    session = json.loads(frame)["session"]
    assert created.type == "session.created"
    assert session["id"].startswith("sess_") and session["model"] == "gpt-realtime"
    if beta:
        assert session["voice"] == "alloy" and session["modalities"] == ["text", "audio"]
        assert session["input_audio_format"] == session["output_audio_format"] == "pcm16"
        assert session["turn_detection"]["type"] == "server_vad" and session["temperature"] == 0.8
        assert session["max_response_output_tokens"] == "inf"
    else:
        assert session["type"] == "realtime" and session["object"] == "realtime.session"
        assert session["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
        assert session["audio"]["output"]["voice"] == "marin"
        vad = session["audio"]["input"]["turn_detection"]
        # as a real gpt-realtime session.created shows them (frames/provider_openai_real_ga_session.jsonl)
        assert vad["type"] == "server_vad" and vad["threshold"] == 0.5 and vad["silence_duration_ms"] == 200
        assert session["output_modalities"] == ["audio"] and session["max_output_tokens"] == "inf"
        assert session["tools"] == [] and session["tool_choice"] == "auto"
        assert (session["tracing"], session["truncation"], session["prompt"], session["include"]) == (
            None,
            "auto",
            None,
            None,
        )


# --------------------------------------------------------------------------------------------------
# feed(): recorded SDK frames


@pytest.mark.parametrize(
    ("beta", "recording"), [(False, "client_openai_ga_sdk.jsonl"), (True, "client_openai_beta_sdk.jsonl")]
)
def test_recorded_sdk_session_becomes_canonical_events(beta: bool, recording: str) -> None:
    codec = make(beta)
    codec.open()
    outs = [codec.feed(frame) for frame in read_frames(recording)]
    config, audio_in, commit, create, item = (e for out in outs for e in out.events)

    assert isinstance(config, ev.SessionConfig)
    assert config.instructions == "be brief" and config.turn_detection is None
    assert config.model == "gpt-realtime" and config.output_modalities == ["audio"]
    assert config.temperature == (0.7 if beta else None)
    assert audio_in == ev.InputAudio(pcm=audio.tone(440, 20, 24000), rate=24000)
    assert commit == ev.InputAudioCommit()
    assert create == ev.ResponseCreate()
    assert isinstance(item, ev.ItemCreate) and isinstance(item.item, ev.FunctionCallOutput)
    assert (item.item.call_id, item.item.output) == ("call_1", '{"ok": true}')
    assert item.item.id.startswith("item_") and len(item.item.id) <= 32

    replies = [types([json.loads(f) for f in out.wire]) for out in outs]
    added = ["conversation.item.created"] if beta else ["conversation.item.added", "conversation.item.done"]
    assert replies == [["session.updated"], [], [], [], added]


@DIALECTS
def test_session_updates_merge_and_carry_the_whole_config(beta: bool) -> None:
    codec = make(beta)
    vad = {"type": "server_vad", "threshold": 0.8, "silence_duration_ms": 300}
    key = "turn_detection" if beta else "audio"
    value = vad if beta else {"input": {"turn_detection": vad}}
    (first,) = codec.feed(session_update(beta, **{key: value})).events
    (second,) = codec.feed(session_update(beta, instructions="hi")).events
    assert isinstance(first, ev.SessionConfig) and isinstance(second, ev.SessionConfig)
    td = ev.TurnDetection(type="server_vad", threshold=0.8, silence_duration_ms=300)
    assert first.turn_detection == second.turn_detection == td
    assert second.instructions == "hi" and first.instructions is None
    echoed = codec.frames[-1]["session"]
    echoed_vad = echoed["turn_detection"] if beta else echoed["audio"]["input"]["turn_detection"]
    assert echoed_vad["threshold"] == 0.8 and echoed_vad["prefix_padding_ms"] == 300  # default filled in
    assert echoed["instructions"] == "hi"


def test_ga_session_fields_map_to_config_and_unknown_slots_to_extra() -> None:
    codec = make(False)
    tool = {"type": "function", "name": "get_weather", "description": "w", "parameters": {"type": "object"}}
    frame = session_update(
        False,
        output_modalities=["text"],
        audio={
            "input": {
                "transcription": {"model": "gpt-4o-transcribe", "language": "en", "prompt": "names"},
                "noise_reduction": {"type": "near_field"},
                "turn_detection": {"type": "semantic_vad", "eagerness": "high", "interrupt_response": False},
            },
            "output": {"voice": "cedar", "speed": 1.2},
        },
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
        tracing="auto",
    )
    (config,) = codec.feed(frame).events
    assert config == ev.SessionConfig(
        model="gpt-realtime",
        voice="cedar",
        speed=1.2,
        output_modalities=["text"],
        max_output_tokens=200,
        turn_detection=ev.TurnDetection(type="semantic_vad", eagerness="high", interrupt_response=False),
        input_transcription=True,
        transcription_model="gpt-4o-transcribe",
        transcription_language="en",
        tools=[ev.Tool(name="get_weather", description="w", parameters='{"type":"object"}')],
        tool_choice="get_weather",
        extra={
            "session.audio.input.noise_reduction": '{"type":"near_field"}',
            "session.audio.input.transcription.prompt": '"names"',
            "session.tracing": '"auto"',
        },
        client_input_format="pcm16/24000",  # the dialect defaults, carried for a transformer failover
        client_output_format="pcm16/24000",
    )
    echoed = codec.frames[-1]["session"]
    assert echoed["tracing"] == "auto" and echoed["audio"]["input"]["noise_reduction"] == {"type": "near_field"}


@DIALECTS
def test_turn_detection_null_means_manual_turns(beta: bool) -> None:
    codec = make(beta)
    update = (
        session_update(beta, turn_detection=None)
        if beta
        else session_update(beta, audio={"input": {"turn_detection": None}})
    )
    (config,) = codec.feed(update).events
    assert config.turn_detection is None


@pytest.mark.parametrize(
    ("beta", "frame", "code", "param"),
    [
        (
            False,
            '{"type":"session.update","session":{"instructions":"x"}}',
            "missing_required_parameter",
            "session.type",
        ),
        (False, session_update(False, temperature=0.7), "unknown_parameter", "session.temperature"),
        (True, session_update(True, bogus=1), "unknown_parameter", "session.bogus"),
        (False, session_update(False, instructions=5), "invalid_type", "session.instructions"),
        (True, session_update(True, input_audio_format="mp3"), "invalid_value", "session.input_audio_format"),
        (
            False,
            session_update(False, audio={"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}),
            "unknown_parameter",
            "session.audio.input.turn_detection.eagerness",
        ),
        (
            True,
            session_update(True, turn_detection={"type": "server_vad", "idle_timeout_ms": 5}),
            "unknown_parameter",
            "session.turn_detection.idle_timeout_ms",
        ),
        (
            True,
            session_update(True, tool_choice={"type": "function", "name": "f"}),
            "invalid_value",
            "session.tool_choice",
        ),
    ],
)
def test_invalid_session_update_is_one_error_and_changes_nothing(beta: bool, frame: str, code: str, param: str) -> None:
    codec = make(beta)
    before = codec.codec._state
    out = codec.feed(frame)
    assert out.events == [] and len(out.wire) == 1
    (err,) = errors(out)
    assert (err["type"], err["code"], err["param"]) == ("invalid_request_error", code, param)
    assert codec.codec._state == before


@pytest.mark.parametrize(
    "frame",
    [
        b"",
        b"{",
        b"[]",
        b'{"type":7}',
        b'{"no_type":1}',
        b'{"type":"input_audio_buffer.apend","audio":""}',
        b'{"type":"input_audio_buffer.append"}',
        b'{"type":"input_audio_buffer.append","audio":"not base64!"}',
        b'{"type":"input_audio_buffer.commit"}',
        b'{"type":"input_audio_buffer.commit","extra":1}',
        b'{"type":"conversation.item.create"}',
        b'{"type":"conversation.item.create","item":{"type":"message","role":"user","content":[{"type":"x"}]}}',
        b'{"type":"conversation.item.create","item":{"type":"message","role":"system","content":[{"type":"input_audio"}]}}',
        b'{"type":"conversation.item.create","item":{"type":"function_call_output","output":"x"}}',
        b'{"type":"conversation.item.create","item":{"id":"' + b"x" * 33 + b'","type":"message","role":"user",'
        b'"content":[]}}',
        b'{"type":"conversation.item.truncate","item_id":"i","content_index":0}',
        b'{"type":"conversation.item.retrieve","item_id":"nope"}',
        b'{"type":"response.create","response":{"input":[]}}',
        b'{"type":"response.create","response":{"conversation":"conv_9"}}',
        b'{"type":"output_audio_buffer.clear"}',
        b'{"type":"transcription_session.update","session":{}}',  # beta only
    ],
)
def test_bad_client_event_is_one_error_frame_and_nothing_up(frame: bytes) -> None:
    codec = make(False)
    out = codec.feed(frame)
    assert out.events == [] and out.close is None
    (err,) = errors(out)
    assert err["type"] == "invalid_request_error" and err["code"] and err["message"]


def test_error_names_the_client_event_id() -> None:
    codec = make(False)
    (err,) = errors(codec.feed('{"type":"input_audio_buffer.commit","event_id":"evt_42"}'))
    assert err["event_id"] == "evt_42" and err["code"] == "input_audio_buffer_commit_empty"


def test_feed_never_raises_on_mangled_frames() -> None:
    codec = make(True)
    rng = random.Random(7)
    recorded = [f.encode() for f in read_frames("client_openai_beta_sdk.jsonl")]
    for _ in range(400):
        frame = bytearray(rng.choice(recorded))
        for _ in range(rng.randint(1, 4)):
            frame[rng.randrange(len(frame))] = rng.randrange(256)
        out = codec.feed(bytes(frame[: rng.randint(0, len(frame))]))
        # bad input is the client's fault: never the catch-all that hides a codec bug
        assert all(e["code"] != "internal_error" for e in errors(out))


# --------------------------------------------------------------------------------------------------
# Audio in and out


@DIALECTS
def test_g711_input_is_decoded_at_8k_and_output_encoded_to_the_session_format(beta: bool) -> None:
    codec = make(beta)
    if beta:
        codec.feed(session_update(True, input_audio_format="g711_ulaw", output_audio_format="g711_alaw"))
    else:
        fmt = {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcma"}}}
        codec.feed(session_update(False, audio=fmt))
    pcm8k = audio.tone(440, 100, 8000)
    ulaw = audio.pcm16_to_ulaw(pcm8k)
    (heard,) = codec.feed(json.dumps({"type": "input_audio_buffer.append", "audio": audio.b64encode_std(ulaw)})).events
    assert heard == ev.InputAudio(pcm=audio.ulaw_to_pcm16(ulaw), rate=8000)

    out_pcm = audio.tone(600, 400, 24000)
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="resp_1"),
        *(
            ev.OutputAudio(response_id="resp_1", item_id="item_a", pcm=out_pcm[i : i + 960], rate=24000)
            for i in range(0, len(out_pcm), 960)
        ),
        ev.OutputDone(
            response_id="resp_1", item=ev.Message(id="item_a", role="assistant", content=[ev.AudioContent()])
        ),
    )
    alaw = b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == NAMES[beta]["audio_delta"])
    assert abs(len(alaw) - 400 * 8) <= 8  # 8 kHz, one byte per sample, resampler tail flushed
    assert abs(audio.dominant_hz(audio.alaw_to_pcm16(alaw), 8000) - 600) < 5


def test_output_audio_at_another_rate_is_resampled_to_24k() -> None:
    codec = make(False)
    pcm16k = audio.tone(500, 200, 16000)
    frames = codec.encode_all(
        ev.OutputAudio(response_id="r", item_id="i", pcm=pcm16k, rate=16000),
        ev.OutputDone(response_id="r", item=ev.Message(id="i", role="assistant", content=[ev.AudioContent()])),
    )
    pcm = b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == "response.output_audio.delta")
    assert abs(len(pcm) - 200 * 48) <= 96 and abs(audio.dominant_hz(pcm, 24000) - 500) < 5


def test_empty_append_is_not_an_error_and_sends_nothing_up() -> None:
    assert make(False).feed('{"type":"input_audio_buffer.append","audio":""}').events == []


def test_reprs_never_show_audio() -> None:
    codec = make(False)
    out = codec.feed(json.dumps({"type": "input_audio_buffer.append", "audio": "QUFBQUFBQUFBQUFB"}))
    assert "QUFB" not in repr(out) and "AAAA" not in repr(out) and "<12 B>" in repr(out)
    assert "sid0" in repr(codec.codec)


# --------------------------------------------------------------------------------------------------
# encode(): full response ordering (the OpenAI Realtime API reference)


def _audio_turn(resp: str = "resp_1", item: str = "item_a") -> list[ev.Event]:
    pcm = audio.tone(300, 40, 24000)
    return [
        ev.SpeechStarted(item_id="item_u", audio_start_ms=120),
        ev.SpeechStopped(item_id="item_u", audio_end_ms=900),
        ev.InputCommitted(item_id="item_u"),
        ev.ResponseStarted(response_id=resp),
        ev.OutputAudio(response_id=resp, item_id=item, pcm=pcm, rate=24000),
        ev.OutputTranscript(response_id=resp, item_id=item, delta="Hel"),
        ev.OutputAudio(response_id=resp, item_id=item, pcm=pcm, rate=24000),
        ev.OutputTranscript(response_id=resp, item_id=item, delta="lo"),
        ev.InputTranscript(item_id="item_u", text="hi "),
        ev.InputTranscript(item_id="item_u", text="there"),
        ev.InputTranscript(item_id="item_u", text="hi there", final=True),
        ev.OutputDone(
            response_id=resp,
            item=ev.Message(id=item, role="assistant", content=[ev.AudioContent(transcript="Hello")]),
        ),
        ev.RateLimits(limits=[ev.RateLimit(name="requests", limit=100, remaining=99, reset_seconds=1.5)]),
        ev.ResponseDone(
            response_id=resp,
            usage=ev.Usage(
                input_tokens=10,
                output_tokens=20,
                total_tokens=30,
                input_audio_tokens=10,
                output_audio_tokens=15,
                output_text_tokens=5,
            ),
        ),
    ]


@DIALECTS
def test_audio_turn_has_the_full_event_skeleton_in_order(beta: bool) -> None:
    n = NAMES[beta]
    codec = make(beta)
    frames = codec.encode_all(*_audio_turn())
    user_added = [n["added"]] if beta else [n["added"], "conversation.item.done"]
    item_done = [] if beta else ["conversation.item.done"]
    expected = [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        *user_added,
        "response.created",
        "response.output_item.added",
        n["added"],
        "response.content_part.added",
        n["audio_delta"],
        n["tr_delta"],
        n["audio_delta"],
        n["tr_delta"],
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
        n["audio_done"],
        n["tr_done"],
        "response.content_part.done",
        *item_done,
        "response.output_item.done",
        "rate_limits.updated",
        "response.done",
    ]
    assert types(frames) == expected
    assert len({f["event_id"] for f in frames}) == len(frames)  # every event id is unique

    stream = [f for f in frames if f.get("response_id") == "resp_1" and "content_index" in f]
    assert {(f["item_id"], f["output_index"], f["content_index"]) for f in stream} == {("item_a", 0, 0)}
    by_type = {f["type"]: f for f in frames}
    assert by_type["response.content_part.added"]["part"] == {"type": n["part_audio"], "transcript": ""}
    assert by_type[n["tr_done"]]["transcript"] == "Hello"
    assert by_type["response.content_part.done"]["part"] == {"type": n["part_audio"], "transcript": "Hello"}
    done = by_type["response.done"]["response"]
    assert done["status"] == "completed" and done["id"] == "resp_1"
    assert done["output"] == [by_type["response.output_item.done"]["item"]]
    assert done["output"][0]["content"] == [{"type": n["item_audio"], "transcript": "Hello"}]
    assert done["usage"]["total_tokens"] == 30 and done["usage"]["output_token_details"]["audio_tokens"] == 15
    completed = by_type["conversation.item.input_audio_transcription.completed"]
    assert completed["transcript"] == "hi there" and completed["item_id"] == "item_u"
    assert by_type["input_audio_buffer.committed"]["item_id"] == "item_u"
    assert by_type["response.output_item.added"]["item"]["status"] == "in_progress"

    # the store now answers retrieve with the final transcript of the user's audio item
    codec.feed('{"type":"conversation.item.retrieve","item_id":"item_u"}')
    assert codec.frames[-1]["item"]["content"] == [{"type": "input_audio", "transcript": "hi there"}]


@DIALECTS
def test_text_response_uses_text_parts(beta: bool) -> None:
    n = NAMES[beta]
    codec = make(beta)
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputText(response_id="r1", item_id="it1", delta="Hi "),
        ev.OutputText(response_id="r1", item_id="it1", delta="you"),
        ev.OutputDone(
            response_id="r1", item=ev.Message(id="it1", role="assistant", content=[ev.TextContent(text="Hi you")])
        ),
        ev.ResponseDone(response_id="r1"),
    )
    assert types(frames)[3:6] == ["response.content_part.added", n["text_delta"], n["text_delta"]]
    by_type = {f["type"]: f for f in frames}
    assert by_type[n["text_done"]]["text"] == "Hi you"
    assert by_type["response.content_part.done"]["part"] == {"type": n["part_text"], "text": "Hi you"}
    assert by_type["response.done"]["response"]["output"][0]["content"] == [{"type": n["item_text"], "text": "Hi you"}]


def test_final_item_without_deltas_is_streamed_once() -> None:
    frames = make(False).encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputDone(
            response_id="r1", item=ev.Message(id="it1", role="assistant", content=[ev.TextContent(text="whole")])
        ),
    )
    assert types(frames) == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
    ]
    assert frames[4]["delta"] == "whole"


def test_output_without_response_started_synthesizes_response_created() -> None:
    frames = make(False).encode_all(ev.OutputText(response_id="r9", item_id="i9", delta="x"))
    assert types(frames)[:2] == ["response.created", "response.output_item.added"]
    assert frames[0]["response"]["id"] == "r9"


@DIALECTS
def test_function_call_sequence(beta: bool) -> None:
    codec = make(beta)
    call = ev.FunctionCall(id="item_fc", call_id="call_7", name="get_weather", arguments='{"city":"Paris"}')
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.ToolCall(
            response_id="r1", item_id="item_fc", call_id="call_7", name="get_weather", arguments='{"city":"Paris"}'
        ),
        ev.OutputDone(response_id="r1", item=call),
        ev.ResponseDone(response_id="r1"),
    )
    item_done = [] if beta else ["conversation.item.done"]
    assert types(frames) == [
        "response.created",
        "response.output_item.added",
        NAMES[beta]["added"],
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        *item_done,
        "response.output_item.done",
        "response.done",
    ]
    by_type = {f["type"]: f for f in frames}
    assert by_type["response.output_item.added"]["item"]["arguments"] == ""
    args_done = by_type["response.function_call_arguments.done"]
    assert args_done["arguments"] == '{"city":"Paris"}' and args_done["call_id"] == "call_7"
    assert ("name" in args_done) is (not beta)  # GA requires the name there; beta's type has none
    (fc,) = by_type["response.done"]["response"]["output"]
    assert (fc["type"], fc["name"], fc["call_id"], fc["status"]) == (
        "function_call",
        "get_weather",
        "call_7",
        "completed",
    )

    # the name travels with the result (Gemini needs it)
    out = codec.feed(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_7", "output": "sunny"},
            }
        )
    )
    (create,) = out.events
    assert create.item.name == "get_weather"


@DIALECTS
def test_barge_in_cuts_audio_and_cancels_the_response(beta: bool) -> None:
    n = NAMES[beta]
    codec = make(beta)
    pcm = audio.tone(300, 40, 24000)
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm, rate=24000),
        ev.OutputTranscript(response_id="r1", item_id="a1", delta="Once upon"),
        ev.SpeechStarted(item_id="u2", audio_start_ms=1500),
        ev.Interrupted(response_id="r1"),
        ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm, rate=24000),  # late: must not be played
        ev.OutputDone(
            response_id="r1",
            item=ev.Message(
                id="a1", role="assistant", status="incomplete", content=[ev.AudioContent(transcript="Once upon")]
            ),
        ),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"),
    )
    after = types(frames)[types(frames).index("input_audio_buffer.speech_started") :]
    assert n["audio_delta"] not in after
    by_type = {f["type"]: f for f in frames}
    assert by_type["response.output_item.done"]["item"]["status"] == "incomplete"
    done = by_type["response.done"]["response"]
    assert done["status"] == "cancelled"
    assert done["status_details"] == {"type": "cancelled", "reason": "turn_detected"}


def test_response_done_closes_items_left_open() -> None:
    frames = make(False).encode_all(
        ev.OutputText(response_id="r1", item_id="i1", delta="partial"),
        ev.ResponseDone(response_id="r1", status="failed", reason="provider_disconnected"),
    )
    assert types(frames)[-5:] == [
        "response.output_text.done",
        "response.content_part.done",
        "conversation.item.done",
        "response.output_item.done",
        "response.done",
    ]
    done = frames[-1]["response"]
    assert done["status"] == "failed" and done["output"][0]["status"] == "incomplete"
    assert done["status_details"]["error"]["code"] == "provider_disconnected"


def test_events_after_response_done_are_not_reannounced() -> None:
    codec = make(False)
    codec.encode_all(ev.ResponseStarted(response_id="r1"), ev.ResponseDone(response_id="r1"))
    assert codec.encode_all(ev.OutputText(response_id="r1", item_id="i", delta="late")) == []


def test_two_output_items_get_consecutive_output_indexes() -> None:
    frames = make(False).encode_all(
        ev.OutputText(response_id="r1", item_id="i1", delta="a"),
        ev.ToolCall(response_id="r1", item_id="i2", call_id="c2", name="f", arguments="{}"),
        ev.ResponseDone(response_id="r1"),
    )
    added = [(f["item"]["id"], f["output_index"]) for f in frames if f["type"] == "response.output_item.added"]
    assert added == [("i1", 0), ("i2", 1)]
    assert [o["id"] for o in frames[-1]["response"]["output"]] == ["i1", "i2"]


@DIALECTS
def test_errors_notices_and_rate_limits(beta: bool) -> None:
    codec = make(beta)
    out = codec.encode(
        ev.ProviderError(code="invalid_value", message="bad voice", param="session.voice", client_event_id="evt_1")
    )
    (err,) = errors(out)
    assert err == {
        "type": "invalid_request_error",
        "code": "invalid_value",
        "message": "bad voice",
        "param": "session.voice",
        "event_id": "evt_1",
    }
    assert out.close is None
    fatal = codec.encode(ev.ProviderError(code="provider_unavailable", message="gone", fatal=True))
    assert errors(fatal)[0]["type"] == "server_error" and fatal.close is not None and fatal.close.code == 1011
    # a provider notice is never an error: nothing for a client that did not opt in
    assert codec.encode(ev.Notice(code="unsupported_field", message="no", param="session.tracing")).wire == []
    assert codec.encode(ev.GoAway(time_left_ms=5000)).wire == []
    assert codec.encode(ev.SessionReady(provider="gemini")).wire == []


# --------------------------------------------------------------------------------------------------
# Conversation items and responses (client side)


@DIALECTS
def test_item_create_retrieve_truncate_delete(beta: bool) -> None:
    codec = make(beta)
    assistant_part = "text" if beta else "output_text"
    out = codec.feed(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "id": "msg_1",
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": assistant_part, "text": "earlier answer"}],
                },
            }
        )
    )
    assert out.events == [
        ev.ItemCreate(item=ev.Message(id="msg_1", role="assistant", content=[ev.TextContent(text="earlier answer")]))
    ]
    out = codec.feed(
        json.dumps(
            {
                "type": "conversation.item.create",
                "previous_item_id": "msg_1",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]},
            }
        )
    )
    (create,) = out.events
    assert create.previous_item_id == "msg_1" and create.item.id == "item_1"
    assert json.loads(out.wire[0])["item"]["content"] == [{"type": "input_text", "text": "hi"}]

    codec.feed('{"type":"conversation.item.retrieve","item_id":"msg_1"}')
    assert codec.frames[-1]["item"]["content"] == [{"type": assistant_part, "text": "earlier answer"}]

    out = codec.feed('{"type":"conversation.item.truncate","item_id":"msg_1","content_index":0,"audio_end_ms":1500}')
    assert out.events == [ev.ItemTruncate(item_id="msg_1", content_index=0, audio_end_ms=1500)]
    assert codec.frames[-1]["type"] == "conversation.item.truncated"

    out = codec.feed('{"type":"conversation.item.delete","item_id":"msg_1"}')
    assert out.events == [ev.ItemDelete(item_id="msg_1")] and codec.frames[-1]["item_id"] == "msg_1"
    assert errors(codec.feed('{"type":"conversation.item.retrieve","item_id":"msg_1"}'))[0]["code"] == "item_not_found"


def test_audio_inside_an_item_is_reported_not_silently_dropped() -> None:
    codec = make(False)
    out = codec.feed(
        json.dumps(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [
                        {"type": "input_audio", "audio": "AAAA", "transcript": "hello"},
                        {"type": "input_image", "image_url": "data:..."},
                    ],
                },
            }
        )
    )
    (create,) = out.events
    assert create.item.content == [ev.AudioContent(transcript="hello")]
    assert errors(out) == []  # the real server takes both: approximated, never an error
    assert [json.loads(f)["type"] for f in out.wire] == ["conversation.item.added", "conversation.item.done"]


@DIALECTS
def test_response_create_options(beta: bool) -> None:
    codec = make(beta)
    if beta:
        response = {
            "modalities": ["text"],
            "voice": "ash",
            "temperature": 0.9,
            "max_response_output_tokens": 50,
            "conversation": "none",
            "metadata": {"k": "v"},
            "instructions": "short",
        }
    else:
        response = {
            "output_modalities": ["text"],
            "audio": {"output": {"voice": "ash"}},
            "max_output_tokens": 50,
            "conversation": "none",
            "metadata": {"k": "v"},
            "instructions": "short",
        }
    (create,) = codec.feed(json.dumps({"type": "response.create", "response": response})).events
    expected = ev.ResponseOptions(
        instructions="short",
        output_modalities=["text"],
        voice="ash",
        max_output_tokens=50,
        out_of_band=True,
        temperature=0.9 if beta else None,
    )
    assert create == ev.ResponseCreate(options=expected)  # metadata stays here: the codec echoes it itself


def test_response_create_passes_openai_only_fields_on_as_extra() -> None:
    out = make(False).feed('{"type":"response.create","response":{"prompt":{"id":"p"},"instructions":"x"}}')
    options = ev.ResponseOptions(instructions="x", extra={"response.prompt": '{"id":"p"}'})
    assert out.events == [ev.ResponseCreate(options=options)]
    assert out.wire == []


def test_response_cancel_and_clear() -> None:
    codec = make(False)
    assert codec.feed('{"type":"response.cancel","response_id":"r1"}').events == [ev.ResponseCancel(response_id="r1")]
    out = codec.feed('{"type":"input_audio_buffer.clear"}')
    assert out.events == [ev.InputAudioClear()] and codec.frames[-1]["type"] == "input_audio_buffer.cleared"


def test_commit_after_clear_is_empty_again() -> None:
    codec = make(False)
    codec.feed(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
    codec.feed('{"type":"input_audio_buffer.clear"}')
    assert errors(codec.feed('{"type":"input_audio_buffer.commit"}'))[0]["code"] == "input_audio_buffer_commit_empty"


@pytest.mark.parametrize("beta", [False, True])
def test_a_resumed_codec_leaves_the_commit_to_the_provider(beta: bool) -> None:
    """After a transformer failover the audio the dead one took in may still be uncommitted upstream: a
    commit right after the resume goes to the provider (which judges it), it is not refused as empty."""
    codec = make(beta)
    codec.codec.resume(None, [])
    assert codec.feed('{"type":"input_audio_buffer.commit"}').events == [ev.InputAudioCommit()]
    assert errors(codec.feed('{"type":"input_audio_buffer.commit"}'))[0]["code"] == "input_audio_buffer_commit_empty"


def test_beta_transcription_session_update() -> None:
    codec = make(True)
    out = codec.feed(
        json.dumps(
            {
                "type": "transcription_session.update",
                "session": {
                    "input_audio_transcription": {"model": "gpt-4o-transcribe", "language": "de"},
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                },
            }
        )
    )
    (config,) = out.events
    assert config.input_transcription and config.transcription_model == "gpt-4o-transcribe"
    assert config.transcription_language == "de" and config.extra["session.type"] == '"transcription"'
    assert config.turn_detection == ev.TurnDetection(silence_duration_ms=400, create_response=False)
    assert codec.frames[-1]["type"] == "transcription_session.updated"


def test_ga_transcription_session() -> None:
    codec = make(False)
    session = {"type": "transcription", "audio": {"input": {"transcription": {"model": "whisper-1"}}}}
    out = codec.feed(json.dumps({"type": "session.update", "session": session}))
    (config,) = out.events
    assert config.input_transcription and config.transcription_model == "whisper-1"
    assert codec.frames[-1]["session"]["type"] == "transcription"


def test_resume_restores_session_and_items_without_sending() -> None:
    first = make(False)
    tool = {"type": "function", "name": "f", "parameters": {"type": "object"}}
    (config,) = first.feed(
        session_update(
            False, instructions="keep me", tools=[tool], tool_choice={"type": "function", "name": "f"}, tracing="auto"
        )
    ).events
    item = ev.Message(id="item_x", role="user", content=[ev.TextContent(text="hi")])

    second = make(False)
    second.codec.resume(config, [item])
    (again,) = second.feed(session_update(False, output_modalities=["audio"])).events
    assert again == config
    second.feed('{"type":"conversation.item.retrieve","item_id":"item_x"}')
    assert second.frames[-1]["item"]["content"] == [{"type": "input_text", "text": "hi"}]


# Recorded-style session.update bodies that leave PCM16 24 kHz, with the canonical names they must carry.
CLIENT_FORMATS = pytest.mark.parametrize(
    ("beta", "session", "names"),
    [
        (True, {"input_audio_format": "g711_ulaw", "output_audio_format": "g711_ulaw"}, ("pcmu/8000", "pcmu/8000")),
        (True, {"input_audio_format": "g711_alaw", "output_audio_format": "g711_ulaw"}, ("pcma/8000", "pcmu/8000")),
        (
            False,
            {"audio": {"input": {"format": {"type": "audio/pcmu"}}, "output": {"format": {"type": "audio/pcmu"}}}},
            ("pcmu/8000", "pcmu/8000"),
        ),
        (
            False,
            {
                "audio": {
                    "input": {"format": {"type": "audio/pcma"}},
                    "output": {"format": {"type": "audio/pcm", "rate": 16000}},
                }
            },
            ("pcma/8000", "pcm16/16000"),
        ),
    ],
    ids=["beta-ulaw", "beta-alaw-in", "ga-pcmu", "ga-pcma-in-pcm16k-out"],
)


def _echoed_formats(session: dict[str, Any], beta: bool) -> tuple[Any, Any]:
    if beta:
        return session["input_audio_format"], session["output_audio_format"]
    return session["audio"]["input"]["format"], session["audio"]["output"]["format"]


def _pin_pcm_rate(value: Any) -> None:
    if isinstance(value, dict):
        if value.get("type") == "audio/pcm" and "rate" in value:
            value["rate"] = 24000
        for v in value.values():
            _pin_pcm_rate(v)
    elif isinstance(value, list):
        for v in value:
            _pin_pcm_rate(v)


def _validate_allowing_pcm_rates(frame: str, beta: bool) -> None:
    """The SDK pins GA ``audio/pcm`` to 24 kHz; the gateway honours the client's rate (audio.openai_format).
    Everything else is validated as usual."""
    obj = json.loads(frame)
    _pin_pcm_rate(obj)
    validate_openai(json.dumps(obj), beta=beta)


def _speak(codec: Checked, beta: bool, pcm: bytes, rate: int, response_id: str) -> bytes:
    """One assistant audio response from PCM at ``rate`` in 20 ms chunks: the audio bytes the client got."""
    step = rate // 25
    frames = codec.encode_all(
        ev.ResponseStarted(response_id=response_id),
        *(
            ev.OutputAudio(response_id=response_id, item_id=f"{response_id}_a", pcm=pcm[i : i + step], rate=rate)
            for i in range(0, len(pcm), step)
        ),
        ev.OutputDone(
            response_id=response_id,
            item=ev.Message(id=f"{response_id}_a", role="assistant", content=[ev.AudioContent()]),
        ),
        ev.ResponseDone(response_id=response_id),
    )
    return b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == NAMES[beta]["audio_delta"])


@CLIENT_FORMATS
def test_resume_keeps_the_client_audio_formats(beta: bool, session: dict[str, Any], names: tuple[str, str]) -> None:
    def make_checked() -> Checked:
        dialect = "openai_beta" if beta else "openai_ga"
        codec = OpenAIClientCodec(meta(dialect, "gpt-realtime"), beta=beta, id_factory=SeqIds())
        return Checked(codec, lambda frame: _validate_allowing_pcm_rates(frame, beta))

    first = make_checked()
    first.open()
    out = first.feed(session_update(beta, **session))
    assert errors(out) == []  # the formats are the client's own business: no unsupported_field
    (config,) = out.events
    assert isinstance(config, ev.SessionConfig)
    assert (config.client_input_format, config.client_output_format) == names
    echoed = _echoed_formats(first.frames[-1]["session"], beta)
    # What the replacement transformer reads back went through the bus and the store as msgpack.
    (restored,) = ev.decode_envelope(ev.encode_envelope(ev.Envelope(epoch=1, seq=1, events=[config]))).events
    assert restored == config

    second = make_checked()
    second.codec.resume(restored, [])  # sends nothing; audio may flow both ways before any session.update

    in_fmt = audio.AudioFormat.from_name(names[0])
    wire_in = audio.encode_from_pcm16(audio.tone(440, 100, in_fmt.rate), in_fmt)
    append = json.dumps({"type": "input_audio_buffer.append", "audio": audio.b64encode_std(wire_in)})
    (heard_first,) = first.feed(append).events
    (heard_second,) = second.feed(append).events
    assert heard_second == heard_first == ev.InputAudio(pcm=audio.decode_to_pcm16(wire_in, in_fmt), rate=in_fmt.rate)

    out_fmt = audio.AudioFormat.from_name(names[1])
    # At the client's own rate the output converter passes audio through, so the bytes must match exactly
    # (soxr is not bit-exact across instances: resampled audio may differ by a quantisation step).
    spoken = audio.tone(600, 400, out_fmt.rate)
    sent_first = _speak(first, beta, spoken, out_fmt.rate, "resp_1")
    sent_second = _speak(second, beta, spoken, out_fmt.rate, "resp_1")
    assert sent_second == sent_first == audio.encode_from_pcm16(spoken, out_fmt)
    # Provider audio at 24 kHz is resampled to the restored output rate, then encoded.
    resampled = _speak(second, beta, audio.tone(600, 400, 24000), 24000, "resp_2")
    played = audio.decode_to_pcm16(resampled, out_fmt)
    assert abs(len(played) // 2 - 400 * out_fmt.rate // 1000) <= 4
    assert abs(audio.dominant_hz(played, out_fmt.rate) - 600) < 5

    # The next session.update carries and echoes the restored formats, untouched.
    (again,) = second.feed(session_update(beta, instructions="after failover")).events
    assert again == msgspec.structs.replace(config, instructions="after failover")
    assert _echoed_formats(second.frames[-1]["session"], beta) == echoed


@DIALECTS
def test_resume_from_a_config_without_client_formats_falls_back_to_pcm16_24k(beta: bool) -> None:
    # A checkpoint written before the formats travelled, or by a newer transformer with a format this one lacks.
    for fmt in (None, "opus/48000"):
        codec = make(beta)
        codec.codec.resume(ev.SessionConfig(client_input_format=fmt, client_output_format=fmt), [])
        (config,) = codec.feed(session_update(beta, instructions="x")).events
        assert (config.client_input_format, config.client_output_format) == ("pcm16/24000", "pcm16/24000")
        pcm = audio.tone(440, 20, 24000)
        append = json.dumps({"type": "input_audio_buffer.append", "audio": audio.b64encode_std(pcm)})
        assert codec.feed(append).events == [ev.InputAudio(pcm=pcm, rate=24000)]


# --------------------------------------------------------------------------------------------------
# Registry


def test_registry_builds_each_dialect() -> None:
    assert set(CLIENT_CODECS) == {"openai_ga", "openai_beta", "gemini"}
    assert client_codec(meta("openai_ga")).dialect == "openai_ga"
    assert client_codec(meta("openai_beta")).dialect == "openai_beta"
    assert client_codec(meta("gemini")).dialect == "gemini"
    with pytest.raises(ValueError, match="no client codec"):
        client_codec(meta("klingon"))


def test_audio_held_by_the_resampler_at_barge_in_is_not_played_later() -> None:
    codec = make(False)
    pcm1, pcm2 = audio.tone(400, 300, 16000), audio.tone(800, 200, 16000)
    codec.encode_all(
        *(
            ev.OutputAudio(response_id="r1", item_id="a1", pcm=pcm1[i : i + 640], rate=16000)
            for i in range(0, len(pcm1), 640)
        ),
        ev.Interrupted(response_id="r1"),
        ev.ResponseDone(response_id="r1", status="cancelled", reason="turn_detected"),
    )
    frames = codec.encode_all(
        *(
            ev.OutputAudio(response_id="r2", item_id="a2", pcm=pcm2[i : i + 640], rate=16000)
            for i in range(0, len(pcm2), 640)
        ),
        ev.ResponseDone(response_id="r2"),
    )
    pcm = b"".join(base64.b64decode(f["delta"]) for f in frames if f["type"] == "response.output_audio.delta")
    assert abs(len(pcm) - 200 * 48) <= 96  # 200 ms at 24 kHz: nothing left over from r1


def test_wire_head_repr_elides_audio() -> None:
    from shared.codecs.openai_client import _HEAD

    head = _HEAD.decode(b'{"type":"input_audio_buffer.append","audio":"QUFBQUFB"}')
    assert "QUFB" not in repr(head) and "<8 chars>" in repr(head)


# --------------------------------------------------------------------------------------------------
# Every Down event has a row; state echoed as the real server does (issue 10)


def test_every_canonical_down_event_has_a_row() -> None:
    assert set(OpenAIClientCodec._OUTBOUND) == set(ev.DOWN_TYPES)
    # the deliberate silences are explicit (None), and nothing else is silent
    assert {t for t, h in OpenAIClientCodec._OUTBOUND.items() if h is None} == {ev.GoAway, ev.ToolCallCancelled}


@DIALECTS
def test_response_metadata_is_echoed_in_created_and_done(beta: bool) -> None:
    codec = make(beta)
    codec.feed(json.dumps({"type": "response.create", "response": {"metadata": {"client_event_id": "lk_7"}}}))
    frames = codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputText(response_id="r1", item_id="it1", delta="ok"),
        ev.ResponseDone(response_id="r1"),
    )
    created, done = frames[0], frames[-1]
    assert created["type"] == "response.created" and done["type"] == "response.done"
    assert created["response"]["metadata"] == done["response"]["metadata"] == {"client_event_id": "lk_7"}
    codec.feed('{"type":"response.create"}')
    assert codec.encode_all(ev.ResponseStarted(response_id="r2"))[0]["response"]["metadata"] is None


@DIALECTS
def test_previous_item_id_is_null_at_the_root(beta: bool) -> None:
    codec = make(beta)
    frames = codec.encode_all(ev.InputCommitted(item_id="item_u"))
    assert [f["previous_item_id"] for f in frames] == [None] * len(frames)
    out = codec.feed(
        json.dumps(
            {
                "type": "conversation.item.create",
                "previous_item_id": "root",
                "item": {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
            }
        )
    )
    assert json.loads(out.wire[0])["previous_item_id"] is None
    assert out.events[0].previous_item_id == "root"  # the provider still inserts it at the start


@DIALECTS
def test_retrieve_of_an_item_still_streaming_answers_with_its_current_state(beta: bool) -> None:
    n = NAMES[beta]
    codec = make(beta)
    codec.encode_all(
        ev.ResponseStarted(response_id="r1"),
        ev.OutputTranscript(response_id="r1", item_id="it1", delta="Once upon"),
    )
    codec.feed('{"type":"conversation.item.retrieve","item_id":"it1"}')
    item = codec.frames[-1]["item"]
    assert codec.frames[-1]["type"] == "conversation.item.retrieved"
    assert (item["status"], item["content"]) == ("in_progress", [{"type": n["item_audio"], "transcript": "Once upon"}])


@DIALECTS
def test_truncate_of_an_item_still_streaming_is_acked_and_forwarded(beta: bool) -> None:
    codec = make(beta)
    codec.encode_all(ev.OutputAudio(response_id="r1", item_id="it1", pcm=b"\1\0" * 2400, rate=24_000))
    out = codec.feed('{"type":"conversation.item.truncate","item_id":"it1","content_index":0,"audio_end_ms":40}')
    assert out.events == [ev.ItemTruncate(item_id="it1", content_index=0, audio_end_ms=40)]
    assert codec.frames[-1]["type"] == "conversation.item.truncated" and errors(out) == []


@DIALECTS
def test_content_parts_say_audio_and_text_in_both_dialects(beta: bool) -> None:
    codec = make(beta)
    frames = codec.encode_all(
        ev.OutputTranscript(response_id="r1", item_id="a", delta="x"),
        ev.OutputText(response_id="r1", item_id="b", delta="y"),
        ev.ResponseDone(response_id="r1"),
    )
    parts = [f["part"]["type"] for f in frames if f["type"].startswith("response.content_part.")]
    assert parts == ["audio", "text", "audio", "text"]


# --------------------------------------------------------------------------------------------------
# Notices: approximate or ignore, count, log once, rs.notice only when asked (issue 10)


def _notice_count(code: str, param: str) -> float:
    return NOTICES.labels(code, param)._value.get()  # type: ignore[attr-defined]


@DIALECTS
def test_a_per_response_option_equal_to_the_sessions_is_simply_the_session(beta: bool) -> None:
    codec = make(beta)
    same = {"modalities": ["text", "audio"], "voice": "alloy"} if beta else {"output_modalities": ["audio"]}
    out = codec.feed(json.dumps({"type": "response.create", "response": same}))
    assert out.events == [ev.ResponseCreate()] and out.wire == []
    other = {"modalities": ["text"]} if beta else {"output_modalities": ["text"]}
    (create,) = codec.feed(json.dumps({"type": "response.create", "response": other})).events
    assert create.options == ev.ResponseOptions(output_modalities=["text"])


@pytest.mark.parametrize("notices", [False, True], ids=["quiet", "rs_notices"])
def test_unhonoured_fields_are_counted_and_noticed_only_when_asked(notices: bool) -> None:
    codec = make(False, notices=notices)
    param = "response.audio.output.format"
    before = _notice_count("unsupported_field", param)
    response = {"audio": {"output": {"format": {"type": "audio/pcmu"}}}}
    frame = json.dumps({"type": "response.create", "response": response})
    first, second = codec.feed(frame), codec.feed(frame)
    assert errors(first) == errors(second) == []
    assert _notice_count("unsupported_field", param) == before + 2  # counted every time
    shown = [json.loads(f) for f in first.wire + second.wire]
    if notices:  # once per session
        assert [(f["type"], f["code"], f["param"]) for f in shown] == [("rs.notice", "unsupported_field", param)]
    else:
        assert shown == []
    provider = codec.encode(ev.Notice(code="unsupported_field", message="no", param="transcription_model"))
    again = codec.encode(ev.Notice(code="unsupported_field", message="no", param="transcription_model"))
    assert [json.loads(f)["param"] for f in provider.wire + again.wire] == (["transcription_model"] if notices else [])
    assert codec.encode(ev.Notice(code="reconnect_required", message="r")).wire == []


# --------------------------------------------------------------------------------------------------
# Which provider serves the session (issue 10 item 4)


@DIALECTS
def test_the_session_names_its_provider_and_the_model_serving_it(beta: bool) -> None:
    codec = make(beta, model="gpt-realtime")
    created = json.loads(codec.open().wire[0])
    assert created["session"]["rs"] == {"provider": "openai"}
    codec.encode(ev.SessionReady(provider="gemini", model="gemini-live-2.5-flash"))
    updated = json.loads(codec.feed(session_update(beta, instructions="x")).wire[0])
    assert updated["session"]["rs"] == {"provider": "gemini", "model": "gemini-live-2.5-flash"}
    # GA's session.model is free text; beta's SDK type lists OpenAI models only
    assert updated["session"]["model"] == ("gpt-realtime" if beta else "gemini-live-2.5-flash")
    sdk_type = BetaSessionCreated if beta else GASessionCreated
    parsed = sdk_type.model_validate(created)  # the SDK's own type takes the extra field
    assert (parsed.session.model_extra or {})["rs"] == {"provider": "openai"}


# --------------------------------------------------------------------------------------------------
# rs.switch / Switched (issue 11)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ('{"type":"rs.switch","provider":"GEMINI","when":"now"}', ev.SwitchRequest(provider="gemini", when="now")),
        ('{"type":"rs.switch","provider":"openai"}', ev.SwitchRequest(provider="openai", when="turn_end")),
        ('{"type":"rs.switch","provider":"Gemini","when":"turn_end"}', ev.SwitchRequest(provider="gemini")),
    ],
)
@DIALECTS
def test_rs_switch_becomes_a_switch_request(beta: bool, frame: str, expected: ev.SwitchRequest) -> None:
    out = make(beta).feed(frame)
    assert out.events == [expected] and out.wire == []


@pytest.mark.parametrize(
    ("frame", "param"),
    [
        ('{"type":"rs.switch","provider":"MARS"}', "provider"),
        ('{"type":"rs.switch","provider":7}', "provider"),
        ('{"type":"rs.switch"}', "provider"),
        ('{"type":"rs.switch","provider":"GEMINI","when":"later"}', "when"),
        ('{"type":"rs.switch","provider":"GEMINI","now":true}', "now"),
    ],
)
def test_a_malformed_rs_switch_is_an_invalid_request_error(frame: str, param: str) -> None:
    out = make(False).feed(frame)
    (err,) = errors(out)
    assert (err["type"], err["param"]) == ("invalid_request_error", param) and out.events == []


@pytest.mark.parametrize("seed", [False, True], ids=["openai-url", "seed-url"])
@DIALECTS
def test_switched_is_announced_in_the_dialect(beta: bool, seed: bool) -> None:
    codec = make(beta, seed=seed)
    out = codec.encode(ev.Switched(from_provider="openai", to_provider="gemini", reason="manual", gap_ms=120))
    frames = [json.loads(f) for f in out.wire]
    expected: list[dict[str, Any]] = [{"type": "switch", "name": "GEMINI"}] if seed else []
    expected.append({"type": "rs.switched", "from": "openai", "to": "gemini", "reason": "manual", "gap_ms": 120})
    assert [{k: v for k, v in f.items() if k != "event_id"} for f in frames] == expected
    # the SDK connection parses unknown event types without raising, keeping their type
    parse = (BetaConnection if beta else GAConnection).parse_event
    assert [parse(None, f).type for f in out.wire] == [f["type"] for f in frames]  # type: ignore[arg-type]
    updated = json.loads(codec.feed(session_update(beta, instructions="x")).wire[0])
    assert updated["session"]["rs"] == {"provider": "gemini"}
