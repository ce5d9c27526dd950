"""compose.yaml, ops/Dockerfile, ops/compose/* and ops/dashboards/*.json checked against the code, statically.

No Docker engine runs here, so nothing is built or started. What is checked: every service's command is an
``rtswitch`` command whose parser accepts its arguments; every variable our services get is one
shared/config.py reads, and the whole environment loads (``load_config``) for every service; ports agree
(published, metrics/admin, health checks, Prometheus targets, Grafana); scaled services have no fixed names
or host ports; every image is pinned; the Dockerfile is slim, non-root, runs ``rtswitch``, installs from the
pyproject and has a health check; the NATS cluster and Sentinel configs name the compose services; and the
dashboard's queries name metrics shared.metrics exports, covering the panels operators need.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from services.dev.stack import SERVICE_MODULES
from shared import metrics
from shared.config import _FIELDS, load_config

ROOT = Path(__file__).resolve().parents[1]
OURS = ("edge", "transformer", "provider-worker", "checkpoint")
FAKES = ("fake-openai", "fake-gemini")
NATS_NODES = ("nats-1", "nats-2", "nats-3")
SENTINELS = ("redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3")
METRICS_PORT = 9100
# Variables our containers may get that shared/config.py does not read, and why.
NOT_CONFIG = {"PYTHONUNBUFFERED": "the Python runtime"}
_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(:?-)([^}]*)\}|\$\{(\w+)\}")


def interpolate(value: str, host_env: dict[str, str]) -> str:
    """Compose's substitution: ``${VAR:-default}`` (unset or empty), ``${VAR-default}`` (unset), ``${VAR}``."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(4):
            return host_env.get(m.group(4), "")
        name, op, default = m.group(1), m.group(2), m.group(3)
        if op == ":-":
            return host_env.get(name) or default
        return host_env.get(name, default)
    return _INTERPOLATION.sub(one, value)


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def services() -> dict[str, Any]:
    return compose()["services"]


def env_of(name: str, host_env: dict[str, str] | None = None) -> dict[str, str]:
    return {k: interpolate(str(v), host_env or {}) for k, v in (services()[name].get("environment") or {}).items()}


CONFIG_VARS = {name for name, _, _ in _FIELDS}


@pytest.mark.parametrize("name", OURS)
def test_every_variable_is_one_the_code_reads_and_loads(name: str) -> None:
    env = env_of(name)
    unknown = set(env) - CONFIG_VARS - set(NOT_CONFIG)
    assert not unknown, f"{name} sets variables shared/config.py does not read: {sorted(unknown)}"
    config = load_config(env, dotenv=None)  # raises ConfigError on a bad value
    assert config.host == "0.0.0.0", "other containers (Prometheus, the edge's clients) reach it"
    assert [u.split("//")[1].split(":")[0] for u in config.nats_url.split(",")] == list(NATS_NODES)
    assert [a.split(":")[0] for a in config.redis_sentinels.split(",")] == list(SENTINELS)
    assert config.redis_sentinel_master in (ROOT / "ops/compose/sentinel.conf").read_text()
    assert config.log_format == "json"
    # Exactly one listener serves /metrics and /healthz on 9100: the edge's admin port, else RS_METRICS_PORT.
    if name == "edge":
        assert (config.admin_port, config.metrics_port, config.port) == (METRICS_PORT, None, 3000)
    else:
        assert (config.admin_port, config.metrics_port) == (None, METRICS_PORT)


def test_minimal_profile_switches_to_a_single_redis() -> None:
    """README's minimal command: the Sentinel list emptied, REDIS_URL at the `redis` service."""
    host = {"RS_COMPOSE_REDIS_SENTINELS": "", "RS_COMPOSE_REDIS_URL": "redis://redis:6379/0"}
    config = load_config(env_of("checkpoint", host), dotenv=None)
    assert (config.redis_sentinels, config.redis_url) == ("", "redis://redis:6379/0")
    assert services()["redis"]["profiles"] == ["minimal"]
    assert "--appendonly" in services()["redis"]["command"]


@pytest.mark.parametrize("name", OURS + FAKES)
def test_every_command_is_an_rtswitch_command_that_parses(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    service = services()[name]
    argv = [str(a) for a in service["entrypoint"][-1:]] if "entrypoint" in service else service["command"]
    command, args = argv[0], argv[1:]
    assert command in SERVICE_MODULES, f"{name}: {command} is not an rtswitch command"
    main = importlib.import_module(f"{SERVICE_MODULES[command]}.__main__")
    if name in FAKES:
        main._parse(args)  # a parse error exits 2
        assert args[args.index("--port") + 1] in ports_in_entrypoint(), f"{name}: the worker points elsewhere"
        return
    # Our services parse, load their config from the container's environment, build the service, then run it:
    # ``run`` is replaced, so everything up to serving happens (a bad argument or variable exits 2).
    for key in list(CONFIG_VARS):
        monkeypatch.delenv(key, raising=False)
    for key, value in env_of(name).items():
        monkeypatch.setenv(key, value)
    started: list[str] = []
    # ``run`` is imported inside main (after announcing the NATS URL): replaced where it lives.
    monkeypatch.setattr("shared.runtime.run", lambda service, config: started.append(service.name))
    main.main(args)
    assert started, f"{name}: {argv} did not start a service"


def ports_in_entrypoint() -> set[str]:
    return set(re.findall(r"ws://fake-\w+:(\d+)/", "\n".join(services()["provider-worker"]["entrypoint"])))


def test_scaled_services_have_no_fixed_names_or_host_ports() -> None:
    for name in ("provider-worker", "transformer", "checkpoint"):
        service = services()[name]
        assert "container_name" not in service and "ports" not in service, name
    assert not any("container_name" in s for s in services().values())
    edge_ports = services()["edge"]["ports"]
    assert [interpolate(p, {}) for p in edge_ports] == ["3000:3000"]  # the client port, PORT in the container


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service["image"]
        if "build" in service:
            assert image == "realtime-switch:dev", name  # ours, built from ops/Dockerfile
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and re.match(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not pinned to a release"
    for line in (ROOT / "ops/Dockerfile").read_text().splitlines():
        if line.startswith("FROM "):
            assert re.match(r"FROM python:\d+\.\d+\.\d+-slim", line), line


def test_dockerfile_is_slim_non_root_and_runs_rtswitch_with_a_health_check() -> None:
    text = (ROOT / "ops/Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines()]
    user = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("root", "0"), "runs as a non-root user"
    assert 'ENTRYPOINT ["rtswitch"]' in lines
    assert "COPY pyproject.toml" in text and "pip wheel --wheel-dir /wheels ." in text  # dependencies: pyproject
    health = next(line for line in lines if line.startswith("CMD [\"python\"")) if "HEALTHCHECK" in text else ""
    assert health and "/healthz" in health and "RS_METRICS_PORT" in health and "RS_ADMIN_PORT" in health
    # Every package the console script imports is copied into the build.
    for package in ("shared", "services"):
        assert f"COPY {package} ./{package}" in text
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'rtswitch = "services.cli:main"' in pyproject


def test_health_checks_and_dependencies() -> None:
    all_services = services()
    for name in (*NATS_NODES, "redis-primary", "redis-replica", *SENTINELS, *FAKES):
        assert "healthcheck" in all_services[name], f"{name} has no health check"
    for name in OURS:  # the image's HEALTHCHECK (not overridden) and NATS up before they start
        assert "healthcheck" not in all_services[name]
        depends = all_services[name]["depends_on"]
        assert all(depends[n]["condition"] == "service_healthy" for n in NATS_NODES), name
    for name in FAKES:
        port = all_services[name]["command"][-1]
        assert f"'127.0.0.1', {port}" in " ".join(all_services[name]["healthcheck"]["test"])
        assert all_services[name]["profiles"] == ["fakes"]


def test_nats_cluster_config() -> None:
    conf = (ROOT / "ops/compose/nats.conf").read_text()
    assert "jetstream" in conf and "store_dir: /data/jetstream" in conf
    assert re.findall(r"nats-route://([\w-]+):6222", conf) == list(NATS_NODES)
    for name in NATS_NODES:
        node = services()[name]
        assert node["environment"] == {"NATS_SERVER_NAME": name}
        assert f"{name}:/data" in node["volumes"], f"{name}: its JetStream store on a volume of its own"
        assert "8222/healthz" in " ".join(node["healthcheck"]["test"])
        assert re.match(r"nats:2\.(1[1-9]|[2-9]\d)\.", node["image"]), "batched direct gets need nats-server 2.11+"


def test_redis_failover_config() -> None:
    conf = (ROOT / "ops/compose/sentinel.conf").read_text()
    monitor = re.search(r"sentinel monitor (\w+) ([\w-]+) (\d+) (\d+)", conf)
    assert monitor is not None
    _, host, port, quorum = monitor.groups()
    assert (host, port) == ("redis-primary", "6379") and int(quorum) == len(SENTINELS) // 2 + 1
    assert "announce-hostnames yes" in conf, "clients get service names, not container addresses"
    replica = services()["redis-replica"]["command"]
    assert replica[replica.index("--replicaof") + 1:] == ["redis-primary", "6379"]
    for name in ("redis-primary", "redis-replica"):
        assert "--appendonly" in services()[name]["command"]


def test_prometheus_scrapes_every_process_on_its_metrics_port() -> None:
    prom = yaml.safe_load((ROOT / "ops/compose/prometheus.yml").read_text())
    targets = {
        job["job_name"]: (job["dns_sd_configs"][0]["names"], job["dns_sd_configs"][0]["port"])
        for job in prom["scrape_configs"]
    }
    assert targets == {name: ([name], METRICS_PORT) for name in OURS}
    monitoring = {n for n, s in services().items() if "monitoring" in s.get("profiles", [])}
    assert monitoring == {"prometheus", "grafana"}
    grafana = services()["grafana"]
    assert "./ops/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    provider = yaml.safe_load((ROOT / "ops/compose/grafana/provisioning/dashboards/rtswitch.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((ROOT / "ops/compose/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


def _exported() -> set[str]:
    """Every sample name shared.metrics exports (counters' _total, histograms' _bucket/_sum/_count)."""
    names: set[str] = set()
    collectors = [getattr(metrics, n) for n in metrics.__all__ if isinstance(getattr(metrics, n), MetricWrapperBase)]
    for collector in collectors:
        for metric in collector.describe():
            if metric.name.startswith("rs_"):
                if metric.type == "counter":
                    names |= {f"{metric.name}_total"}
                elif metric.type == "histogram":
                    names |= {f"{metric.name}_{s}" for s in ("bucket", "sum", "count")}
                else:
                    names.add(metric.name)
    return names


def test_dashboard_queries_name_metrics_the_code_exports() -> None:
    exported = _exported()
    assert {"rs_sessions", "rs_frames_total", "rs_hop_seconds_bucket"} <= exported
    for path in sorted((ROOT / "ops/dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        used: set[str] = set()
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "prometheus"
                used |= set(re.findall(r"\brs_\w+", target["expr"]))
        unknown = used - exported
        assert not unknown, f"{path.name} queries metrics nobody exports: {sorted(unknown)}"
        needed = {
            "rs_sessions", "rs_frames_total", "rs_hop_seconds_bucket", "rs_time_to_first_audio_seconds_bucket",
            "rs_reattaches_total", "rs_switches_total", "rs_switch_gap_seconds_bucket", "rs_breaker_open",
            "rs_provider_errors_total",
        }
        assert needed <= used, f"{path.name} lacks panels for {sorted(needed - used)}"
