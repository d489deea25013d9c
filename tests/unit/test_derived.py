"""Figures derived in the collector, exactly as docs/snapshot.md defines them."""

from __future__ import annotations

import math

import pytest

from wasmtop.collector.collector import counter_delta, skew_ratio, thread_delta
from wasmtop.collector.topology import (
    CROSS_LLC,
    CROSS_NUMA,
    SAME_CORE,
    SAME_CPU,
    SAME_LLC,
    Topology,
    parse_cpu_list,
)
from wasmtop.probes.records import ThreadSched


@pytest.mark.parametrize(
    "times, allowed, expected",
    [
        ({0: 100}, frozenset({0}), 0.0),  # pinned
        ({0: 100}, frozenset({0, 1}), 0.0),  # allowed two, used one
        ({0: 50, 1: 50}, frozenset({0, 1}), 1.0),  # even
        ({0: 50, 1: 50}, frozenset({0, 1, 2, 3}), 0.5),  # even over half the allowed CPUs
        (
            {0: 90, 1: 10},
            frozenset({0, 1}),
            -(0.9 * math.log(0.9) + 0.1 * math.log(0.1)) / math.log(2),
        ),
        ({}, frozenset({0, 1}), None),
    ],
)
def test_skew_ratio(times, allowed, expected):
    got = skew_ratio(times, allowed)
    assert got == expected if expected is None else got == pytest.approx(expected)


def test_counter_delta_handles_new_and_recreated_keys():
    assert counter_delta({"a": 10, "b": 5, "c": 3}, {"a": 4, "b": 9}) == {"a": 6, "b": 5, "c": 3}
    assert counter_delta({"a": 4}, {"a": 4}) == {}


def _t(tgid=1, **counts):
    base = dict(switches=0, involuntary=0, migrations=0, preempt_delay_ns=0, preemptions=0,
                over_threshold=0)  # fmt: skip
    base.update(counts)
    return ThreadSched(tid=5, tgid=tgid, comm="x", **base)


def test_thread_delta():
    assert thread_delta(_t(switches=10, migrations=2), _t(switches=4))["switches"] == 6
    assert thread_delta(_t(switches=10), None)["switches"] == 10
    # the tid now belongs to another process: all of it is new
    assert thread_delta(_t(tgid=2, switches=3), _t(tgid=1, switches=10))["switches"] == 3
    # a counter went backwards: the entry was recreated
    assert thread_delta(_t(switches=3), _t(switches=10))["switches"] == 3


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def make_topology(root, cpus):
    """cpus: {cpu: (core_siblings, llc_cpus, node)} written as sysfs files."""
    for cpu, (core, llc, node) in cpus.items():
        d = root / f"cpu{cpu}"
        _write(d / "topology/core_cpus_list", core)
        _write(d / "cache/index0/level", "1")
        _write(d / "cache/index0/shared_cpu_list", core)
        _write(d / "cache/index3/level", "3")
        _write(d / "cache/index3/shared_cpu_list", llc)
        (d / f"node{node}").mkdir()
    return Topology.from_sysfs(root)


def test_topology_two_socket_smt(tmp_path):
    # 2 sockets x 2 cores x 2 threads; one LLC and one NUMA node per socket.
    layout = {
        0: ("0,4", "0-1,4-5", 0), 1: ("1,5", "0-1,4-5", 0), 4: ("0,4", "0-1,4-5", 0),
        5: ("1,5", "0-1,4-5", 0), 2: ("2,6", "2-3,6-7", 1), 3: ("3,7", "2-3,6-7", 1),
        6: ("2,6", "2-3,6-7", 1), 7: ("3,7", "2-3,6-7", 1),
    }  # fmt: skip
    topo = make_topology(tmp_path, layout)
    assert topo.distance(0, 0) == SAME_CPU
    assert topo.distance(0, 4) == SAME_CORE
    assert topo.distance(0, 1) == SAME_LLC
    assert topo.distance(0, 2) == CROSS_NUMA
    assert topo.distance(9, 0) == CROSS_LLC  # unknown CPU


def test_topology_split_llc_one_node(tmp_path):
    # One NUMA node, two L3 slices (chiplets).
    layout = {0: ("0", "0-1", 0), 1: ("1", "0-1", 0), 2: ("2", "2-3", 0), 3: ("3", "2-3", 0)}
    topo = make_topology(tmp_path, layout)
    assert topo.distance(0, 1) == SAME_LLC
    assert topo.distance(1, 2) == CROSS_LLC


def test_topology_this_vm_has_one_llc():
    topo = Topology.from_sysfs()
    cpus = sorted(topo.places)
    if len(cpus) >= 2:
        assert topo.distance(cpus[0], cpus[1]) == SAME_LLC


def test_parse_cpu_list():
    assert parse_cpu_list("0-3,8,10-11\n") == {0, 1, 2, 3, 8, 10, 11}
    assert parse_cpu_list("") == frozenset()
