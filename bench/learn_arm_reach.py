"""Steps and wall-clock for SAC to reach >= 95 % deterministic success on ArmReach (PyBullet).

Trains with ``configs/train/arm_reach_sim.yaml`` (overrides via ``--set``; ``runtime.mode`` picks
the asynchronous local runtime, the default, or the synchronous loop), evaluates every
``run.eval_interval_steps`` on fixed seeds, and stops at the first evaluation with a success rate
of at least ``--target``. Prints env steps, gradient updates, wall-clock and the machine's core
count and torch thread count, so results from different machines can be compared.

Usage: python bench/learn_arm_reach.py [--max-steps 200000] [--target 0.95] [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from robot_sac.configs import REPO_CONFIG_DIR, TrainConfig, load_train_config
from robot_sac.runtime.learner import AsyncLearner
from robot_sac.runtime.local import LocalRuntime
from robot_sac.train import Trainer
from robot_sac.train_setup import start_run


@dataclass
class Outcome:
    reached: bool
    env_steps: int
    updates: int
    wall_s: float
    final: dict[str, float]
    device: str


def run_to_target(config: TrainConfig, run_dir: Path, target: float, show_progress: bool = True) -> Outcome:
    """Train ``config`` (sync or local runtime) until an evaluation reaches ``target`` success."""
    trainer = start_run(config, run_dir, show_progress=show_progress)
    runner: Trainer | AsyncLearner = LocalRuntime(trainer) if config.runtime.mode == "local" else trainer
    started = time.perf_counter()
    try:
        final = runner.train(config.run.total_steps, stop_when=lambda m: m.get("eval/success_rate", 0.0) >= target)
    finally:
        runner.close()
    elapsed = time.perf_counter() - started
    reached = final.get("eval/success_rate", 0.0) >= target
    c = trainer.counters
    return Outcome(reached, c.env_steps, c.updates, elapsed, final, str(trainer.agent.device))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=200_000)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", type=Path, default=None, help="keep the run here (default: a temp dir)")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    overrides = (*args.overrides, f"run.total_steps={args.max_steps}")
    config = load_train_config(REPO_CONFIG_DIR / "train" / "arm_reach_sim.yaml", overrides)
    run_dir = args.out or Path(tempfile.mkdtemp(prefix="learn_arm_reach-")) / "run"
    result = run_to_target(config, run_dir, args.target)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"machine: {cores} cores, torch threads {torch.get_num_threads()}, device {result.device}, "
          f"runtime {config.runtime.mode}")  # fmt: skip
    print(f"{'reached' if result.reached else 'NOT reached'} {args.target:.0%} success: "
          f"success {result.final.get('eval/success_rate', 0.0):.0%}, final distance "
          f"{1000 * result.final.get('eval/final_distance_m', float('nan')):.1f} mm after {result.env_steps} env "
          f"steps, {result.updates} updates, {result.wall_s:.0f} s wall-clock")  # fmt: skip
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
