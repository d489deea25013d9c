"""Lifecycle accounting without a kernel: decoder, cold starts, per-window call figures."""

from __future__ import annotations

import struct

import pytest

from wasmtop.collector.lifecycle import LifecycleAccounting
from wasmtop.collector.quantiles import bucket_of
from wasmtop.probes.decoders import DECODERS, DecodeError
from wasmtop.probes.records import ColdStartRecord, LifecycleReading, WasmCalls


def test_life_event_decoder():
    raw = struct.pack("<QQII16s", 1_000, 31_000_000, 42, 1, b"edge\0junk")
    assert DECODERS["life_event"](raw) == ColdStartRecord(42, "edge", "listen", 1_000, 31_000_000)
    assert DECODERS["life_event"](raw).cold_start_ns == 30_999_000


@pytest.mark.parametrize("kind, exec_ns, ts_ns", [(0, 1, 2), (3, 1, 2), (1, 5, 4)])
def test_life_event_decoder_refuses_impossible_records(kind, exec_ns, ts_ns):
    with pytest.raises(DecodeError):
        DECODERS["life_event"](struct.pack("<QQII16s", exec_ns, ts_ns, 1, kind, b"x"))


def test_cold_starts_are_kept_per_workload_and_kind_with_exact_quantiles():
    acc = LifecycleAccounting(max_cold_starts=3)
    recs = [ColdStartRecord(p, "x", "listen", 0, ms * 1_000_000) for p, ms in
            ((1, 10), (1, 20), (1, 30), (1, 40), (2, 5))]  # fmt: skip
    recs.append(ColdStartRecord(1, "x", "accept", 0, 50_000_000))
    acc.add_cold_starts(recs, lambda pid: {1: "a", 2: None}[pid])  # pid 2: not identified
    listen, accept = acc.cold("a")
    assert (listen.count, listen.last_ms, listen.max_ms) == (3, 40.0, 40.0)  # oldest dropped
    assert (listen.p50_ms, listen.p99_ms) == (30.0, 40.0)
    assert accept.count == 1 and accept.last_ms == 50.0
    assert acc.cold("b") == (None, None)
    assert acc.unattributed == 1  # pid 2's, counted, not kept under a guess


def calls(tgid, kind, values_ns):
    hist: dict[int, int] = {}
    for v in values_ns:
        hist[bucket_of(v)] = hist.get(bucket_of(v), 0) + 1
    return WasmCalls(tgid, kind, len(values_ns), sum(values_ns), max(values_ns), hist)


def test_call_figures_are_per_window_deltas_per_workload():
    acc = LifecycleAccounting()
    first = [5_000] * 10
    r1 = LifecycleReading(0, [], {(7, "instantiate"): calls(7, "instantiate", first)})
    w1 = acc.wasm_window(r1, lambda pid: "w")["w"]["instantiate"]
    assert (w1.count, w1.total_ms, w1.mean_ms) == (10, 0.05, 0.005)
    # Two more calls of 20 us: only they belong to the next window.
    r2 = LifecycleReading(
        0, [], {(7, "instantiate"): calls(7, "instantiate", first + [20_000] * 2)}
    )
    w2 = acc.wasm_window(r2, lambda pid: "w")["w"]["instantiate"]
    assert (w2.count, w2.total_ms) == (2, 0.04)
    assert w2.p50_ms == pytest.approx(0.02, rel=1 / 16) and w2.max_ms == 0.02
    # Nothing new: no figures; a recreated entry (pid reused) counts whole.
    assert acc.wasm_window(r2, lambda pid: "w") == {}
    r3 = LifecycleReading(0, [], {(7, "instantiate"): calls(7, "instantiate", [1_000])})
    assert acc.wasm_window(r3, lambda pid: "w")["w"]["instantiate"].count == 1


def test_cold_start_books_are_bounded_and_the_quietest_is_forgotten_first():
    acc = LifecycleAccounting(max_workloads=3)

    def cold(key: str) -> None:
        acc.add_cold_starts([ColdStartRecord(1, "x", "listen", 0, 5_000_000)], lambda _: key)

    for key in ("a", "b", "c", "a", "d"):  # "a" cold-starts again before "d" arrives
        cold(key)
    assert acc.evicted == 1
    assert acc.cold("b") == (None, None)  # the one that went longest without a cold start
    assert acc.cold("a")[0].total == 2 and acc.cold("d")[0].count == 1
