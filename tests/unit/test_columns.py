"""Model-to-row conversion: what the table shows for a workload."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

from wasmtop.collector.model import DelayQuantiles, LatencyQuantiles, RequestFigures, Workload
from wasmtop.columns import COLUMNS, workload_row

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder


def workload(requests: RequestFigures | None) -> Workload:
    return Workload(
        key="pid:7", kind="wasm", runtime="wasmtime", comm="edge", pids=(7,), cgroup=None,
        pod=None, sched=None, requests=requests,
    )  # fmt: skip


def test_requests_columns_show_count_and_p99_or_a_dash():
    figures = RequestFigures(
        count=42, window_s=60.0, latency_ms=LatencyQuantiles(1.0, 2.0, 3.456, 4.0, 5.0),
        complete=True, evicted=0, by_status={"200": 42}, by_route={"GET /": 42},
    )  # fmt: skip
    row = dict(zip((h for h, _ in COLUMNS), workload_row(workload(figures))))
    assert (row["REQS"], row["REQ p99 ms"]) == ("42", "3.46")
    assert row["KIND"] == "wasm/wasmtime" and row["WORKLOAD"] == "edge[7]"
    untraced = workload_row(workload(None))
    assert len(untraced) == len(COLUMNS) and untraced[-2:] == ("-", "-")


def test_a_pods_containers_are_named_apart_and_an_unnamed_pod_by_its_process():
    from dataclasses import replace

    from wasmtop.collector.workloads import Pod
    from wasmtop.columns import workload_name

    w = workload(None)
    pod = Pod("shop", "cart-7d9", "uid-1", "app", "c" * 64, "wasmtime")
    assert workload_name(replace(w, pod=pod)) == "shop/cart-7d9/app"
    assert workload_name(replace(w, pod=replace(pod, container=None))) == "shop/cart-7d9"
    nameless = replace(pod, namespace=None, name=None, container=None)  # API not heard yet
    assert workload_name(replace(w, pod=nameless)) == "edge[7]"


def test_wake_up_delay_and_run_queue_columns():
    sched = replace(
        snapshot(1).workloads[0].sched,
        wakeup_delay_us=DelayQuantiles(p50=800.0, p99=2950.5, max=4100.25),
        runq_delay_total_us=12_345.0,
    )
    row = dict(zip((h for h, _ in COLUMNS), workload_row(replace(workload(None), sched=sched))))
    wake = (row["WAKEUP p99 us"], row["WAKEUP max us"], row["RUNQ ms"])
    assert wake == ("2950.5", "4100.2", "12.35")
    assert len(set(h for h, _ in COLUMNS)) == len(COLUMNS)  # every header names one column
