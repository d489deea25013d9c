#!/usr/bin/env python3
"""Scheduler-probe overhead, measured side by side in one run.

1. `perf bench sched pipe` throughput alone, with wasmtop's scheduler probe attached
   (`wasmtop snapshot --probes sched`: it hooks what runqlat hooks, sched_switch, sched_wakeup
   and sched_wakeup_new, plus task_newtask and sched_migrate_task), with bcc's `runqlat-bpfcc`
   attached, and with an empty program on the `sched_switch` tracepoint (the floor: what
   attaching anything there costs), in alternating rounds; prints ops/s and ratios.
2. Kernel ns per program run of each tool's BPF programs, per program (BPF_ENABLE_STATS held by
   this script, numbers from `bpftool prog show --json`), and per pipe op.
3. wasmtop's userspace CPU while `stress-ng --switch` runs at 20k to 200k switches/s (each
   switch of its pipe pairs is a wake-up).

Usage: .venv/bin/python bench/sched_overhead.py [--rounds 5] [--loops 100000]
Needs root. Targets: wasmtop's slowdown <= 1.0x runqlat's, pinned and unpinned; userspace CPU
flat across wake-up rates. The load average is printed beside the results: run it on a quiet
machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wasmtop.probes.features import enable_bpf_stats  # noqa: E402

WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
CLK_TCK = os.sysconf("SC_CLK_TCK")

# The floor: a program on the same tracepoint that does nothing. Whatever it costs, no
# sched_switch tool can cost less.
EMPTY_PROGRAM = """
import signal
from bcc import BPF
b = BPF(text=b"TRACEPOINT_PROBE(sched, sched_switch) { return 0; }")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
signal.sigwait({signal.SIGINT, signal.SIGTERM})
b.cleanup()
"""


def bpf_progs() -> list[dict]:
    out = subprocess.run(["bpftool", "prog", "show", "--json"], capture_output=True, text=True)
    return json.loads(out.stdout or "[]")


class Tool:
    """A tracing tool running in the background, and the BPF programs it loaded (those that
    appeared after it started: bpftool here does not list owning pids)."""

    def __init__(self, name: str) -> None:
        self.name = name
        before = {p["id"] for p in bpf_progs()}
        cmd = {
            "wasmtop": [WASMTOP, "snapshot", "--seconds", "3600", "--probes", "sched"],
            "runqlat": ["runqlat-bpfcc"],
            "empty": [sys.executable, "-c", EMPTY_PROGRAM],
        }[name]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while True:
            self.prog_ids = {p["id"] for p in bpf_progs()} - before
            if self.prog_ids:
                break
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"{name} did not attach")
            time.sleep(0.2)
        time.sleep(1.0)  # all programs attached, steady state

    def cost(self) -> dict[str, tuple[int, int]]:
        """Program name -> (runs, ns) so far."""
        out: dict[str, tuple[int, int]] = {}
        for p in bpf_progs():
            if p["id"] in self.prog_ids:
                runs, ns = out.get(p.get("name", "?"), (0, 0))
                out[p.get("name", "?")] = (runs + p.get("run_cnt", 0), ns + p.get("run_time_ns", 0))
        return out

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_tool(name: str) -> Tool | None:
    return None if name == "baseline" else Tool(name)


def stop_tool(tool: Tool | None) -> None:
    if tool is not None:
        tool.stop()


def pipe_ops_per_s(loops: int, pinned: bool) -> float:
    # Pinned: both ends on one CPU, every op is two direct context switches (the probe's worst
    # case). Unpinned: the plain benchmark, with cross-CPU wakeups and idle.
    pin = ["taskset", "-c", "0"] if pinned else []
    out = subprocess.run(
        [*pin, "perf", "bench", "sched", "pipe", "-l", str(loops)], capture_output=True, text=True
    ).stdout
    return float(re.search(r"([\d.]+) ops/sec", out).group(1))


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_ticks(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def context_switches() -> int:
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("ctxt "):
            return int(line.split()[1])
    raise RuntimeError("no ctxt in /proc/stat")


def userspace_cpu(rates: list[int], seconds: float) -> list[tuple[int, float, float]]:
    """(asked rate, measured switches/s, wasmtop CPU %) per rate."""
    tool = start_tool("wasmtop")
    pid = tool.proc.pid
    rows = []
    try:
        for rate in rates:
            # Each stress-ng switch worker is a pair of processes; the frequency is per worker.
            load = subprocess.Popen(
                [
                    "stress-ng",
                    "--switch",
                    "1",
                    "--switch-freq",
                    str(rate // 2),
                    "--timeout",
                    str(int(seconds) + 2),
                ],  # fmt: skip
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            t0, c0, s0 = time.monotonic(), cpu_ticks(pid), context_switches()
            time.sleep(seconds)
            t1, c1, s1 = time.monotonic(), cpu_ticks(pid), context_switches()
            load.wait()
            rows.append((rate, (s1 - s0) / (t1 - t0), 100 * (c1 - c0) / CLK_TCK / (t1 - t0)))
    finally:
        stop_tool(tool)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--loops", type=int, default=100_000, help="perf bench sched pipe -l")
    ap.add_argument("--cpu-seconds", type=float, default=5.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1

    configs = ["baseline", "wasmtop", "runqlat", "empty"]
    modes = {"unpinned": False, "pinned": True}
    ops = {(m, c): [] for m in modes for c in configs}
    for r in range(args.rounds):
        k = r % len(configs)
        order = configs[k:] + configs[:k]  # rotate so no tool always runs first
        for name in order:
            tool = start_tool(name)
            try:
                for mode, pinned in modes.items():
                    ops[mode, name].append(pipe_ops_per_s(args.loops, pinned))
            finally:
                stop_tool(tool)
            print(
                f"round {r + 1} {name:8s} "
                + "  ".join(f"{m} {ops[m, name][-1]:>8.0f} ops/s" for m in modes),
                flush=True,
            )

    # Kernel cost in a separate phase: BPF_ENABLE_STATS adds two clock reads per run, which
    # would inflate the throughput figures above.
    stats_fd = enable_bpf_stats()
    if stats_fd < 0:
        print("BPF_ENABLE_STATS unavailable: kernel ns per run will read 0", file=sys.stderr)
    cost: dict[str, dict[str, tuple[int, int]]] = {}
    for name in ("wasmtop", "runqlat"):
        tool = start_tool(name)
        try:
            before = tool.cost()
            pipe_ops_per_s(args.loops, pinned=True)
            after = tool.cost()
            cost[name] = {
                prog: (runs - before.get(prog, (0, 0))[0], ns - before.get(prog, (0, 0))[1])
                for prog, (runs, ns) in after.items()
            }
        finally:
            stop_tool(tool)

    print(f"\nload average before the results: {load_average()}")
    for mode in modes:
        med = {c: statistics.median(ops[mode, c]) for c in configs}
        print(f"\nperf bench sched pipe, {mode} (median of {args.rounds} rounds)")
        for c in configs:
            print(
                f"  {c:8s} {med[c]:>10.0f} ops/s   ratio to baseline {med[c] / med['baseline']:.3f}"
            )
        over_w = med["baseline"] / med["wasmtop"] - 1
        over_r = med["baseline"] / med["runqlat"] - 1
        print(f"  overhead: wasmtop {100 * over_w:.1f} %, runqlat {100 * over_r:.1f} %")
        if over_r > 0:
            print(f"  wasmtop slowdown / runqlat slowdown = {over_w / over_r:.2f}  (target <= 1.0)")
        ratio = med["wasmtop"] / med["baseline"]
        print(f"  wasmtop throughput ratio = {ratio:.3f}")
        floor = med["empty"] / med["baseline"]
        print(f"  empty sched_switch program ratio = {floor:.3f}  (no tracepoint tool can beat it)")

    print(f"\nkernel cost per program run (BPF_ENABLE_STATS), pinned pipe, {args.loops} ops")
    for name, progs in cost.items():
        for prog, (runs, ns) in sorted(progs.items()):
            per = ns / runs if runs else float("nan")
            print(f"  {name:8s} {prog:28s} {per:8.0f} ns/run over {runs} runs")
        total = sum(ns for _, ns in progs.values())
        print(f"  {name:8s} {'all programs':28s} {total / args.loops:8.0f} ns per pipe op")

    print("\nwasmtop userspace CPU vs. wake-up rate (stress-ng --switch: a wake-up per switch)")
    rows = userspace_cpu([20_000, 50_000, 100_000, 200_000], args.cpu_seconds)
    for asked, measured, cpu in rows:
        print(
            f"  asked {asked:>7d}/s  measured {measured:>9.0f} switches/s  wasmtop CPU {cpu:5.2f} %"
        )
    if stats_fd >= 0:
        os.close(stats_fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
