"""Real Gemini Live server traffic (tests/codecs/frames/provider_gemini_real_*.jsonl, each with its source in
its header) through the Gemini provider codec and then, as canonical events, through the Gemini client
codec. Every client frame is validated against google-genai's ``LiveServerMessage`` (unknown fields
forbidden) by :class:`tests.codecs.Checked`; where the real server said something a Gemini client must hear
the same way (usage of a cut turn, no ``turnComplete`` after ``toolCall``), the test compares them.
"""

from __future__ import annotations

import base64
import itertools
import json
from typing import Any

from shared import events as ev
from shared.codecs.gemini_client import GeminiClientCodec
from shared.codecs.gemini_provider import GeminiProviderCodec
from shared.session import SessionMeta
from tests.codecs import Checked, SeqIds, read_frames, validate_gemini

META = SessionMeta(sid="s1", account="acct", client_session_id="c1", dialect="gemini", provider="gemini")
CLIENT_SETUP = json.dumps({"setup": {
    "model": "models/gemini-3.1-flash-live-preview",
    "generationConfig": {"responseModalities": ["AUDIO"]},
    "inputAudioTranscription": {},
    "outputAudioTranscription": {},
}})


def provider(*, ready: bool = True) -> GeminiProviderCodec:
    counter = itertools.count(1)
    codec = GeminiProviderCodec(META, "gemini-3.1-flash-live-preview", id_factory=lambda p: f"{p}_{next(counter)}")
    codec.connect(ev.SessionConfig(input_transcription=True), [])
    if ready:
        codec.feed(b'{"setupComplete":{}}')
    return codec


def client() -> Checked:
    codec = Checked(GeminiClientCodec(META, id_factory=SeqIds()), validate_gemini)
    codec.feed(CLIENT_SETUP)
    return codec


def relay(lines: list[str], up: GeminiProviderCodec, down: Checked) -> list[ev.Event]:
    """Real frames -> provider codec -> client codec (frames validated); returns the canonical events."""
    events: list[ev.Event] = []
    for line in lines:
        out = up.feed(line)
        events += out.events
        for event in out.events:
            down.encode(event)
    return events


def of(events: list[ev.Event], kind: type[ev.Event]) -> list[Any]:
    return [e for e in events if isinstance(e, kind)]


def test_real_barge_in_keeps_the_usage_of_the_cut_turn() -> None:
    lines = read_frames("provider_gemini_real_barge_in.jsonl")
    down = client()
    events = relay(lines, provider(), down)
    usage = ev.Usage(input_tokens=554, output_tokens=19, total_tokens=573, input_text_tokens=553, input_audio_tokens=1)
    (interrupted,) = of(events, ev.Interrupted)
    (done,) = of(events, ev.ResponseDone)
    assert done == ev.ResponseDone(
        response_id=interrupted.response_id, status="cancelled", reason="turn_detected", usage=usage
    )
    assert events.index(interrupted) < events.index(done)
    # the Gemini client hears what the real server said: audio, interrupted, turnComplete with the usage
    assert [list(f) for f in down.frames] == [["setupComplete"], ["serverContent"], ["serverContent"],
                                               ["serverContent", "usageMetadata"]]
    audio_in = base64.b64decode(json.loads(lines[0])["serverContent"]["modelTurn"]["parts"][0]["inlineData"]["data"])
    audio_out = base64.b64decode(down.frames[1]["serverContent"]["modelTurn"]["parts"][0]["inlineData"]["data"])
    assert audio_out == audio_in  # 24 kHz in, 24 kHz out: untouched
    assert down.frames[2] == {"serverContent": {"interrupted": True}}
    assert down.frames[3] == {
        "serverContent": {"turnComplete": True},
        "usageMetadata": {
            "promptTokenCount": 554,
            "responseTokenCount": 19,
            "totalTokenCount": 573,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 553}, {"modality": "AUDIO", "tokenCount": 1}],
        },
    }


def test_real_31_turns_usage_and_tool_call_without_id() -> None:
    lines = read_frames("provider_gemini_real_31_turns.jsonl")
    call_at = next(i for i, line in enumerate(lines) if line.startswith('{"toolCall"'))
    up, down = provider(ready=False), client()
    events = relay(lines[: call_at + 1], up, down)
    (call,) = of(events, ev.ToolCall)
    assert call.name == "send_directive" and json.loads(call.arguments) == {
        "instruction": "Vete a la sección de Canvas en el archivo mic.js y lee la secret phrase definida en el código."
    }
    # the client's result goes back without the id Gemini never sent (it matches by name)
    result = ev.FunctionCallOutput(id="o1", call_id=call.call_id, output='{"result":"ok"}')
    (frame,) = up.encode(ev.ItemCreate(item=result)).wire
    assert json.loads(frame) == {"toolResponse": {"functionResponses": [
        {"name": "send_directive", "response": {"result": "ok"}}
    ]}}
    events += relay(lines[call_at + 1 :], up, down)

    # one response per turn, each with the prompt count sent mid-turn (turnComplete's usageMetadata is {})
    dones = of(events, ev.ResponseDone)
    assert [(d.status, d.usage.input_tokens, d.usage.input_text_tokens) for d in dones] == [
        ("completed", 960, 665), ("completed", 1786, 765), ("completed", 2507, 846), ("completed", 2570, 891)
    ]
    assert [t.text for t in of(events, ev.InputTranscript) if t.final] == [
        "Hola.", "Mmm. ¿Qué opciones tengo?", "¿Podrías ir a Canvas y leerme la secret phrase, por favor?"
    ]
    assert not of(events, ev.Notice)  # nothing in real traffic is unknown to the codec

    # the Gemini client: like the real server, no generationComplete/turnComplete right after toolCall
    keys = [next(iter(f.get("serverContent", {"": 0})), None) or next(iter(f)) for f in down.frames]
    after_call = keys[keys.index("toolCall") + 1 :]
    assert after_call[0] == "usageMetadata" and after_call[1] == "generationComplete"
    assert keys.count("turnComplete") == 3  # turns 1, 2 and the one after the tool result
    assert all(f.get("usageMetadata", {}).get("promptTokenCount") for f in down.frames if "usageMetadata" in f)


def test_real_activity_frames_map_cleanly() -> None:
    lines = read_frames("provider_gemini_real_activity.jsonl")
    up, down = provider(), client()
    events = relay(lines, up, down)
    assert not of(events, ev.Notice)
    (speech,) = of(events, ev.SpeechStarted)
    (stopped,) = of(events, ev.SpeechStopped)
    assert speech.item_id == stopped.item_id
    finals = [t.text for t in of(events, ev.InputTranscript) if t.final]
    assert finals == ["And so, my fellow Americans, ask not what your country"]  # interims are not finals
    # the turnComplete of the empty activity still closes a (silent) response with no usage to speak of
    assert of(events, ev.ResponseDone)[-1].status == "completed"
    assert down.frames[-1]["serverContent"] == {"turnComplete": True}
