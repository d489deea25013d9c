"""Thread -> process -> workload.

A workload is a Kubernetes container (pod UID + container id parsed from its cgroup path) or
another container runtime's scope when the cgroup path names one; otherwise it is a single
process (tgid), so that two processes on a plain host are two workloads.

The cgroup path knows a pod only by its UID. Its namespace, name, RuntimeClass and container
names come from the Kubernetes API (kubernetes.py) through a ``PodDirectory``: a lookup is a
dict read, so a pod the API has not told about yet stays nameless and gets its names as soon as
the directory has them.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .topology import parse_cpu_list
from .wasmscan import LIBRARY, NAME, Detected, executable_files

if TYPE_CHECKING:
    from .kubernetes import PodMeta

WASM, CONTAINER, PROCESS = "wasm", "container", "process"
# /proc/PID/stat field 9 (flags): the task is a kernel thread (kthreadd and everything it
# starts: kworker, ksoftirqd, migration, rcu_*). A flag of the task itself, so it holds in any pid
# namespace, where "the parent is pid 2" would not.
PF_KTHREAD = 0x00200000
MAX_OWN_DEPTH = 8  # ancestors walked to tell whether a process descends from wasmtop's own

_HEX64 = r"[0-9a-f]{64}"
_UID = r"[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"
# Scope prefixes that name a container runtime (systemd cgroup driver and standalone engines).
_SCOPE_RUNTIMES = {
    "cri-containerd": "containerd",
    "crio": "cri-o",
    "docker": "docker",
    "libpod": "podman",
    "nerdctl": "containerd",
}
_SCOPE = re.compile(
    r"(?P<prefix>cri-containerd|crio|docker|libpod|nerdctl)-(?:conmon-)?(?P<id>"
    + _HEX64
    + r")\.scope(?:/|$)"
)
# A pod's cgroup: the kubelet's QoS tree at the root of the cgroup hierarchy (cgroupfs driver:
# /kubepods[/burstable|/besteffort]/pod<uid>; systemd driver: /kubepods.slice[/kubepods-<qos>.slice]
# /kubepods[-<qos>]-pod<uid>.slice), optionally under the cgroup of a node that is itself a
# container (kind, k3d: /docker/<id>/, /system.slice/docker-<id>.scope/) or kind's kubelet cgroup
# root (/kubelet/). Anchored: anyone with a delegated subtree (systemd's user@UID.service) can
# make ".../kubepods/pod<uid>/..." under it, and must not pass for that pod.
_KUBE_POD = re.compile(
    r"^(?:/docker/" + _HEX64 + r"|/system\.slice/docker-" + _HEX64 + r"\.scope)?"  # node
    r"(?:/kubelet)?"
    r"/kubepods(?:\.slice)?"
    r"(?:/(?:kubepods-)?(?P<qos>burstable|besteffort|guaranteed)(?:\.slice)?)?"
    r"/(?:kubepods-(?:(?P<slice_qos>burstable|besteffort|guaranteed)-)?)?pod(?P<uid>" + _UID + r")"
    r"(?:\.slice)?(?:/(?P<rest>[^/]+))?(?:/|$)"
)
_PLAIN_ID = re.compile(r"^(?:[^/]*-)?(?P<id>" + _HEX64 + r")(?:\.scope)?$")
_DOCKER_CGROUPFS = re.compile(r"/docker/(?P<id>" + _HEX64 + r")(?:/|$)")
_LXC = re.compile(r"/lxc(?:\.payload\.|/)(?P<name>[^/]+)")

# Executable / comm names and mapped-library stems of WebAssembly runtimes.
_RUNTIME_EXES = {"wasmtime": "wasmtime", "wasmedge": "wasmedge", "spin": "spin", "wasmer": "wasmer"}
_RUNTIME_LIBS = (("libwasmtime", "wasmtime"), ("libwasmedge", "wasmedge"), ("libwasmer", "wasmer"))
# RuntimeClass names of WebAssembly runtimes (runwasi shims and their variants: "wasmtime",
# "crun-wasmedge", "wasmer-v1"...), matched as substrings in this order: SpinKube's
# "wasmtime-spin-v2" runs Spin apps (Spin embeds wasmtime), so spin goes first.
_RUNTIME_CLASSES = ("spin", "wasmedge", "wasmer", "wasmtime")


@dataclass(frozen=True)
class ContainerRef:
    """What a cgroup path says about the container a process runs in."""

    engine: (
        str  # containerd, cri-o, docker, podman, lxc, or "kubernetes" when only the pod is known
    )
    container_id: str | None
    pod_uid: str | None = None
    qos: str | None = None


def parse_cgroup_path(path: str) -> ContainerRef | None:
    """Container identity from a cgroup path, for the systemd and cgroupfs drivers and the
    containerd, CRI-O, Docker and podman forms; None for a plain host process. A pod only where
    the kubelet puts pods (``_KUBE_POD``): kubepods nested deeper, e.g. in a user's delegated
    cgroup, is at most a plain container. Never raises, whatever the string."""
    if not isinstance(path, str):
        return None
    pod = _KUBE_POD.match(path)
    if pod:
        uid = pod.group("uid").replace("_", "-")
        qos = pod.group("qos") or pod.group("slice_qos") or "guaranteed"
        rest = pod.group("rest")
        engine, cid = "kubernetes", None
        if rest:
            scope = _SCOPE.search(rest)
            if scope:
                engine, cid = _SCOPE_RUNTIMES[scope.group("prefix")], scope.group("id")
            else:
                plain = _PLAIN_ID.match(rest)
                if plain:  # cgroupfs driver: the runtime is not named in the path
                    cid = plain.group("id")
        return ContainerRef(engine, cid, uid, qos)
    scope = _SCOPE.search(path)
    if scope:
        return ContainerRef(_SCOPE_RUNTIMES[scope.group("prefix")], scope.group("id"))
    docker = _DOCKER_CGROUPFS.search(path)
    if docker:
        return ContainerRef("docker", docker.group("id"))
    lxc = _LXC.search(path)
    if lxc:
        return ContainerRef("lxc", lxc.group("name"))
    return None


@dataclass(frozen=True)
class Pod:
    namespace: str | None  # None until the Kubernetes API has told about the pod
    name: str | None
    uid: str
    container: str | None
    container_id: str | None
    runtime_class: str | None = None  # spec.runtimeClassName
    app: str | None = None  # label app.kubernetes.io/name, else app


class PodDirectory(Protocol):
    """Pod metadata by pod UID (kubernetes.PodCache); ``get`` must not block."""

    generation: int  # changes whenever any pod's metadata does

    def get(self, uid: str) -> PodMeta | None: ...


def workload_names(pod: Pod | None, key: str, comm: str | None) -> tuple[str, ...]:
    """The names a configured shell pattern is matched against (``otlp.service_names``,
    ``collector.route_templates``): ``namespace/pod/container`` as far as known, the key,
    the command."""
    name = "/".join(p for p in (pod.namespace, pod.name, pod.container) if p) if pod else ""
    return tuple(x for x in (name, key, comm) if x)


def matches(pattern: str, names: Iterable[str]) -> bool:
    """Whether a shell pattern (``*``, ``?``, ``[...]``) matches any of ``names`` whole."""
    return any(fnmatch.fnmatchcase(x, pattern) for x in names)


def runtime_of_class(runtime_class: str | None) -> str | None:
    """The WebAssembly runtime a RuntimeClass name names (``wasmtime``, ``crun-wasmedge``,
    ``wasmtime-spin-v2``), or None."""
    name = (runtime_class or "").lower()
    return next((r for r in _RUNTIME_CLASSES if r in name), None)


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    start_ticks: int  # /proc/PID/stat field 22: tells a reused pid from the original
    comm: str
    exe: str | None
    cgroup: str | None
    container: ContainerRef | None
    runtime: str | None  # WebAssembly runtime, if this process is one
    runtime_library: str | None  # the runtime's shared library it maps (path in its mount ns)
    allowed_cpus: frozenset[int]
    read_at: float
    ppid: int = 0  # /proc/PID/stat field 4
    kernel_thread: bool = False  # PF_KTHREAD in /proc/PID/stat field 9
    # How the runtime was recognised: "library" (its C API library mapped, or a file that
    # exports it), "symbols" (a file it maps holds the runtime's own names), "name" (the
    # executable's or comm's name only); None when not a runtime.
    runtime_by: str | None = None
    runtime_version: str | None = None  # as the file that holds the runtime says, if it does
    exec_maps: int = 0  # the files it maps executable, as a hash: a change is looked at again


@dataclass(frozen=True)
class WorkloadId:
    key: str
    kind: str
    runtime: str | None
    comm: str
    cgroup: str | None
    pod: Pod | None
    kernel_thread: bool = False  # a kernel thread (PF_KTHREAD): always a process of its own


def runtime_library(maps: str | None) -> tuple[str, str] | None:
    """(runtime, library path) of the first WebAssembly runtime library a process maps."""
    for line in (maps or "").splitlines():
        fields = line.split(None, 5)  # address perms offset dev inode [path]
        if len(fields) < 6:
            continue
        path = fields[5].strip()
        if path.endswith(" (deleted)"):  # the file is gone: whatever has that name now is not it
            continue
        name = os.path.basename(path)
        for stem, runtime in _RUNTIME_LIBS:
            if stem in name and ".so" in name:
                return runtime, path
    return None


def wasm_runtime(exe: str | None, comm: str, maps: str | None) -> str | None:
    """Which WebAssembly runtime a process is: by executable, comm, or a mapped library."""
    for name in (os.path.basename(exe or ""), comm):
        if name in _RUNTIME_EXES:
            return _RUNTIME_EXES[name]
    if maps:
        for stem, runtime in _RUNTIME_LIBS:
            if stem in maps:
                return runtime
    return None


def parse_proc_cgroup(text: str) -> tuple[str | None, dict[str, str]]:
    """(v2 path, v1 controller -> path) from a /proc/PID/cgroup text."""
    v2: str | None = None
    v1: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)  # a path may itself hold ':'
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and not controllers:
            v2 = path
        else:
            for controller in controllers.split(","):
                v1[controller] = path
    return v2, v1


_READ_CHUNK = 65536


def read_text(path: str | os.PathLike[str]) -> str:
    """A kernel file (/proc, cgroupfs) as text, undecodable bytes replaced, read to its end as
    pathlib's read_text reads it, for a third of its cost: one open, reads of 64 KiB until one
    comes back empty (a multi-record /proc file such as maps gives at most a page or so per
    read), one close. 7.4 against 20.4 us per /proc/PID/stat on this project's test machine.
    Raises OSError as read_text does."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def stat_fields(stat: str) -> list[str]:
    """The fields of /proc/PID/stat after comm (index 0 is the state), or ValueError."""
    # comm may hold spaces and parentheses: the other fields start after the last ')'.
    close = stat.rfind(")")
    if close < 0:
        raise ValueError("no ')' closing comm in stat")
    return stat[close + 2 :].split()


class ProcReader:
    """Reads what wasmtop needs about a process from a /proc tree given at construction, so
    tests can point it at a fixture. A process gone mid-read yields None, never an error."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.root = Path(proc_root)
        self.vanished = 0  # processes that disappeared while being read

    def _text(self, pid: int, name: str) -> str:
        return read_text(f"{self.root}/{pid}/{name}")

    def start_ticks(self, pid: int) -> int | None:
        stat = self._stat(pid)
        return stat[0] if stat else None

    def _stat(self, pid: int) -> tuple[int, int, int] | None:
        """(start ticks, ppid, flags) from /proc/PID/stat, or None."""
        try:
            stat = self._text(pid, "stat")
        except OSError:
            return None
        try:
            fields = stat_fields(stat)
            return int(fields[19]), int(fields[1]), int(fields[6])
        except (IndexError, ValueError):
            return None

    def read(self, pid: int) -> ProcessInfo | None:
        try:
            stat = self._stat(pid)
            comm = self._text(pid, "comm").strip()
            cgroup_text = self._text(pid, "cgroup")
            status = self._text(pid, "status")
        except OSError:
            self.vanished += 1
            return None
        if stat is None:
            self.vanished += 1
            return None
        start, ppid, flags = stat
        try:
            exe: str | None = os.readlink(self.root / str(pid) / "exe")
        except OSError:
            exe = None  # kernel threads have none; other users' processes may hide it
        try:
            maps: str | None = self._text(pid, "maps")
        except OSError:
            maps = None
        cgroup, container = cgroup_identity(cgroup_text)
        allowed = frozenset()
        for line in status.splitlines():
            if line.startswith("Cpus_allowed_list:"):
                allowed = parse_cpu_list(line.split(":", 1)[1])
                break
        runtime = wasm_runtime(exe, comm, maps)
        lib = runtime_library(maps)
        return ProcessInfo(
            pid=pid,
            start_ticks=start,
            comm=comm,
            exe=exe,
            cgroup=cgroup,
            container=container,
            runtime=runtime,
            runtime_library=lib[1] if lib else None,
            allowed_cpus=allowed,
            read_at=time.monotonic(),
            ppid=ppid,
            kernel_thread=bool(flags & PF_KTHREAD),
            runtime_by=LIBRARY if lib else (NAME if runtime else None),
            exec_maps=hash(tuple(executable_files(maps or ""))),
        )


def cgroup_identity(cgroup_file: str) -> tuple[str | None, ContainerRef | None]:
    """(cgroup path, container) from /proc/PID/cgroup. The v2 path ("0::/...") is the cgroup;
    on hybrid hosts a container may only show in a v1 hierarchy's path, so those are parsed too."""
    v2, v1 = parse_proc_cgroup(cgroup_file)
    v1_paths = [path for path in dict.fromkeys(v1.values()) if path]  # co-mounted: once
    for path in ([v2] if v2 else []) + v1_paths:
        ref = parse_cgroup_path(path)
        if ref:
            return path, ref
    return v2, None


class WorkloadResolver:
    """pid -> workload identity, cached per process incarnation, re-read every ``refresh_s``
    (a runtime may map its library after start). Processes that exit keep the identity they
    had when last seen, so their final counts still land on the right workload."""

    def __init__(
        self,
        reader: ProcReader,
        refresh_s: float = 10.0,
        pods: PodDirectory | None = None,
        own_pid: int | None = None,
    ) -> None:
        """``own_pid``: the process wasmtop runs in (its collector's; default this process):
        it and the processes it starts are wasmtop's own (``own``)."""
        self.reader = reader
        self.refresh_s = refresh_s
        self.pods = pods
        self.own_pid = os.getpid() if own_pid is None else own_pid
        self._cache: dict[int, ProcessInfo] = {}
        # What the files a process maps say (wasmscan.Scanner), by pid; forgotten with it.
        self._content: dict[int, Detected] = {}

    def process(self, pid: int) -> ProcessInfo | None:
        cached = self._cache.get(pid)
        if cached and time.monotonic() - cached.read_at < self.refresh_s:
            return cached
        info = self.reader.read(pid)
        if info is None:  # gone: keep the identity it had when last seen, if any
            return cached
        info = self._with_content(info)
        self._cache[pid] = info
        return info

    def set_content(self, pid: int, found: Detected | None) -> bool:
        """What ``pid``'s files say about a runtime in it (None, or a Detected without a
        runtime: nothing). True when that changed what the process is. None also forgets what
        was read of the process (its pid may name another one now)."""
        if found is None:
            if self._content.pop(pid, None) is not None:
                self._cache.pop(pid, None)
            return False
        if found.finding.runtime is None:
            return False
        self._content[pid] = found
        cached = self._cache.get(pid)
        if cached is None:
            return True
        info = self._with_content(cached)
        self._cache[pid] = info
        return info != cached

    def content(self, pid: int) -> Detected | None:
        return self._content.get(pid)

    def _with_content(self, info: ProcessInfo) -> ProcessInfo:
        """The process as its files tell it: a runtime found by its symbols, or by the C API a
        file exports, comes before one known by name only; a C API library known by its name
        stays, and takes the version its file gives."""
        found = self._content.get(info.pid)
        if found is None or found.start_ticks not in (None, info.start_ticks):
            return info  # nothing found, or found in the process that had the pid before
        f = found.finding
        if info.runtime_by == LIBRARY:
            if found.path == info.runtime_library and f.version and not info.runtime_version:
                return dataclasses.replace(info, runtime_version=f.version)
            return info
        return dataclasses.replace(info, runtime=f.runtime, runtime_library=found.path,
                                   runtime_by=f.by, runtime_version=f.version)  # fmt: skip

    def identify(self, pid: int) -> WorkloadId | None:
        info = self.process(pid)
        return workload_of(info, self.pods) if info else None

    def own(self, pid: int) -> bool:
        """Whether ``pid`` is wasmtop's own process: the one it runs in, a child it started, or
        a child of such a child it has seen. Only processes already read are walked (a
        parent is never read for this), so asking costs no /proc read of its own."""
        for _ in range(MAX_OWN_DEPTH):
            if pid == self.own_pid:
                return True
            info = self._cache.get(pid)
            if info is None or info.ppid <= 1:
                return False
            pid = info.ppid
        return False

    def forget(self, pids: set[int]) -> None:
        for pid in pids:
            self._cache.pop(pid, None)
            self._content.pop(pid, None)

    def known(self) -> set[int]:
        return set(self._cache)


def workload_of(info: ProcessInfo, pods: PodDirectory | None = None) -> WorkloadId:
    """The workload a process belongs to. A pod's names come from ``pods`` when it knows the
    pod; its RuntimeClass makes it a WebAssembly workload when it names a runtime (a runwasi
    shim runs the module in its own process, which shows no runtime by name or library)."""
    ref = info.container
    if ref is None:
        kind = WASM if info.runtime else PROCESS
        return WorkloadId(f"pid:{info.pid}", kind, info.runtime, info.comm, info.cgroup, None,
                          info.kernel_thread)  # fmt: skip
    pod = None
    runtime = info.runtime
    if ref.pod_uid:
        meta = pods.get(ref.pod_uid) if pods is not None else None
        if meta is None:
            pod = Pod(None, None, ref.pod_uid, None, ref.container_id)
        else:
            container = meta.containers.get(ref.container_id) if ref.container_id else None
            pod = Pod(meta.namespace, meta.name, ref.pod_uid, container, ref.container_id,
                      meta.runtime_class, meta.app)  # fmt: skip
            runtime = runtime or runtime_of_class(meta.runtime_class)
        key = f"pod:{ref.pod_uid}/{ref.container_id or 'pod'}"
    else:
        key = f"{ref.engine}:{ref.container_id}"
    kind = WASM if runtime else CONTAINER
    return WorkloadId(key, kind, runtime, info.comm, info.cgroup, pod)
