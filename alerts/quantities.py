"""The Snapshot quantities a rule can watch: one documented name each, how to read it from a
Snapshot on the node, and the PromQL that computes it from the exported metrics.

Three kinds:
- ``gauge``: one value per workload per evaluation (e.g. the window's request P99); a gauge
  that is a rate is read from the window's total and the Snapshot's ``window_s``, as
  Prometheus reads it from a counter's ``rate()``;
- ``event``: values that arrive one by one (each preemption, each cold start); "N in a row"
  counts events, not evaluations;
- ``probe``: one value per probe per evaluation (events lost).

Every PromQL expression yields the quantity in the unit its name says, so a rule's threshold
means the same thing on the node and in Prometheus, and ``{{ $value }}`` reads the same.

A quantity taken over a span of its own that its value's meaning depends on (the RSS growth
slope: a slope over 6 s is not the 5-minute trend) says how much it covers and how much it needs
(``coverage``); until it covers that, its value is "not enough data yet" and no rule compares it
(alerts/evaluate.py). The others have no such span: the window quantities are over the Snapshot's
own window, which each Snapshot covers whole; the request quantiles are over the requests of the
sliding window, which bounds their age and extrapolates nothing; events are each complete.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

from ..collector.model import DELAY_BOUNDS_S as PREEMPT_BOUNDS_S
from ..collector.model import Snapshot, Workload

# The labels a rendered alert keeps: the same ones the node puts on its alerts, so Alertmanager
# sees one alert whichever side sent it.
WORKLOAD_BY = "node, workload, namespace, pod"
PROBE_BY = "node, probe"


class Event(NamedTuple):
    value: float
    thread: int | None  # the thread it happened to (events of a thread are numbered)
    seq: int | None  # its number among the thread's events, of any value


class Events(NamedTuple):
    """A workload's events of one quantity in the window, oldest first. ``hidden_below``:
    events below the kernel's reporting threshold that happened in the window but were only
    counted, not sent (they reset an "N in a row" count)."""

    items: list[Event]
    hidden_below: int
    complete: bool  # False: some events of the window were dropped before the Snapshot


@dataclass(frozen=True)
class Quantity:
    name: str
    kind: str  # gauge | event | probe
    unit: str
    probe: str | None  # the probe whose losses make its alerts incomplete
    doc: str
    promql: str  # {by}: the kept labels, {window}: range; {le}: a histogram bound (events)
    gauge: Callable[[Workload], Optional[float]] | None = None
    # A gauge per second of wall time: the workload's total in the window, which the node
    # divides by the Snapshot's window_s (PromQL: rate() of the counter the total feeds).
    window_total: Callable[[Workload], Optional[float]] | None = None
    events: Callable[[Snapshot, Workload, list[Any]], Events] | None = None
    bounds_s: tuple[float, ...] = ()  # event quantities rendered from a histogram: its bounds
    # (span its value covers, span it needs) in seconds, for a quantity taken over a span of its
    # own; None: it has no such span, or the Snapshot does not say.
    coverage: Callable[[Workload], Optional[tuple[float, float]]] | None = None

    def value(self, snap: Snapshot, w: Workload) -> float | None:
        """A gauge's value for one workload of a Snapshot, as the rules read it (None: the
        Snapshot does not have it)."""
        if self.gauge is not None:
            return self.gauge(w)
        if self.window_total is not None:
            total = self.window_total(w)
            if total is None or not snap.window_s > 0:
                return None
            return total / snap.window_s
        return None

    def short_of_data(self, w: Workload) -> tuple[float, float] | None:
        """(covered, needed) seconds when the workload's value covers less than the span the
        quantity needs ("not enough data yet": never compared to a threshold); else None."""
        if self.coverage is None:
            return None
        have = self.coverage(w)
        if have is None or have[0] >= have[1]:
            return None
        return have

    def data_span(self, w: Workload) -> tuple[float, float] | None:
        """(covered, needed) seconds, whether enough or not; None without such a span."""
        return self.coverage(w) if self.coverage is not None else None


def attribute(*path: str, scale: float = 1.0) -> Callable[[Workload], Optional[float]]:
    def read(w: Workload) -> float | None:
        value: Any = w
        for name in path:
            value = getattr(value, name, None)
            if value is None:
                return None
        return float(value) * scale

    return read


def _growth_coverage(w: Workload) -> tuple[float, float] | None:
    """The RSS slope's span now, and the growth window it is taken over."""
    rt = w.runtime_metrics
    if rt is None or not rt.growth_window_full_s > 0:
        return None
    return rt.growth_window_s, rt.growth_window_full_s


def _preemptions(snap: Snapshot, w: Workload, events: list[Any]) -> Events:
    sched = w.sched
    counted = sched.preemptions_over_threshold if sched else 0
    hidden = (sched.preemptions - counted) if sched else 0
    items = [Event(e.delay_us / 1e3, e.tid, e.thread_preemptions) for e in events]
    # Events beyond the Snapshot's cap (collector.max_events) or lost on the way are missing.
    capped = snap.events.preemptions_total > len(snap.events.preemptions)
    return Events(items, max(0, hidden), len(items) >= counted and not capped)


def _cold_starts(snap: Snapshot, w: Workload, events: list[Any]) -> Events:
    rt = w.runtime_metrics
    cold = rt.cold_start if rt else None
    values = cold.window_ms if cold else ()
    return Events([Event(v, None, None) for v in values], 0, True)


_LATENCY = "max by ({by}) (wasmtop_request_latency_seconds{{quantile=%s}}) * 1000"

QUANTITIES: dict[str, Quantity] = {
    q.name: q
    for q in (
        Quantity(
            "sched.preempt_delay_ms",
            "event",
            "ms",
            "sched",
            "Each preemption of one of the workload's threads: the time from the involuntary "
            "switch until the thread ran again. Only preemptions at or above "
            "`probes.sched.threshold_ms` are reported one by one; shorter ones are counted and "
            'reset an "N in a row" count.',
            "sum by ({by}) (increase(wasmtop_preempt_delay_seconds_count[{window}]) - "
            'ignoring (le) increase(wasmtop_preempt_delay_seconds_bucket{{le="{le}"}}[{window}]))',
            events=_preemptions,
            bounds_s=PREEMPT_BOUNDS_S,
        ),
        Quantity(
            "sched.preempt_delay_p99_ms",
            "gauge",
            "ms",
            "sched",
            "P99 of the workload's preemption delays in the window (in-kernel log-linear "
            "histogram, within 1/16).",
            "histogram_quantile(0.99, sum by (le, {by}) "
            "(rate(wasmtop_preempt_delay_seconds_bucket[{window}]))) * 1000",
            gauge=attribute("sched", "preempt_delay_us", "p99", scale=1e-3),
        ),
        Quantity(
            "sched.wakeup_delay_p99_ms",
            "gauge",
            "ms",
            "sched",
            "P99 of the workload's wake-up delays in the window: from sched_wakeup (or "
            "sched_wakeup_new) of one of its threads until the thread ran, time it was runnable "
            "and waited behind other tasks on its CPU (in-kernel log-linear histogram, within "
            "1/16).",
            "histogram_quantile(0.99, sum by (le, {by}) "
            "(rate(wasmtop_wakeup_delay_seconds_bucket[{window}]))) * 1000",
            gauge=attribute("sched", "wakeup_delay_us", "p99", scale=1e-3),
        ),
        Quantity(
            "sched.runq_delay_seconds_per_second",
            "gauge",
            "s/s",
            "sched",
            "Run-queue delay of the workload's threads per second of wall time in the window: "
            "the time they were runnable but not running (wake-up delay + preemption delay), "
            "summed over its threads, so it can exceed 1 (two threads always waiting = 2).",
            "sum by ({by}) (rate(wasmtop_runq_delay_seconds_total[{window}]))",
            window_total=attribute("sched", "runq_delay_total_us", scale=1e-6),
        ),
        Quantity(
            "sched.migrations_per_s",
            "gauge",
            "1/s",
            "sched",
            "CPU migrations of the workload's threads per second in the window.",
            "sum by ({by}) (rate(wasmtop_migrations_total[{window}]))",
            gauge=attribute("sched", "migrations_per_s"),
        ),
        Quantity(
            "sched.involuntary_per_s",
            "gauge",
            "1/s",
            "sched",
            "Involuntary context switches (preemptions) per second in the window.",
            "sum by ({by}) (rate(wasmtop_involuntary_switches_total[{window}]))",
            gauge=attribute("sched", "involuntary_per_s"),
        ),
        Quantity(
            "sched.affinity_stability",
            "gauge",
            "ratio",
            "sched",
            "Migrations per context switch in the window (0 = never moved).",
            "max by ({by}) (wasmtop_affinity_stability_ratio)",
            gauge=attribute("sched", "affinity_stability"),
        ),
        Quantity(
            "sched.cpu_skew_ratio",
            "gauge",
            "ratio",
            "sched",
            "Entropy of the workload's CPU time over its allowed CPUs / an even spread's "
            "(1 = even, 0 = all on one CPU).",
            "max by ({by}) (wasmtop_cpu_skew_ratio)",
            gauge=attribute("sched", "cpu_skew_ratio"),
        ),
        Quantity(
            "net.bypass_ratio",
            "gauge",
            "ratio",
            "sockbypass",
            "Share of the bytes the workload sent that took the socket bypass in the window.",
            "sum by ({by}) (rate(wasmtop_bypass_bytes_total[{window}])) / (sum by ({by}) "
            "(rate(wasmtop_bypass_bytes_total[{window}])) + sum by ({by}) "
            "(rate(wasmtop_stack_bytes_total[{window}])))",
            gauge=attribute("net", "bypass_ratio"),
        ),
        *(
            Quantity(
                f"requests.latency_ms.{name}",
                "gauge",
                "ms",
                "tracectx",
                f"{label} of the workload's request latency over the collector's sliding "
                "window (exact, nearest rank).",
                _LATENCY % f'"{q}"',
                gauge=attribute("requests", "latency_ms", name),
            )
            for name, q, label in (
                ("p50", "0.5", "P50"),
                ("p90", "0.9", "P90"),
                ("p99", "0.99", "P99"),
                ("p999", "0.999", "P99.9"),
                ("max", "1", "The maximum"),
            )
        ),
        Quantity(
            "runtime.rss_mb",
            "gauge",
            "MB",
            None,
            "Resident memory of the workload's processes (MB = 10^6 bytes).",
            "max by ({by}) (wasmtop_rss_bytes) / 1e6",
            gauge=attribute("runtime_metrics", "rss_bytes", scale=1e-6),
        ),
        Quantity(
            "runtime.rss_growth_mb_per_min",
            "gauge",
            "MB/min",
            None,
            "Least-squares slope of the workload's RSS over `collector.growth_window_s`; "
            "not enough data (never compared) until that much has been sampled.",
            "max by ({by}) (wasmtop_rss_growth_bytes_per_second) * 60 / 1e6",
            gauge=attribute("runtime_metrics", "rss_growth_mb_per_min"),
            coverage=_growth_coverage,
        ),
        Quantity(
            "runtime.cpu_percent",
            "gauge",
            "%",
            None,
            "CPU use of the workload in the last sample (100 = one CPU).",
            "max by ({by}) (wasmtop_cpu_usage_ratio) * 100",
            gauge=attribute("runtime_metrics", "cpu_percent"),
        ),
        Quantity(
            "runtime.cold_start_ms",
            "event",
            "ms",
            "lifecycle",
            "Each cold start of one of the workload's processes: exec to its first listen.",
            "max by ({by}) (wasmtop_cold_start_seconds) * 1000 {cmp} {threshold} and on ({by}) "
            "sum by ({by}) (increase(wasmtop_cold_starts_total[{window}])) > 0",
            events=_cold_starts,
        ),
        Quantity(
            "probes.lost",
            "probe",
            "events",
            None,
            "Events a probe lost in the window (ring buffer full, or dropped in userspace).",
            "sum by ({by}) (increase(wasmtop_probe_events_lost_total[{window}]))",
        ),
    )
}
