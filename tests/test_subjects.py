"""Subjects parse back what the table builds (shared/bus.Subjects)."""

from __future__ import annotations

from shared.bus import Subjects


def test_session_of_reads_the_sid_of_every_session_subject() -> None:
    for subject in (Subjects.cin("k1"), Subjects.up("k1", "log"), Subjects.down("k1"), Subjects.cout("k1"),
                    Subjects.ctl("k1"), Subjects.signal("k1")):
        assert Subjects.session_of(subject) == "k1"
    assert Subjects.session_of(Subjects.ASSIGN_TRANSFORMER) is None
    assert Subjects.session_of("rs.s.") is None


def test_assign_role() -> None:
    assert Subjects.assign_role(Subjects.ASSIGN_TRANSFORMER) == "transformer"
    assert Subjects.assign_role(Subjects.assign_worker("gemini")) == "worker"
    assert Subjects.assign_role(Subjects.cin("k1")) is None


def test_heartbeat_of() -> None:
    assert Subjects.heartbeat_of(Subjects.heartbeat("worker", "wk-1")) == ("worker", "wk-1")
    assert Subjects.heartbeat_of(Subjects.probe("wk-1", "b")) is None
