"""Real-time scheduling for a process that owns a control loop: SCHED_FIFO where the OS allows it.

Why: a control loop at 50 Hz has 20 ms per period and the serial driver 8 ms per bus transaction.
Under normal (CFS) scheduling, a learner's gradient threads, simulation actors or anything else on
a 2-core machine can keep the loop off the CPU for longer than that, and the robot then sees late
goals and the driver reports timeouts that no bus fault caused. Real-time priority puts the loop
ahead of every normally scheduled thread. ros2_control's controller manager does the same.

The loops that may ask for it (the hardware actor and the deploy loop with ``realtime_priority`` > 0,
off by default; the servo emulator, which plays hardware whose timing never depends on the host's
load, always asks) sleep between periods, so they cost the rest of the machine only their own few
percent of a core; Linux's RT throttling (``/proc/sys/kernel/sched_rt_runtime_us``, 95 % by
default) bounds a runaway loop in any case.

Why the host loops do not ask by default: only the calling thread changes class, and the threads a
process started before (multiprocessing feeders, heartbeats) stay normal, so a real-time loop can
wait on the GIL behind a thread the learner's threads keep off the CPU. On this 2-core machine a
fine-tuning run with the hardware actor at SCHED_FIFO 20 showed no fewer comm faults than at normal
priority (1 vs 0 in 3 runs of 40 s each; one demo run had a burst of them), while the emulator's
real-time priority is what kept its replies on time under 4 busy processes.

Only a loop's own thread may ask: the policy applies to the calling thread and is inherited by
threads it starts later, so it is never held by a thread that also trains. `realtime_scope` gives it
back when the loop ends (a command run in-process, e.g. by a test, leaves its caller as it was).

Imports only the standard library (deployment path).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from robot_sac.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PRIORITY = 99
"""SCHED_FIFO's highest priority on Linux (``sched_get_priority_max``)."""


def request_realtime(priority: int, who: str) -> bool:
    """Run the calling thread under SCHED_FIFO at ``priority``; False (with one warning) where refused.

    Args:
        priority: 1-99 (higher preempts lower); 0 leaves the scheduling as it is and returns False.
        who: names the loop in the warning, e.g. ``"hardware actor"``.

    Returns:
        True when the thread now runs under SCHED_FIFO at ``priority``.

    Raises:
        ConfigError: ``priority`` outside 0-99.

    Refusal is not an error: without CAP_SYS_NICE (an unprivileged user, a container that drops it)
    or off Linux the loop runs at normal priority and the warning says what that risks and the fix.
    """
    if not 0 <= priority <= MAX_PRIORITY:
        raise ConfigError(f"realtime_priority {priority} is outside 0-{MAX_PRIORITY} (SCHED_FIFO); 0 turns it off")
    if priority == 0:
        return False
    setter = getattr(os, "sched_setscheduler", None)
    if setter is None:
        log.warning("%s: real-time scheduling is not available on this OS; it runs at normal priority", who)
        return False
    try:
        setter(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as err:
        log.warning(
            "%s: SCHED_FIFO priority %d refused (%s); it runs at normal priority and may miss periods while the "
            "CPUs are busy. Grant it with `setcap cap_sys_nice+ep` on the interpreter, a limits.conf rtprio "
            "entry, or set realtime_priority: 0 to silence this", who, priority, err.strerror or err,
        )  # fmt: skip
        return False
    return True


def current_policy() -> tuple[str, int]:
    """The calling thread's policy name (``"fifo"``, ``"other"``, ...) and priority (for logs and reports)."""
    getter = getattr(os, "sched_getscheduler", None)
    if getter is None:
        return "other", 0
    policy = getter(0)
    names = {os.SCHED_OTHER: "other", getattr(os, "SCHED_FIFO", -1): "fifo", getattr(os, "SCHED_RR", -2): "rr"}
    return names.get(policy, str(policy)), os.sched_getparam(0).sched_priority


@contextlib.contextmanager
def realtime_scope(priority: int, who: str) -> Iterator[bool]:
    """`request_realtime` for the ``with`` block, then the calling thread's previous policy again.

    Yields whether SCHED_FIFO was granted.
    """
    getter = getattr(os, "sched_getscheduler", None)
    previous = (getter(0), os.sched_getparam(0)) if getter is not None else None
    granted = request_realtime(priority, who)
    try:
        yield granted
    finally:
        if granted and previous is not None:
            with contextlib.suppress(OSError):  # lowering one's own priority is always allowed
                os.sched_setscheduler(0, *previous)
