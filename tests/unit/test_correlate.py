"""Request correlation without a kernel: captured messages in, requests and windows out."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmtop.collector.correlate import RequestTracker, TraceSelector, attach_events, trace_of
from wasmtop.collector.model import Events, PreemptionEvent, Trace, WakeupWaitEvent
from wasmtop.probes.records import RequestRecord

TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CTX_TRACE, CTX_SPAN = bytes(range(16)), bytes(range(100, 108))


def pair(start, end, path="/a", headers=(), *, fd=5, tid=11, end_tid=None, status=200,
         preempt=(0, 0), migrations=(0, 0), ctx=False, data=None):  # fmt: skip
    """A request as the kernel pairs it (read of its head -> write of its response)."""
    head = "\r\n".join([f"GET {path} HTTP/1.1", "Host: h", *headers, "", ""]).encode()
    return RequestRecord(
        tgid=10,
        fd=fd,
        start_ns=start,
        end_ns=end,
        tid=tid,
        end_tid=tid if end_tid is None else end_tid,
        preempt_start_ns=preempt[0],
        preempt_end_ns=preempt[1],
        migrations_start=migrations[0],
        migrations_end=migrations[1],
        status=status,
        data=head if data is None else data,
        ctx_trace_id=CTX_TRACE if ctx else None,
        ctx_span_id=CTX_SPAN if ctx else None,
    )


def run(tracker, records):
    tracker.feed(records, lambda pid: f"pid:{pid}")
    return tracker.take()


def test_a_request_is_charged_the_difference_of_its_threads_counters():
    (r,) = run(RequestTracker(), [pair(1_000, 4_000_000, headers=[f"traceparent: {TP}"],
                                       preempt=(5_000, 2_505_000), migrations=(1, 3))])  # fmt: skip
    assert r.duration_ns == 3_999_000 and r.preempted_ns == 2_500_000 and r.migrations == 2
    t = trace_of(r)
    assert t.trace_id == "0af7651916cd43dd8448eb211c80319c" and t.source == "traceparent"
    assert t.parent_span_id == "b7ad6b7169203331" and len(t.span_id) == 16
    assert t.preempted_ms == 2.5 and t.duration_ms == 3.999 and t.route == "GET /a"
    assert t.status == 200 and t.method == "GET"


def test_unknown_interference_stays_unknown_and_other_threads_are_not_subtracted():
    tracker = RequestTracker()
    (a,) = run(tracker, [pair(1, 2, preempt=(None, None), migrations=(None, None))])
    assert a.preempted_ns is None and a.migrations is None
    (b,) = run(tracker, [pair(3, 4, end_tid=99, preempt=(100, 900))])
    assert b.preempted_ns is None and tracker.counters["requests_cross_thread"] == 1
    # No entry at the read, one at the write: the thread's first switch-out fell inside.
    (c,) = run(tracker, [pair(5, 6, preempt=(None, 700), migrations=(None, 1))])
    assert c.preempted_ns == 700 and c.migrations == 1


def test_trace_context_map_gives_the_span_and_a_trace_id_when_headers_have_none():
    tracker = RequestTracker()
    (a,) = run(tracker, [pair(1, 2, ctx=True)])
    assert a.trace_id == CTX_TRACE and a.trace_source == "trace_ctx" and a.span_id == CTX_SPAN
    # The runtime's span is this request's when it names the header's trace too.
    same = pair(3, 4, headers=[f"traceparent: {TP}"], ctx=True)._replace(
        ctx_trace_id=bytes.fromhex(TP[3:35])
    )
    (b,) = run(tracker, [same])
    assert b.trace_source == "traceparent" and b.span_id == CTX_SPAN
    assert trace_of(b).span_id == CTX_SPAN.hex()
    # Of another trace (a stale entry, or a runtime that began its own): not paired with this one.
    (d,) = run(tracker, [pair(3, 4, headers=[f"traceparent: {TP}"], ctx=True)])
    assert d.trace_id == bytes.fromhex(TP[3:35]) and d.span_id is None
    assert trace_of(d).span_id != CTX_SPAN.hex() and len(trace_of(d).span_id) == 16
    (c,) = run(tracker, [pair(5, 6)])
    assert c.trace_id is None  # timed, not traced


def test_a_window_names_only_the_processes_whose_requests_it_still_holds():
    tracker = RequestTracker(window_s=10, max_window_requests=5)
    s = 1_000_000_000
    records = [pair(i * s - 1_000, i * s)._replace(tgid=100 + i) for i in range(1, 9)]
    tracker.feed(records, lambda pid: "svc")
    tracker.take()
    assert tracker.pids_of("svc") == set(range(104, 109))  # 101-103 left with the cap's eviction
    tracker.figures(15 * s)  # the window is [5 s, 15 s]: the request that ended at 4 s leaves
    assert tracker.pids_of("svc") == set(range(105, 109))
    tracker.figures(30 * s)
    assert tracker.pids_of("svc") == set()


def test_header_problems_are_counted_and_a_bad_start_line_makes_no_request():
    tracker = RequestTracker()
    done = run(tracker, [
        pair(1, 2, headers=["traceparent: ff-" + "a" * 32 + "-" + "b" * 16 + "-01"]),
        pair(3, 4, data=b"GET /\x00\xff HTTP/1.1\r\n\r\n"),
        pair(5, 6, data=b"HTTP/1.1 200 OK\r\n\r\n"),  # not a request: never made one
    ])  # fmt: skip
    assert len(done) == 1 and done[0].trace_id is None
    c = tracker.counters
    assert c["trace_header_traceparent_version_ff"] == 1
    assert c["trace_header_bad_start_line"] == 2


def test_window_quantiles_are_exact_and_expire():
    tracker = RequestTracker(window_s=10)
    # Durations 1..100 ms, ending at i seconds.
    run(
        tracker, [pair(i * 1_000_000_000 - i * 1_000_000, i * 1_000_000_000) for i in range(1, 101)]
    )
    fig = tracker.figures(100 * 1_000_000_000)["pid:10"]
    # Ends in [90 s, 100 s]: durations 90..100 ms.
    assert fig.count == 11 and fig.complete
    assert (fig.latency_ms.p50, fig.latency_ms.p90, fig.latency_ms.p99) == (95.0, 99.0, 100.0)
    assert fig.latency_ms.p999 == fig.latency_ms.max == 100.0
    assert tracker.figures(200 * 1_000_000_000) == {}


def test_the_window_cap_is_said_not_hidden():
    tracker = RequestTracker(window_s=60, max_window_requests=10)
    run(tracker, [pair(2 * i, 2 * i + 1) for i in range(25)])
    fig = tracker.figures(100)["pid:10"]
    assert fig.count == 10 and not fig.complete and fig.evicted == 15
    # Once the evicted requests would have left the window anyway, it is complete again.
    assert tracker.figures(60_000_000_000 + 49)["pid:10"].complete


def test_distinct_paths_are_capped_per_workload():
    tracker = RequestTracker(max_paths=3)
    run(tracker, [pair(2 * i, 2 * i + 1, f"/p{i}?x=1", status=200 + 204 * (i == 5))
                  for i in range(6)])  # fmt: skip
    fig = tracker.figures(20)["pid:10"]
    assert fig.by_route == {"GET /p0": 1, "GET /p1": 1, "GET /p2": 1, "other": 3}
    assert fig.by_status == {"200": 5, "404": 1}
    assert tracker.counters["requests_paths_other"] == 3


def test_a_method_outside_the_known_set_is_one_route_whatever_it_is():
    tracker = RequestTracker(max_paths=100)
    junk = [f"POST{a}{b}{c}" for a in "AB" for b in "AB" for c in "AB"]  # the kernel sees "POST"
    records = [
        pair(2 * i, 2 * i + 1, data=f"{m} / HTTP/1.1\r\nHost: h\r\n\r\n".encode())
        for i, m in enumerate(junk)
    ]
    run(tracker, [*records, pair(100, 101, "/real")])
    fig = tracker.figures(200)["pid:10"]
    assert fig.by_route == {"other": len(junk), "GET /real": 1}
    assert tracker.counters["requests_method_other"] == len(junk)
    assert tracker.counters["requests_paths_other"] == 0


@pytest.mark.parametrize(
    "path, route",
    [
        ("/users/12345/orders", "GET /users/:id/orders"),
        ("/reset-password/Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5", "GET /reset-password/:id"),
        ("/item/0af7651916cd43dd8448eb211c80319c", "GET /item/:id"),
        ("/o/123e4567-e89b-12d3-a456-426614174000/x", "GET /o/:id/x"),
        ("/api/v2/health", "GET /api/v2/health"),  # short words with a digit stay
        ("/static/application-bundle.js", "GET /static/application-bundle.js"),  # no digit
        # Cut at 64 characters inside a token: none of it leaves, nor a made-up word.
        (
            "/api/v2/users/password-reset/confirm/tokens/xx/Zk3q9XvT2mLp8RwQa7Yc4NbE1uHs6JdG0oK",
            "GET /api/v2/users/password-reset/confirm/tokens/xx/:cut",
        ),
        (
            "/api/v1/customers/4711/orders/and/more/words/than/fit/in/the/path/history",
            "GET /api/v1/customers/:id/orders/and/more/words/than/fit/in/the/:cut",
        ),
    ],
)
def test_id_like_path_segments_never_leave_the_node(path, route):
    tracker = RequestTracker()
    (r,) = run(tracker, [pair(1, 2, path)])
    assert r.route == route


def test_the_route_cap_gives_room_back_when_a_route_stops_getting_traffic():
    """Junk sent first must not push the real routes into "other" once it stops."""
    second = 1_000_000_000
    tracker = RequestTracker(window_s=10, max_paths=3)
    run(tracker, [pair(i, i + 1, f"/junk-path-{chr(97 + i)}") for i in range(3)])
    (early,) = run(tracker, [pair(10, 11, "/real")])
    assert early.route == "other"  # the cap is full of junk
    tracker.figures(11 * second)  # the junk's requests leave the window
    (late,) = run(tracker, [pair(12 * second, 12 * second + 1, "/real")])
    assert late.route == "GET /real"
    # A route that keeps getting traffic keeps its name while newcomers go to other.
    run(tracker, [pair(13 * second + i, 13 * second + i + 1, f"/n{chr(97 + i)}") for i in range(3)])
    (again,) = run(tracker, [pair(14 * second, 14 * second + 1, "/real")])
    assert again.route == "GET /real"
    assert tracker.figures(14 * second + 2)["pid:10"].by_route["other"] == 1


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


# -- a Snapshot's traces carry their thread's events ----------------------------------------------
def _trace(*, pid=10, tid=11, start_ns=1_000_000, duration_ms=2.0):
    return Trace(
        trace_id="ab" * 16, span_id="cd" * 8, parent_span_id=None, source="traceparent",
        trace_flags=1, tracestate=None, pid=pid, tid=tid, workload="pid:10", start_ns=start_ns,
        duration_ms=duration_ms, preempted_ms=None, migrations=None, bypassed=None, method="GET",
        route="GET /a", status=200,
    )  # fmt: skip


def _preemption(ts_ns, *, pid=10, tid=11):
    return PreemptionEvent(
        ts_ns=ts_ns, pid=pid, tid=tid, cpu=1, comm="srv", delay_us=1500.0, preemptor_pid=99,
        preemptor_tid=99, preemptor_comm="hog", workload="pid:10",
    )  # fmt: skip


def _wait(ts_ns, *, pid=10, tid=11):
    return WakeupWaitEvent(
        ts_ns=ts_ns, pid=pid, tid=tid, cpu=1, comm="srv", delay_us=1200.0, workload="pid:10",
        waker_pid=7, waker_tid=7, waker_comm="cli", holder_pid=0, holder_tid=0, holder_comm=None,
        holder_workload=None, replaced_pid=0, replaced_tid=0, replaced_comm="swapper/1",
        replaced_workload=None,
    )  # fmt: skip


def test_a_trace_carries_the_events_of_its_thread_within_its_interval_and_no_others():
    t = _trace()  # 1.0 ms .. 3.0 ms
    start, end = t.start_ns, t.start_ns + 2_000_000
    inside = (_preemption(start), _preemption(start + 1_000_000), _preemption(end))  # ends count
    outside = (
        _preemption(start - 1),  # before the request
        _preemption(end + 1),  # after it
        _preemption(start + 500_000, tid=12),  # another thread
        _preemption(start + 500_000, pid=20),  # the same tid in another process
    )
    wait_in, wait_out = _wait(start + 700_000), _wait(start + 700_000, tid=12)
    events = Events(
        preemptions=(outside[0], inside[0], outside[2], inside[1], outside[3], inside[2],
                     outside[1]),
        wakeup_waits=(wait_out, wait_in),
    )  # fmt: skip
    other = _trace(tid=13)  # a thread without events
    (got, got_other) = attach_events([t, other], events)
    assert got.preemptions == inside  # in the Snapshot's order
    assert got.wakeup_waits == (wait_in,)
    assert got._replace(preemptions=(), wakeup_waits=()) == t  # nothing else changed
    assert got_other is other and got_other.preemptions == () and got_other.wakeup_waits == ()
    # Requests of one thread that overlap both carry an event inside both.
    a, b = attach_events([_trace(), _trace(start_ns=2_000_000)], events)
    assert inside[1] in a.preemptions and inside[1] in b.preemptions
    # Joined from the Snapshot's events only: without events, nothing (and again, the same).
    assert attach_events([got], Events()) == (t,)
    assert attach_events([got], events) == (got,)


def test_a_request_becomes_a_trace_whose_events_are_joined_by_the_span_it_exports():
    """trace_of's start and duration give the interval: an event at the response write's start
    (the span's end) is its, one a nanosecond later is not."""
    (r,) = run(RequestTracker(), [pair(1_000, 4_000_000, headers=[f"traceparent: {TP}"])])
    t = trace_of(r)
    assert t.preemptions == () and t.wakeup_waits == ()
    at_end, after = _preemption(r.end_ns, tid=r.tid), _preemption(r.end_ns + 1, tid=r.tid)
    (got,) = attach_events([t], Events(preemptions=(at_end, after)))
    assert got.preemptions == (at_end,)


def test_route_templates_name_routes_as_the_service_does_and_the_path_stays_as_sent():
    tracker = RequestTracker(route_templates=["/users/{id}/orders", "/items/{sku}",
                                              "/items/{sku}/reviews"], keep_paths=True)  # fmt: skip
    long_sku = "X" * 60  # /items/<60 X>/reviews is cut inside the sku: no template applies
    paths = ["/users/alice/orders", "/items/ABC-1?color=red", "/items/ABC-1/reviews",
             "/users/12345/cart", "/items", f"/items/{long_sku}/reviews"]  # fmt: skip
    reqs = run(tracker, [pair(i * 10, i * 10 + 5, p, headers=[f"traceparent: {TP}"])
                         for i, p in enumerate(paths)])  # fmt: skip
    assert [r.route for r in reqs] == [
        "GET /users/{id}/orders",  # "alice" is no id the default would fold
        "GET /items/{sku}",
        "GET /items/{sku}/reviews",
        "GET /users/:id/cart",  # no template: the default folding
        "GET /items",
        "GET /items/:cut",  # not "/items/{sku}", which it is not
    ]
    traces = [trace_of(r) for r in reqs]
    sent = [p.split("?")[0][:64] for p in paths]  # the query string is never kept
    assert [t.path for t in traces] == sent


def test_route_templates_by_workload_pattern_apply_to_the_workloads_they_name():
    """A map of shell patterns (over a workload's names: namespace/pod/container, key,
    command) to templates: a workload gets the templates of every pattern that names it, in
    the order configured; one no pattern names keeps the default folding."""
    tracker = RequestTracker(route_templates={
        "shop/cart-*": ["/users/{id}/cart"],  # the pod's name
        "edge": ["/items/{sku}"],  # the command
        "*": ["/users/{name}/{what}"],  # every workload, after its own
    })  # fmt: skip
    names = {1: ("shop/cart-7d9c/app", "pod:u1/c1", "python3"), 2: ("pid:2", "edge"),
             3: ("pid:3", "other")}  # fmt: skip
    asked = []

    def identity_of(pid):
        asked.append(pid)
        return f"pid:{pid}", names[pid]

    recs = [pair(i * 10, i * 10 + 5, path, headers=[f"traceparent: {TP}"])._replace(tgid=pid)
            for i, (pid, path) in enumerate([(1, "/users/alice/cart"), (2, "/users/alice/cart"),
                                              (2, "/items/ABC"), (3, "/items/ABC"),
                                              (1, "/items/42"), (3, "/users/7/x")])]  # fmt: skip
    tracker.feed(recs, lambda pid: 1 / 0, identity_of=identity_of)
    assert [r.route for r in tracker.take()] == [
        "GET /users/{id}/cart",  # shop/cart-*, before "*"
        "GET /users/{name}/{what}",  # "*" only: edge's own template does not fit
        "GET /items/{sku}",  # edge's
        "GET /items/ABC",  # "*" does not fit a two-segment path; "ABC" is no id
        "GET /items/:id",  # the cart pod: no template fits, the default folds the number
        "GET /users/{name}/{what}",
    ]
    assert sorted(asked) == [1, 2, 3]  # once per process and batch
    # A plain list is every workload's, and no workload's names are asked for.
    plain = RequestTracker(route_templates=["/items/{sku}"])
    plain.feed(recs[2:4], lambda pid: f"pid:{pid}", identity_of=lambda pid: 1 / 0)
    assert [r.route for r in plain.take()] == ["GET /items/{sku}"] * 2


def test_template_sets_stay_bounded_however_many_workloads_come():
    """Workloads named by ever new combinations of patterns: the numbered template sets and
    what was cached by set number are emptied together, so every route stays right."""
    from wasmtop.collector import correlate

    tracker = RequestTracker(route_templates={f"w{i}-*": [f"/t{i}/{{x}}"] for i in range(14)})
    sets_before, resets = 0, 0
    for n in range(3 * correlate.MAX_ROUTE_CACHE):
        mask = n % (1 << 14)
        k = n % 2  # a path one pattern's template fits: applied only when it names the workload
        names = tuple(f"w{i}-{n}" for i in range(14) if mask >> i & 1)
        tracker.feed([pair(n, n + 1, f"/t{k}/abc")._replace(tgid=n + 1)], lambda pid: 1 / 0,
                     identity_of=lambda pid, names=names: ("w", names))  # fmt: skip
        (r,) = tracker.take()
        assert r.route == (f"GET /t{k}/{{x}}" if mask >> k & 1 else f"GET /t{k}/abc"), n
        if len(tracker._sets) < sets_before:  # renumbered: nothing cached by old numbers
            assert len(tracker._templated) <= 1 and len(tracker._set_of_names) <= 1
            resets += 1
        sets_before = len(tracker._sets)
        assert len(tracker._sets) <= correlate.MAX_ROUTE_CACHE + 1
        assert len(tracker._set_of_names) <= correlate.MAX_ROUTE_CACHE
    assert resets >= 2


def test_a_trace_carries_its_connections_endpoints_and_the_host_the_client_named():
    tracker = RequestTracker()
    conns = {5: ((("10.0.0.2", 8080), ("10.0.0.9", 40001)), None), 6: (None, None)}
    asked = []

    def connection_of(pid, fd, start_ns):
        asked.append((pid, fd, start_ns))
        return conns[fd]

    recs = [pair(100, 200, headers=[f"traceparent: {TP}"], fd=5),
            pair(300, 400, headers=[f"traceparent: {TP}"], fd=6)]  # fmt: skip
    recs[1] = recs[1]._replace(data=recs[1].data.replace(b"Host: h", b"Host: shop.example:8443"))
    tracker.feed(recs, lambda pid: "w", connection_of)
    a, b = (trace_of(r) for r in tracker.take())
    assert asked == [(10, 5, 100), (10, 6, 300)]  # asked with each request's start
    assert (a.local_address, a.local_port, a.client_address, a.client_port) == (
        "10.0.0.2", 8080, "10.0.0.9", 40001)  # fmt: skip
    assert (a.server_address, a.server_port) == ("h", 80)  # the Host header; the scheme's port
    assert (b.local_address, b.local_port, b.client_address, b.client_port) == (None,) * 4
    assert (b.server_address, b.server_port) == ("shop.example", 8443)


@pytest.mark.parametrize(
    ("head", "host"),
    [(b"GET / HTTP/1.1\r\nHost: a.b\r\n\r\n", ("a.b", 80)),
     (b"GET / HTTP/1.1\r\nX: 1\r\nhOsT:  a.b:81 \r\n\r\n", ("a.b", 81)),
     (b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n", ("::1", 8080)),
     (b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n", ("::1", 80)),
     (b"GET / HTTP/1.1\r\nHost: 10.0.0.1:0\r\n\r\n", None),  # no port 0
     (b"GET / HTTP/1.1\r\nHost: a.b:99999\r\n\r\n", None),
     (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", None),
     (b"GET / HTTP/1.1\r\nHost: a.b", None),  # cut by the capture: not said
     (b"GET / HTTP/1.1\r\n\r\nHost: a.b\r\n", None),  # in the body, not the head
     (b"GET / HTTP/1.1\r\nHost: \xff\r\n\r\n", None),
     (b"GET / HTTP/1.1\r\nHost: " + b"a" * 300 + b"\r\n\r\n", None)],
)  # fmt: skip
def test_the_host_header_names_the_server_or_nothing(head, host):
    from wasmtop.collector.correlate import http_host

    assert http_host(head) == host


@given(st.binary(max_size=400))
def test_any_captured_bytes_give_a_host_or_none_never_an_error(data):
    from wasmtop.collector.correlate import http_host

    got = http_host(b"GET / HTTP/1.1\r\nHost: " + data)
    assert got is None or (isinstance(got[0], str) and 0 < got[1] < 65536)


def test_by_default_no_path_leaves_the_tracker_only_its_route():
    (r,) = run(RequestTracker(), [pair(1, 2, "/reset-password/Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
                                       headers=[f"traceparent: {TP}"])])  # fmt: skip
    t = trace_of(r)
    assert (t.route, t.path) == ("GET /reset-password/:id", None)


@pytest.mark.parametrize(
    ("data", "version"),
    [(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", "1.1"), (b"GET / HTTP/1.0\r\n\r\n", "1.0"),
     (b"GET / HTTP/1.x\r\n\r\n", None), (b"GET /\r\n", None), (b"\xff" * 400, None),
     (b"GET / HTTP/1.1", None)],  # no end of line within the capture: not said
)  # fmt: skip
def test_a_traced_requests_http_version_comes_from_its_start_line(data, version):
    from wasmtop.collector.correlate import http_version

    assert http_version(data) == version
    (r,) = run(RequestTracker(), [pair(1, 2, headers=[f"traceparent: {TP}"])])
    assert trace_of(r).version == "1.1"  # what pair() sends
