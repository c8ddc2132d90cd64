"""The run-directory policy for `robot_sac.evaluate`: the newest checkpoint's actor, frozen (imports torch).

It computes what ``robot-sac export`` bakes into the ONNX graph (`robot_sac.export.ExportedPolicy`),
so a run evaluates the same way before and after export::

    z = clip((obs - mean) / std, -k, k)       the checkpoint's normalizer, frozen
    joint_delta_rad = tanh(mean(z)) * max_step_rad    SAC's deterministic action, in rad

``tanh(mean)`` is `SquashedGaussianActor.deterministic`, the action `SAC.act(obs, deterministic=True)`
takes; only the actor is built (no critics, no optimizers).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from robot_sac.checkpoint import CHECKPOINTS_DIR, load_latest_checkpoint
from robot_sac.config_loader import from_mapping, read_yaml_file
from robot_sac.configs import TrainConfig
from robot_sac.errors import ConfigError, ModelContractError, NonFiniteAction, StorageError
from robot_sac.evaluate import RUN_CONFIG_FILE, LoadedPolicy
from robot_sac.networks import SquashedGaussianActor
from robot_sac.normalization import ObservationNormalizer
from robot_sac.policy_contract import PolicyContract
from robot_sac.spec import RobotSpec, load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach


class TorchRunPolicy:
    """A frozen actor with its normalizer: raw observation in, joint-target delta in rad out.

    Args:
        actor: the trained actor (put in eval mode and frozen here).
        normalizer: the run's statistics (frozen here), or None when the run did not normalize.
        scale_rad: (dof,) ``joint_delta_rad`` for a policy action of +1 (``spec.max_step_rad``).
    """

    def __init__(
        self, actor: SquashedGaussianActor, normalizer: ObservationNormalizer | None, scale_rad: np.ndarray
    ) -> None:
        self.actor = actor.eval().requires_grad_(False)
        self.normalizer = normalizer
        if normalizer is not None:
            normalizer.freeze()
        self.scale_rad = np.asarray(scale_rad, dtype=np.float64)

    def __call__(self, raw_observation: np.ndarray) -> np.ndarray:
        """``joint_delta_rad``, shape (dof,), float64, for a raw observation of shape (obs_dim,).

        Raises:
            NonFiniteAction: the actor produced NaN or inf (the env never sees it).
        """
        obs = np.asarray(raw_observation)
        z = self.normalizer.normalize(obs) if self.normalizer is not None else obs.astype(np.float32)
        with torch.no_grad():
            action = self.actor.deterministic(torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32)[None]))
        delta: np.ndarray = action.numpy()[0].astype(np.float64) * self.scale_rad
        if not np.isfinite(delta).all():
            raise NonFiniteAction(f"the actor's output {delta.tolist()} is not finite (corrupt checkpoint?)")
        return delta


def load_run_config(run_dir: Path) -> TrainConfig:
    """A run directory's saved config, strictly.

    Raises:
        ConfigError: unreadable, or the run trained a gymnasium env (no robot task to evaluate).
    """
    path = run_dir / RUN_CONFIG_FILE
    config = from_mapping(TrainConfig, read_yaml_file(path), source=str(path))
    if config.env_id:
        raise ConfigError(f"{run_dir} trained on gymnasium env {config.env_id!r}; only robot tasks can be evaluated")
    return config


def _contract(spec: RobotSpec, observation_names: Sequence[str]) -> PolicyContract:
    """The fields that make a policy fit a robot and task (provenance left empty)."""
    names = tuple(observation_names)
    return PolicyContract(
        robot_name=spec.name, joint_names=spec.joint_names, observation_names=names, obs_dim=len(names),
        action_dim=spec.dof, action_scale_rad=tuple(float(x) for x in spec.max_step_rad), control_hz=spec.control_hz,
        normalizer_digest="", clip_sigma=0.0, config_hash="", package_version="", policy_version=0,
    )  # fmt: skip


def load_run_policy(
    run_dir: Path, config: TrainConfig, spec: RobotSpec, observation_names: Sequence[str]
) -> LoadedPolicy:
    """The newest verified checkpoint of ``run_dir`` as a policy for ``spec``.

    Args:
        run_dir: a ``robot-sac train`` run directory.
        config: its saved config (network shape, the robot and task it trained on).
        spec: the robot to evaluate on.
        observation_names: the evaluation task's observation names.

    Raises:
        StorageError: no complete checkpoint.
        ModelContractError: the run was trained for another robot, task or network shape.
    """
    found = load_latest_checkpoint(run_dir)  # falls back to an older one if the newest fails verification
    if found is None:
        raise StorageError(
            f"{run_dir}: no complete checkpoint in {run_dir / CHECKPOINTS_DIR}; train longer than "
            "run.checkpoint_interval_steps, or resume it (robot-sac train --resume RUN)"
        )
    checkpoint, state = found
    run_spec = load_robot_spec(config.env.robot_path())
    trained = _contract(run_spec, ArmReach(run_spec, config.env.task).observation_names)
    differing = trained.mismatches(_contract(spec, observation_names))
    if differing:
        lines = "\n  ".join(differing)
        raise ModelContractError(
            f"run {run_dir} was trained for another robot/task ({len(differing)} field(s)):\n  {lines}\n"
            "evaluate it with the robot config it was trained on (drop --robot/--config), or train for this robot"
        )
    agent = state["agent"]
    dims = (int(agent["obs_dim"]), int(agent["action_dim"]))
    if dims != (len(observation_names), spec.dof):
        raise ModelContractError(
            f"{checkpoint}: the actor has obs_dim, action_dim = {dims}; the task and robot need "
            f"{(len(observation_names), spec.dof)}: evaluate it with the config it was trained on"
        )
    actor = SquashedGaussianActor(*dims, config.sac.network)
    try:
        actor.load_state_dict(agent["actor"])
    except RuntimeError as err:  # size mismatch: the saved config and the weights disagree
        raise ModelContractError(f"{checkpoint}: the actor does not fit {run_dir}'s sac.network ({err})") from err
    arrays = state.get("normalizer")  # None: the run trained without normalization
    normalizer = None
    if arrays is not None:
        normalizer = ObservationNormalizer.from_arrays({k: np.asarray(v) for k, v in arrays.items()})
    identity = f"{CHECKPOINTS_DIR}/{checkpoint.name}, {int(agent['num_updates'])} updates"
    policy = TorchRunPolicy(actor, normalizer, spec.max_step_rad)
    return LoadedPolicy(act=policy, kind="torch", source=str(run_dir), identity=identity)
