"""The gRPC API without the daemon (wasmtop/grpcapi.py): SnapshotServer fed synthetic Snapshots
by publish(), watched with the generated stub and with RemoteSnapshots over real loopback
connections; and the config's grpc section."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from peers import free_port
from support import nonzero, wait_for
from wasmtop.collector.model import SCHEMA
from wasmtop.collector.snapshot_json import snapshot_from_dict
from wasmtop.config import ConfigError, parse
from wasmtop.daemon import grpc_tls_files
from wasmtop.grpcapi import METHOD, RemoteSnapshots, SnapshotServer, describe
from wasmtop.proto.wasmtop.v1 import snapshots_pb2 as pb
from wasmtop.proto.wasmtop.v1 import snapshots_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from synthetic import snapshot  # noqa: E402 - the benchmark's Snapshot builder


@pytest.fixture
def server():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", max_streams=2)
    yield srv
    srv.close(0.5)


def watch(target: str, **request: bool) -> grpc.Call:
    channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", -1)])
    return pb_grpc.SnapshotsStub(channel).Watch(pb.WatchRequest(**request), timeout=30)


def test_a_stream_gets_the_latest_snapshot_at_once_then_each_new_one(server):
    target = f"127.0.0.1:{server.port}"
    first, second = snapshot(3, seed=1), snapshot(2, seed=2)
    server.publish(first)
    call = watch(target)
    msg = next(call)
    assert (msg.schema, msg.sequence, msg.host, msg.window_s, msg.workloads) == (
        SCHEMA,
        1,
        "bench",
        1.0,
        3,
    )
    assert msg.json == first.to_json(indent=None)  # the documented JSON, byte for byte
    assert snapshot_from_dict(json.loads(msg.json)).to_dict() == first.to_dict()
    late = watch(target, only_new=True)  # does not get the one published before it came
    assert wait_for(lambda: server.streams == 2)
    server.publish(second)
    assert next(call).sequence == 2
    assert next(late).sequence == 2 and server.dropped == 0
    assert wait_for(lambda: server.sent == 3)
    call.cancel()
    late.cancel()
    assert wait_for(lambda: server.streams == 0)


def test_only_new_counts_from_the_streams_opening_not_from_its_requests_arrival(server):
    server.publish(snapshot(1))
    release = threading.Event()

    def late_request() -> Iterator[bytes]:
        release.wait(30)
        yield pb.WatchRequest(only_new=True).SerializeToString()

    raw = grpc.insecure_channel(f"127.0.0.1:{server.port}").stream_stream(f"/{METHOD}")
    call = raw(late_request(), timeout=30)
    try:
        assert wait_for(lambda: server.streams == 1)  # open, its request not yet in
        server.publish(snapshot(2))  # new to it: published after it opened
        release.set()
        assert pb.Snapshot.FromString(next(call)).sequence == 2
    finally:
        release.set()
        call.cancel()


def test_a_slow_client_gets_the_newest_snapshot_and_the_skipped_ones_are_counted(server):
    big = snapshot(400)  # ~1 MB of JSON: more than a stream's flow-control window
    server.publish(big)
    call = watch(f"127.0.0.1:{server.port}")
    assert next(call).sequence == 1
    for _ in range(10):  # while the client reads nothing
        server.publish(big)
    received = [next(call).sequence]
    while received[-1] != 11:
        received.append(next(call).sequence)
    assert received == sorted(set(received))  # never one twice, never an older one after
    assert server.dropped >= 1  # no backlog: it skipped to the newest
    assert wait_for(lambda: server.sent == 1 + len(received))
    assert 1 + len(received) + server.dropped == 11  # each one sent or counted as skipped
    call.cancel()


def test_a_client_that_stops_reading_is_cancelled_after_stall_s_and_frees_its_place():
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", max_streams=1, stall_s=1.0)
    big = snapshot(2000)  # several MB: far more than the flow-control window lets through
    try:
        srv.publish(big)
        call = watch(f"127.0.0.1:{srv.port}")
        assert next(call).sequence == 1
        for _ in range(20):  # the client reads no more: a send soon blocks on its window
            srv.publish(big)
            if wait_for(lambda: len(srv._sending) == 1, timeout_s=2):
                break
        assert len(srv._sending) == 1
        time.sleep(1.5)  # past stall_s: the next publish cancels it
        srv.publish(big)
        assert srv.rejected["stalled"] == 1
        assert wait_for(lambda: srv.streams == 0)
        fresh = watch(f"127.0.0.1:{srv.port}")  # its place is free again
        assert next(fresh).sequence == srv._sequence
        fresh.cancel()
    finally:
        srv.close(0)


def test_streams_beyond_max_streams_are_refused_with_resource_exhausted(server):
    target = f"127.0.0.1:{server.port}"
    server.publish(snapshot(1))
    calls = [watch(target), watch(target)]
    for c in calls:
        next(c)
    assert server.streams == 2
    third = watch(target)
    with pytest.raises(grpc.RpcError) as err:
        next(third)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "grpc.max_streams" in err.value.details()
    assert nonzero(server.rejected) == {"busy": 1}
    calls[0].cancel()
    assert wait_for(lambda: server.streams == 1)
    assert next(watch(target)).sequence == 1  # a place came free
    calls[1].cancel()


def test_close_ends_the_streams_with_daemon_stopped_and_frees_the_port():
    port = free_port()
    srv = SnapshotServer(f"127.0.0.1:{port}")
    srv.publish(snapshot(1))
    call = watch(f"127.0.0.1:{port}")
    next(call)
    srv.close(0.5)
    with pytest.raises(grpc.RpcError) as err:
        next(call)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert describe(err.value) == "daemon stopped"
    SnapshotServer(f"127.0.0.1:{port}").close(0)


def test_an_address_in_use_is_an_oserror_that_says_so():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot listen on {listen}: Address already in use"):
            SnapshotServer(listen)
    srv = SnapshotServer(f"127.0.0.1:{free_port()}")
    try:  # nor may a second server share a port with the first (no SO_REUSEPORT)
        with pytest.raises(OSError, match="Address already in use"):
            SnapshotServer(f"127.0.0.1:{srv.port}")
    finally:
        srv.close(0)


def test_remote_snapshots_returns_each_snapshot_once_and_then_none(server):
    server.publish(snapshot(2, seed=1))
    with RemoteSnapshots(f"127.0.0.1:{server.port}") as remote:
        got = remote.latest(30)
        assert got is not None and got.to_dict() == snapshot(2, seed=1).to_dict()
        assert remote.connected and remote.error is None and remote.sequence == 1
        assert remote.latest(0.0) is None  # nothing newer yet
        server.publish(snapshot(1, seed=2))
        got = remote.latest(30)
        assert got is not None and len(got.workloads) == 1 and remote.sequence == 2
        assert remote.reconnects == 0


def test_tls_a_client_with_the_ca_file_connects_a_plaintext_one_does_not(tls_files):
    cert, key = tls_files
    srv = SnapshotServer(f"127.0.0.1:{free_port()}", tls_cert_file=str(cert), tls_key_file=str(key))
    srv.publish(snapshot(1))
    target = f"127.0.0.1:{srv.port}"
    try:
        with RemoteSnapshots(target, ca_file=str(cert)) as good:
            assert good.latest(30) is not None and good.connected
        with RemoteSnapshots(target) as plain:
            assert wait_for(lambda: plain.error is not None)
            assert not plain.connected and plain.latest(0.0) is None
            assert "TLS" in plain.error
    finally:
        srv.close(0)
    plain_server = SnapshotServer(f"127.0.0.1:{free_port()}")
    try:
        with RemoteSnapshots(f"127.0.0.1:{plain_server.port}", ca_file=str(cert)) as tls_client:
            assert wait_for(lambda: tls_client.error is not None)
            assert tls_client.error == "TLS handshake failed: the daemon does not serve TLS"
    finally:
        plain_server.close(0)


def test_a_config_names_both_tls_files_or_neither_and_resolves_them_beside_itself(
    tmp_path, tls_files
):
    cert, key = tls_files
    tcp = "grpc:\n  listen: 127.0.0.1:9999\n  allow_unauthenticated: true\n"
    with pytest.raises(ConfigError) as err:
        parse(f"{tcp}  tls_cert_file: {cert}\n", "w.yaml")
    assert str(err.value).startswith(
        "w.yaml:4: grpc.tls_cert_file: expected both grpc.tls_cert_file and grpc.tls_key_file"
    )
    with pytest.raises(ConfigError, match=r"w.yaml:5: grpc.tls_key_file: expected a readable file"):
        parse(f"{tcp}  tls_cert_file: {cert}\n  tls_key_file: nope.key\n", "w.yaml")
    with pytest.raises(ConfigError, match=r"w.yaml:4: grpc.tls_cert_file: cannot load"):
        parse(f"{tcp}  tls_cert_file: {key}\n  tls_key_file: {key}\n", "w.yaml")
    with pytest.raises(ConfigError, match=r"w.yaml:2: grpc.listen: expected unix:/PATH or HOST"):
        parse("grpc:\n  listen: 9465\n", "w.yaml")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls/c.pem").write_bytes(cert.read_bytes())
    (tmp_path / "tls/k.pem").write_bytes(key.read_bytes())
    path = tmp_path / "wasmtop.yaml"
    path.write_text(f"{tcp}  tls_cert_file: tls/c.pem\n  tls_key_file: tls/k.pem\n")
    config = parse(path.read_text(), str(path))
    assert grpc_tls_files(config, path) == (
        str(tmp_path / "tls/c.pem"),
        str(tmp_path / "tls/k.pem"),
        None,
    )
    defaults = parse("", str(path))
    assert defaults["grpc"]["listen"] == "unix:/run/wasmtop/grpc.sock"
    assert defaults["grpc"]["enabled"] is True
    assert grpc_tls_files(defaults, path) == (None, None, None)


def test_a_reload_onto_a_port_that_cannot_be_bound_keeps_the_old_one(tmp_path):
    from wasmtop.config import defaults
    from wasmtop.daemon import Daemon
    from wasmtop.web import WebConfig

    config = defaults()
    config["grpc"]["listen"] = f"127.0.0.1:{free_port()}"
    d = Daemon(tmp_path / "wasmtop.yaml", config, WebConfig(), [])
    d.start_grpc()
    try:
        d.publish(snapshot(1))
        first = d.grpc
        assert first.latest is not None
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            old = {**config, "grpc": dict(config["grpc"])}
            d.config["grpc"] = {**config["grpc"], "listen": f"127.0.0.1:{taken.getsockname()[1]}"}
            d.reload_grpc(old)
        assert d.config["grpc"] == old["grpc"] and d.grpc is not first
        with RemoteSnapshots(old["grpc"]["listen"]) as remote:  # the old address, at once
            assert remote.latest(30) is not None and remote.sequence == 1
        families = {f.name: f.samples[0].value for f in d.grpc.families()}
        assert families["wasmtop_grpc_snapshots_sent"] >= 1
        assert families["wasmtop_grpc_streams"] in (0.0, 1.0)
    finally:
        d.stop_exporters()
    assert d.grpc is None
