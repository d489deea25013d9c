"""The collector's tick on a fixture /proc and a scheduler reading made up in the test (no BPF):
wasmtop's own process and the processes it starts are marked ``wasmtop``, kernel threads
(PF_KTHREAD in /proc/PID/stat) ``kernel_thread``, and both marks survive the Snapshot's JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from wasmtop.collector.collector import Collector
from wasmtop.collector.snapshot_json import snapshot_from_dict
from wasmtop.collector.topology import Topology
from wasmtop.collector.workloads import PF_KTHREAD, ProcReader, WorkloadResolver
from wasmtop.probes.records import SchedReading, ThreadSched

OWN = 4100  # the process the collector runs in, in the fixture


def make_proc(
    root: Path, pid: int, comm: str, *, ppid: int, flags: int = 0, pages: int = 0
) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "comm").write_text(comm + "\n")
    (d / "cgroup").write_text("0::/\n")
    (d / "status").write_text(f"Name:\t{comm}\nCpus_allowed_list:\t0-1\n")
    # After "(comm)": state, ppid, pgrp, session, tty_nr, tpgid, flags, ..., starttime (22nd).
    after = ["S", str(ppid), "0", "0", "0", "-1", str(flags)] + ["0"] * 12 + ["777"] + ["0"] * 10
    (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(after) + "\n")
    (d / "statm").write_text(f"1000 {pages} 0 0 0 0 0\n")
    (d / "maps").write_text("")


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    make_proc(root, 2, "kthreadd", ppid=0, flags=PF_KTHREAD | 0x40)
    make_proc(root, 37, "kworker/0:1", ppid=2, flags=PF_KTHREAD | 0x4208060)
    make_proc(root, 15, "migration/1", ppid=2, flags=PF_KTHREAD)
    make_proc(root, OWN, "wasmtop", ppid=4000, pages=50_000)  # sudo started it
    make_proc(root, 4150, "wasmtop", ppid=OWN, pages=20_000)  # a child it started
    make_proc(root, 4000, "sudo", ppid=3999)  # its parent is not wasmtop
    make_proc(root, 900, "edge-svc", ppid=1, pages=3000)
    return root


def thread(tid: int, tgid: int, comm: str, switches: int) -> ThreadSched:
    return ThreadSched(tid=tid, tgid=tgid, comm=comm, switches=switches, involuntary=1,
                       migrations=0, preempt_delay_ns=1000, preemptions=1,
                       over_threshold=0)  # fmt: skip


class FakeSched:
    """What the collector asks of the scheduler probe: a reading, and forgetting exited ones."""

    def __init__(self, threads: list[ThreadSched]) -> None:
        self.threads = threads

    def read(self) -> SchedReading:
        return SchedReading(
            ts_ns=10**9 * 5,
            threads={t.tid: t for t in self.threads},
            cpu_time_ns={(t.tid, 0): 1_000_000 * t.switches for t in self.threads},
            migrations={},
            delay_hist={},
            window_max_delay_ns={},
        )

    def forget(self, tids: Any, tgids: Any) -> set[tuple[int, int]]:
        return set()


class NoProbes:
    """A ProbeSet holding none: the collector only iterates, drains and reads its CPU share."""

    cpu = SimpleNamespace(raised=0, failed=0)

    def __iter__(self):
        return iter(())

    def drain(self) -> None:
        pass


def collect(proc: Path, threads: list[ThreadSched], monkeypatch: pytest.MonkeyPatch):
    fake = FakeSched(threads)
    monkeypatch.setattr(Collector, "sched", property(lambda self: fake))
    collector = Collector(NoProbes(), proc_root=proc, topology=Topology({}), own_pid=OWN)
    return collector.tick()


THREADS = [
    thread(2, 2, "kthreadd", 3),
    thread(37, 37, "kworker/0:1", 40),
    thread(15, 15, "migration/1", 12),
    thread(OWN, OWN, "wasmtop", 50),
    thread(OWN + 3, OWN, "collector", 25),  # a thread of wasmtop's process
    thread(4150, 4150, "wasmtop", 5),
    thread(4000, 4000, "sudo", 1),
    thread(900, 900, "edge-svc", 30),
]


def test_own_processes_and_kernel_threads_are_marked_in_the_snapshot(proc, monkeypatch):
    snap = collect(proc, THREADS, monkeypatch)
    marks = {w.key: (w.wasmtop, w.kernel_thread) for w in snap.workloads}
    assert marks == {
        "pid:2": (False, True),
        "pid:15": (False, True),
        "pid:37": (False, True),
        f"pid:{OWN}": (True, False),
        "pid:4150": (True, False),  # started by wasmtop: its own too
        "pid:4000": (False, False),  # wasmtop's parent is not wasmtop
        "pid:900": (False, False),
    }
    own = snap.workload(f"pid:{OWN}")
    assert own.pids == (OWN,) and own.sched.switches == 75  # both its threads, one workload
    assert own.runtime_metrics.rss_bytes == 50_000 * os.sysconf("SC_PAGE_SIZE")
    # The kernel threads are kept one by one: the Snapshot loses nothing by the mark.
    assert snap.workload("pid:37").comm == "kworker/0:1"
    assert snap.workload("pid:37").sched.switches == 40


def test_the_marks_survive_the_json_and_an_older_servers_snapshot_has_none(proc, monkeypatch):
    snap = collect(proc, THREADS, monkeypatch)
    d = json.loads(snap.to_json(indent=None))
    by_key = {w["key"]: w for w in d["workloads"]}
    assert by_key[f"pid:{OWN}"]["wasmtop"] is True
    assert by_key["pid:37"]["kernel_thread"] is True
    assert by_key["pid:900"]["wasmtop"] is False and by_key["pid:900"]["kernel_thread"] is False
    assert snapshot_from_dict(d) == snapshot_from_dict(json.loads(json.dumps(d)))
    back = snapshot_from_dict(d)
    assert back.workload(f"pid:{OWN}").wasmtop and back.workload("pid:37").kernel_thread
    for w in d["workloads"]:  # a server from before the marks
        del w["wasmtop"], w["kernel_thread"]
    older = snapshot_from_dict(d)
    assert not any(w.wasmtop or w.kernel_thread for w in older.workloads)


def test_ownership_is_read_from_processes_already_seen_never_from_new_reads(proc):
    resolver = WorkloadResolver(ProcReader(proc), own_pid=OWN)
    assert resolver.own(OWN)  # itself, even before it was read
    assert not resolver.own(4150)  # not read yet: not known to be a child
    assert resolver.identify(4150) is not None
    assert resolver.own(4150)
    assert resolver.known() == {4150}  # its parent was not read to answer
    resolver.identify(900)
    resolver.identify(4000)
    assert not resolver.own(900) and not resolver.own(4000)
    assert resolver.identify(37).kernel_thread and not resolver.identify(900).kernel_thread


def test_a_child_of_a_child_is_own_and_the_walk_is_bounded(tmp_path):
    root = tmp_path / "proc"
    make_proc(root, 10, "w", ppid=OWN)
    make_proc(root, 11, "w", ppid=10)
    # A loop of parents (pids reused while being read): the walk gives up, never hangs.
    make_proc(root, 20, "a", ppid=21)
    make_proc(root, 21, "b", ppid=20)
    resolver = WorkloadResolver(ProcReader(root), own_pid=OWN)
    for pid in (10, 11, 20, 21):
        resolver.identify(pid)
    assert resolver.own(11) and not resolver.own(20)


class ReadingsInTurn(FakeSched):
    def __init__(self, readings: list[SchedReading]) -> None:
        self.readings = iter(readings)

    def read(self) -> SchedReading:
        return next(self.readings)


def test_wait_split_ahead_of_its_total_is_not_counted_again_as_unsplit(proc, monkeypatch):
    """The split of a wait (who held the CPU) and the wait's total are read at different
    instants, and a wait pulled to another CPU is split before it ends: a window can see the
    split before the total. The next window, which sees the total, must not call it unsplit."""
    make_proc(proc, 901, "noisy", ppid=1)

    def reading(tick: int, wait_ns: int, split_ns: int) -> SchedReading:
        def t(tid: int, comm: str, preempt_ns: int) -> ThreadSched:
            return ThreadSched(tid=tid, tgid=tid, comm=comm, switches=tick, involuntary=tick,
                               migrations=0, preempt_delay_ns=preempt_ns, preemptions=tick,
                               over_threshold=0)  # fmt: skip

        return SchedReading(
            ts_ns=tick * 10**9, threads={900: t(900, "edge-svc", wait_ns), 901: t(901, "noisy", 0)},
            cpu_time_ns={}, migrations={}, delay_hist={}, window_max_delay_ns={},
            waited_behind={(900, 901): split_ns} if split_ns else {},
        )  # fmt: skip

    fake = ReadingsInTurn(
        [reading(1, 0, 0), reading(2, 0, 2 * 10**9), reading(3, 2 * 10**9, 2 * 10**9)]
    )
    monkeypatch.setattr(Collector, "sched", property(lambda self: fake))
    collector = Collector(NoProbes(), proc_root=proc, topology=Topology({}), own_pid=OWN)
    collector.tick()
    split_first = {
        b.kind: b.wait_ms for b in collector.tick().workload("pid:900").sched.waited_behind
    }
    total_later = collector.tick().workload("pid:900").sched
    assert split_first == {"workload": 2000.0}
    assert total_later.runq_delay_total_us == 2_000_000
    assert {b.kind for b in total_later.waited_behind} == set()  # no "unattributed" 2000 ms
