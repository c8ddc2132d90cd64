"""The effort guard (stage 6, SAFETY.md #13): persistence, hysteresis, and relief without a jump."""

from __future__ import annotations

import numpy as np
import pytest

from robot_sac.errors import ConfigError
from robot_sac.safety import SafetyConfig
from tests.safety_helpers import ARM4, BOUND, DOF, TOL, make_filter

STALL = ARM4.max_effort_nm


def _strain(joint: int, fraction: float) -> np.ndarray:
    effort = np.zeros(DOF)
    effort[joint] = fraction * STALL[joint]
    return effort


def test_one_strained_sample_does_not_trip_but_persistent_strain_does() -> None:
    f = make_filter()
    home = ARM4.home_rad
    f.observe(home, _strain(1, 1.0))
    f.observe(home, np.zeros(DOF))  # a single spike: the persistence filter forgets it
    for _ in range(SafetyConfig().effort_persistence_steps - 1):
        f.observe(home, _strain(1, 0.95))
    assert not f.from_action(np.ones(DOF, dtype=np.float32)).clipped["effort"]  # one short of the trip
    f.observe(home, _strain(1, 0.95))  # the N-th sample in a row
    decision = f.from_action(np.ones(DOF, dtype=np.float32))
    assert decision.clipped["effort"] and f.counts.effort == 1
    assert decision.executed_action[0] == pytest.approx(1.0) and decision.executed_action[1] < 1.0


def test_a_relieved_joint_moves_toward_its_measured_position_within_the_bound() -> None:
    f = make_filter()
    commanded = f.from_action(np.ones(DOF, dtype=np.float32)).target_rad  # home + bound
    sagged = ARM4.home_rad.copy()
    sagged[1] -= 0.2  # the shoulder could not hold: it sits 0.2 rad below its target
    for _ in range(SafetyConfig().effort_persistence_steps):
        f.observe(sagged, _strain(1, 1.0))
    decision = f.from_action(np.ones(DOF, dtype=np.float32))
    # Toward the measured position, by at most one per-tick bound: the command never jumps.
    assert decision.target_rad[1] == pytest.approx(commanded[1] - BOUND[1], abs=TOL)
    assert decision.clipped["effort"]
    for _ in range(20):
        decision = f.from_action(np.ones(DOF, dtype=np.float32))
    assert decision.target_rad[1] == pytest.approx(sagged[1], abs=TOL)  # it stopped pushing


def test_hysteresis_releases_the_joint_only_below_the_release_share() -> None:
    f = make_filter()
    for _ in range(SafetyConfig().effort_persistence_steps):
        f.observe(ARM4.home_rad, _strain(2, 1.0))
    f.observe(ARM4.home_rad, _strain(2, 0.7))  # below the trip share, above the release share
    assert f.from_action(np.ones(DOF, dtype=np.float32)).clipped["effort"]
    f.observe(ARM4.home_rad, _strain(2, 0.5))
    assert not f.from_action(np.ones(DOF, dtype=np.float32)).clipped["effort"]


def test_the_guard_can_be_turned_off_and_its_thresholds_are_checked() -> None:
    f = make_filter(config=SafetyConfig(effort_guard=False))
    for _ in range(50):
        f.observe(ARM4.home_rad, _strain(0, 1.0))
    assert not f.from_action(np.ones(DOF, dtype=np.float32)).clipped["effort"]
    with pytest.raises(ConfigError, match="hysteresis"):
        SafetyConfig(effort_trip_fraction=0.5, effort_release_fraction=0.6)
