"""A simulation actor process: steps the training env with the latest published policy.

Per step (the synchronous loop's collect half, `robot_sac.train`):

    a ~ pi(a|s) with the newest weights pulled at the last episode boundary
      (uniform random while fewer than ``learning_starts`` env steps were sent in all)
    s', r, terminated, truncated = env.step(a)
    chunk <- chunk u {(s_raw, a_executed, r, s'_raw, terminated, version, clipped, episode id)}
    delta <- delta u {s'_raw}                      (normalizer statistics since the last chunk)

A chunk is sent every ``runtime.chunk_steps`` steps and at every episode end, without blocking
(`TransitionChannel.send` drops when full). Before each step the actor waits on the `StepGate` so it
never runs more than ``runtime.max_actor_lead_steps`` ahead of the learner.

The actor exits on the stop event, or when the learner's heartbeat is older than
``runtime.heartbeat_timeout_s`` (the learner died), after finishing the current episode with the
last good weights (SAFETY.md row 19).
"""

from __future__ import annotations

import logging
import math
import random
import signal
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robot_sac.configs import TrainConfig
from robot_sac.normalization import ObservationNormalizer, RunningMeanStd
from robot_sac.runtime.channels import (
    Heartbeat,
    StepGate,
    StopFlag,
    TransitionChannel,
    TransitionChunk,
    WeightChannel,
)
from robot_sac.sac import SAC
from robot_sac.train_envs import make_training_envs

log = logging.getLogger(__name__)

LEARNER_SLOT = 0
"""Heartbeat slot of the learner; actor ``i`` beats in slot ``i + 1``."""

EPISODES_PER_STREAM = 10**9
"""Episode ids are ``stream_id * EPISODES_PER_STREAM + local index``: unique across actors and restarts."""

_WAIT_S = 0.2
"""Longest sleep on the step gate before the stop flags are checked again."""


@dataclass
class ActorArgs:
    """Everything an actor process needs; picklable for the spawn start method.

    Attributes:
        config: the run's configuration (the actor reads env, sac and runtime).
        actor_id: slot 0 .. actors - 1 (heartbeat slot ``actor_id + 1``).
        stream_id: unique per started process (episode ids derive from it).
        seed: seeds numpy, torch and the env resets of this process.
        weights: the learner's published policy and statistics.
        transitions: where chunks go.
        heartbeat: shared stamps (slot 0: the learner).
        gate: the lead throttle.
        stop: set by the learner to end the run.
        ready: a ``Semaphore`` released once the env and the policy are built.
    """

    config: TrainConfig
    actor_id: int
    stream_id: int
    seed: int
    weights: WeightChannel
    transitions: TransitionChannel
    heartbeat: Heartbeat
    gate: StepGate
    stop: StopFlag
    ready: Any


class _ChunkBuilder:
    """Rows of the chunk being filled, and the observation statistics since the last send."""

    def __init__(self, args: ActorArgs, obs_dim: int, action_dim: int, track_stats: bool) -> None:
        self.args, self.obs_dim, self.action_dim, self.track_stats = args, obs_dim, action_dim, track_stats
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[np.ndarray, np.ndarray, float, np.ndarray, bool, int, bool, int]] = []
        self.stats = RunningMeanStd.empty(self.obs_dim) if self.track_stats else None
        self.episodes: list[tuple[float, float, int]] = []
        self.steps = 0
        self.faults = 0

    def observe(self, raw: np.ndarray, info: dict[str, Any]) -> None:
        """Fold a raw observation into the delta, with `NormalizeObservation`'s filter."""
        if self.stats is not None and info.get("observation_valid", True) and np.isfinite(raw).all():
            self.stats.add(np.asarray(raw, dtype=np.float64))

    def flush(self) -> None:
        """Send what was gathered (dropped and counted when the queue is full) and start afresh."""
        if self.steps == 0:
            return
        a, n = self.args, len(self.rows)
        cols: list[Any] = list(zip(*self.rows, strict=True)) if n else [()] * 8
        chunk = TransitionChunk(
            actor_id=a.actor_id,
            stream_id=a.stream_id,
            obs=np.asarray(cols[0], dtype=np.float64).reshape(n, self.obs_dim),
            action=np.asarray(cols[1], dtype=np.float32).reshape(n, self.action_dim),
            reward=np.asarray(cols[2], dtype=np.float64).reshape(n),
            next_obs=np.asarray(cols[3], dtype=np.float64).reshape(n, self.obs_dim),
            terminated=np.asarray(cols[4], dtype=bool).reshape(n),
            policy_version=np.asarray(cols[5], dtype=np.int64).reshape(n),
            safety_clipped=np.asarray(cols[6], dtype=bool).reshape(n),
            episode=np.asarray(cols[7], dtype=np.int64).reshape(n),
            env_steps=self.steps,
            faults=self.faults,
            obs_stats=self.stats,
            episodes=self.episodes,
        )
        a.transitions.send(chunk)
        a.gate.add_sent(a.actor_id, self.steps)
        self._reset()


def actor_main(args: ActorArgs) -> None:
    """Entry point of an actor process (``torch.multiprocessing`` spawn target)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the learner stops us
    torch.set_num_threads(1)
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    config = args.config
    snapshot = None
    while snapshot is None and not _should_exit(args):
        snapshot = args.weights.poll(-1)
    if snapshot is None:
        return
    local = ObservationNormalizer.from_arrays(snapshot.normalizer) if snapshot.normalizer is not None else None
    envs = make_training_envs(config, local)
    envs.evaluation.close()  # the learner evaluates; the factory builds both
    agent = SAC(envs.obs_dim, envs.action_dim, config.sac, torch.device("cpu"))
    agent.actor.load_state_dict(snapshot.policy)
    version = snapshot.version
    args.ready.release()
    try:
        _run_episodes(args, envs.train, agent, local, version, rng)
    finally:
        args.transitions.close_producer()
        envs.close()


def _run_episodes(
    args: ActorArgs, env: Any, agent: SAC, local: ObservationNormalizer | None, version: int, rng: np.random.Generator
) -> None:
    config, slot = args.config, args.actor_id + 1
    builder = _ChunkBuilder(args, agent.obs_dim, agent.action_dim, local is not None and not local.frozen)
    local_episode = 0
    while not _should_exit(args):
        snapshot = args.weights.poll(version)  # weights change only at episode boundaries
        if snapshot is not None:
            agent.actor.load_state_dict(snapshot.policy)
            version = snapshot.version
            if local is not None and snapshot.normalizer is not None:
                fresh = ObservationNormalizer.from_arrays(snapshot.normalizer)
                local.stats, local.frozen = fresh.stats, fresh.frozen
        episode_id = args.stream_id * EPISODES_PER_STREAM + local_episode
        obs, info = env.reset(seed=int(rng.integers(2**31 - 1)))
        builder.observe(info.get("raw_observation", obs), info)
        total, length, done = 0.0, 0, False
        while not done:
            args.heartbeat.beat(slot)
            if not _wait_for_room(args, builder.steps):
                break  # stopping while the learner no longer ingests: abandon the episode
            if args.gate.sent < config.sac.learning_starts:
                action = rng.uniform(-1.0, 1.0, agent.action_dim).astype(np.float32)
            else:
                action = agent.act(obs)
            next_obs, reward, terminated, truncated, next_info = env.step(action)
            raw_next = next_info.get("raw_observation", next_obs)
            builder.observe(raw_next, next_info)
            if next_info.get("fault") is None and next_info.get("observation_valid", True):
                builder.rows.append((
                    np.asarray(info.get("raw_observation", obs)), np.asarray(next_info.get("executed_action", action)),
                    float(reward), np.asarray(raw_next), bool(terminated), version,
                    bool(next_info.get("safety_clipped", False)), episode_id,
                ))  # fmt: skip
            else:
                builder.faults += 1
            builder.steps += 1
            total, length = total + float(reward), length + 1
            obs, info, done = next_obs, next_info, bool(terminated or truncated)
            if done:
                builder.episodes.append((total, float(next_info.get("success", math.nan)), length))
            if done or builder.steps >= config.runtime.chunk_steps:
                builder.flush()
        local_episode += 1
    builder.flush()


def _wait_for_room(args: ActorArgs, pending: int) -> bool:
    """Wait on the gate; False when the run is ending (stop set or the learner is gone)."""
    while not args.gate.wait_for_room(pending, _WAIT_S):
        if _should_exit(args):
            return False
        args.heartbeat.beat(args.actor_id + 1)
    return True


def _should_exit(args: ActorArgs) -> bool:
    """The stop event is set, or the learner has not beaten for ``heartbeat_timeout_s``."""
    if args.stop.is_set():
        return True
    if args.heartbeat.age_s(LEARNER_SLOT) > args.config.runtime.heartbeat_timeout_s:
        log.warning("actor %d: the learner's heartbeat is older than %.1f s; stopping after this episode",
                    args.actor_id, args.config.runtime.heartbeat_timeout_s)  # fmt: skip
        return True
    return False
