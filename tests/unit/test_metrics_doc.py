"""docs/metrics.md lists exactly the families wasmtop can serve: each family of the series book
(exporters/series.py) and each one a component declares (a ``Family("name", "type", ...)``
literal: the daemon, the evaluator, the Alertmanager notifier, the gRPC server, the pod
watcher, the OTLP exporter, exporters/own.py), under its exposed name (``_total`` for a
counter). A family added without a line in the docs, or a line left for one removed, fails."""

from __future__ import annotations

import re
from pathlib import Path

from wasmtop.exporters.exposition import encode
from wasmtop.exporters.own import build_info, process_families
from wasmtop.exporters.series import SeriesBook

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["wasmtop", "collector", "exporters", "alerts", "probes"]


def exposed(name: str, kind: str) -> str:
    return f"{name}_total" if kind == "counter" else name


def code_families() -> dict[str, str]:
    """Exposed name -> where it is declared."""
    found = {exposed(f.name, f.kind): "exporters/series.py" for f in SeriesBook().families()}
    for d in SOURCES:
        for path in (ROOT / d).rglob("*.py"):
            text = path.read_text()
            for m in re.finditer(r'(?:Family|one)\(\s*"(\w+)",\s*"(\w+)"', text):
                found[exposed(m.group(1), m.group(2))] = str(path.relative_to(ROOT))
    return found


def documented() -> set[str]:
    text = (ROOT / "docs/metrics.md").read_text()
    return set(re.findall(r"^\| `((?:wasmtop|process)_\w+)` \|", text, re.M))


def test_every_family_is_documented_and_every_documented_one_exists():
    code, docs = code_families(), documented()
    assert len(code) > 50
    missing = {name: where for name, where in code.items() if name not in docs}
    assert missing == {}, "families without a line in docs/metrics.md"
    assert docs - set(code) == set(), "lines in docs/metrics.md for no family"


def test_the_own_families_are_served_with_their_documented_names():
    text = encode([build_info(), *process_families()]).decode()
    served = set(re.findall(r"^# TYPE (\S+)", text, re.M))  # counters with their _total
    assert served <= documented() and "process_resident_memory_bytes" in served
    assert 'wasmtop_build_info{version="' in text
