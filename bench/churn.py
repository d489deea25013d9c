#!/usr/bin/env python3
"""State under churn: a real `wasmtop daemon` while short-lived processes and cgroups come and go.

For --seconds (default 600) it starts short-lived processes named like a traced WebAssembly
runtime (`--trace-comm churnwasm`: each is judged, most are traced), one in --cgroup-every of
them in a fresh cgroup v2 directory that is removed when it exits. Every 10 s it samples the
daemon's RSS (VmRSS). At the end it reads the daemon's last Snapshot over the gRPC API.

Prints: processes and cgroups churned, RSS after warm-up (the first 60 s) and at the end, the
growth, and the trace-context probe's books: processes refused tracing (its map full), traced
now, traced that exited (untraced in the kernel at exit), processes forgotten by the collector.

Usage: sudo .venv/bin/python bench/churn.py [--seconds 600] [--rate 40]
Target: RSS growth after warm-up under 20 MB; no process refused tracing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wasmtop.grpcapi import RemoteSnapshots  # noqa: E402
from wasmtop.probes import features  # noqa: E402

WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
WARM_UP_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def churn(
    exe: Path,
    cg_root: Path,
    seconds: float,
    rate: float,
    cgroup_every: int,
    sample: Callable[[float], None] = lambda t: None,
) -> tuple[int, int]:
    """Start short-lived processes of ``exe`` (``exe SECONDS``) at ``rate`` per second for
    ``seconds``, one in ``cgroup_every`` in a fresh cgroup under ``cg_root`` removed when it
    exits; ``sample(t)`` every 10 s. Returns (processes, cgroups) started; all have ended."""
    started = cgroups = 0
    live: list[tuple[subprocess.Popen, Path | None]] = []
    t0 = time.monotonic()
    next_sample = next_start = t0
    while (now := time.monotonic()) - t0 < seconds:
        if now >= next_sample:
            sample(now - t0)
            next_sample += 10
        # Each lives 0.05-0.5 s: long enough to be seen and judged, then gone.
        life = 0.05 + (started % 10) * 0.05
        cg = None
        if started % cgroup_every == 0:
            cg = cg_root / f"c{started}"
            cg.mkdir()
            cgroups += 1
        proc = subprocess.Popen([str(exe), f"{life:.2f}"])
        if cg is not None:
            (cg / "cgroup.procs").write_text(str(proc.pid))
        live.append((proc, cg))
        started += 1
        still = []
        for p, c in live:
            if p.poll() is None:
                still.append((p, c))
            elif c is not None:
                c.rmdir()  # its process has ended
        live = still
        # Paced by a deadline, so the time each start takes is not added to the pause; after a
        # stall, at most a second's starts are made up (in a burst).
        next_start = max(next_start + 1 / rate, time.monotonic() - 1)
        time.sleep(max(0.0, next_start - time.monotonic()))
    for p, c in live:
        p.wait()
        if c is not None:
            c.rmdir()
    return started, cgroups


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--rate", type=float, default=40, help="processes started per second")
    ap.add_argument("--cgroup-every", type=int, default=4, help="one in N gets its own cgroup")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1

    tmp = Path(tempfile.mkdtemp(prefix="wasmtop-churn-"))
    exe = tmp / "churnwasm"  # a runtime's name, to be judged and traced by comm
    shutil.copy("/bin/sleep", exe)
    cg_root = features.cgroup2_mount() / f"wasmtop-churn-{os.getpid()}"
    cg_root.mkdir()
    grpc_target = f"unix:{tmp}/grpc.sock"
    config = {
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "grpc": {"listen": grpc_target},
        "probes": {"trace": {"comms": ["churnwasm"]}, "bypass": {"mode": "off"}},
    }
    (tmp / "wasmtop.yaml").write_text(yaml.safe_dump(config))
    daemon = subprocess.Popen(
        [WASMTOP, "daemon", "--config", str(tmp / "wasmtop.yaml")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[tuple[float, int]] = []
    try:
        time.sleep(8)  # compile and attach
        started, cgroups = churn(
            exe, cg_root, args.seconds, args.rate, args.cgroup_every,
            sample=lambda t: samples.append((t, rss_kib(daemon.pid))),
        )  # fmt: skip
        samples.append((args.seconds, rss_kib(daemon.pid)))
        time.sleep(2)
        with RemoteSnapshots(grpc_target).start() as remote:
            snap = remote.latest(timeout_s=10)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        for c in cg_root.iterdir():
            if c.is_dir():
                c.rmdir()
        cg_root.rmdir()
        shutil.rmtree(tmp)

    warm = next(kib for t, kib in samples if t >= WARM_UP_S) if samples[-1][0] >= WARM_UP_S else 0
    end = samples[-1][1]
    print(f"load average: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"churned {started} processes ({cgroups} in their own cgroup) over {args.seconds:.0f} s")
    print(f"daemon RSS: {samples[0][1] / 1024:.1f} MiB at start, {warm / 1024:.1f} MiB after "
          f"{WARM_UP_S} s, {end / 1024:.1f} MiB at the end: growth after warm-up "
          f"{(end - warm) / 1024:.1f} MiB (target < 20)")  # fmt: skip
    if snap is None:
        print("no Snapshot from the daemon's gRPC API")
        return 1
    t, c = snap.probes.get("tracectx", {}), snap.counters
    traced = len(t.get("traced_pids", []))
    print(f"tracectx: pids_refused {t.get('pids_refused')} (target 0), traced now {traced}, "
          f"traced that exited {t.get('traced_exited')}")  # fmt: skip
    print(f"collector: processes_forgotten {c.get('processes_forgotten')}, "
          f"runtime_workloads_forgotten {c.get('runtime_workloads_forgotten')}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
