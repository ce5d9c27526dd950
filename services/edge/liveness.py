"""Liveness of the processes that hold this edge's sessions: a sans-I/O state machine, time passed in.

A process incarnation is ``(instance, boot)``: a process restarted under the same name is another one and
does not hold the sessions of the one that died, so its beats must not keep them waiting.

Rules (the edge's I/O shell feeds ``beat``/``probe_result``/``bus_outage`` and carries out ``due``):

- A member whose last beat (or the session's attach, whichever is later) is older than ``SUSPECT_AFTER_S``
  is asked directly: ``Probe`` on its probe subject, one probe per incarnation at a time, whatever the
  number of its sessions.
- "No responders" means its connection is gone (a kill -9 closes the socket at once): dead.
- An answer means slow, not dead: it counts as a beat. A CPU-starved process keeps its sessions instead
  of being failed over, which would add load where it is already short.
- No answer within the probe's timeout, and no beat within ``HEARTBEAT_DEADLINE_S``: stopped (SIGSTOP,
  a hung loop): dead.
- A session with a dead member gets one ``Reattach`` (the transformer first); no more until the shell
  reports the move (``moved``) or its end (``reattach_over``).
- Dead incarnations are remembered ``DEAD_MEMORY_S`` (sessions may still be moving off them); a beat from
  one found dead (it was stopped and woke up) forgets the finding.
- Within ``BUS_OUTAGE_GRACE_S`` of the edge's own bus connection being down, silence proves nothing:
  nothing is due and nothing is found dead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BUS_OUTAGE_GRACE_S",
    "DEAD_MEMORY_S",
    "HEARTBEAT_DEADLINE_S",
    "PROBE_TIMEOUT_S",
    "ROLES",
    "SUSPECT_AFTER_S",
    "Action",
    "Finding",
    "Liveness",
    "Outcome",
    "Probe",
    "Reattach",
]

SUSPECT_AFTER_S = 0.15  # 1.5 beat intervals
PROBE_TIMEOUT_S = 1.0
HEARTBEAT_DEADLINE_S = 0.3  # 3 missed 100 ms beats: dead unless a probe answers
DEAD_MEMORY_S = 60.0  # how long a process found dead is remembered (sessions still being moved off it)
# After the edge's own NATS connection was down: nobody's beats could arrive, and the others reconnect a
# little later than we do (reconnect wait + jitter).
BUS_OUTAGE_GRACE_S = 1.0

ROLES = ("transformer", "worker")  # checked in this order; one reattach per session at a time

Key = tuple[str, str]  # (instance, boot)
# answered: the probe got a reply; no_responders: nobody subscribes to the probe subject; timeout: no
# reply within PROBE_TIMEOUT_S; failed: the bus itself failed the request (says nothing about the process)
Outcome = Literal["answered", "no_responders", "timeout", "failed"]
# What a probe result established, as counted in rs_liveness_probes_total{result=...}
Finding = Literal["alive", "gone", "unresponsive"]


@dataclass(frozen=True, slots=True)
class Probe:
    instance: str
    boot: str


@dataclass(frozen=True, slots=True)
class Reattach:
    sid: str
    role: str
    instance: str  # the dead member to replace


Action = Probe | Reattach


@dataclass(slots=True)
class _Session:
    members: dict[str, Key]  # role -> incarnation holding it
    since: float  # attach or latest reattach: silence before it is not held against anyone
    reattaching: bool = False


@dataclass(slots=True)
class Liveness:
    beats: dict[Key, float] = field(default_factory=dict)  # incarnation -> time of its last beat
    probing: set[Key] = field(default_factory=set)  # probes in flight
    dead: dict[Key, float] = field(default_factory=dict)  # incarnations found dead -> when
    sessions: dict[str, _Session] = field(default_factory=dict)
    bus_back_at: float = float("-inf")  # last time the edge's bus connection was seen down or came back

    # -- inputs ----------------------------------------------------------------------------------

    def beat(self, instance: str, boot: str, now: float) -> None:
        key = (instance, boot)
        self.beats[key] = now
        # Found dead, yet beating: it was stopped and woke up. What it held is moved already or still
        # with it; new sessions it takes are no business of that finding.
        self.dead.pop(key, None)

    def attach(self, sid: str, members: dict[str, tuple[str, str]], now: float) -> None:
        """A session attached: its members (role -> (instance, boot)) as of ``now``."""
        self.sessions[sid] = _Session(dict(members), now)

    def moved(self, sid: str, role: str, instance: str, boot: str, now: float) -> None:
        """A reattach is done: ``role`` is held by another incarnation since ``now``."""
        session = self.sessions.get(sid)
        if session is None:
            return  # the session ended meanwhile
        session.members[role] = (instance, boot)
        session.since = now
        session.reattaching = False

    def reattach_over(self, sid: str) -> None:
        """The reattach ended without a move (failed): the session is watched again."""
        session = self.sessions.get(sid)
        if session is not None:
            session.reattaching = False

    def detach(self, sid: str) -> None:
        self.sessions.pop(sid, None)

    def bus_outage(self, now: float) -> None:
        """The edge's bus connection is down, or just came back."""
        self.bus_back_at = now

    def probe_result(self, instance: str, boot: str, outcome: Outcome, now: float) -> Finding | None:
        key = (instance, boot)
        self.probing.discard(key)
        if outcome == "answered":
            self.beats[key] = max(self.beats.get(key, float("-inf")), now)
            return "alive"
        finding: Finding | None = _FINDINGS.get(outcome)
        if outcome == "timeout" and now - self.beats.get(key, float("-inf")) <= HEARTBEAT_DEADLINE_S:
            finding = None  # it beat while we waited
        if finding is None or self.in_bus_outage(now):
            return None
        self.dead[key] = now
        return finding

    # -- outputs ---------------------------------------------------------------------------------

    def in_bus_outage(self, now: float) -> bool:
        return now - self.bus_back_at < BUS_OUTAGE_GRACE_S

    def due(self, now: float) -> list[Action]:
        """What to do now: probes to start and reattaches to run. Each is returned once."""
        if self.in_bus_outage(now):
            return []
        for key, since in list(self.dead.items()):
            if now - since > DEAD_MEMORY_S:
                del self.dead[key]
        actions: list[Action] = []
        for sid, session in self.sessions.items():
            if session.reattaching:
                continue
            for role in ROLES:
                key = session.members.get(role)
                if key is None:
                    continue
                silent = now - max(self.beats.get(key, float("-inf")), session.since)
                if silent <= SUSPECT_AFTER_S:
                    continue
                if key in self.dead:
                    session.reattaching = True
                    actions.append(Reattach(sid, role, key[0]))
                    break
                if key not in self.probing:
                    self.probing.add(key)
                    actions.append(Probe(*key))
        return actions


_FINDINGS: dict[str, Finding] = {"no_responders": "gone", "timeout": "unresponsive"}
