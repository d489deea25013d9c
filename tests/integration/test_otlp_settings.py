"""OTLP export as every OpenTelemetry component is set up (exporters/otlp_settings.py): OTLP/HTTP
beside gRPC, https with a custom CA and a client certificate, headers, compression, and the
OTEL_* environment under the config file. Each receiver is real and on loopback
(tests/otlp_receiver.py: grpcio's server, or an HTTP server speaking OTLP/HTTP protobuf)."""

from __future__ import annotations

import pytest
from test_otlp import snapshot, trace

from otlp_receiver import OtlpHttpReceiver, OtlpReceiver, wait_until
from peers import free_port
from wasmtop.config import defaults
from wasmtop.exporters.otlp import OtlpExporter
from wasmtop.exporters.otlp_settings import resolve
from wasmtop.exporters.series import SeriesBook


def section(**kw: object) -> dict:
    return {**defaults()["otlp"], **kw}


@pytest.fixture
def exporters():
    made: list[OtlpExporter] = []

    def make(targets) -> OtlpExporter:
        exp = OtlpExporter(book=SeriesBook(), interval_s=0.5, targets=targets)
        made.append(exp)
        return exp

    yield make
    for exp in made:
        exp.close(timeout_s=1.0)


def test_otlp_http_over_https_with_a_custom_ca_a_client_certificate_headers_and_gzip(
    pki, exporters
):
    rx = OtlpHttpReceiver(tls=pki.server, client_ca=pki.ca)
    try:
        targets = resolve(section(
            endpoint=rx.endpoint, protocol="http/protobuf", ca_file=str(pki.ca),
            client_cert_file=str(pki.oncall[0]), client_key_file=str(pki.oncall[1]),
            headers={"X-Tenant": "team-a"}, compression="gzip"), env={})  # fmt: skip
        assert targets.traces.endpoint == f"{rx.endpoint}/v1/traces"
        exp = exporters(targets)
        t = trace()
        exp.submit(snapshot((t,)))
        assert wait_until(lambda: t.span_id in set(rx.span_ids()), 10), exp.stats()
        assert wait_until(lambda: rx.metric_requests, 10), exp.stats()
        assert exp.stats()["spans_exported"] == 1 and exp.stats()["metric_exports"] >= 1
        assert all(m["x-tenant"] == "team-a" and m["content-encoding"] == "gzip"
                   for m in rx.metadata)  # fmt: skip
    finally:
        rx.stop()


def test_a_receiver_that_refuses_the_client_certificate_is_counted_not_fatal(pki, exporters):
    rx = OtlpHttpReceiver(tls=pki.server, client_ca=pki.ca)
    try:
        targets = resolve(section(
            endpoint=rx.endpoint, protocol="http/protobuf", ca_file=str(pki.ca),
            client_cert_file=str(pki.stranger[0]), client_key_file=str(pki.stranger[1]),
            timeout_s=1.0), env={})  # fmt: skip
        exp = exporters(targets)
        exp.submit(snapshot((trace(),)))
        assert wait_until(lambda: exp.stats()["metric_exports_failed"] >= 1, 15), exp.stats()
        assert rx.trace_requests == [] and rx.metric_requests == []
    finally:
        rx.stop()


def test_the_otel_environment_alone_sets_protocol_endpoint_headers_and_resource(exporters):
    rx = OtlpHttpReceiver()
    try:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": rx.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20t0k,x-scope=edge",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "2000",
            "OTEL_SERVICE_NAME": "edge-wasmtop",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod,service.name=ignored",
        }
        targets = resolve(section(), env)
        assert targets.traces.timeout_s == 2.0 and targets.traces.source.endswith("_ENDPOINT")
        exp = exporters(targets)
        t = trace()
        exp.submit(snapshot((t,)))
        assert wait_until(lambda: t.span_id in set(rx.span_ids()), 10), exp.stats()
        assert wait_until(lambda: rx.metric_requests, 10), exp.stats()
        (resource, _), *_ = rx.metrics()  # wasmtop's own resource (spans carry their service's)
        assert resource["service.name"] == "edge-wasmtop"  # OTEL_SERVICE_NAME over the list
        assert resource["deployment.environment"] == "prod"
        (span_resource, _), *_ = rx.spans()  # the platform's attributes hold for workloads too
        assert span_resource["deployment.environment"] == "prod"
        assert span_resource["service.name"] != "edge-wasmtop"  # the workload's own service
        assert rx.metadata[0]["authorization"] == "Bearer t0k"
        assert rx.metadata[0]["x-scope"] == "edge"
    finally:
        rx.stop()


def test_the_config_file_wins_over_the_environment_and_grpc_takes_a_url(exporters):
    rx = OtlpReceiver()
    try:
        dead = f"127.0.0.1:{free_port()}"
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{dead}",
               "OTEL_SERVICE_NAME": "from-env"}  # fmt: skip
        targets = resolve(section(endpoint=f"http://{rx.endpoint}",
                                  resource={"service.name": "from-file"}), env)  # fmt: skip
        assert (targets.traces.endpoint, targets.traces.insecure) == (rx.endpoint, True)
        exp = exporters(targets)
        t = trace()
        exp.submit(snapshot((t,)))
        assert wait_until(lambda: t.span_id in set(rx.span_ids()), 10), exp.stats()
        assert wait_until(lambda: rx.metric_requests, 10), exp.stats()
        (resource, _), *_ = rx.metrics()
        assert resource["service.name"] == "from-file"
    finally:
        rx.stop()


def semconv_names() -> set[str]:
    """Every attribute name the opentelemetry-semantic-conventions package defines."""
    import importlib
    import pkgutil

    import opentelemetry.semconv._incubating.attributes as incubating
    import opentelemetry.semconv.attributes as stable

    names = set()
    for pkg in (stable, incubating):
        for m in pkgutil.iter_modules(pkg.__path__):
            module = importlib.import_module(f"{pkg.__name__}.{m.name}")
            names |= {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    return names


def test_each_workload_is_a_service_with_conventional_attributes(exporters):
    """One resource per workload, named by the file's patterns, else the pod's app label, else
    the container's name, else the command; every span and resource attribute is either a name
    of the OpenTelemetry semantic conventions or wasmtop's own (wasmtop.*), so a misspelt key
    fails here."""
    import dataclasses

    from test_otlp import WL_PLAIN, WL_POD

    rx = OtlpReceiver()
    try:
        exp = exporters(resolve(section(endpoint=rx.endpoint), env={}))
        exp.service_names = {"pid:*": "never", "edge": "edge-proc"}  # the command "edge"
        t_pod = trace(  # its route: "GET /item" (the fixture's)
            path="/item/42", version="1.1", server_address="shop.example", server_port=443,
            local_address="10.1.2.2", local_port=8080, client_address="10.1.2.3",
            client_port=40001,
        )  # fmt: skip
        t_plain = trace(workload=WL_PLAIN, pid=5000, tid=5001)
        snap = snapshot((t_pod, t_plain))
        labelled = dataclasses.replace(snap.workloads[0].pod, app="cart")
        snap = dataclasses.replace(snap, workloads=(
            dataclasses.replace(snap.workloads[0], pod=labelled), *snap.workloads[1:]))  # fmt: skip
        exp.submit(snap)
        want = {t_pod.span_id, t_plain.span_id}
        assert wait_until(lambda: want <= set(rx.span_ids()), 10), exp.stats()
        by_span = {s.span_id.hex(): (res, s) for res, s in rx.spans()}
        assert by_span[t_pod.span_id][0]["service.name"] == "cart"  # the app label
        assert by_span[t_pod.span_id][0]["wasmtop.workload"] == WL_POD
        assert by_span[t_plain.span_id][0]["service.name"] == "edge-proc"  # the file's pattern
        pod_span = {kv.key: kv.value.string_value for kv in by_span[t_pod.span_id][1].attributes}
        assert (pod_span["url.path"], pod_span["url.scheme"]) == ("/item/42", "http")
        assert pod_span["network.protocol.version"] == "1.1"
        assert pod_span["http.route"] == "/item"  # the template, where url.path is as sent
        assert pod_span["client.address"] == pod_span["network.peer.address"] == "10.1.2.3"
        assert (pod_span["server.address"], pod_span["network.local.address"]) == (
            "shop.example", "10.1.2.2")  # fmt: skip
        ports = {kv.key: kv.value.int_value for kv in by_span[t_pod.span_id][1].attributes}
        assert (ports["server.port"], ports["network.local.port"], ports["client.port"],
                ports["network.peer.port"]) == (443, 8080, 40001, 40001)  # fmt: skip
        plain_span = {kv.key for kv in by_span[t_plain.span_id][1].attributes}
        assert not plain_span & {"server.port", "client.address", "network.local.port"}
        known = semconv_names()
        for res, span in by_span.values():
            keys = set(res) | {kv.key for kv in span.attributes}
            odd = {
                k for k in keys if not k.startswith(("wasmtop.", "telemetry.")) and k not in known
            }
            assert odd == set(), odd
    finally:
        rx.stop()


def test_reloads_that_turn_export_off_and_on_or_rotate_a_certificate_keep_the_counts(tmp_path):
    """The daemon's reload path (no probes: the exporter alone): a span exported, export turned
    off, then on again, then the CA file rewritten in place: the exporter is rebuilt each time
    and /metrics' counters never go back."""
    import os

    import yaml

    from wasmtop import daemon as daemon_module

    rx = OtlpReceiver()
    path = tmp_path / "c.yaml"
    base = {"metrics": {"listen": "127.0.0.1:0"}, "grpc": {"enabled": False}}

    def write(otlp: dict) -> None:
        path.write_text(yaml.safe_dump({**base, "otlp": otlp}))

    try:
        write({"endpoint": rx.endpoint, "interval_s": 0.5})
        d = daemon_module.Daemon(path, *daemon_module.load_all(path))
        d.start_otlp()
        d.otlp.submit(snapshot((trace(),)))
        assert wait_until(lambda: d.otlp.stats()["spans_exported"] == 1, 10)
        write({})  # export off
        d.reload()
        assert d.otlp is None
        (tmp_path / "ca.pem").write_text("not yet a certificate")
        write({"endpoint": rx.endpoint, "interval_s": 0.5, "insecure": False,
               "ca_file": "ca.pem"})  # fmt: skip
        d.reload()
        first = d.otlp
        assert first.stats()["spans_exported"] == 1  # counted on across the gap
        os.utime(tmp_path / "ca.pem", ns=(1, 1))  # rotated in place: same path, new file
        d.reload()
        assert d.otlp is not first and d.otlp.stats()["spans_exported"] == 1
    finally:
        if d.otlp is not None:
            d.otlp.close(timeout_s=1.0)
        rx.stop()
