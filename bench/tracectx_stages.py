#!/usr/bin/env python3
"""Per-request userspace cost of the trace-context path, per stage, without a kernel.

Builds ``request_event`` records the way tracectx.bpf.c lays them out (a typical wrk request head
with a ``traceparent``: ``GET /item HTTP/1.1``, ``Host``, the header), writes them into a ring
buffer laid out as the kernel's (a memfd standing in for the map: consumer page, producer page,
data), and takes them the way the collector does, in drains of ``--batch`` records (100 ms at
~17,000 requests/s by default), with the collector's own calls timed one after the other:
Probe.drain (ring -> RequestRecords, through TraceCtxProbe.take_records), TraceCtxProbe.read
(in end order), RequestTracker.feed (head parse, attribution), the rest of
Collector._feed_requests (windows, the traces kept: at most ``--max-traces`` a snapshot) and
RequestTracker.figures once per snapshot of ``--snapshot`` records; then parse_head alone. The
garbage collector is set as the engine sets it while probes run (settle_garbage_collector).

Prints microseconds per request (best of ``--repeat``). ``--python`` forces the pure-Python
path (WASMTOP_PURE_PYTHON=1) where a compiled one exists.

Usage: .venv/bin/python bench/tracectx_stages.py [--records 50000] [--batch 1700] [--repeat 5]
"""

from __future__ import annotations

import argparse
import mmap
import os
import struct
import sys
import time

REQUEST_FMT = "<QQQQQQQQQIIIiIHHBBBB4x16s8s"  # then the captured head (as tracectx.bpf.c sends)
HEAD = (
    b"GET /item HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"
    b"traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
)


def record(i: int, head: bytes = HEAD) -> bytes:
    start = 1_000_000_000 + i * 60_000
    return struct.pack(
        REQUEST_FMT, start, start + 20_000, 0, 1_500, 1 + i, 7_000 + i, 7_500 + i, 2, 2, 4242,
        4243, 4243, 7, len(head), len(head), 200, 1, 1, 2, 5, b"\0" * 16, b"\0" * 8,
    ) + head  # fmt: skip


class FakeRing:
    """A memfd laid out as a BPF ring buffer map (no wrap-around: big enough for every record)."""

    def __init__(self, records: list[bytes]) -> None:
        page = mmap.PAGESIZE
        need = sum(len(r) + 8 for r in records) + page
        size = page
        while size < need:
            size *= 2
        self.size, self.page = size, page
        self.fd = os.memfd_create("ring")
        os.ftruncate(self.fd, 2 * page + 2 * size)
        self.records = records

    def fill(self, reader: object) -> None:
        """Write every record, producer position past them, consumer position at 0."""
        with mmap.mmap(self.fd, 2 * self.page + 2 * self.size) as m:
            off = 2 * self.page
            for r in self.records:
                m[off : off + 8] = struct.pack("<II", len(r), 0)
                m[off + 8 : off + 8 + len(r)] = r
                off += (len(r) + 8 + 7) & ~7
            m[0:8] = struct.pack("<Q", 0)
            m[self.page : self.page + 8] = struct.pack("<Q", off - 2 * self.page)


def setup(records: list[bytes], max_traces: int):  # noqa: ANN201
    from wasmtop.collector.collector import Collector
    from wasmtop.collector.correlate import NO_CONNECTION, RequestTracker
    from wasmtop.probes import probeset
    from wasmtop.probes.decoders import DECODERS
    from wasmtop.probes.ringbuf import RingReader
    from wasmtop.probes.tracectx import TraceCtxProbe

    ring = FakeRing(records)
    probe = TraceCtxProbe(capture="syscalls")
    probe.bpf, probe.status = object(), probeset.OK
    reader = RingReader(ring.fd, ring.size)
    probe._rings = [(reader, DECODERS["request_event"])]
    coll = object.__new__(Collector)
    coll.probes = [probe]
    coll.requests = RequestTracker()
    coll.max_traces = max_traces
    coll._traces, coll._traces_total = [], 0
    coll._workload_key = lambda pid: f"pid:{pid}"  # type: ignore[method-assign]
    coll._connection_of = lambda: lambda pid, fd, start: NO_CONNECTION  # type: ignore[method-assign]
    return ring, reader, probe, coll


def run(records: list[bytes], batch: int, snapshot: int, max_traces: int) -> dict[str, float]:
    """Seconds per stage over every record, in drains of ``batch`` and snapshots of ``snapshot``
    records: the collector's own calls, timed one after the other."""
    ring, reader, probe, coll = setup(records, max_traces)
    ring.fill(reader)
    ends = _record_ends(records)
    feed_requests = type(coll)._feed_requests
    t = dict.fromkeys(("drain", "read", "feed", "take", "figures"), 0.0)
    clock = time.perf_counter
    taken = 0
    while taken < len(records):
        _set_producer(ring, ends[min(taken + batch, len(ends)) - 1])  # the kernel wrote a batch
        t0 = clock()
        probe.drain()  # ring -> RequestRecords pending
        t1 = clock()
        pending = probe.read()  # sorted by end
        t2 = clock()
        coll.requests.feed(pending, coll._workload_key, coll._connection_of())
        t3 = clock()
        feed_requests(coll)  # nothing more to read: take, the traces kept
        t4 = clock()
        t["drain"] += t1 - t0
        t["read"] += t2 - t1
        t["feed"] += t3 - t2
        t["take"] += t4 - t3
        taken += batch
        if taken % snapshot < batch or taken >= len(records):
            t0 = clock()
            coll.requests.figures(1_000_000_000 + taken * 60_000)
            t["figures"] += clock() - t0
            coll._traces, coll._traces_total = [], 0
    reader.close()
    os.close(ring.fd)
    t["total"] = sum(t.values())
    return t


def _record_ends(records: list[bytes]) -> list[int]:
    ends, off = [], 0
    for r in records:
        off += (len(r) + 8 + 7) & ~7
        ends.append(off)
    return ends


def _set_producer(ring: FakeRing, pos: int) -> None:
    with mmap.mmap(ring.fd, 2 * ring.page) as m:
        m[ring.page : ring.page + 8] = struct.pack("<Q", pos)


def head_parse(records: list[bytes]) -> float:
    """parse_head alone, on each record's captured bytes."""
    from wasmtop.collector.httpmsg import parse_head

    heads = [r[128 : 128 + len(HEAD)] for r in records]
    t0 = time.perf_counter()
    for h in heads:
        parse_head(h)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=1_700, help="records per drain")
    ap.add_argument("--snapshot", type=int, default=100_000, help="records per snapshot")
    ap.add_argument("--max-traces", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--python", action="store_true", help="the pure-Python path only")
    args = ap.parse_args()
    if args.python:
        os.environ["WASMTOP_PURE_PYTHON"] = "1"
    records = [record(i) for i in range(args.records)]
    from wasmtop.engine import settle_garbage_collector

    settle_garbage_collector()  # as the engine leaves it while probes run
    print(f"{args.records} records of {len(records[0])} bytes, drains of {args.batch}, "
          f"a snapshot every {args.snapshot}, at most {args.max_traces} traces kept each; "
          f"best of {args.repeat}, µs per request")  # fmt: skip
    n = len(records)
    runs = [run(records, args.batch, args.snapshot, args.max_traces) for _ in range(args.repeat)]
    labels = {
        "drain": "ring -> RequestRecords (Probe.drain)",
        "read": "in end order (TraceCtxProbe.read)",
        "feed": "head parse, attribution (RequestTracker.feed)",
        "take": "window, Requests and Traces kept (Collector._feed_requests)",
        "figures": "window figures, once a snapshot",
        "total": "total",
    }
    for key, label in labels.items():
        print(f"  {label}: {min(r[key] for r in runs) / n * 1e6:.2f}")
    alone = min(head_parse(records) for _ in range(args.repeat))
    print(f"  (parse_head alone: {alone / n * 1e6:.2f})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
