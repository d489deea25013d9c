#!/usr/bin/env python3
"""How fast wasmtop starts and stops and how small it stays, beside bcc's runqlat, in one run.

Each round runs, in rotating order:
- `runqlat-bpfcc 1 1`: time from spawn to its "Tracing" line (probes attached), peak RSS;
- `wasmtop snapshot --seconds 1` (every probe) with an empty program cache (`cold`: the
  compiler child compiles every probe) and with the cache it filled (`warm`): time from spawn
  to its "attached" line, wall time, the process's own peak RSS (VmHWM, read while it runs:
  the compiler child's memory is its own);
then once, the daemon with every probe (warm cache) beside the example Wasm edge service under
`hey` load: its RSS after --rss-seconds, and the time from SIGTERM to its exit (detaching
every probe included).

Usage: sudo .venv/bin/python bench/startup.py [--rounds 3] [--rss-seconds 60]
Targets: attached <= 0.5 s warm, <= 1.0x runqlat cold; steady RSS <= 100 MB and <= 0.5x
runqlat's peak; stop <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WASMTOP = str(Path(sys.executable).with_name("wasmtop"))
SERVICE = str(ROOT / "examples/wasm-edge-service/service.py")
TRACEPARENT = "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def descendants(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class Watch:
    """Spawn a command; note when a line containing ``marker`` appears on its stdout or
    stderr, the process's own peak RSS while it runs (VmHWM), and its exit."""

    def __init__(self, cmd: list[str], marker: str, env: dict[str, str] | None = None) -> None:
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.marker = marker
        self.marked: float | None = None
        self.hwm_kb = 0
        self.tree_kb = 0  # the most the process and its children held at once (VmRSS summed)
        self.lines: list[str] = []
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(stream,), daemon=True).start()
        threading.Thread(target=self._sample, daemon=True).start()

    def _read(self, stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            self.lines.append(line)
            if self.marked is None and self.marker in line:
                self.marked = time.monotonic() - self.t0

    def _sample(self) -> None:
        while self.proc.poll() is None:
            self.hwm_kb = max(self.hwm_kb, status_kb(self.proc.pid, "VmHWM"))
            tree = sum(status_kb(p, "VmRSS") for p in descendants(self.proc.pid))
            self.tree_kb = max(self.tree_kb, tree)
            time.sleep(0.02)

    def wait(self, timeout: float = 120) -> float:
        self.proc.wait(timeout)
        return time.monotonic() - self.t0


def runqlat() -> dict[str, float]:
    w = Watch(["runqlat-bpfcc", "1", "1"], "Tracing")
    wall = w.wait()
    return {"attached_s": w.marked or float("nan"), "wall_s": wall, "rss_mb": w.hwm_kb / 1024}


def snapshot(cache: Path) -> dict[str, float]:
    w = Watch([WASMTOP, "snapshot", "--seconds", "1"], "wasmtop: attached:",
              env={"WASMTOP_CACHE_DIR": str(cache)})  # fmt: skip
    wall = w.wait()
    if w.proc.returncode != 0:
        raise RuntimeError("".join(w.lines[-20:]))
    return {"attached_s": w.marked or float("nan"), "wall_s": wall, "rss_mb": w.hwm_kb / 1024,
            "tree_mb": w.tree_kb / 1024}  # fmt: skip


def daemon_under_load(cache: Path, seconds: float) -> dict[str, float]:
    workdir = Path(tempfile.mkdtemp(prefix="wasmtop-startup-"))
    config = workdir / "wasmtop.yaml"
    config.write_text(
        "metrics:\n  listen: 127.0.0.1:0\ngrpc:\n  enabled: false\n"
    )  # every probe: the defaults
    service = subprocess.Popen(
        ["taskset", "-c", "0", sys.executable, SERVICE, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    port = int(service.stdout.readline().split()[1])  # type: ignore[union-attr]
    d = Watch([WASMTOP, "daemon", "--config", str(config)], "probe lifecycle: attached",
              env={"WASMTOP_CACHE_DIR": str(cache)})  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while d.marked is None and time.monotonic() < deadline and d.proc.poll() is None:
            time.sleep(0.05)
        if d.marked is None:
            raise RuntimeError("daemon did not attach:\n" + "".join(d.lines[-20:]))
        load = subprocess.Popen(
            ["taskset", "-c", "1", "hey", "-z", f"{seconds:g}s", "-c", "8", "-H", TRACEPARENT,
             f"http://127.0.0.1:{port}/"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        out, _ = load.communicate()
        rss_mb = status_kb(d.proc.pid, "VmRSS") / 1024
        hwm_mb = status_kb(d.proc.pid, "VmHWM") / 1024
        rate = next((ln.split()[1] for ln in out.splitlines() if "Requests/sec" in ln), "?")
        t = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        d.proc.wait(30)
        stop_s = time.monotonic() - t
    finally:
        if d.proc.poll() is None:
            d.proc.kill()
        service.terminate()
        service.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "rss_mb": rss_mb,
        "hwm_mb": hwm_mb,
        "stop_s": stop_s,
        "requests_per_s": float(rate),
        "exit": d.proc.returncode,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rss-seconds", type=float, default=60.0)
    args = ap.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    cache = Path(tempfile.mkdtemp(prefix="wasmtop-startup-cache-"))
    results: dict[str, list[dict[str, float]]] = {"runqlat": [], "cold": [], "warm": []}
    order = list(results)
    try:
        for r in range(args.rounds):
            for name in order[r % 3 :] + order[: r % 3]:
                if name == "runqlat":
                    res = runqlat()
                elif name == "cold":
                    for entry in cache.glob("*"):
                        entry.unlink()
                    res = snapshot(cache)
                else:
                    if not list(cache.glob("*.bpfobj")):
                        snapshot(cache)  # fill it first
                    res = snapshot(cache)
                results[name].append(res)
                print(
                    f"round {r + 1} {name:8} attached {res['attached_s']:.3f} s  "
                    f"wall {res['wall_s']:.2f} s  peak RSS {res['rss_mb']:.0f} MB",
                    flush=True,
                )
        if not list(cache.glob("*.bpfobj")):
            snapshot(cache)
        daemon = daemon_under_load(cache, args.rss_seconds) if args.rss_seconds > 0 else None
    finally:
        shutil.rmtree(cache, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"\nmedians of {args.rounds} rounds (load average after: {os.getloadavg()[0]:.2f})")
    base = med("runqlat", "attached_s")
    for name in results:
        print(f"  {name:8} attached {med(name, 'attached_s'):.3f} s "
              f"({med(name, 'attached_s') / base:.2f}x runqlat)  wall {med(name, 'wall_s'):.2f} s  "
              f"peak RSS {med(name, 'rss_mb'):.0f} MB")  # fmt: skip
    print(f"  cold start, wasmtop and its compiler children together: at most "
          f"{max(r['tree_mb'] for r in results['cold']):.0f} MB")  # fmt: skip
    if daemon:
        peak = med("runqlat", "rss_mb")
        print(f"  daemon, every probe, {args.rss_seconds:g} s of edge-service load "
              f"({daemon['requests_per_s']:.0f} req/s): RSS {daemon['rss_mb']:.0f} MB "
              f"(VmHWM {daemon['hwm_mb']:.0f} MB) "
              f"({daemon['rss_mb'] / peak:.2f}x runqlat's peak); SIGTERM to exit "
              f"{daemon['stop_s']:.3f} s (exit {daemon['exit']:.0f})")  # fmt: skip
    print("  targets: warm attached <= 0.5 s; cold <= 1.0x runqlat; daemon RSS <= 100 MB and "
          "<= 0.5x runqlat's peak; stop <= 0.5 s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
