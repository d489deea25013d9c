"""Pod metadata in the real daemon on the real kernel: a busy process in a kubelet-shaped cgroup
(created under this host's cgroup2 mount, removed after) is a workload of the scheduler probe,
named by a stand-in Kubernetes API server (tests/kube_standin.py: no API server can run here;
it replays the v1 JSON of tests/fixtures/kubernetes and checks the token and the node's
fieldSelector). Also: on a plain host nothing is attempted, and an API server that cannot be
reached never stops the daemon."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml
from kube_standin import NODE, KubeApiStandIn, event, fixture

from peers import daemon, free_port, get, metric_value
from support import wait_for, workloads
from wasmtop.collector.workloads import Pod
from wasmtop.grpcapi import RemoteSnapshots
from wasmtop.probes import features

pytestmark = pytest.mark.bpf

TOKEN = "stand-in-service-account-token"


@contextmanager
def kubelet_cgroup(uid: str, cid: str) -> Iterator[Path]:
    """``kubepods.slice/.../kubepods-besteffort-pod<uid>.slice/cri-containerd-<cid>.scope`` under
    the cgroup2 mount (systemd driver, containerd), as the kubelet makes it. Directories this
    made are removed after, their processes moved back to the root first."""
    root = features.cgroup2_mount()
    assert root is not None, "no cgroup2 mount in /proc/mounts"
    slice_ = f"kubepods-besteffort-pod{uid.replace('-', '_')}.slice"
    parts = ["kubepods.slice", "kubepods-besteffort.slice", slice_, f"cri-containerd-{cid}.scope"]
    made: list[Path] = []
    path = root
    try:
        for part in parts:
            path = path / part
            if not path.exists():  # another test's kubepods.slice may be there: keep it
                path.mkdir()
                made.append(path)
        yield path
    finally:
        for d in reversed(made):
            for pid in (d / "cgroup.procs").read_text().split():
                try:
                    (root / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # exited meanwhile
            try:
                d.rmdir()
            except OSError:
                pass  # another test's pod moved in meanwhile


@contextmanager
def busy_in(cgroup: Path) -> Iterator[int]:
    """The pid of a Python CPU loop born in ``cgroup`` (the shell that starts it moves itself
    there first, as runc does before it execs a container's process): never seen outside."""
    shell = subprocess.Popen(
        ["sh", "-c", 'echo $$ > "$1/cgroup.procs" && { "$0" -c "while True: pass" & echo $!; '
         "wait; }", sys.executable, str(cgroup)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    pid = int(shell.stdout.readline())
    try:
        yield pid
    finally:
        os.kill(pid, signal.SIGKILL)  # the shell's wait reaps it, then the shell ends
        shell.wait()


def pod_object(uid: str, cid: str, name: str) -> dict:
    """The first pod of the fixture list, made the one whose cgroup the test created."""
    pod = copy.deepcopy(fixture("podlist.json")["items"][0])
    pod["metadata"].update(uid=uid, name=name, resourceVersion="1300")
    status = pod["status"]["containerStatuses"][0]
    assert status["name"] == "app" and pod["spec"]["runtimeClassName"] == "wasmtime"
    status["containerID"] = f"containerd://{cid}"
    return pod


def kube_config(tmp_path: Path, cert: Path, server: str) -> dict:
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")
    return {
        "enabled": True,
        "node_name": NODE,
        "api_server": server,
        "token_file": str(token),
        "ca_file": str(cert),
        "timeout_s": 1.0,
    }


def until(probe, timeout_s: float = 30):
    """The first true value ``probe()`` returns within ``timeout_s`` (None if none)."""
    found = []
    wait_for(lambda: found.append(probe()) or found[-1], timeout_s=timeout_s)
    return found[-1] if found else None


def metrics(d) -> bytes:
    status, body = get(f"{d.base}/metrics")
    assert status == 200
    return body


def reload(d, change) -> None:
    config = yaml.safe_load(d.config.read_text())
    change(config)
    d.config.write_text(yaml.safe_dump(config))
    before = metric_value(metrics(d), "wasmtop_config_reloads_total", result="ok") or 0
    d.proc.send_signal(signal.SIGHUP)
    assert wait_for(
        lambda: metric_value(metrics(d), "wasmtop_config_reloads_total", result="ok") == before + 1
    )


def test_pods_get_namespace_name_container_and_runtime_class_from_the_api(tmp_path, tls_files):
    cert, key = tls_files
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    name = f"hello-wasm-{uid[:5]}"
    key_ = f"pod:{uid}/{cid}"
    with ExitStack() as stack:
        api = stack.enter_context(KubeApiStandIn(cert, key, token=TOKEN))
        cgroup = stack.enter_context(kubelet_cgroup(uid, cid))
        config = {"probes": {"bypass": {"mode": "off"}},
                  "kubernetes": kube_config(tmp_path, cert, api.url)}  # fmt: skip
        d = stack.enter_context(daemon(tmp_path, config))
        busy = stack.enter_context(busy_in(cgroup))
        grpc_listen = yaml.safe_load(d.config.read_text())["grpc"]["listen"]
        remote = stack.enter_context(RemoteSnapshots(grpc_listen))
        assert f"0::/{cgroup.relative_to(features.cgroup2_mount())}\n" in (
            Path(f"/proc/{busy}/cgroup").read_text()
        )
        assert f"watching the pods of node {NODE} at {api.url}" in d.stderr_so_far()
        assert wait_for(lambda: metric_value(metrics(d), "wasmtop_kubernetes_cache_synced") == 1)
        assert metric_value(metrics(d), "wasmtop_kubernetes_pods") == 2  # the fixture's pods

        def workload(named: bool):
            snap = remote.latest(2.0)
            found = [w for w in snap.workloads if w.key == key_] if snap else []
            if found and (found[0].pod.name is not None) == named:
                return snap, found[0]
            return None

        # The API has not told about this pod yet: it is known by its UID only.
        found = until(lambda: workload(named=False))
        assert found, remote.error
        _, w = found
        assert w.pod == Pod(None, None, uid, None, cid, None)
        assert (w.kind, w.runtime) == ("container", None) and busy in w.pids
        assert w.sched.cpu_time_ns_by_cpu  # the kernel saw it run

        api.push(event("ADDED", pod_object(uid, cid, name)))  # the kubelet started it
        found = until(lambda: workload(named=True))
        assert found, remote.error
        _, w = found
        assert w.pod == Pod("edge", name, uid, "app", cid, "wasmtime")
        # Its RuntimeClass makes it a WebAssembly workload, traced like any (the default).
        assert (w.kind, w.runtime) == ("wasm", "wasmtime")

        def traced() -> bool:
            snap = remote.latest(2.0)  # None when no new Snapshot came meanwhile
            return snap is not None and busy in snap.probes["tracectx"]["traced_pids"]

        assert wait_for(traced, timeout_s=30)
        text = metrics(d)
        labels = {"workload": key_, "namespace": "edge", "pod": name, "container": "app",
                  "runtime": "wasmtime"}  # fmt: skip
        assert metric_value(text, "wasmtop_context_switches_total", **labels) is not None
        assert metric_value(text, "wasmtop_cpu_seconds_total", **labels) > 0
        info = {**labels, "kind": "wasm", "runtime_class": "wasmtime"}
        assert metric_value(text, "wasmtop_workload_info", **info) == 1
        assert metric_value(text, "wasmtop_kubernetes_pods") == 3
        assert metric_value(text, "wasmtop_kubernetes_watch_events_total", type="added") == 1
        assert metric_value(text, "wasmtop_kubernetes_requests_total", request="list",
                            outcome="ok") == 1  # fmt: skip
    assert api.seen and all(s.authorization == f"Bearer {TOKEN}" for s in api.seen)
    assert api.problems == []  # every request named this node in its fieldSelector
    assert not cgroup.parent.exists()  # the pod's cgroup is gone with the test


def test_local_mode_attempts_nothing_and_an_unreachable_api_never_stops_the_daemon(
    tmp_path, tls_files, monkeypatch
):
    cert, key = tls_files
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # a plain host
    config = {"probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}}}
    with workloads(("sleeper", {})) as (sleeper,), daemon(tmp_path, config) as d:
        sleeper.go()
        assert wait_for(
            lambda: metric_value(
                metrics(d), "wasmtop_context_switches_total", workload=f"pid:{sleeper.pid}"
            )
        )
        assert b"wasmtop_kubernetes" not in metrics(d)
        assert "kubernetes" not in d.stderr_so_far().lower()

        # enabled: true, and nothing listens where the API server should be.
        closed = f"https://127.0.0.1:{free_port()}"
        reload(d, lambda c: c.update(kubernetes=kube_config(tmp_path, cert, closed)))

        def refused() -> float:
            value = metric_value(metrics(d), "wasmtop_kubernetes_requests_total", request="list",
                                 outcome="connection_error")  # fmt: skip
            return value or 0

        assert wait_for(lambda: refused() >= 2, timeout_s=30)  # retried
        text = metrics(d)
        assert metric_value(text, "wasmtop_kubernetes_cache_synced") == 0
        assert metric_value(text, "wasmtop_kubernetes_pods") == 0
        assert d.stderr_so_far().count("Connection refused") == 1  # logged once
        assert get(f"{d.base}/readyz")[0] == 200 and d.proc.poll() is None
        snapshots = metric_value(text, "wasmtop_snapshots_total")
        assert wait_for(lambda: metric_value(metrics(d), "wasmtop_snapshots_total") > snapshots)

        # The API server comes up at another address: SIGHUP moves the watcher there.
        with KubeApiStandIn(cert, key, token=TOKEN) as api:
            reload(d, lambda c: c["kubernetes"].update(api_server=api.url))
            assert wait_for(
                lambda: metric_value(metrics(d), "wasmtop_kubernetes_cache_synced") == 1
            )
            text = metrics(d)
            assert metric_value(text, "wasmtop_kubernetes_pods") == 2
            assert refused() >= 2  # the counts go on across the rebuild
            # The section back to its defaults (auto, on a plain host): off again.
            reload(d, lambda c: c.pop("kubernetes"))
            assert wait_for(lambda: b"wasmtop_kubernetes" not in metrics(d))  # next Snapshot
        assert api.problems == []
