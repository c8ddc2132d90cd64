"""The local fleet: actor processes on this machine, linked to the learner by shared memory and a queue.

`LocalFleet` implements `ActorFleet` for the learner with the `channels` transports and an
`ActorPool` of ``torch.multiprocessing`` (spawn) processes; each process runs `local_actor_main`,
which wraps the channels in a `SharedMemoryLink` (the actor's `LearnerLink`) and runs the shared
actor loop. `LocalRuntime` composes a learner with it (``runtime.mode: local``).

Known limit: the transition queue's pipe write lock is shared by the actors; an actor SIGKILLed in
the microseconds it holds it (while its feeder thread writes a chunk) would wedge the others' sends.
Every other shared structure is lock-free (single writer per word) or a semaphore.
"""

from __future__ import annotations

import random
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch.multiprocessing as tmp
from torch import Tensor

from robot_sac.configs import TrainConfig
from robot_sac.normalization import ObservationNormalizer
from robot_sac.runtime.actor import ActorSpec, first_stream_id, run_actor
from robot_sac.runtime.channels import (
    Heartbeat,
    StepGate,
    StopFlag,
    TransitionChannel,
    TransitionChunk,
    WeightChannel,
    WeightSnapshot,
)
from robot_sac.runtime.learner import AsyncLearner
from robot_sac.runtime.pool import ActorPool, default_actor_count
from robot_sac.train import Trainer

LEARNER_SLOT = 0
"""Heartbeat slot of the learner; actor ``i`` beats in slot ``i + 1``."""


@dataclass
class ActorChannels:
    """The shared transports every actor process receives (picklable while spawning)."""

    weights: WeightChannel
    transitions: TransitionChannel
    heartbeat: Heartbeat
    gate: StepGate
    stop: StopFlag
    ready: Any
    hold: StopFlag


class SharedMemoryLink:
    """`LearnerLink` over `ActorChannels`, for actor ``slot`` (see `robot_sac.runtime.channels`)."""

    def __init__(self, channels: ActorChannels, slot: int) -> None:
        """Wrap the channels for actor ``slot``."""
        self.channels, self.slot = channels, slot
        self._closed = False

    def poll_weights(self, last_version: int) -> WeightSnapshot | None:
        """The seqlock read of `WeightChannel.poll`."""
        return self.channels.weights.poll(last_version)

    def send(self, chunk: TransitionChunk) -> bool:
        """Queue without blocking; the steps count as sent (stored or dropped)."""
        sent = self.channels.transitions.send(chunk)
        self.channels.gate.add_sent(self.slot, chunk.env_steps)
        return sent

    def wait_for_room(self, pending: int, timeout_s: float) -> bool:
        """Sleep on the `StepGate`."""
        return self.channels.gate.wait_for_room(pending, timeout_s)

    def steps_sent(self) -> int:
        """Steps sent by every actor."""
        return self.channels.gate.sent

    def beat(self) -> None:
        """Stamp this actor's heartbeat slot."""
        self.channels.heartbeat.beat(self.slot + 1)

    def learner_age_s(self) -> float:
        """Age of the learner's heartbeat stamp."""
        return self.channels.heartbeat.age_s(LEARNER_SLOT)

    def stop_requested(self) -> bool:
        """The shared stop flag."""
        return self.channels.stop.is_set()

    def hold_requested(self) -> bool:
        """The shared operator-hold flag."""
        return self.channels.hold.is_set()

    def ready(self) -> None:
        """Release the ready semaphore once."""
        self.channels.ready.release()

    def close(self) -> None:
        """Never wait at exit to flush into a full pipe (idempotent)."""
        if not self._closed:
            self._closed = True
            self.channels.transitions.close_producer()


def local_actor_main(spec: ActorSpec, channels: ActorChannels) -> None:
    """Entry point of an actor process (spawn target); its exit code is `run_actor`'s."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the learner stops us
    random.seed(spec.seed)
    code = run_actor(spec, SharedMemoryLink(channels, spec.actor_id))
    if code:
        sys.exit(code)


class LocalFleet:
    """`ActorFleet` of local actor processes (``runtime.actors`` sim actors + optional hardware actor).

    Args:
        config: the run's configuration.
        policy: a template of the actor's ``state_dict`` (shapes for the shared weight slot).
        normalizer: a template normalizer, or None when normalization is off.
        sent: env steps the run has already taken (a resumed run).
        first_stream_id: the first actor process's stream id (above every stored episode's).
    """

    def __init__(
        self,
        config: TrainConfig,
        policy: dict[str, Tensor],
        normalizer: ObservationNormalizer | None,
        sent: int = 0,
        first_stream_id: int = 0,
    ) -> None:
        """Create the channels and the pool; no process starts until `start`."""
        ctx = tmp.get_context("spawn")
        runtime = config.runtime
        self.channels = ActorChannels(
            weights=WeightChannel(ctx, policy, normalizer),
            transitions=TransitionChannel(ctx, runtime.queue_chunks, _slots(config)),
            heartbeat=Heartbeat(_slots(config) + 1),
            gate=StepGate(ctx, _slots(config), sent=sent),
            stop=StopFlag(),
            ready=ctx.Semaphore(0),
            hold=StopFlag(),
        )
        self.pool = ActorPool(ctx, config, local_actor_main, self.channels, self.channels.stop.is_set, first_stream_id)

    @property
    def size(self) -> int:
        """Actor slots (sim + hardware)."""
        return self.pool.count

    def start(self) -> None:
        """Spawn every actor."""
        self.pool.start()

    def wait_ready(self, timeout_s: float) -> int:
        """Wait (asleep) until every started actor has built its env; returns how many did."""
        deadline, ready = time.monotonic() + timeout_s, 0
        while ready < self.pool.count and self.channels.ready.acquire(timeout=max(0.0, deadline - time.monotonic())):
            ready += 1
        return ready

    def supervise(self) -> None:
        """Restart the dead (`ActorPool.supervise`)."""
        self.pool.supervise()

    def receive(self, timeout_s: float) -> TransitionChunk | None:
        """The next queued chunk."""
        return self.channels.transitions.receive(timeout_s)

    def publish(self, version: int, policy: dict[str, Tensor], normalizer: ObservationNormalizer | None) -> None:
        """Seqlock write of the weight slot."""
        self.channels.weights.publish(version, policy, normalizer)

    def allow(self, total_steps: int) -> None:
        """Raise the `StepGate` allowance."""
        self.channels.gate.allow(total_steps)

    def beat(self) -> None:
        """Stamp the learner's heartbeat slot."""
        self.channels.heartbeat.beat(LEARNER_SLOT)

    def dropped_steps(self) -> int:
        """Env steps of the chunks the full queue dropped."""
        return self.channels.transitions.dropped_steps

    def stats(self) -> dict[str, float]:
        """Queue depth, drops, restarts and the published version."""
        return {
            "runtime/queue_depth": float(self.channels.transitions.depth()),
            "runtime/dropped_chunks": float(self.channels.transitions.dropped_chunks),
            "runtime/actor_restarts": float(self.pool.restarts),
            "runtime/policy_version": float(self.channels.weights.version),
        }

    def hold(self, on: bool) -> None:
        """Raise or release the operator hold: the hardware actor ends its episode at once and waits."""
        if on:
            self.channels.hold.set()
        else:
            self.channels.hold.clear()

    def stop(self, timeout_s: float) -> None:
        """Set the stop flag, then join, terminate and kill (`ActorPool.stop`)."""
        self.channels.stop.set()
        if any(p is not None for p in self.pool.processes):
            self.pool.stop(timeout_s)


def _slots(config: TrainConfig) -> int:
    runtime = config.runtime
    sim = runtime.actors if runtime.actors is not None else default_actor_count()
    return sim + int(runtime.hardware.enabled)


def LocalRuntime(trainer: Trainer) -> AsyncLearner:  # noqa: N802 (a factory named like the runtime it builds)
    """The learner of ``trainer`` with a `LocalFleet` of actor processes (``runtime.mode: local``)."""
    first_stream = first_stream_id(trainer.buffer.episode[: len(trainer.buffer)])
    fleet = LocalFleet(trainer.config, trainer.agent.policy_state_dict(), trainer.normalizer,
                       sent=trainer.counters.env_steps, first_stream_id=first_stream)  # fmt: skip
    return AsyncLearner(trainer, fleet)
