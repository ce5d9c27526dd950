"""Startup checks and what a service prints (shared/bus.py, shared/startup.py): pure parts."""

from __future__ import annotations

from shared.bus import MIN_SERVER_VERSION, parse_version
from shared.startup import redact


def test_server_versions() -> None:
    assert parse_version("2.11.0") == (2, 11, 0) >= MIN_SERVER_VERSION
    assert parse_version("v2.12.1-RC.2") == (2, 12, 1)
    assert parse_version("2.10.22") < MIN_SERVER_VERSION
    assert parse_version("2.9") == (2, 9, 0)
    assert parse_version("") == (0, 0, 0) < MIN_SERVER_VERSION
    assert parse_version("10.0.0") > MIN_SERVER_VERSION  # numbers, not text


def test_redact_hides_passwords_only() -> None:
    assert redact("redis://user:pw@host:6379/0") == "redis://user:***@host:6379/0"
    assert redact("nats://tok:secret@10.0.0.1:4222") == "nats://tok:***@10.0.0.1:4222"
    assert redact("redis://host:6379/0") == "redis://host:6379/0"
    assert redact("nats://token@host:4222") == "nats://token@host:4222"  # a bare token: no ':' to split on
    assert redact("unix:///tmp/redis.sock") == "unix:///tmp/redis.sock"
