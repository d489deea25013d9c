"""Reading the kernel's own BTF (/sys/kernel/btf/vmlinux) for what a probe must not guess: how
many arguments a kernel function takes, where its signature changed between kernels."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

VMLINUX = Path("/sys/kernel/btf/vmlinux")
_MAGIC = 0xEB9F
# Bytes of kind-specific data after each type's 12-byte header: fixed, or per member (vlen).
_FIXED = {1: 4, 14: 4, 17: 4}  # INT, VAR, DECL_TAG (the others: none)
_PER_MEMBER = {4: 12, 5: 12, 6: 8, 13: 8, 15: 12, 19: 12}  # STRUCT UNION ENUM PROTO DATASEC ENUM64
_ARRAY = 3
_FUNC = 12


def function_arity(name: str, data: bytes) -> int | None:
    """The number of arguments of kernel function ``name`` in BTF ``data``, or None when the
    data is not BTF or does not name it."""
    if len(data) < 24:
        return None
    magic, _version, _flags, hdr_len = struct.unpack_from("<HBBI", data, 0)
    if magic != _MAGIC:
        return None
    type_off, type_len, str_off, str_len = struct.unpack_from("<IIII", data, 8)
    types = hdr_len + type_off
    strings = hdr_len + str_off
    if types + type_len > len(data) or strings + str_len > len(data):
        return None
    want = name.encode()
    protos: dict[int, int] = {}  # type id -> vlen of each FUNC_PROTO
    funcs: list[int] = []  # the FUNC_PROTO ids of functions named ``name``
    pos, end, tid = types, types + type_len, 1
    while pos + 12 <= end:
        name_off, info, size_or_type = struct.unpack_from("<III", data, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        pos += 12
        if kind == 13:
            protos[tid] = vlen
        elif kind == _FUNC:
            s = strings + name_off
            if data[s : s + len(want) + 1] == want + b"\0":
                funcs.append(size_or_type)
        if kind == _ARRAY:
            pos += 12
        elif kind in _PER_MEMBER:
            pos += _PER_MEMBER[kind] * vlen
        else:
            pos += _FIXED.get(kind, 0)
        tid += 1
    arities = {protos[f] for f in funcs if f in protos}
    return arities.pop() if len(arities) == 1 else None


@functools.cache
def kernel_function_arity(name: str, path: Path = VMLINUX) -> int | None:
    """``function_arity`` of the running kernel (None without BTF)."""
    try:
        return function_arity(name, path.read_bytes())
    except OSError:
        return None
