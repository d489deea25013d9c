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
    WaitedBehind,
    WasmFigures,
    Workload,
)
from wasmtop.collector.workloads import Pod


def _key(i: int) -> str:
    return f"pod:ns{i % 20}/pod-{i}/app"


def _waited_behind(rng: random.Random, i: int, n: int, total_us: float) -> tuple[WaitedBehind, ...]:
    """A run-queue wait split as the collector lists it: a few culprit workloads (the top ones,
    largest first), then idle, other and unattributed, the parts adding up to the total."""
    culprits = [_key(j) for j in rng.sample(range(n), min(n, 4)) if j != i][:3]
    weights = sorted((rng.random() + 0.1 for _ in culprits), reverse=True)
    weights += [0.2, 0.1, 0.05]  # idle, other, unattributed
    whole = sum(weights)
    parts = [w / whole for w in weights]
    out = [
        WaitedBehind("workload", key, "wasmtime", total_us * share / 1e3, share)
        for key, share in zip(culprits, parts)
    ]
    for kind, share in zip(("idle", "other", "unattributed"), parts[len(culprits) :]):
        out.append(WaitedBehind(kind, None, None, total_us * share / 1e3, share))
    return tuple(out)


def snapshot(n: int, seed: int = 1) -> Snapshot:
    rng = random.Random(seed)
    # The wake-up figures draw from a generator of their own: the others stay what they were.
    wake_rng = random.Random(seed * 7919 + 1)
    workloads = []
    for i in range(n):
        hist = tuple(
            HistogramBucket(low_us=2.0**k, high_us=2.0 ** (k + 1), count=rng.randrange(50))
            for k in range(4, 18)
        )
        wake_hist = tuple(
            HistogramBucket(low_us=2.0**k, high_us=2.0 ** (k + 1), count=wake_rng.randrange(200))
            for k in range(2, 16)
        )
        wake_total_us = sum(b.count * (b.low_us + b.high_us) / 2 for b in wake_hist)
        runq_us = 12345.0 + wake_total_us  # preemption + wake-up delay
        sched = SchedFigures(
            switches=rng.randrange(1, 10_000), involuntary=rng.randrange(1000),
            migrations=rng.randrange(500), migrations_per_s=1.0, switches_per_s=10.0,
            involuntary_per_s=1.0, affinity_stability=rng.random(), cpu_skew_ratio=rng.random(),
            allowed_cpus=(0, 1), cpu_time_ns_by_cpu={"0": rng.randrange(10**9), "1": 5},
            preempt_delay_us=DelayQuantiles(10.0, 900.0, 2000.0),
            preemptions=sum(b.count for b in hist),
            preempt_delay_total_us=12345.0, preemptions_over_threshold=rng.randrange(3),
            preempt_delay_hist=hist, migration_matrix=(),
            wakeups=sum(b.count for b in wake_hist),
            wakeup_delay_us=DelayQuantiles(6.0, 20_000.0, 50_000.0),
            wakeup_delay_total_us=wake_total_us, wakeup_delay_hist=wake_hist,
            wakeups_over_threshold=wake_rng.randrange(3), runq_delay_total_us=runq_us,
            waited_behind=_waited_behind(wake_rng, i, n, runq_us),
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
                key=_key(i),
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
