"""Hindsight goal relabeling at sample time (HER, Andrychowicz et al. 2017, "future" strategy).

A reaching transition is informative about every goal, not only the one it was collected for:
replacing the goal by a point the tip reached later in the same episode gives a transition whose
goal is near, and the critic learns the last millimetres from it long before the policy reaches
them by itself. With a dense reward this mostly adds data where the reward is sharpest.

Relabeling happens on raw observations when a minibatch is drawn, so the stored data stays
untouched (a change of normalization statistics or of the relabeling ratio applies to all of it).
For a row ``i`` chosen with probability ``ratio``, a step ``j = i + k`` with ``k`` uniform in
``0 .. horizon_steps - 1`` is drawn; when ``j`` belongs to the same episode (its episode id
matches, which also rules out ring positions already overwritten), the goal becomes the achieved
point of ``next_obs[j]`` in ``obs[i]`` and ``next_obs[i]`` (and the goal-relative part, when the
observation has one), and the reward is corrected by the difference of the goal-dependent part:
``r' = r - goal_reward(next_obs, g) + goal_reward(next_obs, g')`` (the goal-dependent part weighs
the tip's distance and, near the goal, its speed). Other reward terms (action and speed penalties)
and ``terminated`` are unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_sac.tasks.base import GoalTask


@dataclass(frozen=True)
class Relabeled:
    """A relabeled minibatch's raw arrays (copies), and how many rows got a new goal."""

    obs: np.ndarray
    next_obs: np.ndarray
    reward: np.ndarray
    relabeled: int


class GoalRelabeler:
    """Draws hindsight goals for minibatch rows of a `ReplayBuffer`-like ring.

    Args:
        task: supplies the observation layout and the goal-dependent reward.
        ratio: fraction of rows that get a hindsight goal, in [0, 1].
        horizon_steps: how far ahead (in steps of the same episode) a goal may come from.
    """

    def __init__(self, task: GoalTask, ratio: float, horizon_steps: int) -> None:
        """Check the arguments; the task is kept for its layout and reward."""
        if not 0.0 <= ratio <= 1.0 or horizon_steps < 1:
            raise ValueError(f"ratio must lie in [0, 1] and horizon_steps be >= 1, got {ratio}, {horizon_steps}")
        self.task, self.ratio, self.horizon_steps = task, ratio, horizon_steps
        self.layout = task.goal_layout

    def relabel(
        self,
        indices: np.ndarray,
        obs: np.ndarray,
        next_obs: np.ndarray,
        reward: np.ndarray,
        episode: np.ndarray,
        write_pos: int,
        rng: np.random.Generator,
    ) -> Relabeled:
        """Relabel rows ``indices`` of the ring arrays ``obs``, ``next_obs``, ``reward``, ``episode``.

        Args:
            indices: (B,) ring positions of the minibatch.
            obs: (capacity, obs_dim) raw observations of the whole ring (read only).
            next_obs: (capacity, obs_dim) raw next observations of the whole ring (read only).
            reward: (capacity,) rewards.
            episode: (capacity,) episode ids; rows of one episode share an id, ids never repeat.
            write_pos: the ring's next write position (orders the rows oldest to newest).
            rng: the only randomness.

        Returns:
            The minibatch's observations, next observations and rewards, shape (B, obs_dim) and (B,).
        """
        o, o2, r = obs[indices].astype(np.float64), next_obs[indices].astype(np.float64), reward[indices]
        r = r.astype(np.float64)
        chosen = np.flatnonzero(rng.random(indices.size) < self.ratio)
        capacity = episode.shape[0]
        start = indices[chosen]
        future = (start + rng.integers(0, self.horizon_steps, size=chosen.size)) % capacity
        own = episode[start]
        # Same episode (-1: unknown, from old files: never relabeled) and not before the row in write
        # order (a step far enough ahead to wrap the ring would otherwise land in the episode's past).
        later = (future - write_pos) % capacity >= (start - write_pos) % capacity
        same = (episode[future] == own) & (own >= 0) & later
        rows, future = chosen[same], future[same]
        if rows.size:
            a0, a1 = self.layout.achieved
            d0, d1 = self.layout.desired
            goal = next_obs[future, a0:a1].astype(np.float64)
            reached = o2[rows]
            r[rows] += self.task.goal_reward(reached, goal) - self.task.goal_reward(reached, reached[:, d0:d1])
            for arr in (o, o2):
                arr[rows, d0:d1] = goal
                if self.layout.relative is not None:
                    rel0, rel1 = self.layout.relative
                    arr[rows, rel0:rel1] = goal - arr[rows, a0:a1]
        return Relabeled(o.astype(np.float32), o2.astype(np.float32), r.astype(np.float32), int(rows.size))
