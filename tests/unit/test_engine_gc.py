"""The collector's garbage-collection settings once probes run (wasmtop/engine.py)."""

from __future__ import annotations

import gc

from wasmtop.engine import (
    GC_GEN0_THRESHOLD,
    settle_garbage_collector,
    unsettle_garbage_collector,
)


def test_start_up_objects_leave_the_books_and_gen0_waits_longer():
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        kept = [[] for _ in range(1000)]  # start-up state: lives as long as the process
        settle_garbage_collector()
        assert gc.get_freeze_count() >= len(kept)
        in_books = {id(o) for g in range(3) for o in gc.get_objects(g)}
        assert not in_books & {id(x) for x in kept}
        assert gc.get_threshold() == (GC_GEN0_THRESHOLD, before[1], before[2])
        # Cycles made afterwards are still collected.
        cycle: list = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_a_stop_gives_the_frozen_objects_back_to_the_collector():
    """A reload stops the probes and starts new ones: what the old engine left in cycles must
    be collectable, and the thresholds are restored."""
    before = gc.get_threshold()
    try:
        gc.unfreeze()
        saved = settle_garbage_collector()
        cycle: list = []
        cycle.append(cycle)
        gc.collect()
        gc.freeze()  # as if it had been there at start
        del cycle
        unsettle_garbage_collector(saved)
        assert gc.get_freeze_count() == 0
        assert gc.get_threshold() == before
        assert gc.collect() >= 1  # the old cycle goes
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
