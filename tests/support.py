"""Real workloads for the kernel tests: processes that hog, sleep, flip CPUs or contend,
started paused so a test can attach its probes first and then let them go."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

_PRELUDE = """
import os, sys, time
sys.stdout.write("ready\\n"); sys.stdout.flush()
sys.stdin.readline()  # wait for "go"
"""

PROGRAMS = {
    # A busy loop (pinned to CPU, before it reports ready: pinning later is a migration).
    "hog": "while True:\n    pass\n",
    # Sleeps in short naps: every switch is voluntary.
    "sleeper": "while True:\n    time.sleep(0.01)\n",
    # A busy loop at a lower weight (nice NICE).
    "nice_hog": "os.nice({NICE})\nwhile True:\n    pass\n",
    # Naps of 1 ms under scheduling policy POLICY (os.SCHED_BATCH: a wake-up never preempts
    # the task on the CPU, so each nap ends with a wait on the run queue behind it).
    "napper": (
        "os.sched_setscheduler(0, {POLICY}, os.sched_param(0))\n"
        "while True:\n    time.sleep(0.001)\n"
    ),
    # Moves itself between CPU 0 and 1 FLIPS times, busy on each, then idles.
    "flipper": textwrap.dedent(
        """
        for i in range({FLIPS}):
            os.sched_setaffinity(0, {{i % 2}})
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                pass
        sys.stdout.write("flipped\\n"); sys.stdout.flush()
        while True:
            time.sleep(1)
        """
    ),
}


class Workload:
    def __init__(self, kind: str, **params: object) -> None:
        body = PROGRAMS[kind].format(**params)
        pin = f"import os\nos.sched_setaffinity(0, {params['CPU']})\n" if "CPU" in params else ""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", pin + _PRELUDE + body],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def go(self) -> None:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_line(self, expected: str, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline().strip()
            if line == expected:
                return
        raise TimeoutError(f"workload {self.pid} never printed {expected!r}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


@contextmanager
def workloads(*specs: tuple[str, dict]) -> Iterator[list[Workload]]:
    started: list[Workload] = []
    try:
        for kind, params in specs:
            started.append(Workload(kind, **params))
        yield started
    finally:
        for w in started:
            w.stop()


def our_programs() -> list[str]:
    """Names of BPF programs of ours (every wasmtop program is named wasmtop_*) now loaded."""
    out = subprocess.run(["bpftool", "prog", "show"], capture_output=True, text=True, check=True)
    return [line for line in out.stdout.splitlines() if " name wasmtop_" in line]


def attached_tracepoints(pid: int) -> set[str]:
    """The tracepoints (event names) BPF programs are attached to through ``pid``'s perf events,
    as bpftool sees them."""
    out = subprocess.run(["bpftool", "perf", "show", "-j"], capture_output=True, text=True,
                         check=True)  # fmt: skip
    return {
        e["tracepoint"]
        for e in json.loads(out.stdout or "[]")
        if e.get("pid") == pid and e.get("fd_type") == "tracepoint"
    }


def no_programs_left(timeout_s: float = 10) -> list[str]:
    """Our programs still loaded once the kernel has had time to free detached ones (a program
    leaves bpftool's list after an RCU grace period, not at once). [] is the expected answer."""
    wait_for(lambda: not our_programs(), timeout_s=timeout_s)
    return our_programs()


def wait_for(predicate, timeout_s: float = 30, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return False


def assert_charged_its_life(spans: list[tuple[int, float, float]], life_ms: float) -> float:
    """The preemption delay charged to one thread's requests, ``spans`` of (start_ns,
    duration_ms, preempted_ms), against the thread's delay over its whole life as the scheduler
    probe counts it: never more, and less only by what fell outside the requests (between
    them, and the thread's start and end): within 5 %, or within the time between the requests
    where that is longer (under software emulation, or a loaded machine). Returns the charge."""
    charged_ms = sum(preempted for _, _, preempted in spans)
    ordered = sorted(spans)
    between_ms = sum((b[0] - a[0]) / 1e6 - a[1] for a, b in zip(ordered, ordered[1:]))
    assert charged_ms <= life_ms + 1e-6, (charged_ms, life_ms)
    assert life_ms - charged_ms <= max(0.05 * life_ms, between_ms), (life_ms, between_ms)
    return charged_ms


def wasmtop_cmd() -> list[str]:
    return [os.path.join(os.path.dirname(sys.executable), "wasmtop")]


HTTP_SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "http_server.py")


EDGE_SERVICE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "examples/wasm-edge-service/service.py",
)


@contextmanager
def http_server(
    *args: str, exe: str = sys.executable, script: str = HTTP_SERVER, stdin: int | None = None
) -> Iterator[tuple[subprocess.Popen, int]]:
    """An HTTP server script (tests/http_server.py, or the example edge service; or a program
    given as text with ``script="-c"``) in a subprocess: yields (process, port) once it prints
    "ready PORT". ``stdin``: as subprocess.Popen takes it."""
    proc = subprocess.Popen([exe, script, *args], stdout=subprocess.PIPE, stdin=stdin, text=True)
    try:
        word, port = proc.stdout.readline().split()
        assert word == "ready"
        yield proc, int(port)
    finally:
        proc.kill()
        proc.wait()


@contextmanager
def veth_namespace() -> Iterator[tuple[str, str, str]]:
    """A network namespace joined to this one by a veth pair, made with pyroute2:
    host side 10.213.7.1/24, namespace side 10.213.7.2/24. Yields (netns, host ifname, peer ip)."""
    from pyroute2 import IPRoute, NetNS, netns

    tag = uuid.uuid4().hex[:6]
    name, host_if, ns_if = f"wt-{tag}", f"wth{tag}", f"wtn{tag}"
    netns.create(name)
    ipr = IPRoute()
    try:
        ipr.link("add", ifname=host_if, kind="veth", peer=ns_if)
        host_idx = ipr.link_lookup(ifname=host_if)[0]
        ns_idx = ipr.link_lookup(ifname=ns_if)[0]
        ipr.link("set", index=ns_idx, net_ns_fd=name)
        ipr.addr("add", index=host_idx, address="10.213.7.1", prefixlen=24)
        ipr.link("set", index=host_idx, state="up")
        with NetNS(name) as ns:
            idx = ns.link_lookup(ifname=ns_if)[0]
            ns.addr("add", index=idx, address="10.213.7.2", prefixlen=24)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
        yield name, host_if, "10.213.7.2"
    finally:
        with suppress(Exception):
            ipr.link("del", ifname=host_if)
        ipr.close()
        netns.remove(name)


# -- a Wasm host that embeds wasmtime as a Rust crate (Extism's Python SDK) ---------------------
EXTISM_HOST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "extism_host.py")
# A guest with a counter: each call adds one and returns 0 (Extism's convention: an export
# without parameters returning i32); compiled by ``wat2wasm``, so no binary is checked in.
GUEST_WAT = """
(module
  (global $n (mut i32) (i32.const 0))
  (func (export "count") (result i32)
    global.get $n
    i32.const 1
    i32.add
    global.set $n
    i32.const 0))
"""


@contextmanager
def extism_host(
    tmp_path: Path, env: dict | None = None
) -> Iterator[tuple[subprocess.Popen, Callable[[str], dict]]]:
    """tests/extism_host.py running a guest module made here; ``ask(command)`` answers."""
    module = tmp_path / "guest.wasm"
    module.write_bytes(wat2wasm(GUEST_WAT))
    proc = subprocess.Popen([sys.executable, EXTISM_HOST, str(module)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        hello = json.loads(proc.stdout.readline())
        assert hello == {"ready": True, "pid": proc.pid}, hello

        def ask(command: str) -> dict:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            answer = json.loads(proc.stdout.readline())
            assert "error" not in answer, answer
            return answer

        yield proc, ask
    finally:
        proc.kill()
        proc.wait()


def wat2wasm(text: str) -> bytes:
    """A module compiled from WebAssembly text, by the wasmtime package in a child process: the
    test process never maps a runtime's library (wasmtop would find it a Wasm workload)."""
    code = "import sys, wasmtime; sys.stdout.buffer.write(wasmtime.wat2wasm(sys.stdin.read()))"
    return subprocess.run([sys.executable, "-c", code], input=text.encode(),
                          capture_output=True, check=True).stdout  # fmt: skip


def package_dir(name: str) -> Path:
    """Where an installed package is, without importing it (importing extism_sys or wasmtime
    maps a Wasm runtime's library into the test process)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.origin is not None, f"{name} is not installed"
    return Path(spec.origin).parent


def nonzero(counts: dict) -> dict:
    """The counts that are not zero (a dict of counters that may gain new keys)."""
    return {k: n for k, n in counts.items() if n}
