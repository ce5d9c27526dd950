"""The codec contract shared by client-dialect codecs and provider codecs.

A codec is a plain object holding one session's protocol state (ids, open response, audio format,
resamplers). It never does I/O, never reads the clock or the environment, never touches asyncio.

Both kinds speak through :class:`Out`:

- a **client codec** (``feed`` takes a client frame): ``wire`` = frames back to the client (acks,
  errors), ``events`` = canonical *Up* events for the provider; ``encode`` takes a *Down* event and
  returns ``wire`` = client frames.
- a **provider codec** (``feed`` takes a provider frame): ``events`` = canonical *Down* events for the
  client, ``wire`` = frames back to the provider (rare); ``encode`` takes an *Up* event and returns
  ``wire`` = provider frames and, where the provider has no ack of its own, synthetic *Down* events.

``close`` asks the shell to close the socket the codec faces (Gemini has no in-band error: a bad
client frame is answered by a close code and reason).

``wake`` asks the shell for a timer (a codec never reads the clock): after ``wake.after_s`` seconds the shell
calls the codec's ``wake(wake.token)`` and handles its ``Out`` like any other; a stale token is a no-op there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Protocol

from shared import events as ev

__all__ = ["ClientCodec", "Close", "Out", "ProviderCodec", "TakesConfigLive", "Wake"]


class Close(NamedTuple):
    code: int
    reason: str  # short, fixed text: no payloads (<= 123 bytes on the wire)


class Wake(NamedTuple):
    token: int  # the codec's, handed back to its ``wake``
    after_s: float


@dataclass(slots=True)
class Out:
    wire: list[str] = field(default_factory=list)
    events: list[ev.Event] = field(default_factory=list)
    close: Close | None = None
    wake: Wake | None = None

    def extend(self, other: Out) -> Out:
        self.wire.extend(other.wire)
        self.events.extend(other.events)
        self.close = self.close or other.close
        self.wake = self.wake or other.wake
        return self


class ClientCodec(Protocol):
    """Client dialect <-> canonical. One instance per session, owned by the transformer."""

    dialect: ClassVar[str]

    def open(self) -> Out:
        """Frames the client gets as soon as the session is attached (OpenAI: ``session.created``)."""
        ...

    def resume(self, config: ev.SessionConfig | None, items: list[ev.Item]) -> None:
        """Rebuild state on a replacement transformer (the client already got its greeting): the merged
        session config (with the client's audio formats, ``client_*_format``) and the known items, from
        the checkpoint's snapshot. Sends nothing."""
        ...

    def feed(self, frame: str | bytes) -> Out:
        """One client frame in. Never raises: bad input becomes an error frame or a close."""
        ...

    def encode(self, event: ev.Event) -> Out:
        """One canonical Down event in, client frames out."""
        ...


class ProviderCodec(Protocol):
    """Canonical <-> provider protocol. One instance per upstream connection, owned by the worker.

    ``needs_reconnect``: set by ``encode`` when the client changed something this provider takes only at
    setup (Gemini: one ``setup`` per connection); the worker then replaces the connection, and the next
    codec starts with the new config. A codec whose provider takes every change live keeps it False
    (:class:`TakesConfigLive` is that default).
    """

    needs_reconnect: bool

    def connect(self, config: ev.SessionConfig, history: list[ev.Item]) -> Out:
        """Frames to send right after the upstream socket opens: configuration, then history items."""
        ...

    def encode(self, event: ev.Event) -> Out:
        """One canonical Up event in, provider frames (and synthetic Down events) out."""
        ...

    def feed(self, frame: str | bytes) -> Out:
        """One provider frame in, canonical Down events out. Never raises on bad provider input."""
        ...


class TakesConfigLive:
    """Mixin for a provider codec whose provider applies every config change on the live connection."""

    needs_reconnect: bool = False
