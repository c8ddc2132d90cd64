"""What a robot is (`RobotSpec`, from YAML) and what it measures (`RobotState`, every control tick).

The spec is never probed from hardware: it is the configuration the safety filter, the env, the
simulator and the hardware driver all agree on. Units are SI; angles in rad, joint frames in m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from robot_sac.config_loader import load_config, param
from robot_sac.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class JointSpec:
    """One revolute joint: limits, safety bounds and its frame in the kinematic chain."""

    name: str = param(doc="unique joint name, as in the URDF")
    lower_rad: float = param(unit="rad", ge=-2 * math.pi, le=2 * math.pi, doc="hard lower limit")
    upper_rad: float = param(unit="rad", ge=-2 * math.pi, le=2 * math.pi, doc="hard upper limit")
    soft_margin_rad: float = param(
        unit="rad", ge=0.0, le=0.5, doc="commands stay this far inside the hard limits (safety filter stage 2)"
    )
    max_step_rad: float = param(
        unit="rad", gt=0.0, le=0.5, doc="largest target change per control tick; also the policy's action scale"
    )
    max_velocity_rad_s: float = param(
        unit="rad/s", gt=0.0, le=20.0, doc="largest commanded joint speed (safety filter stage 4)"
    )
    max_effort_nm: float = param(unit="N·m", gt=0.0, le=100.0, doc="servo stall torque, the sim's motor force limit")
    home_rad: float = param(unit="rad", ge=-2 * math.pi, le=2 * math.pi, doc="pose reset() moves to")
    origin_xyz_m: tuple[float, float, float] = param(
        unit="m", ge=-1.0, le=1.0, doc="joint frame origin in the parent joint's frame (base frame for joint 0)"
    )
    axis_xyz: tuple[float, float, float] = param(ge=-1.0, le=1.0, doc="unit rotation axis in the joint frame")

    def __post_init__(self) -> None:
        """Cross-field checks: ordered limits, a margin that fits, home inside the soft limits."""
        if not self.lower_rad < self.upper_rad:
            raise ConfigError(
                f"joint {self.name!r}: lower_rad ({self.lower_rad}) must be below upper_rad ({self.upper_rad})"
            )
        if 2 * self.soft_margin_rad >= self.upper_rad - self.lower_rad:
            raise ConfigError(
                f"joint {self.name!r}: soft_margin_rad {self.soft_margin_rad} rad leaves no room inside "
                f"[{self.lower_rad}, {self.upper_rad}] rad; use a margin below half the range"
            )
        if not self.soft_lower_rad <= self.home_rad <= self.soft_upper_rad:
            raise ConfigError(
                f"joint {self.name!r}: home_rad {self.home_rad} rad is outside the soft limits "
                f"[{self.soft_lower_rad:.4f}, {self.soft_upper_rad:.4f}] rad; move home inside them"
            )
        norm = math.sqrt(sum(a * a for a in self.axis_xyz))
        if abs(norm - 1.0) > 1e-6:
            raise ConfigError(f"joint {self.name!r}: axis_xyz {self.axis_xyz} must be a unit vector (norm {norm:.6f})")

    @property
    def soft_lower_rad(self) -> float:
        """Lowest position the safety filter will command."""
        return self.lower_rad + self.soft_margin_rad

    @property
    def soft_upper_rad(self) -> float:
        """Highest position the safety filter will command."""
        return self.upper_rad - self.soft_margin_rad


@dataclass(frozen=True, kw_only=True)
class RobotSpec:
    """A robot: its joints in chain order, control rate and plausibility bounds for measurements.

    Array properties have shape ``(dof,)``, dtype float64, and are read-only.
    """

    name: str = param(doc="robot name, recorded in exported policies")
    control_hz: float = param(unit="Hz", gt=0.0, le=1000.0, doc="control rate: one step() per period")
    joints: tuple[JointSpec, ...] = param(doc="joints in kinematic-chain order, base first")
    tool_offset_m: tuple[float, float, float] = param(
        unit="m", ge=-1.0, le=1.0, doc="end-effector point in the last joint's frame"
    )
    position_tolerance_rad: float = param(
        0.05,
        unit="rad",
        ge=0.0,
        le=0.5,
        doc="how far past a hard limit a measured position may read before it is a fault",
    )
    measured_velocity_limit_rad_s: float = param(
        12.0, unit="rad/s", gt=0.0, le=100.0, doc="a measured joint speed above this is a sensor or physics fault"
    )
    command_velocity_scale: float = param(
        1.0,
        gt=0.0,
        le=1.0,
        doc="the safety filter commands at most this share of each joint's max_velocity_rad_s (stricter limits "
        "while a policy learns on the arm; the servos' firmware limit stays max_velocity_rad_s)",
    )

    def __post_init__(self) -> None:
        """Cross-field checks: at least one joint, unique names."""
        if not self.joints:
            raise ConfigError("joints: a robot needs at least one joint")
        names = [j.name for j in self.joints]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"joints: duplicate joint names {dupes}; every joint needs a unique name")

    @property
    def command_velocity_rad_s(self) -> np.ndarray:
        """The safety filter's speed bound per joint, ``max_velocity_rad_s * command_velocity_scale``, (dof,)."""
        return self.max_velocity_rad_s * self.command_velocity_scale

    @property
    def dof(self) -> int:
        """Number of joints."""
        return len(self.joints)

    @property
    def dt_s(self) -> float:
        """Control period in seconds."""
        return 1.0 / self.control_hz

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Joint names in chain order."""
        return tuple(j.name for j in self.joints)

    def _array(self, attr: str) -> np.ndarray:
        out = np.array([getattr(j, attr) for j in self.joints], dtype=np.float64)
        out.flags.writeable = False
        return out

    @cached_property
    def lower_rad(self) -> np.ndarray:
        """Hard lower limits, shape (dof,)."""
        return self._array("lower_rad")

    @cached_property
    def upper_rad(self) -> np.ndarray:
        """Hard upper limits, shape (dof,)."""
        return self._array("upper_rad")

    @cached_property
    def soft_lower_rad(self) -> np.ndarray:
        """Soft lower limits, shape (dof,)."""
        return self._array("soft_lower_rad")

    @cached_property
    def soft_upper_rad(self) -> np.ndarray:
        """Soft upper limits, shape (dof,)."""
        return self._array("soft_upper_rad")

    @cached_property
    def max_step_rad(self) -> np.ndarray:
        """Largest target change per tick, shape (dof,)."""
        return self._array("max_step_rad")

    @cached_property
    def max_velocity_rad_s(self) -> np.ndarray:
        """Largest commanded speed, shape (dof,)."""
        return self._array("max_velocity_rad_s")

    @cached_property
    def max_effort_nm(self) -> np.ndarray:
        """Motor torque limits, shape (dof,)."""
        return self._array("max_effort_nm")

    @cached_property
    def home_rad(self) -> np.ndarray:
        """Home pose, shape (dof,)."""
        return self._array("home_rad")


def load_robot_spec(path: str | Path, overrides: tuple[str, ...] = ()) -> RobotSpec:
    """Load and validate ``configs/robots/<name>.yaml``."""
    return load_config(RobotSpec, path, overrides)


@dataclass(frozen=True, eq=False)
class RobotState:
    """One measurement of the robot, as returned by `RobotBackend.reset` and `RobotBackend.step`.

    Attributes:
        position_rad: joint positions, shape (dof,), float64.
        velocity_rad_s: joint velocities, shape (dof,), float64.
        effort_nm: joint torques (or current-derived estimates), shape (dof,), float64.
        stamp_s: monotonic time of the measurement in s. Simulated time for simulators, so that
            seeded runs are reproducible; ``time.monotonic()`` for hardware.
        faults: names of faults the backend detected without raising (empty when healthy).
    """

    position_rad: np.ndarray
    velocity_rad_s: np.ndarray
    effort_nm: np.ndarray
    stamp_s: float
    faults: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        """Freeze the arrays so that a state can be shared without copies."""
        self.position_rad.flags.writeable = False
        self.velocity_rad_s.flags.writeable = False
        self.effort_nm.flags.writeable = False
