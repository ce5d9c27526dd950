"""The edge's liveness machine from literal inputs: one test per rule (services/edge/liveness.py)."""

from __future__ import annotations

from services.edge.liveness import (
    BUS_OUTAGE_GRACE_S,
    DEAD_MEMORY_S,
    HEARTBEAT_DEADLINE_S,
    Liveness,
    Probe,
    Reattach,
)

T, W = ("tr-1", "bt"), ("wk-1", "bw")


def attached(*sids: str, at: float = 10.0) -> Liveness:
    machine = Liveness()
    for sid in sids:
        machine.attach(sid, {"transformer": T, "worker": W}, at)
    machine.beat(*T, at)
    machine.beat(*W, at)
    return machine


def test_beating_members_need_nothing() -> None:
    machine = attached("s1")
    for step in range(1, 20):
        now = 10.0 + step * 0.1
        machine.beat(*T, now)
        machine.beat(*W, now)
        assert machine.due(now) == []


def test_a_fresh_attach_is_not_suspect_before_its_first_beat() -> None:
    machine = Liveness()
    machine.attach("s1", {"transformer": T, "worker": W}, 10.0)
    assert machine.due(10.125) == []
    assert machine.due(10.25) == [Probe(*T), Probe(*W)]


def test_late_beat_starts_one_probe_per_process_whatever_its_sessions() -> None:
    machine = attached("s1", "s2", "s3")
    machine.beat(*T, 10.2)
    assert machine.due(10.2) == [Probe(*W)]
    assert machine.due(10.25) == []  # the probe is in flight
    machine.probe_result(*W, "answered", 10.3)
    assert machine.due(10.3) == []
    assert machine.due(10.5) == [Probe(*T), Probe(*W)]


def test_no_responders_is_dead_at_once_and_the_session_is_reattached_once() -> None:
    machine = attached("s1")
    machine.beat(*T, 10.2)
    assert machine.due(10.2) == [Probe(*W)]
    assert machine.probe_result(*W, "no_responders", 10.21) == "gone"
    assert machine.due(10.25) == [Reattach("s1", "worker", "wk-1")]
    machine.beat(*T, 10.3)
    assert machine.due(10.3) == []  # one reattach at a time
    machine.reattach_over("s1")  # it failed: the session is watched again and reattached again
    assert machine.due(10.35) == [Reattach("s1", "worker", "wk-1")]


def test_an_answer_spares_a_late_process_and_counts_as_a_beat() -> None:
    machine = attached("s1")
    machine.beat(*T, 10.6)
    assert machine.due(10.6) == [Probe(*W)]
    assert machine.probe_result(*W, "answered", 10.7) == "alive"
    machine.beat(*T, 10.75)
    assert machine.due(10.75) == []
    assert W not in machine.dead


def test_a_timeout_without_a_recent_beat_is_dead() -> None:
    machine = attached("s1")
    machine.beat(*W, 10.2)
    assert machine.due(10.2) == [Probe(*T)]
    assert machine.probe_result(*T, "timeout", 11.2) == "unresponsive"
    assert machine.due(11.2) == [Reattach("s1", "transformer", "tr-1")]


def test_a_timeout_after_a_recent_beat_is_not_dead() -> None:
    machine = attached("s1")
    machine.beat(*W, 10.2)
    assert machine.due(10.2) == [Probe(*T)]
    machine.beat(*T, 11.25 - HEARTBEAT_DEADLINE_S + 0.0625)
    assert machine.probe_result(*T, "timeout", 11.25) is None
    assert T not in machine.dead


def test_a_failed_request_says_nothing_about_the_process() -> None:
    machine = attached("s1")
    assert machine.due(10.2) == [Probe(*T), Probe(*W)]
    assert machine.probe_result(*T, "failed", 10.3) is None
    assert machine.dead == {}
    assert machine.due(10.3) == [Probe(*T)]  # the worker's probe is still in flight


def test_the_transformer_is_reattached_before_the_worker() -> None:
    machine = attached("s1")
    machine.due(10.2)
    machine.probe_result(*T, "no_responders", 10.2)
    machine.probe_result(*W, "no_responders", 10.2)
    assert machine.due(10.25) == [Reattach("s1", "transformer", "tr-1")]
    machine.moved("s1", "transformer", "tr-2", "bt2", 10.3)
    machine.beat("tr-2", "bt2", 10.5)
    assert machine.due(10.5) == [Reattach("s1", "worker", "wk-1")]


def test_a_restart_under_the_same_name_does_not_keep_the_old_incarnation_alive() -> None:
    machine = attached("s1")
    machine.beat(*T, 10.2)
    machine.beat("wk-1", "new-boot", 10.2)  # the restarted pod beats under the old name
    assert machine.due(10.2) == [Probe(*W)]  # the probe asks the old incarnation: nobody answers
    assert machine.probe_result(*W, "no_responders", 10.21) == "gone"
    assert machine.due(10.22) == [Reattach("s1", "worker", "wk-1")]
    assert ("wk-1", "new-boot") not in machine.dead


def test_a_reattached_session_is_judged_by_its_new_member() -> None:
    machine = attached("s1")
    machine.beat(*T, 10.2)
    machine.due(10.2)
    machine.probe_result(*W, "no_responders", 10.2)
    assert machine.due(10.25) == [Reattach("s1", "worker", "wk-1")]
    machine.moved("s1", "worker", "wk-2", "b2", 10.5)
    for step in range(1, 10):
        now = 10.5 + step * 0.1
        machine.beat(*T, now)
        machine.beat("wk-2", "b2", now)
        assert machine.due(now) == []


def test_dead_memory_expires_and_a_beat_forgets_the_finding() -> None:
    machine = attached("s1")
    machine.due(10.25)
    machine.probe_result(*T, "no_responders", 10.25)
    machine.probe_result(*W, "no_responders", 10.25)
    machine.detach("s1")
    machine.due(10.25 + DEAD_MEMORY_S)
    assert set(machine.dead) == {T, W}
    machine.beat(*T, 10.25 + DEAD_MEMORY_S)  # stopped, woke up
    assert set(machine.dead) == {W}
    machine.due(10.375 + DEAD_MEMORY_S)
    assert machine.dead == {}


def test_after_a_bus_outage_silence_proves_nothing_for_the_grace() -> None:
    machine = attached("s1")
    machine.bus_outage(10.5)  # our connection came back at 10.5: no beats could reach us before
    assert machine.due(10.5 + BUS_OUTAGE_GRACE_S - 0.01) == []
    assert machine.due(10.5 + BUS_OUTAGE_GRACE_S) == [Probe(*T), Probe(*W)]
    machine.bus_outage(10.5 + BUS_OUTAGE_GRACE_S + 0.1)  # down again while the probes ran
    assert machine.probe_result(*W, "no_responders", 10.5 + BUS_OUTAGE_GRACE_S + 0.2) is None
    assert machine.dead == {}


def test_a_detached_session_is_not_watched_and_a_late_move_is_ignored() -> None:
    machine = attached("s1")
    machine.detach("s1")
    assert machine.due(20.0) == []
    machine.moved("s1", "worker", "wk-2", "b2", 20.0)
    assert machine.sessions == {}
