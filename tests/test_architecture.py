"""The tree keeps its architecture: the import contracts in pyproject.toml hold, and only shared/bus.py names
bus subjects.

Import contracts (``[tool.importlinter]``, run with ``lint-imports``): three floors (ops uses services, services
use shared, nothing imports upwards), process packages independent of one another, fakes free of ``shared``,
codecs free of I/O libraries. Subjects: every NATS subject and JetStream API name comes from the one table in
``shared/bus.py``, so a rename is one edit and no process can drift onto a subject nobody publishes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUS = ROOT / "shared" / "bus.py"
# A string literal that starts a subject of ours or a JetStream API subject (either quote, f-strings included).
SUBJECT_LITERAL = re.compile(r"""[fbr]?["'](?:rs\.(?:s|hb|assign|probe)\b|\$JS\.API)""")
# Source trees whose code runs in the product; tests are free to spell subjects out to observe the bus.
SOURCE_DIRS = ("shared", "services", "ops")
# Files outside shared/bus.py allowed to name a subject, each with the reason. Keep it empty if you can.
EXCEPTIONS: dict[str, str] = {}


def _subject_literals(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [
        f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(lines, 1)
        if SUBJECT_LITERAL.search(line)
    ]


def test_only_the_bus_module_names_subjects() -> None:
    assert _subject_literals(BUS), "the pattern finds nothing in shared/bus.py itself: it no longer matches"
    offenders = [
        hit
        for folder in SOURCE_DIRS
        for path in sorted((ROOT / folder).rglob("*.py"))
        if path != BUS and str(path.relative_to(ROOT)) not in EXCEPTIONS
        for hit in _subject_literals(path)
    ]
    assert not offenders, "subjects named outside shared/bus.py (use bus.Subjects):\n" + "\n".join(offenders)


def _lint_imports_command() -> list[str]:
    found = shutil.which("lint-imports")
    if found is not None:
        return [found]
    # Installed as a library without its script on PATH (a venv not activated): call its entry point.
    return [
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())",
    ]


def test_import_contracts_hold() -> None:
    proc = subprocess.run(
        [*_lint_imports_command(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    report = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports failed:\n{report[-6000:]}"
    kept = re.search(r"Contracts: (\d+) kept, (\d+) broken", report)
    assert kept is not None and int(kept.group(1)) >= 4 and kept.group(2) == "0", report[-2000:]
