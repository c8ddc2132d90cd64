"""A pure-numpy robot backend: first-order servos with a speed limit, no physics engine.

It implements the full `RobotBackend` contract (it runs the shared conformance suite), so the env
stack, the safety filter and the learner can be tested and benchmarked without PyBullet or
hardware. Each joint moves toward its target by ``gain`` of the remaining error per control
period, never faster than ``max_velocity_rad_s`` of the spec times ``speed_factor``.
"""

from __future__ import annotations

import numpy as np

from robot_sac.backend import check_target
from robot_sac.errors import EnvStateError
from robot_sac.spec import RobotSpec, RobotState


class FakeBackend:
    """A deterministic kinematic servo model of a `RobotSpec`.

    Args:
        spec: the robot.
        gain: fraction of the tracking error removed per control period, in (0, 1].
        speed_factor: the servo's speed limit as a multiple of ``spec.max_velocity_rad_s``.
    """

    def __init__(self, spec: RobotSpec, gain: float = 0.5, speed_factor: float = 2.0) -> None:
        """Store the model; `connect` makes it usable."""
        if not 0.0 < gain <= 1.0:
            raise ValueError(f"gain must be in (0, 1], got {gain}")
        self._spec = spec
        self.gain = gain
        self._max_move = spec.max_velocity_rad_s * speed_factor * spec.dt_s
        self._connected = False
        self._reset_done = False
        self._position = spec.home_rad.copy()
        self._time_s = 0.0
        self.step_count = 0

    @property
    def spec(self) -> RobotSpec:
        """The robot this backend drives."""
        return self._spec

    def connect(self) -> None:
        """Nothing to open; marks the backend usable (idempotent)."""
        self._connected = True

    def _require_connected(self) -> None:
        if not self._connected:
            raise EnvStateError("FakeBackend is not connected; call connect() first")

    def _state(self, velocity: np.ndarray) -> RobotState:
        return RobotState(self._position.copy(), velocity, np.zeros(self._spec.dof), self._time_s)

    def reset(self, seed: int | None = None) -> RobotState:
        """Teleport home (the model is deterministic, so the seed is not needed)."""
        self._require_connected()
        self._position = self._spec.home_rad.copy()
        self._time_s = 0.0
        self._reset_done = True
        return self._state(np.zeros(self._spec.dof))

    def step(self, target_rad: np.ndarray) -> RobotState:
        """Move toward the target for one control period."""
        self._require_connected()
        if not self._reset_done:
            raise EnvStateError("FakeBackend.step() needs a reset() first")
        target = check_target(self._spec, target_rad)
        move = np.clip(self.gain * (target - self._position), -self._max_move, self._max_move)
        self._position = self._position + move
        self._time_s += self._spec.dt_s
        self.step_count += 1
        return self._state(move / self._spec.dt_s)

    def rearm(self) -> None:
        """Nothing latches in a simulator: a no-op (part of the backend contract)."""

    def close(self) -> None:
        """Mark the backend closed (idempotent)."""
        self._connected = False
        self._reset_done = False
