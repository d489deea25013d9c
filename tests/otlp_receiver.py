"""An in-process OTLP/gRPC receiver for tests: a real grpcio server on 127.0.0.1 with the
trace and metrics services of opentelemetry-proto. It records every request it accepts, can
answer the next requests with an error code, and can be stopped and started again on the same
port (a receiver outage)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


def attrs(kvs: Any) -> dict[str, Any]:
    """A repeated KeyValue as a plain dict (string, int, double and bool values)."""
    out = {}
    for kv in kvs:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


class OtlpReceiver:
    def __init__(self, port: int = 0) -> None:
        self.port = port
        self._lock = threading.Lock()
        self.trace_requests: list[Any] = []  # accepted ExportTraceServiceRequest
        self.metric_requests: list[Any] = []  # accepted ExportMetricsServiceRequest
        self.attempts = {"traces": 0, "metrics": 0}  # every call, refused ones included
        self.metadata: list[dict[str, str]] = []  # gRPC metadata of every call
        self._fail: dict[str, list[grpc.StatusCode]] = {"traces": [], "metrics": []}
        self._server: grpc.Server | None = None
        self.start()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Serve (again) on ``self.port``; the first start picks a free port."""
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Traces(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(_Metrics(self), server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port}")
        if port == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{self.port}")
        self.port = port
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=0).wait(5)
            self._server = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def fail_next(self, signal: str, n: int, code: grpc.StatusCode) -> None:
        """Answer the next ``n`` calls of ``signal`` (traces | metrics) with ``code``."""
        with self._lock:
            self._fail[signal] += [code] * n

    # -- reading ---------------------------------------------------------------------------
    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received: (resource attributes, Span message)."""
        with self._lock:
            requests = list(self.trace_requests)
        return [
            (attrs(rs.resource.attributes), span)
            for req in requests
            for rs in req.resource_spans
            for ss in rs.scope_spans
            for span in ss.spans
        ]

    def metrics(self, since: int = 0) -> list[tuple[dict[str, Any], Any]]:
        """Every metric received in requests ``since`` on: (resource attributes, Metric)."""
        with self._lock:
            requests = self.metric_requests[since:]
        return [
            (attrs(rm.resource.attributes), m)
            for req in requests
            for rm in req.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
        ]

    def latest_metric(self, name: str, since: int = 0) -> tuple[dict[str, Any], Any] | None:
        found = [(r, m) for r, m in self.metrics(since) if m.name == name]
        return found[-1] if found else None

    def span_ids(self) -> Iterator[str]:
        for _, span in self.spans():
            yield span.span_id.hex()

    # -- internals -------------------------------------------------------------------------
    def _accept(self, signal: str, request: Any, context: grpc.ServicerContext) -> None:
        with self._lock:
            self.attempts[signal] += 1
            self.metadata.append(dict(context.invocation_metadata()))
            code = self._fail[signal].pop(0) if self._fail[signal] else None
            if code is None:
                (self.trace_requests if signal == "traces" else self.metric_requests).append(
                    request
                )
        if code is not None:
            context.abort(code, "refused by the test receiver")


class _Traces(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.receiver._accept("traces", request, context)
        return trace_service_pb2.ExportTraceServiceResponse()


class _Metrics(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        self.receiver._accept("metrics", request, context)
        return metrics_service_pb2.ExportMetricsServiceResponse()


def wait_until(condition: Callable[[], Any], timeout: float, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something true (returned) or ``timeout`` passes
    (returns the last, false, value)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class OtlpHttpReceiver(OtlpReceiver):
    """The same receiver over OTLP/HTTP (protobuf): ``POST /v1/traces`` and ``/v1/metrics`` with
    an ``Export*ServiceRequest`` body (gzip when the request says so), answered as the
    specification says. With ``tls`` (certificate, key), HTTPS; with ``client_ca`` too, a client
    certificate that CA signed is required. ``metadata`` records each request's headers."""

    def __init__(
        self, tls: tuple[Any, Any] | None = None, client_ca: Any = None, port: int = 0
    ) -> None:
        self.tls, self.client_ca = tls, client_ca
        self._http: Any = None
        super().__init__(port)

    def start(self) -> None:
        import ssl
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                signal = {"/v1/traces": "traces", "/v1/metrics": "metrics"}.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    import gzip

                    body = gzip.decompress(body)
                if signal is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404 if signal is None else 415)
                    self.end_headers()
                    return
                kind = (trace_service_pb2.ExportTraceServiceRequest if signal == "traces"
                        else metrics_service_pb2.ExportMetricsServiceRequest)  # fmt: skip
                request = kind.FromString(body)
                with receiver._lock:
                    receiver.attempts[signal] += 1
                    receiver.metadata.append({k.lower(): v for k, v in self.headers.items()})
                    refused = receiver._fail[signal].pop(0) if receiver._fail[signal] else None
                    if refused is None:
                        getattr(receiver, f"{signal[:-1] if signal == 'traces' else 'metric'}"
                                "_requests").append(request)  # fmt: skip
                self.send_response(503 if refused is not None else 200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        if self.tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(self.tls[0]), str(self.tls[1]))
            if self.client_ca is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_verify_locations(str(self.client_ca))
            server.socket = ctx.wrap_socket(server.socket, server_side=True)
        self.port = server.server_address[1]
        self._http = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    @property
    def endpoint(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
