"""Env step throughput for ArmReach on one core: raw PyBullet backend vs the full env stack.

Prints steps/s for
  1. the raw backend — the baseline: ``PyBulletBackend.step`` replaying exactly the joint targets
     the full stack commanded, so both do the same physics work,
  2. ``RobotEnv`` alone (safety filter + task + validation, no gymnasium wrappers),
  3. the full stack from ``make_env`` (RobotEnv -> TimeLimit -> NormalizeObservation),
and the ratios between them, all measured in this run. The same three layers over the numpy
``FakeBackend`` isolate the stack's own cost in µs per step.

Targets (issue 2): >= 2,000 full-stack steps/s on one core; the gymnasium wrappers (TimeLimit,
NormalizeObservation) cost <= 10 % over ``RobotEnv``. The cost of everything above the physics
(safety filter, task, forward kinematics, validation, wrappers) relative to the raw backend is
printed too. Each figure is the best of ``--repeats`` runs (these machines are noisy).

Usage: python bench/env_step.py [--steps 3000] [--repeats 9]
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

import numpy as np

from robot_sac.configs import EnvConfig
from robot_sac.env import RobotEnv
from robot_sac.fake_backend import FakeBackend
from robot_sac.make_env import load_env_stack_config, make_env, make_sim_backend
from robot_sac.safety import SafetyFilter
from robot_sac.spec import RobotSpec
from robot_sac.tasks import ArmReach


def _pin_to_one_core() -> str:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if hasattr(os, "sched_setaffinity"):
        core = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {core})
        return f"pinned to core {core}"
    return "not pinned (no sched_setaffinity)"


def _best_rates(runs: list[Callable[[], None]], steps: int, repeats: int) -> list[float]:
    """Steps/s of each run, best of ``repeats``; the runs are interleaved round by round so that a
    burst of interference on this shared machine hits all of them alike."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for i, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - started)
    return [steps / b for b in best]


def _record_commands(env, steps: int) -> list[np.ndarray | None]:
    """The joint targets the full stack commands under random actions (None marks a reset)."""
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)
    commands: list[np.ndarray | None] = [None]
    env.reset(seed=0)
    for i in range(steps):
        _, _, terminated, truncated, info = env.step(actions[i])
        commands.append(info["command_rad"])
        if terminated or truncated:
            env.reset()
            commands.append(None)
    return commands


def _raw_backend(backend, commands: list[np.ndarray | None]) -> Callable[[], None]:
    """Replays the full stack's commands straight into the backend: the same physics work."""
    backend.connect()

    def run() -> None:
        seed = 0
        for command in commands:
            if command is None:
                backend.reset(seed=seed)
                seed += 1
            else:
                backend.step(command)

    return run


def _env(env, steps: int) -> Callable[[], None]:
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)

    def run() -> None:
        env.reset(seed=0)
        for i in range(steps):
            _, _, terminated, truncated, _ = env.step(actions[i])
            if terminated or truncated:
                env.reset()

    return run


def _measure(make_backend: Callable[[], object], config: EnvConfig, spec: RobotSpec, steps: int, repeats: int):
    horizon = config.task.horizon_steps
    commands = _record_commands(make_env(config, make_backend()), steps)
    bare = RobotEnv(make_backend(), ArmReach(spec, config.task), SafetyFilter(spec, config.safety))
    runs = [
        _raw_backend(make_backend(), commands),
        _wrap_time_limit_free(bare, steps, horizon),
        _env(make_env(config, make_backend()), steps),
    ]
    return _best_rates(runs, steps, repeats)


def _wrap_time_limit_free(env: RobotEnv, steps: int, horizon: int) -> Callable[[], None]:
    actions = np.random.default_rng(0).uniform(-1, 1, (steps, env.action_space.shape[0])).astype(np.float32)

    def run() -> None:
        env.reset(seed=0)
        for i in range(steps):
            env.step(actions[i])
            if i % horizon == horizon - 1:
                env.reset()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    pinned = _pin_to_one_core()
    config, spec = load_env_stack_config()
    print(f"ArmReach on {spec.name}: {args.steps} steps x best of {args.repeats}, {pinned}, "
          f"{config.sim.physics_substeps} physics substeps per {1000 * spec.dt_s:.0f} ms control period")  # fmt: skip

    rows = {
        "pybullet": _measure(lambda: make_sim_backend(config, spec), config, spec, args.steps, args.repeats),
        "numpy fake": _measure(lambda: FakeBackend(spec), config, spec, args.steps, args.repeats),
    }
    print(f"{'backend':<12} {'raw steps/s':>12} {'RobotEnv':>10} {'full stack':>11} {'full/raw':>9} "
          f"{'stack cost':>11} {'wrapper cost':>13}")  # fmt: skip
    for name, (raw, bare, full) in rows.items():
        print(f"{name:<12} {raw:>12.0f} {bare:>10.0f} {full:>11.0f} {full / raw:>9.3f} "
              f"{raw / full - 1:>10.1%} {bare / full - 1:>12.1%}")  # fmt: skip
    fake_raw, fake_bare, fake_full = rows["numpy fake"]
    print(
        f"per step, from the numpy fake: RobotEnv (safety filter, task, FK, validation) "
        f"{1e6 * (1 / fake_bare - 1 / fake_raw):.1f} us, wrappers (TimeLimit, NormalizeObservation) "
        f"{1e6 * (1 / fake_full - 1 / fake_bare):.1f} us"
    )
    raw, bare, full = rows["pybullet"]
    print("stack cost = raw/full - 1 (everything above the physics); wrapper cost = RobotEnv/full - 1")
    print(f"target >= 2000 full-stack steps/s: {'met' if full >= 2000 else 'MISSED'} ({full:.0f})")
    print(f"target wrapper overhead <= 10 %: {'met' if bare / full - 1 <= 0.10 else 'MISSED'} ({bare / full - 1:.1%})")
    print(f"stack cost over the raw PyBullet step: {raw / full - 1:.1%} (no target; reported for transparency)")


if __name__ == "__main__":
    main()
