"""The local asynchronous runtime on Pendulum-v1: two actors feed a learner; crashes and stops."""

from __future__ import annotations

import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_sac.checkpoint import latest_checkpoint, load_checkpoint
from robot_sac.cli import main
from robot_sac.configs import TrainConfig, load_train_config
from robot_sac.metrics import read_metrics
from robot_sac.runtime.actor import EPISODES_PER_STREAM
from robot_sac.runtime.learner import AsyncLearner
from robot_sac.runtime.local import LocalRuntime
from robot_sac.train_setup import start_run
from tests.conftest import CONFIG_DIR, REPO_ROOT
from tests.test_train import SMALL as TRAIN_SMALL

PENDULUM = CONFIG_DIR / "train" / "pendulum.yaml"
SMALL = (
    *TRAIN_SMALL,
    "runtime.mode=local",
    "runtime.actors=2",
    "runtime.chunk_steps=25",
    # Two chunks of lead: an actor reaches its first episode boundary (step 200) only after the learner
    # has ingested 150 steps and made its ~25 updates since step 100, so that boundary pulls published
    # weights. With 100, an actor that ran alone while the other one started (or the learner's first
    # updates were slow) could reach it before update 10 and both episodes ran on version 0 (a
    # clean-clone CI run).
    "runtime.max_actor_lead_steps=50",
    "runtime.publish_interval_updates=10",
)


def _config(steps: int, *extra: str) -> TrainConfig:
    overrides = (*SMALL, f"run.total_steps={steps}", f"run.eval_interval_steps={steps}",
                 f"run.checkpoint_interval_steps={steps}", *extra)  # fmt: skip
    return load_train_config(PENDULUM, overrides)


def _children(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is ``pid``, from /proc (multiprocessing's resource
    tracker, a helper that exits with its parent, is not counted)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                if b"resource_tracker" in (entry / "cmdline").read_bytes():
                    continue
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start_cli_learner(run: Path, *extra: str) -> subprocess.Popen[str]:
    """``robot-sac train`` of a long local Pendulum run in a subprocess (to be signalled)."""
    sets = [*SMALL, *extra]
    code = (
        "import sys\nfrom robot_sac.cli import main\n"
        f"sys.exit(main(['train', '--config', {str(PENDULUM)!r}, '--steps', '1000000', '--out', {str(run)!r},"
        f" '--no-progress'] + sum((['--set', s] for s in {sets!r}), [])))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(run: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while latest_checkpoint(run) is None and time.monotonic() < deadline:
        time.sleep(0.1)


def assert_two_actors_fed_like_sync(runtime: AsyncLearner, steps: int) -> None:
    """Both actors (streams 0 and 1) contributed every row, at the sync loop's update count, and each
    actor's policy versions never go back (its chunks arrive in order)."""
    c, buffer = runtime.counters, runtime.trainer.buffer
    assert c.env_steps == steps and len(buffer) == steps
    assert c.updates == steps - 100 + 1  # the sync loop's count: one per step from learning_starts on
    streams = buffer.episode[:steps] // EPISODES_PER_STREAM
    assert set(streams.tolist()) == {0, 1}
    versions = buffer.policy_version[:steps]
    assert versions.max() > 0  # later episodes act with published weights
    for stream in (0, 1):
        assert (np.diff(versions[streams == stream]) >= 0).all()


def test_two_actors_feed_the_learner(tmp_path: Path) -> None:
    others = set(_children(os.getpid()))  # e.g. an emulator another module's fixture keeps running
    config = _config(600, "env.normalization.enabled=true")
    runtime = LocalRuntime(start_run(config, tmp_path / "run", show_progress=False))
    try:
        final = runtime.train(config.run.total_steps)
    finally:
        runtime.close()
    assert_two_actors_fed_like_sync(runtime, 600)
    assert len(np.unique(runtime.trainer.buffer.policy_version[:600])) >= 2
    assert math.isfinite(final["eval/return"])
    metrics = read_metrics(tmp_path / "run")
    assert np.isfinite(metrics["sac/critic_loss"][1]).all() and np.isfinite(metrics["sac/actor_loss"][1]).all()
    assert "runtime/weight_staleness_updates" in metrics
    norm = runtime.trainer.normalizer
    assert norm is not None and norm.stats.count >= 600  # every actor's stats delta merged
    assert multiprocessing.active_children() == [] and set(_children(os.getpid())) <= others


def test_cli_uses_the_local_runtime(tmp_path: Path) -> None:
    args = ["train", "--config", str(PENDULUM), "--steps", "300", "--out", str(tmp_path / "run"), "--no-progress"]
    for item in (*SMALL, "run.eval_interval_steps=300"):
        args += ["--set", item]
    assert main(args) == 0
    assert "runtime/queue_depth" in read_metrics(tmp_path / "run")
    assert latest_checkpoint(tmp_path / "run") is not None
    assert multiprocessing.active_children() == []


def test_a_killed_actor_is_restarted_and_the_run_completes(tmp_path: Path) -> None:
    config = _config(3000)
    runtime = LocalRuntime(start_run(config, tmp_path / "run", show_progress=False))
    pids: list[int] = []

    def kill_one() -> None:
        while runtime.counters.env_steps < 300:
            time.sleep(0.02)
        pids.extend(p.pid for p in runtime.fleet.pool.processes if p is not None)
        os.kill(pids[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_one, daemon=True)
    killer.start()
    try:
        runtime.train(config.run.total_steps)
    finally:
        runtime.close()
    killer.join(1.0)
    assert runtime.fleet.pool.restarts == 1 and runtime.counters.env_steps >= 3000
    streams = set((runtime.trainer.buffer.episode[:3000] // EPISODES_PER_STREAM).tolist())
    assert 2 in streams  # the restarted actor (a new stream id) contributed
    assert multiprocessing.active_children() == []
    assert not any(_alive(pid) for pid in pids)


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGINT])
def test_learner_death_or_interrupt_leaves_no_actor_behind(tmp_path: Path, signal_number: int) -> None:
    """SIGKILL: the actors see the heartbeat stop and exit; SIGINT: the learner stops them and saves."""
    run = tmp_path / "run"
    learner = _start_cli_learner(run, "run.checkpoint_interval_steps=500", "runtime.heartbeat_timeout_s=1.5")
    try:
        _wait_for_checkpoint(run)
        actors = _children(learner.pid)
        assert len(actors) >= 2, "the learner should have started its actors"
        learner.send_signal(signal_number)
        killed_at = time.monotonic()
        deadline = killed_at + 10
        while any(_alive(p) for p in actors) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(_alive(p) for p in actors), "an actor outlived the learner"
        assert time.monotonic() - killed_at < 5.0
        learner.wait(10)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    found = latest_checkpoint(run)
    assert found is not None and "agent" in load_checkpoint(found)


def test_resume_after_sigint_continues_with_identical_weights(tmp_path: Path) -> None:
    """SIGINT writes a final checkpoint at the step reached; a resumed local run starts from exactly it."""
    run = tmp_path / "run"
    learner = _start_cli_learner(run, "run.checkpoint_interval_steps=400")
    try:
        _wait_for_checkpoint(run)
        time.sleep(1.0)  # well past a checkpoint boundary
        interval_checkpoint = latest_checkpoint(run)
        assert interval_checkpoint is not None
        interval_step = int(load_checkpoint(interval_checkpoint)["counters"]["env_steps"])
        learner.send_signal(signal.SIGINT)
        learner.wait(15)
    finally:
        if learner.poll() is None:
            learner.kill()
            learner.wait()
    final = latest_checkpoint(run)
    assert final is not None
    saved = load_checkpoint(final)
    stopped_at = int(saved["counters"]["env_steps"])
    assert stopped_at > interval_step, "the final checkpoint is the interrupt's, at the step reached"
    from robot_sac.train_setup import load_run_config, resume_run
    from tests.test_train import _flat_tensors

    config = load_run_config(run, (f"run.total_steps={stopped_at + 200}",))
    runtime = LocalRuntime(resume_run(run, config, show_progress=False))
    try:
        restored = _flat_tensors(runtime.trainer.agent.state_dict())
        for name, tensor in _flat_tensors(saved["agent"]).items():
            assert torch.equal(tensor, restored[name]), name
        assert len(runtime.trainer.buffer) == stopped_at
        runtime.train(config.run.total_steps)
    finally:
        runtime.close()
    assert runtime.counters.env_steps >= stopped_at + 200
    assert multiprocessing.active_children() == []
