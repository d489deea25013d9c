"""The kernel's BTF, read for what a probe must not guess: a kernel function's arity."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from wasmtop.probes import btf


def blob(funcs: dict[str, int]) -> bytes:
    """A BTF blob: an int, then per function a FUNC_PROTO of that many int arguments and a FUNC
    named so; the names in the string section."""
    strings = b"\0int\0"
    types = struct.pack("<III", 1, 1 << 24, 4) + struct.pack("<I", 32)  # [1] int
    tid = 2
    for name, arity in funcs.items():
        types += struct.pack("<III", 0, 13 << 24 | arity, 1)  # [tid] FUNC_PROTO returning int
        types += b"".join(struct.pack("<II", 0, 1) for _ in range(arity))
        name_off = len(strings)
        strings += name.encode() + b"\0"
        types += struct.pack("<III", name_off, 12 << 24, tid)  # [tid + 1] FUNC of that proto
        tid += 2
    header = struct.pack("<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(types), len(types), len(strings))
    return header + types + strings


def test_the_arity_of_a_named_function_and_none_for_others():
    data = blob({"tcp_bpf_sendmsg_redir": 5, "other": 4, "tcp_bpf_sendmsg_redir_x": 3})
    assert btf.function_arity("tcp_bpf_sendmsg_redir", data) == 5
    assert btf.function_arity("other", data) == 4
    assert btf.function_arity("missing", data) is None
    assert btf.function_arity("tcp_bpf", data) is None  # a whole name, not a prefix


def test_this_kernels_own_btf_names_the_redirect_functions_arguments():
    # 6.18: (struct sock *sk, bool ingress, struct sk_msg *msg, u32 bytes, int flags)
    assert btf.kernel_function_arity("tcp_bpf_sendmsg_redir") == 5
    assert btf.kernel_function_arity("do_nanosleep") == 2


@given(st.binary(max_size=300))
def test_any_bytes_give_an_arity_or_none_never_an_error(data):
    assert btf.function_arity("x", data) in (None, *range(65536))
    assert btf.function_arity("x", blob({"x": 2})[:24] + data) in (None, *range(65536))
