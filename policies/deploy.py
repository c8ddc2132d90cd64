"""The onboard real-time loop: an exported policy drives the task through the training env stack.

One control step::

    observation ─ policy (ONNX: normalize → actor → tanh → scale) ─ joint_delta_rad
                 ─ / max_step_rad ─ env.step (the training SafetyFilter: clip, soft limits, rate,
                   velocity; the backend's hard-limit check) ─ observation

The env is the one `make_env` builds for training, with ``normalization.enabled=false`` because
the normalizer is inside the graph; so the safety filter, the observation validation and the
fault semantics are the training ones. Timing (SAFETY.md #17, #18, #20, #27):

- Commands go out on a monotonic grid (`policies.pacing`); a late command skips the missed slots
  (counted as one overrun), never two commands back to back. ``max_consecutive_overruns`` in a
  row, or more than ``max_overrun_fraction`` of the slots in ``overrun_window_s``, is a
  `DeadlineMiss`: the late command is not sent, the robot holds its last target, the run ends.
- Watchdog: a policy call (plus loop work) or one env step longer than ``watchdog_periods``
  periods is a `DeadlineMiss` too, whatever the overrun count. A hung process is caught by the
  servos' bus watchdog (layer L0), not here.
- A stop request (SIGINT/SIGTERM, see `policies.signals`, or the duration limit) lets the step in
  progress finish, commands a hold, then parks (a rate-limited move home through the safety
  filter) or keeps holding, per ``stop_action``. What the servos do after the loop closes the
  backend is ``serial.close_action`` (hold or torque off).
- Any fault ends the run holding the last safe target (no park: the env refuses steps after a
  fault, and a loop that misses deadlines should not drive a park) and dumps the last
  ``ring_buffer_steps`` steps to ``fault_<n>_<name>.npz``.
"""

from __future__ import annotations

import gc
import logging
import time
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import gymnasium as gym
import numpy as np

from policies.deploy_config import DeployConfig
from policies.deploy_report import (
    DeployReport,
    EpisodeResult,
    FaultRecord,
    Percentiles,
    RingBuffer,
    period_histogram_ms,
)
from policies.pacing import Pacer
from policies.signals import DeployAborted, StopFlag
from robot_sac.errors import DeadlineMiss, EnvStateError, RobotFault, SafetyViolation, fault_name
from robot_sac.gc_pauses import freeze_heap
from robot_sac.reset_retry import reset_retrying
from robot_sac.safety import CLIP_STAGES
from robot_sac.spec import RobotSpec

log = logging.getLogger(__name__)

EXIT_CLEAN, EXIT_ABORTED, EXIT_FAULT = 0, 1, 5
"""Process exit codes of a deploy run (``robot-sac`` uses 2-4 for config, storage and policy errors)."""
_AT_HOME_RAD = 1e-6
_DEADLINE_MISS = DeadlineMiss.__name__
_LOG_EVERY_S = 1.0


class Policy(Protocol):
    """What the loop needs of a policy (`policies.onnx_policy.OnnxPolicy` is one)."""

    @property
    def ready(self) -> bool:
        """Whether it was warmed up."""
        ...

    def __call__(self, raw_observation: np.ndarray) -> np.ndarray:
        """Joint-target delta in rad, shape (dof,), for a raw observation."""
        ...


class DeployLoop:
    """Runs episodes of the env under the policy on a deadline, then stops safely and reports.

    Args:
        env: the env stack from `make_env` with normalization disabled (raw observations).
        policy: maps a raw observation to ``joint_delta_rad``; must be `ready`.
        spec: the robot (action scale, home, control rate).
        pacer: when commands go out (`policies.pacing`).
        config: timing, fault and stop settings.
        stop: a stop request (`policies.signals.SignalStop` on the command line).
        clock: monotonic time in s (the pacer's clock; injectable for tests).
        sleep: waits that many s (between reset attempts; injectable for tests).
        dump_dir: where fault dumps go (None: not written).
        policy_label, policy_sha256, warmup_us: copied into the report.
    """

    def __init__(
        self,
        env: gym.Env[np.ndarray, np.ndarray],
        policy: Policy,
        spec: RobotSpec,
        pacer: Pacer,
        config: DeployConfig,
        *,
        stop: StopFlag | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        dump_dir: Path | None = None,
        policy_label: str = "",
        policy_sha256: str = "",
        warmup_us: Mapping[str, float] | None = None,
    ) -> None:
        """Compose the loop; nothing moves until `run`."""
        self.env, self.policy, self.spec, self.pacer, self.config = env, policy, spec, pacer, config
        self.stop = stop or StopFlag()
        self.clock, self.sleep = clock, sleep
        self.dump_dir = dump_dir
        self.period_s = spec.dt_s
        self._watchdog_s = config.watchdog_periods * spec.dt_s
        self._inv_step = 1.0 / spec.max_step_rad
        obs_shape = env.observation_space.shape
        if obs_shape is None or len(obs_shape) != 1:
            raise ValueError(f"the env's observations must be vectors, got shape {obs_shape}")
        self.ring = RingBuffer(config.ring_buffer_steps, obs_shape[0], spec.dof)
        self.report = DeployReport(
            robot=spec.name,
            policy_dir=policy_label,
            policy_sha256=policy_sha256,
            pacing=pacer.kind,
            control_hz=spec.control_hz,
            stop_action=config.stop_action,
            warmup_us=dict(warmup_us or {}),
        )
        self._periods_s: array[float] = array("d")
        self._inference_s: array[float] = array("d")
        self._overrun_times: deque[float] = deque()
        self._consecutive = 0
        self._last_overrun_log_s = float("-inf")
        self._t0 = 0.0
        self._end_s: float | None = None
        self._live_info: dict[str, Any] | None = None  # last info of an env that may still be stepped

    # --- the run --------------------------------------------------------------------------------

    def run(self, *, episodes: int | None = None, duration_s: float | None = None, seed: int = 0) -> DeployReport:
        """Run ``episodes`` (None: until stopped) within ``duration_s`` (None: no limit); stop; report.

        Raises:
            EnvStateError: the policy was not warmed up (nothing moved).
        """
        if not self.policy.ready:
            raise EnvStateError("the policy was not warmed up: run warm_up() before the robot moves (SAFETY.md #18)")
        if self.config.disable_gc:
            freeze_heap()  # set up: collections between episodes skip it (robot_sac.gc_pauses)
        report = self.report
        self._t0 = self.clock()
        self._end_s = None if duration_s is None else self._t0 + duration_s
        try:
            report.stop_reason = self._episodes(episodes, seed)
            if report.faults:
                report.exit_code, report.park = EXIT_FAULT, "skipped after fault (holding)"
            else:
                report.park = self._stop_sequence()
        except DeployAborted as err:
            log.error("%s", err)
            report.stop_reason, report.park, report.exit_code = "second signal", "skipped (holding)", EXIT_ABORTED
        except BaseException as err:
            self._fault(f"crash: {type(err).__name__}", str(err), len(report.episodes), -1)
            raise
        finally:
            report.steps = sum(e.steps for e in report.episodes)
            report.duration_s = self.clock() - self._t0
            report.loop_period_ms = Percentiles.of(self._periods_s, 1e3)
            report.loop_period_histogram_ms = period_histogram_ms(self._periods_s, self.spec.dt_s)
            report.inference_us = Percentiles.of(self._inference_s, 1e6)
        return report

    def _episodes(self, episodes: int | None, seed: int) -> str:
        index = 0
        while episodes is None or index < episodes:
            if reason := self._stop_reason():
                return reason
            result = self._episode(index, seed + index)
            self.report.episodes.append(result)
            self._add_clips(result.safety_clips)
            if result.fault is not None:
                return "fault"
            if result.stopped:
                return self._stop_reason() or "stop"
            index += 1
        return "episodes"

    def _stop_reason(self) -> str:
        if self.stop.requested:
            return self.stop.reason
        if self._end_s is not None and self.clock() >= self._end_s:
            return "duration"
        return ""

    def _episode(self, index: int, seed: int) -> EpisodeResult:
        """One episode; returns its result (``fault`` set when a fault ended it)."""
        self._live_info = None
        try:
            obs, info = self._reset(index, seed)
        except (RobotFault, EnvStateError) as err:
            self._fault(fault_name(err), str(err), index, 0)
            return EpisodeResult(index, seed, 0, 0.0, False, None, {}, fault_name(err), False)
        self._live_info = info
        self.pacer.start()
        self._consecutive = 0
        steps, ret, fault, stopped = 0, 0.0, None, False
        last_obs_s = self.clock()
        paused_gc = self.config.disable_gc and gc.isenabled()
        if paused_gc:
            gc.disable()  # a cyclic collection can take milliseconds: not inside an episode
        try:
            while True:
                if self._stop_reason():
                    stopped = True
                    break
                fault, obs, info, reward, ended, last_obs_s = self._step(index, steps, obs, info, last_obs_s)
                if fault is not None:
                    break
                steps += 1
                ret += reward
                if ended:
                    break
        finally:
            if paused_gc:
                gc.enable()
        return EpisodeResult(
            index,
            seed,
            steps,
            ret,
            bool(info.get("success", False)),
            float(info["distance_m"]) if "distance_m" in info else None,
            dict(info.get("clip_counts", {})),
            fault,
            stopped,
        )

    def _reset(self, index: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        """``env.reset`` with `reset_retrying`: each retried transient fault goes to ``report.recovered_faults``."""

        def record(attempt: int, err: RobotFault) -> None:
            at_s = self.clock() - self._t0
            self.report.recovered_faults.append(FaultRecord(fault_name(err), str(err), index, 0, at_s, None))

        return reset_retrying(
            self.env, seed, attempts=self.config.reset_attempts, retry_s=self.config.reset_retry_s,
            what=f"reset of episode {index}", on_retry=record, give_up=lambda: bool(self._stop_reason()),
            sleep=self.sleep,
        )  # fmt: skip

    def _step(
        self, episode: int, step: int, obs: np.ndarray, info: dict[str, Any], last_obs_s: float
    ) -> tuple[str | None, np.ndarray, dict[str, Any], float, bool, float]:
        """Policy, deadline, command, observe. Returns (fault, obs, info, reward, episode ended, obs time)."""
        clock = self.clock
        started = clock()
        try:
            delta = self.policy(obs)
        except SafetyViolation as err:  # NonFiniteObservation / NonFiniteAction: nothing is sent
            return self._fault(fault_name(err), str(err), episode, step), obs, info, 0.0, True, last_obs_s
        ready = clock()
        self._inference_s.append(ready - started)
        if ready - last_obs_s > self._watchdog_s:
            message = f"watchdog: {ready - last_obs_s:.3f} s from observation to action (limit {self._watchdog_s} s)"
            return self._fault(_DEADLINE_MISS, message, episode, step), obs, info, 0.0, True, last_obs_s
        missed = self.pacer.wait_for_slot()
        if missed and (late := self._note_overrun(missed, clock())) is not None:
            return self._fault(_DEADLINE_MISS, late, episode, step), obs, info, 0.0, True, last_obs_s
        action = (delta * self._inv_step).astype(np.float32)
        sent = clock()
        obs, reward, terminated, truncated, info = self.env.step(action)
        now = clock()
        if step > 0:
            self._periods_s.append(now - last_obs_s)
        self._live_info = info if info["fault"] is None else None
        self.ring.record(
            time_s=now - self._t0, episode=episode, step=step, observation=obs, joint_delta_rad=delta,
            action=action, executed_action=info["executed_action"], command_rad=info["command_rad"],
            inference_s=ready - started, skipped_slots=missed,
        )  # fmt: skip
        if info["fault"] is not None:  # the env already holds the last safe target
            return self._fault(info["fault"], info["fault_message"], episode, step), obs, info, 0.0, True, now
        in_step, late = self.pacer.overruns_in_step(), None
        if in_step:  # the backend paced this step and found the command late (one overrun per command)
            late = self._note_overrun(in_step, now, new_command=not missed)
        elif not missed:
            self._consecutive = 0
        if late is None and now - sent > self._watchdog_s:
            late = f"watchdog: one env step took {now - sent:.3f} s (limit {self._watchdog_s} s)"
        if late is not None:
            return self._fault(_DEADLINE_MISS, late, episode, step), obs, info, float(reward), True, now
        return None, obs, info, float(reward), bool(terminated or truncated), now

    def _note_overrun(self, skipped: int, now: float, *, new_command: bool = True) -> str | None:
        """Count a late command; the message of a `DeadlineMiss` when there were too many, else None."""
        report, cfg = self.report, self.config
        report.skipped_slots += skipped
        if not new_command:  # the same command was late both before and inside the step
            return None
        report.overruns += 1
        self._consecutive += 1
        report.max_consecutive_overruns = max(report.max_consecutive_overruns, self._consecutive)
        times = self._overrun_times
        times.append(now)
        while times and times[0] < now - cfg.overrun_window_s:
            times.popleft()
        allowed = cfg.max_overrun_fraction * cfg.overrun_window_s * self.spec.control_hz
        if now - self._last_overrun_log_s >= _LOG_EVERY_S:  # rate-limited: logging is slow work in the loop
            self._last_overrun_log_s = now
            log.warning(
                "overrun: %d slot(s) skipped, %d in a row, %d in total", skipped, self._consecutive, report.overruns
            )
        if self._consecutive >= cfg.max_consecutive_overruns:
            return f"{self._consecutive} consecutive overruns (limit {cfg.max_consecutive_overruns}); holding"
        if len(times) > allowed:
            return f"{len(times)} overruns within {cfg.overrun_window_s} s (limit {allowed:g}); holding"
        return None

    # --- stopping -----------------------------------------------------------------------------------

    def _stop_sequence(self) -> str:
        """Hold for one period, then park or keep holding (``stop_action``); returns the outcome."""
        if self._live_info is None:
            return "not needed (no episode to stop)"
        if (outcome := self._command(np.zeros(self.spec.dof))) is not None:
            return outcome
        if self.config.stop_action == "hold":
            return "holding"
        give_up = self.clock() + self.config.park_timeout_s
        home, settled = self.spec.home_rad, 0
        while settled <= self.config.park_settle_steps:
            if self.clock() > give_up:
                log.error("parking did not reach home within %s s: holding", self.config.park_timeout_s)
                return "timeout (holding)"
            command = np.asarray(self._live_info["command_rad"])
            error = home - command
            at_home = bool(np.abs(error).max() <= _AT_HOME_RAD)
            settled = settled + 1 if at_home else 0
            # A delta of at most park_speed rate-limit steps toward home; the safety filter bounds it again.
            action = np.clip(error * self._inv_step, -self.config.park_speed, self.config.park_speed)
            if (outcome := self._command(action)) is not None:
                return outcome
        return "home"

    def _command(self, action: np.ndarray) -> str | None:
        """One paced env step outside the policy (hold, park); a fault's outcome, or None."""
        assert self._live_info is not None
        # Overruns while stopping are counted but not faults: each step is rate-limited anyway.
        if missed := self.pacer.wait_for_slot():
            self._note_overrun(missed, self.clock())
        command = action.astype(np.float32)
        obs, _, _, _, info = self.env.step(command)
        self.ring.record(  # step -1: a hold or park step, not the policy's
            time_s=self.clock() - self._t0, episode=len(self.report.episodes) - 1, step=-1, observation=obs,
            joint_delta_rad=command * self.spec.max_step_rad, action=command, executed_action=info["executed_action"],
            command_rad=info["command_rad"], inference_s=0.0, skipped_slots=missed,
        )  # fmt: skip
        if in_step := self.pacer.overruns_in_step():
            self._note_overrun(in_step, self.clock(), new_command=not missed)
        if info["fault"] is not None:
            self._fault(info["fault"], info["fault_message"], len(self.report.episodes), -1)
            self.report.exit_code = EXIT_FAULT
            self._live_info = None
            return f"fault {info['fault']} (holding)"
        self._live_info = info
        return None

    # --- faults ----------------------------------------------------------------------------------

    def _fault(self, name: str, message: str, episode: int, step: int) -> str:
        """Record a fault and dump the ring buffer; returns ``name``."""
        index = len(self.report.faults)
        record = FaultRecord(name, message, episode, step, self.clock() - self._t0, None)
        if self.dump_dir is not None and len(self.ring):
            path = self.dump_dir / f"fault_{index}_{name.replace(':', '').replace(' ', '_')}.npz"
            try:
                record = FaultRecord(name, message, episode, step, record.time_s, str(self.ring.dump(path, record)))
            except Exception as err:  # a failed dump must not hide the fault itself
                log.error("could not write the fault dump %s: %s", path, err)
        self.report.faults.append(record)
        log.error("fault %s in episode %d step %d: %s", name, episode, step, message)
        return name

    def _add_clips(self, clips: Mapping[str, int]) -> None:
        total = self.report.safety_clips
        for stage in CLIP_STAGES:
            total[stage] = total.get(stage, 0) + int(clips.get(stage, 0))
