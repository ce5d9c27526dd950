"""docs/operations.md lists exactly the metrics the code exports."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import Counter, Gauge, Histogram

import shared.metrics as metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


def exported() -> set[str]:
    names = set()
    for name in metrics.__all__:
        obj = getattr(metrics, name)
        if isinstance(obj, Counter):
            names.add(obj._name + "_total")
        elif isinstance(obj, Gauge | Histogram):
            names.add(obj._name)
    return names


def test_operations_doc_lists_every_metric_and_no_other() -> None:
    documented = set(re.findall(r"^\| `(rs_[a-z_]+)` \|", DOC.read_text(), flags=re.M))
    assert documented == exported()
