"""The first words of a service process, before its heavy imports (the bus, the store, the codecs take a
second or more to import on a loaded machine): which NATS it is about to try. Imports nothing heavy."""

from __future__ import annotations

import sys

__all__ = ["announce", "announced", "redact", "say"]

_announced: set[str] = set()


def redact(url: str) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host``: URLs are printed, passwords are not."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in creds:
        return url
    return f"{scheme}://{creds.split(':', 1)[0]}:***@{host}"


def say(service: str, text: str) -> None:
    print(f"{service}: {text}", file=sys.stderr, flush=True)


def announce(service: str, nats_url: str) -> None:
    """Called by each service's ``main`` right after reading its configuration."""
    say(service, f"connecting to NATS at {redact(nats_url)}")
    _announced.add(service)


def announced(service: str) -> bool:
    return service in _announced
