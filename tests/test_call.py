"""`rtswitch call`'s dialect table, sans I/O: literal frames in, notes out; the frames a turn sends."""

from __future__ import annotations

import base64
import wave
from pathlib import Path

import pytest

from services.call import DIALECTS, Note, parse_args, read_wav, switch_frame
from shared.audio import dominant_hz, tone

PCM = b"\x01\x00\x02\x00"
B64 = base64.b64encode(PCM).decode()


@pytest.mark.parametrize(("dialect", "frame", "notes"), [
    ("openai", {"type": "response.output_audio.delta", "delta": B64}, [Note("audio", audio=PCM)]),
    ("openai", {"type": "response.audio.delta", "delta": B64}, []),  # a beta name on a GA session: not audio
    ("openai-beta", {"type": "response.audio.delta", "delta": B64}, [Note("audio", audio=PCM)]),
    ("openai", {"type": "response.output_audio_transcript.done", "transcript": "hi"}, [Note("assistant", "hi")]),
    ("openai-beta", {"type": "response.audio_transcript.done", "transcript": "hi"}, [Note("assistant", "hi")]),
    ("openai", {"type": "response.done", "response": {"status": "completed"}}, [Note("done", "response completed")]),
    ("openai", {"type": "response.done", "response": {"status": "failed", "status_details": {"x": 1}}},
     [Note("error", 'response failed: {"x": 1}')]),
    ("openai", {"type": "error", "error": {"code": "provider_unavailable", "message": "gone"}},
     [Note("error", "provider_unavailable: gone")]),
    ("openai", {"type": "error", "error": {"code": "unsupported_field", "param": "voice", "message": "ignored"}},
     [Note("info", "notice unsupported_field voice: ignored")]),
    ("openai", {"type": "error", "error": {"code": "provider_reconnecting", "message": "lost"}},
     [Note("info", "notice provider_reconnecting: lost")]),
    ("openai", {"type": "conversation.item.input_audio_transcription.completed", "transcript": "audio 1.0s"},
     [Note("user", "audio 1.0s")]),
    ("openai", {"type": "rs.switched", "to_provider": "gemini"},
     [Note("switched", '{"type": "rs.switched", "to_provider": "gemini"}')]),
    ("openai", {"type": "response.created"}, []),
    ("gemini", {"setupComplete": {}}, [Note("ready", "setupComplete")]),
    ("gemini", {"serverContent": {"modelTurn": {"parts": [{"inlineData": {"data": B64, "mimeType": "audio/pcm"}}]}}},
     [Note("audio", audio=PCM)]),
    ("gemini", {"serverContent": {"outputTranscription": {"text": "turn "}}}, [Note("assistant", "turn ")]),
    ("gemini", {"serverContent": {"inputTranscription": {"text": "audio 1.0s"}}}, [Note("user", "audio 1.0s")]),
    ("gemini", {"serverContent": {"turnComplete": True}}, [Note("done", "turnComplete")]),
    ("gemini", {"rsSwitched": {"toProvider": "openai"}},
     [Note("switched", '{"rsSwitched": {"toProvider": "openai"}}')]),
])
def test_notes(dialect: str, frame: dict, notes: list[Note]) -> None:
    assert DIALECTS[dialect].notes(frame) == notes


def test_text_turns() -> None:
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
    for name in ("openai", "openai-beta"):
        assert DIALECTS[name].turn("hi", None) == [
            {"type": "conversation.item.create", "item": item}, {"type": "response.create"}]
    assert DIALECTS["gemini"].turn("hi", None) == [
        {"clientContent": {"turns": [{"role": "user", "parts": [{"text": "hi"}]}], "turnComplete": True}}]


def test_audio_turns_are_chunked_and_closed() -> None:
    pcm = bytes(48_000 * 2 + 10)  # 2 s and a bit at 24 kHz
    frames = DIALECTS["openai"].turn(None, pcm)
    assert [f["type"] for f in frames] == ["input_audio_buffer.append"] * 3 + [
        "input_audio_buffer.commit", "response.create"]
    assert b"".join(base64.b64decode(f["audio"]) for f in frames[:3]) == pcm
    frames = DIALECTS["gemini"].turn(None, bytes(32_000 + 2))
    assert frames[0] == {"realtimeInput": {"activityStart": {}}}
    assert frames[-1] == {"realtimeInput": {"activityEnd": {}}}
    assert [f["realtimeInput"]["audio"]["mimeType"] for f in frames[1:-1]] == ["audio/pcm;rate=16000"] * 2


def test_connect_addresses() -> None:
    url, headers = DIALECTS["openai-beta"].connect("ws://h:1", "a:s", "gemini")
    assert url == "ws://h:1/v1/realtime?model=gpt-4o-realtime-preview&rs_core=gemini"
    assert headers == {"Authorization": "Bearer a:s", "OpenAI-Beta": "realtime=v1"}
    url, headers = DIALECTS["gemini"].connect("ws://h:1", "a:s", "openai")
    assert url.startswith("ws://h:1/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent?")
    assert url.endswith("rs_core=openai") and headers == {"x-goog-api-key": "a:s"}


def test_switch_frames_name_the_other_provider() -> None:
    assert switch_frame("openai", "openai") == {"type": "rs.switch", "provider": "gemini"}
    assert switch_frame("openai-beta", "gemini") == {"type": "rs.switch", "provider": "openai"}
    assert switch_frame("gemini", "openai") == {"rsSwitch": {"provider": "gemini"}}


def test_read_wav_mixes_down_and_resamples(tmp_path: Path) -> None:
    mono = tone(300, 500, 44_100)
    stereo = b"".join(mono[i : i + 2] * 2 for i in range(0, len(mono), 2))
    path = tmp_path / "in.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44_100)
        wav.writeframes(stereo)
    pcm = read_wav(path, 16_000)
    assert len(pcm) == pytest.approx(16_000 * 2 // 2, abs=4)
    assert abs(dominant_hz(pcm, 16_000) - 300) < 2


def test_switch_after_must_name_a_turn(capsys: pytest.CaptureFixture[str]) -> None:
    assert parse_args(["a", "b", "--switch-after", "2"]).switch_after == 2
    for bad in ("0", "3"):
        with pytest.raises(SystemExit):
            parse_args(["a", "b", "--switch-after", bad])
        assert "--switch-after must name one of the 2 turn(s)" in capsys.readouterr().err
