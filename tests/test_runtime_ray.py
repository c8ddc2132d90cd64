"""The Ray runtime on Pendulum-v1: two Ray actors feed a learner; a killed actor; an unreachable hub; the CLI."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from robot_sac.checkpoint import latest_checkpoint  # noqa: E402 (after the skip: these tests need ray)
from robot_sac.metrics import read_metrics  # noqa: E402
from robot_sac.runtime.actor import EPISODES_PER_STREAM  # noqa: E402
from robot_sac.runtime.ray_fleet import RayFleet, RayRuntime  # noqa: E402
from robot_sac.runtime.ray_link import RayLink, TransitionHub  # noqa: E402
from robot_sac.train_setup import start_run  # noqa: E402
from tests.conftest import REPO_ROOT  # noqa: E402
from tests.test_runtime_links import _chunk, ray_session  # noqa: E402, F401 (the session's Ray instance)
from tests.test_runtime_local import PENDULUM, SMALL, _alive, _config, assert_two_actors_fed_like_sync  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")
RAY = ("runtime.mode=ray", "runtime.ray.call_timeout_s=5")


def _streams(runtime: Any) -> set[int]:
    buffer = runtime.trainer.buffer
    return set((buffer.episode[: len(buffer)] // EPISODES_PER_STREAM).tolist())


def _processes(fleet: RayFleet) -> list[int]:
    assert fleet.hub_where is not None
    return [*fleet.pids(), fleet.hub_where[1]]


def test_two_ray_actors_feed_the_learner(tmp_path: Path) -> None:
    config = _config(600, *RAY)
    runtime = RayRuntime(start_run(config, tmp_path / "run", show_progress=False))
    assert isinstance(runtime.fleet, RayFleet)
    try:
        final = runtime.train(config.run.total_steps)
    finally:
        runtime.close()
    assert_two_actors_fed_like_sync(runtime, 600)
    assert math.isfinite(final["eval/return"])
    metrics = read_metrics(tmp_path / "run")
    assert np.isfinite(metrics["sac/critic_loss"][1]).all() and "runtime/queue_depth" in metrics
    assert latest_checkpoint(tmp_path / "run") is not None
    processes = _processes(runtime.fleet)
    assert len(processes) == 3 and not any(_alive(pid) for pid in processes)  # two actors and the hub


def test_a_killed_ray_actor_is_restarted_and_the_run_completes(tmp_path: Path) -> None:
    # No gradient updates (learning_starts beyond the run): the learner leaves a core to the restarting actor.
    config = _config(100_000, *RAY, "run.eval_interval_steps=2000", "sac.learning_starts=100000")
    runtime = RayRuntime(start_run(config, tmp_path / "run", show_progress=False))
    fleet = runtime.fleet
    assert isinstance(fleet, RayFleet)

    def kill_one() -> None:
        while runtime.counters.env_steps < 300:
            time.sleep(0.02)
        ray.kill(fleet.handles[0])

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:  # stop at the first evaluation after the restarted actor (stream 2) has delivered
        runtime.train(config.run.total_steps, stop_when=lambda _: 2 in _streams(runtime))
    finally:
        runtime.close()
    killer.join(1.0)
    assert fleet.restarts == 1 and 2 in _streams(runtime)
    assert runtime.counters.env_steps < 100_000  # it stopped on the restarted actor's data, not at the end
    assert not any(_alive(pid) for pid in _processes(fleet))


def test_an_unreachable_hub_never_blocks_the_actor() -> None:
    hub = ray.remote(TransitionHub).remote(4, 1)
    ray.get(hub.allow.remote(1000))
    link = RayLink(hub, 0, 0, call_timeout_s=1.0)
    assert link.wait_for_room(0, 0.5)
    ray.kill(hub)
    time.sleep(0.3)
    started = time.monotonic()
    for _ in range(30):
        link.send(_chunk(5))
    assert time.monotonic() - started < 0.2  # dropped and counted, never waited for
    assert link.steps_sent() == 150
    assert link.wait_for_room(849, 0.2)  # the cached allowance (1000) still has room for 150 + 849 steps
    started = time.monotonic()
    assert not link.wait_for_room(850, 0.2)  # out of it: the call fails, and the link sleeps out the timeout
    assert 0.15 < time.monotonic() - started < 1.0
    assert link.learner_age_s() > 0.3
    time.sleep(0.5)
    assert link.learner_age_s() > 0.8  # nothing heard: the learner ages; the actor stops at the heartbeat timeout
    link.close()
    link.close()


def test_cli_with_a_local_ray_instance_it_owns(tmp_path: Path) -> None:
    """`robot-sac train --set runtime.mode=ray`: starts Ray, trains, shuts Ray down with no process left."""
    run, ray_tmp = tmp_path / "run", Path(f"/tmp/rs-{os.getpid()}")
    args = ["--config", str(PENDULUM), "--steps", "150", "--out", str(run), "--no-progress"]
    for item in (*SMALL, *RAY, "runtime.actors=1", "run.eval_interval_steps=150", "runtime.ray.num_cpus=2"):
        args += ["--set", item]
    code = f"import sys\nfrom robot_sac.cli import main\nsys.exit(main(['train', *{args!r}]))\n"
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp)}  # its own session directory, to find its processes
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "runtime/queue_depth" in read_metrics(run) and latest_checkpoint(run) is not None
    deadline = time.monotonic() + 5
    while (left := _ray_processes_under(ray_tmp)) and time.monotonic() < deadline:
        time.sleep(0.1)
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert left == [], "a Ray process outlived the run"


def _ray_processes_under(root: Path) -> list[int]:
    """Live processes started with ``RAY_TMPDIR=root`` (Ray's servers and workers inherit the variable)."""
    marker, found = f"RAY_TMPDIR={root}".encode(), []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in environ.split(b"\0") and _alive(int(entry.name)):
                found.append(int(entry.name))
    return found
