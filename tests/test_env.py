"""Env semantics: the gymnasium API, wrapper order, terminated vs truncated, faults, executed actions."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.wrappers import TimeLimit

import robot_sac
from robot_sac.configs import EnvConfig
from robot_sac.env import RobotEnv
from robot_sac.errors import CommTimeout, DeviceLost, EnvStateError, RobotFault
from robot_sac.fake_backend import FakeBackend
from robot_sac.make_env import make_env
from robot_sac.normalization import NormalizeObservation
from robot_sac.scripted import ReachIK
from robot_sac.spec import RobotSpec, RobotState


class FaultyBackend(FakeBackend):
    """FakeBackend that raises a fault, or returns a corrupt reading, at a given step."""

    def __init__(self, spec: RobotSpec, at_step: int, fault: RobotFault | None = None, reading: float = 0.0):
        super().__init__(spec)
        self.at_step, self.fault, self.reading = at_step, fault, reading

    def step(self, target_rad: np.ndarray) -> RobotState:
        state = super().step(target_rad)
        if self.step_count != self.at_step:
            return state
        if self.fault is not None:
            raise self.fault
        position = state.position_rad.copy()
        position[0] = self.reading
        return RobotState(position, state.velocity_rad_s.copy(), state.effort_nm.copy(), state.stamp_s)


def _fake_env(spec: RobotSpec, backend: FakeBackend | None = None, **changes) -> gym.Env:
    return make_env(EnvConfig(**changes), backend or FakeBackend(spec))


def test_wrapper_order(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    assert isinstance(env, NormalizeObservation)
    assert isinstance(env.env, TimeLimit)
    assert isinstance(env.env.env, RobotEnv) and env.env.env is env.unwrapped


def test_check_env_on_registered_env_passes_without_warnings() -> None:
    pytest.importorskip("pybullet")
    env = gym.make(robot_sac.ARM_REACH_ID)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env.unwrapped)
        assert [str(w.message) for w in caught] == []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_env(env)  # the wrapped stack passes too; gymnasium only notes that it is wrapped
        assert all("different from the unwrapped version" in str(w.message) for w in caught)
    finally:
        env.close()


def test_check_env_on_fake_backend(arm4_spec: RobotSpec) -> None:
    check_env(RobotEnv(FakeBackend(arm4_spec), *_task_and_filter(arm4_spec)), skip_render_check=True)


def _task_and_filter(spec: RobotSpec) -> tuple:
    from robot_sac.safety import SafetyFilter
    from robot_sac.tasks import ArmReach

    config = EnvConfig()
    return ArmReach(spec, config.task), SafetyFilter(spec, config.safety)


def test_time_limit_truncates_and_never_terminates(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    env.reset(seed=0)
    horizon = EnvConfig().task.horizon_steps
    for t in range(horizon):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated
        assert truncated == (t == horizon - 1)
    assert info["fault"] is None


@pytest.mark.parametrize(("bad", "fault"), [(np.nan, "NonFiniteAction"), (np.inf, "NonFiniteAction"),
                                            (-np.inf, "NonFiniteAction"), (1e9, "ActionOutOfRange")])  # fmt: skip
def test_bad_action_in_pybullet_is_a_fault_that_never_reaches_physics(bad: float, fault: str) -> None:
    pybullet = pytest.importorskip("pybullet")
    env = gym.make(robot_sac.ARM_REACH_ID)
    try:
        env.reset(seed=0)
        for _ in range(3):
            last_obs, _, _, _, before = env.step(np.full(4, 0.5, dtype=np.float32))
        action = np.zeros(4)
        action[2] = bad
        obs, _, terminated, truncated, info = env.step(action)
        assert truncated and not terminated
        assert info["fault"] == fault and info["fault_message"]
        np.testing.assert_array_equal(info["command_rad"], before["command_rad"])  # the robot holds
        np.testing.assert_array_equal(info["executed_action"], 0.0)
        # nothing was sent, so there is no new measurement: the last one comes back, marked invalid
        assert not info["observation_valid"] and np.array_equal(obs, last_obs) and info["stamp_s"] == before["stamp_s"]
        backend = env.unwrapped.backend
        client = backend.physics_client_id
        count = pybullet.getNumJoints(backend.body_id, physicsClientId=client)
        joints = pybullet.getJointStates(backend.body_id, list(range(count)), physicsClientId=client)
        assert np.isfinite([s[0] for s in joints]).all() and np.isfinite([s[1] for s in joints]).all()
        with pytest.raises(EnvStateError):
            env.step(np.zeros(4, dtype=np.float32))
        obs, info = env.reset(seed=1)
        assert np.isfinite(obs).all() and info["fault"] is None
        obs, *_ = env.step(np.zeros(4, dtype=np.float32))
        assert np.isfinite(obs).all()
    finally:
        env.close()


def test_backend_fault_truncates_without_a_fresh_observation(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec, FaultyBackend(arm4_spec, at_step=5, fault=CommTimeout("servo 3 silent")))
    env.reset(seed=0)
    for _ in range(4):
        _, _, _, _, info = env.step(np.full(4, 0.3, dtype=np.float32))
    last_raw = info["raw_observation"]
    _, reward, terminated, truncated, info = env.step(np.full(4, 0.3, dtype=np.float32))
    assert truncated and not terminated and reward == 0.0
    assert info["fault"] == "CommTimeout" and not info["observation_valid"]
    assert info["fault_count"] == 1
    np.testing.assert_array_equal(info["raw_observation"], last_raw)
    env.reset(seed=1)  # an episode-level fault does not latch


def test_latched_fault_refuses_reset_until_rearm(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec, FaultyBackend(arm4_spec, at_step=2, fault=DeviceLost("port vanished")))
    env.reset(seed=0)
    env.step(np.zeros(4, dtype=np.float32))
    *_, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert truncated and info["fault"] == "DeviceLost"
    with pytest.raises(EnvStateError, match="rearm"):
        env.reset(seed=1)
    env.unwrapped.rearm()
    env.reset(seed=1)


@pytest.mark.parametrize(("reading", "fault"), [(np.nan, "NonFiniteObservation"), (3.5, "ObservationOutOfBounds")])
def test_implausible_measurement_is_a_fault(arm4_spec: RobotSpec, reading: float, fault: str) -> None:
    backend = FaultyBackend(arm4_spec, at_step=3, reading=reading)
    env = _fake_env(arm4_spec, backend)
    env.reset(seed=0)
    stats_before = None
    for _ in range(3):
        stats_before = env.normalizer.to_arrays()
        *_, truncated, info = env.step(np.zeros(4, dtype=np.float32))
    assert truncated and info["fault"] == fault and not info["observation_valid"]
    assert "position_rad/base_yaw" in info["fault_message"]
    for key, value in env.normalizer.to_arrays().items():  # the bad reading never reached the stats
        np.testing.assert_array_equal(value, stats_before[key])


def test_executed_action_is_what_the_safety_filter_let_through(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([2.0, 1.0, -1.0, 0.5], dtype=np.float32))
    # base: clipped to the action space; in-range actions pass unchanged (arm4's step bounds equal
    # its velocity bounds, so the action space is exactly what the filter lets through).
    np.testing.assert_allclose(info["executed_action"], [1.0, 1.0, -1.0, 0.5], rtol=1e-6)
    assert info["clipped"] == {"action_space": True, "soft_limit": False, "rate": False, "velocity": False,
                               "effort": False}  # fmt: skip
    assert info["safety_clipped"]
    assert info["clip_counts"] == {"action_space": 1, "soft_limit": 0, "rate": 0, "velocity": 0, "effort": 0}
    step = arm4_spec.max_step_rad
    np.testing.assert_allclose(info["command_rad"] - arm4_spec.home_rad, info["executed_action"] * step, atol=1e-7)


def test_soft_limits_hold_under_saturated_actions(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    env.reset(seed=0)
    for _ in range(99):
        _, _, _, _, info = env.step(np.ones(4, dtype=np.float32))
    np.testing.assert_allclose(info["command_rad"], arm4_spec.soft_upper_rad)
    assert info["clip_counts"]["soft_limit"] > 0


def test_raw_observation_is_kept_for_the_replay_buffer(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    obs, info = env.reset(seed=0)
    for _ in range(10):
        obs, _, _, _, info = env.step(env.action_space.sample())
    raw = info["raw_observation"]
    assert raw.shape == (21,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs, env.normalizer.normalize(raw), atol=1e-6)
    np.testing.assert_allclose(raw[8:12], info["command_rad"], atol=1e-6)  # the held target is observed
    assert env.observation_space.contains(obs)


def test_seeded_episodes_repeat_exactly(arm4_spec: RobotSpec) -> None:
    def run() -> np.ndarray:
        env = _fake_env(arm4_spec)
        env.action_space.seed(5)
        rows = [env.reset(seed=5)[1]["raw_observation"]]
        rows += [env.step(env.action_space.sample())[4]["raw_observation"] for _ in range(20)]
        return np.stack(rows)

    assert np.array_equal(run(), run())


def test_ik_controller_reaches_targets_through_the_pybullet_stack() -> None:
    pytest.importorskip("pybullet")
    env = gym.make(robot_sac.ARM_REACH_ID)
    controller = ReachIK(env.unwrapped.backend.spec)
    successes = []
    try:
        for seed in range(10):
            obs, info = env.reset(seed=seed)  # the registered env returns raw observations
            done = False
            while not done:
                obs, _, terminated, truncated, info = env.step(controller(obs))
                done = terminated or truncated
            successes.append(info["success"])
    finally:
        env.close()
    assert np.mean(successes) >= 0.9


def test_render_rgb_array_headless() -> None:
    pytest.importorskip("pybullet")
    env = gym.make(robot_sac.ARM_REACH_ID, render_mode="rgb_array")
    try:
        env.reset(seed=0)
        frame = env.render()
    finally:
        env.close()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert frame.std() > 5  # not a blank image


def test_render_mode_needs_a_renderable_backend(arm4_spec: RobotSpec) -> None:
    with pytest.raises(ValueError, match="cannot render"):
        RobotEnv(FakeBackend(arm4_spec), *_task_and_filter(arm4_spec), render_mode="rgb_array")


def test_repeated_bad_actions_latch_until_rearm(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)
    nan = np.full(4, np.nan)
    env.reset(seed=0)
    env.step(nan)
    env.reset(seed=1)
    env.step(np.zeros(4, dtype=np.float32))  # a good step breaks the run of bad actions
    env.step(nan)
    env.reset(seed=2)
    *_, truncated, info = env.step(nan)
    assert truncated and info["fault"] == "NonFiniteAction"
    env.reset(seed=3)  # two in a row: not latched yet
    env.step(np.full(4, 1e9))
    with pytest.raises(EnvStateError, match="rearm"):
        env.reset(seed=4)
    env.unwrapped.rearm()
    env.reset(seed=4)


def test_a_spec_whose_actions_get_velocity_clipped_is_warned_about(
    arm4_spec: RobotSpec, caplog: pytest.LogCaptureFixture
) -> None:
    import dataclasses

    joints = list(arm4_spec.joints)
    joints[1] = dataclasses.replace(joints[1], max_step_rad=0.04)  # 1.5 rad/s allows only 0.03 rad per tick
    spec = dataclasses.replace(arm4_spec, joints=tuple(joints))
    with caplog.at_level("WARNING", logger="robot_sac.make_env"):
        _fake_env(spec)
    assert "shoulder_pitch" in caplog.text and "max_velocity_rad_s / control_hz" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="robot_sac.make_env"):
        _fake_env(arm4_spec)
    assert caplog.text == ""
