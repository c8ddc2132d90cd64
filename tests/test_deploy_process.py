"""``robot-sac deploy`` as a process: signals (SAFETY.md #27) and the torch-free controller on the emulator.

The acceptance test runs the deploy command in an interpreter where importing torch or pybullet
raises (as on the embedded controller), against the servo emulator over a pseudo-terminal: real
Protocol 2.0 bytes, the serial backend pacing each step.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies.deploy_report import REPORT_FILE
from robot_sac.spec import RobotSpec
from sim.emulator_process import EmulatorProcess
from tests.conftest import REPO_ROOT
from tests.onnx_fixtures import contract_for, pose_seeking_weights, write_policy
from tests.test_deploy import POSE_OFFSET_RAD
from tests.test_import_boundaries import BLOCKER

pytestmark = pytest.mark.realtime_wire  # a deploy loop on the emulator, in real time


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory: pytest.TempPathFactory, arm4_spec: RobotSpec) -> Path:
    w, b = pose_seeking_weights(arm4_spec, arm4_spec.home_rad + POSE_OFFSET_RAD)
    return write_policy(tmp_path_factory.mktemp("policy") / "p", contract_for(arm4_spec), weight=w, bias=b,
                        clip_sigma=1e6)  # fmt: skip


def _start_sim_deploy(policy_dir: Path, out: Path) -> subprocess.Popen[str]:
    """A real-time PyBullet deploy that would run for a minute; returns once it is stepping."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "robot_sac.cli", "deploy", str(policy_dir), "--sim", "--duration-s", "60",
         "--out", str(out)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()  # printed after the signal handlers are installed
    assert line.startswith("deploying"), line + (proc.stderr.read() if proc.stderr else "")
    time.sleep(0.6)  # ~30 control steps: the policy has moved the arm away from home
    return proc


def test_sigint_finishes_the_step_parks_and_exits_0(policy_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pybullet")
    proc = _start_sim_deploy(policy_dir, tmp_path)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert proc.returncode == 0, err
    assert elapsed < 5.0  # the whole stop sequence within SAFETY.md #27's 5 s
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["stop_reason"] == "SIGINT" and report["park"] == "home" and report["faults"] == []
    assert report["episodes"][-1]["stopped"] and report["steps"] > 10
    assert "stopped by SIGINT; park: home" in out


def test_second_signal_holds_and_exits_1(policy_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pybullet")
    proc = _start_sim_deploy(policy_dir, tmp_path)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert time.monotonic() - sent < 2.0
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["stop_reason"] == "second signal" and report["exit_code"] == 1
    assert report["park"].startswith("skipped")


# --- acceptance: the controller has no torch and no pybullet ----------------------------------------------------


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorProcess]:
    with EmulatorProcess() as emu:
        yield emu


def test_deploy_without_torch_or_pybullet_on_the_emulator(
    policy_dir: Path, emulator: EmulatorProcess, tmp_path: Path, arm4_spec: RobotSpec
) -> None:
    code = BLOCKER + textwrap.dedent(
        f"""
        import json, sys
        from robot_sac.cli import main

        code = main(["deploy", {str(policy_dir)!r}, "--port", {emulator.port!r}, "--episodes", "2",
                     "--out", {str(tmp_path)!r}, "--set", "task.horizon_steps=40"])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {{"torch", "pybullet", "onnx"}})
        print("RESULT " + json.dumps({{"code": code, "heavy": heavy}}))
        """
    )
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    line = next((x for x in result.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line is not None, result.stdout + result.stderr + emulator.log_tail()
    outcome = json.loads(line.removeprefix("RESULT "))
    assert outcome == {"code": 0, "heavy": []}, result.stdout + result.stderr
    report = json.loads((tmp_path / REPORT_FILE).read_text())
    assert report["pacing"] == "backend" and report["faults"] == [] and report["park"] == "home"
    assert report["steps"] == 80 and [e["steps"] for e in report["episodes"]] == [40, 40]
    # The serial backend held each command one 20 ms period on its own clock.
    assert report["loop_period_ms"]["p50"] == pytest.approx(20.0, abs=1.0)
    # What reached the wire: goal writes for every servo during the run, ending at home.
    servo_id = 11
    writes = [w for w in emulator.goal_writes(servo_id) if w[0] >= started]
    assert len(writes) >= 80
    assert writes[-1][1] == 2048  # parked: base_yaw's home (0 rad) is its zero tick
