"""Real client frameworks, unmodified, against the gateway: each in its own venv, on both providers.

* openai-agents' ``RealtimeAgent`` (``RealtimeRunner``; provider by the ``X-RS-Core`` header);
* LiveKit's OpenAI realtime plugin, standalone: ``RealtimeModel`` / ``RealtimeSession`` driven as an
  ``AgentSession`` would (provider by ``rs_core`` in the base URL's query);
* Pipecat's ``OpenAIRealtimeLLMService`` in a minimal pipeline without transport (provider by the model
  name: Pipecat can add neither a header nor a query);

and the same frameworks' Gemini Live clients against our Gemini endpoint (over TLS: google-genai always dials
``wss://``; provider by the ``X-RS-Core`` header, which ``HttpOptions.headers`` carries):

* LiveKit's Google realtime plugin (``livekit.plugins.google.realtime.RealtimeModel``), standalone;
* Pipecat's ``GeminiLiveLLMService`` in the same minimal pipeline.

Each client keeps its dialect; the gateway runs the conversation on the OpenAI fake or the Gemini fake.
Each framework's script (``clients/``) runs in its venv as a subprocess, once per provider, and plays three
scenarios, each in a fresh session: a text turn, a spoken turn ended by server VAD, and a tool
turn (call, the framework runs the tool, answer). It prints what the framework surfaced; the tests here
assert, per scenario: the fakes' deterministic answer (``turn 1: ...``, 440 Hz audio), the tool call's
arguments, and that the framework surfaced no ``error`` event and logged nothing at ERROR level.

Barge-in (``bargein``, a run of its own with the fakes answering in real time): the frameworks that truncate
on interruption (the OpenAI-dialect ones: openai-agents' ``interrupt()``, LiveKit's ``interrupt()`` +
``truncate()`` as its AgentSession calls them, Pipecat's ``InterruptionFrame``) cut the answer after about a
second of audio. The test asserts no error surfaced, the framework sent a truncate, and the provider's own
history (the fakes' ``/debug/sessions``) holds the assistant message cut at the ``audio_end_ms`` it asked for;
on the Gemini provider, which has no truncate, the gateway's own log (Redis) records that cut instead
(docs/codec-contract.md says what it is used for). (The Gemini-dialect plugins have no
truncate: LiveKit's Google plugin only warns that Gemini cannot.)

Scenarios that fail today only because of a gateway bug are ``xfail(strict=True)`` with the bug as the
reason: when the fix lands they pass, strict turns that into a failure, and the marker must go.

Venvs are built on first use and cached (``venvs.py``); a run skips only when pip cannot reach the index.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from services.dev.stack import free_port
from services.fakes.control import debug_sessions, reset_knobs, set_knobs

from ...conftest import RunningStack
from . import venvs

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1_200)]  # a cold venv build takes minutes


@dataclass(frozen=True)
class Framework:
    venv: str  # requirements/<venv>.txt
    script: str  # clients/<script>
    dialect: str  # what the framework speaks: "openai" (ws://.../v1/realtime) or "gemini" (Gemini Live over TLS)


FRAMEWORKS = {
    "agents": Framework("agents", "agents_client.py", "openai"),
    "livekit": Framework("livekit", "livekit_client.py", "openai"),
    "pipecat": Framework("pipecat", "pipecat_client.py", "openai"),
    # Their Gemini Live clients: a TLS edge whose CA the client trusts through SSL_CERT_FILE.
    "livekit_google": Framework("livekit", "livekit_client.py", "gemini"),
    "pipecat_gemini": Framework("pipecat", "pipecat_client.py", "gemini"),
}
PROVIDERS = ("openai", "gemini")
SCENARIOS = ("text", "audio", "tool")
BARGE_IN = "bargein"
# The fakes answer in real time and at length during a barge-in run, so that there is something to cut.
BARGE_KNOBS: dict[str, Any] = {"pace": 1.0, "response_ms": 8_000}
TRUNCATE_TOLERANCE_MS = 2  # the fake cuts at a whole sample count
RUN_TIMEOUT_S = 200  # three scenarios of at most 25 s each, plus the framework's import time

TEXT_REPLY = "turn 1: hello from the framework"
AUDIO_REPLY = re.compile(r"^turn 1: audio \d+\.\ds$")
TOOL_NAME = "get_weather"
TOOL_ARGS = {"text": "Please call get_weather for Paris."}
# Pipecat JSON-encodes a tool's result before sending it, so the fakes quote it back.
TOOL_REPLY: dict[str, str | re.Pattern[str]] = {
    "agents": "turn 1: tool get_weather returned sunny, 21 C",
    "livekit": "turn 1: tool get_weather returned sunny, 21 C",
    "pipecat": 'turn 1: tool get_weather returned "sunny, 21 C"',
    # LiveKit's Google plugin sends {"output": ...}: the Gemini fake unwraps it, the OpenAI side gets the JSON.
    "livekit_google": re.compile(r'^turn 1: tool get_weather returned (sunny, 21 C|\{"output": ?"sunny, 21 C"\})$'),
    # Pipecat's Gemini Live service wraps it as {"value": ...}; each fake prints that JSON its own way.
    "pipecat_gemini": re.compile(r'^turn 1: tool get_weather returned \{"value": ?"sunny, 21 C"\}$'),
}
TONE_HZ, HZ_TOLERANCE = 440.0, 15.0


@dataclass(frozen=True)
class Bug:
    """A gateway bug as a framework sees it: ``explains`` match (``re.S``) the problem lines it causes."""

    reason: str
    explains: tuple[str, ...]
    intermittent: bool = False  # seen in some runs only: kept out of the default suite (slow), not strict


class UnexplainedFailure(Exception):
    """A scenario marked xfail failed for something its bugs do not explain: not an AssertionError, so the
    xfail (``raises=AssertionError``) does not swallow it."""


# Gateway bugs, as the frameworks see them (each reason quotes the framework's own complaint). None known today.
KNOWN: dict[tuple[str, str, str], tuple[Bug, ...]] = {}


def _scenarios(framework: str) -> tuple[str, ...]:
    return (*SCENARIOS, BARGE_IN) if FRAMEWORKS[framework].dialect == "openai" else SCENARIOS


def _cases() -> Iterator[Any]:
    for framework in FRAMEWORKS:
        for provider in PROVIDERS:
            for scenario in _scenarios(framework):
                bugs = KNOWN.get((framework, provider, scenario), ())
                reason = " | ".join(b.reason for b in bugs)
                flaky = any(b.intermittent for b in bugs)
                marks = [pytest.mark.xfail(strict=not flaky, raises=AssertionError, reason=reason)] if bugs else []
                if flaky:
                    marks.append(pytest.mark.slow)
                yield pytest.param(framework, provider, scenario, id=f"{framework}-{provider}-{scenario}", marks=marks)


def unexplained(found: list[str], bugs: tuple[Bug, ...]) -> list[str]:
    return [line for line in found if not any(re.search(p, line, re.S) for bug in bugs for p in bug.explains)]


@pytest.fixture(scope="session")
def framework_venvs() -> Iterator[dict[str, Future[Any]]]:
    """All venvs build at once (pip mostly waits on the network); each test waits only for its own."""
    names = sorted({f.venv for f in FRAMEWORKS.values()})
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        yield {name: pool.submit(venvs.ensure, name) for name in names}


@dataclass(frozen=True)
class TlsEdge:
    base: str
    ca_file: Path


@pytest.fixture(scope="session")
def tls_edge(running: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> TlsEdge:
    """A second edge on the same bus, serving TLS with a throwaway CA (stopped with the stack)."""
    import trustme

    workdir = tmp_path_factory.mktemp("fw_tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = workdir / "edge.crt", workdir / "edge.key", workdir / "ca.pem"
    issued.cert_chain_pems[0].write_to_path(str(cert))
    issued.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    running.stack.start_service(
        "edge",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        env={"PORT": str(port), "RS_INSTANCE_ID": "fw-tls-edge"},
        name="fw-tls-edge",
    )
    return TlsEdge(f"https://127.0.0.1:{port}", ca_file)


_RESULTS: dict[tuple[str, str, str], dict[str, Any]] = {}


def _python_for(framework: str, framework_venvs: dict[str, Future[Any]]) -> str:
    try:
        return str(framework_venvs[FRAMEWORKS[framework].venv].result())
    except venvs.IndexUnreachable as exc:
        pytest.skip(str(exc))
    except venvs.InstallFailed as exc:
        pytest.fail(str(exc), pytrace=False)


def _client_run(
    framework: str, provider: str, python: str, request: pytest.FixtureRequest, scenario: str
) -> dict[str, Any]:
    """The script's JSON for this framework and provider: run once, shared by its three scenarios' tests; the
    barge-in runs on its own, with the provider's fake answering slowly (global knobs: tests run one by one)."""
    group = BARGE_IN if scenario == BARGE_IN else ",".join(SCENARIOS)
    key = (framework, provider, group)
    fw = FRAMEWORKS[framework]
    if key not in _RESULTS:
        # Only what a process needs: no provider keys, no PYTHONPATH pointing into the gateway's packages.
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR")}
        if fw.dialect == "gemini":
            edge: TlsEdge = request.getfixturevalue("tls_edge")
            base = edge.base
            env["SSL_CERT_FILE"] = str(edge.ca_file)
        else:
            base = request.getfixturevalue("running").ws_base
        argv = [python, str(venvs.CLIENTS / fw.script), "--base", base, "--provider", provider]
        fake_port = request.getfixturevalue("running").fake_ports[provider]
        if group == BARGE_IN:
            asyncio.run(set_knobs(fake_port, **BARGE_KNOBS))
        try:
            proc = subprocess.run(
                [*argv, "--dialect", fw.dialect, "--scenarios", group],
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
                cwd=venvs.CLIENTS,
                env=env,
            )
        finally:
            if group == BARGE_IN:
                asyncio.run(reset_knobs(fake_port))
        marker = "\n@@RESULT@@"
        if marker not in proc.stdout:
            pytest.fail(
                f"{fw.script} printed no result (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-6000:]}",
                pytrace=False,
            )
        _RESULTS[key] = json.loads(proc.stdout.split(marker, 1)[1])["scenarios"]
    return _RESULTS[key]


def problems(framework: str, scenario: str, result: dict[str, Any]) -> list[str]:
    """Everything wrong with one scenario's result, each in the framework's own words where it has them."""
    found: list[str] = []
    if result["exception"]:
        found.append(f"raised: {result['exception']}")
    found += [f"error event: {e}" for e in result["errors"]]
    found += [f"ERROR log: {r}" for r in result["error_logs"]]
    answers = [t for t in result["transcripts"] if t]
    if scenario == "text" and answers != [TEXT_REPLY]:
        found.append(f"answers {answers!r}, expected [{TEXT_REPLY!r}]")
    if scenario == "audio" and (len(answers) != 1 or not AUDIO_REPLY.match(answers[0])):
        found.append(f"answers {answers!r}, expected one matching {AUDIO_REPLY.pattern!r}")
    if scenario == "tool":
        want = TOOL_REPLY[framework]
        if len(answers) != 1 or not (want.match(answers[0]) if isinstance(want, re.Pattern) else answers[0] == want):
            found.append(f"answers {answers!r}, expected [{TOOL_REPLY[framework]!r}]")
        calls = [(c["name"], json.loads(c["arguments"])) for c in result["tool_calls"]]
        if calls != [(TOOL_NAME, TOOL_ARGS)]:
            found.append(f"tool calls {calls!r}, expected [{(TOOL_NAME, TOOL_ARGS)!r}]")
    if scenario == BARGE_IN and not any(t["audio_end_ms"] for t in result["truncates"]):
        found.append(f"truncates sent {result['truncates']!r}, expected one with audio_end_ms > 0")
    hz = result["audio_hz"]
    if not result["audio_bytes"] or hz is None or abs(hz - TONE_HZ) > HZ_TOLERANCE:
        found.append(f"answer audio: {result['audio_bytes']} bytes at {hz} Hz, expected the fakes' {TONE_HZ} Hz tone")
    return found


def history_problems(result: dict[str, Any], fake_port: int) -> list[str]:
    """The provider's own history after the barge-in: the assistant message that answers the marker turn holds
    the audio the framework said was played (``audio_end_ms`` of its last truncate), no more."""
    sessions = asyncio.run(debug_sessions(fake_port, include_closed=True))
    marker = result["marker"]
    for session in sessions:
        items = session["items"]
        at = next((i for i, it in enumerate(items) if it["role"] == "user" and it["text"] == marker), None)
        if at is None:
            continue
        answer = next((it for it in items[at + 1 :] if it["role"] == "assistant" and it["type"] == "message"), None)
        if answer is None:
            return [f"provider history: no assistant message after the user turn: {items!r}"]
        want = result["truncates"][-1]["audio_end_ms"]
        if answer["audio_ms"] is None or abs(answer["audio_ms"] - want) > TRUNCATE_TOLERANCE_MS:
            return [f"provider history: the answer holds {answer['audio_ms']} ms of audio, truncated at {want} ms"]
        return []
    return [f"provider history: no session on the fake holds the user turn {marker!r}"]


async def log_problems(result: dict[str, Any], redis_url: str) -> list[str]:
    """The gateway's own log after a barge-in on Gemini: the session holding the marker turn has the answer's
    truncation at the ``audio_end_ms`` of the framework's last truncate."""
    want = result["truncates"][-1]["audio_end_ms"]
    marker = result["marker"].encode()
    redis = aioredis.from_url(redis_url)
    try:
        async for key in redis.scan_iter(match="rs:trunc:*"):
            sid = key.decode().removeprefix("rs:trunc:")
            if not any(marker in raw for raw in (await redis.hgetall(f"rs:items:{sid}")).values()):
                continue
            cuts = [int(v) for v in (await redis.hgetall(key)).values()]
            if not any(abs(cut - want) <= TRUNCATE_TOLERANCE_MS for cut in cuts):
                return [f"gateway log: truncations {cuts} ms, the framework's last truncate was at {want} ms"]
            return []
    finally:
        await redis.aclose()
    return [f"gateway log: no session holding the user turn {result['marker']!r} has a truncation"]


@pytest.mark.parametrize(("framework", "provider", "scenario"), list(_cases()))
def test_framework(
    framework: str,
    provider: str,
    scenario: str,
    running: RunningStack,
    framework_venvs: dict[str, Future[Any]],
    request: pytest.FixtureRequest,
) -> None:
    python = _python_for(framework, framework_venvs)
    result = _client_run(framework, provider, python, request, scenario)[scenario]
    found = problems(framework, scenario, result)
    if scenario == BARGE_IN and result["truncates"] and result["marker"]:
        if provider == "gemini":
            # Gemini Live has no truncate: the gateway acknowledges it and records the cut in its own log.
            found += asyncio.run(log_problems(result, running.stack.env["REDIS_URL"]))
        else:
            found += history_problems(result, running.fake_ports[provider])
    bugs = KNOWN.get((framework, provider, scenario), ())
    if bugs and (other := unexplained(found, bugs)):
        raise UnexplainedFailure(
            f"{framework} on {provider}, {scenario} turn, beyond its known bugs:\n" + "\n".join(other)
        )
    assert not found, f"{framework} on {provider}, {scenario} turn ({result['seconds']} s):\n" + "\n".join(found)
