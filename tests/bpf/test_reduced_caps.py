"""The scheduler and trace-context probes with only CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (the
DaemonSet's capabilities, no CAP_SYS_ADMIN), run by tests/bpf/capped_wasmtop.py under
``setpriv``: the maps the two probes share, the pinned trace-context map, and the owner lock
that tells a live wasmtop's pin from a dead one's without listing programs."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import assert_charged_its_life, http_server, no_programs_left, workloads
from wasmtop.probes import bpfobj, pins
from wasmtop.probes.probeset import OK, ProbeSet
from wasmtop.probes.sched import SchedProbe

pytestmark = pytest.mark.bpf

HERE = Path(__file__).resolve().parent
HELPER = str(HERE / "capped_wasmtop.py")
WRITER = str(HERE.parents[1] / "examples/trace_ctx/trace_ctx_writer.py")
SETPRIV = ["setpriv", "--bounding-set=-all,+bpf,+perfmon,+net_admin", "--inh-caps=-all",
           "--no-new-privs"]  # fmt: skip
CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF = 12, 38, 39
CAPPED = 1 << CAP_NET_ADMIN | 1 << CAP_PERFMON | 1 << CAP_BPF
RNG = random.Random(7)


@pytest.fixture(autouse=True)
def nothing_of_ours_left_behind():
    yield
    assert no_programs_left() == []
    assert not pins.PIN_DIR.exists()
    assert not pins.TRACE_CTX_LOCK.exists()  # every owner released (and removed) its lock


class Capped:
    """capped_wasmtop.py under setpriv: ``ready`` once attached, ``stop()`` for what it saw."""

    def __init__(self, *args: str) -> None:
        self._err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [*SETPRIV, sys.executable, HELPER, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            text=True,
        )
        self.ready = self._line("ready")

    def _line(self, event: str, timeout_s: float = 120) -> dict:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()))
        reader.daemon = True
        reader.start()
        reader.join(timeout_s)
        if not got or not got[0]:
            self.kill()
            self._err.seek(0)
            raise AssertionError(f"capped wasmtop said no {event!r}:\n{self._err.read()[-3000:]}")
        line = json.loads(got[0])
        assert line["event"] == event, line
        return line

    def stop(self) -> dict:
        self.proc.stdin.write("stop\n")
        self.proc.stdin.flush()
        done = self._line("done")
        assert self.proc.wait(60) == 0
        return done

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._err.close()


@contextlib.contextmanager
def capped(*args: str) -> Iterator[Capped]:
    child = Capped(*args)
    try:
        yield child
    finally:
        child.close()


def lock_is_free() -> bool:
    fd = os.open(pins.TRACE_CTX_LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # also drops the lock if we took it


def assert_capped(ready: dict) -> None:
    """The child really runs without CAP_SYS_ADMIN: exactly the DaemonSet's capabilities, and
    what BCC does with an existing pin (open its map by id) is refused."""
    assert ready["cap_eff"] == CAPPED, hex(ready["cap_eff"])
    assert ready["open_by_id_errno"] == errno.EPERM
    assert ready["list_programs_errno"] == errno.EPERM
    for name, probe in ready["probes"].items():
        assert probe["status"] == OK, (name, probe["reason"])


def traceparent() -> str:
    return f"00-{RNG.randbytes(16).hex()}-{RNG.randbytes(8).hex()}-01"


def test_with_only_bpf_perfmon_net_admin_a_request_is_charged_its_threads_preemption_delay():
    """The trace-context probe reads the scheduler probe's per-thread map (shared through a
    map-in-map slot, no pin) and the trace-context map is pinned, and unpinned at stop."""
    requests = 12
    with (
        workloads(("hog", {"CPU": {1}})) as (hog,),
        http_server("--cpu", "1") as (contended, port_c),
        http_server("--cpu", "0") as (idle, port_i),
        capped("--trace-pids", f"{contended.pid},{idle.pid}") as child,
    ):
        ready = child.ready
        assert_capped(ready)
        assert ready["details"]["tracectx"]["interference"] == "ok"
        assert ready["details"]["tracectx"]["trace_ctx_map"] == str(pins.TRACE_CTX_PATH)
        assert ready["details"]["sched"]["trace_ctx_reason"] == ""
        # Made and pinned by the child, which holds the owner lock.
        assert ready["owned"] is True and ready["note"] == "made and pinned"
        assert pins.pinned_id() == ready["map_id"] == ready["pinned_id"]
        assert not lock_is_free()
        hog.go()
        for port in (port_c, port_i):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            for _ in range(requests):
                conn.request("GET", "/burn?ms=20", headers={"traceparent": traceparent()})
                conn.getresponse().read()
            conn.close()
        done = child.stop()
    assert not pins.TRACE_CTX_PATH.exists()  # removed at stop

    delay_ns = {int(k): v for k, v in done["thread_delay_ns"].items()}
    hot = [t for t in done["traces"] if t["pid"] == contended.pid]
    calm = [t for t in done["traces"] if t["pid"] == idle.pid]
    assert len(hot) == len(calm) == requests
    assert len({t["tid"] for t in hot}) == 1 and len({t["tid"] for t in calm}) == 1
    assert all(t["preempted_ms"] > 0 for t in hot), [t["preempted_ms"] for t in hot]
    # The thread's delay as the scheduler probe counts it over its whole life.
    charged_ms = assert_charged_its_life(
        [(t["start_ns"], t["duration_ms"], t["preempted_ms"]) for t in hot],
        delay_ns[hot[0]["tid"]] / 1e6,
    )
    assert charged_ms > 0.3 * sum(t["duration_ms"] for t in hot)
    # The uncontended server's thread is charged its own delay, never the hog's: never more
    # than its thread waited in its whole life (it shares CPU 0 with the test, so it waits too,
    # by how much depends on the machine's load).
    assert sum(t["preempted_ms"] for t in calm) <= delay_ns[calm[0]["tid"]] / 1e6 + 1e-6


def test_with_reduced_caps_a_pin_left_by_a_killed_wasmtop_is_replaced():
    with capped() as first:
        assert_capped(first.ready)
        stale = first.ready["map_id"]
        assert first.ready["owned"] and pins.pinned_id() == stale
        first.kill(signal.SIGKILL)  # no clean stop: the pin and the lock file stay
    assert pins.pinned_id() == stale
    assert pins.TRACE_CTX_LOCK.exists() and lock_is_free()  # the kernel dropped the lock
    with capped() as second:
        ready = second.ready
        assert_capped(ready)
        assert ready["details"]["sched"]["trace_ctx_reason"] == ""
        assert ready["owned"] is True
        assert ready["note"] == f"replaced a pin left behind (map id {stale})"
        assert pins.pinned_id() == ready["map_id"] != stale
        second.stop()
    assert not pins.TRACE_CTX_PATH.exists()


def test_with_reduced_caps_a_running_wasmtops_map_is_shared_stamped_and_left_in_place():
    """A second wasmtop finds the owner lock held: it opens the first one's map from the pin
    (BPF_OBJ_GET needs no CAP_SYS_ADMIN), its programs read what a runtime writes there, and
    it leaves the pin to its owner."""
    trace_id, span_id = RNG.randbytes(16), RNG.randbytes(8)
    owner = SchedProbe(trace_ctx=True)
    with workloads(("hog", {"CPU": {1}})) as (hog,):
        with ProbeSet([owner], handle_signals=False):
            assert owner.status == OK, owner.reason
            assert owner.trace_ctx_map.owned
            with capped("--threshold-ns", "1000000") as child:
                ready = child.ready
                assert_capped(ready)
                assert ready["owned"] is False and ready["note"].startswith("shared:")
                assert ready["map_id"] == owner.trace_ctx_map.map_id == pins.pinned_id()
                assert ready["details"]["sched"]["trace_ctx_map"] == str(pins.TRACE_CTX_PATH)
                hog.go()
                writer = subprocess.run(
                    ["taskset", "-c", "1", sys.executable, WRITER, "--trace-id",
                     trace_id.hex(), "--span-id", span_id.hex(), "--busy-ms", "600"],
                    capture_output=True, text=True, timeout=60,
                )  # fmt: skip
                assert writer.returncode == 0, writer.stderr
                done = child.stop()
            assert pins.pinned_id() == owner.trace_ctx_map.map_id  # the sharer left it
        assert not pins.TRACE_CTX_PATH.exists()  # the owner removed it
    stamped = [e for e in done["stamped"] if e["trace_id"] == trace_id.hex()]
    assert len(stamped) >= 3, done["stamped"]
    assert all(e["span_id"] == span_id.hex() for e in stamped)
    assert len({e["pid"] for e in stamped}) == 1 and stamped[0]["pid"] != hog.pid


def test_with_reduced_caps_a_pin_of_another_layout_is_left_alone():
    """With the lock free, a map of another layout may still be some other program's: telling
    needs CAP_SYS_ADMIN, so the capped wasmtop leaves it and runs unstamped, saying why."""
    pins.PIN_DIR.mkdir()
    fd = bpfobj.map_create(bpfobj.MAP_TYPE_HASH, 4, 8, 8, "odd")
    try:
        bpfobj.obj_pin(fd, str(pins.TRACE_CTX_PATH))
        odd = bpfobj.map_info(fd).id
    finally:
        os.close(fd)
    try:
        with capped() as child:
            ready = child.ready
            assert_capped(ready)  # the scheduler probe runs, unstamped
            d = ready["details"]["sched"]
            assert d["trace_ctx_map"] is None and ready["map_id"] is None
            assert "pinned map has type/key/value sizes (1, 4, 8)" in d["trace_ctx_reason"]
            assert "cannot be told without CAP_SYS_ADMIN: left alone" in d["trace_ctx_reason"]
            child.stop()
        assert pins.pinned_id() == odd
    finally:
        pins.TRACE_CTX_PATH.unlink()
        pins.PIN_DIR.rmdir()


def test_with_reduced_caps_a_held_lock_without_a_pin_leaves_the_map_off_with_the_reason():
    lock = pins.OwnerLock(pins.TRACE_CTX_LOCK)
    assert lock.try_acquire()
    try:
        with capped() as child:
            ready = child.ready
            assert_capped(ready)
            reason = ready["details"]["sched"]["trace_ctx_reason"]
            assert reason == (
                f"trace-context map off: {pins.TRACE_CTX_LOCK} is held by a running wasmtop "
                f"(pid {os.getpid()}) that has no map pinned at {pins.TRACE_CTX_PATH}"
            )
            child.stop()
        assert not pins.TRACE_CTX_PATH.exists()
    finally:
        lock.release()
