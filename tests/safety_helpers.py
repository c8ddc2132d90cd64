"""Shared fixtures of the safety-filter test modules: the arm4 spec, its per-tick bounds, a seeded filter."""

from __future__ import annotations

import numpy as np

from robot_sac.safety import SafetyConfig, SafetyFilter
from robot_sac.spec import RobotSpec, load_robot_spec
from tests.conftest import ARM4_YAML

ARM4 = load_robot_spec(ARM4_YAML)
DOF = ARM4.dof
BOUND = np.minimum(ARM4.max_step_rad, ARM4.max_velocity_rad_s * ARM4.dt_s)
"""Per-joint largest change per tick: arm4 gives [0.04, 0.03, 0.03, 0.04] rad."""
TOL = 1e-12


def make_filter(
    spec: RobotSpec = ARM4, config: SafetyConfig | None = None, start: np.ndarray | None = None
) -> SafetyFilter:
    """A filter seeded at ``start`` (home by default)."""
    f = SafetyFilter(spec, config)
    f.reset(spec.home_rad if start is None else start)
    return f
