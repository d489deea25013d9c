"""A wasmtop stand-in for the reduced-capability tests (test_reduced_caps.py runs it under
``setpriv``): the scheduler probe with the trace-context map, and the trace-context probe when
given processes to trace, drained by a real Collector.

Speaks JSON lines on stdout: ``{"event": "ready", ...}`` once attached (what it can and cannot
do, how it got the trace-context map), and ``{"event": "done", ...}`` with what it observed
after it reads ``stop`` (or end of file) on stdin.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import sys

from wasmtop.collector.collector import Collector
from wasmtop.collector.correlate import TraceSelector
from wasmtop.probes import bpfobj, features, pins
from wasmtop.probes.probeset import ProbeSet
from wasmtop.probes.sched import SchedProbe
from wasmtop.probes.tracectx import TraceCtxProbe

_BPF_MAP_GET_FD_BY_ID = 14


def say(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def open_by_id_errno(map_id: int) -> int:
    """What BCC's BPF_TABLE_PINNED does with an existing pin: BPF_MAP_GET_FD_BY_ID. 0: allowed."""
    res = features.bpf_syscall(_BPF_MAP_GET_FD_BY_ID, map_id.to_bytes(4, "little"))
    if res >= 0:
        os.close(res)
        return 0
    return -res


def list_programs_errno() -> int:
    try:
        bpfobj.programs()
    except bpfobj.BpfError as exc:
        return exc.errno
    return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trace-pids", default="", help="comma-separated pids to trace")
    ap.add_argument("--threshold-ns", type=int, default=50_000_000)
    args = ap.parse_args()
    pids = tuple(int(p) for p in args.trace_pids.split(",") if p)

    sched = SchedProbe(trace_ctx=True, threshold_ns=args.threshold_ns)
    probes = [sched] + ([TraceCtxProbe(sched, pids=pids)] if pids else [])
    with ProbeSet(probes, handle_signals=False) as running:
        ctx = sched.trace_ctx_map
        say(
            event="ready",
            cap_eff=features.effective_capabilities(),
            open_by_id_errno=open_by_id_errno(bpfobj.map_info(sched.table("threads").map_fd).id),
            list_programs_errno=list_programs_errno(),
            probes={p.name: {"status": p.status, "reason": p.reason} for p in probes},
            details={p.name: p.details() for p in probes},
            owned=ctx.owned if ctx else None,
            map_id=ctx.map_id if ctx else None,
            note=ctx.note if ctx else None,
            pinned_id=pins.pinned_id(),
        )
        collector = Collector(running, trace_selector=TraceSelector(pids=frozenset(pids)))
        while not select.select([sys.stdin], [], [], 0.1)[0]:
            collector.observe()
        sys.stdin.readline()  # "stop", or end of file: the test is gone
        # Cumulative, read while the threads are alive.
        delays = {
            k.value: v.preempt_delay_ns for k, v in sched.table("threads").items() if v.tgid in pids
        }
        collector.observe()
        running.detach()
        snap = collector.tick()
    say(
        event="done",
        thread_delay_ns=delays,
        traces=[
            {
                "pid": t.pid,
                "tid": t.tid,
                "trace_id": t.trace_id,
                "start_ns": t.start_ns,
                "duration_ms": t.duration_ms,
                "preempted_ms": t.preempted_ms,
            }
            for t in snap.traces
        ],  # fmt: skip
        stamped=[
            {"pid": e.pid, "trace_id": e.trace_id, "span_id": e.span_id}
            for e in snap.events.preemptions
            if e.trace_id
        ],
        pinned_id=pins.pinned_id(),
    )


if __name__ == "__main__":
    main()
