"""Configuration: environment plus an optional ``.env`` file, validated once at start.

Seed-compatible names (PORT, HOST, OPENAI_API_KEY, GEMINI_API_KEY, ACCOUNTS, ENABLE_DB,
SWITCH_LATENCY_THRESHOLD_MS, SWITCH_FAILURE_COUNT) plus the bus/store and provider URLs. A bad value
fails fast with a message naming the variable; nothing deep in the stack reads ``os.environ``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "DEFAULT_ACCOUNTS",
    "DEFAULT_FALLBACK",
    "Config",
    "ConfigError",
    "load_config",
    "parse_accounts",
    "parse_fallback",
    "read_dotenv",
]

DEFAULT_ACCOUNTS = "996-sdassds-86-asd=secretkey-996"

# Where a session goes when its provider must be left (RS_FALLBACK overrides per provider).
DEFAULT_FALLBACK: dict[str, tuple[str, ...]] = {
    "openai": ("gemini",),
    "gemini": ("openai",),
    "azure": ("openai", "gemini"),
}


def parse_fallback(text: str) -> dict[str, tuple[str, ...]]:
    """``openai=gemini,azure;gemini=openai`` -> ``{"openai": ("gemini", "azure"), "gemini": ("openai",)}``.

    Providers not named keep their default order. Raises ValueError on a malformed rule."""
    order = dict(DEFAULT_FALLBACK)
    for rule in filter(None, (part.strip() for part in text.split(";"))):
        source, sep, targets = rule.partition("=")
        source = source.strip().lower()
        names = tuple(name.strip().lower() for name in targets.split(",") if name.strip())
        if not sep or not source or not names:
            raise ValueError(f"expected provider=target[,target...], got {rule!r}")
        if source in names:
            raise ValueError(f"{source} cannot fall back to itself")
        order[source] = names
    return order


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the variable."""


class Config(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 3000
    nats_url: str = "nats://127.0.0.1:4222"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Sentinel instead of redis_url when set: "host:port,host:port" and the monitored master's name
    redis_sentinels: str = ""
    redis_sentinel_master: str = "mymaster"
    openai_api_key: str = ""
    gemini_api_key: str = ""
    openai_realtime_url: str = "wss://api.openai.com/v1/realtime"
    gemini_live_url: str = (
        "wss://generativelanguage.googleapis.com/ws/"
        "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
    )
    openai_model: str = "gpt-realtime"
    gemini_model: str = "gemini-live-2.5-flash-preview"
    # Azure has no default resource: empty means "not configured" (sessions on it fail, the worker starts).
    azure_openai_api_key: str = ""
    azure_openai_realtime_url: str = ""
    azure_openai_deployment: str = ""
    azure_openai_api_version: str = "2025-08-28"
    accounts: dict[str, str] = msgspec.field(default_factory=dict)
    enable_db: bool = False  # accounts also from Redis (shared/accounts.py, ``rtswitch accounts``)
    accounts_refresh_s: float = 1.0  # how often an edge checks Redis for changed accounts (ENABLE_DB)
    token_max_s: int = 7_200  # longest client token (and furthest seed rs_exp); OpenAI's own maximum
    switch_latency_threshold_ms: int = 500
    switch_failure_count: int = 3
    fallback: dict[str, tuple[str, ...]] = msgspec.field(default_factory=lambda: dict(DEFAULT_FALLBACK))
    auto_switch: bool = True
    switch_cooldown_s: float = 60.0
    switch_min_dwell_s: float = 20.0
    breaker_sessions: int = 3
    breaker_window_s: float = 10.0
    breaker_open_s: float = 30.0
    default_provider: str = "openai"
    client_compression: str = "none"  # permessage-deflate on client sockets: "none" or "deflate" (docs/bench.md)
    tls_cert: str = ""
    tls_key: str = ""
    session_ttl_s: int = 86_400
    gemini_setup_wait_ms: int = 500
    admin_port: int | None = None  # /metrics and /healthz on their own port; None: on the client port
    reattach_budget_ms: int = 30_000  # the edge gives a session up (and tells its client) after this long
    stall_ms: int = 2_000  # a response open and no upstream bytes this long: ended, and the upstream replaced
    openai_max_session_s: float = 3_300.0  # recycled at a turn boundary before OpenAI's 60-minute session cap
    # The largest client frame the gateway carries: it travels whole as one bus message, so it must fit
    # the nats-server's max_payload (1 MiB by default) with the envelope (the edge checks at start).
    max_frame_bytes: int = 1024 * 1024 - 1024
    rate_limit_fps: float = 250.0  # client frames per second per connection (0: no limit); audio is ~50/s
    rate_burst: int = 1000  # frames a connection may send at once above the rate (a clip sent in one go)
    max_sessions_per_account: int = 0  # concurrent sessions per account, fleet-wide (Redis leases); 0: unlimited
    session_lease_s: float = 15.0  # a session's seat lease; an edge killed -9 frees its seats this long after
    log_level: str = "INFO"
    log_format: str = "json"  # "json" (one object per line) or "text" (rtswitch dev's human format)
    metrics_port: int | None = None  # /metrics on this port for processes without an HTTP server of their own
    instance_id: str = ""

    def provider_settings(self) -> dict[str, str]:
        """The string settings a provider plugin reads (keys and URLs live only in workers)."""
        return {
            "OPENAI_API_KEY": self.openai_api_key,
            "OPENAI_REALTIME_URL": self.openai_realtime_url,
            "OPENAI_MODEL": self.openai_model,
            "RS_OPENAI_MAX_SESSION_S": str(self.openai_max_session_s),
            "GEMINI_API_KEY": self.gemini_api_key,
            "GEMINI_LIVE_URL": self.gemini_live_url,
            "GEMINI_MODEL": self.gemini_model,
            "AZURE_OPENAI_API_KEY": self.azure_openai_api_key,
            "AZURE_OPENAI_REALTIME_URL": self.azure_openai_realtime_url,
            "AZURE_OPENAI_DEPLOYMENT": self.azure_openai_deployment,
            "AZURE_OPENAI_API_VERSION": self.azure_openai_api_version,
        }


def parse_accounts(raw: str) -> dict[str, str]:
    """Seed format: ``id=secret,id2=secret2``."""
    accounts: dict[str, str] = {}
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        account, sep, secret = entry.partition("=")
        if not sep or not account.strip() or not secret.strip():
            raise ConfigError("ACCOUNTS: each entry must be <account id>=<secret>, comma separated")
        accounts[account.strip()] = secret.strip()
    if not accounts:
        raise ConfigError("ACCOUNTS: no account defined")
    return accounts


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def _int_range(low: int, high: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw)
        if not low <= value <= high:
            raise ValueError(f"expected an integer in [{low}, {high}]")
        return value

    return parse


def _float_range(low: float, high: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError(f"expected a number in [{low}, {high}]")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if not any(raw.startswith(f"{s}://") for s in schemes):
            raise ValueError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return raw

    return parse


def _pattern(regex: str, expected: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(raw: str) -> str:
        if not compiled.fullmatch(raw.strip()):
            raise ValueError(f"expected {expected}")
        return raw.strip()

    return parse


def _url_list(*schemes: str) -> Callable[[str], str]:
    """A comma-separated list of URLs (a NATS cluster's seed servers); each one checked like ``_url``."""
    one = _url(*schemes)

    def parse(raw: str) -> str:
        urls = [one(part.strip()) for part in raw.split(",") if part.strip()]
        if not urls:
            raise ValueError("expected at least one URL")
        return ",".join(urls)

    return parse


def _host_ports(raw: str) -> str:
    """``host:port,host:port`` (Sentinel addresses)."""
    parts = [part.strip() for part in raw.split(",") if part.strip()]
    for part in parts:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65_536:
            raise ValueError(f"expected host:port[,host:port...], got {part!r}")
    return ",".join(parts)


def _provider(raw: str) -> str:
    return raw.strip().lower()


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return parse


# One row per variable: (env name, Config field, parser). Unset or empty variables keep the default.
_FIELDS: list[tuple[str, str, Callable[[str], Any]]] = [
    ("HOST", "host", str),
    ("PORT", "port", _int_range(0, 65_535)),
    ("NATS_URL", "nats_url", _url_list("nats", "tls", "ws", "wss")),  # comma-separated: a cluster's servers
    ("REDIS_URL", "redis_url", _url("redis", "rediss", "unix")),
    ("REDIS_SENTINELS", "redis_sentinels", _host_ports),
    ("REDIS_SENTINEL_MASTER", "redis_sentinel_master", str),
    ("OPENAI_API_KEY", "openai_api_key", str),
    ("GEMINI_API_KEY", "gemini_api_key", str),
    ("OPENAI_REALTIME_URL", "openai_realtime_url", _url("ws", "wss")),
    ("GEMINI_LIVE_URL", "gemini_live_url", _url("ws", "wss")),
    ("OPENAI_MODEL", "openai_model", str),
    ("GEMINI_MODEL", "gemini_model", str),
    ("AZURE_OPENAI_API_KEY", "azure_openai_api_key", str),
    ("AZURE_OPENAI_REALTIME_URL", "azure_openai_realtime_url", _url("ws", "wss")),
    # Azure's naming rule for deployments: letters, digits, '-', '_', '.', at most 64
    ("AZURE_OPENAI_DEPLOYMENT", "azure_openai_deployment", _pattern(r"[A-Za-z0-9._-]{1,64}", "a deployment name")),
    # GA only: a -preview version makes Azure speak the beta protocol, which the OpenAI codec does not send
    ("AZURE_OPENAI_API_VERSION", "azure_openai_api_version",
     _pattern(r"\d{4}-\d{2}-\d{2}", "a GA api-version such as 2025-08-28 (no -preview)")),
    ("ACCOUNTS", "accounts", parse_accounts),
    ("ENABLE_DB", "enable_db", _bool),
    ("RS_ACCOUNTS_REFRESH_S", "accounts_refresh_s", _float_range(0.05, 3_600)),
    ("RS_TOKEN_MAX_S", "token_max_s", _int_range(10, 30 * 86_400)),
    ("SWITCH_LATENCY_THRESHOLD_MS", "switch_latency_threshold_ms", _int_range(1, 600_000)),
    ("SWITCH_FAILURE_COUNT", "switch_failure_count", _int_range(1, 1_000)),
    ("RS_FALLBACK", "fallback", parse_fallback),
    ("RS_AUTO_SWITCH", "auto_switch", _bool),
    ("RS_SWITCH_COOLDOWN_S", "switch_cooldown_s", _float_range(0, 86_400)),
    ("RS_SWITCH_MIN_DWELL_S", "switch_min_dwell_s", _float_range(0, 86_400)),
    ("RS_BREAKER_SESSIONS", "breaker_sessions", _int_range(1, 100_000)),
    ("RS_BREAKER_WINDOW_S", "breaker_window_s", _float_range(0.1, 3_600)),
    ("RS_BREAKER_OPEN_S", "breaker_open_s", _float_range(0.1, 86_400)),
    ("RS_DEFAULT_PROVIDER", "default_provider", _provider),
    ("RS_CLIENT_COMPRESSION", "client_compression", _one_of("none", "deflate")),
    ("RS_TLS_CERT", "tls_cert", str),
    ("RS_TLS_KEY", "tls_key", str),
    ("RS_SESSION_TTL_S", "session_ttl_s", _int_range(60, 30 * 86_400)),
    ("RS_GEMINI_SETUP_WAIT_MS", "gemini_setup_wait_ms", _int_range(0, 10_000)),
    ("RS_ADMIN_PORT", "admin_port", _int_range(1, 65_535)),
    ("RS_REATTACH_BUDGET_MS", "reattach_budget_ms", _int_range(100, 600_000)),
    ("RS_STALL_MS", "stall_ms", _int_range(100, 600_000)),
    ("RS_OPENAI_MAX_SESSION_S", "openai_max_session_s", _float_range(0.5, 3_600.0)),
    ("RS_MAX_FRAME_BYTES", "max_frame_bytes", _int_range(1024, 64 * 1024 * 1024)),
    ("RS_RATE_LIMIT_FPS", "rate_limit_fps", _float_range(0, 1_000_000)),
    ("RS_RATE_BURST", "rate_burst", _int_range(1, 1_000_000)),
    ("RS_MAX_SESSIONS_PER_ACCOUNT", "max_sessions_per_account", _int_range(0, 1_000_000)),
    ("RS_SESSION_LEASE_S", "session_lease_s", _float_range(1.0, 3_600)),
    ("LOG_LEVEL", "log_level", str.upper),
    ("RS_LOG_FORMAT", "log_format", _one_of("json", "text")),
    ("RS_METRICS_PORT", "metrics_port", _int_range(1, 65_535)),
    ("RS_INSTANCE_ID", "instance_id", str),
]


def read_dotenv(path: Path) -> dict[str, str]:
    """Minimal ``.env`` reader: ``KEY=value`` lines, ``#`` comments, optional quotes, ``export`` prefix."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected KEY=value")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def load_config(
    env: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env"), **overrides: Any
) -> Config:
    """Environment wins over ``.env``; keyword overrides (command-line flags) win over both."""
    merged: dict[str, str] = {}
    if dotenv is not None:
        merged.update(read_dotenv(dotenv))
    merged.update(os.environ if env is None else env)
    values: dict[str, Any] = {"accounts": parse_accounts(DEFAULT_ACCOUNTS)}
    for name, field, parse in _FIELDS:
        raw = merged.get(name)
        if raw is None or raw == "":
            continue
        try:
            values[field] = parse(raw)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(f"{name}: invalid value ({exc})") from None
    values.update({k: v for k, v in overrides.items() if v is not None})
    return Config(**values)
