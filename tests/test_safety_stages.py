"""Safety filter stages: per-stage flags and counts, and what disabling one stage leaves in force."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from robot_sac.errors import ActionOutOfRange, NonFiniteAction
from robot_sac.safety import CLIP_STAGES, SafetyConfig, SafetyCounts, SafetyDecision
from robot_sac.spec import RobotSpec
from tests.safety_helpers import ARM4, BOUND, DOF, TOL, make_filter

# --- flags and counts ----------------------------------------------------------------------------


def _expect(decision: SafetyDecision, *stages: str) -> None:
    assert decision.clipped == {s: s in stages for s in CLIP_STAGES}


def _velocity_bound_spec() -> RobotSpec:
    """arm4 with shoulder and elbow allowed 0.04 rad per tick but only 1.5 rad/s * 0.02 s = 0.03 rad."""
    slow = _spec_with(1, max_step_rad=0.04)
    return dataclasses.replace(
        slow, joints=(*slow.joints[:2], dataclasses.replace(slow.joints[2], max_step_rad=0.04), *slow.joints[3:])
    )


def test_counts_increment_exactly_per_stage() -> None:
    f = make_filter(_velocity_bound_spec())
    d = f.from_action(np.zeros(DOF))
    _expect(d)
    assert f.counts == SafetyCounts()
    d = f.from_action(np.array([0.5, 0.0, 0.0, -0.5]))
    _expect(d)
    np.testing.assert_allclose(d.executed_action, [0.5, 0.0, 0.0, -0.5])
    # Saturated actions of exactly ±1 are not rate clips (their change equals max_step_rad).
    d = f.from_action(np.array([1.0, 0.0, 0.0, -1.0]))
    _expect(d)
    d = f.from_action(np.array([3.0, 0.0, 0.0, 0.0]))
    _expect(d, "action_space")
    np.testing.assert_allclose(d.executed_action, [1.0, 0.0, 0.0, 0.0])
    assert f.counts == SafetyCounts(action_space=1)
    # Shoulder: 0.04 rad requested, 1.5 rad/s * 0.02 s = 0.03 rad allowed.
    d = f.from_action(np.array([0.0, 1.0, 0.0, 0.0]))
    _expect(d, "velocity")
    np.testing.assert_allclose(d.executed_action, [0.0, 0.75, 0.0, 0.0], rtol=1e-6)
    assert f.counts == SafetyCounts(action_space=1, velocity=1)
    # Base: the rate bound (0.04) binds; its velocity bound is equal, so only the rate stage counts.
    d = f.from_target(f.last_command_rad + np.array([0.1, 0.0, 0.0, 0.0]))
    _expect(d, "rate")
    assert f.counts == SafetyCounts(action_space=1, velocity=1, rate=1)
    # Elbow: beyond both bounds; both stages count, once each, for one step.
    d = f.from_target(f.last_command_rad + np.array([0.0, 0.0, -0.1, 0.0]))
    _expect(d, "rate", "velocity")
    assert f.counts == SafetyCounts(action_space=1, velocity=2, rate=2)
    # Several joints clipped in one step count once per stage.
    d = f.from_target(f.last_command_rad + 0.5)
    _expect(d, "rate", "velocity")
    assert f.counts == SafetyCounts(action_space=1, velocity=3, rate=3)
    d = f.from_action(np.array([math.nan, 0.0, 0.0, 0.0]))
    d = f.from_action(np.array([1e9, 0.0, 0.0, 0.0]))
    d = f.from_target(np.full(DOF, math.inf))
    assert f.counts == SafetyCounts(action_space=1, velocity=3, rate=3, faults=3)
    # Soft limit: the base target far beyond its soft upper limit is clipped there, then rate limited.
    d = f.from_target(np.array([10.0, *f.last_command_rad[1:]]))
    _expect(d, "soft_limit", "rate")
    assert f.counts == SafetyCounts(action_space=1, velocity=3, rate=4, soft_limit=1, faults=3)
    counts = f.counts.as_dict()
    counts["rate"] = 0
    assert f.counts.rate == 4  # as_dict is a copy


def test_soft_limit_alone_is_flagged_when_the_move_fits_the_bound() -> None:
    start = ARM4.home_rad.copy()
    start[0] = ARM4.soft_upper_rad[0] - 0.01
    f = make_filter(start=start)
    d = f.from_action(np.array([1.0, 0.0, 0.0, 0.0]))
    _expect(d, "soft_limit")
    assert d.target_rad[0] == ARM4.soft_upper_rad[0]
    assert f.counts == SafetyCounts(soft_limit=1)
    np.testing.assert_allclose(d.executed_action[0], 0.01 / 0.04, rtol=1e-5)


# --- disabling stages ----------------------------------------------------------------------------


def _spec_with(joint: int, **changes: float) -> RobotSpec:
    joints = list(ARM4.joints)
    joints[joint] = dataclasses.replace(joints[joint], **changes)
    return dataclasses.replace(ARM4, joints=tuple(joints))


def test_disabling_soft_limits_lets_targets_into_the_margin_only() -> None:
    start = ARM4.home_rad.copy()
    start[0] = ARM4.soft_upper_rad[0]
    goal = start.copy()
    goal[0] = ARM4.upper_rad[0]
    on, off = make_filter(start=start), make_filter(config=SafetyConfig(soft_limits=False), start=start)
    d_on, d_off = on.from_target(goal), off.from_target(goal)
    _expect(d_on, "soft_limit")
    assert d_on.target_rad[0] == ARM4.soft_upper_rad[0]
    _expect(d_off, "rate")  # the rate stage still works
    assert d_off.target_rad[0] == pytest.approx(ARM4.soft_upper_rad[0] + 0.04)
    assert off.counts == SafetyCounts(rate=1)
    # A big move is still limited on every joint (arm4's velocity bounds equal its step bounds, so
    # only the rate stage counts).
    d = off.from_target(off.last_command_rad + 1.0)
    _expect(d, "rate")
    assert (np.abs(d.target_rad - d_off.target_rad) <= BOUND + TOL).all()


def test_disabling_the_rate_limit_leaves_the_velocity_limit() -> None:
    # Base joint with a fast servo: velocity bound 4 rad/s * 0.02 s = 0.08 rad > max_step_rad 0.04 rad.
    spec = _spec_with(0, max_velocity_rad_s=4.0)
    jump = np.array([1.0, 0.0, 0.0, 0.0])
    on, off = make_filter(spec), make_filter(spec, SafetyConfig(rate_limit=False))
    d_on, d_off = on.from_target(spec.home_rad + jump), off.from_target(spec.home_rad + jump)
    _expect(d_on, "rate")
    assert d_on.target_rad[0] == pytest.approx(0.04)
    _expect(d_off, "velocity")
    assert d_off.target_rad[0] == pytest.approx(0.08)
    assert off.counts == SafetyCounts(velocity=1)
    # Executed actions are in policy units (max_step_rad), so a rate-free move can exceed 1.
    assert d_off.executed_action[0] == pytest.approx(2.0)
    # The soft limits still hold.
    d = off.from_target(np.full(DOF, 100.0))
    assert (d.target_rad <= spec.soft_upper_rad).all()


def test_disabling_the_velocity_limit_leaves_the_rate_limit() -> None:
    jump = np.array([0.0, 1.0, 0.0, 0.0])  # shoulder: velocity bound 0.03 rad, rate bound 0.04 rad
    spec = _velocity_bound_spec()
    on, off = make_filter(spec), make_filter(spec, SafetyConfig(velocity_limit=False))
    d_on, d_off = on.from_target(spec.home_rad + jump), off.from_target(spec.home_rad + jump)
    _expect(d_on, "rate", "velocity")
    assert d_on.target_rad[1] - ARM4.home_rad[1] == pytest.approx(0.03)
    _expect(d_off, "rate")
    assert d_off.target_rad[1] - ARM4.home_rad[1] == pytest.approx(0.04)
    assert off.counts == SafetyCounts(rate=1)


def test_with_every_stage_disabled_the_finite_check_still_runs() -> None:
    config = SafetyConfig(soft_limits=False, rate_limit=False, velocity_limit=False)
    f = make_filter(config=config)
    goal = ARM4.home_rad + 0.5
    d = f.from_target(goal)
    _expect(d)
    np.testing.assert_array_equal(d.target_rad, goal)
    assert isinstance(f.from_target(np.full(DOF, math.nan)).fault, NonFiniteAction)
    assert isinstance(f.from_action(np.full(DOF, 1e9)).fault, ActionOutOfRange)
    d = f.from_action(np.full(DOF, 2.0))
    _expect(d, "action_space")  # the action space clip is not a stage that can be disabled
    np.testing.assert_allclose(d.target_rad, goal + ARM4.max_step_rad)
    assert f.counts == SafetyCounts(action_space=1, faults=2)


def test_max_abs_action_is_configurable() -> None:
    f = make_filter(config=SafetyConfig(max_abs_action=2.0))
    assert isinstance(f.from_action(np.array([2.5, 0.0, 0.0, 0.0])).fault, ActionOutOfRange)
    d = f.from_action(np.array([2.0, 0.0, 0.0, 0.0]))
    assert d.fault is None and d.clipped["action_space"]
