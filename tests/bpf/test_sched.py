"""The scheduler probe against real threads on the real kernel (issue: foundation, tests 1-5)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from books import books
from conftest import by_pid, go_all, observe
from support import workloads
from wasmtop.probes import features
from wasmtop.probes.probeset import FAILED, OK, UNAVAILABLE, Probe, ProbeSet
from wasmtop.probes.sched import SchedProbe

pytestmark = pytest.mark.usefixtures("two_cpus")


def test_pinned_thread_never_migrates_and_has_no_skew():
    with workloads(("hog", {"CPU": {0}})) as (hog,):
        snap, _ = observe(2.0, start=go_all([hog]), pids=[hog.pid])
    w = by_pid(snap, hog.pid)
    assert w.sched.migrations == 0
    assert w.sched.allowed_cpus == (0,)
    assert set(w.sched.cpu_time_ns_by_cpu) == {"0"}
    assert w.sched.cpu_time_ns_by_cpu["0"] > 0.5e9  # it ran most of the 2 s window
    assert w.sched.cpu_skew_ratio == pytest.approx(0.0, abs=0.01)
    assert w.sched.affinity_stability == 0.0


def test_affinity_flips_are_counted_as_migrations_both_ways():
    flips = 200
    with workloads(("flipper", {"FLIPS": flips})) as (flipper,):
        snap, _ = observe(
            start=go_all([flipper]),
            until=lambda: flipper.wait_line("flipped"),
            pids=[flipper.pid],
        )
    s = by_pid(snap, flipper.pid).sched
    assert s.migrations >= flips - 1  # the first setaffinity may find it on the right CPU
    directions = {(m.from_cpu, m.to_cpu): m.count for m in s.migration_matrix}
    assert directions.get((0, 1), 0) >= flips // 2 - 1
    assert directions.get((1, 0), 0) >= flips // 2 - 1
    assert all(m.distance == "same_llc" for m in s.migration_matrix)  # this VM: one LLC
    assert s.cpu_skew_ratio > 0.5  # busy on both CPUs
    assert s.affinity_stability == pytest.approx(s.migrations / s.switches)


def test_two_hogs_on_one_cpu_preempt_each_other_for_about_a_timeslice():
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        snap, _ = observe(2.0, start=go_all(hogs), pids=[h.pid for h in hogs])
    for hog in hogs:
        s = by_pid(snap, hog.pid).sched
        assert s.involuntary > 50, s
        assert s.preemptions > 50
        # Of the order of a timeslice: milliseconds, not microseconds nor seconds.
        assert 500 <= s.preempt_delay_us.p50 <= 50_000, s.preempt_delay_us
        assert s.preempt_delay_us.p50 <= s.preempt_delay_us.p99 <= s.preempt_delay_us.max
        # The histogram and the exact sum agree: total / count lies within the buckets seen.
        mean_us = s.preempt_delay_total_us / s.preemptions
        assert s.preempt_delay_hist[0].low_us <= mean_us <= s.preempt_delay_hist[-1].high_us
        assert sum(b.count for b in s.preempt_delay_hist) == s.preemptions


def test_a_sleeper_switches_voluntarily_and_is_never_preempted():
    with workloads(("sleeper", {"CPU": {0}})) as (sleeper,):
        snap, _ = observe(2.0, start=go_all([sleeper]), pids=[sleeper.pid])
    s = by_pid(snap, sleeper.pid).sched
    assert s.switches > 50  # ~100 naps a second
    # A wakeup that lands on the one instant it runs could preempt it; allow 1 %.
    assert s.involuntary <= max(1, s.switches // 100)
    assert s.preemptions_over_threshold == 0


def test_over_threshold_preemptions_name_the_hog():
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as (victim, hog):
        snap, _ = observe(
            2.0, start=go_all([victim, hog]), pids=[victim.pid, hog.pid], threshold_ns=1_000_000
        )
    victim_events = [e for e in snap.events.preemptions if e.pid == victim.pid]
    assert len(victim_events) > 20
    by_hog = [e for e in victim_events if e.preemptor_pid == hog.pid]
    assert len(by_hog) >= 0.9 * len(victim_events)
    assert all(e.delay_us >= 1000 for e in victim_events)
    assert all(e.cpu == 1 and e.workload == f"pid:{victim.pid}" for e in victim_events)
    s = by_pid(snap, victim.pid).sched
    assert s.preemptions_over_threshold == len(victim_events)  # none lost, all counted


@pytest.fixture
def test_cgroup():
    root = features.cgroup2_mount()
    assert root is not None, "no cgroup2 mount"
    path = root / f"wasmtop-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            (root / "cgroup.procs").write_text(pid)
        path.rmdir()


def test_process_in_a_cgroup_is_reported_with_it_and_the_filter_keeps_only_it(test_cgroup):
    root = features.cgroup2_mount()
    rel = "/" + str(test_cgroup.relative_to(root))
    with workloads(("hog", {"CPU": {0}}), ("hog", {"CPU": {1}})) as (inside, outside):
        (test_cgroup / "cgroup.procs").write_text(str(inside.pid))
        snap, _ = observe(1.5, start=go_all([inside, outside]), cgroup=rel)
    w = by_pid(snap, inside.pid)
    assert w.cgroup == rel
    assert w.kind == "process"
    assert w.sched.switches > 0 or int(w.sched.cpu_time_ns_by_cpu.get("0", 0)) > 0
    # Filtered in the kernel: nothing outside the cgroup was recorded.
    assert all(outside.pid not in x.pids for x in snap.workloads)
    assert {x.cgroup for x in snap.workloads} == {rel}


def test_flooded_tiny_ring_buffer_counts_losses_and_the_books_balance():
    # One page holds ~40 records; threshold 0 sends every preemption, and nothing drains
    # for 2 s while two hogs share a CPU (~250 preemptions/s each).
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        snap, probe = observe(
            2.0,
            start=go_all(hogs),
            drain=False,
            pids=[h.pid for h in hogs],
            threshold_ns=0,
            ringbuf_pages=1,
        )
    health = snap.probes["sched"]
    ctr = probe.counter_values()
    assert health["lost"] > 0
    assert health["lost"] == ctr["RB_LOST"]
    assert health["attempts"] == ctr["RB_ATTEMPTS"]
    assert health["attempts"] == health["events"] + health["lost"] + health["malformed"]
    assert health["malformed"] == 0
    # The kernel's per-thread counters saw every over-threshold preemption and wake-up wait
    # (threshold 0: the SIGCONT that starts a hog is one), lost or not.
    over = sum(
        by_pid(snap, h.pid).sched.preemptions_over_threshold
        + by_pid(snap, h.pid).sched.wakeups_over_threshold
        for h in hogs
    )
    assert over == health["attempts"]


def test_probe_cost_is_reported_from_bpf_stats_when_asked_for():
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        snap, _ = observe(1.0, start=go_all(hogs), pids=[h.pid for h in hogs], run_stats=True)
    health = snap.probes["sched"]
    assert health["run_count"] > 100
    assert health["run_time_ns"] > 0
    assert 0 < health["ns_per_run"] < 100_000
    assert "run_stats" not in health
    assert Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip() == "0"  # left as found


def test_by_default_no_bpf_program_on_the_host_is_timed():
    """Timing (BPF_ENABLE_STATS) would tax every BPF program on the node: off unless asked."""
    probe = SchedProbe()
    with ProbeSet([probe], handle_signals=False):
        assert probe.status == OK, probe.reason
        enabled = Path("/proc/sys/kernel/bpf_stats_enabled").read_text().strip()
        health = probe.health().as_dict()
    assert enabled == "0"
    assert health["run_count"] == health["run_time_ns"] == 0
    assert health["run_stats"].startswith("off: not asked for (--probe-stats")


class _BrokenProbe(Probe):
    name = "broken"
    tracepoints = (("sched:sched_switch", "wasmtop_broken"),)

    def body(self) -> str:
        return "int wasmtop_broken(void *ctx) { return undeclared_symbol; }\n"


class _MissingTracepointProbe(Probe):
    name = "missing"
    tracepoints = (("nosuchcategory:nosuchevent", "wasmtop_missing"),)


class _NoCountersProbe(Probe):
    name = "nocounters"
    tracepoints = (("sched:sched_switch", "wasmtop_nocounters"),)

    def source(self) -> str:  # no common prelude: the counters map the reader needs is absent
        return "int wasmtop_nocounters(void *ctx) { return 0; }\n"


class _VerifierRejectedProbe(Probe):
    name = "rejected"
    tracepoints = (("sched:sched_switch", "wasmtop_rejected"),)

    def body(self) -> str:  # an unbounded index into the stack: the verifier must refuse it
        return (
            "int wasmtop_rejected(struct tracepoint__sched__sched_switch *args) {\n"
            "  volatile char buf[8] = {}; u32 i = args->prev_pid; return buf[i]; }\n"
        )


def test_failed_and_unavailable_probes_do_not_take_the_others_down():
    probes = [
        _BrokenProbe(), _MissingTracepointProbe(), _NoCountersProbe(), _VerifierRejectedProbe(),
        SchedProbe(),
    ]  # fmt: skip
    with ProbeSet(probes, handle_signals=False) as ps:
        broken, missing, nocounters, rejected, sched = ps.probes
        assert broken.status == FAILED
        assert "undeclared_symbol" in broken.reason  # the compiler's own message
        assert missing.status == UNAVAILABLE
        assert "nosuchcategory:nosuchevent" in missing.reason
        assert nocounters.status == FAILED
        assert "map 'counters' missing" in nocounters.reason  # at load time, not read time
        assert rejected.status == FAILED
        assert "variable-offset read from stack" in rejected.reason  # the verifier's words
        assert sched.status == OK
        sched.read()
    assert not [p for p in probes if p.bpf is not None]


def test_short_lived_processes_do_not_crash_or_become_phantoms():
    churned: list[int] = []

    def churn() -> None:
        for _ in range(40):
            run = subprocess.Popen(["true"])
            churned.append(run.pid)
            assert run.wait() == 0

    snap, _ = observe(0.5, start=churn)
    for w in snap.workloads:
        assert w.pids and w.comm  # every workload reported was identified
    # All 40 had exited before the collector could read who they were: none is reported as a
    # workload, and their switches are not dropped but counted as unattributed (with whatever
    # else on the host exited in the window).
    assert not [w.key for w in snap.workloads if set(w.pids) & set(churned)]
    assert snap.unattributed.processes >= len(churned), snap.unattributed
    assert snap.unattributed.switches >= len(churned), snap.unattributed


def test_kernel_histogram_buckets_match_the_exact_delays_of_every_preemption():
    """Threshold 0 sends every preemption with its exact delay; the in-kernel histogram must
    hold exactly those delays in the buckets the Python twin computes, each bucket at most
    1/8 wide relative to its lower bound."""
    from collections import Counter

    from wasmtop.collector.quantiles import bucket_bounds, bucket_of

    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        snap, _ = observe(1.5, start=go_all(hogs), pids=[h.pid for h in hogs], threshold_ns=0)
    assert snap.probes["sched"]["lost"] == 0
    for hog in hogs:
        s = by_pid(snap, hog.pid).sched
        delays = [round(e.delay_us * 1000) for e in snap.events.preemptions if e.pid == hog.pid]
        assert len(delays) == s.preemptions > 50
        expected = Counter(bucket_bounds(bucket_of(d)) for d in delays)
        got = Counter()
        for b in s.preempt_delay_hist:
            got[(round(b.low_us * 1000), round(b.high_us * 1000))] += b.count
        assert got == expected
        assert s.preempt_delay_us.max == pytest.approx(max(delays) / 1000)
        for low, high in expected:
            assert high - low <= max(1, low / 8)


def test_on_cpu_time_never_goes_back_between_readings_and_agrees_with_schedstat():
    """Two hogs share CPU 0 and take turns every few ms while the probe is read as fast as it
    goes. A slice that ends between the read of the on-CPU map and that of the running slices
    is in neither; a reading must still never show less than the one before (the collector
    takes a decrease for a recreated entry and counts the whole value again: seconds of CPU in
    one window). What the readings add up to is held to the kernel's own books."""
    with workloads(("hog", {"CPU": {0}}), ("hog", {"CPU": {0}})) as hogs:
        probe = SchedProbe(pids=[h.pid for h in hogs])
        with ProbeSet([probe], handle_signals=False) as probes:
            assert probes and probe.status == OK, probe.reason
            go_all(hogs)()
            time.sleep(0.3)  # both have run and been switched out
            first, books_first = bracketed(probe, hogs)
            prev, readings, went_back = first, 0, []
            # At least 300 readings over at least 3 s (a slow machine takes longer for them).
            start = time.monotonic()
            while readings < 300 or time.monotonic() < start + 3.0:
                assert time.monotonic() < start + 60, readings
                cur = probe.read().cpu_time_ns
                went_back += [(k, prev[k], v) for k, v in cur.items() if v < prev.get(k, 0)]
                prev, readings = cur, readings + 1
                time.sleep(0.001)
            last, books_last = bracketed(probe, hogs)
    assert not went_back, went_back[:5]
    assert all(last[k] >= v for k, v in prev.items())
    for hog, (before0, after0), (before1, after1) in zip(
        hogs, books_first, books_last, strict=True
    ):
        key = (hog.pid, 0)
        ours = last[key] - first[key]
        # Each reading fell between the books read just before and just after it. Within 1 %
        # and 10 ms: schedstat's sum for a running task is brought up to date at ticks and
        # switches (4 ms apart here) and leaves out steal time, and a reading may miss the
        # slice that ended while it ran.
        least, most = before1.run_ns - after0.run_ns, after1.run_ns - before0.run_ns
        assert least > 0.5e9, least  # each had about half of CPU 0 for 3 s
        slack = 0.01 * most + 10e6
        assert least - slack <= ours <= most + slack, (least, ours, most)


def bracketed(probe: SchedProbe, hogs: list) -> tuple[dict, list]:
    """A reading's on-CPU times, and each hog's books read just before and just after it."""
    before = [books(h.pid) for h in hogs]
    reading = probe.read().cpu_time_ns
    return reading, list(zip(before, [books(h.pid) for h in hogs], strict=True))


THREAD_THEN_WAIT = """
import sys, threading, time
def nap():
    for _ in range(300):
        time.sleep(0.001)
t = threading.Thread(target=nap)
t.start()
t.join()
print(t.native_id, flush=True)
sys.stdin.readline()
"""

NAPS_THEN_WAIT = """
import sys, time
for _ in range(20):
    time.sleep(0.001)
print("napped", flush=True)
sys.stdin.readline()
"""


def spawn_as(pid: int, code: str) -> subprocess.Popen | None:
    """A new process on this pid, which the kernel hands out next after ns_last_pid; None when
    another fork took it first."""
    Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    if proc.pid == pid:
        return proc
    proc.kill()
    proc.wait()
    return None


def test_a_thread_id_taken_by_a_new_process_starts_from_zero():
    """A thread's id handed out again, to a new process, while the thread's entry is still in
    the map (the collector removes dead threads' entries only every few ticks): the entry starts
    over, so the new process is not charged with the old thread's switches (the collector takes
    a changed tgid for a new thread and counts the entry's whole value)."""
    probe = SchedProbe()
    with ProbeSet([probe], handle_signals=False) as probes:
        assert probes and probe.status == OK, probe.reason
        old = subprocess.Popen([sys.executable, "-c", THREAD_THEN_WAIT], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        tid = int(old.stdout.readline())
        before = probe.read().threads[tid]
        assert before.tgid == old.pid and before.switches >= 300
        old.kill()
        old.wait()
        new = None
        for _ in range(20):  # another fork on the machine may take the pid first
            new = spawn_as(tid, NAPS_THEN_WAIT)
            if new:
                break
        assert new is not None, f"pid {tid} never came back"
        try:
            assert new.stdout.readline().strip() == "napped"
            kernel = books(new.pid)
            after = probe.read().threads[tid]
        finally:
            new.kill()
            new.wait()
    assert after.tgid == new.pid
    assert 20 <= after.switches <= kernel.voluntary + kernel.involuntary, (after, kernel)


def test_every_windows_maximum_is_a_real_delay_and_covers_every_delay_of_its_window():
    """Threshold 0 sends every preemption with its exact delay while the probe is read every
    20 ms (about 100 windows). A window's maximum (a thread skips the map when its wait is no
    longer than the maximum it saw in the same window) must be the delay of a preemption that
    ended then, and no preemption may be longer than the maxima around it. A read drains the
    events before it takes the maxima, so a preemption that ends between the two is in the
    next read's events and in this window's maximum."""
    with workloads(("hog", {"CPU": {1}}), ("hog", {"CPU": {1}})) as hogs:
        probe = SchedProbe(pids=[h.pid for h in hogs], threshold_ns=0)
        with ProbeSet([probe], handle_signals=False) as probes:
            assert probes and probe.status == OK, probe.reason
            go_all(hogs)()
            probe.read()
            readings = []
            for _ in range(100):
                time.sleep(0.02)
                readings.append(probe.read())
    assert probe.health().lost == 0
    for hog in hogs:
        maxima = [r.window_max_delay_ns.get(hog.pid, 0) for r in readings]
        delays = [[e.delay_ns for e in r.events if e.pid == hog.pid] for r in readings]
        assert sum(map(len, delays)) > 200 and sum(1 for m in maxima if m) > 50
        for k in range(1, len(readings) - 1):
            if maxima[k]:
                assert maxima[k] in delays[k] + delays[k + 1], (k, maxima[k], delays[k : k + 2])
            if delays[k]:
                assert max(delays[k]) <= max(maxima[k - 1], maxima[k]), (k, delays[k], maxima)


TWO_NAPPERS = """
import os, sys, threading, time
stop = [threading.Event(), threading.Event()]
def nap(cpu, i):
    os.sched_setaffinity(0, {cpu})
    os.write(1, f"{i} {threading.get_native_id()}\\n".encode())  # one write: never interleaved
    while not stop[i].is_set():
        time.sleep(0.001)
threads = [threading.Thread(target=nap, args=(1, 0)), threading.Thread(target=nap, args=(0, 1))]
for t in threads:
    t.start()
os.sched_setaffinity(0, {0})  # the main thread never stands in the first one's way
sys.stdin.readline()
stop[0].set()
threads[0].join()
print("stopped", flush=True)
sys.stdin.readline()
"""

HOG_ON_EACH_CPU = """
import os, sys, threading
def hog(cpu):
    os.sched_setaffinity(0, {cpu})
    while True:
        pass
for cpu in (0, 1):
    threading.Thread(target=hog, args=(cpu,), daemon=True).start()
sys.stdin.readline()
"""


def test_wait_behind_a_process_held_in_an_exited_threads_entry_is_not_lost():
    """Two threads of one process nap on CPU 1 and CPU 0, each behind a hog thread of another
    process: a thread's wait behind the same process stays in its own entry. When the first
    thread exits and its entry is deleted, what it held must stay in the pair's figure: else the
    figure drops, the reading is held at its last value, and the other thread's later wait
    behind the hog is hidden until it has made the loss up. Its later wait is held to its own
    schedstat."""
    hog = subprocess.Popen([sys.executable, "-c", HOG_ON_EACH_CPU], stdin=subprocess.PIPE,
                           text=True)  # fmt: skip
    naps = subprocess.Popen([sys.executable, "-c", TWO_NAPPERS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    allowed = os.sched_getaffinity(0)
    try:
        tids = dict(map(int, naps.stdout.readline().split()) for _ in range(2))
        first, second = tids[0], tids[1]  # on CPU 1 and on CPU 0
        probe = SchedProbe(pids=[hog.pid, naps.pid])
        with ProbeSet([probe], handle_signals=False) as probes:
            assert probes and probe.status == OK, probe.reason
            # Each thread is left alone with the hog thread of its CPU while it counts: this
            # process keeps off CPU 1 until the first thread has stopped, then off CPU 0.
            os.sched_setaffinity(0, {0})
            try:
                time.sleep(1.0)
                naps.stdin.write("\n")
                naps.stdin.flush()
                assert naps.stdout.readline().strip() == "stopped"
                os.sched_setaffinity(0, {1})
                entry = probe.table("threads")[probe.table("threads").Key(first)]
                held = entry.behind_ns if entry.behind_tgid == hog.pid else 0
                before = probe.read().waited_behind
                dropped = probe.forget([first], [])
                books_before = books(naps.pid, second)
                time.sleep(1.0)
                after = probe.read().waited_behind
                books_after = books(naps.pid, second)
            finally:
                os.sched_setaffinity(0, allowed)
            assert (naps.pid, hog.pid) not in dropped
    finally:
        for p in (hog, naps):
            p.kill()
            p.wait()
    # Its wait split by who held the CPU: behind the hog, and moments behind kernel threads or
    # whatever else the node ran on CPU 0 (a busier machine puts more there).
    split = {k[1]: v - before.get(k, 0) for k, v in after.items() if k[0] == naps.pid}
    ours = sum(split.values())
    kernel = (books_after - books_before).wait_ns
    assert kernel > 50e6, kernel  # it waited behind the hog for a quarter of that second
    assert split[hog.pid] >= 0.5 * ours, split  # mostly behind the hog
    # The books are read a few ms from the probe, and a wait in progress at either end (up to a
    # timeslice) can fall on either side.
    assert abs(ours - kernel) <= 0.02 * kernel + 8e6, (ours, kernel, held, split)
    # Had the exited thread's part been lost, the figure would have come out short by it.
    assert abs(ours - kernel) < abs(ours - (kernel - held)) or held < 16e6, (ours, kernel, held)


def test_a_pair_whose_culprit_exited_is_kept_while_a_live_threads_entry_holds_part_of_it():
    """A napper waits behind a hog on CPU 1; the hog exits and the napper waits behind nothing
    after (the idle task), so the part of its wait behind the hog that its entry holds stays
    there. Forgetting the hog's process must keep that pair: dropped, the entry would make it
    again and the collector would count that part a second time."""
    napper = subprocess.Popen(
        [sys.executable, "-c", "import os, time\nos.sched_setaffinity(0, {1})\n"
         "while True:\n    time.sleep(0.001)\n"],
    )  # fmt: skip
    hog = subprocess.Popen(
        [sys.executable, "-c", "import os\nos.sched_setaffinity(0, {1})\nwhile True:\n    pass\n"]
    )
    try:
        probe = SchedProbe(pids=[hog.pid, napper.pid])
        with ProbeSet([probe], handle_signals=False) as probes:
            assert probes and probe.status == OK, probe.reason
            time.sleep(1.0)
            threads = probe.table("threads")
            for _ in range(50):  # stopped while its last wait was behind the hog
                napper.send_signal(signal.SIGSTOP)
                time.sleep(0.01)
                entry = threads[threads.Key(napper.pid)]
                if entry.behind_tgid == hog.pid and entry.behind_ns:
                    break
                napper.send_signal(signal.SIGCONT)
                time.sleep(0.05)
            assert entry.behind_tgid == hog.pid and entry.behind_ns > 0  # held in the entry
            hog.kill()
            hog.wait()
            pair = (napper.pid, hog.pid)
            before = probe.read().waited_behind[pair]
            dropped = probe.forget([], [hog.pid])
            after = probe.read().waited_behind.get(pair, 0)
    finally:
        napper.kill()
        napper.wait()
    assert pair not in dropped
    assert after == before >= entry.behind_ns
