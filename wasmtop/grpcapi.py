"""The gRPC API: ``wasmtop.v1.Snapshots/Watch`` streams the daemon's Snapshots (docs/grpc.md).

``SnapshotServer`` runs in the daemon. ``publish()`` is called by the collector loop after each
tick and never blocks it: it stores the Snapshot and wakes the streams. A Snapshot is encoded
once, by the first stream that sends it (with no client watching, nothing is encoded). Each
stream sends the newest Snapshot whenever it is ready for one, so a slow client skips Snapshots
(counted) instead of building up a queue.

``RemoteSnapshots`` is the client (``wasmtop --connect``): a background thread that watches,
decodes each message back into a Snapshot, and reconnects with exponential backoff and jitter
when the stream breaks.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

# gRPC's C core logs every failed TLS handshake to stderr at INFO, over the terminal UI of
# `wasmtop --connect`. It reads this once, when grpc is first imported; GRPC_VERBOSITY=INFO in
# the environment shows them again.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import grpc  # noqa: E402 - after GRPC_VERBOSITY

from .collector.model import SCHEMA, Snapshot
from .collector.snapshot_json import snapshot_from_json
from .proto.wasmtop.v1 import snapshots_pb2 as pb
from .proto.wasmtop.v1 import snapshots_pb2_grpc as pb_grpc
from .safe import safe

DEFAULT_LISTEN = "127.0.0.1:9465"
METHOD = "wasmtop.v1.Snapshots/Watch"
# A Snapshot of a busy node (1,000 workloads, 10,000 traces) is several MB: above gRPC's
# default 4 MB limit for a received message. Also the client's bound on what a daemon can make
# it parse; the JSON's nesting is bounded too (snapshot_json.MAX_JSON_DEPTH).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ERROR_CHARS = 200  # the longest ``error`` a client shows (a daemon's words may be longer)
_SERVER_OPTIONS = [
    # Never share the port with another process (gRPC sets SO_REUSEPORT by default): a second
    # daemon on the same address must fail to start, not take half the clients.
    ("grpc.so_reuseport", 0),
    # A client that vanished without closing its connection frees its stream within ~40 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Accept the client's keepalive pings (below) without calling them abuse.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 0),
]
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A daemon whose host went away without closing the connection is noticed within ~15 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


class _Published:
    """One published Snapshot, encoded on first use (once, whichever stream needs it first)."""

    __slots__ = ("snapshot", "sequence", "_message", "_lock")

    def __init__(self, snapshot: Snapshot, sequence: int) -> None:
        self.snapshot = snapshot
        self.sequence = sequence
        self._message: pb.Snapshot | None = None
        self._lock = threading.Lock()

    def message(self) -> pb.Snapshot:
        with self._lock:
            if self._message is None:
                s = self.snapshot
                self._message = pb.Snapshot(
                    schema=s.schema,
                    json=s.to_json(indent=None),
                    sequence=self.sequence,
                    host=s.host,
                    window_s=s.window_s,
                    workloads=len(s.workloads),
                )
            return self._message


class SnapshotServer(pb_grpc.SnapshotsServicer):
    """``wasmtop.v1.Snapshots`` on ``listen`` (``HOST:PORT``), TLS when given a certificate and
    its key (PEM files). Raises OSError when the address cannot be bound."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        *,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        max_streams: int = 16,
    ) -> None:
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("expected both tls_cert_file and tls_key_file, or neither")
        self.listen = listen
        self.tls = tls_cert_file is not None
        self.max_streams = max_streams
        self.streams = 0  # Watch streams open now
        self.sent = 0  # Snapshots sent, over all streams
        self.dropped = 0  # Snapshots a stream skipped because it read slower than they came
        self.rejected = 0  # streams refused: max_streams were open
        self._latest: _Published | None = None
        self._sequence = 0
        self._closed = False
        self._cond = threading.Condition()
        # Every stream holds a worker for its life; two more answer those beyond the limit.
        self._server = grpc.server(
            ThreadPoolExecutor(max_workers=max_streams + 2, thread_name_prefix="wasmtop-grpc"),
            options=_SERVER_OPTIONS,
            maximum_concurrent_rpcs=max_streams + 2,
        )
        pb_grpc.add_SnapshotsServicer_to_server(self, self._server)
        try:
            if self.tls:
                pair = (Path(tls_key_file).read_bytes(), Path(tls_cert_file).read_bytes())
                port = self._server.add_secure_port(listen, grpc.ssl_server_credentials([pair]))
            else:
                port = self._server.add_insecure_port(listen)
        except RuntimeError:  # grpcio >= 1.59 raises where older ones returned 0
            port = 0
        if port == 0:
            self._server.stop(None)
            raise OSError(f"cannot listen on {listen}: {_why_unbindable(listen)}")
        self.port = port
        self._server.start()

    # -- the daemon's side -------------------------------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        """The newest Snapshot; wakes the streams. Never blocks for long: no encoding, no I/O."""
        with self._cond:
            self._sequence += 1
            self._latest = _Published(snapshot, self._sequence)
            self._cond.notify_all()

    @property
    def latest(self) -> Snapshot | None:
        p = self._latest
        return p.snapshot if p is not None else None

    def carry_over(self, old: SnapshotServer) -> None:
        """Take over a replaced server's counters and latest Snapshot (a config reload), so the
        counters keep counting and a reconnecting client gets a Snapshot at once."""
        with self._cond:
            self.sent += old.sent
            self.dropped += old.dropped
            self.rejected += old.rejected
            self._sequence = max(self._sequence, old._sequence)
            if self._latest is None and old._latest is not None:
                self._latest = old._latest

    def close(self, grace_s: float = 1.0) -> None:
        """End every stream (UNAVAILABLE "daemon stopped") and stop listening."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.stop(grace_s).wait(grace_s + 1.0)

    # -- one stream each -----------------------------------------------------------------------
    def Watch(self, request: pb.WatchRequest, context: grpc.ServicerContext) -> Any:  # noqa: N802
        # A generator from the first line: a stream whose first message is never asked for (the
        # client left at once) has counted nothing, so there is nothing to undo.
        with self._cond:
            if self._closed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "daemon stopped")
            if self.streams >= self.max_streams:
                self.rejected += 1
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.streams} streams open: the daemon's limit (grpc.max_streams)",
                )
            self.streams += 1
            last = self._sequence if request.only_new else 0

        def wake() -> None:
            with self._cond:
                self._cond.notify_all()

        try:
            context.add_callback(wake)  # the client went away: stop waiting at once
            context.send_initial_metadata((("wasmtop-schema", SCHEMA),))  # "connected"
            while True:
                with self._cond:
                    while (
                        not self._closed
                        and context.is_active()
                        and (self._latest is None or self._latest.sequence == last)
                    ):
                        self._cond.wait(5.0)  # woken by publish, close and the client leaving
                    if self._closed:
                        break
                    if not context.is_active():
                        return
                    published = self._latest
                    if last:
                        self.dropped += published.sequence - last - 1
                    last = published.sequence
                    self.sent += 1  # handed to gRPC (a client may still leave before it lands)
                yield published.message()  # blocks while the client's window is full
        finally:
            with self._cond:
                self.streams -= 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "daemon stopped")


def _why_unbindable(listen: str) -> str:
    """Why gRPC could not bind (it only logs the reason): a plain bind's error, e.g. "Address
    already in use"."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            with socket.socket(family, kind, proto) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
                s.bind(address)
    except OSError as exc:
        return exc.strerror or str(exc)
    except ValueError as exc:
        return str(exc)
    return "address in use or not available"


class RemoteSnapshots:
    """A daemon's Snapshots (``target``: ``HOST:PORT`` of its ``grpc.listen``), TLS verified
    against ``ca_file`` when given, plaintext otherwise.

    ``latest()`` returns the newest Snapshot not yet returned. ``connected``, ``error`` (why the
    last stream failed, for a person: "connection refused", "daemon stopped", ...), ``since_s``
    (``time.monotonic()`` when ``connected`` last changed) and ``reconnects`` (attempts after a
    failure) say how the connection is; they are plain attributes, read without a lock.

    A message that does not decode into a Snapshot (not JSON, nested too deeply, a value of the
    wrong type: snapshot_json.py) is counted in ``unreadable`` and ends the stream with ``error``
    "unreadable Snapshot ...", so the UI's banner says so while the client reconnects; the
    Snapshot shown stays the last good one. Nothing a daemon sends ends the receiving thread.
    """

    def __init__(
        self, target: str, *, ca_file: str | None = None, reconnect_max_s: float = 5.0
    ) -> None:
        self.target = target
        self.ca_file = ca_file
        self.reconnect_max_s = reconnect_max_s
        self.connected = False
        self.error: str | None = None
        self.since_s = time.monotonic()
        self.reconnects = 0
        self.sequence = 0  # the server's number of the newest Snapshot received
        self.received = 0
        self.unreadable = 0  # messages that did not decode into a Snapshot
        self._latest: Snapshot | None = None
        self._returned = 0  # self.received when latest() last returned one
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self._credentials = (
            grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())
            if ca_file is not None
            else None
        )

    def start(self) -> RemoteSnapshots:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"wasmtop-remote {self.target}", daemon=True
            )
            self._thread.start()
        return self

    def latest(self, timeout_s: float) -> Snapshot | None:
        """The newest Snapshot received since the last one returned, waiting up to
        ``timeout_s`` for one; None when none came."""
        with self._cond:
            if not self._cond.wait_for(
                lambda: self.received > self._returned or self._stop.is_set(), timeout_s
            ):
                return None
            if self.received == self._returned:
                return None
            self._returned = self.received
            return self._latest

    def close(self) -> None:
        self._stop.set()
        call = self._call
        if call is not None:
            call.cancel()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __enter__(self) -> RemoteSnapshots:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- the background thread ---------------------------------------------------------------
    def _channel(self) -> grpc.Channel:
        if self._credentials is None:
            return grpc.insecure_channel(self.target, options=_CHANNEL_OPTIONS)
        return grpc.secure_channel(self.target, self._credentials, options=_CHANNEL_OPTIONS)

    def _run(self) -> None:
        backoff_s = 0.2
        while not self._stop.is_set():
            try:
                got_one = self._watch_once()
            except Exception as exc:  # a bug, never the daemon's data: say so, and go on
                self._set_connected(False, f"client error: {type(exc).__name__}: {exc}")
                got_one = False
            if self._stop.is_set():
                break
            if got_one:
                backoff_s = 0.2  # it worked for a while: start over from a short wait
            # Full jitter over the upper half: clients of one restarted daemon spread out.
            if self._stop.wait(backoff_s * random.uniform(0.5, 1.0)):
                break
            backoff_s = min(backoff_s * 2, self.reconnect_max_s)
            self.reconnects += 1

    def _watch_once(self) -> bool:
        """One stream until it ends or breaks; True when it delivered a Snapshot."""
        got_one = False
        with self._channel() as channel:
            call = pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest())
            self._call = call
            if self._stop.is_set():  # close() came before the call existed
                call.cancel()
            try:
                # Waits for the daemon to accept the stream (or for the call to fail).
                if any(k == "wasmtop-schema" for k, _ in call.initial_metadata() or ()):
                    self._set_connected(True)
                for message in call:
                    try:
                        snapshot = snapshot_from_json(message.json)
                    except Exception as exc:  # ValueError from the decoder; anything else too
                        self.unreadable += 1
                        why = exc if isinstance(exc, ValueError) else repr(exc)
                        self._set_connected(
                            False, f"unreadable Snapshot ({self.unreadable} so far): {why}"
                        )
                        return got_one
                    with self._cond:
                        self._latest = snapshot
                        self.sequence = message.sequence
                        self.received += 1
                        self._cond.notify_all()
                    got_one = True
                self._set_connected(False, "the daemon ended the stream")
            except grpc.RpcError as err:
                self._set_connected(False, describe(err))
            finally:
                self._call = None
                call.cancel()
        return got_one

    def _set_connected(self, connected: bool, error: str | None = None) -> None:
        if self._stop.is_set():
            return
        if connected != self.connected:
            self.since_s = time.monotonic()
        if error is not None:  # may hold the daemon's words: shown on a terminal
            error = safe(error)
            if len(error) > ERROR_CHARS:
                error = error[: ERROR_CHARS - 3] + "..."
        self.error = error
        self.connected = connected


_UNAVAILABLE = (  # (in the details, for a person), first match wins
    ("connection refused", "connection refused"),
    ("certificate_verify_failed", "TLS: the daemon's certificate is not signed by the CA file"),
    ("wrong_version_number", "TLS handshake failed: the daemon does not serve TLS"),
    ("handshake", "TLS handshake failed"),
    ("ssl_error", "TLS handshake failed"),
    ("dns", "cannot resolve the host name"),
    ("name resolution", "cannot resolve the host name"),
    ("timed out", "connection timed out"),
    ("deadline", "connection timed out"),
    ("no route", "no route to host"),
    ("network is unreachable", "network unreachable"),
    ("reset", "connection lost"),
    ("socket closed", "connection lost"),
    ("broken pipe", "connection lost"),
    ("goaway", "connection lost"),
    ("eof", "connection lost"),
)


def describe(err: grpc.RpcError) -> str:
    """A failed call's reason for a person: "connection refused", "daemon stopped", ..."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or ""
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        at_setup = lowered.startswith("failed to connect")
        for needle, text in _UNAVAILABLE:
            if needle in lowered:
                if text == "connection lost" and at_setup:
                    return "connection closed during setup (does the daemon want TLS?)"
                return text
        if details and "\n" not in details and len(details) <= 80:
            return details  # the daemon's own words, e.g. "daemon stopped"
        return "daemon unavailable"
    name = code.name.lower().replace("_", " ") if code is not None else "error"
    return f"{name}: {details}" if details else name
