"""The daemon's YAML config: schema, defaults, and errors that name file, line and expectation.

Every key has a default, so a file naming only ``metrics: {listen: ...}`` is complete. The
schema below is the single source: ``docs/config.md`` documents it and a test checks that every
key in it appears there and in ``deploy/wasmtop.yaml``.
"""

from __future__ import annotations

import grp
import ipaddress
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from . import yamlcheck

# The general checker is wasmtop/yamlcheck.py. Of its names, these are also imported from here
# elsewhere: ConfigError (cli, daemon, top, rulescmd, tests), Key and MAX_FILE_BYTES (tests),
# is_file (top), config_relative (daemon).
from .yamlcheck import MAX_FILE_BYTES as MAX_FILE_BYTES
from .yamlcheck import (
    ConfigError,
    Key,
    _bool,
    _line_of,
    _list,
    choice,
    compose,
    config_relative,
    is_file,
    nonempty_text,
    number,
    optional,
    read_tree,
    shown,
    str_map,
    walk,
)


def host_port(v: Any) -> str:
    """``HOST:PORT`` with a literal IP (v6 in brackets) or a name, port 0-65535."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d{1,5})", v if isinstance(v, str) else "")
    if not m or int(m.group(2)) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {shown(v)}")
    host = m.group(1).strip("[]")
    if m.group(1).startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got {shown(v)}") from None
    return v


def route_template(v: Any) -> str:
    """``/users/{id}/orders``: a path, each ``{name}`` a whole segment (any one segment)."""
    text = v if isinstance(v, str) else ""
    segs = text.split("/")
    bad = [s for s in segs if ("{" in s or "}" in s) and not re.fullmatch(r"\{\w+\}", s)]
    if not text.startswith("/") or len(text) > 256 or bad or any(c.isspace() for c in text):
        raise ValueError(f"expected a path such as /users/{{id}}/orders, got {shown(v)}")
    return text


def route_templates(v: Any) -> list[str] | dict[str, list[str]]:
    """A list of route templates for every workload, or a map of shell patterns over a
    workload's names (``namespace/pod/container``, key, command) to such lists."""
    templates = _list(route_template)
    if isinstance(v, list):
        return templates(v)
    if not isinstance(v, dict):
        raise ValueError(
            "expected a list of route templates, or a map of workload patterns to such lists,"
            f" got {shown(v)}"
        )
    out = {}
    for pattern, items in v.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(
                f"expected a workload pattern (e.g. shop/cart-*), got {shown(pattern)}"
            )
        try:
            out[pattern] = templates(items)
        except ValueError as exc:
            raise ValueError(f"{pattern}: {exc}") from None
    return out


def otlp_endpoint(v: Any) -> str:
    """``HOST:PORT`` or an ``http://`` / ``https://`` URL of one (a path allowed: OTLP/HTTP)."""
    text = v if isinstance(v, str) else ""
    scheme, sep, rest = text.partition("://")
    if not sep:
        return host_port(v)
    hostport = rest.split("/", 1)[0]
    if scheme not in ("http", "https"):
        raise ValueError(f"expected HOST:PORT or an http(s)://HOST:PORT URL, got {shown(v)}")
    # The port may be left to the scheme (https://otlp.vendor.example).
    host_port(hostport if re.search(r":\d+$", hostport) else f"{hostport}:443")
    return text


GRPC_SOCKET = "unix:/run/wasmtop/grpc.sock"  # grpc.listen's default, --connect's too


UNIX_PREFIX = "unix:"  # a grpc.listen or --connect target that is a Unix socket's path
MAX_UNIX_PATH_BYTES = 107  # sun_path holds 108 bytes with its NUL


def grpc_listen(v: Any) -> str:
    """``unix:/ABSOLUTE/PATH`` (at most 107 bytes, a socket's limit) or ``HOST:PORT``."""
    if isinstance(v, str) and v.startswith(UNIX_PREFIX):
        path = v[len(UNIX_PREFIX) :]
        too_long = len(path.encode("utf-8", "replace")) > MAX_UNIX_PATH_BYTES
        if not path.startswith("/") or too_long or "\0" in path:
            raise ValueError(
                f"expected unix:/ABSOLUTE/PATH of at most {MAX_UNIX_PATH_BYTES} bytes, "
                f"got {shown(v)}"
            )
        return v
    try:
        return host_port(v)
    except ValueError:
        raise ValueError(
            f"expected unix:/PATH or HOST:PORT such as unix:/run/wasmtop/grpc.sock or "
            f"127.0.0.1:9465, got {shown(v)}"
        ) from None


def _group(v: Any) -> int | str:
    """A group name or a gid (checked to exist in the cross checks)."""
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32:
        return v
    return nonempty_text(v)


def _url(v: Any) -> str:
    try:
        parts = urllib.parse.urlsplit(v) if isinstance(v, str) else None
    except ValueError:  # e.g. an unclosed [ in the host
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {shown(v)}")
    if "@" in parts.netloc:  # not shown: it holds a password
        raise ValueError(
            "expected a URL without user:password@ (not sent as credentials; the URL is shown in "
            "logs and /metrics)"
        )
    return v.rstrip("/")


def _https_url(v: Any) -> str:
    expected = f"expected an https:// URL such as https://10.43.0.1:443, got {shown(v)}"
    try:
        parts = urllib.parse.urlsplit(v) if isinstance(v, str) else None
        port_ok = parts is not None and parts.port != 0  # .port raises when out of range
    except ValueError:
        raise ValueError(expected) from None
    if not port_ok or parts.scheme != "https" or not parts.hostname or parts.query:
        raise ValueError(expected)
    return v.rstrip("/")


def _auto_bool(v: Any) -> str | bool:
    if v == "auto" or isinstance(v, bool):
        return v
    raise ValueError(f"expected auto, true or false, got {shown(v)}")


def cidr(v: Any) -> str:
    try:
        if not isinstance(v, str):
            raise TypeError(v)
        return str(ipaddress.ip_network(v, strict=False))
    except (TypeError, ValueError):
        raise ValueError(
            f"expected an address range such as 10.42.0.0/16, got {shown(v)}"
        ) from None


def comm_name(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v.encode("utf-8", "surrogatepass")) > 15:
        raise ValueError(
            f"expected a command name of 1 to 15 bytes (as in /proc/PID/comm), got {shown(v)}"
        )
    return v


def _cgroup(v: Any) -> str:
    from .probes.features import cgroup_dir

    if "\0" in nonempty_text(v):
        raise ValueError(f"expected a cgroup path, got {shown(v)}")
    try:
        cgroup_dir(v)  # ValueError: "cgroup X not found under /sys/fs/cgroup"
    except OSError as exc:  # e.g. a name too long for the file system
        raise ValueError(f"expected a cgroup path, got {shown(v)}: {exc.strerror}") from None
    return v


def _no_interfaces(v: Any) -> list:
    """probes.bypass.interfaces, from when a tc program counted stack bytes per interface: an
    empty list (what the sample config had) still loads; naming any interface is refused."""
    if v is None or v == []:
        return []
    raise ValueError(
        "no longer used (stack bytes now come from each connection's TCP counters, on every "
        "interface): remove the key"
    )


def _power_of_two(v: Any) -> int:
    n = number(int, 1, 262_144)(v)  # 1 GiB of 4 KiB pages
    if n & (n - 1):
        raise ValueError(f"expected a power of two, got {shown(v)}")
    return n


_pid = number(int, 1, 4_194_304)  # the kernel's PID_MAX_LIMIT

SCHEMA: dict[str, Any] = {
    "probes": {
        "sched": {
            "threshold_ms": Key(
                50.0, number(float, 0, 3_600_000), "preemption delay that makes an event"
            ),
            "pids": Key([], _list(_pid), "only these processes (empty: all)"),
            "cgroup": Key(None, optional(_cgroup), "only this cgroup subtree (path)"),
            "ringbuf_pages": Key(64, _power_of_two, "ring buffer size in pages"),
        },
        "bypass": {
            "mode": Key("observe", choice("observe", "accelerate", "off"), "socket bypass"),
            "local_cidrs": Key([], _list(cidr), "extra local address ranges"),
            "interfaces": Key([], _no_interfaces, "no longer used: leave empty or remove"),
            "cgroup": Key(None, optional(_cgroup), "cgroup whose sockets are watched"),
        },
        "trace": {
            "enabled": Key(True, _bool, "the trace-context probe"),
            "pids": Key([], _list(_pid), "trace these processes"),
            "comms": Key([], _list(comm_name), "trace processes with these command names"),
            "cgroups": Key([], _list(_cgroup), "trace every process in these cgroup subtrees"),
        },
        "lifecycle": {
            "enabled": Key(True, _bool, "cold starts and Wasm compile/instantiate uprobes"),
            "guest_calls": Key(
                False, _bool, "time calls into the guest too (Rust API; microseconds per call)"
            ),
        },
    },
    "collector": {
        "tick_s": Key(1.0, number(float, 0.1, 60), "seconds between Snapshots"),
        "scheduling": Key("idle", choice("idle", "normal"), "collector thread policy"),
        "growth_window_s": Key(300.0, number(float, 1, 86400), "RSS growth slope window"),
        "max_events": Key(1000, number(int, 0), "over-threshold events kept per Snapshot"),
        "probe_stats": Key(False, _bool, "time the probes in the kernel (taxes every program)"),
        "route_templates": Key(
            [], route_templates, "routes as the services name them, e.g. /users/{id}; by workload"
        ),
        "keep_paths": Key(False, _bool, "traces keep the path as sent (spans' url.path)"),
    },
    "metrics": {
        "listen": Key("127.0.0.1:9464", host_port, "address of /metrics, /healthz, /readyz"),
        "web_config_file": Key(
            None, optional(nonempty_text), "TLS and basic auth (exporter-toolkit)"
        ),
        "max_workloads": Key(1000, number(int, 0), "workloads with their own series"),
        "stale_after_s": Key(300.0, number(float, 1), "series of a vanished workload kept"),
    },
    "grpc": {
        "enabled": Key(True, _bool, "the Snapshot stream wasmtop.v1.Snapshots/Watch"),
        "listen": Key(GRPC_SOCKET, grpc_listen, "unix:PATH or HOST:PORT"),
        "socket_group": Key(
            None, optional(_group), "group allowed on the unix socket (0660); null: 0600"
        ),
        "tls_cert_file": Key(
            None, optional(nonempty_text), "server certificate (PEM); null: plaintext"
        ),
        "tls_key_file": Key(None, optional(nonempty_text), "its private key (PEM)"),
        "client_ca_file": Key(
            None, optional(nonempty_text), "require client certificates signed by this CA"
        ),
        "allow_unauthenticated": Key(
            False, _bool, "serve TCP without client certificates (anyone who reaches it)"
        ),
        "max_streams": Key(16, number(int, 1, 1000), "Watch streams served at once"),
        "max_streams_per_peer": Key(
            4, number(int, 1, 1000), "streams of one client address or certificate"
        ),
    },
    "otlp": {
        "endpoint": Key(
            None,
            optional(otlp_endpoint),
            "HOST:PORT, http://HOST:PORT or https://HOST:PORT; null: $OTEL_EXPORTER_OTLP_ENDPOINT, "
            "else off",
        ),
        "protocol": Key(
            None,
            optional(choice("grpc", "http/protobuf")),
            "null: $OTEL_EXPORTER_OTLP_PROTOCOL, else grpc",
        ),
        "insecure": Key(
            None,
            optional(_bool),
            "plaintext to a bare HOST:PORT; null: env, else true",
        ),
        "headers": Key({}, str_map, "sent with each export; empty: $OTEL_EXPORTER_OTLP_HEADERS"),
        "ca_file": Key(None, optional(nonempty_text), "CA of the receiver; null: env"),
        "client_cert_file": Key(None, optional(nonempty_text), "client certificate (PEM)"),
        "client_key_file": Key(None, optional(nonempty_text), "its key (PEM)"),
        "compression": Key(None, optional(choice("gzip", "none")), "null: $OTEL_..._COMPRESSION"),
        "interval_s": Key(10.0, number(float, 0.5, 3600), "metrics export interval"),
        "timeout_s": Key(
            None, optional(number(float, 0.1, 60)), "one export with retries; null: env, else 5"
        ),
        "max_queue_spans": Key(8192, number(int, 1), "spans held while the receiver is down"),
        "resource": Key({}, str_map, "extra resource attributes, e.g. k8s.node.name"),
        "service_names": Key(
            {}, str_map, "a workload's service.name by shell pattern over its name, key or comm"
        ),
    },
    "alerts": {
        "enabled": Key(True, _bool, "evaluate alert rules on each Snapshot"),
        "rule_files": Key([], _list(nonempty_text), "rule files (empty: the shipped defaults)"),
        "incomplete_data_loss_ratio": Key(
            0.0, number(float, 0, 1), "loss ratio above which an alert says incomplete_data"
        ),
        "max_alerts_per_rule": Key(100, number(int, 1), "alert instances one rule may have"),
        "node": Key(None, optional(nonempty_text), "node label; null: $NODE_NAME or host name"),
    },
    "alertmanager": {
        "urls": Key([], _list(_url), "Alertmanagers to post alerts to (each one)"),
        "resend_interval_s": Key(60.0, number(float, 1, 86400), "firing alerts re-sent this often"),
    },
    "kubernetes": {
        "enabled": Key("auto", _auto_bool, "pod names from the API; auto: when in a pod"),
        "node_name": Key(None, optional(nonempty_text), "node; null: $NODE_NAME, else host name"),
        "api_server": Key(None, optional(_https_url), "null: $KUBERNETES_SERVICE_HOST:PORT"),
        "token_file": Key(
            "/var/run/secrets/kubernetes.io/serviceaccount/token", nonempty_text, "bearer token"
        ),
        "ca_file": Key(
            "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
            optional(nonempty_text),
            "CA of the API server; null: the system's roots",
        ),
        "kubeconfig": Key(
            None,
            optional(nonempty_text),
            "not in a pod: this kubeconfig; null: $KUBECONFIG, ~/.kube/config, K3s's",
        ),
        "context": Key(None, optional(nonempty_text), "the kubeconfig's context; null: current"),
        "timeout_s": Key(10.0, number(float, 0.1, 300), "wait for an answer of the API server"),
        "resync_s": Key(300.0, number(float, 1, 86400), "full relist this often"),
    },
}

Config = dict  # nested: section -> key -> value, every key present


def defaults(schema: Mapping[str, Any] = SCHEMA) -> Config:
    return yamlcheck.defaults(schema)


def load(path: str | Path) -> Config:
    """Read and check a config file; raise ConfigError naming file and line."""
    return _checked(read_tree(path), str(path))


def parse(text: str, name: str = "<config>") -> Config:
    return _checked(compose(text, name), name)


def _checked(root: yaml.Node | None, name: str) -> Config:
    config = defaults()
    if root is None:
        return config
    walk(root, SCHEMA, config, (), name)
    _cross_checks(config, root, name)
    return config


def _cross_checks(config: Config, root: yaml.Node, name: str) -> None:
    trace = config["probes"]["trace"]
    if not trace["enabled"] and (trace["pids"] or trace["comms"] or trace["cgroups"]):
        raise ConfigError(
            f"{name}:{_line_of(root, ('probes', 'trace', 'enabled'))}: probes.trace.enabled: "
            "false, but probes.trace names processes to trace: expected one or the other"
        )
    _grpc_checks(config, root, name)


def _grpc_checks(config: Config, root: yaml.Node, name: str) -> None:
    """Who may connect is decided: a unix socket (its file mode, its group existing), or TCP
    with client certificates, or TCP explicitly open to whoever reaches it. Both TLS files or
    neither; every file readable (relative to the config file's directory), the certificate
    loading with its key, the client CA loading as certificates."""
    g = config["grpc"]

    def fail(key: str, what: str) -> ConfigError:
        return ConfigError(f"{name}:{_line_of(root, ('grpc', key))}: grpc.{key}: {what}")

    cert, key = g["tls_cert_file"], g["tls_key_file"]
    if (cert is None) != (key is None):
        given = "tls_cert_file" if cert is not None else "tls_key_file"
        raise fail(given, "expected both grpc.tls_cert_file and grpc.tls_key_file, or neither")
    on_unix = g["listen"].startswith(UNIX_PREFIX)
    if on_unix:
        for k in ("tls_cert_file", "client_ca_file"):
            if g[k] is not None:
                raise fail(
                    k,
                    f"TLS is for a TCP grpc.listen ({g['listen']} is a unix socket, guarded by "
                    "its file mode and grpc.socket_group): expected null",
                )
        if g["socket_group"] is not None and group_id(g["socket_group"]) is None:
            raise fail("socket_group", f"no group {g['socket_group']!r} on this host")
    else:
        if g["socket_group"] is not None:
            raise fail("socket_group", f"for a unix: grpc.listen only, not {g['listen']}")
        if g["client_ca_file"] is not None and cert is None:
            raise fail(
                "client_ca_file",
                "client certificates need TLS: expected grpc.tls_cert_file and "
                "grpc.tls_key_file too",
            )
        if g["client_ca_file"] is None and g["enabled"] and not g["allow_unauthenticated"]:
            raise fail(
                "listen",
                f"{g['listen']} would serve the node's requests (trace ids, paths, pod names) "
                "to every process and host that can reach it: expected grpc.client_ca_file "
                "(client certificates, with grpc.tls_cert_file and grpc.tls_key_file), or a "
                "unix:PATH, or grpc.allow_unauthenticated: true to accept that",
            )
    paths = {}
    for k in ("tls_cert_file", "tls_key_file", "client_ca_file"):
        if g[k] is None:
            continue
        p = config_relative(g[k], name)
        if not is_file(p):
            raise fail(k, f"expected a readable file, got {g[k]!r}")
        paths[k] = p
    if cert is not None:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
                str(paths["tls_cert_file"]), str(paths["tls_key_file"])
            )
        except (ssl.SSLError, OSError) as exc:
            raise fail(
                "tls_cert_file", f"cannot load the certificate with grpc.tls_key_file: {exc}"
            ) from None
    if "client_ca_file" in paths:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(
                cafile=str(paths["client_ca_file"])
            )
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise fail("client_ca_file", f"expected PEM CA certificates: {exc}") from None


def group_id(group: int | str) -> int | None:
    """The gid of grpc.socket_group (a name or a number), None when no such group exists on this
    host."""
    try:
        return grp.getgrgid(group).gr_gid if isinstance(group, int) else grp.getgrnam(group).gr_gid
    except (KeyError, OverflowError):
        return None


def schema_keys(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> list[str]:
    """Every leaf key as a dotted path (for the docs test)."""
    out: list[str] = []
    for k, v in schema.items():
        if isinstance(v, dict):
            out += schema_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out
