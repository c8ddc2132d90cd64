"""The two sides of the actor/learner runtime as small Protocols, so the transports are swappable.

- `LearnerLink` is what an actor sees of the learner. The actor loop (`robot_sac.runtime.actor`)
  is written against it only, so the same loop runs as a local process over shared memory
  (`robot_sac.runtime.local`) and as a Ray actor on another machine (`robot_sac.runtime.ray_fleet`).
- `ActorFleet` is what the learner sees of its actors. The learner loop
  (`robot_sac.runtime.learner.AsyncLearner`) is written against it only.

Both contracts are checked by one shared suite per Protocol (``tests/test_runtime_links.py``).
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from robot_sac.normalization import ObservationNormalizer
from robot_sac.runtime.channels import TransitionChunk, WeightSnapshot


class LearnerLink(Protocol):
    """An actor's connection to the learner.

    Contract:

    - Nothing blocks beyond the timeout it is given; `send` never blocks at all (a transition that
      does not fit is dropped and counted: a control loop never stalls on I/O, SAFETY.md row 19).
    - `poll_weights` returns a consistent publication (never a torn mix of two) whose tensors are
      all finite, and only when its version differs from ``last_version``; otherwise None, and the
      actor keeps acting with the weights it has.
    - `learner_age_s` grows while the learner is gone (crashed, hung, unreachable); the actor
      decides from it when to stop.
    - `close` is idempotent and never waits for a dead learner.
    """

    def poll_weights(self, last_version: int) -> WeightSnapshot | None:
        """The newest publication if its version is not ``last_version``, else None."""
        ...

    def send(self, chunk: TransitionChunk) -> bool:
        """Hand a chunk to the learner without blocking; its env steps count as sent either way.

        Returns:
            False when it was dropped (the transport was full or the learner unreachable).
        """
        ...

    def wait_for_room(self, pending: int, timeout_s: float) -> bool:
        """Wait (asleep) until one more env step is allowed by the learner's throttle.

        Args:
            pending: env steps this actor has taken but not sent yet.
            timeout_s: longest wait.

        Returns:
            False on timeout (the caller checks its stop conditions and calls again).
        """
        ...

    def steps_sent(self) -> int:
        """Env steps all actors have sent (or dropped) so far; may lag concurrent sends."""
        ...

    def beat(self) -> None:
        """Record that this actor is alive."""
        ...

    def learner_age_s(self) -> float:
        """Seconds since the learner was last heard of."""
        ...

    def stop_requested(self) -> bool:
        """The learner asked every actor to stop."""
        ...

    def hold_requested(self) -> bool:
        """An operator asked the robot to hold (the hardware actor pauses at once; sim actors ignore it)."""
        ...

    def ready(self) -> None:
        """Tell the learner this actor has built its env and policy and can collect."""
        ...

    def close(self) -> None:
        """Release the link before the actor exits (idempotent; never waits for the learner)."""
        ...


class ActorFleet(Protocol):
    """The learner's handle on its actors: start, supervise, exchange data, stop.

    Contract:

    - `receive` waits (asleep, no busy polling) at most ``timeout_s``.
    - `publish` never waits for an actor; actors see only whole publications, in version order.
    - `allow` raises the throttle and never blocks; actors never send more env steps in all than the
      largest ``total`` allowed (a hardware actor, which must not wait, is exempt and counted).
    - `supervise` restarts dead simulation actors and raises `RuntimeError` when the fleet cannot go
      on (an actor that keeps dying at start-up, no actor left).
    - `stop` leaves no actor process behind when it returns and is idempotent.
    """

    @property
    def size(self) -> int:
        """Number of actor slots (simulation and hardware)."""
        ...

    def start(self) -> None:
        """Start every actor (after the first `publish`)."""
        ...

    def wait_ready(self, timeout_s: float) -> int:
        """Wait until the actors started by `start` can collect; returns how many can."""
        ...

    def supervise(self) -> None:
        """Restart dead actors (see the contract)."""
        ...

    def receive(self, timeout_s: float) -> TransitionChunk | None:
        """The next chunk from any actor, or None after ``timeout_s``."""
        ...

    def publish(self, version: int, policy: dict[str, Tensor], normalizer: ObservationNormalizer | None) -> None:
        """Make new weights (and statistics) the latest; ``version`` increases."""
        ...

    def allow(self, total_steps: int) -> None:
        """Let the actors send up to ``total_steps`` env steps in all."""
        ...

    def beat(self) -> None:
        """The learner's heartbeat (called about every 0.1 s from a thread)."""
        ...

    def dropped_steps(self) -> int:
        """Env steps in chunks that never reached `receive` (full transports)."""
        ...

    def stats(self) -> dict[str, float]:
        """Transport health for the metrics: queue depth, drops, restarts, published version."""
        ...

    def stop(self, timeout_s: float) -> None:
        """Stop every actor within ``timeout_s`` (escalating to kill), idempotent."""
        ...
