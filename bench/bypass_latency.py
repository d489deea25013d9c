#!/usr/bin/env python3
"""Socket-bypass latency, measured side by side in one run.

Request/response over loopback: a 1 KiB JSON-like request, a 1 KiB reply, one outstanding
request per connection, with 1 and with 32 concurrent connections. Each round runs plain TCP
(no wasmtop), wasmtop in observe mode and wasmtop in accelerate mode, in rotating order, each
against a fresh server process and fresh connections (established after wasmtop attached).
Prints p50/p99 round trip and requests/s per mode (medians over rounds) and the ratios, and
the p50 and requests/s ratios round by round (each round's two runs minutes apart at most).

Usage: sudo .venv/bin/python bench/bypass_latency.py [--rounds 3] [--seconds 3] [--conns 1 32]
                                                    [--configs plain observe accelerate ...]
(configurations: see CONFIGS; the partial ones attribute observe mode's cost)
Targets (issue 3): accelerate p50 <= 0.95x plain TCP; throughput never below plain TCP.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import attached_line, machine, paired_ratio
from sched_overhead import Tool

WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
SIZE = 1024
REQUEST = json.dumps({"trace": "0af7651916cd43dd8448eb211c80319c", "pad": "x" * 2000})[:SIZE]
REQUEST = REQUEST.encode().ljust(SIZE, b" ")

SERVER = f"""
import selectors, socket
SIZE = {SIZE}
REPLY = b"r" * SIZE
srv = socket.create_server(("127.0.0.1", 0), backlog=128)
srv.setblocking(False)
print(srv.getsockname()[1], flush=True)
sel = selectors.EpollSelector()
sel.register(srv, selectors.EVENT_READ, None)
pending = {{}}
while True:
    for key, _ in sel.select():
        if key.data is None:
            conn, _ = srv.accept()
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ, 1)
            pending[conn] = 0
            continue
        conn = key.fileobj
        try:
            data = conn.recv(65536)
            if data:
                pending[conn] += len(data)
                while pending[conn] >= SIZE:
                    pending[conn] -= SIZE
                    conn.setblocking(True)
                    conn.sendall(REPLY)
                    conn.setblocking(False)
                continue
        except BlockingIOError:
            continue
        except OSError:
            pass
        sel.unregister(conn)
        conn.close()
"""


def run_load(port: int, conns: int, seconds: float) -> tuple[list[int], float]:
    """Round-trip times (ns) of every request, and requests/s."""
    sel = selectors.EpollSelector()
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    rtts: list[int] = []
    state = {}
    start = time.perf_counter_ns()
    end = start + int(seconds * 1e9)
    for s in socks:
        s.sendall(REQUEST)
        state[s] = [time.perf_counter_ns(), 0]
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    done = 0
    while True:
        now = time.perf_counter_ns()
        if now >= end:
            break
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except BlockingIOError:
                continue
            st = state[s]
            st[1] += len(data)
            if st[1] >= SIZE:
                t = time.perf_counter_ns()
                rtts.append(t - st[0])
                done += 1
                st[1] -= SIZE
                st[0] = t
                s.setblocking(True)
                s.sendall(REQUEST)
                s.setblocking(False)
    elapsed = (time.perf_counter_ns() - start) / 1e9
    for s in socks:
        s.close()
    return rtts, done / elapsed


# What each configuration runs: `wasmtop snapshot` with these flags (every probe it loads by
# default, the scheduler probe always). The partial ones say where observe mode's cost is.
CONFIGS = {
    "plain": None,
    "observe": ["--bypass", "observe"],  # as shipped
    "accelerate": ["--bypass", "accelerate"],
    "sched": ["--bypass", "off", "--no-trace"],  # scheduler + lifecycle probes
    "observe-notrace": ["--bypass", "observe", "--no-trace"],  # + the sockops callbacks
    # bcc's runqlat-bpfcc and no wasmtop: what a minimal run-queue latency tool costs this load
    "runqlat": None,
    # each probe that observe mode loads, alone: whose the loss is
    "sched-only": ["--probes", "sched", "--bypass", "off"],
    "lifecycle-only": ["--probes", "lifecycle", "--bypass", "off"],  # sk_data_ready per arrival
    "sockops-only": ["--probes", "sockbypass", "--bypass", "observe"],  # RTT callback per ACK
}


def start_wasmtop(flags: list[str]) -> subprocess.Popen:
    proc = subprocess.Popen(
        [WASMTOP, "snapshot", "--seconds", "3600", *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = attached_line(proc)  # "wasmtop: attached: ..." once every probe is started
    mode = flags[flags.index("--bypass") + 1]
    if mode != "off" and f"sockbypass ok ({mode})" not in line:
        proc.kill()
        raise RuntimeError(f"wasmtop did not attach in {mode} mode: {line.strip()}")
    return proc


def one_round(mode: str, conns: int, seconds: float) -> tuple[float, float, float]:
    flags = CONFIGS[mode]
    reference = Tool("runqlat") if mode == "runqlat" else None
    tool = start_wasmtop(flags) if flags is not None else None
    server = None
    try:
        server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        run_load(port, conns, 0.5)  # warm-up
        rtts, rps = run_load(port, conns, seconds)
    finally:
        if server is not None:
            server.kill()
            server.wait()
        if tool is not None:
            tool.terminate()
            tool.wait(timeout=30)
        if reference is not None:
            reference.stop()
    q = statistics.quantiles(rtts, n=100)
    return q[49] / 1000, q[98] / 1000, rps  # p50 us, p99 us, req/s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=3.0, help="load per measurement")
    ap.add_argument(
        "--configs",
        nargs="+",
        choices=list(CONFIGS),
        default=["plain", "observe", "accelerate"],
        help="what to compare (plain is always included)",
    )
    ap.add_argument("--conns", type=int, nargs="+", default=[1, 32], help="connection counts")
    args = ap.parse_args()
    print(machine(), flush=True)
    if os.geteuid() != 0:
        print("needs root", file=sys.stderr)
        return 1
    modes = ["plain", *(c for c in args.configs if c != "plain")]
    print(f"load before: {os.getloadavg()[0]:.2f}", flush=True)
    results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    for conns in args.conns:
        for r in range(args.rounds):
            k = r % len(modes)
            for mode in modes[k:] + modes[:k]:
                res = one_round(mode, conns, args.seconds)
                results.setdefault((conns, mode), []).append(res)
                print(
                    f"conns {conns:2d} round {r + 1} {mode:15s} p50 {res[0]:7.1f} us  "
                    f"p99 {res[1]:7.1f} us  {res[2]:9.0f} req/s",
                    flush=True,
                )
    print(f"load after: {os.getloadavg()[0]:.2f}")
    for conns in args.conns:
        print(f"\n{conns} connection(s), 1 KiB request/response, median of {args.rounds} rounds")
        med = {
            m: tuple(statistics.median(x[i] for x in results[conns, m]) for i in range(3))
            for m in modes
        }
        for m in modes:
            p50, p99, rps = med[m]
            print(
                f"  {m:15s} p50 {p50:7.1f} us ({p50 / med['plain'][0]:.3f}x)  "
                f"p99 {p99:7.1f} us ({p99 / med['plain'][1]:.3f}x)  "
                f"{rps:9.0f} req/s ({rps / med['plain'][2]:.3f}x)"
            )
        for m in modes[1:]:
            ours, base = results[conns, m], results[conns, "plain"]
            by_round = [paired_ratio([x[i] for x in ours], [x[i] for x in base]) for i in (0, 2)]
            print(f"  {m:15s} round by round: p50 {by_round[0]}, req/s {by_round[1]}")
        print("  targets: accelerate p50 <= 0.95x plain, req/s >= 1.00x; "
              "observe req/s >= 0.97x, p50 <= 1.03x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
