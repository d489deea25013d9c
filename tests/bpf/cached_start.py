"""A process that starts the scheduler probe with a given object cache, watches one worker
thread of its own do 300 short sleeps, and prints what it saw as one JSON line: where the
program came from, whether a compiler library was ever mapped into it, the probe's switch count
for the worker and the kernel's own (/proc/self/task/TID/status). Run by test_program_cache.py,
in a fresh process, so that nothing the test process imported shows in its maps."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

from wasmtop.collector.collector import Collector
from wasmtop.probes.compiled import configure_cache
from wasmtop.probes.probeset import ProbeSet
from wasmtop.probes.sched import SchedProbe

COMPILER_LIBRARIES = ("libLLVM", "libclang", "libbcc.so")


def switches(tid: int) -> int:
    status = Path(f"/proc/self/task/{tid}/status").read_text().splitlines()
    return sum(int(line.split()[1]) for line in status if "ctxt_switches" in line)


def parked(tid: int) -> None:
    """Wait until the thread sleeps (state S): its switch-out is in both books."""
    while Path(f"/proc/self/task/{tid}/stat").read_text().rpartition(")")[2].split()[0] != "S":
        time.sleep(0.001)


def main() -> None:
    cache = configure_cache(Path(sys.argv[1]))
    go, done, leave = threading.Event(), threading.Event(), threading.Event()
    tid: list[int] = []

    def worker() -> None:
        tid.append(threading.get_native_id())
        go.wait()
        for _ in range(300):
            time.sleep(0.001)
        done.set()
        leave.wait()  # alive until its books are read

    t = threading.Thread(target=worker)
    t.start()
    while not tid:
        time.sleep(0.001)
    parked(tid[0])  # in go.wait(), switched out before the probe attaches
    probe = SchedProbe()
    with ProbeSet([probe], handle_signals=False) as probes:
        collector = Collector(probes)
        collector.observe()
        before_ours = probe.read().threads.get(tid[0])
        before = switches(tid[0])
        go.set()
        done.wait()
        parked(tid[0])  # in leave.wait(): both books have that switch-out
        after = switches(tid[0])
        threads = probe.read().threads
        leave.set()
        t.join()
        probes.detach()
        ours = threads[tid[0]].switches - (before_ours.switches if before_ours else 0)
        maps = Path("/proc/self/maps").read_text()
        print(json.dumps({
            "status": probe.status, "reason": probe.reason, "source": probe.program_source,
            "compiler_mapped": [lib for lib in COMPILER_LIBRARIES if lib in maps],
            "ours": ours, "kernel": after - before, "cache": cache.stats.as_dict(),
        }))  # fmt: skip


if __name__ == "__main__":
    main()
