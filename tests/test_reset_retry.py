"""`reset_retrying`: transient reset faults are retried and reported, latched ones never."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

from robot_sac.errors import CommCorrupt, CommTimeout, DeviceLost, RobotFault
from robot_sac.reset_retry import reset_retrying


class FlakyEnv(gym.Env[np.ndarray, np.ndarray]):
    """Raises ``faults`` on the first resets, then resets; records every seed it was given."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,))
    action_space = gym.spaces.Box(-1.0, 1.0, (1,))

    def __init__(self, faults: list[RobotFault]) -> None:
        self.faults = list(faults)
        self.seeds: list[int | None] = []

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        self.seeds.append(seed)
        if self.faults:
            raise self.faults.pop(0)
        return np.zeros(1), {"seed": seed}


def _run(env: FlakyEnv, attempts: int = 3, give_up: bool = False) -> tuple[Any, list[tuple[int, str]], list[float]]:
    retried: list[tuple[int, str]] = []
    slept: list[float] = []
    result = reset_retrying(
        env, 7, attempts=attempts, retry_s=0.25, what="reset of episode 0",
        on_retry=lambda n, err: retried.append((n, type(err).__name__)),
        give_up=lambda: give_up, sleep=slept.append,
    )  # fmt: skip
    return result, retried, slept


def test_transient_faults_are_retried_with_the_same_seed_and_reported() -> None:
    env = FlakyEnv([CommTimeout("late reply"), CommCorrupt("bad crc")])
    (obs, info), retried, slept = _run(env)
    assert info == {"seed": 7} and obs.shape == (1,)
    assert retried == [(1, "CommTimeout"), (2, "CommCorrupt")]
    assert slept == [0.25, 0.25] and env.seeds == [7, 7, 7]


def test_the_last_attempts_fault_propagates() -> None:
    env = FlakyEnv([CommTimeout("1"), CommTimeout("2"), CommTimeout("3")])
    with pytest.raises(CommTimeout, match="3"):
        _run(env, attempts=3)
    assert len(env.seeds) == 3


def test_a_latched_fault_is_never_retried() -> None:
    env = FlakyEnv([DeviceLost("unplugged")])
    with pytest.raises(DeviceLost):
        _run(env)
    assert len(env.seeds) == 1


def test_a_requested_stop_ends_the_retries() -> None:
    env = FlakyEnv([CommTimeout("late")])
    with pytest.raises(CommTimeout):
        _run(env, give_up=True)
    assert len(env.seeds) == 1


def test_at_least_one_attempt() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        _run(FlakyEnv([]), attempts=0)


def test_each_retry_is_logged_with_what_was_reset(caplog: pytest.LogCaptureFixture) -> None:
    env = FlakyEnv([CommTimeout("late reply")])
    with caplog.at_level("WARNING", logger="robot_sac.reset_retry"):
        _run(env)
    assert [r.getMessage() for r in caplog.records] == [
        "reset of episode 0 failed (CommTimeout: late reply); trying again in 0.25 s (1 of 3)"
    ]
