"""The first screen a new user sees, on the real kernel: wasmtop itself is in the header and not a
row, kernel threads are one `kernel` row until K lists them, and no alert is raised on
wasmtop's own memory while it warms up. The Snapshot keeps both kinds, marked."""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from test_top import Tmux

from support import no_programs_left, wait_for, wasmtop_cmd

pytestmark = pytest.mark.bpf
KERNEL_ROW = re.compile(r"^kernel: (\d+) threads? \(K\)", re.M)
KTHREAD_NAME = re.compile(r"^(kworker|ksoftirqd|migration|rcu_|kthreadd|cpuhp|kcompactd)", re.M)


def test_the_first_screen_shows_wasmtop_in_the_header_and_folds_kernel_threads(tmp_path):
    tmux = Tmux(tmp_path, "--refresh 1", width=160, height=40)
    try:
        screen = tmux.wait_screen(lambda s: "wasmtop itself: cpu" in s and KERNEL_ROW.search(s))
        own = int(tmux.pidfile.read_text())  # bash exec'd wasmtop: its pid
        assert f"[{own}]" not in screen  # not a row
        assert not KTHREAD_NAME.search(screen)  # folded
        # The first seconds: no alert about wasmtop's own memory (or anything of its own).
        for _ in range(8):
            screen = tmux.screen()
            assert f"pid:{own}" not in screen, screen
            time.sleep(1)
        # K: one row per kernel thread, KIND kernel; K again: one row.
        tmux.keys("K")
        screen = tmux.wait_screen(lambda s: KTHREAD_NAME.search(s) and not KERNEL_ROW.search(s))
        row = next(line for line in screen.splitlines() if KTHREAD_NAME.match(line))
        assert row.split()[1] == "kernel", row
        tmux.keys("K")
        tmux.wait_screen(lambda s: KERNEL_ROW.search(s) and not KTHREAD_NAME.search(s))
        tmux.keys("q")
        assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
        assert tmux.rc.read_text().strip() == "0"
    finally:
        tmux.kill()
    assert no_programs_left() == []


def test_once_lists_kernel_threads_with_the_flag_and_names_wasmtops_pid_in_the_header():
    proc = subprocess.Popen(
        [*wasmtop_cmd(), "--once", "--kernel-threads"], stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert re.search(rf"^wasmtop itself: cpu \S+ %  rss \S+ MB  pids {proc.pid}\b", out, re.M)
    assert KTHREAD_NAME.search(out) and not KERNEL_ROW.search(out)
    assert f"[{proc.pid}]" not in out
    assert no_programs_left() == []


def test_the_snapshot_marks_wasmtop_itself_and_kernel_threads_and_never_alerts_on_itself():
    proc = subprocess.Popen(
        [*wasmtop_cmd(), "snapshot", "--seconds", "3", "--probes", "sched"],
        stdout=subprocess.PIPE,
        text=True,
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    snap = json.loads(out)
    by_key = {w["key"]: w for w in snap["workloads"]}
    own = by_key[f"pid:{proc.pid}"]
    assert own["wasmtop"] is True and own["kernel_thread"] is False
    kthreads = [w for w in snap["workloads"] if w["kernel_thread"]]
    assert kthreads and all(not w["wasmtop"] for w in kthreads)
    assert any(KTHREAD_NAME.match(w["comm"]) for w in kthreads)
    assert not [w for w in snap["workloads"] if w["wasmtop"] and w["key"] != own["key"]]
    assert all(a["workload"] != own["key"] for a in snap["alerts"])
    # Three seconds of RSS samples: every growth slope is short of its 300 s window, so no
    # growth alert is pending or firing, whatever the slope.
    growth = [a for a in snap["alerts"] if a["quantity"] == "runtime.rss_growth_mb_per_min"]
    assert all(a["state"] == "not_enough_data" and a["data_needed_s"] == 300 for a in growth)
    assert no_programs_left() == []
