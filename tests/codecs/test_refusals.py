"""Refusals in each dialect and the Gemini setup read by the edge (shared/codecs/refusals.py)."""

from __future__ import annotations

import json

import pytest

from shared.codecs.refusals import CLOSE_REASON_MAX_BYTES, GeminiSetup, read_gemini_setup, refusal


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
def test_openai_dialects_get_a_server_error_event_then_1011(dialect: str) -> None:
    end = refusal(dialect, "session_unavailable", "no worker available", event_id="event_1")  # type: ignore[arg-type]
    assert [json.loads(f) for f in end.frames] == [{
        "type": "error",
        "event_id": "event_1",
        "error": {"type": "server_error", "code": "session_unavailable", "message": "no worker available",
                  "param": None, "event_id": None},
    }]
    assert (end.close_code, end.close_reason) == (1011, "no worker available")


def test_gemini_gets_only_the_close() -> None:
    end = refusal("gemini", "session_unavailable", "no worker available", event_id="event_1")
    assert (end.frames, end.close_code, end.close_reason) == ([], 1011, "no worker available")


def test_the_close_reason_fits_a_close_frame_without_a_cut_character() -> None:
    end = refusal("gemini", "x", "é" * 100, event_id="e")
    assert len(end.close_reason.encode()) <= CLOSE_REASON_MAX_BYTES
    assert end.close_reason == "é" * (CLOSE_REASON_MAX_BYTES // 2)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (b'{"setup":{"model":"models/gemini-live-2.5-flash"}}', GeminiSetup("gemini-live-2.5-flash", None)),
        ('{"setup":{"model":"gpt-realtime","sessionResumption":{"handle":"s-9"}}}', GeminiSetup("gpt-realtime", "s-9")),
        (b'{"setup":{"sessionResumption":{}}}', GeminiSetup(None, None)),
        (b'{"setup":{"model":"models/"}}', GeminiSetup(None, None)),
        (b'{"realtimeInput":{}}', GeminiSetup(None, None)),
        (b"not json", GeminiSetup(None, None)),
        (b'{"setup":{"model":7}}', GeminiSetup(None, None)),
    ],
)
def test_read_gemini_setup(frame: bytes | str, expected: GeminiSetup) -> None:
    assert read_gemini_setup(frame) == expected
