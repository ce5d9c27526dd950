"""The OpenAI Realtime response lifecycle, canonical Down events -> server events. Sans-I/O.

One :class:`ResponseAssembler` per client codec. It turns the canonical output stream (``ResponseStarted``,
``OutputAudio``/``OutputTranscript``/``OutputText``, ``ToolCall``, ``OutputDone``, ``ResponseDone``,
``Interrupted``) into the server's full skeleton: ``response.created``, ``response.output_item.added``,
``conversation.item.added``, ``response.content_part.added``, the deltas, their ``*.done``, the items'
``*.done`` and ``response.done``, with the ids the client sees (``output_index``, ``content_index``).

Every response is in one :class:`Phase`; what an event does to it is one row of :data:`TRANSITIONS`
(phase x event kind -> steps, next phase). The dialect (GA or beta) is data (:class:`ResponseNames`);
the session-dependent parts (frames, item rendering, the response object, audio encoding) come from
the codec through :class:`Host`. Never reads the clock, never does I/O.
"""

from __future__ import annotations

import enum
import logging
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import msgspec

from shared import events as ev
from shared.codecs.tables import usage_to_openai

__all__ = ["TRANSITIONS", "Host", "Phase", "ResponseAssembler", "ResponseNames"]

log = logging.getLogger(__name__)

JSON = Any  # a decoded JSON value
MAX_FINISHED = 64  # finished response ids remembered so that late events are dropped, not re-announced

# status_details.reason values the SDK types accept; anything else is left out of the details.
_STATUS_REASONS = frozenset({"turn_detected", "client_cancelled", "max_output_tokens", "content_filter"})


@dataclass(frozen=True, slots=True)
class ResponseNames:
    """What differs between GA and beta in a response's events: names and two shapes, as data."""

    item_added: str
    item_done: str | None  # GA finalises items with conversation.item.done; beta has none
    audio_delta: str
    audio_done: str
    transcript_delta: str
    transcript_done: str
    text_delta: str
    text_done: str
    name_on_args_done: bool  # GA response.function_call_arguments.done carries the name
    # canonical content kind -> part.type of response.content_part.added/.done. The real servers send
    # "audio"/"text" there in both dialects (the output_* spellings appear only inside items).
    content_part_types: Mapping[str, str]


class Host(Protocol):
    """What the assembler needs from its codec (the codec owns the session state and the item store)."""

    def frame(self, type_: str, **fields: JSON) -> str: ...

    def render_item(self, item: ev.Item, status: str | None = None) -> dict[str, JSON]: ...

    def remember(self, item: ev.Item) -> None: ...

    def link(self, item_id: str) -> str | None:
        """Make ``item_id`` the conversation's last item; return the item before it (None at the root)."""
        ...

    def response_fields(self) -> dict[str, JSON]:
        """The session-dependent fields of the response object (modalities, voice, format...)."""
        ...

    def encode_audio(self, pcm: bytes, rate: int) -> str | None:
        """Base64 audio in the client's output format; None while the resampler holds it back."""
        ...

    def flush_audio(self) -> str | None: ...

    def reset_audio(self) -> None: ...


class Phase(enum.Enum):
    ABSENT = "absent"  # never seen (or forgotten): its first event announces it
    OPEN = "open"
    CUT = "cut"  # the user barged in: output after the cut is not played, the rest still closes
    DONE = "done"  # response.done went out: anything later is late and dropped


# Event kinds the table knows (canonical Down type -> kind).
KINDS: Mapping[type[ev.Event], str] = MappingProxyType(
    {
        ev.ResponseStarted: "started",
        ev.OutputAudio: "audio",
        ev.OutputTranscript: "transcript",
        ev.OutputText: "text",
        ev.ToolCall: "call",
        ev.OutputDone: "output_done",
        ev.ResponseDone: "done",
        ev.Interrupted: "interrupted",
    }
)

Row = tuple[tuple[str, ...], Phase]  # (steps, in order; next phase)

_STREAM = ("audio", "transcript", "text")


def _rows() -> dict[tuple[Phase, str], Row]:
    rows: dict[tuple[Phase, str], Row] = {
        (Phase.ABSENT, "started"): (("announce",), Phase.OPEN),
        (Phase.OPEN, "started"): ((), Phase.OPEN),
        (Phase.CUT, "started"): ((), Phase.CUT),
        (Phase.ABSENT, "call"): (("announce", "call"), Phase.OPEN),
        (Phase.OPEN, "call"): (("call",), Phase.OPEN),
        (Phase.CUT, "call"): (("call",), Phase.CUT),  # a whole call is not "played": it still closes
        (Phase.ABSENT, "output_done"): (("announce", "output_done"), Phase.OPEN),
        (Phase.OPEN, "output_done"): (("output_done",), Phase.OPEN),
        (Phase.CUT, "output_done"): (("output_done",), Phase.CUT),
        (Phase.ABSENT, "done"): (("announce", "finish"), Phase.DONE),
        (Phase.OPEN, "done"): (("finish",), Phase.DONE),
        (Phase.CUT, "done"): (("finish",), Phase.DONE),
        (Phase.ABSENT, "interrupted"): ((), Phase.ABSENT),  # nothing of it was sent: nothing to cut
        (Phase.OPEN, "interrupted"): (("cut",), Phase.CUT),
        (Phase.CUT, "interrupted"): ((), Phase.CUT),
    }
    for kind in _STREAM:
        rows[(Phase.ABSENT, kind)] = (("announce", kind), Phase.OPEN)
        rows[(Phase.OPEN, kind)] = ((kind,), Phase.OPEN)
        rows[(Phase.CUT, kind)] = ((), Phase.CUT)  # barge-in: output after the cut is not played
    for kind in set(KINDS.values()):
        rows[(Phase.DONE, kind)] = (("late",), Phase.DONE)
    return rows


TRANSITIONS: Mapping[tuple[Phase, str], Row] = MappingProxyType(_rows())


@dataclass(slots=True)
class _Part:
    index: int
    kind: str  # "audio" | "text"
    chunks: list[str] = field(default_factory=list)  # transcript or text deltas so far


@dataclass(slots=True)
class _OutItem:
    item_id: str
    output_index: int
    kind: str  # "message" | "function_call"
    previous_item_id: str | None
    parts: dict[str, _Part] = field(default_factory=dict)  # by kind: one part per kind per item
    call: ev.FunctionCall | None = None
    args_done: bool = False
    done: bool = False


@dataclass(slots=True)
class _Response:
    id: str
    phase: Phase = Phase.ABSENT
    metadata: dict[str, str] | None = None
    items: dict[str, _OutItem] = field(default_factory=dict)
    output: list[dict[str, JSON]] = field(default_factory=list)  # final wire items, by output_index


class ResponseAssembler:
    """Canonical output events -> OpenAI server events, one response at a time (or several, interleaved).

    ``metadata``: the codec queues each ``response.create``'s ``metadata`` (or None) with
    :meth:`expect`; a response announced by the provider takes the oldest one, so the client finds its
    metadata echoed in ``response.created`` and ``response.done`` as the real server does.
    """

    def __init__(self, host: Host, names: ResponseNames, conversation_id: str) -> None:
        self._host = host
        self._n = names
        self._conversation_id = conversation_id
        self._open: dict[str, _Response] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._expected: list[dict[str, str] | None] = []  # metadata of response.create events, oldest first

    def __len__(self) -> int:
        return len(self._open)

    # -- the codec's side -------------------------------------------------------------------------

    def expect(self, metadata: dict[str, str] | None) -> None:
        self._expected.append(metadata)
        del self._expected[:-16]  # bounded: responses the provider never started must not pile up

    def phase(self, response_id: str) -> Phase:
        if response_id in self._finished:
            return Phase.DONE
        r = self._open.get(response_id)
        return Phase.ABSENT if r is None else r.phase

    def current_item(self, item_id: str) -> ev.Item | None:
        """An output item still streaming, as it stands now (``conversation.item.retrieve``)."""
        for r in self._open.values():
            it = r.items.get(item_id)
            if it is None or it.done:
                continue
            if it.kind == "function_call":
                return it.call or ev.FunctionCall(id=item_id, call_id="", name="", arguments="")
            content: list[ev.Content] = [
                ev.TextContent(text="".join(p.chunks))
                if p.kind == "text"
                else ev.AudioContent(transcript="".join(p.chunks))
                for p in sorted(it.parts.values(), key=lambda p: p.index)
            ]
            return ev.Message(id=item_id, role="assistant", content=content, status="in_progress")
        return None

    def handle(self, event: ev.Event) -> list[str]:
        """One canonical output event -> server frames, by the transition table."""
        kind = KINDS[type(event)]
        rid: str | None = event.response_id  # type: ignore[attr-defined]  # every KINDS event has one
        wire: list[str] = []
        # Interrupted without an id cuts every response in flight
        for target in (rid,) if rid is not None else tuple(self._open):
            self._apply(target, kind, event, wire)
        if kind == "interrupted":  # resampler audio still pending belongs to audio nobody should hear
            self._host.reset_audio()
        return wire

    def _apply(self, rid: str, kind: str, event: ev.Event, wire: list[str]) -> None:
        r = self._open.get(rid)  # the hot path: an open response
        if r is None:
            r = _Response(id=rid, phase=Phase.DONE if rid in self._finished else Phase.ABSENT)
        steps, next_phase = _ROWS[(r.phase, kind)]
        for step in steps:
            step(self, r, event, wire)
        if next_phase is not r.phase:
            r.phase = next_phase
            if next_phase is Phase.OPEN or next_phase is Phase.CUT:
                self._open[rid] = r

    # -- steps --------------------------------------------------------------------------------------

    def _announce(self, r: _Response, event: ev.Event, wire: list[str]) -> None:
        r.metadata = self._expected.pop(0) if self._expected else None
        wire.append(self._host.frame("response.created", response=self._response_object(r, "in_progress")))

    def _late(self, r: _Response, event: ev.Event, wire: list[str]) -> None:
        log.debug("late event for a finished response: %s", type(event).__name__)

    def _cut(self, r: _Response, event: ev.Event, wire: list[str]) -> None:
        pass  # the phase says it all; the client learns from speech_started and the cancelled response.done

    def _stream_audio(self, r: _Response, e: ev.OutputAudio, wire: list[str]) -> None:
        it = self._message_item(r, e.item_id, wire)
        if it.done:
            return
        part = self._part(r, it, "audio", wire)
        data = self._host.encode_audio(e.pcm, e.rate)
        if data:  # the resampler may hold a few ms back; it comes out with later chunks or the flush
            wire.append(self._host.frame(self._n.audio_delta, **self._part_fields(r, it, part), delta=data))

    def _stream_transcript(self, r: _Response, e: ev.OutputTranscript, wire: list[str]) -> None:
        self._stream_text_of(r, e.item_id, "audio", self._n.transcript_delta, e.delta, wire)

    def _stream_text(self, r: _Response, e: ev.OutputText, wire: list[str]) -> None:
        self._stream_text_of(r, e.item_id, "text", self._n.text_delta, e.delta, wire)

    def _stream_text_of(self, r: _Response, item_id: str, kind: str, type_: str, delta: str, wire: list[str]) -> None:
        it = self._message_item(r, item_id, wire)
        if it.done:
            return
        part = self._part(r, it, kind, wire)
        part.chunks.append(delta)
        wire.append(self._host.frame(type_, **self._part_fields(r, it, part), delta=delta))

    def _tool_call(self, r: _Response, e: ev.ToolCall, wire: list[str]) -> None:
        call = ev.FunctionCall(id=e.item_id, call_id=e.call_id, name=e.name, arguments=e.arguments)
        self._call_item(r, call, wire)

    def _output_done(self, r: _Response, e: ev.OutputDone, wire: list[str]) -> None:
        item = e.item
        if isinstance(item, ev.FunctionCall):
            it = self._call_item(r, item, wire)
            if not it.done:
                self._finish_item(r, it, item, "completed", wire)
        elif isinstance(item, ev.Message):
            it = r.items.get(item.id) or self._message_item(r, item.id, wire)
            if not it.done:
                self._close_message(r, it, item, item.status or "completed", wire)
        else:  # a FunctionCallOutput is never model output; nothing in the dialect carries it here
            log.warning("unexpected output item kind")

    def _finish(self, r: _Response, e: ev.ResponseDone, wire: list[str]) -> None:
        item_status = "completed" if e.status == "completed" else "incomplete"
        for it in list(r.items.values()):  # never leave an item open: close it with what we have
            if it.done:
                continue
            if it.kind == "message":
                self._close_message(r, it, None, item_status, wire)
            elif it.call is not None:
                self._finish_item(r, it, it.call, item_status, wire)
        r.output.sort(key=lambda item: r.items[item["id"]].output_index)
        details: JSON = None
        if e.status == "failed":
            details = {"type": "failed", "error": {"type": "server_error", "code": e.reason or "response_failed"}}
        elif e.status != "completed":
            details = {"type": e.status}
            if e.reason in _STATUS_REASONS:
                details["reason"] = e.reason
        usage = usage_to_openai(e.usage) if e.usage is not None else None
        response = self._response_object(r, e.status, status_details=details, usage=usage)
        wire.append(self._host.frame("response.done", response=response))
        self._open.pop(r.id, None)
        self._finished[r.id] = None
        while len(self._finished) > MAX_FINISHED:
            self._finished.popitem(last=False)

    # -- building blocks ----------------------------------------------------------------------------

    def _response_object(self, r: _Response, status: str, **extra: JSON) -> dict[str, JSON]:
        obj: dict[str, JSON] = {
            "id": r.id,
            "object": "realtime.response",
            "status": status,
            "status_details": None,
            "output": list(r.output),
            "conversation_id": self._conversation_id,
            "metadata": r.metadata,
            "usage": None,
        }
        return obj | self._host.response_fields() | extra

    def _open_item(
        self, r: _Response, item_id: str, kind: str, wire: list[str], wire_item: dict[str, JSON]
    ) -> _OutItem:
        prev = self._host.link(item_id)
        it = r.items[item_id] = _OutItem(item_id=item_id, output_index=len(r.items), kind=kind, previous_item_id=prev)
        wire.append(
            self._host.frame(
                "response.output_item.added", response_id=r.id, output_index=it.output_index, item=wire_item
            )
        )
        wire.append(self._host.frame(self._n.item_added, previous_item_id=prev, item=wire_item))
        return it

    def _message_item(self, r: _Response, item_id: str, wire: list[str]) -> _OutItem:
        it = r.items.get(item_id)
        if it is None:
            empty = ev.Message(id=item_id, role="assistant", content=[], status="in_progress")
            it = self._open_item(r, item_id, "message", wire, self._host.render_item(empty, "in_progress"))
        return it

    def _part_fields(self, r: _Response, it: _OutItem, part: _Part) -> dict[str, JSON]:
        return {
            "response_id": r.id,
            "item_id": it.item_id,
            "output_index": it.output_index,
            "content_index": part.index,
        }

    def _wire_part(self, kind: str, text: str) -> dict[str, JSON]:
        wire_type = self._n.content_part_types[kind]
        return {"type": wire_type, "transcript": text} if kind == "audio" else {"type": wire_type, "text": text}

    def _part(self, r: _Response, it: _OutItem, kind: str, wire: list[str]) -> _Part:
        part = it.parts.get(kind)
        if part is None:
            part = it.parts[kind] = _Part(index=len(it.parts), kind=kind)
            fields = self._part_fields(r, it, part)
            wire.append(self._host.frame("response.content_part.added", **fields, part=self._wire_part(kind, "")))
        return part

    def _close_part(
        self, r: _Response, it: _OutItem, part: _Part, final: str | None, status: str, wire: list[str]
    ) -> str:
        text = final if final is not None else "".join(part.chunks)
        fields = self._part_fields(r, it, part)
        if part.kind == "audio":
            if status == "completed":
                tail = self._host.flush_audio()
                if tail:
                    wire.append(self._host.frame(self._n.audio_delta, **fields, delta=tail))
            else:  # cut short: what the resampler still holds belongs to audio nobody should hear
                self._host.reset_audio()
            wire.append(self._host.frame(self._n.audio_done, **fields))
            wire.append(self._host.frame(self._n.transcript_done, **fields, transcript=text))
        else:
            wire.append(self._host.frame(self._n.text_done, **fields, text=text))
        wire.append(self._host.frame("response.content_part.done", **fields, part=self._wire_part(part.kind, text)))
        return text

    def _close_message(
        self, r: _Response, it: _OutItem, final: ev.Message | None, status: str, wire: list[str]
    ) -> None:
        finals: dict[str, str] = {}
        for c in final.content if final is not None else ():
            kind = "text" if isinstance(c, ev.TextContent) else "audio"
            text = c.text if isinstance(c, ev.TextContent) else c.transcript
            if text is not None and kind not in finals:
                finals[kind] = text
        # Content the provider only gave in the final item: open it and send it as one delta, so a
        # client that builds text from deltas sees it too.
        for kind, text in finals.items():
            if kind not in it.parts:
                part = self._part(r, it, kind, wire)
                delta_type = self._n.text_delta if kind == "text" else self._n.transcript_delta
                wire.append(self._host.frame(delta_type, **self._part_fields(r, it, part), delta=text))
        content: list[ev.Content] = []
        for part in sorted(it.parts.values(), key=lambda p: p.index):
            text = self._close_part(r, it, part, finals.get(part.kind), status, wire)
            content.append(ev.TextContent(text=text) if part.kind == "text" else ev.AudioContent(transcript=text))
        item = ev.Message(id=it.item_id, role="assistant", content=content, status=status)  # type: ignore[arg-type]
        self._finish_item(r, it, item, status, wire)

    def _finish_item(self, r: _Response, it: _OutItem, item: ev.Item, status: str, wire: list[str]) -> None:
        it.done = True
        wire_item = self._host.render_item(item, status)
        if self._n.item_done is not None:
            wire.append(self._host.frame(self._n.item_done, previous_item_id=it.previous_item_id, item=wire_item))
        wire.append(
            self._host.frame(
                "response.output_item.done", response_id=r.id, output_index=it.output_index, item=wire_item
            )
        )
        r.output.append(wire_item)
        self._host.remember(item)

    def _call_item(self, r: _Response, call: ev.FunctionCall, wire: list[str]) -> _OutItem:
        it = r.items.get(call.id)
        if it is None:
            added = self._host.render_item(msgspec.structs.replace(call, arguments=""), "in_progress")
            it = self._open_item(r, call.id, "function_call", wire, added)
        if not it.args_done:  # canonical calls are whole: one delta with all arguments, then done
            it.args_done = True
            it.call = call
            common = {"response_id": r.id, "item_id": call.id, "output_index": it.output_index, "call_id": call.call_id}
            wire.append(self._host.frame("response.function_call_arguments.delta", **common, delta=call.arguments))
            named = {"name": call.name} if self._n.name_on_args_done else {}
            wire.append(
                self._host.frame("response.function_call_arguments.done", **common, **named, arguments=call.arguments)
            )
        return it


_Step = Any  # (ResponseAssembler, _Response, event, wire) -> None; typed per step above
_STEPS: Mapping[str, _Step] = MappingProxyType(
    {
        "announce": ResponseAssembler._announce,
        "late": ResponseAssembler._late,
        "cut": ResponseAssembler._cut,
        "audio": ResponseAssembler._stream_audio,
        "transcript": ResponseAssembler._stream_transcript,
        "text": ResponseAssembler._stream_text,
        "call": ResponseAssembler._tool_call,
        "output_done": ResponseAssembler._output_done,
        "finish": ResponseAssembler._finish,
    }
)

# TRANSITIONS with the steps resolved to functions once (the table stays the readable, tested form).
_ROWS: Mapping[tuple[Phase, str], tuple[tuple[_Step, ...], Phase]] = MappingProxyType(
    {key: (tuple(_STEPS[name] for name in steps), nxt) for key, (steps, nxt) in TRANSITIONS.items()}
)
