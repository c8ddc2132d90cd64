"""The learner of the local asynchronous runtime: actor processes collect, this process learns.

The learner composes a `Trainer` (agent, replay buffer, normalizer, evaluation env, logger,
checkpoints, counters) and replaces only its loop:

    publish weights + stats (version = updates); start N actors
    loop until ``total_steps`` env steps were ingested:
        restart dead actors
        chunk <- queue (asleep up to 0.2 s); D <- D u chunk; merge its stats delta
        allow the actors up to ingested + dropped + max_actor_lead_steps env steps
        credit += updates_per_step x new env steps past learning_starts
        while credit >= 1: SAC.update(sample(D)); publish every K updates
        evaluate / log / checkpoint when an interval boundary was crossed

so the update-to-data ratio is the configured one whatever the relative speed of actors and learner:
a slow learner throttles the actors through the `StepGate`, slow actors leave the learner asleep on
the queue. Env steps advance by chunks, so a run may end up to ``chunk_steps - 1`` past
``total_steps``. A daemon thread beats the learner's heartbeat; actors stop on their own when it
stops (the learner died).

Known limit: the transition queue's pipe write lock is shared by the actors; an actor SIGKILLed in
the microseconds it holds it (while its feeder thread writes a chunk) would wedge the others' sends.
Every other shared structure is lock-free (single writer per word) or a semaphore.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch.multiprocessing as tmp

from robot_sac.configs import RuntimeConfig
from robot_sac.metrics import ProgressDisplay
from robot_sac.replay import DOMAIN_SIM
from robot_sac.runtime.actor import EPISODES_PER_STREAM, LEARNER_SLOT
from robot_sac.runtime.channels import (
    Heartbeat,
    StepGate,
    StopFlag,
    TransitionChannel,
    TransitionChunk,
    WeightChannel,
)
from robot_sac.runtime.pool import ActorChannels, ActorPool
from robot_sac.train import Counters, Trainer

log = logging.getLogger(__name__)

_STARTUP_TIMEOUT_S = 120.0
"""Longest wait for the actors to build their envs before collection starts."""

_RECEIVE_TIMEOUT_S = 0.2
"""Longest sleep on an empty queue before dead actors are looked for again."""


def default_actor_count() -> int:
    """Cores available to this process minus one (the learner's), at least one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


@dataclass
class _Window:
    """Statistics since the last metrics row."""

    started_s: float = field(default_factory=time.perf_counter)
    steps: int = 0
    updates: int = 0
    actor_steps: dict[int, int] = field(default_factory=dict)
    staleness: list[float] = field(default_factory=list)
    update_metrics: list[dict[str, float]] = field(default_factory=list)
    returns: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    successes: deque[float] = field(default_factory=lambda: deque(maxlen=20))
    faults: int = 0


class LocalRuntime:
    """Runs a `Trainer`'s learning with ``runtime.actors`` actor processes collecting in parallel.

    Args:
        trainer: built by `start_run` or `resume_run`; its agent, buffer, normalizer, evaluation
            env, logger, counters and checkpoints are used unchanged (its training env is not).
        runtime: the runtime settings (default: ``trainer.config.runtime``).
    """

    def __init__(self, trainer: Trainer, runtime: RuntimeConfig | None = None) -> None:
        """Create the channels; no process starts until `train`."""
        self.trainer = trainer
        self.runtime = runtime or trainer.config.runtime
        self.actors = self.runtime.actors or default_actor_count()
        self._context = tmp.get_context("spawn")
        ctx, t = self._context, trainer
        self.channels = ActorChannels(
            weights=WeightChannel(ctx, t.agent.policy_state_dict(), t.normalizer),
            transitions=TransitionChannel(ctx, self.runtime.queue_chunks, self.actors),
            heartbeat=Heartbeat(self.actors + 1),
            gate=StepGate(ctx, self.actors, sent=t.counters.env_steps),
            stop=StopFlag(),
            ready=ctx.Semaphore(0),
        )
        stored = t.buffer.episode[: len(t.buffer)]
        first_stream = int(stored.max()) // EPISODES_PER_STREAM + 1 if stored.size else 0
        self.pool = ActorPool(ctx, t.config, self.actors, self.channels, first_stream_id=first_stream)
        self._window = _Window()
        self._last_eval: dict[str, float] = {}
        self._beating = threading.Event()

    @property
    def counters(self) -> Counters:
        """The trainer's counters (env steps ingested, updates, episodes)."""
        return self.trainer.counters

    def close(self) -> None:
        """Stop the actors (if still running) and close the trainer."""
        self._shutdown()
        self.trainer.close()

    def train(self, total_steps: int, stop_when: Callable[[dict[str, float]], bool] | None = None) -> dict[str, float]:
        """Learn until ``total_steps`` env steps were ingested (counting resumed ones); see the module doc.

        Args:
            total_steps: the run's length in env steps.
            stop_when: called with each evaluation's metrics; True ends the run after a checkpoint.

        Returns:
            The last evaluation's metrics.
        """
        c = self.counters
        self._publish()
        self._start_heartbeat()
        self.pool.start()
        try:
            # Collection starts when every actor can step, so no actor's start-up time skews the data.
            ready = self.pool.wait_ready(_STARTUP_TIMEOUT_S)
            if ready < self.actors:
                log.warning("only %d of %d actors started within %.0f s; going on", ready, self.actors,
                            _STARTUP_TIMEOUT_S)  # fmt: skip
            self._allow()
            with ProgressDisplay(total_steps, initial_step=c.env_steps, enabled=self.trainer.show_progress) as bar:
                while c.env_steps < total_steps:
                    self.pool.supervise()
                    chunk = self.channels.transitions.receive(_RECEIVE_TIMEOUT_S)
                    if chunk is None:
                        continue
                    before = c.env_steps
                    self._ingest(chunk)
                    self._allow()  # the actors collect the next chunks while the learner updates
                    while self._update_once():
                        pass
                    if self._after_ingest(before, total_steps, stop_when, bar):
                        break
        except KeyboardInterrupt:
            log.warning("interrupted: stopping the actors and writing a final checkpoint")
            self._shutdown()
            self.trainer.save()
            raise
        finally:
            self._shutdown()
        log.info("local runtime: %d actor restarts, %d chunks dropped", self.pool.restarts,
                 self.channels.transitions.dropped_chunks)  # fmt: skip
        return self._last_eval

    # --- the learner's steps ----------------------------------------------------------------------

    def _update_once(self) -> bool:
        """One gradient update if the learner owes one (credit >= 1); False otherwise."""
        t, c, sac = self.trainer, self.counters, self.trainer.config.sac
        if c.update_credit < 1.0 or len(t.buffer) < sac.batch_size:
            return False
        batch = t.buffer.sample(sac.batch_size, t.rng, t.agent.device, t.normalizer, t.relabeler)
        self._window.update_metrics.append(t.agent.update(batch))
        c.updates += 1
        c.update_credit -= 1.0
        self._window.updates += 1
        if c.updates % self.runtime.publish_interval_updates == 0:
            self._publish()
        return True

    def _ingest(self, chunk: TransitionChunk) -> None:
        """Store a chunk, merge its statistics delta, advance the counters and the update credit."""
        t, c, w, sac = self.trainer, self.counters, self._window, self.trainer.config.sac
        if chunk.reward.shape[0]:
            t.buffer.add_batch(chunk.obs, chunk.action, chunk.reward, chunk.next_obs, chunk.terminated,
                               domain=DOMAIN_SIM, policy_version=chunk.policy_version,
                               safety_clipped=chunk.safety_clipped, episode=chunk.episode)  # fmt: skip
            w.staleness.extend((c.updates - chunk.policy_version).astype(float).tolist())
        if chunk.obs_stats is not None and t.normalizer is not None:
            t.normalizer.merge(chunk.obs_stats)
        before = c.env_steps
        c.env_steps += chunk.env_steps
        c.episodes += len(chunk.episodes)
        # The sync loop earns credit for each step k >= learning_starts once the buffer holds a batch.
        if len(t.buffer) >= sac.batch_size:
            c.update_credit += sac.updates_per_step * max(0, c.env_steps - max(before, sac.learning_starts - 1))
        w.steps += chunk.env_steps
        w.faults += chunk.faults
        w.actor_steps[chunk.actor_id] = w.actor_steps.get(chunk.actor_id, 0) + chunk.env_steps
        for ret, success, _length in chunk.episodes:
            w.returns.append(ret)
            if not np.isnan(success):
                w.successes.append(success)

    def _after_ingest(
        self, before: int, total_steps: int, stop_when: Callable[[dict[str, float]], bool] | None, bar: ProgressDisplay
    ) -> bool:
        """Evaluate, log and checkpoint at the interval boundaries crossed; True ends the run."""
        c, run = self.counters, self.trainer.config.run

        def crossed(interval: int) -> bool:
            return c.env_steps // interval != before // interval or c.env_steps >= total_steps

        stop = False
        if crossed(run.eval_interval_steps):
            self._last_eval = self.trainer.evaluate(run.eval_episodes)
            self.trainer.logger.log(c.env_steps, self._last_eval)
            stop = stop_when is not None and stop_when(self._last_eval)
        if crossed(run.log_interval_steps):
            self._log_window(bar)
        if crossed(run.checkpoint_interval_steps) or stop:
            self.trainer.save()
        return stop

    def _publish(self) -> None:
        t = self.trainer
        self.channels.weights.publish(self.counters.updates, t.agent.policy_state_dict(), t.normalizer)

    def _allow(self) -> None:
        ingested_or_dropped = self.counters.env_steps + self.channels.transitions.dropped_steps
        self.channels.gate.allow(ingested_or_dropped + self.runtime.max_actor_lead_steps)

    # --- heartbeat and shutdown -------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        heartbeat, beating = self.channels.heartbeat, self._beating
        beating.set()

        def beat() -> None:
            while beating.is_set():
                heartbeat.beat(LEARNER_SLOT)
                time.sleep(0.1)

        heartbeat.beat(LEARNER_SLOT)
        threading.Thread(target=beat, name="robot-sac-learner-heartbeat", daemon=True).start()

    def _shutdown(self) -> None:
        """Stop the actors (idempotent) and the heartbeat thread."""
        if any(p is not None for p in self.pool.processes):
            self.pool.stop(timeout_s=max(5.0, 2 * self.runtime.heartbeat_timeout_s))
        self._beating.clear()

    # --- metrics --------------------------------------------------------------------------------

    def _log_window(self, bar: ProgressDisplay) -> None:
        w, c, t = self._window, self.counters, self.trainer
        elapsed = max(time.perf_counter() - w.started_s, 1e-9)
        row: dict[str, float] = {
            "time/env_steps_per_s": w.steps / elapsed,
            "time/updates_per_s": w.updates / elapsed,
            "train/episodes": float(c.episodes),
            "train/updates": float(c.updates),
            "train/buffer_size": float(len(t.buffer)),
            "safety/faults": float(w.faults),
            "runtime/queue_depth": float(self.channels.transitions.depth()),
            "runtime/dropped_chunks": float(self.channels.transitions.dropped_chunks),
            "runtime/actor_restarts": float(self.pool.restarts),
            "runtime/policy_version": float(self.channels.weights.version),
        }
        for actor, steps in sorted(w.actor_steps.items()):
            row[f"runtime/actor{actor}_env_steps_per_s"] = steps / elapsed
        if w.staleness:
            row["runtime/weight_staleness_updates"] = float(np.mean(w.staleness))
        if w.returns:
            row["train/episode_return"] = row["train/sim/episode_return"] = float(np.mean(w.returns))
        if w.successes:
            row["train/success_rate"] = float(np.mean(w.successes))
        if w.update_metrics:
            for key in w.update_metrics[0]:
                row[f"sac/{key}"] = float(np.mean([m[key] for m in w.update_metrics]))
        t.logger.log(c.env_steps, row)
        bar.update(
            c.env_steps,
            episodes=c.episodes,
            last_return=row.get("train/episode_return"),
            success_rate=self._last_eval.get("eval/success_rate", row.get("train/success_rate")),
            updates_per_s=row["time/updates_per_s"],
            env_steps_per_s=row["time/env_steps_per_s"],
        )
        self._window = _Window(returns=w.returns, successes=w.successes)
