"""Who may read the gRPC API, and how much one peer can hold (wasmtop/grpcapi.py): the Unix
socket's file mode against a real other user, client certificates against a real CA, streams
per peer, and gRPC core's limits on handshakes, connections and request size."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from peers import free_port
from support import nonzero, wait_for
from wasmtop.grpcapi import MAX_REQUEST_BYTES, METHOD, RemoteSnapshots, SnapshotServer
from wasmtop.proto.wasmtop.v1 import snapshots_pb2 as pb
from wasmtop.proto.wasmtop.v1 import snapshots_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder

ROOT = Path(__file__).resolve().parents[2]
NOBODY = 65534  # uid and gid of a user that is not root (nobody / nogroup)


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    """A short directory (a socket's path holds 107 bytes) that other users may traverse."""
    d = Path(tempfile.mkdtemp(prefix="wt-"))
    d.chmod(0o755)
    yield d
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


def as_nobody(target: str) -> str:
    """What RemoteSnapshots says, run by uid/gid 65534 with no other groups: "snapshot" or
    its error."""
    code = textwrap.dedent(
        f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from wasmtop.grpcapi import RemoteSnapshots
        with RemoteSnapshots({target!r}) as r:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if r.latest(0.2) is not None:
                    print("snapshot"); break
                if r.error is not None:
                    print(r.error); break
        """
    )
    out = subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups",
         sys.executable, "-c", code],
        capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def first_snapshot(target: str, **tls: str) -> str:
    """ "snapshot" when a Snapshot arrives, else the client's error."""
    with RemoteSnapshots(target, **tls) as r:
        assert wait_for(lambda: r.received or r.error is not None, timeout_s=30)
        return "snapshot" if r.received else r.error


# -- the Unix socket ----------------------------------------------------------------------------
def test_the_socket_is_root_only_by_default_and_a_group_can_be_let_in(sock_dir):
    path = sock_dir / "grpc.sock"
    srv = SnapshotServer(f"unix:{path}")
    srv.publish(snapshot(1))
    try:
        st = path.lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (os.geteuid(), 0o600)
        assert first_snapshot(f"unix:{path}") == "snapshot"
        said = as_nobody(f"unix:{path}")
        assert said == "permission denied on the socket (root, or grpc.socket_group)"
    finally:
        srv.close(0)
    assert not path.exists()  # close() removes the socket it made

    srv = SnapshotServer(f"unix:{path}", socket_group=NOBODY)
    srv.publish(snapshot(1))
    try:
        st = path.lstat()
        assert (st.st_gid, st.st_mode & 0o777) == (NOBODY, 0o660)
        assert as_nobody(f"unix:{path}") == "snapshot"
    finally:
        srv.close(0)


def test_a_stale_socket_is_replaced_a_served_one_is_not_and_nothing_else_is_touched(sock_dir):
    path = sock_dir / "grpc.sock"
    with socket.socket(socket.AF_UNIX) as stale:  # a killed daemon's socket: nobody listens
        stale.bind(str(path))
    srv = SnapshotServer(f"unix:{path}")
    srv.publish(snapshot(1))
    try:
        with pytest.raises(OSError, match=f"cannot listen on unix:{path}: Address already in use"):
            SnapshotServer(f"unix:{path}")
        assert first_snapshot(f"unix:{path}") == "snapshot"  # the first one still serves
    finally:
        srv.close(0)

    path.write_text("not a socket")
    with pytest.raises(OSError, match="it exists and is not a socket"):
        SnapshotServer(f"unix:{path}")
    assert path.read_text() == "not a socket"

    theirs = sock_dir / "theirs"
    theirs.mkdir()
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(OSError, match=f"{theirs} belongs to uid {NOBODY}"):
        SnapshotServer(f"unix:{theirs}/grpc.sock")
    assert list(theirs.iterdir()) == []
    theirs.rmdir()


def test_a_served_socket_whose_backlog_is_full_is_in_use_not_stale(sock_dir):
    path = sock_dir / "grpc.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as busy:
        busy.bind(str(path))
        busy.listen(0)  # never accepts
        waiting = []
        try:
            while True:  # fill its backlog: a blocking connect would now wait forever
                c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                c.setblocking(False)
                waiting.append(c)
                c.connect(str(path))
        except BlockingIOError:
            pass
        try:
            with pytest.raises(OSError, match="Address already in use"):
                SnapshotServer(f"unix:{path}")
            assert path.exists()  # left to the daemon that serves it
        finally:
            for c in waiting:
                c.close()


def test_a_unix_socket_has_no_limit_per_peer_only_the_total(sock_dir):
    target = f"unix:{sock_dir}/grpc.sock"
    srv = SnapshotServer(target, max_streams=3, max_streams_per_peer=1)
    srv.publish(snapshot(1))
    channel = grpc.insecure_channel(target)
    try:
        calls = [pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest()) for _ in range(3)]
        assert [next(c).sequence for c in calls] == [1, 1, 1]
        with pytest.raises(grpc.RpcError) as err:
            next(pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest()))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert nonzero(srv.rejected) == {"busy": 1}
    finally:
        channel.close()
        srv.close(0)


# -- client certificates ------------------------------------------------------------------------
def mtls_server(pki, **limits: int) -> SnapshotServer:
    cert, key = pki.server
    srv = SnapshotServer(
        f"127.0.0.1:{free_port()}",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        client_ca_file=str(pki.ca),
        **limits,
    )
    srv.publish(snapshot(1))
    return srv


def test_only_clients_with_a_certificate_of_the_ca_get_snapshots(pki):
    srv = mtls_server(pki)
    target = f"127.0.0.1:{srv.port}"
    ca = str(pki.ca)
    try:
        cert, key = pki.oncall
        assert first_snapshot(target, ca_file=ca, cert_file=str(cert), key_file=str(key)) == (
            "snapshot"
        )
        assert first_snapshot(target, ca_file=ca) == (
            "TLS handshake refused (does the daemon require a client certificate? "
            "--cert-file, --key-file)"
        )
        cert, key = pki.stranger  # the same name, signed by another CA
        said = first_snapshot(target, ca_file=ca, cert_file=str(cert), key_file=str(key))
        assert said == "TLS handshake refused: the daemon does not accept this certificate"
        assert first_snapshot(target) == (
            "connection closed during setup (does the daemon want TLS?)"
        )
        assert srv.sent == 1  # only the one with a certificate of the CA got a Snapshot
    finally:
        srv.close(0)


def watch(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Call:
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    return pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest(), timeout=30)


def test_one_certificate_cannot_hold_every_stream_another_still_gets_one(pki):
    srv = mtls_server(pki, max_streams=4, max_streams_per_peer=2)
    target = f"127.0.0.1:{srv.port}"

    def as_(who: tuple[Path, Path]) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            pki.ca.read_bytes(), who[1].read_bytes(), who[0].read_bytes()
        )

    try:
        oncall = [watch(target, as_(pki.oncall)) for _ in range(2)]
        assert [next(c).sequence for c in oncall] == [1, 1]
        third = watch(target, as_(pki.oncall))  # a new connection: the certificate counts
        with pytest.raises(grpc.RpcError) as err:
            next(third)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "from oncall.example" in err.value.details()
        assert "grpc.max_streams_per_peer" in err.value.details()
        assert next(watch(target, as_(pki.dashboard))).sequence == 1
        assert nonzero(srv.rejected) == {"peer_busy": 1}
        oncall[0].cancel()
        assert wait_for(lambda: srv._per_peer.get("oncall.example") == 1)
        assert next(watch(target, as_(pki.oncall))).sequence == 1  # its place came free
    finally:
        srv.close(0)


def test_without_certificates_one_address_cannot_hold_every_stream():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", max_streams=4, max_streams_per_peer=2)
    srv.publish(snapshot(1))
    target = f"127.0.0.1:{srv.port}"
    try:
        held = [watch(target) for _ in range(2)]
        assert [next(c).sequence for c in held] == [1, 1]
        with pytest.raises(grpc.RpcError) as err:
            next(watch(target))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "from 127.0.0.1:" in err.value.details() and srv.streams == 2
        assert nonzero(srv.rejected) == {"peer_busy": 1}
    finally:
        srv.close(0)


# -- what gRPC core bounds for us ---------------------------------------------------------------
def read_until_closed(s: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a 60 s guard, not a
    measure)."""
    s.settimeout(60)
    got = b""
    while chunk := s.recv(4096):
        got += chunk
    return got


def still_open(s: socket.socket) -> bool:
    """The server has not closed ``s`` (what it sent so far, its HTTP/2 settings, is read)."""
    s.settimeout(0.5)
    try:
        while s.recv(4096):
            pass
    except TimeoutError:
        return True
    return False


def test_a_silent_connection_is_closed_after_the_handshake_deadline():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", handshake_timeout_s=1)
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as silent:
            said = read_until_closed(silent)  # sends nothing: no HTTP/2 preface
        assert b"handshake timeout" in said
    finally:
        srv.close(0)


def test_connections_beyond_the_limit_are_closed_at_once_the_others_stay():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", max_streams=1)
    assert srv.max_connections == 6
    held = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
    try:
        with socket.create_connection(("127.0.0.1", srv.port)) as extra:
            assert read_until_closed(extra) == b""  # closed without a word
        assert all(still_open(s) for s in held)  # each waiting for its handshake
    finally:
        for s in held:
            s.close()
        srv.close(0)


def test_a_request_larger_than_the_bound_is_refused():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}")
    srv.publish(snapshot(1))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{srv.port}")
        raw = channel.unary_stream(f"/{METHOD}")  # bytes in, bytes out
        # Field 15 (unknown to WatchRequest), length-delimited, above MAX_REQUEST_BYTES.
        size = MAX_REQUEST_BYTES + 1
        body = bytes([0x7A]) + _varint(size) + b"x" * size
        with pytest.raises(grpc.RpcError) as err:
            next(raw(body, timeout=30))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = raw(bytes([0x7A, 3]) + b"abc", timeout=30)  # unknown but small: served
        assert pb.Snapshot.FromString(next(small)).sequence == 1
        small.cancel()
        assert srv.streams in (0, 1)
    finally:
        srv.close(0)


def test_a_stream_that_never_sends_its_request_holds_a_place_only_until_its_deadline():
    srv = SnapshotServer(
        f"127.0.0.1:{free_port()}", max_streams=2, max_streams_per_peer=2, request_timeout_s=1
    )
    srv.publish(snapshot(1))
    target = f"127.0.0.1:{srv.port}"
    release = threading.Event()

    def never() -> Iterator[bytes]:  # opens the stream, never sends the request
        release.wait(60)
        yield from ()

    try:
        raw = grpc.insecure_channel(target).stream_stream(f"/{METHOD}")
        silent = [raw(never(), timeout=60) for _ in range(2)]
        # Waiting for their requests, they hold their places: a third stream is refused.
        assert wait_for(lambda: srv.streams == 2)
        with pytest.raises(grpc.RpcError) as err:
            next(watch(target))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        # At the deadline each is cancelled and counted, and the places are free again.
        for call in silent:
            with pytest.raises(grpc.RpcError) as err:
                next(call)
            assert err.value.code() == grpc.StatusCode.CANCELLED
        assert wait_for(lambda: srv.streams == 0)
        assert nonzero(srv.rejected) == {"busy": 1, "no_request": 2}
        assert next(watch(target)).sequence == 1
    finally:
        release.set()
        srv.close(0)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"\xff\xff\xff", "not a WatchRequest"),  # field 31 with wire type 7: no protobuf
        (pb.WatchRequest(filter="ns:").SerializeToString(), "filter:"),
    ],
)
def test_a_request_that_does_not_parse_is_invalid_argument_and_counted(body, why):
    srv = SnapshotServer(f"127.0.0.1:{free_port()}")
    srv.publish(snapshot(1))
    try:
        raw = grpc.insecure_channel(f"127.0.0.1:{srv.port}").unary_stream(f"/{METHOD}")
        with pytest.raises(grpc.RpcError) as err:
            next(raw(body, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert why in err.value.details()
        assert srv.rejected["invalid_request"] == 1
        assert wait_for(lambda: srv.streams == 0)
    finally:
        srv.close(0)


def test_a_stream_closed_without_its_request_is_invalid_argument_and_counted():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}")
    try:
        raw = grpc.insecure_channel(f"127.0.0.1:{srv.port}").stream_stream(f"/{METHOD}")
        with pytest.raises(grpc.RpcError) as err:
            next(raw(iter(()), timeout=30))  # opened, half-closed at once
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "expected one WatchRequest" in err.value.details()
        assert srv.rejected["invalid_request"] == 1 and srv.rejected["no_request"] == 0
    finally:
        srv.close(0)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


# -- the config's grpc section ------------------------------------------------------------------
@pytest.mark.parametrize(
    "grpc_section, says",
    [
        ("listen: 127.0.0.1:9465",
         "w.yaml:2: grpc.listen: 127.0.0.1:9465 would serve the node's requests (trace ids, "
         "paths, pod names) to every process and host that can reach it: expected "
         "grpc.client_ca_file"),
        ("listen: unix:run/grpc.sock", "w.yaml:2: grpc.listen: expected unix:/ABSOLUTE/PATH"),
        (f"listen: unix:/{'x' * 107}", "w.yaml:2: grpc.listen: expected unix:/ABSOLUTE/PATH"),
        ("socket_group: no-such-group-here", "w.yaml:2: grpc.socket_group: no group"),
        ("listen: 127.0.0.1:9465\n  allow_unauthenticated: true\n  socket_group: 0",
         "w.yaml:4: grpc.socket_group: for a unix: grpc.listen only"),
        ("tls_cert_file: {cert}\n  tls_key_file: {key}",
         "w.yaml:2: grpc.tls_cert_file: TLS is for a TCP grpc.listen"),
        ("listen: 10.0.0.7:9465\n  client_ca_file: {ca}",
         "w.yaml:3: grpc.client_ca_file: client certificates need TLS"),
        ("listen: 10.0.0.7:9465\n  tls_cert_file: {cert}\n  tls_key_file: {key}\n"
         "  client_ca_file: {key}",
         "w.yaml:5: grpc.client_ca_file: expected PEM CA certificates"),
    ],
)  # fmt: skip
def test_a_grpc_section_that_would_expose_the_stream_or_cannot_work_is_refused(
    pki, grpc_section, says
):
    from wasmtop.config import ConfigError, parse

    cert, key = pki.server
    text = "grpc:\n  " + grpc_section.format(cert=cert, key=key, ca=pki.ca) + "\n"
    with pytest.raises(ConfigError) as err:
        parse(text, "w.yaml")
    assert str(err.value).startswith(says)


def test_the_ways_a_grpc_section_may_open_the_stream(tmp_path, pki):
    from wasmtop.config import parse
    from wasmtop.daemon import grpc_tls_files

    cert, key = pki.server
    ok = [
        "enabled: true",  # the default: the root-only socket
        "socket_group: nogroup",
        f"socket_group: {NOBODY}",
        "listen: 127.0.0.1:9465\n  allow_unauthenticated: true",
        "listen: 0.0.0.0:9465\n  enabled: false",  # off: nothing is exposed
        f"listen: 0.0.0.0:9465\n  tls_cert_file: {cert}\n  tls_key_file: {key}\n"
        f"  client_ca_file: {pki.ca}",
    ]
    for section in ok:
        parse(f"grpc:\n  {section}\n", "w.yaml")
    path = tmp_path / "wasmtop.yaml"
    for name, source in (("s.crt", cert), ("s.key", key), ("ca.crt", pki.ca)):
        (tmp_path / name).write_bytes(source.read_bytes())
    path.write_text(
        "grpc:\n  listen: 0.0.0.0:9465\n  tls_cert_file: s.crt\n  tls_key_file: s.key\n"
        "  client_ca_file: ca.crt\n"
    )
    config = parse(path.read_text(), str(path))
    assert grpc_tls_files(config, path) == tuple(
        str(tmp_path / n) for n in ("s.crt", "s.key", "ca.crt")
    )


def test_a_reload_after_the_client_ca_was_edited_in_place_applies_it(tmp_path, pki):
    """The daemon's reload path (the gRPC API alone): the section is unchanged, but its client
    CA file was rewritten to revoke the CA that signed the on-call certificate."""
    from wasmtop import daemon as daemon_module

    cert, key = pki.server
    for name, source in (("s.crt", cert), ("s.key", key), ("ca.crt", pki.ca)):
        (tmp_path / name).write_bytes(source.read_bytes())
    port = free_port()
    path = tmp_path / "wasmtop.yaml"
    path.write_text(
        f"metrics:\n  listen: 127.0.0.1:0\ngrpc:\n  listen: 127.0.0.1:{port}\n"
        "  tls_cert_file: s.crt\n  tls_key_file: s.key\n  client_ca_file: ca.crt\n"
    )
    d = daemon_module.Daemon(path, *daemon_module.load_all(path))
    target, ca = f"127.0.0.1:{port}", str(pki.ca)
    oncall = {"ca_file": ca, "cert_file": str(pki.oncall[0]), "key_file": str(pki.oncall[1])}
    try:
        d.start_grpc()
        d.grpc.publish(snapshot(1))
        assert first_snapshot(target, **oncall) == "snapshot"
        served = d.grpc
        d.reload()  # nothing changed: the same server, its streams untouched
        assert d.grpc is served
        # Another CA in its place (the stranger's certificate stands for it): on-call is out.
        (tmp_path / "ca.crt").write_bytes(pki.stranger[0].read_bytes())
        d.reload()
        assert d.grpc is not served and d.grpc.port == port
        d.grpc.publish(snapshot(2))
        said = first_snapshot(target, **oncall)
        assert said == "TLS handshake refused: the daemon does not accept this certificate"
    finally:
        if d.grpc is not None:
            d.grpc.close(0)
