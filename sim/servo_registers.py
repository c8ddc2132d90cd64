"""One emulated Dynamixel X-series servo's control-table memory and the access rules its firmware enforces.

`ServoRegisters` holds the bytes of the control table (`TABLE_SIZE` bytes, laid out as
`drivers.control_table.X_SERIES`), initialised like a factory servo of the calibration's model, and
answers READ and WRITE requests with the status error number a real servo would send:

* a write to a read-only register, or into a reserved gap of the table → ACCESS;
* an EEPROM write (address < 64) while Torque Enable is 1 → ACCESS;
* a write that covers part of a register or runs past the table end → DATA_LENGTH;
  a read that runs past the table end → DATA_LENGTH, one that starts past it → ACCESS;
* a value outside a register's range (Torque Enable not 0/1, an ID above 252, ...) → DATA_RANGE;
* Goal Position outside [Min_Position_Limit, Max_Position_Limit] in position mode → DATA_LIMIT,
  not applied (e-manual "Goal Position": the limits bound the goal);
* any goal value while the Bus Watchdog has tripped → DATA_RANGE (e-manual "Bus Watchdog").

A rejected write changes nothing, also when it spans several registers. Writing Torque Enable = 1
keeps Goal Position as it is: a stale goal makes the servo move there, as on the real servo, so a
host must write the present position as goal before enabling torque.

Bus Watchdog (98, signed, 20 ms units): when it is > 0 and torque is on, a servo that receives no
instruction addressed to it (unicast, broadcast, or a sync/bulk packet naming it; see `feed_watchdog`)
for ``value × 20 ms`` trips: the register latches -1, Goal Position is set to Present Position (the
servo stops), and goal writes are refused until 0 is written to 98.

Hardware Error Status (70): a bit set by `raise_hardware_error` that is also set in Shutdown (63)
turns torque off, and torque cannot be re-enabled until a reboot; while any bit is set every status
packet carries `ALERT_BIT` (`status_error`).

Time comes from an injectable ``clock`` (monotonic seconds) so that tests drive the watchdog.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from drivers.control_table import MODEL_NUMBERS, X_SERIES, Register
from drivers.protocol2 import ALERT_BIT, MAX_ID, StatusError

TABLE_SIZE = max(reg.address + reg.size for reg in X_SERIES.values())
"""Bytes of emulated control table: address 0 through Present Temperature (146)."""

EEPROM_END = 64
"""First RAM address; EEPROM (0..63) keeps its values through a reboot."""

WATCHDOG_UNIT_S = 0.02
"""Bus Watchdog unit: 20 ms per count."""

FIRMWARE_VERSION = 46
"""Firmware version reported by PING and register 6."""

BOOT_TIME_S = 0.1
"""A rebooting servo answers nothing for this long."""

GOAL_REGISTERS = ("goal_pwm", "goal_current", "goal_velocity", "goal_position")
"""Goal values that become read-only while the Bus Watchdog is tripped."""

POSITION_CONTROL = 3
"""Operating Mode value of (single-turn) position control, the factory setting."""

BAUD_RATE_CODES: Mapping[int, int] = {
    9_600: 0,
    57_600: 1,
    115_200: 2,
    1_000_000: 3,
    2_000_000: 4,
    3_000_000: 5,
    4_000_000: 6,
    4_500_000: 7,
}
"""Baud rate in bit/s -> value of the Baud Rate register (8)."""

_OWNER: tuple[Register | None, ...] = tuple(
    next((r for r in X_SERIES.values() if r.address <= a < r.address + r.size), None) for a in range(TABLE_SIZE)
)
"""The register each table byte belongs to (None for reserved gaps)."""

# Allowed raw values (inclusive) of registers whose e-manual range is narrower than their width.
_RANGES: Mapping[str, tuple[int, int]] = {
    "id": (0, MAX_ID),
    "baud_rate": (0, 7),
    "return_delay_time": (0, 254),
    "operating_mode": (0, 16),
    "protocol_type": (1, 2),
    "temperature_limit": (0, 100),
    "max_voltage_limit": (60, 160),
    "min_voltage_limit": (60, 160),
    "pwm_limit": (0, 885),
    "velocity_limit": (0, 1023),
    "max_position_limit": (0, 4095),
    "min_position_limit": (0, 4095),
    "torque_enable": (0, 1),
    "led": (0, 1),
    "status_return_level": (0, 2),
    "bus_watchdog": (0, 127),
}


@dataclass(frozen=True)
class ModelDefaults:
    """Factory EEPROM values that differ between X-series models (e-manual control tables).

    Attributes:
        velocity_limit: Velocity Limit (44), 0.229 rev/min units.
        current_limit: Current Limit (38), 2.69 mA units; 0 where the model has none (XL430).
        max_voltage_limit: Max Voltage Limit (32), 0.1 V units.
        min_voltage_limit: Min Voltage Limit (34), 0.1 V units.
        position_gains: Position D, I, P gains (80, 82, 84).
        velocity_gains: Velocity I, P gains (76, 78).
    """

    velocity_limit: int
    current_limit: int
    max_voltage_limit: int
    min_voltage_limit: int
    position_gains: tuple[int, int, int]
    velocity_gains: tuple[int, int]


MODEL_DEFAULTS: Mapping[str, ModelDefaults] = {
    "XM430-W350": ModelDefaults(200, 1193, 160, 95, (0, 0, 800), (1920, 100)),
    "XL430-W250": ModelDefaults(265, 0, 140, 60, (0, 0, 640), (1000, 100)),
}
"""Factory defaults by model; other X-series models get the XM430-W350 values."""


class ServoRegisters:
    """The control table of one emulated servo.

    Args:
        servo_id: bus ID (0..252), written to register 7.
        model: model name, a key of `drivers.control_table.MODEL_NUMBERS`.
        baud_rate: the bus speed in bit/s, written to register 8 as its code.
        clock: monotonic time in s; the watchdog, the realtime tick origin and the boot time use it.
    """

    def __init__(
        self, servo_id: int, model: str, *, baud_rate: int = 1_000_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if model not in MODEL_NUMBERS:
            raise ValueError(f"unknown servo model {model!r}; known: {sorted(MODEL_NUMBERS)}")
        if not 0 <= servo_id <= MAX_ID:
            raise ValueError(f"servo_id must be in 0..{MAX_ID}, got {servo_id}")
        if baud_rate not in BAUD_RATE_CODES:
            raise ValueError(f"baud_rate {baud_rate} is not an X-series rate; choose one of {sorted(BAUD_RATE_CODES)}")
        self.model = model
        self.defaults = MODEL_DEFAULTS.get(model, MODEL_DEFAULTS["XM430-W350"])
        self._clock = clock
        self.memory = bytearray(TABLE_SIZE)
        self._factory_eeprom(servo_id, model, BAUD_RATE_CODES[baud_rate])
        self.tick_origin_s = clock()
        self.boot_until_s = float("-inf")
        self._last_instruction_s = self.tick_origin_s
        self._reset_ram()

    # --- raw access (the plant and fault injection; no access rules) ---------------------------------

    def get(self, name: str) -> int:
        """Raw value of the register ``name``."""
        reg = X_SERIES[name]
        return reg.decode(bytes(self.memory[reg.address : reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        """Store a raw value without access checks (the plant writes present values with it)."""
        reg = X_SERIES[name]
        self.memory[reg.address : reg.address + reg.size] = reg.encode(value)

    @property
    def servo_id(self) -> int:
        """The bus ID (register 7)."""
        return self.get("id")

    @property
    def torque_enabled(self) -> bool:
        """Torque Enable (64) is 1."""
        return self.memory[X_SERIES["torque_enable"].address] == 1

    @property
    def watchdog_tripped(self) -> bool:
        """Bus Watchdog (98) latched -1."""
        return self.get("bus_watchdog") < 0

    @property
    def booting(self) -> bool:
        """The servo is rebooting and answers nothing (`BOOT_TIME_S` after `reboot`)."""
        return self._clock() < self.boot_until_s

    def status_error(self, error: int = StatusError.NONE) -> int:
        """The error byte of a status packet: ``error`` plus `ALERT_BIT` while a hardware error is set."""
        return error | (ALERT_BIT if self.get("hardware_error_status") else 0)

    # --- protocol access -----------------------------------------------------------------------------

    def read(self, address: int, length: int) -> tuple[int, bytes]:
        """READ ``length`` bytes from ``address``.

        Returns:
            (error number, data): `StatusError.NONE` and the bytes, or an error and ``b""``.
        """
        if address >= TABLE_SIZE:
            return StatusError.ACCESS, b""
        if length < 1 or address + length > TABLE_SIZE:
            return StatusError.DATA_LENGTH, b""
        return StatusError.NONE, bytes(self.memory[address : address + length])

    def write(self, address: int, data: bytes) -> int:
        """WRITE ``data`` at ``address`` with the servo's access rules; all of it is applied or none.

        Returns:
            The `StatusError` number to send (`StatusError.NONE` when applied).
        """
        end = address + len(data)
        if address >= TABLE_SIZE:
            return StatusError.ACCESS
        if not data or end > TABLE_SIZE:
            return StatusError.DATA_LENGTH
        owners = _OWNER[address:end]
        if any(reg is None for reg in owners):
            return StatusError.ACCESS  # reserved bytes
        first, last = owners[0], owners[-1]
        assert first is not None and last is not None
        if first.address != address or last.address + last.size != end:
            return StatusError.DATA_LENGTH  # starts or ends inside a register
        regs = [reg for a, reg in enumerate(owners, start=address) if reg is not None and reg.address == a]
        values = {r.name: r.decode(data[r.address - address : r.address - address + r.size]) for r in regs}
        for reg in regs:
            error = self._check(reg, values[reg.name], values)
            if error != StatusError.NONE:
                return error
        self._apply(address, data, values)
        return StatusError.NONE

    def _check(self, reg: Register, value: int, values: Mapping[str, int]) -> int:
        """The error a write of ``value`` to ``reg`` gets (``values``: the other registers of the same write)."""
        if not reg.writable:
            return StatusError.ACCESS
        if reg.eeprom and self.torque_enabled:
            return StatusError.ACCESS
        low, high = _RANGES.get(reg.name, (reg.min_raw, reg.max_raw))
        if not low <= value <= high:
            return StatusError.DATA_RANGE
        if reg.name == "bus_watchdog" and value != 0 and self.watchdog_tripped:
            return StatusError.DATA_RANGE  # clear the trip with 0 first
        if reg.name in GOAL_REGISTERS and self.watchdog_tripped and values.get("bus_watchdog") != 0:
            return StatusError.DATA_RANGE
        if reg.name == "goal_position" and self.get("operating_mode") == POSITION_CONTROL:
            lower = values.get("min_position_limit", self.get("min_position_limit"))
            upper = values.get("max_position_limit", self.get("max_position_limit"))
            if not lower <= value <= upper:
                return StatusError.DATA_LIMIT
        return StatusError.NONE

    def _apply(self, address: int, data: bytes, values: Mapping[str, int]) -> None:
        """Store an accepted write and run its side effects."""
        self.memory[address : address + len(data)] = data
        if values.get("torque_enable") == 1 and self.get("hardware_error_status") & self.get("shutdown"):
            # A shutdown keeps torque off until REBOOT: the rest of the write lands, torque stays 0.
            self.set("torque_enable", 0)
        if "bus_watchdog" in values:
            self._last_instruction_s = self._clock()

    # --- watchdog ------------------------------------------------------------------------------------

    def feed_watchdog(self) -> None:
        """An instruction addressed to this servo arrived (restarts the Bus Watchdog interval)."""
        self._last_instruction_s = self._clock()

    def poll_watchdog(self) -> bool:
        """Trip the Bus Watchdog if its interval has passed; True on the call that trips it.

        Armed only while the register is > 0 and torque is on. Tripping latches -1 and sets Goal
        Position to Present Position, so the servo holds where it is.
        """
        setting = self.get("bus_watchdog")
        if setting <= 0 or not self.torque_enabled:
            return False
        if self._clock() - self._last_instruction_s <= setting * WATCHDOG_UNIT_S:
            return False
        self.set("bus_watchdog", -1)
        self.set("goal_position", self.get("present_position"))
        return True

    # --- faults and reboot ---------------------------------------------------------------------------

    def raise_hardware_error(self, bits: int) -> None:
        """Set Hardware Error Status bits (70); bits enabled in Shutdown (63) turn torque off."""
        status = self.get("hardware_error_status") | (bits & 0xFF)
        self.set("hardware_error_status", status)
        if status & self.get("shutdown"):
            self.set("torque_enable", 0)

    def reboot(self) -> None:
        """REBOOT: RAM back to defaults (torque off, watchdog 0, errors cleared, goal = present).

        The realtime tick restarts at 0 and the servo answers nothing for `BOOT_TIME_S`. EEPROM keeps
        its values.
        """
        now = self._clock()
        self._reset_ram()
        self.tick_origin_s = now
        self.boot_until_s = now + BOOT_TIME_S
        self._last_instruction_s = now

    def _factory_eeprom(self, servo_id: int, model: str, baud_code: int) -> None:
        d = self.defaults
        eeprom = {
            "model_number": MODEL_NUMBERS[model],
            "firmware_version": FIRMWARE_VERSION,
            "id": servo_id,
            "baud_rate": baud_code,
            "return_delay_time": 250,  # 500 us
            "operating_mode": POSITION_CONTROL,
            "secondary_id": 255,
            "protocol_type": 2,
            "moving_threshold": 10,
            "temperature_limit": 80,
            "max_voltage_limit": d.max_voltage_limit,
            "min_voltage_limit": d.min_voltage_limit,
            "pwm_limit": 885,
            "current_limit": d.current_limit,
            "velocity_limit": d.velocity_limit,
            "max_position_limit": 4095,
            "min_position_limit": 0,
            "shutdown": 0x34,  # overheating | electrical shock | overload
        }
        for name, value in eeprom.items():
            self.set(name, value)

    def _reset_ram(self) -> None:
        """Power-on RAM: torque off, status return level 2, goals from the EEPROM limits, goal = present."""
        present = self.get("present_position")
        self.memory[EEPROM_END:] = bytes(TABLE_SIZE - EEPROM_END)
        d = self.defaults
        ram = {
            "status_return_level": 2,
            "velocity_i_gain": d.velocity_gains[0],
            "velocity_p_gain": d.velocity_gains[1],
            "position_d_gain": d.position_gains[0],
            "position_i_gain": d.position_gains[1],
            "position_p_gain": d.position_gains[2],
            "goal_pwm": self.get("pwm_limit"),
            "goal_current": self.get("current_limit"),
            "goal_position": present,
            "present_position": present,
            "position_trajectory": present,
            "present_input_voltage": 120,
            "present_temperature": 25,
        }
        for name, value in ram.items():
            self.set(name, value)
