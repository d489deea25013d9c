"""A real daemon while short-lived processes and cgroups come and go (the 10-minute figure is
bench/churn.py's; this is its 40-second check): no process is refused tracing, the kernel
untraces each traced process when it exits, and nothing dead stays traced."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from peers import daemon
from wasmtop.grpcapi import RemoteSnapshots
from wasmtop.probes import features

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from churn import churn  # noqa: E402 - the benchmark's churn, shortened


def test_churned_processes_are_untraced_at_exit_and_forgotten(tmp_path):
    exe = tmp_path / "churnwasm"  # a runtime's name: judged and traced by comm
    shutil.copy("/bin/sleep", exe)
    cg_root = features.cgroup2_mount() / f"wasmtop-test-churn-{os.getpid()}"
    cg_root.mkdir()
    config = {
        "probes": {"trace": {"comms": ["churnwasm"]}, "bypass": {"mode": "off"}},
    }
    try:
        with daemon(tmp_path, config) as d:
            started, cgroups = churn(exe, cg_root, seconds=40, rate=40, cgroup_every=4)
            # Snapshots until a sweep (every 10 ticks of 1 s) after the last one exited has
            # left no dead process traced: 12 s on a quiet machine, about 70 s at most.
            time.sleep(12)
            deadline = time.monotonic() + 48
            snap = None
            with RemoteSnapshots(d.grpc_target).start() as remote:
                while (latest := remote.latest(timeout_s=10)) is not None:
                    snap = latest
                    pids = snap.probes["tracectx"]["traced_pids"]
                    if all(os.path.exists(f"/proc/{pid}") for pid in pids):
                        break
                    if time.monotonic() > deadline:
                        break
    finally:
        for c in cg_root.iterdir():
            if c.is_dir():
                c.rmdir()
        cg_root.rmdir()
    assert started > 1400 and cgroups > 350  # 1,600 and 400 asked for, paced by a deadline
    assert snap is not None
    t = snap.probes["tracectx"]
    assert t["pids_refused"] == 0
    assert t["traced_exited"] > 100  # many were traced, and untraced by the kernel at exit
    # Every churned process has ended and a sweep has run: none is still in the traced set.
    assert all(os.path.exists(f"/proc/{pid}") for pid in t["traced_pids"]), t["traced_pids"]
    assert snap.counters["processes_forgotten"] >= t["traced_exited"]
