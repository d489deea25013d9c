"""The daemon's HTTP endpoints (/metrics, /healthz, /readyz), with optional TLS and basic auth
configured by a web config file in the format of Prometheus' exporter-toolkit:

    tls_server_config:
      cert_file: server.crt        # relative paths are relative to this file
      key_file: server.key
      client_ca_file: ca.crt       # optional, with client_auth_type
      client_auth_type: RequireAndVerifyClientCert   # or NoClientCert (default)
      min_version: TLS12           # or TLS13
    basic_auth_users:
      prometheus: $2b$12$...       # bcrypt hash (htpasswd -B, or python -m wasmtop hash)
"""

from __future__ import annotations

import base64
import contextlib
import gc
import gzip
import hmac
import http.server
import json
import os
import re
import socket
import ssl
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .yamlcheck import (
    ConfigError,
    Key,
    choice,
    defaults,
    is_file,
    nonempty_text,
    optional,
    read_tree,
    str_map,
    walk,
)

WEB_SCHEMA: dict[str, Any] = {
    "tls_server_config": {
        "cert_file": Key(None, optional(nonempty_text), "server certificate (PEM)"),
        "key_file": Key(None, optional(nonempty_text), "its private key (PEM)"),
        "client_ca_file": Key(None, optional(nonempty_text), "CA that signs client certificates"),
        "client_auth_type": Key(
            "NoClientCert",
            choice("NoClientCert", "RequireAndVerifyClientCert"),
            "client certificates",
        ),
        "min_version": Key("TLS12", choice("TLS12", "TLS13"), "oldest TLS version accepted"),
    },
    "basic_auth_users": Key({}, str_map, "user -> bcrypt hash"),
}


@dataclass(frozen=True)
class WebConfig:
    cert_file: Path | None = None
    key_file: Path | None = None
    client_ca_file: Path | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    users: dict[str, str] = field(default_factory=dict)  # user -> bcrypt hash

    @property
    def tls(self) -> bool:
        return self.cert_file is not None


def load_web_config(path: str | Path | None) -> WebConfig:
    """Read and check a web config file (ConfigError naming file and line); None: plain HTTP."""
    if path is None:
        return WebConfig()
    path = Path(path)
    root = read_tree(path, " web config")
    out = defaults(WEB_SCHEMA)
    if root is not None:
        walk(root, WEB_SCHEMA, out, (), str(path))
    tls = out["tls_server_config"]
    where = f"{path}: tls_server_config"
    if (tls["cert_file"] is None) != (tls["key_file"] is None):
        raise ConfigError(f"{where}: expected both cert_file and key_file, or neither")
    if tls["client_auth_type"] != "NoClientCert" and tls["client_ca_file"] is None:
        raise ConfigError(
            f"{where}: client_auth_type {tls['client_auth_type']} needs client_ca_file"
        )

    def rel(name: str) -> Path | None:
        value = tls[name]
        if value is None:
            return None
        p = Path(value) if Path(value).is_absolute() else path.parent / value
        if not is_file(p):
            raise ConfigError(f"{where}.{name}: expected a readable file, got {value!r}")
        return p

    for user, hashed in out["basic_auth_users"].items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise ConfigError(f"{path}: basic_auth_users.{user}: expected a bcrypt hash ($2y$...)")
    config = WebConfig(
        cert_file=rel("cert_file"),
        key_file=rel("key_file"),
        client_ca_file=rel("client_ca_file"),
        client_auth_type=tls["client_auth_type"],
        min_version=tls["min_version"],
        users=dict(out["basic_auth_users"]),
    )
    if config.tls:
        try:
            _ssl_context(config)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(f"{where}: cannot load the certificate or key: {exc}") from None
    return config


def _ssl_context(config: WebConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = (
        ssl.TLSVersion.TLSv1_3 if config.min_version == "TLS13" else ssl.TLSVersion.TLSv1_2
    )
    ctx.load_cert_chain(str(config.cert_file), str(config.key_file))
    if config.client_auth_type == "RequireAndVerifyClientCert":
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(str(config.client_ca_file))
    return ctx


def _dummy_hash(users: dict[str, str]) -> bytes:
    """A bcrypt hash no password matches, at the highest cost among the users' hashes: an
    unknown user is checked against it, so the answer takes as long as for a known one."""
    import bcrypt

    costs = [int(m.group(1)) for h in users.values() if (m := re.match(r"\$2[aby]\$(\d\d)\$", h))]
    cost = min(max(max(costs, default=10), 4), 31)
    return bcrypt.hashpw(b"wasmtop: no such user", bcrypt.gensalt(rounds=cost))


class _Auth:
    """Basic auth against bcrypt hashes. bcrypt is slow on purpose (~0.2 s at cost 12), so a
    pair that checked out is remembered, keyed by an HMAC of it, as exporter-toolkit does.
    An unknown user costs one bcrypt check too (against a dummy hash, as exporter-toolkit
    does): otherwise the quick refusal tells which user names exist."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self._key = os.urandom(32)
        self._good: set[bytes] = set()
        self._lock = threading.Lock()
        self._dummy = _dummy_hash(users) if users else b""

    def check(self, header: str | None) -> bool:
        if not self.users:
            return True
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if hashed is None:
            self._bcrypt(password, self._dummy)  # as slow as a known user's wrong password
            return False
        token = hmac.new(self._key, f"{user}\0{password}".encode(), "sha256").digest()
        with self._lock:
            if token in self._good:
                return True
        ok = self._bcrypt(password, hashed.encode())
        if ok:
            with self._lock:
                if len(self._good) > 1000:
                    self._good.clear()
                self._good.add(token)
        return ok

    @staticmethod
    def _bcrypt(password: str, hashed: bytes) -> bool:
        import bcrypt

        try:
            return bcrypt.checkpw(password.encode(), hashed)
        except ValueError:
            return False


class Endpoints:
    """What the handler serves; the daemon updates it, the handler only reads."""

    def __init__(
        self,
        metrics: Callable[[], bytes],
        ready: Callable[[], tuple[bool, dict[str, Any]]],
        metrics_gzip: Callable[[], bytes] | None = None,
        openmetrics: MetricsCache | None = None,
    ) -> None:
        self.metrics = metrics
        self.ready = ready
        self.metrics_gzip = metrics_gzip  # the same text gzipped, for scrapers that accept it
        self.openmetrics = openmetrics  # OpenMetrics with exemplars, for scrapers that ask


def _weights(header: str | None) -> list[tuple[str, float]]:
    """(name, q) of each entry of an Accept or Accept-Encoding header, names in lower case, q
    1 when not given and 0 when it is not a number."""
    out = []
    for part in (header or "").split(","):
        name, *params = (p.strip() for p in part.split(";"))
        weight = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if name:
            out.append((name.lower(), weight))
    return out


def wants_openmetrics(accept: str | None) -> bool:
    """An Accept header that prefers OpenMetrics (Prometheus lists it first by default; a
    ``scrape_protocols`` with the text format first weighs that higher): its q above 0 and at
    least the text format's."""
    q: dict[str, float] = {}
    for name, weight in _weights(accept):  # one entry per version: the best counts
        q[name] = max(q.get(name, 0.0), weight)
    om = q.get("application/openmetrics-text", 0.0)
    text = max(q.get("text/plain", 0.0), q.get("*/*", 0.0))
    return om > 0 and om >= text


def accepts_gzip(header: str | None) -> bool:
    """An Accept-Encoding header that takes gzip: its q (or ``*``'s when gzip is not named)
    above 0 (Prometheus sends ``gzip``; ``gzip;q=0`` and no header do not)."""
    q = dict(_weights(header))
    return q.get("gzip", q.get("*", 0.0)) > 0


# A scraper needs one connection, a few at most: past MAX_CONNECTIONS a new connection is closed
# at once, and so is one past MAX_PER_PEER from one address (one client alone cannot take every
# slot from Prometheus and the kubelet's probes). A connection waits READ_TIMEOUT_S at most for
# its next bytes, and a request's head must arrive within HEAD_DEADLINE_S however it is dripped
# (the deadline ends when the head is in: a large answer to a slow reader is the send timeout's
# business); its line and headers are bounded by http.server (64 KiB a line, 100 headers). So no
# client, slow, half-open or hostile, holds a thread or memory for long.
MAX_CONNECTIONS = 16
MAX_PER_PEER = 4
READ_TIMEOUT_S = 10.0
HEAD_DEADLINE_S = 15.0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], endpoints: Endpoints, web: WebConfig, family: int
    ) -> None:
        self.address_family = family
        self.endpoints = endpoints
        self.auth = _Auth(web.users)
        self.ssl_context = _ssl_context(web) if web.tls else None
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._per_peer: dict[str, int] = {}  # open connections by address (only while open)
        self._peers_lock = threading.Lock()
        # connections dropped, by why
        self.refused = {"busy": 0, "peer": 0, "slow": 0, "timeout": 0}
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._peers_lock:
            if self._per_peer.get(peer, 0) >= MAX_PER_PEER:
                self.refused["peer"] += 1
                self.shutdown_request(request)
                return
            if not self._slots.acquire(blocking=False):
                self.refused["busy"] += 1
                self.shutdown_request(request)
                return
            self._per_peer[peer] = self._per_peer.get(peer, 0) + 1

        def serve() -> None:
            try:
                self.process_request_thread(request, client_address)
            finally:
                with self._peers_lock:
                    left = self._per_peer.pop(peer) - 1
                    if left:
                        self._per_peer[peer] = left
                self._slots.release()

        threading.Thread(target=serve, name="wasmtop-http-conn", daemon=True).start()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        if self.ssl_context is not None:
            # Handshake in the request thread (not here), so one slow client cannot stall accept.
            sock = self.ssl_context.wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        return sock, addr


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "wasmtop"
    timeout = READ_TIMEOUT_S  # every read of the connection, TLS handshake included

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            try:
                self.connection.do_handshake()
            except (ssl.SSLError, OSError):
                self.close_connection = True
                raise

    def handle(self) -> None:
        try:
            super().handle()
        except TimeoutError:  # in the TLS handshake (http.server counts a request's own)
            self.server.refused["timeout"] += 1
        except (ssl.SSLError, ConnectionError):
            pass  # a client that failed TLS or went away: nothing to answer

    def handle_one_request(self) -> None:
        # A head dripped a byte at a time never times out a read: cut it at the deadline.
        timer = self._head_timer = threading.Timer(HEAD_DEADLINE_S, self._too_slow)
        timer.daemon = True
        timer.start()
        try:
            super().handle_one_request()
        finally:
            timer.cancel()

    def _too_slow(self) -> None:
        self.server.refused["slow"] += 1
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # scrapes every few seconds would flood the log

    def log_error(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        # http.server reports a read timeout here, and swallows it
        if format.startswith("Request timed out"):
            self.server.refused["timeout"] += 1

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self._head_timer.cancel()  # the head is in: rendering and sending are not its business
        path = self.path.split("?", 1)[0]
        if not self.server.auth.check(self.headers.get("Authorization")):
            self._send(
                401, b"unauthorized\n", "text/plain", {"WWW-Authenticate": 'Basic realm="wasmtop"'}
            )
            return
        if path == "/metrics":
            from .exporters.exposition import CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE

            endpoints = self.server.endpoints
            plain, packed, ctype = endpoints.metrics, endpoints.metrics_gzip, CONTENT_TYPE
            if endpoints.openmetrics is not None and wants_openmetrics(self.headers.get("Accept")):
                cache = endpoints.openmetrics
                plain, packed, ctype = cache, cache.gzipped, OPENMETRICS_CONTENT_TYPE
            vary = {"Vary": "Accept, Accept-Encoding"}
            if packed is not None and accepts_gzip(self.headers.get("Accept-Encoding")):
                self._send(200, packed(), ctype, {"Content-Encoding": "gzip", **vary})
            else:
                self._send(200, plain(), ctype, vary)
        elif path == "/healthz":
            self._send(200, b"ok\n", "text/plain")
        elif path == "/readyz":
            ready, body = self.server.endpoints.ready()
            self._send(200 if ready else 503, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b"not found: try /metrics, /healthz or /readyz\n", "text/plain")

    def _send(
        self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class HttpServer:
    """Serve ``endpoints`` on ``listen`` (HOST:PORT) in a thread until ``close()``."""

    def __init__(self, listen: str, endpoints: Endpoints, web: WebConfig) -> None:
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._server = _Server((host, int(port)), endpoints, web, family)
        self.port = self._server.server_address[1]
        self.scheme = "https" if web.tls else "http"
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="wasmtop-http", daemon=True
        )
        self._thread.start()

    @property
    def refused(self) -> dict[str, int]:
        """Connections dropped since start: busy (MAX_CONNECTIONS open), slow (the head did not
        arrive within HEAD_DEADLINE_S), timeout (no bytes for READ_TIMEOUT_S)."""
        return dict(self._server.refused)

    def close(self) -> None:
        """Stop serving at once: serve_forever notices a shutdown only when its select returns
        (every 0.5 s), so the listening socket is shut down too, which wakes it."""
        stopper = threading.Thread(target=self._server.shutdown, name="wasmtop-http-stop")
        stopper.start()
        with contextlib.suppress(OSError):
            self._server.socket.shutdown(socket.SHUT_RDWR)
        stopper.join(5)
        self._server.server_close()
        self._thread.join(5)


GZIP_LEVEL = 1  # 15x smaller at a fifth of the render time; level 6: 18x at two thirds (bench)


class MetricsCache:
    """Render /metrics at most once per Snapshot, on demand, with the garbage collector paused:
    the text is hundreds of thousands of short-lived strings and no cycles, and a collection
    in the middle costs more than the render (docs/benchmarks.md)."""

    def __init__(self, render: Callable[[], bytes], generation: Callable[[], Hashable]) -> None:
        self._render = render
        self._generation = generation
        self._lock = threading.Lock()
        self._cached: tuple[Hashable, bytes] | None = None
        self._gzipped: tuple[bytes, bytes] | None = None  # (the text it was made of, gzip)

    def gzipped(self) -> bytes:
        """The same text gzipped, compressed once per text (GZIP_LEVEL: docs/benchmarks.md),
        outside the lock (plain scrapes do not wait for it); a compression of a text a newer
        render has replaced is served, not kept."""
        text = self()
        with self._lock:
            if self._gzipped is not None and self._gzipped[0] is text:
                return self._gzipped[1]
        packed = gzip.compress(text, GZIP_LEVEL, mtime=0)
        with self._lock:
            if self._cached is not None and self._cached[1] is text:
                self._gzipped = (text, packed)
        return packed

    def __call__(self) -> bytes:
        with self._lock:
            gen = self._generation()
            if self._cached is None or self._cached[0] != gen:
                was_enabled = gc.isenabled()
                gc.disable()
                try:
                    self._cached = (gen, self._render())
                finally:
                    if was_enabled:
                        gc.enable()
            return self._cached[1]
