"""The collector thread's scheduling policy: SCHED_IDLE by default, raised under pressure.

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


def test_idle_mode_yields_only_the_calling_thread_and_rises_when_a_ring_fills():
    def run() -> list[tuple[int, int]]:
        share = CpuShare("idle")
        seen = []
        share.start()
        seen.append((policy(), share.raised))
        share.after_drain(0.1)  # a quiet drain: stays idle
        seen.append((policy(), share.raised))
        share.after_drain(cpushare.RAISE_AT_FILL)  # a quarter of a ring in one interval
        seen.append((policy(), share.raised))
        share.after_drain(0.0)  # calm, but not for CALM_S yet
        seen.append((policy(), share.raised))
        share._pressed_at -= cpushare.CALM_S
        share.after_drain(0.0)
        seen.append((policy(), share.raised))
        share.stop()
        seen.append((policy(), share.raised))
        return seen

    assert in_thread(run) == [
        (os.SCHED_IDLE, 0),
        (os.SCHED_IDLE, 0),
        (os.SCHED_OTHER, 1),
        (os.SCHED_OTHER, 1),
        (os.SCHED_IDLE, 1),
        (os.SCHED_OTHER, 1),
    ]
    assert policy() == os.SCHED_OTHER  # the test's own thread was never touched


def test_normal_mode_never_changes_the_policy():
    def run() -> tuple[int, int]:
        share = CpuShare("normal")
        share.start()
        share.after_drain(1.0)
        share.after_sleep(0.1, 5.0)
        return policy(), share.raised

    assert in_thread(run) == (os.SCHED_OTHER, 0)


def test_an_unknown_mode_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected one of idle, normal"):
        CpuShare("low")


def test_an_overrun_sleep_means_starvation_and_raises_the_thread():
    """A sleep between drains that overran by more than LATE_S: the thread was runnable and not
    run (under SCHED_IDLE, the CPUs are full). Seen for real in bench/tracectx_overhead.py with
    both CPUs saturated: the collector raised itself once per round and lost nothing."""

    def run() -> list[tuple[int, int]]:
        share = CpuShare("idle")
        share.start()
        seen = []
        share.after_sleep(0.1, 0.1 + cpushare.LATE_S * 0.9)  # late, not starved
        seen.append((policy(), share.raised))
        share.after_sleep(0.1, 0.1 + cpushare.LATE_S * 1.1)
        seen.append((policy(), share.raised))
        share.stop()
        return seen

    assert in_thread(run) == [(os.SCHED_IDLE, 0), (os.SCHED_OTHER, 1)]


@pytest.mark.skipif(not shutil.which("setpriv"), reason="needs setpriv (util-linux)")
def test_without_cap_sys_nice_leaving_idle_is_refused_counted_and_survived():
    """Leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE: without either the kernel says
    EPERM, and wasmtop counts it and keeps draining at idle."""
    script = (
        "from wasmtop.probes.cpushare import CpuShare\n"
        "s = CpuShare('idle'); s.start(); s.after_drain(1.0); s.after_drain(1.0)\n"
        "print(s.idle, s.raised, s.failed, s.reason)\n"
    )
    out = subprocess.run(
        ["setpriv", "--bounding-set=-sys_nice", "--inh-caps=-sys_nice", "--",
         sys.executable, "-c", script],
        capture_output=True, text=True, check=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NICE, (0, 0)),
    ).stdout  # fmt: skip
    assert out.split(maxsplit=3) == [
        "True",
        "0",
        "2",
        "cannot set SCHED_OTHER: Operation not permitted\n",
    ]


def test_only_the_draining_yields_not_what_comes_before_the_first_drain_or_after_stop():
    """Attaching and building the collector run before the first drain; the window's end,
    detaching and output after stop(): all at normal priority."""

    def run() -> list[int]:
        share = CpuShare("idle")
        seen = [policy()]  # constructed: nothing changed
        share.begin_draining()
        seen.append(policy())  # the first drain yields
        share.begin_draining()
        seen.append(policy())
        share.stop()
        seen.append(policy())  # the window's end
        share.begin_draining()  # detach drains once more: it must not yield again
        seen.append(policy())
        return seen

    assert in_thread(run) == [
        os.SCHED_OTHER,
        os.SCHED_IDLE,
        os.SCHED_IDLE,
        os.SCHED_OTHER,
        os.SCHED_OTHER,
    ]
