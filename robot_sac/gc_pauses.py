"""Keeping the garbage collector's pauses out of control loops.

Why: CPython's cyclic collector walks every tracked object in a full (generation 2) collection,
and it runs one whenever enough new long-lived objects have piled up, at whatever moment that is.
Measured on a 2-core machine: ~130 ms in a process that imported torch (the hardware actor,
~170,000 objects), ~34 ms in the servo emulator (pybullet, ~31,000), ~20 ms in the torch-free
controller. Any of those inside a 20 ms control period misses the driver's 8 ms transaction budget
(a `CommTimeout`), makes a read stale, or trips the servos' 100 ms bus watchdog. The hardware actor
builds up exactly such objects (a chunk of transitions held until it is sent).

The cure is the one CPython documents for forked servers: collect once after start-up, then
`gc.freeze` what exists, so later collections only walk what was allocated since (~1 ms here), and
switch the collector off inside an episode (`paused_gc`), letting it run between episodes.

Imports only the standard library (deployment path).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


def freeze_heap() -> int:
    """Collect once, then move every surviving object out of the collector's sight; returns how many.

    Call it when a loop's process has finished setting up (imports, models, connections): the
    frozen objects are never scanned again, so a later full collection costs ~1 ms, not ~100.
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No automatic collection inside the block (an episode); the collector resumes as it was after it."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
