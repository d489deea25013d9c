"""Cold starts and WebAssembly compile/instantiate figures per workload, from the lifecycle
probe's readings: cold starts are kept (bounded) per workload; call counters are cumulative in
the kernel and turned into per-window figures here."""

from __future__ import annotations

from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterable

from ..probes.records import ColdStartRecord, LifecycleReading, WasmCalls
from .model import CallFigures, ColdStarts
from .quantiles import bucket_bounds, exact_quantile, histogram_quantile

MAX_COLD_STARTS = 1000  # per workload and kind
MAX_COLD_WORKLOADS = 10_000  # (workload, kind) books kept


def cold_starts(
    values_ns: Iterable[int], total: int | None = None, window_ns: Iterable[int] = ()
) -> ColdStarts | None:
    values = list(values_ns)
    if not values:
        return None
    ms = [v / 1e6 for v in values]
    return ColdStarts(
        count=len(ms),
        last_ms=ms[-1],
        p50_ms=exact_quantile(ms, 0.50),
        p99_ms=exact_quantile(ms, 0.99),
        max_ms=max(ms),
        total=len(ms) if total is None else total,
        window_ms=tuple(v / 1e6 for v in window_ns),
    )


def call_figures(count: int, total_ns: int, hist: dict[int, int], max_ns: int) -> CallFigures:
    def q(p: float) -> float | None:
        if not hist:
            return None
        return histogram_quantile(hist, p, max_ns or None) / 1e6

    return CallFigures(
        count=count,
        total_ms=total_ns / 1e6,
        mean_ms=total_ns / count / 1e6 if count else None,
        p50_ms=q(0.50),
        p99_ms=q(0.99),
        max_ms=max_ns / 1e6 if max_ns else None,
    )


class LifecycleAccounting:
    def __init__(
        self, max_cold_starts: int = MAX_COLD_STARTS, max_workloads: int = MAX_COLD_WORKLOADS
    ) -> None:
        """Cold starts of at most ``max_workloads`` (workload, kind) books; the one that went
        longest without a cold start is forgotten first (counted in ``evicted``)."""
        self.max_cold_starts = max_cold_starts
        self.max_workloads = max_workloads
        self.evicted = 0
        self.unattributed = 0  # cold starts of processes gone before they were identified
        # (workload, kind) -> ns; in order of their latest cold start, oldest first
        self._cold: OrderedDict[tuple[str, str], deque[int]] = OrderedDict()
        self._total: dict[tuple[str, str], int] = defaultdict(int)
        self._window: dict[tuple[str, str], list[int]] = defaultdict(list)  # since end_window
        self._prev: dict[tuple[int, str], WasmCalls] = {}

    def add_cold_starts(
        self, records: Iterable[ColdStartRecord], workload_of: Callable[[int], str | None]
    ) -> None:
        for r in records:
            key = workload_of(r.tgid)
            if key is None:
                self.unattributed += 1
                continue
            book = (key, r.kind)
            q = self._cold.setdefault(book, deque(maxlen=self.max_cold_starts))
            self._cold.move_to_end(book)
            q.append(r.cold_start_ns)
            self._total[book] += 1
            self._window[book].append(r.cold_start_ns)
            while len(self._cold) > self.max_workloads:
                old, _ = self._cold.popitem(last=False)
                self._total.pop(old, None)
                self._window.pop(old, None)
                self.evicted += 1

    def cold(self, workload: str) -> tuple[ColdStarts | None, ColdStarts | None]:
        """(exec -> first listen, exec -> first accept) of the workload's processes."""
        return self._cold_of(workload, "listen"), self._cold_of(workload, "accept")

    def _cold_of(self, workload: str, kind: str) -> ColdStarts | None:
        key = (workload, kind)
        return cold_starts(self._cold.get(key, ()), self._total.get(key), self._window.get(key, ()))

    def end_window(self) -> None:
        """The Snapshot is built: later cold starts belong to the next window."""
        self._window.clear()

    def callers(self) -> set[int]:
        """Processes with WebAssembly call figures in the latest reading."""
        return {tgid for tgid, _ in self._prev}

    def forget_callers(self, tgids: set[int]) -> None:
        """Processes whose kernel entries were deleted: an entry made again starts from zero."""
        self._prev = {k: v for k, v in self._prev.items() if k[0] not in tgids}

    def wasm_window(
        self, reading: LifecycleReading, workload_of: Callable[[int], str | None]
    ) -> dict[str, dict[str, CallFigures]]:
        """Per workload and kind: the calls made since the previous reading."""
        acc: dict[tuple[str, str], list] = defaultdict(lambda: [0, 0, defaultdict(int), 0])
        for (tgid, kind), cur in reading.wasm.items():
            prev = self._prev.get((tgid, kind))
            if prev is not None and cur.count < prev.count:
                prev = None  # the entry was recreated (pid reused): all of it is new
            count = cur.count - (prev.count if prev else 0)
            if not count:
                continue
            key = workload_of(tgid)
            if key is None:
                continue
            a = acc[(key, kind)]
            a[0] += count
            a[1] += cur.total_ns - (prev.total_ns if prev else 0)
            for bucket, n in cur.hist.items():
                diff = n - (prev.hist.get(bucket, 0) if prev else 0)
                if diff > 0:
                    a[2][bucket] += diff
            a[3] = max(a[3], cur.max_ns)
        self._prev = dict(reading.wasm)
        out: dict[str, dict[str, CallFigures]] = defaultdict(dict)
        for (key, kind), (count, total, hist, max_ns) in acc.items():
            if not max_ns and hist:
                max_ns = bucket_bounds(max(hist))[1] - 1
            out[key][kind] = call_figures(count, total, dict(hist), max_ns)
        return dict(out)


def empty_calls() -> CallFigures:
    return call_figures(0, 0, {}, 0)
