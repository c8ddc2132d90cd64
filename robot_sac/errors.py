"""The typed error hierarchy shared by every layer (SAFETY.md D.2).

Every fault a robot stack must survive has its own type so that callers can react by type, not by
parsing messages. The environment catches `RobotFault` subclasses, commands the safe action for
their `level`, and ends the episode with ``truncated=True`` and ``info["fault"] = type(err).__name__``.
Anything that is not a `RobotFault` is a bug and propagates.

Configuration and storage errors are not robot faults: they are raised before (or outside) a
control loop, and they say how to fix the problem.
"""

from __future__ import annotations

from enum import Enum


class FaultLevel(Enum):
    """How far a fault reaches.

    WARN: counted and logged, the episode goes on.
    EPISODE_ABORT: hold, end the episode with ``truncated=True``; the next ``reset()`` may proceed.
    LATCHED: hold and refuse ``reset()`` until an operator re-arms the robot.
    """

    WARN = "warn"
    EPISODE_ABORT = "episode_abort"
    LATCHED = "latched"


class RobotSacError(Exception):
    """Base class of every error robot-sac raises on purpose."""


class RobotFault(RobotSacError):
    """A fault of the robot, its link, its commands or its timing.

    Attributes:
        level: what the caller must do (see `FaultLevel`).
    """

    level: FaultLevel = FaultLevel.EPISODE_ABORT


# --- communication -----------------------------------------------------------------------------


class CommFault(RobotFault):
    """The link to the robot failed (serial bus, USB adapter, network).

    Attributes:
        servo_ids: the bus IDs involved (empty when the whole link failed).
    """

    def __init__(self, message: str = "", servo_ids: tuple[int, ...] = ()) -> None:
        self.servo_ids = servo_ids
        super().__init__(message)


class CommTimeout(CommFault):
    """A device did not answer within its time budget."""


class CommCorrupt(CommFault):
    """A reply arrived but failed its integrity check (CRC, framing, length)."""


class DeviceLost(CommFault):
    """The port disappeared (cable pulled, adapter reset). Re-open only after operator re-arm."""

    level = FaultLevel.LATCHED


class DeviceReset(CommFault):
    """A device rebooted (RAM reset: torque off, watchdog cleared). Requires re-arm."""

    level = FaultLevel.LATCHED


class ServoCommandRejected(CommFault):
    """A servo answered a request with an error number (access, data range/limit, instruction)."""


class CommandNotApplied(CommFault):
    """A command was sent but its effect is not seen in the measured state."""


# --- hardware ----------------------------------------------------------------------------------


class HardwareFault(RobotFault):
    """The device itself reports a fault (overload, overheat, voltage, encoder)."""

    level = FaultLevel.LATCHED


class ServoHardwareError(HardwareFault):
    """A servo's hardware error status is set. Latched: never retried through.

    Attributes:
        servo_id: the bus ID of the servo.
        status_bits: the raw hardware error status byte.
    """

    def __init__(self, servo_id: int, status_bits: int, message: str = "") -> None:
        self.servo_id = servo_id
        self.status_bits = status_bits
        super().__init__(message or f"servo {servo_id} reports hardware error status 0x{status_bits:02x}")


# --- safety ------------------------------------------------------------------------------------


class SafetyViolation(RobotFault):
    """A command or a measurement is outside what is safe to execute or believe."""


class NonFiniteAction(SafetyViolation):
    """An action or target holds NaN or inf. It is never clipped into a command."""


class ActionOutOfRange(SafetyViolation):
    """A finite action so far outside the action space that the policy must be broken (e.g. 1e9).

    Small excursions are clipped; this is for values beyond ``SafetyConfig.max_abs_action``.
    """


class NonFiniteObservation(SafetyViolation):
    """A measured quantity holds NaN or inf."""


class ObservationOutOfBounds(SafetyViolation):
    """A measured quantity is outside its physical range (sensor glitch, decode error)."""


class LimitExceeded(SafetyViolation):
    """A target or a measurement exceeds a hard limit (position, velocity, effort, temperature).

    Attributes:
        kind: which limit: ``"position"``, ``"velocity"``, ``"effort"`` or ``"temperature"``.
    """

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class WorkspaceViolation(SafetyViolation):
    """The end effector left its allowed workspace."""


# --- timing ------------------------------------------------------------------------------------


class TimingFault(RobotFault):
    """The control loop or a data source missed its deadline."""


class DeadlineMiss(TimingFault):
    """Too many consecutive control periods overran."""


class StaleObservation(TimingFault):
    """A measurement did not advance (frozen sensor tick, repeated frame, old stamp)."""


# --- not robot faults --------------------------------------------------------------------------


class EnvStateError(RobotSacError):
    """The environment was used out of order (step before reset, step after a fault)."""


class ModelContractError(RobotSacError):
    """An exported policy does not match the robot, the env or the runtime it is loaded into."""


class ModelIntegrityError(RobotSacError):
    """An exported policy file does not match its recorded hash (corrupted or tampered)."""


class ConfigError(RobotSacError):
    """A configuration file or override is invalid. The message names the key and the fix."""


class StorageError(RobotSacError):
    """Writing or reading a checkpoint, buffer or artifact failed (disk full, torn file)."""


def fault_name(err: BaseException) -> str:
    """The name reported in ``info["fault"]`` and logs for a fault: its class name."""
    return type(err).__name__
