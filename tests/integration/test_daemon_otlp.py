"""The daemon exporting OTLP on the real kernel (issue: daemon and exporters, tests 3 and 4): a
traced HTTP server's requests arrive as spans carrying exactly the trace ids the client sent,
and a receiver outage costs neither the daemon nor the kernel side anything but counted drops."""

from __future__ import annotations

import http.client
import random
import threading
import time

import pytest

from otlp_receiver import OtlpReceiver, wait_until
from peers import daemon, get, metric_value
from support import http_server

pytestmark = pytest.mark.bpf

RNG = random.Random(6)


def send(port: int, n: int, stop: threading.Event | None = None) -> dict[str, str]:
    """n requests (or until ``stop``) with a traceparent each: trace id -> parent span id."""
    sent = {}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    i = 0
    while (stop is None and i < n) or (stop is not None and not stop.is_set()):
        trace_id, parent = RNG.randbytes(16).hex(), RNG.randbytes(8).hex()
        conn.request("GET", f"/item/{i % 3}", headers={"traceparent": f"00-{trace_id}-{parent}-01"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
        sent[trace_id] = parent
        i += 1
        if stop is not None:
            stop.wait(0.01)
    conn.close()
    return sent


def otlp_config(receiver: OtlpReceiver, pid: int, **otlp: object) -> dict:
    return {
        "probes": {"bypass": {"mode": "off"}, "trace": {"pids": [pid]}},
        "otlp": {"endpoint": receiver.endpoint, "interval_s": 1, "timeout_s": 2,
                 "resource": {"k8s.node.name": "edge-test-1"}, **otlp},
    }  # fmt: skip


def test_spans_carry_exactly_the_trace_ids_the_client_sent_and_metrics_their_resource(tmp_path):
    receiver = OtlpReceiver()
    try:
        with (
            http_server() as (server, port),
            daemon(tmp_path, otlp_config(receiver, server.pid)) as d,
        ):
            sent = send(port, 60)

            def ours() -> dict[str, object]:
                return {
                    s.trace_id.hex(): s
                    for _, s in receiver.spans()
                    if any(a.key == "process.pid" and a.value.int_value == server.pid
                           for a in s.attributes)
                }  # fmt: skip

            assert wait_until(lambda: len(ours()) >= len(sent), timeout=30)
            spans = ours()
            assert spans.keys() == sent.keys()
            for trace_id, span in spans.items():
                assert span.parent_span_id.hex() == sent[trace_id]
                assert span.end_time_unix_nano > span.start_time_unix_nano
            per_trace = [s.trace_id.hex() for _, s in receiver.spans()]
            assert all(per_trace.count(t) == 1 for t in sent)  # each once
            found = wait_until(lambda: receiver.latest_metric("wasmtop_context_switches"), 30)
            assert found, "no metrics arrived"
            resource, _ = found
            assert resource["service.name"] == "wasmtop"
            assert resource["k8s.node.name"] == "edge-test-1"
            assert resource["host.name"]
            text = get(f"{d.base}/metrics")[1]
            assert metric_value(text, "wasmtop_otlp_spans_total", outcome="exported") >= 60
    finally:
        receiver.stop()


def rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_receiver_outage_of_30_s_is_survived_counted_and_recovered_from(tmp_path):
    receiver = OtlpReceiver()
    stop = threading.Event()
    try:
        with (
            http_server() as (server, port),
            daemon(tmp_path, otlp_config(receiver, server.pid, max_queue_spans=200)) as d,
        ):
            client = threading.Thread(target=send, args=(port, 0, stop))
            client.start()
            assert wait_until(lambda: receiver.spans(), timeout=30)
            rss_before = rss_bytes(d.proc.pid)
            receiver.stop()
            stop.wait(30)  # 30 s of traffic with the receiver down
            assert d.proc.poll() is None
            growth = rss_bytes(d.proc.pid) - rss_before
            assert growth < 50 * 2**20, f"RSS grew {growth / 2**20:.1f} MiB"
            text = get(f"{d.base}/metrics")[1]
            assert metric_value(text, "wasmtop_otlp_spans_total", outcome="dropped") > 0
            assert metric_value(text, "wasmtop_otlp_metric_exports_total", outcome="failed") > 0
            for probe in ("sched", "tracectx", "lifecycle"):  # draining never waited on export
                assert metric_value(text, "wasmtop_probe_events_lost_total", probe=probe) == 0
            metrics_before = len(receiver.metric_requests)
            spans_before = len(receiver.spans())
            receiver.start()  # the same port
            assert wait_until(lambda: len(receiver.metric_requests) > metrics_before, 20)
            assert wait_until(lambda: len(receiver.spans()) > spans_before, 20)
            stop.set()
            client.join()
    finally:
        stop.set()
        receiver.stop()


def test_the_edge_service_under_load_is_its_own_service_with_templated_routes(tmp_path):
    """The example Wasm edge service (traced by default: a WebAssembly runtime) under keep-alive
    load: its spans arrive under a resource of its own, named by otlp.service_names, with
    http.route the template configured for it (a pattern that does not match it adds nothing;
    else the default folding) and url.path as sent, the connection's server.port and
    client.address as the sockets have them, and the kernel's figures for each request
    (preemption delay and migrations of its thread)."""
    from support import EDGE_SERVICE

    receiver = OtlpReceiver()
    try:
        with http_server("--port", "0", script=EDGE_SERVICE) as (svc, port):
            config = {
                "probes": {"bypass": {"mode": "off"}},
                "collector": {
                    "route_templates": {
                        "no-such-service": ["/item/{sku}"],  # matches neither name nor command
                        f"pid:{svc.pid}": ["/users/{name}/cart"],
                    },
                    "keep_paths": True,
                },
                "otlp": {"endpoint": receiver.endpoint, "interval_s": 1, "timeout_s": 2,
                         "service_names": {f"pid:{svc.pid}": "edge-service"}},
            }  # fmt: skip
            with daemon(tmp_path, config):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                sent = {}
                for i in range(60):
                    path = f"/users/{RNG.choice(['alice', 'bob'])}/cart" if i % 2 else f"/item/{i}"
                    trace_id = RNG.randbytes(16).hex()
                    tp = f"00-{trace_id}-{RNG.randbytes(8).hex()}-01"
                    conn.request("GET", path, headers={"traceparent": tp})
                    resp = conn.getresponse()
                    resp.read()
                    sent[trace_id] = path
                    if i == 0:  # the collector follows the connection from its first request
                        time.sleep(0.5)
                client_port = conn.sock.getsockname()[1]
                time.sleep(0.5)  # the collector reads the last requests while it is open
                conn.close()

                def ours() -> dict:
                    return {s.trace_id.hex(): (r, s) for r, s in receiver.spans()
                            if s.trace_id.hex() in sent}  # fmt: skip

                assert wait_until(lambda: len(ours()) == len(sent), timeout=30), len(ours())
        spans = ours()
        first = next(iter(sent))
        for trace_id, (resource, span) in spans.items():
            attrs = {a.key: a.value for a in span.attributes}
            path = sent[trace_id]
            assert resource["service.name"] == "edge-service"
            assert resource["wasmtop.workload"] == f"pid:{svc.pid}"
            assert resource["wasmtop.workload.kind"] == "wasm"
            assert attrs["url.path"].string_value == path
            assert attrs["network.protocol.version"].string_value == "1.1"
            want = "/users/{name}/cart" if path.startswith("/users/") else "/item/:id"
            assert attrs["http.route"].string_value == want
            assert span.name == f"GET {want}"
            assert attrs["server.address"].string_value == "127.0.0.1"  # http.client's Host
            assert attrs["server.port"].int_value == port
            if trace_id != first:  # certain from the second request of the connection on
                assert attrs["network.local.port"].int_value == port
                assert attrs["client.address"].string_value == "127.0.0.1"
                assert attrs["client.port"].int_value == client_port
        with_kernel = [s for _, s in spans.values()
                       if {"wasmtop.preempted_ms", "wasmtop.migrations"}
                       <= {a.key for a in s.attributes}]  # fmt: skip
        assert len(with_kernel) >= 0.9 * len(spans)  # the scheduler probe saw their threads
    finally:
        receiver.stop()
