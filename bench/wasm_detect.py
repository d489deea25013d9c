#!/usr/bin/env python3
"""What finding Wasm runtimes by content costs, and what the compile/instantiate/call uprobes
cost the hosts, side by side for the C API path and the Rust API path, in one run.

1. Detection (collector/wasmscan.py), per new process, for four kinds of process: a plain
   Python, Python with the wasmtime package (its C API library), an Extism host (wasmtime as a
   Rust crate in libextism_sys.so), and /bin/sleep. "first" is a process whose files nobody
   examined yet (a new Scanner each time: every file it maps is read); "known" a new process
   of a kind seen before (its files remembered, as on a node where the same images run).
2. The uprobes, measured in the host itself with the lifecycle probe attached to its runtime
   file and without, in alternating order:
   - C API (the wasmtime package): one `Instance(store, module, [])` per operation;
   - Rust API (Extism): one `plugin.call` per operation (Extism calls several guest
     functions each time: its kernel's and the plugin's), and one new plugin with its first
     call (two compiles, two instantiations).
   The extra time per operation divided by the probed calls per operation (the probe's own
   counts) is the cost of one probed call: an entry uprobe and a return uprobe.

Usage: sudo .venv/bin/python bench/wasm_detect.py [--rounds 3] [--ops 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

GUEST_WAT = """
(module
  (func (export "count") (result i32) i32.const 0))
"""

# Children: print their pid, wait for a line, then run the operations and print per-op seconds.
C_API = """
import json, sys, time, wasmtime
engine = wasmtime.Engine()
module = wasmtime.Module(engine, open(sys.argv[1], "rb").read())
print(__import__("os").getpid(), flush=True)
for line in sys.stdin:
    n = int(line)
    store = wasmtime.Store(engine)
    t0 = time.perf_counter()
    for i in range(n):
        if i % 100 == 0:
            store = wasmtime.Store(engine)
        wasmtime.Instance(store, module, [])
    print(json.dumps({"op_s": (time.perf_counter() - t0) / n}), flush=True)
"""

RUST_API = """
import json, os, sys, time, extism
module = open(sys.argv[1], "rb").read()
plugin = extism.Plugin(module, wasi=False)
plugin.call("count", b"")
print(os.getpid(), flush=True)
for line in sys.stdin:
    kind, n = line.split()
    n = int(n)
    t0 = time.perf_counter()
    if kind == "call":
        for _ in range(n):
            plugin.call("count", b"")
    else:
        for _ in range(n):
            p = extism.Plugin(module, wasi=False)
            p.call("count", b"")
    print(json.dumps({"op_s": (time.perf_counter() - t0) / n}), flush=True)
"""

SLEEPER = "import time, sys; print(1, flush=True); time.sleep(600)"


def spawn(code: str, *args: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", code, *args], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    proc.stdout.readline()  # loaded
    return proc


def detection(rounds: int) -> None:
    from wasmtop.collector.wasmscan import Scanner

    with tempfile.TemporaryDirectory() as tmp:
        guest = Path(tmp, "guest.wasm")
        import wasmtime

        guest.write_bytes(wasmtime.wat2wasm(GUEST_WAT))
        kinds = {
            "plain python": lambda: spawn(SLEEPER),
            "python + wasmtime package": lambda: spawn(
                "import wasmtime, time; print(1, flush=True); time.sleep(600)"),
            "extism host": lambda: spawn(
                "import extism, time; print(1, flush=True); time.sleep(600)"),
            "/bin/sleep": lambda: subprocess.Popen(["/bin/sleep", "600"]),
        }  # fmt: skip
        print("\n## Detection per new process (ms)\n")
        print("| process | found | first: median | first: max | known: median | known: max |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        for name, start in kinds.items():
            first, known, found = [], [], None
            warm = Scanner()
            for i in range(max(rounds, 5)):
                proc = start()
                time.sleep(0.05)  # /bin/sleep: exec'd
                try:
                    cold = Scanner()
                    t0 = time.perf_counter()
                    found = cold.process(proc.pid)
                    first.append((time.perf_counter() - t0) * 1e3)
                    if i == 0:
                        warm.process(proc.pid)
                finally:
                    proc.kill()
                    proc.wait()
            for _ in range(20):
                proc = start()
                time.sleep(0.05)
                try:
                    t0 = time.perf_counter()
                    warm.process(proc.pid)
                    known.append((time.perf_counter() - t0) * 1e3)
                finally:
                    proc.kill()
                    proc.wait()
            said = f"{found.finding.runtime} by {found.finding.by}" if found else "nothing"
            print(f"| {name} | {said} | {statistics.median(first):.1f} | {max(first):.1f} | "
                  f"{statistics.median(known):.2f} | {max(known):.2f} |")  # fmt: skip


def ask(proc: subprocess.Popen, line: str) -> float:
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())["op_s"]


def uprobes(rounds: int, ops: int) -> None:
    import extism_sys
    import wasmtime

    from wasmtop.collector.wasmscan import examine, rust_name
    from wasmtop.probes.lifecycle import EntryPoint, LifecycleProbe
    from wasmtop.probes.probeset import ProbeSet

    c_lib = str(next(Path(wasmtime.__file__).parent.glob("*/_libwasmtime.so")))
    rust_lib = str(Path(extism_sys.__file__).parent / "libextism_sys.so")
    found = examine(rust_lib)
    where = {s: (at, rets) for s, at, rets in found.locations}
    entry = [EntryPoint(s, k, rust_name(s), *where[s]) for s, k in found.entry_points]
    with tempfile.TemporaryDirectory() as tmp:
        guest = Path(tmp, "guest.wasm")
        guest.write_bytes(wasmtime.wat2wasm(GUEST_WAT))
        c_host = spawn(C_API, str(guest))
        r_host = spawn(RUST_API, str(guest))
        # (name, host, command, file, its Rust entry points, guest calls timed)
        cases = [
            ("C API: instantiate", c_host, f"{ops}", c_lib, None, False),
            ("Rust API: plugin.call, guest calls timed", r_host, f"call {ops}", rust_lib, entry,
             True),
            ("Rust API: plugin.call, guest calls not timed (default)", r_host, f"call {ops}",
             rust_lib, entry, False),
            ("Rust API: new plugin + first call", r_host, f"plugin {max(ops // 100, 10)}",
             rust_lib, entry, False),
        ]  # fmt: skip
        results: dict[str, dict[str, list[float]]] = {c[0]: {"off": [], "on": [], "hits": []}
                                                      for c in cases}  # fmt: skip
        try:
            for case in cases:  # warm each up once
                ask(case[1], case[2])
            for r in range(rounds):
                for name, host, line, lib, points, guest_calls in cases:
                    order = ("off", "on") if r % 2 == 0 else ("on", "off")
                    for mode in order:
                        if mode == "off":
                            results[name]["off"].append(ask(host, line))
                            continue
                        probe = LifecycleProbe(guest_calls=guest_calls)
                        with ProbeSet([probe], handle_signals=False):
                            probe.attach_library(lib, "wasmtime", points)
                            before = sum(c.count for c in probe.read().wasm.values())
                            results[name]["on"].append(ask(host, line))
                            after = sum(c.count for c in probe.read().wasm.values())
                            n = int(line.split()[-1])
                            results[name]["hits"].append((after - before) / n)
        finally:
            for host in (c_host, r_host):
                host.kill()
                host.wait()
    print(f"\n## Uprobes per operation (medians of {rounds} rounds, {ops} operations each)\n")
    print(
        "| path | without (us/op) | with (us/op) | ratio | probed calls/op | us per probed call |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, r in results.items():
        off, on = statistics.median(r["off"]) * 1e6, statistics.median(r["on"]) * 1e6
        hits = statistics.median(r["hits"])
        per = (on - off) / hits if hits else float("nan")
        per_text = f"{per:.2f}" if hits else "-"
        print(f"| {name} | {off:.1f} | {on:.1f} | {on / off:.3f}x | {hits:.2f} | {per_text} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ops", type=int, default=2000)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/wasm_detect.py: run as root (it loads the lifecycle probe)")
    print(f"load average before: {os.getloadavg()[0]:.2f}  cpus: {os.cpu_count()}", flush=True)
    detection(args.rounds)
    uprobes(args.rounds, args.ops)
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
