"""Pod metadata in the real daemon on the real kernel: a busy process in a kubelet-shaped cgroup
(created under this host's cgroup2 mount, removed after) is a workload of the scheduler probe,
named by a stand-in Kubernetes API server (tests/kube_standin.py: no API server can run here;
it replays the v1 JSON of tests/fixtures/kubernetes and checks the token and the node's
fieldSelector). Also: on a plain host nothing is attempted, and an API server that cannot be
reached never stops the daemon."""

from __future__ import annotations

import base64
import copy
import json
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
from support import wait_for, wasmtop_cmd, workloads
from wasmtop.collector.workloads import Pod
from wasmtop.grpcapi import RemoteSnapshots
from wasmtop.kubeconfig import NOT_IN_A_POD
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
        assert w.pod == Pod("edge", name, uid, "app", cid, "wasmtime", "hello-wasm")
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
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config
    config = {"probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}}}
    with workloads(("sleeper", {})) as (sleeper,), daemon(tmp_path, config) as d:
        sleeper.go()
        assert wait_for(
            lambda: metric_value(
                metrics(d), "wasmtop_context_switches_total", workload=f"pid:{sleeper.pid}"
            )
        )
        assert b"wasmtop_kubernetes" not in metrics(d)
        assert d.stderr_so_far().count(NOT_IN_A_POD) == 1  # said once, nothing attempted

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


# -- the same pod names off a pod: a kubeconfig, for `wasmtop`, `snapshot` and the daemon ---------


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict) -> Path:
    """A kubeconfig as kubectl writes one (K3s's has inline data like this)."""
    b64 = lambda p: base64.b64encode(Path(p).read_bytes()).decode()  # noqa: E731
    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": "edge",
        "clusters": [{"name": "edge", "cluster": {
            "server": server, "certificate-authority-data": b64(ca)}}],
        "contexts": [{"name": "edge", "context": {"cluster": "edge", "user": "oncall"}}],
        "users": [{"name": "oncall", "user": {
            k: b64(v) if k.endswith("-data") else v for k, v in user.items()}}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(doc))
    return path


@contextmanager
def named_pod(tmp_path: Path, **standin: object) -> Iterator[tuple[KubeApiStandIn, int, str, str]]:
    """A busy process in a kubelet-shaped cgroup, and a stand-in API server that lists its pod
    (namespace edge): (api, pid, workload key, pod name)."""
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
    name = f"web-{uid[:5]}"
    with ExitStack() as stack:
        api = stack.enter_context(KubeApiStandIn(pods=[pod_object(uid, cid, name)], **standin))
        busy = stack.enter_context(busy_in(stack.enter_context(kubelet_cgroup(uid, cid))))
        yield api, busy, f"pod:{uid}/{cid}", name


def test_snapshot_names_pods_through_a_kubeconfig_with_a_client_certificate(tmp_path, pki):
    with named_pod(tmp_path, cert=pki.server[0], key=pki.server[1], token=TOKEN,
                   client_ca=pki.ca) as (api, busy, key, name):  # fmt: skip
        inline = {"client-certificate-data": pki.oncall[0], "client-key-data": pki.oncall[1]}
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url, pki.ca, inline)
        env = {**os.environ, "NODE_NAME": NODE, "KUBECONFIG": str(kubeconfig)}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        run = subprocess.run(
            [*wasmtop_cmd(), "snapshot", "--seconds", "1", "--probes", "sched", "--no-alerts",
             "--pid", str(busy)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert f"pod names from kubeconfig {kubeconfig}, context edge, node {NODE}" in run.stderr
        (w,) = [w for w in json.loads(run.stdout)["workloads"] if w["key"] == key]
        assert (w["pod"]["namespace"], w["pod"]["name"], w["pod"]["container"]) == (
            "edge", name, "app")  # fmt: skip
        assert busy in w["pids"]
    # Every request authenticated by the certificate alone: no token was sent.
    assert api.seen and all(s.client_cn == "oncall" and s.authorization == "" for s in api.seen)
    assert api.problems == []


def test_the_ui_and_the_grpc_watch_filter_by_namespace_and_pod(tmp_path, tls_files, monkeypatch):
    """The daemon finds the API server through $KUBECONFIG (a token user) as `wasmtop` does;
    `wasmtop --once --filter` and a Watch with a filter show only the pod asked for."""
    cert, key_file = tls_files
    with named_pod(tmp_path, cert=cert, key=key_file, token=TOKEN) as (api, busy, key, name):
        (tmp_path / "token").write_text(TOKEN)
        kubeconfig = write_kubeconfig(tmp_path / "config", api.url, cert, {"tokenFile": "token"})
        monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
        monkeypatch.setenv("NODE_NAME", NODE)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        run = subprocess.run(
            [*wasmtop_cmd(), "--once", "--refresh", "2", "--filter", f"ns:edge pod:{name[:6]}"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        lines = run.stdout.splitlines()
        rows = lines[next(i for i, x in enumerate(lines) if x.startswith("WORKLOAD")) + 1 :]
        rows = [row for row in rows if row.strip()]
        assert len(rows) == 1 and rows[0].startswith(f"edge/{name}/app"[:24]), run.stdout
        assert f"pod names from kubeconfig {kubeconfig}" in run.stderr

        config = {"probes": {"bypass": {"mode": "off"}, "trace": {"enabled": False}}}
        with daemon(tmp_path, config) as d:
            assert f"(kubeconfig {kubeconfig}, context edge)" in d.stderr_so_far()
            grpc_listen = yaml.safe_load(d.config.read_text())["grpc"]["listen"]
            with RemoteSnapshots(grpc_listen, filter=f"ns:edge pod:{name}") as only, \
                    RemoteSnapshots(grpc_listen, filter="ns:nowhere") as none, \
                    RemoteSnapshots(grpc_listen) as whole:  # fmt: skip

                def named(snap) -> bool:
                    return snap is not None and any(w.pod and w.pod.name for w in snap.workloads)

                snap = until(lambda: (s := only.latest(2.0)) is not None and named(s) and s)
                assert snap, only.error
                # The pod, and the daemon's own workload (the UI's header shows its cost).
                assert [w.key for w in snap.workloads if not w.wasmtop] == [key]
                assert any(w.wasmtop for w in snap.workloads)
                everything = until(lambda: whole.latest(2.0))
                assert len(everything.workloads) > 1  # the filter made the difference
                empty = until(lambda: none.latest(2.0))
                assert empty is not None and all(w.wasmtop for w in empty.workloads)

            import grpc

            from wasmtop.proto.wasmtop.v1 import snapshots_pb2 as pb
            from wasmtop.proto.wasmtop.v1 import snapshots_pb2_grpc as pb_grpc

            with grpc.insecure_channel(grpc_listen) as channel:
                call = pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest(filter="ns:"))
                with pytest.raises(grpc.RpcError) as err:
                    next(call)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.value.details() == "filter: ns: needs a name (ns:NAME)"
    assert api.problems == []
