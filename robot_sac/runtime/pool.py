"""The actor processes of a local run: start, watch, restart the dead, stop without orphans.

Each started process gets a new ``stream_id`` (its episode ids derive from it, so they never repeat)
and a new seed. Stopping sets the shared stop flag (actors finish or abandon their episode and
exit), joins with a deadline, then escalates to SIGTERM and SIGKILL, so no child outlives
`ActorPool.stop` (SAFETY.md row 27).

Restarts: a simulation actor that dies is restarted; one that dies within `QUICK_DEATH_S` of its
start `MAX_QUICK_DEATHS` times in a row ends the run (it cannot start, restarting forever would
hide why). The hardware actor is restarted after a crash (its backend re-runs the servo setup and
homes at the safe speed), but never after it exited with `HARDWARE_FAULT_EXIT`: a latched robot
fault (or one that kept recurring over its reset attempts) needs an operator.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from robot_sac.configs import TrainConfig
from robot_sac.runtime.actor import HARDWARE_FAULT_EXIT, ActorSpec

log = logging.getLogger(__name__)

QUICK_DEATH_S = 10.0
"""An actor that exits sooner than this after its start probably cannot start at all."""

MAX_QUICK_DEATHS = 3
"""Consecutive quick deaths of one slot that end the run (instead of restarting forever)."""


class FleetExhausted(RuntimeError):
    """No actor can collect any more (each one died for good); the run stops with a checkpoint."""


class ActorPool:
    """Actor processes (spawn) in ``sim_count`` simulation slots and an optional hardware slot.

    Args:
        context: the ``torch.multiprocessing`` spawn context.
        config: the run's configuration (passed to each actor in its `ActorSpec`).
        target: the process entry point, called as ``target(spec, channels)``.
        channels: the shared transports (picklable at spawn), passed through to ``target``.
        is_stopping: True once the learner asked the actors to stop (no restarts then).
        first_stream_id: stream id of the first process started; each later start takes the next.
    """

    def __init__(
        self,
        context: Any,
        config: TrainConfig,
        target: Callable[[ActorSpec, Any], None],
        channels: Any,
        is_stopping: Callable[[], bool],
        first_stream_id: int = 0,
    ) -> None:
        """Nothing starts until `start`."""
        self.context, self.config, self.target, self.channels = context, config, target, channels
        self.is_stopping = is_stopping
        self.sim_count = config.runtime.actors if config.runtime.actors is not None else default_actor_count()
        self.hardware = config.runtime.hardware.enabled
        self.count = self.sim_count + int(self.hardware)
        self._next_stream = first_stream_id
        self.processes: list[Any] = [None] * self.count
        self._retired = [False] * self.count
        self.restarts = 0
        """Actor processes restarted after they died."""
        self._started_s = [0.0] * self.count
        self._quick_deaths = [0] * self.count

    def is_hardware(self, slot: int) -> bool:
        """Whether ``slot`` is the hardware actor's (the last one)."""
        return self.hardware and slot == self.count - 1

    def start(self) -> None:
        """Start every slot."""
        for slot in range(self.count):
            self._spawn(slot)

    def supervise(self) -> int:
        """Restart each actor that has exited while the run goes on; returns how many were restarted.

        Raises:
            FleetExhausted: an actor keeps dying at start-up, or every slot has retired.
        """
        restarted = 0
        for slot, proc in enumerate(self.processes):
            if proc is None or proc.exitcode is None or self.is_stopping():
                continue
            code = proc.exitcode
            proc.close()
            self.processes[slot] = None
            if self.is_hardware(slot) and code == HARDWARE_FAULT_EXIT:
                log.error(
                    "the hardware actor stopped on a robot fault it could not recover from (see its log); "
                    "it is not restarted"
                )
                self._retired[slot] = True
                if self.config.runtime.hardware.budget_steps is not None:
                    raise FleetExhausted(
                        "the hardware actor stopped for good before the run's real-step budget "
                        "(runtime.hardware.budget_steps) was in; the simulation actors alone cannot meet it"
                    )
                continue
            log.warning("actor %d exited with code %s; restarting it with a new seed", slot, code)
            quick = time.monotonic() - self._started_s[slot] < QUICK_DEATH_S
            self._quick_deaths[slot] = self._quick_deaths[slot] + 1 if quick else 0
            if self._quick_deaths[slot] >= MAX_QUICK_DEATHS:
                raise FleetExhausted(
                    f"actor {slot} died {MAX_QUICK_DEATHS} times within {QUICK_DEATH_S:.0f} s of starting "
                    f"(last exit code {code}); its stderr above says why. Not restarting it again"
                )
            self._spawn(slot)
            restarted += 1
        if all(self._retired):
            raise FleetExhausted("every actor has stopped for good; nothing collects any more")
        self.restarts += restarted
        return restarted

    def alive(self) -> int:
        """Number of live actor processes."""
        return sum(1 for p in self.processes if p is not None and p.is_alive())

    def pids(self) -> list[int]:
        """Process ids of the current actor processes."""
        return [p.pid for p in self.processes if p is not None]

    def stop(self, timeout_s: float = 10.0) -> None:
        """Wait up to ``timeout_s`` in all for the actors to exit, then terminate and kill the rest.

        The caller sets the stop flag first.
        """
        deadline = time.monotonic() + timeout_s
        for proc in self.processes:
            if proc is not None:
                proc.join(max(0.0, deadline - time.monotonic()))
        for proc in self.processes:
            if proc is not None and proc.is_alive():
                log.warning("actor pid %s did not stop within %.1f s; terminating it", proc.pid, timeout_s)
                proc.terminate()
                proc.join(1.0)
                if proc.is_alive():
                    proc.kill()
                    proc.join(1.0)
        self.processes = [None] * self.count

    def _spawn(self, slot: int) -> None:
        stream = self._next_stream
        self._next_stream += 1
        spec = actor_spec(self.config, slot, stream, hardware=self.is_hardware(slot))
        name = "robot-sac-hardware-actor" if spec.hardware else f"robot-sac-actor-{slot}"
        proc = self.context.Process(target=self.target, args=(spec, self.channels), name=name, daemon=True)
        proc.start()
        self._started_s[slot] = time.monotonic()
        self.processes[slot] = proc


def default_actor_count() -> int:
    """Cores available to this process minus one (the learner's), at least one."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def actor_spec(config: TrainConfig, slot: int, stream: int, hardware: bool = False) -> ActorSpec:
    """The spec of the actor started in ``slot`` as stream ``stream`` (a new seed per stream)."""
    seed = (config.seed + 7919 * (stream + 1)) % (2**31 - 1)
    return ActorSpec(config=config, actor_id=slot, stream_id=stream, seed=seed, hardware=hardware)
