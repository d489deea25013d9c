"""The trace-context map wasmtop pins on the bpf filesystem for runtimes and sidecars to write,
and the lock that says which wasmtop owns the pin.

wasmtop makes the map itself (BPF_MAP_CREATE) and pins it (BPF_OBJ_PIN): CAP_BPF is enough.
Its programs reach the map through a map-in-map slot that userspace fills with the map's fd,
so BCC never opens a pin (it would open it by id: BPF_MAP_GET_FD_BY_ID needs CAP_SYS_ADMIN).

Ownership: the wasmtop that made the pin holds an exclusive flock on ``TRACE_CTX_LOCK`` for
as long as it owns it; the kernel drops the lock when that process ends, SIGKILL included. So
a pin found while the lock is free was left by a wasmtop that is gone (replaced), and a pin
found while it is held belongs to a live wasmtop (shared: opened with BPF_OBJ_GET, which
needs no capability). A clean stop removes the pin, if it is still the map it made, and the
lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from . import bpfobj

PIN_DIR = Path("/sys/fs/bpf/wasmtop")
TRACE_CTX_PATH = PIN_DIR / "trace_ctx"
LOCK_DIR = Path("/run/wasmtop")  # the DaemonSet mounts it from the host
TRACE_CTX_LOCK = LOCK_DIR / "trace_ctx.lock"
# struct trace_ctx in shared.bpf.h: thread id -> 16-byte trace id + 8-byte span id.
TRACE_CTX_KEY_SIZE = 4
TRACE_CTX_VALUE_SIZE = 24
TRACE_CTX_ENTRIES = 16_384
# How long a wasmtop that finds the lock held waits for its owner's pin (the owner pins right
# after locking, and unpins right before unlocking).
SHARE_WAIT_S = 2.0


class PinConflict(RuntimeError):
    """A map pinned at our path has a layout we cannot read and may be in use: left alone."""


class PinUnavailable(RuntimeError):
    """No trace-context map for this wasmtop; the message says why."""


def safe_dir(directory: Path) -> None:
    """Make ``directory`` (mode 0755) or check the one there: a real directory, not a symlink,
    owned by this user and writable by no one else. Another user must not be able to put the
    lock or the pin where wasmtop looks (``/sys/fs/bpf`` is often world-writable, sticky), or
    swap them later. Raises PinUnavailable saying what is wrong."""
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=0o755, parents=True)
    try:
        st = os.lstat(directory)
    except OSError as exc:
        raise PinUnavailable(f"{directory}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise PinUnavailable(f"{directory} is not a directory (a symlink?): refusing to use it")
    if st.st_uid != os.geteuid():
        raise PinUnavailable(
            f"{directory} belongs to uid {st.st_uid}, not to wasmtop (uid {os.geteuid()}): "
            "refusing to use it; remove it"
        )
    if st.st_mode & 0o022:
        raise PinUnavailable(
            f"{directory} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o}): "
            "refusing to use it; chmod go-w it"
        )


class OwnerLock:
    """An exclusive flock on a lock file, held by the pin's owner. The file is removed by the
    holder on release; a taker checks that the file it locked is still the one at the path (a
    releaser may have unlinked it in between), so two processes never both hold it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def try_acquire(self) -> bool:
        """True: this process holds it now. False: another process holds it. OSError: the
        lock file cannot be made (no /run/wasmtop, read-only)."""
        while True:
            safe_dir(self.path.parent)
            try:
                fd = os.open(
                    self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644
                )
            except FileNotFoundError:  # the directory was removed meanwhile: again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            except BaseException:
                os.close(fd)
                raise
            st = os.fstat(fd)
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # unlinked by its releaser after we opened it: take the new one
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
            return True

    def holder(self) -> str:
        """The holder's pid as it wrote it (its own PID namespace's view), or '?'."""
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # while still holding it: see try_acquire
        os.close(self._fd)
        self._fd = -1
        with contextlib.suppress(OSError):  # not empty, or a mount point (the DaemonSet's)
            self.path.parent.rmdir()


@dataclass(frozen=True)
class Layout:
    type: int
    key_size: int
    value_size: int
    max_entries: int

    def mismatch(self, path: Path, found: Layout) -> str:
        """Why a map pinned at ``path`` with layout ``found`` is not one of ours."""
        got = (found.type, found.key_size, found.value_size)
        want = (self.type, self.key_size, self.value_size)
        return (
            f"{path}: pinned map has type/key/value sizes {got} and {found.max_entries} "
            f"entries, expected {want} and {self.max_entries} entries"
        )


TRACE_CTX_LAYOUT = Layout(
    bpfobj.MAP_TYPE_HASH, TRACE_CTX_KEY_SIZE, TRACE_CTX_VALUE_SIZE, TRACE_CTX_ENTRIES
)


class TraceCtxMap:
    """The trace-context map this process uses: made and pinned here (``owned``), or opened
    from the pin of a live wasmtop. ``fd`` is this process's reference; the probes put it in
    their map-in-map slots."""

    def __init__(
        self,
        path: Path = TRACE_CTX_PATH,
        lock_path: Path = TRACE_CTX_LOCK,
        layout: Layout = TRACE_CTX_LAYOUT,
        share_wait_s: float = SHARE_WAIT_S,
    ) -> None:
        self.path = path
        self.layout = layout
        self.lock = OwnerLock(lock_path)
        self.share_wait_s = share_wait_s
        self.fd = -1
        self.map_id = 0
        self.owned = False
        self.note = ""  # how it came to be: made, replaced a stale pin, shared

    def open(self) -> None:
        """Make and pin the map, or share a live wasmtop's. Raises PinConflict (a map of another
        layout is pinned there and may be in use: left alone) or PinUnavailable."""
        safe_dir(self.path.parent)
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        deadline = time.monotonic() + self.share_wait_s
        while True:
            try:
                locked = self.lock.try_acquire()
            except OSError as exc:
                raise PinUnavailable(
                    f"cannot take the owner lock {self.lock.path}: {exc.strerror}"
                ) from None
            if locked:
                self._own()
                return
            # A live wasmtop owns the pin.
            if self._share(f"shared: pinned by the wasmtop holding {self.lock.path}"):
                return
            if time.monotonic() >= deadline:
                raise PinUnavailable(
                    f"{self.lock.path} is held by a running wasmtop (pid {self.lock.holder()}) "
                    f"that has no map pinned at {self.path}"
                )
            time.sleep(0.05)  # it is pinning (starting) or unlocking (stopping): look again

    def _own(self) -> None:
        """Holding the lock: no live wasmtop owns a pin at our path."""
        found = _pinned_layout(self.path)
        if found is not None:
            layout, map_id = found
            used = _in_use(map_id)
            if used is True:
                # A program loaded by something that takes no lock (a wasmtop from before the
                # lock, or another tool) uses it: never pull it from under it.
                self.lock.release()
                if layout == self.layout:
                    if self._share("shared: a loaded program that takes no lock uses it"):
                        return
                    raise PinUnavailable(f"{self.path} vanished while being opened")
                raise PinConflict(self.layout.mismatch(self.path, layout))
            if layout != self.layout and used is None:
                self.lock.release()
                raise PinConflict(
                    f"{self.layout.mismatch(self.path, layout)}; whether a program uses it "
                    f"cannot be told without CAP_SYS_ADMIN: left alone (remove the pin if "
                    f"it is a leftover)"
                )
            # Ours, left by a wasmtop that is gone (it would hold the lock), or another layout
            # no loaded program uses: start afresh.
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self.note = f"replaced a pin left behind (map id {map_id})"
        else:
            self.note = "made and pinned"
        fd = bpfobj.map_create(
            self.layout.type,
            self.layout.key_size,
            self.layout.value_size,
            self.layout.max_entries,
            self.path.name,
        )
        try:
            bpfobj.obj_pin(fd, str(self.path))
        except bpfobj.BpfError as exc:
            os.close(fd)
            self.lock.release()
            why = exc.strerror
            if exc.errno == errno.EEXIST:
                why = "pinned meanwhile by something that takes no lock"
            raise PinUnavailable(f"cannot pin {self.path}: {why}") from None
        self.fd, self.map_id, self.owned = fd, bpfobj.map_info(fd).id, True

    def _share(self, note: str) -> bool:
        """Open the map someone else pinned and uses; False when nothing is pinned."""
        try:
            fd = bpfobj.obj_get(str(self.path))
        except bpfobj.BpfError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise PinUnavailable(f"cannot open {self.path}: {exc.strerror}") from None
        try:
            info = bpfobj.map_info(fd)
        except bpfobj.BpfError as exc:
            os.close(fd)
            raise PinUnavailable(f"{self.path}: not a map ({exc.strerror})") from None
        layout = Layout(info.type, info.key_size, info.value_size, info.max_entries)
        if layout != self.layout:
            os.close(fd)
            raise PinConflict(self.layout.mismatch(self.path, layout))
        self.fd, self.map_id, self.owned = fd, info.id, False
        self.note = note
        return True

    def close(self) -> None:
        """Unpin the map if this process made it and it is still the one pinned, close it,
        and give up the lock."""
        if self.owned and pinned_id(self.path) == self.map_id:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        self.owned = False
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.lock.release()
        remove_dir_if_empty(self.path.parent)


def _pinned_layout(path: Path) -> tuple[Layout, int] | None:
    """(layout, map id) of the map pinned at ``path``; None when nothing is."""
    try:
        fd = bpfobj.obj_get(str(path))
    except bpfobj.BpfError as exc:
        if exc.errno == errno.ENOENT:
            return None
        raise PinUnavailable(f"cannot open {path}: {exc.strerror}") from None
    try:
        info = bpfobj.map_info(fd)
    except bpfobj.BpfError as exc:
        raise PinUnavailable(f"{path}: not a map ({exc.strerror})") from None
    finally:
        os.close(fd)
    return Layout(info.type, info.key_size, info.value_size, info.max_entries), info.id


def pinned_id(path: Path = TRACE_CTX_PATH) -> int:
    """Id of the map pinned at ``path``; 0 when nothing is (or it cannot be opened)."""
    found = None
    with contextlib.suppress(PinUnavailable):
        found = _pinned_layout(path)
    return found[1] if found else 0


def _in_use(map_id: int) -> bool | None:
    """Whether a loaded program references the map directly; None when this process may not
    list programs (CAP_SYS_ADMIN)."""
    try:
        return bool(bpfobj.programs_using_map(map_id))
    except bpfobj.BpfError:
        return None


def remove_dir_if_empty(directory: Path) -> None:
    if directory == PIN_DIR:
        with contextlib.suppress(OSError):  # not empty: another wasmtop's pins, or a writer's
            directory.rmdir()
