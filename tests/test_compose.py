"""compose.yaml's key wiring, checked statically: provider keys reach only the provider-worker containers, and
a provider with a key goes to the real endpoint while one without a key goes to its fake container.

There is no compose engine in CI: the test applies compose's interpolation (``${VAR:-default}``, ``$$``) to the
worker's entrypoint itself, then runs that entrypoint with ``sh`` and a stand-in ``rtswitch`` that prints the
environment the worker would start with.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
KEY_VARS = ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY")
REAL_OPENAI = "wss://api.openai.com/v1/realtime"  # the worker's default when OPENAI_REALTIME_URL is empty
_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}")


def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def interpolate(value: str, host_env: dict[str, str]) -> str:
    """Compose's substitution for the forms compose.yaml uses."""
    def one(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return host_env.get(m.group(1)) or (m.group(2) or "")
    return _INTERPOLATION.sub(one, value)


def test_keys_reach_only_the_provider_workers() -> None:
    services = compose()["services"]
    for name, service in services.items():
        env = service.get("environment") or {}
        keys = {k for k in env if k in KEY_VARS or (k.endswith("_URL") and k not in ("NATS_URL", "REDIS_URL"))}
        if name == "provider-worker":
            assert set(KEY_VARS) <= keys
        else:
            assert keys == set(), f"{name} gets {keys}"


def worker_env(host_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The environment `rtswitch provider-worker` starts with in the container, for this host env/.env."""
    worker = compose()["services"]["provider-worker"]
    env = {k: interpolate(str(v), host_env) for k, v in worker["environment"].items()}
    entrypoint = [interpolate(str(part), host_env) for part in worker["entrypoint"]]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    stub = bin_dir / "rtswitch"  # stands in for the image's console script
    stub.write_text(f"#!{sys.executable}\nimport json, os, sys\nprint(json.dumps([sys.argv[1:], dict(os.environ)]))\n")
    stub.chmod(0o755)
    result = subprocess.run(
        entrypoint, env={**env, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=10, check=True,
    )
    argv, final = json.loads(result.stdout)
    assert argv == ["provider-worker"]
    return final


@pytest.mark.parametrize(("host_env", "real"), [
    ({}, set()),
    ({"OPENAI_API_KEY": "sk-real"}, {"openai"}),
    ({"GEMINI_API_KEY": "g-real"}, {"gemini"}),
    ({"OPENAI_API_KEY": "sk-real", "GEMINI_API_KEY": "g-real"}, {"openai", "gemini"}),
])
def test_a_key_makes_its_provider_real(host_env: dict[str, str], real: set[str], tmp_path: Path) -> None:
    env = worker_env(host_env, tmp_path)
    if "openai" in real:
        assert env["OPENAI_API_KEY"] == "sk-real"
        assert env["OPENAI_REALTIME_URL"] in ("", REAL_OPENAI)  # empty: the worker's default, the real one
    else:
        assert env["OPENAI_API_KEY"] == "fake-openai-key"
        assert env["OPENAI_REALTIME_URL"] == "ws://fake-openai:9001/v1/realtime"
    if "gemini" in real:
        assert env["GEMINI_API_KEY"] == "g-real"
        assert env["GEMINI_LIVE_URL"] == ""
    else:
        assert env["GEMINI_API_KEY"] == "fake-gemini-key"
        assert env["GEMINI_LIVE_URL"].startswith("ws://fake-gemini:9002/ws/")


def test_an_explicit_url_wins_for_a_real_provider(tmp_path: Path) -> None:
    env = worker_env({"OPENAI_API_KEY": "sk-real", "OPENAI_REALTIME_URL": "wss://proxy.example/v1/realtime"}, tmp_path)
    assert env["OPENAI_REALTIME_URL"] == "wss://proxy.example/v1/realtime"


def test_fake_ports_match_the_fake_services() -> None:
    services = compose()["services"]
    entry = "\n".join(services["provider-worker"]["entrypoint"])
    for fake in ("fake-openai", "fake-gemini"):
        command = services[fake]["command"]
        port = command[command.index("--port") + 1]
        assert f"ws://{fake}:{port}/" in entry
