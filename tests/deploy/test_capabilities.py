"""The container's capability set works (issue: Kubernetes, test 2).

The daemon runs as the DaemonSet runs it: uid 0 with the bounding set cut to exactly the
capabilities the DaemonSet adds (read from daemonset.yaml), no_new_privs, through the image's
entry point, with the host's kernel headers hidden so the headers built into the image are used.
Every probe must attach. Each capability is then shown to be needed: without it, the part
docs/deploy.md names fails on the real kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from daemonset import ROOT, daemonset_capabilities, effective_caps

from peers import daemon, get
from support import no_programs_left, wasmtop_cmd

pytestmark = pytest.mark.bpf

IMAGE = ROOT / "deploy/image"
PROBES = {"sched", "sockbypass", "tracectx", "lifecycle"}


def setpriv(caps: list[str]) -> list[str]:
    """uid 0 with only ``caps``: what a container with `drop: [ALL]` and `add: caps` gets."""
    bounding = ",".join(["-all", *(f"+{c.lower()}" for c in caps)])
    return ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs"]


def without(cap: str) -> list[str]:
    return [c for c in daemonset_capabilities() if c != cap]


# A private mount namespace with an empty /lib/modules: a node without headers for its kernel.
IN_PRIVATE_MOUNTS = ["unshare", "--mount", "--propagation", "private"]
HIDE_HOST_HEADERS = "mount -t tmpfs wasmtop-test /lib/modules"


def entry_point_env(image_headers: Path, wasmtop: str) -> dict[str, str]:
    """The environment of the image's entry point: its own headers and wasmtop at these paths."""
    env = {**os.environ, "WASMTOP_IMAGE_HEADERS": str(image_headers), "WASMTOP_BIN": wasmtop}
    env.pop("BCC_KERNEL_SOURCE", None)
    return env


@pytest.fixture(scope="module")
def image_headers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image's fallback headers, made the way the Dockerfile makes them."""
    dest = tmp_path_factory.mktemp("image") / "kernel-headers"
    subprocess.run(
        ["sh", str(IMAGE / "merge-kernel-headers.sh"), "/usr/src", str(dest)], check=True
    )
    return dest


def test_the_daemon_runs_with_only_the_daemonsets_capabilities_and_the_images_headers(
    tmp_path, image_headers
):
    caps = daemonset_capabilities()
    # The host's headers hidden, then the capabilities cut, then the image's entry point.
    wrapper = tmp_path / "container.sh"
    wrapper.write_text(
        textwrap.dedent(
            f"""\
            {HIDE_HOST_HEADERS} || exit 1
            exec {" ".join(setpriv(caps))} sh {IMAGE / "entrypoint.sh"} "$@"
            """
        )
    )
    env = entry_point_env(image_headers, wasmtop_cmd()[0])
    config = yaml.safe_load((ROOT / "deploy/kubernetes/base/config/wasmtop.yaml").read_text())
    del config["alerts"]  # its rule file sits beside the ConfigMap's copy, not here
    config["metrics"] = {}  # a free loopback port (peers.daemon)
    config["grpc"] = {}
    command = [*IN_PRIVATE_MOUNTS, "sh", str(wrapper)]
    with daemon(tmp_path, config, command=command, env=env) as d:
        assert effective_caps(d.proc.pid) == set(caps)  # exec'd in place: the daemon itself
        status, body = get(f"{d.base}/readyz")
        probes = json.loads(body)["probes"]
        assert status == 200 and set(probes) == PROBES, probes
        assert all(p["status"] == "ok" for p in probes.values()), probes
        assert "headers: image " + str(image_headers) in d.stderr_so_far()
    assert no_programs_left() == []
    assert not Path("/sys/fs/bpf/wasmtop").exists()


def snapshot(caps: list[str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*setpriv(caps), *wasmtop_cmd(), "snapshot", "--seconds", "0.2", "--no-alerts", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize("missing", ["BPF", "PERFMON"])
def test_without_bpf_or_perfmon_wasmtop_says_so_and_loads_nothing(missing):
    run = snapshot(without(missing))
    assert run.returncode == 1
    assert f"missing capability CAP_{missing}" in run.stderr
    assert no_programs_left() == []


def test_without_net_admin_only_the_socket_bypass_probe_fails():
    run = snapshot(without("NET_ADMIN"), "--no-trace", "--probe-stats")
    assert run.returncode == 0, run.stderr
    probes = json.loads(run.stdout)["probes"]
    broken = {name: p["status"] for name, p in probes.items() if p["status"] != "ok"}
    assert broken == {"sockbypass": "failed"}, probes
    # Without CAP_SYS_ADMIN the kernel does not time the programs: said, not reported as 0.
    ok = [p for p in probes.values() if p["status"] == "ok"]
    assert ok and all(p["run_stats"].startswith("off: BPF_ENABLE_STATS refused") for p in ok)
    assert no_programs_left() == []


def with_and_without(cap: str, script: str, *args: str) -> dict[bool, str]:
    """What a Python script prints under the DaemonSet's capabilities (True) and without
    ``cap`` (False)."""
    out = {}
    for caps in (daemonset_capabilities(), without(cap)):
        argv = [*setpriv(caps), sys.executable, "-c", script, *args]
        out[cap in caps] = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return out


SOCKET_OWNER = """
import sys
from wasmtop.collector.sockets import SocketOwners
lhost, lport, rhost, rport = sys.argv[1:]
pair = ((lhost, int(lport)), (rhost, int(rport)))
print(SocketOwners().resolve([pair]).get(pair, 0))
"""

HOLDER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0))
client = socket.create_connection(server.getsockname())
print(*client.getsockname(), *client.getpeername(), flush=True)
sys.stdin.read()
"""


def test_sys_ptrace_is_needed_to_tell_which_process_owns_a_socket():
    """A connection held by another root process (full capabilities, as a pod's process may
    have): its owner is found through /proc/PID/fd only with CAP_SYS_PTRACE."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        pair = holder.stdout.readline().split()
        found = with_and_without("SYS_PTRACE", SOCKET_OWNER, *pair)
    finally:
        holder.kill()
        holder.wait()
    assert {k: int(v) for k, v in found.items()} == {True: holder.pid, False: 0}


CPU_SHARE = """
from wasmtop.probes.cpushare import CpuShare
share = CpuShare("idle")
with share.bulk(1 << 20):  # a bulk drain yields
    share.after_drain(1.0)  # a full ring buffer: the collector must leave SCHED_IDLE
print(share.raised, share.failed)
"""


def test_sys_nice_is_needed_to_leave_sched_idle_under_load():
    out = with_and_without("SYS_NICE", CPU_SHARE)
    assert {k: tuple(int(x) for x in v.split()) for k, v in out.items()} == {
        True: (1, 0),
        False: (0, 1),
    }


def test_the_entry_point_refuses_to_start_without_any_kernel_headers(tmp_path):
    wrapper = f"{HIDE_HOST_HEADERS} && exec sh {IMAGE / 'entrypoint.sh'} --help"
    env = entry_point_env(tmp_path / "none", "/bin/false")
    if Path("/sys/kernel/kheaders.tar.xz").exists():
        pytest.skip("this kernel carries its own headers (CONFIG_IKHEADERS)")
    run = subprocess.run(
        [*IN_PRIVATE_MOUNTS, "sh", "-c", wrapper], env=env, capture_output=True, text=True
    )
    assert run.returncode == 2
    assert "no kernel headers for " + os.uname().release in run.stderr
