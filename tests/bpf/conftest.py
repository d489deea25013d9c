from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import pytest

from wasmtop.collector.collector import Collector
from wasmtop.collector.model import Snapshot
from wasmtop.probes.probeset import OK, ProbeSet, sleep_draining
from wasmtop.probes.sched import SchedProbe


def observe(
    seconds: float | None = None,
    *,
    start: Callable[[], None] = lambda: None,
    until: Callable[[], None] | None = None,
    drain: bool = True,
    run_stats: bool = False,
    **probe_options: object,
) -> tuple[Snapshot, SchedProbe]:
    """Attach a real scheduler probe, run ``start`` (let workloads go), watch for ``seconds``
    (or until ``until`` returns), detach, and return the Snapshot of that window."""
    probe = SchedProbe(**probe_options)
    with ProbeSet([probe], handle_signals=False, run_stats=run_stats) as probes:
        assert probe.status == OK, probe.reason
        collector = Collector(probes)
        start()
        if until is not None:
            until()
        if seconds:
            if drain:
                sleep_draining(probes, seconds)
            else:
                time.sleep(seconds)
        collector.observe()
        probes.detach()
        snap = collector.tick()
        health = probe.health()
    return snap, probe if health else probe


def by_pid(snap: Snapshot, pid: int):
    for w in snap.workloads:
        if pid in w.pids:
            return w
    raise AssertionError(f"no workload with pid {pid} in {[w.key for w in snap.workloads]}")


def go_all(workloads: Sequence) -> Callable[[], None]:
    def start() -> None:
        for w in workloads:
            w.go()

    return start


@pytest.fixture
def two_cpus() -> None:
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")


@pytest.fixture(autouse=True)
def quiet_kernel_after():
    """A stop hands its perf events to a child whose exit unregisters the probes (up to a
    second of kernel work, text patching included): wait for it, so the next test's timings
    do not overlap the previous test's teardown."""
    yield
    from wasmtop.probes import loader

    assert loader.settle(), "a handed-off perf event was not closed within 10 s"
