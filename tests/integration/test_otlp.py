"""OTLP export against a real in-process gRPC receiver, from synthetic Snapshots built with the
real model classes (no BPF: the kernel-driven end-to-end path goes through the daemon)."""

from __future__ import annotations

import itertools
import os
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otlp_receiver import OtlpReceiver, attrs, wait_until
from wasmtop.collector.correlate import attach_events
from wasmtop.collector.model import (
    DelayQuantiles,
    Events,
    HistogramBucket,
    LatencyQuantiles,
    PreemptionEvent,
    RequestFigures,
    SchedFigures,
    Snapshot,
    Trace,
    WaitedBehind,
    WakeupWaitEvent,
    Workload,
)
from wasmtop.collector.workloads import Pod
from wasmtop.exporters import otlp
from wasmtop.exporters.otlp import OtlpExporter
from wasmtop.exporters.series import (
    DELAY_BOUNDS_S,
    PREEMPT_BOUNDS_S,
    Family,
    Histogram,
    Sample,
    SeriesBook,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot as many_workloads  # noqa: E402 - the benchmark's builder

POD = Pod(namespace="shop", name="cart-7d9f", uid="uid-123", container="app", container_id="c0ffee")
WL_POD = "shop/cart-7d9f/app"
WL_PLAIN = "proc:edge"
_ids = itertools.count(1)


def new_id(digits: int) -> str:
    """Unique non-zero lowercase hex ids, different per call and per test run."""
    return f"{os.getpid():08x}{next(_ids):x}".rjust(digits, "a")[-digits:]


def _sched(switches: int, preemptions: int = 4) -> SchedFigures:
    return SchedFigures(
        switches=switches,
        involuntary=switches // 2,
        migrations=3,
        migrations_per_s=3.0,
        switches_per_s=float(switches),
        involuntary_per_s=switches / 2,
        affinity_stability=0.03,
        cpu_skew_ratio=0.5,
        allowed_cpus=(0, 1),
        cpu_time_ns_by_cpu={"0": 1_500_000_000, "1": 500_000_000},
        preempt_delay_us=DelayQuantiles(p50=40.0, p99=900.0, max=1200.0),
        preemptions=preemptions,
        preempt_delay_total_us=2500.0,
        preemptions_over_threshold=1,
        preempt_delay_hist=(
            HistogramBucket(32.0, 48.0, preemptions - 1),  # counts under 1e-4 s
            HistogramBucket(1024.0, 1536.0, 1),  # counts under 2.5e-3 s
        ),
        migration_matrix=(),
        wakeups=10,
        wakeup_delay_us=DelayQuantiles(p50=8.0, p99=3000.0, max=3100.0),
        wakeup_delay_total_us=3500.0,
        wakeup_delay_hist=(
            HistogramBucket(6.0, 6.5, 7),  # counts under 1e-5 s
            HistogramBucket(2048.0, 2176.0, 1),  # counts under 2.5e-3 s
            HistogramBucket(3072.0, 3264.0, 2),  # counts under 5e-3 s
        ),
        wakeups_over_threshold=2,
        runq_delay_total_us=6000.0,  # 2500 preemption + 3500 wake-up
        waited_behind=(
            WaitedBehind("workload", WL_PLAIN, "edge", 4.5, 0.75),
            WaitedBehind("idle", None, None, 1.0, 1 / 6),
            WaitedBehind("unattributed", None, None, 0.5, 1 / 12),
        ),
    )


def workloads(switches: int = 100) -> tuple[Workload, ...]:
    return (
        Workload(
            key=WL_POD,
            kind="wasm",
            runtime="wasmtime",
            comm="wasmtime",
            pids=(4242,),
            cgroup="/kubepods/pod-uid-123/c0ffee",
            pod=POD,
            sched=_sched(switches),
            requests=RequestFigures(
                count=40,
                window_s=60.0,
                latency_ms=LatencyQuantiles(p50=2.0, p90=4.0, p99=9.0, p999=15.0, max=18.0),
                complete=True,
                evicted=0,
                by_status={"200": 40},
                by_route={"GET /item": 40},
                sum_ms=100.0,
            ),
        ),
        Workload(
            key=WL_PLAIN,
            kind="process",
            runtime=None,
            comm="edge",
            pids=(5000,),
            cgroup=None,
            pod=None,
            sched=_sched(switches * 2),
        ),
    )


def trace(**kw: object) -> Trace:
    fields: dict[str, object] = dict(
        trace_id=new_id(32),
        span_id=new_id(16),
        parent_span_id=new_id(16),
        source="traceparent",
        trace_flags=1,
        tracestate=None,
        pid=4242,
        tid=4243,
        workload=WL_POD,
        start_ns=time.monotonic_ns() - 50_000_000,
        duration_ms=12.5,
        preempted_ms=3.25,
        migrations=2,
        bypassed=True,
        method="GET",
        route="GET /item",
        status=200,
    )
    fields.update(kw)
    return Trace(**fields)  # type: ignore[arg-type]


def snapshot(
    traces: tuple[Trace, ...] = (),
    preemptions: tuple[PreemptionEvent, ...] = (),
    switches: int = 100,
    wakeup_waits: tuple[WakeupWaitEvent, ...] = (),
) -> Snapshot:
    """A Snapshot as the collector makes it: each trace carries its thread's events."""
    events = Events(
        preemptions=preemptions,
        preemptions_total=len(preemptions),
        wakeup_waits=wakeup_waits,
        wakeup_waits_total=len(wakeup_waits),
    )
    return Snapshot(
        host="node-a",
        kernel="6.1.0",
        cpus=2,
        window_s=1.0,
        probes={"sched": {"status": "ok", "events": 10, "lost": 0, "malformed": 0}},
        workloads=workloads(switches),
        events=events,
        traces=attach_events(traces, events),
        traces_total=len(traces),
    )


def preemption(ts_ns: int, *, tid: int = 4243, delay_us: float = 2500.0) -> PreemptionEvent:
    return PreemptionEvent(
        ts_ns=ts_ns,
        pid=4242,
        tid=tid,
        cpu=3,
        comm="wasmtime",
        delay_us=delay_us,
        preemptor_pid=999,
        preemptor_tid=1000,
        preemptor_comm="stress-ng",
        workload=WL_POD,
    )


def wakeup_wait(
    ts_ns: int, *, pid: int = 4242, tid: int = 4243, wakeup: int = 17, idle: bool = False
) -> WakeupWaitEvent:
    """An over-threshold wake-up wait that ended (the thread ran) at ``ts_ns``; ``idle``: the
    target CPU was idle when it was woken and when it ran."""
    holder = (0, 0, None, None) if idle else (999, 1000, "stress-ng", WL_PLAIN)
    replaced = (0, 0, "swapper/3", None) if idle else (999, 1000, "stress-ng", WL_PLAIN)
    return WakeupWaitEvent(
        ts_ns=ts_ns,
        pid=pid,
        tid=tid,
        cpu=3,
        comm="wasmtime",
        delay_us=1500.0,
        workload=WL_POD,
        waker_pid=777,
        waker_tid=778,
        waker_comm="envoy",
        holder_pid=holder[0],
        holder_tid=holder[1],
        holder_comm=holder[2],
        holder_workload=holder[3],
        replaced_pid=replaced[0],
        replaced_tid=replaced[1],
        replaced_comm=replaced[2],
        replaced_workload=replaced[3],
        thread_wakeups=wakeup,
    )


@pytest.fixture
def receiver():
    rx = OtlpReceiver()
    yield rx
    rx.stop()


@pytest.fixture
def make_exporter():
    made: list[OtlpExporter] = []

    def make(endpoint: str, book: SeriesBook | None = None, **kw: object) -> OtlpExporter:
        kw.setdefault("interval_s", 0.5)
        kw.setdefault("timeout_s", 1.0)
        exp = OtlpExporter(endpoint, book=book or SeriesBook(), **kw)  # type: ignore[arg-type]
        made.append(exp)
        return exp

    yield make
    for exp in made:
        exp.close(timeout_s=1.0)


def received_ids(rx: OtlpReceiver) -> set[str]:
    return set(rx.span_ids())


# -- 1. spans ------------------------------------------------------------------------------
def test_spans_carry_the_requests_ids_times_attributes_and_preemptions(receiver, make_exporter):
    exp = make_exporter(receiver.endpoint, headers={"X-Tenant": "team-a"})
    t1 = trace(tracestate="vendor=opaque")
    t2 = trace(
        parent_span_id=None,
        source="trace_ctx",
        pid=5000,
        tid=5001,
        workload=WL_PLAIN,
        duration_ms=1.75,
        preempted_ms=None,
        migrations=None,
        bypassed=None,
        method="POST",
        route="POST /cart",
        status=503,
    )
    bad = trace(trace_id="0" * 32)  # refused by W3C: never exported, counted
    inside = preemption(t1.start_ns + 5_000_000)
    before = preemption(t1.start_ns - 1_000_000)  # same thread, before the request
    other_thread = preemption(t1.start_ns + 6_000_000, tid=4299)
    snap = snapshot((t1, t2, bad), (inside, before, other_thread))

    off_before = time.time_ns() - time.monotonic_ns()
    exp.submit(snap)
    off_after = time.time_ns() - time.monotonic_ns()

    want = {t1.span_id, t2.span_id}
    assert wait_until(lambda: want <= received_ids(receiver), 10), receiver.spans()
    spans = {s.span_id.hex(): (res, s) for res, s in receiver.spans()}
    assert bad.span_id not in spans
    assert exp.stats()["spans_dropped"] == 1
    assert exp.stats()["spans_exported"] == 2

    tol = 2_000_000  # the offset is measured by the exporter between off_before and off_after
    lo, hi = min(off_before, off_after) - tol, max(off_before, off_after) + tol
    # One resource per workload: its service (the container's name: this pod has no app
    # label), where it runs; wasmtop's own resource only on its metrics.
    res1, res2 = spans[t1.span_id][0], spans[t2.span_id][0]
    assert {k: v for k, v in res1.items() if not k.startswith("telemetry.")} == {
        "service.name": "app",
        "host.name": socket.gethostname(),
        "process.executable.name": "wasmtime",
        "wasmtop.workload": WL_POD,
        "wasmtop.workload.kind": "wasm",
        "wasmtop.runtime": "wasmtime",
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "cart-7d9f",
        "k8s.pod.uid": "uid-123",
        "k8s.container.name": "app",
        "container.id": "c0ffee",
    }
    assert res2["service.name"] == "edge" and "k8s.pod.name" not in res2  # a plain process
    for t in (t1, t2):
        res, s = spans[t.span_id]
        assert s.trace_id.hex() == t.trace_id
        assert s.parent_span_id.hex() == (t.parent_span_id or "")
        assert s.kind == Span.SPAN_KIND_SERVER
        assert s.name == t.route
        assert lo <= s.start_time_unix_nano - t.start_ns <= hi
        assert s.end_time_unix_nano - s.start_time_unix_nano == round(t.duration_ms * 1e6)

    _, s1 = spans[t1.span_id]
    assert attrs(s1.attributes) == {
        "http.request.method": "GET",
        "http.route": "/item",
        "http.response.status_code": 200,
        "wasmtop.preempted_ms": 3.25,
        "wasmtop.migrations": 2,
        "wasmtop.bypassed": True,
        "wasmtop.workload": WL_POD,
        "process.pid": 4242,
        "thread.id": 4243,
        "wasmtop.trace_source": "traceparent",
        "url.scheme": "http",
        "network.protocol.name": "http",
    }
    assert s1.trace_state == "vendor=opaque"
    assert s1.status.code == Status.STATUS_CODE_UNSET
    # Exactly the preemption of its thread inside the request, at its own time.
    assert [e.name for e in s1.events] == ["preemption"]
    ev = s1.events[0]
    assert ev.time_unix_nano - s1.start_time_unix_nano == inside.ts_ns - t1.start_ns
    assert attrs(ev.attributes) == {
        "delay_ms": 2.5,
        "cpu": 3,
        "preemptor_pid": 999,
        "preemptor_comm": "stress-ng",
    }

    _, s2 = spans[t2.span_id]
    assert attrs(s2.attributes) == {
        "http.request.method": "POST",
        "http.route": "/cart",
        "http.response.status_code": 503,
        "wasmtop.workload": WL_PLAIN,
        "process.pid": 5000,
        "thread.id": 5001,
        "wasmtop.trace_source": "trace_ctx",
        "url.scheme": "http",
        "network.protocol.name": "http",
    }
    assert list(s2.events) == []
    assert s2.status.code == Status.STATUS_CODE_ERROR
    assert any(md.get("x-tenant") == "team-a" for md in receiver.metadata)


def test_spans_carry_the_queued_wakeup_and_the_threads_wakeup_waits(receiver, make_exporter):
    exp = make_exporter(receiver.endpoint)
    t = trace(queued_ms=1.5, queued_wakeup=17, duration_ms=10.0)
    # The wake-up that let the thread read the request: woken at the span's start, ran 1.5 ms
    # later (the event is at the time it ran).
    charged = wakeup_wait(t.start_ns + 1_500_000, wakeup=17)
    preempted = preemption(t.start_ns + 5_000_000)
    later = wakeup_wait(t.start_ns + 8_000_000, wakeup=18, idle=True)
    outside = (
        wakeup_wait(t.start_ns - 1, wakeup=16),  # before the span
        wakeup_wait(t.start_ns + 10_000_001, wakeup=19),  # after it
        wakeup_wait(t.start_ns + 2_000_000, tid=4299),  # another thread
        wakeup_wait(t.start_ns + 2_000_000, pid=5000),  # same tid, another process
    )
    plain = trace(tid=4250, queued_ms=None, queued_wakeup=None)  # the read did not block
    exp.submit(snapshot((t, plain), (preempted,), wakeup_waits=(later, *outside, charged)))
    want = {t.span_id, plain.span_id}
    assert wait_until(lambda: want <= received_ids(receiver), 10), receiver.spans()
    spans = {s.span_id.hex(): s for _, s in receiver.spans()}

    s = spans[t.span_id]
    got = attrs(s.attributes)
    assert got["wasmtop.queued_ms"] == 1.5
    assert got["wasmtop.queued_wakeup"] == 17
    assert got["wasmtop.preempted_ms"] == 3.25
    # Its thread's events inside the span, one timeline, each at its own time.
    assert [(e.name, e.time_unix_nano - s.start_time_unix_nano) for e in s.events] == [
        ("wakeup_wait", 1_500_000),
        ("preemption", 5_000_000),
        ("wakeup_wait", 8_000_000),
    ]
    assert attrs(s.events[0].attributes) == {
        "delay_ms": 1.5,
        "cpu": 3,
        "wakeup": 17,
        "waker_pid": 777,
        "waker_comm": "envoy",
        "holder_pid": 999,
        "holder_comm": "stress-ng",
        "holder_workload": WL_PLAIN,
        "replaced_pid": 999,
        "replaced_comm": "stress-ng",
        "replaced_workload": WL_PLAIN,
    }
    # An idle CPU: pid 0, and the names it does not have are left out.
    assert attrs(s.events[2].attributes) == {
        "delay_ms": 1.5,
        "cpu": 3,
        "wakeup": 18,
        "waker_pid": 777,
        "waker_comm": "envoy",
        "holder_pid": 0,
        "replaced_pid": 0,
        "replaced_comm": "swapper/3",
    }

    p = spans[plain.span_id]
    assert "wasmtop.queued_ms" not in attrs(p.attributes)
    assert "wasmtop.queued_wakeup" not in attrs(p.attributes)
    assert list(p.events) == []  # another thread: none of these waits are its


def test_span_events_are_the_ones_the_trace_carries_and_no_others(receiver, make_exporter):
    """The exporter joins nothing itself: a trace's span events are its ``preemptions`` and
    ``wakeup_waits`` (the collector's join), whatever ``Snapshot.events`` holds."""
    exp = make_exporter(receiver.endpoint)
    bare = trace(duration_ms=10.0)  # carries none, though the Snapshot has its thread's events
    inside = (preemption(bare.start_ns + 2_000_000), wakeup_wait(bare.start_ns + 1_000_000))
    carrying = trace(duration_ms=10.0)
    carried = (preemption(carrying.start_ns + 4_000_000), wakeup_wait(carrying.start_ns + 3_000))
    carrying = carrying._replace(preemptions=carried[:1], wakeup_waits=carried[1:])
    snap = Snapshot(
        host="node-a",
        kernel="6.1.0",
        cpus=2,
        window_s=1.0,
        probes={},
        workloads=workloads(),
        events=Events(preemptions=inside[:1], wakeup_waits=inside[1:]),  # not carried's
        traces=(bare, carrying),
        traces_total=2,
    )
    exp.submit(snap)
    want = {bare.span_id, carrying.span_id}
    assert wait_until(lambda: want <= received_ids(receiver), 10), receiver.spans()
    spans = {s.span_id.hex(): s for _, s in receiver.spans()}
    assert list(spans[bare.span_id].events) == []
    s = spans[carrying.span_id]
    assert [(e.name, e.time_unix_nano - s.start_time_unix_nano) for e in s.events] == [
        ("wakeup_wait", 3_000),
        ("preemption", 4_000_000),
    ]


# -- 2. metrics ----------------------------------------------------------------------------
def _sample(book: SeriesBook, name: str, workload: str) -> object:
    fam = next(f for f in book.families() if f.name == name)
    return next(s.value for s in fam.samples if s.labels[0] == workload)


def _point(rx: OtlpReceiver, name: str, workload: str, since: int = 0):
    got = rx.latest_metric(name, since)
    if got is None:
        return None
    res, m = got
    kind = m.WhichOneof("data")
    for p in getattr(m, kind).data_points:
        if attrs(p.attributes).get("wasmtop.workload") == workload:
            return res, m, p
    return None


def test_metrics_are_the_books_families(receiver, make_exporter):
    book = SeriesBook()
    book.add(snapshot(switches=100))
    book.add(snapshot(switches=50))
    calls = []
    families = book.families

    def counting_families():
        calls.append(threading.current_thread().name)
        # A family of a kind the exporter does not know must not cost the others.
        return [*families(), Family("wasmtop_future", "exotic", "?", (), [Sample((), 1.0)])]

    book.families = counting_families  # type: ignore[method-assign]
    exp = make_exporter(receiver.endpoint, book, resource={"k8s.node.name": "node-a"})

    want = _sample(book, "wasmtop_context_switches", WL_POD)
    assert want == 150.0
    got = wait_until(lambda: _point(receiver, "wasmtop_context_switches", WL_POD), 10)
    assert got, [m.name for _, m in receiver.metrics()]
    res, metric, point = got
    assert res["service.name"] == "wasmtop"
    assert res["host.name"]
    assert res["k8s.node.name"] == "node-a"
    assert metric.unit == ""  # a count: no unit (1 would become _ratio in Prometheus)
    assert metric.sum.is_monotonic
    assert metric.sum.aggregation_temporality == 2  # CUMULATIVE
    assert point.as_double == want
    assert attrs(point.attributes) == {
        "wasmtop.workload": WL_POD,
        "k8s.namespace.name": "shop",
        "k8s.pod.name": "cart-7d9f",
        "k8s.container.name": "app",
        "wasmtop.runtime": "wasmtime",
    }
    # Empty labels are left out: the plain process has no pod and no runtime.
    _, _, plain = _point(receiver, "wasmtop_context_switches", WL_PLAIN)
    assert attrs(plain.attributes) == {"wasmtop.workload": WL_PLAIN}
    assert plain.as_double == _sample(book, "wasmtop_context_switches", WL_PLAIN) == 300.0

    _, gauge_metric, gauge = _point(receiver, "wasmtop_affinity_stability_ratio", WL_POD)
    assert gauge_metric.WhichOneof("data") == "gauge"
    assert gauge_metric.unit == "1"
    assert gauge.as_double == _sample(book, "wasmtop_affinity_stability_ratio", WL_POD)

    _, cpu_metric, cpu = _point(receiver, "wasmtop_cpu_seconds", WL_POD)
    assert cpu_metric.unit == "s"
    assert cpu.as_double == pytest.approx(4.0)  # 2 s of CPU in each of two Snapshots

    # Histograms keep their buckets: OTLP per-bucket counts = differences of the book's le.
    h = _sample(book, "wasmtop_preempt_delay_seconds", WL_POD)
    assert isinstance(h, Histogram)
    _, hist_metric, hp = _point(receiver, "wasmtop_preempt_delay_seconds", WL_POD)
    assert hist_metric.unit == "s"
    assert hist_metric.histogram.aggregation_temporality == 2
    assert list(hp.explicit_bounds) == list(PREEMPT_BOUNDS_S)
    assert hp.count == h.count == 8
    assert hp.sum == pytest.approx(h.sum)
    cumulative = list(itertools.accumulate(hp.bucket_counts))
    assert cumulative[:-1] == list(h.counts)
    assert cumulative[-1] == h.count
    assert not hp.HasField("min") and not hp.HasField("max")

    # The sliding-window summary: gauges under the names Prometheus gives its series.
    _, q_metric, _ = _point(receiver, "wasmtop_request_latency_seconds", WL_POD)
    assert q_metric.unit == "s"
    quantiles = {
        attrs(p.attributes)["quantile"]: p.as_double
        for p in q_metric.gauge.data_points
        if attrs(p.attributes)["wasmtop.workload"] == WL_POD
    }
    assert quantiles == {"0.5": 0.002, "0.9": 0.004, "0.99": 0.009, "0.999": 0.015, "1": 0.018}
    # count and sum since start: the histogram's (here, no request ended in these windows).
    summary = next(x for x in book.families() if x.name == "wasmtop_request_latency_seconds")
    mine = next(x.value for x in summary.samples if x.labels[0] == WL_POD)
    count = _point(receiver, "wasmtop_request_latency_seconds_count", WL_POD)[2].as_double
    total = _point(receiver, "wasmtop_request_latency_seconds_sum", WL_POD)[2].as_double
    assert (count, total) == (mine.count, mine.sum)
    assert not any(m.name == "wasmtop_future" for _, m in receiver.metrics())
    assert exp.stats()["metric_points_dropped"] >= 1  # its point, counted at each collection

    # Host families too, and the start time of a cumulative series stays put.
    n = len(receiver.metric_requests)
    later = wait_until(lambda: _point(receiver, "wasmtop_context_switches", WL_POD, n), 10)
    assert later
    assert later[2].start_time_unix_nano == point.start_time_unix_nano
    assert later[2].time_unix_nano > point.time_unix_nano
    snaps = receiver.latest_metric("wasmtop_snapshots")
    assert snaps and snaps[1].sum.data_points[0].as_double == 2.0

    # families() is read once per collection, not once per family.
    st = exp.stats()
    exporter_calls = [name for name in calls if name == "wasmtop-otlp-metrics"]
    assert 1 <= len(exporter_calls) <= st["metric_exports"] + st["metric_exports_failed"] + 1


def test_a_collection_goes_in_requests_of_at_most_the_batch_and_loses_no_series(
    receiver, make_exporter, monkeypatch
):
    """Receivers refuse a request past 4 MiB by default: one request for every workload of a
    busy node would be refused at every collection."""
    monkeypatch.setattr(otlp, "METRIC_BATCH_POINTS", 100)
    book = SeriesBook()
    book.add(many_workloads(30))
    exp = make_exporter(receiver.endpoint, book, interval_s=0.5)
    assert wait_until(lambda: exp.stats()["metric_exports"] >= 1, 10)
    exports = exp.stats()["metric_exports"]
    with receiver._lock:
        requests = list(receiver.metric_requests)

    def points(request) -> list[tuple[str, str]]:
        return [
            (m.name, attrs(p.attributes).get("wasmtop.workload", ""))
            for rm in request.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in getattr(m, m.WhichOneof("data")).data_points
        ]

    sizes = [len(points(r)) for r in requests]
    assert max(sizes) <= 100, sizes
    assert len(requests) >= 2 * exports, (len(requests), exports)  # each collection split
    received = {pt for r in requests for pt in points(r)}
    sent = {
        (fam.name, sample.labels[0])
        for fam in book.families()
        if fam.kind != "summary" and fam.label_names[:1] == ("workload",)  # summary: renamed
        for sample in fam.samples
    }
    assert len(sent) > 300  # 30 workloads: several batches' worth
    assert sent <= received, sorted(sent - received)[:5]


def test_wakeup_and_run_queue_metrics_arrive_as_the_books_series(receiver, make_exporter):
    book = SeriesBook()
    book.add(snapshot())
    book.add(snapshot())
    make_exporter(receiver.endpoint, book)
    got = wait_until(lambda: _point(receiver, "wasmtop_waited_behind_seconds", WL_POD), 10)
    assert got, [m.name for _, m in receiver.metrics()]

    # The wake-up delay histogram: the preemption histogram's bounds, kernel buckets re-binned
    # by their upper edge (7 under 10 µs, 1 under 2.5 ms, 2 under 5 ms, per Snapshot).
    _, metric, hp = _point(receiver, "wasmtop_wakeup_delay_seconds", WL_POD)
    assert metric.unit == "s"
    assert metric.histogram.aggregation_temporality == 2  # CUMULATIVE
    assert list(hp.explicit_bounds) == list(DELAY_BOUNDS_S) == list(PREEMPT_BOUNDS_S)
    assert list(hp.bucket_counts) == [14, 0, 0, 0, 2, 4, 0, 0, 0, 0, 0, 0, 0, 0]
    assert hp.count == 20
    assert hp.sum == pytest.approx(0.007)

    _, metric, point = _point(receiver, "wasmtop_runq_delay_seconds", WL_POD)
    assert (metric.unit, metric.sum.is_monotonic) == ("s", True)
    assert point.as_double == pytest.approx(0.012)
    _, metric, point = _point(receiver, "wasmtop_wakeups_over_threshold", WL_POD)
    assert (metric.unit, metric.sum.is_monotonic) == ("", True)
    assert point.as_double == 4

    # Who held the CPU: one point per culprit the Snapshots listed, the culprit an attribute.
    _, metric, _ = got
    assert (metric.unit, metric.sum.is_monotonic) == ("s", True)
    by_culprit = {}
    for p in metric.sum.data_points:
        a = attrs(p.attributes)
        if a["wasmtop.workload"] == WL_POD:
            assert a == {
                "wasmtop.workload": WL_POD,
                "k8s.namespace.name": "shop",
                "k8s.pod.name": "cart-7d9f",
                "k8s.container.name": "app",
                "wasmtop.runtime": "wasmtime",
                "culprit": a["culprit"],
            }
            by_culprit[a["culprit"]] = p.as_double
    assert by_culprit == pytest.approx({WL_PLAIN: 0.009, "idle": 0.002, "unattributed": 0.001})


# -- 3. receiver outage --------------------------------------------------------------------
def test_outage_queue_stays_bounded_failures_counted_and_export_resumes(receiver, make_exporter):
    book = SeriesBook()
    exp = make_exporter(receiver.endpoint, book, max_queue_spans=40)
    first = trace()
    book.add(snapshot((first,)))
    exp.submit(snapshot((first,)))
    assert wait_until(lambda: first.span_id in received_ids(receiver), 10)
    submitted = 1

    receiver.stop()
    for _ in range(30):  # 150 spans while the receiver is down: more than the queue holds
        snap = snapshot(tuple(trace() for _ in range(5)))
        book.add(snap)
        exp.submit(snap)
        submitted += 5
        assert exp.queued() <= 40
    st = exp.stats()
    assert st["spans_dropped"] >= 150 - 40
    assert wait_until(
        lambda: exp.stats()["span_exports_failed"] > 0 and exp.stats()["metric_exports_failed"] > 0,
        10,
    ), exp.stats()
    assert exp.stats()["metric_points_dropped"] > 0
    assert exp.queued() <= 40

    receiver.start()  # same port
    metrics_before = len(receiver.metric_requests)
    # The spans held through the outage go first...
    held = exp.queued()
    assert held > 0
    assert wait_until(lambda: exp.queued() == 0, 15), exp.stats()
    assert exp.stats()["spans_exported"] == 1 + held
    # ...then new ones flow again, and metrics too.
    fresh = tuple(trace() for _ in range(3))
    exp.submit(snapshot(fresh))
    submitted += 3
    want = {t.span_id for t in fresh}
    assert wait_until(lambda: want <= received_ids(receiver), 15), exp.stats()
    assert wait_until(lambda: len(receiver.metric_requests) > metrics_before, 15)
    # Every span is accounted for: sent or dropped, none lost silently.
    st = exp.stats()
    assert st["spans_exported"] + st["spans_dropped"] == submitted
    assert st["spans_exported"] == len(received_ids(receiver))


# -- 4. close with the receiver down -------------------------------------------------------
def test_close_returns_with_the_receiver_down(receiver, make_exporter):
    receiver.stop()
    exp = make_exporter(receiver.endpoint, timeout_s=5.0)  # one export may retry for 5 s
    n = 0
    for _ in range(5):
        exp.submit(snapshot(tuple(trace() for _ in range(4))))
        n += 4
    assert wait_until(lambda: exp.stats()["span_exports_failed"] > 0, 10)

    closer = threading.Thread(target=exp.close, kwargs={"timeout_s": 1.0})
    closer.start()
    closer.join(timeout=15)
    assert not closer.is_alive(), "close() hung with the receiver down"
    st = exp.stats()
    assert st["spans_exported"] == 0
    assert st["spans_dropped"] == n  # what could not be sent is counted, not lost
    assert exp.queued() == 0
    assert wait_until(
        lambda: not exp._span_thread.is_alive() and not exp._metric_thread.is_alive(), 10
    )
    exp.submit(snapshot((trace(),)))  # after close: dropped and counted, no error
    assert exp.stats()["spans_dropped"] == n + 1


# -- 5. retry ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "refusals, timeout_s, sdk_alone",
    [
        (1, 5.0, True),  # the SDK's own retry within timeout_s absorbs it
        (4, 1.0, False),  # the SDK gives up; the exporter's backoff retries the batch
    ],
)
def test_unavailable_then_ok_the_batch_is_retried(
    receiver, make_exporter, refusals, timeout_s, sdk_alone
):
    receiver.fail_next("traces", refusals, grpc.StatusCode.UNAVAILABLE)
    exp = make_exporter(receiver.endpoint, timeout_s=timeout_s)
    traces = tuple(trace() for _ in range(3))
    exp.submit(snapshot(traces))
    want = {t.span_id for t in traces}
    assert wait_until(lambda: want <= received_ids(receiver), 20), exp.stats()
    got_traces = {s.trace_id.hex() for _, s in receiver.spans()}
    assert {t.trace_id for t in traces} <= got_traces
    assert receiver.attempts["traces"] == refusals + 1
    st = exp.stats()
    assert st["spans_exported"] == 3 and st["spans_dropped"] == 0
    if sdk_alone:
        assert st["span_exports_failed"] == 0
    else:
        assert st["span_exports_failed"] >= 1


def test_a_reloaded_exporter_counts_on_from_the_one_it_replaces(receiver, make_exporter):
    old = make_exporter(receiver.endpoint)
    t = trace()
    old.submit(snapshot((t,)))
    assert wait_until(lambda: old.stats()["spans_exported"] == 1, 10)
    old.close(timeout_s=1.0)
    new = make_exporter(receiver.endpoint)
    new.carry_over(old)
    assert new.stats()["spans_exported"] == 1  # /metrics' counter does not go back to 0
    new.submit(snapshot((trace(),)))
    assert wait_until(lambda: new.stats()["spans_exported"] == 2, 10)
