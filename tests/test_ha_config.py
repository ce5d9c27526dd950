"""The HA settings: a NATS server list, Sentinel addresses, and the stream's replica count from the server's
INFO (pure parts; the running cluster is tests/e2e/test_ha.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from shared.bus import stream_replicas
from shared.config import ConfigError, load_config


def test_nats_url_takes_a_server_list() -> None:
    config = load_config({"NATS_URL": "nats://a:4222, nats://b:4222,,nats://c:4222"}, dotenv=None)
    assert config.nats_url == "nats://a:4222,nats://b:4222,nats://c:4222"
    assert load_config({"NATS_URL": "nats://a:4222"}, dotenv=None).nats_url == "nats://a:4222"


@pytest.mark.parametrize("raw", ["nats://a:4222,http://b:4222", "a:4222"])
def test_every_server_of_the_list_is_checked(raw: str) -> None:
    with pytest.raises(ConfigError, match="NATS_URL"):
        load_config({"NATS_URL": raw}, dotenv=None)


def test_sentinels() -> None:
    config = load_config({"REDIS_SENTINELS": "s1:26379, s2:26379,10.0.0.3:26380"}, dotenv=None)
    assert (config.redis_sentinels, config.redis_sentinel_master) == ("s1:26379,s2:26379,10.0.0.3:26380", "mymaster")
    assert load_config({}, dotenv=None).redis_sentinels == ""  # unset: REDIS_URL
    assert load_config({"REDIS_SENTINEL_MASTER": "rs"}, dotenv=None).redis_sentinel_master == "rs"


@pytest.mark.parametrize("raw", ["s1", "s1:port", "s1:0", "s1:70000", ":26379"])
def test_a_bad_sentinel_address_names_the_variable(raw: str) -> None:
    with pytest.raises(ConfigError, match="REDIS_SENTINELS"):
        load_config({"REDIS_SENTINELS": raw}, dotenv=None)


@pytest.mark.parametrize(("connect_urls", "replicas"), [
    (None, 1), ([], 1), (["a:4222"], 1), (["a:4222", "b:4222"], 1), (["a:4222", "b:4222", "c:4222"], 3),
    (["a", "b", "c", "d", "e"], 3),
])
def test_stream_replicas_follow_the_cluster_size(connect_urls: list[str] | None, replicas: int) -> None:
    info = {} if connect_urls is None else {"connect_urls": connect_urls}
    assert stream_replicas(SimpleNamespace(_server_info=info)) == replicas  # type: ignore[arg-type]


def test_metrics_port_and_log_format() -> None:
    config = load_config({"RS_METRICS_PORT": "9100", "RS_LOG_FORMAT": "text"}, dotenv=None)
    assert (config.metrics_port, config.log_format) == (9100, "text")
    with pytest.raises(ConfigError, match="RS_LOG_FORMAT"):
        load_config({"RS_LOG_FORMAT": "xml"}, dotenv=None)
