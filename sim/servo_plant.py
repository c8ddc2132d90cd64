"""The emulator's physics: the arm's URDF in PyBullet, moved in real time by emulated X-series servos.

`ServoPlant` steps a DIRECT-mode PyBullet client at ``profile.physics_hz`` (400 Hz) on a monotonic
deadline (`run_due`): a late step is run once and the missed periods are counted in `overruns`,
never replayed in a burst. Each physics step reads every servo's registers and writes its present
values back:

* torque on: PyBullet's POSITION_CONTROL motor drives the joint toward Goal Position with velocity
  clamp ``min(Velocity_Limit, Profile_Velocity if set, the model's no-load speed)`` and force
  ``stall torque × Current_Limit/factory × PWM_Limit/885``; a goal beyond a URDF limit drives the
  joint onto its mechanical stop at stall torque (PyBullet itself would clamp the target);
  torque off: the joint is free apart from ``gearbox_friction_nm`` (it sags under gravity, as an
  unpowered arm does);
* the arm starts at rest at ``spec.home_rad`` with torque off (Goal Position = Present Position);
* Present Position/Velocity/Current(Load)/PWM, Realtime Tick (ms, wraps at 32767), Moving, the
  trajectory registers, input voltage and temperature are converted with the calibration
  (``ticks = zero_tick + angle / rad_per_tick``) and packed into the 27-byte state block (120..146);
* temperature is first order: ``dT/dt = (T_amb + rise·(τ/τ_stall)² − T) / time_constant``; above
  Temperature_Limit the overheating bit (0x04) is set; a torque held at the motor's limit for
  ``overload_time_s`` sets the overload bit (0x20). Shutdown then turns torque off.

`EmulatorProfile` holds how the emulated hardware departs from the URDF; `NOMINAL` is the URDF as
is, `REALITY` the ways real hardware differs (heavier links, friction, backlash, weaker actuators,
encoder noise, command latency). A YAML file can override any field (`load_profile`).
"""

from __future__ import annotations

import collections
import math
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pybullet as pb

from drivers.calibration import Calibration
from drivers.control_table import STATE_BLOCK, X_SERIES
from robot_sac.config_loader import apply_overrides, from_mapping, param, read_yaml_file, to_mapping
from robot_sac.errors import ConfigError
from robot_sac.spec import RobotSpec
from sim import resolve_urdf
from sim.pybullet_backend import GRAVITY_M_S2
from sim.servo_registers import ServoRegisters

OVERHEATING_BIT = 0x04
OVERLOAD_BIT = 0x20
_FULL_PWM = 885
_TICK_WRAP = 32768
_AT_STOP_RAD = 0.005  # a joint this close to a URDF limit is on its mechanical stop
_STALL_ERROR_RAD = 0.02  # a goal this far past a mechanical stop drives the servo at full current
_BACKLASH_CROSS_FRACTION = 0.25  # the motor crosses at most this share of the play per physics step
_LOADED_FRACTION = 0.98  # |τ| at or above this fraction of the force limit counts as saturated
# State block 120..146: tick, moving, moving_status, pwm, current, velocity, position, velocity and
# position trajectory, input voltage, temperature (little-endian, as on the wire).
_STATE = struct.Struct("<HBBhhiiiiHB")
assert (STATE_BLOCK[0], STATE_BLOCK[1]) == (X_SERIES["realtime_tick"].address, _STATE.size)
assert X_SERIES["present_temperature"].address == STATE_BLOCK[0] + STATE_BLOCK[1] - 1


@dataclass(frozen=True, kw_only=True)
class EmulatorProfile:
    """How the emulated servos and arm depart from the URDF (all fields overridable from YAML)."""

    name: str = param("custom", doc="profile name, for logs")
    physics_hz: float = param(400.0, unit="Hz", ge=100.0, le=2000.0, doc="real-time physics rate")
    link_mass_scale: float = param(1.0, gt=0.0, le=5.0, doc="multiplies every moving link's mass and inertia")
    joint_damping_nm_s_rad: float = param(0.01, unit="N·m·s/rad", ge=0.0, le=1.0, doc="viscous joint friction")
    gearbox_friction_nm: float = param(
        0.0, unit="N·m", ge=0.0, le=2.0, doc="Coulomb friction of the back-driven gearbox while torque is off"
    )
    backlash_rad: float = param(
        0.0, unit="rad", ge=0.0, le=0.05, doc="half width of the gear play; the encoder sees the motor side"
    )
    actuator_gain_scale: float = param(1.0, gt=0.0, le=2.0, doc="multiplies the servo's position and velocity gains")
    position_gain: float = param(0.3, gt=0.0, le=1.0, doc="PyBullet positionGain of the servo motor")
    velocity_gain: float = param(1.0, ge=0.0, le=1.5, doc="PyBullet velocityGain of the servo motor")
    position_noise_ticks: int = param(0, ge=0, le=50, doc="Present Position noise, uniform integer in ±ticks")
    command_latency_s: float = param(0.0, unit="s", ge=0.0, le=0.5, doc="goals take effect this late")
    ambient_temperature_c: float = param(25.0, ge=-20.0, le=60.0, doc="°C the motors cool toward")
    stall_temperature_rise_c: float = param(
        60.0, ge=0.0, le=300.0, doc="°C above ambient the winding settles at under continuous stall torque"
    )
    thermal_time_constant_s: float = param(30.0, unit="s", gt=0.0, le=3600.0, doc="first-order thermal lag")
    overload_time_s: float = param(1.0, unit="s", gt=0.0, le=60.0, doc="saturated torque this long sets overload")
    input_voltage_v: float = param(12.0, ge=0.0, le=30.0, doc="reported Present Input Voltage, V")


NOMINAL = EmulatorProfile(name="nominal")
"""The URDF as is: no backlash, no noise, no latency."""

REALITY = EmulatorProfile(
    name="reality",
    link_mass_scale=1.15,  # cables, horns, screws, a light payload
    joint_damping_nm_s_rad=0.05,  # gearbox viscous friction, 5x the URDF's
    gearbox_friction_nm=0.05,  # back-driving an unpowered 353:1 gearbox is not free
    backlash_rad=math.radians(0.3),
    actuator_gain_scale=0.75,  # supply sag, warm windings: a softer servo than modelled
    position_noise_ticks=1,
    command_latency_s=0.010,  # USB adapter, bus and firmware: goals land 10 ms late
)
"""The ways real hardware differs from the nominal model."""

PROFILES = {p.name: p for p in (NOMINAL, REALITY)}
"""Built-in profiles by name."""


def load_profile(name_or_path: str, overrides: Sequence[str] = ()) -> EmulatorProfile:
    """A built-in profile by name, or a YAML file of `EmulatorProfile` fields, plus ``key=value`` overrides.

    A YAML file starts from `NOMINAL`'s values; set ``name`` in it for the logs.

    Raises:
        ConfigError: an unknown name, missing file, unknown key or out-of-range value.
    """
    if name_or_path in PROFILES:
        data, source = to_mapping(PROFILES[name_or_path]), f"profile {name_or_path}"
    elif name_or_path.endswith((".yaml", ".yml")):
        data, source = {**to_mapping(NOMINAL), **read_yaml_file(name_or_path)}, name_or_path
    else:
        raise ConfigError(f"--profile {name_or_path!r}: choose one of {sorted(PROFILES)} or give a .yaml file")
    return from_mapping(EmulatorProfile, apply_overrides(data, tuple(overrides)), source=source)


class ServoPlant:
    """The simulated arm behind a set of emulated servos.

    Args:
        spec: the robot; joint i is driven by ``servos[i]``.
        calibration: ticks <-> rad for each servo, in the spec's joint order.
        servos: the register files the plant reads goals from and writes present values to.
        profile: the physical departures from the URDF.
        seed: seeds the encoder noise.
        urdf: the URDF name in ``sim/assets`` or a path.
        clock: monotonic seconds (the realtime tick and the deadline loop use it).
    """

    def __init__(
        self,
        spec: RobotSpec,
        calibration: Calibration,
        servos: Sequence[ServoRegisters],
        profile: EmulatorProfile,
        *,
        seed: int = 0,
        urdf: str | Path = "arm4.urdf",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(servos) != spec.dof:
            raise ValueError(f"{len(servos)} servos for {spec.dof} joints")
        self.spec, self.calibration, self.servos, self.profile = spec, calibration, tuple(servos), profile
        self.period_s = 1.0 / profile.physics_hz
        self.steps = 0
        self.overruns = 0
        """Physics periods skipped because a step started late."""
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._urdf = resolve_urdf(urdf)
        self._client: int | None = None
        self._body = -1
        self._joints: list[int] = []
        self._no_load_rad_s: list[float] = []
        self._next_deadline_s = 0.0
        joints = calibration.joints
        self._zero = [float(j.zero_tick) for j in joints]
        self._rad_per_tick = [j.rad_per_tick for j in joints]
        self._vel_unit = [j.direction * j.servo.velocity_rad_s_per_unit for j in joints]
        self._effort_unit = [j.direction * j.servo.effort_nm_per_unit for j in joints]
        self._stall_nm = [j.servo.stall_torque_nm for j in joints]
        self._limits_rad = list(zip(spec.lower_rad.tolist(), spec.upper_rad.tolist(), strict=True))
        self._motor_rad = spec.home_rad.tolist()  # encoder (motor) side of the gear play
        self._temperature_c = [profile.ambient_temperature_c] * spec.dof
        self._saturated_s = [0.0] * spec.dof
        self._latency_steps = round(profile.command_latency_s * profile.physics_hz)
        self._goal_queue: collections.deque[list[int]] = collections.deque()
        self.frozen: list[bool] = [False] * spec.dof
        """Per servo: skip writing tick and present values (the freeze_tick fault)."""

    # --- lifecycle ---------------------------------------------------------------------------------

    def connect(self) -> None:
        """Load the world, put the arm at ``spec.home_rad`` at rest, write the power-on present values."""
        if not self._urdf.is_file():
            raise ConfigError(f"URDF {self._urdf} does not exist")
        client = pb.connect(pb.DIRECT)
        self._client = client
        pb.setGravity(0.0, 0.0, GRAVITY_M_S2, physicsClientId=client)
        pb.setTimeStep(self.period_s, physicsClientId=client)
        pb.createMultiBody(0.0, pb.createCollisionShape(pb.GEOM_PLANE, physicsClientId=client), physicsClientId=client)
        self._body = pb.loadURDF(
            str(self._urdf), useFixedBase=True, flags=pb.URDF_USE_INERTIA_FROM_FILE, physicsClientId=client
        )
        count = pb.getNumJoints(self._body, physicsClientId=client)
        infos = [pb.getJointInfo(self._body, j, physicsClientId=client) for j in range(count)]
        by_name = {info[1].decode(): info for info in infos if info[2] == pb.JOINT_REVOLUTE}
        if tuple(by_name) != self.spec.joint_names:
            names = list(self.spec.joint_names)
            raise ConfigError(f"{self._urdf}: revolute joints {list(by_name)} differ from the spec's {names}")
        self._joints = [by_name[name][0] for name in self.spec.joint_names]
        self._no_load_rad_s = [by_name[name][11] for name in self.spec.joint_names]
        for joint, q in zip(self._joints, self.spec.home_rad.tolist(), strict=True):
            mass, _, inertia, *_ = pb.getDynamicsInfo(self._body, joint, physicsClientId=client)
            scale = self.profile.link_mass_scale
            pb.changeDynamics(
                self._body, joint, mass=mass * scale, localInertiaDiagonal=[i * scale for i in inertia],
                jointDamping=self.profile.joint_damping_nm_s_rad, physicsClientId=client,
            )  # fmt: skip
            pb.resetJointState(self._body, joint, q, 0.0, physicsClientId=client)
        home = [self._ticks(i, q) for i, q in enumerate(self.spec.home_rad.tolist())]
        for servo, ticks in zip(self.servos, home, strict=True):
            servo.set("present_position", ticks)
            servo.set("goal_position", ticks)
            servo.set("position_trajectory", ticks)
        self._goal_queue = collections.deque([home] * self._latency_steps)
        self._next_deadline_s = self._clock()

    def close(self) -> None:
        """Disconnect PyBullet. Idempotent."""
        client, self._client = self._client, None
        if client is not None and pb.isConnected(physicsClientId=client):
            pb.disconnect(physicsClientId=client)

    # --- real-time loop ----------------------------------------------------------------------------

    def due_in_s(self) -> float:
        """Seconds until the next physics step is due (<= 0: due now)."""
        return self._next_deadline_s - self._clock()

    def run_due(self) -> bool:
        """Run one physics step if its deadline has come; True if it ran.

        The next deadline is one period later; if that has passed too, the missed periods are counted
        as overruns and skipped (no burst catch-up).
        """
        now = self._clock()
        if now < self._next_deadline_s:
            return False
        self.step()
        self._next_deadline_s += self.period_s
        if self._next_deadline_s <= now:
            missed = math.floor((now - self._next_deadline_s) / self.period_s) + 1
            self.overruns += missed
            self._next_deadline_s += missed * self.period_s
        return True

    # --- one physics step --------------------------------------------------------------------------

    def step(self) -> None:
        """Apply the servos' commands, advance the physics by one period, write the present values."""
        client = self._client
        if client is None:
            raise RuntimeError("ServoPlant.step() before connect()")
        self._goal_queue.append([s.get("goal_position") for s in self.servos])
        goals = self._goal_queue.popleft()  # the goal of command_latency_s ago
        enabled = [s.torque_enabled for s in self.servos]
        states = pb.getJointStates(self._body, self._joints, physicsClientId=client)
        forces = [0.0] * self.spec.dof
        for i, joint in enumerate(self._joints):
            if enabled[i]:
                forces[i] = self._drive(i, joint, states[i][0], goals[i])
            else:
                pb.setJointMotorControl2(
                    self._body, joint, pb.VELOCITY_CONTROL, targetVelocity=0.0,
                    force=self.profile.gearbox_friction_nm, physicsClientId=client,
                )  # fmt: skip
        pb.stepSimulation(physicsClientId=client)
        self.steps += 1
        states = pb.getJointStates(self._body, self._joints, physicsClientId=client)
        now = self._clock()
        for i, servo in enumerate(self.servos):
            q, qdot, _, torque = states[i]
            # A free joint's friction motor is not the servo's current: report 0 with torque off.
            torque = (self._against_stop(i, q, goals[i], forces[i]) or torque) if enabled[i] else 0.0
            self._update_backlash(i, q, torque)
            self._update_faults(i, servo, torque, forces[i])
            if not self.frozen[i]:
                self._write_state(i, servo, now, qdot, torque, goals[i])

    def _against_stop(self, i: int, q: float, goal_ticks: int, force_nm: float) -> float:
        """The torque (signed) joint i pushes into a limit it sits on while its goal lies beyond it, else 0.

        PyBullet clamps position targets to the URDF limits, so its motor relaxes at a limit; a real
        servo driven into its mechanical stop pushes with its position loop's output, which reaches
        full current (and overloads) once the goal is `_STALL_ERROR_RAD` past the stop. A goal a tick
        past it (the hold-present-pose goal of an arm that came to rest on its stop) pushes gently.
        """
        goal_rad = (goal_ticks - self._zero[i]) * self._rad_per_tick[i]
        lower, upper = (float(v) for v in self._limits_rad[i])
        if goal_rad > upper and q >= upper - _AT_STOP_RAD:
            return force_nm * min(1.0, (goal_rad - upper) / _STALL_ERROR_RAD)
        if goal_rad < lower and q <= lower + _AT_STOP_RAD:
            return -force_nm * min(1.0, (lower - goal_rad) / _STALL_ERROR_RAD)
        return 0.0

    def _drive(self, i: int, joint: int, q: float, goal_ticks: int) -> float:
        """Command joint i's position motor toward ``goal_ticks``; returns its force limit in N·m."""
        servo = self.servos[i]
        goal_rad = (goal_ticks - self._zero[i]) * self._rad_per_tick[i]
        # The servo closes its loop on the motor-side encoder: drive the output by the encoder's error.
        target_rad = q + goal_rad - self._motor_rad[i]
        speed = min(servo.get("velocity_limit") * abs(self._vel_unit[i]), self._no_load_rad_s[i])
        profile_velocity = servo.get("profile_velocity")
        if profile_velocity > 0:
            speed = min(speed, profile_velocity * abs(self._vel_unit[i]))
        force = self._stall_nm[i] * min(servo.get("pwm_limit"), _FULL_PWM) / _FULL_PWM
        factory_current = servo.defaults.current_limit
        if factory_current > 0:
            force *= min(servo.get("current_limit"), factory_current) / factory_current
        gain = self.profile.actuator_gain_scale
        pb.setJointMotorControl2(
            self._body, joint, pb.POSITION_CONTROL, targetPosition=target_rad, targetVelocity=0.0, force=force,
            positionGain=self.profile.position_gain * gain, velocityGain=self.profile.velocity_gain * gain,
            maxVelocity=max(speed, 1e-4), physicsClientId=self._client,
        )  # fmt: skip
        return force

    def _update_backlash(self, i: int, q: float, torque_nm: float) -> None:
        """Move the motor side within the gear play: loaded teeth sit on the loaded side."""
        play = self.profile.backlash_rad
        if play == 0.0:
            self._motor_rad[i] = q
            return
        threshold = 0.02 * self._stall_nm[i]
        motor = min(max(self._motor_rad[i], q - play), q + play)  # never outside the play
        if abs(torque_nm) > threshold:
            # The loaded teeth close on the loaded side, but the motor takes time to cross the gap:
            # jumping 2 x play in one physics step moved the servo's output target as far, made the
            # next torque flip sign at the force limit, and kept a resting joint chattering at stall
            # until its overload protection tripped (seen on the base joint at rest).
            side = q + play if torque_nm > 0 else q - play
            step = _BACKLASH_CROSS_FRACTION * play
            motor += min(max(side - motor, -step), step)
        self._motor_rad[i] = motor

    def _update_faults(self, i: int, servo: ServoRegisters, torque_nm: float, force_nm: float) -> None:
        """Thermal model, overheating and overload bits."""
        p = self.profile
        load = torque_nm / self._stall_nm[i]
        settle_c = p.ambient_temperature_c + p.stall_temperature_rise_c * load * load
        self._temperature_c[i] += (settle_c - self._temperature_c[i]) * self.period_s / p.thermal_time_constant_s
        if self._temperature_c[i] > servo.get("temperature_limit"):
            servo.raise_hardware_error(OVERHEATING_BIT)
        saturated = force_nm > 0.0 and abs(torque_nm) >= _LOADED_FRACTION * force_nm
        self._saturated_s[i] = self._saturated_s[i] + self.period_s if saturated else 0.0
        if self._saturated_s[i] > p.overload_time_s:
            servo.raise_hardware_error(OVERLOAD_BIT)

    def _write_state(self, i: int, servo: ServoRegisters, now: float, qdot: float, torque: float, goal: int) -> None:
        """Pack the present values into the state block (120..146)."""
        noise = self.profile.position_noise_ticks
        position = self._ticks(i, self._motor_rad[i])
        if noise:
            position += int(self._rng.integers(-noise, noise + 1))
        velocity = _clamp(round(qdot / self._vel_unit[i]), 2**31 - 1)
        current_limit = servo.defaults.current_limit or 1000  # XL430 reports load in 0.1 %
        current = _clamp(round(torque / self._effort_unit[i]), current_limit)
        pwm = _clamp(round(torque / self._stall_nm[i] * _FULL_PWM), _FULL_PWM)
        moving = int(abs(velocity) > servo.get("moving_threshold"))
        in_position = int(abs(goal - position) <= servo.get("moving_threshold"))
        tick = int((now - servo.tick_origin_s) * 1000.0) % _TICK_WRAP
        voltage = round(self.profile.input_voltage_v * 10.0)
        temperature = _clamp(round(self._temperature_c[i]), 127)
        _STATE.pack_into(
            servo.memory, STATE_BLOCK[0],
            tick, moving, in_position, pwm, current, velocity, position, 0, goal, voltage, max(temperature, 0),
        )  # fmt: skip

    def _ticks(self, i: int, angle_rad: float) -> int:
        return round(self._zero[i] + angle_rad / self._rad_per_tick[i])

    # --- inspection --------------------------------------------------------------------------------

    def joint_positions_rad(self) -> list[float]:
        """The true output-side joint angles (not what the encoders report), rad."""
        states = pb.getJointStates(self._body, self._joints, physicsClientId=self._client)
        return [s[0] for s in states]


def _clamp(value: int, limit: int) -> int:
    return max(-limit, min(limit, value))
