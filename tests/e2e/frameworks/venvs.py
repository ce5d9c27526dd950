"""One virtual environment per framework, built inside the test run and cached across runs.

Each framework's pins (``requirements/<name>.txt``, the whole tree) must never move the gateway's own
packages, so each gets its own venv under ``$RTSWITCH_FRAMEWORKS_CACHE`` (default
``~/.cache/rtswitch-frameworks``), named by a hash of its requirements file and the interpreter: a second run
with the same pins reuses it. A venv is built in a scratch directory and renamed into place only once pip
succeeded, so a killed build never leaves a half venv behind that a later run would trust.

An install that fails because the package index cannot be reached is a skip (``IndexUnreachable``); any
other install failure is an error, reported with pip's own output.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements"
CLIENTS = HERE / "clients"
INSTALL_TIMEOUT_S = 900

# What pip prints when it could not reach the index (urllib3 / requests wording), and nothing else.
_UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|Connection refused|ConnectTimeoutError"
    r"|ProxyError|Could not fetch URL .*: There was a problem confirming the ssl certificate"
    r"|Max retries exceeded with url"
)


class IndexUnreachable(Exception):
    """pip could not reach the package index: the caller skips, naming pip's connection error."""


class InstallFailed(Exception):
    """pip reached the index and still failed: a test failure, with pip's output."""


def cache_root() -> Path:
    return Path(os.environ.get("RTSWITCH_FRAMEWORKS_CACHE") or Path.home() / ".cache" / "rtswitch-frameworks")


def venv_key(name: str, requirements: Path) -> str:
    digest = hashlib.sha256()
    digest.update(requirements.read_bytes())
    digest.update(f"{sys.version_info.major}.{sys.version_info.minor}".encode())
    return f"{name}-py{sys.version_info.major}{sys.version_info.minor}-{digest.hexdigest()[:16]}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _ready(venv: Path) -> bool:
    return (venv / ".rtswitch-complete").exists() and _python(venv).exists()


def unreachable_reason(pip_output: str) -> str | None:
    """The line of pip's output that says the index could not be reached, if any."""
    for line in pip_output.splitlines():
        if _UNREACHABLE.search(line):
            return line.strip()[:400]
    return None


def ensure(
    name: str,
    *,
    requirements: Path | None = None,
    root: Path | None = None,
    env: dict[str, str] | None = None,
) -> Path:
    """The python of ``name``'s venv, built first if no cached one matches its requirements.

    ``requirements`` defaults to ``requirements/<name>.txt``, ``root`` to ``cache_root()``; ``env`` is pip's
    environment (default: ours).
    """
    requirements = requirements or REQUIREMENTS / f"{name}.txt"
    root = root or cache_root()
    venv = root / venv_key(name, requirements)
    if _ready(venv):
        return _python(venv)
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-building-", dir=root))
    try:
        subprocess.run([sys.executable, "-m", "venv", str(scratch)], check=True, capture_output=True)
        retries = ["--retries", "2", "--timeout", "30"]  # an unreachable index fails in seconds, not minutes
        pip = [str(_python(scratch)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *retries]
        pip += ["-r", str(requirements)]
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, env=env)
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            reason = unreachable_reason(output)
            if reason is not None:
                raise IndexUnreachable(f"{name}: pip could not reach the package index: {reason}")
            raise InstallFailed(f"{name}: pip install failed (exit {proc.returncode}):\n{output[-6000:]}")
        (scratch / ".rtswitch-complete").write_text(" ".join(pip) + "\n")
        try:
            scratch.rename(venv)
        except OSError:
            if not _ready(venv):  # another run finished the same venv first: use theirs
                raise
        # The venv's console scripts name the scratch path in their shebangs; we only run its python, which
        # finds its pyvenv.cfg beside itself wherever the directory now is.
        return _python(venv)
    finally:
        if scratch.exists():
            shutil.rmtree(scratch, ignore_errors=True)
