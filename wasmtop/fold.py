"""Kernel threads folded into one workload for the terminal UI's table.

A host runs dozens of kernel threads (kworker, ksoftirqd, migration, rcu_*); each is a workload
of its own in the Snapshot (``Workload.kernel_thread``), which keeps every figure. The terminal
UI lists them as one ``kernel`` row unless asked (K): this module builds that row, summing what
adds up (switches, migrations, delays, CPU time, histograms, run-queue wait and whom it waited
behind) and recomputing what does not (quantiles from the summed histograms, ratios from the
summed counts). A figure of a group of unrelated threads that means nothing (CPU skew) is left
out.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from .collector.model import (
    DelayQuantiles,
    HistogramBucket,
    Migration,
    NetFigures,
    RuntimeMetrics,
    SchedFigures,
    WaitedBehind,
    Workload,
)

KERNEL_KEY = "kernel"  # the folded row's key: no collector key has this form (pid:, pod:, ...)


def fold_kernel_threads(threads: Sequence[Workload]) -> Workload:
    """One workload standing for ``threads`` (kernel threads, at least one)."""
    scheds = [w.sched for w in threads if w.sched is not None]
    nets = [w.net for w in threads if w.net is not None]
    runtimes = [w.runtime_metrics for w in threads if w.runtime_metrics is not None]
    return Workload(
        key=KERNEL_KEY,
        kind="process",
        runtime=None,
        comm="kernel",
        pids=tuple(sorted({p for w in threads for p in w.pids})),
        cgroup=None,
        pod=None,
        sched=_sched(scheds) if scheds else None,
        net=_net(nets) if nets else None,
        requests=None,
        runtime_metrics=_runtime(runtimes) if runtimes else None,
        kernel_thread=True,
    )


def _sched(parts: Sequence[SchedFigures]) -> SchedFigures:
    def total(name: str) -> float:
        return sum(getattr(s, name) for s in parts)

    switches, migrations = int(total("switches")), int(total("migrations"))
    cpu_time: dict[str, int] = defaultdict(int)
    for s in parts:
        for cpu, ns in s.cpu_time_ns_by_cpu.items():
            cpu_time[cpu] += ns
    preempt_hist = merge_buckets(s.preempt_delay_hist for s in parts)
    wake_hist = merge_buckets(s.wakeup_delay_hist for s in parts)
    runq_us = total("runq_delay_total_us")
    return SchedFigures(
        switches=switches,
        involuntary=int(total("involuntary")),
        migrations=migrations,
        migrations_per_s=total("migrations_per_s"),
        switches_per_s=total("switches_per_s"),
        involuntary_per_s=total("involuntary_per_s"),
        affinity_stability=migrations / max(switches, 1),
        cpu_skew_ratio=None,  # the spread of unrelated threads over CPUs tells nothing
        allowed_cpus=tuple(sorted({c for s in parts for c in s.allowed_cpus})),
        cpu_time_ns_by_cpu=dict(sorted(cpu_time.items(), key=lambda kv: _cpu_order(kv[0]))),
        preempt_delay_us=quantiles(preempt_hist, [s.preempt_delay_us.max for s in parts]),
        preemptions=int(total("preemptions")),
        preempt_delay_total_us=total("preempt_delay_total_us"),
        preemptions_over_threshold=int(total("preemptions_over_threshold")),
        preempt_delay_hist=preempt_hist,
        migration_matrix=_matrix(parts),
        wakeups=int(total("wakeups")),
        wakeup_delay_us=quantiles(wake_hist, [s.wakeup_delay_us.max for s in parts]),
        wakeup_delay_total_us=total("wakeup_delay_total_us"),
        wakeup_delay_hist=wake_hist,
        wakeups_over_threshold=int(total("wakeups_over_threshold")),
        runq_delay_total_us=runq_us,
        waited_behind=_waited_behind(parts),
    )


def merge_buckets(hists: Iterable[Sequence[HistogramBucket]]) -> tuple[HistogramBucket, ...]:
    """Histograms of the same log-linear buckets added up, lowest bucket first."""
    counts: dict[tuple[float, float], int] = defaultdict(int)
    for hist in hists:
        for b in hist:
            counts[(b.low_us, b.high_us)] += b.count
    return tuple(HistogramBucket(lo, hi, n) for (lo, hi), n in sorted(counts.items()))


def quantiles(hist: Sequence[HistogramBucket], maxima: Iterable[float | None]) -> DelayQuantiles:
    """p50 and p99 of a summed histogram the way the collector reads one (the midpoint of the
    bucket holding the nearest-rank sample, never above the maximum), and the largest maximum."""
    known = [m for m in maxima if m is not None]
    top = max(known) if known else None
    return DelayQuantiles(_quantile(hist, 0.50, top), _quantile(hist, 0.99, top), top)


def _quantile(hist: Sequence[HistogramBucket], q: float, top: float | None) -> float | None:
    total = sum(b.count for b in hist)
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for b in hist:
        seen += b.count
        if seen >= rank:
            # Finite in µs can still overflow in ns (a hostile 1e308): such a bucket is open too.
            if not (math.isfinite(b.low_us * 1000) and math.isfinite(b.high_us * 1000)):
                # An open bucket (or a hostile Snapshot's): no midpoint; the maximum, else its
                # finite bound, else nothing.
                if top is not None:
                    return top
                return b.low_us if math.isfinite(b.low_us * 1000) else None
            # In ns, as collector/quantiles.py: [low, high) of whole nanoseconds.
            low, high = round(b.low_us * 1000), round(b.high_us * 1000)
            mid = ((low + high - 1) / 2 if high - low > 1 else float(low)) / 1000
            return min(mid, top) if top is not None else mid
    return None


def _matrix(parts: Sequence[SchedFigures]) -> tuple[Migration, ...]:
    counts: dict[tuple[int, int], int] = defaultdict(int)
    distance: dict[tuple[int, int], str] = {}
    for s in parts:
        for m in s.migration_matrix:
            counts[(m.from_cpu, m.to_cpu)] += m.count
            distance[(m.from_cpu, m.to_cpu)] = m.distance
    return tuple(Migration(a, b, n, distance[(a, b)]) for (a, b), n in sorted(counts.items()))


def _waited_behind(parts: Sequence[SchedFigures]) -> tuple[WaitedBehind, ...]:
    """Whom the threads waited behind, added up by culprit; shares of the summed wait."""
    wait: dict[tuple[str, str | None], float] = defaultdict(float)
    comm: dict[tuple[str, str | None], str | None] = {}
    for s in parts:
        for wb in s.waited_behind:
            wait[(wb.kind, wb.culprit)] += wb.wait_ms
            comm.setdefault((wb.kind, wb.culprit), wb.comm)
    whole = sum(wait.values())
    order = {"workload": 0, "idle": 1, "other": 2, "unattributed": 3}
    ranked = sorted(wait.items(), key=lambda kv: (order.get(kv[0][0], 4), -kv[1], kv[0][1] or ""))
    return tuple(
        WaitedBehind(kind, culprit, comm[(kind, culprit)], ms, ms / whole if whole > 0 else 0.0)
        for (kind, culprit), ms in ranked
    )


def _net(parts: Sequence[NetFigures]) -> NetFigures:
    def total(name: str) -> int:
        return sum(getattr(n, name) for n in parts)

    fallbacks: dict[str, int] = defaultdict(int)
    for n in parts:
        for reason, count in n.fallbacks.items():
            fallbacks[reason] += count
    bypass, stack = total("bypass_bytes"), total("stack_bytes")
    rtts = [n.srtt_us_max for n in parts if n.srtt_us_max is not None]
    return NetFigures(
        connections=total("connections"),
        eligible_connections=total("eligible_connections"),
        bypass_connections=total("bypass_connections"),
        bypass_msgs=total("bypass_msgs"),
        bypass_bytes=bypass,
        stack_bytes=stack,
        eligible_stack_bytes=total("eligible_stack_bytes"),
        passed_msgs=total("passed_msgs"),
        failed_msgs=total("failed_msgs"),
        fallbacks=dict(fallbacks),
        bypass_ratio=bypass / (bypass + stack) if bypass + stack else None,
        srtt_us_max=max(rtts) if rtts else None,
    )


def _runtime(parts: Sequence[RuntimeMetrics]) -> RuntimeMetrics:
    cpu = [r.cpu_percent for r in parts if r.cpu_percent is not None]
    return RuntimeMetrics(
        rss_bytes=sum(r.rss_bytes for r in parts),  # 0: kernel threads map no user memory
        rss_growth_mb_per_min=None,
        growth_window_s=0.0,
        cpu_percent=sum(cpu) if cpu else None,
        memory_current_bytes=None,
        memory_limit_bytes=None,
        throttled_us=None,
        nr_throttled=None,
        cold_start_ms=None,
        cold_start=None,
        first_accept_ms=None,
        first_accept=None,
        wasm=None,
    )


def _cpu_order(cpu: str) -> tuple[int, int, str]:
    try:
        return (0, int(cpu), "")
    except ValueError:
        return (1, 0, cpu)
