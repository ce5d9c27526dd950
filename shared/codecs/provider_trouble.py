"""How provider trouble is told to a client: pure tables shared by the client codecs.

- ``is_provider_trouble``: error codes that are the provider's (or the gateway's) fault, never the client's:
  they are ``server_error``, not ``invalid_request_error``.
- ``readable``: a message that names a raw exception (``gaierror``, ``ConnectionRefusedError``: the worker
  puts the failure's type in its reason) says what happened in words instead.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

__all__ = ["NETWORK_WORDS", "is_provider_trouble", "readable"]

# Codes any component uses for trouble on the provider side (the worker's ``provider_unavailable``,
# ``provider_not_configured``, ...): the prefix is the contract.
_PROVIDER_PREFIX = "provider_"

# Exception names (Python's socket/ssl/websockets) -> what a client reads.
NETWORK_WORDS: Mapping[str, str] = {
    "gaierror": "the provider's host name could not be resolved",
    "herror": "the provider's host name could not be resolved",
    "ConnectionRefusedError": "the provider refused the connection",
    "ConnectionResetError": "the connection to the provider was reset",
    "ConnectionAbortedError": "the connection to the provider was aborted",
    "TimeoutError": "the provider did not answer in time",
    "SSLError": "the TLS handshake with the provider failed",
    "SSLCertVerificationError": "the provider's TLS certificate could not be verified",
    "InvalidURI": "the provider URL is invalid",
    "InvalidHandshake": "the provider refused the WebSocket handshake",
    "InvalidMessage": "the provider answered the handshake with something else than HTTP",
    "ConnectionClosedError": "the provider closed the connection",
    "ConnectionClosedOK": "the provider closed the connection",
}
_GENERIC = "a network error reaching the provider"
_EXCEPTION_NAME = re.compile(r"\b(gaierror|herror|[A-Z][A-Za-z]*(?:Error|Exception|ClosedOK|URI|Handshake|Message))\b")


def is_provider_trouble(code: str) -> bool:
    return code.startswith(_PROVIDER_PREFIX)


def readable(message: str) -> str:
    """``openai unavailable (gaierror)`` -> ``openai unavailable (the provider's host name could not be
    resolved)``; a message without an exception name is returned as it is."""
    return _EXCEPTION_NAME.sub(lambda m: NETWORK_WORDS.get(m.group(1), _GENERIC), message)
