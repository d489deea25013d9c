"""The Snapshot (contract v1, see docs/snapshot.md) and the records in it. Immutable: every
consumer (CLI, exporters, TUI) reads the same object and none can change it."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .workloads import Pod

SCHEMA = "wasmtop.snapshot/v1"
# Upper bounds of the request-duration buckets (RequestFigures.ended_buckets), in ms. They hold
# the default alert thresholds (P99 10 ms, P999 20 ms) exactly.
DURATION_BOUNDS_MS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 500.0, 1000.0,
                      2500.0, 5000.0, 10000.0)  # fmt: skip
# Scheduler delay buckets (seconds): preemption and wake-up delay, as exported and as the
# rendered alert rules read them. The kernel's log-linear buckets are re-binned by their upper
# bound: a delay counts under the first bound at or above its kernel bucket's top.
DELAY_BOUNDS_S = (1e-5, 1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# The labels that name a workload wherever it is exported or alerted on, in this order.
WORKLOAD_LABELS = ("workload", "namespace", "pod", "container", "runtime")


@dataclass(frozen=True)
class DelayQuantiles:
    p50: float | None
    p99: float | None
    max: float | None


@dataclass(frozen=True)
class Migration:
    from_cpu: int
    to_cpu: int
    count: int
    distance: str  # same_core | same_llc | cross_llc | cross_numa


@dataclass(frozen=True)
class HistogramBucket:
    low_us: float
    high_us: float
    count: int


@dataclass(frozen=True)
class WaitedBehind:
    """Part of a workload's run-queue wait (wake-up and preemption) in the window, spent while
    one workload held the CPU it waited for. ``kind``: workload (``culprit`` is its key), idle
    (the CPU ran its idle task: the wake-up path itself), other (the culprits beyond the top
    ones, together), or unattributed (older than the CPU's switch history, or not split)."""

    kind: str  # workload | idle | other | unattributed
    culprit: str | None  # the culprit workload's key (kind workload)
    comm: str | None
    wait_ms: float
    share: float  # of the workload's run-queue wait in the window (0..1)


@dataclass(frozen=True)
class SchedFigures:
    switches: int
    involuntary: int
    migrations: int
    migrations_per_s: float
    switches_per_s: float
    involuntary_per_s: float
    affinity_stability: float  # migrations / context switches (0 = never moved)
    cpu_skew_ratio: float | None  # CPU-time entropy / uniform entropy over allowed CPUs
    allowed_cpus: tuple[int, ...]
    cpu_time_ns_by_cpu: dict[str, int]
    preempt_delay_us: DelayQuantiles
    preemptions: int
    preempt_delay_total_us: float
    preemptions_over_threshold: int
    preempt_delay_hist: tuple[HistogramBucket, ...]
    migration_matrix: tuple[Migration, ...]
    # Wake-up delay: sched_wakeup(_new) -> the thread runs. Run-queue delay = wake-up delay +
    # preemption delay: all the time its threads were runnable and not running.
    wakeups: int = 0
    wakeup_delay_us: DelayQuantiles = DelayQuantiles(None, None, None)
    wakeup_delay_total_us: float = 0.0
    wakeup_delay_hist: tuple[HistogramBucket, ...] = ()
    wakeups_over_threshold: int = 0
    runq_delay_total_us: float = 0.0
    waited_behind: tuple[WaitedBehind, ...] = ()


@dataclass(frozen=True)
class PeerTraffic:
    """One workload pair's local traffic in the window, seen from the workload it is listed on."""

    peer: str | None  # the peer workload's key; None when the peer end is not on this host
    connections: int
    bypass_msgs: int
    bypass_bytes: int
    stack_bytes: int
    bypass_ratio: float | None  # bypass_bytes / (bypass_bytes + stack_bytes)


@dataclass(frozen=True)
class NetFigures:
    """TCP connections of a workload in the window (bytes and messages are what its sockets
    sent in the window; connections are those open at any time in it)."""

    connections: int
    eligible_connections: int  # both ends on this host: a bypass could take them
    bypass_connections: int  # enrolled in the bypass map (accelerate mode)
    bypass_msgs: int  # sendmsg calls redirected to the peer socket
    bypass_bytes: int
    stack_bytes: int  # TCP payload through the stack (the connections' bytes_acked)
    eligible_stack_bytes: int  # of which on eligible connections: what a bypass would save
    passed_msgs: int  # went the normal way: this end fell back earlier
    failed_msgs: int  # redirect tried, peer not enrolled: went the normal way
    fallbacks: dict[str, int]  # reason -> connections that fell back in the window
    bypass_ratio: float | None  # bypass_bytes / (bypass_bytes + stack_bytes)
    srtt_us_max: int | None  # largest smoothed RTT among its connections
    peers: tuple[PeerTraffic, ...] = ()


@dataclass(frozen=True)
class Connection:
    """One end of a TCP connection. Counters are totals since it was established."""

    local: str  # address:port
    remote: str
    pid: int | None
    workload: str | None
    peer_workload: str | None
    state: str  # open | closed
    active: bool  # this end connected
    eligible: bool
    enrolled: bool
    fallback_reason: str | None
    srtt_us: int
    redirected_msgs: int
    redirected_bytes: int
    passed_msgs: int
    passed_bytes: int
    failed_msgs: int
    failed_bytes: int
    stack_bytes: int
    bypass_ratio: float | None


@dataclass(frozen=True)
class BypassEvent:
    ts_ns: int
    pid: int | None
    workload: str | None
    kind: str  # enrol | first_redirect | fallback | close
    reason: str | None
    local: str
    remote: str
    bytes: int


@dataclass(frozen=True)
class LatencyQuantiles:
    p50: float
    p90: float
    p99: float
    p999: float
    max: float


@dataclass(frozen=True)
class RequestFigures:
    """HTTP requests the workload answered whose end lies in the sliding window (trace-context
    probe). Quantiles are exact (nearest rank over every request in the window)."""

    count: int
    window_s: float
    latency_ms: LatencyQuantiles
    complete: bool  # False: the per-workload cap made older requests leave the window early
    evicted: int  # requests that left early because of the cap, since wasmtop started
    by_status: dict[str, int]
    by_route: dict[str, int]  # "METHOD path" (capped per workload; the rest as "other")
    sum_ms: float = 0.0  # total duration of the requests in the sliding window
    ended: int = 0  # requests that ended in this Snapshot's window_s (not the sliding window)
    ended_duration_sum_ms: float = 0.0  # their total duration
    ended_buckets: tuple[int, ...] = ()  # of those, how many took <= each DURATION_BOUNDS_MS


class Trace(NamedTuple):
    """One answered request that carried a trace id, with its thread's kernel interference.
    (A NamedTuple: one is built per traced request, thousands a second.)"""

    trace_id: str  # 32 lowercase hex
    span_id: str  # 16 lowercase hex: the runtime's (trace-context map) or one wasmtop made
    parent_span_id: str | None  # the caller's span, from traceparent
    source: str  # traceparent | x-traceid-bytes | trace_ctx
    trace_flags: int | None
    tracestate: str | None
    pid: int
    tid: int
    workload: str | None
    start_ns: int
    duration_ms: float
    preempted_ms: float | None  # preemption delay of its thread between request and response
    migrations: int | None
    bypassed: bool | None  # its connection took the socket bypass; null: not known
    method: str | None
    route: str
    status: int | None
    # The run-queue wait of the wake-up that let its thread read this request (the thread
    # blocked, the request woke it, it waited to run); charged to one request only.
    queued_ms: float | None = None
    queued_wakeup: int | None = None  # that wake-up's number in its thread (tid, n) is unique
    read_end_ns: int | None = None  # when the read that brought the request returned
    # Its thread's over-threshold events of the same Snapshot (entries of events.preemptions and
    # events.wakeup_waits): same process and thread, ts_ns from start_ns to the end of the
    # request, in the order the Snapshot lists them. Joined by the collector (correlate.py).
    preemptions: tuple[PreemptionEvent, ...] = ()
    wakeup_waits: tuple[WakeupWaitEvent, ...] = ()
    # With collector.keep_paths only: the request's path as sent (no query string, cut at 64
    # characters), the span's url.path, where ``route`` is its template; None otherwise.
    path: str | None = None
    version: str | None = None  # the HTTP version of its start line ("1.1")
    # The server as the client named it: its Host header's name and port (80 when it names
    # none); None without a valid Host header in the captured bytes.
    server_address: str | None = None
    server_port: int | None = None
    # Its connection's local and remote addresses and ports, as the network namespace of the
    # process that answered names them (a pod's own addresses): only when certain, so None
    # for requests in a connection's first ~0.1 s, on a connection closed before the
    # collector read the request, or on a socket that is not TCP (collector/sockets.py).
    local_address: str | None = None
    local_port: int | None = None
    client_address: str | None = None
    client_port: int | None = None


@dataclass(frozen=True)
class ColdStarts:
    """Cold starts of a workload's processes exec'd while wasmtop ran (the last 1,000 kept)."""

    count: int
    last_ms: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    total: int = 0  # since wasmtop started (count stops at the 1,000 kept)
    window_ms: tuple[float, ...] = ()  # the cold starts measured in this Snapshot's window


@dataclass(frozen=True)
class CallFigures:
    """A WebAssembly runtime's compile, instantiate or guest calls in the window."""

    count: int
    total_ms: float
    mean_ms: float | None
    p50_ms: float | None  # from an in-kernel log-linear histogram (within 1/16)
    p99_ms: float | None
    max_ms: float | None  # exact, since wasmtop attached to the library


@dataclass(frozen=True)
class WasmFigures:
    library: str | None  # the file the uprobes are on: a runtime library, or a host's own file
    status: str  # ok | no_library (no API of the runtime found in what it maps) | failed
    reason: str | None
    compile: CallFigures | None
    instantiate: CallFigures | None
    # How the runtime was recognised: library (its C API: a runtime library mapped, or a file
    # exporting it), symbols (the runtime's own names in a file it maps), name (executable or
    # comm), runtime_class (its pod's RuntimeClass).
    by: str | None = None
    version: str | None = None  # the runtime's version, where its file says it
    api: str | None = None  # the uprobes are on its "c" API or its "rust" API; null: none
    calls: CallFigures | None = None  # calls into the guest (Rust API: Func::call, TypedFunc::call)


@dataclass(frozen=True)
class RuntimeMetrics:
    """The workload's resource figures (named ``runtime_metrics``, not ``runtime``, because
    ``runtime`` names the workload's WebAssembly runtime); collector/resources.py reads them."""

    rss_bytes: int
    rss_growth_mb_per_min: float | None  # least-squares slope over the growth window
    growth_window_s: float  # the span of samples the slope covers
    cpu_percent: float | None  # 100 = one CPU
    memory_current_bytes: int | None  # of its cgroup
    memory_limit_bytes: int | None
    throttled_us: int | None  # CPU throttling of its cgroup since wasmtop first saw it
    nr_throttled: int | None
    cold_start_ms: float | None  # last exec -> first listen
    cold_start: ColdStarts | None
    first_accept_ms: float | None  # last exec -> first accepted connection
    first_accept: ColdStarts | None
    wasm: WasmFigures | None  # null: not a WebAssembly runtime
    # The window the growth slope is taken over (--growth-window-s); growth_window_s reaches it
    # once that much has been sampled. 0: not said (a server that predates the field).
    growth_window_full_s: float = 0.0


@dataclass(frozen=True)
class Workload:
    key: str
    kind: str  # wasm | container | process
    runtime: str | None
    comm: str
    pids: tuple[int, ...]
    cgroup: str | None
    pod: Pod | None
    sched: SchedFigures | None
    net: NetFigures | None = None  # null: the socket-bypass probe is not running
    requests: RequestFigures | None = None  # null: no request of it traced in the window
    runtime_metrics: RuntimeMetrics | None = None  # null: not measured
    # wasmtop's own processes (the one the collector runs in and those it started): never
    # alerted on; the terminal UI shows their cost in its header instead of a row.
    wasmtop: bool = False
    # A kernel thread (PF_KTHREAD: kworker, ksoftirqd, migration ...): the terminal UI folds
    # them into one row unless asked (K).
    kernel_thread: bool = False


@dataclass(frozen=True)
class PreemptionEvent:
    ts_ns: int
    pid: int
    tid: int
    cpu: int
    comm: str
    delay_us: float
    preemptor_pid: int
    preemptor_tid: int
    preemptor_comm: str
    workload: str | None
    trace_id: str | None = None  # 32 hex, from the trace-context map entry of the thread
    span_id: str | None = None
    # The thread's completed preemptions, this one included (since wasmtop first saw it): two
    # events of a thread with consecutive values had no shorter preemption between them.
    thread_preemptions: int = 0


@dataclass(frozen=True)
class WakeupWaitEvent:
    """A wake-up wait over the threshold: from the thread's wake-up until it ran."""

    ts_ns: int  # when it ran
    pid: int
    tid: int
    cpu: int  # where it ran
    comm: str
    delay_us: float
    workload: str | None
    waker_pid: int  # current at the wake-up: for interrupts the interrupted task; 0 idle
    waker_tid: int
    waker_comm: str
    holder_pid: int  # on the target CPU when it was woken (0: idle)
    holder_tid: int
    holder_comm: str | None
    holder_workload: str | None
    replaced_pid: int  # the task it replaced on the CPU when it finally ran (0: idle)
    replaced_tid: int
    replaced_comm: str
    replaced_workload: str | None
    trace_id: str | None = None
    span_id: str | None = None
    thread_wakeups: int = 0  # the thread's completed wake-ups, this one included


@dataclass(frozen=True)
class Events:
    preemptions: tuple[PreemptionEvent, ...] = ()
    bypass: tuple[BypassEvent, ...] = ()
    preemptions_total: int = 0  # in the window; beyond the kept cap only counted
    bypass_total: int = 0
    wakeup_waits: tuple[WakeupWaitEvent, ...] = ()
    wakeup_waits_total: int = 0


@dataclass(frozen=True)
class Unattributed:
    """Activity of processes that exited before wasmtop could read who they were."""

    processes: int = 0
    switches: int = 0
    migrations: int = 0
    preemptions: int = 0


@dataclass(frozen=True)
class Alert:
    """A rule's alert for one workload (or probe) that is pending or firing, or that would be
    pending if its quantity covered the span the rule needs (not_enough_data; docs/alerts.md)."""

    name: str  # the rule's name: the alertname label
    state: str  # pending | firing | not_enough_data
    workload: str | None  # None for a probe's alert
    value: float | None  # the value that made it active, in the quantity's unit
    threshold: float
    since: str  # RFC 3339: when the condition first held (the alert's startsAt)
    severity: str
    quantity: str
    comparator: str
    probe: str | None  # the probe, for probe quantities (probes.lost)
    incomplete_data: bool  # a probe feeding the rule lost events in the window
    labels: dict[str, str]  # as sent to Alertmanager
    annotations: dict[str, str]
    # For a quantity taken over a window of its own (the RSS growth slope): the span its value
    # covers and the span the rule needs. Less than needed: state not_enough_data.
    data_s: float | None = None
    data_needed_s: float | None = None


@dataclass(frozen=True)
class Snapshot:
    host: str
    kernel: str
    cpus: int
    window_s: float
    probes: dict[str, dict[str, Any]]
    workloads: tuple[Workload, ...]
    events: Events = field(default_factory=Events)
    traces: tuple[Trace, ...] = ()  # completed in the window, at most the cap
    traces_total: int = 0  # completed in the window
    alerts: tuple[Alert, ...] = ()  # pending and firing, filled by alerts/evaluate.py
    migrations: tuple[Migration, ...] = ()  # whole host, all tracked threads
    connections: tuple[Connection, ...] = ()  # local TCP connection ends (socket-bypass probe)
    unattributed: Unattributed = field(default_factory=Unattributed)
    counters: dict[str, int] = field(default_factory=dict)
    schema: str = SCHEMA

    def workload(self, key: str) -> Workload:
        for w in self.workloads:
            if w.key == key:
                return w
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        out = _plain(dataclasses.asdict(self))
        # Schema first, the way the contract lists it.
        return {"schema": out.pop("schema"), **out}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)


def _plain(value: Any) -> Any:
    """JSON-safe: named tuples to objects, tuples to lists, NaN/inf to null, float noise
    rounded."""
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return {k: _plain(v) for k, v in zip(value._fields, value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float):
        return None if not math.isfinite(value) else round(value, 6)
    return value


def workload_labels(w: Workload) -> tuple[str, ...]:
    """The values of WORKLOAD_LABELS for ``w`` ("" where unknown)."""
    pod = w.pod
    return (
        w.key,
        (pod.namespace or "") if pod else "",
        (pod.name or "") if pod else "",
        (pod.container or "") if pod else "",
        w.runtime or "",
    )


def reporting_threshold_ms(snap: Snapshot) -> float | None:
    """The scheduler probe's reporting threshold the Snapshot was taken with
    (``probes.sched.threshold_ms``), or None (no scheduler probe, or a Snapshot of a daemon that
    did not say)."""
    value = snap.probes.get("sched", {}).get("threshold_ms")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
