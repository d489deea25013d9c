#!/usr/bin/env python3
"""Reading a whole BPF hash map from userspace: in batches against the per-key walk.

The collector reads its per-thread map (one entry per thread on the node, ~190 bytes each)
every second, and its other hash maps at every Snapshot: probes/tables.py Table.items(). This
makes a hash map of --entries entries of that size and times items() both ways, best of
--repeat. Needs root (a BPF map).

Usage: sudo .venv/bin/python bench/table_read.py [--entries 200 2000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import time

from benchlib import machine


class Entry(ctypes.Structure):
    _fields_ = [("words", ctypes.c_uint64 * 24)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(machine(), flush=True)
    from wasmtop.probes import bpfobj, tables

    for n in args.entries:
        fd = bpfobj.map_create(tables.HASH, 4, ctypes.sizeof(Entry), max(n, 1) * 2, "bench")
        try:
            table = tables.Table("bench", fd, tables.HASH, max(n, 1) * 2, ctypes.c_uint32, Entry)
            for i in range(n):
                table[i] = Entry()
            best = {}
            for batched in (True, False) * 2:
                table._batch = batched
                t0 = time.perf_counter()
                for _ in range(args.repeat):
                    assert len(table.items()) == n
                took = (time.perf_counter() - t0) / args.repeat
                best[batched] = min(best.get(batched, took), took)
            print(f"{n} entries of {ctypes.sizeof(Entry)} bytes: in batches "
                  f"{best[True] * 1e3:.2f} ms, walked {best[False] * 1e3:.2f} ms "
                  f"({best[False] / best[True]:.0f}x)")  # fmt: skip
        finally:
            os.close(fd)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
