"""Provider plugins, resolved by name through the ``rtswitch.providers`` entry point group.

Built-ins register exactly as a third party would (see pyproject.toml). A provider is a module with a
class that says how to reach the upstream (URL + headers), what it can do, and which sans-I/O codec
speaks its protocol; the provider-worker owns the socket.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import ClassVar, Protocol, runtime_checkable

import msgspec

from shared import events as ev
from shared.codecs.base import Out, ProviderCodec
from shared.session import SessionMeta

__all__ = [
    "AppendsHistory",
    "Capabilities",
    "Provider",
    "ProviderNotConfigured",
    "UnknownProvider",
    "installed_providers",
    "load_provider",
]


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """What the worker must do differently for a provider. Only what the worker acts on lives here:
    audio rates, truncation and VAD are the codec's business (it resamples, warns, maps), a config the
    provider takes only at setup is the codec's ``needs_reconnect``, and a session cap is announced by
    the provider (goAway) when it applies."""

    config_before_connect: bool = False  # needs the session config in its first frame (Gemini setup)


@runtime_checkable
class AppendsHistory(Protocol):
    """A codec that can add items to the provider's conversation on a live connection, as history (no
    answer asked): a make-before-break cutover sends the items the last turn added this way to an
    upstream prepared before that turn ended. Codecs without it get one ``ItemCreate`` per item."""

    def append_history(self, items: list[ev.Item]) -> Out:
        ...


class UnknownProvider(LookupError):
    pass


class ProviderNotConfigured(RuntimeError):
    """Raised by ``endpoint()`` when a setting the provider needs is missing. The worker answers the session
    with a fatal ``ProviderError(provider_not_configured)``; a provider's constructor never raises for this,
    so a worker without one provider's settings still starts and serves the others."""


class Provider(Protocol):
    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    default_model: ClassVar[str]
    # A connection older than this is replaced at the next turn boundary, before the provider's own cap
    # ends it (OpenAI's session length); None: the provider announces its end itself (Gemini goAway).
    max_session_s: float | None

    def __init__(self, settings: Mapping[str, str]) -> None:
        """``settings`` is the process environment (already validated config values as strings)."""
        ...

    def model_for(self, requested: str | None) -> str:
        """The upstream model: the client's choice when it belongs to this provider, else the default."""
        ...

    def endpoint(self, model: str) -> tuple[str, list[tuple[str, str]]]:
        """URL and headers (with the provider key) for one upstream connection. Raises
        ``ProviderNotConfigured`` (message names the missing settings, never their values) when unconfigured."""
        ...

    def codec(self, meta: SessionMeta, model: str, *, resumption_handle: str | None = None) -> ProviderCodec:
        """A fresh codec for one upstream connection. ``resumption_handle``: the previous connection's
        (providers without resumption ignore it)."""
        ...


def installed_providers() -> list[str]:
    return sorted(entry_points(group="rtswitch.providers").names)


@functools.cache
def load_provider(name: str) -> type[Provider]:
    installed = entry_points(group="rtswitch.providers")
    if name not in installed.names:
        raise UnknownProvider(f"unknown provider {name!r}; installed: {sorted(installed.names)}")
    return installed[name].load()  # imported on first use only
