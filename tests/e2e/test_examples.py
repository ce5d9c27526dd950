"""Every client in examples/ runs as a user runs it (a subprocess), against a stack, on both providers."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from ..conftest import RunningStack
from .tls_stack import TlsEdge, tls_edge

pytestmark = pytest.mark.e2e
__all__ = ["tls_edge"]  # the fixture, imported so pytest finds it here

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


async def run_example(name: str, env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLES / name), env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def check_answer(output: str) -> None:
    lines = output.splitlines()
    assert "answer: turn 1: Hello" in lines, output
    audio = [int(line.split()[1]) for line in lines if line.startswith("audio: ")]
    assert audio and audio[0] > 0, output


def test_every_example_is_tested() -> None:
    assert {p.name for p in EXAMPLES.glob("*.py")} == {
        "openai_ga.py", "openai_beta.py", "seed_url.py", "gemini_sdk_tls.py"}


@pytest.mark.parametrize("provider", ["openai", "gemini"])
@pytest.mark.parametrize("name", ["openai_ga.py", "openai_beta.py", "seed_url.py"])
async def test_plain_ws_example(running: RunningStack, name: str, provider: str) -> None:
    check_answer(await run_example(name, {"RS_URL": running.ws_base, "RS_CORE": provider}))


@pytest.mark.parametrize("provider", ["openai", "gemini"])
async def test_gemini_sdk_over_tls_example(tls_edge: TlsEdge, provider: str) -> None:
    env = {"RS_URL": tls_edge.https_base, "RS_CA_FILE": str(tls_edge.ca_file), "RS_CORE": provider}
    check_answer(await run_example("gemini_sdk_tls.py", env))
