"""A WebAssembly host wasmtop's authors did not write: Extism's Python SDK, whose
``libextism_sys.so`` embeds wasmtime as a Rust crate (no C API of wasmtime is exported). Run by
tests/support.py's ``extism_host`` for the lifecycle kernel tests and the e2e test.

Usage: extism_host.py MODULE.wasm (one exporting ``count``: no parameters, i32 result; made
from support.GUEST_WAT). This process must not import the wasmtime package: its C API library
would be found first. Reads commands on stdin, one a line, and answers each with one line of JSON:
  plugin      make a new plugin from the module (compile and instantiate) -> {"seconds": s}
  call N      call the plugin's ``count`` function N times -> {"seconds": s}
  quit
Prints {"ready": true, "pid": PID} once Extism is loaded (the library mapped), before any plugin.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import extism


def heartbeat() -> None:
    """Wake up 20 times a second: a process that runs is one the scheduler probe sees, and so
    one wasmtop lists (an idle one is not in a window's workloads)."""
    while True:
        time.sleep(0.05)


def main() -> None:
    with open(sys.argv[1], "rb") as f:
        module = f.read()
    threading.Thread(target=heartbeat, daemon=True).start()
    plugin = None
    print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        t0 = time.perf_counter()
        if words[0] == "plugin":
            plugin = extism.Plugin(module, wasi=False)
            out: dict = {}
        elif words[0] == "call" and plugin is not None:
            for _ in range(int(words[1])):
                plugin.call("count", b"")
            out = {}
        elif words[0] == "quit":
            return
        else:
            out = {"error": f"unknown command {line.strip()!r}"}
        out["seconds"] = time.perf_counter() - t0
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
