"""Resetting a robot env with retries for transient faults (the deploy loop and the hardware actor).

A reset homes the robot before an episode. A timeout or a corrupt reply while homing is transient
(a busy bus, a late reply): no episode runs on a failed reset and the robot holds, so trying again
risks nothing. A latched fault (unplugged, rebooted, a hardware error) needs the operator and is
never retried. Imports only gymnasium and our error types: the torch-free deploy path uses it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym

from robot_sac.errors import FaultLevel, RobotFault, fault_name

log = logging.getLogger(__name__)


def reset_retrying(
    env: gym.Env[Any, Any],
    seed: int,
    *,
    attempts: int,
    retry_s: float,
    what: str,
    on_retry: Callable[[int, RobotFault], None] = lambda attempt, err: None,
    give_up: Callable[[], bool] = lambda: False,
    sleep: Callable[[float], None] = time.sleep,
) -> tuple[Any, dict[str, Any]]:
    """``env.reset(seed=seed)``, tried up to ``attempts`` times, ``retry_s`` seconds apart.

    Args:
        env: the robot env (a `robot_sac.env.RobotEnv` or a wrapper of one).
        seed: the episode's reset seed (the same on every attempt).
        attempts: tries in all, at least 1.
        retry_s: seconds between tries.
        what: names the reset in the warning logged before each retry, e.g. ``"reset of episode 3"``.
        on_retry: called with the attempt number (1-based) and the fault before each retry; it
            records it (the caller knows where faults are counted).
        give_up: checked after a failure; True (a stop was requested) re-raises at once.
        sleep: the pause between attempts (injectable for tests).

    Raises:
        RobotFault: a latched fault, the last attempt's fault, or any fault once ``give_up()``.
        ValueError: ``attempts`` < 1.
    """
    if attempts < 1:
        raise ValueError(f"attempts={attempts}: a reset needs at least 1 attempt")
    for attempt in range(1, attempts + 1):
        try:
            return env.reset(seed=seed)
        except RobotFault as err:
            if err.level is FaultLevel.LATCHED or attempt == attempts or give_up():
                raise
            log.warning("%s failed (%s: %s); trying again in %g s (%d of %d)", what, fault_name(err), err, retry_s,
                        attempt, attempts)  # fmt: skip
            on_retry(attempt, err)
            sleep(retry_s)
    raise AssertionError("unreachable")
