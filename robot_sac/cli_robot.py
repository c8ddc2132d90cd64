"""The CLI's robot-side commands (part of the composition root `robot_sac.cli`): finetune, eval, demo.

- ``robot-sac finetune SIM_RUN --port URL [--robot Y] [--budget-s N] [--sim-actors K] [--out DIR]
  [--adapt-normalizer] [--set k=v]``: continues a simulation run on the robot (`robot_sac.finetune`)
  with the hardware actor of the local runtime; SPACE holds the arm (again resumes), Ctrl-C stops
  the run, holds the arm and writes a final checkpoint (with the real transitions).
- ``robot-sac eval SOURCE (--sim | --port URL) [--robot Y] [--config E] [--episodes N] [--seed S]``:
  deterministic evaluation of a run or policy directory (`robot_sac.evaluate`); writes
  ``eval_report.json`` (success with a 95 % Wilson interval, final distance mean/p95, safety clips,
  faults); exit code 5 when a failed reset stopped it early.
- ``robot-sac demo [--out DIR] [--randomize] [--finetune-s N] [--episodes N]``: the whole journey on
  the servo emulator (`robot_sac.demo`), about 15 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from robot_sac.errors import ConfigError


def add_robot_commands(sub: Any) -> None:
    """Register the robot-side subcommands on ``sub`` (an argparse subparsers object)."""
    fin = sub.add_parser("finetune", help="continue a sim run on the robot (hardware actor, mixed sim/real replay)")
    fin.add_argument("sim_run", type=Path, help="the simulation run directory (robot-sac train --out)")
    fin.add_argument("--port", required=True, help="the robot's serial port, or the pty robot-sac emulate prints")
    fin.add_argument(
        "--robot",
        type=Path,
        default=None,
        help="robot YAML for the hardware (default: the stricter configs/robots/arm4_finetune.yaml)",
    )
    fin.add_argument("--budget-s", type=float, default=300.0, help="robot time to collect, seconds (default 300)")
    fin.add_argument("--sim-actors", type=int, default=0, help="simulation actors beside the robot (default 0)")
    fin.add_argument("--adapt-normalizer", action="store_true", help="let the observation statistics adapt")
    fin.add_argument("--out", type=Path, default=None, help="run directory (default: runs/finetune-<time>)")
    fin.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a training config key, e.g. --set sac.real_batch_fraction=0.75")  # fmt: skip
    fin.add_argument("--no-progress", action="store_true", help="no live progress bar")

    ev = sub.add_parser("eval", help="evaluate a run's or an exported policy deterministically (--sim or --port)")
    ev.add_argument("source", type=Path, help="run directory (newest checkpoint; needs torch) or policy directory")
    ev_where = ev.add_mutually_exclusive_group(required=True)
    ev_where.add_argument("--sim", action="store_true", help="the PyBullet arm")
    ev_where.add_argument("--port", default=None, help="servos on this serial port/pty (robot-sac emulate prints one)")
    ev.add_argument("--robot", type=Path, default=None, help="robot YAML (default: the env config's)")
    ev.add_argument("--config", type=Path, default=None,
                    help="env YAML (default: a run directory's saved env, else built-in defaults)")  # fmt: skip
    ev.add_argument("--episodes", type=int, default=20, help="number of episodes (default 20)")
    ev.add_argument("--seed", type=int, default=0, help="episode i uses seed S + i: the same targets for every policy")
    ev.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override an env config key, e.g. --set task.horizon_steps=150 (repeatable)")  # fmt: skip
    ev.add_argument("--out", type=Path, default=None, help="report directory (default: runs/eval-<time>)")

    demo = sub.add_parser("demo", help="sim training -> ONNX -> emulated arm -> fine-tune -> deploy, with a report")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"), help="report directory (default runs/demo)")
    demo.add_argument("--randomize", action="store_true", help="train the sim policy with domain randomization")
    demo.add_argument("--sim-max-steps", type=int, default=40_000, help="longest sim training, env steps")
    demo.add_argument("--finetune-s", type=float, default=180.0, help="robot time for fine-tuning, s (default 180)")
    demo.add_argument("--episodes", type=int, default=20, help="deployment episodes per evaluation (default 20)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--set", dest="train_overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="sim training config override (repeatable)")  # fmt: skip
    demo.add_argument("--finetune-set", dest="finetune_overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="fine-tuning config override (repeatable)")  # fmt: skip


def evaluate(args: argparse.Namespace) -> int:
    """``robot-sac eval``: seeded deterministic episodes of a run or policy; print and write ``eval_report.json``."""
    from robot_sac.evaluate import evaluate_source

    where = f"servos on {args.port}" if args.port else "PyBullet"
    report = evaluate_source(args.source, port=args.port, robot=args.robot, config_path=args.config,
                             overrides=tuple(args.overrides), episodes=args.episodes, seed=args.seed)  # fmt: skip
    path = report.write(args.out or Path("runs") / time.strftime("eval-%Y%m%d-%H%M%S"))
    print(f"evaluated {args.source} in {where}: {args.episodes} episodes from seed {args.seed}")
    print(report.table())
    print(f"report: {path}")
    return report.exit_code


def demo(args: argparse.Namespace) -> int:
    """``robot-sac demo``: `robot_sac.demo.run_demo` with the flags."""
    from robot_sac.demo import DemoOptions, run_demo

    if args.episodes < 1 or args.sim_max_steps < 1 or not args.finetune_s > 0:
        raise ConfigError("--episodes, --sim-max-steps and --finetune-s must be positive")
    options = DemoOptions(out=args.out, randomize=args.randomize, sim_max_steps=args.sim_max_steps,
                          finetune_s=args.finetune_s, episodes=args.episodes, seed=args.seed,
                          train_overrides=tuple(args.train_overrides),
                          finetune_overrides=tuple(args.finetune_overrides))  # fmt: skip
    run_demo(options)
    print(f"report: {args.out} (results.json, learning_curves.png, success.png, loop_periods.png, policy_finetuned/)")
    return 0


def finetune(args: argparse.Namespace) -> int:
    """``robot-sac finetune``: compose the run, the runtime and the operator keys; run; summarize."""
    from robot_sac.finetune import FinetuneRequest, start_finetune
    from robot_sac.metrics import plot_learning_curves, read_metrics
    from robot_sac.operator_keys import OperatorKeys
    from robot_sac.runtime.local import LocalFleet, LocalRuntime

    if args.sim_actors < 0:
        raise ConfigError(f"--sim-actors {args.sim_actors}: give 0 or more")
    out = args.out or Path("runs") / time.strftime("finetune-%Y%m%d-%H%M%S")
    request = FinetuneRequest(sim_run=args.sim_run, out=out, port=args.port, robot=args.robot, budget_s=args.budget_s,
                              sim_actors=args.sim_actors, adapt_normalizer=args.adapt_normalizer,
                              overrides=tuple(args.overrides))  # fmt: skip
    trainer = start_finetune(request, show_progress=not args.no_progress)
    started_at = (trainer.counters.env_steps, trainer.counters.real_steps)
    runtime = LocalRuntime(trainer)
    assert isinstance(runtime.fleet, LocalFleet)  # the fleet that owns the hardware actor's hold flag
    keys = OperatorKeys(runtime.fleet.hold)
    keys.start()
    interrupted = False
    try:
        runtime.train(trainer.config.run.total_steps)
    except KeyboardInterrupt:
        interrupted = True  # the learner stopped the actors (the arm holds) and wrote a final checkpoint
    finally:
        keys.stop()
        runtime.close()
    plot_learning_curves(out)
    counts = trainer.buffer.domain_counts()
    real = read_metrics(out).get("train/real/success_rate")
    success = f", last real training success {real[1][-1]:.0%}" if real is not None and len(real[1]) else ""
    real_steps = trainer.counters.real_steps - started_at[1]
    sim_steps = trainer.counters.env_steps - started_at[0] - real_steps
    print(f"{'stopped by the operator' if interrupted else 'fine-tuned'}: {real_steps} env steps on the robot, "
          f"{sim_steps} in sim actors; replay holds {counts['real']} real and {counts['sim']} sim "
          f"transitions{success}\nrun directory: {out} (export: robot-sac export {out} --out <dir>)")  # fmt: skip
    return 0
