"""The deploy loop: deadlines on a fake clock (SAFETY.md #17), faults and dumps, stop and park, PyBullet end to end.

Timing tests run the real env stack (`make_env`, safety filter included) over the numpy
`FakeBackend`, with a `FakeClock` whose time advances only by sleeps and by injected stalls, so
every assertion about slots is exact.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from policies.deploy import DeployLoop
from policies.deploy_config import DeployConfig
from policies.deploy_report import REPORT_FILE
from policies.onnx_policy import OnnxPolicy
from policies.pacing import BackendPacer, FreeRunPacer, SleepPacer
from policies.signals import StopFlag
from robot_sac.cli import main
from robot_sac.configs import ArmReachConfig, EnvConfig, NormalizationConfig
from robot_sac.errors import CommTimeout, DeviceReset, EnvStateError, RobotFault
from robot_sac.fake_backend import FakeBackend
from robot_sac.make_env import make_env
from robot_sac.spec import RobotSpec
from tests.onnx_fixtures import contract_for, pose_seeking_weights, write_policy

T = 0.02  # arm4's control period at 50 Hz


class FakeClock:
    """Monotonic time that moves only when slept on or pushed."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.now += seconds


class ClockedBackend(FakeBackend):
    """A FakeBackend that records the (fake) time and the target of every command."""

    def __init__(self, spec: RobotSpec, clock: FakeClock) -> None:
        super().__init__(spec)
        self.clock = clock
        self.sent_at: list[float] = []
        self.targets: list[np.ndarray] = []

    def step(self, target_rad: np.ndarray) -> Any:
        self.sent_at.append(self.clock.now)
        self.targets.append(np.array(target_rad))
        return super().step(target_rad)


class StallingPolicy:
    """Wraps a policy; call number i first advances the fake clock by ``stalls[i]`` seconds."""

    def __init__(self, inner: Callable[[np.ndarray], np.ndarray], clock: FakeClock, stalls: dict[int, float]) -> None:
        self.inner, self.clock, self.stalls = inner, clock, stalls
        self.calls = 0
        self.on_call: Callable[[int], None] = lambda i: None

    @property
    def ready(self) -> bool:
        return True

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        i, self.calls = self.calls, self.calls + 1
        self.clock.now += self.stalls.get(i, 0.0)
        self.on_call(i)
        return self.inner(obs)


POSE_OFFSET_RAD = np.array([0.5, 0.3, -0.3, 0.3])


@pytest.fixture(scope="module")
def moving_policy_dir(tmp_path_factory: pytest.TempPathFactory, arm4_spec: RobotSpec) -> Path:
    """An ONNX proportional controller that moves the arm away from home (so parking has work)."""
    w, b = pose_seeking_weights(arm4_spec, arm4_spec.home_rad + POSE_OFFSET_RAD)
    return write_policy(
        tmp_path_factory.mktemp("policy") / "moving", contract_for(arm4_spec), weight=w, bias=b, clip_sigma=1e6
    )


@pytest.fixture(scope="module")
def onnx_policy(moving_policy_dir: Path) -> OnnxPolicy:
    policy = OnnxPolicy(moving_policy_dir, warmup_runs=20)
    policy.warm_up()
    return policy


def _loop(
    spec: RobotSpec,
    policy: Any,
    clock: FakeClock,
    *,
    horizon: int = 30,
    dump_dir: Path | None = None,
    stop: StopFlag | None = None,
    backend: ClockedBackend | None = None,
    **config: Any,
) -> tuple[DeployLoop, ClockedBackend]:
    env_config = EnvConfig(task=ArmReachConfig(horizon_steps=horizon), normalization=NormalizationConfig(enabled=False))
    backend = backend or ClockedBackend(spec, clock)
    env = make_env(env_config, backend)
    pacer = SleepPacer(spec.dt_s, clock, clock.sleep)
    loop = DeployLoop(env, policy, spec, pacer, DeployConfig(**config), stop=stop, clock=clock, sleep=clock.sleep,
                      dump_dir=dump_dir)  # fmt: skip
    return loop, backend


class FailingResets(ClockedBackend):
    """Raises the given faults on the first resets, then resets normally."""

    def __init__(self, spec: RobotSpec, clock: FakeClock, faults: list[RobotFault]) -> None:
        super().__init__(spec, clock)
        self.faults = faults

    def reset(self, seed: int | None = None) -> Any:
        if self.faults:
            raise self.faults.pop(0)
        return super().reset(seed)


def _slots(times: list[float], start: float) -> np.ndarray:
    return (np.asarray(times) - start) / T


# --- deadlines (SAFETY.md #17) ---------------------------------------------------------------------


def test_on_time_commands_land_on_the_period_grid(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    loop, backend = _loop(arm4_spec, onnx_policy, clock, horizon=20)
    report = loop.run(episodes=1)
    assert report.overruns == 0 and report.faults == [] and report.exit_code == 0
    slots = _slots(backend.sent_at[:20], backend.sent_at[0])
    np.testing.assert_allclose(slots, np.arange(20), atol=1e-9)
    assert report.loop_period_ms.p50 == pytest.approx(T * 1e3) and report.loop_period_ms.max == pytest.approx(T * 1e3)


def test_one_stall_of_2_5_periods_is_one_overrun_and_the_next_command_lands_on_a_boundary(
    arm4_spec: RobotSpec, onnx_policy: OnnxPolicy
) -> None:
    clock = FakeClock()
    policy = StallingPolicy(onnx_policy, clock, {5: 2.5 * T})
    loop, backend = _loop(arm4_spec, policy, clock, horizon=20)
    report = loop.run(episodes=1)
    assert report.overruns == 1 and report.skipped_slots == 2 and report.max_consecutive_overruns == 1
    assert report.faults == [] and report.episodes[0].steps == 20 and report.exit_code == 0
    slots = _slots(backend.sent_at[:20], backend.sent_at[0])
    # Commands 0-4 on slots 0-4; the late one waits for slot 7 (slots 5 and 6 are skipped), then on.
    np.testing.assert_allclose(slots, [0, 1, 2, 3, 4, *range(7, 22)], atol=1e-9)
    assert np.diff(backend.sent_at[:20]).min() >= T - 1e-12  # never two commands back to back
    assert loop.ring.snapshot()["skipped_slots"].sum() == 2


def test_three_consecutive_overruns_are_a_deadline_miss_and_nothing_more_is_sent(
    arm4_spec: RobotSpec, onnx_policy: OnnxPolicy, tmp_path: Path
) -> None:
    clock = FakeClock()
    policy = StallingPolicy(onnx_policy, clock, {5: 2.5 * T, 6: 2.5 * T, 7: 2.5 * T})
    loop, backend = _loop(arm4_spec, policy, clock, horizon=20, dump_dir=tmp_path)
    report = loop.run(episodes=3)
    assert [f.name for f in report.faults] == ["DeadlineMiss"] and "3 consecutive" in report.faults[0].message
    assert report.overruns == 3 and report.stop_reason == "fault" and report.exit_code == 5
    assert len(report.episodes) == 1 and report.episodes[0].fault == "DeadlineMiss"
    # Commands 0-6 went out (5 and 6 late); the third late command was held back, and no park ran.
    assert len(backend.sent_at) == 7 and "skipped" in report.park
    assert report.faults[0].dump is not None and Path(report.faults[0].dump).is_file()


def test_too_many_overruns_within_a_second_are_a_deadline_miss(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    policy = StallingPolicy(onnx_policy, clock, {5: 1.5 * T, 8: 1.5 * T, 11: 1.5 * T})  # never two in a row
    loop, _ = _loop(arm4_spec, policy, clock, horizon=40)
    report = loop.run(episodes=1)
    assert report.max_consecutive_overruns == 1
    assert [f.name for f in report.faults] == ["DeadlineMiss"] and "within 1.0 s" in report.faults[0].message


def test_a_stall_beyond_the_watchdog_is_a_fault_at_once(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    policy = StallingPolicy(onnx_policy, clock, {5: 6 * T})
    loop, backend = _loop(arm4_spec, policy, clock, horizon=20, watchdog_periods=5.0)
    report = loop.run(episodes=1)
    assert [f.name for f in report.faults] == ["DeadlineMiss"] and "watchdog" in report.faults[0].message
    assert len(backend.sent_at) == 5  # the stalled command never went out


# --- fault dump -------------------------------------------------------------------------------------------


def test_a_fault_dumps_the_ring_buffer(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy, tmp_path: Path) -> None:
    clock = FakeClock()
    policy = StallingPolicy(onnx_policy, clock, {12: 10 * T})
    loop, backend = _loop(arm4_spec, policy, clock, horizon=30, dump_dir=tmp_path, ring_buffer_steps=8)
    report = loop.run(episodes=1)
    dump = Path(report.faults[0].dump or "")
    assert dump.parent == tmp_path and dump.name.startswith("fault_0_DeadlineMiss")
    with np.load(dump, allow_pickle=False) as data:
        assert str(data["fault_name"]) == "DeadlineMiss"
        assert data["step"].tolist() == list(range(4, 12))  # the last 8 steps, oldest first
        assert data["observation"].shape == (8, 21) and data["command_rad"].shape == (8, 4)
        np.testing.assert_allclose(data["command_rad"][-1], backend.targets[-1])
        np.testing.assert_allclose(data["action"], data["joint_delta_rad"] / arm4_spec.max_step_rad, rtol=1e-6)


# --- stopping (SAFETY.md #27) --------------------------------------------------------------------------------


def test_stop_request_finishes_the_step_holds_then_parks_rate_limited(
    arm4_spec: RobotSpec, onnx_policy: OnnxPolicy
) -> None:
    clock, stop = FakeClock(), StopFlag()
    policy = StallingPolicy(onnx_policy, clock, {})
    policy.on_call = lambda i: stop.request("SIGINT") if i == 15 else None
    loop, backend = _loop(arm4_spec, policy, clock, horizon=100, stop=stop)
    report = loop.run(episodes=5)
    assert report.stop_reason == "SIGINT" and report.park == "home" and report.exit_code == 0
    assert report.episodes[0].steps == 16 and report.episodes[0].stopped  # the step in progress finished
    targets = np.array(backend.targets)
    away = targets[15]
    assert np.abs(away - arm4_spec.home_rad).max() > 0.1  # the policy had moved the arm
    np.testing.assert_allclose(targets[16], away)  # hold first
    np.testing.assert_allclose(targets[-1], arm4_spec.home_rad, atol=1e-9)  # then park at home
    assert (np.abs(np.diff(targets[15:], axis=0)) <= arm4_spec.max_step_rad + 1e-9).all()  # at the rate limit
    np.testing.assert_allclose(_slots(backend.sent_at, backend.sent_at[0]), np.arange(len(targets)), atol=1e-9)


def test_stop_action_hold_keeps_the_target(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    loop, backend = _loop(arm4_spec, onnx_policy, clock, horizon=25, stop_action="hold")
    report = loop.run(episodes=1)
    assert report.stop_reason == "episodes" and report.park == "holding"
    assert len(backend.targets) == 26
    np.testing.assert_allclose(backend.targets[-1], backend.targets[-2])


def test_duration_limit_stops_the_run(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    loop, _ = _loop(arm4_spec, onnx_policy, clock, horizon=30)
    report = loop.run(duration_s=1.0)  # 50 periods: one full episode and most of a second
    assert report.stop_reason == "duration" and report.park == "home"
    assert report.episodes[0].steps == 30 and report.episodes[-1].stopped
    assert 49 <= report.steps <= 52


def test_a_transient_fault_at_reset_is_retried_and_recorded(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    clock = FakeClock()
    backend = FailingResets(arm4_spec, clock, [CommTimeout("servos [11] did not answer")])
    loop, _ = _loop(arm4_spec, onnx_policy, clock, horizon=5, backend=backend)
    report = loop.run(episodes=2)
    assert report.faults == [] and report.exit_code == 0 and [e.steps for e in report.episodes] == [5, 5]
    assert [(f.name, f.episode) for f in report.recovered_faults] == [("CommTimeout", 0)]
    assert "recovered at reset ['CommTimeout']" in report.table()


def test_a_latched_or_recurring_reset_fault_ends_the_run(arm4_spec: RobotSpec, onnx_policy: OnnxPolicy) -> None:
    for faults, retried in (([DeviceReset("servo 12 rebooted")], 0), ([CommTimeout("silent")] * 3, 2)):
        clock = FakeClock()
        backend = FailingResets(arm4_spec, clock, list(faults))
        loop, _ = _loop(arm4_spec, onnx_policy, clock, horizon=5, backend=backend)
        report = loop.run(episodes=2)
        assert [f.name for f in report.faults] == [type(faults[0]).__name__] and report.exit_code == 5
        assert len(report.recovered_faults) == retried and report.episodes[0].steps == 0


def test_run_refuses_a_policy_that_was_not_warmed_up(arm4_spec: RobotSpec, moving_policy_dir: Path) -> None:
    clock = FakeClock()
    loop, backend = _loop(arm4_spec, OnnxPolicy(moving_policy_dir), clock)
    with pytest.raises(EnvStateError, match="warm"):
        loop.run(episodes=1)
    assert backend.sent_at == [] and not backend._connected  # nothing moved, nothing connected


# --- pacers ---------------------------------------------------------------------------------------------------


def test_backend_pacer_reports_the_backends_new_overruns() -> None:
    count = [3]
    pacer = BackendPacer(lambda: count[0])
    pacer.start()
    assert pacer.wait_for_slot() == 0 and pacer.overruns_in_step() == 0
    count[0] = 5
    assert pacer.overruns_in_step() == 2 and pacer.overruns_in_step() == 0


def test_free_run_pacer_never_waits() -> None:
    pacer = FreeRunPacer()
    pacer.start()
    assert pacer.wait_for_slot() == 0 and pacer.overruns_in_step() == 0


# --- PyBullet, from the command line ------------------------------------------------------------------------------


def test_deploy_on_pybullet_fast_from_the_cli(moving_policy_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pybullet")
    code = main(["deploy", str(moving_policy_dir), "--sim", "--fast", "--episodes", "3", "--seed", "4",
                 "--out", str(tmp_path), "--set", "task.horizon_steps=40",
                 "--set", "deploy.warmup_runs=50"])  # fmt: skip
    assert code == 0
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["faults"] == [] and report["exit_code"] == 0 and report["stop_reason"] == "episodes"
    assert report["pacing"] == "none" and report["steps"] == 120 and report["park"] == "home"
    assert [e["seed"] for e in report["episodes"]] == [4, 5, 6]
    for e in report["episodes"]:
        assert set(e) >= {"steps", "return", "success", "final_distance_m", "safety_clips", "fault"}
    assert report["loop_period_ms"]["count"] == 117 and report["inference_us"]["count"] == 120
    assert 0 < report["inference_us"]["p50"] <= report["inference_us"]["p99"] <= report["inference_us"]["max"]
    assert report["warmup_us"]["count"] == 50 and report["policy_sha256"]  # --set deploy.* reached DeployConfig
    assert set(report["safety_clips"]) == {"action_space", "soft_limit", "rate", "velocity", "effort"}


def test_cli_names_a_mistyped_deploy_key(moving_policy_dir: Path, tmp_path: Path, capsys: Any) -> None:
    code = main(["deploy", str(moving_policy_dir), "--sim", "--fast", "--episodes", "1", "--out", str(tmp_path),
                 "--set", "deploy.stop_acton=hold"])  # fmt: skip
    assert code == 2 and "did you mean 'stop_action'" in capsys.readouterr().err


def test_cli_refuses_a_policy_for_another_robot(tmp_path: Path, arm4_spec: RobotSpec, capsys: Any) -> None:
    policy_dir = write_policy(tmp_path / "p", contract_for(arm4_spec, robot_name="other_arm", control_hz=30.0))
    code = main(["deploy", str(policy_dir), "--sim", "--fast", "--episodes", "1", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 4 and "robot_name" in err and "control_hz" in err
    assert not (tmp_path / "o").exists()  # refused before anything ran
