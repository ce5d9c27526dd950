"""The GC settings every service applies once it is up (shared/runtime.py): the start-up heap frozen, the
thresholds set, and the opt-in pause recorder the bench reads (docs/bench.md, "GC")."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.runtime import GC_THRESHOLD, gc_stats, settle_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


def test_settle_heap_freezes_and_sets_thresholds(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RS_GC_THRESHOLD", raising=False)
    monkeypatch.delenv("RS_GC_FREEZE", raising=False)
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() > 1000  # pytest's own heap, at least
    assert gc.get_threshold() == GC_THRESHOLD
    # What survived start-up is no longer in the generations a collection walks.
    assert sum(gc.get_count()) < gc.get_freeze_count()


def test_settle_heap_overrides_for_measuring(restore_gc: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RS_GC_THRESHOLD", "1234,5,6")
    monkeypatch.setenv("RS_GC_FREEZE", "false")
    gc.unfreeze()
    settle_heap()
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == (1234, 5, 6)


def test_gc_stats_records_every_collection(tmp_path: Path) -> None:
    out = tmp_path / "gc.json"
    with gc_stats(str(out)):
        for _ in range(3):
            gc.collect()  # full collections: generation 2
        gc.collect(0)
    stats = json.loads(out.read_text())
    assert stats["gen2"]["n"] >= 3 and stats["gen0"]["n"] >= 1
    for key in ("wall", "cpu"):
        d = stats["gen2"][key]
        assert d["total_ms"] > 0 and d["p50_ms"] <= d["p99_ms"] <= d["max_ms"], (key, d)
    assert gc_stats_callbacks_removed()


def gc_stats_callbacks_removed() -> bool:
    return not any(getattr(cb, "__qualname__", "").startswith("gc_stats") for cb in gc.callbacks)


def test_gc_stats_off_writes_nothing(tmp_path: Path) -> None:
    before = list(gc.callbacks)
    with gc_stats(""):
        assert gc.callbacks == before
    assert list(tmp_path.iterdir()) == []
