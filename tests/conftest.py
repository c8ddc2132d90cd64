"""Shared fixtures: the repository's configs and the default robot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from robot_sac.normalization import ObservationNormalizer
from robot_sac.spec import RobotSpec, load_robot_spec

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
