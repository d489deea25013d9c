"""Maps wasmtop pins on the bpf filesystem: the documented trace-context map, which runtimes and
sidecars write, and short-lived hand-overs of one probe's map to another probe's program.

Every pin has an owner that removes it: a clean stop leaves nothing of wasmtop under
``/sys/fs/bpf``. A pin left by a killed wasmtop is recognised (no loaded program uses the map)
and replaced.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import bpfobj

PIN_DIR = Path("/sys/fs/bpf/wasmtop")
TRACE_CTX_PATH = PIN_DIR / "trace_ctx"
# struct trace_ctx in shared.bpf.h: thread id -> 16-byte trace id + 8-byte span id.
TRACE_CTX_KEY_SIZE = 4
TRACE_CTX_VALUE_SIZE = 24
TRACE_CTX_ENTRIES = 16_384

_handovers = itertools.count()


class PinConflict(RuntimeError):
    """Another program's map is pinned at our path with a layout we cannot read."""


@dataclass
class Pin:
    """A map pinned at ``path`` for a BPF_TABLE_PINNED declaration (BCC opens a map already
    pinned there, else creates and pins one). ``owned``: this process removes it at the end."""

    path: Path
    owned: bool = False

    def prepare(self, key_size: int, value_size: int, max_entries: int | None = None) -> None:
        """Before compiling: make the directory and decide who owns the pin. A map pinned there
        and in use with another layout raises PinConflict (BCC would open it without asking)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if not in_use(self.path):
                self.path.unlink()  # left by a wasmtop that was killed: start afresh
            else:
                self.check(key_size, value_size, max_entries)
        self.owned = not self.path.exists()

    def check(self, key_size: int, value_size: int, max_entries: int | None = None) -> None:
        """A map someone else pinned must have the layout our program reads."""
        fd = bpfobj.obj_get(str(self.path))
        try:
            info = bpfobj.map_info(fd)
        finally:
            os.close(fd)
        want = (bpfobj.MAP_TYPE_HASH, key_size, value_size)
        got = (info.type, info.key_size, info.value_size)
        if got != want or (max_entries is not None and info.max_entries != max_entries):
            remove_dir_if_empty(self.path.parent)
            raise PinConflict(
                f"{self.path}: pinned map has type/key/value sizes {got} and "
                f"{info.max_entries} entries, expected {want}"
                + (f" and {max_entries} entries" if max_entries is not None else "")
            )

    def release(self) -> None:
        if self.owned:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.owned = False
        remove_dir_if_empty(self.path.parent)


def in_use(path: Path) -> bool:
    """Whether a loaded program references the map pinned at ``path``."""
    try:
        fd = bpfobj.obj_get(str(path))
    except bpfobj.BpfError:
        return False
    try:
        map_id = bpfobj.map_info(fd).id
    finally:
        os.close(fd)
    return bool(bpfobj.programs_using_map(map_id))


def remove_dir_if_empty(directory: Path) -> None:
    if directory == PIN_DIR:
        with contextlib.suppress(OSError):  # not empty: another wasmtop's pins, or a writer's
            directory.rmdir()


@contextlib.contextmanager
def handover(map_fd: int, name: str) -> Iterator[str]:
    """Pin a map at a private path for as long as another program is being compiled against it
    (BCC can only share a map across modules through a pin), then unpin it: the map lives on in
    both programs, the file does not."""
    made = not PIN_DIR.is_dir()
    PIN_DIR.mkdir(parents=True, exist_ok=True)
    # bpffs refuses names with a dot: the private names say "handover" instead.
    path = PIN_DIR / f"handover-{name}-{os.getpid()}-{next(_handovers)}"
    bpfobj.obj_pin(map_fd, str(path))
    try:
        yield str(path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if made:
            remove_dir_if_empty(PIN_DIR)
