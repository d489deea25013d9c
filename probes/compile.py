"""The compiler child: ``python -m wasmtop.probes.compile`` reads a JSON request on stdin and
writes its JSON answer on stdout.

``{"batch": [{"text", "cflags"}, ...]}``: it compiles each module in turn with BCC and answers
``{"batch": [{"object": ...} | {"error": ...}, ...]}``, each object a compiled object of
probes/compiled.py. ``{"fentry": FUNCTION}``: it answers ``{"ok": bool, "reason": str}``,
whether this kernel loads an fentry program on FUNCTION, a feature check that needs the
compiler, kept out of the parent like any compile. ``{"sockmap_ingress": true}``: the same
answer for whether FIONREAD and epoll see bytes an sk_msg program redirected (accelerate
mode's precondition), asked of a sockhash and loopback pair of the child's own; an answer made
of an exception carries ``"transient": true`` and is not cached.

BCC writes its diagnostics to stderr, which the parent reads when the exit code is not 0. This
is the only module of wasmtop that imports bcc in the running product.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import json
import os
import re
import sys
from typing import Any

from . import probeset
from .compiled import STDERR_FILE_ENV, CompiledObject, MapSpec, ProgramSpec, relocations
from .probeset import LibbccError, capturing

_INNER = re.compile(r"BPF_(?:ARRAY|HASH)_OF_MAPS\(\s*(\w+)\s*,[^;]*?\"(\w+)\"")


def _declare(lib: Any) -> None:
    sized = ct.c_size_t
    for name, restype in (
        ("bpf_num_tables", sized),
        ("bpf_table_name", ct.c_char_p),
        ("bpf_table_fd_id", ct.c_int),
        ("bpf_table_type_id", ct.c_int),
        ("bpf_table_max_entries_id", sized),
        ("bpf_table_flags_id", ct.c_int),
        ("bpf_table_key_size_id", sized),
        ("bpf_table_leaf_size_id", sized),
        ("bpf_table_key_desc_id", ct.c_char_p),
        ("bpf_table_leaf_desc_id", ct.c_char_p),
    ):
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = [ct.c_void_p] if name == "bpf_num_tables" else [ct.c_void_p, sized]


def _desc(raw: bytes | None) -> Any:
    if not raw:
        return None
    return json.loads(raw.decode("utf-8"))


def extract(bpf: Any, text: str) -> CompiledObject:
    """What the kernel needs to load this compiled module again, without BCC."""
    from bcc.libbcc import lib

    _declare(lib)
    module = bpf.module
    inner = dict(_INNER.findall(text))
    maps, fds = [], {}
    for i in range(lib.bpf_num_tables(module)):
        name = lib.bpf_table_name(module, i).decode()
        fds[lib.bpf_table_fd_id(module, i)] = name
        maps.append(
            MapSpec(
                name=name,
                type=lib.bpf_table_type_id(module, i),
                key_size=lib.bpf_table_key_size_id(module, i),
                value_size=lib.bpf_table_leaf_size_id(module, i),
                max_entries=lib.bpf_table_max_entries_id(module, i),
                flags=lib.bpf_table_flags_id(module, i),
                key_desc=_desc(lib.bpf_table_key_desc_id(module, i)),
                leaf_desc=_desc(lib.bpf_table_leaf_desc_id(module, i)),
                inner=inner.get(name),
            )
        )
    programs = []
    for i in range(lib.bpf_num_functions(module)):
        fn = lib.bpf_function_name(module, i)
        size = lib.bpf_function_size(module, fn)
        insns = ct.string_at(lib.bpf_function_start(module, fn), size)
        programs.append(ProgramSpec(fn.decode(), insns, tuple(relocations(insns, fds))))
    return CompiledObject(
        license=lib.bpf_module_license(module).decode(),
        kern_version=int(lib.bpf_module_kern_version(module)),
        maps=tuple(maps),
        programs=tuple(programs),
    )


def fentry(function: str) -> dict[str, Any]:
    """Can this kernel load an fentry program on ``function``? (BCC loads KFUNC_PROBE
    functions as it compiles them.)"""
    import warnings

    from bcc import BPF

    with warnings.catch_warnings():  # bcc 0.26 passes a str to its own byte-only helper
        warnings.simplefilter("ignore", DeprecationWarning)
        if not BPF.support_kfunc():
            return {"ok": False, "reason": "no BPF trampoline"}
    text = f"KFUNC_PROBE({function}) {{ return 0; }}".encode()
    try:
        capturing("", lambda: BPF(text=text).cleanup())  # the verifier's words are on fd 2
    except LibbccError as exc:
        detail = "; ".join(exc.detail.splitlines()[-2:]) or str(exc)
        return {"ok": False, "reason": f"loading an fentry program failed: {detail}"}
    return {"ok": True, "reason": "fentry program loaded"}


SOCKMAP_CHECK = """
BPF_SOCKHASH(pair, u32, 2); /* 0: the client's socket, 1: the server's */
int wasmtop_check_redirect(struct sk_msg_md *msg)
{
    u32 to = msg->local_port == SERVER_PORT ? 0 : 1;
    return pair.msg_redirect_hash(msg, &to, BPF_F_INGRESS);
}
"""


def sockmap_ingress() -> dict[str, Any]:
    """Do FIONREAD and epoll see bytes an sk_msg program redirected to a socket's ingress
    queue? (Accelerate mode's self-test asks the same of wasmtop's own program, in the same
    words; a kernel whose FIONREAD misses them, as 6.1's does, has accelerate refused.) A
    sockmap of the check's own, on a loopback pair of its own: no other socket is touched."""
    import ctypes
    import socket

    from bcc import BPF
    from bcc.libbcc import lib

    from .bpfobj import ATTACH_SK_MSG_VERDICT
    from .sockbypass import redirected_delivery

    srv = socket.create_server(("127.0.0.1", 0))
    bpf = None
    socks: list[socket.socket] = [srv]
    try:
        text = SOCKMAP_CHECK.encode()
        port = srv.getsockname()[1]
        bpf = capturing("", lambda: BPF(text=text, cflags=[f"-DSERVER_PORT={port}"]))
        fn = bpf.load_func(b"wasmtop_check_redirect", BPF.SK_MSG)
        map_fd = lib.bpf_table_fd(bpf.module, b"pair")  # BCC 0.26 has no SOCKHASH Table
        bpf.attach_func(fn, map_fd, ATTACH_SK_MSG_VERDICT)
        cli = socket.create_connection(("127.0.0.1", port), timeout=5)
        peer, _ = srv.accept()
        peer.settimeout(5)
        socks += [cli, peer]
        for key, sock in enumerate((cli, peer)):
            k, fd = ctypes.c_uint32(key), ctypes.c_int(sock.fileno())
            if lib.bpf_update_elem(map_fd, ctypes.byref(k), ctypes.byref(fd), 0) < 0:
                raise OSError(ctypes.get_errno(), "adding a socket to the sockhash")
        failure = redirected_delivery(cli, peer)
        if failure is not None:
            peer.setblocking(False)  # what was redirected is read, not left queued at close
            with contextlib.suppress(OSError):
                while peer.recv(65536):
                    pass
            return {"ok": False, "reason": failure}
        return {"ok": True, "reason": "FIONREAD and epoll see redirected bytes"}
    except Exception as exc:  # noqa: BLE001  (BCC raises bare Exception): an answer, not kept
        return {"ok": False, "reason": f"no sk_msg redirect: {exc}", "transient": True}
    finally:
        for s in socks:
            s.close()
        if bpf is not None:
            bpf.cleanup()


def compile_one(text: str, cflags: list[str]) -> dict[str, Any]:
    """{"object": ...} or {"error": what BCC printed}: one module's answer in a batch."""
    from bcc import BPF

    try:  # clang's words for this module alone
        bpf = capturing("", lambda: BPF(text=text.encode(), cflags=cflags))
    except LibbccError as exc:
        return {"error": str(exc).lstrip(": ")}
    try:
        return {"object": extract(bpf, text).to_json()}
    finally:
        bpf.cleanup()


def main() -> int:
    probeset.child_stderr_file = os.environ.pop(STDERR_FILE_ENV, None)
    request = json.loads(sys.stdin.buffer.read())
    if "fentry" in request:
        sys.stdout.write(json.dumps(fentry(str(request["fentry"]))))
        return 0
    if "sockmap_ingress" in request:
        sys.stdout.write(json.dumps(sockmap_ingress()))
        return 0
    # Several modules in one child: the compiler starts once.
    out: Any = [compile_one(r["text"], list(r.get("cflags", []))) for r in request["batch"]]
    sys.stdout.write(json.dumps({"batch": out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
