"""The emulator's physics in process (no pty, no real time): profiles, servo motion, faults from physics."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("pybullet")

from drivers.calibration import Calibration, load_calibration
from drivers.control_table import X_SERIES
from robot_sac.errors import ConfigError
from robot_sac.spec import RobotSpec
from sim.emulator_process import DEFAULT_CALIBRATION
from sim.servo_plant import NOMINAL, REALITY, EmulatorProfile, ServoPlant, load_profile
from sim.servo_registers import ServoRegisters

Make = Callable[..., tuple[ServoPlant, list[ServoRegisters]]]


@pytest.fixture(scope="module")
def calibration(arm4_spec: RobotSpec) -> Calibration:
    return load_calibration(DEFAULT_CALIBRATION, arm4_spec)


@pytest.fixture
def make(arm4_spec: RobotSpec, calibration: Calibration) -> Iterator[Make]:
    plants: list[ServoPlant] = []

    def build(
        profile: EmulatorProfile = NOMINAL, clock: Callable[[], float] | None = None
    ) -> tuple[ServoPlant, list[ServoRegisters]]:
        servos = [ServoRegisters(j.servo_id, j.model) for j in calibration.joints]
        plant = ServoPlant(arm4_spec, calibration, servos, profile, seed=3, clock=clock or time.monotonic)
        plant.connect()
        plants.append(plant)
        return plant, servos

    yield build
    for plant in plants:
        plant.close()


def write(servo: ServoRegisters, name: str, value: int) -> None:
    reg = X_SERIES[name]
    assert servo.write(reg.address, reg.encode(value)) == 0, name


def run(plant: ServoPlant, seconds: float) -> None:
    for _ in range(round(seconds * plant.profile.physics_hz)):
        plant.step()


def hold(servos: list[ServoRegisters]) -> None:
    for servo in servos:
        write(servo, "goal_position", servo.get("present_position"))
        write(servo, "torque_enable", 1)


def test_profiles_load_from_names_yaml_and_overrides(tmp_path: Path) -> None:
    assert load_profile("nominal") == NOMINAL and load_profile("reality") == REALITY
    assert REALITY.link_mass_scale == 1.15 and REALITY.actuator_gain_scale == 0.75
    assert REALITY.backlash_rad == pytest.approx(math.radians(0.3)) and REALITY.command_latency_s == 0.01
    path = tmp_path / "stiff.yaml"
    path.write_text("name: stiff\nposition_noise_ticks: 3\n")
    profile = load_profile(str(path), ["command_latency_s=0.02"])
    assert (profile.name, profile.position_noise_ticks, profile.command_latency_s) == ("stiff", 3, 0.02)
    assert profile.link_mass_scale == 1.0
    with pytest.raises(ConfigError, match="did you mean 'backlash_rad'"):
        load_profile("reality", ["backlash=0.1"])
    with pytest.raises(ConfigError, match="choose one of"):
        load_profile("realty")


def test_starts_at_home_and_sags_with_torque_off(make: Make, calibration: Calibration) -> None:
    plant, servos = make()
    home = calibration.ticks_from_rad(calibration.spec.home_rad).tolist()
    assert [s.get("present_position") for s in servos] == home == [s.get("goal_position") for s in servos]
    run(plant, 0.5)
    assert abs(servos[0].get("present_position") - home[0]) <= 5  # vertical axis: only reaction torques
    assert abs(servos[1].get("present_position") - home[1]) > 100  # the shoulder fell


def test_servo_tracks_its_goal_at_the_velocity_limit(make: Make, calibration: Calibration) -> None:
    plant, servos = make()
    write(servos[0], "velocity_limit", 50)  # 50 × 0.229 rev/min = 1.2 rad/s
    hold(servos)
    start = servos[0].get("present_position")
    write(servos[0], "goal_position", start + 1000)  # +1.53 rad
    run(plant, 0.25)
    moved_rad = (servos[0].get("present_position") - start) * 2 * math.pi / 4096
    assert 0.2 < moved_rad <= 50 * 0.229 * 2 * math.pi / 60 * 0.25 + 0.01
    run(plant, 1.5)
    assert abs(servos[0].get("present_position") - (start + 1000)) <= 1
    assert all(abs(s.get("present_position") - s.get("goal_position")) <= 1 for s in servos)
    assert servos[0].get("moving") == 0 and servos[0].get("moving_status") & 1


def test_pushing_a_joint_limit_overloads_and_shuts_down(make: Make) -> None:
    plant, servos = make(EmulatorProfile(overload_time_s=0.5))
    hold(servos)
    write(servos[1], "goal_position", 600)  # below the shoulder's mechanical limit (tick 881)
    run(plant, 0.4)
    assert servos[1].torque_enabled and servos[1].get("hardware_error_status") == 0
    run(plant, 0.5)
    assert servos[1].get("hardware_error_status") == 0x20 and not servos[1].torque_enabled
    assert servos[0].torque_enabled  # only that servo


def test_holding_a_goal_one_tick_past_the_stop_it_rests_on_does_not_overload(make: Make) -> None:
    # An arm that fell onto its stop with torque off is held at its present pose at connect; with
    # the limit rounded to ticks that goal can lie a tick past the stop. A real position loop pushes
    # gently there (CI once latched an overload on servo 12 while a test ran without homing).
    plant, servos = make(EmulatorProfile(overload_time_s=0.5))
    hold(servos)
    write(servos[1], "goal_position", 700)  # drive the shoulder onto its stop (tick 881) ...
    run(plant, 0.3)
    write(servos[1], "goal_position", 880)  # ... then hold one tick past it
    run(plant, 1.5)
    assert servos[1].torque_enabled and servos[1].get("hardware_error_status") == 0
    full_scale = servos[1].get("current_limit") or 1000  # an XL430 reports load in 0.1 %
    assert abs(servos[1].get("present_current")) < 0.2 * full_scale


def test_overheating_bit_from_the_thermal_model(make: Make) -> None:
    profile = EmulatorProfile(thermal_time_constant_s=0.3, stall_temperature_rise_c=200.0, overload_time_s=60.0)
    plant, servos = make(profile)
    hold(servos)
    write(servos[1], "goal_position", 600)
    run(plant, 0.2)
    assert 30 < servos[1].get("present_temperature") < 80
    run(plant, 0.5)
    assert servos[1].get("hardware_error_status") == 0x04 and not servos[1].torque_enabled


def test_reality_latency_backlash_and_noise(make: Make) -> None:
    plant, servos = make(REALITY)
    hold(servos)
    run(plant, 0.5)
    goal = servos[1].get("goal_position") + 150
    write(servos[1], "goal_position", goal)
    for _ in range(4):  # 10 ms at 400 Hz: the old goal still acts
        plant.step()
        assert servos[1].get("position_trajectory") == goal - 150
    plant.step()
    assert servos[1].get("position_trajectory") == goal
    run(plant, 1.0)
    readings = []
    for _ in range(40):
        plant.step()
        readings.append(servos[1].get("present_position"))
    assert set(readings) <= {goal - 2, goal - 1, goal, goal + 1, goal + 2} and len(set(readings)) > 1
    encoder_rad = (goal - 2048) * 2 * math.pi / 4096
    play = abs(plant.joint_positions_rad()[1] - encoder_rad)  # gravity holds the gear on one side
    assert play == pytest.approx(REALITY.backlash_rad, abs=math.radians(0.1))


def test_deadline_loop_counts_overruns_instead_of_bursting(make: Make) -> None:
    now = [50.0]
    plant, _ = make(clock=lambda: now[0])
    period = plant.period_s
    assert plant.run_due() and not plant.run_due()  # the first step is due at connect
    now[0] += period
    assert plant.run_due() and plant.overruns == 0
    now[0] += 3.5 * period  # the step due at +2p starts at +4.5p
    assert plant.run_due() and plant.steps == 3 and plant.overruns == 2  # deadlines +3p and +4p skipped
    assert not plant.run_due()
    assert plant.due_in_s() == pytest.approx(0.5 * period)


def test_the_motor_crosses_the_gear_play_over_several_physics_steps(make: Make) -> None:
    """When the load reverses, the motor side takes time to cross the play (it never jumps).

    A jump of 2 x play in one physics step moved the servo's output target as far; on the emulated
    arm the base joint then chattered at its force limit until the overload protection tripped
    (12 of 12 seeded reality episodes ran without an overload after this change; 3 runs of 6-7
    episodes each latched one before it).
    """
    plant, _ = make(REALITY)
    play, q = REALITY.backlash_rad, 0.3
    plant._motor_rad[0] = q + play  # loaded on the + side
    positions = []
    for _ in range(12):
        plant._update_backlash(0, q, -1.0)  # the load reverses
        positions.append(plant._motor_rad[0])
    steps = [abs(b - a) for a, b in zip([q + play, *positions], positions, strict=False)]
    assert max(steps) <= 0.25 * play + 1e-12  # at most a quarter of the play per physics step
    assert positions[-1] == pytest.approx(q - play)  # and it arrives on the loaded side
    plant._update_backlash(0, q + 0.01, 0.0)  # unloaded: the output drags the motor along
    assert q + 0.01 - play <= plant._motor_rad[0] <= q + 0.01 + play
