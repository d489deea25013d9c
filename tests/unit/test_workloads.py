"""cgroup path parsing (real-world samples; kubepods only where the kubelet puts it; never an
exception) and /proc reading against fixture trees."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wasmtop.collector.workloads import (
    ContainerRef,
    ProcReader,
    WorkloadResolver,
    cgroup_identity,
    parse_cgroup_path,
    runtime_library,
    wasm_runtime,
    workload_of,
)

CID = "8f4b2c0e1d3a5b6c7d8e9f00112233445566778899aabbccddeeff0011223344"
UID = "5e1f3c2a-9b8d-4e7f-a6b5-c4d3e2f1a0b9"
UID_ = UID.replace("-", "_")

PATHS = [
    # kubelet cgroupfs driver (K3s default), containerd
    (f"/kubepods/burstable/pod{UID}/{CID}", ContainerRef("kubernetes", CID, UID, "burstable")),
    (f"/kubepods/besteffort/pod{UID}/{CID}", ContainerRef("kubernetes", CID, UID, "besteffort")),
    (f"/kubepods/pod{UID}/{CID}", ContainerRef("kubernetes", CID, UID, "guaranteed")),
    # systemd driver, containerd / CRI-O / cri-dockerd
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope",
        ContainerRef("containerd", CID, UID, "burstable"),
    ),
    (
        f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"crio-{CID}.scope",
        ContainerRef("cri-o", CID, UID, "besteffort"),
    ),
    (
        f"/kubepods.slice/kubepods-pod{UID_}.slice/crio-conmon-{CID}.scope",
        ContainerRef("cri-o", CID, UID, "guaranteed"),
    ),
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"docker-{CID}.scope",
        ContainerRef("docker", CID, UID, "burstable"),
    ),
    # pod cgroup itself (no container yet)
    (
        f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        ContainerRef("kubernetes", None, UID, "burstable"),
    ),
    # kind / k3d: kubepods nested inside a Docker container
    (
        f"/docker/{CID}/kubepods/besteffort/pod{UID}/{CID}",
        ContainerRef("kubernetes", CID, UID, "besteffort"),
    ),  # fmt: skip
    # container engines without Kubernetes
    (f"/system.slice/docker-{CID}.scope", ContainerRef("docker", CID)),
    (f"/docker/{CID}", ContainerRef("docker", CID)),
    (f"/machine.slice/libpod-{CID}.scope", ContainerRef("podman", CID)),
    (
        f"/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope/container",
        ContainerRef("podman", CID),  # podman's inner cgroup still belongs to the container
    ),
    ("/lxc.payload.web1", ContainerRef("lxc", "web1")),
    # plain host processes
    ("/", None),
    ("/user.slice/user-0.slice/session-3.scope", None),
    ("/system.slice/sshd.service", None),
    ("/kubepods.slice", None),  # the QoS parent, no pod
    # kubepods where the kubelet puts it, under a node that is itself a container (kind, k3d)
    (
        f"/system.slice/docker-{CID}.scope/kubepods/burstable/pod{UID}/{CID}",
        ContainerRef("kubernetes", CID, UID, "burstable"),
    ),
    (f"/kubelet/kubepods/pod{UID}/{CID}", ContainerRef("kubernetes", CID, UID, "guaranteed")),
    (
        f"/kubepods/burstable/pod{UID}/{CID}/init",  # a container's own sub-cgroup
        ContainerRef("kubernetes", CID, UID, "burstable"),
    ),
]

# kubepods anywhere else is not a pod: a user with a delegated cgroup (user@UID.service) can make
# these, and must not be counted as the pod whose UID it wrote.
REFUSED = [
    (
        f"/user.slice/user-1000.slice/user@1000.service/kubepods/pod{UID}/cri-containerd-{CID}.scope",
        ContainerRef("containerd", CID),  # a plain container of that user's, not the pod
    ),
    (f"/user.slice/user-1000.slice/user@1000.service/kubepods/burstable/pod{UID}/{CID}", None),
    (
        f"/user.slice/user-1000.slice/user@1000.service/app.slice/kubepods.slice/"
        f"kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice",
        None,
    ),
    (f"/system.slice/evil.service/kubepods/pod{UID}/{CID}", None),
    (f"/docker/{CID}/x/kubepods/pod{UID}/{CID}", ContainerRef("docker", CID)),  # not the node's
    (f"/kubepods/pod{UID}x/{CID}", None),  # not a pod UID
    (f"kubepods/pod{UID}/{CID}", None),  # relative
    (f"//kubepods/pod{UID}/{CID}", None),
    (f"/mykubepods/pod{UID}/{CID}", None),
]


@pytest.mark.parametrize("path, expected", PATHS)
def test_parse_cgroup_path(path, expected):
    assert parse_cgroup_path(path) == expected


@pytest.mark.parametrize("path, expected", REFUSED)
def test_kubepods_away_from_the_root_is_not_a_pod(path, expected):
    ref = parse_cgroup_path(path)
    assert ref == expected
    assert ref is None or ref.pod_uid is None


@given(
    st.text(max_size=200)
    | st.lists(
        st.sampled_from(
            [
                "kubepods",
                "kubepods.slice",
                f"pod{UID}",
                f"kubepods-pod{UID_}.slice",
                "burstable",
                "kubepods-besteffort.slice",
                CID,
                f"docker-{CID}.scope",
                f"crio-{CID}.scope",
                "docker",
                "lxc",
                "lxc.payload.x",
                "user@1000.service",
                "",
                ".",
                "..",
                "\x00",
                "kubelet",
            ]
        )  # fmt: skip
        | st.text(max_size=12),
        max_size=8,
    ).map(lambda parts: "/" + "/".join(parts))
)
def test_parse_cgroup_path_never_raises(path):
    ref = parse_cgroup_path(path)
    assert ref is None or isinstance(ref, ContainerRef)
    if ref is not None and ref.pod_uid is not None:  # a pod only at a place the kubelet uses
        assert path.startswith(("/kubepods", "/kubelet/kubepods", "/docker/", "/system.slice/"))
    assert cgroup_identity(f"0::{path}\n1:cpu:{path}\n") is not None


def test_hybrid_host_finds_the_container_in_a_v1_hierarchy():
    text = (
        "12:memory:/kubepods/burstable/pod" + UID + "/" + CID + "\n"
        "1:name=systemd:/kubepods/burstable/pod" + UID + "/" + CID + "\n0::/\n"
    )
    path, ref = cgroup_identity(text)
    assert ref == ContainerRef("kubernetes", CID, UID, "burstable")
    assert path.endswith(CID)
    assert cgroup_identity("0::/system.slice/foo.service\n") == ("/system.slice/foo.service", None)


@pytest.mark.parametrize(
    "exe, comm, maps, expected",
    [
        ("/usr/local/bin/wasmtime", "wasmtime", "", "wasmtime"),
        ("/usr/bin/wasmedge", "wasmedge", None, "wasmedge"),
        ("/opt/spin/spin", "spin", None, "spin"),
        (
            "/usr/bin/python3.11",
            "python3",
            "7f00 r-xp /venv/wasmtime/_libwasmtime.so\n",
            "wasmtime",
        ),
        ("/app/server", "server", "7f00 r-xp /usr/lib/libwasmedge.so.0\n", "wasmedge"),
        ("/usr/bin/python3.11", "python3", "7f00 r-xp /usr/lib/libc.so.6\n", None),
        (None, "kworker/0:1", None, None),
    ],
)
def test_wasm_runtime_detection(exe, comm, maps, expected):
    assert wasm_runtime(exe, comm, maps) == expected


def make_proc(root, pid, *, comm="app", cgroup="0::/\n", cpus="0-1", stat_start=4242):
    d = root / str(pid)
    d.mkdir()
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text(cgroup)
    (d / "status").write_text(f"Name:\t{comm}\nCpus_allowed_list:\t{cpus}\n")
    fields = ["S"] + ["0"] * 18 + [str(stat_start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} ({comm} (x) y) " + " ".join(fields) + "\n")
    (d / "maps").write_text("")
    return d


def test_proc_reader_reads_a_fixture_tree(tmp_path):
    make_proc(tmp_path, 10, comm="edge svc", cpus="1", cgroup=f"0::/kubepods/pod{UID}/{CID}\n")
    info = ProcReader(tmp_path).read(10)
    assert info.comm == "edge svc"
    assert info.start_ticks == 4242  # comm with spaces and parentheses parsed correctly
    assert info.allowed_cpus == {1}
    assert info.container.pod_uid == UID
    wid = workload_of(info)
    assert wid.kind == "container" and wid.key == f"pod:{UID}/{CID}"
    assert wid.pod.container_id == CID


def test_vanished_and_unreadable_processes_are_skipped_and_counted(tmp_path):
    make_proc(tmp_path, 1)
    d = make_proc(tmp_path, 2)
    (d / "cgroup").unlink()  # exited between two reads
    d3 = make_proc(tmp_path, 3)
    (d3 / "stat").write_text("garbage")  # truncated
    d4 = make_proc(tmp_path, 4)
    (d4 / "status").unlink()
    (d4 / "status").mkdir()  # unreadable as a file
    reader = ProcReader(tmp_path)
    assert reader.read(1) is not None
    assert reader.read(2) is None
    assert reader.read(3) is None
    assert reader.read(4) is None
    assert reader.read(99) is None  # never existed
    assert reader.vanished == 4


def test_resolver_keeps_the_identity_of_a_process_that_exits(tmp_path):
    d = make_proc(tmp_path, 7, comm="short")
    resolver = WorkloadResolver(ProcReader(tmp_path), refresh_s=0)
    assert resolver.identify(7).key == "pid:7"
    for f in d.iterdir():
        f.unlink()
    d.rmdir()
    assert resolver.identify(7).comm == "short"  # still attributed after exit
    assert resolver.identify(8) is None  # never seen: no phantom workload


def test_what_a_process_s_files_say_comes_before_its_name_but_not_before_its_library(tmp_path):
    """A runtime found in a process's files (wasmscan) makes it a Wasm workload, and is kept
    across re-reads; a C API library known by its file name stays what it is, taking only the
    version the file gives; a process whose files hold nothing stays as it was."""
    from wasmtop.collector.wasmscan import SYMBOLS, Detected, Finding

    make_proc(tmp_path, 1, comm="python3")  # an Extism host, say
    make_proc(tmp_path, 2, comm="wasmtime")  # the CLI: a name only
    d3 = make_proc(tmp_path, 3, comm="python3")
    lib = "/venv/wasmtime/linux-x86_64/_libwasmtime.so"
    (d3 / "maps").write_text(f"7f00-7f10 r-xp 00000000 08:01 42 {lib}\n")
    make_proc(tmp_path, 4, comm="python3")
    resolver = WorkloadResolver(ProcReader(tmp_path), refresh_s=0)
    before = {pid: resolver.identify(pid) for pid in (1, 2, 3, 4)}
    assert [before[p].kind for p in (1, 2, 3, 4)] == ["process", "wasm", "wasm", "process"]
    assert [resolver.process(p).runtime_by for p in (1, 2, 3, 4)] == [None, "name", "library",
                                                                      None]  # fmt: skip
    extism = Detected("/venv/extism_sys/libextism_sys.so",
                      Finding("wasmtime", SYMBOLS, "49.0.2"))  # fmt: skip
    assert resolver.set_content(1, extism)
    assert resolver.set_content(2, Detected("/usr/bin/wasmtime", Finding("wasmtime", SYMBOLS)))
    assert resolver.set_content(3, Detected(lib, Finding("wasmtime", "library", "41.0.0")))
    assert not resolver.set_content(4, None)
    # found in the process that had pid 4 before (another start time): not lent to this one
    assert not resolver.set_content(4, Detected("/old", Finding("wasmtime", SYMBOLS), 1))
    for _ in range(2):  # and again after a re-read of /proc
        one, two, three = (resolver.process(p) for p in (1, 2, 3))
        assert (one.runtime, one.runtime_by, one.runtime_version, one.runtime_library) == (
            "wasmtime", "symbols", "49.0.2", extism.path)  # fmt: skip
        assert resolver.identify(1).kind == "wasm"
        assert (two.runtime_by, two.runtime_library) == ("symbols", "/usr/bin/wasmtime")
        assert (three.runtime_by, three.runtime_library, three.runtime_version) == (
            "library", lib, "41.0.0")  # fmt: skip
        assert resolver.identify(4).kind == "process"
    resolver.forget({1})
    assert resolver.content(1) is None


def test_a_deleted_mapping_names_no_runtime_library():
    # The file is gone: a FIFO made at its name since must never be opened as the library.
    maps = ("7f00-7f01 r-xp 0 08:01 5 /tmp/libwasmtime.so (deleted)\n"
            "7f02-7f03 r-xp 0 08:01 6 /usr/lib/libwasmedge.so.0\n")  # fmt: skip
    assert runtime_library(maps) == ("wasmedge", "/usr/lib/libwasmedge.so.0")
    assert runtime_library(maps.splitlines()[0]) is None
