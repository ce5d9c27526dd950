"""Entry points of the edge: which dialect, which account, which provider a connection gets.

Pure functions over the upgrade request (path, query, headers); no I/O. The rules are documented in
docs/entry-points.md:

- ``/?rs_accid&rs_u_sessid&rs_auth&rs_api&rs_core`` (seed): ``rs_api`` OPENAI -> beta event names (the
  seed's), OPENAI_GA -> GA, GEMINI -> Gemini; seed HMAC (+ ``rs_exp``); provider = ``rs_core``.
- ``/v1/realtime`` or ``/realtime`` (``?model=``): GA, beta with ``OpenAI-Beta: realtime=v1``;
  ``Authorization: Bearer <account>:<secret>``; provider = ``rs_core`` query / ``X-RS-Core`` header,
  else by model name, else the configured default.
- ``/ws/google.ai.generativelanguage.<v>.GenerativeService.BidiGenerateContent``: Gemini; key in
  ``x-goog-api-key`` or ``?key=``; provider = ``rs_core`` / ``X-RS-Core``, else by ``setup.model``, else
  the default.

On both SDK paths the session id is ``rs_u_sessid`` in the query or, for SDKs that cannot add a query
(google-genai), the ``X-RS-Session`` header; without either, a fresh session.

The provider, first rule that answers (``provider_choice``):
  1. ``rs_core`` in the query or the ``X-RS-Core`` header;
  2. a provider prefix on the SDK path: ``/openai/v1/realtime``, ``/gemini/ws/google.ai...`` (for clients
     that build their own URL and cannot add headers, e.g. Pipecat appends ``?model=`` to a base URL);
  3. a provider prefix on the model name: ``gemini:<model>``, ``openai:<model>`` (stripped: the rest is
     the model);
  4. the model family (``gpt...`` -> openai, ``gemini...`` -> gemini);
  5. the configured default.
On the Gemini path the model is ``setup.model`` (the first frame), so rules 3-4 are applied by the edge
after the upgrade (``model_choice``).

Client tokens (``ek_...`` from ``POST /v1/realtime/client_secrets``, shared/auth.py) stand in for the
account's secret everywhere: the Bearer, the Gemini key, ``rs_auth`` on the seed URL. A token bound to a
session id opens only that session (no session named: the bound one); bound to a provider, only that
provider (``rs_core`` / ``X-RS-Core`` / a path prefix naming another one: 403).

In-band notices (``Route.notices``): ``rs_notices=1`` in the query or ``X-RS-Notices: 1``, any entry point.

Resume with missed events (``Route.resume``): ``rs_resume=<last event seq>`` in the query or
``X-RS-Resume``, any entry point (docs/entry-points.md, "Resume with missed events").
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from shared.auth import TOKEN_PREFIX, Authenticator, AuthError, Identity
from shared.session import Dialect

__all__ = ["Route", "RouteError", "model_choice", "provider_for_model", "resolve", "session_id_or_none"]

# rs_api values -> dialect. OPENAI speaks the beta names: the seed's examples and browser client do.
SEED_DIALECTS: dict[str, Dialect] = {
    "OPENAI": "openai_beta",
    "OPENAI_BETA": "openai_beta",
    "OPENAI_GA": "openai_ga",
    "GEMINI": "gemini",
}

# Model name prefix -> provider, checked in order.
MODEL_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt", "openai"),
    ("models/gemini", "gemini"),
    ("gemini", "gemini"),
)

OPENAI_PATHS = frozenset({"/v1/realtime", "/realtime", "/v1/realtime/", "/realtime/"})
GEMINI_PATH = re.compile(
    r"^/ws/google\.ai\.generativelanguage\.(v1|v1beta|v1alpha)\.GenerativeService\.BidiGenerateContent$"
)
_PROVIDER_SEGMENT = re.compile(r"^/([A-Za-z][A-Za-z0-9_-]{0,31})(/.*)$")  # /<provider>/<SDK path>
_TRUE = frozenset({"1", "true", "yes", "on"})
_RESUME = re.compile(r"^[0-9]{1,15}$")  # an event seq (well inside what JSON numbers carry exactly)
_SESSION_ID = re.compile(r"^[\x21-\x7e]{1,256}$")  # printable ASCII, no spaces: it appears in logs and keys


class RouteError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    dialect: Dialect
    account: str
    client_session_id: str
    provider: str | None  # None: decided by the first frame (Gemini setup.model) or the default
    model: str | None = None
    minted: bool = False  # the client named no session here (a Gemini resumption handle may name it)
    seed: bool = False  # the seed URL (``/?rs_accid=...``)
    notices: bool = False  # ``rs_notices=1`` in the query or ``X-RS-Notices: 1``: in-band notices wanted
    resume: int | None = None  # ``rs_resume`` / ``X-RS-Resume``: the last event seq the client got


def provider_for_model(model: str | None) -> str | None:
    if not model:
        return None
    name = model.lower()
    for prefix, provider in MODEL_PREFIXES:
        if name.startswith(prefix):
            return provider
    return None


def model_choice(model: str | None, installed: frozenset[str]) -> tuple[str | None, str | None]:
    """(provider the model name chooses, the model without a provider prefix): ``gemini:x`` -> (gemini, x)
    when ``gemini`` is installed; else the model family decides and the name is kept (``ft:gpt-...``
    style names whose head is no provider keep their colon)."""
    if model:
        head, colon, rest = model.partition(":")
        if colon and head.lower() in installed:
            return head.lower(), rest or None
    return provider_for_model(model), model or None


def _provider_name(raw: str, installed: frozenset[str]) -> str:
    name = raw.strip().lower()
    if name not in installed:
        raise RouteError(400, f"unknown provider {raw.strip()[:32]!r}")
    return name


def _first(query: Mapping[str, list[str]], key: str) -> str | None:
    values = query.get(key)
    return values[0] if values else None


def session_id_or_none(raw: str | None) -> str | None:
    """A client-chosen session id when it is acceptable, else None (for ids read after the upgrade)."""
    return raw if raw is not None and _SESSION_ID.match(raw) else None


def _session_id(raw: str | None) -> str:
    if raw is None:
        return f"sess_{uuid.uuid4().hex}"
    if not _SESSION_ID.match(raw):
        raise RouteError(400, "rs_u_sessid / X-RS-Session must be 1-256 printable characters without spaces")
    return raw


def resolve(
    path: str, headers: Mapping[str, str], auth: Authenticator, installed: frozenset[str], *, now: float
) -> Route:
    """Route of one upgrade request, or RouteError(status, reason). ``headers`` keys are lowercase."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    notices = (_first(query, "rs_notices") or headers.get("x-rs-notices", "")).strip().lower() in _TRUE
    sdk_path, by_path = parts.path, None
    prefixed = None if _is_sdk_path(parts.path) else _PROVIDER_SEGMENT.match(parts.path)
    if prefixed and _is_sdk_path(prefixed.group(2)):
        sdk_path, by_path = prefixed.group(2), prefixed.group(1)
    try:
        if parts.path in ("", "/"):
            route = _seed(query, auth, installed, now)
        elif sdk_path in OPENAI_PATHS:
            route = _openai(query, headers, auth, installed, by_path, now)
        elif GEMINI_PATH.match(sdk_path):
            route = _gemini(query, headers, auth, installed, by_path, now)
        else:
            raise RouteError(404, "not found")
    except AuthError as exc:
        raise RouteError(exc.status, exc.reason) from None
    resume = _resume(_first(query, "rs_resume") or headers.get("x-rs-resume"))
    if notices or resume is not None:
        route = dataclasses.replace(route, notices=notices, resume=resume)
    return route


def _resume(raw: str | None) -> int | None:
    if raw is None:
        return None
    if not _RESUME.match(raw.strip()):
        raise RouteError(400, "rs_resume / X-RS-Resume must be the seq of the last event received (0 or more)")
    return int(raw.strip())


def _is_sdk_path(path: str) -> bool:
    return path in OPENAI_PATHS or GEMINI_PATH.match(path) is not None


def _seed(query: Mapping[str, list[str]], auth: Authenticator, installed: frozenset[str], now: float) -> Route:
    values: dict[str, str] = {}
    for key in ("rs_accid", "rs_u_sessid", "rs_auth", "rs_api", "rs_core"):
        value = _first(query, key)
        if not value:
            raise RouteError(400, f"missing query parameter {key}")
        values[key] = value
    dialect = SEED_DIALECTS.get(values["rs_api"].upper())
    if dialect is None:
        raise RouteError(400, f"rs_api must be one of {', '.join(SEED_DIALECTS)}")
    provider = _provider_name(values["rs_core"], installed)
    session_id = _session_id(values["rs_u_sessid"])
    account = auth.check_seed(
        values["rs_accid"], session_id, values["rs_auth"], expires=_first(query, "rs_exp"), now=now
    )
    if values["rs_auth"].startswith(TOKEN_PREFIX):  # check_seed checked account and session binding
        provider = _bound_provider(Identity(account, None, auth.check_token(values["rs_auth"], now=now).p), provider)
    _, model = model_choice(_first(query, "rs_model"), installed)
    return Route(dialect, account, session_id, provider, model, seed=True)


def _client_session(query: Mapping[str, list[str]], headers: Mapping[str, str], bound: str | None = None) -> str:
    named = _first(query, "rs_u_sessid") or headers.get("x-rs-session")
    if bound is not None and named not in (None, bound):
        raise RouteError(403, "the token is bound to another session")
    return _session_id(named or bound)


def _bound_provider(identity: Identity, chosen: str | None) -> str | None:
    if identity.provider is None:
        return chosen
    if chosen is not None and chosen != identity.provider:
        raise RouteError(403, "the token is bound to another provider")
    return identity.provider


def _override(
    query: Mapping[str, list[str]], headers: Mapping[str, str], installed: frozenset[str], by_path: str | None
) -> str | None:
    """The provider the client chose outright: ``rs_core`` / ``X-RS-Core``, else the path prefix."""
    raw = _first(query, "rs_core") or headers.get("x-rs-core") or by_path
    return _provider_name(raw, installed) if raw else None


def _openai(
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
    auth: Authenticator,
    installed: frozenset[str],
    by_path: str | None,
    now: float,
) -> Route:
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise RouteError(401, "missing bearer token")
    identity = auth.identify(token, now=now)
    beta = "realtime=v1" in headers.get("openai-beta", "").replace(" ", "")
    by_model, model = model_choice(_first(query, "model"), installed)
    provider = _override(query, headers, installed, by_path)
    provider = _bound_provider(identity, provider) or by_model
    session = _client_session(query, headers, identity.session_id)
    return Route("openai_beta" if beta else "openai_ga", identity.account, session, provider, model)


def _gemini(
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
    auth: Authenticator,
    installed: frozenset[str],
    by_path: str | None,
    now: float,
) -> Route:
    key = headers.get("x-goog-api-key") or _first(query, "key") or ""
    if not key:
        raise RouteError(401, "missing API key")
    identity = auth.identify(key, now=now)
    named = _first(query, "rs_u_sessid") or headers.get("x-rs-session") or identity.session_id
    provider = _bound_provider(identity, _override(query, headers, installed, by_path))
    session = _client_session(query, headers, identity.session_id)
    return Route("gemini", identity.account, session, provider, minted=not named)
