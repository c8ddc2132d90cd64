"""The Dynamixel X-series (Protocol 2.0) control table as data: addresses, sizes, signedness, units.

Source: the ROBOTIS e-manual control tables of the XM430-W350 / XM430-W210 (the reference layout here)
and the XL430-W250, https://emanual.robotis.com/docs/en/dxl/x/xm430-w350/ and .../xl430-w250/.
The X430/X540 families share these addresses. Differences that matter:

* XL430 / XC430 / 2XL430 have no Current Limit (38) or Goal Current (102), and their address 126
  is **Present Load** in 0.1 % of maximum torque, not Present Current in 2.69 mA. The register is
  kept here under the XM name ``present_current`` with the XM unit; a backend driving an XL430 must
  use its own scale for it.
* Profile Acceleration (108) and Profile Velocity (112) are in 1 ms when Drive Mode (10) selects the
  time-based profile; ``unit_si`` gives the default velocity-based units.

Device units never leave ``drivers/`` (STYLE.md rule 12): every register carries ``unit_si``, the SI
value of one raw count, so that a backend converts at the boundary. Calibration (zero offset,
direction) lives elsewhere; ``unit_si`` is only the scale.

Signed registers are two's complement on the wire (the e-manual gives negative ranges for them);
the DynamixelSDK returns them unsigned and leaves the sign to the caller, which is how sign bugs
happen (SAFETY.md row 24).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# SI value of one raw count, per the e-manual's "Unit" column.
_RAD_PER_PULSE = 2.0 * math.pi / 4096.0  # 4096 pulses per revolution (0.088 deg)
_RAD_S_PER_VELOCITY = 0.229 * 2.0 * math.pi / 60.0  # 0.229 rev/min
_RAD_S2_PER_ACCELERATION = 214.577 * 2.0 * math.pi / 3600.0  # 214.577 rev/min^2
_AMPERE_PER_CURRENT = 2.69e-3  # about 2.69 mA (XM430/XM540)
_FRACTION_PER_PWM = 0.113e-2  # 0.113 % of full duty (885 = 100 %)
_VOLT_PER_VOLTAGE = 0.1  # 0.1 V
_CELSIUS_PER_TEMPERATURE = 1.0  # 1 degC
_SECONDS_PER_WATCHDOG = 0.02  # 20 ms
_SECONDS_PER_RETURN_DELAY = 2e-6  # 2 us
_SECONDS_PER_TICK = 1e-3  # 1 ms
_DIMENSIONLESS = 1.0  # IDs, modes, flags, bit fields, controller gains


@dataclass(frozen=True)
class Register:
    """One control-table item.

    Attributes:
        name: snake_case e-manual name, e.g. ``"present_position"``.
        address: byte address in the control table.
        size: 1, 2 or 4 bytes, little-endian on the wire.
        signed: two's complement when True.
        writable: False for read-only items (the servo answers ACCESS error to a write).
        eeprom: True for addresses below 64, writable only while torque is off, persisted on power-off.
        unit_si: SI value of one raw count (rad, rad/s, rad/s^2, A, V, degC, s, duty fraction, or 1.0
            for dimensionless items).
    """

    name: str
    address: int
    size: int
    signed: bool
    writable: bool
    eeprom: bool
    unit_si: float

    def __post_init__(self) -> None:
        """Reject a malformed table entry at import time."""
        if self.size not in (1, 2, 4):
            raise ValueError(f"register {self.name}: size must be 1, 2 or 4 bytes, got {self.size}")
        if not 0 <= self.address <= 0xFFFF:
            raise ValueError(f"register {self.name}: address must be in [0, 65535], got {self.address}")

    @property
    def min_raw(self) -> int:
        """Smallest raw value the register's width can hold."""
        return -(1 << (8 * self.size - 1)) if self.signed else 0

    @property
    def max_raw(self) -> int:
        """Largest raw value the register's width can hold."""
        return (1 << (8 * self.size - 1)) - 1 if self.signed else (1 << (8 * self.size)) - 1

    def encode(self, raw: int) -> bytes:
        """Raw count -> wire bytes (little-endian, two's complement when signed).

        Only the width is checked here; the servo enforces its own limits (e.g. Goal Position within
        the position limits) and a safety layer should have clipped long before.

        Raises:
            TypeError: ``raw`` is not an integer (a float tick count is a unit bug upstream).
            ValueError: ``raw`` does not fit the register; the message names the register.
        """
        try:
            value = operator.index(raw)
        except TypeError:
            raise TypeError(
                f"register {self.name} (address {self.address}) takes an integer raw count, got {type(raw).__name__} "
                f"{raw!r}; convert SI values with unit_si and round first"
            ) from None
        if not self.min_raw <= value <= self.max_raw:
            kind = "signed" if self.signed else "unsigned"
            raise ValueError(
                f"register {self.name} (address {self.address}, {self.size}-byte {kind}) cannot hold {value}: "
                f"range is [{self.min_raw}, {self.max_raw}]"
            )
        return value.to_bytes(self.size, "little", signed=self.signed)

    def decode(self, data: bytes) -> int:
        """Wire bytes -> raw count.

        Raises:
            ValueError: ``data`` is not exactly `size` bytes; the message names the register.
        """
        if len(data) != self.size:
            raise ValueError(
                f"register {self.name} (address {self.address}) is {self.size} bytes, got {len(data)}: {bytes(data)!r}"
            )
        return int.from_bytes(data, "little", signed=self.signed)


def _table(*registers: Register) -> Mapping[str, Register]:
    """Index registers by name, refusing duplicate names and overlapping byte ranges."""
    by_name: dict[str, Register] = {}
    taken: dict[int, str] = {}
    for reg in registers:
        if reg.name in by_name:
            raise ValueError(f"duplicate register name {reg.name}")
        for byte in range(reg.address, reg.address + reg.size):
            if byte in taken:
                raise ValueError(f"register {reg.name} overlaps {taken[byte]} at address {byte}")
            taken[byte] = reg.name
        by_name[reg.name] = reg
    return MappingProxyType(by_name)


def _r(name: str, address: int, size: int, *, signed: bool = False, rw: bool = True, unit: float = 1.0) -> Register:
    """Shorthand for one table row; the EEPROM flag follows from the address (EEPROM is 0..63)."""
    return Register(name, address, size, signed, rw, address < 64, unit)


_RO = False  # readability of the table below: ``rw=_RO`` marks a read-only item

X_SERIES: Mapping[str, Register] = _table(
    # EEPROM area (0..63)
    _r("model_number", 0, 2, rw=_RO),
    _r("model_information", 2, 4, rw=_RO),
    _r("firmware_version", 6, 1, rw=_RO),
    _r("id", 7, 1),
    _r("baud_rate", 8, 1),
    _r("return_delay_time", 9, 1, unit=_SECONDS_PER_RETURN_DELAY),
    _r("drive_mode", 10, 1),
    _r("operating_mode", 11, 1),
    _r("secondary_id", 12, 1),
    _r("protocol_type", 13, 1),
    _r("homing_offset", 20, 4, signed=True, unit=_RAD_PER_PULSE),
    _r("moving_threshold", 24, 4, unit=_RAD_S_PER_VELOCITY),
    _r("temperature_limit", 31, 1, unit=_CELSIUS_PER_TEMPERATURE),
    _r("max_voltage_limit", 32, 2, unit=_VOLT_PER_VOLTAGE),
    _r("min_voltage_limit", 34, 2, unit=_VOLT_PER_VOLTAGE),
    _r("pwm_limit", 36, 2, unit=_FRACTION_PER_PWM),
    _r("current_limit", 38, 2, unit=_AMPERE_PER_CURRENT),  # XM/XH/XW only
    _r("velocity_limit", 44, 4, unit=_RAD_S_PER_VELOCITY),
    _r("max_position_limit", 48, 4, unit=_RAD_PER_PULSE),
    _r("min_position_limit", 52, 4, unit=_RAD_PER_PULSE),
    _r("shutdown", 63, 1),  # bit field, see HARDWARE_ERROR_BITS
    # RAM area (64..)
    _r("torque_enable", 64, 1),
    _r("led", 65, 1),
    _r("status_return_level", 68, 1),
    _r("registered_instruction", 69, 1, rw=_RO),
    _r("hardware_error_status", 70, 1, rw=_RO),  # bit field, see HARDWARE_ERROR_BITS
    _r("velocity_i_gain", 76, 2),
    _r("velocity_p_gain", 78, 2),
    _r("position_d_gain", 80, 2),
    _r("position_i_gain", 82, 2),
    _r("position_p_gain", 84, 2),
    _r("feedforward_2nd_gain", 88, 2),
    _r("feedforward_1st_gain", 90, 2),
    # 1..127 arms the watchdog in 20 ms units; the servo latches -1 when it trips (Goal values become
    # read-only until 0 is written), hence signed.
    _r("bus_watchdog", 98, 1, signed=True, unit=_SECONDS_PER_WATCHDOG),
    _r("goal_pwm", 100, 2, signed=True, unit=_FRACTION_PER_PWM),
    _r("goal_current", 102, 2, signed=True, unit=_AMPERE_PER_CURRENT),  # XM/XH/XW only
    _r("goal_velocity", 104, 4, signed=True, unit=_RAD_S_PER_VELOCITY),
    _r("profile_acceleration", 108, 4, unit=_RAD_S2_PER_ACCELERATION),
    _r("profile_velocity", 112, 4, unit=_RAD_S_PER_VELOCITY),
    _r("goal_position", 116, 4, signed=True, unit=_RAD_PER_PULSE),  # signed in extended position mode
    _r("realtime_tick", 120, 2, rw=_RO, unit=_SECONDS_PER_TICK),  # wraps from 32767 to 0
    _r("moving", 122, 1, rw=_RO),
    _r("moving_status", 123, 1, rw=_RO),
    _r("present_pwm", 124, 2, signed=True, rw=_RO, unit=_FRACTION_PER_PWM),
    _r("present_current", 126, 2, signed=True, rw=_RO, unit=_AMPERE_PER_CURRENT),  # XL430: Present Load, 0.1 %
    _r("present_velocity", 128, 4, signed=True, rw=_RO, unit=_RAD_S_PER_VELOCITY),
    _r("present_position", 132, 4, signed=True, rw=_RO, unit=_RAD_PER_PULSE),
    _r("velocity_trajectory", 136, 4, signed=True, rw=_RO, unit=_RAD_S_PER_VELOCITY),
    _r("position_trajectory", 140, 4, signed=True, rw=_RO, unit=_RAD_PER_PULSE),
    _r("present_input_voltage", 144, 2, rw=_RO, unit=_VOLT_PER_VOLTAGE),
    _r("present_temperature", 146, 1, rw=_RO, unit=_CELSIUS_PER_TEMPERATURE),
)
"""Every X-series register robot-sac uses, by name (read-only mapping)."""

MODEL_NUMBERS: Mapping[str, int] = MappingProxyType(
    {
        # Confirmed by the model's own e-manual control table (Model Number, address 0, initial value).
        "XL430-W250": 1060,
        "XM430-W350": 1020,
        "XM430-W210": 1030,  # also the e-manual Protocol 2.0 PING example
        "XC430-W150": 1070,
        "XM540-W270": 1120,
        "XH430-W350": 1000,
        "XC430-W240": 1080,
        # From ROBOTIS' model list (dynamixel-workbench dynamixel_item.h); same layout as above.
        "XM540-W150": 1130,
        "XH430-W210": 1010,
        "XH430-V350": 1040,
        "XH430-V210": 1050,
    }
)
"""Model name -> value of Model Number (0), checked at connect so that a wrong servo is refused."""

STATE_BLOCK: tuple[int, int] = (120, 27)
"""(start address, length) of the one contiguous per-cycle sync read: realtime_tick (120) through
present_temperature (146) inclusive. One read gives time stamp, motion flags, PWM, current, velocity,
position, trajectory targets, voltage and temperature."""

HARDWARE_ERROR_BITS: Mapping[int, str] = MappingProxyType(
    {
        0: "input voltage error",
        2: "overheating error",
        3: "motor encoder error",
        4: "electrical shock error",
        5: "overload error",
    }
)
"""Bit -> meaning of Hardware Error Status (70); Shutdown (63) selects which of them cut torque."""


def hardware_error_names(bits: int) -> tuple[str, ...]:
    """Name every set bit of a Hardware Error Status value, lowest bit first.

    Bits the e-manual leaves unused are reported as ``"unknown bit N"`` rather than dropped, so that
    a fault message never reads as healthy.
    """
    return tuple(HARDWARE_ERROR_BITS.get(bit, f"unknown bit {bit}") for bit in range(8) if bits >> bit & 1)


def decode_block(data: bytes, start: int = STATE_BLOCK[0]) -> dict[str, int]:
    """Decode every X_SERIES register that lies entirely inside a block read from ``start``.

    Args:
        data: the bytes of one READ/SYNC_READ reply (without the error byte).
        start: control-table address of ``data[0]``.

    Returns:
        Register name -> raw count, in address order. Registers that the block cuts are left out.

    Raises:
        ValueError: a negative ``start``.
    """
    if start < 0:
        raise ValueError(f"start address must be >= 0, got {start}")
    end = start + len(data)
    out: dict[str, int] = {}
    for reg in sorted(X_SERIES.values(), key=lambda r: r.address):
        if start <= reg.address and reg.address + reg.size <= end:
            offset = reg.address - start
            out[reg.name] = reg.decode(data[offset : offset + reg.size])
    return out
