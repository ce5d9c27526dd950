"""The framework venvs' install step: an unreachable index is a skip, any other pip failure is a failure.

Real pip in a real venv, pointed at a closed local port (unreachable) or at an empty local index (reachable,
nothing to install); the pip configuration of the machine is kept out (``PIP_CONFIG_FILE=/dev/null``).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from . import venvs

pytestmark = pytest.mark.timeout(300)

MISSING = "rtswitch-no-such-package==1.0.0"


def _pip_env(index_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update({"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": index_url})
    return env


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once the socket closes


@pytest.fixture
def requirements(tmp_path: Path) -> Path:
    path = tmp_path / "reqs.txt"
    path.write_text(MISSING + "\n")
    return path


def test_unreachable_index_raises_index_unreachable(tmp_path: Path, requirements: Path) -> None:
    env = _pip_env(f"http://127.0.0.1:{_closed_port()}/simple")
    with pytest.raises(venvs.IndexUnreachable, match="could not reach the package index"):
        venvs.ensure("probe", requirements=requirements, root=tmp_path / "cache", env=env)
    assert not any((tmp_path / "cache").iterdir()), "a failed build left a directory behind"


def test_other_install_failure_raises_install_failed(tmp_path: Path, requirements: Path) -> None:
    index = tmp_path / "simple"
    index.mkdir()
    with pytest.raises(venvs.InstallFailed, match="No matching distribution found for rtswitch-no-such-package"):
        venvs.ensure("probe", requirements=requirements, root=tmp_path / "cache", env=_pip_env(index.as_uri()))
    assert not any((tmp_path / "cache").iterdir()), "a failed build left a directory behind"


def test_unreachable_reason_reads_pip_connection_errors() -> None:
    refused = (
        "WARNING: Retrying (Retry(total=1, connect=None, read=None, redirect=None, status=None)) after connection "
        "broken by 'NewConnectionError('<pip._vendor.urllib3.connection.HTTPConnection object at 0x7f>: Failed "
        "to establish a new connection: [Errno 111] Connection refused')': /simple/openai-agents/\n"
        "ERROR: Could not find a version that satisfies the requirement openai-agents==0.24.0 (from versions: none)"
    )
    assert venvs.unreachable_reason(refused) is not None
    assert "NewConnectionError" in (venvs.unreachable_reason(refused) or "")
    no_match = (
        "ERROR: Could not find a version that satisfies the requirement openai-agents==99 (from versions: 0.24.0)\n"
        "ERROR: No matching distribution found for openai-agents==99"
    )
    assert venvs.unreachable_reason(no_match) is None


def test_cache_key_follows_the_requirements(tmp_path: Path) -> None:
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("x==1\n")
    b.write_text("x==2\n")
    assert venvs.venv_key("n", a) != venvs.venv_key("n", b)
    assert venvs.venv_key("n", a) == venvs.venv_key("n", a)
