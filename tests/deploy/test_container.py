"""The image, built here (`make image`) and run in a real container the way the DaemonSet runs
it (issue: delivery, part 2).

Everything the container gets is read from deploy/kubernetes/base: the capabilities (drop ALL,
add the manifest's list), the read-only root, uid 0, no privilege escalation, hostPID and
hostNetwork (with the node's UTS namespace, as a hostNetwork pod has), every hostPath mount at
its path on this host, the emptyDir, the ConfigMap's files at its mount path, the arguments, the
downward API's NODE_NAME, and the termination grace period `podman stop` waits before SIGKILL.

The memory and CPU limits are the manifest's too. Four things differ from a kubelet, all stated:
the container runtime is podman with runc, not containerd; its seccomp profile is podman's
default with the two rules containerd's RuntimeDefault has and Debian 12's podman lacks
(CONTAINERD_RULES); the open-file and process limits are 4096 each (podman's defaults would raise
them, which needs CAP_SYS_RESOURCE, and this machine does not grant it); and the program cache's
hostPath is an empty directory of the test's, so the image's own compiler is what builds the
probes (and the host's cache is left alone)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from daemonset import ROOT, config_map_files, container, effective_caps, pod_spec

from books import books, stop_all
from peers import get, metric_value
from support import no_programs_left, our_programs, wait_for
from wasmtop.grpcapi import RemoteSnapshots

pytestmark = pytest.mark.bpf

PROBES = {"sched", "sockbypass", "tracectx", "lifecycle"}
NAME = "wasmtop-container-test"  # fixed: a run removes what a killed run left
LABEL = "org.wasmtop.test=container"
# Open files and processes: podman's defaults (1048576) would raise the limits, which needs
# CAP_SYS_RESOURCE, and this machine does not grant it. The daemon runs within 4096 of each.
LIMIT = 4096


def engine() -> str:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (make setup installs it)")
    return "podman"


@pytest.fixture(scope="module")
def image() -> str:
    """The image's tag, built by `make image`'s script (nothing is rebuilt when the image of
    this source is there already)."""
    engine()
    build = subprocess.run(
        ["bash", str(ROOT / "scripts/build-image.sh")], capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-4000:]
    tag, size, unit = build.stdout.split()
    assert unit == "MB" and int(size) > 0
    return tag


def metrics_port(config: dict) -> int:
    return int(config["metrics"]["listen"].rpartition(":")[2])


# The rules containerd (>= 1.6.9, containerd#7301) and Docker (>= 23, moby#43987) added to their
# RuntimeDefault profiles: bpf() for CAP_BPF, perf_event_open() for CAP_PERFMON. Debian 12's
# podman profile predates them and allows both only to CAP_SYS_ADMIN.
CONTAINERD_RULES = [
    {"names": ["bpf"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_BPF"]}},
    {"names": ["perf_event_open"], "action": "SCMP_ACT_ALLOW",
     "includes": {"caps": ["CAP_PERFMON"]}},
]  # fmt: skip
ENGINE_PROFILE = Path("/usr/share/containers/seccomp.json")


def runtime_default(dest: Path) -> Path:
    """What `seccompProfile: RuntimeDefault` is on a current containerd node: the engine's own
    default profile with the two rules above."""
    profile = json.loads(ENGINE_PROFILE.read_text())
    ours = {name for rule in CONTAINERD_RULES for name in rule["names"]}
    for rule in profile["syscalls"]:
        # podman's explicit EPERM for these two without CAP_SYS_ADMIN would win over an allow;
        # containerd has no such rule (its default action refuses what no rule allows).
        if rule["action"] == "SCMP_ACT_ERRNO":
            rule["names"] = [n for n in rule["names"] if n not in ours]
    profile["syscalls"] += CONTAINERD_RULES
    dest.write_text(json.dumps(profile))
    return dest


def podman_run(tag: str, config_dir: Path, seccomp: Path, cache: Path) -> list[str]:
    """`podman run` for the DaemonSet's pod, from the manifest. The program cache's hostPath
    is ``cache`` (empty), so the image's own compiler builds the probes, within the limits."""
    pod, c = pod_spec(), container()
    sc = c["securityContext"]
    argv = ["podman", "run", "-d", "--name", NAME, "--label", LABEL]
    for cap in sc["capabilities"]["drop"]:
        argv += ["--cap-drop", cap]
    for cap in sc["capabilities"]["add"]:
        argv += ["--cap-add", cap]
    assert sc["privileged"] is False and sc["runAsNonRoot"] is False
    argv += ["--user", str(sc["runAsUser"])]
    if sc["readOnlyRootFilesystem"]:
        argv.append("--read-only")
    if sc["allowPrivilegeEscalation"] is False:
        argv += ["--security-opt", "no-new-privileges"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    argv += ["--security-opt", f"seccomp={seccomp}"]
    if pod.get("hostPID"):
        argv += ["--pid", "host"]
    if pod.get("hostNetwork"):
        argv += ["--network", "host", "--uts", "host"]
    argv += ["--ulimit", f"nofile={LIMIT}:{LIMIT}", "--ulimit", f"nproc={LIMIT}:{LIMIT}"]
    limits = c["resources"]["limits"]
    argv += ["--memory", limits["memory"].replace("Mi", "m"), "--cpus", str(limits["cpu"])]
    for env in c.get("env", []):
        if env.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            argv += ["-e", f"{env['name']}={socket.gethostname()}"]
        else:
            argv += ["-e", f"{env['name']}={env['value']}"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in c["volumeMounts"]:
        volume = volumes[mount["name"]]
        ro = ":ro" if mount.get("readOnly") else ""
        if "hostPath" in volume and volume["hostPath"]["path"] == "/var/cache/wasmtop":
            argv += ["-v", f"{cache}:{mount['mountPath']}{ro}"]
        elif "hostPath" in volume:
            host = volume["hostPath"]
            if host.get("type") == "DirectoryOrCreate":
                Path(host["path"]).mkdir(parents=True, exist_ok=True)
            argv += ["-v", f"{host['path']}:{mount['mountPath']}{ro}"]
        elif "configMap" in volume:
            argv += ["-v", f"{config_dir}:{mount['mountPath']}{ro}"]
        elif "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "").replace("Mi", "m")
            argv += ["--tmpfs", f"{mount['mountPath']}:size={size}" if size else mount["mountPath"]]
        else:
            raise AssertionError(f"a volume this test does not know how to mount: {volume}")
    return [*argv, tag, *c["args"]]


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """The ConfigMap as the kubelet projects it: one file per key."""
    d = tmp_path / "configmap"
    d.mkdir()
    for key, source in config_map_files().items():
        shutil.copy(source, d / key)
    return d


SLEEPER = textwrap.dedent(
    """
    import time
    print("ready", flush=True)
    for _ in range(200):
        time.sleep(0.005)  # 200 voluntary switches
    print("done", flush=True)
    time.sleep(3600)
    """
)


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def logs_of(name: str) -> str:
    """The container's output (the daemon logs to stderr; the log driver may merge them)."""
    out = podman("logs", name, check=False)
    return out.stdout + out.stderr


@contextmanager
def started(tag: str, config_dir: Path, seccomp: Path) -> Iterator[dict]:
    """The container, started, once /readyz says ready or every probe has settled; removed
    after whatever happened. Yields what the test reads: the metrics base URL, the daemon's
    pid on the host, /readyz's status and answer, the config."""
    config = yaml.safe_load((config_dir / "wasmtop.yaml").read_text())
    port = metrics_port(config)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is taken on this host"
    for left in podman("ps", "-aq", "--filter", f"label={LABEL}").stdout.split():
        podman("rm", "-f", "-t", "0", left, check=False)  # a killed run's container
    cache = config_dir.parent / "cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    podman(*podman_run(tag, config_dir, seccomp, cache)[1:])
    base = f"http://127.0.0.1:{port}"
    try:

        def ready_or_settled() -> bool:
            state = podman("inspect", "--format", "{{.State.Running}}", NAME).stdout.strip()
            if state != "true":
                return True
            try:
                status, body = get(f"{base}/readyz", timeout=2)
            except OSError:
                return False
            # Ready, or every probe settled and one of them failed: no point waiting more.
            states = {p["status"] for p in json.loads(body)["probes"].values()}
            settled = bool(states) and states <= {"ok", "failed", "unavailable"}
            return status == 200 or settled and states != {"ok"}

        wait_for(ready_or_settled, timeout_s=180, interval_s=0.5)
        running = podman("inspect", "--format", "{{.State.Running}}", NAME).stdout.strip()
        assert running == "true", f"the container ended: {logs_of(NAME)[-4000:]}"
        status, body = get(f"{base}/readyz")
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", NAME).stdout)
        yield {"base": base, "pid": pid, "status": status, "readyz": json.loads(body),
               "config": config, "logs": logs_of(NAME)}  # fmt: skip
    finally:
        podman("rm", "-f", "-t", "0", NAME, check=False)


@pytest.fixture
def running(image: str, config_dir: Path) -> Iterator[dict]:
    with started(image, config_dir, runtime_default(config_dir.parent / "seccomp.json")) as c:
        assert c["status"] == 200, (c["readyz"], c["logs"])
        yield c


def test_the_image_runs_under_the_daemonsets_security_context_and_leaves_nothing(running):
    c, pod = container(), pod_spec()
    # The daemon itself (the entry point execs it) has exactly the manifest's capabilities.
    assert effective_caps(running["pid"]) == set(c["securityContext"]["capabilities"]["add"])
    assert Path(f"/proc/{running['pid']}/comm").read_text().strip() == "wasmtop"
    probes = running["readyz"]["probes"]
    assert set(probes) == PROBES and all(p["status"] == "ok" for p in probes.values()), probes
    # An empty program cache: the image's BCC compiled every probe, within the memory limit.
    for name in PROBES:
        assert f"probe {name}: compiling" in running["logs"], running["logs"]
    base = running["base"]

    # A workload started on the host: its figures on /metrics agree with the kernel's books.
    sleeper = subprocess.Popen([sys.executable, "-c", SLEEPER], stdout=subprocess.PIPE, text=True)
    try:
        assert sleeper.stdout.readline() == "ready\n"
        assert sleeper.stdout.readline() == "done\n"
        stop_all([sleeper.pid])  # frozen: its counters stop moving
        kernel = books(sleeper.pid)
        switches = kernel.voluntary + kernel.involuntary
        key = f"pid:{sleeper.pid}"

        def served() -> float | None:
            return metric_value(get(f"{base}/metrics")[1], "wasmtop_context_switches_total",
                                workload=key)  # fmt: skip

        assert wait_for(lambda: served() == switches, timeout_s=30), (served(), kernel)
        assert switches >= 200

        # The gRPC API on the manifest's socket, from the host: a Snapshot with that workload.
        target = running["config"]["grpc"]["listen"]
        with RemoteSnapshots(target) as remote:
            snaps = []

            def seen() -> bool:
                snap = remote.latest(1.0)
                if snap is not None and any(w.key == key for w in snap.workloads):
                    snaps.append(snap)
                return bool(snaps)

            assert wait_for(seen, timeout_s=30), remote.error
        snap = snaps[-1]
        assert snap.host == socket.gethostname()  # hostNetwork: the node's name
        assert snap.schema == "wasmtop.snapshot/v1" and snap.kernel == os.uname().release
        assert sleeper.pid in snap.workload(key).pids  # hostPID: the host's pid
        assert set(snap.probes) == PROBES
    finally:
        sleeper.kill()
        sleeper.wait()
    assert Path("/sys/fs/bpf/wasmtop").exists()  # the trace-context pin, while it runs

    # SIGTERM, as `podman stop` (and the kubelet) send it: exit 0 within the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    start = time.monotonic()
    podman("stop", "-t", str(grace), NAME)
    took = time.monotonic() - start
    state = json.loads(podman("inspect", "--format", "{{json .State}}", NAME).stdout)
    logs = logs_of(NAME)
    assert state["ExitCode"] == 0, logs[-4000:]
    assert took < grace, f"{took:.1f} s: SIGKILL'd after the grace period?"
    assert f"stopping on signal {int(signal.SIGTERM)}" in logs, logs[-2000:]

    # Nothing of ours is left in the kernel or on the host's mounts.
    assert no_programs_left() == [], our_programs()
    assert not Path("/sys/fs/bpf/wasmtop").exists()
    assert not Path(target.removeprefix("unix:")).exists(), "the gRPC socket outlived the daemon"
    net = subprocess.run(["bpftool", "net", "show"], capture_output=True, text=True, check=True)
    assert "wasmtop" not in net.stdout, net.stdout  # no tc or XDP program of ours


def test_under_a_runtime_profile_that_refuses_bpf_to_cap_bpf_each_probe_says_why(image, config_dir):
    """Older runtimes' RuntimeDefault (Debian 12's podman, containerd < 1.6.9, Docker < 23)
    allows bpf() only to CAP_SYS_ADMIN: the daemon keeps serving, not ready, and says why."""
    profile = json.loads(ENGINE_PROFILE.read_text())
    for rule in profile["syscalls"]:  # whatever this engine allows bpf() to, only SYS_ADMIN
        if "bpf" in rule["names"] and rule["action"] == "SCMP_ACT_ALLOW":
            if rule.get("includes", {}).get("caps") != ["CAP_SYS_ADMIN"]:
                rule["names"] = [n for n in rule["names"] if n != "bpf"]
    old = config_dir.parent / "old-seccomp.json"
    old.write_text(json.dumps(profile))
    with started(image, config_dir, old) as c:
        assert c["status"] == 503 and c["readyz"]["ready"] is False
        probes = c["readyz"]["probes"]
        assert set(probes) == PROBES
        for name, probe in probes.items():
            assert probe["status"] == "unavailable", probe
            assert "EPERM: bpf() refused" in probe["reason"] and "seccomp" in probe["reason"]
            assert f"probe {name}: unavailable: BPF ring buffer unavailable" in c["logs"]
        assert get(f"{c['base']}/healthz") == (200, b"ok\n")  # alive: the kubelet keeps it
    assert no_programs_left() == []
