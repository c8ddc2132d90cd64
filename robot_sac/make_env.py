"""`make_env`: the one factory that builds the env stack for every path.

Sim training, hardware fine-tuning, evaluation and deployment all build their env here, so the
wrapper order, the safety filter and the normalization are the same everywhere; only the backend
differs. The order, inside out:

    RobotEnv(backend, task, safety filter)  ->  TimeLimit(horizon)  ->  NormalizeObservation

The module also holds the gymnasium entry point of ``robot_sac/ArmReach-v0``, which composes the
default PyBullet arm. PyBullet is imported only when that entry point runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import TimeLimit

from robot_sac.backend import RobotBackend
from robot_sac.config_loader import apply_overrides, from_mapping, to_mapping
from robot_sac.configs import EnvConfig, load_env_config
from robot_sac.env import RobotEnv
from robot_sac.normalization import NormalizeObservation, ObservationNormalizer
from robot_sac.safety import SafetyFilter
from robot_sac.spec import RobotSpec, load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach

log = logging.getLogger(__name__)


def make_env(
    config: EnvConfig,
    backend: RobotBackend,
    *,
    normalizer: ObservationNormalizer | None = None,
    update_normalizer: bool = True,
    render_mode: str | None = None,
) -> gym.Env[np.ndarray, np.ndarray]:
    """Build the ArmReach env stack over ``backend``.

    Args:
        config: the env configuration (task, safety, normalization).
        backend: the robot (PyBullet, serial hardware, or the numpy fake), not yet connected.
        normalizer: shared or restored statistics; a fresh one is made when None. Ignored when
            ``config.normalization.enabled`` is false.
        update_normalizer: whether this env's observations update the statistics (false for
            evaluation envs that share the training normalizer).
        render_mode: ``None`` or ``"rgb_array"`` (simulator backends only).
    """
    spec = backend.spec
    _warn_if_actions_are_velocity_clipped(spec)
    task = ArmReach(spec, config.task)
    env: gym.Env[np.ndarray, np.ndarray] = RobotEnv(
        backend, task, SafetyFilter(spec, config.safety), render_mode=render_mode
    )
    env = TimeLimit(env, max_episode_steps=config.task.horizon_steps)
    if config.normalization.enabled:
        dim = len(task.observation_names)
        if normalizer is None:
            n = config.normalization
            normalizer = ObservationNormalizer(dim, clip_sigma=n.clip_sigma, epsilon=n.epsilon)
        env = NormalizeObservation(env, normalizer, update_stats=update_normalizer)
    return env


def _warn_if_actions_are_velocity_clipped(spec: RobotSpec) -> None:
    """In-range actions should pass the filter unchanged; otherwise the critic never sees them."""
    slow = spec.max_step_rad > spec.max_velocity_rad_s * spec.dt_s + 1e-12
    if slow.any():
        names = [spec.joint_names[i] for i in np.flatnonzero(slow)]
        log.warning(
            "joints %s: max_step_rad exceeds max_velocity_rad_s / control_hz, so in-range actions are cut by "
            "the velocity limit and a learner never sees the actions its policy emits; set max_step_rad <= "
            "max_velocity_rad_s / control_hz in %s's spec",
            names,
            spec.name,
        )


def make_sim_backend(config: EnvConfig, spec: RobotSpec) -> RobotBackend:
    """The PyBullet backend for ``spec`` (imports pybullet)."""
    from sim.pybullet_backend import PyBulletBackend

    return PyBulletBackend(spec, config.sim)


def make_backend(config: EnvConfig, spec: RobotSpec, config_dir: Path | None = None) -> RobotBackend:
    """The backend ``config.backend`` names: PyBullet, or the servos on ``config.serial.port``.

    The serial path imports pyserial but never pybullet, so it runs on the embedded controller.
    """
    match config.backend:
        case "pybullet":
            return make_sim_backend(config, spec)
        case "serial":
            from drivers.calibration import load_calibration
            from drivers.serial_backend import SerialBackend

            path = (
                config.serial.calibration_path() if config_dir is None else config.serial.calibration_path(config_dir)
            )
            return SerialBackend(spec, config.serial, load_calibration(path, spec))


def load_env_stack_config(
    config_path: str | Path | None = None, overrides: tuple[str, ...] = ()
) -> tuple[EnvConfig, RobotSpec]:
    """Load an env config (the repo default when None) and the robot spec it names."""
    if config_path is None:
        config = from_mapping(EnvConfig, apply_overrides(to_mapping(EnvConfig()), overrides), source="<defaults>")
    else:
        config = load_env_config(config_path, overrides)
    return config, load_robot_spec(config.robot_path())


def make_arm_reach_env(
    render_mode: str | None = None,
    config_path: str | None = None,
    overrides: tuple[str, ...] = (),
) -> gym.Env[np.ndarray, np.ndarray]:
    """Gymnasium entry point of ``robot_sac/ArmReach-v0``: the default arm in PyBullet.

    The registered env returns raw observations (``normalization.enabled=false`` is applied
    before the caller's overrides): other libraries bring their own normalization, and a running
    normalizer would make seeded resets non-repeatable, which ``check_env`` rightly rejects.
    ``gymnasium.make(ARM_REACH_ID, config_path=..., overrides=("task.horizon_steps=50",))`` selects
    another config or overrides keys, validated like the CLI's ``--set``.
    """
    config, spec = load_env_stack_config(config_path, ("normalization.enabled=false", *overrides))
    return make_env(config, make_sim_backend(config, spec), render_mode=render_mode)
