"""CPU topology from sysfs, to say how far each migration moved a thread."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SAME_CPU, SAME_CORE, SAME_LLC, CROSS_LLC, CROSS_NUMA = (
    "same_cpu", "same_core", "same_llc", "cross_llc", "cross_numa",
)  # fmt: skip


def parse_cpu_list(text: str) -> frozenset[int]:
    """'0-3,8,10-11' -> {0,1,2,3,8,10,11}."""
    cpus: set[int] = set()
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(cpus)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class CpuPlace:
    core: frozenset[int]  # SMT siblings
    llc: frozenset[int]  # CPUs sharing the last-level cache
    node: int  # NUMA node


class Topology:
    def __init__(self, places: dict[int, CpuPlace]) -> None:
        self.places = places

    @classmethod
    def from_sysfs(cls, root: str | Path = "/sys/devices/system/cpu") -> Topology:
        root = Path(root)
        places: dict[int, CpuPlace] = {}
        for cpu_dir in sorted(root.glob("cpu[0-9]*")):
            cpu = int(cpu_dir.name[3:])
            topo = cpu_dir / "topology"
            core = _read(topo / "core_cpus_list") or _read(topo / "thread_siblings_list")
            llc, llc_level = frozenset({cpu}), -1
            for index in cpu_dir.glob("cache/index[0-9]*"):
                level = _read(index / "level")
                shared = _read(index / "shared_cpu_list")
                if level and shared and int(level) > llc_level:
                    llc, llc_level = parse_cpu_list(shared), int(level)
            nodes = [int(p.name[4:]) for p in cpu_dir.glob("node[0-9]*")]
            places[cpu] = CpuPlace(
                core=parse_cpu_list(core) if core else frozenset({cpu}),
                llc=llc,
                node=nodes[0] if nodes else 0,
            )
        return cls(places)

    def distance(self, a: int, b: int) -> str:
        """How far a move from CPU a to CPU b is: same_cpu < same_core < same_llc < cross_llc
        < cross_numa. Unknown CPUs count as cross_llc on the same node."""
        if a == b:
            return SAME_CPU
        pa, pb = self.places.get(a), self.places.get(b)
        if pa is None or pb is None:
            return CROSS_LLC
        if pa.node != pb.node:
            return CROSS_NUMA
        if b in pa.core:
            return SAME_CORE
        if b in pa.llc:
            return SAME_LLC
        return CROSS_LLC
