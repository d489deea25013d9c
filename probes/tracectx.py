"""Trace-context probe: HTTP/1.x requests traced processes answer, paired in the kernel (request
head read -> response write on the same connection), each with the first bytes of the request
and the thread's cumulative preemption delay and migrations at both ends.

Kernel side: ``tracectx.bpf.c`` on the socket tracepoints sock_recv_length/sock_send_length
where the kernel has them (no cost to the node's other syscalls), else on the read and write
syscall tracepoints (see ``capture_mode``). It reads the
scheduler probe's per-thread map and the pinned trace-context map through map-in-map slots
filled at attach, so it is started after the scheduler probe.
"""

from __future__ import annotations

import contextlib
import operator
import os
from collections.abc import Iterable, Sequence
from typing import Any

from . import features
from .decoders import CAPTURE_BYTES, request_event, take_request_events
from .probeset import Probe, ProbeUnavailable
from .records import RequestRecord
from .ringbuf import RingReader
from .sched import SchedProbe, fill_slot

DEFAULT_MAX_TRACED = 4096  # processes, and cgroup subtrees, traced at once
DEFAULT_MAX_PENDING = 16_384  # reads in flight (one per blocked thread)
DEFAULT_MAX_OPEN = 16_384  # requests read and not yet answered (allocated as used)
DEFAULT_RINGBUF_PAGES = 1024  # 4 MiB with 4 KiB pages: ~6,800 requests between two drains
OPEN_TIMEOUT_NS = 60_000_000_000  # a request unanswered this long is given up (and counted)
CGROUP_LEVELS = 16  # depth of the ancestor walk for cgroup subtrees

_READS = ("read", "recvfrom", "recvmsg")
# RequestRecord.end_ns, without a Python call per record
_END_NS = operator.itemgetter(RequestRecord._fields.index("end_ns"))
_WRITES = ("write", "sendto", "sendmsg", "writev")


def capture_mode(wanted: str = "auto") -> str:
    """How requests are captured: "socket" (the socket tracepoints and the caller's syscall
    registers: Linux 6.3+ on x86-64 with BTF) or "syscalls" (syscall tracepoints, which put every
    task on the slow syscall path). "auto" takes the first this kernel supports."""
    return features.capture_mode(wanted, features.socket_io_capture)


class TraceCtxProbe(Probe):
    name = "tracectx"
    syscall_tracepoints = (
        *((f"syscalls:sys_enter_{s}", f"wasmtop_enter_{s}") for s in _READS),
        *((f"syscalls:sys_exit_{s}", f"wasmtop_exit_{s}") for s in _READS),
        *((f"syscalls:sys_enter_{s}", f"wasmtop_enter_{s}") for s in _WRITES),
    )
    socket_tracepoints = tuple(
        zip(features.SOCK_IO_TRACEPOINTS, ("wasmtop_sock_recv", "wasmtop_sock_send"))
    )
    ringbuffers = (("request_events", "request_event"),)
    counters = ("NOT_HTTP", "READ_FAILED", "UNANSWERED", "UNMATCHED", "CLIENT", "EXITED",
                "OTHER_CALL")  # fmt: skip
    headers = ("shared.bpf.h",)

    def __init__(
        self,
        sched: SchedProbe | None = None,
        *,
        pids: Sequence[int] = (),
        cgroups: Sequence[str] = (),
        max_traced: int = DEFAULT_MAX_TRACED,
        max_pending: int = DEFAULT_MAX_PENDING,
        max_open: int = DEFAULT_MAX_OPEN,
        ringbuf_pages: int = DEFAULT_RINGBUF_PAGES,
        capture: str = "auto",
    ) -> None:
        """``sched``: the scheduler probe whose per-thread maps charge each request its
        interference (without it, requests are captured but their interference is unknown).
        ``pids`` and ``cgroups`` (cgroup v2 directories, subtrees included) are traced from the
        start; ``set_pids()`` changes the process set while running. ``capture``: see
        ``capture_mode``."""
        super().__init__()
        self.capture = capture_mode(capture)
        # The capture programs run on every socket call (or syscall) of the node: attached only
        # while something is traced (set_pids), so a node with nothing traced pays nothing.
        self.capture_points = (
            self.socket_tracepoints if self.capture == "socket" else self.syscall_tracepoints
        )
        self.exit_points = (("sched:sched_process_exit", "wasmtop_process_exit"),)
        self.tracepoints = (*self.capture_points, *self.exit_points)  # type: ignore[misc]
        if ringbuf_pages < 1 or ringbuf_pages & (ringbuf_pages - 1):
            raise ValueError("ringbuf_pages must be a power of two")
        self.sched = sched
        self.cgroups = tuple(cgroups)
        self._cgroup_ids = [os.stat(features.cgroup_dir(c)).st_ino for c in self.cgroups]
        self.max_traced = max_traced
        self.max_pending = max_pending
        self.max_open = max_open
        self.expired = 0  # requests given up unanswered after OPEN_TIMEOUT_NS
        self.ringbuf_pages = ringbuf_pages
        self._initial_pids = tuple(pids)
        self._pids: set[int] = set()
        self._printing = False
        self.pids_refused = 0  # processes not traced because the map was full
        self.capture_failed = 0  # times the capture programs could not be attached
        self.capture_reason = ""  # why, the last time

    # -- compiled in ----------------------------------------------------------------------
    def _shares_sched(self) -> bool:
        return self.sched is not None and (self.sched.loaded or self._printing)

    def _shares_trace_ctx(self) -> bool:
        return self._shares_sched() and self.sched.trace_ctx_map is not None  # type: ignore[union-attr]

    def printable(self) -> str:
        """As compiled when sharing the scheduler probe's maps (the cflags say so)."""
        self._printing = True
        try:
            return super().printable()
        finally:
            self._printing = False

    def defines(self) -> dict[str, int | str]:
        return {
            "SOCK_IO": int(self.capture == "socket"),
            "CAPTURE_BYTES": CAPTURE_BYTES,
            "MAX_TRACED": self.max_traced,
            "MAX_PENDING": self.max_pending,
            "MAX_OPEN": self.max_open,
            "CGROUP_LEVELS": CGROUP_LEVELS,
            "RINGBUF_PAGES": self.ringbuf_pages,
            "THREADS_COMPLETE": int(self._sched_complete()),
            "EXIT_GROUP_DEAD": int(features.exit_has_group_dead()),
        }

    def _sched_complete(self) -> bool:
        """The shared map has an entry for every thread that was ever switched out."""
        s = self.sched
        return self._shares_sched() and not s.pids and not s.cgroup  # type: ignore[union-attr]

    def check_kernel(self) -> None:
        super().check_kernel()
        if self.capture == "socket" and not features.user_regs():
            raise ProbeUnavailable(
                "socket capture needs bpf_task_pt_regs (Linux >= 5.15, BTF) on x86-64"
            )

    def required_maps(self) -> list[str]:
        maps = ["threads_slot", "trace_ctx_slot", "traced_tgids", "traced_cgroups", "control",
                "open_requests"]  # fmt: skip
        if self.capture == "syscalls":
            maps.append("pending_reads")
        return [*super().required_maps(), *maps]

    def _fill_slots(self) -> None:
        """Give the programs the scheduler probe's maps: the very maps, checked by id."""
        if not self._shares_sched():
            return
        sched: SchedProbe = self.sched  # type: ignore[assignment]
        fill_slot(self.table("threads_slot"), sched.table("threads").map_fd, "threads")
        if sched.trace_ctx_map is not None:
            fill_slot(self.table("trace_ctx_slot"), sched.trace_ctx_map.fd, "trace_ctx")

    def attach(self) -> None:
        self._fill_slots()
        if self._cgroup_ids:
            table = self.table("traced_cgroups")
            for cg in self._cgroup_ids:
                table[table.Key(cg)] = table.Leaf(1)
            control = self.table("control")
            control[control.Key(0)] = control.Leaf(len(self._cgroup_ids))
        self.attach_points(self.exit_points)
        self.set_pids(self._initial_pids)
        if self.capture_failed:  # at start a failure is the probe's (reported in its status)
            raise RuntimeError(self.capture_reason)

    # -- who is traced --------------------------------------------------------------------
    def set_pids(self, pids: Iterable[int]) -> None:
        """Trace exactly these processes (besides the cgroups), from the next syscall on. (The
        kernel itself stops tracing a process that exits; this set keeps it until told.)"""
        if self.bpf is None:
            self._initial_pids = tuple(pids)
            return
        table = self.table("traced_tgids")
        wanted = set(pids)
        if wanted - self._pids or self._cgroup_ids:  # before the kernel looks for them
            try:
                self.attach_points(self.capture_points)
            except Exception as exc:  # e.g. EMFILE from perf_event_open: the daemon runs on
                self.detach_points(self.capture_points)
                self.capture_failed += 1
                self.capture_reason = f"attaching the capture programs: {exc}"
                wanted &= self._pids  # nothing could see the new ones; asked again next time
        for pid in self._pids - wanted:
            with contextlib.suppress(KeyError):
                del table[table.Key(pid)]
        for pid in sorted(wanted - self._pids):
            try:
                table[table.Key(pid)] = table.Leaf(1)
            except Exception:  # full: counted and reported, never fatal
                self.pids_refused += 1
                wanted.discard(pid)
        self._pids = wanted
        control = self.table("control")  # after the map changed: zero only when it is empty
        control[control.Key(1)] = control.Leaf(len(wanted))
        if not wanted and not self._cgroup_ids:
            self.detach_points(self.capture_points)

    @property
    def capturing(self) -> bool:
        """The capture programs are attached (something is traced)."""
        return any(tp in self._attached for tp, _ in self.capture_points)

    @property
    def pids(self) -> frozenset[int]:
        return frozenset(self._pids)

    def details(self) -> dict[str, Any]:
        c = self.counter_values()
        return {
            "capture": self.capture,
            "capture_attached": self.capturing,
            "capture_failed": self.capture_failed,
            "capture_reason": self.capture_reason,
            "capture_bytes": CAPTURE_BYTES,  # of each request and response head, as compiled
            "traced_pids": sorted(self._pids),
            "traced_cgroups": list(self.cgroups),
            "pids_refused": self.pids_refused,
            "interference": "ok" if self._shares_sched() else "unavailable: no scheduler probe",
            "trace_ctx_map": (
                str(self.sched.trace_ctx_map.path)  # type: ignore[union-attr]
                if self._shares_trace_ctx()
                else None
            ),
            "not_http": c.get("NOT_HTTP", 0),
            "read_failed": c.get("READ_FAILED", 0),
            "client_messages": c.get("CLIENT", 0),
            "requests_unanswered": c.get("UNANSWERED", 0),
            "responses_unmatched": c.get("UNMATCHED", 0),
            "requests_expired": self.expired,
            "traced_exited": c.get("EXITED", 0),
            "other_calls": c.get("OTHER_CALL", 0),
        }

    # -- reading --------------------------------------------------------------------------
    def take_records(self, reader: RingReader, dec: Any) -> tuple[list[Any], int]:
        """The one ring of request_event records, a ring at a time (``take_request_events``):
        the records and malformed count Probe.take_records would give."""
        assert dec is request_event
        return take_request_events(reader)

    def read(self) -> list[RequestRecord]:
        """The requests answered since the previous read, in the order they ended."""
        self.drain()
        return sorted(self.take_events(), key=_END_NS)

    def expire_open(self, now_ns: int, timeout_ns: int = OPEN_TIMEOUT_NS) -> int:
        """Give up requests read more than ``timeout_ns`` ago and never answered (the client
        went away); they are counted in ``requests_expired``. Returns how many."""
        if self.bpf is None:
            return 0
        table = self.table("open_requests")
        stale = [k for k, v in table.items() if now_ns - v.start_ns >= timeout_ns]
        for k in stale:
            with contextlib.suppress(KeyError):
                del table[k]
        self.expired += len(stale)
        return len(stale)

    @property
    def open_requests(self) -> int:
        return sum(1 for _ in self.table("open_requests").keys()) if self.bpf is not None else 0
