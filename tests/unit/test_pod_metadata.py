"""The parts of pod metadata that need no API server: Pod objects read from the fixture files
(Kubernetes v1 JSON), the cache, the backoff, the RuntimeClass -> runtime rule, a workload named
once the cache knows its pod, the series labels that follow, and when the daemon turns the
watcher on (local mode: never)."""

from __future__ import annotations

import copy
import dataclasses
import os
import sys
from pathlib import Path

import pytest
from kube_standin import fixture

from wasmtop.collector.kubernetes import (
    PodCache,
    _Failure,
    backoff_s,
    container_id,
    parse_json,
    pod_meta,
    read_token,
)
from wasmtop.collector.workloads import (
    Pod,
    ProcessInfo,
    cgroup_identity,
    runtime_of_class,
    workload_of,
)
from wasmtop.config import defaults
from wasmtop.daemon import kubernetes_settings
from wasmtop.exporters.exposition import encode
from wasmtop.exporters.series import SeriesBook
from wasmtop.kubeconfig import NOT_IN_A_POD

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

HELLO, NGINX = fixture("podlist.json")["items"]
HELLO_UID = HELLO["metadata"]["uid"]
APP_ID = HELLO["status"]["containerStatuses"][0]["containerID"].split("://")[1]
INIT_ID = HELLO["status"]["initContainerStatuses"][0]["containerID"].split("://")[1]


def test_a_pod_object_gives_names_runtime_class_and_the_name_of_every_container_id():
    hello = pod_meta(HELLO)
    assert (hello.uid, hello.namespace, hello.name) == (
        HELLO_UID, "edge", "hello-wasm-5f7d8c9b4-x2kq9"
    )  # fmt: skip
    assert hello.runtime_class == "wasmtime"
    assert hello.containers == {APP_ID: "app", INIT_ID: "fetch-module"}
    nginx = pod_meta(NGINX)
    assert nginx.runtime_class is None and list(nginx.containers.values()) == ["nginx"]
    # Ephemeral containers (kubectl debug), CRI-O and Docker ids; a container still being
    # created has no containerID yet and is left out.
    pod = copy.deepcopy(NGINX)
    pod["status"]["ephemeralContainerStatuses"] = [
        {"name": "debugger", "containerID": "cri-o://" + "e" * 64},
        {"name": "waiting", "state": {"waiting": {"reason": "ContainerCreating"}}},
    ]
    pod["status"]["containerStatuses"][0]["containerID"] = "docker://" + "d" * 64
    assert pod_meta(pod).containers == {"e" * 64: "debugger", "d" * 64: "nginx"}


@pytest.mark.parametrize(
    "broken",
    [
        [],
        {"metadata": "x"},
        {"metadata": {"name": "a", "namespace": "b"}},  # no uid
        {"metadata": {"name": "a", "namespace": "b", "uid": "u"}, "spec": {"runtimeClassName": 5}},
        {"metadata": {"name": "a", "namespace": "b", "uid": "u"},
         "status": {"containerStatuses": "app"}},
        {"metadata": {"name": "a", "namespace": "b", "uid": "u"},
         "status": {"containerStatuses": [{"containerID": "containerd://1"}]}},  # no name
    ],
)  # fmt: skip
def test_what_is_not_a_pod_is_refused(broken):
    with pytest.raises(ValueError):
        pod_meta(broken)


def with_field(path: tuple, value: object) -> dict:
    pod = copy.deepcopy(HELLO)
    *parents, last = path
    node = pod
    for key in parents:
        node = node[key]
    node[last] = value
    return pod


@pytest.mark.parametrize(
    "path",
    [("metadata", "name"), ("metadata", "namespace"), ("metadata", "uid"),
     ("spec", "runtimeClassName"), ("status", "containerStatuses", 0, "name"),
     ("status", "containerStatuses", 0, "containerID")],
)  # fmt: skip
@pytest.mark.parametrize("value", ["x" * 10_000_000, "hello\ud800", "two words", 'a"b', "a\\b"])
def test_names_the_api_server_would_never_allow_refuse_the_pod(path, value):
    """Each becomes a label value of every series of the workload: ten million characters would
    make every scrape hundreds of MB, a lone surrogate cannot be encoded at all."""
    if path[-1] == "containerID":
        value = "containerd://" + value
    with pytest.raises(ValueError):
        pod_meta(with_field(path, value))


def test_an_app_label_of_characters_the_api_server_would_never_allow_is_left_out():
    assert pod_meta(with_field(("metadata", "labels"), {"app": "a\ud800"})).app is None
    assert pod_meta(with_field(("metadata", "labels"), {"app": "two words"})).app is None
    assert pod_meta(with_field(("metadata", "labels"), {"app": "x" * 99})).app == "x" * 63


@pytest.mark.parametrize(
    "text", [b"[" * 100_000, b"[" + b"{}," * 1_100_000 + b"{}]", b"{" * 10 + b"not json"]
)
def test_json_that_would_blow_the_stack_or_the_memory_is_refused_before_it_is_built(text):
    with pytest.raises(ValueError):
        parse_json(text)


def test_the_pod_cache_is_bounded_and_counts_what_it_drops():
    pods = [dataclasses.replace(pod_meta(HELLO), uid=f"uid-{i}") for i in range(5)]
    cache = PodCache(max_pods=3)
    cache.replace(pods)
    assert len(cache) == 3 and cache.dropped == 2
    cache.put(pods[0])  # already there: replaced in place, not dropped
    cache.put(dataclasses.replace(pods[4], name="new"))
    assert len(cache) == 3 and cache.dropped == 3
    cache.delete(pods[0].uid)
    cache.put(pods[4])  # room again
    assert len(cache) == 3 and cache.get(pods[4].uid) == pods[4] and cache.dropped == 3


@pytest.mark.parametrize(
    "content, why",
    [(b"x" * (65 << 10), "more than"), (b"\xff\xfe", "not ASCII"), (b"  \n", "empty")],
)
def test_a_token_file_is_read_bounded_and_must_be_ascii(tmp_path, content, why):
    token = tmp_path / "token"
    token.write_bytes(content)
    with pytest.raises(_Failure, match=why):
        read_token(str(token))
    token.write_bytes(b"abc.def\n")
    assert read_token(str(token)) == "abc.def"


def test_a_token_path_that_is_not_a_regular_file_never_blocks(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opened for reading with no writer: a plain open() would wait for good
    with pytest.raises(_Failure, match="not a regular file"):
        read_token(str(fifo))
    with pytest.raises(_Failure, match="not a regular file"):
        read_token("/dev/zero")


@pytest.mark.parametrize(
    "raw, expected",
    [("containerd://" + "a" * 64, "a" * 64), ("cri-o://abc", "abc"), ("docker://x", "x"),
     ("abc", "abc")],
)  # fmt: skip
def test_container_id_drops_the_runtime_scheme(raw, expected):
    assert container_id(raw) == expected


def test_backoff_doubles_up_to_the_cap_and_jitters_between_half_and_all():
    low = [backoff_s(n, 0.5, 30.0, lambda: 0.0) for n in range(1, 10)]
    high = [backoff_s(n, 0.5, 30.0, lambda: 1.0) for n in range(1, 10)]
    assert high == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert low == [h / 2 for h in high]
    assert backoff_s(10_000, 0.5, 30.0, lambda: 1.0) == 30.0  # no overflow after a long outage


@pytest.mark.parametrize(
    "runtime_class, runtime",
    [("wasmtime", "wasmtime"), ("wasmedge", "wasmedge"), ("crun-wasmedge", "wasmedge"),
     ("WasmEdge", "wasmedge"), ("spin", "spin"), ("wasmtime-spin-v2", "spin"),
     ("wasmer-v1", "wasmer"), ("runc", None), ("kata-qemu", None), ("gvisor", None),
     (None, None)],
)  # fmt: skip
def test_a_runtime_class_names_a_webassembly_runtime_or_none(runtime_class, runtime):
    assert runtime_of_class(runtime_class) == runtime


def process_in(cgroup_path: str, *, runtime: str | None = None, pid: int = 4242) -> ProcessInfo:
    cgroup, container = cgroup_identity(f"0::{cgroup_path}\n")
    return ProcessInfo(
        pid=pid, start_ticks=1, comm="containerd-shim", exe="/usr/bin/containerd-shim",
        cgroup=cgroup, container=container, runtime=runtime, runtime_library=None,
        allowed_cpus=frozenset({0, 1}), read_at=0.0,
    )  # fmt: skip


def kubelet_path(uid: str, cid: str) -> str:
    u = uid.replace("-", "_")
    return (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/"
        f"cri-containerd-{cid}.scope"
    )


def test_a_pod_is_nameless_until_the_cache_knows_it_and_its_runtime_class_makes_it_wasm():
    cache = PodCache()
    app = process_in(kubelet_path(HELLO_UID, APP_ID))
    before = workload_of(app, cache)
    assert before.key == f"pod:{HELLO_UID}/{APP_ID}"
    assert before.pod == Pod(None, None, HELLO_UID, None, APP_ID, None)
    assert (before.kind, before.runtime) == ("container", None)
    generation = cache.generation
    cache.put(pod_meta(HELLO))
    assert cache.generation != generation
    after = workload_of(app, cache)
    assert after.key == before.key  # the key stays: series and alerts keep their identity
    assert after.pod == Pod("edge", "hello-wasm-5f7d8c9b4-x2kq9", HELLO_UID, "app", APP_ID,
                            "wasmtime", "hello-wasm")  # fmt: skip
    # The recommended label names the service before the older one.
    labelled = copy.deepcopy(HELLO)
    labelled["metadata"]["labels"]["app.kubernetes.io/name"] = "hello-edge"
    assert pod_meta(labelled).app == "hello-edge"
    labelled["metadata"]["labels"] = {"app": "x" * 100}
    assert pod_meta(labelled).app == "x" * 63
    labelled["metadata"]["labels"] = ["not", "a", "map"]
    with pytest.raises(ValueError, match="labels"):
        pod_meta(labelled)
    assert (after.kind, after.runtime) == ("wasm", "wasmtime")
    # A container id the pod's statuses do not list (the sandbox): the pod's names, no container.
    sandbox = workload_of(process_in(kubelet_path(HELLO_UID, "f" * 64)), cache)
    assert (sandbox.pod.name, sandbox.pod.container) == ("hello-wasm-5f7d8c9b4-x2kq9", None)
    # What the process shows of itself wins over the RuntimeClass.
    own = workload_of(process_in(kubelet_path(HELLO_UID, APP_ID), runtime="wasmedge"), cache)
    assert own.runtime == "wasmedge"
    # A RuntimeClass that is no WebAssembly runtime leaves a container a container.
    cache.put(dataclasses.replace(pod_meta(HELLO), runtime_class="runc"))
    assert workload_of(app, cache).kind == "container"
    assert workload_of(app, cache).pod.runtime_class == "runc"
    # Without a directory (wasmtop snapshot, the TUI) pods stay known by UID only.
    assert workload_of(app).pod.name is None


def test_the_cache_keeps_a_deleted_pods_names_for_a_while_and_a_relist_deletes_the_missing():
    hello, nginx = pod_meta(HELLO), pod_meta(NGINX)
    cache = PodCache(keep_deleted_s=600)
    cache.replace([hello, nginx])
    assert len(cache) == 2
    cache.delete(nginx.uid)
    assert len(cache) == 1 and cache.get(nginx.uid) == nginx  # its last figures keep its names
    cache.replace([nginx])  # a list without hello: deleted too; nginx is back
    assert len(cache) == 1 and cache.get(hello.uid) == hello and cache.get(nginx.uid) == nginx
    at_once = PodCache(keep_deleted_s=0)
    at_once.replace([hello, nginx])
    at_once.delete(nginx.uid)
    at_once.replace([])
    assert at_once.get(nginx.uid) is None and at_once.get(hello.uid) is None
    generation = cache.generation
    cache.replace([nginx])  # nothing changed: readers need not judge anything again
    assert cache.generation == generation
    cache.clear()
    assert len(cache) == 0 and cache.get(nginx.uid) is None and not cache.synced


def series(book: SeriesBook, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of ``name`` in the /metrics text."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for fam in text_string_to_metric_families(encode(book.families()).decode()):
        out += [(dict(s.labels), s.value) for s in fam.samples if s.name == name]
    return out


def test_names_learnt_later_fill_in_the_labels_the_counters_go_on_and_none_is_blanked():
    base = snapshot(1)
    w = base.workloads[0]
    nameless = dataclasses.replace(
        w, kind="container", runtime=None, pod=Pod(None, None, "uid-0", None, w.pod.container_id)
    )
    named = dataclasses.replace(
        w, pod=dataclasses.replace(w.pod, runtime_class="wasmtime-spin-v2"), runtime="spin"
    )
    book = SeriesBook()
    for workload in (nameless, named, nameless):  # the names go away again: labels stay
        book.add(dataclasses.replace(base, workloads=(workload,)))
    labels = {"workload": w.key, "namespace": "ns0", "pod": "pod-0", "container": "app",
              "runtime": "spin"}  # fmt: skip
    # One series, counting all three windows.
    assert series(book, "wasmtop_context_switches_total") == [(labels, 3 * w.sched.switches)]
    # The info gauge follows the latest Snapshot's kind, with the RuntimeClass it had.
    book.add(dataclasses.replace(base, workloads=(named,)))
    assert series(book, "wasmtop_workload_info") == [
        ({**labels, "kind": "wasm", "runtime_class": "wasmtime-spin-v2"}, 1.0)
    ]


# -- when the daemon watches the API ------------------------------------------------------------


def settings(tmp_path: Path, env: dict[str, str], **kube: object):
    config = defaults()
    config["kubernetes"].update(kube)
    return kubernetes_settings(config, tmp_path / "wasmtop.yaml", env)


def test_auto_is_off_on_a_plain_host_without_a_kubeconfig_and_says_so(tmp_path):
    for env in ({"HOME": str(tmp_path)}, {"HOME": str(tmp_path), "NODE_NAME": "edge-1"}):
        assert settings(tmp_path, env) == (None, NOT_IN_A_POD)


def test_auto_in_a_pod_without_a_token_is_off_and_says_why(tmp_path):
    off, why = settings(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.43.0.1"},
                        token_file=str(tmp_path / "none"))  # fmt: skip
    assert off is None and "no service account token" in why


def test_auto_in_a_pod_watches_the_service_address_for_the_downward_apis_node(tmp_path):
    (tmp_path / "token").write_text("t0ken\n")
    env = {"KUBERNETES_SERVICE_HOST": "fd00:10:43::1", "KUBERNETES_SERVICE_PORT": "443",
           "NODE_NAME": "edge-7"}  # fmt: skip
    s, how = settings(tmp_path, env, token_file="token", ca_file="ca.crt", resync_s=60.0)
    assert how == "the pod's service account, node edge-7"
    assert s.server == "https://[fd00:10:43::1]:443" and s.node == "edge-7"
    assert s.token_file == str(tmp_path / "token")  # relative to the config file
    assert s.ca_file == str(tmp_path / "ca.crt") and s.resync_s == 60.0
    s, _ = settings(tmp_path, env, token_file="token", api_server="https://api:6443",
                    node_name="edge-9", ca_file=None)  # fmt: skip
    assert (s.server, s.node, s.ca_file) == ("https://api:6443", "edge-9", None)


def test_enabled_true_without_any_api_server_is_off_and_says_why_false_is_off(tmp_path):
    off, why = settings(tmp_path, {"HOME": str(tmp_path)}, enabled=True)
    assert off is None and "no API server is known" in why
    off, why = settings(tmp_path, {"KUBERNETES_SERVICE_HOST": "10.43.0.1"}, enabled=False)
    assert off is None and "false" in why
    # true does not look for the token: a missing one is counted by the watcher (no_token).
    s, _ = settings(tmp_path, {}, enabled=True, api_server="https://127.0.0.1:1",
                    token_file="/nonexistent")  # fmt: skip
    assert s is not None and s.token_file == "/nonexistent"
