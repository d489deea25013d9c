"""What wasmtop exports, in one place: Snapshots folded into series.

A Snapshot holds figures of its own window (switches in the last tick, requests that ended in
it). Counters must keep counting across windows, so ``SeriesBook.add`` folds each Snapshot in
once, when it is taken; exporters (Prometheus, OTLP) only read ``families()``, any number of
times. One book serves both, so a name, a unit or a label means the same everywhere.

Cardinality is bounded: the first ``max_workloads`` workloads get their own label set and keep
it while they live; later ones are folded into ``workload="other"`` (their counters add up
there; gauges are not exported for it) and counted. A workload not seen for ``stale_after_s``
loses its series and frees its place; so does a culprit of a workload's run-queue wait not
listed for that long (``wasmtop_waited_behind_seconds``: a Snapshot names a workload's top
culprits, which change; under ``workload="other"`` culprit workloads count as ``other``, and
beyond MAX_NAMED_CULPRITS named at once in one workload's series too). A
workload's label set only gains: names that the Kubernetes API tells later fill in its empty
labels (its counters go on under the new set), and a name never goes back to empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Union

from ..collector.model import (
    DELAY_BOUNDS_S,
    DURATION_BOUNDS_MS,
    WORKLOAD_LABELS,
    HistogramBucket,
    Snapshot,
    Workload,
    workload_labels,
)

OTHER = ("other", "", "", "", "")
DEFAULT_MAX_WORKLOADS = 1000
DEFAULT_STALE_AFTER_S = 300.0
PREEMPT_BOUNDS_S = DELAY_BOUNDS_S  # collector/model.py's, re-binned here (``rebin``)
REQUEST_BOUNDS_S = tuple(b / 1e3 for b in DURATION_BOUNDS_MS)
# Run-queue wait by who held the CPU: the culprit label's values besides a workload key.
CULPRIT_KINDS = ("idle", "other", "unattributed")
# Culprit workloads one workload's series names at a time (a Snapshot lists its top few each
# tick, and they change: on a node starting processes all the time, each tick could name new
# ones for stale_after_s); more count as culprit="other" until one of them expires.
MAX_NAMED_CULPRITS = 16


class Exemplar(NamedTuple):
    """One observation a bucket counted, with the trace it belongs to (OpenMetrics)."""

    trace_id: str  # 32 lowercase hex
    value: float  # seconds
    timestamp: float  # Unix seconds, when the Snapshot that carried it was folded


class Histogram(NamedTuple):
    bounds: tuple[float, ...]  # upper bounds, seconds
    counts: tuple[float, ...]  # cumulative: observations <= each bound
    count: float  # all observations (the +Inf bucket)
    sum: float  # seconds
    # Per bucket (the +Inf one last), the latest traced observation that fell in it, or None.
    exemplars: tuple[Exemplar | None, ...] = ()


class Summary(NamedTuple):
    quantiles: tuple[tuple[str, float], ...]  # ("0.99", seconds), over a sliding window
    count: float  # observations in the window
    sum: float  # seconds


Value = Union[float, Histogram, Summary]


class Sample(NamedTuple):
    labels: tuple[str, ...]  # values, in the family's label_names order
    value: Value


@dataclass
class Family:
    name: str  # counters without the _total suffix (added by the encoders)
    kind: str  # counter | gauge | histogram | summary
    help: str
    label_names: tuple[str, ...]
    samples: list[Sample] = field(default_factory=list)


# name -> (kind, help, extra label names beyond WORKLOAD_LABELS)
WORKLOAD_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wasmtop_context_switches": ("counter", "Context switches of the workload's threads.", ()),
    "wasmtop_involuntary_switches": (
        "counter",
        "Involuntary context switches (preemptions): switched out while still runnable.",
        (),
    ),
    "wasmtop_migrations": ("counter", "CPU migrations of the workload's threads.", ()),
    "wasmtop_preemptions_over_threshold": (
        "counter",
        "Preemptions whose delay exceeded the configured threshold.",
        (),
    ),
    "wasmtop_cpu_seconds": ("counter", "CPU time of the workload's threads.", ()),
    "wasmtop_preempt_delay_seconds": (
        "histogram",
        "Preemption delay: from an involuntary switch until the thread runs again.",
        (),
    ),
    "wasmtop_wakeup_delay_seconds": (
        "histogram",
        "Wake-up delay: from a thread's wake-up (sched_wakeup, sched_wakeup_new) until it runs.",
        (),
    ),
    "wasmtop_wakeups_over_threshold": (
        "counter",
        "Wake-ups whose delay exceeded the configured threshold.",
        (),
    ),
    "wasmtop_runq_delay_seconds": (
        "counter",
        "Run-queue delay: time the workload's threads were runnable but not running "
        "(wake-up plus preemption delay).",
        (),
    ),
    "wasmtop_waited_behind_seconds": (
        "counter",
        "Run-queue delay by who held the CPU meanwhile: culprit is a workload key, or idle, "
        "other (culprits beyond the top ones), unattributed.",
        ("culprit",),
    ),
    "wasmtop_affinity_stability_ratio": (
        "gauge",
        "Migrations per context switch in the last window (0 = never moved).",
        (),
    ),
    "wasmtop_cpu_skew_ratio": (
        "gauge",
        "Entropy of CPU time over allowed CPUs / entropy of an even spread (1 = even).",
        (),
    ),
    "wasmtop_bypass_bytes": ("counter", "Bytes sent through the socket bypass (sockmap).", ()),
    "wasmtop_bypass_messages": ("counter", "sendmsg calls redirected by the socket bypass.", ()),
    "wasmtop_stack_bytes": ("counter", "TCP payload bytes sent through the network stack.", ()),
    "wasmtop_request_duration_seconds": (
        "histogram",
        "Server-side HTTP request duration: request read to response write.",
        (),
    ),
    "wasmtop_request_latency_seconds": (
        "summary",
        "Exact request latency quantiles over the sliding window (nearest rank; 1 = max); "
        "count and sum since start.",
        (),
    ),
    "wasmtop_rss_bytes": ("gauge", "Resident memory, summed over the workload's processes.", ()),
    "wasmtop_rss_growth_bytes_per_second": (
        "gauge",
        "Least-squares slope of RSS over the growth window.",
        (),
    ),
    "wasmtop_cpu_usage_ratio": ("gauge", "CPU use in the last sample (1 = one CPU).", ()),
    "wasmtop_memory_current_bytes": ("gauge", "Memory use of the workload's cgroup.", ()),
    "wasmtop_memory_limit_bytes": ("gauge", "Memory limit of the workload's cgroup.", ()),
    "wasmtop_cpu_throttled_seconds": (
        "counter",
        "CPU throttling of the workload's cgroup by its quota.",
        (),
    ),
    "wasmtop_cpu_throttled_periods": (
        "counter",
        "Scheduler periods in which the workload's cgroup was throttled.",
        (),
    ),
    "wasmtop_cold_start_seconds": (
        "gauge",
        "The last process cold start: exec to first listen.",
        (),
    ),
    "wasmtop_cold_starts": (
        "counter",
        "Process cold starts (exec to first listen) measured.",
        (),
    ),
    "wasmtop_wasm_calls": (
        "counter",
        "Calls into the WebAssembly runtime's compile, instantiate or guest-call API.",
        ("call",),
    ),
    "wasmtop_wasm_call_seconds": (
        "counter",
        "Time spent in the WebAssembly runtime's compile, instantiate or guest-call API.",
        ("call",),
    ),
    "wasmtop_workload_info": (
        "gauge",
        "1 for each workload with series of its own; kind and the pod's RuntimeClass as labels.",
        ("kind", "runtime_class"),
    ),
}

HISTOGRAM_BOUNDS: dict[str, tuple[float, ...]] = {
    "wasmtop_preempt_delay_seconds": DELAY_BOUNDS_S,
    "wasmtop_wakeup_delay_seconds": DELAY_BOUNDS_S,
    "wasmtop_request_duration_seconds": REQUEST_BOUNDS_S,
}

ALERT_LABELS = ("alertname", "severity", "workload", "namespace", "pod", "probe")
HOST_FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "wasmtop_probe_up": ("gauge", "1 when the probe is attached, 0 otherwise.", ("probe",)),
    "wasmtop_probe_events": ("counter", "Ring-buffer records received and decoded.", ("probe",)),
    "wasmtop_probe_events_lost": (
        "counter",
        "Events lost: failed ring-buffer reservations plus records dropped in userspace.",
        ("probe",),
    ),
    "wasmtop_probe_events_malformed": (
        "counter",
        "Ring-buffer records that did not decode.",
        ("probe",),
    ),
    "wasmtop_probe_run_seconds": (
        "counter",
        "Kernel time spent in the probe's programs (BPF_ENABLE_STATS).",
        ("probe",),
    ),
    "wasmtop_alert_firing": (
        "gauge",
        "Alerts evaluated on the node: 1 firing, 0 pending (docs/alerts.md).",
        ALERT_LABELS,
    ),
    "wasmtop_snapshots": ("counter", "Snapshots taken (collector ticks).", ()),
    "wasmtop_window_seconds": ("gauge", "Length of the last Snapshot's window.", ()),
    "wasmtop_exporter_workloads": (
        "gauge",
        "Workloads with series of their own (named) and folded into workload=other.",
        ("state",),
    ),
    "wasmtop_exporter_workloads_aggregated": (
        "counter",
        "Workloads folded into workload=other by the series limit since start.",
        (),
    ),
    "wasmtop_exporter_max_workloads": ("gauge", "The series limit: workloads named at most.", ()),
}


class _Series:
    """Cumulative state of one label set."""

    __slots__ = ("counters", "histograms", "gauges", "summary", "seen", "culprits", "exemplars")

    def __init__(self) -> None:
        self.counters: dict[tuple[str, tuple[str, ...]], float] = {}
        self.histograms: dict[str, list[float]] = {}  # name -> [*bucket counts, count, sum]
        self.exemplars: dict[str, list[Exemplar | None]] = {}  # name -> per bucket, +Inf last
        self.gauges: dict[tuple[str, tuple[str, ...]], float] = {}
        self.summary: Summary | None = None  # request latency over the sliding window
        self.seen = 0.0
        self.culprits: dict[str, float] = {}  # waited_behind culprit -> last seen

    def add(self, name: str, value: float, extra: tuple[str, ...] = ()) -> None:
        key = (name, extra)
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, per_bucket: Iterable[float], count: float, total: float) -> None:
        h = self.histograms.get(name)
        values = [*per_bucket, count, total]
        if h is None:
            self.histograms[name] = values
        else:
            for i, v in enumerate(values):
                h[i] += v


def bucket_of(bounds: tuple[float, ...], value: float) -> int:
    """The index of the first bound at or above ``value`` (len(bounds): the +Inf bucket)."""
    return next((i for i, b in enumerate(bounds) if value <= b), len(bounds))


def _traced(w: Workload, traces: Iterable[Any]) -> Iterator[tuple[str, float, str]]:
    """(histogram, seconds, trace id) of each traced observation of ``w`` in a Snapshot: its
    requests' durations, and the preemptions and wake-up waits of their threads while they ran
    (the collector joined those to each trace)."""
    for t in traces:
        yield "wasmtop_request_duration_seconds", t.duration_ms / 1e3, t.trace_id
        for p in t.preemptions:
            yield "wasmtop_preempt_delay_seconds", p.delay_us / 1e6, t.trace_id
        for ww in t.wakeup_waits:
            yield "wasmtop_wakeup_delay_seconds", ww.delay_us / 1e6, t.trace_id


class SeriesBook:
    def __init__(
        self,
        max_workloads: int = DEFAULT_MAX_WORKLOADS,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        if max_workloads < 0 or stale_after_s <= 0:
            raise ValueError("max_workloads must be >= 0 and stale_after_s > 0")
        self.max_workloads = max_workloads
        self.stale_after_s = stale_after_s
        self._named: dict[str, _Series] = {}  # workload key -> its series
        self._labels: dict[str, tuple[str, ...]] = {}
        self._other = _Series()
        self._other_keys: dict[str, float] = {}  # folded workloads -> last seen
        self.aggregated_total = 0
        self.snapshots = 0
        self.latest: Snapshot | None = None
        # Cumulative-since-start figures a Snapshot carries as totals: per workload, last value.
        self._totals: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()  # add() runs in the collector loop, families() in readers

    # -- folding ---------------------------------------------------------------------------
    def add(self, snap: Snapshot, now: float | None = None) -> None:
        with self._lock:
            self._add(snap, time.monotonic() if now is None else now)

    def set_limits(self, max_workloads: int, stale_after_s: float) -> None:
        """New limits (a reloaded config): workloads already named keep their series."""
        with self._lock:
            self.max_workloads, self.stale_after_s = max_workloads, stale_after_s

    def _add(self, snap: Snapshot, now: float) -> None:
        self.snapshots += 1
        self.latest = snap
        traces: dict[str, list[Any]] = {}
        for t in snap.traces:
            if t.workload is not None:
                traces.setdefault(t.workload, []).append(t)
        wall = time.time()
        for w in snap.workloads:
            series = self._series_for(w, now)
            named = series is not self._other
            self._fold(series, w, now, named=named)
            if named and w.key in traces:
                for name, value, trace_id in _traced(w, traces[w.key]):
                    bounds = HISTOGRAM_BOUNDS[name]
                    slots = series.exemplars.setdefault(name, [None] * (len(bounds) + 1))
                    slots[bucket_of(bounds, value)] = Exemplar(trace_id, value, wall)
        self._expire(now)

    def _series_for(self, w: Workload, now: float) -> _Series:
        series = self._named.get(w.key)
        if series is None:
            if len(self._named) < self.max_workloads and w.key not in self._other_keys:
                series = self._named[w.key] = _Series()
                self._labels[w.key] = workload_labels(w)
            else:
                if w.key not in self._other_keys:
                    self.aggregated_total += 1
                self._other_keys[w.key] = now
                return self._other
        else:  # names learnt since (pod metadata) fill in; a known one is never blanked
            old = self._labels[w.key]
            self._labels[w.key] = tuple(n or o for n, o in zip(workload_labels(w), old))
        series.seen = now
        series.gauges.clear()  # gauges are the latest window's, never left over
        series.summary = None
        return series

    def _since_last(self, key: str, name: str, total: float | None) -> float:
        """The increase of a figure the Snapshot gives as a running total (a drop is a
        restart: the new total is all increase)."""
        if total is None:
            return 0.0
        prev = self._totals.get((key, name), 0.0)
        self._totals[(key, name)] = total
        return total - prev if total >= prev else total

    def _fold(self, s: _Series, w: Workload, now: float, *, named: bool) -> None:
        gauge = s.gauges
        if named:
            runtime_class = (w.pod.runtime_class or "") if w.pod else ""
            gauge[("wasmtop_workload_info", (w.kind, runtime_class))] = 1.0
        sched = w.sched
        if sched is not None:
            s.add("wasmtop_context_switches", sched.switches)
            s.add("wasmtop_involuntary_switches", sched.involuntary)
            s.add("wasmtop_migrations", sched.migrations)
            s.add("wasmtop_preemptions_over_threshold", sched.preemptions_over_threshold)
            s.add("wasmtop_cpu_seconds", sum(sched.cpu_time_ns_by_cpu.values()) / 1e9)
            s.observe(
                "wasmtop_preempt_delay_seconds",
                _cumulative(rebin(sched.preempt_delay_hist)),
                sched.preemptions,
                sched.preempt_delay_total_us / 1e6,
            )
            s.observe(
                "wasmtop_wakeup_delay_seconds",
                _cumulative(rebin(sched.wakeup_delay_hist)),
                sched.wakeups,
                sched.wakeup_delay_total_us / 1e6,
            )
            s.add("wasmtop_wakeups_over_threshold", sched.wakeups_over_threshold)
            s.add("wasmtop_runq_delay_seconds", sched.runq_delay_total_us / 1e6)
            for wb in sched.waited_behind:
                # A workload's own series names its top culprits (the Snapshot lists at most
                # max_culprits); under workload="other" the culprits of every folded workload
                # would add up without bound, so there a culprit workload counts as "other".
                if (
                    wb.kind == "workload"
                    and wb.culprit
                    and named
                    and (
                        wb.culprit in s.culprits
                        or sum(c not in CULPRIT_KINDS for c in s.culprits) < MAX_NAMED_CULPRITS
                    )
                ):
                    culprit = wb.culprit
                else:
                    culprit = wb.kind if wb.kind in CULPRIT_KINDS else "other"
                s.add("wasmtop_waited_behind_seconds", wb.wait_ms / 1e3, (culprit,))
                s.culprits[culprit] = now
            if named:
                gauge[("wasmtop_affinity_stability_ratio", ())] = sched.affinity_stability
                if sched.cpu_skew_ratio is not None:
                    gauge[("wasmtop_cpu_skew_ratio", ())] = sched.cpu_skew_ratio
        net = w.net
        if net is not None:
            s.add("wasmtop_bypass_bytes", net.bypass_bytes)
            s.add("wasmtop_bypass_messages", net.bypass_msgs)
            s.add("wasmtop_stack_bytes", net.stack_bytes)
        req = w.requests
        if req is not None:
            if req.ended:
                s.observe(
                    "wasmtop_request_duration_seconds",
                    req.ended_buckets,
                    req.ended,
                    req.ended_duration_sum_ms / 1e3,
                )
            if named:
                n = len(REQUEST_BOUNDS_S)
                h = s.histograms.get("wasmtop_request_duration_seconds") or [0.0] * (n + 2)
                # Quantiles over the sliding window, count and sum since start (they only go
                # up, as Prometheus expects of a summary): the histogram's.
                q = req.latency_ms
                s.summary = Summary(
                    (("0.5", q.p50 / 1e3), ("0.9", q.p90 / 1e3), ("0.99", q.p99 / 1e3),
                     ("0.999", q.p999 / 1e3), ("1", q.max / 1e3)),
                    h[n],
                    h[n + 1],
                )  # fmt: skip
        rt = w.runtime_metrics
        if rt is not None:
            s.add(
                "wasmtop_cpu_throttled_seconds",
                self._since_last(w.key, "throttled_us", rt.throttled_us) / 1e6,
            )
            s.add(
                "wasmtop_cpu_throttled_periods",
                self._since_last(w.key, "nr_throttled", rt.nr_throttled),
            )
            if rt.cold_start is not None:
                s.add("wasmtop_cold_starts", len(rt.cold_start.window_ms))
            wasm = rt.wasm
            if wasm is not None:
                for call, figures in (
                    ("compile", wasm.compile),
                    ("instantiate", wasm.instantiate),
                    ("call", wasm.calls),
                ):
                    if figures is not None:
                        s.add("wasmtop_wasm_calls", figures.count, (call,))
                        s.add("wasmtop_wasm_call_seconds", figures.total_ms / 1e3, (call,))
            if named:
                gauge[("wasmtop_rss_bytes", ())] = rt.rss_bytes
                if rt.rss_growth_mb_per_min is not None:
                    gauge[("wasmtop_rss_growth_bytes_per_second", ())] = (
                        rt.rss_growth_mb_per_min * 1e6 / 60
                    )
                if rt.cpu_percent is not None:
                    gauge[("wasmtop_cpu_usage_ratio", ())] = rt.cpu_percent / 100
                if rt.memory_current_bytes is not None:
                    gauge[("wasmtop_memory_current_bytes", ())] = rt.memory_current_bytes
                if rt.memory_limit_bytes is not None:
                    gauge[("wasmtop_memory_limit_bytes", ())] = rt.memory_limit_bytes
                if rt.cold_start_ms is not None:
                    gauge[("wasmtop_cold_start_seconds", ())] = rt.cold_start_ms / 1e3

    def _expire(self, now: float) -> None:
        cutoff = now - self.stale_after_s
        # A culprit not listed for stale_after_s loses its series, as a workload does.
        for s in (*self._named.values(), self._other):
            if s.culprits:
                for culprit in [c for c, seen in s.culprits.items() if seen < cutoff]:
                    del s.culprits[culprit]
                    del s.counters[("wasmtop_waited_behind_seconds", (culprit,))]
        for key in [k for k, s in self._named.items() if s.seen < cutoff]:
            del self._named[key]
            del self._labels[key]
            self._forget_totals(key)
        for key in [k for k, seen in self._other_keys.items() if seen < cutoff]:
            del self._other_keys[key]
            self._forget_totals(key)

    def _forget_totals(self, key: str) -> None:
        for name in ("throttled_us", "nr_throttled"):
            self._totals.pop((key, name), None)

    # -- reading ---------------------------------------------------------------------------
    def families(self) -> list[Family]:
        """Every family, built fresh from the folded state: the caller owns what it gets."""
        with self._lock:
            return self._families()

    def _families(self) -> list[Family]:
        fams = {
            name: Family(name, kind, help_, WORKLOAD_LABELS + extra)
            for name, (kind, help_, extra) in WORKLOAD_FAMILIES.items()
        }
        groups = [(self._labels[k], s) for k, s in self._named.items()]
        if self._other_keys or self._other.counters:
            groups.append((OTHER, self._other))
        for labels, s in groups:
            for (name, extra), v in s.counters.items():
                fams[name].samples.append(Sample(labels + extra, v))
            for (name, extra), v in s.gauges.items():
                fams[name].samples.append(Sample(labels + extra, v))
            if s.summary is not None:
                fams["wasmtop_request_latency_seconds"].samples.append(Sample(labels, s.summary))
            for name, h in s.histograms.items():
                bounds = HISTOGRAM_BOUNDS[name]
                n = len(bounds)
                ex = tuple(s.exemplars.get(name, ()))
                fams[name].samples.append(
                    Sample(labels, Histogram(bounds, tuple(h[:n]), h[n], h[n + 1], ex))
                )
        host = {
            name: Family(name, kind, help_, extra)
            for name, (kind, help_, extra) in HOST_FAMILIES.items()
        }
        snap = self.latest
        if snap is not None:
            for probe, h in snap.probes.items():
                host["wasmtop_probe_up"].samples.append(
                    Sample((probe,), 1.0 if h.get("status") == "ok" else 0.0)
                )
                for name, field_ in (
                    ("wasmtop_probe_events", "events"),
                    ("wasmtop_probe_events_lost", "lost"),
                    ("wasmtop_probe_events_malformed", "malformed"),
                ):
                    host[name].samples.append(Sample((probe,), float(h.get(field_) or 0)))
                if "run_stats" not in h:  # measured (else the health says why not)
                    host["wasmtop_probe_run_seconds"].samples.append(
                        Sample((probe,), (h.get("run_time_ns") or 0) / 1e9)
                    )
            host["wasmtop_window_seconds"].samples.append(Sample((), snap.window_s))
            for a in snap.alerts:
                if a.state not in ("pending", "firing"):
                    continue  # not_enough_data: not judged, so no alert series
                host["wasmtop_alert_firing"].samples.append(
                    Sample(
                        tuple(a.labels.get(k, "") for k in ALERT_LABELS),
                        1.0 if a.state == "firing" else 0.0,
                    )
                )
        host["wasmtop_snapshots"].samples.append(Sample((), float(self.snapshots)))
        host["wasmtop_exporter_workloads"].samples += [
            Sample(("named",), float(len(self._named))),
            Sample(("other",), float(len(self._other_keys))),
        ]
        host["wasmtop_exporter_workloads_aggregated"].samples.append(
            Sample((), float(self.aggregated_total))
        )
        host["wasmtop_exporter_max_workloads"].samples.append(Sample((), float(self.max_workloads)))
        return [*fams.values(), *host.values()]


def rebin(
    hist: Iterable[HistogramBucket], bounds: tuple[float, ...] = DELAY_BOUNDS_S
) -> list[float]:
    """In-kernel log-linear buckets (µs) as counts per bound (seconds, not cumulative): each
    kernel bucket counts under the first bound at or above its upper edge; one above the highest
    bound counts in none (only in the histogram's count, the +Inf bucket)."""
    per_bucket = [0.0] * len(bounds)
    for b in hist:
        high_s = b.high_us / 1e6
        for i, bound in enumerate(bounds):
            if high_s <= bound * (1 + 1e-9):
                per_bucket[i] += b.count
                break
    return per_bucket


def _cumulative(per_bucket: list[float]) -> list[float]:
    out, running = [], 0.0
    for v in per_bucket:
        running += v
        out.append(running)
    return out
