"""One contract suite for every `LearnerLink` and `ActorFleet` (robot_sac.runtime.protocols).

Each implementation is built by a fixture parameter: the local shared-memory one and the Ray one
(skipped when ``ray`` is not installed). The tests drive a link the way the actor loop does: they
call `wait_for_room` while waiting for news, since a remote link refreshes its cache on its calls.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch

from robot_sac.configs import TrainConfig, load_train_config
from robot_sac.runtime.channels import TransitionChunk
from robot_sac.runtime.local import LocalFleet, SharedMemoryLink
from robot_sac.runtime.protocols import ActorFleet, LearnerLink
from robot_sac.sac import SAC
from tests.test_runtime_local import PENDULUM, SMALL, _alive

T = TypeVar("T")


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray instance for the Ray tests of this module (start-up takes seconds); shut down after
    them, so later modules' no-orphan checks do not see its processes."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()


def _config(*extra: str) -> TrainConfig:
    return load_train_config(PENDULUM, (*SMALL, "runtime.actors=1", *extra))


def _chunk(steps: int = 5, actor_id: int = 0) -> TransitionChunk:
    rng = np.random.default_rng(steps)
    return TransitionChunk(
        actor_id=actor_id, stream_id=0, obs=rng.normal(size=(steps, 3)), action=np.zeros((steps, 1), np.float32),
        reward=np.ones(steps), next_obs=rng.normal(size=(steps, 3)), terminated=np.zeros(steps, bool),
        policy_version=np.zeros(steps, np.int64), safety_clipped=np.zeros(steps, bool),
        episode=np.zeros(steps, np.int64), env_steps=steps, created_s=time.monotonic(),
    )  # fmt: skip


def _policy(value: float = 0.0) -> dict[str, torch.Tensor]:
    return {"w": torch.full((4, 3), value), "b": torch.full((4,), value), "steps": torch.zeros(1, dtype=torch.int64)}


@dataclass
class Side:
    """A link under test and the learner's end of it."""

    link: LearnerLink
    fleet: ActorFleet
    request_stop: Callable[[], None]

    def drive(self) -> None:
        """What an actor does between steps (a remote link refreshes its cache on its calls)."""
        self.link.wait_for_room(0, 0.05)


def _eventually(side: Side, probe: Callable[[], T | None], timeout_s: float = 5.0) -> T:
    deadline = time.monotonic() + timeout_s
    while (found := probe()) is None or found is False:
        assert time.monotonic() < deadline, "the link never showed it"
        side.drive()
    return found


@pytest.fixture(params=["shared_memory", "ray"])
def side(request: pytest.FixtureRequest) -> Iterator[Side]:
    config = _config("runtime.queue_chunks=2")
    if request.param == "shared_memory":
        local = LocalFleet(config, _policy(), None)
        made = Side(SharedMemoryLink(local.channels, 0), local, local.channels.stop.set)
    else:
        ray = request.getfixturevalue("ray_session")
        from robot_sac.runtime.ray_fleet import RayFleet
        from robot_sac.runtime.ray_link import RayLink

        remote = RayFleet(config)
        made = Side(RayLink(remote.hub, 0, 0, call_timeout_s=5.0), remote,
                    lambda: ray.get(remote.hub.set_stop.remote()))  # fmt: skip
    yield made
    made.link.close()
    made.fleet.stop(2.0)


def _drain(side: Side) -> list[TransitionChunk]:
    received = []
    while (chunk := side.fleet.receive(0.2)) is not None:
        received.append(chunk)
    return received


def test_send_never_blocks_and_a_full_transport_drops_and_counts(side: Side) -> None:
    side.fleet.allow(1000)
    durations, results = [], []
    for _ in range(6):
        started = time.monotonic()
        results.append(side.link.send(_chunk(5)))
        durations.append(time.monotonic() - started)
    assert max(durations) < 0.05
    assert side.link.steps_sent() == 30  # sent or dropped, at once
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # let every chunk reach the transport before the learner takes any
        side.drive()
    received = _drain(side)
    assert len(received) == 2 and side.fleet.dropped_steps() == 20  # the transport holds 2 chunks
    assert all(0.0 < time.monotonic() - c.created_s < 5.0 for c in received)  # ages on the learner's clock
    assert results.count(False) <= 4  # False means dropped; a remote link may learn of a drop later
    assert side.fleet.stats()["runtime/dropped_chunks"] == 4


def test_poll_returns_a_newer_publication_once(side: Side) -> None:
    assert side.link.poll_weights(-1) is None  # nothing published
    side.fleet.publish(3, _policy(0.5), None)
    snapshot = _eventually(side, lambda: side.link.poll_weights(-1))
    assert snapshot.version == 3 and torch.equal(snapshot.policy["w"], torch.full((4, 3), 0.5))
    assert snapshot.policy["steps"].dtype == torch.int64 and snapshot.normalizer is None
    assert side.link.poll_weights(3) is None
    side.fleet.publish(4, _policy(1.5), None)
    newer = _eventually(side, lambda: side.link.poll_weights(3))
    assert newer.version == 4 and float(newer.policy["b"][0]) == 1.5


def test_a_non_finite_publication_is_rejected(side: Side) -> None:
    bad = _policy(0.0)
    bad["w"][1, 2] = float("nan")
    side.fleet.publish(1, bad, None)
    deadline = time.monotonic() + 0.6  # long enough for a remote link to have fetched it
    while time.monotonic() < deadline:
        assert side.link.poll_weights(-1) is None
        side.drive()
    side.fleet.publish(2, _policy(2.0), None)
    assert _eventually(side, lambda: side.link.poll_weights(-1)).version == 2


def test_the_throttle_sleeps_until_allowed(side: Side) -> None:
    started = time.monotonic()
    assert not side.link.wait_for_room(0, 0.2)  # nothing allowed yet
    assert 0.1 < time.monotonic() - started < 1.0  # asleep for about the timeout, not busy and not stuck
    side.fleet.allow(12)
    assert _eventually(side, lambda: side.link.wait_for_room(0, 0.2))
    side.link.send(_chunk(10))
    assert side.link.wait_for_room(1, 0.2)  # 10 sent + 1 pending < 12
    assert not side.link.wait_for_room(2, 0.2)


def test_stop_requested_follows_the_learner(side: Side) -> None:
    side.drive()
    assert not side.link.stop_requested() and not side.link.hold_requested()
    side.request_stop()
    _eventually(side, side.link.stop_requested)


def test_learner_age_grows_when_the_learner_stops_beating(side: Side) -> None:
    deadline = time.monotonic() + 0.8
    while time.monotonic() < deadline:  # a beating learner stays young
        side.fleet.beat()
        side.drive()
    assert side.link.learner_age_s() < 0.4
    time.sleep(0.6)
    side.drive()
    assert side.link.learner_age_s() > 0.5


def test_close_is_idempotent(side: Side) -> None:
    side.link.send(_chunk(3))
    side.link.close()
    side.link.close()


# --- ActorFleet ---------------------------------------------------------------------------------


@pytest.fixture(params=["local", "ray"])
def fleet(request: pytest.FixtureRequest) -> Iterator[tuple[ActorFleet, Callable[[], list[int]]]]:
    config = _config("runtime.chunk_steps=10")
    if request.param == "local":
        local = LocalFleet(config, _sac_policy(config), None)
        yield local, local.pool.pids
    else:
        request.getfixturevalue("ray_session")
        from robot_sac.runtime.ray_fleet import RayFleet

        remote = RayFleet(config)
        yield remote, remote.pids


def _sac_policy(config: TrainConfig) -> dict[str, torch.Tensor]:
    return SAC(3, 1, config.sac, torch.device("cpu")).policy_state_dict()


def test_a_fleet_starts_delivers_and_stops_without_orphans(
    fleet: tuple[ActorFleet, Callable[[], list[int]]], tmp_path: Path
) -> None:
    actors, pids = fleet
    config = _config()
    beating = threading.Event()

    def beat() -> None:  # the learner's heartbeat thread (an actor stops when the learner is silent)
        while not beating.wait(0.1):
            actors.beat()

    threading.Thread(target=beat, daemon=True).start()
    try:
        actors.publish(0, _sac_policy(config), None)
        actors.beat()
        actors.start()
        assert actors.size == 1 and actors.wait_ready(60.0) == 1
        actors.allow(40)
        deadline, chunk = time.monotonic() + 30, None
        while chunk is None and time.monotonic() < deadline:
            actors.supervise()
            chunk = actors.receive(0.2)
        assert chunk is not None and chunk.actor_id == 0 and chunk.env_steps == 10
        assert chunk.obs.shape == (10, 3) and np.isfinite(chunk.obs).all()
        started = pids()
        assert len(started) == 1
    finally:
        beating.set()
        actors.stop(5.0)
    assert not any(_alive(pid) for pid in started)
    actors.stop(5.0)  # idempotent


def test_robot_sac_imports_without_ray_and_the_ray_runtime_says_how_to_install_it() -> None:
    code = (
        "import sys\nsys.modules['ray'] = None\n"  # as if ray were not installed
        "import robot_sac.cli, robot_sac.runtime.local\n"
        "try:\n    import robot_sac.runtime.ray_fleet\nexcept ImportError as err:\n    print(err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "pip install -e '.[ray]'" in done.stdout
