"""Where and how the OTLP exports go: the config's ``otlp`` section over the standard
``OTEL_*`` environment, the way every OpenTelemetry component reads it.

Precedence, for each setting and each signal (traces, metrics): the config file's key when it is
set (not null, not empty), else ``OTEL_EXPORTER_OTLP_<SIGNAL>_<SETTING>``, else
``OTEL_EXPORTER_OTLP_<SETTING>``, else wasmtop's default. The file wins because it is what an
operator edits and reloads for this daemon; the environment is what a platform sets for every
component in a pod.

- Endpoint: ``HOST:PORT``, ``http://HOST:PORT`` (plaintext) or ``https://HOST:PORT`` (TLS). For
  OTLP/HTTP the generic endpoint is a base URL (``/v1/traces`` and ``/v1/metrics`` are
  appended); a signal's own variable is used as is, as the specification says. With no
  endpoint in the file or ``OTEL_EXPORTER_OTLP_ENDPOINT``, export is off;
  ``OTEL_SDK_DISABLED=true`` turns it off whatever the rest says.
- Protocol: ``grpc`` (wasmtop's default) or ``http/protobuf``.
- TLS: ``https://``; for a bare ``HOST:PORT``, ``insecure: false``, or a CA file or client
  certificate given (plaintext with either is refused); a CA file, and a client certificate
  and key. A gRPC endpoint has no path.
- A signal whose endpoint nothing names while the other's own variable does goes to the
  specification's default (``localhost:4317``, ``http://localhost:4318``).
- Headers: the file's map, or ``k=v,k2=v2`` (values percent-decoded) from the environment.
- Timeout: seconds in the file, milliseconds in the environment (``OTEL_EXPORTER_OTLP_TIMEOUT``).
- Compression: ``gzip`` or ``none``.
- Resource: ``service.name=wasmtop`` and the host's name, under ``OTEL_RESOURCE_ATTRIBUTES``,
  under ``OTEL_SERVICE_NAME``, under the file's ``resource`` map.

A malformed variable is an OtlpSettingsError naming it and what was expected."""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

SIGNALS = ("traces", "metrics")
PROTOCOLS = ("grpc", "http/protobuf")
DEFAULT_TIMEOUT_S = 5.0
# The specification's defaults, for a signal whose endpoint nothing names (only the other's is)
DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
PREFIX = "OTEL_EXPORTER_OTLP_"


class OtlpSettingsError(ValueError):
    """An OTEL_* variable (or a combination) that cannot be used, said for a person."""


@dataclass(frozen=True)
class SignalTarget:
    endpoint: str  # gRPC: HOST:PORT; OTLP/HTTP: the full URL of the signal
    protocol: str
    insecure: bool  # gRPC without TLS (OTLP/HTTP: the URL's scheme says)
    headers: tuple[tuple[str, str], ...]
    ca_file: str | None
    client_cert: str | None
    client_key: str | None
    timeout_s: float
    compression: str | None  # "gzip", or None
    source: str  # where the endpoint came from, for the log


@dataclass(frozen=True)
class OtlpTargets:
    traces: SignalTarget
    metrics: SignalTarget
    resource: dict[str, str]  # the attributes over wasmtop's own (service.name, host.name)


def _env(env: Mapping[str, str], signal: str, name: str) -> tuple[str | None, str]:
    """(value, variable) of the signal's variable, else the generic one; (None, "") if neither."""
    for var in (f"{PREFIX}{signal.upper()}_{name}", f"{PREFIX}{name}"):
        value = env.get(var, "").strip()
        if value:
            return value, var
    return None, ""


def parse_pairs(text: str, var: str) -> dict[str, str]:
    """``k=v,k2=v2`` with percent-encoded values (W3C Baggage-like, as OTEL_* lists are)."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not key:
            raise OtlpSettingsError(f"{var}: expected key=value pairs separated by commas")
        out[key] = urllib.parse.unquote(value.strip())
    return out


def _truthy(text: str, var: str) -> bool:
    low = text.strip().lower()
    if low not in ("true", "false"):
        raise OtlpSettingsError(f"{var}: expected true or false, got {text[:40]!r}")
    return low == "true"


def resolve(o: Mapping, env: Mapping[str, str] = os.environ) -> OtlpTargets | None:
    """The two signals' targets from the config's ``otlp`` section ``o`` and ``env``; None when
    export is off."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = [f"{PREFIX}ENDPOINT", *(f"{PREFIX}{s.upper()}_ENDPOINT" for s in SIGNALS)]
    if not o.get("endpoint") and not any(env.get(v, "").strip() for v in named):
        return None
    targets = {s: _signal(o, env, s) for s in SIGNALS}
    return OtlpTargets(targets["traces"], targets["metrics"], resource(o, env))


def _signal(o: Mapping, env: Mapping[str, str], signal: str) -> SignalTarget:
    def setting(key: str, name: str) -> tuple[object, str]:
        if o.get(key) not in (None, "", {}):
            return o[key], f"otlp.{key}"
        return _env(env, signal, name)

    protocol, var = setting("protocol", "PROTOCOL")
    protocol = protocol or "grpc"
    if protocol not in PROTOCOLS:
        raise OtlpSettingsError(f"{var}: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    endpoint, source = setting("endpoint", "ENDPOINT")
    if endpoint is None:  # only the other signal's own endpoint is set: this one's default
        endpoint, source = DEFAULT_ENDPOINTS[str(protocol)], "the default endpoint"
    own = source.startswith(f"{PREFIX}{signal.upper()}_")  # a signal's own URL: as is
    url = str(endpoint)
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in ("", "http", "https"):
        raise OtlpSettingsError(f"{source}: expected HOST:PORT or an http(s):// URL, got {url!r}")
    ca, _ = setting("ca_file", "CERTIFICATE")
    cert, cert_var = setting("client_cert_file", "CLIENT_CERTIFICATE")
    key, key_var = setting("client_key_file", "CLIENT_KEY")
    tls_material = ca is not None or cert is not None
    insecure_value, insecure_var = setting("insecure", "INSECURE")
    if isinstance(insecure_value, str):
        insecure_value = _truthy(insecure_value, insecure_var)
    if scheme:
        insecure = scheme == "http"
    elif insecure_value is not None:
        insecure = bool(insecure_value)
    else:
        # A bare HOST:PORT: plaintext, as wasmtop always did, unless a CA or a client
        # certificate says TLS is meant (never send them, or a token, in the clear by default).
        insecure = not tls_material
    if insecure and tls_material and insecure_value:
        raise OtlpSettingsError(
            f"{insecure_var}: plaintext asked for with a CA or a client certificate set: "
            "expected one or the other"
        )
    if protocol == "grpc":
        target = url.split("://", 1)[1] if scheme else url
        target = target.rstrip("/")
        if "/" in target:
            raise OtlpSettingsError(f"{source}: a gRPC endpoint has no path, got {url!r}")
    else:
        base = url if scheme else f"{'http' if insecure else 'https'}://{url}"
        target = base if own else f"{base.rstrip('/')}/v1/{signal}"
    headers_value, headers_var = setting("headers", "HEADERS")
    if isinstance(headers_value, Mapping):
        headers = {str(k): str(v) for k, v in headers_value.items()}
    elif headers_value:
        headers = parse_pairs(str(headers_value), headers_var)
    else:
        headers = {}
    timeout_value, timeout_var = setting("timeout_s", "TIMEOUT")
    if timeout_value is None:
        timeout_s = DEFAULT_TIMEOUT_S
    elif timeout_var.startswith(PREFIX):  # milliseconds in the environment
        try:
            timeout_s = float(str(timeout_value)) / 1000
        except ValueError:
            timeout_s = -1.0
        if not 0 < timeout_s <= 60:
            raise OtlpSettingsError(f"{timeout_var}: expected milliseconds, 1 to 60000")
    else:
        timeout_s = float(timeout_value)  # type: ignore[arg-type]
    compression, compression_var = setting("compression", "COMPRESSION")
    if compression not in (None, "gzip", "none"):
        raise OtlpSettingsError(f"{compression_var}: expected gzip or none, got {compression!r}")
    if (cert is None) != (key is None):
        raise OtlpSettingsError(
            f"{cert_var or key_var}: expected a client certificate and its key together"
        )
    return SignalTarget(
        endpoint=target,
        protocol=str(protocol),
        insecure=insecure,
        headers=tuple((k.lower() if protocol == "grpc" else k, v) for k, v in headers.items()),
        ca_file=None if ca is None else str(ca),
        client_cert=None if cert is None else str(cert),
        client_key=None if key is None else str(key),
        timeout_s=timeout_s,
        compression=None if compression in (None, "none") else "gzip",
        source=source,
    )


def resource(o: Mapping, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES, then OTEL_SERVICE_NAME over it, then the file's map over both."""
    out = {}
    if env.get("OTEL_RESOURCE_ATTRIBUTES", "").strip():
        out.update(parse_pairs(env["OTEL_RESOURCE_ATTRIBUTES"], "OTEL_RESOURCE_ATTRIBUTES"))
    if env.get("OTEL_SERVICE_NAME", "").strip():
        out["service.name"] = env["OTEL_SERVICE_NAME"].strip()
    out.update({str(k): str(v) for k, v in (o.get("resource") or {}).items()})
    return out
