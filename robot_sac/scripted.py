"""A model-based reaching controller: damped least-squares inverse kinematics (numpy only).

It acts through the same env stack as a learned policy (same action semantics, same safety
filter), so it serves as a baseline for ArmReach, as a check that every sampled target is
reachable through the stack, and as the controller of ``robot-sac rollout``.
"""

from __future__ import annotations

import numpy as np

from robot_sac.kinematics import ForwardKinematics
from robot_sac.spec import RobotSpec


class ReachIK:
    """Maps a raw ArmReach observation to an action that moves the tip toward the target.

    Each step solves ``dq = J^T (J J^T + lambda^2 I)^-1 (gain * (target - tip))`` with a
    finite-difference Jacobian, and returns the action that moves the held joint target to
    ``q + dq`` (clipped to [-1, 1]; the safety filter bounds it further).

    Args:
        spec: the robot.
        gain: fraction of the Cartesian error corrected per step, in (0, 1].
        damping_m: lambda, the damping of the least-squares solve, in m (keeps the step small
            near singularities).
    """

    def __init__(self, spec: RobotSpec, gain: float = 0.5, damping_m: float = 0.02) -> None:
        """Precompute the forward kinematics."""
        self.spec = spec
        self.fk = ForwardKinematics(spec)
        self.gain = gain
        self.damping_m = damping_m
        self._eps_rad = 1e-6

    def jacobian(self, position_rad: np.ndarray) -> np.ndarray:
        """d(tip)/d(q), shape (3, dof), by forward differences."""
        base = self.fk.end_effector_m(position_rad)
        columns = []
        for i in range(self.spec.dof):
            q = position_rad.copy()
            q[i] += self._eps_rad
            columns.append((self.fk.end_effector_m(q) - base) / self._eps_rad)
        return np.stack(columns, axis=1)

    def __call__(self, raw_observation: np.ndarray) -> np.ndarray:
        """Action in [-1, 1]^dof for a raw ArmReach observation (layout: q, qdot, command, tip, target)."""
        obs = np.asarray(raw_observation, dtype=np.float64)
        dof = self.spec.dof
        q, command = obs[:dof], obs[2 * dof : 3 * dof]
        tip, target = obs[3 * dof : 3 * dof + 3], obs[3 * dof + 3 : 3 * dof + 6]
        jac = self.jacobian(q)
        error = self.gain * (target - tip)
        dq = jac.T @ np.linalg.solve(jac @ jac.T + self.damping_m**2 * np.eye(3), error)
        action = (q + dq - command) / self.spec.max_step_rad
        clipped: np.ndarray = np.clip(action, -1.0, 1.0).astype(np.float32)
        return clipped
