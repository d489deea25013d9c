"""The DaemonSet as the deploy tests read it: the container's spec, the capabilities it adds,
and a process's effective capabilities to compare with them. One reader, so the tests never
repeat the manifest's values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "deploy/kubernetes/base"
CAP_BITS = {"NET_ADMIN": 12, "SYS_PTRACE": 19, "SYS_NICE": 23, "PERFMON": 38, "BPF": 39}


def pod_spec() -> dict[str, Any]:
    return yaml.safe_load((BASE / "daemonset.yaml").read_text())["spec"]["template"]["spec"]


def container() -> dict[str, Any]:
    (c,) = pod_spec()["containers"]
    return c


def daemonset_capabilities() -> list[str]:
    return container()["securityContext"]["capabilities"]["add"]


def config_map_files() -> dict[str, Path]:
    """The ConfigMap's keys and the files kustomize makes them from (configMapGenerator)."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (generator,) = kustomization["configMapGenerator"]
    files = {}
    for entry in generator["files"]:
        key, _, path = entry.partition("=")
        files[key] = BASE / (path or key)
    return files


def effective_caps(pid: int) -> set[str]:
    """``pid``'s effective capabilities by name; "other" stands for any outside CAP_BITS."""
    status = Path(f"/proc/{pid}/status").read_text()
    eff = int(
        next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16
    )
    return {name for name, bit in CAP_BITS.items() if eff >> bit & 1} | (
        {"other"} if eff & ~sum(1 << b for b in CAP_BITS.values()) else set()
    )
