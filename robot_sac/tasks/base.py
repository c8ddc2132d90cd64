"""The task contract: how a robot state becomes an observation, a reward and an episode end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from robot_sac.spec import RobotState


class Task(Protocol):
    """A task over any backend. Pure numpy; the same task object serves sim and hardware.

    Contract:

    - ``observation_names`` has one entry per observation dimension, in order.
    - ``observation_bounds()`` returns ``(low, high)``, float64 arrays of shape ``(obs_dim,)``,
      the physically plausible range. The env rejects a measurement outside it as a fault
      (`ObservationOutOfBounds`) and uses it as the observation space.
    - ``reset(rng, state)`` starts an episode from the measured ``state``; all randomness comes
      from ``rng`` (seeded runs repeat exactly).
    - ``observation(state, command_rad)`` is the raw (unnormalized) observation, float64,
      shape ``(obs_dim,)``; ``command_rad`` is the target the robot currently holds.
    - ``reward(state, executed_action)`` scores the transition into ``state`` under the action
      actually executed (policy units, after the safety filter).
    - ``terminated(state)`` is True only for true task terminals, never for time limits or faults.
    - ``metrics(state)`` returns per-step values for ``info`` (``success`` among them).
    - ``markers_m()`` returns points worth drawing in a render (the target), each shape (3,) in m.
    """

    @property
    def observation_names(self) -> tuple[str, ...]:
        """One name per observation dimension."""
        ...

    def observation_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Physically plausible (low, high) of the raw observation."""
        ...

    def reset(self, rng: np.random.Generator, state: RobotState) -> None:
        """Start an episode (e.g. sample a goal)."""
        ...

    def observation(self, state: RobotState, command_rad: np.ndarray) -> np.ndarray:
        """The raw observation, shape (obs_dim,), float64."""
        ...

    def reward(self, state: RobotState, executed_action: np.ndarray) -> float:
        """Reward of the transition into ``state``."""
        ...

    def terminated(self, state: RobotState) -> bool:
        """Whether ``state`` is a true terminal of the task."""
        ...

    def metrics(self, state: RobotState) -> dict[str, float | bool]:
        """Per-step values for ``info``; includes ``success``."""
        ...

    def markers_m(self) -> list[np.ndarray]:
        """Points to draw in renders, each shape (3,), metres."""
        ...


class GoalTask(Task, Protocol):
    """A task whose reward depends on a goal written into the observation (reaching, pushing).

    Such a task lets the learner relabel stored transitions with goals the robot actually reached
    (hindsight experience replay, Andrychowicz et al. 2017): the observation holds the achieved
    point, the desired goal and optionally their difference, and the reward splits into
    ``goal_reward(next_obs, desired)`` plus terms that do not depend on the goal.

    Contract:

    - ``goal_layout`` gives the index ranges ``(start, stop)`` of the achieved point, the desired
      goal and (or None) ``desired - achieved`` inside the raw observation; all have the same width.
    - ``goal_reward(next_obs, desired)`` is vectorized over rows of raw observations (n, obs_dim)
      and goals (n, k) → (n,), and equals the goal-dependent part of `Task.reward` for the state
      observed in ``next_obs`` (its achieved point, and whatever else of it the part weighs, such
      as speed near the goal) under goal ``desired``.
    """

    @property
    def goal_layout(self) -> GoalLayout:
        """Where achieved point, desired goal and their difference sit in the raw observation."""
        ...

    def goal_reward(self, next_obs: np.ndarray, desired: np.ndarray) -> np.ndarray:
        """The goal-dependent reward of rows of raw observations reached and goals, shape (n,)."""
        ...


@dataclass(frozen=True)
class GoalLayout:
    """Index ranges ``(start, stop)`` into a raw observation (see `GoalTask`)."""

    achieved: tuple[int, int]
    desired: tuple[int, int]
    relative: tuple[int, int] | None = None
