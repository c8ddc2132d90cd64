"""The collector's pauses kept out of control loops: a frozen set-up heap, no collection inside an episode."""

from __future__ import annotations

import gc
import subprocess
import sys

from robot_sac.gc_pauses import paused_gc


def test_freeze_heap_takes_the_set_up_objects_out_of_every_later_collection() -> None:
    # In a child: freezing is process-wide and lasts; pytest's own heap is not the test's to freeze.
    code = (
        "import gc, numpy, gymnasium\n"
        "from robot_sac.gc_pauses import freeze_heap\n"
        "before = len(gc.get_objects())\n"
        "frozen = freeze_heap()\n"
        "print(before, frozen, len(gc.get_objects()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    before, frozen, tracked_after = map(int, out)
    assert before > 10_000  # numpy + gymnasium alone
    assert frozen >= 0.9 * before  # (a collection first frees what is already garbage)
    assert tracked_after < 100  # what a full collection still walks


def test_paused_gc_stops_the_collector_and_restores_it() -> None:
    assert gc.isenabled()
    with paused_gc():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with paused_gc():
            assert not gc.isenabled()
        assert not gc.isenabled()  # it was off before: it stays off
    finally:
        gc.enable()
