"""OTLP/gRPC export: the SeriesBook's families as OTLP metrics, and one SERVER span per traced
request (``Snapshot.traces``) with the over-threshold preemptions and wake-up waits the trace
carries (``Trace.preemptions``, ``Trace.wakeup_waits``: joined by the collector, mapped here as
they are) as span events.

Nothing here runs on the caller's thread but ``submit``, which only puts lightweight records
into a bounded queue. Two threads of our own do the network work with the OpenTelemetry SDK's
``OTLPSpanExporter`` / ``OTLPMetricExporter`` (encoding, gRPC channel, retries of one export
within ``timeout_s``):

- the span worker takes up to ``BATCH_SPANS`` records off the queue, builds ``ReadableSpan``s
  with the request's own ids and sends them. A batch that fails is retried with exponential
  backoff and jitter (capped at ``interval_s``, so sending resumes within about one interval of
  the receiver coming back) until it has failed for ``SPAN_RETRY_DEADLINE_S``; then it is
  dropped and counted. While a batch waits, new spans queue up to ``max_queue_spans`` (the
  batch in flight included), and further ones are dropped and counted: memory stays bounded.
- the metrics worker, every ``interval_s``, reads ``book.families()`` once and sends them.

Metrics are built from the families directly (``Sum``/``Gauge``/``Histogram`` data of the SDK's
export types), not through SDK instruments: the SDK keeps an aggregation for every attribute
set an asynchronous instrument ever reported (cumulative temporality never prunes them), so
with workloads coming and going its memory grows without end and, past the cardinality limit
(2,000 by default), every new workload's points are folded into ``otel.metric.overflow=true``.
Built from the families, the points are exactly the book's series (stale workloads vanish as
they do from /metrics), histograms keep their buckets, and each series' start time is right
(a series the book restarts gets a new start time).
"""

from __future__ import annotations

import inspect
import logging
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, Optional

import grpc
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as OtelHistogram
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, TraceFlags, TraceState
from opentelemetry.trace.status import Status, StatusCode

from .. import __version__
from ..collector.model import Snapshot, Trace, Workload
from ..collector.workloads import matches, workload_names
from .otlp_settings import OtlpTargets, SignalTarget, resolve
from .series import Family, Histogram, Sample, SeriesBook, Summary

log = logging.getLogger(__name__)

BATCH_SPANS = 512  # spans per export request at most
# Metric points per export request at most: a named workload has ~40 points of ~300 bytes of
# attributes each, and receivers refuse a request past 4 MiB by default (the OpenTelemetry
# Collector's gRPC limit, counted unpacked), which one request for every workload of a busy
# node would pass. A collection is sent in as many requests as it needs.
METRIC_BATCH_POINTS = 2000
SPAN_RETRY_DEADLINE_S = 60.0  # a batch failing this long is dropped (counted)
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0  # and never more than interval_s
# gRPC's own reconnect backoff grows to 120 s; the SDK also rebuilds the channel after an
# UNAVAILABLE, but keep the channel's backoff short so a receiver that is back is reached at once.
CHANNEL_OPTIONS = (
    ("grpc.initial_reconnect_backoff_ms", 500),
    ("grpc.min_reconnect_backoff_ms", 500),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
SCOPE = InstrumentationScope("wasmtop", __version__)
CUMULATIVE = AggregationTemporality.CUMULATIVE

# SeriesBook label -> OTLP attribute (OpenTelemetry semantic conventions where one exists).
# Labels not listed keep their name (quantile, call, probe, state).
ATTRIBUTE_NAMES = {
    "workload": "wasmtop.workload",
    "namespace": "k8s.namespace.name",
    "pod": "k8s.pod.name",
    "container": "k8s.container.name",
    "runtime": "wasmtop.runtime",
    "kind": "wasmtop.workload.kind",
    "runtime_class": "wasmtop.runtime_class",  # no semantic convention names a RuntimeClass
}


def unit_of(name: str) -> str:
    """UCUM unit from a family's name. Dimensionless counts get no unit: ``1`` is kept for
    ratios, because OTLP-to-Prometheus translation appends ``_ratio`` to a gauge of unit 1."""
    if name.endswith("_bytes_per_second"):
        return "By/s"
    if name.endswith("_seconds"):
        return "s"
    if name.endswith("_bytes"):
        return "By"
    if name.endswith("_ratio"):
        return "1"
    return ""


def attributes_of(label_names: Sequence[str], values: Sequence[str]) -> dict[str, str]:
    """A sample's labels as OTLP attributes; empty values are left out."""
    return {ATTRIBUTE_NAMES.get(k, k): v for k, v in zip(label_names, values) if v != ""}


class _Pending(NamedTuple):
    """A trace waiting for the span worker (converted there, off the caller's thread)."""

    trace: Trace
    offset_ns: int  # Unix epoch ns - CLOCK_MONOTONIC ns, measured at submit
    resource: Optional[Resource] = None  # its workload's; None: wasmtop's own


# Resources made for workloads, kept while they are asked for; past this many the map is
# emptied (any number of workloads may come and go; the live ones are made again at once).
MAX_WORKLOAD_RESOURCES = 2048


class OtlpExporter:
    """Sends wasmtop's metrics and request spans to an OTLP/gRPC receiver. Thread-safe; the
    caller's ``submit`` never blocks on the network and no failure reaches the caller."""

    def __init__(
        self,
        endpoint: str | None = None,
        *,
        book: SeriesBook,
        insecure: bool = True,
        headers: Mapping[str, str] | None = None,
        interval_s: float = 10.0,
        timeout_s: float = 5.0,
        max_queue_spans: int = 8192,
        resource: Mapping[str, str | int] | None = None,
        targets: OtlpTargets | None = None,
        service_names: Mapping[str, str] | None = None,
    ) -> None:
        """``targets``: where each signal goes and how (exporters/otlp_settings.py: the config
        over OTEL_*). Without it, ``endpoint``, ``insecure``, ``headers`` and ``timeout_s`` make
        gRPC targets, the environment unread."""
        if interval_s <= 0 or timeout_s <= 0 or max_queue_spans < 1:
            raise ValueError("interval_s and timeout_s must be > 0, max_queue_spans >= 1")
        if targets is None:
            given = {"endpoint": endpoint, "insecure": insecure, "headers": dict(headers or {}),
                     "timeout_s": timeout_s}  # fmt: skip
            targets = resolve(given, env={})
            if targets is None:
                raise ValueError("an endpoint or targets is needed")
        self.targets = targets
        self.endpoint = targets.traces.endpoint
        self.book = book
        self.interval_s = float(interval_s)
        self.timeout_s = targets.traces.timeout_s
        self.max_queue_spans = int(max_queue_spans)
        # wasmtop's own attributes, under the caller's (the node), under OTEL_* and the file's.
        self.resource = Resource.create(
            {
                "service.name": "wasmtop",
                "service.version": __version__,
                "host.name": socket.gethostname(),
                **(resource or {}),
                **targets.resource,
            }
        )
        self.service_names = dict(service_names or {})
        self._resources: dict[tuple, Resource] = {}  # workload -> its spans' resource
        self._span_exporter = _span_exporter(targets.traces)
        self._metric_exporter = _metric_exporter(targets.metrics)

        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # span worker: work arrived / closing
        self._queue: deque[_Pending] = deque()
        self._inflight_n = 0  # spans of the batch being sent or waiting for a retry
        self._closing = False
        self._closed = False
        self._stop_metrics = threading.Event()
        self._stats = dict.fromkeys(
            (
                "spans_exported",
                "spans_dropped",
                "span_exports_failed",
                "metric_exports",
                "metric_exports_failed",
                "metric_points_dropped",
            ),
            0,
        )
        # Series start times for cumulative points: (name, labels) -> ns. A series the book
        # no longer has is forgotten, so when it comes back (restarted at 0) it starts anew.
        self._starts: dict[tuple[str, tuple[str, ...]], int] = {}
        self._last_collect_ns = time.time_ns()
        self._unconvertible: set[str] = set()  # families warned about once

        self._span_thread = threading.Thread(
            target=self._span_loop, name="wasmtop-otlp-spans", daemon=True
        )
        self._metric_thread = threading.Thread(
            target=self._metric_loop, name="wasmtop-otlp-metrics", daemon=True
        )
        self._span_thread.start()
        self._metric_thread.start()

    # -- caller side -----------------------------------------------------------------------
    def submit(self, snapshot: Snapshot) -> None:
        """Queue the Snapshot's traces as spans (bounded; drops counted). Never blocks on the
        network and never raises."""
        try:
            self._submit(snapshot)
        except Exception:  # never the caller's problem
            log.exception("OTLP: a Snapshot's traces could not be queued")

    def _submit(self, snap: Snapshot) -> None:
        traces = snap.traces
        if not traces:
            return
        offset = time.time_ns() - time.monotonic_ns()
        workloads = {w.key: w for w in snap.workloads}
        pending = []
        for t in traces:
            w = workloads.get(t.workload) if t.workload is not None else None
            pending.append(_Pending(t, offset, self._workload_resource(w)))
        with self._lock:
            if self._closed or self._closing:
                self._stats["spans_dropped"] += len(pending)
                return
            room = self.max_queue_spans - len(self._queue) - self._inflight_n
            if room < len(pending):
                self._stats["spans_dropped"] += len(pending) - max(room, 0)
                pending = pending[: max(room, 0)]
            if pending:
                self._queue.extend(pending)
                self._wake.notify()

    def _workload_resource(self, w: Workload | None) -> Resource | None:
        """The resource of a workload's spans: its service and where it runs (docs/otlp.md).
        None for a trace of no known workload (wasmtop's own resource then)."""
        if w is None:
            return None
        pod = w.pod
        key = (w.key, pod, w.comm, w.kind, w.runtime)
        made = self._resources.get(key)
        if made is None:
            if len(self._resources) >= MAX_WORKLOAD_RESOURCES:
                self._resources.clear()
            # The platform's attributes (OTEL_RESOURCE_ATTRIBUTES, otlp.resource, the node's)
            # hold for the workload too; the service, its version and instance are the workload's.
            own = ("service.name", "service.version", "service.instance.id")
            attrs = {k: v for k, v in self.resource.attributes.items() if k not in own}
            attrs |= {
                "service.name": service_name(w, self.service_names),
                "process.executable.name": w.comm,
                "wasmtop.workload": w.key,
                "wasmtop.workload.kind": w.kind,
                "wasmtop.runtime": w.runtime,
            }
            if pod is not None:
                attrs.update({
                    "k8s.namespace.name": pod.namespace,
                    "k8s.pod.name": pod.name,
                    "k8s.pod.uid": pod.uid,
                    "k8s.container.name": pod.container,
                    "container.id": pod.container_id,
                    "wasmtop.runtime_class": pod.runtime_class,
                })  # fmt: skip
            made = Resource({k: v for k, v in attrs.items() if v is not None and v != ""})
            self._resources[key] = made
        return made

    def queued(self) -> int:
        """Spans held now: queued plus the batch in flight (at most ``max_queue_spans``)."""
        with self._lock:
            return len(self._queue) + self._inflight_n

    def families(self) -> list[Family]:
        """Its figures for /metrics."""
        s = self.stats()
        # One unit per family: spans, span exports, metric exports, metric points.
        return [
            Family(
                "wasmtop_otlp_spans",
                "counter",
                "Spans since start, by outcome: exported (the receiver accepted them), dropped "
                "(lost for good: queue full, receiver down past the retries, stop).",
                ("outcome",),
                [
                    Sample(("exported",), float(s["spans_exported"])),
                    Sample(("dropped",), float(s["spans_dropped"])),
                ],
            ),  # fmt: skip
            Family(
                "wasmtop_otlp_span_exports_failed",
                "counter",
                "Span export requests that failed (their spans retried or dropped), since start.",
                (),
                [Sample((), float(s["span_exports_failed"]))],
            ),
            Family(
                "wasmtop_otlp_metric_exports",
                "counter",
                "Metric export requests since start, by outcome: ok, failed.",
                ("outcome",),
                [
                    Sample(("ok",), float(s["metric_exports"])),
                    Sample(("failed",), float(s["metric_exports_failed"])),
                ],
            ),  # fmt: skip
            Family(
                "wasmtop_otlp_metric_points_dropped",
                "counter",
                "Metric data points of failed exports (lost: the next export carries the "
                "cumulative values again), since start.",
                (),
                [Sample((), float(s["metric_points_dropped"]))],
            ),
        ]

    def carry_over(self, old: OtlpExporter | Mapping[str, int]) -> None:
        """Count on from ``old`` (the exporter a config reload replaced, or the counts of those
        before it): the counters of /metrics never go back."""
        before = old.stats() if isinstance(old, OtlpExporter) else dict(old)
        with self._lock:
            for k, n in before.items():
                self._stats[k] = self._stats.get(k, 0) + n

    def stats(self) -> dict[str, int]:
        """Cumulative counts since start."""
        with self._lock:
            return dict(self._stats)

    def close(self, timeout_s: float = 2.0) -> None:
        """Send what can be sent within ``timeout_s`` (queued spans, one last metrics export),
        then stop. Returns within about ``timeout_s`` even when the receiver is down; spans not
        sent by then are counted as dropped."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._wake.notify_all()
        deadline = time.monotonic() + max(timeout_s, 0.0)
        # Keep a little of the time to interrupt exports still running at the end.
        flush_until = deadline - min(0.25, timeout_s / 4)
        self._stop_metrics.set()  # the metrics worker makes its last export now
        for thread in (self._span_thread, self._metric_thread):
            thread.join(max(0.0, flush_until - time.monotonic()))
        # Interrupt whatever still waits on the network (the SDK closes the channel, which
        # cancels RPCs in progress, and ends its retry sleeps).
        for exporter in (self._span_exporter, self._metric_exporter):
            try:
                exporter.shutdown()
            except Exception:
                log.debug("OTLP: exporter shutdown failed", exc_info=True)
        for thread in (self._span_thread, self._metric_thread):
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            self._closed = True
            if not self._span_thread.is_alive():
                self._stats["spans_dropped"] += len(self._queue) + self._inflight_n
                self._queue.clear()
                self._inflight_n = 0

    # -- span worker -----------------------------------------------------------------------
    def _span_loop(self) -> None:
        failing_since: float | None = None
        attempt = 0
        batch: list[ReadableSpan] = []
        while True:
            if not batch:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    if not self._queue:
                        return  # closing, nothing left
                    n = min(BATCH_SPANS, len(self._queue))
                    entries = [self._queue.popleft() for _ in range(n)]
                    self._inflight_n = n  # still held: counts against max_queue_spans
                batch = self._to_spans(entries)  # off the lock: submit is never held up
                with self._lock:
                    self._stats["spans_dropped"] += n - len(batch)
                    self._inflight_n = len(batch)
                if not batch:
                    continue
            ok = self._send_spans(batch)
            with self._wake:
                if ok:
                    self._stats["spans_exported"] += len(batch)
                    self._inflight_n = 0
                    batch, failing_since, attempt = [], None, 0
                    continue
                self._stats["span_exports_failed"] += 1
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if self._closing:
                    # No more retries: what is left cannot be sent in time.
                    self._stats["spans_dropped"] += len(batch) + len(self._queue)
                    self._inflight_n = 0
                    self._queue.clear()
                    return
                if now - failing_since >= SPAN_RETRY_DEADLINE_S:
                    self._stats["spans_dropped"] += len(batch)
                    self._inflight_n = 0
                    batch, failing_since, attempt = [], None, 0
                    continue
                delay = self._backoff(attempt)
                attempt += 1
                self._wake.wait_for(lambda: self._closing, timeout=delay)

    def _backoff(self, attempt: int) -> float:
        cap = min(BACKOFF_MAX_S, self.interval_s)
        return min(cap, BACKOFF_INITIAL_S * 2**attempt) * random.uniform(0.8, 1.2)

    def _send_spans(self, spans: list[ReadableSpan]) -> bool:
        try:
            return self._span_exporter.export(spans) == SpanExportResult.SUCCESS
        except Exception:
            log.debug("OTLP: span export raised", exc_info=True)
            return False

    def _to_spans(self, entries: Iterable[_Pending]) -> list[ReadableSpan]:
        """Build spans; a trace that does not convert (ids that do not parse) is left out and
        counted as dropped by the caller."""
        out = []
        for p in entries:
            try:
                out.append(self._span(p))
            except Exception:  # bad ids (ValueError) or a field of an unexpected type
                log.debug("OTLP: trace %r not exported", p.trace.trace_id, exc_info=True)
        return out

    def _span(self, p: _Pending) -> ReadableSpan:
        t = p.trace
        trace_id = _hex_id(t.trace_id, 32)
        flags = TraceFlags(t.trace_flags & 0xFF if t.trace_flags is not None else 1)
        state = TraceState.from_header([t.tracestate]) if t.tracestate else TraceState()
        context = SpanContext(trace_id, _hex_id(t.span_id, 16), False, flags, state)
        parent = None
        if t.parent_span_id:
            parent = SpanContext(trace_id, _hex_id(t.parent_span_id, 16), True, flags, state)
        start = t.start_ns + p.offset_ns
        end = start + round(t.duration_ms * 1e6)
        attrs: dict[str, Any] = {}
        path = _path_of(t.method, t.route)
        if t.method:
            attrs["http.request.method"] = t.method
        if path:
            attrs["http.route"] = path  # the template (collector.route_templates, else folded)
        if t.method:  # an HTTP request: what the probe reads is cleartext HTTP/1.x
            attrs["url.scheme"] = "http"
            attrs["network.protocol.name"] = "http"
        if t.path:
            attrs["url.path"] = t.path  # as sent (collector.keep_paths)
        if t.version:
            attrs["network.protocol.version"] = t.version
        if t.server_address is not None:  # the Host header: the server the client named
            attrs["server.address"] = t.server_address
            if t.server_port is not None:
                attrs["server.port"] = t.server_port
        if t.local_address is not None:  # the connection, as the pod's namespace names it
            attrs["network.local.address"] = t.local_address
            if t.local_port is not None:
                attrs["network.local.port"] = t.local_port
        if t.client_address is not None:  # the peer: no proxy header is read
            attrs["client.address"] = attrs["network.peer.address"] = t.client_address
            if t.client_port is not None:
                attrs["client.port"] = attrs["network.peer.port"] = t.client_port
        if t.status is not None:
            attrs["http.response.status_code"] = t.status
        if t.preempted_ms is not None:
            attrs["wasmtop.preempted_ms"] = float(t.preempted_ms)
        if t.queued_ms is not None:
            attrs["wasmtop.queued_ms"] = float(t.queued_ms)
        if t.queued_wakeup is not None:
            attrs["wasmtop.queued_wakeup"] = t.queued_wakeup
        if t.migrations is not None:
            attrs["wasmtop.migrations"] = t.migrations
        if t.bypassed is not None:
            attrs["wasmtop.bypassed"] = t.bypassed
        if t.workload is not None:
            attrs["wasmtop.workload"] = t.workload
        attrs["process.pid"] = t.pid
        attrs["thread.id"] = t.tid
        attrs["wasmtop.trace_source"] = t.source
        events = [
            Event(
                "preemption",
                {
                    "delay_ms": e.delay_us / 1e3,
                    "cpu": e.cpu,
                    "preemptor_pid": e.preemptor_pid,
                    "preemptor_comm": e.preemptor_comm,
                },
                timestamp=e.ts_ns + p.offset_ns,
            )
            for e in t.preemptions
        ]
        for w in t.wakeup_waits:
            wait_attrs: dict[str, Any] = {
                "delay_ms": w.delay_us / 1e3,
                "cpu": w.cpu,
                "wakeup": w.thread_wakeups,
                "waker_pid": w.waker_pid,
                "waker_comm": w.waker_comm,
                "holder_pid": w.holder_pid,
                "replaced_pid": w.replaced_pid,
                "replaced_comm": w.replaced_comm,
            }
            for key, value in (
                ("holder_comm", w.holder_comm),
                ("holder_workload", w.holder_workload),
                ("replaced_workload", w.replaced_workload),
            ):
                if value is not None:
                    wait_attrs[key] = value
            events.append(Event("wakeup_wait", wait_attrs, timestamp=w.ts_ns + p.offset_ns))
        if t.preemptions and t.wakeup_waits:
            events.sort(key=lambda e: e.timestamp)  # one timeline
        # HTTP server spans: 5xx is an error of this span, 4xx is the client's.
        status = Status(StatusCode.ERROR) if t.status is not None and t.status >= 500 else Status()
        return ReadableSpan(
            name=_span_name(t.method, t.route, path),
            context=context,
            parent=parent,
            resource=p.resource or self.resource,
            attributes=attrs,
            events=events,
            kind=SpanKind.SERVER,
            status=status,
            start_time=start,
            end_time=end,
            instrumentation_scope=SCOPE,
        )

    # -- metrics worker --------------------------------------------------------------------
    def _metric_loop(self) -> None:
        while not self._stop_metrics.wait(self.interval_s):
            self._export_metrics()
        self._export_metrics()  # the last one, at close

    def _export_metrics(self) -> None:
        try:
            data, points = self._metrics_data()
        except Exception:
            log.exception("OTLP: metrics could not be built")
            return
        if not points:
            return
        try:
            ok = self._metric_exporter.export(data) == MetricExportResult.SUCCESS
        except Exception:
            log.debug("OTLP: metric export raised", exc_info=True)
            ok = False
        with self._lock:
            if ok:
                self._stats["metric_exports"] += 1
            else:
                self._stats["metric_exports_failed"] += 1
                self._stats["metric_points_dropped"] += points

    def _metrics_data(self) -> tuple[MetricsData, int]:
        """One collection: every family, read once, as OTLP metrics. Returns the data and its
        number of points."""
        families = self.book.families()  # consistent: the book holds its lock meanwhile
        now = time.time_ns()
        since = self._last_collect_ns  # a series new since the last collection began after it
        self._last_collect_ns = now
        starts: dict[tuple[str, tuple[str, ...]], int] = {}
        metrics: list[Metric] = []
        for fam in families:
            if not fam.samples:
                continue
            try:
                metrics += self._metrics_of(fam, now, since, starts)
            except Exception:  # one family we cannot convert must not cost the others
                with self._lock:
                    self._stats["metric_points_dropped"] += len(fam.samples)
                if fam.name not in self._unconvertible:
                    self._unconvertible.add(fam.name)
                    log.warning(
                        "OTLP: family %s (%s) not exported", fam.name, fam.kind, exc_info=True
                    )
        self._starts = starts
        points = sum(len(m.data.data_points) for m in metrics)
        scope = ScopeMetrics(SCOPE, metrics, "")
        return MetricsData([ResourceMetrics(self.resource, [scope], "")]), points

    def _metrics_of(
        self, fam: Family, now: int, since: int, starts: dict[tuple[str, tuple[str, ...]], int]
    ) -> list[Metric]:
        unit = unit_of(fam.name)
        if fam.kind == "gauge":
            return [Metric(fam.name, fam.help, unit, Gauge(_gauge_points(fam, now)))]
        if fam.kind == "summary":
            # The SDK has no Summary type: the book's summary goes out as gauges under the names
            # Prometheus gives a summary's series (the quantile as an attribute, _count, _sum).
            # Its quantiles are over the sliding window; _count and _sum are since start.
            quantiles, counts, sums = [], [], []
            for s in fam.samples:
                sm = s.value
                assert isinstance(sm, Summary)
                attrs = attributes_of(fam.label_names, s.labels)
                for q, v in sm.quantiles:
                    quantiles.append(NumberDataPoint({**attrs, "quantile": q}, None, now, v))  # type: ignore[arg-type]
                counts.append(NumberDataPoint(attrs, None, now, float(sm.count)))  # type: ignore[arg-type]
                sums.append(NumberDataPoint(attrs, None, now, float(sm.sum)))  # type: ignore[arg-type]
            return [
                Metric(fam.name, fam.help, unit, Gauge(quantiles)),
                Metric(f"{fam.name}_count", f"{fam.help} (count)", "", Gauge(counts)),
                Metric(f"{fam.name}_sum", f"{fam.help} (sum)", unit, Gauge(sums)),
            ]
        if fam.kind not in ("counter", "histogram"):
            raise ValueError(f"unknown family kind {fam.kind!r}")
        dps: list[Any] = []
        for s in fam.samples:
            key = (fam.name, s.labels)
            start = starts[key] = self._starts.get(key, since)
            attrs = attributes_of(fam.label_names, s.labels)
            if fam.kind == "histogram":
                assert isinstance(s.value, Histogram)
                dps.append(_histogram_point(s.value, attrs, start, now))
            else:
                dps.append(NumberDataPoint(attrs, start, now, float(s.value)))  # type: ignore[arg-type]
        if fam.kind == "histogram":
            return [Metric(fam.name, fam.help, unit, OtelHistogram(dps, CUMULATIVE))]
        return [Metric(fam.name, fam.help, unit, Sum(dps, CUMULATIVE, is_monotonic=True))]


def _gauge_points(fam: Family, now: int) -> list[NumberDataPoint]:
    return [
        NumberDataPoint(
            attributes=attributes_of(fam.label_names, s.labels),
            start_time_unix_nano=None,  # type: ignore[arg-type]  # gauges have none
            time_unix_nano=now,
            value=float(s.value),  # type: ignore[arg-type]
        )
        for s in fam.samples
    ]


def _histogram_point(
    h: Histogram, attrs: dict[str, str], start: int, now: int
) -> HistogramDataPoint:
    """The book's cumulative ``le`` counts as OTLP's per-bucket counts (one more bucket than
    bounds: the last is above the highest bound)."""
    per_bucket, prev = [], 0
    for c in h.counts:
        c = int(round(c))
        per_bucket.append(max(c - prev, 0))
        prev = c
    count = int(round(h.count))
    per_bucket.append(max(count - prev, 0))
    return HistogramDataPoint(
        attributes=attrs,
        start_time_unix_nano=start,
        time_unix_nano=now,
        count=count,
        sum=float(h.sum),
        bucket_counts=per_bucket,
        explicit_bounds=list(h.bounds),
        min=None,  # type: ignore[arg-type]  # not known: left unset in the request
        max=None,  # type: ignore[arg-type]
    )


def _hex_id(value: str, digits: int) -> int:
    if not isinstance(value, str) or len(value) != digits:
        raise ValueError(f"expected {digits} hex digits, got {value!r}")
    n = int(value, 16)
    if n == 0:
        raise ValueError("all-zero id")
    return n


def _path_of(method: str | None, route: str) -> str | None:
    """``route`` is ``METHOD path`` (or ``other`` past the per-workload cap): its path."""
    path = route
    if method and route.startswith(method + " "):
        path = route[len(method) + 1 :]
    elif " " in route:
        path = route.split(" ", 1)[1]
    return path if path.startswith("/") else None


def _span_name(method: str | None, route: str, path: str | None) -> str:
    if path is not None:
        return route  # "GET /item"
    return method or "HTTP"  # semantic conventions: the method alone when no route is known


def service_name(w: Workload, patterns: Mapping[str, str]) -> str:
    """The service a workload's spans belong to: the first of ``patterns`` (shell patterns over
    its name ``namespace/pod/container``, its key and its command) that matches, else its pod's
    ``app.kubernetes.io/name`` / ``app`` label, else its container's name, else its command."""
    names = workload_names(w.pod, w.key, w.comm)
    for pattern, service in patterns.items():
        if matches(pattern, names):
            return service
    pod = w.pod
    if pod is not None and (pod.app or pod.container):
        return str(pod.app or pod.container)
    return w.comm or "unknown_service"


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as f:
        return f.read()


def _grpc_common(t: SignalTarget) -> dict[str, Any]:
    credentials = None
    if not t.insecure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(t.ca_file),
            private_key=_read(t.client_key),
            certificate_chain=_read(t.client_cert),
        )
    return dict(
        endpoint=t.endpoint,
        insecure=t.insecure,
        credentials=credentials,
        headers=t.headers,
        timeout=t.timeout_s,
        # NoCompression, not None: None lets the SDK read OTEL_..._COMPRESSION itself.
        compression=grpc.Compression.Gzip
        if t.compression == "gzip"
        else grpc.Compression.NoCompression,
        channel_options=CHANNEL_OPTIONS,
    )


def _http_common(t: SignalTarget) -> dict[str, Any]:
    from opentelemetry.exporter.otlp.proto.http import Compression

    extra: dict[str, Any] = {}
    if t.client_cert is not None:
        extra = {"client_certificate_file": t.client_cert, "client_key_file": t.client_key}
    if t.ca_file is not None:
        # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE replace a session's CA file
        # (psf/requests#3829): the configured CA must win, so the session reads no environment
        # but its proxies.
        import requests

        session = requests.Session()
        session.trust_env = False
        session.proxies = requests.utils.get_environ_proxies(t.endpoint)
        extra["session"] = session
    return dict(
        endpoint=t.endpoint,
        certificate_file=t.ca_file,
        headers=dict(t.headers),
        timeout=t.timeout_s,
        compression=Compression.Gzip if t.compression == "gzip" else Compression.NoCompression,
        **extra,
    )


def _span_exporter(t: SignalTarget) -> Any:
    if t.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(**_http_common(t))
    return OTLPSpanExporter(**_grpc_common(t))


def _metric_exporter(t: SignalTarget) -> Any:
    if t.protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
            OTLPMetricExporter as HttpMetricExporter,
        )

        return HttpMetricExporter(**_http_common(t), **_batched(HttpMetricExporter))
    return OTLPMetricExporter(**_grpc_common(t), **_batched(OTLPMetricExporter))


def _batched(exporter: type) -> dict[str, int]:
    """max_export_batch_size where the installed exporter takes it (the HTTP one only since
    2025): without it a collection goes in one request, as before."""
    takes = "max_export_batch_size" in inspect.signature(exporter.__init__).parameters
    return {"max_export_batch_size": METRIC_BATCH_POINTS} if takes else {}
