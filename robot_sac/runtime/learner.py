"""The asynchronous learner: actors collect (through an `ActorFleet`), this process learns.

The learner composes a `Trainer` (agent, replay buffer, normalizer, evaluation env, logger,
checkpoints, counters) and replaces only its loop:

    publish weights + stats (version = updates); start the actors
    loop until ``total_steps`` env steps (or ``runtime.hardware.budget_steps`` real ones) were ingested:
        restart dead actors
        chunk <- fleet (asleep up to 0.2 s); D <- D u chunk (tagged sim or real); merge its stats delta
        allow the actors up to ingested + dropped + max_actor_lead_steps env steps
        credit += updates_per_step x new env steps past learning_starts
        while credit >= 1: SAC.update(sample(D)); publish every K updates
        evaluate / log / checkpoint when an interval boundary was crossed

so the update-to-data ratio is the configured one whatever the relative speed of actors and learner:
a slow learner throttles the simulation actors, slow actors leave the learner asleep on the fleet.
(The hardware actor is never throttled: its steps only earn update credit.) Env steps advance by
chunks, so a run may end up to ``chunk_steps - 1`` past ``total_steps``. A daemon thread beats the
learner's heartbeat; actors stop on their own when it stops (the learner died).

SIGINT (KeyboardInterrupt) stops the actors and writes a final checkpoint before it propagates; a
fleet that can no longer collect (`FleetExhausted`) does the same.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from robot_sac.metrics import ProgressDisplay
from robot_sac.replay import DOMAIN_REAL
from robot_sac.runtime.channels import TransitionChunk
from robot_sac.runtime.pool import FleetExhausted
from robot_sac.runtime.protocols import ActorFleet
from robot_sac.train import Counters, MetricsWindow, Trainer

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
"""Longest wait for the actors to build their envs before collection starts."""

_RECEIVE_TIMEOUT_S = 0.2
"""Longest sleep on an empty fleet before dead actors are looked for again."""

DOMAIN_NAMES = {0: "sim", DOMAIN_REAL: "real"}


def _recent() -> deque[float]:
    return deque(maxlen=20)


@dataclass
class _Window(MetricsWindow):
    """The sync loop's window plus what only an asynchronous run has."""

    actor_steps: dict[int, int] = field(default_factory=dict)
    staleness: list[float] = field(default_factory=list)
    loop_periods_s: list[float] = field(default_factory=list)
    domain_returns: dict[str, deque[float]] = field(default_factory=dict)
    domain_successes: dict[str, deque[float]] = field(default_factory=dict)
    real_rows: int = 0
    drifted_rows: int = 0
    drifted_dims: set[int] = field(default_factory=set)

    def next(self) -> _Window:
        """A fresh window that keeps the recent-episode deques, overall and per domain."""
        return _Window(returns=self.returns, successes=self.successes, clips=self.clips,
                       domain_returns=self.domain_returns, domain_successes=self.domain_successes)  # fmt: skip


class AsyncLearner:
    """Runs a `Trainer`'s learning with the actors of ``fleet`` collecting in parallel.

    Args:
        trainer: built by `start_run` or `resume_run`; its agent, buffer, normalizer, evaluation
            env, logger, counters and checkpoints are used unchanged (its training env is not).
        fleet: the actors (local processes, Ray actors).
    """

    def __init__(self, trainer: Trainer, fleet: ActorFleet) -> None:
        """No actor starts until `train`."""
        self.trainer, self.fleet = trainer, fleet
        self.runtime = trainer.config.runtime
        hardware = self.runtime.hardware
        self._real_budget = hardware.budget_steps if hardware.enabled else None
        """``runtime.hardware.budget_steps`` when a hardware actor runs, else None."""
        self._window = _Window()
        self._beating = threading.Event()
        self._stopped = False

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
            total_steps: the run's length in env steps. With ``runtime.hardware.budget_steps`` set, the
                run ends at that many real steps already if it comes first (the progress display then
                counts real steps): simulation actors beside the robot do not use up its budget.
            stop_when: called with each evaluation's metrics; True ends the run after a checkpoint.

        Returns:
            The last evaluation's metrics.
        """
        c = self.counters
        self._publish()
        self._start_heartbeat()
        self.fleet.start()
        try:
            # Collection starts when every actor can step, so no actor's start-up time skews the data.
            ready = self.fleet.wait_ready(STARTUP_TIMEOUT_S)
            if ready < self.fleet.size:
                log.warning("only %d of %d actors started within %.0f s; going on", ready, self.fleet.size,
                            STARTUP_TIMEOUT_S)  # fmt: skip
            self._allow()
            budget = self._real_budget
            shown, start = (total_steps, c.env_steps) if budget is None else (budget, c.real_steps)
            with ProgressDisplay(shown, initial_step=start, enabled=self.trainer.show_progress) as bar:
                while not self._done(total_steps):
                    self.fleet.supervise()
                    chunk = self.fleet.receive(_RECEIVE_TIMEOUT_S)
                    if chunk is None:
                        continue
                    before = c.env_steps
                    self._ingest(chunk)
                    self._allow()  # the actors collect the next chunks while the learner updates
                    while self._update_once():
                        pass
                    if self._after_ingest(before, total_steps, stop_when, bar):
                        break
        except (KeyboardInterrupt, FleetExhausted) as err:
            log.warning("%s: stopping the actors and writing a final checkpoint",
                        "interrupted" if isinstance(err, KeyboardInterrupt) else err)  # fmt: skip
            self._shutdown()
            self.trainer.save()
            raise
        finally:
            self._shutdown()
        log.info("asynchronous run: %s", self.fleet.stats())
        return self.trainer.last_eval

    # --- the learner's steps ----------------------------------------------------------------------

    def _update_once(self) -> bool:
        """One gradient update if the learner owes one (credit >= 1); False otherwise."""
        t, c, sac = self.trainer, self.counters, self.trainer.config.sac
        if c.update_credit < 1.0 or len(t.buffer) < sac.batch_size:
            return False
        self._window.update_metrics.append(t.agent.update(t.sample_batch()))
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
                               domain=chunk.domain, policy_version=chunk.policy_version,
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
        if chunk.loop_periods_s is not None:
            w.loop_periods_s.extend(chunk.loop_periods_s.tolist())
        if chunk.domain == DOMAIN_REAL:
            c.real_steps += chunk.env_steps
            self._check_drift(chunk.next_obs)
        domain = DOMAIN_NAMES.get(chunk.domain, str(chunk.domain))
        for ret, success, _length in chunk.episodes:
            w.returns.append(ret)
            w.domain_returns.setdefault(domain, _recent()).append(ret)
            if not np.isnan(success):
                w.successes.append(success)
                w.domain_successes.setdefault(domain, _recent()).append(success)

    def _check_drift(self, raw: np.ndarray) -> None:
        """Count real observations beyond ``drift_sigma`` of the (sim) statistics the policy normalizes with."""
        norm, w = self.trainer.normalizer, self._window
        if norm is None or norm.stats.count == 0 or raw.shape[0] == 0:
            return
        beyond = np.abs(raw - norm.mean) / norm.std > self.runtime.hardware.drift_sigma
        w.real_rows += raw.shape[0]
        w.drifted_rows += int(beyond.any(axis=1).sum())
        w.drifted_dims.update(np.flatnonzero(beyond.any(axis=0)).tolist())

    def _after_ingest(
        self, before: int, total_steps: int, stop_when: Callable[[dict[str, float]], bool] | None, bar: ProgressDisplay
    ) -> bool:
        """Evaluate, log and checkpoint at the interval boundaries crossed; True ends the run."""
        c, run, t = self.counters, self.trainer.config.run, self.trainer

        def crossed(interval: int) -> bool:
            return c.env_steps // interval != before // interval or self._done(total_steps)

        stop = False
        if crossed(run.eval_interval_steps):
            t.last_eval = t.evaluate(run.eval_episodes)
            t.logger.log(c.env_steps, t.last_eval)
            stop = stop_when is not None and stop_when(t.last_eval)
        if crossed(run.log_interval_steps):
            self._log_window(bar)
        if crossed(run.checkpoint_interval_steps) or stop:
            t.save()
        return stop

    def _done(self, total_steps: int) -> bool:
        """Whether the run has its ``total_steps`` env steps, or its real-step budget."""
        c, budget = self.counters, self._real_budget
        return c.env_steps >= total_steps or (budget is not None and c.real_steps >= budget)

    def _publish(self) -> None:
        t = self.trainer
        self.fleet.publish(self.counters.updates, t.agent.policy_state_dict(), t.normalizer)

    def _allow(self) -> None:
        self.fleet.allow(self.counters.env_steps + self.fleet.dropped_steps() + self.runtime.max_actor_lead_steps)

    # --- heartbeat and shutdown -------------------------------------------------------------------

    def _start_heartbeat(self) -> None:
        fleet, beating = self.fleet, self._beating
        beating.set()

        def beat() -> None:
            while beating.is_set():
                fleet.beat()
                time.sleep(0.1)

        fleet.beat()
        threading.Thread(target=beat, name="robot-sac-learner-heartbeat", daemon=True).start()

    def _shutdown(self) -> None:
        """Stop the actors and the heartbeat thread (idempotent)."""
        if not self._stopped:
            self._stopped = True
            self.fleet.stop(max(5.0, 2 * self.runtime.heartbeat_timeout_s))
        self._beating.clear()

    # --- metrics --------------------------------------------------------------------------------

    def _log_window(self, bar: ProgressDisplay) -> None:
        w, t = self._window, self.trainer
        row = w.row(self.counters, len(t.buffer)) | self.fleet.stats()
        elapsed = max(time.perf_counter() - w.started_s, 1e-9)
        for actor, steps in sorted(w.actor_steps.items()):
            row[f"runtime/actor{actor}_env_steps_per_s"] = steps / elapsed
        if w.staleness:
            row["runtime/weight_staleness_updates"] = float(np.mean(w.staleness))
        for domain, returns in w.domain_returns.items():
            row[f"train/{domain}/episode_return"] = float(np.mean(returns))
        for domain, successes in w.domain_successes.items():
            row[f"train/{domain}/success_rate"] = float(np.mean(successes))
        if w.real_rows:
            share = w.drifted_rows / w.real_rows
            row["real/obs_drift_fraction"] = share
            if share > 0.05:
                log.warning("%.0f %% of the real observations lie beyond %.1f sigma of the sim statistics (dims %s): "
                            "the robot differs from the simulator there; consider --adapt-normalizer or recalibrating",
                            100 * share, self.runtime.hardware.drift_sigma, sorted(w.drifted_dims))  # fmt: skip
        if w.loop_periods_s:
            periods = np.asarray(w.loop_periods_s)
            row["runtime/real_loop_period_p50_s"] = float(np.percentile(periods, 50))
            row["runtime/real_loop_period_p99_s"] = float(np.percentile(periods, 99))
            row["runtime/real_loop_period_max_s"] = float(periods.max())
        t.report(row, bar, progress_step=None if self._real_budget is None else self.counters.real_steps)
        self._window = w.next()
