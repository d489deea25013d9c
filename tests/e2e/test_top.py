"""`wasmtop` (the terminal UI) as a user drives it: in tmux, against real workloads on the real
kernel, keys sent with send-keys and the screen read with capture-pane. Also its piped output
and --once."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from peers import daemon
from support import no_programs_left, wait_for, wasmtop_cmd, workloads
from wasmtop.columns import columns_for

pytestmark = pytest.mark.bpf
WASMTOP = " ".join(shlex.quote(a) for a in wasmtop_cmd())


class Tmux:
    """A tmux session running ``wasmtop ARGS`` in the foreground of a bash that records the
    terminal settings before and after, and the exit status."""

    def __init__(
        self,
        tmp_path: Path,
        args: str,
        width: int = 120,
        height: int = 30,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = f"wasmtop-{uuid.uuid4().hex[:8]}"
        self.rc = tmp_path / "rc"
        self.stty = tmp_path / "stty"
        self.pidfile = tmp_path / "pid"
        setenv = (
            "env " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()) + " " if env else ""
        )
        script = (
            f"stty -g > {self.stty}.before; "
            f"bash -c 'echo $$ > {self.pidfile}; exec {setenv}{WASMTOP} {args}'; "
            f"echo $? > {self.rc}; "
            f"stty -g > {self.stty}.after; sleep 600"
        )
        subprocess.run(
            ["tmux", "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height),
             "bash", "-c", script],
            check=True,
        )  # fmt: skip

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_screen(self, predicate, timeout_s: float = 60) -> str:
        assert wait_for(lambda: predicate(self.screen()), timeout_s=timeout_s), self.screen()
        return self.screen()

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def row_of(screen: str, pid: int) -> list[str] | None:
    for line in screen.splitlines():
        if f"[{pid}]" in line:
            return line.split()
    return None


def cell(row: list[str], header: str, width: int = 120) -> str:
    """The cell under ``header`` in a row from row_of (the workload and kind cells are one word
    each), for the columns a terminal ``width`` wide shows."""
    return row[[c.header for c in columns_for(width)].index(header)]


def header_of(screen: str) -> list[str]:
    return next(line for line in screen.splitlines() if line.lstrip().startswith("WORKLOAD"))


def test_tui_shows_real_workloads_sorts_filters_details_and_quits_cleanly(tmp_path):
    # A hog pinned to CPU 1, one pinned to CPU 0, and an unpinned one that must share a CPU
    # with one of them: all three are preempted, the unpinned one also moves.
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {0}}), ("hog", {})) as hogs:
        for h in hogs:
            h.go()
        pinned, unpinned = hogs[0], hogs[2]
        tmux = Tmux(tmp_path, "--refresh 1")
        try:
            # Both workloads, with non-zero figures in the right columns: involuntary switches
            # per second (INVOL/s) and the preemption delay P99 in ms.
            screen = tmux.wait_screen(
                lambda s: all(
                    (r := row_of(s, h.pid))
                    and float(cell(r, "INVOL/s")) > 0
                    and cell(r, "PRE p99 ms") != "-"
                    for h in (pinned, unpinned)
                )
            )
            head = header_of(screen)
            assert re.search(r"INVOL/s\s+PRE p99 ms▼", head), head
            assert "wasmtop " in screen and "probes sched:ok" in screen
            assert re.search(r"alerts \d+ firing \d+ pending", screen)
            assert row_of(screen, pinned.pid)[1] == "process"
            # s: sort by the next column.
            tmux.keys("s")
            screen = tmux.wait_screen(lambda s: "PRE p99 ms▼" not in header_of(s))
            assert "▼" in header_of(screen)
            # /: filter by name, enter applies: only the pinned hog is left.
            tmux.keys("/", *str(pinned.pid), "Enter")
            screen = tmux.wait_screen(
                lambda s: row_of(s, pinned.pid) and not row_of(s, unpinned.pid)
            )
            assert f"filter: {pinned.pid}" in screen
            # enter: the detail view of the selected workload (the only one listed).
            tmux.keys("Enter")
            screen = tmux.wait_screen(lambda s: "CPU time by CPU" in s)
            assert f"pid:{pinned.pid}" in screen and "preemption delay" in screen
            tmux.keys("Enter")
            tmux.wait_screen(lambda s: "CPU time by CPU" not in s and "WORKLOAD" in s)
            tmux.keys("?")
            tmux.wait_screen(lambda s: "sort by the next column" in s)
            tmux.keys("q")
            assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
            assert tmux.rc.read_text().strip() == "0"
            # The terminal is as it was: same tty settings, and the normal screen is back.
            wait_for(lambda: Path(f"{tmux.stty}.after").exists(), timeout_s=10)
            before = Path(f"{tmux.stty}.before").read_text()
            assert Path(f"{tmux.stty}.after").read_text() == before
            assert "WORKLOAD" not in tmux.screen()
        finally:
            tmux.kill()
    assert no_programs_left() == []


def test_on_a_saturated_node_the_tui_answers_q_within_a_second(tmp_path):
    """Every CPU busy with CPU-bound processes (one each, and one more): the UI still draws its
    first screen and leaves it within 1 s of `q`, because only bulk decoding yields the CPU and
    such a node has little to decode. (Yielding throughout, it took 1.7 s; the issue's bound.)"""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range((os.cpu_count() or 1) + 1)]  # fmt: skip
    try:
        tmux = Tmux(tmp_path, "--refresh 1")
        try:
            tmux.wait_screen(lambda s: all(row_of(s, p.pid) for p in busy), timeout_s=120)
            time.sleep(3)  # a few drains and refreshes on the saturated node
            t0 = time.monotonic()
            tmux.keys("q")
            assert wait_for(lambda: "WORKLOAD" not in tmux.screen(), timeout_s=30, interval_s=0.02)
            answered_s = time.monotonic() - t0
            assert answered_s < 1.0, f"the UI left its screen {answered_s:.2f} s after q"
            assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=60)
            assert tmux.rc.read_text().strip() == "0"
        finally:
            tmux.kill()
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert no_programs_left() == []


def test_while_the_probes_load_the_screen_says_which_and_from_where(tmp_path):
    """An empty program cache: the probes compile (about a second and a half here) and the
    screen names each one and what it is doing, then the table comes."""
    tmux = Tmux(tmp_path, "--refresh 1", env={"WASMTOP_CACHE_DIR": str(tmp_path / "cache")})
    try:
        seen: list[str] = []

        def starting(screen: str) -> bool:
            if "starting the probes" in screen:
                seen.append(screen)
            return "probes sched:ok" in screen

        tmux.wait_screen(starting)
        assert seen, "the table came without a start screen"
        assert any(
            re.search(r"^\s+sched\s+compiling \(not in the cache yet\)", s, re.M) for s in seen
        )
        tmux.keys("q")
        assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
        assert tmux.rc.read_text().strip() == "0"
    finally:
        tmux.kill()
    assert list((tmp_path / "cache").glob("*.bpfobj")), "the compiled programs were kept"
    assert no_programs_left() == []


def test_tui_fits_80x24_and_sigterm_restores_the_terminal(tmp_path):
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        for h in hogs:
            h.go()
        tmux = Tmux(tmp_path, "", width=80, height=24)
        try:
            screen = tmux.wait_screen(lambda s: all(row_of(s, h.pid) for h in hogs))
            lines = screen.splitlines()
            assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
            head = header_of(screen)
            assert "WORKLOAD" in head and "PRE p99 ms" in head and "INVOL/s" in head
            # SIGTERM to wasmtop: it detaches, puts the terminal back and exits 128+15.
            os.kill(int(tmux.pidfile.read_text()), signal.SIGTERM)
            assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
            assert tmux.rc.read_text().strip() == "143"
            wait_for(lambda: Path(f"{tmux.stty}.after").exists(), timeout_s=10)
            before = Path(f"{tmux.stty}.before").read_text()
            assert Path(f"{tmux.stty}.after").read_text() == before
        finally:
            tmux.kill()
    assert no_programs_left() == []


def test_piped_output_is_plain_tables_and_once_prints_one(tmp_path):
    with workloads(("hog", {"CPU": {1}})) as (hog,):
        hog.go()
        once = subprocess.run(
            [*wasmtop_cmd(), "--once"], capture_output=True, text=True, timeout=120
        )
        assert once.returncode == 0, once.stderr
        assert once.stdout.count("WORKLOAD") == 1
        assert "\x1b[" not in once.stdout  # no terminal control
        assert row_of(once.stdout, hog.pid) is not None
        # Piped without --once: one table per refresh until stopped.
        proc = subprocess.Popen(
            [*wasmtop_cmd(), "top", "--refresh", "0.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            tables = 0
            deadline = time.monotonic() + 60
            while tables < 3 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                tables += line.startswith("WORKLOAD")
            assert tables == 3
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert proc.returncode == 143
    assert no_programs_left() == []


def test_connect_shows_a_daemons_workloads_a_banner_when_it_dies_and_recovers(tmp_path):
    sock_dir = Path(tempfile.mkdtemp(prefix="wt-"))  # one socket for both daemons
    target = f"unix:{sock_dir}/grpc.sock"
    config = {"grpc": {"listen": target}, "probes": {"bypass": {"mode": "off"}}}
    with workloads(("hog", {"CPU": {1}})) as (hog,):
        hog.go()
        first, second = tmp_path / "first", tmp_path / "second"
        first.mkdir()
        second.mkdir()
        tmux = Tmux(tmp_path, f"--connect {target}")
        try:
            with daemon(first, config) as d:
                screen = tmux.wait_screen(lambda s: row_of(s, hog.pid))
                assert "reconnecting" not in screen
                assert d.stop() == 0  # the daemon goes away
                tmux.wait_screen(lambda s: f"{target}:" in s and "reconnecting" in s)
            with daemon(second, config):
                # Back: the banner goes and the rows are fresh from the new daemon.
                tmux.wait_screen(lambda s: "reconnecting" not in s and row_of(s, hog.pid))
            tmux.keys("q")
            assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
            assert tmux.rc.read_text().strip() == "0"
        finally:
            tmux.kill()
            sock_dir.rmdir()


def test_an_extism_host_and_the_example_service_are_wasm_workloads_in_the_daemon_and_tui(
    tmp_path,
):
    """Two Wasm hosts nobody here wrote the runtime of: an Extism host (wasmtime as a Rust crate,
    found by its symbols) and the example service (the wasmtime package's C API, found by its
    library). The daemon counts their compiles and instantiations in its metrics (cumulative),
    and the terminal UI, connected to it, lists both as wasm and says how each was found."""
    import http.client

    from peers import get, metric_value
    from support import EDGE_SERVICE, extism_host, http_server

    config = {"probes": {"bypass": {"mode": "off"}, "lifecycle": {"guest_calls": True}}}
    with (
        extism_host(tmp_path) as (host, ask),
        http_server("--port", "0", script=EDGE_SERVICE) as (service, port),
        daemon(tmp_path, config) as d,
    ):

        def metric(name: str, pid: int, **labels: str) -> float | None:
            return metric_value(get(f"{d.base}/metrics")[1], name, workload=f"pid:{pid}", **labels)

        # The host's files are examined in the daemon's own time: once it is a Wasm workload,
        # its uprobes are on, and a plugin made now is seen from its compile on.
        assert wait_for(lambda: metric("wasmtop_workload_info", host.pid, kind="wasm") == 1, 60)
        ask("plugin")
        ask("call 20")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        for _ in range(10):
            conn.request("GET", "/")
            conn.getresponse().read()
        conn.close()
        assert wait_for(
            lambda: (
                metric("wasmtop_wasm_calls_total", service.pid, call="instantiate") == 10
                and metric("wasmtop_wasm_calls_total", host.pid, call="compile") == 2
            ),
            60,
        )
        assert metric("wasmtop_wasm_calls_total", host.pid, call="instantiate") == 3
        guest_calls = metric("wasmtop_wasm_calls_total", host.pid, call="call")
        assert guest_calls % 20 == 0 and guest_calls >= 40  # a fixed number per plugin call
        assert metric("wasmtop_wasm_call_seconds_total", host.pid, call="compile") > 0
        assert metric("wasmtop_workload_info", service.pid, kind="wasm") == 1
        tmux = Tmux(tmp_path, f"--connect {d.grpc_target}", width=160, height=40)
        try:
            for pid, said in ((host.pid, "recognised by symbols"),
                              (service.pid, "recognised by library")):  # fmt: skip
                screen = tmux.wait_screen(lambda s, pid=pid: row_of(s, pid))
                assert row_of(screen, pid)[1].startswith("wasm"), row_of(screen, pid)
                tmux.keys("/", *str(pid), "Enter")
                tmux.wait_screen(lambda s, pid=pid: f"filter: {pid}" in s)
                tmux.keys("Enter")
                screen = tmux.wait_screen(lambda s: "WebAssembly: wasmtime" in s)
                assert said in screen and "instantiate" in screen, screen
                tmux.keys("Enter")
                tmux.wait_screen(lambda s: "WORKLOAD" in s)
                tmux.keys("/", "Escape")  # the filter emptied
                tmux.wait_screen(lambda s: "filter:" not in s)
            tmux.keys("q")
            assert wait_for(lambda: tmux.rc.exists() and tmux.rc.read_text(), timeout_s=30)
        finally:
            tmux.kill()
