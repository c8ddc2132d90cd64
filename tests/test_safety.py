"""SafetyFilter on the arm4 spec (SAFETY.md rows 9-11): finite check, clip, soft limits, rate and speed.

The property tests feed arbitrary float64 vectors (NaN, ±inf, 1e308, -0.0, subnormals) and check the
filter's contract: a fault holds the last command and changes nothing, anything else is a finite
target inside the soft limits that moves at most ``min(max_step_rad, max_velocity_rad_s * dt)``.
Comparisons allow 1e-12 rad: ``(last + bound) - last`` can exceed ``bound`` by an ulp.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robot_sac.errors import ActionOutOfRange, EnvStateError, NonFiniteAction, NonFiniteObservation
from robot_sac.safety import CLIP_STAGES, SafetyCounts, SafetyDecision, SafetyFilter
from tests.safety_helpers import ARM4, BOUND, DOF, TOL, make_filter

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)

SPECIALS = [
    math.nan,
    -math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1e308,
    1.7976931348623157e308,
    0.0,
    -0.0,
    5e-324,
    -5e-324,
    2.2250738585072014e-308,
    1.0,
    -1.0,
    1.0000000000000002,
    100.0,
    -100.0,
    100.00000000000001,
    1e9,
]

any_float = st.floats(allow_nan=True, allow_infinity=True, width=64)
vectors = st.one_of(
    arrays(np.float64, DOF, elements=any_float),
    arrays(
        np.float64,
        DOF,
        elements=st.one_of(
            st.sampled_from(SPECIALS),
            st.floats(-2.0, 2.0),
            st.floats(-200.0, 200.0),
            st.floats(-4.0, 4.0),  # absolute targets around the joint ranges
        ),
    ),
)


def _between(lower: np.ndarray, upper: np.ndarray) -> st.SearchStrategy[np.ndarray]:
    # Clipped: lower + 1.0 * (upper - lower) can round an ulp past upper.
    fractions = st.tuples(*[st.floats(0.0, 1.0)] * DOF)
    return fractions.map(lambda f: np.clip(lower + np.array(f) * (upper - lower), lower, upper))


in_soft_limits = _between(ARM4.soft_lower_rad, ARM4.soft_upper_rad)
in_hard_limits = _between(ARM4.lower_rad, ARM4.upper_rad)


def _check_decision(f: SafetyFilter, decision: SafetyDecision, previous: np.ndarray, counts: SafetyCounts) -> None:
    """The filter's contract for one command, given the command before it was inside the soft limits."""
    assert decision.target_rad.shape == (DOF,) and decision.target_rad.dtype == np.float64
    assert decision.executed_action.shape == (DOF,) and decision.executed_action.dtype == np.float32
    assert np.isfinite(decision.executed_action).all()
    assert (np.abs(decision.executed_action) <= 1.0).all()
    assert set(decision.clipped) == set(CLIP_STAGES)
    if decision.fault is not None:
        assert isinstance(decision.fault, NonFiniteAction | ActionOutOfRange)
        assert np.array_equal(decision.target_rad, previous)  # hold
        assert np.array_equal(f.last_command_rad, previous)  # state unchanged
        assert not decision.any_clipped
        assert (decision.executed_action == 0).all()
        assert f.counts == dataclasses.replace(counts, faults=counts.faults + 1)
        return
    target = decision.target_rad
    assert np.isfinite(target).all()
    assert (ARM4.soft_lower_rad <= target).all() and (target <= ARM4.soft_upper_rad).all()
    assert (np.abs(target - previous) <= BOUND + TOL).all()
    assert np.array_equal(f.last_command_rad, target)
    np.testing.assert_allclose(decision.executed_action, (target - previous) / ARM4.max_step_rad, rtol=1e-6, atol=1e-12)
    assert f.counts.faults == counts.faults


@PROPERTY
@given(action=vectors, start=in_soft_limits)
def test_from_action_holds_or_stays_inside_limits(action: np.ndarray, start: np.ndarray) -> None:
    f = make_filter(start=start)
    previous, counts = f.last_command_rad, dataclasses.replace(f.counts)
    decision = f.from_action(action)
    _check_decision(f, decision, previous, counts)
    finite = np.isfinite(action).all()
    in_range = finite and (np.abs(action) <= f.config.max_abs_action).all()
    if not finite:
        assert isinstance(decision.fault, NonFiniteAction)
    elif not in_range:
        assert isinstance(decision.fault, ActionOutOfRange)
    else:
        assert decision.fault is None
        assert decision.clipped["action_space"] == bool((np.abs(action) > 1.0).any())


@PROPERTY
@given(target=vectors, start=in_soft_limits)
def test_from_target_holds_or_stays_inside_limits(target: np.ndarray, start: np.ndarray) -> None:
    f = make_filter(start=start)
    previous, counts = f.last_command_rad, dataclasses.replace(f.counts)
    decision = f.from_target(target)
    _check_decision(f, decision, previous, counts)
    if np.isfinite(target).all():
        assert decision.fault is None  # a finite absolute target is clipped, never a fault
        assert not decision.clipped["action_space"]
    else:
        assert isinstance(decision.fault, NonFiniteAction)


@PROPERTY
@given(steps=st.lists(st.tuples(st.sampled_from(["action", "target"]), vectors), min_size=1, max_size=40))
def test_any_command_sequence_keeps_every_command_within_limits(steps: list[tuple[str, np.ndarray]]) -> None:
    f = make_filter()
    for kind, value in steps:
        previous, counts = f.last_command_rad, dataclasses.replace(f.counts)
        decision = f.from_action(value) if kind == "action" else f.from_target(value)
        _check_decision(f, decision, previous, counts)
        command = f.last_command_rad
        assert (ARM4.soft_lower_rad <= command).all() and (command <= ARM4.soft_upper_rad).all()
        # Peak commanded speed never exceeds the joint's velocity limit.
        assert (np.abs(command - previous) / ARM4.dt_s <= ARM4.max_velocity_rad_s + 1e-9).all()


@PROPERTY
@given(measured=in_hard_limits, command=vectors, kind=st.sampled_from(["action", "target"]))
def test_first_command_after_reset_is_within_one_bound_of_measured(
    measured: np.ndarray, command: np.ndarray, kind: str
) -> None:
    f = SafetyFilter(ARM4)
    f.reset(measured)
    assert np.array_equal(f.last_command_rad, measured)
    decision = f.from_action(command) if kind == "action" else f.from_target(command)
    assert (np.abs(decision.target_rad - measured) <= BOUND + TOL).all()


# --- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fault"),
    [
        (math.nan, NonFiniteAction),
        (-math.nan, NonFiniteAction),
        (math.inf, NonFiniteAction),
        (-math.inf, NonFiniteAction),
        (1e9, ActionOutOfRange),
        (-1e9, ActionOutOfRange),
        (1e308, ActionOutOfRange),
        (100.00000000000001, ActionOutOfRange),
    ],
    ids=["nan", "-nan", "inf", "-inf", "1e9", "-1e9", "1e308", "just_beyond_max_abs"],
)
@pytest.mark.parametrize("joint", range(DOF))
def test_bad_action_entry_faults_and_holds(value: float, fault: type[Exception], joint: int) -> None:
    f = make_filter()
    f.from_action(np.array([0.5, -0.5, 0.5, -0.5]))
    held = f.last_command_rad
    action = np.zeros(DOF)
    action[joint] = value
    decision = f.from_action(action)
    assert type(decision.fault) is fault
    assert ARM4.joint_names[joint] in str(decision.fault)
    assert "holding the last safe target" in str(decision.fault)
    assert np.array_equal(decision.target_rad, held)
    assert np.array_equal(f.last_command_rad, held)
    assert (decision.executed_action == 0).all()
    assert f.counts == SafetyCounts(faults=1)
    # The filter keeps working after a fault.
    assert f.from_action(np.zeros(DOF)).fault is None
    assert np.array_equal(f.last_command_rad, held)


def test_negative_nan_has_its_sign_bit_set() -> None:
    assert math.copysign(1.0, -math.nan) == -1.0  # the -nan case above really is a negative NaN


@pytest.mark.parametrize("value", [math.nan, -math.nan, math.inf, -math.inf])
def test_non_finite_target_faults_and_holds(value: float) -> None:
    f = make_filter()
    target = ARM4.home_rad.copy()
    target[2] = value
    decision = f.from_target(target)
    assert type(decision.fault) is NonFiniteAction
    assert np.array_equal(decision.target_rad, ARM4.home_rad)
    assert f.counts == SafetyCounts(faults=1)


def test_huge_finite_target_is_clipped_not_a_fault() -> None:
    f = make_filter()
    decision = f.from_target(np.full(DOF, 1e308))
    assert decision.fault is None
    assert decision.clipped["soft_limit"]
    np.testing.assert_allclose(decision.target_rad, ARM4.home_rad + BOUND, rtol=0, atol=TOL)


def test_exactly_max_abs_action_is_clipped_not_a_fault() -> None:
    f = make_filter()
    decision = f.from_action(np.array([100.0, -100.0, 0.0, 0.0]))
    assert decision.fault is None
    assert decision.clipped["action_space"]


# --- step response (SAFETY.md row 11) -----------------------------------------------------------


def test_step_input_reaches_far_target_in_ceil_distance_over_bound_steps() -> None:
    goal = np.array([ARM4.soft_upper_rad[0], ARM4.soft_upper_rad[1], ARM4.soft_lower_rad[2], ARM4.soft_lower_rad[3]])
    ratio = np.abs(goal - ARM4.home_rad) / BOUND
    # Keep clear of integer ratios, where float rounding of the running sum could shift the count by one.
    assert (np.abs(ratio - np.round(ratio)) > 0.05).all(), ratio
    expected = np.ceil(ratio).astype(int)
    assert expected.tolist() == [69, 85, 41, 61]
    f = make_filter()
    commands = [f.last_command_rad]
    for _ in range(expected.max() + 5):
        decision = f.from_target(goal)
        assert decision.fault is None
        commands.append(decision.target_rad)
    path = np.array(commands)
    deltas = np.abs(np.diff(path, axis=0))
    assert (deltas <= BOUND + TOL).all()
    assert (deltas / ARM4.dt_s <= ARM4.max_velocity_rad_s + 1e-9).all()
    for j in range(DOF):
        reached = np.flatnonzero(path[:, j] == goal[j])
        assert reached[0] == expected[j], ARM4.joint_names[j]
        assert (path[expected[j] :, j] == goal[j]).all()  # and it stays there
        # Every step before the last one moves by the full bound.
        np.testing.assert_allclose(deltas[: expected[j] - 1, j], BOUND[j], rtol=0, atol=1e-9)


def test_reset_from_a_far_pose_then_home_moves_at_bounded_speed() -> None:
    f = SafetyFilter(ARM4)
    far = ARM4.soft_lower_rad + 0.01
    f.reset(far)
    previous = far
    for _ in range(200):
        target = f.from_target(ARM4.home_rad).target_rad
        assert (np.abs(target - previous) <= BOUND + TOL).all()
        previous = target
    np.testing.assert_array_equal(previous, ARM4.home_rad)


def test_reset_clamps_measured_position_into_the_hard_limits() -> None:
    f = SafetyFilter(ARM4)
    measured = ARM4.upper_rad + 0.02
    f.reset(measured)
    np.testing.assert_array_equal(f.last_command_rad, ARM4.upper_rad)
    decision = f.from_action(np.ones(DOF))
    # Outside the soft limits the command moves back toward them, no faster than the bound.
    assert (decision.target_rad < ARM4.upper_rad).all()
    assert (np.abs(decision.target_rad - ARM4.upper_rad) <= BOUND + TOL).all()


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_reset_refuses_a_non_finite_measurement(value: float) -> None:
    bad = ARM4.home_rad.copy()
    bad[1] = value
    f = SafetyFilter(ARM4)
    with pytest.raises(NonFiniteObservation, match="cannot seed the safety filter"):
        f.reset(bad)
    with pytest.raises(EnvStateError):
        f.last_command_rad  # noqa: B018 - the property raises


def test_reset_with_a_wrong_shape_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="shape"):
        SafetyFilter(ARM4).reset(np.zeros(ARM4.dof + 1))


def test_reset_reseeds_after_use() -> None:
    f = make_filter()
    for _ in range(5):
        f.from_action(np.ones(DOF))
    f.reset(ARM4.home_rad)
    np.testing.assert_array_equal(f.last_command_rad, ARM4.home_rad)


# --- misuse --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(DOF - 1,), (DOF + 1,), (1, DOF), (), (DOF, 1)])
@pytest.mark.parametrize("method", ["from_action", "from_target"])
def test_wrong_shape_raises_value_error(shape: tuple[int, ...], method: str) -> None:
    f = make_filter()
    with pytest.raises(ValueError, match=r"expected shape \(4,\)"):
        getattr(f, method)(np.zeros(shape))
    assert f.counts == SafetyCounts()
    np.testing.assert_array_equal(f.last_command_rad, ARM4.home_rad)


@pytest.mark.parametrize(
    "use",
    [
        lambda f: f.from_action(np.zeros(DOF)),
        lambda f: f.from_target(ARM4.home_rad),
        lambda f: f.from_action(np.full(DOF, math.nan)),
        lambda f: f.hold(),
        lambda f: f.last_command_rad,
    ],
    ids=["from_action", "from_target", "from_action_nan", "hold", "last_command_rad"],
)
def test_use_before_reset_raises_env_state_error(use: object) -> None:
    f = SafetyFilter(ARM4)
    with pytest.raises(EnvStateError, match="before reset"):
        use(f)  # type: ignore[operator]


def test_hold_recommands_the_last_target() -> None:
    f = make_filter()
    f.from_action(np.full(DOF, 0.3))
    d = f.hold()
    np.testing.assert_array_equal(d.target_rad, f.last_command_rad)
    assert d.fault is None and not d.any_clipped
    assert (d.executed_action == 0).all()


def test_decision_arrays_do_not_alias_filter_state() -> None:
    f = make_filter()
    d = f.from_action(np.full(DOF, 0.5))
    d.target_rad[:] = 99.0
    f.last_command_rad[:] = 99.0
    assert (np.abs(f.last_command_rad) < 3.0).all()
