"""Channels between the learner and actor processes: weights, transitions, heartbeats, a step gate.

All of them are built in the learner from a ``torch.multiprocessing`` spawn context and handed to
actor processes as `Process` arguments (shared-memory tensors, ``Queue`` and ``Semaphore`` pickle
only while a process is being spawned). Apart from the queue's internal pipe lock, nothing shared is
a lock: every shared word has a single writer, so a process SIGKILLed anywhere cannot leave a lock
held that would wedge the others.

- `WeightChannel`: latest-wins, versioned actor weights + normalizer statistics in shared memory.
  The writer never waits for readers and a reader never waits for the writer (seqlock, below).
- `TransitionChannel`: a bounded queue of `TransitionChunk`; the producer never blocks: a chunk
  that does not fit is dropped and counted (SAFETY.md rows 19 and 22: a control loop never stalls
  on I/O, drops are visible).
- `Heartbeat`: one ``time.monotonic()`` stamp per process (CLOCK_MONOTONIC is system-wide on Linux,
  so stamps compare across processes); a peer older than a deadline is presumed dead.
- `StopFlag`: the learner's request to stop (a shared byte; `multiprocessing.Event` takes a lock).
- `StepGate`: bounds how far the actors run ahead of the learner's ingestion, so results do not
  depend on machine speed; waiting actors sleep on a condition (no busy polling).
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from robot_sac.normalization import ObservationNormalizer, RunningMeanStd
from robot_sac.replay import DOMAIN_SIM

_FENCE = threading.Lock()


def _memory_fence() -> None:
    """A full memory barrier: acquiring and releasing a mutex is an atomic read-modify-write.

    Used between the seqlock's counter and data accesses so neither the CPU nor C code reorders
    them; it is process-local, so no other process can hold it (a SIGKILLed peer wedges nothing).
    """
    with _FENCE:
        pass


def _shared(tensor: Tensor) -> Tensor:
    """Move ``tensor`` to shared memory (in place) so spawned processes map the same pages."""
    shared: Tensor = tensor.share_memory_()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return shared


@dataclass
class WeightSnapshot:
    """One consistent publication: weights and statistics that were written together.

    Attributes:
        version: the learner's update count when it published (monotonic).
        policy: the actor's ``state_dict`` (private CPU copies).
        normalizer: `ObservationNormalizer.to_arrays` output, or None when normalization is off.
    """

    version: int
    policy: dict[str, Tensor]
    normalizer: dict[str, np.ndarray] | None


class WeightChannel:
    """Latest-wins shared-memory slot for the policy weights, normalizer statistics and a version.

    Protocol (a seqlock; Lameter 2005, Linux ``seqlock_t``), with one writer (the learner): the
    shared sequence counter ``seq`` is even when the slot is stable and odd while a write is in
    progress. The writer increments it (odd), copies every tensor, then increments it again (even).
    A reader reads ``seq`` (s1), copies every tensor, reads ``seq`` again (s2) and keeps its copy
    only when ``s1 == s2`` and ``s1`` is even: then no write started or ended during the copy, so
    the copy is one publication, never a torn mix of two. A memory fence separates every counter
    access from the data copies. No cross-process lock is involved: the writer never waits for a
    reader, a reader never waits for the writer (it retries a few times, then keeps its current
    weights), and a process killed mid-read or mid-write cannot wedge the others (a writer killed
    mid-write leaves ``seq`` odd: readers keep their last good weights). Received tensors are
    checked for finite values (SAFETY.md row 19).

    Args:
        context: the ``torch.multiprocessing`` spawn context the actors are started from.
        policy: a template of the actor's ``state_dict`` (shapes and dtypes; values not published).
        normalizer: a template normalizer (dim, clip, epsilon), or None when normalization is off.
    """

    def __init__(self, context: Any, policy: dict[str, Tensor], normalizer: ObservationNormalizer | None) -> None:
        """Allocate the shared tensors (version -1: nothing published yet)."""
        del context  # shared tensors need no context; kept for a uniform constructor
        self._seq = _shared(torch.zeros(1, dtype=torch.int64))
        self._version = _shared(torch.full((1,), -1, dtype=torch.int64))
        self._policy = {k: _shared(torch.zeros_like(v, device="cpu")) for k, v in policy.items()}
        self._norm: dict[str, Tensor] | None = None
        self._norm_static: dict[str, float] = {}
        if normalizer is not None:
            self._norm = {
                "count": _shared(torch.zeros(1, dtype=torch.int64)),
                "mean": _shared(torch.zeros(normalizer.dim, dtype=torch.float64)),
                "m2": _shared(torch.zeros(normalizer.dim, dtype=torch.float64)),
                "frozen": _shared(torch.zeros(1, dtype=torch.bool)),
            }
            self._norm_static = {"clip_sigma": normalizer.clip_sigma, "epsilon": normalizer.epsilon}
        self.rejected = 0
        """Reads discarded in this process because a tensor held a non-finite value."""

    @property
    def version(self) -> int:
        """The latest published version (-1 before the first); a cheap read, no copy."""
        return int(self._version[0])

    def publish(self, version: int, policy: dict[str, Tensor], normalizer: ObservationNormalizer | None) -> None:
        """Write a new publication (one writer only: the learner). Never waits for readers.

        Args:
            version: must exceed the previous one (readers use it to detect news).
            policy: the actor's ``state_dict`` (same keys and shapes as the template).
            normalizer: the learner's normalizer (None exactly when the template was None).
        """
        self._bump_seq()  # odd: writing
        try:
            with torch.no_grad():
                for key, dst in self._policy.items():
                    dst.copy_(policy[key])
                if self._norm is not None and normalizer is not None:
                    stats = normalizer.stats
                    self._norm["count"][0] = stats.count
                    self._norm["mean"].copy_(torch.from_numpy(np.asarray(stats.mean, dtype=np.float64)))
                    self._norm["m2"].copy_(torch.from_numpy(np.asarray(stats.m2, dtype=np.float64)))
                    self._norm["frozen"][0] = normalizer.frozen
                self._version[0] = version
        finally:
            self._bump_seq()  # even: stable

    def poll(self, last_version: int, retries: int = 20) -> WeightSnapshot | None:
        """The newest publication if its version differs from ``last_version``, else None.

        Returns None also when no consistent copy was obtained within ``retries`` attempts (a write
        kept overlapping) or the copy held a non-finite value; the caller keeps its current weights.
        """
        if self.version == last_version:
            return None
        for _ in range(retries):
            s1 = self._read_seq()
            if s1 % 2:
                time.sleep(0.0005)
                continue
            version = int(self._version[0])
            policy = {k: v.clone() for k, v in self._policy.items()}
            norm = {k: v.clone() for k, v in self._norm.items()} if self._norm is not None else None
            if self._read_seq() != s1:
                continue
            if version < 0:
                return None
            if not all(bool(torch.isfinite(t).all()) for t in policy.values() if t.is_floating_point()):
                self.rejected += 1
                return None
            return WeightSnapshot(version, policy, self._norm_arrays(norm))
        return None

    def _norm_arrays(self, norm: dict[str, Tensor] | None) -> dict[str, np.ndarray] | None:
        if norm is None:
            return None
        return {
            "format_version": np.array(1, dtype=np.int64),
            "count": np.array(int(norm["count"][0]), dtype=np.int64),
            "mean": norm["mean"].numpy(),
            "m2": norm["m2"].numpy(),
            "clip_sigma": np.array(self._norm_static["clip_sigma"]),
            "epsilon": np.array(self._norm_static["epsilon"]),
            "frozen": np.array(bool(norm["frozen"][0])),
        }

    def _bump_seq(self) -> None:
        _memory_fence()
        self._seq[0] += 1
        _memory_fence()

    def _read_seq(self) -> int:
        _memory_fence()
        seq = int(self._seq[0])
        _memory_fence()
        return seq


@dataclass
class TransitionChunk:
    """Consecutive env steps of one actor, with raw observations (the replay buffer's format).

    Arrays have n rows (n <= the env steps covered: faulted steps are not stored).

    Attributes:
        actor_id: the actor's slot (0 .. actors - 1).
        stream_id: unique per actor process started (a restarted actor gets a new one).
        obs: (n, obs_dim) raw observations s.
        action: (n, action_dim) executed actions in policy units.
        reward: (n,) rewards.
        next_obs: (n, obs_dim) raw observations s'.
        terminated: (n,) terminal flags (never ``terminated or truncated``).
        policy_version: (n,) version of the weights that chose each action.
        safety_clipped: (n,) the safety filter changed the action.
        episode: (n,) episode ids, unique across actors and restarts.
        env_steps: env steps the chunk covers (stored rows plus faulted steps).
        faults: steps not stored because of a fault or an invalid measurement.
        obs_stats: statistics of the raw observations seen since the previous chunk (a delta the
            learner merges exactly); None when normalization is off or frozen.
        episodes: (return, success or NaN, length) of each episode that ended in this chunk.
        domain: `DOMAIN_SIM` or `DOMAIN_REAL` (the hardware actor), stored with every row.
        loop_periods_s: the hardware actor's measured step-to-step periods in this chunk, in s
            (None for simulation actors).
        created_s: ``time.monotonic()`` when the actor sent it (system-wide on Linux, so the
            learner can tell how old it is; 0 when unknown).
    """

    actor_id: int
    stream_id: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    terminated: np.ndarray
    policy_version: np.ndarray
    safety_clipped: np.ndarray
    episode: np.ndarray
    env_steps: int
    faults: int = 0
    obs_stats: RunningMeanStd | None = None
    episodes: list[tuple[float, float, int]] = field(default_factory=list)
    domain: int = DOMAIN_SIM
    loop_periods_s: np.ndarray | None = None
    created_s: float = 0.0


class TransitionChannel:
    """Bounded queue of `TransitionChunk` from many producers (actors) to one consumer (the learner).

    Drop counters are per producer slot (``chunk.actor_id``), each written by one process only, so
    no lock is shared between producers for them.

    Args:
        context: the spawn context.
        max_chunks: queue capacity; beyond it chunks are dropped (and counted), never waited for.
        producers: number of producer slots.
    """

    def __init__(self, context: Any, max_chunks: int, producers: int) -> None:
        """Create the queue and the shared drop counters: (producers, [chunks, env steps])."""
        self._queue = context.Queue(maxsize=max_chunks)
        self._dropped = _shared(torch.zeros((producers, 2), dtype=torch.int64))

    def send(self, chunk: TransitionChunk) -> bool:
        """Enqueue without blocking; False (and the drop counted) when the queue is full."""
        try:
            self._queue.put_nowait(chunk)
            return True
        except queue.Full:
            self._dropped[chunk.actor_id, 0] += 1
            self._dropped[chunk.actor_id, 1] += chunk.env_steps
            return False

    def receive(self, timeout_s: float) -> TransitionChunk | None:
        """The next chunk, waiting (asleep) at most ``timeout_s``; None when none came."""
        try:
            chunk: TransitionChunk = self._queue.get(timeout=timeout_s)
            return chunk
        except queue.Empty:
            return None

    def close_producer(self) -> None:
        """Call in an actor before it exits: never wait at exit to flush into a full pipe."""
        self._queue.cancel_join_thread()

    @property
    def dropped_chunks(self) -> int:
        """Chunks dropped because the queue was full (all producers)."""
        return int(self._dropped[:, 0].sum())

    @property
    def dropped_steps(self) -> int:
        """Env steps in the dropped chunks."""
        return int(self._dropped[:, 1].sum())

    def depth(self) -> int:
        """Approximate number of queued chunks."""
        try:
            return int(self._queue.qsize())
        except NotImplementedError:  # macOS has no sem_getvalue
            return -1


class Heartbeat:
    """Shared ``time.monotonic()`` stamps, one slot per process (slot 0: the learner by convention).

    Args:
        slots: number of processes.
    """

    def __init__(self, slots: int) -> None:
        """All stamps start at now (a process that never beats ages from creation)."""
        self._stamps = _shared(torch.full((slots,), time.monotonic(), dtype=torch.float64))

    def beat(self, slot: int) -> None:
        """Record that process ``slot`` is alive now (one aligned 8-byte store)."""
        self._stamps[slot] = time.monotonic()

    def age_s(self, slot: int) -> float:
        """Seconds since ``slot`` last beat."""
        return time.monotonic() - float(self._stamps[slot])


class StopFlag:
    """A shared flag one process (the learner) writes and actors read, lock-free: stop, operator hold."""

    def __init__(self) -> None:
        """Not set."""
        self._flag = _shared(torch.zeros(1, dtype=torch.bool))

    def set(self) -> None:
        """Raise the flag (stop: ask every actor to stop; hold: pause the hardware actor)."""
        self._flag[0] = True

    def clear(self) -> None:
        """Lower the flag (an operator released the hold)."""
        self._flag[0] = False

    def is_set(self) -> bool:
        """Whether the flag is raised."""
        return bool(self._flag[0])


class StepGate:
    """Bounds the env steps the actors have sent to at most an allowance the learner raises.

    Each actor counts the steps it sent (or dropped) in its own slot of ``sent``; before each step an
    actor with ``pending`` unsent steps waits until ``sum(sent) + pending < allowed``. The learner (the
    only writer of ``allowed``) raises it to (steps ingested + steps dropped + the allowed lead) and
    releases the wake-up semaphore once per slot; a waiting actor sleeps on that semaphore (no
    polling) and re-checks when woken. The semaphore is bounded by the slot count, so wake-ups never
    pile up, and nothing here is a lock a killed actor could leave held (a ``multiprocessing``
    ``Condition`` would: its ``notify`` waits for every registered sleeper, dead or alive).

    Args:
        context: the spawn context.
        slots: number of actor slots.
        sent: env steps counted as sent at the start (a resumed run's env steps).
    """

    def __init__(self, context: Any, slots: int, sent: int = 0) -> None:
        """Nothing beyond ``sent`` is allowed until the learner calls `allow`."""
        self._sent = _shared(torch.zeros(slots, dtype=torch.int64))
        self._sent[0] = sent
        self._allowed = _shared(torch.full((1,), sent, dtype=torch.int64))
        self._wake = context.BoundedSemaphore(slots)
        for _ in range(slots):
            self._wake.acquire()  # start empty: a BoundedSemaphore's bound is its initial value
        self._slots = slots

    @property
    def sent(self) -> int:
        """Env steps sent by all actors (may lag a concurrent `add_sent`)."""
        return int(self._sent.sum())

    def wait_for_room(self, pending: int, timeout_s: float) -> bool:
        """Wait (asleep) until one more step is allowed; False on timeout (check stop flags, retry)."""
        deadline = time.monotonic() + timeout_s
        while self.sent + pending >= int(self._allowed[0]):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._wake.acquire(timeout=remaining):
                return False
        return True

    def add_sent(self, slot: int, steps: int) -> None:
        """Count ``steps`` as sent by actor ``slot`` (after `TransitionChannel.send`, stored or dropped)."""
        self._sent[slot] += steps

    def allow(self, total: int) -> None:
        """Let the actors send up to ``total`` env steps in all; wakes waiting actors. Never blocks."""
        if total > int(self._allowed[0]):
            self._allowed[0] = total
            for _ in range(self._slots):
                try:
                    self._wake.release()
                except ValueError:  # at the bound: enough wake-ups are pending already
                    break
