"""The providers' ``append_history`` (a make-before-break cutover adds the last turn's items to an upstream
prepared earlier) and the OpenAI session length setting. Literal inputs, no I/O."""

from __future__ import annotations

import base64
import json

from shared import events as ev
from shared.config import load_config
from shared.providers import AppendsHistory
from shared.providers.gemini import GeminiProvider
from shared.providers.openai import DEFAULT_MAX_SESSION_S, OpenAIProvider
from shared.session import SessionMeta

META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="openai_ga", provider="openai")
ITEMS: list[ev.Item] = [
    ev.Message(id="u2", role="user", content=[ev.TextContent(text="two")]),
    ev.Message(id="a2", role="assistant", content=[ev.AudioContent(transcript="turn 2: two")]),
]


def test_openai_appends_one_item_create_per_item() -> None:
    codec = OpenAIProvider({}).codec(META, "gpt-realtime")
    codec.connect(ev.SessionConfig(), [])
    assert isinstance(codec, AppendsHistory)
    out = codec.append_history(ITEMS)
    frames = [json.loads(f) for f in out.wire]
    assert [f["type"] for f in frames] == ["conversation.item.create"] * 2
    assert [f["item"]["role"] for f in frames] == ["user", "assistant"]
    assert all("previous_item_id" not in f for f in frames)  # appended at the end
    assert out.events == []


def test_gemini_appends_context_without_asking_an_answer_after_setup_complete() -> None:
    codec = GeminiProvider({}).codec(META, "gemini-live-2.5-flash-preview")
    codec.connect(ev.SessionConfig(), [])
    assert isinstance(codec, AppendsHistory)
    assert codec.append_history(ITEMS).wire == []  # held: Gemini wants its setup alone first
    released = codec.feed(json.dumps({"setupComplete": {}}))
    content = [json.loads(f)["clientContent"] for f in released.wire]
    assert content == [{"turns": [{"role": "user", "parts": [{"text": "two"}]},
                                  {"role": "model", "parts": [{"text": "turn 2: two"}]}], "turnComplete": False}]
    assert codec.append_history([]).wire == []


def test_openai_session_length_is_recycled_before_the_60_minute_cap() -> None:
    assert OpenAIProvider({}).max_session_s == DEFAULT_MAX_SESSION_S < 3_600
    config = load_config(env={"RS_OPENAI_MAX_SESSION_S": "2.5"}, dotenv=None)
    assert OpenAIProvider(config.provider_settings()).max_session_s == 2.5
    assert GeminiProvider({}).max_session_s is None  # Gemini says goAway itself


SPOKEN = ev.Message(id="u3", role="user", content=[ev.AudioContent(pcm=b"\x01\x00" * 2_400, rate=24_000)])


def test_openai_restores_a_spoken_turn_without_transcript_as_its_audio() -> None:
    codec = OpenAIProvider({}).codec(META, "gpt-realtime")
    out = codec.connect(ev.SessionConfig(), [*ITEMS, SPOKEN])
    frames = [json.loads(f) for f in out.wire if json.loads(f)["type"] == "conversation.item.create"]
    part = frames[-1]["item"]["content"]
    assert [p["type"] for p in part] == ["input_audio"]
    assert len(base64.b64decode(part[0]["audio"])) == 4_800  # 0.1 s at OpenAI's 24 kHz
    assert [e for e in out.events if isinstance(e, ev.Notice)] == []  # nothing skipped


def test_gemini_restores_a_spoken_turn_without_transcript_as_inline_audio() -> None:
    codec = GeminiProvider({}).codec(META, "gemini-live-2.5-flash-preview")
    codec.connect(ev.SessionConfig(), [])
    codec.append_history([*ITEMS, SPOKEN])
    released = codec.feed(json.dumps({"setupComplete": {}}))
    (turns,) = [json.loads(f)["clientContent"]["turns"] for f in released.wire]
    audio = turns[-1]["parts"][-1]["inlineData"]
    assert turns[-1]["role"] == "user" and audio["mimeType"] == "audio/pcm;rate=16000"
    assert abs(len(base64.b64decode(audio["data"])) - 3_200) <= 64  # 0.1 s at Gemini's 16 kHz


def test_without_its_audio_an_untranscribed_turn_is_still_skipped() -> None:
    codec = OpenAIProvider({}).codec(META, "gpt-realtime")
    out = codec.connect(ev.SessionConfig(), [ev.Message(id="u4", role="user", content=[ev.AudioContent()])])
    assert [e.code for e in out.events if isinstance(e, ev.Notice)] == ["history_item_skipped"]
