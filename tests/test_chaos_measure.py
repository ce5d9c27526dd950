"""The chaos run's client-heard gap (ops/chaos/run.py SessionRun): literal times in, the gap out."""

from __future__ import annotations

from ops.chaos.run import SessionRun, fault_table, quantiles


def _run() -> SessionRun:
    return SessionRun(0, "x-s000", "chaos-x-000", "openai")


def test_a_kill_mid_response_counts_from_the_kill_to_the_reasked_audio() -> None:
    run = _run()
    run.busy = True
    run.note_kill(10.0, "worker")
    run.heard(10.05)  # the dead worker's tail
    run.asked(10.4)  # the re-ask after the cut: the silence goes on
    run.heard(10.7)
    run.completed()
    assert [(k, round(s, 3)) for k, s in run.reattach_s] == [("worker", 0.65)]


def test_an_idle_session_counts_from_its_next_request() -> None:
    run = _run()
    run.note_kill(10.0, "transformer")
    run.asked(11.0)
    run.heard(11.3)
    run.completed()
    assert [(k, round(s, 3)) for k, s in run.reattach_s] == [("transformer", 0.3)]


def test_a_next_response_fault_is_not_closed_by_the_response_under_way() -> None:
    run = _run()
    run.busy = True
    run.note_kill(10.0, "stall", next_ask=True)
    run.heard(10.1)
    run.completed()  # the response under way ends well: nothing measured yet
    assert run.reattach_s == [] and run.armed == "stall"
    run.asked(11.0)
    run.heard(11.02)  # first output, then the stall
    run.cut()  # (measuring already: no change)
    run.asked(13.1)  # re-ask after the worker gave the stalled response up
    run.heard(13.2)
    run.completed()
    assert [(k, round(s, 3)) for k, s in run.reattach_s] == [("stall", 2.18)]


def test_a_next_response_fault_that_cuts_the_response_under_way_counts_from_the_fault() -> None:
    run = _run()
    run.busy = True
    run.note_kill(10.0, "stall", next_ask=True)  # the response under way had no output yet: it stalls
    run.cut()  # the worker ended it after RS_STALL_MS
    run.asked(12.1)
    run.heard(12.3)
    run.completed()
    assert [(k, round(s, 3)) for k, s in run.reattach_s] == [("stall", 2.3)]


def test_the_fault_table_has_a_row_per_kind() -> None:
    result = {"faults": {"nats": {"injected": 1, "skipped": 0, "sessions_hit": 8, "gap": quantiles([3.8, 3.9]),
                                  "cut": 0, "lost": 0, "dropped": 0}}}
    lines = fault_table(result).splitlines()
    assert lines[0].startswith("| fault ") and lines[2].startswith("| nats ") and "3900 ms" in lines[2]
