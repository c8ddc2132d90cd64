"""The envs a training run steps: ArmReach through `make_env`, or any gymnasium id with Box spaces.

Both kinds end up with the same shape: actions in [-1, 1]^A (gymnasium's `RescaleAction` for
foreign envs), observations normalized by one shared `ObservationNormalizer` (the training env
updates it, the evaluation env only reads it), and the raw observation in
``info["raw_observation"]`` for the replay buffer.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import RescaleAction

from robot_sac.configs import TrainConfig
from robot_sac.errors import ConfigError
from robot_sac.make_env import make_env, make_sim_backend
from robot_sac.normalization import NormalizeObservation, ObservationNormalizer
from robot_sac.spec import load_robot_spec


@dataclass
class TrainingEnvs:
    """The training env, the evaluation env and what the learner needs to know about them."""

    train: gym.Env[np.ndarray, np.ndarray]
    evaluation: gym.Env[np.ndarray, np.ndarray]
    normalizer: ObservationNormalizer | None
    obs_dim: int
    action_dim: int

    def close(self) -> None:
        """Close both envs."""
        self.train.close()
        self.evaluation.close()


def _foreign_env(env_id: str) -> gym.Env[np.ndarray, np.ndarray]:
    """``gym.make(env_id)`` checked for SAC (flat, bounded Box spaces), actions rescaled to [-1, 1]."""
    try:
        env = gym.make(env_id)
    except gym.error.Error as err:
        raise ConfigError(f"env_id: cannot make {env_id!r}: {err}") from err
    if not isinstance(env.action_space, gym.spaces.Box) or not isinstance(env.observation_space, gym.spaces.Box):
        raise ConfigError(f"env_id: {env_id!r} must have Box observation and action spaces for SAC")
    if len(env.observation_space.shape) != 1 or len(env.action_space.shape) != 1:
        raise ConfigError(f"env_id: {env_id!r} must have flat (1-D) observation and action spaces")
    if not np.isfinite(env.action_space.low).all() or not np.isfinite(env.action_space.high).all():
        raise ConfigError(f"env_id: {env_id!r} has an unbounded action space; SAC needs finite bounds")
    return RescaleAction(env, np.float32(-1.0), np.float32(1.0))


def make_training_envs(config: TrainConfig, normalizer: ObservationNormalizer | None = None) -> TrainingEnvs:
    """Build the training and evaluation envs for ``config``.

    Args:
        config: the run; ``config.env_id`` selects a gymnasium env, else ArmReach from ``config.env``.
        normalizer: restored statistics (resume); a fresh normalizer is made when None and
            ``config.env.normalization.enabled``.
    """
    norm_cfg = config.env.normalization
    if config.env_id is None:
        spec = load_robot_spec(config.env.robot_path())
        train = make_env(config.env, make_sim_backend(config.env, spec), normalizer=normalizer)
        if isinstance(train, NormalizeObservation):
            normalizer = train.normalizer
        evaluation = make_env(config.env, make_sim_backend(config.env, spec), normalizer=normalizer,
                              update_normalizer=False)  # fmt: skip
    else:
        train, evaluation = _foreign_env(config.env_id), _foreign_env(config.env_id)
        if norm_cfg.enabled:
            if normalizer is None:
                dim = int((train.observation_space.shape or (0,))[0])
                normalizer = ObservationNormalizer(dim, clip_sigma=norm_cfg.clip_sigma, epsilon=norm_cfg.epsilon)
            train = NormalizeObservation(train, normalizer, update_stats=True)
            evaluation = NormalizeObservation(evaluation, normalizer, update_stats=False)
    obs_shape = train.observation_space.shape or (0,)
    act_shape = train.action_space.shape or (0,)
    return TrainingEnvs(train, evaluation, normalizer, int(obs_shape[0]), int(act_shape[0]))
