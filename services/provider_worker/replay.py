"""What a new provider connection is sent again from the stream: read -> plan -> apply, the plan pure.

The worker reads (the snapshot, the ``up`` envelopes after the commit point, the ``down`` envelopes from
the first of them), calls :func:`plan_replay`, and queues what it returns. Every rule is here, as plain
functions over literal envelopes (tests/test_replay_plan.py):

- the replay starts after the provider's last commit (``committed_up_seq``, kept by the checkpoint);
- a spoken turn committed but never transcribed starts it at the commit before that turn instead;
- request events that would act twice, or whose effect the log already holds, are not replayed;
- except the newest ``response.create`` when nothing answered it (:func:`owed_create`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import msgspec

from shared import events as ev
from shared.audio import RateConverter
from shared.store import Commit, Snapshot

__all__ = [
    "NOT_REPLAYED",
    "REPLAY_MARGIN_S",
    "USER_INPUT",
    "Replay",
    "TurnAudio",
    "before_untranscribed_turn",
    "commit_point",
    "ends_untranscribed",
    "has_audio",
    "needs_down",
    "owed_create",
    "plan_replay",
    "read_since_s",
    "replay_start",
]

# Input after a commit was published at most this long (plus the VAD's silence timeout) before the
# provider's commit reached the stream (its latency): a replay starts that much earlier.
REPLAY_MARGIN_S = 3.0
# Per session, each of uncommitted input and committed turns: ~43 s of 24 kHz input (sessions without
# input transcription only).
TURN_AUDIO_LIMIT_BYTES = 2 * 1024 * 1024
SEMANTIC_VAD_WAIT_S = 8.0  # semantic VAD may wait this long (OpenAI, eagerness low) before it commits
# On resume these are not replayed: they would act twice, or the snapshot already holds their effect.
NOT_REPLAYED = (ev.ResponseCreate, ev.ResponseCancel, ev.ItemDelete, ev.ItemTruncate)
USER_INPUT = (ev.ItemCreate, ev.InputAudioCommit)  # what a response.create asks an answer to

Positioned = list[tuple[int, ev.Envelope]]  # (stream position, envelope), oldest first


@dataclass(frozen=True, slots=True)
class Replay:
    """The events to queue (in order, replacing what was queued), and the newest ``up`` seq the replay
    covered (0: none past the commit point), which a replacement counts as taken."""

    events: list[ev.Event]
    last_seq: int


def before_untranscribed_turn(items: list[ev.Item], commit_points: list[int], committed: int) -> int:
    """The commit point to replay from. A spoken turn committed (by the client or the provider's turn
    detection) but neither transcribed nor answered when its connection ended is only audio in the stream:
    the log holds an empty item, which a restore skips. Its audio is replayed from the commit before it, so
    the new provider hears the turn again (the stream's start when that commit has aged out).

    ``commit_points`` are the ``up_seq`` of the provider's commits the log holds (``Snapshot.commits``)."""
    if not ends_untranscribed(items):
        return committed  # (a turn with its audio restored with the history: not replayed a second time)
    return max((point for point in commit_points if point < committed), default=0)


def ends_untranscribed(items: list[ev.Item]) -> bool:
    """The last item is a spoken user turn with neither a transcript nor its audio (``TurnAudio.restore``):
    a new connection's history cannot say it, only the stream's audio can."""
    last = items[-1] if items else None
    return (isinstance(last, ev.Message) and last.role == "user" and not last.text()
            and any(isinstance(c, ev.AudioContent) for c in last.content) and not has_audio(last))


def has_audio(item: ev.Item) -> bool:
    """A message restored with its audio (``TurnAudio.restore``): the history says the turn itself."""
    return isinstance(item, ev.Message) and any(isinstance(c, ev.AudioContent) and c.pcm for c in item.content)


class TurnAudio:
    """The input audio of the spoken turns this worker sent, by the item the provider committed it as, so
    a new connection's history can carry a turn that has no transcript (transcription off): the log keeps
    no audio. Kept until the turn's transcript arrives; bounded (the oldest turns go first).

    Chunks are keyed by their up envelope seq: a commit at ``up_seq`` (``InputCommitted.up_seq``) takes
    the chunks up to it; with server VAD, speech starting at a seq drops what came before (silence)."""

    def __init__(self, limit_bytes: int = TURN_AUDIO_LIMIT_BYTES) -> None:
        self.limit_bytes = limit_bytes
        self._pending: deque[tuple[int, bytes, int]] = deque()  # (up seq, pcm, rate) sent, not committed yet
        self._pending_bytes = 0
        self._items: dict[str, tuple[bytes, int]] = {}  # item id -> (pcm, rate), oldest first
        self._item_bytes = 0

    def add(self, seq: int, pcm: bytes, rate: int) -> None:
        self._pending.append((seq, pcm, rate))
        self._pending_bytes += len(pcm)
        while self._pending_bytes > self.limit_bytes and len(self._pending) > 1:  # a long uncommitted stream
            self._pending_bytes -= len(self._pending.popleft()[1])

    def speech_started(self, seq: int) -> None:
        """The provider heard speech start in envelope ``seq``: what came before is not this turn's."""
        while self._pending and self._pending[0][0] < seq:  # in seq order: the oldest go first
            self._pending_bytes -= len(self._pending.popleft()[1])

    def cleared(self) -> None:
        """The input buffer was cleared (the client's clear, or a new connection's empty buffer)."""
        self._pending.clear()
        self._pending_bytes = 0

    def committed(self, item_id: str, up_seq: int) -> None:
        """The provider committed the input up to envelope ``up_seq`` as the user item ``item_id``."""
        taken: list[tuple[int, bytes, int]] = []
        while self._pending and self._pending[0][0] <= up_seq:
            taken.append(self._pending.popleft())
            self._pending_bytes -= len(taken[-1][1])
        if not taken:
            return
        rate = taken[0][2]
        if all(chunk[2] == rate for chunk in taken):
            pcm = b"".join(chunk[1] for chunk in taken)
        else:  # the client changed its rate mid-turn: one clip at the first rate
            converter = RateConverter(rate)
            pcm = b"".join(converter.convert(chunk[1], chunk[2]) for chunk in taken) + converter.flush()
        self._items[item_id] = (pcm, rate)
        self._item_bytes += len(pcm)
        while self._item_bytes > self.limit_bytes and len(self._items) > 1:
            self._item_bytes -= len(self._items.pop(next(iter(self._items)))[0])

    def transcribed(self, item_id: str) -> None:
        """The turn has its transcript (in the log): the history says it as text."""
        held = self._items.pop(item_id, None)
        if held is not None:
            self._item_bytes -= len(held[0])

    def restore(self, items: list[ev.Item]) -> list[ev.Item]:
        """``items`` with the audio held set on user messages that have nothing else to say."""
        if not self._items:
            return items
        return [self._with_audio(item) for item in items]

    def _with_audio(self, item: ev.Item) -> ev.Item:
        held = self._items.get(item.id)
        if held is None or not isinstance(item, ev.Message) or item.role != "user" or item.text():
            return item
        pcm, rate = held
        content: list[ev.Content] = [
            msgspec.structs.replace(c, pcm=pcm, rate=rate) if isinstance(c, ev.AudioContent) else c
            for c in item.content]
        if not any(isinstance(c, ev.AudioContent) for c in content):
            content.append(ev.AudioContent(pcm=pcm, rate=rate))
        return msgspec.structs.replace(item, content=content)


def commit_point(snapshot: Snapshot) -> int:
    """The ``up`` seq up to which the snapshot already holds the input as items."""
    committed = int(snapshot.record.get("committed_up_seq") or 0)
    return before_untranscribed_turn(snapshot.items, [c.up_seq for c in snapshot.commits], committed)


def replay_start(snapshot: Snapshot, committed: int) -> Commit | None:
    """The provider commit whose stream position the read starts shortly before (None: read it all).
    Not the whole window: a dead worker's sessions all replay at once, and it holds minutes of audio."""
    if not committed:
        return None
    return next((c for c in reversed(snapshot.commits) if c.up_seq <= committed), None)


def read_since_s(age_s: float | None, vad: ev.TurnDetection | None) -> float | None:
    """How far back to read, given the age of the start commit in the stream (None: aged out, read all)."""
    if age_s is None:
        return None
    silence_s = 0.0 if vad is None else SEMANTIC_VAD_WAIT_S if vad.type == "semantic_vad" else (
        (vad.silence_duration_ms or 500) / 1000)
    return age_s + REPLAY_MARGIN_S + silence_s


def needs_down(up: Positioned) -> bool:
    """Whether the plan must see ``down`` (only to judge a response.create)."""
    return any(isinstance(e, ev.ResponseCreate) for _, env in up for e in env.events)


def owed_create(up: Positioned, down: Positioned) -> ev.ResponseCreate | None:
    """The newest response.create, when nothing answered it: the old connection never acted on it (its
    worker died first, or the client re-asked after the cut while no worker listened). Replaying any other
    would act twice.

    Answered means a response started or ended after it in the stream, or it was absorbed: the only create
    since the user's last input, sent after a response to that input had already ended (a provider that
    answers by itself, like Gemini at the end of a manual turn, may start and even finish its answer before
    the client's create reaches the stream; the codec swallows that create). A response cut by a worker's
    death never ends in the stream; one ended ``failed`` (cut by a switch or a lost upstream) answered
    nothing, so a create after it is the client's re-ask, owed."""
    creates = [(pos, e) for pos, env in up for e in env.events if isinstance(e, ev.ResponseCreate)]
    if not creates:
        return None
    position, create = creates[-1]
    if any(pos > position and any(isinstance(e, ev.ResponseStarted | ev.ResponseDone) for e in env.events)
           for pos, env in down):
        return None
    inputs = [pos for pos, env in up if any(isinstance(e, USER_INPUT) for e in env.events)]
    inputs += [pos for pos, env in down if any(isinstance(e, ev.InputCommitted) for e in env.events)]
    last_input = max((pos for pos in inputs if pos < position), default=0)
    ended = any(last_input < pos < position and any(
        isinstance(e, ev.ResponseDone) and e.status != "failed" for e in env.events) for pos, env in down)
    alone = sum(1 for pos, _ in creates if last_input < pos <= position) == 1
    return None if ended and alone else create


def plan_replay(snapshot: Snapshot, up: Positioned, down: Positioned, *, upto: int | None = None) -> Replay:
    """The input a new provider connection must get after the history, from ``up`` (and ``down``, read
    from the first ``up`` position on).

    Everything up to the commit point is in the snapshot as items; what came after is replayed: a
    replacement worker never had it, and a dropped or rotated connection took it along uncommitted (audio
    of a turn being spoken). Requests that would act twice (response.create/cancel) or are already in the
    log (items, deletes, truncations) are not, except a response.create nothing answered. ``upto``: only
    envelopes this worker already took (a reconnect: newer ones arrive live); None: all (a replacement).
    """
    committed = commit_point(snapshot)
    known = {item.id for item in snapshot.items}
    owed = owed_create(up, down)
    events: list[ev.Event] = []
    last_seq = 0
    for _, env in up:
        if (env.seq <= committed and not any(event is owed for event in env.events)) or (
                upto is not None and env.seq > upto):
            continue
        last_seq = max(last_seq, env.seq)
        for event in env.events:
            if event is not owed and (env.seq <= committed or isinstance(event, NOT_REPLAYED) or (
                    isinstance(event, ev.ItemCreate) and event.item.id in known)):
                continue
            events.append(event)
    return Replay(events=events, last_seq=last_seq)
