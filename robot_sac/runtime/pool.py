"""The actor processes of a local run: start, watch, restart the dead, stop without orphans.

Each started process gets a new ``stream_id`` (its episode ids derive from it, so they never repeat)
and a new seed. Stopping sets the shared stop event (actors finish their episode and exit), joins
with a deadline, then escalates to SIGTERM and SIGKILL, so no child outlives the learner's
`ActorPool.stop` (SAFETY.md row 27).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from robot_sac.configs import TrainConfig
from robot_sac.runtime.actor import ActorArgs, actor_main
from robot_sac.runtime.channels import Heartbeat, StepGate, StopFlag, TransitionChannel, WeightChannel

log = logging.getLogger(__name__)

QUICK_DEATH_S = 10.0
"""An actor that exits sooner than this after its start probably cannot start at all."""

MAX_QUICK_DEATHS = 3
"""Consecutive quick deaths of one slot that end the run (instead of restarting forever)."""


@dataclass
class ActorChannels:
    """The shared transports every actor process receives."""

    weights: WeightChannel
    transitions: TransitionChannel
    heartbeat: Heartbeat
    gate: StepGate
    stop: StopFlag
    ready: Any


class ActorPool:
    """``count`` actor processes (spawn), each restarted with a new seed when it dies.

    Args:
        context: the ``torch.multiprocessing`` spawn context.
        config: the run's configuration (passed to each actor).
        count: number of actor slots.
        channels: the shared transports.
        first_stream_id: stream id of the first process started; each later start takes the next.
    """

    def __init__(
        self, context: Any, config: TrainConfig, count: int, channels: ActorChannels, first_stream_id: int = 0
    ) -> None:
        """Nothing starts until `start`."""
        self.context, self.config, self.count, self.channels = context, config, count, channels
        self._next_stream = first_stream_id
        self.processes: list[Any] = [None] * count
        self.restarts = 0
        """Actor processes restarted after they died."""
        self._started_s = [0.0] * count
        self._quick_deaths = [0] * count

    def start(self) -> None:
        """Start every slot."""
        for slot in range(self.count):
            self._spawn(slot)

    def supervise(self) -> int:
        """Restart each actor that has exited while the run goes on; returns how many were restarted."""
        restarted = 0
        for slot, proc in enumerate(self.processes):
            if proc is not None and proc.exitcode is not None and not self.channels.stop.is_set():
                log.warning("actor %d (pid %s) exited with code %s; restarting it with a new seed",
                            slot, proc.pid, proc.exitcode)  # fmt: skip
                quick = time.monotonic() - self._started_s[slot] < QUICK_DEATH_S
                self._quick_deaths[slot] = self._quick_deaths[slot] + 1 if quick else 0
                if self._quick_deaths[slot] >= MAX_QUICK_DEATHS:
                    raise RuntimeError(
                        f"actor {slot} died {MAX_QUICK_DEATHS} times within {QUICK_DEATH_S:.0f} s of starting "
                        f"(last exit code {proc.exitcode}); its stderr above says why. Not restarting it again"
                    )
                proc.close()
                self._spawn(slot)
                restarted += 1
        self.restarts += restarted
        return restarted

    def wait_ready(self, timeout_s: float) -> int:
        """Wait (asleep) until every actor started by `start` has built its env; returns how many did."""
        deadline, ready = time.monotonic() + timeout_s, 0
        while ready < self.count and self.channels.ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
            ready += 1
        return ready

    def alive(self) -> int:
        """Number of live actor processes."""
        return sum(1 for p in self.processes if p is not None and p.is_alive())

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask every actor to stop, wait up to ``timeout_s`` in all, then terminate and kill the rest."""
        self.channels.stop.set()
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
        c = self.channels
        args = ActorArgs(
            config=self.config,
            actor_id=slot,
            stream_id=stream,
            seed=(self.config.seed + 7919 * (stream + 1)) % (2**31 - 1),
            weights=c.weights,
            transitions=c.transitions,
            heartbeat=c.heartbeat,
            gate=c.gate,
            stop=c.stop,
            ready=c.ready,
        )
        proc = self.context.Process(target=actor_main, args=(args,), name=f"robot-sac-actor-{slot}", daemon=True)
        proc.start()
        self._started_s[slot] = time.monotonic()
        c.heartbeat.beat(slot + 1)
        self.processes[slot] = proc
