"""Steps and wall-clock for SAC to reach >= 95 % deterministic success on ArmReach (PyBullet).

Trains with ``configs/train/arm_reach_sim.yaml`` (overrides via ``--set``), evaluates every
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
from pathlib import Path

import torch

from robot_sac.configs import REPO_CONFIG_DIR, load_train_config
from robot_sac.train_setup import start_run


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
    trainer = start_run(config, run_dir, show_progress=True)
    started = time.perf_counter()
    try:
        final = trainer.train(
            config.run.total_steps, stop_when=lambda m: m.get("eval/success_rate", 0.0) >= args.target
        )
    finally:
        trainer.close()
    elapsed = time.perf_counter() - started
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    reached = final.get("eval/success_rate", 0.0) >= args.target
    print(f"machine: {cores} cores, torch threads {torch.get_num_threads()}, device {trainer.agent.device}")
    print(f"{'reached' if reached else 'NOT reached'} {args.target:.0%} success: "
          f"success {final.get('eval/success_rate', 0.0):.0%}, final distance "
          f"{1000 * final.get('eval/final_distance_m', float('nan')):.1f} mm after {trainer.counters.env_steps} env "
          f"steps, {trainer.counters.updates} updates, {elapsed:.0f} s wall-clock")  # fmt: skip
    print(f"run directory: {run_dir}")


if __name__ == "__main__":
    main()
