"""The tick: drain the probes, turn cumulative kernel counters into figures for the window since
the previous tick, attribute them to workloads, and build one immutable Snapshot."""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import platform
import socket
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar

from ..probes.lifecycle import CALL, COMPILE, INSTANTIATE, EntryPoint, Library, LifecycleProbe
from ..probes.probeset import Probe, ProbeSet
from ..probes.records import SchedReading, ThreadSched, WakeupRecord
from ..probes.sched import CULPRIT_HISTORY_SHORT, SchedProbe
from ..probes.sockbypass import ACCELERATE, SockBypassProbe
from ..probes.tracectx import TraceCtxProbe
from .correlate import ConnInfo, RequestTracker, TraceSelector, attach_events, trace_of
from .incarnation import Incarnations, start_ticks
from .lifecycle import LifecycleAccounting, empty_calls
from .model import (
    DelayQuantiles,
    Events,
    HistogramBucket,
    Migration,
    NetFigures,
    PreemptionEvent,
    RequestFigures,
    RuntimeMetrics,
    SchedFigures,
    Snapshot,
    Trace,
    Unattributed,
    WaitedBehind,
    WakeupWaitEvent,
    WasmFigures,
    Workload,
)
from .net import NetAccounting, NetWindow, empty_net
from .quantiles import bucket_bounds, histogram_quantile
from .resources import DEFAULT_GROWTH_WINDOW_S, ResourceFigures, ResourceReader, ResourceTracker
from .sockets import FdSockets, SocketOwners
from .topology import Topology
from .wasmscan import SYMBOLS, Scanner, rust_name
from .workloads import PodDirectory, ProcReader, WorkloadId, WorkloadResolver, workload_names

K = TypeVar("K")
P = TypeVar("P", bound=Probe)
_COUNTER_FIELDS = tuple(
    f.name for f in fields(ThreadSched) if f.name not in ("tid", "tgid", "comm")
)


def counter_delta(current: Mapping[K, int], previous: Mapping[K, int]) -> dict[K, int]:
    """Per-key increase of cumulative counters. A counter that went down was recreated (its
    key freed and reused), so its whole current value is new."""
    out: dict[K, int] = {}
    for key, value in current.items():
        before = previous.get(key, 0)
        diff = value - before if value >= before else value
        if diff:
            out[key] = diff
    return out


def thread_delta(cur: ThreadSched, prev: ThreadSched | None) -> dict[str, int]:
    now = {name: getattr(cur, name) for name in _COUNTER_FIELDS}
    if prev is None or prev.tgid != cur.tgid:
        return now
    before = {name: getattr(prev, name) for name in _COUNTER_FIELDS}
    if any(now[n] < before[n] for n in _COUNTER_FIELDS):  # tid reused: a new thread
        return now
    return {n: now[n] - before[n] for n in _COUNTER_FIELDS}


SPLIT_AHEAD_KEYS = 4096


def forget_in(
    reading: SchedReading, tids: set[int], tgids: set[int], behind: set[tuple[int, int]]
) -> None:
    """Drop from a reading (the next window's baseline) the entries just deleted in the kernel
    (``behind``: the waited_behind pairs SchedProbe.forget dropped): one created again on the
    same key starts from zero, and a delta against the old value would come out short by it."""
    for tid in tids:
        reading.threads.pop(tid, None)
    for table, gone in (
        (reading.cpu_time_ns, lambda k: k[0] in tids),
        (reading.migrations, lambda k: k[0] in tgids),
        (reading.delay_hist, lambda k: k[0] in tgids),
        (reading.wakeup_hist, lambda k: k[0] in tgids),
        (reading.waited_behind, lambda k: k in behind),
    ):
        for key in [k for k in table if gone(k)]:
            del table[key]


def skew_ratio(cpu_time_ns: Mapping[int, int], allowed: frozenset[int]) -> float | None:
    """Entropy of the CPU-time distribution over the allowed CPUs divided by the entropy of a
    uniform spread: 1 = even, 0 = all on one CPU. None without CPU time to judge."""
    total = sum(cpu_time_ns.values())
    if total <= 0:
        return None
    n = len(set(allowed) | {c for c, t in cpu_time_ns.items() if t > 0})
    if n <= 1:
        return 0.0
    entropy = -sum((t / total) * math.log(t / total) for t in cpu_time_ns.values() if t > 0)
    return max(0.0, min(1.0, entropy / math.log(n)))


def rate(count: float, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def delay_figures(
    hist: Mapping[int, int], window_max_ns: int
) -> tuple[DelayQuantiles, tuple[HistogramBucket, ...]]:
    """Quantiles (us) and buckets of an in-kernel log-linear delay histogram of the window.
    The maximum is the kernel's exact window maximum; without one read, the top bucket's
    upper bound bounds it."""
    max_ns = window_max_ns or None
    if max_ns is None and hist:
        max_ns = bucket_bounds(max(hist))[1] - 1

    def q_us(q: float) -> float | None:
        v = histogram_quantile(hist, q, max_ns)
        return None if math.isnan(v) else v / 1000

    quantiles = DelayQuantiles(
        p50=q_us(0.50), p99=q_us(0.99), max=max_ns / 1000 if max_ns else None
    )
    buckets = tuple(
        HistogramBucket(bucket_bounds(b)[0] / 1000, bucket_bounds(b)[1] / 1000, n)
        for b, n in sorted(hist.items())
    )
    return quantiles, buckets


@dataclass
class _Activity:
    """Scheduler activity of one process, or of one workload, in the window."""

    pids: set[int] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTER_FIELDS, 0))
    cpu_time_ns: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    hist: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    matrix: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    max_delay_ns: int = 0
    wake_hist: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    max_wake_ns: int = 0
    behind: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # culprit tgid -> ns

    def add_counts(self, counts: Mapping[str, int]) -> None:
        for name, value in counts.items():
            self.counts[name] += value

    def merge(self, other: _Activity) -> None:
        self.pids |= other.pids
        self.add_counts(other.counts)
        for src, dst in ((other.cpu_time_ns, self.cpu_time_ns), (other.hist, self.hist),
                         (other.matrix, self.matrix), (other.wake_hist, self.wake_hist),
                         (other.behind, self.behind)):  # fmt: skip
            for k, v in src.items():
                dst[k] += v
        self.max_delay_ns = max(self.max_delay_ns, other.max_delay_ns)
        self.max_wake_ns = max(self.max_wake_ns, other.max_wake_ns)

    @property
    def active(self) -> bool:
        return any(self.counts.values()) or any(self.cpu_time_ns.values())


class Collector:
    """Owns the window arithmetic. Call ``observe()`` between ticks (cheap) so processes that
    live shorter than a window are still named; ``tick()`` once per window."""

    def __init__(
        self,
        probes: ProbeSet,
        *,
        proc_root: str | Path = "/proc",
        topology: Topology | None = None,
        max_events: int = 1000,
        max_culprits: int = 5,
        max_traces: int = 10_000,
        gc_every: int = 10,
        trace_selector: TraceSelector | None = None,
        requests: RequestTracker | None = None,
        growth_window_s: float = DEFAULT_GROWTH_WINDOW_S,
        pods: PodDirectory | None = None,
        own_pid: int | None = None,
    ) -> None:
        """``own_pid``: the process whose workload (with the processes it starts) is marked as
        wasmtop's own; default this process."""
        self.probes = probes
        self.proc_root = Path(proc_root)
        self.reader = ProcReader(proc_root)
        # ``pods``: pod names and RuntimeClasses (kubernetes.PodCache, filled by its own
        # thread); without it pods are known by UID only.
        self.pods = pods
        self._pods_generation = pods.generation if pods is not None else 0
        self.resolver = WorkloadResolver(self.reader, pods=pods, own_pid=own_pid)
        self.topology = topology or Topology.from_sysfs()
        self.max_events = max_events
        self.max_culprits = max_culprits  # waited_behind: culprits named per workload
        self.gc_every = gc_every
        self.host = socket.gethostname()
        self.kernel = platform.release()
        self.cpus = os.cpu_count() or 1
        self._prev: SchedReading | None = None
        self._window_start_ns = time.monotonic_ns()
        self._ticks = 0
        self._untracked_prev = 0
        # workload key -> run-queue wait split in earlier windows ahead of its total (positive
        # only; at most SPLIT_AHEAD_KEYS, the oldest dropped first)
        self._split_ahead: dict[str, int] = {}
        self.owners = SocketOwners(proc_root)
        self.fd_sockets = FdSockets(proc_root)
        self.net = NetAccounting(self.owners)
        self.max_traces = max_traces
        self.selector = trace_selector or TraceSelector()
        self.requests = requests or RequestTracker()
        self._traces: list = []
        self._traces_total = 0
        self._considered = Incarnations(proc_root)  # processes the trace selector has judged
        self.resources = ResourceTracker(ResourceReader(proc_root), growth_window_s=growth_window_s)
        self.life = LifecycleAccounting()
        # pid -> (the runtime library its uprobes are on, its path as the process sees it)
        self._libraries: dict[int, tuple[Library, str]] = {}
        self._library_checked = Incarnations(proc_root)
        # Runtimes found by what processes' files contain, in a thread of its own: each new
        # process handed over once (``_examined``); those not answered yet are ``_pending``.
        self.scanner = Scanner(
            str(proc_root), start_of=lambda pid: start_ticks(self.proc_root, pid)
        )
        self._examined = Incarnations(proc_root)
        self._examined_maps: dict[int, int] = {}  # pid -> ProcessInfo.exec_maps when handed over
        self._pending: set[int] = set()
        self._scan_notes: dict[int, str] = {}  # pid -> what its executable says, nothing found
        if self.tracectx is not None or self.lifecycle is not None:
            self._scan_proc()
        self._window_start_ns = time.monotonic_ns()  # the window starts once set up

    def _loaded(self, kind: type[P]) -> P | None:
        return next((p for p in self.probes if isinstance(p, kind) and p.loaded), None)

    @property
    def sched(self) -> SchedProbe | None:
        return self._loaded(SchedProbe)

    @property
    def bypass(self) -> SockBypassProbe | None:
        return self._loaded(SockBypassProbe)

    @property
    def tracectx(self) -> TraceCtxProbe | None:
        return self._loaded(TraceCtxProbe)

    @property
    def lifecycle(self) -> LifecycleProbe | None:
        return self._loaded(LifecycleProbe)

    def _scan_proc(self) -> None:
        """At start, look at the processes already running: those to trace, and WebAssembly
        runtimes whose library gets the compile/instantiate uprobes (an idle server blocked in
        accept() may not be seen by the scheduler probe for a long time)."""
        try:
            pids = [int(e) for e in os.listdir(self.proc_root) if e.isdigit()]
        except OSError:
            pids = []
        self._examine(pids)
        if self.lifecycle is not None:
            self._attach_runtimes(pids)
        if self.tracectx is not None:
            self._select(pids)

    # -- WebAssembly runtimes -------------------------------------------------------------
    def _examine(self, pids: list[int]) -> None:
        """Hand new processes' files to the scanner, and take in what it found since: a process
        that turns out to be a runtime gets its uprobes and is judged for tracing again."""
        for pid in pids:
            if pid <= 0 or pid in self._pending:
                continue
            info = self.resolver.process(pid)
            if info is None or info.kernel_thread:
                continue
            # Once per process, and again when it maps other files (an import, a plugin
            # loaded, an exec: seen when /proc is read again, every refresh_s).
            if pid in self._examined and self._examined_maps.get(pid) == info.exec_maps:
                continue
            self._examined.add(pid)
            if self.scanner.submit(pid):
                self._pending.add(pid)
                self._examined_maps[pid] = info.exec_maps
            else:  # the queue is full (counted): asked again when next seen
                self._examined.discard(pid)
        changed = []
        for pid, found in self.scanner.take():
            self._pending.discard(pid)
            if found is not None and found.finding.runtime is None and found.finding.note:
                self._scan_notes[pid] = f"{found.path}: {found.finding.note}"
            if self.resolver.set_content(pid, found):
                changed.append(pid)
                self._library_checked.discard(pid)
                self._considered.discard(pid)
        if changed:
            if self.lifecycle is not None:
                self._attach_runtimes(changed)
            if self.tracectx is not None:
                self._select(changed)

    def _attach_runtimes(self, pids: list[int]) -> None:
        """Attach the uprobes to the runtime library each new WebAssembly process maps."""
        probe = self.lifecycle
        if probe is None:
            return
        for pid in pids:
            if pid in self._library_checked:
                continue
            self._library_checked.add(pid)
            info = self.resolver.process(pid)
            if info is None or info.runtime is None or info.runtime_library is None:
                continue
            # The path is in the process's mount namespace: reach it through its root.
            path = f"{self.proc_root}/{pid}/root{info.runtime_library}"
            entry: list[EntryPoint] | None = None
            identity: tuple[int, ...] | None = None  # of the file the offsets are from
            missing: tuple[str, ...] = ()
            found = self.resolver.content(pid)
            if info.runtime_by == SYMBOLS and found is not None:  # its Rust API
                f = found.finding
                if not f.entry_points:  # a runtime whose API wasmtop does not time (wazero)
                    continue
                kinds = dict(f.entry_points)
                entry = [EntryPoint(sym, kinds[sym], rust_name(sym), at, rets)
                         for sym, at, rets in f.locations if sym in kinds]  # fmt: skip
                missing, identity = f.missing, f.file
            try:
                # Offsets are the examined file's: never put on another one at that path
                # (replaced since, e.g. by an upgrade), where they would land mid-instruction.
                lib = probe.attach_library(path, info.runtime, entry, missing, identity)
                self._libraries[pid] = (lib, info.runtime_library)
            except OSError as exc:  # exited meanwhile, replaced, or no regular file there
                if exc.errno in (errno.EINVAL, errno.ESTALE):
                    self._scan_notes[pid] = f"{info.runtime_library}: {exc.strerror}"

    def _wasm(
        self, key: str, runtime: str | None, pids: set[int], calls: dict
    ) -> WasmFigures | None:
        if runtime is None:
            return None
        infos = [i for p in sorted(pids) if (i := self.resolver.process(p)) and i.runtime]
        by = infos[0].runtime_by if infos else "runtime_class"  # else its pod's RuntimeClass
        version = next((i.runtime_version for i in infos if i.runtime_version), None)
        if self.lifecycle is None:
            return WasmFigures(None, "failed", "the lifecycle probe is not running", None, None,
                               by, version)  # fmt: skip
        found = next((self._libraries[p] for p in sorted(pids) if p in self._libraries), None)
        if found is None:
            content = next((c for i in infos if (c := self.resolver.content(i.pid))), None)
            if by == SYMBOLS and content is not None and not content.finding.entry_points:
                why = f"{content.path}: " + "; ".join(content.finding.missing)
            else:
                why = (
                    f"no {runtime} shared library mapped, and no symbols of {runtime} in the "
                    "files it maps (a statically linked runtime without a symbol table)"
                )
                notes = [self._scan_notes[p] for p in sorted(pids) if p in self._scan_notes]
                if notes:
                    why += f": {notes[0]}"
            if pids & self._pending:
                why += "; its files are still being examined"
            return WasmFigures(None, "no_library", why, None, None, by, version)
        lib, seen_as = found
        calls_timed = lib.api == "rust" and CALL in lib.kinds
        missing = f"not found: {'; '.join(lib.missing)}" if lib.missing else None
        reason = lib.error or missing
        mine = calls.get(key, {})
        return WasmFigures(
            library=seen_as,
            status="ok" if lib.attached else "failed",
            reason=reason,
            compile=mine.get(COMPILE) or empty_calls(),
            instantiate=mine.get(INSTANTIATE) or empty_calls(),
            by=by,
            version=version,
            api=lib.api,
            calls=(mine.get(CALL) or empty_calls()) if calls_timed else None,
        )

    def _sample_runtime(self) -> None:
        """One RSS/CPU/cgroup sample of every live process wasmtop knows, per workload."""
        groups: dict[str, list[int]] = defaultdict(list)
        root = str(self.proc_root)
        for pid in self.resolver.known():
            if os.path.exists(f"{root}/{pid}"):
                key = self._workload_key(pid)
                if key is not None:
                    groups[key].append(pid)
        self.resources.sample(groups)

    def _runtime_metrics(
        self,
        key: str,
        runtime: str | None,
        pids: set[int],
        fig: ResourceFigures | None,
        calls: dict,
    ) -> RuntimeMetrics | None:
        cold, accept = self.life.cold(key)
        wasm = self._wasm(key, runtime, pids, calls)
        full_s = fig.growth_window_full_s if fig else self.resources.growth_window_s
        if fig is None and cold is None and accept is None and wasm is None:
            return None
        return RuntimeMetrics(
            rss_bytes=fig.rss_bytes if fig else 0,
            rss_growth_mb_per_min=fig.rss_growth_mb_per_min if fig else None,
            growth_window_s=fig.growth_window_s if fig else 0.0,
            cpu_percent=fig.cpu_percent if fig else None,
            memory_current_bytes=fig.memory_current_bytes if fig else None,
            memory_limit_bytes=fig.memory_limit_bytes if fig else None,
            throttled_us=fig.throttled_us if fig else None,
            nr_throttled=fig.nr_throttled if fig else None,
            cold_start_ms=cold.last_ms if cold else None,
            cold_start=cold,
            first_accept_ms=accept.last_ms if accept else None,
            first_accept=accept,
            wasm=wasm,
            growth_window_full_s=full_s,
        )

    # -- trace context --------------------------------------------------------------------
    def _comm(self, pid: int) -> str | None:
        try:
            return (self.proc_root / str(pid) / "comm").read_text().strip()
        except OSError:
            return None

    def _select(self, pids: list[int]) -> None:
        probe = self.tracectx
        if probe is None:
            return
        sel = self.selector
        wanted = set(probe.pids)
        if self.pods is not None and self.pods.generation != self._pods_generation:
            # A pod's RuntimeClass may have made its processes WebAssembly workloads: judge
            # again (the selector only adds; a traced process stays traced).
            self._pods_generation = self.pods.generation
            self._considered.clear()
        for pid in pids:
            if pid in self._considered:
                continue
            self._considered.add(pid)
            if pid in sel.pids:
                wanted.add(pid)
            elif sel.comms and self._comm(pid) in sel.comms:
                wanted.add(pid)
            elif sel.wasm_default:
                wid = self.resolver.identify(pid)
                if wid is not None and sel.wants(pid, wid.comm, wid.kind):
                    wanted.add(pid)
        if wanted != probe.pids:
            probe.set_pids(wanted)

    def _connection_of(self) -> Callable[[int, int, int], ConnInfo]:
        """For this batch's traces kept: the (local, remote) endpoints of the connection a
        (pid, fd) held for a request that started at a time (FdSockets: exact, or null), and
        whether it took the socket bypass (null without the bypass probe; false in observe
        mode, where nothing is redirected; in accelerate mode from the record of that
        connection end, of the same process where two namespaces hold the same pair)."""
        sockets = self.fd_sockets
        sockets.begin_batch()
        bypass = self.bypass
        mode = None if bypass is None else bypass.mode
        redirecting: dict | None = None

        def lookup(pid: int, fd: int, start_ns: int) -> ConnInfo:
            nonlocal redirecting
            pair = sockets.connection(pid, fd, start_ns)
            if mode is None:
                return pair, None
            if mode != ACCELERATE:
                return pair, False
            if pair is None:
                return None, None
            if redirecting is None:
                redirecting = bypass.redirecting_pairs()  # type: ignore[union-attr]
            ends = redirecting.get(pair, ())
            # The end of this process's; else what every end of that pair says, if they agree.
            said = {b for p, b in ends if p == pid} or {b for _, b in ends}
            return pair, said.pop() if len(said) == 1 else None

        return lookup

    def _feed_requests(self) -> None:
        probe = self.tracectx
        if probe is None:
            return
        records = probe.read()
        if records:
            self.requests.feed(
                records, self._workload_key, self._connection_of(), self._workload_identity
            )
        # every request enters its window; a Request and a Trace only for the traces kept
        kept, traced = self.requests.take_traced(self.max_traces - len(self._traces))
        self._traces_total += traced
        self._traces += map(trace_of, kept)

    def poll(self) -> None:
        """Drain ring buffers and take in captured requests while their sockets are still open
        (call it every ~100 ms; ``observe()`` does this and more)."""
        self.probes.drain()
        if self.tracectx is not None:
            self._feed_requests()

    def observe(self) -> None:
        """Drain ring buffers and learn the identity of processes seen since the last call."""
        self.probes.drain()
        known = self.resolver.known()
        pids: list[int] = []
        if self.sched is not None:
            pids += [v.tgid for v in self.sched.table("threads").values()]
        if self.bypass is not None:
            pids += [v.pid for v in self.bypass.table("conns").values() if v.pid]
        for pid in pids:
            if pid not in known:
                self.resolver.identify(pid)
                known.add(pid)
        if self.tracectx is not None:
            self._select(pids)
            self._feed_requests()
        self._examine(pids)
        if self.lifecycle is not None:
            self._attach_runtimes(pids)
            self.life.add_cold_starts(self.lifecycle.take_events(), self._workload_key)
        self._sample_runtime()

    def _workload_key(self, pid: int) -> str | None:
        wid = self.resolver.identify(pid)
        return wid.key if wid else None

    def _workload_identity(self, pid: int) -> tuple[str | None, tuple[str, ...]]:
        """The workload's key and the names route templates are chosen by, identified once."""
        wid = self.resolver.identify(pid)
        return (wid.key, workload_names(wid.pod, wid.key, wid.comm)) if wid else (None, ())

    def tick(self, end_ns: int | None = None) -> Snapshot:
        """The Snapshot of the window since the previous tick. ``end_ns`` (CLOCK_MONOTONIC):
        when the window ended, if before now (e.g. when the probes were told to detach, which
        takes a while)."""
        self.probes.drain()
        sched, bypass = self.sched, self.bypass
        reading = sched.read() if sched else None
        net_reading = bypass.read() if bypass else None
        if end_ns is None:
            end_ns = reading.ts_ns if reading else time.monotonic_ns()
        window_s = max(0.0, (end_ns - self._window_start_ns) / 1e9)

        events = Events()
        host_matrix: tuple[Migration, ...] = ()
        unattributed = Unattributed()
        counters: dict[str, int] = {}
        per_workload: dict[str, _Activity] = {}
        ids: dict[str, WorkloadId] = {}
        if reading is not None:
            per_process = self._per_process(reading)
            per_workload, ids, unattributed = self._per_workload(per_process)
            host = _Activity()
            for act in per_process.values():
                host.merge(act)
            host_matrix = self._matrix(host.matrix)
            events = self._events(reading)
            counters["migrations_untracked"] = reading.migrations_untracked - self._untracked_prev
            self._untracked_prev = reading.migrations_untracked
            self._collect_garbage(reading)
            self._prev = reading
        net: NetWindow | None = None
        if net_reading is not None:
            net = self.net.window(net_reading, self._workload_key, self.max_events)
            for key, pids in net.pids.items():
                if key not in ids:  # a workload seen on the network only this window
                    wid = self.resolver.identify(min(pids))
                    if wid is None:
                        continue
                    ids[key] = wid
                    per_workload[key] = _Activity(pids=set(pids))
            events = dataclasses.replace(events, bypass=net.events, bypass_total=net.events_total)
            counters.update(net.counters)
        wasm_calls: dict = {}
        if self.lifecycle is not None:
            life = self.lifecycle.read()
            self.life.add_cold_starts(life.cold_starts, self._workload_key)
            wasm_calls = self.life.wasm_window(life, self._workload_key)
            if self._ticks % self.gc_every == 0:
                gone = set(self._exited(self.life.callers()))
                self.lifecycle.forget(gone)  # their final calls were just read
                self.life.forget_callers(gone)
        self._sample_runtime()
        runtime_figures = self.resources.figures()
        request_figures: dict[str, RequestFigures] = {}
        traces: tuple[Trace, ...] = ()
        traces_total = 0
        if self.tracectx is not None:
            self._feed_requests()
            request_figures = self.requests.figures(end_ns)
            # Each carrying its thread's events of this Snapshot (the OTLP span events).
            traces, traces_total = attach_events(self._traces, events), self._traces_total
            self._traces, self._traces_total = [], 0
            counters.update(self.requests.counters)
            tracectx = self.tracectx
            if self._ticks % self.gc_every == 0:
                tracectx.expire_open(end_ns)
            d = tracectx.details()
            for name in ("requests_unanswered", "responses_unmatched", "requests_expired",
                         "client_messages"):  # fmt: skip
                counters[name] = d[name]
            counters["requests_open"] = tracectx.open_requests
            for key in request_figures.keys() - ids.keys():  # seen answering requests only
                pids = self.requests.pids_of(key)
                wid = self.resolver.identify(min(pids)) if pids else None
                if wid is not None:
                    ids[key] = wid
                    per_workload[key] = _Activity(pids=set(pids))
        workloads = tuple(
            self._workload(
                ids[key],
                act,
                window_s,
                (net.per_workload.get(key) or empty_net()) if net else None,
                request_figures.get(key),
                runtime_figures.get(key),
                wasm_calls,
            )
            for key, act in sorted(per_workload.items(), key=lambda kv: kv[0])
        )
        if self._ticks % self.gc_every == 0:
            self._forget_exited()
        forgotten = self._considered.forgotten + self._library_checked.forgotten
        counters["processes_forgotten"] = forgotten
        counters["runtime_workloads_forgotten"] = self.resources.evicted
        counters["runtime_pid_reused"] = self.resources.pid_reused
        counters["cold_start_books_evicted"] = self.life.evicted
        counters["cold_starts_unattributed"] = self.life.unattributed
        counters["processes_vanished"] = self.reader.vanished
        counters["runtime_files_vanished"] = self.resources.reader.vanished
        counters["runtime_files_unreadable"] = self.resources.reader.unreadable
        counters["runtime_cgroups_outside_namespace"] = self.resources.reader.outside_namespace
        counters["collector_priority_raised"] = self.probes.cpu.raised
        counters["collector_priority_failed"] = self.probes.cpu.failed
        scan = self.scanner.stats
        counters["runtime_scan_files"] = scan.files
        counters["runtime_scan_processes"] = scan.processes
        counters["runtime_scan_dropped"] = scan.dropped
        counters["runtime_scan_unreadable"] = scan.failed

        snapshot = Snapshot(
            host=self.host,
            kernel=self.kernel,
            cpus=self.cpus,
            window_s=window_s,
            probes={p.name: p.health().as_dict() for p in self.probes},
            workloads=workloads,
            events=events,
            migrations=host_matrix,
            connections=net.connections if net else (),
            traces=traces,
            traces_total=traces_total,
            unattributed=unattributed,
            counters=counters,
        )
        self._window_start_ns = end_ns
        self._ticks += 1
        self.life.end_window()
        return snapshot

    # -- window arithmetic ----------------------------------------------------------------
    def _per_process(self, reading: SchedReading) -> dict[int, _Activity]:
        prev = self._prev
        procs: dict[int, _Activity] = defaultdict(_Activity)
        tgid_of: dict[int, int] = {}
        for tid, cur in reading.threads.items():
            tgid_of[tid] = cur.tgid
            counts = thread_delta(cur, prev.threads.get(tid) if prev else None)
            if any(counts.values()):
                act = procs[cur.tgid]
                act.pids.add(cur.tgid)
                act.add_counts(counts)
        cpu = counter_delta(reading.cpu_time_ns, prev.cpu_time_ns if prev else {})
        for (tid, cpu_id), ns in cpu.items():
            if tid in tgid_of:
                act = procs[tgid_of[tid]]
                act.pids.add(tgid_of[tid])
                act.cpu_time_ns[cpu_id] += ns
        hist = counter_delta(reading.delay_hist, prev.delay_hist if prev else {})
        for (tgid, bucket), n in hist.items():
            procs[tgid].pids.add(tgid)
            procs[tgid].hist[bucket] += n
        matrix = counter_delta(reading.migrations, prev.migrations if prev else {})
        for (tgid, src, dst), n in matrix.items():
            procs[tgid].pids.add(tgid)
            procs[tgid].matrix[(src, dst)] += n
        for tgid, ns in reading.window_max_delay_ns.items():
            procs[tgid].pids.add(tgid)
            procs[tgid].max_delay_ns = max(procs[tgid].max_delay_ns, ns)
        wake = counter_delta(reading.wakeup_hist, prev.wakeup_hist if prev else {})
        for (tgid, bucket), n in wake.items():
            procs[tgid].pids.add(tgid)
            procs[tgid].wake_hist[bucket] += n
        for tgid, ns in reading.window_max_wakeup_ns.items():
            procs[tgid].pids.add(tgid)
            procs[tgid].max_wake_ns = max(procs[tgid].max_wake_ns, ns)
        behind = counter_delta(reading.waited_behind, prev.waited_behind if prev else {})
        for (victim, culprit), ns in behind.items():
            procs[victim].pids.add(victim)
            procs[victim].behind[culprit] += ns
        return {
            tgid: act
            for tgid, act in procs.items()
            if act.active or act.hist or act.wake_hist or act.behind
        }

    def _per_workload(
        self, per_process: dict[int, _Activity]
    ) -> tuple[dict[str, _Activity], dict[str, WorkloadId], Unattributed]:
        groups: dict[str, _Activity] = defaultdict(_Activity)
        ids: dict[str, WorkloadId] = {}
        lost = _Activity()
        for tgid, act in per_process.items():
            wid = self.resolver.identify(tgid)
            if wid is None:
                lost.merge(act)
                continue
            if wid.key not in ids or min(act.pids) < min(groups[wid.key].pids or {math.inf}):
                ids[wid.key] = wid  # the lowest pid names a multi-process workload
            groups[wid.key].merge(act)
        unattributed = Unattributed(
            processes=len(lost.pids),
            switches=lost.counts["switches"],
            migrations=lost.counts["migrations"],
            preemptions=lost.counts["preemptions"],
        )
        return groups, ids, unattributed

    def _workload(
        self,
        wid: WorkloadId,
        act: _Activity,
        window_s: float,
        net: NetFigures | None,
        requests: RequestFigures | None,
        runtime_figures: ResourceFigures | None,
        wasm_calls: dict,
    ) -> Workload:
        allowed: set[int] = set()
        runtime = wid.runtime
        for pid in act.pids:
            info = self.resolver.process(pid)
            if info:
                allowed |= info.allowed_cpus
                runtime = runtime or info.runtime
        c = act.counts
        preempt_q, preempt_hist = delay_figures(act.hist, act.max_delay_ns)
        wake_q, wake_hist = delay_figures(act.wake_hist, act.max_wake_ns)
        runq_ns = c["preempt_delay_ns"] + c["wakeup_delay_ns"]
        sched = SchedFigures(
            switches=c["switches"],
            involuntary=c["involuntary"],
            migrations=c["migrations"],
            migrations_per_s=rate(c["migrations"], window_s),
            switches_per_s=rate(c["switches"], window_s),
            involuntary_per_s=rate(c["involuntary"], window_s),
            affinity_stability=c["migrations"] / max(c["switches"], 1),
            cpu_skew_ratio=skew_ratio(act.cpu_time_ns, frozenset(allowed)),
            allowed_cpus=tuple(sorted(allowed)),
            cpu_time_ns_by_cpu={str(k): v for k, v in sorted(act.cpu_time_ns.items())},
            preempt_delay_us=preempt_q,
            preemptions=c["preemptions"],
            preempt_delay_total_us=c["preempt_delay_ns"] / 1000,
            preemptions_over_threshold=c["over_threshold"],
            preempt_delay_hist=preempt_hist,
            migration_matrix=self._matrix(act.matrix),
            wakeups=c["wakeups"],
            wakeup_delay_us=wake_q,
            wakeup_delay_total_us=c["wakeup_delay_ns"] / 1000,
            wakeup_delay_hist=wake_hist,
            wakeups_over_threshold=c["wakeups_over_threshold"],
            runq_delay_total_us=runq_ns / 1000,
            waited_behind=self._waited_behind(
                {**act.behind, 0: c["idle_wait_ns"]}, runq_ns, wid.key
            ),
        )
        kind = "wasm" if runtime else wid.kind
        return Workload(
            key=wid.key,
            kind=kind,
            runtime=runtime,
            comm=wid.comm,
            pids=tuple(sorted(act.pids)),
            cgroup=wid.cgroup,
            pod=wid.pod,
            sched=sched,
            net=net,
            requests=requests,
            runtime_metrics=self._runtime_metrics(
                wid.key, runtime, act.pids, runtime_figures, wasm_calls
            ),
            wasmtop=any(self.resolver.own(pid) for pid in act.pids),
            kernel_thread=wid.kernel_thread,
        )

    def _waited_behind(
        self, behind: Mapping[int, int], total_ns: int, workload: str
    ) -> tuple[WaitedBehind, ...]:
        """A workload's run-queue wait split by the workloads on the CPU meanwhile: the top
        ``max_culprits``, the rest as ``other``, and what the kernel could not split."""
        by_key: dict[str, int] = defaultdict(int)
        comms: dict[str, str] = {}
        idle = unattributed = 0
        for tgid, ns in behind.items():
            if tgid == 0:
                idle += ns
            elif tgid == CULPRIT_HISTORY_SHORT:
                unattributed += ns
            else:
                wid = self.resolver.identify(tgid)
                key = wid.key if wid else f"pid {tgid}"  # exited before it could be named
                by_key[key] += ns
                comms.setdefault(key, wid.comm if wid else "")
        # Waits the kernel did not split (map full, a wait begun before wasmtop attached):
        # the difference between the total and what it split. The split can run ahead of the
        # total (the two are read at different instants, and a wait pulled to another CPU is
        # split before it ends): what ran ahead in one window is not unsplit wait in the next.
        split = sum(behind.values())
        ahead = self._split_ahead.pop(workload, 0)
        unattributed += max(0, total_ns - split - ahead)
        if split + ahead > total_ns:
            self._split_ahead[workload] = split + ahead - total_ns
            if len(self._split_ahead) > SPLIT_AHEAD_KEYS:
                del self._split_ahead[next(iter(self._split_ahead))]
        ranked = sorted(by_key.items(), key=lambda kv: (-kv[1], kv[0]))
        top, rest = ranked[: self.max_culprits], ranked[self.max_culprits :]
        whole = max(total_ns, split, 1)

        def entry(kind: str, culprit: str | None, comm: str | None, ns: int) -> WaitedBehind:
            return WaitedBehind(kind, culprit, comm, ns / 1e6, ns / whole)

        out = [entry("workload", key, comms[key], ns) for key, ns in top]
        for kind, ns in (("idle", idle), ("other", sum(ns for _, ns in rest)),
                         ("unattributed", unattributed)):  # fmt: skip
            if ns:
                out.append(entry(kind, None, None, ns))
        return tuple(out)

    def _matrix(self, matrix: Mapping[tuple[int, int], int]) -> tuple[Migration, ...]:
        return tuple(
            Migration(src, dst, n, self.topology.distance(src, dst))
            for (src, dst), n in sorted(matrix.items())
            if n
        )

    def _events(self, reading: SchedReading) -> Events:
        records = reading.events
        kept = records[-self.max_events :] if self.max_events else []
        out = []
        for r in kept:
            out.append(
                PreemptionEvent(
                    ts_ns=r.ts_ns,
                    pid=r.pid,
                    tid=r.tid,
                    cpu=r.cpu,
                    comm=r.comm,
                    delay_us=r.delay_ns / 1000,
                    preemptor_pid=r.preemptor_pid,
                    preemptor_tid=r.preemptor_tid,
                    preemptor_comm=r.preemptor_comm,
                    workload=self._workload_key(r.pid),
                    trace_id=r.trace_id.hex() if r.trace_id else None,
                    span_id=r.span_id.hex() if r.span_id else None,
                    thread_preemptions=r.thread_preemptions,
                )
            )
        waits = reading.wakeup_events
        kept_waits = waits[-self.max_events :] if self.max_events else []
        return Events(
            preemptions=tuple(out),
            preemptions_total=len(records),
            wakeup_waits=tuple(self._wakeup_event(w, reading) for w in kept_waits),
            wakeup_waits_total=len(waits),
        )

    def _wakeup_event(self, r: WakeupRecord, reading: SchedReading) -> WakeupWaitEvent:
        holder = reading.threads.get(r.holder_tid)

        def key(pid: int) -> str | None:
            return self._workload_key(pid) if pid else None

        return WakeupWaitEvent(
            ts_ns=r.ts_ns,
            pid=r.pid,
            tid=r.tid,
            cpu=r.cpu,
            comm=r.comm,
            delay_us=r.delay_ns / 1000,
            workload=key(r.pid),
            waker_pid=r.waker_pid,
            waker_tid=r.waker_tid,
            waker_comm=r.waker_comm,
            holder_pid=r.holder_pid,
            holder_tid=r.holder_tid,
            holder_comm=holder.comm if holder else ("swapper" if not r.holder_tid else None),
            holder_workload=key(r.holder_pid),
            replaced_pid=r.replaced_pid,
            replaced_tid=r.replaced_tid,
            replaced_comm=r.replaced_comm,
            replaced_workload=key(r.replaced_pid),
            trace_id=r.trace_id.hex() if r.trace_id else None,
            span_id=r.span_id.hex() if r.span_id else None,
            thread_wakeups=r.thread_wakeups,
        )

    def _collect_garbage(self, reading: SchedReading) -> None:
        """Every few ticks, drop kernel map entries of threads that have exited (their final
        counts were just read) so the maps hold live threads only."""
        if self._ticks % self.gc_every or self.sched is None:
            return
        dead_tids = self._exited(reading.threads)
        tgids = {t.tgid for t in reading.threads.values()} | {k[0] for k in reading.delay_hist}
        tgids |= {k[0] for k in reading.wakeup_hist}
        tgids |= {g for pair in reading.waited_behind for g in pair}
        tgids -= {0, CULPRIT_HISTORY_SHORT}
        dead_tgids = self._exited(tgids)
        dropped = self.sched.forget(dead_tids, dead_tgids)
        self.resolver.forget(set(dead_tgids))
        forget_in(reading, set(dead_tids), set(dead_tgids), dropped)

    def _exited(self, ids: Iterable[int]) -> list[int]:
        """Of these thread or process ids, those with no /proc entry now."""
        return [i for i in ids if not (self.proc_root / str(i)).exists()]

    def _forget_exited(self) -> None:
        """Every few ticks: processes that exited, or whose pid a new process took, are
        forgotten by the trace selector (a new process on a reused pid is judged afresh and never
        inherits tracing; the kernel already untraced the old one when it exited) and by the
        runtime-library bookkeeping."""
        gone = self._considered.forget_gone()
        probe = self.tracectx
        if probe is not None and gone:
            probe.set_pids(probe.pids - set(gone))
        for pid in self._library_checked.forget_gone():
            self._libraries.pop(pid, None)
        for pid in self._examined.forget_gone():
            self._pending.discard(pid)
            self._examined_maps.pop(pid, None)
            self._scan_notes.pop(pid, None)
            self.resolver.set_content(pid, None)  # a new process on the pid is examined afresh
