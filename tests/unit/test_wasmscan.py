"""Runtimes found by what files contain (collector/wasmscan.py): real hosts' files (Extism's
``libextism_sys.so``, the wasmtime package's ``_libwasmtime.so``), a stripped copy made here,
Rust's two manglings, and hostile bytes."""

from __future__ import annotations

import errno
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support import package_dir
from wasmtop.collector import wasmscan
from wasmtop.collector.wasmscan import CALL, COMPILE, INSTANTIATE, LIBRARY, SYMBOLS


def extism_lib() -> Path:
    """Extism's library: wasmtime as a Rust crate, with its symbol table (the test extra)."""
    return package_dir("extism_sys") / "libextism_sys.so"


def wasmtime_lib() -> Path:
    """The wasmtime package's library: its C API, and Rust v0 names in its symbol table."""
    return next(package_dir("wasmtime").glob("*/_libwasmtime.so"))


def legacy(*parts: str) -> str:
    """A Rust legacy-mangled name of these path parts, with a hash."""
    return "_ZN" + "".join(f"{len(p)}{p}" for p in parts) + "17h0123456789abcdefE"


def test_legacy_mangled_names_are_read_to_their_paths():
    assert wasmscan.legacy_path(legacy("wasmtime", "runtime", "module", "Module", "new")) == (
        "wasmtime", "runtime", "module", "Module", "new")  # fmt: skip
    name = legacy("wasmtime", "runtime", "instance", "InstancePre$LT$T$GT$", "instantiate")
    assert wasmscan.legacy_path(name) == ("wasmtime", "runtime", "instance", "InstancePre<T>",
                                          "instantiate")  # fmt: skip
    assert wasmscan.api_kind(wasmscan.legacy_path(name), "wasmtime") == INSTANTIATE
    # A trait impl, a closure, another crate's Module::new, the runtime's internal Instance:
    # no API function
    for other in (
        legacy("_$LT$wasmtime..runtime..module..Module$u20$as$u20$core..fmt..Debug$GT$", "fmt"),
        legacy("wasmtime", "runtime", "module", "Module", "new",
               "_$u7b$$u7b$closure$u7d$$u7d$"),
        legacy("wasmer", "Module", "new"),
        legacy("wasmtime", "runtime", "vm", "instance", "Instance", "new"),
    ):  # fmt: skip
        path = wasmscan.legacy_path(other)
        assert path is not None and wasmscan.api_kind(path, "wasmtime") is None, path
    assert wasmscan.legacy_path("_ZN3foo") is None  # no end
    assert wasmscan.legacy_path("_ZN9foo3barE") is None  # a length past the end


def test_v0_mangled_names_are_read_with_their_backrefs_and_generics():
    # from the wasmtime package's own library (rustc's v0 mangling)
    name = "_RNvMs2_NtNtCs2Grf271ag0A_8wasmtime7runtime6moduleNtB5_6Module11from_binary"
    assert wasmscan.v0_path(name) == ("wasmtime", "runtime", "module", "Module", "from_binary")
    assert wasmscan.api_kind(wasmscan.v0_path(name), "wasmtime") == COMPILE
    # a closure inside it is not the function
    closure = "_RNC" + name[2:].replace("B5_", "B7_") + "0"  # backrefs move with the prefix
    assert wasmscan.v0_path(closure)[-1].startswith("{C")
    assert wasmscan.api_kind(wasmscan.v0_path(closure), "wasmtime") is None
    assert wasmscan.v0_path("_RNvNtCs1234_5crate3foo3bar") == ("crate", "foo", "bar")
    assert wasmscan.v0_path("_RNvB0_3foo") is None  # a backref that points at itself
    assert wasmscan.v0_path("_Resume") is None


def test_every_v0_name_of_a_real_library_is_read():
    """Every Rust v0 name in _libwasmtime.so's .symtab parses (26,000 of them; C names that
    happen to start with _R are not Rust's)."""
    import re

    data = wasmtime_lib().read_bytes()
    secs = wasmscan.sections(wasmscan.bytes_reader(data), len(data))
    sym = next(s for s in secs if s.type == 2)
    table = secs[sym.link]
    strings = data[table.offset : table.offset + table.size]
    names = [m.group(1).decode() for m in re.finditer(rb"\0(_R[0-9A-Za-z_]+)(?=\0)", strings)]
    rust = [n for n in names if n[2] in "NIC" or n[2].isdigit()]
    assert len(rust) > 20_000
    assert [n for n in rust if wasmscan.v0_path(n) is None] == []


def test_extism_library_is_wasmtime_by_its_symbols_with_version_and_entry_points():
    f = wasmscan.examine(str(extism_lib()))
    assert (f.runtime, f.by) == ("wasmtime", SYMBOLS)
    assert f.version and f.version.count(".") == 2
    kinds = {kind for _, kind in f.entry_points}
    assert kinds == {COMPILE, INSTANTIATE, CALL}, f.missing
    for name, kind in f.entry_points:
        path = wasmscan.rust_path(name)
        assert path[0] == "wasmtime" and "vm" not in path, path
        assert wasmscan.api_kind(path, "wasmtime") == kind
    # Each symbol is a function the library defines, at the address nm gives it: the entry's
    # file offset is that address less the text section's (address - offset), and every return
    # offset holds a ret opcode. Func::call leaves by a tail call here: not probed, and said.
    nm = subprocess.run(["nm", "--defined-only", str(extism_lib())], capture_output=True,
                        text=True, check=True).stdout  # fmt: skip
    address = {line.split()[-1]: int(line.split()[0], 16) for line in nm.splitlines()
               if line.split()[1:2] in (["t"], ["T"])}  # fmt: skip
    data = extism_lib().read_bytes()
    text = next(s for s in wasmscan.sections(wasmscan.bytes_reader(data), len(data))
                if s.name == ".text")  # fmt: skip
    assert {name for name, _ in f.entry_points} <= address.keys()
    assert len({entry for _, entry, _ in f.locations}) == len(f.locations) > 0
    for name, entry, returns in f.locations:
        assert entry == address[name] - text.addr + text.offset, name
        assert returns and all(data[r] == 0xC3 or data[r : r + 2] == b"\xf3\xc3" for r in returns)
    assert any(m.startswith("wasmtime::Func::call: not probed (they leave by a tail call")
               for m in f.missing), f.missing  # fmt: skip


def test_the_wasmtime_package_is_its_c_api_library():
    f = wasmscan.examine(str(wasmtime_lib()))
    assert (f.runtime, f.by, f.entry_points) == ("wasmtime", LIBRARY, ())


def test_a_stripped_copy_says_nothing_and_a_plain_python_is_no_runtime(tmp_path):
    copy = tmp_path / "libextism_sys.so"
    subprocess.run(["strip", "--strip-all", "-o", str(copy), str(extism_lib())], check=True)
    f = wasmscan.examine(str(copy))
    assert (f.runtime, f.symbols) == (None, False)
    assert f.note == "no symbol table (stripped)"
    for exe in {sys.executable, os.path.realpath(sys.executable)}:
        assert wasmscan.examine(exe).runtime is None


def _elf(sections: list[tuple[str, int, bytes, int]]) -> bytes:
    """A minimal ELF64 file with these (name, type, contents, link) sections."""
    names = b"\0" + b"".join(n.encode() + b"\0" for n, *_ in sections) + b".shstrtab\0"
    body, offsets = b"", []
    for _, _, data, _ in sections:
        offsets.append(64 + len(body))
        body += data
    shstr_off = 64 + len(body)
    body += names
    shoff = 64 + len(body)
    header = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 56, 0, 64, len(sections) + 2,
        len(sections) + 1)  # fmt: skip
    shdrs = b"\0" * 64
    at = 1
    for (name, typ, data, link), off in zip(sections, offsets):
        shdrs += struct.pack("<IIQQQQIIQQ", at, typ, 0, 0, off, len(data), link, 0, 1, 0)
        at += len(name) + 1
    shdrs += struct.pack("<IIQQQQIIQQ", at, 3, 0, 0, shstr_off, len(names), 0, 0, 1, 0)
    return header + body + shdrs


def test_a_go_binary_with_wazero_is_found_with_its_version(tmp_path):
    """A file laid out as Go lays out a binary (no Go toolchain here: made by hand)."""
    pcln = b"\0runtime.main\0github.com/tetratelabs/wazero.(*runtime).Instantiate\0"
    info = (b"\xff Go buildinf:\0path\tedge\nmod\tedge\t(devel)\n"
            b"dep\tgithub.com/tetratelabs/wazero\tv1.8.2\th1:x\n")  # fmt: skip
    path = tmp_path / "edge"
    path.write_bytes(_elf([(".gopclntab", 1, pcln, 0), (".go.buildinfo", 1, info, 0)]))
    f = wasmscan.examine(str(path))
    assert (f.runtime, f.by, f.version) == ("wazero", SYMBOLS, "1.8.2")
    assert f.entry_points == () and "not probed" in f.missing[0]


@given(st.binary(max_size=4096))
def test_any_bytes_examined_give_a_finding_never_an_error(data):
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(b"\x7fELF\x02\x01" + data if data[:1] == b"\x01" else data)
        f.flush()
        found = wasmscan.examine(f.name)
    assert found.runtime is None and found.entry_points == ()


@given(st.lists(st.tuples(st.sampled_from([".symtab", ".strtab", ".dynsym", ".rodata", "x"]),
                          st.integers(0, 12), st.binary(max_size=300), st.integers(0, 8)),
                max_size=6))  # fmt: skip
def test_any_section_table_gives_a_finding_never_an_error(sections):
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(_elf(sections))
        f.flush()
        found = wasmscan.examine(f.name)
    assert isinstance(found, wasmscan.Finding)


@given(st.text(max_size=200))
def test_any_text_demangles_to_a_path_or_none(text):
    for name in (text, "_R" + text, "_ZN" + text):
        path = wasmscan.rust_path(name)
        assert path is None or all(isinstance(p, str) for p in path)


def test_each_file_is_examined_once_whoever_maps_it_and_the_memory_is_bounded(tmp_path):
    """Two processes mapping the same library: examined once. The files remembered stay at
    the bound, oldest first out; a process gone is None."""
    code = ("import ctypes, sys; ctypes.CDLL(sys.argv[1]); print('up', flush=True); "
            "sys.stdin.read()")  # fmt: skip
    lib = str(extism_lib())
    procs = [subprocess.Popen([sys.executable, "-c", code, lib], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]  # fmt: skip
    try:
        for p in procs:
            assert p.stdout.readline() == "up\n"
        seen: list[str] = []

        def counting(path: str) -> wasmscan.Finding:
            seen.append(path)
            return wasmscan.examine(path)

        scanner = wasmscan.Scanner(examine_file=counting)
        first = scanner.process(procs[0].pid)
        assert first is not None and first.finding.runtime == "wasmtime"
        assert first.path == str(extism_lib())
        examined = len(seen)
        first_files = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in seen}
        second = scanner.process(procs[1].pid)
        assert second == first
        # No file the first maps was examined again (the second may map one more of its own)
        again = [
            p for p in seen[examined:] if (os.stat(p).st_dev, os.stat(p).st_ino) in first_files
        ]
        assert again == []
        assert str(extism_lib()) not in [os.path.realpath(p) for p in seen[examined:]]
        # A plain Python maps more files than that, none a runtime: each is examined, and
        # the least recently used go beyond the bound.
        pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "text": True}
        plain = subprocess.Popen([sys.executable, "-c", code, "libc.so.6"], **pipes)
        procs.append(plain)
        assert plain.stdout.readline() == "up\n"
        small = wasmscan.Scanner(max_files=3)
        assert small.process(plain.pid).finding.runtime is None
        assert small.remembered() == 3 < small.stats.files
        # What is found carries the process's start time; a pid that named another process by
        # the end of the examination gives nothing.
        steady = wasmscan.Scanner(start_of=lambda pid: 4242)
        assert steady.process(procs[0].pid).start_ticks == 4242
        starts = iter([4242, 4343])
        reused = wasmscan.Scanner(start_of=lambda pid: next(starts))
        assert reused.process(procs[0].pid) is None
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert scanner.process(procs[0].pid) is None


def test_the_scanner_works_in_its_own_thread_and_a_full_queue_is_counted(monkeypatch):
    """Four processes handed over while the thread is held: the fourth does not fit, and is
    counted. (A child, not this test's process: that one maps Extism's library by now.)"""
    child = subprocess.Popen([sys.executable, "-c", "import sys; print(1, flush=True); "
                              "sys.stdin.read()"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)  # fmt: skip
    child.stdout.readline()
    try:
        _queue_full(monkeypatch, child.pid)
    finally:
        child.kill()
        child.wait()


def _queue_full(monkeypatch, pid: int) -> None:
    release = threading.Event()
    scanner = wasmscan.Scanner()
    monkeypatch.setattr(wasmscan, "MAX_PENDING", 2)
    monkeypatch.setattr(scanner, "_queue", __import__("queue").Queue(2))
    real = scanner.process
    monkeypatch.setattr(scanner, "process", lambda pid: (release.wait(30), real(pid))[1])
    assert scanner.submit(pid)
    deadline = 100
    while scanner._queue.qsize() and deadline:  # the thread took the first
        threading.Event().wait(0.05)
        deadline -= 1
    assert scanner.submit(pid) and scanner.submit(pid)
    assert not scanner.submit(pid)
    assert scanner.stats.dropped == 1
    release.set()
    done: list = []
    for _ in range(200):
        done += scanner.take()
        if len(done) == 3:
            break
        threading.Event().wait(0.05)
    assert [pid for pid, _ in done] == [pid] * 3
    for _, d in done:  # a plain Python: what its executable said, and no runtime
        assert d.finding.runtime is None and d.path == os.readlink(f"/proc/{pid}/exe")
    scanner.close()


def _v0_b62(n: int) -> str:
    if n == 0:
        return "_"
    digits, n, out = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", n - 1, ""
    while True:
        out, n = digits[n % 62] + out, n // 62
        if n == 0:
            return out + "_"


def test_a_v0_name_of_backrefs_to_backrefs_is_given_up_not_parsed_forever():
    """Each tuple type names the previous one twice by backref: parsing the last would take
    2^40 steps. The parser gives up after a bounded number (a hostile file's names)."""
    body, at = "INvC3foo3bar", 0
    at, body = len(body), body + "ThhE"
    for _ in range(40):
        at, body = len(body), body + "T" + f"B{_v0_b62(at)}" * 2 + "E"
    assert wasmscan.v0_path("_R" + body + "E") is None
    small = "INvC3foo3barThhE" + "T" + f"B{_v0_b62(12)}" * 2 + "E" + "E"
    assert wasmscan.v0_path("_R" + small) == ("foo", "bar")  # a real one still parses


def test_lying_offsets_truncation_and_fifos_give_a_finding(tmp_path):
    import os

    huge = _elf([(".symtab", 2, b"", 2), (".strtab", 3, b"\0x\0", 0)])
    # the .strtab section's offset (its header's fifth field) made 2**63 + 1: its header is the
    # third of four at the end of the file
    at = len(huge) - 2 * 64 + 24
    bad = huge[:at] + (2**63 + 1).to_bytes(8, "little") + huge[at + 8 :]
    path = tmp_path / "lying"
    path.write_bytes(bad)
    assert wasmscan.examine(str(path)).runtime is None
    real = extism_lib().read_bytes()
    half = tmp_path / "half.so"
    half.write_bytes(real[: len(real) // 2])  # its section headers are at the end: gone
    assert wasmscan.examine(str(half)).note == "section headers outside the file"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert wasmscan.examine(str(fifo)).note == "not a regular file"  # and it did not block


# -- crafted files: bounded work, never the daemon's memory -------------------------------------
def test_section_headers_of_another_size_are_refused_before_their_table_is_read():
    # 16,383 headers of 65,535 bytes each "fit" a 1 GiB file: a 1 GiB read if believed.
    head = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack(
        "<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, 64, 0, 64, 56, 0, 65535, 16383, 0)  # fmt: skip
    asked: list[int] = []

    def read(offset: int, length: int) -> bytes:
        asked.append(length)
        return head[offset : offset + length]

    with pytest.raises(wasmscan.NotElf, match="section headers of 65535 bytes"):
        wasmscan.sections(read, 1 << 30)
    assert max(asked) == 64


def test_a_version_string_is_bounded_and_a_name_part_of_4301_digits_is_no_name(tmp_path):
    info = b"\xff Go buildinf:\0dep\tgithub.com/tetratelabs/wazero\tv1.8.2" + b"x" * 100_000
    pcln = b"\0github.com/tetratelabs/wazero.(*runtime).Instantiate\0"
    path = tmp_path / "edge"
    path.write_bytes(_elf([(".gopclntab", 1, pcln, 0), (".go.buildinfo", 1, info, 0)]))
    f = wasmscan.examine(str(path))
    assert f.runtime == "wazero" and f.version == "1.8.2" + "x" * 64
    assert wasmscan.legacy_path("_ZN" + "9" * 4301 + "wasmtimeE") is None  # int() would raise
    for runtime in ("wasmtime", "wasmer"):  # a real version, and one of 100 kB digits
        pattern = wasmscan._VERSIONS[runtime]
        assert pattern.search(f"/{runtime}-25.0.1/src/lib.rs".encode()).group(1) == b"25.0.1"
        assert pattern.search(f"/{runtime}-1.{'9' * 100_000}.0/src".encode()) is None


def _function(code: bytes) -> bytes:
    """An ELF whose .text is ``code``, one function "f" over all of it (.symtab -> .strtab)."""
    symbol = struct.pack("<IBBHQQ", 1, 2, 0, 1, 0, len(code))  # name 1, STT_FUNC, .text, at 0
    return _elf([(".text", 1, code, 0), (".symtab", 2, b"\0" * 24 + symbol, 3),
                 (".strtab", 3, b"\0f\0", 0)])  # fmt: skip


def test_a_function_with_more_returns_than_the_bound_is_not_probed(tmp_path):
    few, many = tmp_path / "few", tmp_path / "many"
    few.write_bytes(_function(b"\xc3" * wasmscan.MAX_RETURNS))
    many.write_bytes(_function(b"\xc3" * (wasmscan.MAX_RETURNS + 1)))
    (entry, returns) = wasmscan.function_locations(str(few), ["f"])["f"]
    assert len(returns) == wasmscan.MAX_RETURNS and returns[0] == entry
    assert wasmscan.function_locations(str(many), ["f"]) == {}


def test_a_fifo_where_a_runtime_library_was_is_refused_before_anything_opens_it(tmp_path):
    from wasmtop.probes.lifecycle import LifecycleProbe

    fifo = tmp_path / "libwasmtime.so"
    os.mkfifo(fifo)  # BCC's open of it would wait for a writer forever
    with pytest.raises(OSError) as err:
        LifecycleProbe().attach_library(str(fifo), "wasmtime")
    assert err.value.errno == errno.EINVAL and "not a regular file" in str(err.value)


def test_offsets_go_only_to_the_file_they_were_found_in(tmp_path):
    from wasmtop.probes.lifecycle import EntryPoint, LifecycleProbe, file_identity

    lib = tmp_path / "libx.so"
    lib.write_bytes(b"\x7fELF" + bytes(60))
    found_in = file_identity(os.stat(lib))
    lib.write_bytes(b"\x7fELF" + bytes(61))  # replaced since it was examined: another size
    point = EntryPoint("f", INSTANTIATE, "f", 0x10, (0x20,))
    with pytest.raises(OSError) as err:
        LifecycleProbe().attach_library(str(lib), "wasmtime", [point], (), found_in)
    assert err.value.errno == errno.ESTALE
    # The file it was found in is taken (the probe here is not loaded: nothing is attached).
    got = LifecycleProbe().attach_library(str(lib), "wasmtime", [point], (), file_identity(
        os.stat(lib)))  # fmt: skip
    assert got.error == "probe not loaded"
