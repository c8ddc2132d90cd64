"""The safety filter every command passes through: training in sim, fine-tuning on hardware, deploy.

Stages, in order (SAFETY.md rows 9-11, ARCHITECTURE.md):

1. **Finite check** — any NaN or inf in the action is a `NonFiniteAction` fault. It is never
   clipped into a command (``np.clip`` passes NaN through; PyBullet is poisoned by one NaN target
   for good, and real servo stacks drive NaN to an end stop). The decision is a hold of the last
   safe command.
2. **Action-space clip** (actions only) — the policy acts in [-1, 1]^dof.
3. **Soft limits** — targets stay ``soft_margin_rad`` inside the hard joint limits.
4. **Rate limit** — ``|target - last_command| <= max_step_rad`` per tick. The last command is
   seeded from the *measured* position at `reset`, so the first command after a reset cannot jump.
5. **Velocity limit** — ``|target - last_command| / dt <= max_velocity_rad_s``: the commanded joint
   speed.

The filter is pure numpy and stateful only in its last command. It returns the target actually
commanded, the executed action in policy units (what the replay buffer must store), and which
stages changed the command; it counts every clip and fault for ``info`` and the logs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from robot_sac.config_loader import param
from robot_sac.errors import EnvStateError, NonFiniteAction
from robot_sac.spec import RobotSpec

CLIP_STAGES = ("action_space", "soft_limit", "rate", "velocity")
"""Names of the stages that can change a command, as used in flags and counters."""


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """Which clipping stages run. All are on by default; turning one off must be written down.

    The finite check cannot be turned off.
    """

    soft_limits: bool = param(True, doc="clip targets to the soft joint limits")
    rate_limit: bool = param(True, doc="limit the target change per tick to max_step_rad")
    velocity_limit: bool = param(True, doc="limit the commanded speed to max_velocity_rad_s")


@dataclass
class SafetyCounts:
    """Running counts of steps on which each stage changed the command, and of faults."""

    action_space: int = 0
    soft_limit: int = 0
    rate: int = 0
    velocity: int = 0
    faults: int = 0

    def as_dict(self) -> dict[str, int]:
        """A fresh plain dict (safe to put in ``info``)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class SafetyDecision:
    """What the filter decided for one command.

    Attributes:
        target_rad: the joint target to command, shape (dof,), float64. On a fault, the hold
            target (the last safe command).
        executed_action: the command expressed in policy units, ``(target - previous) /
            max_step_rad``, shape (dof,), float32; zeros on a fault.
        clipped: per stage in `CLIP_STAGES`, whether it changed the command.
        fault: the fault, or None.
    """

    target_rad: np.ndarray
    executed_action: np.ndarray
    clipped: dict[str, bool] = field(default_factory=dict)
    fault: NonFiniteAction | None = None

    @property
    def any_clipped(self) -> bool:
        """Whether any stage changed the command."""
        return any(self.clipped.values())


class SafetyFilter:
    """Turns policy actions or joint targets into safe joint targets for one robot."""

    def __init__(self, spec: RobotSpec, config: SafetyConfig | None = None) -> None:
        """Create a filter; call `reset` with the measured position before the first command."""
        self.spec = spec
        self.config = config or SafetyConfig()
        self.counts = SafetyCounts()
        self._last: np.ndarray | None = None
        self._velocity_delta = spec.max_velocity_rad_s * spec.dt_s

    @property
    def last_command_rad(self) -> np.ndarray:
        """The last commanded target (the hold target), shape (dof,)."""
        if self._last is None:
            raise EnvStateError("SafetyFilter used before reset(measured_position_rad)")
        return self._last.copy()

    def reset(self, measured_position_rad: np.ndarray) -> None:
        """Seed the rate limiter from the measured position (clamped into the hard limits)."""
        measured = np.asarray(measured_position_rad, dtype=np.float64)
        if measured.shape != (self.spec.dof,) or not np.isfinite(measured).all():
            raise NonFiniteAction(f"cannot seed the safety filter from measured position {measured!r}")
        self._last = np.clip(measured, self.spec.lower_rad, self.spec.upper_rad)

    def hold(self) -> SafetyDecision:
        """A decision that re-commands the last safe target."""
        last = self.last_command_rad
        return SafetyDecision(last, np.zeros(self.spec.dof, dtype=np.float32), dict.fromkeys(CLIP_STAGES, False))

    def from_action(self, action: np.ndarray) -> SafetyDecision:
        """Filter a policy action in [-1, 1]^dof meaning a joint-target delta of ``action * max_step_rad``."""
        a = self._as_vector(action)
        if not np.isfinite(a).all():
            return self._fault(a, "action")
        clipped_a = np.clip(a, -1.0, 1.0)
        target = self.last_command_rad + clipped_a * self.spec.max_step_rad
        return self._limit(target, action_space_clipped=bool((clipped_a != a).any()))

    def from_target(self, target_rad: np.ndarray) -> SafetyDecision:
        """Filter an absolute joint target in rad (homing, absolute-position policies)."""
        t = self._as_vector(target_rad)
        if not np.isfinite(t).all():
            return self._fault(t, "target")
        return self._limit(t, action_space_clipped=False)

    # --- stages ---------------------------------------------------------------------------------

    def _as_vector(self, x: np.ndarray) -> np.ndarray:
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.spec.dof,):
            raise ValueError(f"expected shape ({self.spec.dof},), got {v.shape}")
        return v

    def _fault(self, value: np.ndarray, what: str) -> SafetyDecision:
        self.counts.faults += 1
        decision = self.hold()
        bad = [self.spec.joint_names[i] for i in np.flatnonzero(~np.isfinite(value))]
        err = NonFiniteAction(f"non-finite {what} for joints {bad}: {value.tolist()}; holding the last safe target")
        return dataclasses.replace(decision, fault=err)

    def _limit(self, target: np.ndarray, *, action_space_clipped: bool) -> SafetyDecision:
        last = self.last_command_rad
        spec = self.spec
        flags = {"action_space": action_space_clipped, "soft_limit": False, "rate": False, "velocity": False}
        if self.config.soft_limits:
            soft = np.clip(target, spec.soft_lower_rad, spec.soft_upper_rad)
            flags["soft_limit"] = bool((soft != target).any())
            target = soft
        if self.config.rate_limit:
            rated = np.clip(target, last - spec.max_step_rad, last + spec.max_step_rad)
            flags["rate"] = bool((rated != target).any())
            target = rated
        if self.config.velocity_limit:
            slowed = np.clip(target, last - self._velocity_delta, last + self._velocity_delta)
            flags["velocity"] = bool((slowed != target).any())
            target = slowed
        for stage, hit in flags.items():
            if hit:
                setattr(self.counts, stage, getattr(self.counts, stage) + 1)
        executed = ((target - last) / spec.max_step_rad).astype(np.float32)
        self._last = target.copy()
        return SafetyDecision(target, executed, flags)
