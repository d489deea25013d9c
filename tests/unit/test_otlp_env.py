"""OTLP settings (exporters/otlp_settings.py): the config file over the OTEL_* environment, a
signal's own variable over the generic one, the URL forms, and any environment at all a target
or an OtlpSettingsError naming the variable (hypothesis)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmtop.config import defaults
from wasmtop.exporters.otlp_settings import OtlpSettingsError, resolve


def section(**kw: object) -> dict:
    return {**defaults()["otlp"], **kw}


def test_off_without_an_endpoint_or_when_the_sdk_is_disabled():
    assert resolve(section(), {}) is None
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}
    assert resolve(section(endpoint="c:4317"), env) is None


@pytest.mark.parametrize(
    ("endpoint", "protocol", "traces", "insecure"),
    [
        ("c:4317", "grpc", "c:4317", True),
        ("http://c:4317", "grpc", "c:4317", True),
        ("https://c:4317", "grpc", "c:4317", False),
        ("c:4318", "http/protobuf", "http://c:4318/v1/traces", True),
        ("https://c:4318/otlp/", "http/protobuf", "https://c:4318/otlp/v1/traces", False),
    ],
)
def test_endpoint_forms(endpoint, protocol, traces, insecure):
    t = resolve(section(endpoint=endpoint, protocol=protocol), {})
    assert (t.traces.endpoint, t.traces.insecure) == (traces, insecure)
    if protocol == "http/protobuf":
        assert t.metrics.endpoint == traces.replace("/v1/traces", "/v1/metrics")


def test_a_signals_own_variable_beats_the_generic_one_and_its_url_is_used_as_is():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://m:9999/custom",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=1",
        "OTEL_EXPORTER_OTLP_HEADERS": "b=2",
        "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT": "250",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "gzip",
    }
    t = resolve(section(), env)
    assert t.traces.endpoint == "http://c:4318/v1/traces"
    assert t.metrics.endpoint == "https://m:9999/custom"
    assert dict(t.traces.headers) == {"a": "1"} and dict(t.metrics.headers) == {"b": "2"}
    assert (t.traces.timeout_s, t.metrics.timeout_s) == (5.0, 0.25)
    assert t.traces.compression == t.metrics.compression == "gzip"


def test_the_file_wins_key_by_key_and_the_resource_is_layered():
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4318",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": "auth=env",
        "OTEL_RESOURCE_ATTRIBUTES": "a=1,service.name=list,k8s.cluster.name=c%201",
        "OTEL_SERVICE_NAME": "env-name",
    }
    t = resolve(section(endpoint="file:4317", protocol="grpc", headers={"Auth": "file"},
                        timeout_s=2.0, resource={"a": "file"}), env)  # fmt: skip
    assert (t.traces.endpoint, t.traces.protocol, t.traces.timeout_s) == ("file:4317", "grpc", 2.0)
    assert dict(t.traces.headers) == {"auth": "file"}  # gRPC metadata keys are lower case
    assert t.resource == {"a": "file", "service.name": "env-name", "k8s.cluster.name": "c 1"}
    assert t.traces.source == "otlp.endpoint"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL: expected"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT: expected milli"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS: expected key"),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "OTEL_EXPORTER_OTLP_INSECURE: expected true"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "zstd"}, "OTEL_EXPORTER_OTLP_COMPRESSION: expected"),
        ({"OTEL_EXPORTER_OTLP_CLIENT_KEY": "k.pem"}, "a client certificate and its key together"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "=x"}, "OTEL_RESOURCE_ATTRIBUTES: expected key=value"),
    ],
)
def test_a_malformed_variable_is_named(env, message):
    with pytest.raises(OtlpSettingsError, match=message):
        resolve(section(), {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", **env})


VARS = ["ENDPOINT", "TRACES_ENDPOINT", "PROTOCOL", "HEADERS", "TIMEOUT", "INSECURE",
        "COMPRESSION", "CERTIFICATE", "CLIENT_CERTIFICATE", "CLIENT_KEY"]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([f"OTEL_EXPORTER_OTLP_{v}" for v in VARS]
                                       + ["OTEL_RESOURCE_ATTRIBUTES", "OTEL_SERVICE_NAME"]),
                       st.text(max_size=40)))  # fmt: skip
def test_any_environment_is_targets_off_or_a_named_error(env):
    try:
        t = resolve(section(), env)
    except OtlpSettingsError as exc:
        assert str(exc).startswith(("OTEL_", "otlp."))
    else:
        assert t is None or (
            t.traces.timeout_s > 0 and t.metrics.protocol in ("grpc", "http/protobuf")
        )


def test_a_ca_or_client_certificate_means_tls_and_plaintext_with_them_is_refused():
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317", "OTEL_EXPORTER_OTLP_CERTIFICATE": "/ca.pem"}
    assert resolve(section(), env).traces.insecure is False  # never the CA and token in clear
    assert resolve(section(endpoint="c:4317"), {}).traces.insecure is True  # as it always was
    with pytest.raises(OtlpSettingsError, match="plaintext asked for with a CA"):
        resolve(section(insecure=True, ca_file="/ca.pem", endpoint="c:4317"), {})
    with pytest.raises(OtlpSettingsError, match="a gRPC endpoint has no path"):
        resolve(section(endpoint="https://c:4317/v1"), {})


def test_one_signals_own_endpoint_alone_turns_export_on_and_the_other_takes_the_default():
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://tempo:4317"}
    t = resolve(section(), env)
    assert (t.traces.endpoint, t.metrics.endpoint) == ("tempo:4317", "localhost:4317")
    assert t.metrics.source == "the default endpoint"
