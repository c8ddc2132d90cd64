"""Wall-clock to 95 % success on ArmReach: asynchronous runtime vs synchronous loop vs Stable-Baselines3.

One run, one machine, the same task, seed, network sizes (256x256), batch (256), UTD (1),
learning starts, discount, learning rate and initial temperature (``configs/train/arm_reach_sim.yaml``):

- ``async``: ``runtime.mode=local`` (actor processes = cores - 1, one learner);
- ``sync``: ``runtime.mode=sync`` (one process steps and learns in turn);
- ``sb3``: Stable-Baselines3 ``SAC("MultiInputPolicy")`` with its ``HerReplayBuffer`` (future
  strategy, 4 sampled goals = our relabel ratio 0.8) on the same env stack (PyBullet, safety filter,
  time limit) wrapped as a goal env; the relabeled reward is exact (the goal-independent part rides
  in ``info``). SB3 has no observation normalization for SAC; it gets raw observations, as its users do.

Each trains until a deterministic evaluation (20 fixed-seed episodes every ``--eval-interval``
steps) reaches ``--target`` or ``--max-steps``. Printed: env steps and wall-clock to the target,
env steps/s after learning starts (UTD 1), and the ratios the issue targets (async <= 0.5x SB3's
wall-clock; async >= 1.6x the sync loop's env steps/s).

Usage: python bench/async_speedup.py [--max-steps 60000] [--modes async,sync,sb3] [--seed 0]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learn_arm_reach import run_to_target

from robot_sac.configs import REPO_CONFIG_DIR, TrainConfig, load_train_config
from robot_sac.metrics import read_metrics

CONFIG = REPO_CONFIG_DIR / "train" / "arm_reach_sim.yaml"


class ArmReachGoalEnv(gym.Env[dict[str, np.ndarray], np.ndarray]):
    """Our ArmReach env stack (normalization off) as a gymnasium goal env for SB3's HER buffer."""

    def __init__(self, config: TrainConfig) -> None:
        from robot_sac.make_env import make_env, make_sim_backend
        from robot_sac.spec import load_robot_spec

        env_config = config.env
        env_config = replace(env_config, normalization=replace(env_config.normalization, enabled=False))
        self.env = make_env(env_config, make_sim_backend(env_config, load_robot_spec(env_config.robot_path())))
        self.task = self.env.unwrapped.task  # type: ignore[attr-defined]
        layout = self.task.goal_layout
        self._achieved, self._desired = slice(*layout.achieved), slice(*layout.desired)
        self._rest = np.r_[0 : layout.achieved[0]]
        space = self.env.observation_space
        assert isinstance(space, gym.spaces.Box)

        def box(idx: Any) -> gym.spaces.Box:
            return gym.spaces.Box(space.low[idx], space.high[idx], dtype=np.float32)

        self.observation_space = gym.spaces.Dict(
            {"observation": box(self._rest), "achieved_goal": box(self._achieved), "desired_goal": box(self._desired)}
        )
        self.action_space = self.env.action_space

    def _split(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        obs = np.asarray(obs, dtype=np.float32)
        return {"observation": obs[self._rest], "achieved_goal": obs[self._achieved],
                "desired_goal": obs[self._desired]}  # fmt: skip

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._split(obs), info

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        split = self._split(obs)
        raw = np.asarray(obs, dtype=np.float64)
        goal_part = float(self.task.goal_reward(raw[None], raw[None, self._desired])[0])
        info = dict(info, goal_free_reward=float(reward) - goal_part, raw_next_obs=raw)
        return split, float(reward), bool(terminated), bool(truncated), info

    def compute_reward(self, achieved: np.ndarray, desired: np.ndarray, info: Any) -> np.ndarray:
        infos = np.atleast_1d(info)
        rest = np.array([i["goal_free_reward"] for i in infos], dtype=np.float64)
        reached = np.stack([i["raw_next_obs"] for i in infos])  # holds `achieved` (not relabeled) and the speeds
        out: np.ndarray = self.task.goal_reward(reached, np.atleast_2d(desired)) + rest
        return out.astype(np.float32)

    def close(self) -> None:
        self.env.close()


def run_sb3(config: TrainConfig, target: float, eval_interval: int, max_steps: int) -> dict[str, float]:
    from stable_baselines3 import SAC, HerReplayBuffer
    from stable_baselines3.common.callbacks import BaseCallback

    from robot_sac.device import configure_cpu_threads
    from robot_sac.train import EVAL_SEED_OFFSET

    configure_cpu_threads(config.sac.cpu_threads)
    sac, run = config.sac, config.run
    env, eval_env = ArmReachGoalEnv(config), ArmReachGoalEnv(config)
    model = SAC(
        "MultiInputPolicy", env, learning_rate=sac.learning_rate, buffer_size=max_steps,
        learning_starts=sac.learning_starts,
        batch_size=sac.batch_size, tau=sac.tau, gamma=sac.gamma, train_freq=1, gradient_steps=1,
        ent_coef=f"auto_{sac.initial_alpha}", replay_buffer_class=HerReplayBuffer,
        replay_buffer_kwargs={"n_sampled_goal": 4, "goal_selection_strategy": "future", "copy_info_dict": True},
        policy_kwargs={"net_arch": list(sac.network.hidden_sizes)}, seed=config.seed, device="cpu", verbose=0,
    )  # fmt: skip
    found: dict[str, float] = {}
    started = time.perf_counter()
    learning_started: list[float] = []

    class Evaluate(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps == sac.learning_starts:
                learning_started.append(time.perf_counter())
            if self.num_timesteps % eval_interval:
                return True
            successes = []
            for i in range(run.eval_episodes):
                obs, _ = eval_env.reset(seed=config.seed + EVAL_SEED_OFFSET + i)
                done, info = False, {}
                while not done:
                    action, _ = model.predict(obs, deterministic=True)
                    obs, _, terminated, truncated, info = eval_env.step(action)
                    done = terminated or truncated
                successes.append(float(info.get("success", 0.0)))
            rate = float(np.mean(successes))
            print(f"  sb3 {self.num_timesteps} steps: success {rate:.0%}", flush=True)
            found.update(success=rate, env_steps=self.num_timesteps, wall_s=time.perf_counter() - started)
            return rate < target

    model.learn(total_timesteps=max_steps, callback=Evaluate())
    t0 = learning_started[0] if learning_started else started
    found["steps_per_s"] = (found["env_steps"] - sac.learning_starts) / max(time.perf_counter() - t0, 1e-9)
    env.close()
    eval_env.close()
    return found


def run_ours(config: TrainConfig, target: float) -> dict[str, float]:
    run_dir = Path(tempfile.mkdtemp(prefix=f"async_speedup-{config.runtime.mode}-")) / "run"
    outcome = run_to_target(config, run_dir, target, show_progress=False)
    rows = read_metrics(run_dir)
    steps, rates = rows["time/env_steps_per_s"]
    after = rates[steps > config.sac.learning_starts + config.run.log_interval_steps]
    return {"success": outcome.final.get("eval/success_rate", 0.0), "env_steps": float(outcome.env_steps),
            "wall_s": outcome.wall_s, "steps_per_s": float(np.mean(after)) if after.size else float("nan")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, default=60_000)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--eval-interval", type=int, default=2_500)
    parser.add_argument("--modes", default="async,sync,sb3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    base = (*args.overrides, f"seed={args.seed}", f"run.total_steps={args.max_steps}",
            f"run.eval_interval_steps={args.eval_interval}", "run.save_replay=false",
            f"run.checkpoint_interval_steps={args.max_steps}")  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    for mode in args.modes.split(","):
        overrides = (*base, f"runtime.mode={'local' if mode == 'async' else 'sync'}")
        config = load_train_config(CONFIG, overrides)
        print(f"{mode}: training ...", flush=True)
        if mode == "sb3":
            results[mode] = run_sb3(config, args.target, args.eval_interval, args.max_steps)
        else:
            results[mode] = run_ours(config, args.target)
        r = results[mode]
        print(f"  {mode}: success {r['success']:.0%} at {r['env_steps']:.0f} steps, {r['wall_s']:.0f} s, "
              f"{r['steps_per_s']:.1f} env steps/s after learning starts", flush=True)  # fmt: skip
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\nArmReach to {args.target:.0%} deterministic success, seed {args.seed}, {cores} cores, UTD 1")
    print(f"{'mode':>6} {'reached':>8} {'env steps':>10} {'wall s':>8} {'steps/s':>8}")
    for mode, r in results.items():
        print(f"{mode:>6} {r['success'] >= args.target!s:>8} {r['env_steps']:>10.0f} {r['wall_s']:>8.0f} "
              f"{r['steps_per_s']:>8.1f}")  # fmt: skip
    if {"async", "sb3"} <= results.keys():
        print(f"async wall-clock / SB3's: {results['async']['wall_s'] / results['sb3']['wall_s']:.2f} (target <= 0.5"
              "; a run that did not reach the target counts its full length)")  # fmt: skip
    if {"async", "sync"} <= results.keys():
        ratio = results["async"]["steps_per_s"] / results["sync"]["steps_per_s"]
        print(f"async env steps/s / sync's: {ratio:.2f} (target >= 1.6)")


if __name__ == "__main__":
    main()
