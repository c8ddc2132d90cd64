"""Connect-time servo setup and the per-episode health check (SAFETY.md #4-6, #10, #20).

The last line of defence lives in servo firmware, because the host can die at any moment: the
hard joint limits go into the EEPROM position limits, the speed limit into Velocity_Limit, and the
Bus_Watchdog stops a servo that hears nothing for ``bus_watchdog_s``. Everything written is read
back and compared, so a servo that silently ignored a write is caught before torque goes on.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from drivers.bus import ServoBus
from drivers.calibration import Calibration
from robot_sac.configs import SerialConfig
from robot_sac.errors import ConfigError, DeviceReset, ServoHardwareError
from robot_sac.spec import RobotSpec

log = logging.getLogger(__name__)

POSITION_CONTROL_MODE = 3
BUS_WATCHDOG_UNIT_S = 0.02
RETURN_DELAY_UNIT_S = 2e-6


def eeprom_settings(spec: RobotSpec, calibration: Calibration, config: SerialConfig) -> dict[int, dict[str, int]]:
    """The EEPROM values each servo must hold, by servo ID then register name."""
    lower = calibration.ticks_from_rad(spec.lower_rad)
    upper = calibration.ticks_from_rad(spec.upper_rad)
    velocity = calibration.velocity_units(spec.max_velocity_rad_s)
    delay = round(config.return_delay_s / RETURN_DELAY_UNIT_S)
    return {
        sid: {
            "operating_mode": POSITION_CONTROL_MODE,
            "return_delay_time": delay,
            "min_position_limit": int(min(lower[i], upper[i])),
            "max_position_limit": int(max(lower[i], upper[i])),
            "velocity_limit": max(1, int(velocity[i])),
        }
        for i, sid in enumerate(calibration.ids)
    }


def configure_servos(bus: ServoBus, spec: RobotSpec, calibration: Calibration, config: SerialConfig) -> None:
    """Ping, check models, write and verify limits and the watchdog, hold the present pose, enable torque.

    Raises:
        ConfigError: a servo is a different model than the calibration says, or its EEPROM differs
            from the config while its torque is on (EEPROM is writable only with torque off; the
            message says how to proceed).
        CommFault, ServoHardwareError: from the bus.
    """
    for joint in calibration.joints:
        model, firmware = bus.ping(joint.servo_id)
        if model != joint.servo.model_number:
            raise ConfigError(
                f"servo {joint.servo_id} ({joint.name}) reports model number {model}, but {calibration.source} "
                f"says {joint.model} ({joint.servo.model_number}); fix the calibration or the wiring"
            )
        log.debug("servo %d (%s): model %d firmware %d", joint.servo_id, joint.name, model, firmware)
    bits = {sid: bus.read_register(sid, "hardware_error_status") for sid in calibration.ids}
    for sid, b in bits.items():
        if b:
            raise ServoHardwareError(sid, b, f"servo {sid} has hardware error status 0x{b:02x} at connect; reboot it")
    wanted = eeprom_settings(spec, calibration, config)
    for sid, registers in wanted.items():
        _write_verified_eeprom(bus, sid, registers)
    watchdog = math.ceil(config.bus_watchdog_s / BUS_WATCHDOG_UNIT_S - 1e-9)
    for sid in calibration.ids:
        bus.write_register(sid, "bus_watchdog", 0)  # clears a tripped (-1) watchdog
        present = bus.read_register(sid, "present_position")
        bus.write_register(sid, "goal_position", _clamp(present, wanted[sid]))  # no jump when torque goes on
        bus.write_register(sid, "torque_enable", 1)
        if watchdog:
            bus.write_register(sid, "bus_watchdog", watchdog)
        if bus.read_register(sid, "bus_watchdog") != watchdog or bus.read_register(sid, "torque_enable") != 1:
            raise ConfigError(f"servo {sid} did not keep bus_watchdog={watchdog} / torque_enable=1 after writing them")


def _clamp(tick: int, registers: dict[str, int]) -> int:
    return int(np.clip(tick, registers["min_position_limit"], registers["max_position_limit"]))


def _write_verified_eeprom(bus: ServoBus, sid: int, registers: dict[str, int]) -> None:
    current = {name: bus.read_register(sid, name) for name in registers}
    differ = {name: (current[name], value) for name, value in registers.items() if current[name] != value}
    if not differ:
        return
    if bus.read_register(sid, "torque_enable"):
        raise ConfigError(
            f"servo {sid}: EEPROM {differ} (have, want) must change but torque is on; support the arm, disable "
            "torque (robot-sac close with serial.close_action=torque_off) and connect again"
        )
    for name, value in registers.items():
        if name in differ:
            bus.write_register(sid, name, value)
    readback = {name: bus.read_register(sid, name) for name in registers}
    if readback != registers:
        raise ConfigError(f"servo {sid}: EEPROM read back {readback}, wrote {registers}; the servo refused a limit")
    log.info("servo %d: EEPROM updated %s", sid, differ)


def check_health(bus: ServoBus, calibration: Calibration, config: SerialConfig) -> None:
    """Before an episode: no hardware error, torque still on, watchdog still armed.

    Raises:
        ServoHardwareError: a hardware error bit is set.
        DeviceReset: torque is off or the watchdog was cleared (a reboot or brown-out reset the
            servo's RAM): the robot needs re-arming, which re-runs `configure_servos`.
    """
    watchdog = math.ceil(config.bus_watchdog_s / BUS_WATCHDOG_UNIT_S - 1e-9)
    for sid in calibration.ids:
        bits = bus.read_register(sid, "hardware_error_status")
        if bits:
            raise ServoHardwareError(sid, bits)
        torque = bus.read_register(sid, "torque_enable")
        dog = bus.read_register(sid, "bus_watchdog")
        if torque != 1 or (watchdog and dog == 0):
            raise DeviceReset(
                f"servo {sid} lost its RAM settings (torque_enable={torque}, bus_watchdog={dog}): it rebooted or "
                "lost power; inspect the arm and re-arm",
                servo_ids=(sid,),
            )

        if dog == -1:  # tripped between episodes (the host paused longer than the watchdog): re-arm it
            log.warning(
                "servo %d: bus watchdog had tripped (host silent > %.2f s); re-arming it", sid, config.bus_watchdog_s
            )
            bus.write_register(sid, "bus_watchdog", 0)
            bus.write_register(sid, "bus_watchdog", watchdog)
