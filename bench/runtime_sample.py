#!/usr/bin/env python3
"""What one runtime-metrics sample costs the collector, per process, on this host's /proc.

Every second the collector samples every live process it knows (RSS, CPU ticks) and each
workload's cgroup (memory, throttling): ResourceTracker.sample. This times that call over every
process of this machine (kernel threads included, which the collector does not sample), grouped
two ways: one workload per process, and one workload per cgroup. Within a sample a cgroup's files
are read once however many workloads share it, so the first grouping gains from that as much as
this machine's processes share cgroups: the script prints how many cgroups there are. Prints the
median of --repeat samples in microseconds per process, with the machine beside it.

Usage: .venv/bin/python bench/runtime_sample.py [--repeat 50]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict

from benchlib import machine


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    print(machine(), flush=True)
    from wasmtop.collector.resources import ResourceReader, ResourceTracker

    pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    by_cgroup: dict[str, list[int]] = defaultdict(list)
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cgroup") as f:
                by_cgroup[f.read()].append(pid)
        except OSError:
            pass
    groupings = {
        "one workload per process": {f"pid:{p}": [p] for p in pids},
        "one workload per cgroup": {f"cg{i}": ps for i, ps in enumerate(by_cgroup.values())},
    }
    print(f"{len(pids)} processes, {len(by_cgroup)} cgroups")
    for name, workloads in groupings.items():
        tracker = ResourceTracker(ResourceReader("/proc"))
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            tracker.sample(workloads)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        per = med / len(pids) * 1e6
        print(f"  {name}: {med * 1e3:.2f} ms per sample, {per:.1f} us per process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
