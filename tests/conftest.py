"""Shared fixtures: the repository's configs and the default robot."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_sac.spec import RobotSpec, load_robot_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = REPO_ROOT / "configs"
ARM4_YAML = CONFIG_DIR / "robots" / "arm4.yaml"


@pytest.fixture(scope="session")
def arm4_spec() -> RobotSpec:
    """The desktop arm of configs/robots/arm4.yaml."""
    return load_robot_spec(ARM4_YAML)
