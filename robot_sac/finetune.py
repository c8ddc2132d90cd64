"""Fine-tuning a simulation run on the robot: the run, its config, and how it starts from the sim checkpoint.

``robot-sac finetune SIM_RUN --robot Y --port URL [--budget-s N]`` (the CLI composes this module):

1. The sim run's saved config becomes the fine-tuning config, changed only where the robot needs
   it: the asynchronous local runtime with a hardware actor on ``--port`` (``runtime.hardware``,
   the robot YAML ``--robot``, e.g. the stricter ``configs/robots/arm4_finetune.yaml``),
   ``--sim-actors`` simulation actors beside it (default 0: the robot's data only), and a length of
   ``budget_s`` seconds of robot time: ``runtime.hardware.budget_steps`` real transitions. The sim
   actors' steps do not count against it (they collect at a lower priority meanwhile;
   ``run.total_steps`` only bounds them, at `SIM_STEPS_PER_REAL_BOUND` per real step each).
2. The new run directory starts from the sim run's newest checkpoint: actor, critics, targets,
   temperature, optimizers, the replay buffer (its sim transitions stay, tagged ``sim``), counters
   and RNG state. Minibatches then mix real and sim transitions (``sac.real_batch_fraction``, half
   and half once ``sac.min_real_transitions`` exist; Ball et al. 2023).
3. The sim normalization statistics are frozen by default: the exported policy's input scaling is
   the one the critics were trained with, and a few minutes of robot data would otherwise drag the
   statistics toward one pose. ``adapt_normalizer`` lets them adapt (slowly: the sim count weighs in).
   Either way the learner warns when real observations fall beyond ``drift_sigma`` of the statistics.

The policy never explores with uniform random actions on the robot (``learning_starts`` is met by
the sim steps already taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from robot_sac.config_loader import apply_overrides, from_mapping, to_mapping
from robot_sac.configs import REPO_CONFIG_DIR, TrainConfig
from robot_sac.errors import ConfigError, StorageError
from robot_sac.spec import load_robot_spec
from robot_sac.train import Trainer

DEFAULT_FINETUNE_ROBOT = REPO_CONFIG_DIR / "robots" / "arm4_finetune.yaml"

SIM_STEPS_PER_REAL_BOUND = 20
"""Sim steps per real step and sim actor that ``run.total_steps`` allows; the real budget ends a run first.

Measured on 2 cores: one sim actor collected ~4.7 sim steps per real step (114 vs 24 steps/s, the
learner at ~138 updates/s throttling it)."""


@dataclass(frozen=True)
class FinetuneRequest:
    """What the operator asked for.

    Attributes:
        sim_run: the simulation run directory (``robot-sac train --out``).
        out: the fine-tuning run directory (new).
        port: the robot's serial port (pyserial URL, or the pty of ``robot-sac emulate``).
        robot: robot YAML for the hardware (stricter limits); None: `DEFAULT_FINETUNE_ROBOT`.
        budget_s: robot time to collect, in s (env steps = ``budget_s * control_hz``).
        sim_actors: simulation actors that keep collecting beside the robot.
        adapt_normalizer: let the observation statistics adapt to real data (default: frozen).
        overrides: further ``--set key=value`` items (applied last, validated like the file).
    """

    sim_run: Path
    out: Path
    port: str
    robot: Path | None = None
    budget_s: float = 300.0
    sim_actors: int = 0
    adapt_normalizer: bool = False
    overrides: tuple[str, ...] = ()


def finetune_config(
    sim_config: TrainConfig, sim_env_steps: int, request: FinetuneRequest, real_steps: int = 0
) -> TrainConfig:
    """The fine-tuning config: the sim run's, with the hardware actor, the budget and ``overrides``.

    ``sim_env_steps`` and ``real_steps`` are the checkpoint's env steps and real ones among them (a
    run that was fine-tuned before); the budget comes on top of them.

    Raises:
        ConfigError: the sim run trained on a foreign gymnasium env (there is no robot to fine-tune
            on), the budget is not positive, or an override is invalid.
    """
    if sim_config.env_id is not None:
        raise ConfigError(f"{request.sim_run} trained on {sim_config.env_id!r}; fine-tune a robot (ArmReach) run")
    if not request.budget_s > 0:
        raise ConfigError(f"--budget-s {request.budget_s}: give the robot time to collect, in seconds (> 0)")
    robot = request.robot or DEFAULT_FINETUNE_ROBOT
    spec = load_robot_spec(robot)
    budget = max(1, round(request.budget_s * spec.control_hz))
    steps = sim_env_steps + budget * (1 + SIM_STEPS_PER_REAL_BOUND * request.sim_actors)
    overrides = (
        "runtime.mode=local",
        f"runtime.actors={request.sim_actors}",
        "runtime.hardware.enabled=true",
        f"runtime.hardware.budget_steps={real_steps + budget}",
        f"runtime.hardware.robot={Path(robot).resolve()}",
        f"runtime.hardware.serial.port={request.port}",
        f"run.total_steps={steps}",
        *request.overrides,
    )
    return from_mapping(TrainConfig, apply_overrides(to_mapping(sim_config), overrides), source="finetune")


def start_finetune(request: FinetuneRequest, *, show_progress: bool = True) -> Trainer:
    """A new run in ``request.out`` that continues the sim run's newest checkpoint on the robot.

    Raises:
        ConfigError: ``out`` already holds a run, or the config is invalid (see `finetune_config`).
        StorageError: the sim run has no complete checkpoint.
    """
    from robot_sac.checkpoint import load_latest_checkpoint
    from robot_sac.train_setup import CONFIG_FILE, load_run_config, restore_run

    if (request.out / CONFIG_FILE).exists():
        raise ConfigError(f"--out {request.out} already holds a run; choose another directory")
    found = load_latest_checkpoint(request.sim_run)
    if found is None:
        raise StorageError(f"{request.sim_run}: no complete checkpoint in {request.sim_run / 'checkpoints'}")
    checkpoint, state = found
    sim_config = load_run_config(request.sim_run)
    counters = state["counters"]
    real_steps = counters.get("real_steps")
    if real_steps is None:  # a checkpoint from before the counter: count its stored real transitions
        real_steps = _stored_real_transitions(checkpoint)
    config = finetune_config(sim_config, int(counters["env_steps"]), request, int(real_steps))
    trainer = restore_run(request.out, config, checkpoint, state, show_progress=show_progress, fresh_logs=True)
    trainer.counters.real_steps = int(real_steps)  # what the budget was set on top of
    if trainer.normalizer is not None and not request.adapt_normalizer:
        trainer.normalizer.freeze()
    return trainer


def _stored_real_transitions(checkpoint: Path) -> int:
    """Real transitions in a checkpoint's replay file (0 without one); reads its domain column only."""
    import numpy as np

    from robot_sac.replay import DOMAIN_REAL

    replay = checkpoint / "replay.npz"
    if not replay.is_file():
        return 0
    with np.load(replay) as arrays:
        return int(np.count_nonzero(arrays["domain"] == DOMAIN_REAL))
