"""LiteLLM's proxy as the peer of the comparison phase (``--peer litellm``): its own virtual environment,
built on first use and cached, and one proxy process in front of our fake OpenAI.

The venv lives in ``~/.cache/rtswitch-litellm-<hash>`` (``RTSWITCH_LITELLM_CACHE`` overrides the parent
directory); the hash covers the pin and the interpreter, so a second run reuses it. It is built in place
under a lock and marked complete only once pip succeeded: a killed build is rebuilt, never trusted. pip
that cannot reach the index raises ``IndexUnreachable`` (the caller skips the peer); any other pip failure
raises ``InstallFailed`` with pip's output.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

__all__ = ["PIN", "IndexUnreachable", "InstallFailed", "LiteLLM", "ensure_venv", "venv_path"]

# Newer releases pin companion packages the index does not serve (issue 13).
PIN = "litellm[proxy]==1.108.7"
INSTALL_TIMEOUT_S = 1200
MASTER_KEY = "sk-rtswitch-bench"

_UNREACHABLE = re.compile(
    r"NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution"
    r"|Name or service not known|Network is unreachable|Connection refused|ConnectTimeoutError"
    r"|ProxyError|Max retries exceeded with url"
)


class IndexUnreachable(Exception):
    """pip could not reach the package index."""


class InstallFailed(Exception):
    """pip reached the index and still failed."""


def venv_path() -> Path:
    digest = hashlib.sha256(f"{PIN}|{sys.version_info.major}.{sys.version_info.minor}".encode()).hexdigest()[:12]
    parent = Path(os.environ.get("RTSWITCH_LITELLM_CACHE") or Path.home() / ".cache")
    return parent / f"rtswitch-litellm-{digest}"


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _complete(venv: Path) -> bool:
    return (venv / ".rtswitch-complete").exists() and _python(venv).exists()


def ensure_venv(log: object = None) -> Path:
    """The python of the LiteLLM venv, built first when no complete one is cached."""
    venv = venv_path()
    if _complete(venv):
        return _python(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second bench waits for the first build instead of racing it
        if _complete(venv):
            return _python(venv)
        shutil.rmtree(venv, ignore_errors=True)  # a half build of a killed run
        if callable(log):
            log(f"building LiteLLM's venv in {venv} (first use; minutes)")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        pip = [str(_python(venv)), "-m", "pip", "install", "--disable-pip-version-check", "--no-input",
               "--retries", "2", "--timeout", "30", PIN]
        proc = subprocess.run(pip, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if proc.returncode != 0:
            output = proc.stdout + proc.stderr
            shutil.rmtree(venv, ignore_errors=True)
            reason = next((line.strip()[:400] for line in output.splitlines() if _UNREACHABLE.search(line)), None)
            if reason is not None:
                raise IndexUnreachable(f"pip could not reach the package index: {reason}")
            raise InstallFailed(f"pip install {PIN} failed (exit {proc.returncode}):\n{output[-4000:]}")
        (venv / ".rtswitch-complete").write_text(" ".join(pip) + "\n")
    return _python(venv)


class LiteLLM:
    """``litellm --config cfg.yaml --num_workers 1`` in front of the fake OpenAI on ``fake_port``."""

    def __init__(self, python: Path, workdir: Path, port: int, fake_port: int, model: str) -> None:
        self.port = port
        self.model = model
        self.master_key = MASTER_KEY
        workdir.mkdir(parents=True, exist_ok=True)
        cfg = workdir / "litellm.yaml"
        cfg.write_text(
            "model_list:\n"
            f"  - model_name: {model}\n"
            "    litellm_params:\n"
            f"      model: openai/{model}\n"
            f"      api_base: http://127.0.0.1:{fake_port}\n"
            "      api_key: x\n"
            "general_settings:\n"
            f"  master_key: {MASTER_KEY}\n"
        )
        self.log_path = workdir / "litellm.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_", "PYTHONPATH"))}
        env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"})
        # The venv's console script, as the issue gives the command (``litellm ...``).
        argv = [str(python.parent / "litellm"), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                "--num_workers", "1"]
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/realtime?model={self.model}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.master_key}"}

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Its liveness route answers (the import of the proxy takes many seconds on a loaded machine)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"litellm exited ({self.popen.returncode}):\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"litellm not ready in {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        self._log.close()
