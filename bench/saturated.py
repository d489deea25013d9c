#!/usr/bin/env python3
"""wasmtop on a saturated node: how long `wasmtop snapshot --seconds 3` takes with every CPU
busy, against the same command on the idle machine, side by side in one run.

Saturated: one CPU-bound process per CPU plus ``--extra`` more (busy loops at normal priority,
what a node in trouble looks like). Printed per scheduling mode (``idle``, the default, and
``normal``): the wall time idle and saturated, when the probes were attached (the "attached"
line on stderr), and the ratio saturated / idle.

Usage: .venv/bin/python bench/saturated.py [--seconds 3] [--extra 1] [--modes idle normal]
Needs root. Target (issue: never starved): saturated within 1.5x of idle. Run on a quiet
machine: the load average is printed beside the results.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from benchlib import machine

WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
BUSY = "while True: pass"


def timed(seconds: float, mode: str) -> tuple[float, float]:
    """(wall s, attached after s) of one `wasmtop snapshot`."""
    cmd = [WASMTOP, "snapshot", "--seconds", str(seconds), "--bypass", "off",
           "--scheduling", mode]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    attached = float("nan")
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith(b"wasmtop: attached:"):
            attached = time.monotonic() - t0
    proc.wait()
    if proc.returncode != 0:
        raise RuntimeError(f"wasmtop snapshot exited {proc.returncode}")
    return time.monotonic() - t0, attached


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--extra", type=int, default=1, help="busy processes beyond one per CPU")
    ap.add_argument("--modes", nargs="*", default=["idle", "normal"])
    args = ap.parse_args()
    print(machine(), flush=True)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    cpus = os.cpu_count() or 1
    print(f"load before: {os.getloadavg()[0]:.2f}  cpus: {cpus}  busy: {cpus + args.extra}")
    rows = []
    for mode in args.modes:
        idle = timed(args.seconds, mode)
        hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(cpus + args.extra)]
        try:
            time.sleep(1.0)
            busy = timed(args.seconds, mode)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        rows.append((mode, idle, busy))
    print(f"\n{'scheduling':<10} {'idle s':>7} {'attached':>8} {'saturated s':>11} "
          f"{'attached':>8} {'ratio':>6}")  # fmt: skip
    for mode, (iw, ia), (bw, ba) in rows:
        print(f"{mode:<10} {iw:>7.1f} {ia:>8.1f} {bw:>11.1f} {ba:>8.1f} {bw / iw:>5.2f}x")
    print(f"load after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
