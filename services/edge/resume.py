"""Resume with missed events: what a reconnecting client (``rs_resume=<last event seq>``) gets, in order, once.

Pure (no I/O): the edge feeds it the ``cout`` messages it reads back from the stream and the live ones,
and sends what it returns (docs/entry-points.md, "Resume with missed events").

Every client frame the transformer sends is numbered per session (``bus.ClientOut.first``: the seq of the
message's first frame, the others follow; 0: not numbered). The edge subscribes to the live ``cout``
before it reads the stream, so nothing falls between the two: live messages are held while the replay is
sent (``ResumeMerge.live`` returns nothing then), and ``finish`` releases those above the last seq sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "GEMINI_SETUP_COMPLETE",
    "RECENT_S",
    "RESUME_GRACE_S",
    "Batch",
    "Delivery",
    "ResumeMerge",
    "covers",
    "incarnation",
    "last_seq",
    "resume_notice",
]

# The stream read starts this far back (the common reconnect is within seconds); when that does not reach
# back to the client's seq, the whole window is read once more.
RECENT_S = 10.0
# A connection that ended without a close frame (TCP dropped, a network change): the session's members are
# kept this long for the client to come back with ``rs_resume`` before they are told the client left.
RESUME_GRACE_S = 5.0
# The edge answers a resuming Gemini connection's ``setup`` itself (unnumbered, as every setupComplete).
GEMINI_SETUP_COMPLETE = '{"setupComplete":{}}'


@dataclass(frozen=True, slots=True)
class Batch:
    """One ``cout`` message as the merge sees it."""

    first: int  # the seq of frames[0]; 0: frames not numbered
    frames: tuple[str, ...]
    down: tuple[int, int] = (0, 0)  # the provider output these frames came from (ClientOut.down)
    close: tuple[int, str] | None = None  # a close that follows the frames

    @property
    def last(self) -> int:
        return self.first + len(self.frames) - 1 if self.first and self.frames else 0


@dataclass(slots=True)
class Delivery:
    """What to send the client: ``frames`` in order, then ``close`` if set."""

    frames: list[str] = field(default_factory=list)
    close: tuple[int, str] | None = None
    down: tuple[int, int] = (0, 0)  # the newest provider output among the frames sent

    def add(self, batch: Batch, frames: Sequence[str]) -> None:
        self.frames.extend(frames)
        if frames:
            self.down = max(self.down, batch.down)
        if batch.close is not None:
            self.close = batch.close


@dataclass(slots=True)
class ResumeMerge:
    """The replayed and live frames of one resuming connection -> every frame above ``after`` once, in seq
    order. ``drop_once``: an unnumbered live frame the edge already sent itself (a resuming Gemini
    connection's setupComplete), dropped the first time it comes."""

    after: int  # the last seq the client has (then: the last seq sent)
    drop_once: str | None = None
    replaying: bool = True
    held: list[Batch] = field(default_factory=list)
    gap: bool = False  # a frame above after+1 came first: frames in between are lost (notice)

    def live(self, batch: Batch) -> Delivery:
        """A live ``cout`` message: held during the replay, else what of it is new."""
        if self.replaying:
            self.held.append(batch)
            return Delivery()
        return self._take([batch])

    def replayed(self, batches: Iterable[Batch]) -> Delivery:
        """Messages read back from the stream (oldest first) -> what the client missed. Their closes are
        history, not for this connection. When they do not reach back to the client's seq, nothing is
        replayed (a replay with a hole would look complete) and ``gap`` says so; a client claiming more
        than the stream's newest seq is brought back to it (else live frames up to its claim would be
        dropped)."""
        numbered = [batch for batch in batches if batch.first and batch.frames]
        newest = last_seq(numbered)
        if not covers(self.after, numbered):
            self.skip_to(newest)
            return Delivery()
        if numbered and newest < self.after:
            self.after = newest
        out = self._take(numbered)
        out.close = None
        return out

    def skip_to(self, seq: int) -> None:
        """The client's seq is older than the window: no replay, live frames above ``seq`` only."""
        self.gap = True
        self.after = max(self.after, seq)

    def finish(self) -> Delivery:
        """The replay is sent: the held live messages, then live ones go straight through."""
        self.replaying = False
        held, self.held = self.held, []
        return self._take(held)

    def _take(self, batches: Iterable[Batch]) -> Delivery:
        out = Delivery()
        for batch in batches:
            if not batch.first:  # unnumbered: passes in live order
                frames = [f for f in batch.frames if not self._dropped(f)]
                out.add(batch, frames)
                continue
            if batch.first > self.after + 1:
                self.gap = True
            fresh = batch.frames[max(0, self.after + 1 - batch.first):]
            if fresh:
                self.after = batch.last
            out.add(batch, fresh)
        return out

    def _dropped(self, frame: str) -> bool:
        if self.drop_once is not None and frame == self.drop_once:
            self.drop_once = None
            return True
        return False


def covers(after: int, batches: Sequence[Batch]) -> bool:
    """Whether ``batches`` (oldest first) reach back to the frame after ``after``: the oldest numbered one
    starts at or before ``after + 1``, or none has anything above ``after``. Nothing read covers nothing
    but a client that has everything (``after`` 0 reads from the start)."""
    numbered = [batch for batch in batches if batch.first and batch.frames]
    if not numbered:
        return after == 0
    return numbered[0].first <= after + 1 or numbered[-1].last <= after


def last_seq(batches: Sequence[Batch]) -> int:
    """The newest numbered seq among ``batches`` (oldest first); 0: none."""
    for batch in reversed(batches):
        if batch.last:
            return batch.last
    return 0


def incarnation(
    beats: Mapping[tuple[str, str], float], instance: str, now: float, fresh_s: float
) -> tuple[str, str] | None:
    """The live incarnation ``(instance, boot)`` of ``instance``: its newest beat, if within ``fresh_s``."""
    newest = max(((key, at) for key, at in beats.items() if key[0] == instance), key=lambda kv: kv[1], default=None)
    if newest is None or now - newest[1] > fresh_s:
        return None
    return newest[0]


def resume_notice(dialect: str, after: int, resumed_at: int, event_id: str) -> str:
    """The opt-in notice that events were lost: the client's seq is older than the stream still holds."""
    message = (f"events after {after} are no longer held (the replay window is ~2 minutes); "
               f"the session resumes at event {resumed_at + 1} without them")
    body = {"code": "resume_gap", "param": "rs_resume", "message": message}
    if dialect == "gemini":
        return json.dumps({"rsNotice": body}, separators=(",", ":"))
    return json.dumps({"type": "rs.notice", "event_id": event_id, **body}, separators=(",", ":"))
