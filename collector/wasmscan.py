"""WebAssembly runtimes found by what a process's files contain, not only by their names.

Most Wasm hosts embed the runtime as a Rust crate, statically (Spin, Extism hosts, wasmCloud,
the wasmtime CLI): no ``libwasmtime.so`` to be seen in /proc/PID/maps, but the runtime's code is
in the executable or a library, and where the file keeps its symbol table (``.symtab``) so are
its names. ``examine`` reads an ELF file's section headers and searches its string tables:

- a C API exported (``.dynsym``: ``wasmtime_module_new``, ``WasmEdge_VMCreate``, ...): ``by:
  library``, and the C API functions are the entry points (as for a library found by name);
- the runtime's own symbols (``.symtab``: Rust's legacy ``_ZN8wasmtime...`` or v0 ``_R...
  8wasmtime...`` names, WasmEdge's C++ ``_ZN8WasmEdge``, Go's ``github.com/tetratelabs/wazero``
  in ``.gopclntab``): ``by: symbols``, and for wasmtime the Rust API's compile, instantiate and
  call functions, demangled and matched by path (``RUST_API``);
- neither (stripped, or no runtime): nothing, and the process keeps what its name says.

The runtime's version comes from the paths rustc leaves in panic messages
(``wasmtime-49.0.2/src/...``) or Go's build information, where the file has them.

Each file is examined once, keyed by its identity (``file_identity``: device, inode, mtime,
ctime and size; ``Scanner``), with
its size and the bytes searched bounded, in a thread of its own: never on the collector's path.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import re
import stat
import struct
import threading
from dataclasses import dataclass
from typing import Callable

from ..probes.lifecycle import file_identity

COMPILE, INSTANTIATE, CALL = "compile", "instantiate", "call"
LIBRARY, SYMBOLS, NAME = "library", "symbols", "name"

MAX_FILE_BYTES = 1 << 30  # larger files are not examined (said as such)
MAX_TABLE_BYTES = 32 << 20  # a string table read at most this far (read whole, then searched)
MAX_VERSION_BYTES = 16 << 20  # read-only data searched for a version at most this far
MAX_NAMES_BYTES = 1 << 20  # the section names
MAX_NAME = 4096  # a symbol name longer than this is not an API function's
MAX_COPIES = 16  # monomorphised copies of one API function given uprobes at most
MIN_SYMBOLS = 20  # a runtime's names, at least this many, make a file that runtime's
MAX_FILES = 4096  # files remembered (least recently used go first)
MAX_PENDING = 1024  # processes waiting to be examined; more are counted and retried later
IDLE_EXIT_S = 30.0  # the scanning thread ends after this long without work

# Functions of a runtime's C API whose presence in .dynsym makes a file its library.
C_API_MARKERS: dict[str, tuple[bytes, ...]] = {
    "wasmtime": (b"wasmtime_module_new", b"wasmtime_instance_new"),
    "wasmedge": (b"WasmEdge_VMCreate", b"WasmEdge_VMInstantiate"),
    "wasmer": (b"wasmer_last_error_message", b"wasmer_version"),
}

# A runtime's own names in .symtab: the crate's name as Rust mangles it, legacy
# (``_ZN8wasmtime...``) and v0 (``_R...Cs..._8wasmtime...``) alike, or a C++ namespace
# (``_ZN8WasmEdge...``); or in a Go binary's function table.
_SYMBOL_MARKERS: dict[str, bytes] = {
    "wasmtime": b"8wasmtime",
    "wasmer": b"6wasmer",
    "wasmedge": b"8WasmEdge",
}
_GO_MARKERS: dict[str, bytes] = {"wazero": b"github.com/tetratelabs/wazero."}

_VERSIONS: dict[str, re.Pattern[bytes]] = {
    # Bounded: a crafted file's "version" must not be megabytes long in every Snapshot.
    "wasmtime": re.compile(rb"wasmtime-(\d{1,6}\.\d{1,6}\.\d{1,6})[/\\]src"),
    "wasmer": re.compile(rb"wasmer-(\d{1,6}\.\d{1,6}\.\d{1,6})[/\\]src"),
    "wazero": re.compile(
        rb"\tgithub\.com/tetratelabs/wazero\tv(\d{1,6}\.\d{1,6}\.\d{1,6}[^\t\n]{0,64})"
    ),
}

# The Rust API of wasmtime whose calls are a compile, an instantiate, or a call into the guest:
# (type, method); any module path inside the crate (it moved between releases), so the
# component model's Linker, InstancePre, Func and TypedFunc (wasmtime::component::...) count
# as the core ones do. Async variants are left out: they return a future at once, so their
# call's length is not the work's.
RUST_API: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {
    "wasmtime": {
        COMPILE: (
            ("Module", "new"),
            ("Module", "from_binary"),
            ("Module", "from_file"),
            ("Module", "deserialize"),
            ("Module", "deserialize_file"),
            ("Module", "deserialize_raw"),
            ("Module", "deserialize_open_file"),
            # the component model (Spin, wasmCloud, `wasmtime serve`): wasmtime::component
            ("Component", "new"),
            ("Component", "from_binary"),
            ("Component", "from_file"),
            ("Component", "deserialize"),
            ("Component", "deserialize_file"),
        ),
        INSTANTIATE: (
            ("Instance", "new"),
            ("Linker", "instantiate"),
            ("InstancePre", "instantiate"),
        ),
        # Func::call may leave by a tail call into call_impl_do_call (Extism's build does):
        # then the latter is where a call's end can be seen.
        CALL: (("Func", "call"), ("TypedFunc", "call"), ("Func", "call_impl_do_call")),
    },
}


@dataclass(frozen=True)
class Finding:
    """What one file says about a WebAssembly runtime in it."""

    runtime: str | None
    by: str | None = None  # LIBRARY (its C API exported) or SYMBOLS (its own names)
    version: str | None = None
    # Rust API functions found, as (mangled symbol, kind), for uprobes
    entry_points: tuple[tuple[str, str], ...] = ()
    # kinds the file has no entry point for, with why
    missing: tuple[str, ...] = ()
    note: str | None = None  # why nothing could be said (not ELF, too large, ...)
    symbols: bool = False  # the file has a .symtab
    # Where each entry point is in the file: (symbol, its first instruction's file offset,
    # the file offsets of its return instructions). Uprobes go on those instructions, never a
    # return probe: a return probe replaces the return address on the stack, and a Rust panic
    # unwinding through that frame then aborts the process ("failed to initiate panic").
    locations: tuple[tuple[str, int, tuple[int, ...]], ...] = ()
    # file_identity of the file examined: offsets are attached only to it
    file: tuple[int, ...] | None = None


NOTHING = Finding(None)


# -- ELF ------------------------------------------------------------------------------------
class NotElf(ValueError):
    pass


@dataclass
class _Section:
    name: str
    type: int
    offset: int
    size: int
    link: int
    addr: int = 0  # where it is loaded (sh_addr)


_SHT_SYMTAB, _SHT_STRTAB, _SHT_DYNSYM, _SHT_NOBITS = 2, 3, 11, 8


Reader = Callable[[int, int], bytes]  # (offset, length) -> at most that many bytes


def bytes_reader(data: bytes) -> Reader:
    return lambda offset, length: data[offset : offset + length]


def sections(read: Reader, size: int) -> list[_Section]:
    """The section headers of a 64-bit little-endian ELF file (x86-64, arm64) of ``size``
    bytes, or NotElf. Every offset and size is clamped to the file: a truncated or lying
    header gives empty sections, never a read outside it."""
    head = read(0, 64)
    if size < 64 or len(head) < 64 or head[:4] != b"\x7fELF":
        raise NotElf("not an ELF file")
    if head[4] != 2 or head[5] != 1:
        raise NotElf("not a 64-bit little-endian ELF file")
    shoff = struct.unpack_from("<Q", head, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", head, 0x3A)
    # Entries of exactly 64 bytes, as every linker writes them: a larger size (up to 64 KiB a
    # header) would make the table a read of up to 1 GiB.
    if shentsize != 64:
        raise NotElf(f"section headers of {shentsize} bytes, not 64")
    if shnum == 0 or shoff > size or shnum * shentsize > size - shoff:
        raise NotElf("section headers outside the file")
    table = read(shoff, shnum * shentsize)
    if len(table) < shnum * shentsize:
        raise NotElf("section headers outside the file")
    raw = []
    for i in range(shnum):
        name, typ, _flags, addr, offset, sz, link = struct.unpack_from(
            "<IIQQQQI", table, i * shentsize
        )
        if offset > size:
            offset, sz = size, 0
        elif typ != _SHT_NOBITS:
            sz = min(sz, size - offset)  # a truncated file: only what is there
        raw.append((name, typ, offset, sz, link, addr))
    names = b""
    if shstrndx < shnum:
        names = read(raw[shstrndx][2], min(raw[shstrndx][3], MAX_NAMES_BYTES))
    out = []
    for name, typ, offset, sz, link, addr in raw:
        end = names.find(b"\0", name) if name < len(names) else -1
        text = names[name:end].decode("ascii", "replace") if end >= 0 else ""
        out.append(_Section(text, typ, offset, sz, link, addr))
    return out


# -- Rust symbol names -----------------------------------------------------------------------
_LEGACY_ESCAPES = {
    "$SP$": "@", "$BP$": "*", "$RF$": "&", "$LT$": "<", "$GT$": ">", "$LP$": "(", "$RP$": ")",
    "$C$": ",", "$u20$": " ", "$u27$": "'", "$u5b$": "[", "$u5d$": "]", "$u7b$": "{",
    "$u7d$": "}", "$u7e$": "~", "$u3b$": ";", "$u2b$": "+", "$u22$": '"',
}  # fmt: skip
_LEGACY_ESCAPE = re.compile(r"\$(?:SP|BP|RF|LT|GT|LP|RP|C|u[0-9a-f]{2})\$")
_HASH = re.compile(r"h[0-9a-f]{16}")
_DIGITS = "0123456789"  # str.isdigit() also takes "²", which int() refuses


def legacy_path(symbol: str) -> tuple[str, ...] | None:
    """The path of a Rust legacy-mangled name (``_ZN8wasmtime6Module3new17h...E``) without its
    hash: ("wasmtime", "Module", "new"); None if it is not one."""
    if not symbol.startswith("_ZN"):
        return None
    i, parts = 3, []
    while i < len(symbol) and symbol[i] != "E":
        j = i
        while j < len(symbol) and symbol[j] in _DIGITS:
            j += 1
        if j == i or j - i > 9:  # no name part is a billion characters (int() refuses 4301)
            return None
        n = int(symbol[i:j])
        if n == 0 or j + n > len(symbol):
            return None
        part = symbol[j : j + n]
        if part.startswith("_$"):
            part = part[1:]
        part = _LEGACY_ESCAPE.sub(lambda m: _LEGACY_ESCAPES.get(m.group(), "?"), part)
        parts.append(part.replace("..", "::"))
        i = j + n
    if i >= len(symbol) or not parts:
        return None
    if _HASH.fullmatch(parts[-1]):
        parts.pop()
    return tuple(parts)


class _V0:
    """A parser of Rust v0 symbol names (RFC 2603) that keeps only what matching needs: the
    path's identifiers, with generic arguments parsed and dropped. An impl's path is its self
    type's path (``<wasmtime::Module>::new`` is wasmtime, Module, new); a trait impl's is one
    ``<T as Trait>`` part, which matches no API function. Backrefs are followed."""

    MAX_DEPTH = 64
    # Productions parsed at most: a backref re-parses what it points at, and a name made of
    # backrefs to backrefs would otherwise take exponential time (rustc's own names take a
    # few hundred at most).
    MAX_STEPS = 10_000

    def __init__(self, text: str) -> None:
        self.s = text  # after "_R"
        self.i = 0
        self.depth = 0
        self.steps = 0

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        if self.i >= len(self.s):
            raise ValueError("short")
        c = self.s[self.i]
        self.i += 1
        return c

    def eat(self, c: str) -> bool:
        if self.peek() == c:
            self.i += 1
            return True
        return False

    def base62(self) -> int:
        if self.eat("_"):
            return 0
        n = 0
        while True:
            c = self.take()
            if c == "_":
                return n + 1
            if c in _DIGITS:
                d = ord(c) - 48
            elif "a" <= c <= "z":
                d = ord(c) - 87
            elif "A" <= c <= "Z":
                d = ord(c) - 29
            else:
                raise ValueError("base-62")
            n = n * 62 + d

    def decimal(self) -> int:
        j = self.i
        if self.eat("0"):  # "0" is a number of its own (a closure's empty name)
            return 0
        while self.peek() and self.peek() in _DIGITS:
            self.i += 1
        if j == self.i:
            raise ValueError("decimal")
        return int(self.s[j : self.i])

    def ident(self) -> str:
        if self.eat("s"):
            self.base62()  # disambiguator
        punycode = self.eat("u")
        n = self.decimal()
        self.eat("_")
        if self.i + n > len(self.s):
            raise ValueError("identifier")
        name = self.s[self.i : self.i + n]
        self.i += n
        return "{punycode}" if punycode else name

    def backref(self, parse: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        at = self.base62()
        if at >= self.i:
            raise ValueError("backref forward")
        saved, self.i = self.i, at
        try:
            return parse()
        finally:
            self.i = saved

    def nested(self, parse: Callable[[], tuple[str, ...]]) -> tuple[str, ...]:
        self.depth += 1
        self.steps += 1
        if self.depth > self.MAX_DEPTH or self.steps > self.MAX_STEPS:
            raise ValueError("too deep or too long")
        try:
            return parse()
        finally:
            self.depth -= 1

    def path(self) -> tuple[str, ...]:
        return self.nested(self._path)

    def _path(self) -> tuple[str, ...]:
        c = self.take()
        if c == "C":
            return (self.ident(),)
        if c == "M":
            if self.eat("s"):
                self.base62()
            self.path()  # the impl's own path (its module)
            return self.type()
        if c == "X":
            if self.eat("s"):
                self.base62()
            self.path()
            self_type = self.type()
            trait = self.path()
            return (f"<{'::'.join(self_type)} as {'::'.join(trait)}>",)
        if c == "Y":
            self_type = self.type()
            trait = self.path()
            return (f"<{'::'.join(self_type)} as {'::'.join(trait)}>",)
        if c == "N":
            ns = self.take()
            inner = self.path()
            name = self.ident()
            if ns.isupper():  # closures, shims: {closure}, not a name
                return (*inner, f"{{{ns}:{name}}}")
            return (*inner, name)
        if c == "I":
            base = self.path()
            while not self.eat("E"):
                self.generic_arg()
            return base
        if c == "B":
            return self.backref(self.path)
        raise ValueError(f"path {c!r}")

    def generic_arg(self) -> None:
        if self.eat("L"):
            self.base62()
        elif self.eat("K"):
            self.const()
        else:
            self.type()

    def const(self) -> None:
        self.nested(self._const)

    def _const(self) -> tuple[str, ...]:
        if self.eat("p"):
            return ()
        if self.eat("B"):
            return self.backref(self._const)
        self.type()
        self.eat("n")
        while self.take() != "_":
            pass
        return ()

    def type(self) -> tuple[str, ...]:
        return self.nested(self._type)

    def _type(self) -> tuple[str, ...]:
        c = self.peek()
        if c and c.islower():
            self.i += 1
            return (c,)
        if c in ("C", "M", "X", "Y", "N", "I"):
            return self.path()
        self.i += 1
        if c == "B":
            return self.backref(self.type)
        if c == "A":
            self.type()
            self.const()
            return ("[]",)
        if c in ("S", "P", "O"):
            self.type()
            return (c,)
        if c in ("R", "Q"):
            if self.eat("L"):
                self.base62()
            return self.type()  # &T is matched as T
        if c == "F":
            if self.eat("G"):
                self.base62()
            self.eat("U")
            if self.eat("K"):
                if not self.eat("C"):
                    self.ident()
            while not self.eat("E"):
                self.type()
            self.type()
            return ("fn",)
        if c == "D":
            if self.eat("G"):
                self.base62()
            while not self.eat("E"):
                self.path()
                while self.eat("p"):
                    self.ident()
                    self.type()
            if self.eat("L"):
                self.base62()
            return ("dyn",)
        if c == "T":
            while not self.eat("E"):
                self.type()
            return ("()",)
        raise ValueError(f"type {c!r}")


def v0_path(symbol: str) -> tuple[str, ...] | None:
    """The path of a Rust v0-mangled name (``_RNvMs2_NtNtCs..._8wasmtime7runtime6moduleNtB5_
    6Module11from_binary``): ("wasmtime", "runtime", "module", "Module", "from_binary"); None
    if it is not one or cannot be read."""
    if not symbol.startswith("_R"):
        return None
    p = _V0(symbol[2:])
    try:
        if p.peek() and p.peek() in _DIGITS:
            p.decimal()  # encoding version
        return p.path()
    except (ValueError, IndexError, RecursionError):
        return None


def rust_path(symbol: str) -> tuple[str, ...] | None:
    return legacy_path(symbol) if symbol.startswith("_ZN") else v0_path(symbol)


def rust_name(symbol: str) -> str:
    """A Rust API function's name as people write it (``wasmtime::Module::new``): the crate,
    the type without its generic arguments, the method; the symbol itself if unreadable."""
    path = rust_path(symbol)
    if not path or len(path) < 3:
        return symbol
    component = "component::" if "component" in path[1:-2] else ""
    return f"{path[0]}::{component}{path[-2].split('<', 1)[0]}::{path[-1]}"


def api_kind(path: tuple[str, ...] | None, runtime: str) -> str | None:
    """The kind of call (COMPILE, INSTANTIATE, CALL) an API function of ``runtime`` is, by its
    path: the crate first, the type (generic arguments dropped) and method last."""
    api = RUST_API.get(runtime)
    if not api or not path or len(path) < 3 or path[0] != runtime or "vm" in path:
        return None  # another crate's, or the runtime's internals (wasmtime::vm::Instance)
    pair = (path[-2].split("<", 1)[0], path[-1])
    for kind, functions in api.items():
        if pair in functions:
            return kind
    return None


# -- examining one file ------------------------------------------------------------------------
def _method_idents(runtime: str) -> re.Pattern[bytes]:
    """The API's method names as mangled identifiers (``3new``, ``11instantiate``): the string
    table is searched for these, and only the names around them are demangled."""
    methods = sorted({m for fns in RUST_API[runtime].values() for _, m in fns})
    return re.compile(
        rb"(?<![0-9])(?:" + b"|".join(f"{len(m)}{m}".encode() for m in methods) + b")"
    )


_METHODS = {runtime: _method_idents(runtime) for runtime in RUST_API}


def examine(path: str) -> Finding:
    """What ``path`` says about a WebAssembly runtime in it (see the module's docstring). Only
    a regular file is read (opened without blocking: a FIFO put where a file was is refused),
    a bounded slice at a time (``MAX_TABLE_BYTES``, ``MAX_VERSION_BYTES``): a file truncated
    meanwhile gives short reads, never a fault."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        return Finding(None, note=f"could not be read: {exc.strerror or exc}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return Finding(None, note="not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            return Finding(None, note=f"not examined: {st.st_size} bytes, over {MAX_FILE_BYTES}")

        def read(offset: int, length: int) -> bytes:
            if offset >= st.st_size or length <= 0:
                return b""
            return os.pread(fd, min(length, st.st_size - offset), offset)

        found = _examine(read, st.st_size)
    except NotElf as exc:
        return Finding(None, note=str(exc))
    except (OSError, ValueError, OverflowError, struct.error) as exc:
        return Finding(None, note=f"could not be read: {exc}")
    finally:
        os.close(fd)
    return found


def _examine(read: Reader, size: int) -> Finding:
    secs = sections(read, size)
    by_name = {s.name: s for s in secs}

    def strings_of(s: _Section) -> bytes:
        """The string table ``s`` links to (at most MAX_TABLE_BYTES of it)."""
        if s.link >= len(secs) or secs[s.link].type != _SHT_STRTAB:
            return b""
        t = secs[s.link]
        return read(t.offset, min(t.size, MAX_TABLE_BYTES))

    def area(name: str, limit: int) -> bytes:
        sec = by_name.get(name)
        if sec is None or sec.type == _SHT_NOBITS:
            return b""
        return read(sec.offset, min(sec.size, limit))

    dyn = next((s for s in secs if s.type == _SHT_DYNSYM), None)
    sym = next((s for s in secs if s.type == _SHT_SYMTAB), None)
    has_symtab = sym is not None and sym.size > 0

    def version(runtime: str) -> str | None:
        pattern = _VERSIONS.get(runtime)
        if pattern is None:
            return None
        names = [".go.buildinfo", ".rodata"] if runtime == "wazero" else [".rodata"]
        for name in names:
            m = pattern.search(area(name, MAX_VERSION_BYTES))
            if m:
                return m.group(1).decode("ascii", "replace")
        return None

    # 1. A C API exported: the library of that runtime.
    if dyn is not None:
        names = strings_of(dyn)
        for runtime, markers in C_API_MARKERS.items():
            if any(b"\0" + m + b"\0" in names for m in markers):
                return Finding(runtime, LIBRARY, version(runtime), symbols=has_symtab)
    # 2. The runtime's own names.
    if sym is not None:
        table = strings_of(sym)
        for runtime, marker in _SYMBOL_MARKERS.items():
            count, at = 0, 0
            while count < MIN_SYMBOLS and (at := table.find(marker, at)) >= 0:
                count += 1
                at = table.find(b"\0", at)  # one count per name
                if at < 0:
                    break
            if count >= MIN_SYMBOLS:
                points, missing = _entry_points(table, runtime)
                locations, why = _locate(read, secs, sym, table, [n for n, _ in points])
                located = {n for n, _, _ in locations}
                kept = tuple((n, k) for n, k in points if n in located)
                left = sorted({rust_name(n) for n, _ in points if n not in located})
                if left:  # found by name, but their ends cannot be seen
                    missing += (f"{', '.join(left)}: not probed ({why})",)
                return Finding(runtime, SYMBOLS, version(runtime), kept, missing, symbols=True,
                               locations=tuple(locations))  # fmt: skip
    gopcln = area(".gopclntab", MAX_TABLE_BYTES)
    for runtime, marker in _GO_MARKERS.items():
        if marker in gopcln:
            return Finding(
                runtime,
                SYMBOLS,
                version(runtime),
                (),
                (f"{runtime} is Go: its compile and instantiate are not probed",),
                symbols=True,
            )
    if not has_symtab:
        return Finding(None, note="no symbol table (stripped)")
    return Finding(None, symbols=True)


_STT_FUNC = 2
_EM_X86_64 = 62
MAX_FUNCTION_BYTES = 1 << 20  # a function disassembled at most this far
MAX_DISASSEMBLED = 16 << 20  # bytes disassembled per file at most
MAX_RETURNS = 64  # a function with more return instructions is not probed


def _locate(
    read: Reader, secs: list[_Section], sym: _Section, table: bytes, names: list[str]
) -> tuple[list[tuple[str, int, tuple[int, ...]]], str]:
    """Every copy of each named function (a name may be in the table more than once, each a
    local copy of its own): (name, file offset of its first instruction, of its return
    instructions), x86-64, disassembled with capstone. Kept: those disassembled to their
    last byte, with a return and no tail call (a jump out of the function, conditional or
    not: its calls that leave that way would never be seen to end); one name per address.
    And why the others were not."""
    if not names:
        return [], ""
    machine = struct.unpack_from("<H", read(0x12, 2) or b"\0\0")[0]
    if machine != _EM_X86_64:
        return [], "return instructions are found on x86-64 only"
    try:
        import capstone
    except ImportError:
        return [], "no capstone module to find return instructions with"
    at_name = {}
    for name in names:
        raw = b"\0" + name.encode() + b"\0"
        i = table.find(raw)
        while i >= 0:
            at_name[i + 1] = name
            i = table.find(raw, i + 1)
    symbols = read(sym.offset, min(sym.size, MAX_TABLE_BYTES))
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    out: list[tuple[str, int, tuple[int, ...]]] = []
    entries: set[int] = set()  # every entry tried, kept or not: each disassembled once
    copies: dict[str, int] = {}  # copies of each name tried, kept or not
    budget = MAX_DISASSEMBLED
    why = "no return instruction in them"
    for st_name, info, _other, shndx, value, size in struct.iter_unpack(
        "<IBBHQQ", symbols[: len(symbols) // 24 * 24]
    ):
        name = at_name.get(st_name)
        if name is None or info & 0xF != _STT_FUNC or not 0 < shndx < len(secs) or not size:
            continue
        sec = secs[shndx]
        if not sec.addr <= value < sec.addr + sec.size:
            continue
        entry = value - sec.addr + sec.offset
        if entry in entries:  # another name for the same code (folded): probed once
            continue
        if copies.get(name, 0) >= MAX_COPIES:
            continue
        copies[name] = copies.get(name, 0) + 1
        entries.add(entry)
        if size > MAX_FUNCTION_BYTES:
            why = f"larger than {MAX_FUNCTION_BYTES} bytes"
            continue
        if size > budget:
            why = f"more than {MAX_DISASSEMBLED} bytes of functions to disassemble"
            break
        budget -= size
        returns, tail, end = [], False, entry
        for a, n, m, op in md.disasm_lite(read(entry, size), entry):
            end = a + n
            if m.split()[-1] in ("ret", "retf"):  # also "repz ret", "bnd ret"
                returns.append(a)
            elif m.startswith("j") and ("rip" in op or _outside(op, entry, entry + size)):
                tail = True  # to another function, conditionally or not (or through the GOT)
        if end != entry + size:
            why = "they could not be disassembled to their end"
        elif tail:
            why = "they leave by a tail call: their end is not seen without a return probe"
        elif len(returns) > MAX_RETURNS:
            why = f"more than {MAX_RETURNS} return instructions"
        elif returns:
            out.append((name, entry, tuple(returns)))
    return out, why


def _outside(operand: str, lo: int, hi: int) -> bool:
    """A jump's immediate target outside [lo, hi) (a register or memory operand: False)."""
    try:
        return not lo <= int(operand, 16) < hi
    except ValueError:
        return False


def function_locations(path: str, names: list[str]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """{name: (file offset of its first instruction, of its return instructions)} for the
    named functions of ``path``'s symbol table that were found (see ``_locate``)."""
    with open(path, "rb") as f:
        data = f.read()
    read = bytes_reader(data)
    secs = sections(read, len(data))
    sym = next((s for s in secs if s.type == _SHT_SYMTAB), None)
    if sym is None or sym.link >= len(secs):
        return {}
    table = read(secs[sym.link].offset, secs[sym.link].size)
    return {name: (entry, returns) for name, entry, returns in _locate(read, secs, sym, table,
                                                                          names)[0]}  # fmt: skip


def _entry_points(
    table: bytes, runtime: str
) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """The API functions of ``runtime`` named in a string table: (symbol, kind) each, and the
    kinds none was found for. Linear in the table: a name is looked for at most MAX_NAME bytes
    around a method's identifier, and longer names are skipped."""
    api = RUST_API.get(runtime)
    if not api:
        return (), (f"{runtime}: no API functions known to wasmtop",)
    found: dict[str, list[str]] = {kind: [] for kind in api}
    crate = _SYMBOL_MARKERS[runtime]
    last_end = -1
    for m in _METHODS[runtime].finditer(table):
        if m.start() < last_end:
            continue  # inside the name just read
        start = table.rfind(b"\0", max(0, m.start() - MAX_NAME), m.start()) + 1
        end = table.find(b"\0", m.end(), m.end() + MAX_NAME)
        # A name longer than MAX_NAME is none of these: the next look starts past it (or past
        # as far as this one looked), so each byte is looked at a bounded number of times.
        if end < 0:
            last_end = m.end() + MAX_NAME
            continue
        last_end = end
        if start == 0 and m.start() > MAX_NAME:
            continue
        raw = table[start:end]
        if crate not in raw:
            continue
        name = raw.decode("ascii", "replace")
        path = rust_path(name)
        kind = api_kind(path, runtime) if path else None
        if kind is not None and len(found[kind]) < MAX_COPIES and name not in found[kind]:
            found[kind].append(name)
    points = tuple((name, kind) for kind, names in found.items() for name in names)
    missing = tuple(
        f"{kind}: none of {', '.join(f'{t}::{m}' for t, m in api[kind])} in .symtab"
        " (inlined, or another version)"
        for kind, names in found.items()
        if not names
    )
    return points, missing


# -- per process, once per file, off the collector's path ----------------------------------------
@dataclass(frozen=True)
class Detected:
    """What a process's files say: the file that holds a runtime and what it says, or, when
    none does, its executable and what that says (``finding.runtime`` None: a note such as
    "no symbol table (stripped)")."""

    path: str  # as the process sees it (its mount namespace)
    finding: Finding
    start_ticks: int | None = None  # the process examined (a pid reused is another process)


def executable_files(maps: str) -> list[tuple[str, str, int]]:
    """(address range, path, inode) of each file a process maps executable, once each, in the
    order of /proc/PID/maps."""
    out, seen = [], set()
    for line in maps.splitlines():
        fields = line.split(None, 5)
        if len(fields) < 6 or "x" not in fields[1] or not fields[5].startswith("/"):
            continue
        try:
            inode = int(fields[4])
        except ValueError:
            continue
        key = (fields[3], inode)
        if inode == 0 or key in seen:
            continue
        seen.add(key)
        out.append((fields[0], fields[5].strip(), inode))
    return out


@dataclass
class ScanStats:
    files: int = 0  # files examined
    processes: int = 0  # processes whose files were all looked at
    dropped: int = 0  # processes not queued (the queue was full): asked again later
    failed: int = 0  # files that could not be read


class Scanner:
    """Examines the files processes map, each file once (by ``file_identity``), in a thread
    of its own. ``submit(pid)`` queues a process; ``take()`` gives the
    processes examined since, with what was found (a Detected, or None). The files remembered
    are bounded (least recently used go), and so is the queue (a process that does not fit is
    counted in ``stats.dropped`` and may be submitted again)."""

    def __init__(
        self,
        proc_root: str = "/proc",
        examine_file: Callable[[str], Finding] = examine,
        max_files: int = MAX_FILES,
        start_of: Callable[[int], int | None] = lambda pid: None,
    ) -> None:
        """``start_of(pid)``: the process's start time (incarnation.start_ticks), recorded with
        what is found so that a pid reused by another process is not lent it."""
        self.proc_root = proc_root
        self.start_of = start_of
        self.examine_file = examine_file
        self.max_files = max_files
        self.stats = ScanStats()
        self._files: collections.OrderedDict[tuple[int, int, int], Finding] = (
            collections.OrderedDict()
        )
        self._queue: queue.Queue[int | None] = queue.Queue(MAX_PENDING)
        self._done: list[tuple[int, Detected | None]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, pid: int) -> bool:
        with self._lock:
            try:
                self._queue.put_nowait(pid)
            except queue.Full:
                self.stats.dropped += 1
                return False
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="wasm-scan", daemon=True)
                self._thread.start()
        return True

    def take(self) -> list[tuple[int, Detected | None]]:
        with self._lock:
            done, self._done = self._done, []
        return done

    def close(self) -> None:
        if self._thread is not None:
            try:
                self._queue.put(None, timeout=1)
            except queue.Full:
                pass
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while True:
            try:
                pid = self._queue.get(timeout=IDLE_EXIT_S)
            except queue.Empty:  # idle: the thread ends (submit starts another)
                with self._lock:
                    if self._queue.empty():
                        self._thread = None
                        return
                continue
            if pid is None:
                return
            try:
                found = self.process(pid)
            except Exception:  # a process gone, a file unreadable: nothing found
                found = None
            with self._lock:
                self._done.append((pid, found))

    def process(self, pid: int) -> Detected | None:
        """The first file ``pid`` maps executable that holds a runtime (its executable first),
        examined now unless remembered."""
        base = f"{self.proc_root}/{pid}"
        start = self.start_of(pid)
        try:
            with open(f"{base}/maps") as f:
                maps = f.read()
        except OSError:
            return None
        try:
            exe = os.readlink(f"{base}/exe")
        except OSError:
            exe = None
        files = executable_files(maps)
        files.sort(key=lambda f: f[1] != exe)  # the executable first
        found: Detected | None = None
        for span, path, _inode in files:
            # A file replaced since it was mapped shows as "PATH (deleted)": only the mapping
            # itself (map_files: CAP_SYS_ADMIN) reaches it; the path now names another file.
            deleted = path.endswith(" (deleted)")
            paths = [f"{base}/map_files/{span}"] + ([] if deleted else [f"{base}/root{path}"])
            finding = self.file(*paths)
            if finding.runtime is not None:
                found = Detected(path, finding, start)
                break
            if path == exe and found is None:
                found = Detected(path, finding, start)  # nothing yet: what the executable says
        if self.start_of(pid) != start:
            return None  # the pid now names another process: what was read is not its
        self.stats.processes += 1
        return found

    def file(self, *paths: str) -> Finding:
        """What the file at the first of ``paths`` that can be opened says (remembered)."""
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            key = file_identity(st)
            with self._lock:
                known = self._files.get(key)
                if known is not None:
                    self._files.move_to_end(key)
                    return known
            finding = dataclasses.replace(self.examine_file(path), file=key)
            self.stats.files += 1
            if finding.note and finding.note.startswith("could not"):
                self.stats.failed += 1
            with self._lock:
                self._files[key] = finding
                while len(self._files) > self.max_files:
                    self._files.popitem(last=False)
            return finding
        return NOTHING

    def remembered(self) -> int:
        with self._lock:
            return len(self._files)
