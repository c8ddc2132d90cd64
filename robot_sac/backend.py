"""The robot backend contract: the one interface the simulator and the hardware driver implement.

Every implementation runs the shared conformance suite in ``tests/test_backend_contract.py``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from robot_sac.errors import LimitExceeded, NonFiniteAction
from robot_sac.spec import RobotSpec, RobotState


@runtime_checkable
class RobotBackend(Protocol):
    """A robot that holds a joint-position target for one control period at a time.

    Contract (units SI, arrays of shape ``(spec.dof,)`` float64):

    - ``spec`` is available before ``connect()``; it comes from configuration, never from probing.
    - ``connect()`` opens the simulator or the port and checks the robot matches ``spec``. Calling
      it twice is harmless. ``reset``/``step`` before ``connect``, and ``step`` before the first
      ``reset``, raise `EnvStateError`.
    - ``reset(seed)`` brings the robot to ``spec.home_rad`` (hardware: at a safe speed) and returns
      the measured state. The same seed gives the same state and, for simulators, the same
      trajectory under the same targets.
    - ``step(target_rad)`` commands ``target_rad`` and holds it for exactly one control period
      (simulators advance physics by ``spec.dt_s``; hardware writes, waits for the deadline, reads).
      It returns the state measured at the end of the period, with ``stamp_s`` strictly
      increasing. A non-finite target raises `NonFiniteAction`; a target outside the hard limits
      raises `LimitExceeded` (this second safety layer never clips: the safety filter already did).
      Neither reaches the physics or the wire. Communication and hardware faults raise the typed
      `RobotFault` subclasses.
    - ``rearm()`` clears a latched fault after an operator inspected the robot; the next
      ``reset`` re-verifies the robot (hardware: re-opens a lost port, re-runs the servo setup).
      Simulators have nothing to clear.
    - ``close()`` releases everything; it is idempotent and safe to call after any failure.
      Hardware holds or disables torque according to its configuration.
    """

    @property
    def spec(self) -> RobotSpec:
        """The robot this backend drives."""
        ...

    def connect(self) -> None:
        """Open the simulator or hardware link (idempotent)."""
        ...

    def reset(self, seed: int | None = None) -> RobotState:
        """Bring the robot home and return the measured state."""
        ...

    def step(self, target_rad: np.ndarray) -> RobotState:
        """Hold ``target_rad`` for one control period; return the state measured at its end."""
        ...

    def rearm(self) -> None:
        """Clear a latched fault (operator action); the next reset re-verifies the robot."""
        ...

    def close(self) -> None:
        """Release the simulator or hardware (idempotent)."""
        ...


def check_target(spec: RobotSpec, target_rad: np.ndarray) -> np.ndarray:
    """The backends' second safety layer: refuse (never clip) a bad target.

    Returns:
        ``target_rad`` as a float64 array of shape ``(dof,)``.

    Raises:
        NonFiniteAction: a NaN or inf entry.
        LimitExceeded: an entry outside the hard limits ``[lower_rad, upper_rad]``.
        ValueError: a wrong shape (a programming error, not a robot fault).
    """
    target = np.asarray(target_rad, dtype=np.float64)
    if target.shape != (spec.dof,):
        raise ValueError(f"target_rad must have shape ({spec.dof},), got {target.shape}")
    if not np.isfinite(target).all():
        raise NonFiniteAction(f"non-finite joint target {target.tolist()} refused before reaching the robot")
    outside = (target < spec.lower_rad) | (target > spec.upper_rad)
    if outside.any():
        names = [spec.joint_names[i] for i in np.flatnonzero(outside)]
        raise LimitExceeded(
            "position",
            f"joint target outside the hard limits for {names}: {target.tolist()} rad; "
            "targets must pass the safety filter first",
        )
    return target
