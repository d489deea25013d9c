"""The gRPC API: ``wasmtop.v1.Snapshots/Watch`` streams the daemon's Snapshots (docs/grpc.md).

``SnapshotServer`` runs in the daemon. ``publish()`` is called by the collector loop after each
tick and never blocks it: it stores the Snapshot and wakes the streams. A Snapshot is encoded
once, by the first stream that sends it (with no client watching, nothing is encoded). Each
stream sends the newest Snapshot whenever it is ready for one, so a slow client skips Snapshots
(counted) instead of building up a queue.

The API is request data (trace ids, paths, pod names), so who may connect is decided before
a stream starts: by default it listens on a Unix socket only its owner (root) can open
(``unix:/run/wasmtop/grpc.sock``, mode 0600, or 0660 for one group); on TCP it can require
client certificates signed by a CA. Every peer is bounded: a handshake deadline, a small request
size, a number of connections, streams in all and streams per peer (counted when refused). A
stream takes its place before its request is read, and one whose request does not come within
``request_timeout_s`` is cancelled (counted): a worker waiting for a request it never gets would
otherwise be outside every limit.

``RemoteSnapshots`` is the client (``wasmtop --connect``): a background thread that watches,
decodes each message back into a Snapshot, and reconnects with exponential backoff and jitter
when the stream breaks.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import socket
import stat
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
from google.protobuf.message import DecodeError  # noqa: E402

from .collector.model import SCHEMA, Snapshot
from .collector.snapshot_json import snapshot_from_json
from .config import GRPC_SOCKET, MAX_UNIX_PATH_BYTES, UNIX_PREFIX
from .filters import FilterError, WorkloadFilter
from .filters import parse as parse_filter
from .proto.wasmtop.v1 import snapshots_pb2 as pb
from .proto.wasmtop.v1 import snapshots_pb2_grpc as pb_grpc
from .safe import safe

DEFAULT_LISTEN = GRPC_SOCKET
METHOD = "wasmtop.v1.Snapshots/Watch"
# A Snapshot of a busy node (1,000 workloads, 10,000 traces) is several MB: above gRPC's
# default 4 MB limit for a received message. Also the client's bound on what a daemon can make
# it parse; the JSON's nesting is bounded too (snapshot_json.MAX_JSON_DEPTH).
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
ERROR_CHARS = 200  # the longest ``error`` a client shows (a daemon's words may be longer)
# What one peer can hold, beside the streams (grpc.max_streams, grpc.max_streams_per_peer):
HANDSHAKE_TIMEOUT_S = 10  # TCP accepted to HTTP/2 settings (and TLS) done, or closed
NO_FILTER = WorkloadFilter()
MAX_REQUEST_BYTES = 4096  # a WatchRequest is 2 bytes
IDLE_CONNECTION_S = 60  # a connection with no stream open is closed after this
REQUEST_TIMEOUT_S = 5.0  # a stream opened to its request read, or cancelled
STALL_S = 60.0  # a Snapshot not taken by its client in this long: the stream is cancelled
_SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_REQUEST_BYTES),
    # A Snapshot above the client's own bound would be sent, refused and sent again at every
    # reconnect: refused here instead.
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_connection_idle_ms", IDLE_CONNECTION_S * 1000),
    # Never share the port with another process (gRPC sets SO_REUSEPORT by default): a second
    # daemon on the same address must fail to start, not take half the clients.
    ("grpc.so_reuseport", 0),
    # A client that vanished without closing its connection frees its stream within ~40 s.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    # Accept the client's keepalive pings (below, every 10 s) without calling them abuse; a
    # peer pinging faster than every 5 s is sent away (GOAWAY) at its third such ping.
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_ping_strikes", 2),
    # ... also on a connection with no stream open (else gRPC wants 2 h between those pings).
    ("grpc.keepalive_permit_without_calls", 1),
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

    __slots__ = ("snapshot", "sequence", "_messages", "_lock")

    def __init__(self, snapshot: Snapshot, sequence: int) -> None:
        self.snapshot = snapshot
        self.sequence = sequence
        self._messages: dict[WorkloadFilter, pb.Snapshot] = {}  # at most one per open stream
        self._lock = threading.Lock()

    def message(self, chosen: WorkloadFilter = NO_FILTER) -> pb.Snapshot:
        """The message for the streams with this filter (none: all), encoded once each."""
        with self._lock:
            message = self._messages.get(chosen)
            if message is None:
                message = self._messages[chosen] = self._encode(chosen.apply(self.snapshot))
            return message

    def _encode(self, s: Snapshot) -> pb.Snapshot:
        return pb.Snapshot(
            schema=s.schema,
            json=s.to_json(indent=None),
            sequence=self.sequence,
            host=s.host,
            window_s=s.window_s,
            workloads=len(s.workloads),
        )


class SnapshotServer:
    """``wasmtop.v1.Snapshots`` on ``listen``: ``unix:PATH`` (a socket of mode 0600, or 0660
    with ``socket_group``) or ``HOST:PORT``, with TLS when given a certificate and its key (PEM
    files) and client certificates required when given ``client_ca_file``. Raises OSError when
    the address cannot be bound (or the socket's directory is not safe to use)."""

    def __init__(
        self,
        listen: str = DEFAULT_LISTEN,
        *,
        tls_cert_file: str | None = None,
        tls_key_file: str | None = None,
        client_ca_file: str | None = None,
        socket_group: int | None = None,
        max_streams: int = 16,
        max_streams_per_peer: int | None = None,
        handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        stall_s: float = STALL_S,
    ) -> None:
        if (tls_cert_file is None) != (tls_key_file is None):
            raise ValueError("expected both tls_cert_file and tls_key_file, or neither")
        if client_ca_file is not None and tls_cert_file is None:
            raise ValueError("client_ca_file needs tls_cert_file and tls_key_file")
        self.listen = listen
        self.tls = tls_cert_file is not None
        self.client_auth = client_ca_file is not None
        self.max_streams = max_streams
        self.max_streams_per_peer = max_streams_per_peer or max_streams
        self.request_timeout_s = request_timeout_s
        self.stall_s = stall_s
        # Streams whose Snapshot is being sent: since when (monotonic), by their context. A
        # client that stops reading holds its place (and a worker) for good otherwise: its
        # connection still answers keepalive pings.
        self._sending: dict[Any, float] = {}
        # Connections: one per client normally; the rest of the room is for clients being
        # refused or reconnecting. One without a stream is closed after IDLE_CONNECTION_S.
        self.max_connections = 2 * max_streams + 4
        self.streams = 0  # Watch streams open now
        self.sent = 0  # Snapshots sent, over all streams
        self.dropped = 0  # Snapshots a stream skipped because it read slower than they came
        # Streams refused, by why: "busy" (max_streams open), "peer_busy" (that peer's share),
        # "no_request" (no request within request_timeout_s: cancelled), "invalid_request" (a
        # request that is no WatchRequest, or a filter that does not parse), "stalled" (a
        # Snapshot not taken within stall_s: cancelled).
        self.rejected: dict[str, int] = dict.fromkeys(
            ("busy", "peer_busy", "no_request", "invalid_request", "stalled"), 0
        )
        self._per_peer: dict[str, int] = {}  # open streams by peer (address or identity)
        self._latest: _Published | None = None
        self._sequence = 0
        self._closed = False
        self._cond = threading.Condition()
        self._socket: tuple[Path, int, int] | None = None  # (path, st_dev, st_ino) we made
        # Every stream holds a worker for its life, from before its request is read; two more
        # answer those beyond the limit.
        self._workers = ThreadPoolExecutor(
            max_workers=max_streams + 2, thread_name_prefix="wasmtop-grpc"
        )
        self._server = grpc.server(
            self._workers,
            options=[
                *_SERVER_OPTIONS,
                ("grpc.server_handshake_timeout_ms", int(handshake_timeout_s * 1000)),
                ("grpc.max_allowed_incoming_connections", self.max_connections),
            ],
            maximum_concurrent_rpcs=max_streams + 2,
        )
        # Registered as a stream of requests (the wire is the same as the generated unary
        # request's): the handler runs before the request is read, so that a peer that never
        # sends it is counted against the limits and cancelled. Raw bytes in: a request that
        # does not decode is answered here (INVALID_ARGUMENT, counted), not logged by gRPC.
        service, _, method = METHOD.partition("/")
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    service,
                    {
                        method: grpc.stream_stream_rpc_method_handler(
                            self._watch, response_serializer=pb.Snapshot.SerializeToString
                        )
                    },
                ),
            )
        )
        path = unix_path(listen)
        if path is not None:
            if self.tls:
                raise ValueError("TLS is for a TCP listen; a unix socket has its file mode")
            _prepare_socket_path(path)
        try:
            if self.tls:
                pair = (Path(tls_key_file).read_bytes(), Path(tls_cert_file).read_bytes())
                credentials = grpc.ssl_server_credentials(
                    [pair],
                    root_certificates=(
                        Path(client_ca_file).read_bytes() if client_ca_file is not None else None
                    ),
                    require_client_auth=client_ca_file is not None,
                )
                port = self._server.add_secure_port(listen, credentials)
            elif path is not None:
                # Made owner-only from its first instant (umask), then given its group.
                old_umask = os.umask(0o177)
                try:
                    port = self._server.add_insecure_port(listen)
                finally:
                    os.umask(old_umask)
            else:
                port = self._server.add_insecure_port(listen)
        except RuntimeError:  # grpcio >= 1.59 raises where older ones returned 0
            port = 0
        if port == 0:
            self._server.stop(None)
            why = _why_unbindable(listen) if path is None else "cannot bind the socket"
            raise OSError(f"cannot listen on {listen}: {why}")
        if path is not None:
            try:
                self._socket = _own_socket(path, socket_group)
            except OSError:
                self._server.stop(None)
                raise
        self.port = port
        self._server.start()

    # -- the daemon's side -------------------------------------------------------------------
    def publish(self, snapshot: Snapshot) -> None:
        """The newest Snapshot; wakes the streams, and cancels those whose client has not taken
        the Snapshot being sent to it for stall_s. Never blocks for long: no encoding, no I/O."""
        now = time.monotonic()
        with self._cond:
            self._sequence += 1
            self._latest = _Published(snapshot, self._sequence)
            self._cond.notify_all()
            stalled = [c for c, since in self._sending.items() if now - since > self.stall_s]
            for context in stalled:
                del self._sending[context]
                self.rejected["stalled"] += 1
        for context in stalled:
            context.cancel()  # its send fails, and the stream ends (its place is freed)

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
            for why, n in old.rejected.items():
                self.rejected[why] = self.rejected.get(why, 0) + n
            self._sequence = max(self._sequence, old._sequence)
            if self._latest is None and old._latest is not None:
                self._latest = old._latest

    def close(self, grace_s: float = 1.0) -> None:
        """End every stream (UNAVAILABLE "daemon stopped") and stop listening."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._server.stop(grace_s).wait(grace_s + 1.0)
        self._workers.shutdown(wait=False, cancel_futures=True)  # gRPC leaves its pool running
        if self._socket is not None:
            _remove_socket(*self._socket)
            self._socket = None

    def families(self) -> list[Any]:
        """Its figures for /metrics (exporters/series.py families)."""
        from .exporters.series import Family, Sample

        g = self
        return [
            Family(
                "wasmtop_grpc_streams",
                "gauge",
                "Watch streams of the gRPC API open now.",
                (),
                [Sample((), float(g.streams))],
            ),
            Family(
                "wasmtop_grpc_snapshots_sent",
                "counter",
                "Snapshots sent over the gRPC API, all streams added up.",
                (),
                [Sample((), float(g.sent))],
            ),
            Family(
                "wasmtop_grpc_snapshots_skipped",
                "counter",
                "Snapshots a gRPC stream skipped because its client read slower than they came "
                "(it got the newest one instead).",
                (),
                [Sample((), float(g.dropped))],
            ),
            Family(
                "wasmtop_grpc_streams_rejected",
                "counter",
                "Watch streams refused, by reason: busy (grpc.max_streams were open), "
                "peer_busy (grpc.max_streams_per_peer of that client were open), no_request "
                "(none within 5 s: cancelled), invalid_request (no WatchRequest, or a filter "
                "that does not parse), stalled (a Snapshot not taken by its client within 60 s: "
                "cancelled).",
                ("reason",),
                [Sample((why,), float(n)) for why, n in sorted(g.rejected.items())],
            ),
        ]

    # -- one stream each -----------------------------------------------------------------------
    def _watch(self, requests: Any, context: grpc.ServicerContext) -> Any:
        """One Watch stream: ``requests`` yields its one request, raw bytes. A generator from
        the first line: a stream whose first message is never asked for (the client left at
        once) has counted nothing, so there is nothing to undo."""
        peer, opened_at = self._admit(context)
        try:
            request = self._request(requests, context)
            if request is None:
                return
            try:
                chosen = parse_filter(request.filter)
            except FilterError as exc:
                self._invalid(context, f"filter: {exc}")
            # only_new: what was published after the stream opened (its request may come later;
            # a Snapshot published in between is new to it)
            yield from self._stream(context, chosen, opened_at if request.only_new else 0)
        finally:
            with self._cond:
                self.streams -= 1
                if peer is not None:
                    left = self._per_peer.pop(peer) - 1
                    if left:
                        self._per_peer[peer] = left
        if self._closed:
            context.abort(grpc.StatusCode.UNAVAILABLE, "daemon stopped")

    def _admit(self, context: grpc.ServicerContext) -> tuple[str | None, int]:
        """A place for the stream, taken before its request is read (refused and counted when
        there is none): its peer's key, and the newest Snapshot's number then."""
        with self._cond:
            if self._closed:
                context.abort(grpc.StatusCode.UNAVAILABLE, "daemon stopped")
            if self.streams >= self.max_streams:
                self.rejected["busy"] += 1
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self.streams} streams open: the daemon's limit (grpc.max_streams)",
                )
            peer = peer_key(context)
            if peer is not None and self._per_peer.get(peer, 0) >= self.max_streams_per_peer:
                self.rejected["peer_busy"] += 1
                context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"{self._per_peer[peer]} streams open from {safe(peer)}: the daemon's limit "
                    "per peer (grpc.max_streams_per_peer)",
                )
            self.streams += 1
            if peer is not None:
                self._per_peer[peer] = self._per_peer.get(peer, 0) + 1
            return peer, self._sequence

    def _request(self, requests: Any, context: grpc.ServicerContext) -> pb.WatchRequest | None:
        """The stream's request, read within request_timeout_s; None when it did not come in
        time (the stream is cancelled, counted "no_request") or the client left."""
        decided = threading.Lock()  # the timer and the read: whichever takes it decides

        def expire() -> None:
            if decided.acquire(blocking=False):
                context.cancel()

        timer = threading.Timer(self.request_timeout_s, expire)
        timer.daemon = True
        timer.start()
        try:
            raw = next(requests, None)
        except grpc.RpcError:  # cancelled: by the timer, or the client went away
            raw = None
        timer.cancel()
        if not decided.acquire(blocking=False):  # the timer came first: cancelled
            with self._cond:
                self.rejected["no_request"] += 1
            return None
        if raw is None:
            if context.is_active():  # half-closed without a request
                self._invalid(context, "expected one WatchRequest")
            return None
        try:
            return pb.WatchRequest.FromString(raw)
        except DecodeError:
            self._invalid(context, "the request is not a WatchRequest")
        return None

    def _invalid(self, context: grpc.ServicerContext, why: str) -> None:
        with self._cond:
            self.rejected["invalid_request"] += 1
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, why)

    def _stream(self, context: grpc.ServicerContext, chosen: WorkloadFilter, last: int) -> Any:
        """The newest Snapshot whenever the client is ready for one, until it leaves or the
        daemon stops."""

        def wake() -> None:
            with self._cond:
                self._cond.notify_all()

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
                if self._closed or not context.is_active():
                    return
                published = self._latest
                if last:
                    self.dropped += published.sequence - last - 1
                last = published.sequence
                self.sent += 1  # handed to gRPC (a client may still leave before it lands)
            # Blocks while the client's window is full (until stall_s: publish cancels it). One
            # encoding per filter and tick.
            message = published.message(chosen)
            with self._cond:
                self._sending[context] = time.monotonic()
            try:
                yield message  # resumed when gRPC has sent it and asks for the next
            finally:
                with self._cond:
                    self._sending.pop(context, None)


def unix_path(listen: str) -> Path | None:
    """The socket's path of a ``unix:PATH`` listen or target; None for ``HOST:PORT``."""
    return Path(listen[len(UNIX_PREFIX) :]) if listen.startswith(UNIX_PREFIX) else None


def peer_key(context: grpc.ServicerContext) -> str | None:
    """Whose stream this is, for the per-peer limit: the client certificate's names when TLS
    authenticated it, else its IP address (any port). None on a Unix socket: every client there
    passed the socket's file mode, and gRPC does not say which user it is."""
    identities = context.peer_identities()
    if identities:
        return ",".join(i.decode("utf-8", "replace") for i in identities)
    peer = context.peer() or ""
    kind, _, address = peer.partition(":")
    if kind == "ipv4":
        return address.rpartition(":")[0] or address
    if kind == "ipv6":
        return address.rpartition(":")[0].strip("[]") or address
    return None


def _prepare_socket_path(path: Path) -> None:
    """The socket's directory made or checked (wasmtop's own, writable by no one else), and a
    socket left there by a daemon that is gone removed; a socket another daemon serves is
    "Address already in use" (gRPC would silently unlink it and take its place)."""
    from .probes.pins import PinUnavailable, safe_dir

    if not path.is_absolute() or len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise OSError(
            f"cannot listen on unix:{path}: expected an absolute path of at most "
            f"{MAX_UNIX_PATH_BYTES} bytes"
        )
    try:
        safe_dir(path.parent)
    except PinUnavailable as exc:
        raise OSError(f"cannot listen on unix:{path}: {exc}") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(f"cannot listen on unix:{path}: it exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)  # a listener whose backlog is full: EAGAIN at once, in use
        try:
            probe.connect(str(path))
        except BlockingIOError:
            raise OSError(f"cannot listen on unix:{path}: Address already in use") from None
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise OSError(f"cannot listen on unix:{path}: {exc.strerror}") from None
        else:
            raise OSError(f"cannot listen on unix:{path}: Address already in use")
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # nobody listens: a stale socket of a daemon that was killed


def _own_socket(path: Path, group: int | None) -> tuple[Path, int, int]:
    """Give the socket gRPC made its mode (0600; 0660 and ``group``); its identity, so that
    close() removes this socket and never a successor's."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"cannot listen on unix:{path}: the socket was replaced")
        if group is not None:
            os.chown(path, -1, group, follow_symlinks=False)
        os.chmod(path, 0o660 if group is not None else 0o600)
        return path, st.st_dev, st.st_ino
    finally:
        os.close(fd)


def _remove_socket(path: Path, dev: int, ino: int) -> None:
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            path.unlink()


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
    """A daemon's Snapshots (``target``: its ``grpc.listen``, ``unix:PATH`` or ``HOST:PORT``).
    TLS when ``ca_file`` or a client certificate is given: the daemon's certificate verified
    against ``ca_file`` (gRPC's own roots without it), and ``cert_file`` with ``key_file``
    presented to a daemon that requires client certificates. Plaintext otherwise.

    ``latest()`` returns the newest Snapshot not yet returned. ``connected``, ``error`` (why the
    last stream failed, for a person: "connection refused", "daemon stopped", ...), ``since_s``
    (``time.monotonic()`` when ``connected`` last changed), ``reconnects`` (attempts after a
    failure) and ``ended`` (why the last connected stream ended: ``error`` moves on to the
    reconnect attempts' reasons, "no socket there ...", within a fraction of a second) say how
    the connection is; they are plain attributes, read without a lock.

    A message that does not decode into a Snapshot (not JSON, nested too deeply, a value of the
    wrong type: snapshot_json.py) is counted in ``unreadable`` and ends the stream with ``error``
    "unreadable Snapshot ...", so the UI's banner says so while the client reconnects; the
    Snapshot shown stays the last good one. Nothing a daemon sends ends the receiving thread.
    """

    def __init__(
        self,
        target: str,
        *,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        reconnect_max_s: float = 5.0,
        filter: str = "",
    ) -> None:
        if (cert_file is None) != (key_file is None):
            raise ValueError("expected both cert_file and key_file, or neither")
        parse_filter(filter)  # FilterError (a ValueError) here, not a daemon's refusal later
        self.filter = filter
        self.target = target
        self.ca_file = ca_file
        self.client_cert = cert_file is not None
        self.reconnect_max_s = reconnect_max_s
        self.connected = False
        self.error: str | None = None
        self.ended: str | None = None
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
        self._credentials = None
        if ca_file is not None or cert_file is not None:

            def read(name: str | None) -> bytes | None:
                return None if name is None else Path(name).read_bytes()

            self._credentials = grpc.ssl_channel_credentials(
                root_certificates=read(ca_file),
                private_key=read(key_file),
                certificate_chain=read(cert_file),
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
            call = pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest(filter=self.filter))
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
                self._set_connected(
                    False, describe(err, tls=self._credentials is not None, cert=self.client_cert)
                )
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
        if self.connected and not connected:
            self.ended = error
        self.connected = connected


_UNAVAILABLE = (  # (in the details, for a person), first match wins
    ("connection refused", "connection refused"),
    ("no such file or directory", "no socket there (is the daemon running?)"),
    ("permission denied", "permission denied on the socket (root, or grpc.socket_group)"),
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


def describe(err: grpc.RpcError, *, tls: bool = False, cert: bool = False) -> str:
    """A failed call's reason for a person: "connection refused", "daemon stopped", ...;
    ``tls``: the client spoke TLS, ``cert``: with a client certificate."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or ""
    lowered = details.lower()
    if code == grpc.StatusCode.UNAVAILABLE:
        at_setup = lowered.startswith("failed to connect")
        for needle, text in _UNAVAILABLE:
            if needle in lowered:
                if text == "connection lost" and at_setup:
                    if not tls:
                        return "connection closed during setup (does the daemon want TLS?)"
                    if not cert:
                        return (
                            "TLS handshake refused (does the daemon require a client "
                            "certificate? --cert-file, --key-file)"
                        )
                    return "TLS handshake refused: the daemon does not accept this certificate"
                return text
        if details and "\n" not in details and len(details) <= 80:
            return details  # the daemon's own words, e.g. "daemon stopped"
        return "daemon unavailable"
    name = code.name.lower().replace("_", " ") if code is not None else "error"
    return f"{name}: {details}" if details else name
