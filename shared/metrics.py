"""Prometheus metrics, one registry per process. Labels never carry session ids, keys or payloads."""

from __future__ import annotations

import functools
import time

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "ASSIGN_SECONDS",
    "BREAKER_OPEN",
    "BUS_RECONNECTS",
    "CHECKPOINT_REFOLDS",
    "CHECKPOINT_REPLICA_WAITS",
    "FRAMES",
    "HOPS",
    "HOP_SECONDS",
    "LOG_PUBLISH_GAVE_UP",
    "LOG_PUBLISH_RETRIES",
    "NOTICES",
    "PROBES",
    "PROVIDER_CONNECTS",
    "PROVIDER_ERRORS",
    "REATTACHES",
    "REATTACH_GAVE_UP",
    "REATTACH_SECONDS",
    "REDIS_RECONNECTS",
    "REFUSALS",
    "REPLAYED",
    "SESSIONS",
    "SWITCHES",
    "SWITCH_GAP_SECONDS",
    "TIME_TO_FIRST_AUDIO",
    "UPSTREAM_RECONNECTS",
    "UPSTREAM_ROTATIONS",
    "frame_counter",
    "observe_hop",
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

# Per-hop latency on the bus: the sender stamps its wall clock on every bus message (``sent`` of
# ClientIn, Envelope, ClientOut), the receiver observes now - sent. One machine or NTP-synchronised hosts:
# cross-host skew shows up here as latency (clamped at 0).
HOPS = ("edge_transformer", "transformer_worker", "worker_transformer", "transformer_edge")
HOP_SECONDS = Histogram(
    "rs_hop_seconds", "Bus message sent -> handled by the next process (frames held during a replacement's "
    "catch-up included)", ["hop"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
TIME_TO_FIRST_AUDIO = Histogram(
    "rs_time_to_first_audio_seconds",
    "End of the user's turn (commit or speech stop) -> the provider's first audio, at the worker (the "
    "provider's round trip; the client hears it after the worker_transformer and transformer_edge hops)",
    ["provider"], buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10),
)
BUS_RECONNECTS = Counter("rs_bus_reconnects_total", "NATS connection re-established (a server restarted or left)")
REDIS_RECONNECTS = Counter(
    "rs_redis_reconnects_total", "Redis commands retried after a connection failure (each retry reconnects; "
    "a Sentinel client asks the sentinels for the primary again)",
)
LOG_PUBLISH_RETRIES = Counter(
    "rs_log_publish_retries_total", "Log-part envelopes published again because the stream did not ack them "
    "(no stream leader, a reconnect)",
)
LOG_PUBLISH_GAVE_UP = Counter(
    "rs_log_publish_gave_up_total", "Log-part envelopes the stream did not ack within the bound (may be missing "
    "from the log)",
)
CHECKPOINT_REPLICA_WAITS = Counter(
    "rs_checkpoint_replica_waits_total", "Checkpoint batches that waited for the Redis replica (Sentinel mode), "
    "by result: confirmed, or unconfirmed (no replica answered in time)", ["result"],
)
CHECKPOINT_REFOLDS = Counter(
    "rs_checkpoint_refolds_total", "Checkpoint batches folded again because a Redis command failed meanwhile",
)


# Label children of the per-frame metrics, made on first use and kept: ``.labels(...)`` validates the
# labels, takes a lock and looks the child up on every call, a cost per audio frame at every hop. Made
# lazily (not at import) so a process exports only the series it really counts.
@functools.cache
def frame_counter(service: str, direction: str) -> Counter:
    """The rs_frames_total child of (service, direction)."""
    return FRAMES.labels(service, direction)


@functools.cache
def _hop(hop: str) -> Histogram:
    return HOP_SECONDS.labels(hop)


def observe_hop(hop: str, sent: float) -> None:
    """One bus message of ``hop`` handled now; ``sent`` 0: a sender that stamps nothing (older version)."""
    if sent:
        _hop(hop).observe(max(0.0, time.time() - sent))
