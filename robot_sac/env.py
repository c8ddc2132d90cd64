"""`RobotEnv`: the gymnasium env over any `RobotBackend` and `Task`, with the safety filter inside.

Why the safety filter lives inside the env rather than in a wrapper: it needs the measured state
to seed its rate limiter, and on a fault it must command the hold *through the backend* in the
same step. A wrapper would have to reach into ``env.unwrapped.backend``. The deploy loop uses the
same `SafetyFilter` class directly, so sim, hardware and deployment share one implementation.

Step semantics:

- The action is in [-1, 1]^dof, a joint-target delta in units of ``max_step_rad`` (see
  `SafetyFilter.from_action`). ``info["executed_action"]`` is what was actually executed, in the
  same units; the replay buffer stores it.
- A fault (non-finite action, a `RobotFault` from the backend, a measurement outside the
  physical range) ends the episode with ``truncated=True`` and ``info["fault"]`` naming it; the
  robot holds its last safe target. ``terminated`` is reserved for true task terminals.
  A rejected action sends nothing to the backend at all (SAFETY.md #9). When no valid measurement
  was taken (rejected action, or a backend fault), the last valid observation is returned with
  ``info["observation_valid"] = False``: such a transition must not enter a replay buffer.
- After a fault, `step` refuses until `reset`; after a `FaultLevel.LATCHED` fault `reset` refuses
  until `rearm` (operator action). ``SafetyConfig.latch_after_action_faults`` bad actions in a
  row (across episodes, with no good step between) latch too: a policy that keeps emitting NaN
  must be looked at, not retried forever.
"""

from __future__ import annotations

import logging
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from robot_sac.backend import RobotBackend
from robot_sac.errors import (
    EnvStateError,
    FaultLevel,
    NonFiniteObservation,
    ObservationOutOfBounds,
    RobotFault,
    fault_name,
)
from robot_sac.safety import CLIP_STAGES, SafetyDecision, SafetyFilter
from robot_sac.spec import RobotState
from robot_sac.tasks.base import Task

log = logging.getLogger(__name__)


class RobotEnv(gym.Env[np.ndarray, np.ndarray]):
    """A robot task as a gymnasium env; the same class drives the simulator and the hardware.

    Observations are raw (SI units, float32, see the task); normalization is a wrapper.
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": 50}  # noqa: RUF012 - gymnasium API

    def __init__(self, backend: RobotBackend, task: Task, safety: SafetyFilter, render_mode: str | None = None) -> None:
        """Compose the env; nothing is connected until the first `reset`."""
        spec = backend.spec
        if safety.spec is not spec and safety.spec != spec:
            raise ValueError("the safety filter and the backend must use the same RobotSpec")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode {render_mode!r} is not supported; use one of {self.metadata['render_modes']}"
            )
        if render_mode == "rgb_array" and not callable(getattr(backend, "render_rgb", None)):
            raise ValueError(f"{type(backend).__name__} cannot render; use a simulator backend for render_mode")
        self.backend = backend
        self.task = task
        self.safety = safety
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": spec.control_hz}
        self._obs_low, self._obs_high = (b.astype(np.float64) for b in task.observation_bounds())
        self.observation_space = gym.spaces.Box(
            self._obs_low.astype(np.float32), self._obs_high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(spec.dof,), dtype=np.float32)
        self._connected = False
        self._last_obs: np.ndarray | None = None
        self._state: RobotState | None = None
        self._ended_by_fault = False
        self._latched: RobotFault | None = None
        self._action_faults_in_a_row = 0
        self.fault_count = 0
        """Faults since construction (all kinds), also reported as ``info["fault_count"]``."""
        self._episode_counts = dict.fromkeys(CLIP_STAGES, 0)

    # --- gymnasium API ------------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Home the robot, seed the safety filter from the measured pose, start the task.

        Raises:
            EnvStateError: a latched fault awaits `rearm`.
            RobotFault: the backend could not home the robot (no episode starts).
        """
        super().reset(seed=seed)
        if self._latched is not None:
            raise EnvStateError(
                f"a latched fault ({fault_name(self._latched)}: {self._latched}) needs an operator: "
                "inspect the robot, then call rearm() before reset()"
            )
        if not self._connected:
            self.backend.connect()
            self._connected = True
        if any(self._episode_counts.values()):
            log.info("episode ended with safety clips %s", self._episode_counts)
        state = self.backend.reset(seed=int(self.np_random.integers(0, 2**31 - 1)))
        self.safety.reset(state.position_rad)
        self.task.reset(self.np_random, state)
        obs = self._observe(state, self.safety.last_command_rad)
        self._state, self._last_obs, self._ended_by_fault = state, obs, False
        self._episode_counts = dict.fromkeys(CLIP_STAGES, 0)
        return obs.astype(np.float32), self._info(state, None, None)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Filter the action, hold the resulting target for one control period, observe."""
        if self._state is None or self._last_obs is None:
            raise EnvStateError("call reset() before step()")
        if self._ended_by_fault:
            raise EnvStateError("the episode ended with a fault; call reset() before stepping again")
        decision = self.safety.from_action(action)
        fault: RobotFault | None = decision.fault
        state: RobotState | None = None
        obs = self._last_obs
        if fault is None:
            try:
                state = self.backend.step(decision.target_rad)
                self.safety.observe(state.position_rad, state.effort_nm)
                obs = self._observe(state, decision.target_rad)
            except RobotFault as err:
                fault, state, obs = err, None, self._last_obs
        # A rejected action sends nothing at all: the robot keeps holding its last safe target
        # (hardware: the servos hold their goal; SAFETY.md #9 "no Goal write went out").
        for stage, hit in decision.clipped.items():
            self._episode_counts[stage] += hit
        self._action_faults_in_a_row = self._action_faults_in_a_row + 1 if decision.fault is not None else 0
        if fault is not None:
            self._on_fault(fault)
        if state is None:
            reward, terminated = 0.0, False
        else:
            self._state, self._last_obs = state, obs
            reward = self.task.reward(state, decision.executed_action)
            terminated = self.task.terminated(state)
        info = self._info(self._state, decision, fault, observation_valid=state is not None)
        return obs.astype(np.float32), reward, terminated, fault is not None, info

    def render(self) -> np.ndarray | None:
        """An RGB image (H, W, 3) uint8 of the scene with the task's markers, in ``rgb_array`` mode."""
        if self.render_mode != "rgb_array":
            return None
        render_rgb = self.backend.render_rgb  # type: ignore[attr-defined]  # checked in __init__
        frame: np.ndarray = render_rgb(markers_m=self.task.markers_m())
        return frame

    def close(self) -> None:
        """Close the backend (idempotent)."""
        self.backend.close()
        self._connected = False
        super().close()

    def rearm(self) -> None:
        """Clear a latched fault after an operator has inspected the robot (the backend's too)."""
        self.backend.rearm()
        self._latched = None
        self._action_faults_in_a_row = 0

    # --- internals ------------------------------------------------------------------------------

    def _observe(self, state: RobotState, command_rad: np.ndarray) -> np.ndarray:
        """The raw observation of a state, validated against the physical bounds (float64)."""
        obs = self.task.observation(state, command_rad)
        if not ((obs >= self._obs_low) & (obs <= self._obs_high)).all():  # NaN fails both comparisons
            nonfinite = ~np.isfinite(obs)
            if nonfinite.any():
                raise NonFiniteObservation(f"non-finite measurement: {self._describe(nonfinite, obs)}")
            outside = (obs < self._obs_low) | (obs > self._obs_high)
            raise ObservationOutOfBounds(f"measurement outside its physical range: {self._describe(outside, obs)}")
        return obs

    def _describe(self, mask: np.ndarray, obs: np.ndarray) -> str:
        names = self.task.observation_names
        return ", ".join(f"{names[i]}={obs[i]:.6g}" for i in np.flatnonzero(mask))

    def _on_fault(self, fault: RobotFault) -> None:
        self._ended_by_fault = True
        self.fault_count += 1
        if fault.level is FaultLevel.LATCHED:
            self._latched = fault
        if self._action_faults_in_a_row >= self.safety.config.latch_after_action_faults:
            self._latched = fault
            log.error("%d bad actions in a row: fault latched until rearm()", self._action_faults_in_a_row)
        log.warning("fault %s: %s (robot holds %s rad)", fault_name(fault), fault, self.safety.last_command_rad)

    def _info(
        self,
        state: RobotState,
        decision: SafetyDecision | None,
        fault: RobotFault | None,
        observation_valid: bool = True,
    ) -> dict[str, Any]:
        info: dict[str, Any] = dict(self.task.metrics(state))
        info["fault"] = None if fault is None else fault_name(fault)
        info["fault_message"] = "" if fault is None else str(fault)
        info["observation_valid"] = observation_valid
        info["command_rad"] = self.safety.last_command_rad
        info["stamp_s"] = state.stamp_s
        info["clip_counts"] = dict(self._episode_counts)
        info["fault_count"] = self.fault_count
        if decision is not None:  # a decision's arrays and dict are fresh per step: no copies needed
            info["executed_action"] = decision.executed_action
            info["clipped"] = decision.clipped
            info["safety_clipped"] = decision.any_clipped
        return info
