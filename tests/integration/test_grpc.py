"""The daemon's gRPC API on the real kernel: `wasmtop.v1.Snapshots/Watch` watched with
RemoteSnapshots (the client of `wasmtop --connect`), in plaintext and TLS, across a daemon
stop and restart on the same port; its stats in /metrics; a port that cannot be bound."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest
import yaml

from peers import daemon, free_port, get, metric_value
from support import wait_for, wasmtop_cmd, workloads
from wasmtop.grpcapi import RemoteSnapshots

pytestmark = pytest.mark.bpf


def grpc_config(port: int, **grpc: object) -> dict:
    return {
        "grpc": {"listen": f"127.0.0.1:{port}", **grpc},
        "probes": {"bypass": {"mode": "off"}},
    }


def test_a_client_gets_consecutive_snapshots_of_this_host_with_a_process_it_started(tmp_path):
    port = free_port()
    with workloads(("sleeper", {})) as (sleeper,), daemon(tmp_path, grpc_config(port)) as d:
        sleeper.go()
        key = f"pid:{sleeper.pid}"
        assert f"serving gRPC wasmtop.v1.Snapshots/Watch on 127.0.0.1:{port}" in (d.stderr_so_far())
        with RemoteSnapshots(f"127.0.0.1:{port}") as remote:
            seen = []  # (server sequence, Snapshot) of the Snapshots that show the sleeper

            def two_in_a_row() -> bool:
                snap = remote.latest(1.0)
                if snap is not None and any(w.key == key for w in snap.workloads):
                    seen.append((remote.sequence, snap))
                return len(seen) >= 2 and seen[-1][0] == seen[-2][0] + 1

            assert wait_for(two_in_a_row, timeout_s=60), (seen, remote.error)
            assert remote.connected and remote.error is None
            for _, snap in seen[-2:]:
                assert snap.host == socket.gethostname()
                assert snap.schema == "wasmtop.snapshot/v1"
                sleeping = snap.workload(key)
                assert sleeping.kind == "process" and sleeper.pid in sleeping.pids
                assert sleeping.sched.switches > 0
            text = get(f"{d.base}/metrics")[1]
            assert metric_value(text, "wasmtop_grpc_streams") == 1
            assert metric_value(text, "wasmtop_grpc_snapshots_sent_total") >= 2
            assert metric_value(text, "wasmtop_grpc_snapshots_skipped_total") is not None
        assert wait_for(
            lambda: metric_value(get(f"{d.base}/metrics")[1], "wasmtop_grpc_streams") == 0
        )


def test_tls_a_client_with_the_ca_file_gets_snapshots_a_plaintext_one_does_not(tmp_path, tls_files):
    cert, key = tls_files
    port = free_port()
    config = grpc_config(port, tls_cert_file=str(cert), tls_key_file=str(key))
    with daemon(tmp_path, config) as d:
        assert f"on 127.0.0.1:{port} (TLS)" in d.stderr_so_far()
        with RemoteSnapshots(f"127.0.0.1:{port}", ca_file=str(cert)) as remote:
            snap = remote.latest(30)
            assert snap is not None and snap.host == socket.gethostname() and remote.connected
        with RemoteSnapshots(f"127.0.0.1:{port}") as plain:
            assert wait_for(lambda: plain.error is not None)
            assert not plain.connected and plain.latest(0.0) is None
            assert "TLS" in plain.error


def test_a_client_sees_the_daemon_stop_and_reconnects_when_it_is_back_on_the_same_port(
    tmp_path,
):
    port = free_port()
    config = grpc_config(port, max_streams=4)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    remote = RemoteSnapshots(f"127.0.0.1:{port}", reconnect_max_s=1.0)
    try:
        with daemon(tmp_path / "first", config) as d:
            remote.start()
            assert remote.latest(30) is not None and remote.connected
            assert d.stop() == 0  # SIGTERM: the daemon ends the stream on its way out
            assert wait_for(lambda: not remote.connected)
            assert remote.error in ("daemon stopped", "connection lost", "connection refused")
            assert wait_for(lambda: remote.error == "connection refused")
            down_since = remote.since_s
        with daemon(tmp_path / "second", config):
            assert wait_for(lambda: remote.latest(1.0) is not None, timeout_s=60), remote.error
            assert remote.connected and remote.error is None
            assert remote.reconnects >= 1 and remote.since_s > down_since
    finally:
        remote.close()


def test_sighup_moves_the_api_to_a_new_port_and_its_counters_keep_counting(tmp_path):
    old_port, new_port = free_port(), free_port()
    with daemon(tmp_path, grpc_config(old_port)) as d:
        with RemoteSnapshots(f"127.0.0.1:{old_port}") as remote:
            assert remote.latest(30) is not None
        sent = metric_value(get(f"{d.base}/metrics")[1], "wasmtop_grpc_snapshots_sent_total")
        assert sent >= 1
        config = yaml.safe_load(d.config.read_text())
        config["grpc"]["listen"] = f"127.0.0.1:{new_port}"
        d.config.write_text(yaml.safe_dump(config))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: f"on 127.0.0.1:{new_port}" in d.stderr_so_far())
        with RemoteSnapshots(f"127.0.0.1:{new_port}") as remote:
            assert remote.latest(30) is not None  # at once: the latest carried over
        text = get(f"{d.base}/metrics")[1]
        assert metric_value(text, "wasmtop_grpc_snapshots_sent_total") > sent
        with RemoteSnapshots(f"127.0.0.1:{old_port}") as stale:
            assert wait_for(lambda: stale.error == "connection refused")


def test_a_grpc_port_that_cannot_be_bound_stops_the_daemon_with_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "wasmtop.yaml"
        config = {**grpc_config(port), "metrics": {"listen": f"127.0.0.1:{free_port()}"}}
        path.write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [*wasmtop_cmd(), "daemon", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1, result.stderr
    assert (
        f"wasmtop: cannot listen on 127.0.0.1:{port}: Address already in use (grpc.listen)"
        in result.stderr
    )
