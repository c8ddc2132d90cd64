"""Starting and resuming training runs: the run directory, seeding, and restoring a checkpoint.

A run directory holds ``config.yaml`` (the resolved config), ``run_info.json`` (package, torch and
device versions, config hash), ``metrics.csv``, ``tensorboard/``, ``checkpoints/`` and
``learning_curve.png``. A resumed run reads its config back from the directory: only the
``run.*`` settings (length, intervals) may change, so a resumed curve is the same experiment.
"""

from __future__ import annotations

import json
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import robot_sac
from robot_sac.checkpoint import load_latest_checkpoint, restore_rng_state
from robot_sac.config_loader import apply_overrides, config_hash, from_mapping, read_yaml_file, to_mapping
from robot_sac.configs import TrainConfig
from robot_sac.device import configure_allocator, configure_cpu_threads, select_device
from robot_sac.errors import ConfigError, StorageError
from robot_sac.metrics import MetricsLogger
from robot_sac.normalization import ObservationNormalizer
from robot_sac.relabel import GoalRelabeler
from robot_sac.replay import ReplayBuffer
from robot_sac.sac import SAC
from robot_sac.train import Counters, Trainer
from robot_sac.train_envs import TrainingEnvs, make_training_envs

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run_info.json"


def _seed_everything(seed: int) -> np.random.Generator:
    configure_allocator()
    random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def _write_run_files(run_dir: Path, config: TrainConfig, device: torch.device, threads: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_mapping(config), sort_keys=False), encoding="utf-8")
    info = {
        "robot_sac_version": robot_sac.__version__,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "device": str(device),
        "cpu_threads": threads,
        "config_sha256": config_hash(config),
    }
    (run_dir / RUN_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def local_actor_cores(config: TrainConfig) -> int:
    """Cores the run's actor processes take on this machine (the learner's threads leave them free).

    The hardware actor counts as one: its control loop must wake on time every period. Measured in
    fine-tuning on 2 cores with a 2-thread learner beside it: 22 updates/s (OpenMP threads waiting on
    a descheduled peer), the actor silent > 0.1 s now and then (the servos' bus watchdog tripped) and
    repeated CommTimeouts, so 22 robot steps/s instead of 50.
    """
    runtime = config.runtime
    if runtime.mode == "sync" or (runtime.mode == "ray" and runtime.ray.address is not None):
        return 0
    from robot_sac.runtime.pool import default_actor_count

    sim_actors = runtime.actors if runtime.actors is not None else default_actor_count()
    return sim_actors + (1 if runtime.hardware.enabled else 0)


def start_run(config: TrainConfig, run_dir: Path, *, show_progress: bool = True) -> Trainer:
    """A fresh run in ``run_dir`` (which must not hold a run already)."""
    if (run_dir / CONFIG_FILE).exists():
        raise ConfigError(f"--out {run_dir} already holds a run; use --resume {run_dir} or another --out")
    rng = _seed_everything(config.seed)
    device = select_device(config.sac.device)
    threads = configure_cpu_threads(config.sac.cpu_threads, local_actor_cores(config))
    envs = make_training_envs(config)
    agent = SAC(envs.obs_dim, envs.action_dim, config.sac, device)
    buffer = ReplayBuffer(config.sac.buffer_size, envs.obs_dim, envs.action_dim)
    _write_run_files(run_dir, config, device, threads)
    logger = MetricsLogger(run_dir)
    return Trainer(config=config, agent=agent, buffer=buffer, envs=envs, logger=logger, run_dir=run_dir,
                   rng=rng, show_progress=show_progress, relabeler=_relabeler(config, envs))  # fmt: skip


def load_run_config(run_dir: Path, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """The saved config of ``run_dir`` with ``run.*`` overrides (others are refused)."""
    path = run_dir / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: no {CONFIG_FILE} there; is it a robot-sac run directory?")
    for item in overrides:
        if not item.split("=", 1)[0].strip().startswith("run."):
            raise ConfigError(
                f"--set {item!r} on --resume: a resumed run keeps its saved config; only run.* settings "
                "(length, intervals) may change. Start a new run to change anything else."
            )
    return from_mapping(TrainConfig, apply_overrides(read_yaml_file(path), overrides), source=str(path))


def resume_run(run_dir: Path, config: TrainConfig, *, show_progress: bool = True) -> Trainer:
    """Continue ``run_dir`` from its newest checkpoint with exactly the saved weights and state."""
    found = load_latest_checkpoint(run_dir)  # falls back to an older one if the newest is corrupt
    if found is None:
        raise StorageError(f"--resume {run_dir}: no complete checkpoint in {run_dir / 'checkpoints'}")
    checkpoint, state = found
    return restore_run(run_dir, config, checkpoint, state, show_progress=show_progress)


def restore_run(
    run_dir: Path,
    config: TrainConfig,
    checkpoint: Path,
    state: dict[str, Any],
    *,
    show_progress: bool = True,
    fresh_logs: bool = False,
) -> Trainer:
    """A trainer in ``run_dir`` holding a checkpoint's exact state (weights, optimizers, buffer, RNG, counters).

    Args:
        run_dir: where the run goes on (the checkpoint's own run, or a new one: fine-tuning).
        config: the run's configuration (its network and variant must match the checkpoint's).
        checkpoint: the checkpoint directory (its ``replay.npz`` is loaded when present).
        state: `load_checkpoint` of it.
        show_progress: live progress bar.
        fresh_logs: start new metric files (a new run) instead of continuing ``run_dir``'s.
    """
    rng = _seed_everything(config.seed)
    device = select_device(config.sac.device)
    threads = configure_cpu_threads(config.sac.cpu_threads, local_actor_cores(config))
    normalizer = _restore_normalizer(state.get("normalizer"))
    envs = make_training_envs(config, normalizer)
    agent = SAC(envs.obs_dim, envs.action_dim, config.sac, device)
    agent.load_state_dict(state["agent"])
    replay_path = checkpoint / "replay.npz"
    if replay_path.is_file():
        buffer = ReplayBuffer.load(replay_path)
    else:
        buffer = ReplayBuffer(config.sac.buffer_size, envs.obs_dim, envs.action_dim)
    restore_rng_state(state["rng"], rng)
    counters = Counters(**state["counters"])
    _write_run_files(run_dir, config, device, threads)
    logger = MetricsLogger(run_dir, resume=not fresh_logs)
    if not fresh_logs:
        logger.truncate_after(counters.env_steps)
    return Trainer(config=config, agent=agent, buffer=buffer, envs=envs, logger=logger, run_dir=run_dir,
                   rng=rng, counters=counters, show_progress=show_progress,
                   relabeler=_relabeler(config, envs))  # fmt: skip


def _relabeler(config: TrainConfig, envs: TrainingEnvs) -> GoalRelabeler | None:
    """Hindsight relabeling when configured; the env's task must be a `GoalTask`."""
    sac = config.sac
    if sac.goal_relabel_ratio == 0.0:
        return None
    task = getattr(envs.train.unwrapped, "task", None)
    if task is None or not hasattr(task, "goal_layout") or not hasattr(task, "goal_reward"):
        raise ConfigError(
            f"sac.goal_relabel_ratio={sac.goal_relabel_ratio}: the env {config.env_id or 'ArmReach'} has no goal "
            "in its observation to relabel; set sac.goal_relabel_ratio=0"
        )
    return GoalRelabeler(task, sac.goal_relabel_ratio, sac.goal_relabel_horizon_steps)


def _restore_normalizer(arrays: dict[str, Any] | None) -> ObservationNormalizer | None:
    if arrays is None:
        return None
    return ObservationNormalizer.from_arrays({k: np.asarray(v) for k, v in arrays.items()})
