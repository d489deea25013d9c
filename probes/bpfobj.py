"""bpf(2) object calls BCC 0.26 does not offer: BPF links (an attachment that ends when its fd
closes, so even a killed wasmtop leaves nothing attached), listing the programs loaded on the
host (to report other agents' programs without touching them), making and pinning a map, and
map facts (to check a pinned map another program made before trusting its layout).

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

from .features import SYS_BPF, libc

_BPF_MAP_CREATE = 0
_BPF_OBJ_PIN = 6
_BPF_OBJ_GET = 7
_BPF_PROG_GET_NEXT_ID = 11
_BPF_PROG_GET_FD_BY_ID = 13
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_LINK_CREATE = 28

# enum bpf_attach_type / enum bpf_prog_type (uapi/linux/bpf.h)
ATTACH_CGROUP_SOCK_OPS = 3
PROG_TYPES = {3: "sched_cls", 13: "sock_ops", 14: "sk_skb", 16: "sk_msg"}


class BpfError(OSError):
    pass


def _call(cmd: int, attr: ctypes.Structure) -> int:
    res = libc().syscall(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if res < 0:
        err = ctypes.get_errno()
        raise BpfError(err, os.strerror(err))
    return res


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


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int, name: str) -> int:
    """Make a map (no flags, no BTF); the caller closes the fd. Raises BpfError."""
    attr = _MapCreate(map_type, key_size, value_size, max_entries, 0, 0, 0, name.encode()[:15])
    return _call(_BPF_MAP_CREATE, attr)


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
