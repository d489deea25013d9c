"""A probe's BPF program as BCC compiled it, kept so that later starts need no compiler.

BCC compiles C with its embedded LLVM/clang, which takes seconds and about 150 MB resident for
the life of the process that loads it. Here the compiler runs only in a short-lived child
process (``python -m wasmtop.probes.compile``): it compiles the rendered C and answers with
what the kernel needs to load it: each map's type and sizes (with the key and value type
descriptions the readers build their ctypes from), and each function's instructions with the
places where a map's fd goes. The parent (daemon, UI, ``snapshot``) creates the maps and loads
the programs itself through bpf(2) (probes/loader.py), so libbcc's LLVM is never mapped in it.

The answer is stored in a cache directory, keyed by what can change it: the
rendered C text, the cflags, the format files of the tracepoints it names (BCC generates their
structs from them), the kernel release and build, the kernel headers BCC compiles against, the
BCC version and the format of this file and of probes/compile.py's answer (FORMAT: raise it
when either changes). An entry is checked (its owner and mode, its own key, a SHA-256 of its
body, its structure and sizes) before use; one that fails is counted with its reason, removed
and compiled again, never loaded; one that passes and still fails to load (the verifier
refuses it) is removed and compiled once more (Probe.start).
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import hashlib
import inspect
import json
import os
import platform
import re
import stat
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import features

FORMAT = 1
MAGIC = b"wasmtop-bpf-object"
MAX_ENTRY_BYTES = 16 << 20
MAX_ENTRIES = 64  # beyond this the least recently used entries go (old versions and kernels)
DEFAULT_DIRS = (Path("/var/cache/wasmtop"),)
BCC_VERSION_FILE = Path("/usr/lib/python3/dist-packages/bcc/version.py")

# enum bpf_insn: ld_imm64 (opcode 0x18) whose src_reg says the immediate is a map's fd
_LD_IMM64 = 0x18
_PSEUDO_MAP_FD = 1


class EntryError(ValueError):
    """A cache entry that must not be loaded; the message says why."""


@dataclass(frozen=True)
class MapSpec:
    name: str
    type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    key_desc: Any  # BCC's type description (parsed JSON); None where the map has no keys
    leaf_desc: Any
    inner: str | None = None  # map-in-map: the map whose layout its slots take


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    insns: bytes
    relocations: tuple[tuple[int, str], ...]  # (instruction index, map name)


@dataclass(frozen=True)
class CompiledObject:
    license: str
    kern_version: int
    maps: tuple[MapSpec, ...]
    programs: tuple[ProgramSpec, ...]

    def program(self, name: str) -> ProgramSpec:
        for p in self.programs:
            if p.name == name:
                return p
        raise KeyError(name)

    # -- serialised form --------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "license": self.license,
            "kern_version": self.kern_version,
            "maps": [m.__dict__ for m in self.maps],
            "programs": [
                {
                    "name": p.name,
                    "insns": base64.b64encode(p.insns).decode(),
                    "relocations": [list(r) for r in p.relocations],
                }
                for p in self.programs
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> CompiledObject:
        """Raises EntryError on anything but the structure to_json makes."""
        try:
            maps = tuple(_map_spec(m) for m in data["maps"])
            names = {m.name for m in maps}
            if len(names) != len(maps):
                raise EntryError("malformed: two maps of one name")
            outer = {m.name for m in maps if m.inner is not None}
            programs = []
            for p in data["programs"]:
                insns = base64.b64decode(p["insns"], validate=True)
                if not insns or len(insns) % 8:
                    raise EntryError(f"program {p['name']}: {len(insns)} bytes of instructions")
                relocs = tuple((int(i), str(n)) for i, n in p["relocations"])
                for i, n in relocs:
                    if n not in names or not 0 <= i < len(insns) // 8 - 1:
                        raise EntryError(f"program {p['name']}: relocation {i} -> {n!r}")
                    if insns[i * 8] != _LD_IMM64 or insns[i * 8 + 1] >> 4 != _PSEUDO_MAP_FD:
                        raise EntryError(f"program {p['name']}: relocation {i} not at ld_imm64")
                programs.append(ProgramSpec(str(p["name"]), insns, relocs))
            for m in maps:
                if m.inner is not None and (m.inner not in names or m.inner in outer):
                    raise EntryError(f"map {m.name}: inner map {m.inner!r} missing or nested")
                _check_sizes(m)
            kern_version = data["kern_version"]
            if not isinstance(kern_version, int) or not 0 <= kern_version < 1 << 32:
                raise EntryError("malformed: kern_version")
            obj = cls(str(data["license"]), kern_version, maps, tuple(programs))
        except EntryError:
            raise
        except Exception as exc:  # anything else a crafted entry can raise is a refusal too
            raise EntryError(f"malformed: {type(exc).__name__}: {exc}"[:300]) from None
        return obj


def _check_sizes(m: MapSpec) -> None:
    """The key and value types describe as many bytes as the map has (a reader's buffer of
    the wrong size would let the kernel write past it)."""
    from .tables import RINGBUF, DescError, ctype_of

    if m.type == RINGBUF:
        return
    for desc, size, what in ((m.key_desc, m.key_size, "key"), (m.leaf_desc, m.value_size, "value")):
        if desc is None:
            continue
        try:
            got = ctypes.sizeof(ctype_of(desc))
        except DescError as exc:
            raise EntryError(f"map {m.name}: {what} type: {exc}") from None
        if got != size:
            raise EntryError(f"map {m.name}: {what} type of {got} bytes, map has {size}")


def _map_spec(m: Any) -> MapSpec:
    ints = ("type", "key_size", "value_size", "max_entries", "flags")
    if not isinstance(m, dict) or not isinstance(m.get("name"), str) or not m["name"]:
        raise EntryError("malformed map")
    for k in ints:
        v = m.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v < 1 << 32:
            raise EntryError(f"map {m['name']}: {k} not a 32-bit count")
    inner = m.get("inner")
    if inner is not None and not isinstance(inner, str):
        raise EntryError(f"map {m['name']}: inner not a name")
    return MapSpec(m["name"], *(m[k] for k in ints), m.get("key_desc"), m.get("leaf_desc"), inner)


def relocations(insns: bytes, fds: dict[int, str]) -> list[tuple[int, str]]:
    """Where the compiled instructions load a map's fd: (instruction index, map name)."""
    out = []
    for i in range(0, len(insns) - 8, 8):
        if insns[i] == _LD_IMM64 and insns[i + 1] >> 4 not in (0, _PSEUDO_MAP_FD):
            raise EntryError(f"instruction {i // 8}: ld_imm64 kind {insns[i + 1] >> 4} not kept")
        if insns[i] == _LD_IMM64 and insns[i + 1] >> 4 == _PSEUDO_MAP_FD:
            fd = int.from_bytes(insns[i + 4 : i + 8], "little", signed=True)
            if fd not in fds:
                raise EntryError(f"instruction {i // 8} loads fd {fd}, which is no map of ours")
            out.append((i // 8, fds[fd]))
    return out


def patched(program: ProgramSpec, fds: dict[str, int]) -> bytes:
    """The program's instructions with each map reference set to this process's fd."""
    code = bytearray(program.insns)
    for index, name in program.relocations:
        code[index * 8 + 4 : index * 8 + 8] = fds[name].to_bytes(4, "little", signed=True)
    return bytes(code)


# -- the cache key ----------------------------------------------------------------------------
_TRACEPOINT_STRUCT = re.compile(r"tracepoint__([a-z0-9_]+?)__([a-z0-9_]+)")


def _file_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def environment() -> dict[str, str]:
    """What, besides the source, decides what BCC produces on this machine."""
    headers = features.check_kernel_headers()
    autoconf = ""
    for base in (os.environ.get("BCC_KERNEL_SOURCE"), str(features.headers_dir())):
        if base:
            autoconf = autoconf or _file_text(Path(base) / "include/generated/autoconf.h")
    try:
        st = features.KHEADERS.stat()
        kheaders = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        kheaders = ""
    return {
        "format": str(FORMAT),
        "release": platform.release(),
        "build": _file_text(Path("/proc/sys/kernel/version")).strip(),
        "machine": platform.machine(),
        "headers": headers.reason,
        "autoconf": hashlib.sha256(autoconf.encode()).hexdigest(),
        "kheaders": kheaders,
        "bcc": _file_text(BCC_VERSION_FILE).strip(),
    }


def cache_key(text: str, cflags: list[str], env: dict[str, str] | None = None) -> str:
    h = hashlib.sha256()
    for k, v in sorted((env if env is not None else environment()).items()):
        h.update(f"{k}={v}\0".encode())
    for flag in cflags:
        h.update(flag.encode() + b"\0")
    h.update(text.encode())
    for cat, event in sorted(set(_TRACEPOINT_STRUCT.findall(text))):
        h.update(f"\0tp {cat}:{event}\0".encode())
        h.update(features.tracepoint_format(f"{cat}:{event}").encode())
    return h.hexdigest()


# -- the cache ---------------------------------------------------------------------------------
def default_dir() -> Path:
    """WASMTOP_CACHE_DIR, else /var/cache/wasmtop where it can be written, else the user's
    cache directory."""
    env = os.environ.get("WASMTOP_CACHE_DIR")
    if env:
        return Path(env)
    for d in DEFAULT_DIRS:
        with contextlib.suppress(OSError):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        if os.access(d, os.W_OK | os.X_OK):
            return d
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "wasmtop"


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason -> count
    stores: int = 0
    store_failures: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "hits": self.hits,
            "misses": self.misses,
            "rejected": dict(self.rejected),
            "stores": self.stores,
            "store_failures": self.store_failures,
        }


class ObjectCache:
    """Compiled objects on disk, one file per key (``<key>.bpfobj``). ``directory`` None: no
    cache (every start compiles)."""

    SUFFIX = ".bpfobj"

    def __init__(self, directory: Path | None) -> None:
        self.dir = directory
        self.stats = CacheStats()
        self.last_reason = ""
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        assert self.dir is not None
        return self.dir / f"{key}{self.SUFFIX}"

    def get(self, key: str) -> CompiledObject | None:
        """The entry for key, checked; None on a miss or a rejected entry (removed)."""
        if self.dir is None:
            return None
        path = self._path(key)
        unsafe = _unsafe(self.dir)
        if unsafe:
            with self._lock:
                self.stats.rejected["unsafe"] += 1
            self.last_reason = f"rejected: unsafe: {unsafe}"
            return None
        try:
            with open(path, "rb") as f:
                why = _unsafe(path, os.fstat(f.fileno()))
                raw = f.read(MAX_ENTRY_BYTES + 1)
        except FileNotFoundError:
            with self._lock:
                self.stats.misses += 1
            self.last_reason = "miss"
            return None
        except OSError as exc:
            self._reject(path, f"unreadable: {exc.strerror}")
            return None
        try:
            if why:
                raise EntryError(f"unsafe: {why}")
            obj = decode_entry(raw, key)
        except EntryError as exc:
            self._reject(path, str(exc))
            return None
        with self._lock:
            self.stats.hits += 1
        self.last_reason = "hit"
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: the last to be evicted
        return obj

    def discard(self, key: str, reason: str) -> None:
        """An entry that passed its checks and still could not be loaded: counted, removed."""
        if self.dir is not None:
            self._reject(self._path(key), reason)

    def _reject(self, path: Path, reason: str) -> None:
        kind = reason.split(":")[0]
        with self._lock:
            self.stats.rejected[kind] += 1
        self.last_reason = f"rejected: {reason}"
        with contextlib.suppress(OSError):
            path.unlink()

    def put(self, key: str, obj: CompiledObject) -> None:
        """Store atomically (write a temporary file, rename); a failure is counted, never
        raised: the cache only saves time. Nothing is stored in a directory others could
        write to."""
        if self.dir is None or _unsafe(self.dir):
            return
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if _unsafe(self.dir):
                return
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(encode_entry(obj, key))
                os.replace(tmp, self._path(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError:
            with self._lock:
                self.stats.store_failures += 1
            return
        with self._lock:
            self.stats.stores += 1
        self._evict()

    def _evict(self) -> None:
        """Keep at most MAX_ENTRIES objects: the least recently used beyond that are removed."""
        entries = []
        for path in self.entries():
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime_ns, path))
        for _, path in sorted(entries)[: max(0, len(entries) - MAX_ENTRIES)]:
            with contextlib.suppress(OSError):
                path.unlink()

    def get_answer(self, key: str) -> dict[str, Any] | None:
        """A small answer stored beside the objects (a feature check), or None. Read as the
        objects are: never through a link, never from a file or directory others could
        write."""
        if self.dir is None or _unsafe(self.dir):
            return None
        try:
            fd = os.open(self.dir / f"{key}.answer", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            if _unsafe(self.dir / f"{key}.answer", os.fstat(fd)):
                return None
            data = json.loads(os.read(fd, 65536))
        except (OSError, ValueError, RecursionError):
            return None
        finally:
            os.close(fd)
        return data if isinstance(data, dict) else None

    def put_answer(self, key: str, answer: dict[str, Any]) -> None:
        if self.dir is None or _unsafe(self.dir):
            return
        with contextlib.suppress(OSError):
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(answer))
            os.replace(tmp, self.dir / f"{key}.answer")

    def entries(self) -> list[Path]:
        if self.dir is None or not self.dir.is_dir():
            return []
        return sorted(self.dir.glob(f"*{self.SUFFIX}"))

    def clear(self) -> int:
        """Remove every entry (and stored answer); returns how many objects."""
        n = 0
        if self.dir is not None and self.dir.is_dir():
            for path in self.dir.glob("*.answer"):
                with contextlib.suppress(OSError):
                    path.unlink()
        for path in self.entries():
            with contextlib.suppress(OSError):
                path.unlink()
                n += 1
        return n


def _unsafe(path: Path, st: os.stat_result | None = None) -> str:
    """Why programs read from this file or directory could be someone else's: it is owned by
    another user or writable by group or others, or (a directory) one of its parents could be
    replaced by someone else (owned by another user than root or us, or writable by others
    without the sticky bit). "" when it is safe. (The programs are loaded into the kernel with
    wasmtop's privileges.)"""
    try:
        st = st or os.stat(path)
    except OSError:
        return ""  # missing: nothing to trust or distrust yet
    me = os.geteuid()
    if st.st_uid != me:
        return f"{path} is owned by uid {st.st_uid}, not {me}"
    if st.st_mode & 0o022:
        return f"{path} is writable by group or others (mode {st.st_mode & 0o777:o})"
    if not stat.S_ISDIR(st.st_mode):
        return "" if stat.S_ISREG(st.st_mode) else f"{path} is not a regular file"
    for parent in Path(os.path.abspath(path)).parents:
        try:
            pst = os.stat(parent)
        except OSError:
            continue
        if pst.st_uid not in (0, me):
            return f"{parent} is owned by uid {pst.st_uid}"
        if pst.st_mode & 0o022 and not pst.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by group or others (mode {pst.st_mode & 0o777:o})"
    return ""


def encode_entry(obj: CompiledObject, key: str) -> bytes:
    body = json.dumps({"key": key, "object": obj.to_json()}, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest().encode()
    return MAGIC + b" " + str(FORMAT).encode() + b" " + digest + b"\n" + body


def decode_entry(raw: bytes, key: str) -> CompiledObject:
    """Raises EntryError with the reason: truncated, garbled, another format or key."""
    if len(raw) > MAX_ENTRY_BYTES:
        raise EntryError(f"too large: over {MAX_ENTRY_BYTES} bytes")
    head, sep, body = raw.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        raise EntryError("garbled: no header")
    if parts[1] != str(FORMAT).encode():
        raise EntryError(f"stale: format {parts[1][:10]!r}, not {FORMAT}")
    if hashlib.sha256(body).hexdigest().encode() != parts[2]:
        raise EntryError("garbled: checksum does not match (truncated or changed)")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        raise EntryError("garbled: body is not JSON") from None
    if not isinstance(data, dict) or data.get("key") != key:
        raise EntryError("stale: made for another key")
    return CompiledObject.from_json(data.get("object"))


# -- the compiler child -------------------------------------------------------------------------
class CompileError(RuntimeError):
    """BCC refused the program (or the child failed); the message holds its output's tail."""


COMPILE_TIMEOUT_S = 120


# Set for the compiler child: a file its stderr captures (probeset.captured_stderr) write to,
# which this process reads when the child dies inside one (LLVM exits on a fatal error with the
# capture's words still in it).
STDERR_FILE_ENV = "WASMTOP_CHILD_STDERR"


def _child(request: dict[str, Any]) -> subprocess.CompletedProcess:
    """Run the compiler child (python -m wasmtop.probes.compile) on one request. A child that
    fails with nothing on its stderr died inside a capture of it (LLVM exits on a fatal error):
    its stderr is then what the capture held."""
    with tempfile.NamedTemporaryFile(prefix="wasmtop-compile-", suffix=".log") as capture:
        try:
            # -P and cwd /: the child's imports come from the installed package only, never
            # from whatever directory the (root) user started wasmtop in.
            safe_path = ["-P"] if sys.version_info >= (3, 11) else []  # and cwd /, before 3.11
            proc = subprocess.run(
                [sys.executable, *safe_path, "-m", f"{__package__}.compile"],
                input=json.dumps(request).encode(),
                cwd="/",
                capture_output=True,
                timeout=COMPILE_TIMEOUT_S,
                check=False,
                env={**os.environ, STDERR_FILE_ENV: capture.name},
            )
        except subprocess.TimeoutExpired:
            raise CompileError(f"compiler did not finish in {COMPILE_TIMEOUT_S} s") from None
        if proc.returncode != 0 and not proc.stderr.strip():
            size = os.fstat(capture.fileno()).st_size  # the fatal error is at the end
            capture.seek(max(0, size - (64 << 10)))
            proc.stderr = capture.read()
        return proc


def compile_in_child(text: str, cflags: list[str]) -> CompiledObject:
    """Compile in a short-lived child process that imports BCC; this process never does."""
    (result,) = compile_batch_in_child([(text, cflags)])
    if isinstance(result, str):
        raise CompileError(result)
    return result


_cache: ObjectCache | None = None
_cache_lock = threading.Lock()


def object_cache() -> ObjectCache:
    """The process's cache, in default_dir() unless configure_cache() said otherwise."""
    global _cache
    with _cache_lock:
        if _cache is None:
            off = os.environ.get("WASMTOP_CACHE", "").lower() in ("0", "off", "no")
            _cache = ObjectCache(None if off else default_dir())
        return _cache


def configure_cache(directory: Path | None) -> ObjectCache:
    """Use this directory (None: no cache) from now on; the counts start again."""
    global _cache
    with _cache_lock:
        _cache = ObjectCache(directory)
        return _cache


def obtain(text: str, cflags: list[str], cache: ObjectCache) -> tuple[CompiledObject, str]:
    """The compiled object for this source: from the cache, else compiled in a child and
    stored. Returns it and where it came from ("cache" or "compiler"). (A probe does the same
    in two steps, Probe.lookup and Probe.compiled, so that a ProbeSet compiles in batches.)"""
    key = cache_key(text, cflags)
    obj = cache.get(key)
    if obj is not None:
        return obj, "cache"
    obj = compile_in_child(text, cflags)
    cache.put(key, obj)
    return obj, "compiler"


def compile_batch_in_child(sources: list[tuple[str, list[str]]]) -> list[CompiledObject | str]:
    """Compile several modules in one child, in turn: an object, or the error for each (the
    child's start and the compiler's set-up are paid once)."""
    proc = _child({"batch": [{"text": t, "cflags": c} for t, c in sources]})
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = "\n".join(line for line in lines if "warning" not in line)[-2000:]
        raise CompileError(f"compile failed (exit {proc.returncode}):\n{detail}")
    try:
        answers = json.loads(proc.stdout)["batch"]
        if not isinstance(answers, list) or len(answers) != len(sources):
            raise ValueError("not one answer per module")
        out: list[CompiledObject | str] = []
        for a in answers:
            if "error" in a:
                lines = str(a["error"]).splitlines()
                out.append("compile failed:\n" + "\n".join(x for x in lines if "warning" not in x))
            else:
                out.append(CompiledObject.from_json(a["object"]))
        return out
    except (ValueError, KeyError, TypeError, EntryError) as exc:
        raise CompileError(f"compiler answered something unreadable: {exc}") from None


def fentry_check(function: str, cache: ObjectCache | None = None) -> tuple[bool, str]:
    """Whether this kernel loads an fentry program on ``function``, and why not: asked of a
    compiler child once per kernel and BCC version, then answered from the cache."""
    return _child_answer(f"fentry {function}", {"fentry": function}, cache)


def sockmap_check(cache: ObjectCache | None = None) -> tuple[bool, str]:
    """Whether FIONREAD and epoll see bytes an sk_msg program redirected (compile.py
    sockmap_ingress), and if not, what accelerate mode's self-test says in the same words:
    asked of a compiler child once per kernel and BCC version, then answered from the cache."""
    from .compile import SOCKMAP_CHECK
    from .sockbypass import redirected_delivery

    # Keyed by the code that answers, so a changed check is asked again.
    code = SOCKMAP_CHECK + inspect.getsource(redirected_delivery)
    name = f"sockmap ingress {hashlib.sha256(code.encode()).hexdigest()[:16]}"
    return _child_answer(name, {"sockmap_ingress": True}, cache)


def _child_answer(
    name: str, request: dict[str, Any], cache: ObjectCache | None
) -> tuple[bool, str]:
    cache = cache if cache is not None else object_cache()
    key = cache_key(name, [])
    known = cache.get_answer(key)
    if known is not None:
        return bool(known.get("ok")), str(known.get("reason", ""))
    try:
        proc = _child(request)
        answer = json.loads(proc.stdout) if proc.returncode == 0 else None
    except (CompileError, ValueError):
        answer = None
    if not isinstance(answer, dict):
        return False, "the compiler child failed to answer"
    if not answer.pop("transient", False):  # a failure of the moment is asked again next time
        cache.put_answer(key, answer)
    return bool(answer.get("ok")), str(answer.get("reason", ""))
