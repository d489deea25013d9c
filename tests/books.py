"""The kernel's own books for a thread: the independent truth the scheduler tests compare with.

- ``/proc/PID/task/TID/schedstat``: run ns, run-queue wait ns (run_delay: all time runnable but
  not running, after wake-ups and after preemptions alike), timeslices;
- ``/proc/PID/task/TID/status``: voluntary and nonvoluntary context switches;
- ``/proc/PID/task/TID/sched``: ``se.nr_migrations``;
- ``/proc/PID/status``: ``VmRSS``, resident memory.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Books:
    run_ns: int
    wait_ns: int
    voluntary: int
    involuntary: int
    migrations: int

    def __sub__(self, other: Books) -> Books:
        return Books(*(getattr(self, f.name) - getattr(other, f.name) for f in fields(self)))


def books(pid: int, tid: int | None = None) -> Books:
    task = f"/proc/{pid}/task/{tid or pid}"
    with open(f"{task}/schedstat") as f:
        run_ns, wait_ns, _ = map(int, f.read().split())
    status = {}
    with open(f"{task}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            status[key] = value.strip()
    migrations = 0
    with open(f"{task}/sched") as f:
        for line in f:
            if line.startswith("se.nr_migrations"):
                migrations = int(line.split(":")[1])
    return Books(
        run_ns=run_ns,
        wait_ns=wait_ns,
        voluntary=int(status["voluntary_ctxt_switches"]),
        involuntary=int(status["nonvoluntary_ctxt_switches"]),
        migrations=migrations,
    )


def rss_bytes(pid: int) -> int:
    """The process's resident memory as /proc/PID/status says it (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def task_ids(pid: int) -> list[int]:
    return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def stop_all(pids: Iterable[int], timeout_s: float = 10) -> None:
    """SIGSTOP each process and return once every one is stopped (state T) and off its CPU."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    while any(_state(p) != "T" for p in pids):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not all of {pids} stopped")
        time.sleep(0.001)
    time.sleep(0.02)  # state T is set just before the final switch-out: let it happen


def continue_all(pids: Iterable[int]) -> None:
    for pid in pids:
        os.kill(pid, signal.SIGCONT)


_ECHO = "import os\nwhile True:\n    b = os.read(0, 1)\n    if not b: break\n    os.write(1, b)\n"


def switch_cost_ns(cpu: int = 1, rounds: int = 2000, quantile: float = 0.5) -> float:
    """At most what one context switch costs on this machine: half the round trip of a byte
    between this process and a child, both pinned to ``cpu``, over pipes (each leg a write, a
    switch, a read), at ``quantile`` of the trips (the median by default). A bound for figures
    whose clocks are read a switch apart: a few microseconds here, many more under software
    emulation (the kernel matrix's QEMU guest)."""
    import subprocess
    import sys

    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    child = subprocess.Popen([sys.executable, "-c", _ECHO], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, bufsize=0)  # fmt: skip
    try:
        w, r = child.stdin.fileno(), child.stdout.fileno()  # type: ignore[union-attr]
        os.write(w, b"x")
        os.read(r, 1)  # the child is up
        trips = []
        for _ in range(rounds):
            t0 = time.perf_counter_ns()
            os.write(w, b"x")
            os.read(r, 1)
            trips.append(time.perf_counter_ns() - t0)
        trips.sort()
        return trips[min(len(trips) - 1, int(quantile * len(trips)))] / 2
    finally:
        child.stdin.close()  # type: ignore[union-attr]
        child.wait()
        child.stdout.close()  # type: ignore[union-attr]
        os.sched_setaffinity(0, before)
