"""Figures derived in the collector, exactly as docs/snapshot.md defines them."""

from __future__ import annotations

import dataclasses
import math

import pytest

from wasmtop.collector.collector import counter_delta, forget_in, skew_ratio, thread_delta
from wasmtop.collector.net import conn_delta
from wasmtop.collector.topology import (
    CROSS_LLC,
    CROSS_NUMA,
    SAME_CORE,
    SAME_CPU,
    SAME_LLC,
    Topology,
    parse_cpu_list,
)
from wasmtop.probes.records import ConnRecord, SchedReading, ThreadSched
from wasmtop.probes.sched import at_least


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


def test_on_cpu_readings_never_step_back_nor_drop_a_key_once_reported():
    # A slice that ended between the map read and the running-slice read is in neither: the
    # reading is short, or (a thread's first slice on a CPU, map value still 0) has no key.
    first = at_least({(5, 0): 100, (5, 1): 40}, {})
    short = at_least({(5, 0): 90}, first)
    assert short == {(5, 0): 100, (5, 1): 40}
    later = at_least({(5, 0): 130, (5, 1): 70}, short)
    assert later == {(5, 0): 130, (5, 1): 70}
    deltas = [counter_delta(b, a) for a, b in ((first, short), (short, later))]
    assert sum(d.get((5, 1), 0) for d in deltas) == 30  # 40 -> 70, never 40 + 70
    assert sum(d.get((5, 0), 0) for d in deltas) == 30


def test_forgotten_entries_leave_the_baseline_too():
    reading = SchedReading(
        ts_ns=1, threads={5: _t(switches=10), 6: _t(switches=3)},
        cpu_time_ns={(5, 0): 10, (6, 0): 20}, migrations={(1, 0, 1): 2, (2, 0, 1): 1},
        delay_hist={(1, 3): 4, (2, 3): 1}, window_max_delay_ns={},
        wakeup_hist={(1, 3): 1}, waited_behind={(1, 2): 5, (2, 1): 6, (3, 4): 7},
    )  # fmt: skip
    forget_in(reading, {5}, {1}, {(1, 2), (2, 1)})
    assert set(reading.threads) == {6}
    assert set(reading.cpu_time_ns) == {(6, 0)}
    assert set(reading.migrations) == {(2, 0, 1)}
    assert set(reading.delay_hist) == {(2, 3)} and not reading.wakeup_hist
    assert set(reading.waited_behind) == {(3, 4)}
    # an entry made again on a forgotten key counts from zero
    assert thread_delta(_t(switches=4), reading.threads.get(5))["switches"] == 4


def test_a_connection_figure_that_steps_back_adds_nothing():
    def rec(stack_bytes):
        return ConnRecord(**{
            **{f.name: 0 for f in dataclasses.fields(ConnRecord)},
            "cookie": 1, "stack_bytes": stack_bytes,
        })  # fmt: skip

    assert conn_delta(rec(101), rec(100))["stack_bytes"] == 1
    assert conn_delta(rec(100), rec(101))["stack_bytes"] == 0


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
