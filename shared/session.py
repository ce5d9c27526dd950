"""What every hop knows about a session: who it belongs to and which dialect/provider it speaks."""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

__all__ = ["DIALECTS", "Dialect", "SessionMeta", "session_key"]

Dialect = Literal["openai_beta", "openai_ga", "gemini"]
DIALECTS: tuple[Dialect, ...] = ("openai_beta", "openai_ga", "gemini")


class SessionMeta(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    sid: str  # server-side key, subject-safe (see session_key)
    account: str
    client_session_id: str
    dialect: Dialect
    provider: str  # entry point name: "openai", "gemini", ...
    model: str | None = None  # as the client named it (URL or setup); the worker maps it per provider
    output_rate: int | None = None  # client output audio rate when known at connect
    seed: bool = False  # came in on the seed URL: announce switches with the seed's own {"type": "switch"}
    notices: bool = False  # opted in to in-band notices (rs.notice, and switch announcements on Gemini)


def session_key(account: str, client_session_id: str) -> str:
    """Subject-safe session key from account AND client session id.

    Two accounts may pick the same session id, and a client string may hold ``.``, ``*``, ``>`` or
    spaces that would reach other NATS subjects: so the key is a digest, never the raw string.
    """
    digest = hashlib.blake2b(f"{account}\x00{client_session_id}".encode(), digest_size=15).hexdigest()
    return digest
