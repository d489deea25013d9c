"""Compile once, load many: every probe variant compiles in a child process into maps whose
types match their sizes; a start from the cache maps no compiler into the process and counts
what a compiling start counts; a damaged or stale entry is never loaded."""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
from pathlib import Path

import pytest

from wasmtop.probes import tables
from wasmtop.probes.catalog import probe_variants
from wasmtop.probes.compiled import CompileError, ObjectCache, cache_key, compile_in_child, obtain
from wasmtop.probes.loader import LoadedObject

HERE = Path(__file__).resolve().parent


def cached_start(cache_dir: Path) -> dict:
    out = subprocess.run(
        [sys.executable, str(HERE / "cached_start.py"), str(cache_dir)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_variant_compiles_and_loads_with_map_types_of_the_right_size(tmp_path: Path):
    cache = ObjectCache(tmp_path)
    seen: set[str] = set()
    for label, probe in probe_variants():
        key = cache_key(probe.rendered(), probe.cflags())
        obj, source = obtain(probe.rendered(), probe.cflags(), cache)
        assert source == ("cache" if key in seen else "compiler"), label  # some render alike
        seen.add(key)
        for m in obj.maps:
            if m.type == tables.RINGBUF:  # no keys or values: records
                continue
            if m.key_desc is not None:
                assert ctypes.sizeof(tables.ctype_of(m.key_desc)) == m.key_size, (label, m.name)
            if m.leaf_desc is not None:
                assert ctypes.sizeof(tables.ctype_of(m.leaf_desc)) == m.value_size, (label, m.name)
        again, source = obtain(probe.rendered(), probe.cflags(), cache)
        assert (again, source) == (obj, "cache"), label
        loaded = LoadedObject(again)  # every map made from the entry alone
        try:
            assert {m.name for m in obj.maps} <= {name for name in loaded._map_fds}
        finally:
            loaded.cleanup()
    assert cache.stats.stores == len(seen)
    assert cache.stats.hits == 2 * len(probe_variants()) - len(seen)


def test_a_start_from_the_cache_maps_no_compiler_and_counts_the_same(tmp_path: Path):
    cold = cached_start(tmp_path)
    warm = cached_start(tmp_path)
    for run, source in ((cold, "compiler"), (warm, "cache")):
        assert run["status"] == "ok", run["reason"]
        assert run["source"] == source
        assert run["compiler_mapped"] == []  # not even while compiling: that is the child's
        # The worker's 300 sleeps, counted by the probe as the kernel counted them.
        assert run["kernel"] >= 300
        assert run["ours"] == pytest.approx(run["kernel"], abs=2)
    assert warm["cache"]["hits"] == 1 and warm["cache"]["misses"] == 0


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_a_damaged_entry_is_refused_counted_and_compiled_again(tmp_path: Path, damage: str):
    cached_start(tmp_path)
    (entry,) = tmp_path.glob("*.bpfobj")
    raw = entry.read_bytes()
    entry.write_bytes(raw[: len(raw) // 3] if damage == "truncate" else raw.replace(b"A", b"B"))
    run = cached_start(tmp_path)
    assert run["status"] == "ok" and run["source"] == "compiler"
    assert run["cache"]["rejected"] == {"garbled": 1}
    assert run["ours"] == pytest.approx(run["kernel"], abs=2)
    assert cached_start(tmp_path)["source"] == "cache"  # stored again, intact


def test_an_entry_is_used_only_for_the_source_and_tracepoint_formats_it_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    (label, probe), *_ = probe_variants()
    cache = ObjectCache(tmp_path)
    obtain(probe.rendered(), probe.cflags(), cache)
    assert obtain(probe.rendered(), probe.cflags(), cache)[1] == "cache"
    # The C text changed (another wasmtop version): not this entry.
    assert obtain(probe.rendered() + "\n", probe.cflags(), cache)[1] == "compiler"
    # A tracepoint's format changed (another kernel build): not this entry either.
    from wasmtop.probes import compiled

    real = compiled.features.tracepoint_format
    monkeypatch.setattr(
        compiled.features, "tracepoint_format",
        lambda tp: real(tp) + ("\nfield:int added;" if tp == "sched:sched_switch" else ""),
    )  # fmt: skip
    key = cache_key(probe.rendered(), probe.cflags())
    assert cache.get(key) is None, label


def test_probes_compiled_together_keep_their_own_outcome(tmp_path: Path):
    """A start compiles its missing probes in as few children as there are CPUs, several
    modules each: one that does not compile fails alone, with clang's words, and the others
    load."""
    from wasmtop.probes import probeset
    from wasmtop.probes.probeset import FAILED, OK, ProbeSet
    from wasmtop.probes.sched import SchedProbe

    class Broken(SchedProbe):
        name = "broken"

        def body(self) -> str:
            return (probeset.HERE / "sched.bpf.c").read_text() + "\nthis is not C;\n"

    good, also, bad = SchedProbe(), SchedProbe(pids=(1,)), Broken()
    stages: list[tuple[str, str]] = []
    with ProbeSet(
        [good, also, bad], handle_signals=False, cache=ObjectCache(tmp_path),
        progress=lambda p, s: stages.append((p, s)),
    ):  # fmt: skip
        assert (good.status, also.status, bad.status) == (OK, OK, FAILED)
        assert good.program_source == also.program_source == "compiler"
        assert "error" in bad.reason and "this is not C" in bad.reason, bad.reason
    assert ("broken", "compiling") in stages and ("broken", f"{FAILED}: {bad.reason}") in stages
    assert len(list(tmp_path.glob("*.bpfobj"))) == 2  # only what compiled is kept


def test_an_entry_the_verifier_refuses_is_removed_and_compiled_again(tmp_path: Path):
    """An entry can pass every check of the cache and still not load (here: a program whose
    first instruction returns without setting r0): it is counted as unloadable, removed, and
    the probe compiles once more and starts."""
    from wasmtop.probes.compiled import ProgramSpec, encode_entry
    from wasmtop.probes.probeset import OK, ProbeSet
    from wasmtop.probes.sched import SchedProbe

    probe = SchedProbe()
    cache = ObjectCache(tmp_path)
    obj, _ = obtain(probe.rendered(), probe.cflags(), cache)
    key = cache_key(probe.rendered(), probe.cflags())
    exit_at_once = bytes([0x95, 0, 0, 0, 0, 0, 0, 0])
    first = obj.programs[0]
    broken = ProgramSpec(first.name, exit_at_once + first.insns[8:], first.relocations)
    assert all(i != 0 for i, _ in first.relocations)  # its first instruction loads no map
    damaged = type(obj)(obj.license, obj.kern_version, obj.maps, (broken, *obj.programs[1:]))
    (tmp_path / f"{key}.bpfobj").write_bytes(encode_entry(damaged, key))

    cache = ObjectCache(tmp_path)
    with ProbeSet([probe], handle_signals=False, cache=cache):
        assert probe.status == OK, probe.reason
        assert probe.program_source == "compiler"
    assert cache.stats.rejected == {"unloadable": 1}
    assert cache.get(key) == obj  # stored again, intact


# A 32-bit atomic compare-and-swap: this BPF target refuses it in LLVM's backend, which then
# exits the compiler child at once, inside the capture of its stderr.
FATAL_IN_LLVM = """
BPF_ARRAY(flags, u32, 1);
int f(void *ctx)
{
    int zero = 0;
    u32 *v = flags.lookup(&zero);
    return v ? __sync_val_compare_and_swap(v, 0, 1) : 0;
}
"""


def test_a_compiler_child_that_llvm_exits_still_says_why():
    with pytest.raises(CompileError, match="Unsupported atomic operations"):
        compile_in_child(FATAL_IN_LLVM, [])
