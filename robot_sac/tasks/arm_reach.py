"""ArmReach: bring the end effector within ``success_threshold_m`` of a random reachable point.

Observation (raw, SI), in order: joint positions (rad), joint velocities (rad/s), the joint target
the robot currently holds (rad), end-effector position (m), target position (m), and the vector from
the end effector to the target (m; redundant, but it is the quantity the policy must drive to zero,
and giving it directly is what lets a small network resolve millimetres). The held target
is part of the state because actions are target *deltas*: without it the MDP is not Markov (the
servo lags its target, so positions alone do not tell where the command is).

Reward: ``-d - action_penalty * |a|^2 - velocity_penalty * |qdot|^2 + k(d) * (precision_reward -
settle_penalty * |qdot|^2)`` with the precision kernel ``k(d) = exp(-(d / precision_scale_m)^2)``,
``d`` the tip-target distance in m and ``a`` the executed action in policy units. The distance term
guides from anywhere; the bonus makes the last millimetres worth a clear difference in return (with
``-d`` alone, 1 cm is worth 0.01 per step, below the critic's noise). The settle term charges speed
only near the target: without it a policy may hold the target by chattering (harmless in the
simulator, a limit cycle on a servo with latency), and a global speed penalty would slow every
reach. Episodes never terminate; they end by truncation at the horizon.
"""

from __future__ import annotations

import math

import numpy as np

from robot_sac.configs import ArmReachConfig
from robot_sac.kinematics import ForwardKinematics
from robot_sac.spec import RobotSpec, RobotState
from robot_sac.tasks.base import GoalLayout

_MAX_SAMPLE_TRIES = 10_000


class ArmReach:
    """The reach task for any serial arm described by a `RobotSpec`."""

    def __init__(self, spec: RobotSpec, config: ArmReachConfig) -> None:
        """Build the task; targets are sampled by forward kinematics, so they are reachable."""
        self.spec = spec
        self.config = config
        self.fk = ForwardKinematics(spec)
        self._target = self.fk.end_effector_m(spec.home_rad)
        joints = spec.joint_names
        self._names = (
            *(f"position_rad/{j}" for j in joints),
            *(f"velocity_rad_s/{j}" for j in joints),
            *(f"command_rad/{j}" for j in joints),
            *(f"end_effector_m/{a}" for a in "xyz"),
            *(f"target_m/{a}" for a in "xyz"),
            *(f"to_target_m/{a}" for a in "xyz"),
        )
        self._reach_m = self._max_reach_m()
        self._fk_cache: tuple[RobotState | None, np.ndarray] = (None, self._target)

    def end_effector_m(self, state: RobotState) -> np.ndarray:
        """End-effector position of ``state``, shape (3,); computed once per state (hot path)."""
        cached_state, ee = self._fk_cache
        if cached_state is not state:
            ee = self.fk.end_effector_m(state.position_rad)
            self._fk_cache = (state, ee)
        return ee

    def _max_reach_m(self) -> float:
        """An upper bound on |end effector| over all poses: the sum of the chain's link lengths."""
        links = [np.linalg.norm(j.origin_xyz_m) for j in self.spec.joints]
        return float(sum(links) + np.linalg.norm(self.spec.tool_offset_m))

    @property
    def observation_names(self) -> tuple[str, ...]:
        """One name per observation dimension (``quantity_unit/joint-or-axis``)."""
        return self._names

    @property
    def target_m(self) -> np.ndarray:
        """The current target position, shape (3,), metres."""
        return self._target.copy()

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Hard limits ± tolerance, the measured-speed bound, and the reach sphere's box."""
        s = self.spec
        tol = s.position_tolerance_rad
        vmax = np.full(s.dof, s.measured_velocity_limit_rad_s)
        reach = np.full(3, self._reach_m)
        low = np.concatenate([s.lower_rad - tol, -vmax, s.lower_rad, -reach, -reach, -2 * reach])
        high = np.concatenate([s.upper_rad + tol, vmax, s.upper_rad, reach, reach, 2 * reach])
        return low, high

    def reset(self, rng: np.random.Generator, state: RobotState) -> None:
        """Sample a target: FK of a uniform pose inside the soft limits, above the table, off the base, in front.

        In front (``target_max_azimuth_rad``, 90° by default): a point behind the base needs a base
        turn of up to 160° (1.4 s at 2 rad/s of the 2 s episode), and a learned policy prefers the
        "over the shoulder" reach there, which the shoulder's limit blocks (measured: 74 % success
        with targets all around, most failures behind the base).
        """
        s, c = self.spec, self.config
        for _ in range(_MAX_SAMPLE_TRIES):
            q = rng.uniform(s.soft_lower_rad, s.soft_upper_rad)
            p = self.fk.end_effector_m(q)
            in_front = abs(math.atan2(p[1], p[0])) <= c.target_max_azimuth_rad
            if p[2] >= c.target_min_height_m and np.hypot(p[0], p[1]) >= c.target_min_radius_m and in_front:
                self._target = p
                return
        raise RuntimeError(
            f"no reachable target above {c.target_min_height_m} m, beyond {c.target_min_radius_m} m from the base and "
            f"within {c.target_max_azimuth_rad} rad of the front in {_MAX_SAMPLE_TRIES} samples; relax them"
        )

    def distance_m(self, state: RobotState) -> float:
        """Distance from the end effector to the target, metres."""
        dx, dy, dz = (self.end_effector_m(state) - self._target).tolist()
        return math.sqrt(dx * dx + dy * dy + dz * dz)

    def observation(self, state: RobotState, command_rad: np.ndarray) -> np.ndarray:
        """The raw observation, shape (4·dof + 9,), float64."""
        ee = self.end_effector_m(state)
        return np.concatenate(
            [state.position_rad, state.velocity_rad_s, command_rad, ee, self._target, self._target - ee]
        )

    def reward(self, state: RobotState, executed_action: np.ndarray) -> float:
        """Dense reward: negative distance, small action and speed penalties, the precision and settle terms."""
        c = self.config
        a = np.asarray(executed_action, dtype=np.float64)
        speed2 = float(state.velocity_rad_s @ state.velocity_rad_s)
        d = self.distance_m(state)
        near = math.exp(-((d / c.precision_scale_m) ** 2))  # the precision kernel k(d), see `_near`
        return float(
            -d
            + near * (c.precision_reward - c.settle_penalty * speed2)
            - c.action_penalty * float(a @ a)
            - c.velocity_penalty * speed2
        )

    def _near(self, d: np.ndarray) -> np.ndarray:
        """The precision kernel ``k(d) = exp(-(d / precision_scale_m)^2)``: 1 on the target, 0.37 one scale off."""
        out: np.ndarray = np.exp(-((d / self.config.precision_scale_m) ** 2))
        return out

    @property
    def goal_layout(self) -> GoalLayout:
        """Tip position, target and tip-to-target vector in the raw observation (for relabeling)."""
        tip = 3 * self.spec.dof
        return GoalLayout(achieved=(tip, tip + 3), desired=(tip + 3, tip + 6), relative=(tip + 6, tip + 9))

    def goal_reward(self, next_obs: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """``-d + k(d) * (precision_reward - settle_penalty * |qdot|^2)`` per row, shape (n,).

        Args:
            next_obs: raw observations reached, shape (n, obs_dim) (tip position and joint speeds).
            desired: goals, shape (n, 3), metres.
        """
        c = self.config
        rows = np.asarray(next_obs, dtype=np.float64)
        a0, a1 = self.goal_layout.achieved
        d = np.linalg.norm(np.asarray(desired, dtype=np.float64) - rows[:, a0:a1], axis=-1)
        dof = self.spec.dof
        speed2 = np.einsum("ij,ij->i", rows[:, dof : 2 * dof], rows[:, dof : 2 * dof])
        out: np.ndarray = -d + self._near(d) * (c.precision_reward - c.settle_penalty * speed2)
        return out

    def terminated(self, state: RobotState) -> bool:
        """Reaching has no terminal state: success does not end the episode."""
        return False

    def metrics(self, state: RobotState) -> dict[str, float | bool]:
        """``success`` (within the threshold) and ``distance_m``."""
        d = self.distance_m(state)
        return {"success": bool(d <= self.config.success_threshold_m), "distance_m": d}

    def markers_m(self) -> list[np.ndarray]:
        """The target."""
        return [self._target.copy()]
