"""Chaos run: N scripted conversations through the official openai SDK while instances are kill -9'd.

    python -m ops.chaos.run --sessions 10 --duration 60 --kill-every 5 [--switch-every 2] [--json out.json]

Starts the whole stack with ``services.dev.stack.Stack`` (embedded nats-server and redis-server, or the
servers in ``NATS_URL``/``REDIS_URL`` when both are set), K transformers and M provider-workers named by
``RS_INSTANCE_ID`` (so each victim's pid is known), one checkpoint, one edge and both fakes, paced so a
response takes real time. Half the sessions run on OpenAI, half on Gemini (``rs_core``); each turn is a
text item ``"<session> turn <k>"`` or a spoken turn (a tone, manual commit) followed by response.create.

With ``--switch-every S`` (automatic switching on), every S seconds a random session is moved between
providers by one of: an operator's switch (``POST /admin/sessions/<sid>/switch``, now or at the turn end),
the client's own ``rs.switch`` before its next turn, or a provider fault (the session's live upstream
connection drops with 1011 at its next response's first output: the policy switches it, now). The kills go
on meanwhile.

Every ``--kill-every`` seconds one fault (``--faults``; FAULTS lists the kinds). The default, ``kills``: a
random provider-worker (among those serving sessions, when any does) gets SIGKILL (the 2nd kill is a
transformer, the 3rd the checkpoint, then every 5th / 10th) and is respawned under the same instance id after
``--respawn-delay`` (capacity comes back like a restarted pod). ``all`` adds, in turn: an edge killed (2 edges;
its clients reconnect to the other one with their session id), nats-server and redis-server killed and
restarted on their ports after ``--outage`` (Redis with its append-only file, as in production), and provider
faults on one session's live upstream through the fakes' knobs (a drop, refused reconnects, a stall, added
latency, a Gemini goAway). A table per fault kind gives the gap the clients it hit heard (from the fault to
their next completed answer), the responses it cut, and what was lost or dropped after it.

    python -m ops.chaos.run --sessions 8 --duration 48 --kill-every 4 --faults all

A response cut by a kill (status failed/incomplete/cancelled) is allowed and counted; the client re-asks
(one new response.create per cut). At the end, for every session, what the client sent and the answers it
got must be in the Redis log (``Store.snapshot``) and in the fake's latest upstream conversation, in
order; a session that switched has items on both fakes: the check follows it (the latest upstream
connection, on whichever fake, holds the whole conversation, and no upstream connection of either fake
holds a turn twice or out of order). Exit status 1 when a session dropped (socket closed, or a turn not
done within ``--turn-timeout``), an item was lost or duplicated, an upstream connection got turns out of
order, or an answer counted the turns wrongly (the provider's context differs from what the client sent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import math
import random
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from openai import AsyncOpenAI

from services.dev.stack import Proc, Stack, free_port
from services.fakes.control import http_request, reset_knobs, set_knobs
from shared import events as ev
from shared.audio import tone
from shared.session import session_key
from shared.store import Store

__all__ = ["Options", "main", "run"]

ACCOUNT = "996-sdassds-86-asd"  # the built-in default account (config.DEFAULT_ACCOUNTS)
API_KEY = f"{ACCOUNT}:secretkey-996"
RATE = 24_000
SPOKEN_MS = (500, 600, 700, 800)  # distinct durations: the fake "hears" "audio 0.6s"
# Server-VAD sessions stream their spoken turns in real time, 20 ms frames, and the provider's VAD ends
# the turn and answers; the fakes hear the segment as padding + speech + the silence that ended it.
VAD = {"type": "server_vad", "silence_duration_ms": 300, "prefix_padding_ms": 10}
VAD_TRAIL_MS = 600  # silence streamed after the tone: more than the VAD needs to end the turn
FRAME_BYTES = RATE * 2 * 20 // 1000
_TRACED = frozenset({"response.created", "response.done", "input_audio_buffer.committed",
                     "conversation.item.added", "conversation.item.done"})
CUT = frozenset({"failed", "incomplete", "cancelled"})
MAX_REASKS = 3  # one re-ask per cut response; another fault may cut the re-ask too
MAX_RECONNECTS = 20  # connection attempts of one client after its edge was killed
_ACKS = frozenset({"conversation.item.added", "conversation.item.done", "input_audio_buffer.committed"})
# role -> (rtswitch command, instance id prefix)
ROLES: dict[str, tuple[str, str]] = {
    "worker": ("provider-worker", "wk"),
    "transformer": ("transformer", "tr"),
    "checkpoint": ("checkpoint", "ckpt"),
    "edge": ("edge", "edge"),
}
KILL_ROLES = ("worker", "transformer", "checkpoint")  # the default faults (--faults kills)
# Every fault kind, in the order ``--faults all`` injects them first (heavy and light ones interleaved).
FAULTS: dict[str, str] = {
    "worker": "kill -9 of a provider-worker serving sessions (respawned after --respawn-delay)",
    "close": "a session's upstream connection drops (1011) at its next response's first output",
    "transformer": "kill -9 of a transformer serving sessions (respawned)",
    "stall": "a session's upstream goes silent at its next response's first output (socket kept open)",
    "edge": "kill -9 of an edge (respawned); its clients reconnect to another edge with their session id",
    "refuse": "a session's upstream drops at its next request, and the provider refuses the next 2 connects (503)",
    "nats": "kill -9 of nats-server, started again on its port after --outage",
    "latency": "a session's upstream delays every event by 400 ms (for 3 s)",
    "checkpoint": "kill -9 of the checkpoint (respawned)",
    "goaway": "a Gemini upstream sends goAway (3 s left), then closes",
    "redis": "kill -9 of redis-server (append-only file on), started again on its port after --outage",
}
LATENCY_MS = 400
LATENCY_FOR_S = 3.0
GOAWAY_LEFT_S = 3.0


@dataclass
class Options:
    sessions: int = 10
    duration: float = 60.0
    kill_every: float = 5.0  # seconds between faults (the name stays: kills were the first fault)
    transformers: int = 2
    workers: int = 3
    edges: int = 1  # 2 at least when edges are killed (the clients reconnect to another one)
    respawn_delay: float = 1.0
    turn_timeout: float = 20.0
    response_ms: int = 1_200
    pace: float = 1.0
    think_ms: tuple[int, int] = (100, 800)
    vad_every: int = 5  # every Nth session uses server VAD with streamed audio (0: none)
    switch_every: float = 0.0  # seconds between random switches (0: none)
    faults: tuple[str, ...] = KILL_ROLES  # fault kinds injected, in turn (FAULTS)
    outage: float = 1.5  # seconds nats-server / redis-server stay down
    all_traces: bool = False  # every session's trace in the results (else only the failed ones')
    seed: int | None = None
    json_path: str | None = None
    workdir: str | None = None


# -- one client session ----------------------------------------------------------------------------


@dataclass
class Turn:
    """The turn in flight: what the client said, and whether the gateway acknowledged it (the item added or
    the audio committed). An edge killed before the acknowledgement leaves the client unsure it got in."""

    said: str
    by_vad: bool  # the provider's VAD answers it (no response.create for the first ask)
    acked: bool = False


@dataclass
class SessionRun:
    index: int
    name: str  # marker in every text turn: "<run>-s007"
    client_sid: str
    provider: str
    vad: bool = False  # server VAD, spoken turns streamed in real time and answered without response.create
    edge: int = 0  # the edge the client is connected to (index)
    expected: list[tuple[str, str]] = field(default_factory=list)  # (role, text) the client sent / got, in order
    expected_at: list[float] = field(default_factory=list)  # when each expected entry was sent / heard
    users: int = 0
    turns: int = 0  # turns answered with a completed response
    k: int = 0  # turns started (the number in the text turns' marker)
    inflight: Turn | None = None
    cuts: int = 0
    reasks: int = 0
    wrong: list[str] = field(default_factory=list)  # answers whose turn count or echo was not the expected one
    dropped: str | None = None
    dropped_at: float = 0.0  # when the request it waited for in vain was sent (or its socket closed)
    errors: Counter[str] = field(default_factory=Counter)
    busy: bool = False  # a request is out and its response is not done
    edge_killed: bool = False  # its edge was killed: the socket's close is expected, reconnect elsewhere
    reconnects: int = 0
    unsure: int = 0  # turns in flight, not acknowledged, when the edge died (not expected; counted once at most)
    rebase: bool = False  # the provider's turn count is unknown after an unsure turn: take it from the next answer
    offset: int = 0  # provider's turn count - the client's
    faults: list[tuple[float, str]] = field(default_factory=list)  # (time, kind) of every fault that hit it
    # Silence measurement after a fault that hit this session (see SessionRun.heard).
    measuring: str = ""  # the fault kind, while measuring
    armed: str = ""  # a fault that strikes at the next request (the response under way is not hit)
    armed_at: float = 0.0
    last_heard: float = 0.0  # the newest audio delta
    silent_since: float | None = None
    longest_silence: float = 0.0
    reattach_s: list[tuple[str, float]] = field(default_factory=list)  # (fault kind, seconds)
    cut_by: Counter[str] = field(default_factory=Counter)  # cut responses by the fault being measured
    first_delta_s: list[float] = field(default_factory=list)  # undisturbed ask -> first audio delta
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # conversation over (or dropped)
    trace: list[str] = field(default_factory=list)  # what happened, for the report of a failed session
    t0: float = 0.0
    current: str = ""  # the provider serving it now (rs.switched)
    switch_to: str = ""  # the client's own rs.switch, sent before its next turn
    switched: list[str] = field(default_factory=list)  # "<from>-><to> <reason>" of every rs.switched heard

    def note(self, what: str) -> None:
        self.trace.append(f"{asyncio.get_running_loop().time() - self.t0:7.3f} {what}")

    @property
    def sid(self) -> str:
        return session_key(ACCOUNT, self.client_sid)

    def expect(self, role: str, text: str) -> None:
        self.expected.append((role, text))
        self.expected_at.append(asyncio.get_running_loop().time())

    def note_kill(self, at: float, role: str, *, silent_now: bool = False, next_ask: bool = False) -> None:
        """A fault hit this session. The client-heard gap: the longest silence the client hears while it
        waits for audio, from the fault to its next completed response. Waiting starts at the fault when a
        request was out (or ``silent_now``: the client lost its socket), else at the next request; the
        silence across a cut response and its re-ask counts as one. For a worker killed mid-response that is
        kill -> first audio delta of the re-asked response (from the last delta of the dead worker's tail,
        which may arrive just after the kill). ``next_ask``: the fault strikes the next response (a knob
        that acts when a response is asked for or starts), so a response under way does not end the
        measurement: it starts at the next request."""
        self.faults.append((at, role))
        if next_ask and self.busy and not self.measuring:
            self.armed, self.armed_at = role, at
            return
        if not self.measuring and self.dropped is None:
            self.measuring, self.longest_silence = role, 0.0
            self.silent_since = at if self.busy or silent_now else None

    def asked(self, at: float) -> None:
        if self.armed and not self.measuring:
            self.measuring, self.longest_silence, self.silent_since, self.armed = self.armed, 0.0, None, ""
        if self.measuring and self.silent_since is None:
            self.silent_since = at

    def heard(self, at: float) -> None:
        self.last_heard = at
        if self.measuring and self.silent_since is not None:
            self.longest_silence = max(self.longest_silence, at - self.silent_since)
            self.silent_since = at

    def cut(self) -> None:
        """The response under way was cut after all (the fault struck before its first output): the
        silence counts from the fault, or the last audio heard after it."""
        if self.armed and not self.measuring:
            self.measuring, self.longest_silence = self.armed, 0.0
            self.silent_since, self.armed = max(self.armed_at, self.last_heard), ""

    def completed(self) -> None:
        if self.measuring and self.longest_silence > 0:
            self.reattach_s.append((self.measuring, self.longest_silence))
            self.measuring = ""


class Dropped(Exception):
    pass


async def _until_done(conn: Any, run: SessionRun, asked_at: float, timeout: float) -> tuple[str, str]:
    """Events up to response.done -> (status, transcript). Measures the first audio delta."""
    loop = asyncio.get_running_loop()
    transcript: list[str] = []
    first = True
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = await conn.recv()
                kind = event.type
                if kind in _TRACED:
                    run.note(f"<- {kind} {getattr(getattr(event, 'response', None), 'status', '') or ''}")
                if kind in _ACKS and run.inflight is not None and (
                        kind == "input_audio_buffer.committed" or getattr(event.item, "role", "") == "user"):
                    run.inflight.acked = True
                if kind == "response.output_audio.delta":
                    now = loop.time()
                    if first and not run.measuring:
                        run.first_delta_s.append(now - asked_at)
                    first = False
                    run.heard(now)
                elif kind == "response.output_audio_transcript.delta":
                    transcript.append(event.delta)
                elif kind == "rs.switched":
                    run.note(f"<- rs.switched {event.to} {event.reason}")  # type: ignore[attr-defined]
                    run.switched.append(f"{run.current}->{event.to} {event.reason}")  # type: ignore[attr-defined]
                    run.current = event.to  # type: ignore[attr-defined]
                elif kind == "error":
                    run.note(f"<- error {event.error.code}")
                    run.errors[event.error.code or event.error.type or "error"] += 1
                elif kind == "response.done":
                    if event.response.status == "completed":
                        run.completed()
                    return event.response.status or "", "".join(transcript)
    except TimeoutError:
        run.dropped_at = asked_at
        raise Dropped(f"no response.done within {timeout:.0f} s") from None
    except Exception as exc:  # the socket closed: websockets.ConnectionClosed and the SDK's wrappers
        raise Dropped(f"socket: {type(exc).__name__}: {exc}") from None


async def _session(
    bases: list[str], run: SessionRun, opts: Options, deadline: float, rng: random.Random, release: asyncio.Event
) -> None:
    """One client for the whole run: a connection, and after its edge is killed another one to a live
    edge with the same session id (up to MAX_RECONNECTS; connection attempts a short backoff apart)."""
    loop = asyncio.get_running_loop()
    run.t0 = loop.time()
    run.current = run.provider
    try:
        while True:
            try:
                await _connection(bases[run.edge], run, opts, deadline, rng, release)
                return
            except Exception as exc:
                why = str(exc) if isinstance(exc, Dropped) else f"{type(exc).__name__}: {exc}"
                if not run.edge_killed or run.reconnects >= MAX_RECONNECTS:
                    run.dropped = why
                    run.dropped_at = run.dropped_at or loop.time()
                    return
                run.reconnects += 1
                run.edge = (run.edge + 1) % len(bases)
                run.note(f"reconnect to edge {run.edge} ({why})")
                await asyncio.sleep(0.05 * run.reconnects)  # a client's backoff between attempts
    finally:
        run.busy = False
        run.finished.set()


async def _connection(
    base: str, run: SessionRun, opts: Options, deadline: float, rng: random.Random, release: asyncio.Event
) -> None:
    loop = asyncio.get_running_loop()
    client = AsyncOpenAI(api_key=API_KEY, websocket_base_url=f"{base}/v1")
    async with client.realtime.connect(
        model="gpt-realtime", extra_query={"rs_core": run.provider, "rs_u_sessid": run.client_sid}
    ) as conn:
        await conn.session.update(session={"type": "realtime", "audio": {"input": {
            "turn_detection": VAD if run.vad else None, "transcription": {"model": "gpt-4o-mini-transcribe"}}}})
        try:
            async with asyncio.timeout(opts.turn_timeout):
                while (await conn.recv()).type != "session.updated":
                    pass
        except Exception as exc:
            raise Dropped(f"no session.updated: {type(exc).__name__}: {exc}") from None
        if run.edge_killed:
            run.edge_killed = False
            run.note(f"reconnected (edge {run.edge})")
            await _after_reconnect(conn, run, opts)
        while loop.time() < deadline:
            run.k += 1
            k = run.k
            await asyncio.sleep(rng.uniform(*opts.think_ms) / 1000)
            if run.switch_to:
                when = rng.choice(("now", "turn_end"))
                run.note(f"-> rs.switch {run.switch_to} {when}")
                await conn.send({"type": "rs.switch", "provider": run.switch_to, "when": when})  # type: ignore[arg-type]
                run.switch_to = ""
            # Turn 1 is text: the session's marker is then in every upstream conversation (history).
            if k == 1 or rng.random() < 0.6:
                turn = Turn(f"{run.name} turn {k}", by_vad=False)
                _start(run, turn, f"-> item {turn.said}")
                await conn.conversation.item.create(item={
                    "type": "message", "role": "user", "content": [{"type": "input_text", "text": turn.said}]})
            elif run.vad:
                ms = rng.choice(SPOKEN_MS)
                turn = Turn(f"audio {(VAD['prefix_padding_ms'] + ms + VAD['silence_duration_ms']) / 1000:.1f}s",
                            by_vad=True)
                _start(run, turn, f"-> streamed audio {turn.said}, server VAD")
                await _stream(conn, tone(440, ms, RATE) + bytes(RATE * 2 * VAD_TRAIL_MS // 1000))
            else:
                ms = rng.choice(SPOKEN_MS)
                turn = Turn(f"audio {ms / 1000:.1f}s", by_vad=False)
                pcm = tone(440, ms, RATE)
                _start(run, turn, f"-> audio {turn.said} + commit")
                for i in range(0, len(pcm), 4_800):  # 100 ms chunks
                    await conn.input_audio_buffer.append(audio=_b64(pcm[i : i + 4_800]))
                await conn.input_audio_buffer.commit()
            await _answer(conn, run, opts, turn, ask_first=not turn.by_vad)
        # Kept open until the fake's live upstream conversation has been read.
        run.finished.set()
        await release.wait()


def _start(run: SessionRun, turn: Turn, what: str) -> None:
    run.busy = True
    run.inflight = turn
    run.note(what)
    run.users += 1
    run.expect("user", turn.said)


async def _after_reconnect(conn: Any, run: SessionRun, opts: Options) -> None:
    """The turn the dead edge had: acknowledged, it is re-asked; else the client cannot know whether it got
    in (it is no longer expected, at most once allowed) and drops any half-sent audio."""
    turn = run.inflight
    if turn is None:
        return
    if turn.acked:
        run.note("re-ask the acknowledged turn after the reconnect")
        await _answer(conn, run, opts, turn, ask_first=True)
        return
    run.note(f"unsure whether {turn.said!r} got in: not expected any more")
    assert run.expected[-1] == ("user", turn.said)
    run.expected.pop()
    run.expected_at.pop()
    run.users -= 1
    run.unsure += 1
    run.rebase = True
    run.inflight = None
    await conn.input_audio_buffer.clear()


async def _answer(conn: Any, run: SessionRun, opts: Options, turn: Turn, *, ask_first: bool) -> None:
    """Ask (and re-ask each cut response, up to MAX_REASKS) until the turn has a completed answer."""
    loop = asyncio.get_running_loop()
    status = ""
    for attempt in range(MAX_REASKS + 1):
        asked_at = loop.time()
        run.busy = True
        run.asked(asked_at)
        if ask_first or attempt > 0:
            run.note("-> response.create")
            await conn.response.create()
        status, transcript = await _until_done(conn, run, asked_at, opts.turn_timeout)
        run.busy = False
        if status not in CUT:
            break
        run.cuts += 1
        run.cut()
        run.cut_by[run.measuring or "none"] += 1
        if attempt < MAX_REASKS:
            run.reasks += 1
    run.inflight = None
    if status == "completed":
        run.turns += 1
        run.expect("assistant", transcript)
        if run.rebase and (m := re.match(r"turn (\d+): ", transcript)):
            run.offset, run.rebase = int(m.group(1)) - run.users, False
            run.note(f"provider counts {run.offset:+d} turns after an unsure one")
        want = f"turn {run.users + run.offset}: {turn.said}"
        if transcript != want:
            run.wrong.append(f"{transcript!r} != {want!r}")


async def _stream(conn: Any, pcm: bytes) -> None:
    """20 ms frames on a real-time schedule (a microphone), so the provider's VAD sees speech and silence."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    for n, i in enumerate(range(0, len(pcm), FRAME_BYTES)):
        await conn.input_audio_buffer.append(audio=_b64(pcm[i : i + FRAME_BYTES]))
        await asyncio.sleep(max(0.0, start + (n + 1) * 0.02 - loop.time()))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# -- the stack and the killer ----------------------------------------------------------------------


class Cluster:
    """The stack, and the killable instances by id."""

    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.stack = Stack(workdir, auto_switch=opts.switch_every > 0)
        self.instances: dict[str, tuple[str, Proc | None]] = {}  # id -> (role, proc; None while respawning)
        self.edge_ports: list[int] = []
        self.admin_ports: list[int] = []
        self.killed_metrics: list[str] = []  # killed edges' /metrics, read just before the kill

    @property
    def edge_port(self) -> int:
        return self.edge_ports[0]

    @property
    def admin_port(self) -> int:
        return self.admin_ports[0]

    def start(self) -> None:
        stack, opts = self.stack, self.opts
        stack.env.setdefault("LOG_LEVEL", "INFO")
        own_infra = bool({"nats", "redis"} & set(opts.faults))
        if own_infra or not (stack.env.get("NATS_URL") and stack.env.get("REDIS_URL")):
            # A bus of our own: services of another stack on a shared bus would join our queue groups (and
            # servers restarted by the run must be ours).
            stack.env.pop("NATS_URL", None)
            stack.env.pop("REDIS_URL", None)
            stack.start_nats()
            stack.start_redis(persist="redis" in opts.faults)  # production keeps its log across a restart
        for name in ("OPENAI_API_KEY", "GEMINI_API_KEY"):
            stack.env.pop(name, None)  # the fakes, never a real provider
        stack.env.update({"FAKE_PACE": str(opts.pace), "FAKE_RESPONSE_MS": str(opts.response_ms)})
        stack.start_fakes()
        stack.env.update({"HOST": "127.0.0.1"})
        if opts.switch_every > 0:
            # One drop moves a session (the fault injected is the one that switches it); sessions may go back
            # and forth at once; the breaker stays out of it (the faults are per session, not the provider's).
            stack.env.update({"SWITCH_FAILURE_COUNT": "1", "RS_SWITCH_COOLDOWN_S": "0", "RS_SWITCH_MIN_DWELL_S": "0",
                              "RS_BREAKER_SESSIONS": "100000"})
        for role, count in (("checkpoint", 1), ("transformer", opts.transformers), ("worker", opts.workers)):
            for i in range(count):
                self.spawn(role, f"{ROLES[role][1]}-{i}")
        for i in range(opts.edges):
            self.edge_ports.append(free_port())
            self.admin_ports.append(free_port())
            self.spawn("edge", f"edge-{i}")

    def spawn(self, role: str, instance: str) -> None:
        self.instances[instance] = (role, None)
        env: dict[str, str] = {}
        if role == "edge":  # a respawned edge listens where it did: its clients' other address
            i = int(instance.rsplit("-", 1)[1])
            env = {"PORT": str(self.edge_ports[i]), "RS_ADMIN_PORT": str(self.admin_ports[i])}
        proc = self.stack.start_instance(ROLES[role][0], instance, env=env)
        self.instances[instance] = (role, proc)

    def ready(self, role: str) -> list[str]:
        return [i for i, (r, p) in self.instances.items() if r == role and p is not None and p.alive()]

    def kill(self, instance: str) -> None:
        role, proc = self.instances[instance]
        assert proc is not None
        proc.kill(signal.SIGKILL)
        proc.popen.wait(5)
        self.instances[instance] = (role, None)

    def metrics(self) -> list[str]:
        """The /metrics of every edge up now (a respawned edge counts from its start), and of every edge as it
        was just before it was killed (``keep_metrics``): its counts are part of the run too."""
        texts = list(self.killed_metrics)
        for i in range(len(self.admin_ports)):
            if f"edge-{i}" in self.ready("edge"):
                texts.append(self.edge_metrics(i))
        return texts

    def edge_metrics(self, i: int) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_ports[i]}/metrics", timeout=5) as resp:
            return str(resp.read().decode())

    def keep_metrics(self, edge: str) -> None:
        """An edge's /metrics kept before its kill (best effort: what it counts in the last moment is lost)."""
        with contextlib.suppress(OSError):
            self.killed_metrics.append(self.edge_metrics(int(edge.removeprefix("edge-"))))

    def admin_switch(self, client_sid: str, provider: str, when: str, edge: int = 0) -> int:
        """An operator's switch; the HTTP status (answered once the switch is done or refused)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.admin_ports[edge]}/admin/sessions/{client_sid}/switch",
            data=json.dumps({"provider": provider, "when": when}).encode(), method="POST",
            headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return 0  # its edge is down (killed, respawning)


def kill_plan(count: int) -> list[str]:
    """Mostly workers; the 2nd kill a transformer, the 3rd the checkpoint, then every 5th / 10th."""
    plan = ["worker"] * count
    for i in range(count):
        if i == 1 or (i > 2 and i % 5 == 1):
            plan[i] = "transformer"
        elif i == 2 or (i > 2 and i % 10 == 7):
            plan[i] = "checkpoint"
    return plan


def fault_plan(count: int, kinds: Sequence[str]) -> list[str]:
    """The faults in turn: the kills alone follow ``kill_plan``; any other set goes round its kinds in
    FAULTS order, so a run of len(kinds) faults has each kind once."""
    if tuple(kinds) == KILL_ROLES:
        return kill_plan(count)
    ordered = [k for k in FAULTS if k in kinds]
    return [ordered[i % len(ordered)] for i in range(count)]


@dataclass
class FaultContext:
    cluster: Cluster
    store: Store
    runs: list[SessionRun]
    opts: Options
    rng: random.Random
    respawns: set[asyncio.Task[None]] = field(default_factory=set)


async def _kill_role(ctx: FaultContext, role: str, at: float) -> tuple[str, list[SessionRun]] | None:
    candidates = ctx.cluster.ready(role)
    if not candidates:
        return None  # the last victim of this role is still starting
    live = [r for r in ctx.runs if r.dropped is None and not r.finished.is_set()]
    if role == "edge":
        serving = {r.name: f"edge-{r.edge}" for r in live}
    else:
        try:
            async with asyncio.timeout(2.0):
                routes = await asyncio.gather(*(ctx.store.snapshot(r.sid) for r in live))
            serving = {r.name: snap.record.get(f"route_{role}", "") for r, snap in zip(live, routes, strict=True)}
        except Exception:  # Redis just restarted: a victim at random
            serving = {}
    # A random instance among those serving sessions (a respawned one may hold none yet).
    victim = ctx.rng.choice([c for c in candidates if c in serving.values()] or candidates)
    affected = [r for r in live if serving.get(r.name) == victim]
    for run in affected:
        run.edge_killed = role == "edge"
        run.note_kill(at, role, silent_now=role == "edge")
        run.note(f"** kill -9 {victim} ({role})")
    if role == "edge":
        await asyncio.to_thread(ctx.cluster.keep_metrics, victim)
    await asyncio.to_thread(ctx.cluster.kill, victim)

    async def respawn() -> None:
        await asyncio.sleep(ctx.opts.respawn_delay)
        await asyncio.to_thread(ctx.cluster.spawn, role, victim)

    task = asyncio.create_task(respawn())
    ctx.respawns.add(task)
    task.add_done_callback(ctx.respawns.discard)
    return victim, affected


async def _restart_infra(ctx: FaultContext, kind: str, at: float) -> tuple[str, list[SessionRun]] | None:
    affected = [r for r in ctx.runs if r.dropped is None and not r.finished.is_set()]
    for run in affected:
        run.note_kill(at, kind)
        run.note(f"** kill -9 {kind}, back in {ctx.opts.outage:g} s")
    restart = ctx.cluster.stack.restart_nats if kind == "nats" else ctx.cluster.stack.restart_redis
    await asyncio.to_thread(restart, ctx.opts.outage)
    return f"{kind}-server", affected


async def _provider_fault(ctx: FaultContext, kind: str, at: float) -> tuple[str, list[SessionRun]] | None:
    """One session's live upstream connection gets the fault (the fakes' knobs, per session)."""
    gemini = ctx.cluster.stack.fake_ports["gemini"]
    live = [r for r in ctx.runs if r.dropped is None and not r.finished.is_set() and not (r.measuring or r.armed)]
    ctx.rng.shuffle(live)
    for run in live:
        upstream = await _live_upstream(ctx.cluster, run)
        if upstream is None or (kind == "goaway" and upstream[0] != gemini):
            continue
        port, session = upstream
        knobs: dict[str, dict[str, Any]] = {
            "close": {"close_on": "response"},
            "stall": {"stall_on": "response"},
            "latency": {"latency_ms": LATENCY_MS},
            "refuse": {"close_on": "request"},
            "goaway": {"go_away_after_s": 0, "go_away_time_left_s": GOAWAY_LEFT_S},
        }
        try:
            if kind == "refuse":  # the redial after the drop is refused (global: the next connects)
                await set_knobs(port, refuse=503, refuse_count=2)
            await set_knobs(port, session=session, **knobs[kind])
        except RuntimeError:
            continue  # that connection ended meanwhile (a kill, a switch): another session
        run.note_kill(at, kind, next_ask=kind in ("close", "stall", "refuse"))
        run.note(f"** {kind} on upstream {session}")
        if kind == "latency":

            async def clear(port: int = port, session: str = session) -> None:
                await asyncio.sleep(LATENCY_FOR_S)
                with contextlib.suppress(Exception):  # gone already
                    await reset_knobs(port, session=session)

            task = asyncio.create_task(clear())
            ctx.respawns.add(task)
            task.add_done_callback(ctx.respawns.discard)
        return f"{'gemini' if port == gemini else 'openai'} {session}", [run]
    return None


async def _inject(ctx: FaultContext, kind: str, at: float) -> tuple[str, list[SessionRun]] | None:
    if kind in ROLES:
        return await _kill_role(ctx, kind, at)
    if kind in ("nats", "redis"):
        return await _restart_infra(ctx, kind, at)
    return await _provider_fault(ctx, kind, at)


async def _killer(
    cluster: Cluster, store: Store, runs: list[SessionRun], opts: Options, start: float, rng: random.Random,
    kills: Counter[str], log: list[dict[str, Any]],
) -> None:
    """Every ``--kill-every`` seconds the next fault of the plan."""
    loop = asyncio.get_running_loop()
    times = [start + opts.kill_every * n for n in range(1, math.ceil(opts.duration / opts.kill_every))]
    times = [t for t in times if t < start + opts.duration - 1.0]
    ctx = FaultContext(cluster, store, runs, opts, rng)
    for when, kind in zip(times, fault_plan(len(times), opts.faults), strict=True):
        await asyncio.sleep(max(0.0, when - loop.time()))
        at = loop.time()
        try:
            done = await _inject(ctx, kind, at)
        except Exception as exc:  # a fault the harness could not inject is reported, not fatal
            done = None
            print(f"[chaos] t={at - start:5.1f}s {kind} not injected: {type(exc).__name__}: {exc}", flush=True)
        if done is None:
            log.append({"t": round(at - start, 2), "role": kind, "instance": "", "sessions": 0, "skipped": True})
            print(f"[chaos] t={at - start:5.1f}s {kind}: no target, skipped", flush=True)
            continue
        target, affected = done
        kills[kind] += 1
        log.append({"t": round(at - start, 2), "role": kind, "instance": target, "sessions": len(affected)})
        print(f"[chaos] t={at - start:5.1f}s {kind} {target} ({len(affected)} sessions)", flush=True)
    await asyncio.gather(*ctx.respawns)


OTHER = {"openai": "gemini", "gemini": "openai"}
SWITCH_WAYS = ("admin", "client", "fault")


async def _live_upstream(cluster: Cluster, run: SessionRun) -> tuple[int, str] | None:
    """(fake port, fake session id) of the session's live upstream connection: the newest holding its marker."""
    found: list[tuple[float, int, str]] = []
    for provider in ("openai", "gemini"):
        port = cluster.stack.fake_ports[provider]
        for upstream in await _debug_sessions(port, text=f"{run.name} turn "):
            found.append((upstream["created_at"], port, upstream["id"]))
    return max(found)[1:] if found else None


async def _debug_sessions(port: int, *, include_closed: bool = False, text: str | None = None,
                          timeout: float = 10.0) -> list[dict[str, Any]]:
    """The fake's ``/debug/sessions`` (a fake busy with many sessions and their history can be slow); ``text``:
    only the sessions holding an item whose text starts so (one run's: a long run's whole dump is too big)."""
    query = urlencode({**({"all": "1"} if include_closed else {}), **({"text": text} if text is not None else {})})
    status, body = await http_request(port, "/debug/sessions" + (f"?{query}" if query else ""), timeout=timeout)
    if status != 200:
        raise RuntimeError(f"/debug/sessions answered {status}")
    return list(json.loads(body)["sessions"])


async def _switcher(
    cluster: Cluster, runs: list[SessionRun], opts: Options, start: float, rng: random.Random,
    asked: Counter[str],
) -> None:
    """Every ``--switch-every`` seconds, one random live session is moved, one way or another."""
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()
    at = start
    while True:
        at += opts.switch_every
        if at >= start + opts.duration - 2.0:
            break
        await asyncio.sleep(max(0.0, at - loop.time()))
        live = [r for r in runs if r.dropped is None and not r.finished.is_set()]
        if not live:
            break
        run, way = rng.choice(live), rng.choice(SWITCH_WAYS)
        target = OTHER[run.current]
        if way == "client":
            run.switch_to = target
        elif way == "admin":
            when = rng.choice(("now", "turn_end"))
            run.note(f"** admin switch to {target} {when}")

            async def admin(run: SessionRun = run, target: str = target, when: str = when) -> None:
                status = await asyncio.to_thread(cluster.admin_switch, run.client_sid, target, when, run.edge)
                run.note(f"** admin switch answered {status}")
                asked[f"admin_{status}"] += 1

            task = asyncio.create_task(admin())
            pending.add(task)
            task.add_done_callback(pending.discard)
        else:
            try:
                upstream = await _live_upstream(cluster, run)
            except (OSError, RuntimeError, TimeoutError):
                upstream = None  # the fake is too busy to answer now: another switch next time
            if upstream is None:
                continue
            try:
                await set_knobs(upstream[0], session=upstream[1], close_on="response")
            except RuntimeError:
                continue  # that connection ended meanwhile (a kill, a switch): another one next time
            run.note(f"** fault: upstream {upstream[1]} drops at its next response")
        asked[way] += 1
        print(f"[chaos] t={loop.time() - start:5.1f}s switch {run.name} ({way}) -> {target}", flush=True)
    await asyncio.gather(*pending)


async def _loop_lag(samples: list[float], interval_s: float = 0.1) -> None:
    """How late this process's event loop wakes up: client-side times are only as good as this."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(interval_s)
        samples.append(max(0.0, loop.time() - before - interval_s))


# -- checking what was kept ------------------------------------------------------------------------


def _missing(
    expected: Sequence[tuple[str, str]], actual: Sequence[tuple[str, str]], *, merged: bool = False
) -> list[tuple[str, str]]:
    """Expected entries that are not in ``actual`` as an in-order subsequence (extra entries are fine:
    a cut response may leave its partial answer). ``merged``: an entry may be part of an item's text
    (Gemini's restored history merges consecutive items of one role, e.g. a cut answer and its re-ask)."""
    missing, pos = [], 0
    for role, text in expected:
        found = next((i for i in range(pos, len(actual)) if actual[i][0] == role and (
            actual[i][1] == text or (merged and text and text in actual[i][1]))), None)
        if found is None:
            missing.append((role, text))
        else:
            pos = found + 1
    return missing


def _duplicates(run: SessionRun, actual: Sequence[tuple[str, str]]) -> list[str]:
    """Text turns (unique per session) that appear more than once upstream or in the log."""
    counts = Counter(text for role, text in actual if role == "user" and text.startswith(f"{run.name} "))
    return [text for text, n in counts.items() if n > 1]


def _turn_numbers(run: SessionRun, upstream: dict[str, Any]) -> list[int]:
    """The session's text turns one upstream connection holds, in its order."""
    said = " ".join(i["text"] or "" for i in upstream["items"] if i["type"] == "message" and i["role"] == "user")
    return [int(k) for k in re.findall(rf"{re.escape(run.name)} turn (\d+)", said)]


def _blame(run: SessionRun, role: str, text: str) -> str:
    """The fault a lost entry is put down to: the last one that hit the session before it was sent (or
    heard), up to 1 s after (a fault strikes a moment before the client learns of it); "none" if none."""
    at = next((t for (r, x), t in zip(run.expected, run.expected_at, strict=True) if (r, x) == (role, text)), None)
    return "none" if at is None else _blame_at(run, at)


def _blame_at(run: SessionRun, at: float) -> str:
    hits = [kind for t, kind in run.faults if t <= at + 1.0]
    return hits[-1] if hits else "none"


def _store_items(snapshot: Any) -> list[tuple[str, str]]:
    return [(i.role, i.text()) for i in snapshot.items if isinstance(i, ev.Message)]


def _fake_items(session: dict[str, Any]) -> list[tuple[str, str]]:
    return [(i["role"], i["text"] or "") for i in session["items"] if i["type"] == "message"]


async def _verify(cluster: Cluster, store: Store, runs: list[SessionRun], settle_s: float = 15.0) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    alive = [r for r in runs if r.dropped is None]
    # The checkpoint may have just been respawned: give it time to fold the stream into Redis.
    deadline = loop.time() + settle_s
    while True:
        snaps = await asyncio.gather(*(store.snapshot(r.sid) for r in alive))
        pending = [r for r, s in zip(alive, snaps, strict=True) if _missing(r.expected, _store_items(s))]
        if not pending or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    fakes = {p: port for p, port in cluster.stack.fake_ports.items() if p in ("openai", "gemini")}
    upstream_of = {
        run.name: {p: await _debug_sessions(port, include_closed=True, text=f"{run.name} turn ", timeout=60.0)
                   for p, port in fakes.items()}
        for run in alive
    }
    report: dict[str, Any] = {"lost_store": 0, "lost_upstream": 0, "duplicates": 0, "misordered": 0,
                              "spread": 0, "details": {}, "lost_by_fault": Counter()}
    for run, snap in zip(alive, snaps, strict=True):
        store_items = _store_items(snap)
        # Every upstream connection of this session, on either fake (a switched session has some on both).
        mine = [(p, s) for p, sessions in upstream_of[run.name].items() for s in sessions]
        report["spread"] += len({p for p, _ in mine}) > 1
        # The latest live one holds the whole conversation (each connection starts with the history).
        live = [(p, s) for p, s in mine if s["live"]] or mine
        where, latest = max(live, key=lambda ps: ps[1]["created_at"]) if live else (run.current, None)
        fake_items = _fake_items(latest) if latest else []
        lost_store = _missing(run.expected, store_items)
        lost_up = _missing(run.expected, fake_items, merged=where == "gemini")
        dups = sorted(set(_duplicates(run, store_items)) | set(_duplicates(run, fake_items)))
        # No connection of either fake got a turn twice or out of order (Gemini may merge turns into one item).
        disorder = [f"{p} {s['id']}: turns {turns}" for p, s in mine
                    if (turns := _turn_numbers(run, s)) != sorted(set(turns))]
        for role, text in lost_store + lost_up:
            report["lost_by_fault"][_blame(run, role, text)] += 1
        report["lost_store"] += len(lost_store)
        report["lost_upstream"] += len(lost_up)
        report["duplicates"] += len(dups)
        report["misordered"] += len(disorder)
        if lost_store or lost_up or dups or disorder:
            report["details"][run.name] = {
                "lost_in_store": lost_store, "lost_upstream": lost_up, "duplicated": dups, "misordered": disorder,
                "store": store_items, "upstream": fake_items, "upstream_on": where, "upstream_sessions": len(mine),
                "switched": run.switched,
            }
    return report


# -- metrics and the table -------------------------------------------------------------------------

_SAMPLE = re.compile(r'^(\w+)(?:\{([^}]*)\})? ([-+\deE.naif]+)$')


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile from cumulative (upper bound, count) buckets, linear within a bucket."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / max(count - prev_count, 1e-9)
        prev_bound, prev_count = bound, count
    return prev_bound


def quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"n": len(ordered), "p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "max": ordered[-1]}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms"


def _q_row(q: dict[str, Any], with_max: bool = True) -> str:
    parts = [f"p50 {_ms(q['p50'])}", f"p95 {_ms(q['p95'])}", f"p99 {_ms(q['p99'])}"]
    if with_max:
        parts.append(f"max {_ms(q['max'])}")
    return ", ".join(parts) + f" (n={q['n']})"


def _switch_row(sw: dict[str, Any]) -> str:
    asked = sw["asked"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(sw["heard_by_reason"].items()))
    return (f"{sw['heard']} heard by clients ({reasons}); edge {sum(sw['edge'].values())}; asked: admin "
            f"{asked.get('admin', 0)}, client {asked.get('client', 0)}, fault {asked.get('fault', 0)}; "
            f"{sw['sessions_switched']} sessions switched, "
            f"{sw['sessions_on_both_fakes']} with connections on both fakes")


def table(result: dict[str, Any]) -> str:
    k, r = result["kills"], result["reattaches"]
    rows = [
        ("sessions", f"{result['sessions']} ({result['providers']['openai']} openai, "
                     f"{result['providers']['gemini']} gemini; {result['vad_sessions']} with server VAD)"),
        ("turns answered", f"{result['turns']} of {result['user_turns']}"),
        ("responses cut by a kill", f"{result['cuts']} (re-asked {result['reasks']})"),
        ("faults injected", f"{k['total']} (" + ", ".join(f"{kind} {n}" for kind, n in k.items() if kind != "total")
         + ")"),
        ("client reconnects after an edge kill", f"{result['edge_reconnects']} ({result['unsure_turns']} turns in "
         "flight unacknowledged: not expected, allowed once)"),
        ("reattaches (edge)", f"{r['total']} (worker {r.get('worker', 0)}, transformer {r.get('transformer', 0)})"),
        ("sessions dropped", str(result["dropped"])),
        ("items lost", f"{result['lost']} (redis log {result['lost_store']}, provider {result['lost_upstream']})"),
        ("items duplicated", str(result["duplicates"])),
        ("upstream connections with turns out of order", str(result["misordered"])),
        ("switches", _switch_row(result["switches"])),
        ("wrong turn counts", str(result["wrong"])),
        ("reattach, client: silence after a kill", _q_row(result["reattach_client"])),
        *((f"  - after a {role} kill", _q_row(q)) for role, q in result["reattach_client_by_role"].items()),
        ("reattach, edge rs_reattach_seconds", _q_row(result["reattach_edge"], with_max=False)),
        ("first audio, undisturbed turns", _q_row(result["first_audio"])),
        ("client event loop lag", _q_row(result["client_loop_lag"])),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"| {'metric'.ljust(width)} | value", f"|{'-' * (width + 2)}|------"]
    lines += [f"| {name.ljust(width)} | {value}" for name, value in rows]
    return "\n".join(lines)


def _by_fault(
    opts: Options, runs: list[SessionRun], log: list[dict[str, Any]], lost: Counter[str]
) -> dict[str, dict[str, Any]]:
    """Per fault kind: how often it was injected (and skipped: no target), the sessions it hit, the gap
    their clients heard (SessionRun.note_kill), the responses it cut, and the items lost and sessions dropped
    that are put down to it (_blame)."""
    dropped = Counter(_blame_at(r, r.dropped_at) for r in runs if r.dropped)
    out: dict[str, dict[str, Any]] = {}
    for kind in [k for k in FAULTS if k in opts.faults]:
        events = [e for e in log if e["role"] == kind]
        out[kind] = {
            "injected": sum(not e.get("skipped") for e in events),
            "skipped": sum(bool(e.get("skipped")) for e in events),
            "sessions_hit": sum(e["sessions"] for e in events),
            "gap": quantiles([s for r in runs for k, s in r.reattach_s if k == kind]),
            "cut": sum(r.cut_by[kind] for r in runs),
            "lost": lost.get(kind, 0),
            "dropped": dropped.get(kind, 0),
        }
    if lost.get("none") or dropped.get("none"):
        out["(no fault)"] = {"injected": 0, "skipped": 0, "sessions_hit": 0, "gap": quantiles([]), "cut": 0,
                             "lost": lost.get("none", 0), "dropped": dropped.get("none", 0)}
    return out


def fault_table(result: dict[str, Any]) -> str:
    """One row per fault kind: the client-heard gap (p50/p99/max over the sessions it hit) and what it lost."""
    head = ("fault", "injected", "sessions hit", "gap p50", "gap p99", "gap max", "n", "cut", "lost", "dropped")
    rows = [head] + [
        (kind, str(f["injected"]) + (f" ({f['skipped']} skipped)" if f["skipped"] else ""), str(f["sessions_hit"]),
         _ms(f["gap"]["p50"]), _ms(f["gap"]["p99"]), _ms(f["gap"]["max"]), str(f["gap"]["n"]), str(f["cut"]),
         str(f["lost"]), str(f["dropped"]))
        for kind, f in result["faults"].items()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# -- the run ---------------------------------------------------------------------------------------


async def run(opts: Options, cluster: Cluster) -> dict[str, Any]:
    rng = random.Random(opts.seed)
    tag = uuid.uuid4().hex[:6]
    runs = [
        SessionRun(i, f"{tag}-s{i:03d}", f"chaos-{tag}-{i:03d}", ("openai", "gemini")[i % 2],
                   vad=bool(opts.vad_every) and i % opts.vad_every == opts.vad_every - 1, edge=i % opts.edges)
        for i in range(opts.sessions)
    ]
    loop = asyncio.get_running_loop()
    bases = [f"ws://127.0.0.1:{port}" for port in cluster.edge_ports]
    release = asyncio.Event()
    kills: Counter[str] = Counter()
    kill_log: list[dict[str, Any]] = []
    async with Store.connect(cluster.stack.env["REDIS_URL"]) as store:
        lag: list[float] = []
        lag_task = asyncio.create_task(_loop_lag(lag))
        start = loop.time()
        deadline = start + opts.duration
        tasks = [
            asyncio.create_task(_session(bases, r, opts, deadline, random.Random(rng.random()), release)) for r in runs
        ]
        asked: Counter[str] = Counter()
        switcher = asyncio.create_task(_switcher(cluster, runs, opts, start, random.Random(rng.random()), asked)
                                       if opts.switch_every > 0 else asyncio.sleep(0))
        await _killer(cluster, store, runs, opts, start, rng, kills, kill_log)
        await switcher
        # Every session finishes its last turn (each turn is bounded by --turn-timeout), then the logs
        # are compared while the sockets are still open (the fake lists live upstream sessions).
        await asyncio.wait([asyncio.create_task(r.finished.wait()) for r in runs])
        lag_task.cancel()
        loss = await _verify(cluster, store, runs)
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    metrics: dict[str, list[tuple[dict[str, str], float]]] = {}
    for text in await asyncio.to_thread(cluster.metrics):  # every edge's samples (summed below)
        for name, samples in parse_metrics(text).items():
            metrics.setdefault(name, []).extend(samples)
    reattaches: Counter[str] = Counter()
    for labels, value in metrics.get("rs_reattaches_total", []):
        reattaches[labels.get("role", "")] += int(value)
    reattaches["total"] = sum(reattaches.values())
    by_le: Counter[float] = Counter()
    for lb, v in metrics.get("rs_reattach_seconds_bucket", []):
        by_le[float(lb["le"])] += v
    buckets = sorted(by_le.items())
    edge_q = {"n": int(max((v for _, v in buckets), default=0))}
    edge_q.update({f"p{int(q * 100)}": histogram_quantile(q, buckets) for q in (0.5, 0.95, 0.99)})
    switches_edge: dict[str, int] = Counter()
    for labels, value in metrics.get("rs_switches_total", []):
        switches_edge[labels.get("reason", "")] += int(value)
    kills_out: dict[str, int] = dict(kills)
    kills_out["total"] = sum(kills.values())
    dropped = [r for r in runs if r.dropped]
    result: dict[str, Any] = {
        "options": {k: v for k, v in asdict(opts).items() if k not in ("json_path", "workdir")},
        "sessions": len(runs),
        "providers": dict(Counter(r.provider for r in runs)),
        "vad_sessions": sum(r.vad for r in runs),
        "turns": sum(r.turns for r in runs),
        "user_turns": sum(r.users for r in runs),
        "cuts": sum(r.cuts for r in runs),
        "reasks": sum(r.reasks for r in runs),
        "kills": kills_out,
        "kill_log": kill_log,
        "reattaches": reattaches,
        "switches": {
            "asked": dict(asked),
            "heard": sum(len(r.switched) for r in runs),  # rs.switched events the clients got
            "heard_by_reason": dict(Counter(s.rsplit(" ", 1)[1] for r in runs for s in r.switched)),
            "edge": dict(switches_edge),  # rs_switches_total by reason
            "sessions_switched": sum(bool(r.switched) for r in runs),
            "sessions_on_both_fakes": loss["spread"],
            "final_providers": dict(Counter(r.current for r in runs)),
        },
        "dropped": len(dropped),
        "dropped_detail": {r.name: r.dropped for r in dropped},
        "traces": {r.name: r.trace for r in runs
                   if opts.all_traces or r.dropped or r.wrong or r.name in loss["details"]},
        "lost_store": loss["lost_store"],
        "lost_upstream": loss["lost_upstream"],
        "lost": loss["lost_store"] + loss["lost_upstream"],
        "duplicates": loss["duplicates"],
        "misordered": loss["misordered"],
        "loss_detail": loss["details"],
        "wrong": sum(len(r.wrong) for r in runs),
        "wrong_detail": {r.name: r.wrong for r in runs if r.wrong},
        "errors": dict(sum((r.errors for r in runs), Counter())),
        "reattach_client": quantiles([s for r in runs for _, s in r.reattach_s]),
        "reattach_client_by_role": {
            role: quantiles([s for r in runs for killed, s in r.reattach_s if killed == role])
            for role in ("worker", "transformer") if any(k == role for r in runs for k, _ in r.reattach_s)
        },
        "reattach_edge": edge_q,
        "first_audio": quantiles([s for r in runs for s in r.first_delta_s]),
        "client_loop_lag": quantiles(lag),
        "faults": _by_fault(opts, runs, kill_log, loss["lost_by_fault"]),
        "edge_reconnects": sum(r.reconnects for r in runs),
        "unsure_turns": sum(r.unsure for r in runs),
    }
    result["ok"] = not (result["dropped"] or result["lost"] or result["duplicates"] or result["misordered"]
                        or result["wrong"])
    return result


def parse_args(argv: Sequence[str] | None) -> Options:
    p = argparse.ArgumentParser(prog="python -m ops.chaos.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of conversation (kills stop 1 s before)")
    p.add_argument("--kill-every", type=float, default=5.0, help="seconds between faults")
    p.add_argument("--faults", default="kills",
                   help="comma-separated fault kinds injected in turn, 'kills' (worker, transformer, checkpoint: "
                        "the default) or 'all': " + ", ".join(FAULTS))
    p.add_argument("--edges", type=int, default=1, help="edges (2 at least when edges are killed)")
    p.add_argument("--outage", type=float, default=1.5, help="seconds nats-server / redis-server stay down")
    p.add_argument("--transformers", type=int, default=2)
    p.add_argument("--workers", type=int, default=3)
    p.add_argument("--respawn-delay", type=float, default=1.0, help="seconds before a victim is started again")
    p.add_argument("--turn-timeout", type=float, default=20.0, help="a turn not done by then = session dropped")
    p.add_argument("--response-ms", type=int, default=1_200, help="fake response audio length")
    p.add_argument("--pace", type=float, default=1.0, help="fake pacing: 1.0 = real time")
    p.add_argument("--vad-every", type=int, default=5,
                   help="every Nth session uses server VAD with audio streamed in real time (0: none)")
    p.add_argument("--switch-every", type=float, default=0.0,
                   help="seconds between random switches of a random session (admin API, the client's rs.switch, "
                        "or a provider fault); 0: none")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--all-traces", action="store_true", help="every session's trace in --json (else the failed ones)")
    p.add_argument("--json", dest="json_path", default=None, help="also write the results here")
    p.add_argument("--workdir", default=None, help="keep the process logs here (default: a temp dir, "
                                                   "kept only when the run fails)")
    ns = p.parse_args(argv)
    named = {"kills": KILL_ROLES, "all": tuple(FAULTS)}
    faults = named.get(ns.faults) or tuple(k.strip() for k in ns.faults.split(",") if k.strip())
    if unknown := [k for k in faults if k not in FAULTS]:
        p.error(f"unknown fault kinds {unknown}; known: {', '.join(FAULTS)}")
    opts = Options(**{k: v for k, v in vars(ns).items() if k != "faults"}, faults=faults)
    if "edge" in faults:
        opts.edges = max(opts.edges, 2)  # the clients of a killed edge reconnect to another one
    if opts.respawn_delay >= opts.kill_every:
        p.error("--respawn-delay must be shorter than --kill-every")
    if opts.workers < 2 or opts.transformers < 1:
        p.error("at least 2 workers (one is always being killed) and 1 transformer")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    opts = parse_args(argv)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix="rs-chaos-"))
    cluster = Cluster(opts, workdir)
    result: dict[str, Any] | None = None
    started = time.monotonic()
    try:
        cluster.start()
        print(f"[chaos] stack up in {time.monotonic() - started:.1f} s; logs in {workdir}", flush=True)
        result = asyncio.run(run(opts, cluster))
    finally:
        cluster.stack.stop()
    print(f"\nchaos: {opts.sessions} sessions, {opts.duration:.0f} s, a fault every {opts.kill_every:g} s "
          f"({', '.join(opts.faults)}), {opts.edges} edge(s), {opts.transformers} transformers, {opts.workers} workers"
          + (f", a switch every {opts.switch_every:g} s" if opts.switch_every > 0 else ""))
    print(table(result))
    print(f"\nper fault kind (the gap: the longest silence a hit client heard, from the fault to its next "
          f"completed answer):\n{fault_table(result)}")
    for title, key in (("dropped", "dropped_detail"), ("wrong answers", "wrong_detail"), ("lost", "loss_detail")):
        if result[key]:
            print(f"\n{title}:\n" + json.dumps(result[key], indent=1)[:4000])
    if opts.json_path:
        Path(opts.json_path).write_text(json.dumps(result, indent=2))
    if result["ok"] and opts.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    elif not result["ok"]:
        (workdir / "result.json").write_text(json.dumps(result, indent=2))
        print(f"\nFAILED; process logs and result.json kept in {workdir}", file=sys.stderr)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
