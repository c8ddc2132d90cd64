"""End-to-end training: the CLI, run directories, resume, and a learning test on Pendulum-v1."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from robot_sac.checkpoint import latest_checkpoint, load_checkpoint
from robot_sac.cli import main
from robot_sac.configs import TrainConfig
from robot_sac.errors import ConfigError
from robot_sac.metrics import read_metrics
from robot_sac.train_setup import load_run_config, resume_run, start_run
from tests.conftest import CONFIG_DIR

SMALL = (
    "sac.network.hidden_sizes=[32, 32]",
    "sac.batch_size=32",
    "sac.learning_starts=100",
    "sac.cpu_threads=1",
    "run.eval_episodes=1",
    "run.log_interval_steps=100",
    "runtime.mode=sync",
)


def _tiny_pendulum(tmp_path: Path, steps: int, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["train", "--config", str(CONFIG_DIR / "train" / "pendulum.yaml"), "--steps", str(steps),
            "--out", str(tmp_path / "run"), "--no-progress"]  # fmt: skip
    for item in (*SMALL, *extra):
        args += ["--set", item]
    return args


def test_cli_train_writes_a_complete_run_directory(tmp_path: Path) -> None:
    assert (
        main(_tiny_pendulum(tmp_path, 400, ("run.eval_interval_steps=200", "run.checkpoint_interval_steps=200"))) == 0
    )
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["env_id"] == "Pendulum-v1" and saved["run"]["total_steps"] == 400
    assert (run / "run_info.json").is_file() and (run / "learning_curve.png").stat().st_size > 5000
    metrics = read_metrics(run)
    expected = {"eval/return", "train/episode_return", "sac/critic_loss", "sac/alpha", "time/updates_per_s"}
    assert expected <= set(metrics)
    assert list(metrics["eval/return"][0]) == [200, 400]
    assert latest_checkpoint(run) is not None
    assert any((run / "tensorboard").iterdir())


def test_cli_refuses_to_overwrite_a_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_tiny_pendulum(tmp_path, 150)) == 0
    assert main(_tiny_pendulum(tmp_path, 150)) == 2
    assert "--resume" in capsys.readouterr().err


def test_resume_continues_with_exactly_the_saved_weights(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert (
        main(_tiny_pendulum(tmp_path, 300, ("run.checkpoint_interval_steps=300", "run.eval_interval_steps=300"))) == 0
    )
    saved = load_checkpoint(latest_checkpoint(run))
    config = load_run_config(run, ("run.total_steps=500",))
    trainer = resume_run(run, config, show_progress=False)
    try:
        restored = trainer.agent.state_dict()
        for name, tensor in _flat_tensors(saved["agent"]).items():
            assert torch.equal(tensor, _flat_tensors(restored)[name]), name
        assert trainer.counters.env_steps == 300 and len(trainer.buffer) == 300
        trainer.train(config.run.total_steps)
    finally:
        trainer.close()
    steps, _ = read_metrics(run)["time/updates_per_s"]
    assert (np.diff(steps) > 0).all() and steps[-1] == 500  # the curve continues, no duplicate rows


def test_resume_refuses_to_change_the_experiment(tmp_path: Path) -> None:
    assert main(_tiny_pendulum(tmp_path, 150)) == 0
    with pytest.raises(ConfigError, match="only run"):
        load_run_config(tmp_path / "run", ("sac.learning_rate=1e-2",))


def test_arm_reach_training_runs_and_logs_safety_counts(tmp_path: Path) -> None:
    pytest.importorskip("pybullet")
    config = _config(CONFIG_DIR / "train" / "arm_reach_sim.yaml", *SMALL, "run.total_steps=300",
                     "run.eval_interval_steps=300", "run.checkpoint_interval_steps=300")  # fmt: skip
    trainer = start_run(config, tmp_path / "arm", show_progress=False)
    try:
        final = trainer.train(300)
    finally:
        trainer.close()
    assert "eval/success_rate" in final and "eval/final_distance_m" in final
    metrics = read_metrics(tmp_path / "arm")
    assert "safety/clips_per_episode" in metrics and "safety/faults" in metrics


def test_pendulum_learns_within_10k_steps(tmp_path: Path) -> None:
    """Acceptance: deterministic evaluation return above -300 within 10,000 env steps (seeded, CPU)."""
    config = _config(CONFIG_DIR / "train" / "pendulum.yaml", "run.eval_episodes=5", "run.save_replay=false")
    trainer = start_run(config, tmp_path / "pendulum", show_progress=False)
    try:
        trainer.train(config.run.total_steps)
    finally:
        trainer.close()
    steps, returns = read_metrics(tmp_path / "pendulum")["eval/return"]
    assert steps[-1] <= 10_000
    assert returns.max() > -300, list(zip(steps, returns, strict=True))


def _config(path: Path, *overrides: str) -> TrainConfig:
    from robot_sac.configs import load_train_config

    return load_train_config(path, overrides)


def _flat_tensors(tree: object, prefix: str = "") -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(tree, torch.Tensor):
        out[prefix] = tree
    elif isinstance(tree, dict):
        for key, value in tree.items():
            out.update(_flat_tensors(value, f"{prefix}/{key}"))
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            out.update(_flat_tensors(value, f"{prefix}/{i}"))
    return out


def test_foreign_env_with_normalization_stores_raw_and_shares_stats(tmp_path: Path) -> None:
    config = _config(CONFIG_DIR / "train" / "pendulum.yaml", *SMALL, "env.normalization.enabled=true",
                     "run.total_steps=150", "run.eval_interval_steps=150")  # fmt: skip
    trainer = start_run(config, tmp_path / "norm", show_progress=False)
    try:
        trainer.train(150)
        normalizer = trainer.normalizer
        # 1 reset + 150 steps of training; the 200-step evaluation episode added nothing.
        assert normalizer is not None and normalizer.stats.count == 151
        stored = trainer.buffer.obs[: len(trainer.buffer)]
        assert np.abs(stored[:, 2]).max() > 1.0  # raw angular velocity, not normalized values
    finally:
        trainer.close()
