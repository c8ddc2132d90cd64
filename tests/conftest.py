"""Shared fixtures: the repository's configs and the default robot."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from robot_sac.normalization import ObservationNormalizer
from robot_sac.spec import RobotSpec, load_robot_spec
from tests.steal_reruns import pytest_runtest_protocol, pytest_terminal_summary  # noqa: F401  (hooks)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
ARM4_YAML = CONFIG_DIR / "robots" / "arm4.yaml"
TRAIN_YAML = CONFIG_DIR / "train" / "arm_reach_sim.yaml"
ENV_YAML = CONFIG_DIR / "envs" / "arm_reach.yaml"


def write_config(tmp_path: Path, data: dict[str, Any] | str, name: str = "config.yaml") -> Path:
    """Write a YAML config (a mapping, or text as is) under ``tmp_path`` and return its path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def arm4_spec() -> RobotSpec:
    """The desktop arm of configs/robots/arm4.yaml."""
    return load_robot_spec(ARM4_YAML)


@pytest.fixture
def warmed() -> ObservationNormalizer:
    """A 3-D normalizer with statistics of 100 seeded samples (mean ~[1, -2, 30])."""
    norm = ObservationNormalizer(3)
    norm.update(np.random.default_rng(1).normal([1.0, -2.0, 30.0], [0.5, 2.0, 10.0], size=(100, 3)))
    return norm


@pytest.fixture
def realtime_host() -> Iterator[bool]:
    """The test's own thread under SCHED_FIFO (below the emulator's) while it drives a serial control loop.

    The deploy loop and the hardware actor can run their loops this way (``realtime_priority``,
    `robot_sac.realtime`); a test that plays the host in pytest's thread does, so a busy 2-core
    machine does not make it miss the driver's 8 ms transaction budget. Only for tests whose
    thread does no training. The heap is frozen for the test (`robot_sac.gc_pauses`): a collector
    pause in pytest's big heap would stall the host loop as badly as a busy machine.
    Yields whether the OS granted it (refused: the test runs at normal priority).
    """
    import gc

    from robot_sac.realtime import realtime_scope

    # pytest's heap (torch, pybullet, every test module): a full collection takes ~100+ ms. Freeze
    # without collecting first (`gc_pauses.freeze_heap` collects, ~100 ms per serial test): garbage
    # frozen here is only kept until the test ends and `unfreeze` hands it back to the collector.
    gc.freeze()
    try:
        with realtime_scope(HOST_PRIORITY, "test host") as granted:
            yield granted
    finally:
        gc.unfreeze()


HOST_PRIORITY = 20
"""Below the emulator's 30: hardware is never preempted by its host."""
