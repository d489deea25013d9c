"""Request correlation without a kernel: captured messages in, requests and windows out."""

from __future__ import annotations

import pytest

from wasmtop.collector.correlate import OPEN_TIMEOUT_NS, RequestTracker, TraceSelector, trace_of
from wasmtop.probes.records import HttpRecord

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CTX_TRACE, CTX_SPAN = bytes(range(16)), bytes(range(100, 108))


def msg(ts, data, *, direction, pid=10, tid=11, fd=5, delay=0, migrations=0, ctx=False):
    return HttpRecord(
        ts_ns=ts,
        tgid=pid,
        tid=tid,
        fd=fd,
        direction=direction,
        syscall="recvfrom" if direction == "read" else "sendto",
        bytes=len(data),
        data=data,
        preempt_delay_ns=delay,
        migrations=migrations,
        ctx_trace_id=CTX_TRACE if ctx else None,
        ctx_span_id=CTX_SPAN if ctx else None,
    )


def req(ts, path="/a", headers=(), **kw):
    head = "\r\n".join([f"GET {path} HTTP/1.1", "Host: h", *headers, "", ""]).encode()
    return msg(ts, head, direction="read", **kw)


def resp(ts, status=200, **kw):
    return msg(ts, f"HTTP/1.1 {status} OK\r\nContent-Length: 0\r\n\r\n".encode(),
               direction="write", **kw)  # fmt: skip


def run(tracker, records):
    tracker.feed(records, lambda pid: f"pid:{pid}")
    return tracker.take()


def test_a_request_is_charged_the_difference_of_its_threads_counters():
    (r,) = run(RequestTracker(), [req(1_000, headers=[f"traceparent: {TP}"], delay=5_000,
                                      migrations=1),
                                  resp(4_000_000, delay=2_505_000, migrations=3)])  # fmt: skip
    assert r.duration_ns == 3_999_000 and r.preempted_ns == 2_500_000 and r.migrations == 2
    t = trace_of(r)
    assert t.trace_id == "0af7651916cd43dd8448eb211c80319c" and t.source == "traceparent"
    assert t.parent_span_id == "b7ad6b7169203331" and len(t.span_id) == 16
    assert t.preempted_ms == 2.5 and t.duration_ms == 3.999 and t.route == "GET /a"


def test_unknown_interference_stays_unknown_and_other_threads_are_not_subtracted():
    tracker = RequestTracker()
    (a,) = run(tracker, [req(1, delay=None, migrations=None), resp(2, delay=None, migrations=None)])
    assert a.preempted_ns is None and a.migrations is None
    (b,) = run(tracker, [req(3, delay=100), resp(4, tid=99, delay=900)])
    assert b.preempted_ns is None and tracker.counters["requests_cross_thread"] == 1


def test_trace_context_map_gives_the_span_and_a_trace_id_when_headers_have_none():
    tracker = RequestTracker()
    (a,) = run(tracker, [req(1), resp(2, ctx=True)])  # set after the request was read
    assert a.trace_id == CTX_TRACE and a.trace_source == "trace_ctx" and a.span_id == CTX_SPAN
    (b,) = run(tracker, [req(3, headers=[f"traceparent: {TP}"], ctx=True), resp(4)])
    assert b.trace_source == "traceparent" and b.span_id == CTX_SPAN
    assert trace_of(b).span_id == CTX_SPAN.hex()
    (c,) = run(tracker, [req(5), resp(6)])
    assert c.trace_id is None  # timed, not traced


def test_unanswered_unmatched_client_side_and_expired_are_counted():
    tracker = RequestTracker()
    done = run(tracker, [
        req(1, fd=1), req(2, fd=1),  # the first is never answered (fd reused, or pipelined)
        resp(3, fd=1),
        resp(4, fd=2),  # no request on that connection
        msg(5, b"GET / HTTP/1.1\r\n\r\n", direction="write", fd=3),  # we are the client
        msg(6, b"HTTP/1.1 200 OK\r\n\r\n", direction="read", fd=3),
        req(7, fd=4),
    ])  # fmt: skip
    assert [r.start_ns for r in done] == [2]
    c = tracker.counters
    assert (c["requests_unanswered"], c["responses_unmatched"], c["client_messages"]) == (1, 1, 2)
    assert tracker.open_requests == 1
    run(tracker, [req(7 + OPEN_TIMEOUT_NS, fd=9)])
    assert c["requests_expired"] == 1 and tracker.open_requests == 1


def test_header_problems_are_counted_and_a_bad_start_line_opens_nothing():
    tracker = RequestTracker()
    done = run(tracker, [
        req(1, headers=["traceparent: ff-" + "a" * 32 + "-" + "b" * 16 + "-01"]), resp(2),
        msg(3, b"GET \x00\xff HTTP/1.1\r\n\r\n", direction="read", fd=8), resp(4, fd=8),
    ])  # fmt: skip
    assert len(done) == 1 and done[0].trace_id is None
    c = tracker.counters
    assert c["trace_header_traceparent_version_ff"] == 1
    assert c["trace_header_bad_start_line"] == 1 and c["responses_unmatched"] == 1


def test_window_quantiles_are_exact_and_expire():
    tracker = RequestTracker(window_s=10)
    records = []
    for i in range(1, 101):  # durations 1..100 ms, ending at i seconds
        end = i * 1_000_000_000
        records += [req(end - i * 1_000_000, fd=i), resp(end, fd=i)]
    run(tracker, records)
    fig = tracker.figures(100 * 1_000_000_000)["pid:10"]
    # Ends in [90 s, 100 s]: durations 90..100 ms.
    assert fig.count == 11 and fig.complete
    assert (fig.latency_ms.p50, fig.latency_ms.p90, fig.latency_ms.p99) == (95.0, 99.0, 100.0)
    assert fig.latency_ms.p999 == fig.latency_ms.max == 100.0
    assert tracker.figures(200 * 1_000_000_000) == {}


def test_the_window_cap_is_said_not_hidden():
    tracker = RequestTracker(window_s=60, max_window_requests=10)
    run(tracker, [r for i in range(25) for r in (req(2 * i, fd=i), resp(2 * i + 1, fd=i))])
    fig = tracker.figures(100)["pid:10"]
    assert fig.count == 10 and not fig.complete and fig.evicted == 15
    # Once the evicted requests would have left the window anyway, it is complete again.
    assert tracker.figures(60_000_000_000 + 49)["pid:10"].complete


def test_distinct_paths_are_capped_per_workload():
    tracker = RequestTracker(max_paths=3)
    recs = []
    for i in range(6):
        recs += [
            req(2 * i, path=f"/p{i}?x=1", fd=i),
            resp(2 * i + 1, status=200 + 204 * (i == 5), fd=i),
        ]
    run(tracker, recs)
    fig = tracker.figures(20)["pid:10"]
    assert fig.by_route == {"GET /p0": 1, "GET /p1": 1, "GET /p2": 1, "other": 3}
    assert fig.by_status == {"200": 5, "404": 1}
    assert tracker.counters["requests_paths_other"] == 3


@pytest.mark.parametrize(
    "selector, pid, comm, kind, wanted",
    [
        (TraceSelector(), 5, "server", "wasm", True),  # default: every Wasm runtime
        (TraceSelector(), 5, "server", "process", False),
        (TraceSelector(pids=frozenset({5})), 5, "x", "process", True),
        (TraceSelector(pids=frozenset({5})), 6, "x", "wasm", False),  # asked: no default
        (TraceSelector(comms=frozenset({"nginx"})), 6, "nginx", "process", True),
        (TraceSelector(cgroups=("a",)), 6, "x", "wasm", False),  # the kernel matches cgroups
    ],
)
def test_trace_selector(selector, pid, comm, kind, wanted):
    assert selector.wants(pid, comm, kind) is wanted
