"""Runtime metrics (RSS, growth, CPU %, cgroup memory and throttling) against fixture /proc and
cgroup trees for pure v2 and hybrid (v1 controllers) layouts, and once against the real /proc."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from wasmtop.collector.resources import (
    CgroupFigures,
    ResourceReader,
    ResourceTracker,
    growth_slope_per_min,
)

PAGE = 4096
TCK = 100
V1_UNLIMITED = 9223372036854771712
# comm with spaces and parentheses: parsing from the first ')' would shift every field.
COMM = "wasm) (x y"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Host:
    """A fake /proc with self/mounts and cgroup mount directories under tmp_path."""

    def __init__(self, tmp_path: Path, mounts: list[str] | None = None) -> None:
        self.tmp = tmp_path
        self.proc = tmp_path / "proc"
        (self.proc / "self").mkdir(parents=True)
        (self.proc / "self" / "mounts").write_text("\n".join(mounts or []) + "\n")

    def reader(self) -> ResourceReader:
        return ResourceReader(self.proc, page_size=PAGE, clk_tck=TCK)

    def process(
        self,
        pid: int,
        *,
        utime: int = 0,
        stime: int = 0,
        start: int = 1000,
        rss_pages: int = 100,
        cgroup: str = "0::/\n",
    ) -> None:
        d = self.proc / str(pid)
        d.mkdir(exist_ok=True)
        after = ["S", "1", str(pid), str(pid), "0", "-1", "4194560", "0", "0", "0", "0"]
        after += [str(utime), str(stime), "0", "0", "20", "0", "4", "0", str(start)]
        after += ["123456789", str(rss_pages), "18446744073709551615"]
        (d / "stat").write_text(f"{pid} ({COMM}) " + " ".join(after) + "\n")
        (d / "statm").write_text(f"9000 {rss_pages} 50 10 0 800 0\n")
        (d / "cgroup").write_text(cgroup)

    def cgroup_dir(self, mount: str, path: str, files: dict[str, str]) -> Path:
        d = self.tmp / mount / path.lstrip("/")
        d.mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            (d / name).write_text(text)
        return d


def v2_cpu_stat(nr_periods: int, nr_throttled: int, throttled_usec: int) -> str:
    return (
        "usage_usec 5000\nuser_usec 3000\nsystem_usec 2000\n"
        f"nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_usec {throttled_usec}\n"
    )


def v1_cpu_stat(nr_periods: int, nr_throttled: int, throttled_ns: int) -> str:
    return f"nr_periods {nr_periods}\nnr_throttled {nr_throttled}\nthrottled_time {throttled_ns}\n"


def replace_with_dir(path: Path) -> None:
    # Reading it fails with IsADirectoryError; chmod 000 would not stop root.
    path.unlink()
    path.mkdir()


def v2_host(tmp_path: Path) -> Host:
    return Host(tmp_path, [f"cgroup2 {tmp_path / 'cg2'} cgroup2 rw,nosuid,nodev,noexec 0 0"])


def hybrid_host(tmp_path: Path, cpu_controllers: str) -> Host:
    cg = tmp_path / "cg"
    return Host(
        tmp_path,
        [
            f"cgroup2 {cg / 'unified'} cgroup2 rw,nosuid,nodev,noexec,relatime,nsdelegate 0 0",
            f"cgroup {cg / 'systemd'} cgroup rw,nosuid,nodev,noexec,relatime,name=systemd 0 0",
            f"cgroup {cg / cpu_controllers} cgroup rw,nosuid,nodev,noexec,relatime,"
            f"{cpu_controllers} 0 0",
            f"cgroup {cg / 'memory'} cgroup rw,nosuid,nodev,noexec,relatime,memory 0 0",
        ],
    )


# --- slope -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "samples, per_min",
    [
        pytest.param([(0, 5.0), (1, 5.0), (2, 5.0), (3, 5.0)], 0.0, id="flat"),
        pytest.param([(0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0)], 60.0, id="1-per-s"),
        pytest.param(
            [(1e6 + t, t * 1e6) for t in range(5)], 60e6, id="1MB-per-s-large-clock-values"
        ),
        # noise (+1, -1, -1, +1) is orthogonal to the centred times: the fit is exactly 2/s
        pytest.param([(0, 1.0), (1, 1.0), (2, 3.0), (3, 7.0)], 120.0, id="noisy-2-per-s"),
        pytest.param([(0, 10.0), (2, 9.0), (4, 8.0)], -30.0, id="falling"),
        pytest.param([(0, 0.0), (10, 1.0), (11, 1.5)], 60 * 9 / 74, id="uneven"),
    ],
)
def test_slope_per_minute(samples, per_min):
    assert growth_slope_per_min(samples) == pytest.approx(per_min, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(
    "samples",
    [
        pytest.param([], id="empty"),
        pytest.param([(3.0, 7.0)], id="one-sample"),
        pytest.param([(5.0, 1.0), (5.0, 2.0), (5.0, 9.0)], id="zero-time-spread"),
    ],
)
def test_slope_undefined(samples):
    assert growth_slope_per_min(samples) is None


# --- processes: RSS and CPU --------------------------------------------------------------------


def test_process_sample_fields(tmp_path):
    host = Host(tmp_path)
    host.process(42, utime=70, stime=30, start=5555, rss_pages=250)
    sample = host.reader().process(42)
    assert sample is not None
    assert (sample.pid, sample.rss_bytes, sample.cpu_ticks, sample.start_ticks) == (
        42,
        250 * PAGE,
        100,
        5555,
    )


def test_rss_summed_across_processes(tmp_path):
    host = Host(tmp_path)
    host.process(10, rss_pages=100)
    host.process(11, rss_pages=250)
    host.process(12, rss_pages=999)  # another workload's process
    tracker = ResourceTracker(host.reader(), clock=Clock())
    tracker.sample({"w": [10, 11], "other": [12]})
    figures = tracker.figures()
    assert figures["w"].rss_bytes == 350 * PAGE
    assert figures["other"].rss_bytes == 999 * PAGE


def test_cpu_percent_from_tick_deltas(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=100, stime=100)
    host.process(11, utime=500, stime=0)
    tracker = ResourceTracker(host.reader(), clock=clock)
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].cpu_percent is None  # nothing to compare with yet

    clock.now += 1.0
    host.process(10, utime=130, stime=120)  # +50 ticks = 0.5 s of CPU in 1 s
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].cpu_percent == pytest.approx(50.0)

    clock.now += 2.0
    host.process(10, utime=230, stime=120)  # +100
    host.process(11, utime=800, stime=0)  # +300: 4 s of CPU in 2 s
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].cpu_percent == pytest.approx(200.0)


def test_process_new_to_workload_starts_from_its_current_ticks(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=100)
    tracker = ResourceTracker(host.reader(), clock=clock)
    tracker.sample({"w": [10]})
    clock.now += 1.0
    host.process(11, utime=90000)  # long-running process joining the workload
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].cpu_percent == 0.0
    clock.now += 1.0
    host.process(11, utime=90025)
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].cpu_percent == pytest.approx(25.0)


def test_page_size_and_clock_tick_come_from_the_constructor(tmp_path):
    # 16 KiB pages (arm64) and a 250 Hz tick: values this host's defaults cannot mimic.
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=0, rss_pages=10)
    reader = ResourceReader(host.proc, page_size=16384, clk_tck=250)
    tracker = ResourceTracker(reader, clock=clock)
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"].rss_bytes == 10 * 16384
    host.process(10, utime=125, rss_pages=10)
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"].cpu_percent == pytest.approx(50.0)


# --- growth ------------------------------------------------------------------------------------


def test_growth_reaches_expected_rate_and_needs_one_second(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), clock=clock)
    host.process(10, rss_pages=1000)
    tracker.sample({"w": [10]})
    first = tracker.figures()["w"]
    assert first.rss_growth_mb_per_min is None
    assert first.growth_window_s == 0.0

    clock.now += 0.5
    host.process(10, rss_pages=1100)
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"].rss_growth_mb_per_min is None  # only 0.5 s apart

    # From here +200 pages every second: 200 * 4096 B/s = 49.152 MB/min.
    for step in range(1, 10):
        clock.now += 1.0
        host.process(10, rss_pages=1100 + 200 * step)
        tracker.sample({"w": [10]})
    figures = tracker.figures()["w"]
    assert figures.rss_bytes == (1100 + 200 * 9) * PAGE
    assert figures.growth_window_s == pytest.approx(9.5)
    # The first half second grew at the same rate, so the fit over all samples is exact.
    assert figures.rss_growth_mb_per_min == pytest.approx(200 * PAGE * 60 / 1e6)


def test_old_samples_leave_the_growth_window(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), growth_window_s=10.0, clock=clock)
    pages = 5000
    for _ in range(20):  # flat for 19 s
        host.process(10, rss_pages=pages)
        tracker.sample({"w": [10]})
        clock.now += 1.0
    assert tracker.figures()["w"].rss_growth_mb_per_min == 0.0
    assert tracker.figures()["w"].growth_window_s == 10.0

    for _ in range(5):  # then shrinking by 100 pages a second
        pages -= 100
        host.process(10, rss_pages=pages)
        tracker.sample({"w": [10]})
        clock.now += 1.0
    mixed = tracker.figures()["w"].rss_growth_mb_per_min
    pure = -100 * PAGE * 60 / 1e6
    assert pure < mixed < 0  # flat samples still in the window damp the slope

    for _ in range(10):
        pages -= 100
        host.process(10, rss_pages=pages)
        tracker.sample({"w": [10]})
        clock.now += 1.0
    figures = tracker.figures()["w"]
    assert figures.growth_window_s == 10.0
    assert figures.rss_growth_mb_per_min == pytest.approx(pure)  # no flat sample left


def test_the_span_reaches_the_window_once_a_sample_has_left_it(tmp_path):
    """Samples come about a second apart but not on the second: the first one kept is then a
    little inside the window. Once one has left it, the slope covers the whole window, and says
    so exactly (the alert rules compare the two)."""
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), growth_window_s=10.0, clock=clock)
    host.process(10, rss_pages=5000)
    seen = []
    for _ in range(13):
        tracker.sample({"w": [10]})
        f = tracker.figures()["w"]
        seen.append((round(f.growth_window_s, 2), f.growth_window_full_s))
        clock.now += 0.97
    assert [s for s, _ in seen] == [0.0, 0.97, 1.94, 2.91, 3.88, 4.85, 5.82, 6.79, 7.76, 8.73,
                                    9.7, 10.0, 10.0]  # fmt: skip
    assert {full for _, full in seen} == {10.0}


def test_a_gap_in_the_samples_starts_the_slope_over(tmp_path):
    """No live process for a while (or a stalled collector): the samples before the gap are not
    the same story, and the window is not covered until it is covered again."""
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), growth_window_s=10.0, clock=clock)
    for step in range(15):  # covered, growing
        host.process(10, rss_pages=1000 + 100 * step)
        tracker.sample({"w": [10]})
        clock.now += 1.0
    assert tracker.figures()["w"].growth_window_s == 10.0
    clock.now += 10.5  # gone for longer than MAX_SAMPLE_GAP_S; back with a flat RSS
    for _ in range(3):
        host.process(10, rss_pages=900)
        tracker.sample({"w": [10]})
        clock.now += 1.0
    figures = tracker.figures()["w"]
    assert figures.growth_window_s == 2.0 and figures.rss_growth_mb_per_min == 0.0


def test_a_process_workloads_pid_taken_by_another_process_starts_its_figures_over(tmp_path):
    """pid:N names a process, not a pid: another process given that pid (a new start time) is
    a new workload, whose RSS is not fitted on the old one's."""
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), clock=clock)
    for step in range(5):
        host.process(10, start=1000, rss_pages=1000 + 100 * step)
        for key in ("pid:10", "pod:x"):
            tracker.sample({key: [10]})
        clock.now += 1.0
    assert tracker.figures()["pid:10"].rss_growth_mb_per_min > 0
    host.process(10, start=5000, rss_pages=5000)  # the pid, reused
    for key in ("pid:10", "pod:x"):
        tracker.sample({key: [10]})
    fresh, pod = tracker.figures()["pid:10"], tracker.figures()["pod:x"]
    assert fresh.growth_window_s == 0.0 and fresh.rss_growth_mb_per_min is None
    assert tracker.pid_reused == 1
    # A container's processes come and go: its own figures go on across them.
    assert pod.growth_window_s == 5.0 and pod.rss_growth_mb_per_min > 0


# --- cgroups -----------------------------------------------------------------------------------


def test_v2_cgroup_figures(tmp_path):
    host = v2_host(tmp_path)
    path = "/kubepods/burstable/pod1/c1"
    host.process(10, cgroup=f"0::{path}\n")
    host.cgroup_dir(
        "cg2",
        path,
        {
            "memory.current": "123456789\n",
            "memory.max": "max\n",
            "cpu.stat": v2_cpu_stat(40, 3, 4500),
        },
    )
    reader = host.reader()
    assert reader.cgroup(10) == CgroupFigures(
        memory_current_bytes=123456789,
        memory_limit_bytes=None,
        nr_periods=40,
        nr_throttled=3,
        throttled_us=4500,
    )
    (tmp_path / "cg2" / path.lstrip("/") / "memory.max").write_text("536870912\n")
    assert reader.cgroup(10).memory_limit_bytes == 536870912
    assert (reader.vanished, reader.unreadable) == (0, 0)


@pytest.mark.parametrize("controllers", ["cpu,cpuacct", "cpu"])
def test_v1_cgroup_figures_on_hybrid_host(tmp_path, controllers):
    host = hybrid_host(tmp_path, controllers)
    path = "/docker/abc"
    host.process(
        10,
        cgroup=(f"12:memory:{path}\n5:{controllers}:{path}\n1:name=systemd:{path}\n0::{path}\n"),
    )
    # The v2 hierarchy has no cpu or memory controller: its cpu.stat only reports usage.
    host.cgroup_dir("cg/unified", path, {"cpu.stat": "usage_usec 1\nuser_usec 1\nsystem_usec 0\n"})
    host.cgroup_dir(
        "cg/memory",
        path,
        {"memory.usage_in_bytes": "2048000\n", "memory.limit_in_bytes": f"{V1_UNLIMITED}\n"},
    )
    host.cgroup_dir(f"cg/{controllers}", path, {"cpu.stat": v1_cpu_stat(80, 6, 7_000_000)})
    reader = host.reader()
    assert reader.cgroup(10) == CgroupFigures(
        memory_current_bytes=2048000,
        memory_limit_bytes=None,
        nr_periods=80,
        nr_throttled=6,
        throttled_us=7000,  # throttled_time is in ns
    )
    (tmp_path / "cg" / "memory" / "docker" / "abc" / "memory.limit_in_bytes").write_text(
        "268435456\n"
    )
    assert reader.cgroup(10).memory_limit_bytes == 268435456
    assert (reader.vanished, reader.unreadable) == (0, 0)


def test_v2_files_preferred_when_v2_has_the_controllers(tmp_path):
    host = hybrid_host(tmp_path, "cpu")
    host.process(10, cgroup="4:memory:/a\n3:cpu:/a\n0::/a\n")
    host.cgroup_dir(
        "cg/unified", "/a", {"memory.current": "111\n", "cpu.stat": v2_cpu_stat(1, 1, 5)}
    )
    host.cgroup_dir("cg/memory", "/a", {"memory.usage_in_bytes": "999\n"})
    host.cgroup_dir("cg/cpu", "/a", {"cpu.stat": v1_cpu_stat(9, 9, 9_000_000)})
    figures = host.reader().cgroup(10)
    assert (figures.memory_current_bytes, figures.nr_periods, figures.throttled_us) == (111, 1, 5)


def test_mount_points_are_unescaped(tmp_path):
    root = tmp_path / "cgroup root"  # /proc/mounts writes the space as \040
    escaped = str(root).replace(" ", "\\040")
    host = Host(tmp_path, [f"cgroup2 {escaped} cgroup2 rw 0 0"])
    host.process(10, cgroup="0::/w\n")
    (root / "w").mkdir(parents=True)
    (root / "w" / "memory.current").write_text("77\n")
    assert host.reader().cgroup(10).memory_current_bytes == 77


def test_mounts_file_argument_overrides_proc_self_mounts(tmp_path):
    host = Host(tmp_path)  # proc/self/mounts lists no cgroup at all
    mounts = tmp_path / "other-mounts"
    mounts.write_text(f"cgroup2 {tmp_path / 'cg2'} cgroup2 rw 0 0\n")
    host.process(10, cgroup="0::/w\n")
    host.cgroup_dir("cg2", "/w", {"memory.current": "88\n"})
    assert host.reader().cgroup(10).memory_current_bytes is None
    reader = ResourceReader(host.proc, mounts_file=mounts, page_size=PAGE, clk_tck=TCK)
    assert reader.cgroup(10).memory_current_bytes == 88


def test_missing_cgroup_files_give_none_fields(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/empty\n")
    host.cgroup_dir("cg2", "/empty", {})
    reader = host.reader()
    assert reader.cgroup(10) == CgroupFigures(None, None, None, None, None)
    assert (reader.vanished, reader.unreadable) == (0, 0)


def test_a_cgroup_outside_wasmtops_cgroup_namespace_is_counted_not_read(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/../../kubepods.slice/pod1\n")
    reader = host.reader()
    assert reader.cgroup(10) is None
    assert (reader.outside_namespace, reader.unreadable) == (1, 0)


def test_tracker_uses_lowest_live_pid_cgroup(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/low\n")
    host.process(20, cgroup="0::/high\n")
    host.cgroup_dir("cg2", "/low", {"memory.current": "1000\n"})
    host.cgroup_dir("cg2", "/high", {"memory.current": "2000\n"})
    tracker = ResourceTracker(host.reader(), clock=Clock())
    tracker.sample({"w": [20, 10]})
    assert tracker.figures()["w"].memory_current_bytes == 1000
    shutil.rmtree(host.proc / "10")
    tracker.sample({"w": [20, 10]})
    assert tracker.figures()["w"].memory_current_bytes == 2000


def test_throttling_is_the_increase_since_the_first_sample_v2(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/w\n")
    cg = host.cgroup_dir("cg2", "/w", {"cpu.stat": v2_cpu_stat(100, 10, 50_000)})
    clock = Clock()
    tracker = ResourceTracker(host.reader(), clock=clock)
    tracker.sample({"w": [10]})
    assert (tracker.figures()["w"].throttled_us, tracker.figures()["w"].nr_throttled) == (0, 0)

    (cg / "cpu.stat").write_text(v2_cpu_stat(150, 14, 62_500))
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert (tracker.figures()["w"].throttled_us, tracker.figures()["w"].nr_throttled) == (
        12_500,
        4,
    )

    # Counters going down mean a new cgroup: restart from there, never negative.
    (cg / "cpu.stat").write_text(v2_cpu_stat(5, 1, 1_000))
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert (tracker.figures()["w"].throttled_us, tracker.figures()["w"].nr_throttled) == (0, 0)
    (cg / "cpu.stat").write_text(v2_cpu_stat(9, 3, 4_000))
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert (tracker.figures()["w"].throttled_us, tracker.figures()["w"].nr_throttled) == (3_000, 2)


def test_throttling_increase_v1_in_microseconds(tmp_path):
    host = hybrid_host(tmp_path, "cpu,cpuacct")
    host.process(10, cgroup="3:cpu,cpuacct:/w\n0::/\n")
    cg = host.cgroup_dir("cg/cpu,cpuacct", "/w", {"cpu.stat": v1_cpu_stat(10, 2, 7_000_000)})
    clock = Clock()
    tracker = ResourceTracker(host.reader(), clock=clock)
    tracker.sample({"w": [10]})
    (cg / "cpu.stat").write_text(v1_cpu_stat(20, 5, 19_000_000))
    clock.now += 1.0
    tracker.sample({"w": [10]})
    figures = tracker.figures()["w"]
    assert (figures.throttled_us, figures.nr_throttled) == (12_000, 3)


def test_no_cpu_stat_gives_none_throttling(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/w\n")
    host.cgroup_dir("cg2", "/w", {"memory.current": "5\n"})
    tracker = ResourceTracker(host.reader(), clock=Clock())
    tracker.sample({"w": [10]})
    figures = tracker.figures()["w"]
    assert (figures.throttled_us, figures.nr_throttled) == (None, None)
    assert figures.memory_current_bytes == 5


# --- failures: vanished, unreadable, pid reuse -------------------------------------------------


def test_vanished_process_between_samples(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=100, rss_pages=100)
    host.process(11, utime=100, rss_pages=300)
    reader = host.reader()
    tracker = ResourceTracker(reader, clock=clock)
    tracker.sample({"w": [10, 11]})
    assert tracker.figures()["w"].rss_bytes == 400 * PAGE

    shutil.rmtree(host.proc / "11")
    host.process(10, utime=120, rss_pages=100)
    clock.now += 1.0
    tracker.sample({"w": [10, 11]})
    figures = tracker.figures()["w"]
    assert figures.rss_bytes == 100 * PAGE
    assert figures.cpu_percent == pytest.approx(20.0)
    assert reader.vanished == 1
    assert reader.unreadable == 0
    assert reader.process(11) is None
    assert reader.cgroup(11) is None
    assert reader.vanished == 3


def test_all_processes_gone_keeps_the_last_figures(tmp_path):
    host = Host(tmp_path)
    host.process(10, rss_pages=100)
    tracker = ResourceTracker(host.reader(), clock=Clock())
    tracker.sample({"w": [10]})
    before = tracker.figures()["w"]
    shutil.rmtree(host.proc / "10")
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"] == before


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(
            lambda d: (d / "stat").write_text("garbage without fields\n"), id="stat-garbage"
        ),
        pytest.param(lambda d: (d / "stat").write_text("10 (x) S 1 2\n"), id="stat-truncated"),
        pytest.param(lambda d: (d / "statm").write_text("12 lots\n"), id="statm-garbage"),
        pytest.param(lambda d: ((d / "stat").unlink(), (d / "stat").mkdir()), id="stat-is-a-dir"),
        pytest.param(
            lambda d: ((d / "statm").unlink(), (d / "statm").mkdir()), id="statm-is-a-dir"
        ),
    ],
)
def test_unreadable_process_files_are_counted_and_skipped(tmp_path, damage):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=100, rss_pages=100)
    host.process(11, utime=100, rss_pages=300)
    reader = host.reader()
    tracker = ResourceTracker(reader, clock=clock)
    tracker.sample({"w": [10, 11]})

    damage(host.proc / "11")
    assert reader.process(11) is None
    assert (reader.unreadable, reader.vanished) == (1, 0)
    host.process(10, utime=150, rss_pages=100)
    clock.now += 1.0
    tracker.sample({"w": [10, 11]})
    figures = tracker.figures()["w"]
    assert figures.rss_bytes == 100 * PAGE
    assert figures.cpu_percent == pytest.approx(50.0)
    assert (reader.unreadable, reader.vanished) == (2, 0)


def test_unreadable_cgroup_files_are_counted(tmp_path):
    host = v2_host(tmp_path)
    host.process(10, cgroup="0::/w\n")
    cg = host.cgroup_dir(
        "cg2",
        "/w",
        {"memory.current": "lots\n", "memory.max": "1024\n", "cpu.stat": "nr_periods\n"},
    )
    reader = host.reader()
    assert reader.cgroup(10) == CgroupFigures(None, 1024, None, None, None)
    assert (reader.unreadable, reader.vanished) == (2, 0)

    replace_with_dir(cg / "memory.current")
    assert reader.cgroup(10).memory_current_bytes is None
    assert reader.unreadable == 4  # the directory and the still garbled cpu.stat

    replace_with_dir(host.proc / "10" / "cgroup")
    assert reader.cgroup(10) is None
    assert (reader.unreadable, reader.vanished) == (5, 0)


def test_missing_or_empty_mounts_file_never_raises(tmp_path):
    host = Host(tmp_path)
    host.process(10, cgroup="0::/w\n")
    (host.proc / "self" / "mounts").unlink()
    reader = host.reader()
    assert reader.cgroup(10) == CgroupFigures(None, None, None, None, None)
    assert reader.unreadable == 1


@pytest.mark.parametrize("new_ticks", [5, 90_000], ids=["fewer-ticks", "many-more-ticks"])
def test_pid_reuse_gives_no_negative_or_huge_cpu(tmp_path, new_ticks):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=5000, start=100)
    reader = host.reader()
    tracker = ResourceTracker(reader, clock=clock)
    tracker.sample({"w": [10]})

    host.process(10, utime=new_ticks, start=900)  # pid 10 is now another process
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"].cpu_percent == 0.0

    host.process(10, utime=new_ticks + 30, start=900)  # the new incarnation counts from here
    clock.now += 1.0
    tracker.sample({"w": [10]})
    assert tracker.figures()["w"].cpu_percent == pytest.approx(30.0)
    assert (reader.vanished, reader.unreadable) == (0, 0)


def test_forget_drops_the_workload_and_its_baselines(tmp_path):
    host = Host(tmp_path)
    clock = Clock()
    host.process(10, utime=100)
    tracker = ResourceTracker(host.reader(), clock=clock)
    tracker.sample({"w": [10], "v": [10]})
    tracker.forget(["w", "never-seen"])
    assert set(tracker.figures()) == {"v"}
    clock.now += 1.0
    host.process(10, utime=200)
    tracker.sample({"w": [10], "v": [10]})
    assert tracker.figures()["w"].cpu_percent is None  # a fresh start
    assert tracker.figures()["v"].cpu_percent == pytest.approx(100.0)


# --- the real /proc ----------------------------------------------------------------------------


def test_real_proc_for_this_process():
    reader = ResourceReader()
    before = os.times()
    sample = reader.process(os.getpid())
    after = os.times()
    assert sample is not None
    assert sample.pid == os.getpid()
    assert sample.rss_bytes > 0
    with open("/proc/self/status") as status:
        vm_rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    # statm pages * page size and VmRSS are the same counter, read a moment apart.
    assert abs(sample.rss_bytes - vm_rss_kb * 1024) <= max(vm_rss_kb * 1024 // 10, 1 << 20)
    tck = os.sysconf("SC_CLK_TCK")
    assert sample.cpu_ticks >= 0
    assert (before.user + before.system) * tck - 2 <= sample.cpu_ticks
    assert sample.cpu_ticks <= (after.user + after.system) * tck + 2
    figures = reader.cgroup(os.getpid())
    assert isinstance(figures, CgroupFigures)
    assert reader.vanished == 0


def test_a_workload_without_live_processes_is_forgotten_after_stale_s(tmp_path):
    """Churned pods must not pile up: 20,000 short-lived workloads leave nothing behind."""
    host = Host(tmp_path)
    clock = Clock()
    tracker = ResourceTracker(host.reader(), clock=clock, stale_s=300)
    host.process(10, rss_pages=100)
    for i in range(200):  # 200 churned workloads, each one sample then gone
        host.process(1000 + i, rss_pages=1)
        tracker.sample({f"pod-{i}": [1000 + i], "keeper": [10]})
        shutil.rmtree(host.proc / str(1000 + i))
        clock.now += 1
    assert len(tracker.figures()) == 201  # the gone ones keep their last figures for a while
    clock.now += 301
    tracker.sample({"keeper": [10]})
    assert set(tracker.figures()) == {"keeper"}
    assert tracker.evicted == 200


def test_workloads_sharing_a_cgroup_read_it_once_per_sample(tmp_path, monkeypatch):
    """Two workloads in one cgroup, one in another: each cgroup's files are read once per
    sample, and read again at the next sample (a changed value is seen)."""
    from wasmtop.collector import resources

    host = v2_host(tmp_path)
    for pid, path in ((10, "/pod"), (11, "/pod"), (12, "/other")):
        host.process(pid, cgroup=f"0::{path}\n")
    for path, current in (("/pod", "100\n"), ("/other", "200\n")):
        host.cgroup_dir("cg2", path, {"memory.current": current, "memory.max": "max\n"})
    reads: list[str] = []
    real = resources.read_text

    def counted(path):  # noqa: ANN001, ANN202
        reads.append(str(path))
        return real(path)

    monkeypatch.setattr(resources, "read_text", counted)
    tracker = ResourceTracker(host.reader(), clock=Clock())
    workloads = {"a": [10], "b": [11], "c": [12]}
    tracker.sample(workloads)
    current = [r for r in reads if r.endswith("memory.current")]
    assert sorted(current) == sorted(str(tmp_path / "cg2" / p / "memory.current")
                                     for p in ("pod", "other"))  # fmt: skip
    figures = tracker.figures()
    assert [figures[k].memory_current_bytes for k in "abc"] == [100, 100, 200]
    (tmp_path / "cg2" / "pod" / "memory.current").write_text("150\n")
    reads.clear()
    tracker.sample(workloads)
    assert sum(r.endswith("memory.current") for r in reads) == 2
    assert [tracker.figures()[k].memory_current_bytes for k in "abc"] == [150, 150, 200]
    (tmp_path / "cg2" / "pod" / "memory.current").write_text("175\n")
    assert tracker.reader.cgroup(10).memory_current_bytes == 175  # outside a sample: no memo
    with pytest.raises(RuntimeError), tracker.reader.one_sample():
        raise RuntimeError
    assert tracker.reader._memo is None  # an exception inside leaves no memo behind


def test_read_text_reads_to_the_end_and_replaces_bad_bytes(tmp_path):
    """Past a full chunk, and past the page or so a multi-record /proc file gives per read:
    the whole of this process's maps (hundreds of lines), as a plain read gives it."""
    from wasmtop.collector.workloads import read_text

    big = tmp_path / "big"
    big.write_bytes(b"x" * 100_000 + b"\xff\n")
    assert read_text(big) == "x" * 100_000 + "\ufffd\n"
    with open("/proc/self/maps") as f:
        expected = f.read()
    assert len(expected) > 8192  # more than one read's worth
    assert read_text("/proc/self/maps") == expected
    with pytest.raises(FileNotFoundError):
        read_text(tmp_path / "missing")
    assert read_text(f"/proc/{os.getpid()}/stat").startswith(f"{os.getpid()} (")
