"""Prometheus metrics, one registry per process. Labels never carry session ids, keys or payloads."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ASSIGN_SECONDS",
    "BREAKER_OPEN",
    "FRAMES",
    "NOTICES",
    "PROBES",
    "PROVIDER_CONNECTS",
    "PROVIDER_ERRORS",
    "REATTACHES",
    "REATTACH_GAVE_UP",
    "REATTACH_SECONDS",
    "REFUSALS",
    "REPLAYED",
    "SESSIONS",
    "SWITCHES",
    "SWITCH_GAP_SECONDS",
    "UPSTREAM_RECONNECTS",
    "UPSTREAM_ROTATIONS",
]

SESSIONS = Gauge("rs_sessions", "Live sessions held by this process", ["service"])
FRAMES = Counter("rs_frames_total", "Frames handled", ["service", "direction"])
REFUSALS = Counter("rs_refusals_total", "Connections refused at the edge", ["status"])
NOTICES = Counter(
    "rs_notices_total", "Fields or events a target approximated or ignored (never an error)", ["code", "param"]
)
ASSIGN_SECONDS = Histogram(
    "rs_assign_seconds", "Time to attach a session to a transformer and a worker",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PROVIDER_CONNECTS = Counter("rs_provider_connects_total", "Upstream connections opened", ["provider"])
PROVIDER_ERRORS = Counter("rs_provider_errors_total", "Upstream failures", ["provider", "code"])
REATTACHES = Counter("rs_reattaches_total", "Sessions moved to a replacement instance", ["role"])
REATTACH_GAVE_UP = Counter(
    "rs_reattach_gave_up_total", "Sessions closed because no replacement came within the budget", ["role"]
)
REATTACH_SECONDS = Histogram(
    "rs_reattach_seconds", "Dead instance noticed -> replacement attached",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
REPLAYED = Counter("rs_replayed_events_total", "Events replayed from the stream to a replacement worker")
UPSTREAM_RECONNECTS = Counter("rs_upstream_reconnects_total", "Upstream reconnects", ["provider"])
UPSTREAM_ROTATIONS = Counter(
    "rs_upstream_rotations_total", "Upstream connections replaced on purpose before the provider ended them",
    ["provider"],
)
PROBES = Counter(
    "rs_liveness_probes_total", "Probes of instances whose beats were late, by outcome (alive: a failover spared)",
    ["result"],
)
SWITCHES = Counter("rs_switches_total", "Sessions moved to another provider", ["reason", "from", "to"])
SWITCH_GAP_SECONDS = Histogram(
    "rs_switch_gap_seconds", "Switch decided (or the turn end it waited for) -> new upstream ready",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
BREAKER_OPEN = Gauge("rs_breaker_open", "1 while the fleet breaker keeps sessions away from a provider", ["provider"])
