"""The daemon's gRPC API on the real kernel: `wasmtop.v1.Snapshots/Watch` watched with
RemoteSnapshots (the client of `wasmtop --connect`) on the default root-only Unix socket and
over TCP with client certificates, across a daemon stop and restart on the same socket; its
stats in /metrics; an address that cannot be bound."""

from __future__ import annotations

import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from peers import daemon, free_port, get, metric_value
from support import wait_for, wasmtop_cmd, workloads
from wasmtop.grpcapi import RemoteSnapshots

pytestmark = pytest.mark.bpf


def grpc_config(**grpc: object) -> dict:
    return {"grpc": grpc, "probes": {"bypass": {"mode": "off"}}}


def tcp(port: int) -> dict:
    """A TCP listen without client certificates: said explicitly, as the config requires."""
    return {"listen": f"127.0.0.1:{port}", "allow_unauthenticated": True}


def test_a_client_gets_consecutive_snapshots_of_this_host_with_a_process_it_started(tmp_path):
    with workloads(("sleeper", {})) as (sleeper,), daemon(tmp_path, grpc_config()) as d:
        sleeper.go()
        key = f"pid:{sleeper.pid}"
        target = d.grpc_target  # the default kind of listen: a unix socket
        assert target.startswith("unix:")
        assert f"serving gRPC wasmtop.v1.Snapshots/Watch on {target} (mode 0600)" in (
            d.stderr_so_far()
        )
        st = Path(target[len("unix:") :]).lstat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)
        with RemoteSnapshots(target) as remote:
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
                # The settings the probes run with travel in the Snapshot: a --connect UI and
                # the rules read the daemon's reporting threshold there.
                assert snap.probes["sched"]["threshold_ms"] == 50.0
            text = get(f"{d.base}/metrics")[1]
            assert metric_value(text, "wasmtop_grpc_streams") == 1
            assert metric_value(text, "wasmtop_grpc_snapshots_sent_total") >= 2
            assert metric_value(text, "wasmtop_grpc_snapshots_skipped_total") is not None
            assert metric_value(text, "wasmtop_grpc_streams_rejected_total", reason="busy") == 0
        assert wait_for(
            lambda: metric_value(get(f"{d.base}/metrics")[1], "wasmtop_grpc_streams") == 0
        )


def test_over_tcp_only_a_client_with_a_certificate_of_the_ca_gets_snapshots(tmp_path, pki):
    cert, key = pki.server
    port = free_port()
    config = grpc_config(
        listen=f"127.0.0.1:{port}",
        tls_cert_file=str(cert),
        tls_key_file=str(key),
        client_ca_file=str(pki.ca),
    )
    with daemon(tmp_path, config) as d:
        assert f"on 127.0.0.1:{port} (TLS, client certificates required)" in d.stderr_so_far()
        mine, my_key = pki.oncall
        with RemoteSnapshots(
            f"127.0.0.1:{port}", ca_file=str(pki.ca), cert_file=str(mine), key_file=str(my_key)
        ) as remote:
            snap = remote.latest(30)
            assert snap is not None and snap.host == socket.gethostname() and remote.connected
        with RemoteSnapshots(f"127.0.0.1:{port}", ca_file=str(pki.ca)) as anonymous:
            assert wait_for(lambda: anonymous.error is not None)
            assert not anonymous.connected and anonymous.latest(0.0) is None
            assert "client certificate" in anonymous.error
        sent = metric_value(get(f"{d.base}/metrics")[1], "wasmtop_grpc_snapshots_sent_total")
        assert sent >= 1


def test_a_client_sees_the_daemon_stop_and_reconnects_when_it_is_back_on_the_same_socket(
    tmp_path,
):
    sock_dir = Path(tempfile.mkdtemp(prefix="wt-"))
    target = f"unix:{sock_dir}/grpc.sock"
    config = grpc_config(listen=target, max_streams=4)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    remote = RemoteSnapshots(target, reconnect_max_s=1.0)
    try:
        with daemon(tmp_path / "first", config) as d:
            remote.start()
            assert remote.latest(30) is not None and remote.connected
            assert d.stop() == 0  # SIGTERM: the daemon ends the stream on its way out
            assert wait_for(lambda: not remote.connected)
            # Why it ended; ``error`` may already say why the first reconnect failed.
            assert remote.ended in ("daemon stopped", "connection lost")
            # The daemon removed its socket on the way out.
            assert wait_for(lambda: remote.error == "no socket there (is the daemon running?)")
            down_since = remote.since_s
        with daemon(tmp_path / "second", config):
            assert wait_for(lambda: remote.latest(1.0) is not None, timeout_s=60), remote.error
            assert remote.connected and remote.error is None
            assert remote.reconnects >= 1 and remote.since_s > down_since
    finally:
        remote.close()
        sock_dir.rmdir()


def test_sighup_moves_the_api_to_a_tcp_port_and_its_counters_keep_counting(tmp_path):
    new_port = free_port()
    with daemon(tmp_path, grpc_config()) as d:
        old_target = d.grpc_target
        with RemoteSnapshots(old_target) as remote:
            assert remote.latest(30) is not None
        sent = metric_value(get(f"{d.base}/metrics")[1], "wasmtop_grpc_snapshots_sent_total")
        assert sent >= 1
        config = yaml.safe_load(d.config.read_text())
        config["grpc"] = tcp(new_port)
        d.config.write_text(yaml.safe_dump(config))
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: f"on 127.0.0.1:{new_port} (plaintext, no authentication)" in (
            d.stderr_so_far()
        ))  # fmt: skip
        with RemoteSnapshots(f"127.0.0.1:{new_port}") as remote:
            assert remote.latest(30) is not None  # at once: the latest carried over
        text = get(f"{d.base}/metrics")[1]
        assert metric_value(text, "wasmtop_grpc_snapshots_sent_total") > sent
        assert not Path(old_target[len("unix:") :]).exists()  # the old socket is gone
        with RemoteSnapshots(old_target) as stale:
            assert wait_for(lambda: stale.error == "no socket there (is the daemon running?)")


def exits_at_start(tmp_path: Path, grpc: dict) -> subprocess.CompletedProcess:
    path = tmp_path / "wasmtop.yaml"
    config = {**grpc_config(**grpc), "metrics": {"listen": f"127.0.0.1:{free_port()}"}}
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [*wasmtop_cmd(), "daemon", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_address_that_cannot_be_bound_stops_the_daemon_with_exit_1(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = exits_at_start(tmp_path, tcp(port))
    assert result.returncode == 1, result.stderr
    assert (
        f"wasmtop: cannot listen on 127.0.0.1:{port}: Address already in use (grpc.listen)"
        in result.stderr
    )
    sock_dir = Path(tempfile.mkdtemp(prefix="wt-"))
    path = sock_dir / "grpc.sock"
    try:
        with socket.socket(socket.AF_UNIX) as served:  # another daemon's socket, say
            served.bind(str(path))
            served.listen()
            result = exits_at_start(tmp_path, {"listen": f"unix:{path}"})
            assert path.exists()  # not taken from the one serving it
        assert result.returncode == 1, result.stderr
        assert (
            f"wasmtop: cannot listen on unix:{path}: Address already in use (grpc.listen)"
            in result.stderr
        )
    finally:
        path.unlink()
        sock_dir.rmdir()
