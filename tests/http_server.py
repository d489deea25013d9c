"""A threaded HTTP/1.1 server (keep-alive, one thread per connection) for the trace-context tests
and benchmark. Prints "ready PORT" once listening.

  GET /burn?ms=N    burn N ms of CPU in the handler thread, then answer
  anything else     answer "ok" at once

Options: --port (default 0: any free port), --cpu N (pin the whole process to CPU N), --wasm
(load wasmtime and run a tiny module per request, so the process is a WebAssembly runtime).
"""

from __future__ import annotations

import argparse
import http.server
import os
import sys
import time
from urllib.parse import parse_qs, urlsplit

WAT = '(module (func (export "add") (param i32 i32) (result i32) local.get 0 local.get 1 i32.add))'


def burn(ms: float) -> None:
    end = time.thread_time() + ms / 1000  # CPU time, so waiting for the CPU does not count
    while time.thread_time() < end:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--cpu", type=int)
    parser.add_argument("--wasm", action="store_true")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    run_wasm = None
    if args.wasm:
        import wasmtime

        engine = wasmtime.Engine()
        module = wasmtime.Module(engine, WAT)

        def run_wasm() -> int:
            store = wasmtime.Store(engine)
            return wasmtime.Instance(store, module, []).exports(store)["add"](store, 2, 3)

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # Head and body leave in one send (flushed after the handler), with no Nagle delay:
        # two small sends would wait on the client's delayed ACK (40 ms a request).
        wbufsize = -1
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path == "/burn":
                burn(float(parse_qs(url.query).get("ms", ["1"])[0]))
            body = str(run_wasm()).encode() if run_wasm else b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass  # no stderr write per request

    server = http.server.ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    sys.stdout.write(f"ready {server.server_address[1]}\n")
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()
