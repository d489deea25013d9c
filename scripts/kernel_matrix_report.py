"""The kernel matrix's report (scripts/kernel-matrix.sh runs it last): one line per test and
kernel, then Markdown tables for docs/kernels.md: each probe's and optional feature's status
per kernel (doctor's words), tests passed, and how long each part took.

Usage: python scripts/kernel_matrix_report.py .kernel-matrix
Exit status: 0 when every kernel ran every selected test and all passed, else 1."""

from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SELECTED = Path(__file__).resolve().parents[1] / "tests" / "kernel_matrix.txt"


def selected() -> list[str]:
    lines = SELECTED.read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


def results(junit: Path) -> dict[str, tuple[str, float, str]]:
    """Test id (file::name[param]) -> (passed | failed | error | skipped, seconds, message)."""
    out: dict[str, tuple[str, float, str]] = {}
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
        name = f"{file}::{case.get('name')}"
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = (node.get("message") or "").splitlines()[0][:160] if node.get(
                    "message") else ""  # fmt: skip
                break
        out[name] = (outcome, float(case.get("time") or 0), message)
    return out


def doctor(path: Path) -> dict[str, tuple[str, str]]:
    """ "feature NAME" / "probe NAME" -> (status, what doctor said)."""
    out: dict[str, tuple[str, str]] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        m = re.match(
            r"(feature|probe)\s+(\S+)\s+(ok|unavailable|failed)\s+(?:(?:required|optional)\s+)?(.*)",
            line,
        )  # noqa: E501
        if m:
            out[f"{m.group(1)} {m.group(2)}"] = (m.group(3), m.group(4).strip())
    return out


def parts(path: Path) -> dict[str, tuple[float, int]]:
    """Part -> (seconds, exit status) from parts.txt."""
    out: dict[str, tuple[float, int]] = {}
    try:
        for line in path.read_text().splitlines():
            name, seconds, rc = line.split()
            out[name] = (float(seconds), int(rc))
    except (OSError, ValueError):
        pass
    return out


def collected(path: Path) -> list[str]:
    """The test ids pytest collected for the selection (collected.txt), or none."""
    try:
        return [x.strip() for x in path.read_text().splitlines() if "::" in x]
    except OSError:
        return []


def main(root: Path) -> int:
    want = selected()
    kernels = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not kernels:
        print(f"kernel-matrix: nothing in {root}", file=sys.stderr)
        return 1
    ok = True
    table: dict[str, dict[str, tuple[str, float, str]]] = {}
    for k in kernels:
        got = results(k / "junit.xml")
        table[k.name] = got
        for test in collected(k / "collected.txt"):  # each test of a whole file, too
            if test not in got:
                print(f"{k.name:24} not run  {test}")
                ok = False
        status = parts(k / "parts.txt")
        for part in ("doctor", "tests"):
            if status.get(part, (0.0, 1))[1] != 0:
                print(f"{k.name:24} {part} exited {status.get(part, (0, 'unknown'))[1]}")
                ok = False
        for test in want:
            # A node id (its parameters too), or a whole file's tests.
            prefix = test + ("[" if "::" in test else "::")
            ran = {n: r for n, r in got.items() if n == test or n.startswith(prefix)}
            if not ran:
                print(f"{k.name:24} not run  {test}")
                ok = False
            for name, (outcome, seconds, message) in sorted(ran.items()):
                said = f"  {message}" if message else ""
                print(f"{k.name:24} {outcome:7}  {name}  ({seconds:.1f} s){said}")
                ok &= outcome == "passed"
    # Markdown for docs/kernels.md
    docs = {k.name: doctor(k / "doctor.txt") for k in kernels}
    names = sorted(
        {n for d in docs.values() for n in d}, key=lambda n: (not n.startswith("probe"), n)
    )
    print()
    print("| | " + " | ".join(k.name for k in kernels) + " |")
    print("| --- |" + " --- |" * len(kernels))
    for n in names:
        cells = []
        for k in kernels:
            status, said = docs[k.name].get(n, ("-", ""))
            cells.append(status if status == "ok" else f"{status}: {said}")
        print(f"| {n} | " + " | ".join(cells) + " |")
    passed = {k: sum(1 for r in t.values() if r[0] == "passed") for k, t in table.items()}
    total = {k: len(t) for k, t in table.items()}
    print(
        "| tests passed | "
        + " | ".join(f"{passed[k.name]} of {total[k.name]}" for k in kernels)
        + " |"
    )  # noqa: E501
    for part in ("doctor", "tests"):
        cells = [f"{parts(k / 'parts.txt').get(part, (float('nan'), 0))[0]:.0f} s" for k in kernels]
        print(f"| {part} (wall) | " + " | ".join(cells) + " |")
    cells = []
    for k in kernels:
        try:
            cells.append(f"{int((k / 'elapsed_s').read_text())} s")
        except (OSError, ValueError):
            cells.append("-")
    print("| whole VM run (boot to power-off) | " + " | ".join(cells) + " |")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1] if len(sys.argv) > 1 else ".kernel-matrix")))
