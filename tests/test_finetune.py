"""Fine-tuning a simulation run on the (emulated) robot: `robot-sac finetune` end to end over a pty."""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml

from robot_sac.checkpoint import latest_checkpoint, load_checkpoint
from robot_sac.cli import main
from robot_sac.configs import load_train_config
from robot_sac.errors import ConfigError
from robot_sac.finetune import SIM_STEPS_PER_REAL_BOUND, FinetuneRequest, finetune_config
from robot_sac.metrics import read_metrics
from robot_sac.replay import DOMAIN_REAL, DOMAIN_SIM, ReplayBuffer
from robot_sac.train_setup import local_actor_cores, start_run
from sim.emulator_process import EmulatorProcess
from tests.conftest import CONFIG_DIR
from tests.test_train import SMALL

ARM_REACH = CONFIG_DIR / "train" / "arm_reach_sim.yaml"
FAST = ("runtime.chunk_steps=10", "runtime.max_actor_lead_steps=200", "runtime.publish_interval_updates=10",
        "runtime.hardware.serial.homing_speed_rad_s=2.0", "sac.min_real_transitions=50")  # fmt: skip


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess(profile="reality") as emu:
        yield emu


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("sim") / "run"
    overrides = (*SMALL, "env.task.horizon_steps=50", "run.total_steps=300", "run.eval_interval_steps=300",
                 "run.checkpoint_interval_steps=300")  # fmt: skip
    config = load_train_config(ARM_REACH, overrides)
    trainer = start_run(config, run, show_progress=False)
    try:
        trainer.train(300)
    finally:
        trainer.close()
    return run


def test_finetune_continues_the_sim_checkpoint_on_the_robot(emulator: EmulatorProcess, sim_run: Path,
                                                           tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "ft"
    args = ["finetune", str(sim_run), "--port", emulator.port, "--budget-s", "5", "--out", str(out), "--no-progress"]
    for item in FAST:
        args += ["--set", item]
    assert main(args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert saved["runtime"]["hardware"]["enabled"] and saved["runtime"]["actors"] == 0
    assert saved["runtime"]["hardware"]["robot"].endswith("arm4_finetune.yaml")
    sim_state = load_checkpoint(latest_checkpoint(sim_run))
    checkpoint = latest_checkpoint(out)
    assert checkpoint is not None
    state = load_checkpoint(checkpoint)
    assert state["counters"]["env_steps"] >= 300 + 250  # 5 s at 50 Hz past the sim run
    buffer = ReplayBuffer.load(checkpoint / "replay.npz")
    domains = buffer.domain[: len(buffer)]
    assert int((domains == DOMAIN_SIM).sum()) == 300 and int((domains == DOMAIN_REAL).sum()) >= 200
    # The robot acted with the sim run's weights first (its version), never with untrained ones.
    real_versions = buffer.policy_version[: len(buffer)][domains == DOMAIN_REAL]
    assert real_versions.min() >= sim_state["counters"]["updates"]
    # The sim statistics stayed frozen: the exported policy's input scaling is the critics'.
    assert np.array_equal(np.asarray(state["normalizer"]["count"]), np.asarray(sim_state["normalizer"]["count"]))
    assert bool(np.asarray(state["normalizer"]["frozen"]))
    metrics = read_metrics(out)
    assert {"train/real/episode_return", "runtime/real_loop_period_p99_s", "real/obs_drift_fraction"} <= set(metrics)
    assert (out / "learning_curve.png").is_file()
    assert multiprocessing.active_children() == []


def test_finetune_config_refuses_what_cannot_work(sim_run: Path, tmp_path: Path) -> None:
    sim = load_train_config(sim_run / "config.yaml")
    request = FinetuneRequest(sim_run=sim_run, out=tmp_path / "x", port="/dev/ttyUSB0", budget_s=60.0)
    config = finetune_config(sim, 300, request)
    assert config.run.total_steps == 300 + 3000 and config.runtime.mode == "local"
    assert config.runtime.hardware.budget_steps == 3000  # 60 s at 50 Hz: the robot's data ends the run
    assert config.sac == sim.sac and config.env == sim.env  # the learner and the task are the sim run's
    with pytest.raises(ConfigError, match="budget"):
        finetune_config(sim, 300, FinetuneRequest(sim_run=sim_run, out=tmp_path, port="/dev/x", budget_s=0.0))
    foreign = load_train_config(CONFIG_DIR / "train" / "pendulum.yaml")
    with pytest.raises(ConfigError, match="ArmReach"):
        finetune_config(foreign, 0, request)


def test_sim_actors_do_not_use_up_the_robot_time_budget(sim_run: Path, tmp_path: Path) -> None:
    """``--budget-s`` is robot time: with sim actors beside the robot, the real steps end the run."""
    sim = load_train_config(sim_run / "config.yaml")
    request = FinetuneRequest(sim_run=sim_run, out=tmp_path, port="/dev/ttyUSB0", budget_s=60.0, sim_actors=2)
    config = finetune_config(sim, 300, request)
    assert config.runtime.hardware.budget_steps == 3000
    assert config.run.total_steps == 300 + 3000 * (1 + 2 * SIM_STEPS_PER_REAL_BOUND)  # only a bound
    # A run that was fine-tuned before collects the budget on top of its real transitions.
    assert finetune_config(sim, 5300, request, real_steps=2000).runtime.hardware.budget_steps == 5000
    assert config.runtime.hardware.sim_actor_niceness == 19  # they yield the CPU to the robot's loop


def test_the_hardware_actor_keeps_a_core_from_the_learners_threads(sim_run: Path, tmp_path: Path) -> None:
    """A learner whose threads take the hardware actor's core starves it (bus watchdog trips, timeouts)."""
    sim = load_train_config(sim_run / "config.yaml")
    for sim_actors in (0, 2):
        request = FinetuneRequest(sim_run=sim_run, out=tmp_path, port="/dev/ttyUSB0", sim_actors=sim_actors)
        assert local_actor_cores(finetune_config(sim, 300, request)) == sim_actors + 1
    assert local_actor_cores(sim) == 0  # the sync loop: no actor processes
