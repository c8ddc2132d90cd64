"""The env stack over the serial backend on the emulator: gymnasium's checks and ArmReach end to end.

The same config as in simulation with only ``backend``/``serial.port`` changed (here through
``robot-sac rollout --port``), real Protocol 2.0 bytes through a pseudo-terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from gymnasium.utils import env_checker

from robot_sac.cli import main
from robot_sac.configs import REPO_CONFIG_DIR, EnvConfig, SerialConfig
from robot_sac.make_env import make_backend, make_env
from robot_sac.spec import load_robot_spec
from sim.emulator_process import EmulatorProcess

pytestmark = pytest.mark.usefixtures("realtime_host")  # the host loop runs like the deploy loop: SCHED_FIFO


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess() as emu:
        yield emu


def test_gymnasium_env_checks_pass_over_the_serial_backend(emulator: EmulatorProcess) -> None:
    config = EnvConfig(backend="serial", serial=SerialConfig(port=emulator.port))
    env = make_env(config, make_backend(config, load_robot_spec(REPO_CONFIG_DIR / "robots" / "arm4.yaml")))
    try:
        raw = env.unwrapped
        # Every check of gymnasium's check_env but step determinism, which no physical plant meets:
        # two runs of the same seed and action differ in the measured noise and in the time stamp.
        env_checker.check_action_space(raw.action_space)
        env_checker.check_observation_space(raw.observation_space)
        env_checker.check_space_limit(raw.action_space, "action")
        env_checker.check_space_limit(raw.observation_space, "observation")
        env_checker.check_reset_return_info_deprecation(raw)
        env_checker.check_reset_return_type(raw)
        env_checker.check_reset_seed_determinism(raw)  # the task's target is seeded; homing is exact
        env_checker.check_reset_options(raw)
        env_checker.env_reset_passive_checker(raw)
        env_checker.env_step_passive_checker(raw, raw.action_space.sample())
        env_checker.check_returned_data_not_reused(raw)
    finally:
        env.close()


def test_arm_reach_rollout_on_the_emulator_from_the_cli(emulator: EmulatorProcess, tmp_path: Path) -> None:
    code = main(["rollout", "--port", emulator.port, "--episodes", "3", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["success_rate"] >= 2 / 3, summary["episodes"]
    assert summary["fault_demo"]["fault"] == "NonFiniteAction" and summary["fault_demo"]["reset_after_fault_ok"]
