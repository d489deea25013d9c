"""Where pod names come from, the same for `wasmtop`, `wasmtop snapshot` and the daemon.

In order: the ``kubernetes`` section's API server or the pod's service account (in a pod); else a
kubeconfig (``kubernetes.kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``, else K3s's
``/etc/rancher/k3s/k3s.yaml``), its current context's cluster and user, with a bearer token
(inline or ``tokenFile``) or a client certificate (files or ``-data``); else none, said once.

A kubeconfig is read like wasmtop's own config: any error names the file and line and what was
expected (``KubeconfigError``, a ConfigError). What kubectl runs to get credentials (``exec``,
``auth-provider``) wasmtop does not run: it says so instead."""

from __future__ import annotations

import base64
import binascii
import os
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .yamlcheck import (
    ConfigError,
    child,
    config_relative,
    construct,
    node_where,
    read_tree,
    shown,
)

NOT_IN_A_POD = (
    "none: not in a pod, and no kubeconfig ($KUBECONFIG, ~/.kube/config, "
    "/etc/rancher/k3s/k3s.yaml): workloads in pods are named by pod UID"
)

K3S_KUBECONFIG = "/etc/rancher/k3s/k3s.yaml"
SECTIONS = ("clusters", "users", "contexts")
POD_LIST_WAIT_S = 3.0  # a single Snapshot waits this long at most for the pod list


class KubeconfigError(ConfigError):
    """A kubeconfig wasmtop cannot use: ``FILE:LINE: what was expected``."""


@dataclass(frozen=True)
class KubeCredentials:
    """What one context of a kubeconfig says about reaching its cluster."""

    path: str
    context: str
    server: str
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    client_cert_data: bytes | None = field(default=None, repr=False)
    client_key_data: bytes | None = field(default=None, repr=False)


def kubeconfig_paths(explicit: str | None, env: Mapping[str, str] = os.environ) -> list[Path]:
    """The kubeconfig files to read, in kubectl's order: the one named, else every file of
    ``$KUBECONFIG`` (colon-separated), else ``~/.kube/config``, else K3s's."""
    if explicit:
        return [_expand(explicit)]
    listed = [_expand(p) for p in env.get("KUBECONFIG", "").split(os.pathsep) if p]
    if listed:
        return listed
    home = env.get("HOME")
    return [*([Path(home) / ".kube" / "config"] if home else []), Path(K3S_KUBECONFIG)]


def _expand(path: str) -> Path:
    try:
        return Path(path).expanduser()
    except RuntimeError:  # ~user of no such user: the path as written (then not found)
        return Path(path)


def _present(path: Path) -> bool:
    """The file is there (read_tree then says when it cannot be read: a directory, EACCES)."""
    try:
        path.stat()
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    except OSError:
        return True
    return True


def load(paths: list[Path], context: str | None = None) -> KubeCredentials | None:
    """The credentials of ``context`` (else the current context) from the first of ``paths``
    that exist, merged as kubectl merges them (a name's first definition wins); None when no
    file exists. KubeconfigError when one is malformed or names what is not there."""
    files = [p for p in paths if _present(p)]
    if not files:
        return None
    named: dict[str, dict[str, tuple[yaml.Node, str]]] = {s: {} for s in SECTIONS}
    current: tuple[str, yaml.Node, str] | None = None
    for path in files:
        name = str(path)
        root = read_tree(path, " the kubeconfig")
        if root is None:
            continue
        if not isinstance(root, yaml.MappingNode):
            raise KubeconfigError(f"{node_where(name, root)}: expected a kubeconfig (a mapping)")
        for section, entries in named.items():
            node = child(root, section)
            if node is None or _null(node):
                continue
            if not isinstance(node, yaml.SequenceNode):
                raise KubeconfigError(f"{node_where(name, node)}: {section}: expected a list")
            for item in node.value:
                entry = _text(child(item, "name"), f"{section}[].name", name, item)
                body = child(item, section[:-1])
                if body is None or not isinstance(body, yaml.MappingNode):
                    raise KubeconfigError(
                        f"{node_where(name, item)}: {section}: {entry}: expected a "
                        f"{section[:-1]} mapping"
                    )
                entries.setdefault(entry, (body, name))
        cur = child(root, "current-context")
        # kubectl writes "" when no context is set: as good as absent.
        if current is None and cur is not None and not _null(cur) and cur.value != "":
            current = (_text(cur, "current-context", name, cur), cur, name)
    if context is None:
        if current is None:
            raise KubeconfigError(f"{files[0]}: expected a current-context (or pass a context)")
        context = current[0]
    if context not in named["contexts"]:
        where = node_where(current[2], current[1]) if current else str(files[0])
        raise KubeconfigError(f"{where}: context {context!r}: expected it under contexts")
    ctx, ctx_file = named["contexts"][context]
    cluster_name = _text(child(ctx, "cluster"), "context.cluster", ctx_file, ctx)
    user_name = _text(child(ctx, "user"), "context.user", ctx_file, ctx)
    if cluster_name not in named["clusters"]:
        raise KubeconfigError(
            f"{node_where(ctx_file, ctx)}: cluster {cluster_name!r}: expected it under clusters"
        )
    cluster, cluster_file = named["clusters"][cluster_name]
    found: dict[str, Any] = {"path": ctx_file, "context": context}
    found.update(_cluster(cluster, cluster_file))
    if user_name in named["users"]:
        user, user_file = named["users"][user_name]
        found.update(_user(user, user_file, user_name))
    elif user_name:
        raise KubeconfigError(
            f"{node_where(ctx_file, ctx)}: user {user_name!r}: expected it under users"
        )
    return KubeCredentials(**found)


def _cluster(node: yaml.MappingNode, name: str) -> dict[str, Any]:
    server = _text(child(node, "server"), "cluster.server", name, node)
    try:
        parts = urllib.parse.urlsplit(server)
        usable = parts.scheme == "https" and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a port that is not a number, an unclosed [
        usable = False
    if not usable:
        raise KubeconfigError(
            f"{_at(name, node, 'server')}: cluster.server: expected an https://HOST[:PORT] URL "
            f"(plain http, as kubectl proxy serves, is not supported), got {shown(server)}"
        )
    out: dict[str, Any] = {"server": server}
    if (ca := _optional_text(node, "certificate-authority", name)) is not None:
        out["ca_file"] = str(config_relative(ca, name))
    if (data := _data(node, "certificate-authority-data", name)) is not None:
        out["ca_data"] = data.decode("ascii", errors="replace")
    skip = child(node, "insecure-skip-tls-verify")
    if skip is not None:
        value = construct(skip, "cluster.insecure-skip-tls-verify", name)
        if not isinstance(value, bool):
            raise KubeconfigError(
                f"{node_where(name, skip)}: cluster.insecure-skip-tls-verify: expected true or "
                "false"
            )
        out["insecure"] = value
    return out


def _user(node: yaml.MappingNode, name: str, user: str) -> dict[str, Any]:
    for plugin in ("exec", "auth-provider"):
        at = child(node, plugin)
        if at is not None and not _null(at):
            raise KubeconfigError(
                f"{_at(name, node, plugin)}: user {user!r} gets its credentials from an {plugin} "
                "plugin, which wasmtop does not run: expected a token, a tokenFile or a client "
                "certificate"
            )
    out: dict[str, Any] = {}
    if (token := _optional_text(node, "token", name)) is not None:
        out["token"] = token
    if (token_file := _optional_text(node, "tokenFile", name)) is not None:
        out["token_file"] = str(config_relative(token_file, name))
    cert = _optional_text(node, "client-certificate", name)
    key = _optional_text(node, "client-key", name)
    cert_data = _data(node, "client-certificate-data", name)
    key_data = _data(node, "client-key-data", name)
    if (cert is None) != (key is None) or (cert_data is None) != (key_data is None):
        raise KubeconfigError(
            f"{node_where(name, node)}: user {user!r}: expected a client certificate and its "
            "key together"
        )
    if cert is not None:
        out["client_cert"] = str(config_relative(cert, name))
        out["client_key"] = str(config_relative(key, name))  # type: ignore[arg-type]
    if cert_data is not None:
        out["client_cert_data"], out["client_key_data"] = cert_data, key_data
    if not out and (child(node, "username") is not None or child(node, "password") is not None):
        raise KubeconfigError(
            f"{node_where(name, node)}: user {user!r}: expected a token, a tokenFile or a "
            "client certificate (username and password are not supported)"
        )
    return out  # nothing: anonymous, as kubectl does it


def _at(name: str, mapping: yaml.Node, key: str) -> str:
    """``FILE:LINE`` of ``key`` in a mapping node (its value may start on a later line)."""
    keys = [k for k, _ in getattr(mapping, "value", ()) if getattr(k, "value", None) == key]
    return node_where(name, keys[0] if keys else mapping)


def _null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")


def _text(node: yaml.Node | None, key: str, name: str, parent: yaml.Node) -> str:
    if node is None:
        raise KubeconfigError(f"{node_where(name, parent)}: {key}: expected a name, got none")
    value = construct(node, key, name)
    if not isinstance(value, str) or not value:
        raise KubeconfigError(f"{node_where(name, node)}: {key}: expected text")
    return value


def _optional_text(node: yaml.MappingNode, key: str, name: str) -> str | None:
    at = child(node, key)
    if at is None or _null(at):
        return None
    return _text(at, key, name, node)


def _data(node: yaml.MappingNode, key: str, name: str) -> bytes | None:
    text = _optional_text(node, key, name)
    if text is None:
        return None
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise KubeconfigError(f"{_at(name, node, key)}: {key}: expected base64") from None


def api_settings(
    k: Mapping[str, Any], config_path: str | Path, env: Mapping[str, str] = os.environ
) -> tuple[Any, str]:
    """(ApiSettings, how) when pod metadata is to be read from the API, else (None, why): the
    one resolution `wasmtop`, `wasmtop snapshot` and the daemon share. ``k``: a config's
    ``kubernetes`` section (paths in it relative to ``config_path``)."""
    from .alerts.evaluate import default_node
    from .collector.kubernetes import ApiSettings, in_cluster_server

    if k["enabled"] is False:
        return None, "off (kubernetes.enabled: false)"
    node = k["node_name"] or default_node(env)
    common = {"node": node, "timeout_s": k["timeout_s"], "resync_s": k["resync_s"]}
    explicit = k.get("kubeconfig")
    if explicit:
        explicit = str(config_relative(str(_expand(explicit)), str(config_path)))
    # kubernetes.api_server, else a kubeconfig named explicitly, else the pod's service account.
    server = k["api_server"] or (None if explicit else in_cluster_server(env))
    if server is not None:
        token = str(config_relative(k["token_file"], str(config_path)))
        ca = k["ca_file"] and str(config_relative(k["ca_file"], str(config_path)))
        if k["enabled"] == "auto" and not os.path.isfile(token):
            return None, f"off: no service account token at {token} (automountServiceAccountToken?)"
        how = "the pod's service account" if not k["api_server"] else "kubernetes.api_server"
        s = ApiSettings(server, token_file=token, ca_file=ca or None, source=how, **common)
        return s, f"{how}, node {node}"
    try:
        creds = load(kubeconfig_paths(explicit, env), k.get("context"))
    except ConfigError as exc:
        return None, f"off: {exc}"
    if creds is None:
        if explicit:
            return None, f"off: no kubeconfig at {explicit}"
        if k["enabled"] is True:
            return None, (
                "off: kubernetes.enabled is true but no API server is known (set "
                "kubernetes.api_server or kubernetes.kubeconfig, or run in a pod)"
            )
        return None, NOT_IN_A_POD
    how = f"kubeconfig {creds.path}, context {creds.context}"
    s = ApiSettings(
        creds.server,
        token_file=creds.token_file,
        ca_file=creds.ca_file,
        token=creds.token,
        ca_data=creds.ca_data,
        client_cert=creds.client_cert,
        client_key=creds.client_key,
        client_cert_data=creds.client_cert_data,
        client_key_data=creds.client_key_data,
        insecure=creds.insecure,
        source=how,
        **common,
    )
    return s, f"{how}, node {node}" + (" (insecure-skip-tls-verify)" if creds.insecure else "")


@contextmanager
def pod_names(
    kubeconfig: str | None,
    context: str | None,
    off: bool,
    say: Callable[[str], None],
    env: Mapping[str, str] = os.environ,
) -> Iterator[Any]:
    """For `wasmtop` and `wasmtop snapshot`: a PodCache the API server fills on a thread of its
    own, found as the daemon finds it (api_settings; the command's flags in place of the
    config's keys), or None; said once through ``say`` either way. The watcher stops after."""
    from .collector.kubernetes import PodCache, PodWatcher
    from .config import defaults

    if off:
        yield None
        return
    k = {**defaults()["kubernetes"], "kubeconfig": kubeconfig, "context": context}
    settings, how = api_settings(k, Path.cwd() / "wasmtop.yaml", env)
    if settings is None:
        say(f"pod names: {how}")
        yield None
        return
    cache = PodCache()
    try:
        watcher = PodWatcher(settings, cache, log=say).start()
    except ValueError as exc:  # a server URL the watcher cannot use
        say(f"pod names: off: {exc}")
        yield None
        return
    say(f"pod names from {how}")
    try:
        yield cache
    finally:
        watcher.close()


def wait_for_pod_list(
    pods: Any, drain: Callable[[float], None], say: Callable[[str], None]
) -> None:
    """For a single Snapshot (`snapshot`, `wasmtop --once`): drain on while the API lists the
    pods, at most POD_LIST_WAIT_S, so that Snapshot has their names; said when it waits."""
    if pods is None or pods.synced:
        return
    say(f"waiting up to {POD_LIST_WAIT_S:g} s for the API server's pod list")
    deadline = time.monotonic() + POD_LIST_WAIT_S
    while not pods.synced and time.monotonic() < deadline:
        drain(0.1)
