"""The collector thread's scheduling policy: SCHED_IDLE for bulk drains and for the waits
between drains (under a guard), none under pressure.

Real threads and real scheduling policies (read back with sched_getscheduler), and the kernel's
refusal to leave SCHED_IDLE without CAP_SYS_NICE.
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable

import pytest

from wasmtop.probes import cpushare
from wasmtop.probes.cpushare import CpuShare


def in_thread(fn: Callable[[], object]) -> object:
    """Run ``fn`` in a fresh thread (policies are per thread) and return what it returned."""
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if errors:
        raise errors[0]
    return out[0]


def policy() -> int:
    return os.sched_getscheduler(0)


BIG, SMALL = cpushare.BULK_BYTES, cpushare.BULK_BYTES - 1


def without_sys_nice(script: str) -> str:
    """What ``script`` prints, run by a Python without CAP_SYS_NICE and with RLIMIT_NICE 0: the
    kernel then refuses to let a thread leave SCHED_IDLE."""
    return subprocess.run(
        ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--",
         sys.executable, "-c", script],
        capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NICE, (0, 0)),
    ).stdout  # fmt: skip


def test_idle_mode_yields_only_bulk_drains_of_the_calling_thread():
    def run() -> list[int]:
        share = CpuShare("idle")
        seen = [policy()]  # waiting between drains: normal
        with share.bulk(SMALL):  # a few records: microseconds, not worth yielding
            seen.append(policy())
        with share.bulk(BIG):  # the bulk decoding
            seen.append(policy())
        seen.append(policy())  # and back for the wait
        return seen

    assert in_thread(run) == [os.SCHED_OTHER, os.SCHED_OTHER, os.SCHED_IDLE, os.SCHED_OTHER]
    assert policy() == os.SCHED_OTHER  # the test's own thread was never touched


def test_a_filling_ring_stops_the_yielding_until_calm():
    def run() -> list[tuple[int, int]]:
        share = CpuShare("idle")
        seen = []
        with share.bulk(BIG):
            share.after_drain(0.1)  # a quiet drain: still yielding
            seen.append((policy(), share.raised))
            share.after_drain(cpushare.RAISE_AT_FILL)  # a quarter of a ring in one interval
            seen.append((policy(), share.raised))
        with share.bulk(BIG):  # pressed: the next bulks do not yield
            seen.append((policy(), share.raised))
        share._pressed_at -= cpushare.CALM_S  # CALM_S without pressure
        with share.bulk(BIG):
            seen.append((policy(), share.raised))
        return seen

    assert in_thread(run) == [
        (os.SCHED_IDLE, 0),
        (os.SCHED_OTHER, 1),
        (os.SCHED_OTHER, 1),
        (os.SCHED_IDLE, 1),
    ]


def test_a_starved_bulk_stops_the_yielding(monkeypatch):
    """A yielding drain that took LATE_S of wall time was runnable and not run: the CPUs are
    full, and the next drains run at normal priority."""
    monkeypatch.setattr(cpushare, "LATE_S", 0.0)  # any yielding drain counts as starved

    def run() -> list[tuple[int, int]]:
        share = CpuShare("idle")
        seen = []
        with share.bulk(BIG):
            seen.append((policy(), share.raised))
        with share.bulk(BIG):
            seen.append((policy(), share.raised))
        return seen

    assert in_thread(run) == [(os.SCHED_IDLE, 0), (os.SCHED_OTHER, 1)]


def test_normal_mode_never_changes_the_policy():
    def run() -> tuple[int, int]:
        share = CpuShare("normal")
        with share.bulk(BIG):
            share.after_drain(1.0)
            return policy(), share.raised

    assert in_thread(run) == (os.SCHED_OTHER, 0)


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected one of idle, normal"):
        CpuShare("low")


def test_after_stop_nothing_yields():
    """The window's end, detaching (which drains once more) and output: normal priority."""

    def run() -> list[int]:
        share = CpuShare("idle")
        with share.bulk(BIG):
            share.stop()
            seen = [policy()]
        with share.bulk(BIG):
            seen.append(policy())
        return seen

    assert in_thread(run) == [os.SCHED_OTHER, os.SCHED_OTHER]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_without_cap_sys_nice_leaving_idle_is_refused_counted_and_survived():
    """Leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE: without either the kernel says
    EPERM, and wasmtop counts it and keeps draining at idle."""
    script = (
        "from wasmtop.probes.cpushare import CpuShare\n"
        "s = CpuShare('idle')\n"
        "with s.bulk(1 << 20):\n"
        "    s.after_drain(1.0); s.after_drain(1.0)\n"
        "with s.bulk(1 << 20):\n"
        "    pass\n"
        "print(s.idle, s.raised, s.failed, s.reason)\n"
    )
    out = without_sys_nice(script)
    assert out.split(maxsplit=3) == [  # asked once, not on every drain
        "True",
        "0",
        "1",
        "cannot set SCHED_OTHER: Operation not permitted\n",
    ]


def test_a_refused_entry_is_asked_once_and_never_leaves_the_thread_idle(monkeypatch):
    """Entering SCHED_IDLE is never refused on this machine (a seccomp filter could): a
    stand-in for sched_setscheduler refuses the first entry. The thread then never yields (and
    is not asked again), and is never left idle by a stale refusal."""
    real = os.sched_setscheduler
    calls: list[int] = []

    def refuse_first_idle(pid: int, policy: int, param: os.sched_param) -> None:
        calls.append(policy)
        if policy == os.SCHED_IDLE and calls.count(os.SCHED_IDLE) == 1:
            raise PermissionError(1, "Operation not permitted")
        real(pid, policy, param)

    monkeypatch.setattr(os, "sched_setscheduler", refuse_first_idle)

    def run() -> list[int]:
        share = CpuShare("idle")
        seen = []
        for _ in range(3):
            with share.bulk(BIG):
                seen.append(policy())
        seen.append(policy())
        return [*seen, share.failed, len(calls)]

    assert in_thread(run) == [os.SCHED_OTHER] * 4 + [1, 1]


WATCHER = r"""
import os, signal, time, json
from wasmtop.probes.cpushare import CpuShare
signal.signal(signal.SIGUSR1, lambda *a: None)  # a Python handler: the wakeup byte is written
signal.signal(signal.SIGUSR2, lambda *a: None)
cpu = CpuShare("idle")
cpu.watch_stop_signals(signals=(signal.SIGUSR1,))
out = {}
assert cpu._set(idle=True)
os.kill(os.getpid(), signal.SIGUSR2)  # not a stop signal: the thread stays idle
time.sleep(0.2)
out["after_other"] = os.sched_getscheduler(0)
os.kill(os.getpid(), signal.SIGUSR1)
deadline = time.monotonic() + 5
while os.sched_getscheduler(0) != os.SCHED_OTHER and time.monotonic() < deadline:
    time.sleep(0.01)
out["after_stop"] = os.sched_getscheduler(0)
out["stopped"] = cpu._stopped
cpu.unwatch_stop_signals()
out["wakeup_fd_restored"] = signal.set_wakeup_fd(-1) == -1
print(json.dumps(out))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_a_stop_signal_puts_an_idle_main_thread_back_to_normal_at_once() -> None:
    """The signal's handler runs in the main thread, which a bulk drain may hold at SCHED_IDLE
    on a full node: a watcher of normal priority raises it as soon as the signal arrives."""
    import json

    out = subprocess.run([sys.executable, "-c", WATCHER], capture_output=True, text=True,
                         timeout=30, check=True)  # fmt: skip
    got = json.loads(out.stdout)
    assert got["after_other"] == os.SCHED_IDLE
    assert got["after_stop"] == os.SCHED_OTHER
    assert got["stopped"] is True and got["wakeup_fd_restored"] is True


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_the_waits_between_drains_sleep_idle_and_each_drain_sets_its_own_policy(monkeypatch):
    """A thread that sleeps at normal priority and yields after it wakes cost another CPU's
    server busy time; the waits sleep idle and return to normal unless a bulk is waiting, and
    the drain after a wait is small (normal) or a bulk (idle) as before. The guard is set far
    off here, and so is the bulk's starvation mark, so that a loaded machine cannot make
    either fire."""
    monkeypatch.setattr(cpushare, "GUARD_S", 600.0)
    monkeypatch.setattr(cpushare, "LATE_S", 600.0)

    def run() -> tuple[list[int], int, bool]:
        share = CpuShare("idle")
        seen: list[int] = []
        try:
            share.wait(lambda s: seen.append(policy()), 0.01)  # inside the wait
            seen.append(policy())  # the wait returned
            with share.bulk(SMALL):
                seen.append(policy())
            share.wait(lambda s: seen.append(policy()), 0.01)
            with share.bulk(BIG):
                seen.append(policy())
            seen.append(policy())  # after the bulk, before the next wait
            share.wait(lambda s: None, 0.01, lambda: BIG)
            seen.append(policy())  # a bulk is waiting: still idle, into the drain
            with share.bulk(BIG):
                seen.append(policy())
            seen.append(policy())
            guard = share._guard
        finally:
            share.stop()
        return seen, share.raised, guard is not None and not guard.alive()

    seen, raised, guard_ended = in_thread(run)
    idle, other = os.SCHED_IDLE, os.SCHED_OTHER
    assert seen == [idle, other, other, idle, idle, other, idle, idle, other]
    assert raised == 0 and guard_ended


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_an_idle_wait_whose_guard_expires_is_raised_inside_it_and_counted(monkeypatch):
    """A wait still running when its guard expires (a starved thread on a full node; here the
    timer is made to expire at once) is put back to normal priority by the guard's thread
    while it still waits, and the yielding stops until calm."""
    monkeypatch.setattr(cpushare, "GUARD_S", 600.0)

    def run() -> tuple[list[int], int, bool]:
        share = CpuShare("idle")
        seen: list[int] = []

        def starved(seconds: float) -> None:
            seen.append(policy())
            cpushare._timerfd_settime(share._guard.fd, 1e-6)  # expire now
            deadline = time.monotonic() + 30
            while policy() != os.SCHED_OTHER and time.monotonic() < deadline:
                time.sleep(0.01)
            seen.append(policy())

        try:
            share.wait(starved, 0.05)
            idle_after = share.idle
            share.wait(lambda s: seen.append(policy()), 0.01)  # pressed: not idle now
        finally:
            share.stop()
        return seen, share.raised, idle_after

    seen, raised, idle_after = in_thread(run)
    assert seen == [os.SCHED_IDLE, os.SCHED_OTHER, os.SCHED_OTHER]
    assert raised == 1 and idle_after is False


def test_in_normal_mode_the_waits_keep_the_policy():
    def run() -> list[int]:
        share = CpuShare("normal")
        seen: list[int] = []
        share.wait(lambda s: seen.append(policy()), 0.01)
        return seen + [int(share._guard is None)]

    assert in_thread(run) == [os.SCHED_OTHER, 1]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_without_the_right_to_leave_idle_the_waits_stay_at_normal_priority():
    """An idle wait that could not be left would starve keys and deadlines on a full node:
    without CAP_SYS_NICE and with RLIMIT_NICE 0 the waits keep normal scheduling, unasked."""
    script = (
        "import os\n"
        "from wasmtop.probes.cpushare import CpuShare, may_leave_idle\n"
        "s = CpuShare('idle')\n"
        "seen = []\n"
        "s.wait(lambda t: seen.append(os.sched_getscheduler(0)), 0.01)\n"
        "print(may_leave_idle(), seen == [os.SCHED_OTHER], s.failed, s._guard is None)\n"
    )
    out = without_sys_nice(script)
    assert out.split() == ["False", "True", "0", "True"]


@pytest.mark.skipif(os.geteuid() != 0, reason="leaving SCHED_IDLE needs CAP_SYS_NICE")
def test_a_wait_ended_by_an_exception_leaves_idle_even_with_a_bulk_waiting(monkeypatch):
    """A stop raised in the wait (Terminated, KeyboardInterrupt) is handled at normal priority:
    the thread does not stay idle for a bulk it will not drain."""
    monkeypatch.setattr(cpushare, "GUARD_S", 600.0)

    class Stop(Exception):
        pass

    def run() -> tuple[int, int]:
        share = CpuShare("idle")

        def stopped(seconds: float) -> None:
            seen.append(policy())
            raise Stop

        seen: list[int] = []
        try:
            with pytest.raises(Stop):
                share.wait(stopped, 0.01, lambda: BIG)
            return seen[0], policy()
        finally:
            share.stop()

    assert in_thread(run) == (os.SCHED_IDLE, os.SCHED_OTHER)
