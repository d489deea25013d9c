"""Processes judged once (traced or not, a runtime library attached or not), remembered by
incarnation: a pid with its start time, so that a pid reused by a new process is judged afresh
and an exited one is forgotten, and the set stays as large as the live processes it covers."""

from __future__ import annotations

from pathlib import Path

from .workloads import stat_fields


def start_ticks(proc_root: Path, pid: int) -> int | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22); None when
    it is gone."""
    try:
        return int(stat_fields((proc_root / str(pid) / "stat").read_text())[19])
    except (OSError, ValueError, IndexError):
        return None


class Incarnations:
    """The pids judged, each with the start time it had then."""

    def __init__(self, proc_root: str | Path = "/proc") -> None:
        self.proc_root = Path(proc_root)
        self._seen: dict[int, int | None] = {}
        self.forgotten = 0  # exited or reused since start: counted, for the books

    def __contains__(self, pid: int) -> bool:
        return pid in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, pid: int) -> None:
        self._seen[pid] = start_ticks(self.proc_root, pid)

    def clear(self) -> None:
        self._seen.clear()

    def discard(self, pid: int) -> None:
        """Judge ``pid`` again when next asked (what decided it has changed)."""
        self._seen.pop(pid, None)

    def forget_gone(self) -> list[int]:
        """Forget the pids whose process exited or whose pid now names another process; return
        them (what was decided for them must be undone)."""
        root = self.proc_root
        gone = [p for p, t in self._seen.items() if t is None or start_ticks(root, p) != t]
        for pid in gone:
            del self._seen[pid]
        self.forgotten += len(gone)
        return gone
