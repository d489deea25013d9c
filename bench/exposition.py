#!/usr/bin/env python3
"""/metrics render time for synthetic Snapshots of 100, 1,000 and 10,000 workloads, and the
daemon's resident memory with every probe on next to runqlat-bpfcc's, measured in one run.

Render: a SeriesBook holds two folded Snapshots (so counters and gauges are all present) with the
series limit raised to the workload count; the time is that of the daemon's /metrics path
(families() + encode(), garbage collector paused as in wasmtop.web.MetricsCache), best of
--repeat. Memory: `wasmtop daemon` (default config: every probe) and `runqlat-bpfcc` each
run alone for --seconds on this host; VmRSS (and VmHWM) read from /proc at the end.

Usage: sudo .venv/bin/python bench/exposition.py [--repeat 5] [--seconds 20]
Targets (issue 6): 10k series in <= 100 ms; linear growth: time(10k workloads) /
time(1k workloads) <= 12.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from synthetic import snapshot
from wasmtop.exporters.exposition import encode
from wasmtop.exporters.series import SeriesBook
from wasmtop.web import GZIP_LEVEL

WASMTOP = str(Path(sys.executable).with_name("wasmtop"))


def render_ms(n: int, repeat: int) -> tuple[float, int, bytes]:
    book = SeriesBook(max_workloads=n)
    book.add(snapshot(n, seed=1))
    book.add(snapshot(n, seed=2))
    best, lines, text = float("inf"), 0, b""
    for _ in range(repeat):
        gc.disable()
        t0 = time.perf_counter()
        text = encode(book.families())
        best = min(best, time.perf_counter() - t0)
        gc.enable()
        lines = sum(1 for line in text.splitlines() if not line.startswith(b"#"))
    return best * 1e3, lines, text


def gzip_ms(text: bytes, level: int, repeat: int) -> tuple[float, int]:
    """Best time to compress ``text`` at ``level`` (what /metrics does once per Snapshot for a
    scraper that accepts gzip), and the compressed size."""
    best, size = float("inf"), 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        size = len(gzip.compress(text, level, mtime=0))
        best = min(best, time.perf_counter() - t0)
    return best * 1e3, size


def rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.split()[0] if value.split() else "0"
    return int(fields.get("VmRSS", 0)), int(fields.get("VmHWM", 0))


def measure(cmd: list[str], seconds: float, ready: str | None) -> tuple[int, int]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if ready:
            while ready not in (line := proc.stderr.readline()):
                if not line:
                    raise RuntimeError(f"{cmd[0]} exited before it was ready")
        time.sleep(seconds)
        return rss_kib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=20.0, help="run time before reading RSS")
    ap.add_argument("--no-memory", action="store_true", help="render times only")
    args = ap.parse_args()

    print("render /metrics (families + encode), best of", args.repeat)
    times = {}
    texts = {}
    for n in (100, 1_000, 10_000):
        ms, series, texts[n] = render_ms(n, args.repeat)
        times[n] = (ms, series)
        print(f"  {n:6d} workloads  {series:8d} series  {ms:8.1f} ms  "
              f"{ms / series * 1e4:6.1f} ms per 10k series")  # fmt: skip
    print(f"gzip of the text (the daemon's: level {GZIP_LEVEL}), best of", args.repeat)
    for n in (1_000, 10_000):
        for level in (1, 6):
            ms, size = gzip_ms(texts[n], level, args.repeat)
            print(f"  {n:6d} workloads  level {level}  {len(texts[n]) / 1e6:6.2f} MB -> "
                  f"{size / 1e6:5.2f} MB ({len(texts[n]) / size:4.1f}x)  {ms:7.1f} ms")  # fmt: skip
    ratio = times[10_000][0] / times[1_000][0]
    per_10k = times[10_000][0] / times[10_000][1] * 1e4
    print(f"  growth 10k/1k workloads: {ratio:.2f}x (target <= 12)")
    print(f"  per 10k series at 10k workloads: {per_10k:.1f} ms (target <= 100)")
    if args.no_memory:
        return 0
    if os.geteuid() != 0 or not shutil.which("runqlat-bpfcc"):
        print("memory: needs root and runqlat-bpfcc (make setup)", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "wasmtop.yaml"
        config.write_text("metrics:\n  listen: 127.0.0.1:0\n")
        ours = measure([WASMTOP, "daemon", "--config", str(config)], args.seconds, "attached:")
    theirs = measure(["runqlat-bpfcc", "1"], args.seconds, None)
    print(f"memory after {args.seconds:g} s (VmRSS / VmHWM)")
    print(f"  wasmtop daemon, every probe  {ours[0] / 1024:7.1f} MiB / {ours[1] / 1024:7.1f} MiB")
    print(
        f"  runqlat-bpfcc                {theirs[0] / 1024:7.1f} MiB / {theirs[1] / 1024:7.1f} MiB"
    )
    print(f"  ratio {ours[0] / theirs[0]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
