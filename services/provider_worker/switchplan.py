"""Make-before-break, sans I/O: when a prepared upstream takes a session over. Time is an argument.

A switch (another provider) or a recycle (a fresh connection to the same one: Gemini ``goAway``, the
OpenAI session length) opens the new upstream while the old one still answers, and cuts over at the turn
end. :class:`SwitchPlan` decides; the worker dials, sends and closes (services/provider_worker/worker.py).

    PREPARING --prepared, idle--> CUTOVER            (cut over at once: nothing is being answered)
    PREPARING --prepared, busy--> READY --turn end--> CUTOVER
    PREPARING / READY --the new one failed--> DONE   (give up: keep the old upstream)
    PREPARING / READY --the old one died----> DONE   (fall back: dial the new provider the old way)
    READY --deadline--> CUTOVER;  PREPARING --deadline--> DONE (fall back)   (a recycle before the cap)
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from services.provider_worker.replay import ends_untranscribed
from shared import events as ev
from shared.store import apply_truncations

__all__ = [
    "TRANSITIONS",
    "Action",
    "OpenRequest",
    "Phase",
    "Signal",
    "SwitchPlan",
    "TurnLog",
    "age_left_s",
    "delta_items",
    "from_own_log",
    "given_ids",
]


class Phase(enum.Enum):
    PREPARING = "preparing"  # the new upstream is being dialled, set up and given the history
    READY = "ready"  # set up, waiting for the old upstream's response to end
    CUTOVER = "cutover"  # being handed the session (the rest of the history, the input), the old one closed
    DONE = "done"  # given up or fallen back: the plan no longer acts


class Signal(enum.Enum):
    PREPARED = "prepared"  # connected, setup and history sent
    PREPARE_FAILED = "prepare_failed"  # could not connect (or set up)
    TURN_END = "turn_end"  # the old upstream's response ended
    NEW_LOST = "new_lost"  # the prepared upstream closed before the cutover
    OLD_LOST = "old_lost"  # the old upstream ended before the cutover
    DEADLINE = "deadline"  # a recycle cannot wait any longer (the provider ends the old one soon)


class Action(enum.Enum):
    WAIT = "wait"
    CUT_OVER = "cut_over"  # hand the session to the prepared upstream now
    GIVE_UP = "give_up"  # close the prepared one; a switch says switch_failed, the session stays
    FALL_BACK = "fall_back"  # close the prepared one; the session is moved break-before-make instead


_P, _S, _A = Phase, Signal, Action
_ANY = (False, True)
# (phase, signal, a response open) -> (next phase, action). What is not here changes nothing (WAIT).
TRANSITIONS: dict[tuple[Phase, Signal, bool], tuple[Phase, Action]] = {
    (_P.PREPARING, _S.PREPARED, False): (_P.CUTOVER, _A.CUT_OVER),
    (_P.PREPARING, _S.PREPARED, True): (_P.READY, _A.WAIT),
    (_P.READY, _S.TURN_END, False): (_P.CUTOVER, _A.CUT_OVER),
    **{(phase, _S.PREPARE_FAILED, busy): (_P.DONE, _A.GIVE_UP) for phase in (_P.PREPARING,) for busy in _ANY},
    **{(phase, _S.NEW_LOST, busy): (_P.DONE, _A.GIVE_UP) for phase in (_P.PREPARING, _P.READY) for busy in _ANY},
    **{(phase, _S.OLD_LOST, busy): (_P.DONE, _A.FALL_BACK) for phase in (_P.PREPARING, _P.READY) for busy in _ANY},
    **{(_P.READY, _S.DEADLINE, busy): (_P.CUTOVER, _A.CUT_OVER) for busy in _ANY},
    **{(_P.PREPARING, _S.DEADLINE, busy): (_P.DONE, _A.FALL_BACK) for busy in _ANY},
}


@dataclass
class SwitchPlan:
    """One make-before-break move of a session's upstream to ``to`` (``recycle``: the same provider).

    ``started_ms``: wall clock of the request. The gap the client hears is counted from the end of the
    turn the cutover waited for (``turn_ended``), or from the cutover when nothing was being answered."""

    to: str
    reason: str
    recycle: bool
    started_ms: int
    phase: Phase = Phase.PREPARING
    turn_end_ms: int | None = None
    cutover_ms: int | None = None

    @property
    def active(self) -> bool:
        return self.phase in (Phase.PREPARING, Phase.READY)

    def turn_ended(self, now_ms: int) -> None:
        """The old upstream's response ended (only the first end after the request counts)."""
        if self.active and self.turn_end_ms is None:
            self.turn_end_ms = now_ms

    def on(self, signal: Signal, *, busy: bool, now_ms: int) -> Action:
        """Apply one signal (``busy``: the old upstream has a response open right now)."""
        if signal is Signal.TURN_END:
            self.turn_ended(now_ms)
        phase, action = TRANSITIONS.get((self.phase, signal, busy), (self.phase, Action.WAIT))
        self.phase = phase
        if action is Action.CUT_OVER:
            self.cutover_ms = now_ms
        return action

    def gap_ms(self, now_ms: int) -> int:
        """What the client heard: from the turn end (else the cutover) to ``now_ms``, the new one ready."""
        start = self.turn_end_ms if self.turn_end_ms is not None else self.cutover_ms
        return max(0, now_ms - start) if start is not None else 0


TURN_LOG_ITEMS = 128  # items a worker keeps of its sessions' recent conversation (``TurnLog``)


class TurnLog:
    """The conversation items a worker saw itself, most recent ``limit``: what it sent upstream (client
    items) and what the provider said (commits, transcripts, output items), folded like the checkpoint
    folds the log. A make-before-break cutover takes the last turn's items from here instead of waiting
    for the checkpoint to fold them, which is most of the gap the client hears.

    Sound only with a base: a snapshot read after a fold the worker confirmed (``Worker._await_checkpoint``)
    at a ``mark()``; if nothing was evicted since (``covers``), that snapshot plus these items hold the
    whole conversation, each item by its id (a snapshot item is never sent twice: ``delta_items``)."""

    def __init__(self, limit: int = TURN_LOG_ITEMS) -> None:
        self.limit = limit
        self._items: dict[str, ev.Item] = {}  # oldest first
        self._partial: dict[str, str] = {}  # item id -> transcript deltas so far (no final yet)
        self._truncations: dict[str, int] = {}  # item id -> audio_end_ms of the client's truncate
        self.evicted = 0

    def mark(self) -> int:
        return self.evicted

    def covers(self, mark: int | None) -> bool:
        """Nothing left the log since ``mark`` (None: no confirmed base)."""
        return mark is not None and self.evicted == mark

    def items(self) -> list[ev.Item]:
        """The items, a truncated answer cut as the snapshot cuts it (``apply_truncations``)."""
        return apply_truncations(list(self._items.values()), self._truncations)

    def feed(self, event: ev.Event) -> None:
        """One event sent upstream or published down (``_FOLDS``: the ones that change the conversation)."""
        fold = _FOLDS.get(type(event))
        if fold is not None:
            fold(self, event)

    def _put(self, item: ev.Item) -> None:
        self._items[item.id] = item
        while len(self._items) > self.limit:
            oldest = next(iter(self._items))
            del self._items[oldest]
            self._partial.pop(oldest, None)
            self._truncations.pop(oldest, None)
            self.evicted += 1

    def _item_create(self, event: ev.ItemCreate) -> None:
        self._put(event.item)

    def _output_done(self, event: ev.OutputDone) -> None:
        self._put(event.item)

    def _committed(self, event: ev.InputCommitted) -> None:
        if event.item_id not in self._items:  # a richer version (its transcript) is kept
            self._put(ev.Message(id=event.item_id, role="user", content=[ev.AudioContent()]))

    def _transcript(self, event: ev.InputTranscript) -> None:
        text = event.text if event.final else self._partial.get(event.item_id, "") + event.text
        if event.final:
            self._partial.pop(event.item_id, None)
        else:
            self._partial[event.item_id] = text
        item = self._items.get(event.item_id)
        base = item if isinstance(item, ev.Message) else ev.Message(id=event.item_id, role="user")
        content = [msgspec.structs.replace(c, transcript=text) if isinstance(c, ev.AudioContent) else c
                   for c in base.content]
        if not any(isinstance(c, ev.AudioContent) for c in content):
            content.append(ev.AudioContent(transcript=text))
        if item is None:
            self._put(msgspec.structs.replace(base, content=content))
        else:  # in place: its position in the conversation is its first sighting's
            self._items[event.item_id] = msgspec.structs.replace(base, content=content)

    def _delete(self, event: ev.ItemDelete) -> None:
        self._items.pop(event.item_id, None)
        self._partial.pop(event.item_id, None)
        self._truncations.pop(event.item_id, None)

    def _truncate(self, event: ev.ItemTruncate) -> None:
        self._truncations[event.item_id] = event.audio_end_ms


def from_own_log(log: TurnLog, base: int | None, *, audio_seq: int, committed_seq: int, items: list[ev.Item]) -> bool:
    """Whether a cutover may take the last turn from the worker's own log instead of the checkpoint: the
    log still covers the prepared snapshot's ``base``, the old upstream holds no input audio it has not
    committed (``audio_seq``, the newest sent, after ``committed_seq``), and the last turn of ``items``
    (the log's, with the audio held restored) is not a spoken turn committed but not transcribed yet
    (Gemini commits a manual turn at once, its transcript comes later): that audio only the stream has
    (``replay.before_untranscribed_turn``); sent as it is, the new provider would hear nothing of it."""
    return log.covers(base) and audio_seq <= committed_seq and not ends_untranscribed(items)


class OpenRequest:
    """The client's response request the old upstream has not answered yet, which a cutover from the own
    log re-sends to the new upstream (``Worker._from_own_log``; the stream's way judges the same with
    ``replay.owed_create``). Fed in order: user input and requests sent upstream, responses published down.

    A request the codec sent is open until a response starts or ends. One the codec absorbed (Gemini answers
    the end of a manual turn or a tool result by itself: the client's create adds nothing to send) is open
    too while no response started since the user's last input: the provider's own answer is still to come,
    and a cutover before it comes must ask the new provider. After that answer started it asks nothing."""

    def __init__(self) -> None:
        self.create: ev.ResponseCreate | None = None
        self._answered = False  # a response started (or ended) since the user's last input

    def input(self) -> None:
        """User input sent upstream (an item, a commit) or committed by the provider."""
        self._answered = False

    def asked(self, create: ev.ResponseCreate, *, sent: bool) -> None:
        if sent or not self._answered:
            self.create = create

    def answered(self) -> None:
        """A response started or ended."""
        self.create = None
        self._answered = True

    def take(self) -> ev.ResponseCreate | None:
        """The open request, which the caller now answers for (re-sent, or judged by a replay)."""
        create, self.create = self.create, None
        return create


_FOLDS: dict[type, Callable[[TurnLog, Any], None]] = {
    ev.ItemCreate: TurnLog._item_create,
    ev.OutputDone: TurnLog._output_done,
    ev.InputCommitted: TurnLog._committed,
    ev.InputTranscript: TurnLog._transcript,
    ev.ItemDelete: TurnLog._delete,
    ev.ItemTruncate: TurnLog._truncate,
}


def given_ids(history: Iterable[ev.Item]) -> frozenset[str]:
    """The ids of the history items a connection's setup really gave the provider. A message with
    nothing to say (a spoken turn not transcribed yet, its audio not restored) is skipped by every codec's
    restore: not given, so the cutover's delta sends it once its transcript (or its audio) is known."""
    return frozenset(item.id for item in history if not (isinstance(item, ev.Message) and not item.text() and not any(
        isinstance(c, ev.AudioContent) and c.pcm for c in item.content)))


def delta_items(prepared: Iterable[str], items: list[ev.Item]) -> list[ev.Item]:
    """The items of ``items`` (the history at the cutover, in order) the prepared upstream was not given."""
    known = set(prepared)
    return [item for item in items if item.id not in known]


def age_left_s(opened_at: float, max_age_s: float | None, now: float) -> float | None:
    """Seconds until a connection opened at ``opened_at`` reaches ``max_age_s`` (0: now; None: no cap)."""
    if max_age_s is None or max_age_s <= 0:
        return None
    return max(0.0, opened_at + max_age_s - now)
