"""Typed records the probes produce: raw kernel facts, keyed by thread or process id.

Counters are cumulative since the probe attached; the collector turns them into per-window
figures. Times are nanoseconds of CLOCK_MONOTONIC (bpf_ktime_get_ns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

# A NamedTuple from all its fields in order, without NamedTuple.__new__'s Python-level call: for
# the records built once per request. Who builds one so declares the order with
# ``fields_in_order``, so that a change to the class fails at import instead of misplacing a
# figure.
new_record = tuple.__new__


def fields_in_order(cls: Any, fields: tuple[str, ...], builder: str) -> None:
    """Raise ImportError unless ``cls`` has exactly ``fields``, in this order."""
    if cls._fields != fields:
        raise ImportError(f"{cls.__name__} fields changed: update {builder}'s positional build")


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
    wakeups: int = 0
    wakeup_delay_ns: int = 0
    wakeups_over_threshold: int = 0
    idle_wait_ns: int = 0  # of its waits, the time its CPU ran the idle task


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
    trace_id: bytes | None = None  # 16 raw bytes from the trace-context map, when set
    span_id: bytes | None = None
    thread_preemptions: int = 0  # the thread's completed preemptions, this one included


@dataclass(frozen=True)
class WakeupRecord:
    """A wake-up wait over the threshold: from sched_wakeup(_new) of the thread until it ran."""

    ts_ns: int  # when it ran
    delay_ns: int
    pid: int
    tid: int
    cpu: int  # where it ran
    comm: str
    waker_pid: int  # current at the wake-up (for interrupts: the interrupted task; 0: idle)
    waker_tid: int
    waker_comm: str
    holder_pid: int  # on the target CPU when it was woken (0: idle)
    holder_tid: int
    replaced_pid: int  # the task it replaced when it finally ran (0: idle)
    replaced_tid: int
    replaced_comm: str
    thread_wakeups: int  # the thread's completed wake-ups, this one included
    trace_id: bytes | None = None
    span_id: bytes | None = None


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
    wakeup_hist: dict[tuple[int, int], int] = field(default_factory=dict)  # (tgid, bucket)
    window_max_wakeup_ns: dict[int, int] = field(default_factory=dict)  # tgid -> max
    wakeup_events: list[WakeupRecord] = field(default_factory=list)
    # (waiting tgid, tgid that held the CPU meanwhile) -> ns, cumulative (wait behind the idle
    # task is per thread: ThreadSched.idle_wait_ns); CULPRIT_HISTORY_SHORT: older than the CPU's
    # switch history reached.
    waited_behind: dict[tuple[int, int], int] = field(default_factory=dict)


# -- socket bypass -----------------------------------------------------------------------------

Endpoint = tuple[str, int]  # (address as printed, port)


@dataclass(frozen=True)
class ConnRecord:
    """One TCP socket's view of its connection (each local connection has two: one per end).
    Counters are cumulative since the connection was established."""

    cookie: int
    local: Endpoint
    remote: Endpoint
    pid: int  # 0 = not known in the kernel
    active: bool  # this end connected
    eligible: bool  # both ends local
    enrolled: bool  # in the bypass map (accelerate mode)
    fallback_reason: str | None
    srtt_us: int
    established_ns: int
    closed_ns: int  # 0 = open
    msgs_redirected: int
    bytes_redirected: int
    msgs_passed: int
    bytes_passed: int
    msgs_failed: int
    bytes_failed: int
    stack_bytes: int  # TCP payload this end sent through the stack, acknowledged
    tcp_bytes_acked: int
    tcp_bytes_received: int

    @property
    def bypass_msgs(self) -> int:
        return self.msgs_redirected

    @property
    def all_bytes(self) -> int:
        return self.bytes_redirected + self.stack_bytes


@dataclass(frozen=True)
class BypassRecord:
    ts_ns: int
    cookie: int
    pid: int
    kind: str  # enrol | first_redirect | fallback | close
    reason: str | None
    local: Endpoint
    remote: Endpoint
    bytes: int


@dataclass(frozen=True)
class BypassReading:
    ts_ns: int
    mode: str  # observe | accelerate
    conns: dict[int, ConnRecord]  # cookie -> record; closed ones appear in one reading only
    events: list[BypassRecord] = field(default_factory=list)
    fallbacks: dict[str, int] = field(default_factory=dict)  # reason -> count, cumulative


# -- trace context -----------------------------------------------------------------------------


class RequestRecord(NamedTuple):  # one per request: a NamedTuple is much cheaper to build
    """An HTTP/1.x request a traced process answered, paired in the kernel: from the end of the
    read that brought its head to the start of the write that began its response (same process,
    same fd), with the threads' cumulative scheduler figures at both ends."""

    tgid: int
    fd: int
    start_ns: int
    end_ns: int
    tid: int  # thread that read the request
    end_tid: int  # thread that wrote the response
    preempt_start_ns: int | None  # None: the scheduler probe had no entry for the thread
    preempt_end_ns: int | None
    migrations_start: int | None
    migrations_end: int | None
    status: int | None  # of the response; None when not three digits
    data: bytes  # the request's first bytes, at most CAPTURE_BYTES
    ctx_trace_id: bytes | None  # from the trace-context map (at the response, else the request)
    ctx_span_id: bytes | None
    # The read blocked and a wake-up ended it: when that wake-up came (the request's bytes
    # arrived then); None when the read found them waiting.
    wake_ns: int | None = None
    # The run-queue wait of the thread's latest wake-up before the read returned, charged to
    # this request because no request was charged with it before; 0 when none was; None when
    # the scheduler probe had no entry for the thread (not known).
    queued_ns: int | None = None
    wakeup_seq: int | None = None  # that wake-up's number in the reading thread


# -- lifecycle ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColdStartRecord:
    """The first listen or accepted connection of a process exec'd while wasmtop ran."""

    tgid: int
    comm: str
    kind: str  # listen | accept
    exec_ns: int
    ts_ns: int

    @property
    def cold_start_ns(self) -> int:
        return self.ts_ns - self.exec_ns


@dataclass(frozen=True)
class WasmCalls:
    """A runtime's compile or instantiate calls in one process, cumulative since attached."""

    tgid: int
    kind: str  # compile | instantiate
    count: int
    total_ns: int
    max_ns: int
    hist: dict[int, int]  # log-linear bucket -> calls


@dataclass(frozen=True)
class LifecycleReading:
    ts_ns: int
    cold_starts: list[ColdStartRecord]  # since the previous reading
    wasm: dict[tuple[int, str], WasmCalls]  # (tgid, kind) -> cumulative
