"""The lock and pin directories: another user must not be able to plant or swap them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wasmtop.probes.pins import OwnerLock, PinUnavailable, safe_dir


def test_a_missing_directory_is_made_private(tmp_path: Path):
    d = tmp_path / "run" / "wasmtop"
    safe_dir(d)
    st = os.lstat(d)
    assert st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o755


@pytest.mark.parametrize(
    "prepare, says",
    [
        (lambda d: (d.mkdir(), os.chown(d, 4242, 4242)), "belongs to uid 4242"),
        (lambda d: (d.mkdir(), os.chmod(d, 0o777)), "writable by group or others (mode 777)"),
        (lambda d: (d.parent.joinpath("elsewhere").mkdir(), d.symlink_to("elsewhere")),
         "is not a directory (a symlink?)"),
        (lambda d: d.write_text("x"), "is not a directory"),
    ],
)  # fmt: skip
def test_a_directory_another_user_could_control_is_refused_with_the_reason(
    tmp_path: Path, prepare, says
):
    d = tmp_path / "wasmtop"
    prepare(d)
    with pytest.raises(PinUnavailable, match="refusing to use it"):
        safe_dir(d)
    with pytest.raises(PinUnavailable) as exc:
        OwnerLock(d / "trace_ctx.lock").try_acquire()
    assert says in str(exc.value)


def test_the_lock_file_is_never_followed_through_a_symlink(tmp_path: Path):
    d = tmp_path / "wasmtop"
    safe_dir(d)
    target = tmp_path / "victim"
    target.write_text("precious\n")
    (d / "trace_ctx.lock").symlink_to(target)
    with pytest.raises(OSError):
        OwnerLock(d / "trace_ctx.lock").try_acquire()
    assert target.read_text() == "precious\n"  # not truncated, not written
