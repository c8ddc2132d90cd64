"""Hindsight goal relabeling: goals come from the same episode's future, rewards are recomputed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robot_sac.configs import ArmReachConfig
from robot_sac.fake_backend import FakeBackend
from robot_sac.relabel import GoalRelabeler
from robot_sac.replay import ReplayBuffer
from robot_sac.spec import RobotSpec
from robot_sac.tasks.arm_reach import ArmReach


def _filled_buffer(spec: RobotSpec, task: ArmReach, episodes: int = 3, steps: int = 20) -> ReplayBuffer:
    """Real ArmReach transitions from the numpy fake arm, with their episode ids."""
    backend = FakeBackend(spec)
    backend.connect()
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(episodes * steps, len(task.observation_names), spec.dof)
    for ep in range(episodes):
        state = backend.reset(seed=ep)
        task.reset(rng, state)
        command = spec.home_rad.copy()
        obs = task.observation(state, command)
        for _ in range(steps):
            action = rng.uniform(-1, 1, spec.dof)
            command = np.clip(command + action * spec.max_step_rad, spec.soft_lower_rad, spec.soft_upper_rad)
            state = backend.step(command)
            next_obs = task.observation(state, command)
            buffer.add(obs, action, task.reward(state, action), next_obs, False, episode=ep)
            obs = next_obs
    return buffer


@pytest.fixture
def task(arm4_spec: RobotSpec) -> ArmReach:
    return ArmReach(arm4_spec, ArmReachConfig(precision_reward=1.0, precision_scale_m=0.02, settle_penalty=0.2))


def test_goal_reward_matches_the_task_reward_without_penalties(arm4_spec: RobotSpec) -> None:
    task = ArmReach(arm4_spec, ArmReachConfig(precision_reward=1.0, action_penalty=0.0, velocity_penalty=0.0))
    backend = FakeBackend(arm4_spec)
    backend.connect()
    state = backend.reset(seed=0)
    task.reset(np.random.default_rng(1), state)
    obs = task.observation(state, arm4_spec.home_rad)
    d0, d1 = task.goal_layout.desired
    got = task.goal_reward(obs[None], obs[None, d0:d1])[0]
    assert got == pytest.approx(task.reward(state, np.zeros(arm4_spec.dof)), abs=1e-12)


def test_goal_reward_holds_the_settle_term_and_the_rest_does_not_depend_on_the_goal(arm4_spec: RobotSpec) -> None:
    task = ArmReach(arm4_spec, ArmReachConfig(precision_reward=1.0, settle_penalty=0.5, velocity_penalty=0.01))
    backend = FakeBackend(arm4_spec)
    backend.connect()
    backend.reset(seed=0)
    task.reset(np.random.default_rng(1), backend.reset(seed=0))
    action = np.full(arm4_spec.dof, 0.5)
    state = backend.step(arm4_spec.home_rad + action * arm4_spec.max_step_rad)  # moving: speed is not zero
    assert float(state.velocity_rad_s @ state.velocity_rad_s) > 0.01
    obs = task.observation(state, arm4_spec.home_rad)
    d0, d1 = task.goal_layout.desired
    a0, a1 = task.goal_layout.achieved
    rest = task.reward(state, action) - task.goal_reward(obs[None], obs[None, d0:d1])[0]
    # the goal on the tip: the settle term charges the speed there in full
    on_tip = task.goal_reward(obs[None], obs[None, a0:a1])[0]
    speed2 = float(state.velocity_rad_s @ state.velocity_rad_s)
    assert on_tip == pytest.approx(1.0 - 0.5 * speed2, abs=1e-9)
    # and the rest (action and global speed penalties) is what the reward keeps for any goal
    assert rest == pytest.approx(-0.01 * float(action @ action) - 0.01 * speed2, abs=1e-9)


def test_relabeled_rows_get_a_future_achieved_goal_and_the_exact_reward(task: ArmReach, arm4_spec: RobotSpec) -> None:
    buffer = _filled_buffer(arm4_spec, task)
    relabeler = GoalRelabeler(task, ratio=1.0, horizon_steps=5)
    indices = np.arange(buffer.size)
    out = relabeler.relabel(indices, buffer.obs, buffer.next_obs, buffer.reward, buffer.episode, buffer.pos,
                            np.random.default_rng(3))  # fmt: skip
    a0, a1 = task.goal_layout.achieved
    d0, d1 = task.goal_layout.desired
    r0, r1 = task.goal_layout.relative or (0, 0)
    assert out.relabeled > buffer.size // 2
    changed = np.flatnonzero(np.abs(out.obs[:, d0:d1] - buffer.obs[:, d0:d1]).max(axis=1) > 0)
    for i in changed:
        goal = out.obs[i, d0:d1]
        same_episode = np.flatnonzero(buffer.episode == buffer.episode[i])
        future = same_episode[(same_episode >= i) & (same_episode < i + 5)]
        assert any(np.allclose(goal, buffer.next_obs[j, a0:a1]) for j in future)  # reached later, same episode
        np.testing.assert_allclose(out.next_obs[i, d0:d1], goal)
        np.testing.assert_allclose(out.obs[i, r0:r1], goal - out.obs[i, a0:a1], atol=1e-6)
        # the reward is the task's own reward with the new goal: goal part swapped, penalties kept
        old_goal_part = task.goal_reward(buffer.next_obs[i, None], buffer.next_obs[i, None, d0:d1])[0]
        new_goal_part = task.goal_reward(buffer.next_obs[i, None], goal[None])[0]
        assert out.reward[i] == pytest.approx(buffer.reward[i] - old_goal_part + new_goal_part, abs=1e-5)
    untouched = np.setdiff1d(indices, changed)
    np.testing.assert_array_equal(out.obs[untouched], buffer.obs[untouched])


def test_goals_never_cross_episodes_or_come_from_unknown_episodes(task: ArmReach, arm4_spec: RobotSpec) -> None:
    buffer = _filled_buffer(arm4_spec, task, episodes=2, steps=10)
    last = np.array([9, 19])  # the last step of each episode: its only same-episode future is itself
    out = GoalRelabeler(task, 1.0, 50).relabel(last, buffer.obs, buffer.next_obs, buffer.reward, buffer.episode,
                                               buffer.pos, np.random.default_rng(0))  # fmt: skip
    a0, a1 = task.goal_layout.achieved
    d0, d1 = task.goal_layout.desired
    for row, i in enumerate(last):
        assert np.allclose(out.obs[row, d0:d1], buffer.obs[i, d0:d1]) or np.allclose(
            out.obs[row, d0:d1], buffer.next_obs[i, a0:a1]
        )
    buffer.episode[:] = -1  # a buffer saved before episode ids existed
    none = GoalRelabeler(task, 1.0, 5).relabel(np.arange(20), buffer.obs, buffer.next_obs, buffer.reward,
                                               buffer.episode, buffer.pos, np.random.default_rng(0))  # fmt: skip
    assert none.relabeled == 0


def test_sample_with_a_relabeler_returns_a_batch(task: ArmReach, arm4_spec: RobotSpec) -> None:
    buffer = _filled_buffer(arm4_spec, task)
    batch = buffer.sample(16, np.random.default_rng(0), torch.device("cpu"), None, GoalRelabeler(task, 0.5, 10))
    assert batch.obs.shape == (16, buffer.obs_dim) and torch.isfinite(batch.reward).all()


def test_episode_ids_survive_save_and_load(task: ArmReach, arm4_spec: RobotSpec, tmp_path) -> None:
    buffer = _filled_buffer(arm4_spec, task, episodes=2, steps=5)
    buffer.save(tmp_path / "r.npz")
    np.testing.assert_array_equal(ReplayBuffer.load(tmp_path / "r.npz").episode[:10], buffer.episode[:10])
