"""X-series control table (SAFETY.md row 24): addresses, widths, two's complement, units, the state block.

The expected rows are transcribed from the ROBOTIS e-manual control tables of the XM430-W350 and
XL430-W250 (https://emanual.robotis.com/docs/en/dxl/x/xm430-w350/, source ROBOTIS-GIT/emanual
docs/en/dxl/x/xm430-w350.md and xl430-w250.md); signedness follows the negative value ranges the
e-manual gives (and Bus Watchdog's documented -1 "error status").
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.control_table import (
    HARDWARE_ERROR_BITS,
    MODEL_NUMBERS,
    STATE_BLOCK,
    X_SERIES,
    Register,
    decode_block,
    hardware_error_names,
)

PROPERTY = settings(max_examples=400, deadline=None, derandomize=True, database=None)

# name: (address, size, signed, writable) from the e-manual; "R" access -> not writable.
EMANUAL = {
    "model_number": (0, 2, False, False),
    "firmware_version": (6, 1, False, False),
    "id": (7, 1, False, True),
    "baud_rate": (8, 1, False, True),
    "return_delay_time": (9, 1, False, True),
    "drive_mode": (10, 1, False, True),
    "operating_mode": (11, 1, False, True),
    "homing_offset": (20, 4, True, True),
    "temperature_limit": (31, 1, False, True),
    "max_voltage_limit": (32, 2, False, True),
    "min_voltage_limit": (34, 2, False, True),
    "current_limit": (38, 2, False, True),
    "velocity_limit": (44, 4, False, True),
    "max_position_limit": (48, 4, False, True),
    "min_position_limit": (52, 4, False, True),
    "shutdown": (63, 1, False, True),
    "torque_enable": (64, 1, False, True),
    "led": (65, 1, False, True),
    "status_return_level": (68, 1, False, True),
    "registered_instruction": (69, 1, False, False),
    "hardware_error_status": (70, 1, False, False),
    "velocity_i_gain": (76, 2, False, True),
    "velocity_p_gain": (78, 2, False, True),
    "position_d_gain": (80, 2, False, True),
    "position_i_gain": (82, 2, False, True),
    "position_p_gain": (84, 2, False, True),
    "bus_watchdog": (98, 1, True, True),
    "goal_pwm": (100, 2, True, True),
    "goal_current": (102, 2, True, True),
    "goal_velocity": (104, 4, True, True),
    "profile_acceleration": (108, 4, False, True),
    "profile_velocity": (112, 4, False, True),
    "goal_position": (116, 4, True, True),
    "realtime_tick": (120, 2, False, False),
    "moving": (122, 1, False, False),
    "moving_status": (123, 1, False, False),
    "present_pwm": (124, 2, True, False),
    "present_current": (126, 2, True, False),
    "present_velocity": (128, 4, True, False),
    "present_position": (132, 4, True, False),
    "velocity_trajectory": (136, 4, True, False),
    "position_trajectory": (140, 4, True, False),
    "present_input_voltage": (144, 2, False, False),
    "present_temperature": (146, 1, False, False),
}

REGISTERS = sorted(X_SERIES.values(), key=lambda r: r.address)


@pytest.mark.parametrize("name", sorted(EMANUAL))
def test_register_matches_the_emanual(name: str) -> None:
    reg = X_SERIES[name]
    assert (reg.address, reg.size, reg.signed, reg.writable) == EMANUAL[name]
    assert reg.name == name
    assert reg.eeprom == (reg.address < 64)


def test_table_is_consistent() -> None:
    assert all(name == reg.name for name, reg in X_SERIES.items())
    for before, after in itertools.pairwise(REGISTERS):
        assert before.address + before.size <= after.address, (before.name, after.name)
    with pytest.raises(TypeError):
        X_SERIES["goal_position"] = X_SERIES["present_position"]  # type: ignore[index]


@pytest.mark.parametrize("reg", [r for r in REGISTERS if r.size == 1], ids=lambda r: r.name)
def test_one_byte_registers_round_trip_exhaustively(reg: Register) -> None:
    for raw in range(reg.min_raw, reg.max_raw + 1):
        assert reg.decode(reg.encode(raw)) == raw


@PROPERTY
@given(data=st.data())
def test_every_register_round_trips_over_its_full_range(data: st.DataObject) -> None:
    reg = data.draw(st.sampled_from(REGISTERS))
    bounds = [reg.min_raw, reg.min_raw + 1, -1, 0, 1, reg.max_raw - 1, reg.max_raw]
    raw = data.draw(
        st.sampled_from([b for b in bounds if reg.min_raw <= b <= reg.max_raw]) | st.integers(reg.min_raw, reg.max_raw)
    )
    wire = reg.encode(raw)
    # numpy's little-endian dtypes are an independent two's-complement encoder.
    dtype = np.dtype(f"<{'i' if reg.signed else 'u'}{reg.size}")
    assert wire == np.array([raw], dtype=dtype).tobytes()
    assert reg.decode(wire) == raw


@pytest.mark.parametrize("reg", REGISTERS, ids=lambda r: r.name)
def test_out_of_range_raw_values_name_the_register(reg: Register) -> None:
    assert (reg.min_raw, reg.max_raw) == (
        (-(2 ** (8 * reg.size - 1)), 2 ** (8 * reg.size - 1) - 1) if reg.signed else (0, 2 ** (8 * reg.size) - 1)
    )
    for bad in (reg.min_raw - 1, reg.max_raw + 1):
        with pytest.raises(ValueError, match=reg.name):
            reg.encode(bad)
    with pytest.raises(ValueError, match=reg.name):
        reg.decode(b"\x00" * (reg.size + 1))
    with pytest.raises(TypeError, match=reg.name):
        reg.encode(2048.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "raw", "wire"),
    [
        # e-manual Protocol 2.0 examples
        ("present_position", 166, "A6 00 00 00"),
        ("present_position", 2079, "1F 08 00 00"),
        ("goal_position", 512, "00 02 00 00"),
        ("goal_velocity", 200, "C8 00 00 00"),
        ("max_voltage_limit", 160, "A0 00"),
        ("temperature_limit", 80, "50"),
        ("present_input_voltage", 119, "77 00"),
        ("present_temperature", 36, "24"),
        ("model_number", 1030, "06 04"),
        # negative values, two's complement
        ("bus_watchdog", -1, "FF"),
        ("present_velocity", -1, "FF FF FF FF"),
        ("goal_current", -1193, "57 FB"),
        ("goal_position", -1_048_575, "01 00 F0 FF"),
        ("homing_offset", -1_044_479, "01 10 F0 FF"),
    ],
)
def test_golden_encodings(name: str, raw: int, wire: str) -> None:
    reg = X_SERIES[name]
    assert reg.encode(raw) == bytes.fromhex(wire)
    assert reg.decode(bytes.fromhex(wire)) == raw


def test_units_are_si_per_raw_count() -> None:
    position = X_SERIES["present_position"].unit_si
    assert 2048 * position == pytest.approx(math.pi, rel=1e-15)  # half a turn from tick 0
    assert 4096 * position == pytest.approx(2 * math.pi, rel=1e-15)
    assert math.degrees(position) == pytest.approx(0.088, abs=1e-3)  # e-manual "0.088 deg"
    assert X_SERIES["goal_position"].unit_si == position
    assert X_SERIES["present_velocity"].unit_si == pytest.approx(0.229 * 2 * math.pi / 60)
    assert X_SERIES["profile_acceleration"].unit_si == pytest.approx(214.577 * 2 * math.pi / 3600)
    assert X_SERIES["present_current"].unit_si == pytest.approx(2.69e-3)
    assert X_SERIES["goal_pwm"].unit_si * 885 == pytest.approx(1.0, abs=1e-3)  # 885 = 100 % duty
    assert X_SERIES["present_input_voltage"].unit_si == pytest.approx(0.1)
    assert X_SERIES["present_temperature"].unit_si == 1.0
    assert X_SERIES["bus_watchdog"].unit_si == pytest.approx(0.02)
    assert X_SERIES["return_delay_time"].unit_si == pytest.approx(2e-6)
    assert X_SERIES["realtime_tick"].unit_si == pytest.approx(1e-3)
    assert X_SERIES["torque_enable"].unit_si == 1.0


STATE_NAMES = [
    "realtime_tick",
    "moving",
    "moving_status",
    "present_pwm",
    "present_current",
    "present_velocity",
    "present_position",
    "velocity_trajectory",
    "position_trajectory",
    "present_input_voltage",
    "present_temperature",
]


def test_state_block_spans_realtime_tick_to_present_temperature() -> None:
    start, length = STATE_BLOCK
    assert (start, length) == (120, 27)
    assert start == X_SERIES["realtime_tick"].address
    last = X_SERIES["present_temperature"]
    assert start + length == last.address + last.size
    assert sum(X_SERIES[name].size for name in STATE_NAMES) == length  # contiguous, no gaps


def test_decode_block_of_a_synthetic_state_read() -> None:
    values = {
        "realtime_tick": 32767,
        "moving": 1,
        "moving_status": 0x33,
        "present_pwm": -885,
        "present_current": -1193,
        "present_velocity": -330,
        "present_position": 3072,
        "velocity_trajectory": 330,
        "position_trajectory": -1_048_575,
        "present_input_voltage": 121,
        "present_temperature": 41,
    }
    start, length = STATE_BLOCK
    block = bytearray(length)
    for name, raw in values.items():
        reg = X_SERIES[name]
        block[reg.address - start : reg.address - start + reg.size] = reg.encode(raw)
    decoded = decode_block(bytes(block))
    assert decoded == values
    assert list(decoded) == STATE_NAMES  # address order
    assert decoded["present_position"] * X_SERIES["present_position"].unit_si == pytest.approx(1.5 * math.pi)


def test_decode_block_leaves_out_registers_the_block_cuts() -> None:
    block = bytes(range(10))
    assert set(decode_block(block, start=121)) == {"moving", "moving_status", "present_pwm", "present_current"}
    assert set(decode_block(block[:4], start=132)) == {"present_position"}
    assert decode_block(b"", start=132) == {}
    with pytest.raises(ValueError):
        decode_block(block, start=-1)


def test_model_numbers() -> None:
    assert MODEL_NUMBERS["XL430-W250"] == 1060
    assert MODEL_NUMBERS["XM430-W350"] == 1020
    assert MODEL_NUMBERS["XM430-W210"] == 1030
    assert MODEL_NUMBERS["XC430-W150"] == 1070
    assert MODEL_NUMBERS["XM540-W270"] == 1120
    assert len(set(MODEL_NUMBERS.values())) == len(MODEL_NUMBERS)


def test_hardware_error_bits() -> None:
    assert dict(HARDWARE_ERROR_BITS) == {
        0: "input voltage error",
        2: "overheating error",
        3: "motor encoder error",
        4: "electrical shock error",
        5: "overload error",
    }
    assert hardware_error_names(0) == ()
    assert hardware_error_names(0x24) == ("overheating error", "overload error")
    assert hardware_error_names(0x82) == ("unknown bit 1", "unknown bit 7")
