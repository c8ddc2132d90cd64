"""The Ray runtime (``runtime.mode: ray``): the same actor loop as Ray actors, so collection spreads over a cluster.

The learner process is the Ray driver. It creates one `TransitionHub` on its own node (the
transport: weights, a bounded chunk queue, the throttle, the stop flag, its heartbeat; see
`robot_sac.runtime.ray_link`) and ``runtime.actors`` simulation Ray actors (`RayActorProcess`,
``runtime.ray.actor_num_cpus`` CPUs each) anywhere in the cluster. Each runs the one actor loop,
`robot_sac.runtime.actor.run_actor`, over a `RayLink` to the hub. `RayFleet` is the learner's
`ActorFleet`: it starts the actors, restarts the dead (their run ``ObjectRef`` failed, e.g. with
``RayActorError``) with a new stream id and seed, pulls chunks from the hub in batches, and stops
without leaving an actor process behind. `RayRuntime` composes the learner with it, as
`robot_sac.runtime.local.LocalRuntime` does with local processes.

Pointing it at a cluster:

1. Install the package with the extra on every node, at the same path (the actors import
   ``robot_sac`` and read the run's config files): ``pip install -e '.[train,ray]'``.
2. On the learner machine (a GPU node if there is one: with ``device: auto`` the learner uses CUDA
   when its node has it; the actors act on CPU): ``ray start --head --port=6379``
   (``--num-cpus=<cores - 1>`` keeps a core free of actors for the learner).
3. On every other machine: ``ray start --address=<head>:6379``.
4. On the head: ``robot-sac train --set runtime.mode=ray --set runtime.ray.address=auto`` (or
   ``<head>:6379``). The learner runs in this process, so start it on the head (a Ray Client
   address, ``ray://``, would put the hub on the head and the learner elsewhere: untested). With
   ``runtime.actors`` null there is one actor per ``actor_num_cpus`` of the cluster's CPUs, minus
   one CPU for the learner.

Without ``runtime.ray.address`` a local Ray instance is started (``runtime.ray.num_cpus`` CPUs, no
dashboard) and shut down at the end; a process already connected to Ray (``ray.init`` called
before) is reused and left connected. Hardware actors run only in the local runtime.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections import deque
from typing import Any

from torch import Tensor

from robot_sac.configs import RayConfig, TrainConfig
from robot_sac.errors import ConfigError
from robot_sac.normalization import ObservationNormalizer
from robot_sac.runtime.actor import ActorSpec, first_stream_id, run_actor
from robot_sac.runtime.channels import TransitionChunk
from robot_sac.runtime.learner import AsyncLearner
from robot_sac.runtime.pool import MAX_QUICK_DEATHS, QUICK_DEATH_S, FleetExhausted, actor_spec
from robot_sac.runtime.ray_link import HubReport, RayLink, TransitionHub
from robot_sac.train import Trainer

try:
    import ray
    from ray.exceptions import GetTimeoutError, RayError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("runtime.mode=ray needs Ray on every node: pip install -e '.[ray]'") from err

log = logging.getLogger(__name__)

TAKE_CHUNKS = 16
"""Chunks the learner pulls from the hub per call."""

SUPERVISE_S = 0.2
"""Least time between two looks for ended actor runs (the learner calls `RayFleet.supervise` per chunk)."""


class RayActorProcess:
    """The body of a simulation Ray actor: the shared actor loop over a `RayLink`."""

    def where(self) -> tuple[str, int]:
        """The node id and process id of this worker."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    def run(self, spec: ActorSpec, hub: Any) -> int:
        """`run_actor` until the learner stops the run or is gone; its exit code."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the group; the learner stops us
        random.seed(spec.seed)
        return run_actor(spec, RayLink(hub, spec.actor_id, spec.stream_id, spec.config.runtime.ray.call_timeout_s))


class RayFleet:
    """`ActorFleet` of ``runtime.actors`` simulation Ray actors around one `TransitionHub`.

    Connects to Ray (``runtime.ray.address``, or a local instance it starts and later shuts down)
    unless this process already is connected, then creates the hub on this node.

    Args:
        config: the run's configuration.
        policy: a template of the actor's ``state_dict`` (unused: the hub takes any publication).
        normalizer: a template normalizer (unused, as ``policy``).
        sent: env steps the run has already taken (a resumed run).
        first_stream_id: the first actor's stream id (above every stored episode's).
    """

    def __init__(
        self,
        config: TrainConfig,
        policy: dict[str, Tensor] | None = None,
        normalizer: ObservationNormalizer | None = None,
        sent: int = 0,
        first_stream_id: int = 0,
    ) -> None:
        """Connect, create the hub; no actor starts until `start`."""
        del policy, normalizer  # kept for the constructor `LocalFleet` has
        runtime = config.runtime
        if runtime.hardware.enabled:
            raise ConfigError("runtime.hardware runs in the local runtime; set runtime.mode=local")
        self.config, self._ray = config, runtime.ray
        self._owns_ray = connect(runtime.ray)
        self.count = runtime.actors if runtime.actors is not None else default_ray_actor_count(runtime.ray)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        hub_class: Any = ray.remote(TransitionHub)  # handles are untyped: Ray's proxies do not type methods' `remote`
        self.hub: Any = hub_class.options(
            num_cpus=0, max_concurrency=4 * self.count + 8, scheduling_strategy=here
        ).remote(runtime.queue_chunks, self.count, sent)
        self.hub_where: tuple[str, int] | None = self._call(
            self.hub.where.remote(), max(60.0, runtime.ray.call_timeout_s)
        )
        """The hub's node id and process id."""
        if self.hub_where is None:
            if self._owns_ray:
                ray.shutdown()
            raise RuntimeError("the Ray hub actor did not start within 60 s; is the learner's Ray node healthy?")
        self._actor_class: Any = ray.remote(RayActorProcess)
        self.handles: list[Any] = [None] * self.count
        self.runs: list[Any] = [None] * self.count
        self._where: list[Any] = [None] * self.count
        self._next_stream, self._started_s, self._quick_deaths = first_stream_id, [0.0] * self.count, [0] * self.count
        self.restarts = 0
        """Actors restarted after they died."""
        self._inbox: deque[TransitionChunk] = deque()
        self._report = HubReport([], 0, 0, 0)
        self._version, self._allowed, self._supervised_s = -1, sent, 0.0
        self._stopping = self._stopped = False

    @property
    def size(self) -> int:
        """Actor slots."""
        return self.count

    def start(self) -> None:
        """Create every actor (after the first `publish`).

        Raises:
            ConfigError: the local instance has fewer CPUs than the actors reserve (a cluster may be
                autoscaling: there the shortfall is a warning and the actors wait for nodes).
        """
        cpus, needed = _cluster_cpus(), self.count * self._ray.actor_num_cpus
        if needed > cpus:
            message = (
                f"{self.count} Ray actors x runtime.ray.actor_num_cpus={self._ray.actor_num_cpus:g} need {needed:g} "
                f"CPUs, the Ray cluster has {cpus:g}: lower runtime.actors or runtime.ray.actor_num_cpus"
            )
            if self._ray.address is None:
                raise ConfigError(f"{message}, or raise runtime.ray.num_cpus")
            log.warning("%s, or add nodes (ray start --address=<head>:6379); the others wait for CPUs", message)
        for slot in range(self.count):
            self._spawn(slot)

    def wait_ready(self, timeout_s: float) -> int:
        """Wait (on the hub) until every actor has built its env; returns how many did."""
        ready = self._call(self.hub.wait_ready.remote(self.count, timeout_s), timeout_s + self._ray.call_timeout_s)
        return int(ready) if ready is not None else 0

    def supervise(self) -> None:
        """Restart each actor whose run has ended (died, raised, or returned) while the run goes on.

        Raises:
            FleetExhausted: an actor died `MAX_QUICK_DEATHS` times in a row within `QUICK_DEATH_S` of its start.
        """
        now = time.monotonic()
        if self._stopping or now - self._supervised_s < SUPERVISE_S:
            return
        self._supervised_s = now
        live = [r for r in self.runs if r is not None]
        done, _ = ray.wait(live, num_returns=len(live), timeout=0) if live else ([], [])
        for ref in done:
            slot = self.runs.index(ref)
            try:
                outcome = f"exited with code {ray.get(ref)}"
            except RayError as err:
                outcome = f"died ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
            ray.kill(self.handles[slot], no_restart=True)
            quick = now - self._started_s[slot] < QUICK_DEATH_S
            self._quick_deaths[slot] = self._quick_deaths[slot] + 1 if quick else 0
            if self._quick_deaths[slot] >= MAX_QUICK_DEATHS:
                raise FleetExhausted(
                    f"Ray actor {slot} died {MAX_QUICK_DEATHS} times within {QUICK_DEATH_S:.0f} s of starting "
                    f"(last: {outcome}); its log above says why (check that every node has robot_sac installed)"
                )
            log.warning("Ray actor %d %s; restarting it with a new seed", slot, outcome)
            self._spawn(slot)
            self.restarts += 1

    def receive(self, timeout_s: float) -> TransitionChunk | None:
        """The next chunk: from the last batch pulled, else from the hub (which waits up to ``timeout_s``).

        Raises:
            FleetExhausted: the hub is gone (its node died): no actor can deliver any more.
        """
        if not self._inbox:
            ref = self.hub.take.remote(TAKE_CHUNKS, timeout_s)
            try:
                report: HubReport = ray.get(ref, timeout=timeout_s + self._ray.call_timeout_s)
            except GetTimeoutError:
                log.warning("the Ray hub did not answer within %.1f s", timeout_s + self._ray.call_timeout_s)
                return None
            except RayError as err:
                raise FleetExhausted(f"the Ray hub actor is gone ({type(err).__name__}); the run cannot go on") from err
            self._report = report
            self._inbox.extend(report.chunks)
        return self._inbox.popleft() if self._inbox else None

    def publish(self, version: int, policy: dict[str, Tensor], normalizer: ObservationNormalizer | None) -> None:
        """Send the publication to the hub (does not wait for it)."""
        arrays = {k: v.detach().cpu().numpy() for k, v in policy.items()}
        self.hub.publish.remote(version, arrays, normalizer.to_arrays() if normalizer is not None else None)
        self._version = version

    def allow(self, total_steps: int) -> None:
        """Raise the hub's allowance (does not wait)."""
        if total_steps > self._allowed:
            self._allowed = total_steps
            self.hub.allow.remote(total_steps)

    def beat(self) -> None:
        """The learner's heartbeat to the hub (does not wait; silent once stopped)."""
        if not self._stopped:
            try:
                self.hub.beat.remote()
            except Exception:  # a heartbeat racing `stop` must never end its thread
                log.debug("heartbeat after the Ray fleet stopped")

    def dropped_steps(self) -> int:
        """Env steps dropped (hub queue full, actor outboxes full), as of the last batch pulled."""
        return self._report.dropped_steps

    def stats(self) -> dict[str, float]:
        """Queue depth (hub + pulled), drops, restarts and the published version."""
        return {
            "runtime/queue_depth": float(self._report.depth + len(self._inbox)),
            "runtime/dropped_chunks": float(self._report.dropped_chunks),
            "runtime/actor_restarts": float(self.restarts),
            "runtime/policy_version": float(self._version),
        }

    def pids(self) -> list[int]:
        """Process ids of the current actors (those that have answered)."""
        return [w[1] for w in (self._locate(s) for s in range(self.count)) if w is not None]

    def stop(self, timeout_s: float) -> None:
        """Set the stop flag, wait for the actors' runs, kill what remains and the hub (idempotent)."""
        if self._stopped:
            return
        self._stopping = self._stopped = True
        deadline = time.monotonic() + timeout_s
        self._call(self.hub.set_stop.remote(), min(self._ray.call_timeout_s, timeout_s))
        live = [r for r in self.runs if r is not None]
        if live:
            ray.wait(live, num_returns=len(live), timeout=max(0.0, deadline - time.monotonic()))
        located = [self._locate(slot) for slot in range(self.count)]
        for handle in [*self.handles, self.hub]:
            if handle is not None:
                ray.kill(handle, no_restart=True)
        _await_exit([w for w in [*located, self.hub_where] if w is not None], deadline + 2.0)
        self.handles, self.runs = [None] * self.count, [None] * self.count
        if self._owns_ray:
            ray.shutdown()

    # --- internals ------------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        stream = self._next_stream
        self._next_stream += 1
        spec = actor_spec(self.config, slot, stream)
        handle = self._actor_class.options(num_cpus=self._ray.actor_num_cpus, max_restarts=0).remote()
        self._where[slot] = handle.where.remote()  # answered first: calls from one caller run in order
        self.runs[slot] = handle.run.remote(spec, self.hub)
        self.handles[slot], self._started_s[slot] = handle, time.monotonic()

    def _locate(self, slot: int) -> tuple[str, int] | None:
        ref = self._where[slot]
        return self._call(ref, 1.0) if ref is not None else None

    def _call(self, ref: Any, timeout_s: float) -> Any:
        try:
            return ray.get(ref, timeout=timeout_s)
        except RayError as err:
            log.debug("Ray call failed: %s", err)
            return None


def _await_exit(where: list[tuple[str, int]], deadline_s: float) -> None:
    """Wait until the killed processes on this node have exited (`ray.kill` returns before they do)."""
    node = ray.get_runtime_context().get_node_id()
    pids = [pid for n, pid in where if n == node]
    while pids and time.monotonic() < deadline_s:
        pids = [pid for pid in pids if _process_alive(pid)]
        if pids:
            time.sleep(0.02)


def _process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def connect(config: RayConfig) -> bool:
    """Connect this process to Ray unless it is; True when it started (and so owns) the connection."""
    if ray.is_initialized():
        return False
    if config.address is not None:
        ray.init(address=config.address, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=config.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def default_ray_actor_count(config: RayConfig) -> int:
    """One actor per ``actor_num_cpus`` of the cluster's CPUs minus the learner's one, at least one."""
    cpus = _cluster_cpus()
    return max(1, math.floor((cpus - 1.0) / config.actor_num_cpus))


def RayRuntime(trainer: Trainer) -> AsyncLearner:  # noqa: N802 (a factory named like the runtime it builds)
    """The learner of ``trainer`` with a `RayFleet` (``runtime.mode: ray``)."""
    first_stream = first_stream_id(trainer.buffer.episode[: len(trainer.buffer)])
    fleet = RayFleet(trainer.config, trainer.agent.policy_state_dict(), trainer.normalizer,
                     sent=trainer.counters.env_steps, first_stream_id=first_stream)  # fmt: skip
    return AsyncLearner(trainer, fleet)


def _cluster_cpus() -> float:
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]  # ray leaves it unannotated
    return float(resources.get("CPU", 0.0))
