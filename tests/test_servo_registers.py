"""The emulated servo's control table: factory values, access rules, Bus Watchdog, Shutdown and alert."""

from __future__ import annotations

import pytest

from drivers.control_table import MODEL_NUMBERS, X_SERIES
from drivers.protocol2 import ALERT_BIT, StatusError
from sim.servo_registers import BOOT_TIME_S, TABLE_SIZE, ServoRegisters

GOAL = X_SERIES["goal_position"]


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def servo(clock: FakeClock) -> ServoRegisters:
    regs = ServoRegisters(12, "XM430-W350", clock=clock)
    regs.set("present_position", 2000)
    regs.set("goal_position", 2000)
    return regs


def write(servo: ServoRegisters, name: str, value: int) -> int:
    reg = X_SERIES[name]
    return servo.write(reg.address, reg.encode(value))


def test_factory_values_match_the_model() -> None:
    xm, xl = ServoRegisters(12, "XM430-W350"), ServoRegisters(11, "XL430-W250", baud_rate=57_600)
    assert TABLE_SIZE >= 147
    assert xm.get("model_number") == MODEL_NUMBERS["XM430-W350"] == 1020
    assert xl.get("model_number") == 1060
    assert (xm.get("firmware_version"), xm.get("id"), xl.get("id")) == (46, 12, 11)
    assert (xm.get("baud_rate"), xl.get("baud_rate")) == (3, 1)
    assert xm.get("return_delay_time") == 250 and xm.get("operating_mode") == 3
    assert (xm.get("min_position_limit"), xm.get("max_position_limit")) == (0, 4095)
    assert xm.get("current_limit") == 1193 and xl.get("current_limit") == 0
    assert (xm.get("velocity_limit"), xl.get("velocity_limit")) == (200, 265)
    assert xm.get("temperature_limit") == 80 and xm.get("shutdown") == 0x34
    assert xm.get("torque_enable") == 0 and xm.get("bus_watchdog") == 0 and xm.get("status_return_level") == 2


def test_read_returns_table_bytes_and_rejects_out_of_table(servo: ServoRegisters) -> None:
    error, data = servo.read(0, 2)
    assert error == StatusError.NONE and int.from_bytes(data, "little") == 1020
    assert servo.read(120, 27)[0] == StatusError.NONE and len(servo.read(120, 27)[1]) == 27
    assert servo.read(140, 10) == (StatusError.DATA_LENGTH, b"")
    assert servo.read(TABLE_SIZE, 1) == (StatusError.ACCESS, b"")
    assert servo.read(10, 0) == (StatusError.DATA_LENGTH, b"")


@pytest.mark.parametrize("name", ["model_number", "present_position", "hardware_error_status", "realtime_tick"])
def test_read_only_registers_refuse_writes(servo: ServoRegisters, name: str) -> None:
    before = servo.get(name)
    assert write(servo, name, 1) == StatusError.ACCESS
    assert servo.get(name) == before


def test_eeprom_is_writable_only_with_torque_off(servo: ServoRegisters) -> None:
    assert write(servo, "max_position_limit", 3000) == StatusError.NONE
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    assert write(servo, "max_position_limit", 3500) == StatusError.ACCESS
    assert servo.get("max_position_limit") == 3000
    assert write(servo, "led", 1) == StatusError.NONE  # RAM stays writable


def test_partial_register_gap_and_table_end_writes(servo: ServoRegisters) -> None:
    assert servo.write(GOAL.address, (2048).to_bytes(2, "little")) == StatusError.DATA_LENGTH
    assert servo.write(GOAL.address + 1, b"\x00\x00\x00") == StatusError.DATA_LENGTH
    assert servo.write(14, b"\x00") == StatusError.ACCESS  # reserved
    assert servo.write(146, b"\x00\x00") == StatusError.DATA_LENGTH
    assert servo.write(TABLE_SIZE + 5, b"\x00") == StatusError.ACCESS
    assert servo.get("goal_position") == 2000


def test_multi_register_write_is_all_or_nothing(servo: ServoRegisters) -> None:
    data = (100).to_bytes(4, "little") + (5000).to_bytes(4, "little")  # profile_velocity, goal_position
    assert servo.write(112, data) == StatusError.DATA_LIMIT
    assert servo.get("profile_velocity") == 0
    data = (100).to_bytes(4, "little") + (2100).to_bytes(4, "little")
    assert servo.write(112, data) == StatusError.NONE
    assert (servo.get("profile_velocity"), servo.get("goal_position")) == (100, 2100)


def test_goal_outside_position_limits_is_refused(servo: ServoRegisters) -> None:
    assert write(servo, "min_position_limit", 1000) == StatusError.NONE
    assert write(servo, "max_position_limit", 3000) == StatusError.NONE
    assert write(servo, "goal_position", 3001) == StatusError.DATA_LIMIT
    assert write(servo, "goal_position", 999) == StatusError.DATA_LIMIT
    assert servo.get("goal_position") == 2000
    assert write(servo, "goal_position", 3000) == StatusError.NONE


def test_value_ranges(servo: ServoRegisters) -> None:
    assert write(servo, "torque_enable", 2) == StatusError.DATA_RANGE
    assert write(servo, "id", 253) == StatusError.DATA_RANGE
    assert write(servo, "bus_watchdog", -1) == StatusError.DATA_RANGE
    assert servo.get("torque_enable") == 0


def test_torque_enable_keeps_a_stale_goal(servo: ServoRegisters) -> None:
    servo.set("present_position", 1500)
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    assert servo.torque_enabled and servo.get("goal_position") == 2000


# --- Bus Watchdog -------------------------------------------------------------------------------


def armed(servo: ServoRegisters, units: int = 5) -> ServoRegisters:
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    assert write(servo, "bus_watchdog", units) == StatusError.NONE
    return servo


def test_watchdog_trips_after_its_interval_and_stops_the_servo(servo: ServoRegisters, clock: FakeClock) -> None:
    armed(servo, 5)  # 100 ms
    assert write(servo, "goal_position", 2500) == StatusError.NONE
    servo.set("present_position", 2100)
    clock.now_s += 0.099
    assert not servo.poll_watchdog()
    clock.now_s += 0.002
    assert servo.poll_watchdog()
    assert servo.get("bus_watchdog") == -1 and servo.watchdog_tripped
    assert servo.get("goal_position") == 2100  # holds where it is
    assert not servo.poll_watchdog()  # reports the trip once


def test_instructions_feed_the_watchdog(servo: ServoRegisters, clock: FakeClock) -> None:
    armed(servo, 5)
    for _ in range(10):
        clock.now_s += 0.08
        servo.feed_watchdog()
        assert not servo.poll_watchdog()
    clock.now_s += 0.2
    assert servo.poll_watchdog()


def test_watchdog_needs_torque_and_a_positive_value(servo: ServoRegisters, clock: FakeClock) -> None:
    assert write(servo, "bus_watchdog", 5) == StatusError.NONE
    clock.now_s += 10
    assert not servo.poll_watchdog()  # torque off
    assert write(servo, "bus_watchdog", 0) == StatusError.NONE
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    clock.now_s += 10
    assert not servo.poll_watchdog()  # disabled


def test_tripped_watchdog_refuses_goals_until_zero_is_written(servo: ServoRegisters, clock: FakeClock) -> None:
    armed(servo, 1)
    clock.now_s += 0.05
    assert servo.poll_watchdog()
    assert write(servo, "goal_position", 2200) == StatusError.DATA_RANGE
    assert write(servo, "goal_velocity", 10) == StatusError.DATA_RANGE
    assert write(servo, "bus_watchdog", 3) == StatusError.DATA_RANGE  # clear with 0 first
    assert write(servo, "bus_watchdog", 0) == StatusError.NONE
    assert write(servo, "goal_position", 2200) == StatusError.NONE
    assert write(servo, "bus_watchdog", 3) == StatusError.NONE


# --- hardware errors, shutdown, reboot ---------------------------------------------------------


def test_shutdown_bit_turns_torque_off_and_alerts(servo: ServoRegisters) -> None:
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    assert servo.status_error() == 0
    servo.raise_hardware_error(0x20)  # overload, enabled in the factory Shutdown 0x34
    assert not servo.torque_enabled
    assert servo.get("hardware_error_status") == 0x20
    assert servo.status_error() == ALERT_BIT
    assert servo.status_error(StatusError.DATA_LIMIT) == ALERT_BIT | StatusError.DATA_LIMIT
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    assert not servo.torque_enabled  # stays off until reboot


def test_a_bit_not_in_shutdown_alerts_but_keeps_torque(servo: ServoRegisters) -> None:
    assert write(servo, "torque_enable", 1) == StatusError.NONE
    servo.raise_hardware_error(0x01)  # input voltage: not in 0x34
    assert servo.torque_enabled and servo.status_error() == ALERT_BIT


def test_reboot_resets_ram_and_keeps_eeprom(servo: ServoRegisters, clock: FakeClock) -> None:
    assert write(servo, "max_position_limit", 3000) == StatusError.NONE
    armed(servo, 5)
    servo.raise_hardware_error(0x20)
    servo.set("present_position", 1800)
    clock.now_s += 1.0
    servo.reboot()
    assert servo.booting and servo.tick_origin_s == clock.now_s
    assert servo.get("torque_enable") == 0 and servo.get("bus_watchdog") == 0
    assert servo.get("hardware_error_status") == 0 and servo.status_error() == 0
    assert servo.get("goal_position") == 1800 and servo.get("max_position_limit") == 3000
    clock.now_s += BOOT_TIME_S + 1e-3
    assert not servo.booting
    assert write(servo, "torque_enable", 1) == StatusError.NONE and servo.torque_enabled
