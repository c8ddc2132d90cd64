"""The actor loop: steps one env with the latest published policy and sends raw transitions.

Per step (the synchronous loop's collect half, `robot_sac.train`):

    a ~ pi(a|s) with the newest weights pulled at the last episode boundary
      (uniform random while fewer than ``learning_starts`` env steps were sent in all)
    s', r, terminated, truncated = env.step(a)
    chunk <- chunk u {(s_raw, a_executed, r, s'_raw, terminated, version, clipped, episode id)}
    delta <- delta u {s'_raw}                      (normalizer statistics since the last chunk)

A chunk is sent every ``runtime.chunk_steps`` steps and at every episode end, never blocking
(`LearnerLink.send` drops when full). The loop talks to the learner only through a `LearnerLink`,
so the same code runs as a local process and as a Ray actor.

Two roles:

- **simulation** (`ActorSpec.hardware` False): before each step the actor waits on the learner's
  throttle so it never runs more than ``runtime.max_actor_lead_steps`` ahead; when the run stops or
  the learner is gone it abandons the episode. Beside a hardware actor it lowers its own priority
  (``runtime.hardware.sim_actor_niceness``), so that the robot's loop and the learner come first:
  on 2 cores with one sim actor the learner ran 138 instead of 119 updates/s, the robot's loop
  p99 21.4 instead of 21.8 ms (its data rate, 24 vs 23 real steps/s, hardly moved).
- **hardware** (True): the robot's control loop must never wait (SAFETY.md row 19). The backend
  paces the steps on its monotonic period grid; the actor never waits on the throttle, sends
  without blocking, pulls weights only at episode boundaries, tags its transitions ``real`` and
  measures its loop period. A stop request ends the episode at once (the servos hold their last
  goal); a learner that is gone lets the episode finish with the last good weights, then the actor
  holds and exits. An operator hold ends the episode at once too; the next one starts when the
  hold is released. A latched robot fault (unplugged, rebooted, hardware error) ends the actor
  with `HARDWARE_FAULT_EXIT`: only an operator may re-arm a real arm.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from robot_sac.configs import EnvConfig, TrainConfig
from robot_sac.errors import EnvStateError, RobotFault
from robot_sac.gc_pauses import freeze_heap, paused_gc
from robot_sac.normalization import ObservationNormalizer, RunningMeanStd
from robot_sac.realtime import request_realtime
from robot_sac.replay import DOMAIN_REAL, DOMAIN_SIM
from robot_sac.reset_retry import reset_retrying
from robot_sac.runtime.channels import TransitionChunk
from robot_sac.runtime.protocols import LearnerLink
from robot_sac.sac import SAC

log = logging.getLogger(__name__)

EPISODES_PER_STREAM = 10**9
"""Episode ids are ``stream_id * EPISODES_PER_STREAM + local index``: unique across actors and restarts."""


def first_stream_id(stored_episodes: np.ndarray) -> int:
    """The first new stream id of a run whose replay holds episodes ``stored_episodes`` (a resumed run)."""
    return int(stored_episodes.max()) // EPISODES_PER_STREAM + 1 if stored_episodes.size else 0


HARDWARE_FAULT_EXIT = 3
"""Exit code of a hardware actor stopped by a latched robot fault (it is not restarted)."""

RESET_ATTEMPTS = 5
"""Resets the hardware actor tries after episode-level faults before it gives up."""

RESET_RETRY_S = 0.5
"""Pause between those attempts."""

_WAIT_S = 0.2
"""Longest sleep on the throttle before the stop conditions are checked again."""


@dataclass(frozen=True)
class ActorSpec:
    """Who an actor is; picklable (spawn, Ray).

    Attributes:
        config: the run's configuration (the actor reads env, sac and runtime).
        actor_id: the slot (sim actors 0 .. n - 1, the hardware actor after them).
        stream_id: unique per started actor (episode ids derive from it).
        seed: seeds numpy, torch and the env resets of this actor.
        hardware: the hardware role (see the module doc) on `hardware_env_config`.
    """

    config: TrainConfig
    actor_id: int
    stream_id: int
    seed: int
    hardware: bool = False


def hardware_env_config(config: TrainConfig) -> EnvConfig:
    """The training env with the hardware actor's robot YAML and serial port (``runtime.hardware``)."""
    hw = config.runtime.hardware
    return replace(config.env, backend="serial", robot=hw.robot or config.env.robot, serial=hw.serial)


def _make_env(spec: ActorSpec, normalizer: ObservationNormalizer | None) -> tuple[gym.Env[Any, Any], int, int]:
    """The actor's env (a reader of ``normalizer``): the sim training env, or the robot over serial."""
    from robot_sac.make_env import make_backend, make_env
    from robot_sac.spec import load_robot_spec
    from robot_sac.train_envs import make_training_envs

    if spec.hardware:
        env_config = hardware_env_config(spec.config)
        backend = make_backend(env_config, load_robot_spec(env_config.robot_path()))
        env: gym.Env[Any, Any] = make_env(env_config, backend, normalizer=normalizer, update_normalizer=False)
    else:
        envs = make_training_envs(spec.config, normalizer)
        envs.evaluation.close()  # the learner evaluates; the factory builds both
        env = envs.train
    obs_shape, act_shape = env.observation_space.shape or (0,), env.action_space.shape or (0,)
    return env, int(obs_shape[0]), int(act_shape[0])


class _ChunkBuilder:
    """Rows of the chunk being filled, the observation statistics and loop periods since the last send."""

    def __init__(self, spec: ActorSpec, link: LearnerLink, obs_dim: int, track_stats: bool) -> None:
        self.spec, self.link, self.obs_dim, self.track_stats = spec, link, obs_dim, track_stats
        self._reset()

    def _reset(self) -> None:
        self.rows: list[tuple[np.ndarray, np.ndarray, float, np.ndarray, bool, int, bool, int]] = []
        self.stats = RunningMeanStd.empty(self.obs_dim) if self.track_stats else None
        self.episodes: list[tuple[float, float, int]] = []
        self.periods_s: list[float] = []
        self.steps = 0
        self.faults = 0

    def observe(self, raw: np.ndarray, info: dict[str, Any]) -> None:
        """Fold a raw observation into the delta, with `NormalizeObservation`'s filter."""
        if self.stats is not None and info.get("observation_valid", True) and np.isfinite(raw).all():
            self.stats.add(np.asarray(raw, dtype=np.float64))

    def flush(self, action_dim: int) -> None:
        """Send what was gathered (dropped and counted when the transport is full) and start afresh."""
        if self.steps == 0:
            return
        n = len(self.rows)
        cols: list[Any] = list(zip(*self.rows, strict=True)) if n else [()] * 8
        chunk = TransitionChunk(
            actor_id=self.spec.actor_id,
            stream_id=self.spec.stream_id,
            obs=np.asarray(cols[0], dtype=np.float64).reshape(n, self.obs_dim),
            action=np.asarray(cols[1], dtype=np.float32).reshape(n, action_dim),
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
            domain=DOMAIN_REAL if self.spec.hardware else DOMAIN_SIM,
            loop_periods_s=np.asarray(self.periods_s, dtype=np.float64) if self.spec.hardware else None,
            created_s=time.monotonic(),
        )
        self.link.send(chunk)
        self._reset()


def run_actor(spec: ActorSpec, link: LearnerLink) -> int:
    """Collect until the learner stops the run or is gone; returns the exit code (0, or a fault's).

    Builds the env and a CPU policy (one torch thread: actors share the cores with the learner),
    waits for the first publication, tells the learner it is ready, then runs episodes.
    """
    torch.set_num_threads(1)
    torch.manual_seed(spec.seed)
    rng = np.random.default_rng(spec.seed)
    hardware = spec.config.runtime.hardware
    if spec.hardware:  # opt-in (default 0): its older helper threads stay normal, see robot_sac.realtime
        request_realtime(hardware.realtime_priority, "hardware actor")
    elif hardware.enabled and hardware.sim_actor_niceness and hasattr(os, "nice"):
        os.nice(hardware.sim_actor_niceness)  # the robot's loop and the learner come first
    try:
        snapshot = None
        while snapshot is None and not _should_exit(spec, link):
            snapshot = link.poll_weights(-1)
        if snapshot is None:
            return 0
        local = ObservationNormalizer.from_arrays(snapshot.normalizer) if snapshot.normalizer is not None else None
        env, obs_dim, action_dim = _make_env(spec, local)
        try:
            agent = SAC(obs_dim, action_dim, spec.config.sac, torch.device("cpu"))
            agent.actor.load_state_dict(snapshot.policy)
            if spec.hardware:
                freeze_heap()  # set-up done: later collections skip it (~130 ms -> ~1 ms)
            link.ready()
            _run_episodes(spec, link, env, agent, local, snapshot.version, rng)
        finally:
            env.close()  # the serial backend holds (or torques off) per serial.close_action
    except (RobotFault, EnvStateError) as err:  # latched, or transient ones that kept recurring
        if not spec.hardware:
            raise
        log.error("hardware actor: %s: %s. The arm holds; inspect it, then start the run again",
                  type(err).__name__, err)  # fmt: skip
        return HARDWARE_FAULT_EXIT
    finally:
        link.close()
    return 0


def _run_episodes(
    spec: ActorSpec,
    link: LearnerLink,
    env: gym.Env[Any, Any],
    agent: SAC,
    local: ObservationNormalizer | None,
    version: int,
    rng: np.random.Generator,
) -> None:
    config = spec.config
    builder = _ChunkBuilder(spec, link, agent.obs_dim, local is not None and not local.frozen)
    local_episode = 0
    while not _should_exit(spec, link):
        snapshot = link.poll_weights(version)  # weights change only at episode boundaries
        if snapshot is not None:
            agent.actor.load_state_dict(snapshot.policy)
            version = snapshot.version
            if local is not None and snapshot.normalizer is not None:
                fresh = ObservationNormalizer.from_arrays(snapshot.normalizer)
                local.stats, local.frozen = fresh.stats, fresh.frozen
        if spec.hardware and not _wait_out_hold(spec, link):
            break
        episode_id = spec.stream_id * EPISODES_PER_STREAM + local_episode
        # No collector pause while the robot homes or runs an episode (robot_sac.gc_pauses): the
        # collector runs between episodes, and the heap frozen after set-up keeps that short.
        with paused_gc() if spec.hardware else contextlib.nullcontext():
            obs, info = _reset(spec, env, int(rng.integers(2**31 - 1)))
            builder.observe(info.get("raw_observation", obs), info)
            total, length, done, last_step_s = 0.0, 0, False, None
            while not done:
                link.beat()
                if not _may_step(spec, link, builder.steps):
                    break  # stopping: abandon the episode (the robot holds its last goal)
                if link.steps_sent() < config.sac.learning_starts:
                    action = rng.uniform(-1.0, 1.0, agent.action_dim).astype(np.float32)
                else:
                    action = agent.act(obs)
                next_obs, reward, terminated, truncated, next_info = env.step(action)
                now = time.monotonic()
                if last_step_s is not None:
                    builder.periods_s.append(now - last_step_s)
                last_step_s = now
                raw_next = next_info.get("raw_observation", next_obs)
                builder.observe(raw_next, next_info)
                if next_info.get("fault") is None and next_info.get("observation_valid", True):
                    executed = np.asarray(next_info.get("executed_action", action))
                    builder.rows.append((
                        np.asarray(info.get("raw_observation", obs)), executed, float(reward),
                        np.asarray(raw_next), bool(terminated), version,
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
                    builder.flush(agent.action_dim)
        local_episode += 1
    builder.flush(agent.action_dim)


def _reset(spec: ActorSpec, env: gym.Env[Any, Any], seed: int) -> tuple[Any, dict[str, Any]]:
    """``env.reset``; on the robot, episode-level faults are retried (`reset_retrying`, `RESET_ATTEMPTS`).

    A latched fault or one that keeps recurring propagates and ends the hardware actor.
    """
    if not spec.hardware:
        return env.reset(seed=seed)
    return reset_retrying(env, seed, attempts=RESET_ATTEMPTS, retry_s=RESET_RETRY_S, what="hardware actor: reset")


def _may_step(spec: ActorSpec, link: LearnerLink, pending: int) -> bool:
    """Whether to take the next step: the hardware actor never waits, a sim actor waits on the throttle."""
    if spec.hardware:  # a gone learner lets the episode finish (checked at its end)
        return not (link.stop_requested() or link.hold_requested())
    while not link.wait_for_room(pending, _WAIT_S):
        if _should_exit(spec, link):
            return False
        link.beat()
    return True


def _wait_out_hold(spec: ActorSpec, link: LearnerLink) -> bool:
    """Between episodes, wait while an operator holds the robot; False when the run ends meanwhile.

    The servos hold their last goal; their bus watchdog stops them after ``serial.bus_watchdog_s``
    without an instruction, and the next reset's health check re-arms it.
    """
    if link.hold_requested():
        log.warning("hardware actor: operator hold; the arm holds its last goal until the hold is released")
    while link.hold_requested():
        link.beat()
        if _should_exit(spec, link):
            return False
        time.sleep(0.05)
    return True


def _should_exit(spec: ActorSpec, link: LearnerLink) -> bool:
    """The learner asked to stop, or has not been heard of for ``runtime.heartbeat_timeout_s``."""
    if link.stop_requested():
        return True
    timeout_s = spec.config.runtime.heartbeat_timeout_s
    if link.learner_age_s() > timeout_s:
        log.warning("actor %d: the learner has been silent for more than %.1f s; stopping", spec.actor_id, timeout_s)
        return True
    return False
