"""`robot_sac.evaluate`: the Wilson interval, the report, fault handling, and both policy kinds on both backends.

The fault tests run on `FakeBackend` (no pybullet, no torch); the shipped ONNX policy runs on
PyBullet and on the servo emulator over a pty; a 300-step run directory runs on PyBullet and must
reproduce the trainer's own final evaluation exactly.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import yaml

from policies import SHIPPED_ARM_REACH
from robot_sac.config_loader import to_mapping
from robot_sac.configs import EnvConfig, NormalizationConfig, TrainConfig
from robot_sac.errors import CommTimeout, ConfigError, DeviceLost, ModelContractError, NonFiniteObservation
from robot_sac.eval_report import EXIT_STOPPED_EARLY, REPORT_FILE, EpisodeRow, EvalReport, FaultEntry, wilson_interval
from robot_sac.evaluate import LoadedPolicy, evaluate, evaluate_source, source_kind
from robot_sac.fake_backend import FakeBackend
from robot_sac.make_env import make_env
from robot_sac.safety import CLIP_STAGES
from robot_sac.spec import RobotSpec
from tests.conftest import ARM4_YAML, REPO_ROOT, TRAIN_YAML
from tests.test_import_boundaries import BLOCKER
from tests.test_train import SMALL

# --- the interval and the report -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("k", "n", "lower", "upper"),
    [
        (19, 20, 0.7639, 0.9911),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (5, 10, 0.2366, 0.7634),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_interval_matches_known_values(k: int, n: int, lower: float, upper: float) -> None:
    assert wilson_interval(k, n) == pytest.approx((lower, upper), abs=1e-4)


def test_wilson_interval_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(3, 2)


def _report() -> EvalReport:
    clips = dict.fromkeys(CLIP_STAGES, 0)
    rows = (
        EpisodeRow(index=0, seed=7, steps=100, return_=12.5, success=True, final_distance_mm=2.0, clip_counts=clips,
                   fault=None),
        EpisodeRow(index=1, seed=8, steps=3, return_=-0.5, success=False, final_distance_mm=80.0,
                   clip_counts=clips | {"rate": 2}, fault="CommTimeout"),
    )  # fmt: skip
    fault = FaultEntry(name="CommTimeout", message="no status", episode=1, seed=8, step=2, during="step")
    return EvalReport(policy="p", policy_kind="onnx", policy_id="abc", robot="rs_arm4", backend="servos on /dev/pts/9",
                      config_sha256="00", seed=7, episodes_requested=3, episodes=rows, faults=(fault,),
                      stop_reason="reset of episode 2 failed", wall_s=1.5)  # fmt: skip


def test_report_json_round_trip_and_summary(tmp_path: Path) -> None:
    report = _report()
    doc = json.loads(report.write(tmp_path).read_text(encoding="utf-8"))
    assert EvalReport.from_json(doc) == report
    assert doc["episodes"][0]["return"] == 12.5 and "return_" not in doc["episodes"][0]
    assert (doc["successes"], doc["episodes_run"], doc["completed"]) == (1, 2, False)
    assert doc["success_ci95"] == pytest.approx(list(wilson_interval(1, 2)))
    assert doc["final_distance_mm_mean"] == pytest.approx(41.0)
    assert doc["final_distance_mm_p95"] == pytest.approx(2.0 + 0.95 * 78.0)
    assert doc["clip_counts"]["rate"] == 2 and doc["fault_counts"] == {"CommTimeout": 1}
    assert report.exit_code == EXIT_STOPPED_EARLY and "STOPPED EARLY" in report.table()


# --- faults, on the numpy fake ---------------------------------------------------------------------


def _fake_env(spec: RobotSpec) -> gym.Env[np.ndarray, np.ndarray]:
    return make_env(EnvConfig(normalization=NormalizationConfig(enabled=False)), FakeBackend(spec))


def _policy(act: Callable[[np.ndarray], np.ndarray]) -> LoadedPolicy:
    return LoadedPolicy(act=act, kind="onnx", source="test", identity="test")


def test_a_fault_ends_its_episode_and_the_evaluation_goes_on(arm4_spec: RobotSpec) -> None:
    calls = {"n": 0}

    def act(obs: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        return np.full(arm4_spec.dof, np.nan if calls["n"] == 120 else 0.0)  # step 20 of episode 1

    env = _fake_env(arm4_spec)
    report = evaluate(env, _policy(act), arm4_spec, episodes=3, seed=5)
    assert report.completed and report.exit_code == 0 and len(report.episodes) == 3
    assert [e.fault for e in report.episodes] == [None, "NonFiniteAction", None]
    assert report.episodes[1].steps == 20 and not report.episodes[1].success
    assert report.faults == (FaultEntry(name="NonFiniteAction", message=report.faults[0].message, episode=1, seed=6,
                                        step=19, during="step"),)  # fmt: skip
    assert [e.seed for e in report.episodes] == [5, 6, 7]


def test_a_latched_fault_stops_the_evaluation_with_a_report(arm4_spec: RobotSpec) -> None:
    env = _fake_env(arm4_spec)  # every action NaN: the 3rd bad action in a row latches (safety default)
    report = evaluate(env, _policy(lambda obs: np.full(arm4_spec.dof, np.nan)), arm4_spec, episodes=10)
    assert len(report.episodes) == 3 and not report.completed and report.exit_code == EXIT_STOPPED_EARLY
    assert [f.during for f in report.faults] == ["step", "step", "step", "reset"]
    assert report.faults[-1].name == "EnvStateError" and report.faults[-1].episode == 3
    assert "operator" in report.stop_reason and report.success_rate == 0.0


class _FlakyResets(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Raises the queued faults from `reset`, one per call, before resetting normally."""

    def __init__(self, env: gym.Env[np.ndarray, np.ndarray], faults: list[Exception]) -> None:
        super().__init__(env)
        self.faults, self.seeds = faults, []

    def reset(self, **kwargs: Any) -> tuple[np.ndarray, dict[str, Any]]:
        self.seeds.append(kwargs.get("seed"))
        if self.faults:
            raise self.faults.pop(0)
        return self.env.reset(**kwargs)


def test_a_transient_reset_fault_is_retried_with_the_same_seed(arm4_spec: RobotSpec) -> None:
    # What a busy bus does now and then while homing: the reset's read times out once.
    env = _FlakyResets(_fake_env(arm4_spec), [CommTimeout("servos [11] did not answer")])
    waits: list[float] = []
    report = evaluate(env, _policy(lambda obs: np.zeros(arm4_spec.dof)), arm4_spec, episodes=2, seed=3,
                      sleep=waits.append)  # fmt: skip
    assert report.completed and report.exit_code == 0 and report.faults == ()
    assert env.seeds == [3, 3, 4] and waits == [0.5]
    assert [(f.name, f.episode, f.seed, f.during) for f in report.recovered_faults] == [("CommTimeout", 0, 3, "reset")]
    assert "1 reset(s) retried" in report.table()
    assert EvalReport.from_json(report.to_json()) == report


def test_a_reset_that_keeps_failing_or_a_latched_one_stops_the_evaluation(arm4_spec: RobotSpec) -> None:
    timeouts: list[Exception] = [CommTimeout("no reply") for _ in range(3)]
    report = evaluate(_FlakyResets(_fake_env(arm4_spec), timeouts), _policy(lambda obs: np.zeros(arm4_spec.dof)),
                      arm4_spec, episodes=2, sleep=lambda s: None)  # fmt: skip
    assert report.episodes == () and len(report.recovered_faults) == 2
    assert [(f.name, f.during) for f in report.faults] == [("CommTimeout", "reset")]
    env = _FlakyResets(_fake_env(arm4_spec), [DeviceLost("the adapter was unplugged")])
    report = evaluate(env, _policy(lambda obs: np.zeros(arm4_spec.dof)), arm4_spec, episodes=2, sleep=lambda s: None)
    assert env.seeds == [0] and report.recovered_faults == () and report.faults[0].name == "DeviceLost"
    assert report.exit_code == EXIT_STOPPED_EARLY


def test_a_policy_refusing_an_observation_is_a_fault_of_that_episode(arm4_spec: RobotSpec) -> None:
    def act(obs: np.ndarray) -> np.ndarray:
        raise NonFiniteObservation("test")

    report = evaluate(_fake_env(arm4_spec), _policy(act), arm4_spec, episodes=2)
    assert report.completed and [f.during for f in report.faults] == ["policy", "policy"]
    assert report.episodes[0].steps == 0 and np.isfinite(report.episodes[0].final_distance_mm)


def test_a_directory_that_is_neither_says_what_is_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"robot-sac export.*robot-sac train"):
        source_kind(tmp_path)
    with pytest.raises(ConfigError, match="--episodes"):
        evaluate_source(SHIPPED_ARM_REACH, episodes=0)


# --- the shipped ONNX policy and a run directory on PyBullet --------------------------------------------


def test_shipped_onnx_policy_on_pybullet() -> None:
    pytest.importorskip("pybullet")
    report = evaluate_source(SHIPPED_ARM_REACH, episodes=5, seed=0)
    assert report.policy_kind == "onnx" and report.backend == "pybullet" and len(report.policy_id) == 64
    assert report.completed and not report.faults
    summary = report.summary()
    assert summary["successes"] >= 4, report.table()
    assert all(np.isfinite(e.final_distance_mm) for e in report.episodes)
    assert summary["final_distance_mm_p95"] < 10.0 and summary["clip_counts"] == dict.fromkeys(CLIP_STAGES, 0)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, float], int]]:
    """A 300-step ArmReach run with tiny networks: (run dir, its final evaluation, its seed)."""
    pytest.importorskip("pybullet")
    from robot_sac.configs import load_train_config
    from robot_sac.train_setup import start_run

    overrides = (*SMALL, "run.total_steps=300", "run.eval_interval_steps=300", "run.checkpoint_interval_steps=300")
    config = load_train_config(TRAIN_YAML, overrides)
    path = tmp_path_factory.mktemp("eval") / "run"
    trainer = start_run(config, path, show_progress=False)
    try:
        final = trainer.train(300)
    finally:
        trainer.close()
    yield path, final, config.seed


def test_run_directory_on_pybullet_gives_a_complete_report(
    run_dir: tuple[Path, dict[str, float], int], tmp_path: Path
) -> None:
    path, _, _ = run_dir
    report = evaluate_source(path, episodes=3, seed=0)
    assert report.policy_kind == "torch" and "step_0000000300" in report.policy_id
    assert report.completed and len(report.episodes) == 3 and not report.faults
    assert all(e.steps == 100 and np.isfinite(e.final_distance_mm) for e in report.episodes)
    assert set(report.summary()["clip_counts"]) == set(CLIP_STAGES)
    lower, upper = report.success_ci95
    assert 0.0 <= lower <= report.success_rate <= upper <= 1.0
    assert EvalReport.from_json(json.loads(report.write(tmp_path).read_text(encoding="utf-8"))) == report


def test_run_directory_reproduces_the_trainers_own_evaluation(run_dir: tuple[Path, dict[str, float], int]) -> None:
    """Same actor, normalizer and seeds as `Trainer.evaluate`: the same episode, to float precision."""
    from robot_sac.train import EVAL_SEED_OFFSET

    path, final, seed = run_dir
    report = evaluate_source(path, episodes=1, seed=seed + EVAL_SEED_OFFSET)
    assert report.episodes[0].final_distance_mm == pytest.approx(1e3 * final["eval/final_distance_m"], abs=1e-6)
    assert report.episodes[0].return_ == pytest.approx(final["eval/return"], abs=1e-6)


def test_run_directory_refuses_another_robot(run_dir: tuple[Path, dict[str, float], int], tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text(ARM4_YAML.read_text(encoding="utf-8").replace("control_hz: 50.0", "control_hz: 25.0"))
    with pytest.raises(ModelContractError, match=r"(?s)control_hz.*drop --robot"):
        evaluate_source(run_dir[0], robot=other, episodes=1)


# --- the serial backend on the emulator ------------------------------------------------------------------


def test_shipped_policy_over_the_serial_driver_on_the_emulator() -> None:
    from sim.emulator_process import EmulatorProcess

    with EmulatorProcess() as emulator:
        # 5 missed cycles before a CommTimeout (default 2): this 2-core machine is shared, and the
        # emulator runs in real time; fault detection latency is tested in tests/test_serial_faults.py.
        relaxed = ("serial.fault_cycles=5",)
        report = evaluate_source(SHIPPED_ARM_REACH, port=emulator.port, episodes=2, overrides=relaxed)
        goals = emulator.goal_writes(11)  # base_yaw (configs/calibration/arm4.json)
    assert report.backend == f"servos on {emulator.port}" and report.completed and not report.faults
    assert report.summary()["successes"] >= 1, report.table()
    assert len(goals) >= 2 * 100  # every control step went out over the pty as a Goal_Position write


# --- import boundary --------------------------------------------------------------------------------------


def test_evaluation_core_runs_without_torch_or_pybullet(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_mapping(TrainConfig())), encoding="utf-8")
    code = f"""
        import sys
        import numpy as np
        from robot_sac.configs import EnvConfig, NormalizationConfig
        from robot_sac.errors import ConfigError
        from robot_sac.evaluate import LoadedPolicy, evaluate, evaluate_source
        from robot_sac.fake_backend import FakeBackend
        from robot_sac.make_env import make_env
        from robot_sac.spec import load_robot_spec

        spec = load_robot_spec("configs/robots/arm4.yaml")
        env = make_env(EnvConfig(normalization=NormalizationConfig(enabled=False)), FakeBackend(spec))
        policy = LoadedPolicy(act=lambda obs: np.zeros(4), kind="onnx", source="zeros", identity="-")
        report = evaluate(env, policy, spec, episodes=2)
        assert report.completed and len(report.episodes) == 2, report
        try:
            evaluate_source({str(tmp_path)!r}, episodes=1)
        except ConfigError as err:
            assert "needs torch" in str(err), err
        else:
            raise AssertionError("a run directory evaluated without torch")
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in {{'torch', 'pybullet'}})
        assert not heavy, heavy
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", BLOCKER + textwrap.dedent(code)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    assert REPORT_FILE == "eval_report.json"
