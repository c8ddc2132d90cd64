"""The synchronous SAC training loop: collect, store raw transitions, update, evaluate, checkpoint.

One env step at a time (Haarnoja et al. 2018b, algorithm 1):

    a ~ pi(a|s) (uniform random before ``learning_starts``)     act
    s', r, terminated, truncated = env.step(a)                   collect
    D <- D u {(s_raw, a_executed, r, s'_raw, terminated)}        store (faults and invalid
                                                                 measurements are not stored)
    repeat ``updates_per_step`` times: SAC.update(sample(D))     learn

The asynchronous runtime reuses `SAC.update`, `ReplayBuffer` and the env factory unchanged.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac.checkpoint import capture_rng_state, save_checkpoint
from robot_sac.configs import TrainConfig
from robot_sac.metrics import MetricsLogger, ProgressDisplay
from robot_sac.normalization import ObservationNormalizer
from robot_sac.relabel import GoalRelabeler
from robot_sac.replay import DomainMix, ReplayBuffer
from robot_sac.sac import SAC, Batch
from robot_sac.train_envs import TrainingEnvs

log = logging.getLogger(__name__)

EVAL_SEED_OFFSET = 1_000_000
"""Evaluation episodes use seeds ``seed + EVAL_SEED_OFFSET + i``: the same goals at every evaluation."""


@dataclass
class Counters:
    """Progress of a run; saved in checkpoints so a resumed run continues where it stopped."""

    env_steps: int = 0
    episodes: int = 0
    updates: int = 0
    update_credit: float = 0.0
    real_steps: int = 0
    """Env steps of those the hardware actor took (``runtime.hardware.budget_steps`` counts them)."""


@dataclass
class MetricsWindow:
    """Statistics since the last metrics row (the sync loop's and the asynchronous learner's)."""

    started_s: float = field(default_factory=time.perf_counter)
    steps: int = 0
    updates: int = 0
    update_metrics: list[dict[str, float]] = field(default_factory=list)
    returns: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    successes: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    clips: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    faults: int = 0

    def row(self, counters: Counters, buffer_size: int) -> dict[str, float]:
        """The metrics row of this window: rates, counters, recent returns and success, SAC means."""
        elapsed = max(time.perf_counter() - self.started_s, 1e-9)
        row: dict[str, float] = {
            "time/env_steps_per_s": self.steps / elapsed,
            "time/updates_per_s": self.updates / elapsed,
            "train/episodes": float(counters.episodes),
            "train/updates": float(counters.updates),
            "train/buffer_size": float(buffer_size),
            "safety/faults": float(self.faults),
        }
        if self.returns:
            row["train/episode_return"] = float(np.mean(self.returns))
        if self.successes:
            row["train/success_rate"] = float(np.mean(self.successes))
        if self.clips:
            row["safety/clips_per_episode"] = float(np.mean(self.clips))
        if self.update_metrics:
            for key in self.update_metrics[0]:
                row[f"sac/{key}"] = float(np.mean([m[key] for m in self.update_metrics]))
        return row

    def next(self) -> MetricsWindow:
        """A fresh window that keeps the recent-episode deques (they span windows)."""
        return MetricsWindow(returns=self.returns, successes=self.successes, clips=self.clips)


class Trainer:
    """Runs SAC on one env; every collaborator is injected (the CLI composes them)."""

    def __init__(
        self,
        *,
        config: TrainConfig,
        agent: SAC,
        buffer: ReplayBuffer,
        envs: TrainingEnvs,
        logger: MetricsLogger,
        run_dir: Path,
        rng: np.random.Generator,
        counters: Counters | None = None,
        show_progress: bool = True,
        relabeler: GoalRelabeler | None = None,
    ) -> None:
        """Store the collaborators; `train` runs the loop."""
        self.config = config
        self.agent = agent
        self.buffer = buffer
        self.envs = envs
        self.logger = logger
        self.run_dir = run_dir
        self.rng = rng
        self.counters = counters or Counters()
        self.show_progress = show_progress
        self.relabeler = relabeler
        self._window = MetricsWindow()
        self.last_eval: dict[str, float] = {}

    def close(self) -> None:
        """Close the envs and flush the metrics."""
        self.envs.close()
        self.logger.close()

    @property
    def normalizer(self) -> ObservationNormalizer | None:
        """The shared observation statistics (None when normalization is off)."""
        return self.envs.normalizer

    def train(self, total_steps: int, stop_when: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
        """Step the env until ``total_steps`` env steps in all (counting earlier, resumed steps).

        Args:
            total_steps: the run's length in env steps.
            stop_when: called with each evaluation's metrics; returning True ends the run early
                (after a checkpoint).

        Returns:
            The last evaluation's metrics.
        """
        run, c = self.config.run, self.counters
        obs, info = self.envs.train.reset(seed=int(self.rng.integers(2**31 - 1)))
        episode = {"return": 0.0, "length": 0}
        with ProgressDisplay(total_steps, initial_step=c.env_steps, enabled=self.show_progress) as progress:
            while c.env_steps < total_steps:
                obs, info, done = self._env_step(obs, info, episode)
                if done:
                    obs, info = self.envs.train.reset(seed=int(self.rng.integers(2**31 - 1)))
                    episode = {"return": 0.0, "length": 0}
                self._learn()
                stop = False
                if c.env_steps % run.eval_interval_steps == 0 or c.env_steps == total_steps:
                    self.last_eval = self.evaluate(run.eval_episodes)
                    self.logger.log(c.env_steps, self.last_eval)
                    stop = stop_when is not None and stop_when(self.last_eval)
                if c.env_steps % run.log_interval_steps == 0:
                    self._log_window(progress)
                if c.env_steps % run.checkpoint_interval_steps == 0 or c.env_steps == total_steps or stop:
                    self.save()
                if stop:
                    break
        return self.last_eval

    # --- one step ------------------------------------------------------------------------------

    def _env_step(
        self, obs: np.ndarray, info: dict[str, Any], episode: dict[str, float]
    ) -> tuple[np.ndarray, dict[str, Any], bool]:
        c, w = self.counters, self._window
        if c.env_steps < self.config.sac.learning_starts:
            action = self.rng.uniform(-1.0, 1.0, self.envs.action_dim).astype(np.float32)
        else:
            action = self.agent.act(obs)
        next_obs, reward, terminated, truncated, next_info = self.envs.train.step(action)
        if next_info.get("fault") is None and next_info.get("observation_valid", True):
            self.buffer.add(
                info.get("raw_observation", obs),
                next_info.get("executed_action", action),
                float(reward),
                next_info.get("raw_observation", next_obs),
                bool(terminated),
                policy_version=c.updates,
                safety_clipped=bool(next_info.get("safety_clipped", False)),
                episode=c.episodes,
            )
        else:
            w.faults += 1
        c.env_steps += 1
        w.steps += 1
        episode["return"] += float(reward)
        episode["length"] += 1
        done = bool(terminated or truncated)
        if done:
            c.episodes += 1
            w.returns.append(episode["return"])
            if "success" in next_info:
                w.successes.append(float(next_info["success"]))
            if "clip_counts" in next_info:
                w.clips.append(float(sum(next_info["clip_counts"].values())))
        return next_obs, next_info, done

    def _learn(self) -> None:
        c, sac = self.counters, self.config.sac
        if c.env_steps < sac.learning_starts or len(self.buffer) < sac.batch_size:
            return
        c.update_credit += sac.updates_per_step
        while c.update_credit >= 1.0:
            batch = self.sample_batch()
            self._window.update_metrics.append(self.agent.update(batch))
            c.updates += 1
            c.update_credit -= 1.0
            self._window.updates += 1

    def sample_batch(self) -> Batch:
        """A minibatch for `SAC.update`: normalized now, hindsight goals, the configured real/sim mix."""
        sac = self.config.sac
        mix = DomainMix(sac.real_batch_fraction, sac.min_real_transitions)
        return self.buffer.sample(sac.batch_size, self.rng, self.agent.device, self.normalizer, self.relabeler, mix)

    # --- evaluation, logging, checkpoints ------------------------------------------------------------

    def evaluate(self, episodes: int) -> dict[str, float]:
        """Deterministic policy (tanh of the mean) on the evaluation env, fixed seeds."""
        env = self.envs.evaluation
        returns, successes, distances = [], [], []
        for i in range(episodes):
            obs, info = env.reset(seed=self.config.seed + EVAL_SEED_OFFSET + i)
            total, done = 0.0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(self.agent.act(obs, deterministic=True))
                total += float(reward)
                done = bool(terminated or truncated)
            returns.append(total)
            if "success" in info:
                successes.append(float(info["success"]))
            if "distance_m" in info:
                distances.append(float(info["distance_m"]))
        result = {"eval/return": float(np.mean(returns))}
        if successes:
            result["eval/success_rate"] = float(np.mean(successes))
        if distances:
            result["eval/final_distance_m"] = float(np.mean(distances))
        return result

    def _log_window(self, progress: ProgressDisplay) -> None:
        self.report(self._window.row(self.counters, len(self.buffer)), progress)
        self._window = self._window.next()

    def report(self, row: dict[str, float], progress: ProgressDisplay, progress_step: int | None = None) -> None:
        """Log a metrics row at the current env step and show it on the progress display.

        ``progress_step`` is what the display counts when it is not the env step (a fine-tuning run's
        real steps); None: the env step.
        """
        c = self.counters
        self.logger.log(c.env_steps, row)
        progress.update(
            c.env_steps if progress_step is None else progress_step,
            episodes=c.episodes,
            last_return=row.get("train/episode_return"),
            success_rate=self.last_eval.get("eval/success_rate", row.get("train/success_rate")),
            updates_per_s=row["time/updates_per_s"],
            env_steps_per_s=row["time/env_steps_per_s"],
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything but the replay buffer, in a form ``torch.load(weights_only=True)`` accepts."""
        normalizer = None
        if self.normalizer is not None:
            normalizer = {k: torch.from_numpy(np.array(v)) for k, v in self.normalizer.to_arrays().items()}
        return {
            "agent": self.agent.state_dict(),
            "normalizer": normalizer,
            "rng": capture_rng_state(self.rng),
            "counters": dataclasses.asdict(self.counters),
        }

    def save(self) -> Path:
        """Write a checkpoint (atomic; the replay buffer too when ``run.save_replay``)."""
        extra: dict[str, Callable[[Path], None]] = {}
        if self.config.run.save_replay:
            extra["replay.npz"] = self.buffer.save
        path = save_checkpoint(
            self.run_dir, self.counters.env_steps, self.checkpoint_state(), keep=self.config.run.keep_checkpoints,
            extra_files=extra,
        )  # fmt: skip
        log.info("checkpoint %s", path)
        return path
