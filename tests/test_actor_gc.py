"""The hardware actor pauses the garbage collector while the robot homes and runs an episode.

A full collection in a process that imported torch takes ~130 ms (`robot_sac.gc_pauses`), several
control periods; it must fall between episodes, never inside one. Sim actors keep the collector.
One layer in process: the episode loop with a fake link and a fake env (the real ones are tested
in `test_runtime_hardware.py`).
"""

from __future__ import annotations

import gc
from types import SimpleNamespace
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from robot_sac.configs import load_train_config
from robot_sac.runtime.actor import ActorSpec, _run_episodes
from robot_sac.runtime.channels import TransitionChunk
from tests.conftest import CONFIG_DIR

EPISODES = 3


class RecordingEnv(gym.Env[np.ndarray, np.ndarray]):
    """Two-step episodes that record whether the collector was enabled in reset and step."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self) -> None:
        self.gc_enabled: list[tuple[str, bool]] = []
        self._t = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.gc_enabled.append(("reset", gc.isenabled()))
        self._t = 0
        return np.zeros(2), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.gc_enabled.append(("step", gc.isenabled()))
        self._t += 1
        return np.zeros(2), 0.0, False, self._t >= 2, {}


class CountingLink:
    """A `LearnerLink` that stops the run once ``EPISODES`` episodes were sent."""

    def __init__(self) -> None:
        self.polls: list[bool] = []  # whether the collector was enabled at each episode boundary
        self.chunks: list[TransitionChunk] = []

    def poll_weights(self, last_version: int) -> None:
        self.polls.append(gc.isenabled())
        return None

    def send(self, chunk: TransitionChunk) -> bool:
        self.chunks.append(chunk)
        return True

    def wait_for_room(self, pending: int, timeout_s: float) -> bool:
        return True

    def steps_sent(self) -> int:
        return 0  # learning has not started: random actions, no policy needed

    def beat(self) -> None:
        pass

    def learner_age_s(self) -> float:
        return 0.0

    def stop_requested(self) -> bool:
        return sum(len(chunk.episodes) for chunk in self.chunks) >= EPISODES

    def hold_requested(self) -> bool:
        return False

    def ready(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.mark.parametrize("hardware", [True, False], ids=["hardware", "sim"])
def test_the_collector_is_off_during_hardware_episodes_only(hardware: bool) -> None:
    config = load_train_config(CONFIG_DIR / "train" / "arm_reach_sim.yaml", ("runtime.mode=local",))
    spec = ActorSpec(config=config, actor_id=0, stream_id=0, seed=0, hardware=hardware)
    env, link = RecordingEnv(), CountingLink()
    agent = SimpleNamespace(obs_dim=2, action_dim=1)  # never asked to act before learning starts
    assert gc.isenabled()
    _run_episodes(spec, link, env, agent, None, 0, np.random.default_rng(0))  # type: ignore[arg-type]
    assert gc.isenabled()  # restored after the run
    assert [kind for kind, _ in env.gc_enabled] == ["reset", "step", "step"] * EPISODES
    assert all(enabled is not hardware for _, enabled in env.gc_enabled)
    assert link.polls == [True] * EPISODES  # the collector runs between episodes
    assert sum(chunk.env_steps for chunk in link.chunks) == 2 * EPISODES
