"""The daemon's YAML config: schema, defaults, and errors that name file, line and expectation.

Every key has a default, so a file naming only ``metrics: {listen: ...}`` is complete. The
schema below is the single source: ``docs/config.md`` documents it and a test checks that every
key in it appears there and in ``deploy/wasmtop.yaml``.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config: ``str()`` is ``FILE:LINE: key.path: what was expected, got what``."""


@dataclass(frozen=True)
class Key:
    default: Any
    parse: Callable[[Any], Any]  # raises ValueError("expected ...") on a bad value
    doc: str


def number(kind: type, low: float | None = None, high: float | None = None) -> Callable:
    words = "an integer" if kind is int else "a number"
    if low is not None and high is not None:
        expected = f"{words} from {low:g} to {high:g}"
    elif low is not None:
        expected = f"{words} >= {low:g}"
    else:
        expected = words

    def parse(v: Any) -> Any:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
        if kind is int:
            ok = ok and float(v).is_integer()
        if not ok or (low is not None and v < low) or (high is not None and v > high):
            raise ValueError(f"expected {expected}, got {v!r}")
        return kind(v)

    return parse


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def choice(*choices: str) -> Callable[[Any], str]:
    def parse(v: Any) -> str:
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {v!r}")
        return v

    return parse


def nonempty_text(v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise ValueError(f"expected a non-empty string, got {v!r}")
    return v


def optional(parse: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda v: None if v is None else parse(v)


def _list(parse: Callable[[Any], Any]) -> Callable[[Any], list]:
    def parse_list(v: Any) -> list:
        if not isinstance(v, list):
            raise ValueError(f"expected a list, got {v!r}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(parse(item))
            except ValueError as exc:
                raise ValueError(f"item {i}: {exc}") from None
        return out

    return parse_list


def str_map(v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(
        isinstance(k, str) and isinstance(x, (str, int)) and not isinstance(x, bool)
        for k, x in v.items()
    ):
        raise ValueError(f"expected a map of names to strings, got {v!r}")
    return {k: str(x) for k, x in v.items()}


def host_port(v: Any) -> str:
    """``HOST:PORT`` with a literal IP (v6 in brackets) or a name, port 0-65535."""
    m = re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[^:\s\[\]]+):(\d{1,5})", v if isinstance(v, str) else "")
    if not m or int(m.group(2)) > 65535:
        raise ValueError(f"expected HOST:PORT such as 127.0.0.1:9464, got {v!r}")
    host = m.group(1).strip("[]")
    if m.group(1).startswith("["):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address in brackets, got {v!r}") from None
    return v


def _url(v: Any) -> str:
    parts = urllib.parse.urlsplit(v) if isinstance(v, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
    return v.rstrip("/")


def _https_url(v: Any) -> str:
    expected = f"expected an https:// URL such as https://10.43.0.1:443, got {v!r}"
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
    raise ValueError(f"expected auto, true or false, got {v!r}")


def cidr(v: Any) -> str:
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except (TypeError, ValueError):
        raise ValueError(f"expected an address range such as 10.42.0.0/16, got {v!r}") from None


def comm_name(v: Any) -> str:
    if not isinstance(v, str) or not v or len(v.encode()) > 15:
        raise ValueError(
            f"expected a command name of 1 to 15 bytes (as in /proc/PID/comm), got {v!r}"
        )
    return v


def _cgroup(v: Any) -> str:
    from .probes.features import cgroup_dir

    cgroup_dir(nonempty_text(v))  # ValueError: "cgroup X not found under /sys/fs/cgroup"
    return v


def _interface(v: Any) -> str:
    if not Path(f"/sys/class/net/{nonempty_text(v)}").exists() or "/" in v:
        raise ValueError(f"expected a network interface of this host, got {v!r}")
    return v


def _power_of_two(v: Any) -> int:
    n = number(int, 1)(v)
    if n & (n - 1):
        raise ValueError(f"expected a power of two, got {v!r}")
    return n


_pid = number(int, 1)

SCHEMA: dict[str, Any] = {
    "probes": {
        "sched": {
            "threshold_ms": Key(50.0, number(float, 0), "preemption delay that makes an event"),
            "pids": Key([], _list(_pid), "only these processes (empty: all)"),
            "cgroup": Key(None, optional(_cgroup), "only this cgroup subtree (path)"),
            "ringbuf_pages": Key(64, _power_of_two, "ring buffer size in pages"),
        },
        "bypass": {
            "mode": Key("observe", choice("observe", "accelerate", "off"), "socket bypass"),
            "local_cidrs": Key([], _list(cidr), "extra local address ranges"),
            "interfaces": Key([], _list(_interface), "extra interfaces for stack byte counts"),
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
        },
    },
    "collector": {
        "tick_s": Key(1.0, number(float, 0.1, 60), "seconds between Snapshots"),
        "scheduling": Key("idle", choice("idle", "normal"), "collector thread policy"),
        "growth_window_s": Key(300.0, number(float, 1), "RSS growth slope window"),
        "max_events": Key(1000, number(int, 0), "over-threshold events kept per Snapshot"),
        "probe_stats": Key(False, _bool, "time the probes in the kernel (taxes every program)"),
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
        "listen": Key("127.0.0.1:9465", host_port, "address of the gRPC API"),
        "tls_cert_file": Key(
            None, optional(nonempty_text), "server certificate (PEM); null: plaintext"
        ),
        "tls_key_file": Key(None, optional(nonempty_text), "its private key (PEM)"),
        "max_streams": Key(16, number(int, 1, 1000), "Watch streams served at once"),
    },
    "otlp": {
        "endpoint": Key(None, optional(host_port), "OTLP/gRPC receiver; null: off"),
        "insecure": Key(True, _bool, "plaintext gRPC (false: TLS with system roots)"),
        "headers": Key({}, str_map, "gRPC metadata sent with each export"),
        "interval_s": Key(10.0, number(float, 0.5, 3600), "metrics export interval"),
        "timeout_s": Key(5.0, number(float, 0.1, 60), "deadline of one export with retries"),
        "max_queue_spans": Key(8192, number(int, 1), "spans held while the receiver is down"),
        "resource": Key({}, str_map, "extra resource attributes, e.g. k8s.node.name"),
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
        "resend_interval_s": Key(60.0, number(float, 1), "firing alerts re-sent this often"),
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
        "timeout_s": Key(10.0, number(float, 0.1, 300), "wait for an answer of the API server"),
        "resync_s": Key(300.0, number(float, 1, 86400), "full relist this often"),
    },
}

Config = dict  # nested: section -> key -> value, every key present


def defaults(schema: Mapping[str, Any] = SCHEMA) -> Config:
    return {
        k: defaults(v) if isinstance(v, dict) else copy.deepcopy(v.default)
        for k, v in schema.items()
    }


def load(path: str | Path) -> Config:
    """Read and check a config file; raise ConfigError naming file and line."""
    return _checked(read_tree(path), str(path))


def read_tree(path: str | Path, what: str = "") -> yaml.Node | None:
    """A YAML file's node tree; ConfigError naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read{what}: {exc.strerror}") from None
    return compose(text, str(path))


def compose(text: str, name: str) -> yaml.Node | None:
    """The YAML node tree (nodes know their lines); ConfigError on a syntax error."""
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f"{mark.line + 1}:" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{name}:{line} not valid YAML: {problem}") from None


def parse(text: str, name: str = "<config>") -> Config:
    return _checked(compose(text, name), name)


def _checked(root: yaml.Node | None, name: str) -> Config:
    config = defaults()
    if root is None:
        return config
    walk(root, SCHEMA, config, (), name)
    _cross_checks(config, root, name)
    return config


def node_where(name: str, node: yaml.Node) -> str:
    """``FILE:LINE`` of a node, for messages."""
    return f"{name}:{node.start_mark.line + 1}"


def walk(node: yaml.Node, schema: Mapping[str, Any], out: dict, path: tuple, name: str) -> None:
    dotted = ".".join(path) or "the top level"
    if not isinstance(node, yaml.MappingNode):
        raise ConfigError(f"{node_where(name, node)}: {dotted}: expected a map of keys")
    seen: set[str] = set()
    for key_node, value_node in node.value:
        key = key_node.value
        where = node_where(name, key_node)
        full = ".".join((*path, str(key)))
        if key not in schema:
            raise ConfigError(
                f"{where}: {full}: unknown key (expected one of: {', '.join(schema)})"
            )
        if key in seen:
            raise ConfigError(f"{where}: {full}: given twice")
        seen.add(key)
        spec = schema[key]
        if isinstance(spec, dict):
            if isinstance(value_node, yaml.ScalarNode) and value_node.tag.endswith(":null"):
                continue  # "section:" with nothing under it: all defaults
            walk(value_node, spec, out[key], (*path, key), name)
            continue
        value = yaml.SafeLoader("").construct_object(value_node, deep=True)
        try:
            out[key] = spec.parse(value)
        except ValueError as exc:
            raise ConfigError(f"{node_where(name, value_node)}: {full}: {exc}") from None


def _cross_checks(config: Config, root: yaml.Node, name: str) -> None:
    trace = config["probes"]["trace"]
    if not trace["enabled"] and (trace["pids"] or trace["comms"] or trace["cgroups"]):
        raise ConfigError(
            f"{name}:{_line_of(root, ('probes', 'trace', 'enabled'))}: probes.trace.enabled: "
            "false, but probes.trace names processes to trace: expected one or the other"
        )
    _grpc_checks(config, root, name)


def _grpc_checks(config: Config, root: yaml.Node, name: str) -> None:
    """Both TLS files or neither; each a readable file (relative to the config file's
    directory), and together a certificate with its key."""
    g = config["grpc"]
    cert, key = g["tls_cert_file"], g["tls_key_file"]
    if (cert is None) != (key is None):
        given = "tls_cert_file" if cert is not None else "tls_key_file"
        raise ConfigError(
            f"{name}:{_line_of(root, ('grpc', given))}: grpc.{given}: expected both "
            "grpc.tls_cert_file and grpc.tls_key_file, or neither"
        )
    if cert is None:
        return
    paths = {}
    for k in ("tls_cert_file", "tls_key_file"):
        p = config_relative(g[k], name)
        if not p.is_file():
            raise ConfigError(
                f"{name}:{_line_of(root, ('grpc', k))}: grpc.{k}: expected a readable file, "
                f"got {g[k]!r}"
            )
        paths[k] = p
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
            str(paths["tls_cert_file"]), str(paths["tls_key_file"])
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"{name}:{_line_of(root, ('grpc', 'tls_cert_file'))}: grpc.tls_cert_file: cannot "
            f"load the certificate with grpc.tls_key_file: {exc}"
        ) from None


def config_relative(value: str, config_name: str) -> Path:
    """A path from the config: relative ones are relative to the config file's directory."""
    p = Path(value)
    return p if p.is_absolute() else Path(config_name).parent / p


def child(node: yaml.Node, key: str) -> yaml.Node | None:
    """The value node of ``key`` in a mapping node; None when absent (or not a mapping)."""
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((v for k, v in node.value if getattr(k, "value", None) == key), None)


def _line_of(root: yaml.Node, path: tuple[str, ...]) -> int:
    node = root
    for key in path:
        found = child(node, key)
        if found is None:
            break
        node = found
    return node.start_mark.line + 1


def schema_keys(schema: Mapping[str, Any] = SCHEMA, prefix: str = "") -> list[str]:
    """Every leaf key as a dotted path (for the docs test)."""
    out: list[str] = []
    for k, v in schema.items():
        if isinstance(v, dict):
            out += schema_keys(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out
