"""The /metrics server under slow, silent and too many clients: every one costs a bounded
thread for a bounded time, and each drop is counted (real sockets on loopback)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import pytest

from wasmtop import web


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(web._Handler, "timeout", 0.5)  # READ_TIMEOUT_S, shortened for the test
    monkeypatch.setattr(web, "HEAD_DEADLINE_S", 1.0)
    endpoints = web.Endpoints(lambda: b"# metrics\n", lambda: (True, {"ready": True}))
    srv = web.HttpServer("127.0.0.1:0", endpoints, web.load_web_config(None))
    yield srv
    srv.close()


def connect(srv: web.HttpServer, source: str = "127.0.0.1") -> socket.socket:
    """A connection from ``source`` (any 127/8 address is this host's loopback)."""
    return socket.create_connection(("127.0.0.1", srv.port), timeout=30, source_address=(source, 0))


def closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed the connection (EOF or reset), waiting at most 30 s."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def scrape(srv: web.HttpServer) -> bytes:
    with connect(srv) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = b""
        while chunk := s.recv(4096):
            out += chunk
    return out


def test_a_silent_connection_is_closed_after_the_read_timeout(server):
    with connect(server) as s:
        assert closed_by_server(s)
    assert wait(lambda: server.refused["timeout"] == 1)


def test_a_head_dripped_byte_by_byte_is_cut_at_its_deadline(server):
    with connect(server) as s:
        head = b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100
        stop = threading.Event()

        def drip() -> None:  # a byte every 0.1 s: never a read timeout, never a whole head
            for b in head:
                if stop.is_set():
                    return
                try:
                    s.send(bytes([b]))
                except OSError:
                    return
                time.sleep(0.1)

        t = threading.Thread(target=drip)
        t.start()
        try:
            assert closed_by_server(s)
        finally:
            stop.set()
            t.join()
    assert wait(lambda: server.refused["slow"] == 1)
    assert scrape(server).startswith(b"HTTP/1.1 200")  # the server still answers others


def test_past_max_connections_new_ones_are_closed_at_once_and_counted(server, monkeypatch):
    monkeypatch.setattr(web._Handler, "timeout", 20.0)  # the held ones must outlive the checks
    monkeypatch.setattr(web, "HEAD_DEADLINE_S", 20.0)
    # From several addresses, each within its share.
    held = [connect(server, f"127.0.0.{2 + i // web.MAX_PER_PEER}")
            for i in range(web.MAX_CONNECTIONS)]  # fmt: skip
    try:
        for s in held:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")  # half a head: each holds a slot
        assert wait(lambda: server._server._slots._value == 0)
        with connect(server, "127.0.0.99") as extra:
            assert closed_by_server(extra)
        assert server.refused["busy"] >= 1
    finally:
        for s in held:
            s.close()
    # Once they are gone, scrapes are served again.
    assert wait(lambda: scrape(server).startswith(b"HTTP/1.1 200"))


def test_one_address_gets_max_per_peer_connections_and_the_others_still_get_in(server, monkeypatch):
    """One client holding connections open cannot take every slot from Prometheus and the
    kubelet's probes."""
    monkeypatch.setattr(web._Handler, "timeout", 20.0)
    monkeypatch.setattr(web, "HEAD_DEADLINE_S", 20.0)
    held = [connect(server, "127.0.0.7") for _ in range(web.MAX_PER_PEER)]
    try:
        for s in held:
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
        assert wait(lambda: server._server._per_peer.get("127.0.0.7") == web.MAX_PER_PEER)
        with connect(server, "127.0.0.7") as extra:
            assert closed_by_server(extra)
        assert server.refused == {"busy": 0, "peer": 1, "slow": 0, "timeout": 0}
        assert scrape(server).startswith(b"HTTP/1.1 200")  # another address is served
    finally:
        for s in held:
            s.close()
    assert wait(lambda: "127.0.0.7" not in server._server._per_peer)  # nothing kept per address
    with connect(server, "127.0.0.7") as s:  # and its share is back
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200")


def test_an_answer_slow_to_render_is_not_cut_by_the_head_deadline(monkeypatch):
    """The head deadline ends when the head is in: rendering the answer takes what it takes."""
    monkeypatch.setattr(web, "HEAD_DEADLINE_S", 0.3)

    def slow_render() -> bytes:
        time.sleep(0.8)  # longer than the head deadline
        return b"# metrics\n"

    endpoints = web.Endpoints(slow_render, lambda: (True, {"ready": True}))
    srv = web.HttpServer("127.0.0.1:0", endpoints, web.load_web_config(None))
    try:
        assert scrape(srv).endswith(b"# metrics\n")
        assert srv.refused["slow"] == 0
    finally:
        srv.close()


def wait(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_metrics_are_gzipped_for_a_scraper_that_accepts_it_and_compressed_once(monkeypatch):
    text = b"".join(b'wasmtop_x_total{workload="pid:%d"} 1.0\n' % i for i in range(5000))
    renders = []
    cache = web.MetricsCache(lambda: renders.append(1) or text, lambda: "generation 1")
    compressed = []
    real = web.gzip.compress
    monkeypatch.setattr(web.gzip, "compress", lambda *a, **k: compressed.append(1) or real(*a, **k))
    endpoints = web.Endpoints(cache, lambda: (True, {}), cache.gzipped)
    srv = web.HttpServer("127.0.0.1:0", endpoints, web.load_web_config(None))
    try:
        url = f"http://127.0.0.1:{srv.port}/metrics"
        for accept, gzipped in (("gzip", True), ("br, gzip;q=0.5", True), ("gzip;q=0", False),
                                (None, False), ("identity", False), ("gzip", True)):  # fmt: skip
            req = urllib.request.Request(url, headers={"Accept-Encoding": accept} if accept else {})
            with urllib.request.urlopen(req, timeout=10) as resp:
                body = resp.read()
                assert resp.headers.get("Content-Encoding") == ("gzip" if gzipped else None)
                assert resp.headers.get("Vary") == "Accept, Accept-Encoding"
            assert (web.gzip.decompress(body) if gzipped else body) == text
            if gzipped:
                assert len(body) * 10 < len(text)  # what gzip is for
    finally:
        srv.close()
    assert (len(renders), len(compressed)) == (1, 1)  # one render, one compression


@pytest.mark.parametrize(
    ("header", "gzip"),
    [("gzip", True), ("GZIP", True), ("x-gzip, gzip;q=0.5", True), ("*", True),
     ("*;q=0, gzip", True), ("*, gzip;q=0", False), ("gzip;level=1;q=0", False),
     ("gzip;q=0.0", False), ("identity", False), ("", False), (None, False),
     ("gzip;q=nonsense", False)],
)  # fmt: skip
def test_accept_encoding_is_read_as_http_says(header, gzip):
    assert web.accepts_gzip(header) is gzip


def test_a_scraper_that_asks_for_openmetrics_gets_it_gzipped_or_not():
    text_cache = web.MetricsCache(lambda: b"# text\n", lambda: 1)
    om_cache = web.MetricsCache(lambda: b"# openmetrics\n# EOF\n", lambda: 1)
    endpoints = web.Endpoints(text_cache, lambda: (True, {}), text_cache.gzipped, om_cache)
    srv = web.HttpServer("127.0.0.1:0", endpoints, web.load_web_config(None))
    prometheus = ("application/openmetrics-text;version=1.0.0;q=0.5,"
                  "application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,"
                  "*/*;q=0.2")  # fmt: skip
    try:
        url = f"http://127.0.0.1:{srv.port}/metrics"
        for accept, encoding, body, ctype in (
            (prometheus, "gzip", b"# openmetrics\n# EOF\n", "application/openmetrics-text"),
            (prometheus, None, b"# openmetrics\n# EOF\n", "application/openmetrics-text"),
            ("text/plain", "gzip", b"# text\n", "text/plain"),
            ("application/openmetrics-text;q=0", None, b"# text\n", "text/plain"),
        ):
            headers = {"Accept": accept, **({"Accept-Encoding": encoding} if encoding else {})}
            req = urllib.request.Request(url, headers=headers)
            with urllib.request.urlopen(req, timeout=10) as resp:
                got = resp.read()
                assert resp.headers["Content-Type"].startswith(ctype)
                if encoding:
                    got = web.gzip.decompress(got)
            assert got == body
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [("application/openmetrics-text;version=1.0.0;q=0.5,text/plain;q=0.4", True),
     ("text/plain;q=1,application/openmetrics-text;q=0.1", False),
     ("application/openmetrics-text", True), ("*/*", False), (None, False),
     ("application/openmetrics-text;q=0", False)],
)  # fmt: skip
def test_openmetrics_only_for_a_scraper_that_prefers_it(accept, openmetrics):
    assert web.wants_openmetrics(accept) is openmetrics
