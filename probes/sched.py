"""Scheduler probe: migrations, context switches, on-CPU time, and run-queue delay per thread
(preemption delay and wake-up delay), split by the processes that held the CPU meanwhile.

Kernel side: ``sched.bpf.c`` on ``sched:sched_switch``, ``sched:sched_wakeup``,
``sched:sched_wakeup_new``, ``task:task_newtask`` and ``sched:sched_migrate_task``.
"""

from __future__ import annotations

import ast
import contextlib
import ctypes
import operator
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

from . import bpfobj, features, pins
from .probeset import Probe
from .records import PreemptionRecord, SchedReading, ThreadSched, WakeupRecord

# Preemption delays and wake-up waits above this are reported one by one (shorter ones are
# counted): the one default of `--threshold-ms` and `probes.sched.threshold_ms`.
DEFAULT_THRESHOLD_MS = 50.0
DEFAULT_THRESHOLD_NS = round(DEFAULT_THRESHOLD_MS * 1e6)
DEFAULT_MAX_THREADS = 16_384
DEFAULT_RINGBUF_PAGES = 64  # 256 KiB with 4 KiB pages: ~3,600 events between two drains
# Switches remembered per CPU to split a wait among the tasks that ran during it: a wait that
# spans more slices than this has its oldest part counted as not attributed.
DEFAULT_HISTORY_LEN = 32
DEFAULT_BEHIND_ENTRIES = 16_384  # (waiting process, process on the CPU) pairs
CULPRIT_HISTORY_SHORT = 0xFFFFFFFF

THREAD_FIELDS = (
    "tgid", "switches", "involuntary", "migrations", "preempt_delay_ns", "preemptions",
    "over_threshold", "wakeups", "wakeup_delay_ns", "wakeups_over_threshold", "last_wakeup_ns",
    "last_wakeup_delay_ns", "wakeup_charged", "idle_wait_ns", "comm",
)  # fmt: skip


_BINOPS = {
    ast.BitOr: operator.or_,
    ast.BitAnd: operator.and_,
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.LShift: operator.lshift,
}


def _eval_int(node: ast.AST) -> int:
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_int(node.left), _eval_int(node.right))
    raise ValueError(f"unexpected expression: {ast.dump(node)}")


def prev_state_mask(format_text: str) -> int:
    """The mask under which sched_switch's prev_state is 0 for a task still runnable.

    Read from the tracepoint's own print fmt (``REC->prev_state & (<mask>)``), because the
    task-state bits moved between kernel versions (TASK_REPORT_MAX: 0x100 on 6.x, ...).
    """
    marker = "REC->prev_state & "
    start = format_text.find(marker)
    if start < 0:
        raise ValueError("print fmt has no 'REC->prev_state & (...)'")
    i = start + len(marker)
    if format_text[i] != "(":
        raise ValueError("prev_state mask is not parenthesised")
    depth = 0
    for j in range(i, len(format_text)):
        depth += {"(": 1, ")": -1}.get(format_text[j], 0)
        if depth == 0:
            return _eval_int(ast.parse(format_text[i : j + 1], mode="eval").body)
    raise ValueError("unbalanced parentheses in prev_state mask")


def cgroup_filter(path: str, cgroup_root: Path | None = None) -> tuple[int, int]:
    """(cgroup id, level) of a cgroup v2 directory, for the in-kernel subtree filter.

    The id is the directory's inode; the level its depth below the cgroup2 root.
    """
    root = cgroup_root or features.cgroup2_mount()
    full = features.cgroup_dir(path, root)
    level = len(full.relative_to(root).parts)
    return os.stat(full).st_ino, level


def fill_slot(slot: Any, map_fd: int, what: str) -> None:
    """Put a map in slot 0 of a BPF_ARRAY_OF_MAPS (BCC's MapInMapArray) and check the slot
    holds that very map (the kernel itself refuses a map whose type, key or value size differ
    from the slot's layout map)."""
    slot[ctypes.c_int(0)] = ctypes.c_int(map_fd)
    held = slot[ctypes.c_int(0)].value  # a lookup from userspace answers the map's id
    if held != bpfobj.map_info(map_fd).id:
        raise RuntimeError(f"the {what} slot holds map {held}, not the map it was given")


def possible_cpus(path: str = "/sys/devices/system/cpu/possible") -> int:
    """How many CPU ids the kernel may use (the highest possible id + 1): per-CPU arrays are
    sized by it, not by the CPUs online now."""
    try:
        text = Path(path).read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        return os.cpu_count() or 1


def _int(value: object) -> int:
    """A map scalar: ctypes objects from item iteration, plain ints from batch lookups."""
    return int(getattr(value, "value", value))


def _largest(value: object) -> int:
    """A per-CPU map value: the largest of the CPUs' (a scalar map's value as it is)."""
    if isinstance(value, ctypes.Array):
        return max((_int(v) for v in value), default=0)
    return _int(value)


def held_behind(entry: Any) -> tuple[tuple[int, int], int] | None:
    """The wait behind one process that a thread's entry holds, not yet in waited_behind:
    ((victim, culprit), ns); None when it holds none, or when its copy is torn (the two owners
    differ: left for the next reading)."""
    if entry.behind_tgid and entry.behind_ns and entry.behind_tgid == entry.behind_tgid2:
        return (entry.tgid, entry.behind_tgid), entry.behind_ns
    return None


K = TypeVar("K")


def at_least(reading: dict[K, int], floor: dict[K, int]) -> dict[K, int]:
    """Cumulative figures summed from several places (on-CPU time, wait behind a process)
    never below what was last reported, and never missing once reported.

    The places are read in the opposite order to the one their amounts move in (the map, then
    the threads' entries, then the CPUs' running slices), so an amount that moves between two
    reads is in neither: the sum comes out short (never over), or the key is missing altogether
    (a thread's first slice on a CPU, still in no map). counter_delta would take the decrease
    for a recreated entry, or the key's return for a new one, and count the whole value again.
    Keys leave only through forget()."""
    out = dict(floor)
    for k, v in reading.items():
        out[k] = max(v, floor.get(k, 0))
    return out


class SchedProbe(Probe):
    name = "sched"
    tracepoints = (
        ("sched:sched_switch", "wasmtop_sched_switch"),
        ("sched:sched_wakeup", "wasmtop_sched_wakeup"),
        ("sched:sched_wakeup_new", "wasmtop_sched_wakeup_new"),
        ("task:task_newtask", "wasmtop_task_newtask"),
        ("sched:sched_migrate_task", "wasmtop_sched_migrate"),
    )
    ringbuffers = (("preempt_events", "preempt_event"), ("wakeup_events", "wakeup_event"))
    counters = ("MIGRATIONS_UNTRACKED",)
    headers = ("shared.bpf.h",)

    def __init__(
        self,
        *,
        threshold_ns: int = DEFAULT_THRESHOLD_NS,
        pids: Sequence[int] = (),
        cgroup: str | None = None,
        max_threads: int = DEFAULT_MAX_THREADS,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        trace_ctx: bool = False,
        history_len: int = DEFAULT_HISTORY_LEN,
        behind_entries: int = DEFAULT_BEHIND_ENTRIES,
    ) -> None:
        """``trace_ctx``: pin the trace-context map (pins.TRACE_CTX_PATH) that runtimes write
        (or share the one a running wasmtop pinned), and stamp over-threshold preemption events
        with the entry of the preempted thread."""
        super().__init__()
        if threshold_ns < 0:
            raise ValueError("threshold_ns must be >= 0")
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        if history_len < 1 or history_len & (history_len - 1):
            raise ValueError("history_len must be a power of two")
        self.history_len = history_len
        self.behind_entries = behind_entries
        self.cpus = possible_cpus()
        self.threshold_ns = threshold_ns
        self.pids = tuple(pids)
        self.cgroup = cgroup
        self.max_threads = max_threads
        self.ringbuf_pages = ringbuf_pages
        self._cgroup_filter = cgroup_filter(cgroup) if cgroup else None
        self._state_mask: int | None = None
        self._cpu_floor: dict[tuple[int, int], int] = {}  # (tid, cpu) -> ns last reported
        self._behind_floor: dict[tuple[int, int], int] = {}  # (victim, culprit) -> ns
        # (victim, culprit) -> ns that exited threads' entries held when forget() deleted them
        self._behind_carry: dict[tuple[int, int], int] = {}
        self._window = 1  # max_window in the kernel
        self.trace_ctx = trace_ctx
        self.trace_ctx_map = pins.TraceCtxMap() if trace_ctx else None
        self.trace_ctx_reason = "" if trace_ctx else "trace-context map off: not asked for"

    # -- compiled in ----------------------------------------------------------------------
    def state_mask(self) -> int:
        if self._state_mask is None:
            try:
                self._state_mask = prev_state_mask(features.tracepoint_format("sched:sched_switch"))
            except ValueError:  # unreadable or unexpected format
                self._state_mask = 0xFF  # TASK_REPORT_MAX - 1 on every kernel since 4.14
        return self._state_mask

    def placeholders(self) -> dict[str, str]:
        # True for a task to skip: not one of the asked-for processes.
        tgid = " && ".join(f"tgid != {p}" for p in self.pids)
        cg = "0"
        if self._cgroup_filter:
            cg_id, level = self._cgroup_filter
            cg = f"bpf_get_current_ancestor_cgroup_id({level}) != {cg_id}ULL"
        return {"FILTER_TGID": tgid or "0", "FILTER_CGROUP": cg}

    def defines(self) -> dict[str, int | str]:
        return {
            "MAX_THREADS": self.max_threads,
            "HIST_ENTRIES": self.max_threads * 4,
            # (thread, CPU) pairs: as much memory as a per-CPU value per thread on 8 CPUs
            "CPU_TIME_ENTRIES": self.max_threads * min(self.cpus, 8),
            "BEHIND_ENTRIES": self.behind_entries,
            "MAX_CPUS": self.cpus,
            "HISTORY_LEN": self.history_len,
            "RINGBUF_PAGES": self.ringbuf_pages,
            "THRESHOLD_NS": f"{self.threshold_ns}ULL",
            "PREV_STATE_MASK": hex(self.state_mask()),
        }

    def check_kernel(self) -> None:
        super().check_kernel()
        if self.trace_ctx_map:
            # The map is an addition: without it the probe runs, unstamped, and says why.
            if not features.check_bpffs().ok:
                self._no_trace_ctx("no bpf filesystem on /sys/fs/bpf")
                return
            try:
                self.trace_ctx_map.open()  # made and pinned, or a running wasmtop's shared
            except (pins.PinConflict, pins.PinUnavailable) as exc:
                self._no_trace_ctx(str(exc))
            except OSError as exc:  # making or pinning the map refused (BpfError), /run
                self._no_trace_ctx(f"{exc.strerror or exc}")

    def _no_trace_ctx(self, why: str) -> None:
        self.trace_ctx_map = None
        self.trace_ctx_reason = f"trace-context map off: {why}"

    def attach(self) -> None:
        self._cpu_floor, self._behind_floor, self._behind_carry = {}, {}, {}  # fresh maps
        self._window = 1
        self._set_window()
        if self.trace_ctx_map:
            fill_slot(self.table("trace_ctx_slot"), self.trace_ctx_map.fd, "trace_ctx")
        super().attach()

    def close(self) -> None:
        super().close()
        if self.trace_ctx_map:
            self.trace_ctx_map.close()

    def details(self) -> dict[str, object]:
        path = str(self.trace_ctx_map.path) if self.trace_ctx_map else None
        return {
            # The settings it runs with, so a Snapshot's reader knows them.
            "threshold_ms": self.threshold_ns / 1e6,
            "pids": list(self.pids),
            "cgroup": self.cgroup,
            "ringbuf_pages": self.ringbuf_pages,
            "trace_ctx_map": path,
            "trace_ctx_reason": self.trace_ctx_reason,
        }

    def required_maps(self) -> list[str]:
        return [
            *super().required_maps(), "threads", "cpu_time_ns", "migration_matrix",
            "preempt_delay_hist", "preempt_delay_max_ns", "wakeup_delay_hist",
            "wakeup_delay_max_ns", "max_window", "cpu_history", "waited_behind", "trace_ctx_slot",
        ]  # fmt: skip

    def verify_maps(self) -> None:
        super().verify_maps()
        leaf = {name for name, *_ in self.table("threads").Leaf._fields_}
        missing = set(THREAD_FIELDS) - leaf
        if missing:
            raise RuntimeError(f"struct thread_stats lacks {sorted(missing)}")

    # -- reading --------------------------------------------------------------------------
    def read(self) -> SchedReading:
        """Read the cumulative maps and take the events drained since the previous read."""
        self.drain()
        now = time.monotonic_ns()  # CLOCK_MONOTONIC: the clock of bpf_ktime_get_ns
        # On-CPU time moves from a thread's entry to the map (and a slice's from the CPU's
        # history to the entry), and wait behind a process from the entry to waited_behind:
        # read the other way round, a moving part is missed, never counted twice, and
        # at_least() keeps the reading from stepping back.
        cpu_table = list(self.table("cpu_time_ns").items())
        behind = {(k.victim, k.culprit): v.value for k, v in self.table("waited_behind").items()}
        threads: dict[int, ThreadSched] = {}
        pending: list[tuple[int, int, int]] = []
        for k, v in self.table("threads").items():
            if v.run_cpu and v.run_ns and v.run_cpu == v.run_cpu2:  # else torn: next time
                pending.append((k.value, v.run_cpu - 1, v.run_ns))
            if held := held_behind(v):
                pair, ns = held
                behind[pair] = behind.get(pair, 0) + ns
            threads[k.value] = ThreadSched(
                tid=k.value,
                tgid=v.tgid,
                comm=v.comm.decode("utf-8", "replace"),
                switches=v.switches,
                involuntary=v.involuntary,
                migrations=v.migrations,
                preempt_delay_ns=v.preempt_delay_ns,
                preemptions=v.preemptions,
                over_threshold=v.over_threshold,
                wakeups=v.wakeups,
                wakeup_delay_ns=v.wakeup_delay_ns,
                wakeups_over_threshold=v.wakeups_over_threshold,
                idle_wait_ns=v.idle_wait_ns,
            )
        for key, ns in self._behind_carry.items():
            behind[key] = behind.get(key, 0) + ns
        cpu_time = {(k.tid, k.cpu): int(v.value) for k, v in cpu_table if v.value}
        # Each thread's latest run on one CPU is in its own entry, not yet in the map.
        for tid, cpu, ns in pending:
            key = (tid, cpu)
            cpu_time[key] = cpu_time.get(key, 0) + ns
        # The slice each CPU is running right now has not been switched out yet: add it, so a
        # thread that hogs a CPU without switching still shows its time.
        for cpu, (tid, since) in self.running().items():
            if tid in threads and 0 < since <= now:
                key = (tid, cpu)
                cpu_time[key] = cpu_time.get(key, 0) + now - since
        # An entry that hands its whole amount to the map between the map's read and the
        # entries' is in neither (short by all it held, not by one slice). The maps read again
        # now hold it; each figure is the larger of the two, both short of the truth, never over.
        for k, v in self.table("cpu_time_ns").items():
            key = (k.tid, k.cpu)
            if v.value > cpu_time.get(key, 0):
                cpu_time[key] = int(v.value)
        for k, v in self.table("waited_behind").items():
            key = (k.victim, k.culprit)
            again = v.value + self._behind_carry.get(key, 0)
            if again > behind.get(key, 0):
                behind[key] = again
        cpu_time = self._cpu_floor = at_least(cpu_time, self._cpu_floor)
        behind = self._behind_floor = at_least(behind, self._behind_floor)
        migrations = {
            (k.tgid, k.from_cpu, k.to_cpu): v.value
            for k, v in self.table("migration_matrix").items()
        }
        # The window's maxima, then the next window (in that order: add_hist in sched.bpf.c).
        window_max_delay = self._pop_all("preempt_delay_max_ns")
        window_max_wakeup = self._pop_all("wakeup_delay_max_ns")
        self._window = self._window % 0xFFFFFFFF + 1  # a u32 in the kernel, never 0
        self._set_window()
        events = self.take_events()
        return SchedReading(
            ts_ns=now,
            threads=threads,
            cpu_time_ns=cpu_time,
            migrations=migrations,
            delay_hist=self._hist("preempt_delay_hist"),
            window_max_delay_ns=window_max_delay,
            events=[e for e in events if isinstance(e, PreemptionRecord)],
            migrations_untracked=self.counter_values()["MIGRATIONS_UNTRACKED"],
            wakeup_hist=self._hist("wakeup_delay_hist"),
            window_max_wakeup_ns=window_max_wakeup,
            wakeup_events=[e for e in events if isinstance(e, WakeupRecord)],
            waited_behind=behind,
        )

    def _hist(self, name: str) -> dict[tuple[int, int], int]:
        return {(k.tgid, k.bucket): v.value for k, v in self.table(name).items()}

    def running(self) -> dict[int, tuple[int, int]]:
        """CPU -> (tid, since ns) of the slice each CPU is running now (its newest one)."""
        out = {}
        mask = self.history_len - 1
        for cpu, h in enumerate(self.table("cpu_history").values()):
            s, before = h.s[h.head & mask], h.s[(h.head - 1) & mask]
            # A copy made while the CPU switched, read downwards (the kernel's memcpy may),
            # can hold the new head and the slot it names as it was HISTORY_LEN slices ago:
            # older than the slot before it. That slice is not running.
            if s.since and s.since >= before.since:
                out[cpu] = (s.tid, s.since)
        return out

    def _set_window(self) -> None:
        table = self.table("max_window")
        table[table.Key(0)] = table.Leaf(self._window)

    def _pop_all(self, name: str) -> dict[int, int]:
        """Read and empty a per-process window map (key and value scalars)."""
        table = self.table(name)
        try:
            items = list(table.items_lookup_and_delete_batch())
        except Exception:  # kernels without batch ops: lookup, then delete key by key
            items = list(table.items())
            for k, _ in items:
                with contextlib.suppress(KeyError):
                    del table[k]
        return {_int(k): _largest(v) for k, v in items}

    def forget(self, tids: Sequence[int], tgids: Sequence[int]) -> set[tuple[int, int]]:
        """Drop map entries of threads and processes that have exited (after a final read).
        Returns the (victim, culprit) pairs of waited_behind it dropped.

        Wait behind a process that a thread's entry still holds (behind_tgid, behind_ns) is
        part of the pair's figure: an exited thread's moves to a carry kept here before its
        entry goes, and a pair that a live thread's entry holds keeps its key although its
        culprit exited (the entry would make the pair again, and it would count again)."""
        if self.bpf is None:
            return set()
        dead_tids, dead_tgids = set(tids), set(tgids)
        threads = self.table("threads")
        # Each dead entry is deleted right after it is copied: a thread that took its tid
        # in between would hand what it held to the map as well (thread_entry's start-over).
        for tid in dead_tids:
            key = threads.Key(tid)
            try:
                v = threads[key]
                del threads[key]
            except KeyError:
                continue
            if held := held_behind(v):
                pair, ns = held
                self._behind_carry[pair] = self._behind_carry.get(pair, 0) + ns
        live = {h[0] for h in map(held_behind, threads.values()) if h}
        behind_table = self.table("waited_behind")
        pairs = {(k.victim, k.culprit) for k in behind_table.keys()}
        pairs |= self._behind_floor.keys() | self._behind_carry.keys()
        dropped = {p for p in pairs if set(p) & dead_tgids} - live
        self._cpu_floor = {k: v for k, v in self._cpu_floor.items() if k[0] not in dead_tids}
        self._behind_floor = {k: v for k, v in self._behind_floor.items() if k not in dropped}
        self._behind_carry = {k: v for k, v in self._behind_carry.items() if k not in dropped}
        for name, gone in (
            ("cpu_time_ns", lambda k: k.tid in dead_tids),
            ("migration_matrix", lambda k: k.tgid in dead_tgids),
            ("preempt_delay_hist", lambda k: k.tgid in dead_tgids),
            ("wakeup_delay_hist", lambda k: k.tgid in dead_tgids),
            ("waited_behind", lambda k: (k.victim, k.culprit) in dropped),
        ):
            table = self.table(name)
            for k in [k for k in table.keys() if gone(k)]:
                with contextlib.suppress(KeyError):
                    del table[k]
        return dropped
