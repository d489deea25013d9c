"""What the benchmark scripts share: waiting for ``wasmtop snapshot`` to say it attached, the
machine the figures depend on, and how much a run's rounds spread."""

from __future__ import annotations

import math
import os
import statistics
import subprocess


def attached_line(proc: subprocess.Popen, *, lines: int = 50) -> str:
    """The ``wasmtop: attached: ...`` line of a ``wasmtop snapshot`` started with
    ``stderr=PIPE, text=True``, read past the notes before it (pod names, ...). Raises
    RuntimeError with what wasmtop said when it ends or says something else ``lines`` times."""
    said = []
    for _ in range(lines):
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("wasmtop: attached: "):
            return line
        said.append(line)
    proc.kill()
    raise RuntimeError("wasmtop did not attach:\n" + "".join(said))


def machine() -> str:
    """What the figures depend on beyond the code: the CPU, the kernel, the load, and the
    kernel's return-stack mitigation (on AMD Zen its "Safe RET" makes every kernel return, and
    so every BPF helper call, dearer: per-run costs doubled between two hosts of one day)."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                line.split(":", 1)[1].strip() for line in f if line.startswith("model name")
            )
    except (OSError, StopIteration):
        pass
    try:
        with open("/sys/devices/system/cpu/vulnerabilities/spec_rstack_overflow") as f:
            srso = f.read().strip()
    except OSError:
        srso = "not reported"
    return (
        f"machine: {model}, {os.cpu_count()} CPUs, Linux {os.uname().release}, "
        f"load {os.getloadavg()[0]:.2f}; spec_rstack_overflow: {srso}"
    )


def spread(values: list[float]) -> str:
    """The rounds' range, ``min-max``: next to a median, how far one round can be from it."""
    return f"{min(values):,.0f}-{max(values):,.0f}"


def cpu_times(cpu: int) -> tuple[int, int]:
    """One CPU's (idle, total) ticks from /proc/stat, idle being idle + iowait and total user to
    steal (guest time is inside user): two readings give its busy share over the time between
    them (``busy_percent``)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(v) for v in line.split()[1:9]]  # user .. steal
                return ticks[3] + ticks[4], sum(ticks)
    raise RuntimeError(f"no cpu{cpu} in /proc/stat")


def busy_percent(before: tuple[int, int], after: tuple[int, int]) -> float:
    """The share of the CPU's ticks between two ``cpu_times`` readings that were neither idle
    nor iowait: every task on that CPU counts, and so does steal; one tick (10 ms at 100 Hz) is
    its resolution. NaN when no tick passed. It moves much less with the host's speed than
    requests per second do: the benchmarks compare it between configurations."""
    idle, total = after[0] - before[0], after[1] - before[1]
    return 100.0 * (1 - idle / total) if total > 0 else math.nan


def paired_ratio(tool: list[float], base: list[float]) -> str:
    """Median, min and max of ``tool[r] / base[r]``: each round's two runs measured minutes
    apart, so a drift of the host between rounds cancels in the ratio, where the ratio of the
    two medians keeps it."""
    ratios = [t / b for t, b in zip(tool, base, strict=True)]
    return f"{statistics.median(ratios):.3f}x (rounds {min(ratios):.3f}-{max(ratios):.3f}x)"
