"""bpf(2) object calls BCC 0.26 does not offer: BPF links (an attachment that ends when its fd
closes, so even a killed wasmtop leaves nothing attached) and listing the programs loaded on the
host (to report other agents' programs without touching them)."""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

from .features import _SYS_BPF, _libc

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
    res = _libc().syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
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


@dataclass(frozen=True)
class Program:
    id: int
    type: str
    name: str


def link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach through a BPF link; closing the returned fd detaches. Raises BpfError."""
    return _call(_BPF_LINK_CREATE, _LinkCreate(prog_fd, target_fd, attach_type, 0))


def program_info(fd: int) -> Program:
    info = _ProgInfo()
    _call(_BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(fd, ctypes.sizeof(info), ctypes.addressof(info)))
    return Program(
        info.id, PROG_TYPES.get(info.type, str(info.type)), info.name.decode("utf-8", "replace")
    )


def programs(types: frozenset[str] | None = None) -> list[Program]:
    """Programs loaded on this host (of the given types), as bpftool prog show lists them."""
    out: list[Program] = []
    current = 0
    while True:
        attr = _GetId(current, 0, 0)
        try:
            _call(_BPF_PROG_GET_NEXT_ID, attr)
        except BpfError:
            return out  # ENOENT: no more
        current = attr.next_id
        try:
            fd = _call(_BPF_PROG_GET_FD_BY_ID, _GetId(current, 0, 0))
        except BpfError:
            continue  # unloaded meanwhile
        try:
            prog = program_info(fd)
        except BpfError:
            continue
        finally:
            os.close(fd)
        if types is None or prog.type in types:
            out.append(prog)
