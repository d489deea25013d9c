"""Resource figures per workload (the Snapshot's runtime_metrics block): RSS and its growth,
CPU use, cgroup memory and CPU throttling.

Everything is read from /proc and the cgroup filesystems through roots given at construction,
so tests can point them at a fixture tree. Both cgroup layouts are handled: pure v2, and hybrid
hosts where v2 is mounted without the cpu/memory controllers and those live in v1 hierarchies.
Mount points come from a mounts file, never from well-known paths.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from .workloads import parse_proc_cgroup, read_text, stat_fields

DEFAULT_GROWTH_WINDOW_S = 300.0
MIN_GROWTH_SPAN_S = 1.0  # a slope over less than this is mostly noise
# A workload not sampled for longer than this (no live process meanwhile, or a stalled
# collector) starts its growth slope over: its samples are never further apart, so once one has
# left the window the slope covers the whole window but for less than this at its start.
MAX_SAMPLE_GAP_S = 10.0
# v1 reports "no limit" as the largest page-aligned signed 64-bit value, which varies by arch.
_V1_UNLIMITED = 2**62
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")
_T = TypeVar("_T")


@dataclass(frozen=True)
class CgroupFigures:
    memory_current_bytes: int | None  # v2 memory.current, v1 memory.usage_in_bytes
    memory_limit_bytes: int | None  # None when unlimited
    nr_periods: int | None
    nr_throttled: int | None
    throttled_us: int | None


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    rss_bytes: int
    cpu_ticks: int  # utime + stime, in clock ticks
    start_ticks: int  # tells a reused pid from the original


@dataclass(frozen=True)
class ResourceFigures:
    rss_bytes: int
    rss_growth_mb_per_min: float | None  # MB = 10**6 bytes
    growth_window_s: float  # the time span the slope covers now
    cpu_percent: float | None  # 100 = one CPU
    memory_current_bytes: int | None
    memory_limit_bytes: int | None
    throttled_us: int | None  # increase since the workload's first sample
    nr_throttled: int | None  # increase since the workload's first sample
    growth_window_full_s: float = DEFAULT_GROWTH_WINDOW_S  # the window the slope is taken over


@dataclass(frozen=True)
class CgroupMounts:
    v2_root: Path | None
    v1_roots: dict[str, Path]  # controller -> mount point of its hierarchy


def _unescape(path: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount points as \ooo.
    return _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), path)


def parse_mounts(text: str) -> CgroupMounts:
    """cgroup mount points from a /proc/PID/mounts text (first mount wins)."""
    v2_root: Path | None = None
    v1_roots: dict[str, Path] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mount_point, fstype, options = Path(_unescape(fields[1])), fields[2], fields[3]
        if fstype == "cgroup2" and v2_root is None:
            v2_root = mount_point
        elif fstype == "cgroup":
            # Options mix mount flags (rw, relatime) with controller names; only controller
            # names are ever looked up, so keeping the flags too is harmless.
            for option in options.split(","):
                v1_roots.setdefault(option, mount_point)
    return CgroupMounts(v2_root, v1_roots)


def _key_values(text: str) -> dict[str, int]:
    pairs = (line.split() for line in text.splitlines() if line.strip())
    return {key: int(value) for key, value in pairs}


def _v2_limit(text: str) -> int | None:
    value = text.strip()
    return None if value == "max" else int(value)


def _v1_limit(text: str) -> int | None:
    value = int(text.strip())
    return None if value >= _V1_UNLIMITED else value


def _int(text: str) -> int:
    return int(text.strip())


class ResourceReader:
    """Reads process and cgroup figures. Never raises on bad or missing files: a process gone
    mid-read counts in ``vanished``, a file present but unreadable or garbled in
    ``unreadable``, and the read yields None."""

    def __init__(
        self,
        proc_root: str | Path = "/proc",
        *,
        mounts_file: str | Path | None = None,
        page_size: int | None = None,
        clk_tck: int | None = None,
    ) -> None:
        self.root = Path(proc_root)
        self.mounts_file = Path(mounts_file) if mounts_file else self.root / "self" / "mounts"
        self.page_size = page_size or os.sysconf("SC_PAGE_SIZE")
        self.clk_tck = clk_tck or os.sysconf("SC_CLK_TCK")
        self.vanished = 0
        self.unreadable = 0
        self.outside_namespace = 0  # cgroup paths outside wasmtop's cgroup namespace
        self._mounts: CgroupMounts | None = None
        # Within one ResourceTracker.sample: cgroup figures by the cgroup's paths, so workloads
        # that share a cgroup (every process of a pod, of a systemd service) read it once.
        self._memo: dict[tuple, CgroupFigures] | None = None

    @contextmanager
    def one_sample(self) -> Iterator[None]:
        """Reads inside are one sample: a cgroup's files are read once (and a file that cannot
        be read counts once in ``unreadable``). One thread at a time: the collector's."""
        self._memo = {}
        try:
            yield
        finally:
            self._memo = None

    def _proc_text(self, pid: int, name: str) -> str:
        return read_text(f"{self.root}/{pid}/{name}")

    def process(self, pid: int) -> ProcessSample | None:
        try:
            fields = stat_fields(self._proc_text(pid, "stat"))
            resident_pages = int(self._proc_text(pid, "statm").split()[1])
            return ProcessSample(
                pid=pid,
                rss_bytes=resident_pages * self.page_size,
                cpu_ticks=int(fields[11]) + int(fields[12]),
                start_ticks=int(fields[19]),
            )
        except (FileNotFoundError, ProcessLookupError):
            self.vanished += 1
        except (OSError, ValueError, IndexError):
            self.unreadable += 1
        return None

    def _cgroup_mounts(self) -> CgroupMounts:
        """cgroup mount points, read once they are found (they do not move while running)."""
        if self._mounts is not None:
            return self._mounts
        try:
            found = parse_mounts(self.mounts_file.read_text(errors="replace"))
        except OSError:
            self.unreadable += 1
            return CgroupMounts(None, {})
        if found.v2_root or found.v1_roots:
            self._mounts = found
        return found

    def cgroup(self, pid: int) -> CgroupFigures | None:
        try:
            v2_path, v1_paths = parse_proc_cgroup(self._proc_text(pid, "cgroup"))
        except (FileNotFoundError, ProcessLookupError):
            self.vanished += 1
            return None
        except OSError:
            self.unreadable += 1
            return None
        paths = [v2_path, *v1_paths.values()]
        if any(p is not None and ".." in p.split("/") for p in paths):
            # Outside wasmtop's cgroup namespace (a daemon in a cgroup namespace of its own sees
            # other pods' cgroups as /../..): no path under the mount names it. Counted, so
            # the missing figures say why.
            self.outside_namespace += 1
            return None
        mounts = self._cgroup_mounts()
        v2 = _join(mounts.v2_root, v2_path)
        v1_memory = _join(mounts.v1_roots.get("memory"), v1_paths.get("memory"))
        v1_cpu = _join(mounts.v1_roots.get("cpu"), v1_paths.get("cpu"))
        memo = self._memo
        if memo is not None and (got := memo.get((v2, v1_memory, v1_cpu))) is not None:
            return got
        figures = self._cgroup_figures(v2, v1_memory, v1_cpu)
        if memo is not None:
            memo[(v2, v1_memory, v1_cpu)] = figures
        return figures

    def _cgroup_figures(
        self, v2: Path | None, v1_memory: Path | None, v1_cpu: Path | None
    ) -> CgroupFigures:

        current = self._v2_or_v1(
            _file(v2, "memory.current"), _int, _file(v1_memory, "memory.usage_in_bytes"), _int
        )
        limit = self._v2_or_v1(
            _file(v2, "memory.max"), _v2_limit, _file(v1_memory, "memory.limit_in_bytes"), _v1_limit
        )
        cpu_stat, v1_units = self._cpu_stat(v2, v1_cpu)
        throttled = cpu_stat.get("throttled_time" if v1_units else "throttled_usec")
        return CgroupFigures(
            memory_current_bytes=current,
            memory_limit_bytes=limit,
            nr_periods=cpu_stat.get("nr_periods"),
            nr_throttled=cpu_stat.get("nr_throttled"),
            throttled_us=throttled // 1000 if v1_units and throttled is not None else throttled,
        )

    def _v2_or_v1(
        self,
        v2_file: Path | None,
        v2_parse: Callable[[str], int | None],
        v1_file: Path | None,
        v1_parse: Callable[[str], int | None],
    ) -> int | None:
        # On hybrid hosts the v2 file is absent (no controller there): fall back to v1.
        if v2_file is not None and os.path.exists(v2_file):
            return self._cgroup_value(v2_file, v2_parse)
        return self._cgroup_value(v1_file, v1_parse) if v1_file is not None else None

    def _cpu_stat(self, v2: Path | None, v1: Path | None) -> tuple[dict[str, int], bool]:
        """cpu.stat as a dict and whether it is v1's (throttled_time in ns)."""
        # v2 has a cpu.stat (usage only) even without the cpu controller; it only has the
        # throttling figures when the controller is there.
        if v2 is not None:
            stat = self._cgroup_value(v2 / "cpu.stat", _key_values)
            if stat and "nr_periods" in stat:
                return stat, False
        if v1 is not None:
            stat = self._cgroup_value(v1 / "cpu.stat", _key_values)
            if stat:
                return stat, True
        return {}, False

    def _cgroup_value(self, path: Path, parse: Callable[[str], _T]) -> _T | None:
        """A parsed cgroup file; None when missing (a controller not enabled there)."""
        try:
            return parse(read_text(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, IndexError):
            self.unreadable += 1
            return None


def _join(root: Path | None, cgroup_path: str | None) -> Path | None:
    if root is None or cgroup_path is None:
        return None
    return root / cgroup_path.lstrip("/")


def _file(directory: Path | None, name: str) -> Path | None:
    return directory / name if directory is not None else None


def growth_slope_per_min(samples: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (t_seconds, value) pairs, per minute; None with < 2 samples or
    zero time spread."""
    if len(samples) < 2:
        return None
    # Centred on the means: monotonic clock values are large, and raw sums of squares of them
    # would lose the precision the slope needs.
    t_mean = sum(t for t, _ in samples) / len(samples)
    v_mean = sum(v for _, v in samples) / len(samples)
    spread = sum((t - t_mean) ** 2 for t, _ in samples)
    if spread == 0:
        return None
    covariance = sum((t - t_mean) * (v - v_mean) for t, v in samples)
    return covariance / spread * 60.0


DEFAULT_STALE_S = 300.0


@dataclass
class _Track:
    """What the tracker remembers about one workload between samples."""

    rss: deque[tuple[float, int]] = field(default_factory=deque)  # (t, rss_bytes)
    # A sample has left the growth window: the samples reach back to its start, and the slope
    # covers the whole window (its first sample is within one sampling interval of the start).
    full: bool = False
    cpu_ticks: dict[tuple[int, int], int] = field(default_factory=dict)  # (pid, start) -> ticks
    last_t: float | None = None
    throttled_us_base: int | None = None
    nr_throttled_base: int | None = None
    figures: ResourceFigures | None = None
    process_start: int | None = None  # a process workload's (pid:N) process, by its start


def _increase(current: int | None, base: int | None) -> tuple[int | None, int | None]:
    """(increase, new base) of a cumulative counter; a counter that went down belongs to a new
    cgroup, so it restarts from there."""
    if current is None:
        return None, base
    if base is None or current < base:
        return 0, current
    return current - base, base


class ResourceTracker:
    """Samples workloads over time and turns the samples into ResourceFigures."""

    def __init__(
        self,
        reader: ResourceReader,
        *,
        growth_window_s: float = DEFAULT_GROWTH_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        stale_s: float = DEFAULT_STALE_S,
    ) -> None:
        """``stale_s``: a workload with no live process for this long is forgotten (its last
        figures are shown until then), so churned pods do not pile up."""
        self.reader = reader
        self.growth_window_s = growth_window_s
        self.clock = clock
        self.stale_s = stale_s
        self.evicted = 0  # workloads forgotten after stale_s without a live process
        self.pid_reused = 0  # process workloads (pid:N) whose pid came to name another process
        self._tracks: dict[str, _Track] = {}

    def sample(self, workloads: Mapping[str, Iterable[int]]) -> None:
        """One sample per workload (key -> its pids): RSS summed over its live processes, CPU
        ticks summed, cgroup figures of its lowest live pid. Samples older than the growth
        window are dropped (memory bounded: at most one sample per call per workload inside
        the window)."""
        now = self.clock()
        with self.reader.one_sample():
            for key, pids in workloads.items():
                live = [s for s in map(self.reader.process, sorted(set(pids))) if s is not None]
                if not live:
                    continue  # all gone: keep the last figures rather than report a zero RSS
                track = self._tracks.get(key)
                # A process workload's key is its pid: another process with that pid is another
                # workload, whose figures (its RSS slope, its throttling baselines) start over.
                start = live[0].start_ticks if key.startswith("pid:") else None
                if track is None or track.process_start not in (None, start):
                    if track is not None:
                        self.pid_reused += 1
                    track = self._tracks[key] = _Track()
                track.process_start = start
                track.figures = self._figures(track, live, now)
        stale = [
            k
            for k, t in self._tracks.items()
            if t.last_t is not None and t.last_t < now - self.stale_s
        ]
        for key in stale:
            del self._tracks[key]
        self.evicted += len(stale)

    def _figures(self, track: _Track, live: list[ProcessSample], now: float) -> ResourceFigures:
        rss = sum(s.rss_bytes for s in live)
        if track.rss and now - track.rss[-1][0] > MAX_SAMPLE_GAP_S:
            track.rss.clear()  # a gap: the slope starts over
            track.full = False
        track.rss.append((now, rss))
        while track.rss[0][0] < now - self.growth_window_s:
            track.rss.popleft()
            track.full = True
        span = self.growth_window_s if track.full else track.rss[-1][0] - track.rss[0][0]
        slope = growth_slope_per_min(track.rss) if span >= MIN_GROWTH_SPAN_S else None

        cpu_percent = self._cpu_percent(track, live, now)
        cgroup = self._cgroup(live)
        throttled_us, track.throttled_us_base = _increase(
            cgroup.throttled_us if cgroup else None, track.throttled_us_base
        )
        nr_throttled, track.nr_throttled_base = _increase(
            cgroup.nr_throttled if cgroup else None, track.nr_throttled_base
        )
        return ResourceFigures(
            rss_bytes=rss,
            rss_growth_mb_per_min=slope / 1e6 if slope is not None else None,
            growth_window_s=span,
            cpu_percent=cpu_percent,
            memory_current_bytes=cgroup.memory_current_bytes if cgroup else None,
            memory_limit_bytes=cgroup.memory_limit_bytes if cgroup else None,
            throttled_us=throttled_us,
            nr_throttled=nr_throttled,
            growth_window_full_s=self.growth_window_s,
        )

    def _cpu_percent(self, track: _Track, live: list[ProcessSample], now: float) -> float | None:
        previous, previous_t = track.cpu_ticks, track.last_t
        # Only live incarnations are kept, so exited and reused pids do not accumulate.
        track.cpu_ticks = {(s.pid, s.start_ticks): s.cpu_ticks for s in live}
        track.last_t = now
        if previous_t is None or now <= previous_t:
            return None
        # A new incarnation (or a process new to the workload) has no baseline: its CPU time so
        # far was not necessarily spent in this interval, so it starts counting from here.
        used = sum(
            max(0, ticks - previous[incarnation])
            for incarnation, ticks in track.cpu_ticks.items()
            if incarnation in previous
        )
        return used / self.reader.clk_tck / (now - previous_t) * 100.0

    def _cgroup(self, live: list[ProcessSample]) -> CgroupFigures | None:
        # live is sorted by pid: the lowest one that still has a readable cgroup file.
        for sample in live:
            figures = self.reader.cgroup(sample.pid)
            if figures is not None:
                return figures
        return None

    def figures(self) -> dict[str, ResourceFigures]:
        """The latest figures per workload sampled at least once."""
        return {key: t.figures for key, t in self._tracks.items() if t.figures is not None}

    def forget(self, keys: Iterable[str]) -> None:
        for key in keys:
            self._tracks.pop(key, None)
