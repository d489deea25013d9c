"""Synthetic Snapshots with N workloads, every figure filled: for exporter benchmarks."""

from __future__ import annotations

import random

from wasmtop.collector.model import (
    CallFigures,
    DelayQuantiles,
    HistogramBucket,
    LatencyQuantiles,
    NetFigures,
    RequestFigures,
    RuntimeMetrics,
    SchedFigures,
    Snapshot,
    WasmFigures,
    Workload,
)
from wasmtop.collector.workloads import Pod


def snapshot(n: int, seed: int = 1) -> Snapshot:
    rng = random.Random(seed)
    workloads = []
    for i in range(n):
        hist = tuple(
            HistogramBucket(low_us=2.0**k, high_us=2.0 ** (k + 1), count=rng.randrange(50))
            for k in range(4, 18)
        )
        sched = SchedFigures(
            switches=rng.randrange(1, 10_000), involuntary=rng.randrange(1000),
            migrations=rng.randrange(500), migrations_per_s=1.0, switches_per_s=10.0,
            involuntary_per_s=1.0, affinity_stability=rng.random(), cpu_skew_ratio=rng.random(),
            allowed_cpus=(0, 1), cpu_time_ns_by_cpu={"0": rng.randrange(10**9), "1": 5},
            preempt_delay_us=DelayQuantiles(10.0, 900.0, 2000.0),
            preemptions=sum(b.count for b in hist),
            preempt_delay_total_us=12345.0, preemptions_over_threshold=rng.randrange(3),
            preempt_delay_hist=hist, migration_matrix=(),
        )  # fmt: skip
        net = NetFigures(
            connections=3, eligible_connections=2, bypass_connections=1, bypass_msgs=10,
            bypass_bytes=rng.randrange(10**6), stack_bytes=rng.randrange(10**6),
            eligible_stack_bytes=0, passed_msgs=0, failed_msgs=0, fallbacks={},
            bypass_ratio=0.5, srtt_us_max=30,
        )  # fmt: skip
        req = RequestFigures(
            count=100, window_s=60.0, latency_ms=LatencyQuantiles(1.0, 2.0, 5.0, 9.0, 12.0),
            complete=True, evicted=0, by_status={"200": 100}, by_route={"GET /": 100},
            ended=10, ended_duration_sum_ms=25.0,
            ended_buckets=(0, 1, 3, 6, 8, 10, 10, 10, 10, 10, 10, 10, 10, 10, 10),
        )  # fmt: skip
        calls = CallFigures(count=10, total_ms=0.05, mean_ms=0.005, p50_ms=0.004, p99_ms=0.01,
                            max_ms=0.02)  # fmt: skip
        rt = RuntimeMetrics(
            rss_bytes=rng.randrange(10**9), rss_growth_mb_per_min=rng.random(),
            growth_window_s=300.0, cpu_percent=12.5, memory_current_bytes=10**8,
            memory_limit_bytes=2 * 10**8, throttled_us=rng.randrange(10**6), nr_throttled=3,
            cold_start_ms=4.2, cold_start=None, first_accept_ms=None, first_accept=None,
            wasm=WasmFigures(library="/lib/libwasmtime.so", status="ok", reason=None,
                             compile=calls, instantiate=calls),
        )  # fmt: skip
        pod = Pod(namespace=f"ns{i % 20}", name=f"pod-{i}", uid=f"uid-{i}", container="app",
                  container_id=f"{i:064x}")  # fmt: skip
        workloads.append(
            Workload(
                key=f"pod:ns{i % 20}/pod-{i}/app",
                kind="wasm",
                runtime="wasmtime",
                comm="wasmtime",
                pids=(1000 + i,),
                cgroup=None,
                pod=pod,
                sched=sched,
                net=net,
                requests=req,
                runtime_metrics=rt,
            )  # fmt: skip
        )
    probes = {
        name: {"status": "ok", "events": 10, "lost": 0, "malformed": 0, "run_time_ns": 5000}
        for name in ("sched", "sockbypass", "tracectx", "lifecycle")
    }
    return Snapshot(host="bench", kernel="6.18", cpus=2, window_s=1.0, probes=probes,
                    workloads=tuple(workloads))  # fmt: skip
