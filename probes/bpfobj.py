"""The bpf(2) calls wasmtop makes itself: making maps and loading programs from a compiled
object (probes/loader.py), map lookups, updates, deletes and walks (probes/tables.py),
BPF_PROG_ATTACH, BPF links (an attachment that ends when its fd closes, so even a killed
wasmtop leaves nothing attached), listing the programs loaded on the host (to report other
agents' programs without touching them), pinning a map, and map facts (to check a pinned map
another program made before trusting its layout).

Capabilities, as Linux 6.18 checks them: BPF_MAP_CREATE needs CAP_BPF (with
kernel.unprivileged_bpf_disabled set, as Debian does); BPF_OBJ_PIN and BPF_OBJ_GET only the
bpf filesystem's file permissions; BPF_OBJ_GET_INFO_BY_FD and map updates only the fd;
BPF_LINK_CREATE on a cgroup CAP_NET_ADMIN; listing programs (BPF_PROG_GET_NEXT_ID,
BPF_PROG_GET_FD_BY_ID) CAP_SYS_ADMIN: without it programs() and programs_using_map() raise
BpfError(EPERM) rather than answer "none"."""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from .features import SYS_BPF, checked, libc

_BPF_MAP_CREATE = 0
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_MAP_GET_NEXT_KEY = 4
_BPF_PROG_LOAD = 5
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_PROG_GET_NEXT_ID = 11
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_PROG_ATTACH = 8
_BPF_PROG_DETACH = 9
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_MAP_LOOKUP_AND_DELETE_BATCH = 25
_BPF_LINK_CREATE = 28

# enum bpf_attach_type / enum bpf_prog_type (uapi/linux/bpf.h)
ATTACH_CGROUP_SOCK_OPS = 3
ATTACH_SK_MSG_VERDICT = 7
PROG_TYPES = {3: "sched_cls", 13: "sock_ops", 14: "sk_skb", 16: "sk_msg"}


class BpfError(OSError):
    pass


def _call(cmd: int, attr: ctypes.Structure) -> int:
    return checked(libc().syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr)), BpfError)


_memlock_raised = False


def _call_charged(cmd: int, attr: ctypes.Structure) -> int:
    """A call whose memory the kernel charges (map create, program load). Before Linux 5.11
    that was RLIMIT_MEMLOCK: on EPERM raise it to unlimited once, as BCC and libbpf do, and
    try again."""
    global _memlock_raised
    try:
        return _call(cmd, attr)
    except BpfError as exc:
        if exc.errno != errno.EPERM or _memlock_raised:
            raise
        import resource

        _memlock_raised = True
        try:
            unlimited = resource.RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (unlimited, unlimited))
        except (OSError, ValueError):
            raise exc from None
        return _call(cmd, attr)


class _LinkCreate(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 48),
    ]


class _GetId(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("next_id", ctypes.c_uint32),
        ("open_flags", ctypes.c_uint32),
    ]


class _InfoByFd(ctypes.Structure):
    _fields_ = [("fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


class _ProgInfo(ctypes.Structure):
    # The head of struct bpf_prog_info; the kernel fills as much as info_len asks for.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapCreate(ctypes.Structure):
    # The head of union bpf_attr for BPF_MAP_CREATE; the kernel zero-fills the rest.
    _fields_ = [
        ("map_type", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("numa_node", ctypes.c_uint32),
        ("map_name", ctypes.c_char * 16),
    ]


class _ObjPath(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]  # fmt: skip


class _MapInfo(ctypes.Structure):
    # The head of struct bpf_map_info.
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
    ]


@dataclass(frozen=True)
class Program:
    id: int
    type: str
    name: str


@dataclass(frozen=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


MAP_TYPE_HASH = 1


def map_create(
    map_type: int,
    key_size: int,
    value_size: int,
    max_entries: int,
    name: str,
    flags: int = 0,
    inner_map_fd: int = 0,
) -> int:
    """Make a map (no BTF); the caller closes the fd. Raises BpfError."""
    attr = _MapCreate(
        map_type, key_size, value_size, max_entries, flags, inner_map_fd, 0, name.encode()[:15]
    )
    return _call_charged(_BPF_MAP_CREATE, attr)


class _MapElem(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),  # next_key for BPF_MAP_GET_NEXT_KEY
        ("flags", ctypes.c_uint64),
    ]


class _MapBatch(ctypes.Structure):
    _fields_ = [
        ("in_batch", ctypes.c_uint64),
        ("out_batch", ctypes.c_uint64),
        ("keys", ctypes.c_uint64),
        ("values", ctypes.c_uint64),
        ("count", ctypes.c_uint32),
        ("map_fd", ctypes.c_uint32),
        ("elem_flags", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


def _elem(fd: int, key: Any, value: Any = None, flags: int = 0) -> _MapElem:
    return _MapElem(
        fd,
        0,
        ctypes.addressof(key) if key is not None else 0,
        ctypes.addressof(value) if value is not None else 0,
        flags,
    )


def map_lookup(fd: int, key: Any, value: Any) -> bool:
    """Fill ``value`` (a ctypes object) with the entry at ``key``; False when there is none."""
    try:
        _call(_BPF_MAP_LOOKUP_ELEM, _elem(fd, key, value))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_update(fd: int, key: Any, value: Any, flags: int = 0) -> None:
    """Set the entry at ``key`` (BPF_ANY by default). Raises BpfError."""
    _call(_BPF_MAP_UPDATE_ELEM, _elem(fd, key, value, flags))


def map_delete(fd: int, key: Any) -> bool:
    """Delete the entry at ``key``; False when there was none."""
    try:
        _call(_BPF_MAP_DELETE_ELEM, _elem(fd, key))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_next_key(fd: int, key: Any, next_key: Any) -> bool:
    """Fill ``next_key`` with the key after ``key`` (the first key when ``key`` is None);
    False at the end."""
    try:
        _call(_BPF_MAP_GET_NEXT_KEY, _elem(fd, key, next_key))
    except BpfError as exc:
        if exc.errno == errno.ENOENT:
            return False
        raise
    return True


def map_lookup_batch(
    fd: int, token: Any, keys: Any, values: Any, count: int, first: bool
) -> tuple[int, bool]:
    """Copy up to ``count`` entries into the ``keys`` and ``values`` arrays, from the start
    (``first``) or from where the previous call left ``token`` (an 8-byte buffer the kernel
    writes its position to): (how many, whether the walk reached the end). The kernel may
    return fewer than ``count`` before the end. Raises BpfError: ENOSPC when one hash bucket
    holds more than ``count`` (nothing copied: call again with more room); ENOTSUPP (524) or
    EINVAL on map types without batch operations."""
    position = ctypes.c_uint64(token.value)  # in and out must not be the same buffer
    attr = _MapBatch(0 if first else ctypes.addressof(position), ctypes.addressof(token),
                     ctypes.addressof(keys), ctypes.addressof(values), count, fd, 0, 0)  # fmt: skip
    return _batch_call(_BPF_MAP_LOOKUP_BATCH, attr)


def _batch_call(cmd: int, attr: _MapBatch) -> tuple[int, bool]:
    """A batch command: (entries copied, whether the walk reached the end)."""
    try:
        _call(cmd, attr)
    except BpfError as exc:
        if exc.errno != errno.ENOENT:  # ENOENT: the walk reached the end (count says how many)
            raise
        return attr.count, True
    return attr.count, False


def map_lookup_and_delete_batch(fd: int, keys: Any, values: Any, count: int) -> tuple[int, bool]:
    """Move up to ``count`` entries into the ``keys`` and ``values`` arrays, deleting them from
    the map, starting from the first: (how many, whether the walk reached the end). The kernel
    may return fewer than ``count`` before the end (the next hash bucket did not fit): call
    again until done. Raises BpfError (ENOTSUPP, 524, on map types without batch
    operations)."""
    batch = ctypes.c_uint64(0)
    attr = _MapBatch(0, ctypes.addressof(batch), ctypes.addressof(keys), ctypes.addressof(values),
                     count, fd, 0, 0)  # fmt: skip
    return _batch_call(_BPF_MAP_LOOKUP_AND_DELETE_BATCH, attr)


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", ctypes.c_uint32),
        ("insn_cnt", ctypes.c_uint32),
        ("insns", ctypes.c_uint64),
        ("license", ctypes.c_uint64),
        ("log_level", ctypes.c_uint32),
        ("log_size", ctypes.c_uint32),
        ("log_buf", ctypes.c_uint64),
        ("kern_version", ctypes.c_uint32),
        ("prog_flags", ctypes.c_uint32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", ctypes.c_uint32),
        ("expected_attach_type", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 64),
    ]


class VerifierError(BpfError):
    """The kernel refused a program; ``log`` is the verifier's account of why."""

    def __init__(self, err: int, name: str, log: str) -> None:
        super().__init__(err, f"{name}: {os.strerror(err)}")
        self.log = log

    def __str__(self) -> str:
        tail = "\n".join(self.log.strip().splitlines()[-12:])
        return f"{super().__str__()}\n{tail}" if tail else super().__str__()


LOG_BYTES = 4 << 20


def prog_load(
    prog_type: int,
    insns: bytes,
    license: str,
    name: str,
    kern_version: int = 0,
    expected_attach_type: int = 0,
) -> int:
    """Load a program (its map references already patched to fds); the caller closes the fd.
    A refusal is loaded again with the verifier's log on and raised as VerifierError."""
    code = ctypes.create_string_buffer(insns, len(insns))
    lic = ctypes.create_string_buffer(license.encode())

    def attr(log: Any) -> _ProgLoad:
        return _ProgLoad(
            prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(lic),
            1 if log is not None else 0, len(log) if log is not None else 0,
            ctypes.addressof(log) if log is not None else 0, kern_version, 0,
            name.encode()[:15], 0, expected_attach_type,
        )  # fmt: skip

    try:
        return _call_charged(_BPF_PROG_LOAD, attr(None))
    except BpfError as exc:
        if exc.errno == errno.EPERM:
            raise
        first = exc
    log = ctypes.create_string_buffer(LOG_BYTES)
    try:
        return _call(_BPF_PROG_LOAD, attr(log))  # loaded after all (a transient failure)
    except BpfError:
        text = log.value.decode("utf-8", "replace")
        raise VerifierError(first.errno, name, text) from None


class _ProgAttach(ctypes.Structure):
    _fields_ = [
        ("target_fd", ctypes.c_uint32),
        ("attach_bpf_fd", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("attach_flags", ctypes.c_uint32),
        ("replace_bpf_fd", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 44),
    ]


def prog_attach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """BPF_PROG_ATTACH (e.g. an sk_msg verdict on a sock map). Raises BpfError."""
    _call(_BPF_PROG_ATTACH, _ProgAttach(target_fd, prog_fd, attach_type, 0, 0))


def prog_detach(prog_fd: int, target_fd: int, attach_type: int) -> None:
    """BPF_PROG_DETACH. Raises BpfError."""
    _call(_BPF_PROG_DETACH, _ProgAttach(target_fd, prog_fd, attach_type, 0, 0))


def obj_pin(fd: int, path: str) -> None:
    """Pin a map or program at a path on a bpf filesystem. Raises BpfError."""
    raw = path.encode()
    _call(_BPF_OBJ_PIN, _ObjPath(ctypes.cast(ctypes.c_char_p(raw), ctypes.c_void_p).value, fd, 0))


def obj_get(path: str) -> int:
    """Open a pinned object; the caller closes the fd. Raises BpfError."""
    raw = ctypes.c_char_p(path.encode())
    return _call(_BPF_OBJ_GET, _ObjPath(ctypes.cast(raw, ctypes.c_void_p).value, 0, 0))


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    _call(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return MapInfo(info.type, info.id, info.key_size, info.value_size, info.max_entries,
                   info.name.decode("utf-8", "replace"))  # fmt: skip


def map_ids_of_program(fd: int) -> list[int]:
    """The ids of the maps a loaded program uses."""
    info = _ProgInfo()
    _call(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    if not info.nr_map_ids:
        return []
    ids = (ctypes.c_uint32 * info.nr_map_ids)()
    again = _ProgInfo()
    again.nr_map_ids = info.nr_map_ids
    again.map_ids = ctypes.addressof(ids)
    _call(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(again), ctypes.addressof(again)))
    return list(ids[: min(info.nr_map_ids, again.nr_map_ids)])


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach through a BPF link; closing the returned fd detaches. Raises BpfError."""
    return _call(_BPF_LINK_CREATE, _LinkCreate(prog_fd, target_fd, attach_type, 0))


def program_info(fd: int) -> Program:
    info = _ProgInfo()
    _call(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return Program(
        info.id, PROG_TYPES.get(info.type, str(info.type)), info.name.decode("utf-8", "replace")
    )


def _each_program() -> Iterator[int]:
    """An fd of every program loaded on this host, open while the caller looks at it."""
    current = 0
    while True:
        attr = _GetId(current, 0, 0)
        try:
            _call(_BPF_PROG_GET_NEXT_ID, attr)
        except BpfError as exc:
            if exc.errno == errno.ENOENT:
                return  # no more
            raise  # EPERM without CAP_SYS_ADMIN: not "no programs"
        current = attr.next_id
        try:
            fd = _call(_BPF_PROG_GET_FD_BY_ID, _GetId(current, 0, 0))
        except BpfError:
            continue  # unloaded meanwhile
        try:
            yield fd
        finally:
            os.close(fd)


def programs(types: frozenset[str] | None = None) -> list[Program]:
    """Programs loaded on this host (of the given types), as bpftool prog show lists them.
    Raises BpfError (EPERM) without CAP_SYS_ADMIN."""
    out: list[Program] = []
    for fd in _each_program():
        try:
            prog = program_info(fd)
        except BpfError:
            continue
        if types is None or prog.type in types:
            out.append(prog)
    return out


def programs_using_map(map_id: int) -> list[Program]:
    """Loaded programs that reference the map with this id directly (a map reached through a
    map-in-map slot is not among a program's maps). Raises BpfError (EPERM) without
    CAP_SYS_ADMIN."""
    out: list[Program] = []
    for fd in _each_program():
        try:
            if map_id in map_ids_of_program(fd):
                out.append(program_info(fd))
        except BpfError:
            continue
    return out
