"""Map key and value types from BCC's type descriptions (probes/tables.py)."""

from __future__ import annotations

import ctypes

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wasmtop.probes.tables import DescError, ctype_of

CPU_HISTORY = [
    "cpu_history",
    [
        ["head", "unsigned int"],
        ["_pad", "unsigned int"],
        ["s", ["slice", [["since", "unsigned long long"], ["tid", "unsigned int"],
                         ["tgid", "unsigned int"]], "struct_packed"], [32]],
    ],
    "struct",
]  # fmt: skip


def test_nested_arrays_of_packed_structs() -> None:
    t = ctype_of(CPU_HISTORY)
    assert ctypes.sizeof(t) == 8 + 32 * 16
    v = t()
    v.s[3].tid = 7
    assert v.s[3].tid == 7 and v.head == 0


def test_bit_fields_unions_and_anonymous_members() -> None:
    t = ctype_of(
        ["k", [["a", "unsigned int", 3], ["b", "unsigned int", 29],
               ["", [["x", "unsigned long long"], ["y", "int"]], "union"]], "struct"]
    )  # fmt: skip
    assert ctypes.sizeof(t) == 16
    v = t(a=5)
    v.x = 2**40
    assert (v.a, v.x) == (5, 2**40)


@pytest.mark.parametrize(
    "desc",
    ["no such type", ["x"], ["x", "notalist"], ["x", [["f"]]], ["x", [["f", "int", "huh"]]],
     ["x", [[1, "int"]]], 42, None, ["x", [["f", "int", [1, 2]]]]],
)  # fmt: skip
def test_malformed_descriptions_are_refused(desc: object) -> None:
    with pytest.raises(DescError):
        ctype_of(desc)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 40) | st.sampled_from(["int", "x", "", "union"]),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(json_values)
def test_any_description_gives_a_type_or_a_desc_error(desc: object) -> None:
    try:
        t = ctype_of(desc)
    except DescError:  # ctypes' own refusals (a 40-bit int field) included
        return
    assert ctypes.sizeof(t) >= 0
