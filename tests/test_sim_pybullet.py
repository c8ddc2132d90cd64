"""The PyBullet simulator: URDF vs. robot YAML, FK parity, determinism, safety, servo behavior, rendering."""

from __future__ import annotations

import dataclasses
import itertools
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import numpy as np
import pytest

pb = pytest.importorskip("pybullet")

from robot_sac.configs import RandomizationConfig, SimConfig  # noqa: E402
from robot_sac.errors import ConfigError, EnvStateError, LimitExceeded, NonFiniteAction, NonFiniteObservation  # noqa: E402
from robot_sac.kinematics import ForwardKinematics  # noqa: E402
from robot_sac.spec import RobotSpec  # noqa: E402
from sim import assets_dir, resolve_urdf  # noqa: E402
from sim.pybullet_backend import MAX_MARKERS, PyBulletBackend  # noqa: E402
from sim.randomization import (  # noqa: E402
    NOMINAL_JOINT_DAMPING_NM_S_RAD,
    NOMINAL_LATERAL_FRICTION,
    DynamicsSample,
    nominal,
    sample_dynamics,
)

URDF = assets_dir() / "arm4.urdf"
# Physical no-load speeds at 12 V: XL430-W250 61 rev/min, XM430-W350 46 rev/min.
NO_LOAD_SPEED_RAD_S = {"base_yaw": 6.4, "shoulder_pitch": 4.8, "elbow_pitch": 4.8, "wrist_pitch": 6.4}
RANDOMIZED = SimConfig(randomization=RandomizationConfig(enabled=True))


@pytest.fixture
def make(arm4_spec: RobotSpec) -> Iterator:
    """Factory of connected backends, all closed at teardown."""
    made: list[PyBulletBackend] = []

    def factory(config: SimConfig | None = None) -> PyBulletBackend:
        backend = PyBulletBackend(arm4_spec, config or SimConfig())
        backend.connect()
        made.append(backend)
        return backend

    yield factory
    for backend in made:
        backend.close()


def random_walk(spec: RobotSpec, seed: int, steps: int) -> np.ndarray:
    """Targets a safety filter could emit: steps of at most max_step_rad inside the soft limits, (steps, dof)."""
    rng = np.random.default_rng(seed)
    target = spec.home_rad.copy()
    rows = []
    for _ in range(steps):
        target = np.clip(target + rng.uniform(-1, 1, spec.dof) * spec.max_step_rad, spec.soft_lower_rad,
                         spec.soft_upper_rad)  # fmt: skip
        rows.append(target)
    return np.array(rows)


def as_rows(states: list) -> np.ndarray:
    """Rows of (position, velocity, effort, stamp) per state, shape (len(states), 3 dof + 1)."""
    return np.array([np.concatenate([s.position_rad, s.velocity_rad_s, s.effort_nm, [s.stamp_s]]) for s in states])


def trajectory(backend: PyBulletBackend, seed: int | None, targets: np.ndarray) -> np.ndarray:
    """Reset, apply ``targets``; `as_rows` of the 1 + steps states."""
    return as_rows([backend.reset(seed)] + [backend.step(t) for t in targets])


# --- the URDF agrees with configs/robots/arm4.yaml ------------------------------------------------


def _xyz(element: ET.Element | None, attr: str = "xyz") -> tuple[float, ...]:
    assert element is not None
    return tuple(float(v) for v in element.attrib[attr].split())


def _attr(element: ET.Element, path: str, attr: str) -> str:
    """The attribute ``attr`` of the sub-element at ``path`` (which must exist)."""
    found = element.find(path)
    assert found is not None, path
    return found.attrib[attr]


def test_urdf_joints_equal_the_yaml(arm4_spec: RobotSpec) -> None:
    assert resolve_urdf(SimConfig().urdf) == URDF and resolve_urdf("a/b.urdf").as_posix() == "a/b.urdf"
    robot = ET.parse(URDF).getroot()
    revolute = [j for j in robot.iter("joint") if j.attrib["type"] == "revolute"]
    assert tuple(j.attrib["name"] for j in revolute) == arm4_spec.joint_names
    for joint, spec in zip(revolute, arm4_spec.joints, strict=True):
        origin, limit, dynamics = joint.find("origin"), joint.find("limit"), joint.find("dynamics")
        assert origin is not None and limit is not None and dynamics is not None
        assert "rpy" not in origin.attrib
        assert _xyz(origin) == spec.origin_xyz_m
        assert _xyz(joint.find("axis")) == spec.axis_xyz
        assert float(limit.attrib["lower"]) == spec.lower_rad
        assert float(limit.attrib["upper"]) == spec.upper_rad
        assert float(limit.attrib["effort"]) == spec.max_effort_nm
        assert float(limit.attrib["velocity"]) == NO_LOAD_SPEED_RAD_S[spec.name]
        assert float(dynamics.attrib["damping"]) == NOMINAL_JOINT_DAMPING_NM_S_RAD
    # the chain: each revolute joint's child is the next one's parent, ending in the fixed tool link
    for parent, child in itertools.pairwise(revolute):
        assert _attr(child, "parent", "link") == _attr(parent, "child", "link")
    tool = next(j for j in robot.iter("joint") if _attr(j, "child", "link") == "tool_link")
    assert tool.attrib["type"] == "fixed"
    assert _attr(tool, "parent", "link") == _attr(revolute[-1], "child", "link")
    assert _xyz(tool.find("origin")) == arm4_spec.tool_offset_m


def test_urdf_inertias_match_their_shapes() -> None:
    """Each moving link's inertia is that of its collision box/cylinder with its mass, about its centre."""
    expected_mass_kg = {"turret_link": 0.098, "upper_arm_link": 0.139, "forearm_link": 0.133, "wrist_link": 0.143}
    robot = ET.parse(URDF).getroot()
    for link in robot.iter("link"):
        name = link.attrib["name"]
        if name not in expected_mass_kg:
            continue
        inertial, collision = link.find("inertial"), link.find("collision")
        assert inertial is not None and collision is not None
        m = float(_attr(inertial, "mass", "value"))
        assert m == expected_mass_kg[name]
        assert _xyz(inertial.find("origin")) == _xyz(collision.find("origin"))
        geometry = collision.find("geometry")
        assert geometry is not None
        box, cylinder = geometry.find("box"), geometry.find("cylinder")
        if box is not None:
            a, b, c = _xyz(box, "size")
            want = (m * (b * b + c * c) / 12, m * (a * a + c * c) / 12, m * (a * a + b * b) / 12)
        else:
            assert cylinder is not None
            r, h = float(cylinder.attrib["radius"]), float(cylinder.attrib["length"])
            want = (m * (3 * r * r + h * h) / 12, m * (3 * r * r + h * h) / 12, m * r * r / 2)
        inertia = inertial.find("inertia")
        assert inertia is not None
        got = tuple(float(inertia.attrib[k]) for k in ("ixx", "iyy", "izz"))
        np.testing.assert_allclose(got, want, rtol=1e-3, err_msg=name)
        assert all(float(inertia.attrib[k]) == 0.0 for k in ("ixy", "ixz", "iyz"))
        contact = link.find("contact/lateral_friction")
        assert contact is not None and float(contact.attrib["value"]) == NOMINAL_LATERAL_FRICTION


def test_numpy_fk_equals_pybullet_tool_link(make, arm4_spec: RobotSpec) -> None:
    backend = make()
    backend.reset(0)
    fk = ForwardKinematics(arm4_spec)
    rng = np.random.default_rng(0)
    for q in rng.uniform(arm4_spec.lower_rad, arm4_spec.upper_rad, size=(20, arm4_spec.dof)):
        backend.set_joint_positions_rad(q)
        np.testing.assert_allclose(backend.end_effector_link_m(), fk.end_effector_m(q), rtol=0, atol=1e-6)


# --- lifecycle and isolation ----------------------------------------------------------------------


def test_step_needs_a_reset_and_close_ends_the_episode(make, arm4_spec: RobotSpec) -> None:
    """The shared contract suite covers the rest of the lifecycle (before connect, idempotent close)."""
    backend = make()
    with pytest.raises(EnvStateError):
        backend.step(arm4_spec.home_rad)  # connected but never reset
    assert backend.reset(0).stamp_s == 0.0
    backend.close()
    with pytest.raises(EnvStateError):
        backend.reset(0)


def test_closing_one_backend_does_not_touch_another(arm4_spec: RobotSpec, make) -> None:
    first = PyBulletBackend(arm4_spec, SimConfig())
    first.connect()
    first.close()
    second = make()  # PyBullet may hand out the freed client id again
    second.reset(0)
    first.close()
    assert np.isfinite(second.step(arm4_spec.home_rad).position_rad).all()


def test_same_seed_same_trajectory_across_resets_and_instances(make, arm4_spec: RobotSpec) -> None:
    targets = random_walk(arm4_spec, 1, 50)
    for config in (SimConfig(), RANDOMIZED):
        a, b = make(config), make(config)
        reference = trajectory(a, 11, targets)
        trajectory(a, 12, targets[::-1])  # a different episode in between
        assert np.array_equal(trajectory(a, 11, targets), reference)
        assert np.array_equal(trajectory(b, 11, targets), reference)
        assert np.all(np.diff(reference[:, -1]) > 0)
        if config.randomization.enabled:
            assert not np.array_equal(trajectory(b, 12, targets), reference)


def test_unseeded_reset_continues_the_generator(make) -> None:
    a, b = make(RANDOMIZED), make(RANDOMIZED)
    for backend in (a, b):
        backend.reset(5)
    first = a.dynamics
    a.reset(None)
    b.reset(None)
    assert a.dynamics == b.dynamics != first


def test_interleaved_backends_match_solo_runs(make, arm4_spec: RobotSpec) -> None:
    t1, t2 = random_walk(arm4_spec, 2, 40), random_walk(arm4_spec, 3, 40)
    solo1, solo2 = trajectory(make(RANDOMIZED), 21, t1), trajectory(make(RANDOMIZED), 22, t2)
    a, b = make(RANDOMIZED), make(RANDOMIZED)
    rows_a, rows_b = [a.reset(21)], [b.reset(22)]
    for x, y in zip(t1, t2, strict=True):
        rows_a.append(a.step(x))
        rows_b.append(b.step(y))
    assert np.array_equal(as_rows(rows_a), solo1) and np.array_equal(as_rows(rows_b), solo2)


# --- the second safety layer ----------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "error"), [(np.nan, NonFiniteAction), (np.inf, NonFiniteAction),
                                            (1e9, LimitExceeded)])  # fmt: skip
def test_bad_target_is_refused_and_the_simulator_survives(make, arm4_spec: RobotSpec, bad: float, error: type) -> None:
    backend = make()
    targets = random_walk(arm4_spec, 4, 10)
    reference = trajectory(make(), 0, targets)
    backend.reset(0)
    before = backend.step(arm4_spec.home_rad)
    poisoned = arm4_spec.home_rad.copy()
    poisoned[1] = bad
    with pytest.raises(error):
        backend.step(poisoned)
    after = backend.step(arm4_spec.home_rad)
    assert np.isfinite(after.position_rad).all() and np.isfinite(after.velocity_rad_s).all()
    np.testing.assert_allclose(after.position_rad, before.position_rad, atol=1e-3)
    assert after.stamp_s > before.stamp_s
    assert np.array_equal(trajectory(backend, 0, targets), reference)


def test_diverged_physics_raises_and_reset_rebuilds_a_clean_world(make, arm4_spec: RobotSpec) -> None:
    backend = make()
    targets = random_walk(arm4_spec, 5, 10)
    reference = trajectory(make(), 0, targets)
    backend.reset(0)
    pb.resetJointState(backend.body_id, 1, 0.0, float("nan"), physicsClientId=backend.physics_client_id)
    with pytest.raises(NonFiniteObservation):
        backend.step(arm4_spec.home_rad)
    with pytest.raises(EnvStateError):
        backend.step(arm4_spec.home_rad)
    assert np.array_equal(trajectory(backend, 0, targets), reference)


# --- servo behavior -------------------------------------------------------------------------------


def test_a_max_step_target_is_reached_within_a_few_periods(make, arm4_spec: RobotSpec) -> None:
    backend = make()
    for sign in (1.0, -1.0):
        backend.reset(0)
        target = arm4_spec.home_rad + sign * arm4_spec.max_step_rad
        errors = [np.abs(backend.step(target).position_rad - target).max() for _ in range(3)]
        assert errors[0] < 0.5 * arm4_spec.max_step_rad.min()
        assert errors[-1] < 1e-3


def test_holding_home_against_gravity_uses_torque_within_the_servo_limits(make, arm4_spec: RobotSpec) -> None:
    backend = make()
    backend.reset(0)
    for _ in range(25):
        state = backend.step(arm4_spec.home_rad)
    np.testing.assert_allclose(state.position_rad, arm4_spec.home_rad, atol=1e-3)
    assert np.abs(state.effort_nm[1]) > 0.05  # the shoulder carries the arm
    assert (np.abs(state.effort_nm) <= arm4_spec.max_effort_nm + 1e-9).all()


def test_speed_is_clamped_to_the_servo_velocity_limit(make, arm4_spec: RobotSpec) -> None:
    """The YAML's max_velocity_rad_s (the Velocity_Limit the serial driver writes), below no-load speed."""
    limit = arm4_spec.max_velocity_rad_s[0]
    assert limit < NO_LOAD_SPEED_RAD_S["base_yaw"]
    backend = make()
    backend.reset(0)
    target = arm4_spec.home_rad.copy()
    target[0] = arm4_spec.soft_upper_rad[0]  # a 2.7 rad jump the safety filter would never allow
    speeds = [abs(backend.step(target).velocity_rad_s[0]) for _ in range(10)]
    assert max(speeds) <= limit + 1e-6
    assert max(speeds) > 0.9 * limit


def test_the_state_is_read_at_measure_at_s_and_the_period_runs_on(make, arm4_spec: RobotSpec) -> None:
    """Read 12.5 ms into the period (5 of 8 physics steps), as the serial driver reads the arm."""
    end, early = make(), make(SimConfig(measure_at_s=0.012))
    targets = random_walk(arm4_spec, 3, 15)
    a, b = trajectory(end, 0, targets), trajectory(early, 0, targets)
    stamps = b[:, -1]
    assert stamps[1] == pytest.approx(0.0125) and np.allclose(np.diff(stamps[1:]), arm4_spec.dt_s)
    dof = arm4_spec.dof
    assert not np.allclose(a[1:, :dof], b[1:, :dof])  # mid-period, the servo is still on its way
    # ... but the physics is the same: the end-of-period state of step k is where step k+1 starts.
    assert np.all(np.abs(a[1:, :dof] - b[1:, :dof]) < arm4_spec.max_step_rad)


def test_measuring_after_the_period_is_a_config_error(arm4_spec: RobotSpec) -> None:
    with pytest.raises(ConfigError, match=r"measure_at_s 0.03 s is past the control period 0.02 s"):
        PyBulletBackend(arm4_spec, SimConfig(measure_at_s=0.03))


def _fixed(config: RandomizationConfig, **values: float | int) -> RandomizationConfig:
    """Randomization enabled with degenerate ranges: the nominal model except ``values``."""
    ranges = {
        "link_mass_scale": 1.0, "lateral_friction": NOMINAL_LATERAL_FRICTION,
        "joint_damping_nm_s_rad": NOMINAL_JOINT_DAMPING_NM_S_RAD, "actuator_gain_scale": 1.0,
        "max_velocity_scale": 1.0, "action_latency_periods": 0, "position_noise_rad": 0.0,
        "velocity_noise_rad_s": 0.0, "command_latency_s": 0.0,
    } | values  # fmt: skip
    return dataclasses.replace(config, enabled=True, **{k: (v, v) for k, v in ranges.items()})


@pytest.mark.parametrize("latency", [1, 2])
def test_latency_delays_the_response_by_whole_periods(make, arm4_spec: RobotSpec, latency: int) -> None:
    lagged = make(SimConfig(randomization=_fixed(RandomizationConfig(), action_latency_periods=latency)))
    targets = random_walk(arm4_spec, 6, 20)
    got = trajectory(lagged, 0, targets)
    assert lagged.dynamics.action_latency_periods == latency
    # With k periods of latency the robot first holds home for k periods, then follows the targets:
    # exactly the nominal robot commanded [home] * k + targets.
    delayed = np.vstack([np.tile(arm4_spec.home_rad, (latency, 1)), targets[:-latency]])
    assert np.array_equal(got, trajectory(make(), 0, delayed))
    moved = np.abs(got[:, : arm4_spec.dof] - arm4_spec.home_rad).max(axis=1)
    assert (moved[1 : latency + 1] < 1e-4).all()
    assert moved[latency + 1] > 0.5 * np.abs(targets[0] - arm4_spec.home_rad).max()


def test_command_latency_within_the_period(make, arm4_spec: RobotSpec) -> None:
    """A command latency of one period is one period of latency; half a period lies in between."""
    targets = random_walk(arm4_spec, 6, 20)
    dt = arm4_spec.dt_s
    full = trajectory(make(SimConfig(randomization=_fixed(RandomizationConfig(), command_latency_s=dt))), 0, targets)
    one_period = make(SimConfig(randomization=_fixed(RandomizationConfig(), action_latency_periods=1)))
    assert np.array_equal(full, trajectory(one_period, 0, targets))
    half = trajectory(make(SimConfig(randomization=_fixed(RandomizationConfig(), command_latency_s=dt / 2))), 0,
                      targets)  # fmt: skip
    prompt = trajectory(make(), 0, targets)
    dof = arm4_spec.dof
    err_half = np.abs(half[:, :dof] - prompt[:, :dof]).mean()
    assert 0 < err_half < np.abs(full[:, :dof] - prompt[:, :dof]).mean()


# --- domain randomization -------------------------------------------------------------------------


def test_disabled_randomization_uses_the_nominal_urdf_model(make, arm4_spec: RobotSpec) -> None:
    backend = make()
    backend.reset(3)
    assert backend.dynamics == nominal(arm4_spec.dof)
    sample = backend.dynamics
    assert sample.action_latency_periods == 0 and sample.position_noise_rad == sample.velocity_noise_rad_s == 0.0


def test_enabled_randomization_differs_across_seeds_and_stays_in_range(make, arm4_spec: RobotSpec) -> None:
    config = RANDOMIZED.randomization
    backend = make(RANDOMIZED)
    samples = []
    for seed in range(12):
        backend.reset(seed)
        samples.append(backend.dynamics)
    assert len(set(samples)) == len(samples)
    assert {s.action_latency_periods for s in samples} == {0, 1}
    for s in samples:
        assert s.dof == arm4_spec.dof
        for field in dataclasses.fields(DynamicsSample):
            low, high = getattr(config, field.name)
            value = np.asarray(getattr(s, field.name))
            assert np.all(low <= value) and np.all(value <= high), field.name
    again = sample_dynamics(config, np.random.default_rng(0), arm4_spec.dof)
    assert again == samples[0]  # reset(seed) draws from np.random.default_rng(seed)


def test_the_sample_reaches_the_physics(make, arm4_spec: RobotSpec) -> None:
    nominal_backend, backend = make(), make(RANDOMIZED)
    nominal_backend.reset(0)
    backend.reset(4)
    sample, client = backend.dynamics, backend.physics_client_id
    for link in range(sample.dof):
        mass0 = pb.getDynamicsInfo(nominal_backend.body_id, link, physicsClientId=nominal_backend.physics_client_id)
        info = pb.getDynamicsInfo(backend.body_id, link, physicsClientId=client)
        assert info[0] == pytest.approx(mass0[0] * sample.link_mass_scale[link], rel=1e-12)
        np.testing.assert_allclose(info[2], np.array(mass0[2]) * sample.link_mass_scale[link], rtol=1e-12)
        assert info[1] == pytest.approx(sample.lateral_friction, rel=1e-12)
    # getJointInfo reports the URDF's damping, not changeDynamics's: check damping, gains, speed by effect.
    targets = random_walk(arm4_spec, 8, 15)
    reference = trajectory(nominal_backend, 0, targets)
    for values in ({"joint_damping_nm_s_rad": 0.5}, {"actuator_gain_scale": 0.7}, {"max_velocity_scale": 0.1}):
        changed = make(SimConfig(randomization=_fixed(RandomizationConfig(), **values)))
        assert not np.allclose(trajectory(changed, 0, targets), reference, rtol=0, atol=1e-4), values


@pytest.mark.parametrize(
    "bad",
    [{"link_mass_scale": (1.0,)}, {"actuator_gain_scale": (1.0, 0.0)}, {"position_noise_rad": float("nan")},
     {"joint_damping_nm_s_rad": (0.01, -0.01)}, {"action_latency_periods": -1}],
)  # fmt: skip
def test_dynamics_sample_validates(bad: dict) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(nominal(2), **bad)


# --- rendering ------------------------------------------------------------------------------------


def test_render_rgb_shows_the_arm_and_markers_without_changing_dynamics(make, arm4_spec: RobotSpec, tmp_path) -> None:
    image_mod = pytest.importorskip("PIL.Image")
    targets = random_walk(arm4_spec, 7, 20)
    reference = trajectory(make(), 0, targets)
    backend = make()
    backend.reset(0)
    plain = backend.render_rgb()
    assert plain.shape == (240, 320, 3) and plain.dtype == np.uint8
    assert plain.std() > 10 and len(np.unique(plain.reshape(-1, 3), axis=0)) > 20
    tip = ForwardKinematics(arm4_spec).end_effector_m(arm4_spec.home_rad)
    marked = backend.render_rgb(64, 48, markers_m=[tip, np.array([0.2, 0.1, 0.05])])
    assert marked.shape == (48, 64, 3)
    big = backend.render_rgb(markers_m=[tip, np.array([0.2, 0.1, 0.05])])

    def red(img: np.ndarray) -> int:
        r, g, b = (img[..., i].astype(int) for i in range(3))
        return int(((r > 150) & (g < 60) & (b < 60)).sum())

    assert red(big) > red(plain) + 20
    with pytest.raises(ValueError):
        backend.render_rgb(markers_m=[tip] * (MAX_MARKERS + 1))
    path = tmp_path / "arm4.png"
    image_mod.fromarray(big).save(path)
    assert image_mod.open(path).size == (320, 240)
    # rendering (and moving markers) between steps leaves the trajectory bit-identical
    states = [backend.reset(0)]
    for t in targets:
        states.append(backend.step(t))
        backend.render_rgb(32, 24, markers_m=[t[:3]])
    assert np.array_equal(as_rows(states), reference)
