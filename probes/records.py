"""Typed records the probes produce: raw kernel facts, keyed by thread or process id.

Counters are cumulative since the probe attached; the collector turns them into per-window
figures. Times are nanoseconds of CLOCK_MONOTONIC (bpf_ktime_get_ns).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ThreadSched:
    tid: int
    tgid: int
    comm: str
    switches: int
    involuntary: int
    migrations: int
    preempt_delay_ns: int
    preemptions: int
    over_threshold: int


@dataclass(frozen=True)
class PreemptionRecord:
    ts_ns: int
    delay_ns: int
    pid: int
    tid: int
    cpu: int
    comm: str
    preemptor_pid: int
    preemptor_tid: int
    preemptor_comm: str


@dataclass(frozen=True)
class SchedReading:
    """One read of the scheduler probe's maps (cumulative) plus the events drained since the
    previous read. ``window_max_delay_ns`` is per process since the previous read."""

    ts_ns: int
    threads: dict[int, ThreadSched]
    cpu_time_ns: dict[tuple[int, int], int]  # (tid, cpu) -> ns, including the running slice
    migrations: dict[tuple[int, int, int], int]  # (tgid, from_cpu, to_cpu) -> count
    delay_hist: dict[tuple[int, int], int]  # (tgid, bucket) -> count
    window_max_delay_ns: dict[int, int]  # tgid -> max delay since previous read
    events: list[PreemptionRecord] = field(default_factory=list)
    migrations_untracked: int = 0
