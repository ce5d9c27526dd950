"""`rtswitch dev`: one command starts everything, prints a working seed URL, Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys

import psutil
import pytest
import websockets

from services.dev.stack import free_port

pytestmark = pytest.mark.e2e


async def test_dev_starts_everything_and_ctrl_c_leaves_nothing_running(tmp_path: object) -> None:
    unset = ("OPENAI_API_KEY", "GEMINI_API_KEY", "AZURE_OPENAI_API_KEY", "NATS_URL", "REDIS_URL")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "dev", "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(tmp_path),
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
        output = "".join(lines)
        assert "no key for azure, gemini, openai: started fake providers for them" in output
        seed = re.search(r"seed URL: (\S+)", output)
        assert seed is not None and f":{port}/?" in seed.group(1)
        children = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        needed_processes = (
            "nats-server", "redis-server", "services.edge", "services.transformer",
            "services.provider_worker", "services.checkpoint", "services.fakes.openai", "services.fakes.gemini",
        )
        for needed in needed_processes:
            assert needed in names, f"{needed} not started: {names}"

        async with websockets.connect(seed.group(1)) as ws:
            assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "session.created"
            await ws.send(json.dumps({"type": "conversation.item.create", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello"}]}}))
            await ws.send(json.dumps({"type": "response.create"}))
            async with asyncio.timeout(15):
                while (event := json.loads(await ws.recv()))["type"] != "response.done":
                    assert event["type"] != "error", event
            assert event["response"]["status"] == "completed"

        proc.send_signal(signal.SIGINT)
        assert await loop.run_in_executor(None, proc.wait, 30) == 0
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left running: {[c.pid for c in alive]}"
    finally:
        if proc.poll() is None:
            proc.kill()
