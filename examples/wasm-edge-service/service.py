"""A small HTTP service that runs WebAssembly per request: the workload wasmtop watches.

wasmtop's demo, its tests and its benchmarks need a WebAssembly edge workload whose
behaviour can be dialled in from the command line. This is one: an HTTP/1.1 server
(standard library ``http.server``, one thread per connection, keep-alive) that answers every
request by calling the exported function ``work(iterations) -> checksum`` of a WebAssembly
module through wasmtime's Python API. The process maps wasmtime's shared library, so wasmtop
recognises it as a WebAssembly runtime process and traces it by default.

What each knob shows up as in wasmtop
-------------------------------------
* instantiation: by default every request gets a NEW ``wasmtime.Store`` and instance (the
  module itself is compiled once, at startup), the way many edge platforms isolate requests;
  each request is one instantiate call. ``--reuse-instance`` keeps one store and instance
  per server thread instead, i.e. per client connection, since the server runs one thread
  per connection: the first request on a connection instantiates, the next ones reuse it.
* ``--burn-iterations``: the loop count passed to ``work``; the CPU it burns is spent inside
  WebAssembly, which is what CPU time, migrations and preemption delays are measured on.
* ``--leak-kb-per-request``: every request appends that many KiB of touched (resident)
  memory to a list that is never freed: RSS grows steadily, like a leaking guest.
* ``--startup-delay-ms``: sleeps that long after compiling the module and before listening:
  a slow cold start.

HTTP
----
Any path, GET or POST (a POST body is read and ignored), runs ``work`` and answers
``application/json``::

    {"checksum": <int>, "instance": "new" | "reused", "leaked_kb": <KiB leaked so far>}

``instance`` says whether this request instantiated the module ("new") or ran on an
instance created by an earlier request of the same thread ("reused"). A ``traceparent``
request header (W3C trace context) is echoed unchanged in the response, and so is
``X-TraceID-Bytes``. ``GET /healthz`` answers ``ok`` without running WebAssembly.

Head and body leave in one ``send`` (buffered writer, flushed after the handler returns,
TCP_NODELAY): two small writes would make every keep-alive request wait ~40 ms for the
client's delayed ACK.

Running it
----------
Standalone: the Python standard library plus the ``wasmtime`` package (``pip install
wasmtime``), no import of wasmtop::

    python examples/wasm-edge-service/service.py --port 8080 --leak-kb-per-request 50
    curl -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' \\
        localhost:8080/

Once listening it prints exactly one line, ``ready <port>``, to stdout (``--port 0`` picks
a free port; read it from that line). SIGTERM or SIGINT shut it down with exit code 0.
Then, in another terminal: ``sudo .venv/bin/wasmtop snapshot --seconds 10``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, List, Optional, Tuple

import wasmtime

# work(iterations) -> checksum: an FNV-style mix over the loop counter, so the whole CPU
# cost of a request is spent inside WebAssembly and cannot be optimised away.
WORK_WAT = """
(module
  (func (export "work") (param $n i32) (result i32)
    (local $i i32)
    (local $acc i32)
    (local.set $acc (i32.const 0x811c9dc5))
    (block $done
      (loop $next
        (br_if $done (i32.ge_s (local.get $i) (local.get $n)))
        (local.set $acc
          (i32.mul (i32.xor (local.get $acc) (local.get $i)) (i32.const 16777619)))
        (local.set $acc
          (i32.add (i32.rotl (local.get $acc) (i32.const 5)) (local.get $i)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (local.get $acc)))
"""

I32_MAX = 2**31 - 1
MAX_BODY_BYTES = 16 * 1024 * 1024  # larger POST bodies are refused (413)

# Memory leaked on purpose (--leak-kb-per-request); never freed.
_LEAKED: List[bytes] = []
_LEAKED_KB = 0
_LEAK_LOCK = threading.Lock()


class WasmWork:
    """The compiled module and how requests get an instance of it."""

    def __init__(self, iterations: int, reuse_instance: bool) -> None:
        self.engine = wasmtime.Engine()
        self.module = wasmtime.Module(self.engine, WORK_WAT)  # compiled once
        self.iterations = iterations
        self.reuse_instance = reuse_instance
        self._local = threading.local()  # per-thread store + work function (reuse mode)

    def _instantiate(self) -> Tuple[wasmtime.Store, wasmtime.Func]:
        store = wasmtime.Store(self.engine)
        instance = wasmtime.Instance(store, self.module, [])
        work = instance.exports(store)["work"]
        assert isinstance(work, wasmtime.Func)
        return store, work

    def run(self) -> Tuple[int, str]:
        """Call work(iterations); returns (unsigned 32-bit checksum, "new" | "reused")."""
        if self.reuse_instance:
            cached = getattr(self._local, "instance", None)
            if cached is None:
                cached = self._local.instance = self._instantiate()
                kind = "new"
            else:
                kind = "reused"
            store, work = cached
        else:
            store, work = self._instantiate()
            kind = "new"
        checksum = work(store, self.iterations)
        return int(checksum) & 0xFFFFFFFF, kind


def leak(kib: int) -> int:
    """Append `kib` KiB of touched memory to the never-freed list; returns the total KiB."""
    global _LEAKED_KB
    with _LEAK_LOCK:
        if kib > 0:
            # bytes * n writes every byte (memset), so the pages really become resident;
            # bytearray(n) could stay untouched zero pages.
            _LEAKED.append(b"\xa5" * (kib * 1024))
            _LEAKED_KB += kib
        return _LEAKED_KB


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    # Buffered writes, flushed once after the handler returns: head and body leave in ONE
    # send. With two small sends the second waits for the client's delayed ACK (~40 ms).
    wbufsize = -1
    disable_nagle_algorithm = True

    server: EdgeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no stderr write per request

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == "/healthz":
            self._send(200, b"ok", "text/plain; charset=utf-8")
            return
        self._serve()

    def do_POST(self) -> None:
        if not self._drain_body():
            return
        self._serve()

    def _drain_body(self) -> bool:
        """Read and discard the request body; False (after an error reply) if it cannot."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                line = self.rfile.readline(1024)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    self.close_connection = True
                    self._send(400, b"bad chunk size", "text/plain; charset=utf-8")
                    return False
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return True
                self._discard(size)
                self.rfile.readline(1024)  # CRLF after the chunk
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(413 if length > 0 else 400, b"bad body length", "text/plain")
            return False
        self._discard(length)
        return True

    def _discard(self, n: int) -> None:
        while n > 0:
            chunk = self.rfile.read(min(n, 65536))
            if not chunk:
                break
            n -= len(chunk)

    def _serve(self) -> None:
        try:
            checksum, kind = self.server.work.run()
        except (wasmtime.WasmtimeError, wasmtime.Trap) as exc:
            self._send(500, f"wasm error: {exc}\n".encode(), "text/plain; charset=utf-8")
            return
        leaked_kb = leak(self.server.leak_kb_per_request)
        body = json.dumps({"checksum": checksum, "instance": kind, "leaked_kb": leaked_kb})
        self._send(200, body.encode(), "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name in ("traceparent", "X-TraceID-Bytes"):
            value = self.headers.get(name)
            if value is not None:
                self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True  # open keep-alive connections do not hold up the exit
    request_queue_size = 128  # listen backlog for load generators

    def __init__(self, address: Tuple[str, int], work: WasmWork, leak_kb_per_request: int) -> None:
        super().__init__(address, Handler)
        self.work = work
        self.leak_kb_per_request = leak_kb_per_request


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="HTTP/1.1 service that runs a WebAssembly function (wasmtime) on every "
        "request: the workload wasmtop's demo, tests and benchmarks watch. Prints "
        "'ready <port>' once listening; SIGTERM/SIGINT exit with code 0.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=8080,
        help="TCP port to listen on; 0 picks a free port, printed in the ready line (default 8080)",
    )
    p.add_argument(
        "--burn-iterations",
        type=int,
        default=10000,
        metavar="N",
        help="loop iterations of the WebAssembly work() function per request: CPU burned "
        "inside WebAssembly (default 10000)",
    )
    p.add_argument(
        "--leak-kb-per-request",
        type=int,
        default=0,
        metavar="N",
        help="KiB of touched memory leaked (kept forever) per request: steady RSS growth "
        "(default 0)",
    )
    p.add_argument(
        "--startup-delay-ms",
        type=int,
        default=0,
        metavar="N",
        help="milliseconds to sleep after start, before listening: a slow cold start (default 0)",
    )
    p.add_argument(
        "--reuse-instance",
        action="store_true",
        help="keep one WebAssembly store + instance per server thread (one thread per "
        "connection) and reuse it, instead of a new instance per request",
    )
    args = p.parse_args(argv)
    if not 0 <= args.port <= 65535:
        p.error("--port must be between 0 and 65535")
    if not 0 <= args.burn_iterations <= I32_MAX:
        p.error(f"--burn-iterations must be between 0 and {I32_MAX}")
    if args.leak_kb_per_request < 0:
        p.error("--leak-kb-per-request must be >= 0")
    if args.startup_delay_ms < 0:
        p.error("--startup-delay-ms must be >= 0")
    return args


class _Stop(Exception):
    """Raised in the main thread by the SIGTERM/SIGINT handler."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # Raising from the handler ends whatever the main thread is doing (the startup sleep,
    # serve_forever's select), with no window where a stop request could be lost.
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, _raise_stop)
    server: Optional[EdgeServer] = None
    try:
        work = WasmWork(args.burn_iterations, args.reuse_instance)
        if args.startup_delay_ms:
            time.sleep(args.startup_delay_ms / 1000.0)
        server = EdgeServer((args.host, args.port), work, args.leak_kb_per_request)
        print(f"ready {server.server_address[1]}", flush=True)
        server.serve_forever()
    except _Stop:
        pass
    finally:
        if server is not None:
            server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
