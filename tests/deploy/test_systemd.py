"""The plain-host unit (deploy/systemd/wasmtop.service): systemd accepts it, and it grants what
the DaemonSet grants, no more, with write access only where the daemon writes."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from support import wasmtop_cmd

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy/systemd/wasmtop.service"


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(UNIT.read_text())
    return parser


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    """As shipped, but starting this checkout's wasmtop (verify checks the binary exists)."""
    exe = wasmtop_cmd()[0]
    copy = tmp_path / "wasmtop.service"
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/wasmtop", exe))
    res = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert res.returncode == 0 and res.stdout + res.stderr == "", res.stdout + res.stderr


def test_it_grants_exactly_the_daemonsets_capabilities() -> None:
    ds = yaml.safe_load((ROOT / "deploy/kubernetes/base/daemonset.yaml").read_text())
    (container,) = ds["spec"]["template"]["spec"]["containers"]
    added = {f"CAP_{c}" for c in container["securityContext"]["capabilities"]["add"]}
    service = unit()["Service"]
    assert set(service["CapabilityBoundingSet"].split()) == added
    assert set(service["AmbientCapabilities"].split()) == added
    assert service["NoNewPrivileges"] == "yes" and service["User"] == "root"


def test_it_writes_only_where_the_daemon_writes() -> None:
    service = unit()["Service"]
    assert service["ProtectSystem"] == "strict"  # /, /usr, /etc read-only; /sys left writable
    assert "ReadWritePaths" not in service  # nothing beyond its own two directories
    config = yaml.safe_load((ROOT / "deploy/wasmtop.yaml").read_text())
    socket = config["grpc"]["listen"].removeprefix("unix:")
    assert Path(socket).parent == Path("/run") / service["RuntimeDirectory"]
    assert Path("/var/cache") / service["CacheDirectory"] == Path("/var/cache/wasmtop")
    assert service["ExecStart"].split()[1:] == ["daemon", "--config", "/etc/wasmtop/wasmtop.yaml"]
    assert service["Restart"] == "on-failure" and service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["RestartPreventExitStatus"].split() == ["1", "2"]  # bad config, unfit host
    assert service["LimitMEMLOCK"] == "infinity"  # kernels before 5.11
