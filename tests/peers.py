"""Real peers for integration tests, started on loopback with temporary dirs: the wasmtop daemon
itself, and Prometheus (Debian's package)."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from support import no_programs_left, wait_for, wasmtop_cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(
    url: str,
    *,
    auth: tuple[str, str] | None = None,
    cafile: Path | None = None,
    timeout: float = 10,
) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers, not exceptions."""
    req = urllib.request.Request(url)
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    ctx = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=ctx) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class Daemon:
    def __init__(
        self, proc: subprocess.Popen, config: Path, port: int, scheme: str, grpc_target: str
    ) -> None:
        self.proc = proc
        self.config = config
        self.port = port
        self.base = f"{scheme}://127.0.0.1:{port}"
        self.grpc_target = grpc_target  # its grpc.listen, for RemoteSnapshots

    def stderr_so_far(self) -> str:
        return Path(str(self.config) + ".stderr").read_text()

    def stop(self) -> int:
        """SIGTERM; the exit status (the caller checks it). Waits at most 5 s: the daemon must
        stop within that (issue: SIGTERM stops cleanly within 5 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return -1


@contextmanager
def daemon(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    *,
    scheme: str = "http",
    ready_auth: tuple[str, str] | None = None,
    cafile: Path | None = None,
    command: list[str] | None = None,
    env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> Iterator[Daemon]:
    """`wasmtop daemon` on a free loopback port with ``config`` (merged over metrics.listen),
    once /readyz says ready. Stopped with SIGTERM after; nothing of ours may stay loaded.
    ``command``: what runs in place of `wasmtop` (e.g. the image's entry point behind setpriv),
    given the same arguments; ``args``: more of the daemon's flags."""
    port = free_port()
    cfg = {**(config or {})}
    cfg["metrics"] = {"listen": f"127.0.0.1:{port}", **cfg.get("metrics", {})}
    # The gRPC API on a socket of its own, so daemons of different tests never share one (a
    # short directory: a socket's path holds 107 bytes, more than a test's tmp_path may).
    sock_dir = Path(tempfile.mkdtemp(prefix="wt-"))
    cfg["grpc"] = {"listen": f"unix:{sock_dir}/grpc.sock", **cfg.get("grpc", {})}
    grpc_socket = sock_dir / "grpc.sock"
    path = tmp_path / "wasmtop.yaml"
    path.write_text(yaml.safe_dump(cfg))
    err = open(str(path) + ".stderr", "w")
    proc = subprocess.Popen(
        [*(command or wasmtop_cmd()), "daemon", "--config", str(path), *args],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=env,
    )
    d = Daemon(proc, path, port, scheme, cfg["grpc"]["listen"])

    def ready_or_dead() -> bool:
        if proc.poll() is not None:
            return True
        if not _listening(port):
            return False
        return get(f"{d.base}/readyz", auth=ready_auth, cafile=cafile)[0] == 200

    try:
        ok = wait_for(ready_or_dead, timeout_s=90)
        assert ok and proc.poll() is None, f"daemon not ready: {d.stderr_so_far()}"
        yield d
    finally:
        code = d.stop()
        err.close()
        socket_left = grpc_socket.exists()
        shutil.rmtree(sock_dir, ignore_errors=True)  # whatever happened, leave no directory
        assert code == 0, f"daemon exit {code}: {d.stderr_so_far()}"
        assert no_programs_left() == []
        assert not socket_left, "the gRPC socket outlived the daemon"


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def metric_value(text: bytes, name: str, **labels: str) -> float | None:
    from prometheus_client.parser import text_string_to_metric_families

    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


class Prometheus:
    def __init__(self, proc: subprocess.Popen, port: int) -> None:
        self.proc = proc
        self.url = f"http://127.0.0.1:{port}"

    def query(self, promql: str) -> list[dict[str, Any]]:
        status, body = get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        data = json.loads(body)
        assert status == 200 and data["status"] == "success", data
        return data["data"]["result"]

    def targets(self) -> list[dict[str, Any]]:
        return json.loads(get(f"{self.url}/api/v1/targets")[1])["data"]["activeTargets"]


@contextmanager
def prometheus(
    tmp_path: Path,
    scrape: dict[str, Any],
    *,
    rule_files: tuple[Path, ...] = (),
    alertmanagers: tuple[str, ...] = (),
    flags: tuple[str, ...] = (),
) -> Iterator[Prometheus]:
    """Debian's Prometheus scraping one job (``scrape``: a scrape_config without job_name) every
    second, with its TSDB in ``tmp_path``; ``flags``: more of its command line."""
    port = free_port()
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "wasmtop", **scrape}],
    }
    if rule_files:
        config["rule_files"] = [str(p) for p in rule_files]
    if alertmanagers:
        config["alerting"] = {
            "alertmanagers": [{"static_configs": [{"targets": list(alertmanagers)}]}]
        }
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        ["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}", *flags],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    prom = Prometheus(proc, port)
    try:
        assert wait_for(lambda: _listening(port) and get(f"{prom.url}/-/ready")[0] == 200, 60), (
            tmp_path / "prometheus.log"
        ).read_text()[-3000:]
        yield prom
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


class Alertmanager:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"

    def alerts(
        self,
        active: bool | None = None,
        *,
        silenced: bool | None = None,
        inhibited: bool | None = None,
        unprocessed: bool | None = None,
    ) -> list[dict[str, Any]]:
        """GET /api/v2/alerts, with the API's filters where given (None: the server default)."""
        filters = {"active": active, "silenced": silenced, "inhibited": inhibited,
                   "unprocessed": unprocessed}  # fmt: skip
        query = urllib.parse.urlencode(
            {k: str(v).lower() for k, v in filters.items() if v is not None}
        )
        status, body = get(f"{self.url}/api/v2/alerts" + (f"?{query}" if query else ""))
        assert status == 200, body
        return json.loads(body)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not gone within 20 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextmanager
def alertmanager(tmp_path: Path) -> Iterator[Alertmanager]:
    """Debian's Alertmanager (0.25) on a free loopback port, routing everything to a receiver that
    notifies nobody, clustering off (no port 9094), its state in its own dir under ``tmp_path``
    (so one test can run several)."""
    port = free_port()
    home = tmp_path / f"alertmanager-{port}"
    home.mkdir()
    cfg = home / "alertmanager.yml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "route": {"receiver": "null", "group_wait": "0s", "group_interval": "1s",
                          "repeat_interval": "1h"},
                "receivers": [{"name": "null"}],
            }
        )
    )  # fmt: skip
    log_path = home / "alertmanager.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        ["prometheus-alertmanager", f"--config.file={cfg}", f"--storage.path={home / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    am = Alertmanager(proc, port, log_path)
    try:

        def ready_or_dead() -> bool:
            if proc.poll() is not None:
                return True
            return _listening(port) and get(f"{am.url}/-/ready")[0] == 200

        assert wait_for(ready_or_dead, 60) and proc.poll() is None, log_path.read_text()[-3000:]
        yield am
    finally:
        am.stop()
        log.close()
