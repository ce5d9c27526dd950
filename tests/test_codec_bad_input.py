"""Client codecs on bad input: what the dialect's real server answers, never an exception."""

from __future__ import annotations

import json

import pytest

from shared.codecs.registry import client_codec
from shared.session import Dialect, SessionMeta

NESTED = b"[" * 100_000 + b"]" * 100_000


def _codec(dialect: Dialect):  # type: ignore[no-untyped-def]
    codec = client_codec(SessionMeta(sid="s", account="a", client_session_id="c", dialect=dialect, provider="openai"))
    codec.open()
    return codec


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
def test_openai_deep_nesting_is_invalid_json(dialect: Dialect) -> None:
    out = _codec(dialect).feed(b'{"type":"session.update","session":' + NESTED + b"}")
    assert out.events == [] and out.close is None
    [frame] = out.wire
    error = json.loads(frame)["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_json")


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
@pytest.mark.parametrize("event", [
    {"type": "conversation.item.truncate", "item_id": "nope", "content_index": 0, "audio_end_ms": 10},
    {"type": "conversation.item.delete", "item_id": "nope"},
])
def test_openai_unknown_item_is_only_an_error(dialect: Dialect, event: dict[str, object]) -> None:
    out = _codec(dialect).feed(json.dumps(event))
    assert out.events == []  # nothing reaches the provider
    [frame] = out.wire  # no success event before the error
    msg = json.loads(frame)
    assert msg["type"] == "error" and msg["error"]["code"] == "item_not_found" and msg["error"]["param"] == "item_id"


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
def test_openai_known_item_delete_is_acknowledged(dialect: Dialect) -> None:
    codec = _codec(dialect)
    create = {"type": "conversation.item.create", "item": {
        "id": "item_a", "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}}
    codec.feed(json.dumps(create))
    out = codec.feed(json.dumps({"type": "conversation.item.delete", "item_id": "item_a"}))
    assert [json.loads(f)["type"] for f in out.wire] == ["conversation.item.deleted"]
    assert len(out.events) == 1


def test_gemini_deep_nesting_closes_1007() -> None:
    out = _codec("gemini").feed(b'{"clientContent":' + NESTED + b"}")
    assert out.close is not None and out.close.code == 1007
