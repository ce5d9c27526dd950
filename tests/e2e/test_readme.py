"""The README as a newcomer reads it: every Python snippet and every `rtswitch call` line runs as printed.

Snippets read the edge address from ``RS_URL`` (the README says so, with its default); the test sets it to a
running stack: the plain one for OpenAI-dialect snippets, the TLS one (``RS_CA_FILE``) for google-genai.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from pathlib import Path

import pytest

from ..conftest import RunningStack
from .tls_stack import TlsEdge, tls_edge

pytestmark = pytest.mark.e2e
__all__ = ["tls_edge"]  # the fixture, imported so pytest finds it here

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall(README) if lang == language]


PYTHON = blocks("python")
CALLS = [line for body in blocks("bash") for line in body.splitlines() if line.startswith("rtswitch call ")]


async def run(argv: list[str], env: dict[str, str], cwd: Path) -> str:
    proc = await asyncio.create_subprocess_exec(
        *argv, env={**os.environ, "PYTHONPATH": str(ROOT), **env}, cwd=str(cwd),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def test_the_readme_has_what_a_newcomer_needs() -> None:
    assert len(PYTHON) >= 2 and len(CALLS) >= 2
    two = README.split("## Two commands", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in two.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert all(c.startswith("python3 -m venv .venv && . .venv/bin/activate && ") for c in commands), commands
    assert commands[0].endswith("pip install -e . && rtswitch dev")
    assert "(docs/README.md)" in README
    intro = README.split("\n\n", 2)[1]
    assert "browser" not in intro, "no browser page exists yet"
    for section in ("### What the fakes answer", "### Real providers"):
        assert section in README


@pytest.mark.parametrize("index", range(len(PYTHON)))
async def test_python_snippet_runs_as_printed(
    index: int, running: RunningStack, tls_edge: TlsEdge, tmp_path: Path
) -> None:
    snippet = PYTHON[index]
    assert 'os.environ.get("RS_URL", ' in snippet, "snippets take the edge address from RS_URL"
    if "google.genai" in snippet or "from google import genai" in snippet:
        env = {"RS_URL": tls_edge.https_base, "RS_CA_FILE": str(tls_edge.ca_file)}
    else:
        env = {"RS_URL": running.ws_base}
    out = await run([sys.executable, "-c", snippet], env, tmp_path)
    assert "turn 1: Hello" in out.splitlines(), out


@pytest.mark.parametrize("line", CALLS)
async def test_rtswitch_call_line_runs_as_printed(line: str, running: RunningStack, tmp_path: Path) -> None:
    argv = shlex.split(line)
    assert argv[:2] == ["rtswitch", "call"]
    out = await run([sys.executable, "-m", "services.cli", *argv[1:]], {"RS_URL": running.ws_base}, tmp_path)
    assert re.search(r"assistant: turn 1: Hello$", out, re.M), out
    if "--out" in argv:
        assert (tmp_path / argv[argv.index("--out") + 1]).stat().st_size > 44  # more than a WAV header
