#!/usr/bin/env python3
"""Trace-context probe overhead, measured side by side in one run.

wrk drives a local threaded HTTP/1.1 server (tests/http_server.py, keep-alive, every request
with a traceparent header) with two handlers: an empty one (GET /item, the probe's worst case:
the most requests per second) and one that burns 1 ms of CPU (GET /burn?ms=1, closer to an edge
handler). Each in three configurations, in rotating order each round:

  plain      no wasmtop
  sched      wasmtop snapshot --no-trace (the scheduler probe alone)
  tracectx   wasmtop snapshot --trace-pid SERVER (scheduler + trace-context probes)
  runqlat    (with --runqlat) bcc's runqlat-bpfcc and no wasmtop: what a minimal run-queue
             latency tool costs this load on this host, the reference for the other ratios

Prints requests/s per configuration (medians over rounds) with the ratios tracectx/plain and
tracectx/sched (the probe's own cost), the share of wrk's requests wasmtop turned into traces,
wasmtop's own CPU, and the server CPU's busy share from just before wrk starts to just after it
ends (benchlib.busy_percent: it moves much less with the host's speed than requests/s; below
plain's, the server's CPU sat idle more, waiting for wrk); with --probe-stats also
the kernel ns per run of the trace-context programs (from BPF_ENABLE_STATS, as wasmtop reports
them; the statistics cost every program run two clock reads, so the ratios are then not the
shipped configuration's).

Usage: sudo .venv/bin/python bench/tracectx_overhead.py [--rounds 5] [--seconds 5]
                                                       [--handler item|burn ...] [--probe-stats]
                                                       [--runqlat]
Targets: requests/s with the probe >= 0.97x without, wasmtop at most 5 % of a CPU, nothing lost
(the empty handler, the probe's worst case).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import attached_line, busy_percent, cpu_times, machine, paired_ratio, spread
from sched_overhead import Tool, cpu_ticks

ROOT = Path(__file__).resolve().parents[1]
WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
SERVER = str(ROOT / "tests/http_server.py")
TRACEPARENT = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CONFIGS = ("plain", "sched", "tracectx")
HANDLERS = {"item": "/item", "burn": "/burn?ms=1"}
SERVER_CPU, WRK_CPU = 0, 1
WASMTOP_CPU: int | None = None  # --wasmtop-cpu: where wasmtop's own threads may run
PROBE_STATS = False  # --probe-stats: BPF_ENABLE_STATS on (not the shipped configuration)


def wrk(port: int, seconds: float, conns: int, path: str) -> int:
    """Requests wrk completed (it prints "N requests in Ts")."""
    out = subprocess.run(
        ["taskset", "-c", str(WRK_CPU), "wrk", "-t1", f"-c{conns}", f"-d{seconds:g}s",
         "-H", TRACEPARENT, f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return int(m.group(1))


def one_round(config: str, seconds: float, conns: int, path: str) -> dict[str, float]:
    reference = Tool("runqlat") if config == "runqlat" else None
    try:
        return wasmtop_round(config, seconds, conns, path)
    finally:
        if reference is not None:
            reference.stop()


def wasmtop_round(config: str, seconds: float, conns: int, path: str) -> dict[str, float]:
    server = subprocess.Popen(
        ["taskset", "-c", str(SERVER_CPU), sys.executable, SERVER],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    tool = None
    try:
        port = int(server.stdout.readline().split()[1])
        if config in ("sched", "tracectx"):
            flags = ["--no-trace"] if config == "sched" else ["--trace-pid", str(server.pid)]
            pin = ["taskset", "-c", str(WASMTOP_CPU)] if WASMTOP_CPU is not None else []
            tool = subprocess.Popen(
                [*pin, WASMTOP, "snapshot", *(["--probe-stats"] if PROBE_STATS else []),
                 "--bypass", "off", "--seconds", str(seconds + 2), *flags],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            line = attached_line(tool)
            if "sched ok" not in line:
                raise RuntimeError(f"wasmtop did not attach: {line.strip()}")
        wrk(port, 1, conns, path)  # warm-up
        ticks0 = cpu_ticks(tool.pid) if tool else 0
        server_cpu0 = cpu_times(SERVER_CPU)
        done = wrk(port, seconds, conns, path)
        result = {
            "rps": done / seconds,
            "server_busy": busy_percent(server_cpu0, cpu_times(SERVER_CPU)),
        }
        if tool is not None:
            result["cpu_pct"] = 100 * (cpu_ticks(tool.pid) - ticks0) / os.sysconf("SC_CLK_TCK")
            result["cpu_pct"] /= seconds
            out, err = tool.communicate(timeout=120)
            if tool.returncode != 0:
                raise RuntimeError(f"wasmtop failed: {err}")
            snap = json.loads(out)
            if config == "tracectx":
                probe = snap["probes"]["tracectx"]
                result["ns_per_run"] = probe["ns_per_run"] or 0.0
                result["lost"] = probe["lost"]
                result["raised"] = snap["counters"]["collector_priority_raised"]
                w = next(w for w in snap["workloads"] if server.pid in w["pids"])
                # Requests wasmtop saw (warm-up included) against what wrk completed.
                result["traced"] = w["requests"]["count"]
                result["wrk_total"] = done
    finally:
        server.kill()
        server.wait()
        if tool is not None and tool.poll() is None:
            tool.kill()
            tool.wait()
    return result


def measure(handler: str, args: argparse.Namespace) -> None:
    path = HANDLERS[handler]
    configs = CONFIGS + (("runqlat",) if args.runqlat else ())
    results: dict[str, list[dict[str, float]]] = {c: [] for c in configs}
    for r in range(args.rounds):
        k = r % len(configs)
        for config in configs[k:] + configs[:k]:
            res = one_round(config, args.seconds, args.connections, path)
            results[config].append(res)
            extra = "".join(f"  {k} {v:.1f}" for k, v in res.items() if k != "rps")
            print(f"GET {path} round {r + 1} {config:9s} {res['rps']:8.0f} req/s{extra}",
                  flush=True)  # fmt: skip
            time.sleep(0.5)

    def med(config: str, key: str) -> float:
        return statistics.median(x[key] for x in results[config])

    print(f"\nGET {path}: medians of {args.rounds} rounds, {args.connections} connections, "
          f"{args.seconds:g} s each")  # fmt: skip
    rps = {c: [x["rps"] for x in results[c]] for c in configs}
    for c in configs:
        line = f"  {c:9s} {med(c, 'rps'):8.0f} req/s ({med(c, 'rps') / med('plain', 'rps'):.3f}x; "
        line += f"rounds {spread(rps[c])})  server CPU busy {med(c, 'server_busy'):.1f} %"
        if c in ("sched", "tracectx"):
            line += f"  wasmtop CPU {med(c, 'cpu_pct'):.1f} %"
        print(line)
    print(f"  tracectx / sched (the probe's own cost): "
          f"{med('tracectx', 'rps') / med('sched', 'rps'):.3f}x")  # fmt: skip
    print(f"  tracectx / plain, round by round: {paired_ratio(rps['tracectx'], rps['plain'])}")
    if args.runqlat:
        for c in ("sched", "runqlat"):
            print(f"  {c} / plain, round by round: {paired_ratio(rps[c], rps['plain'])}")
    print(
        "  (the server CPU's busy share moves less with the host's speed than requests/s do; "
        "below plain's, that CPU sat idle more, waiting for wrk; it counts every task there)"
    )
    if PROBE_STATS:
        print(f"  kernel ns per trace-context program run: {med('tracectx', 'ns_per_run'):.0f}")
    seen = sum(x["traced"] for x in results["tracectx"])
    lost = sum(x["lost"] for x in results["tracectx"])
    raised = sum(x["raised"] for x in results["tracectx"])
    print(f"  collector stopped yielding to keep up: {raised:.0f} times")
    measured = sum(x["wrk_total"] for x in results["tracectx"])
    print(f"  requests traced: {seen} (wrk completed {measured} in the measured part, plus its "
          f"warm-up); events lost: {lost:.0f}")  # fmt: skip
    print("  targets: tracectx req/s >= 0.97x plain, wasmtop CPU <= 5 %, 0 lost\n", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0, help="load per measurement")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--wasmtop-cpu", type=int, help="pin wasmtop to this CPU (default: not "
                    "pinned; the server runs on CPU 0, wrk on CPU 1)")  # fmt: skip
    ap.add_argument(
        "--probe-stats",
        action="store_true",
        help="also report the trace-context programs' kernel ns per run "
        "(BPF_ENABLE_STATS adds two clock reads to every program run, ~1 %% of "
        "these requests: the ratios are then not the shipped configuration's)",
    )
    ap.add_argument("--runqlat", action="store_true",
                    help="also run each round with bcc's runqlat-bpfcc attached instead of "
                    "wasmtop: the reference for what any run-queue latency tool costs this "
                    "load on this host")  # fmt: skip
    ap.add_argument("--handler", choices=HANDLERS, action="append",
                    help="which handler(s) to load (default both)")  # fmt: skip
    args = ap.parse_args()
    print(machine(), flush=True)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    if not shutil.which("wrk"):
        print("needs wrk (make setup installs it)", file=sys.stderr)
        return 1
    if args.runqlat and not shutil.which("runqlat-bpfcc"):
        print("--runqlat needs runqlat-bpfcc (make setup installs it)", file=sys.stderr)
        return 1
    args.handler = args.handler or list(HANDLERS)
    global WASMTOP_CPU, PROBE_STATS
    WASMTOP_CPU, PROBE_STATS = args.wasmtop_cpu, args.probe_stats
    for handler in args.handler:
        measure(handler, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
