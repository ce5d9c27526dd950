"""What an operator sees when the infrastructure is missing or wrong, with real processes: every service says
which NATS / Redis URL it waits for within a second, keeps trying, and stops at once on SIGTERM/SIGINT; an
edge whose frame limit does not fit the bus refuses to start with what to change."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.dev.stack import free_port

from ..conftest import Infra

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ["edge", "transformer", "provider-worker", "checkpoint"]
# From the process being spawned to the URL on the screen: the brief's second, plus Python's own start on a
# loaded 2-core machine (~0.3 s idle). The service announces before importing the bus, store and codecs.
SAY_WITHIN_S = 1.5
STOP_WITHIN_S = 2.0


class Service:
    """``rtswitch <command>`` as a child process whose output lines are collected with their arrival time."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        merged = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", "PORT": str(free_port()), **env}
        for key in ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY"):
            merged.pop(key, None)
        self.started = time.monotonic()
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "services.cli", command], env=merged,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, text: str, timeout: float = 20.0) -> float:
        """When the first line holding ``text`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in list(self.lines):
                if text in line:
                    return at
            if self.popen.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"{text!r} not printed; output: {self.output()}")

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def stop(self, sig: int) -> float:
        """Send ``sig``; seconds until the process exited."""
        sent = time.monotonic()
        self.popen.send_signal(sig)
        try:
            self.popen.wait(10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise AssertionError(f"still running 10 s after {signal.Signals(sig).name}: {self.output()}") from None
        return time.monotonic() - sent


@pytest.fixture
def closed_port() -> Iterator[int]:
    yield free_port()  # nothing listens there


@pytest.mark.parametrize("command", SERVICES)
def test_no_nats_is_said_at_once_and_sigterm_stops_it(command: str, closed_port: int) -> None:
    url = f"nats://127.0.0.1:{closed_port}"
    service = Service(command, {"NATS_URL": url, "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0"})
    try:
        said = service.wait_for(f"connecting to NATS at {url}")
        assert said - service.started <= SAY_WITHIN_S, (said - service.started, service.output())
        service.wait_for(f"NATS not reachable at {url}")
        time.sleep(0.5)  # let it sit in its retry loop: SIGTERM must end it there, not only before it
        assert service.popen.poll() is None, service.output()  # still trying
        took = service.stop(signal.SIGTERM)
    finally:
        if service.popen.poll() is None:
            service.popen.kill()
    assert took <= STOP_WITHIN_S, (took, service.output())
    assert service.popen.returncode == 0
    assert "Traceback" not in service.output()


def test_no_redis_is_said_with_its_url_and_sigint_stops_it(infra: Infra, closed_port: int) -> None:
    redis_url = f"redis://user:secret@127.0.0.1:{closed_port}/0"
    service = Service("edge", {"NATS_URL": infra.nats_url, "REDIS_URL": redis_url})
    try:
        nats_ok = service.wait_for("connecting to Redis at")
        said = service.wait_for(f"Redis not reachable at redis://user:***@127.0.0.1:{closed_port}/0")
        assert said - nats_ok <= SAY_WITHIN_S, service.output()
        assert "secret" not in service.output()  # the password is never printed
        took = service.stop(signal.SIGINT)
    finally:
        if service.popen.poll() is None:
            service.popen.kill()
    assert took <= STOP_WITHIN_S, (took, service.output())
    assert "Traceback" not in service.output()


def test_a_frame_limit_the_bus_cannot_carry_refuses_to_start(infra: Infra, closed_port: int) -> None:
    service = Service("edge", {
        "NATS_URL": infra.nats_url, "REDIS_URL": f"redis://127.0.0.1:{closed_port}/0",
        "RS_MAX_FRAME_BYTES": str(2 * 1024 * 1024)})
    try:
        service.popen.wait(30)
    finally:
        if service.popen.poll() is None:
            service.popen.kill()
    assert service.popen.returncode == 2, service.output()
    out = service.output()
    assert "cannot start: RS_MAX_FRAME_BYTES=2097152 does not fit the bus" in out, out
    assert "max_payload" in out and "Traceback" not in out
