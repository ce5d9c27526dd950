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


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
def test_provider_trouble_is_a_server_error_in_words(dialect: Dialect) -> None:
    from shared import events as ev

    codec = _codec(dialect)
    trouble = ev.ProviderError(code="provider_reconnect_failed", message="openai unavailable (gaierror)")
    [frame] = codec.encode(trouble).wire
    error = json.loads(frame)["error"]
    assert error["type"] == "server_error"  # not the client's fault
    assert error["message"] == "openai unavailable (the provider's host name could not be resolved)"
    [frame] = codec.encode(ev.ProviderError(
        code="provider_unavailable", message="gemini unavailable (ConnectionRefusedError)", fatal=True)).wire
    assert json.loads(frame)["error"]["message"] == "gemini unavailable (the provider refused the connection)"
    [frame] = codec.encode(ev.ProviderError(code="provider_unavailable", message="x (BrandNewError)", fatal=True)).wire
    assert json.loads(frame)["error"]["message"] == "x (a network error reaching the provider)"


@pytest.mark.parametrize("dialect", ["openai_ga", "openai_beta"])
def test_a_client_error_from_the_provider_stays_invalid_request(dialect: Dialect) -> None:
    from shared import events as ev

    [frame] = _codec(dialect).encode(ev.ProviderError(
        code="response_cancel_not_active", message="there is no response in progress to cancel")).wire
    error = json.loads(frame)["error"]
    assert (error["type"], error["message"]) == ("invalid_request_error", "there is no response in progress to cancel")


def test_gemini_provider_trouble_closes_1011() -> None:
    from shared import events as ev

    out = _codec("gemini").encode(ev.ProviderError(code="provider_reconnect_failed", message="(gaierror)"))
    assert out.close is not None and out.close.code == 1011 and "gaierror" not in out.close.reason
