"""The compiled-object cache: what makes a key, and that nothing but an intact entry of the same
key is ever loaded (probes/compiled.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmtop.probes import compiled
from wasmtop.probes.compiled import (
    CompiledObject,
    EntryError,
    MapSpec,
    ObjectCache,
    ProgramSpec,
    cache_key,
    decode_entry,
    encode_entry,
    patched,
    relocations,
)

# r1 = map fd 7 (ld_imm64, src_reg 1, two instruction slots); exit
LD_MAP = bytes([0x18, 0x11, 0, 0]) + (7).to_bytes(4, "little") + bytes(8)
EXIT = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])
OBJ = CompiledObject(
    license="GPL",
    kern_version=0,
    maps=(
        MapSpec("counts", 1, 4, 8, 16, 0, "unsigned int", "unsigned long long"),
        MapSpec("layout", 1, 4, 24, 1, 0, "int", ["trace_ctx", [["id", "char", [24]]], "struct"]),
        MapSpec("slot", 12, 4, 4, 1, 0, "int", "int", inner="layout"),
    ),
    programs=(ProgramSpec("prog", LD_MAP + EXIT, ((0, "counts"),)),),
)
KEY = "k" * 64


def test_an_entry_round_trips() -> None:
    assert decode_entry(encode_entry(OBJ, KEY), KEY) == OBJ


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw: raw[: len(raw) // 2], "garbled"),  # truncated
        (lambda raw: raw[:-5] + b"XXXXX", "garbled"),  # changed
        (lambda raw: b"", "garbled"),
        (lambda raw: raw.replace(b"wasmtop-bpf-object 1", b"wasmtop-bpf-object 9", 1), "stale"),
    ],
)
def test_a_damaged_entry_is_refused_with_its_reason(damage, reason: str) -> None:
    with pytest.raises(EntryError, match=f"^{reason}"):
        decode_entry(damage(encode_entry(OBJ, KEY)), KEY)


def test_an_entry_of_another_key_is_stale() -> None:
    with pytest.raises(EntryError, match="^stale: made for another key"):
        decode_entry(encode_entry(OBJ, KEY), "j" * 64)


def test_a_well_formed_entry_with_a_wrong_structure_is_refused() -> None:
    """A checksum only proves the bytes are what was written: the structure is checked too."""
    import hashlib

    for bad in (
        {"maps": [], "programs": [], "license": "GPL", "kern_version": 0, "extra": 1},  # ok
        {"maps": [{"name": "m"}], "programs": [], "license": "GPL", "kern_version": 0},
        {"maps": [], "programs": [{"name": "p", "insns": "AAAA", "relocations": []}],
         "license": "GPL", "kern_version": 0},
        {"maps": [], "programs": [{"name": "p", "insns": "GAAAAAAAAAAAAAAAAAAAAAAA",
         "relocations": [[0, "nomap"]]}], "license": "GPL", "kern_version": 0},
    ):  # fmt: skip
        body = json.dumps({"key": KEY, "object": bad}).encode()
        raw = b"wasmtop-bpf-object 1 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
        if "extra" in bad:
            assert decode_entry(raw, KEY).maps == ()
        else:
            with pytest.raises(EntryError):
                decode_entry(raw, KEY)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_garbage_is_refused_never_crashes(raw: bytes) -> None:
    with pytest.raises(EntryError):
        decode_entry(raw, KEY)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_single_byte_change_is_refused(where: int, value: int) -> None:
    raw = bytearray(encode_entry(OBJ, KEY))
    i = where % len(raw)
    if raw[i] == value:
        return
    raw[i] = value
    with pytest.raises(EntryError):
        decode_entry(bytes(raw), KEY)


def test_the_cache_counts_hits_misses_and_rejections_and_removes_bad_entries(
    tmp_path: Path,
) -> None:
    cache = ObjectCache(tmp_path)
    assert cache.get(KEY) is None and cache.stats.misses == 1
    cache.put(KEY, OBJ)
    assert cache.get(KEY) == OBJ and cache.stats.hits == 1
    path = tmp_path / f"{KEY}.bpfobj"
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk
    assert cache.get(KEY) is None
    assert cache.stats.rejected == {"garbled": 1}
    assert cache.last_reason.startswith("rejected: garbled")
    assert not path.exists()  # removed: the next start compiles and stores again
    cache.put(KEY, OBJ)
    assert [p.name for p in cache.entries()] == [f"{KEY}.bpfobj"]
    assert cache.clear() == 1 and cache.entries() == []


def test_no_directory_means_no_cache() -> None:
    cache = ObjectCache(None)
    cache.put(KEY, OBJ)
    assert cache.get(KEY) is None and cache.stats.stores == 0


def test_an_unwritable_directory_is_counted_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cache = ObjectCache(blocker / "sub")  # a directory under a regular file cannot be made
    cache.put(KEY, OBJ)
    assert cache.stats.store_failures == 1


def test_the_key_follows_source_flags_tracepoint_formats_and_kernel(monkeypatch) -> None:
    env = {"release": "6.18.0", "bcc": "0.26.0"}
    text = "int f(struct tracepoint__sched__sched_switch *args) { return 0; }"
    formats = {"sched:sched_switch": "field: char prev_comm[16]"}
    monkeypatch.setattr(compiled.features, "tracepoint_format", lambda tp: formats.get(tp, ""))
    base = cache_key(text, ["-DX=1"], env)
    assert cache_key(text, ["-DX=1"], env) == base
    assert cache_key(text + " ", ["-DX=1"], env) != base
    assert cache_key(text, ["-DX=2"], env) != base
    assert cache_key(text, ["-DX=1"], {**env, "release": "6.1.0"}) != base
    assert cache_key(text, ["-DX=1"], {**env, "bcc": "0.30.0"}) != base
    formats["sched:sched_switch"] = "field: char prev_comm[32]"
    assert cache_key(text, ["-DX=1"], env) != base


def test_relocations_name_each_map_reference_and_refuse_unknown_fds() -> None:
    assert relocations(LD_MAP + EXIT, {7: "counts"}) == [(0, "counts")]
    with pytest.raises(EntryError, match="fd 7"):
        relocations(LD_MAP + EXIT, {8: "other"})
    code = patched(OBJ.programs[0], {"counts": 42, "layout": 1, "slot": 2})
    assert int.from_bytes(code[4:8], "little") == 42 and code[8:] == OBJ.programs[0].insns[8:]


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path: Path, monkeypatch) -> None:
    import os

    monkeypatch.setattr(compiled, "MAX_ENTRIES", 3)
    cache = ObjectCache(tmp_path)
    keys = [c * 64 for c in "abcd"]
    for i, key in enumerate(keys[:3]):
        cache.put(key, OBJ)
        os.utime(tmp_path / f"{key}.bpfobj", ns=(i * 10**9, i * 10**9))
    assert cache.get(keys[0]) == OBJ  # used now: the newest
    cache.put(keys[3], OBJ)  # a fourth: the least recently used (b) goes
    assert sorted(p.name[0] for p in cache.entries()) == ["a", "c", "d"]


def test_entries_others_could_have_written_are_never_loaded(tmp_path: Path) -> None:
    """The programs are loaded with wasmtop's privileges: a directory or entry writable by group
    or others, or owned by another user, could hold someone else's."""
    import os

    cache = ObjectCache(tmp_path / "c")
    cache.put(KEY, OBJ)
    entry = tmp_path / "c" / f"{KEY}.bpfobj"
    os.chmod(entry, 0o666)
    assert cache.get(KEY) is None and cache.stats.rejected == {"unsafe": 1}
    assert not entry.exists()
    cache.put(KEY, OBJ)
    os.chmod(tmp_path / "c", 0o777)
    assert cache.get(KEY) is None and cache.stats.rejected == {"unsafe": 2}
    assert "writable by group or others" in cache.last_reason
    assert entry.exists()  # the directory is not ours to tidy
    cache.put("x" * 64, OBJ)
    assert not (tmp_path / "c" / ("x" * 64 + ".bpfobj")).exists()  # nor to fill
    os.chmod(tmp_path / "c", 0o755)
    assert cache.get(KEY) == OBJ


def test_answers_are_read_only_from_files_of_ours_and_never_through_a_link(tmp_path: Path):
    import os

    cache = ObjectCache(tmp_path / "c")
    cache.put_answer("k", {"ok": False, "reason": "EPERM"})
    assert cache.get_answer("k") == {"ok": False, "reason": "EPERM"}
    planted = tmp_path / "planted"
    planted.write_text('{"ok": true}')
    os.replace(tmp_path / "c" / "k.answer", tmp_path / "c" / "old")
    os.symlink(planted, tmp_path / "c" / "k.answer")
    assert cache.get_answer("k") is None  # not through a link
    os.unlink(tmp_path / "c" / "k.answer")
    os.mkfifo(tmp_path / "c" / "k.answer")
    assert cache.get_answer("k") is None  # a FIFO neither blocks nor answers


def test_a_directory_under_a_parent_others_can_replace_is_not_used(tmp_path: Path) -> None:
    import os

    parent = tmp_path / "shared"
    parent.mkdir()
    os.chmod(parent, 0o777)  # writable by all, not sticky: the cache directory can be swapped
    cache = ObjectCache(parent / "cache")
    cache.put(KEY, OBJ)
    assert cache.entries() == [] and cache.stats.stores == 0
    assert cache.get(KEY) is None and cache.stats.rejected == {"unsafe": 1}
    os.chmod(parent, 0o1777)  # sticky, as /tmp: only the owner may rename what is in it
    cache.put(KEY, OBJ)
    assert cache.get(KEY) == OBJ


@pytest.mark.parametrize(
    "damage",
    [
        lambda o: o["maps"].append(dict(o["maps"][0])),  # two maps of one name
        lambda o: o["maps"][0].update(key_size=2**40),  # past 32 bits
        lambda o: o["maps"][0].update(value_size=4),  # its type says 8 bytes
        lambda o: o["maps"][2].update(inner="slot"),  # its own inner map
        lambda o: o.update(kern_version=float("inf")),
        lambda o: o["programs"][0].update(relocations=[[float("inf"), "counts"]]),
    ],
)
def test_entries_a_checksum_cannot_vouch_for_are_refused(damage) -> None:
    """The checksum proves the bytes are what was written; the structure, the ranges and the
    sizes are checked too, and whatever a crafted entry raises is a refusal."""
    import hashlib

    data = json.loads(json.dumps(OBJ.to_json()))
    damage(data)
    body = json.dumps({"key": KEY, "object": data}).encode()
    raw = b"wasmtop-bpf-object 1 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    with pytest.raises(EntryError):
        decode_entry(raw, KEY)


def test_deeply_nested_json_is_refused() -> None:
    import hashlib

    body = b"[" * 200_000 + b"]" * 200_000
    raw = b"wasmtop-bpf-object 1 " + hashlib.sha256(body).hexdigest().encode() + b"\n" + body
    with pytest.raises(EntryError):
        decode_entry(raw, KEY)
