"""Success on the emulated arm's reality profile: nominal sim policy, randomized sim policy, fine-tuned.

For each seed:

(a) train ArmReach in nominal PyBullet (``arm_reach_sim.yaml``) to the target success, export,
    deploy on the emulator's ``reality`` profile through the serial driver (torch-free runtime)
    under the fine-tuning robot config (``arm4_finetune.yaml``, as `robot-sac demo` does);
(b) the same with domain randomization (``arm_reach_dr.yaml``);
(c) fine-tune (a) on the emulated arm (`robot-sac finetune` defaults) for the longest budget,
    with checkpoints at each budget in ``--minutes`` (2, 5, 10 minutes of emulated robot time),
    export each checkpoint and deploy it (same episode seeds as (a) and (b)).

Prints success with 95 % Wilson intervals per policy and seed, and pooled over seeds. Target:
>= 95 % within 10 minutes of real-time data. About 30 minutes per seed on 2 cores.

Usage: python bench/sim_to_real.py [--seeds 0] [--minutes 2,5,10] [--episodes 40]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from dataclasses import replace
from pathlib import Path

from robot_sac.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from robot_sac.demo import DemoOptions, Evaluation, arm_deploy_args, deploy_policy, finetune_on, train_sim
from robot_sac.eval_report import wilson_interval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--minutes", default="2,5,10", help="fine-tuning budgets, minutes of robot time")
    parser.add_argument("--episodes", type=int, default=40, help="deployment episodes per policy")
    parser.add_argument("--sim-max-steps", type=int, default=40_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    from robot_sac.export import export_policy
    from sim.emulator_process import EmulatorProcess

    root = args.out or Path(tempfile.mkdtemp(prefix="sim_to_real-"))
    minutes = sorted(float(m) for m in args.minutes.split(","))
    pooled: dict[str, list[Evaluation]] = {}
    for seed in (int(s) for s in args.seeds.split(",")):
        base = root / f"seed{seed}"
        options = DemoOptions(out=base, seed=seed, episodes=args.episodes, sim_max_steps=args.sim_max_steps,
                              finetune_s=60 * minutes[-1])  # fmt: skip
        results: dict[str, Evaluation] = {}
        for randomize, name in ((False, "nominal sim"), (True, "randomized sim")):
            run = base / ("sim_dr" if randomize else "sim")
            steps, wall = train_sim(replace(options, randomize=randomize), run)
            export_policy(run, base / f"policy_{run.name}")
            print(f"seed {seed}: {name} trained, {steps} env steps, {wall:.0f} s", flush=True)
        with EmulatorProcess(profile="reality", seed=seed) as emulator:
            port = arm_deploy_args(emulator.port)  # as robot-sac demo: the fine-tuning robot config
            for run, name in (("sim", "nominal sim"), ("sim_dr", "randomized sim")):
                results[name] = deploy_policy(base / f"policy_{run}", port, base / f"deploy_{run}", "hardware", options)
            # One fine-tuning run, with a checkpoint at each budget (50 Hz: 3000 steps a minute).
            interval = ("run.checkpoint_interval_steps=3000", "run.keep_checkpoints=100")
            real, wall = finetune_on(
                replace(options, finetune_overrides=interval), base / "sim", base / "ft", emulator.port
            )
            print(f"seed {seed}: fine-tuned {real} real transitions in {wall:.0f} s", flush=True)
            sim_steps = int(load_checkpoint(latest_checkpoint(base / "sim"))["counters"]["env_steps"])
            for m in minutes:
                checkpoint = _checkpoint_at(base / "ft", sim_steps + round(m * 3000))
                policy = base / f"policy_ft_{m:g}min"
                export_policy(checkpoint, policy)
                name = f"fine-tuned {m:g} min"
                results[name] = deploy_policy(policy, port, base / f"deploy_ft_{m:g}", "hardware", options)
        for name, e in results.items():
            pooled.setdefault(name, []).append(e)
            low, high = e.interval()
            print(f"seed {seed} {name:>20}: {e.successes}/{e.episodes} ({e.rate:.0%}, 95 % {low:.0%}-{high:.0%}), "
                  f"final error {e.final_error_mm:.1f} mm, faults {e.faults or '-'}", flush=True)  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nreality profile of the servo emulator, {args.episodes} episodes per policy and seed, {cores} cores")
    for name, evals in pooled.items():
        k, n = sum(e.successes for e in evals), sum(e.episodes for e in evals)
        low, high = wilson_interval(k, n)
        print(f"{name:>20}: {k}/{n} = {k / max(n, 1):.0%} (95 % {low:.0%}-{high:.0%})")
    print(f"target: >= 95 % within {minutes[-1]:g} minutes of real-time data; runs in {root}")


def _checkpoint_at(run: Path, env_steps: int) -> Path:
    """The checkpoint of ``run`` whose env step count is closest to ``env_steps``."""
    return min(list_checkpoints(run), key=lambda c: abs(int(load_checkpoint(c)["counters"]["env_steps"]) - env_steps))


if __name__ == "__main__":
    main()
