"""Processes remembered by incarnation: an exited pid is forgotten, a reused one judged afresh."""

from __future__ import annotations

from pathlib import Path

from wasmtop.collector.incarnation import Incarnations, start_ticks


def stat_line(pid: int, start: int, comm: str = "srv (x) y") -> str:
    # comm may hold spaces and parentheses: fields are counted after the last ")"
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
    return f"{pid} ({comm}) {' '.join(fields)}\n"


def proc(root: Path, pid: int, start: int) -> None:
    (root / str(pid)).mkdir(exist_ok=True)
    (root / str(pid) / "stat").write_text(stat_line(pid, start))


def test_start_ticks_is_field_22_after_any_comm(tmp_path: Path):
    proc(tmp_path, 7, 12345)
    assert start_ticks(tmp_path, 7) == 12345
    assert start_ticks(tmp_path, 8) is None  # no such process
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "stat").write_text("9 (cut")  # torn read: unknown, not a crash
    assert start_ticks(tmp_path, 9) is None


def test_exited_and_reused_pids_are_forgotten_the_living_kept(tmp_path: Path):
    seen = Incarnations(tmp_path)
    for pid, start in ((10, 100), (11, 110), (12, 120)):
        proc(tmp_path, pid, start)
        seen.add(pid)
    (tmp_path / "10" / "stat").unlink()
    (tmp_path / "10").rmdir()  # exited
    proc(tmp_path, 11, 999)  # exited, and a new process took its pid
    assert sorted(seen.forget_gone()) == [10, 11]
    assert 12 in seen and 10 not in seen and 11 not in seen
    assert len(seen) == 1 and seen.forgotten == 2
    assert seen.forget_gone() == []  # the living one stays


def test_a_process_gone_before_it_was_judged_is_forgotten_at_the_next_sweep(tmp_path: Path):
    seen = Incarnations(tmp_path)
    seen.add(42)  # no /proc entry: it exited between being seen and being judged
    assert 42 in seen
    assert seen.forget_gone() == [42]
