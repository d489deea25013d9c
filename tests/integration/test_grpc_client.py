"""The gRPC client of `wasmtop --connect` (RemoteSnapshots) against a SnapshotServer in a
process of its own, without the daemon: it says why the server is down, and reconnects after the
server is killed hard and started again."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

from peers import free_port
from support import wait_for
from wasmtop.grpcapi import RemoteSnapshots

SERVER = textwrap.dedent(
    """
    import sys, time
    from wasmtop.collector.model import Snapshot
    from wasmtop.grpcapi import SnapshotServer

    server = SnapshotServer(sys.argv[1])
    print("ready", flush=True)
    while True:
        server.publish(Snapshot(host=sys.argv[2], kernel="k", cpus=1, window_s=0.2, probes={},
                                workloads=()))
        time.sleep(0.2)
    """
)


def serve(target: str, host: str) -> subprocess.Popen:
    """A SnapshotServer in its own process (so that it can be killed), publishing every 0.2 s."""
    proc = subprocess.Popen([sys.executable, "-c", SERVER, target, host], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_remote_snapshots_says_why_it_is_down_and_reconnects_after_a_hard_kill():
    target = f"127.0.0.1:{free_port()}"
    remote = RemoteSnapshots(target, reconnect_max_s=0.5).start()
    proc = None
    try:
        assert wait_for(lambda: remote.error == "connection refused")
        assert not remote.connected
        proc = serve(target, "first")
        got = remote.latest(30)
        assert got is not None and got.host == "first" and remote.connected
        since = remote.since_s
        proc.send_signal(signal.SIGKILL)  # no goodbye: the connection just breaks
        proc.wait()
        assert wait_for(lambda: not remote.connected)
        assert remote.ended == "connection lost"  # error may already be the retry's refusal
        assert remote.since_s > since
        assert wait_for(lambda: remote.reconnects >= 1 and remote.error == "connection refused")
        proc = serve(target, "second")
        assert wait_for(lambda: (s := remote.latest(0.5)) is not None and s.host == "second")
        assert remote.connected and remote.error is None
    finally:
        remote.close()
        if proc is not None:
            proc.kill()
            proc.wait()
