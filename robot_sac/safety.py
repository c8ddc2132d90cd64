"""The safety filter every command passes through: training in sim, fine-tuning on hardware, deploy.

Stages, in order (SAFETY.md rows 9-11, ARCHITECTURE.md):

1. **Finite check** — any NaN or inf in the action is a `NonFiniteAction` fault. It is never
   clipped into a command (``np.clip`` passes NaN through; PyBullet is poisoned by one NaN target
   for good, and real servo stacks drive NaN to an end stop). An action beyond
   ``max_abs_action`` (e.g. 1e9) is an `ActionOutOfRange` fault: a policy that outputs it is
   broken, and clipping would hide that. A fault's decision is a hold of the last safe command.
2. **Action-space clip** (actions only) — the policy acts in [-1, 1]^dof; small excursions are
   clipped and counted.
3. **Soft limits** — targets stay ``soft_margin_rad`` inside the hard joint limits.
4. **Rate limit** — ``|target - last_command| <= max_step_rad`` per tick. The last command is
   seeded from the *measured* position at `reset`, so the first command after a reset cannot jump.
5. **Velocity limit** — ``|target - last_command| / dt <= max_velocity_rad_s * command_velocity_scale``:
   the commanded joint speed.

The filter is pure numpy and stateful only in its last command. It returns the target actually
commanded, the executed action in policy units (what the replay buffer must store), and which
stages changed the command; it counts every clip and fault for ``info`` and the logs.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field

import numpy as np

from robot_sac.config_loader import param
from robot_sac.errors import ActionOutOfRange, ConfigError, EnvStateError, NonFiniteAction, NonFiniteObservation
from robot_sac.spec import RobotSpec

log = logging.getLogger(__name__)

CLIP_STAGES = ("action_space", "soft_limit", "rate", "velocity", "effort")
"""Names of the stages that can change a command, as used in flags and counters."""

_ROUNDING_RAD = 1e-12
"""Changes within this of a rate/velocity bound are float64 rounding (``last + step - last`` may
exceed ``step`` by an ulp), not clips."""


@dataclass(frozen=True, kw_only=True)
class SafetyConfig:
    """Which clipping stages run. All are on by default; turning one off must be written down.

    The finite check cannot be turned off.
    """

    max_abs_action: float = param(
        100.0, ge=1.0, le=1e6, doc="an action entry beyond this magnitude is a fault, not a clip (policy units)"
    )
    latch_after_action_faults: int = param(
        3, ge=1, le=1000, doc="this many bad actions in a row (no good step between) latch a fault (SAFETY.md #9)"
    )
    soft_limits: bool = param(True, doc="clip targets to the soft joint limits")
    rate_limit: bool = param(True, doc="limit the target change per tick to max_step_rad")
    velocity_limit: bool = param(True, doc="limit the commanded speed to max_velocity_rad_s")
    effort_guard: bool = param(True, doc="relieve a joint whose measured effort stays near stall (SAFETY.md #13)")
    effort_trip_fraction: float = param(
        0.9, gt=0.0, le=1.0, doc="a joint pushing at this share of max_effort_nm or more counts as straining"
    )
    effort_release_fraction: float = param(
        0.6, gt=0.0, le=1.0, doc="a relieved joint is released once its effort falls below this share (hysteresis)"
    )
    effort_persistence_steps: int = param(
        10, ge=1, le=10_000, doc="straining this many control steps in a row trips the guard (no single-sample trips)"
    )

    def __post_init__(self) -> None:
        """The guard's release threshold must lie below its trip threshold."""
        if self.effort_release_fraction >= self.effort_trip_fraction:
            raise ConfigError(
                f"safety.effort_release_fraction {self.effort_release_fraction} must be below "
                f"safety.effort_trip_fraction {self.effort_trip_fraction} (hysteresis)"
            )


@dataclass
class SafetyCounts:
    """Running counts of steps on which each stage changed the command, and of faults."""

    action_space: int = 0
    soft_limit: int = 0
    rate: int = 0
    velocity: int = 0
    effort: int = 0
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
    fault: NonFiniteAction | ActionOutOfRange | None = None

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
        self._last: list[float] | None = None
        self._straining: list[int] = [0] * spec.dof
        self._relieved: list[bool] = [False] * spec.dof
        self._measured: list[float] = []
        # Per-joint bounds as Python floats: the filter runs every control tick on a handful of
        # joints, where scalar arithmetic is several times faster than numpy calls. A disabled
        # stage gets infinite bounds.
        cfg, inf = self.config, float("inf")
        self._soft_lower = spec.soft_lower_rad.tolist() if cfg.soft_limits else [-inf] * spec.dof
        self._soft_upper = spec.soft_upper_rad.tolist() if cfg.soft_limits else [inf] * spec.dof
        self._step = spec.max_step_rad.tolist()
        rate = self._step if cfg.rate_limit else [inf] * spec.dof
        velocity = (spec.command_velocity_rad_s * spec.dt_s).tolist() if cfg.velocity_limit else [inf] * spec.dof
        # Stages 4 and 5 bound the same quantity, |target - last|, so they clip once, to the
        # smaller bound; a stage is flagged when the requested change exceeded its bound and that
        # bound binds (the velocity stage runs after the rate stage).
        self._bounds = [
            (lo, hi, step, r, v if v < r else inf, min(r, v))
            for lo, hi, step, r, v in zip(self._soft_lower, self._soft_upper, self._step, rate, velocity, strict=True)
        ]

    @property
    def last_command_rad(self) -> np.ndarray:
        """The last commanded target (the hold target), shape (dof,)."""
        return np.array(self._require_last())

    def reset(self, measured_position_rad: np.ndarray) -> None:
        """Seed the rate limiter from the measured position (clamped into the hard limits)."""
        measured = np.asarray(measured_position_rad, dtype=np.float64)
        if measured.shape != (self.spec.dof,):
            raise ValueError(f"measured position must have shape ({self.spec.dof},), got {measured.shape}")
        if not np.isfinite(measured).all():
            raise NonFiniteObservation(f"cannot seed the safety filter from measured position {measured.tolist()}")
        self._last = np.clip(measured, self.spec.lower_rad, self.spec.upper_rad).tolist()
        self._straining = [0] * self.spec.dof
        self._relieved = [False] * self.spec.dof
        self._measured = self._last

    def observe(self, position_rad: np.ndarray, effort_nm: np.ndarray) -> None:
        """Feed the measured state after each step to the effort guard (stage 6).

        A joint whose |effort| stays at ``effort_trip_fraction`` of its ``max_effort_nm`` or more for
        ``effort_persistence_steps`` steps in a row is relieved: its next commands hold the measured
        position (it stops pushing) until its effort falls below ``effort_release_fraction``. A
        servo pushing at stall for about a second sets its overload bit and shuts down (X-series
        Shutdown; the emulator models it), which latches the robot; relieving it first keeps the
        episode going and the arm safe (SAFETY.md #13: persistence filter, hysteresis).
        """
        if not self.config.effort_guard or self._last is None:
            return
        load = np.abs(np.asarray(effort_nm, dtype=np.float64)) / self.spec.max_effort_nm
        cfg = self.config
        for i, x in enumerate(load.tolist()):
            self._straining[i] = self._straining[i] + 1 if x >= cfg.effort_trip_fraction else 0
            if self._straining[i] >= cfg.effort_persistence_steps and not self._relieved[i]:
                self._relieved[i] = True
                log.warning("joint %s strained at %.0f %% of its stall torque for %d steps: relieving it",
                            self.spec.joint_names[i], 100 * x, self._straining[i])  # fmt: skip
            elif self._relieved[i] and x < cfg.effort_release_fraction:
                self._relieved[i] = False
        self._measured = np.asarray(position_rad, dtype=np.float64).tolist()

    def hold(self) -> SafetyDecision:
        """A decision that re-commands the last safe target."""
        last = self.last_command_rad
        return SafetyDecision(last, np.zeros(self.spec.dof, dtype=np.float32), dict.fromkeys(CLIP_STAGES, False))

    def from_action(self, action: np.ndarray) -> SafetyDecision:
        """Filter a policy action in [-1, 1]^dof meaning a joint-target delta of ``action * max_step_rad``."""
        values = self._as_list(action)
        limit = self.config.max_abs_action
        if not all(-limit <= x <= limit for x in values):  # False for NaN too
            return self._fault(values, "action")
        clipped = [min(max(x, -1.0), 1.0) for x in values]
        targets = [last + x * step for last, x, step in zip(self._require_last(), clipped, self._step, strict=True)]
        return self._limit(targets, action_space_clipped=clipped != values)

    def from_target(self, target_rad: np.ndarray) -> SafetyDecision:
        """Filter an absolute joint target in rad (homing, absolute-position policies)."""
        values = self._as_list(target_rad)
        if not all(math.isfinite(x) for x in values):
            return self._fault(values, "target")
        return self._limit(values, action_space_clipped=False)

    # --- stages ---------------------------------------------------------------------------------

    def _require_last(self) -> list[float]:
        if self._last is None:
            raise EnvStateError("SafetyFilter used before reset(measured_position_rad)")
        return self._last

    def _as_list(self, x: np.ndarray) -> list[float]:
        v = np.asarray(x, dtype=np.float64)
        if v.shape != (self.spec.dof,):
            raise ValueError(f"expected shape ({self.spec.dof},), got {v.shape}")
        values: list[float] = v.tolist()
        return values

    def _fault(self, values: list[float], what: str) -> SafetyDecision:
        self.counts.faults += 1
        names = self.spec.joint_names
        err: NonFiniteAction | ActionOutOfRange
        nonfinite = [n for n, x in zip(names, values, strict=True) if not math.isfinite(x)]
        if nonfinite:
            err = NonFiniteAction(f"non-finite {what} for joints {nonfinite}: {values}; holding the last safe target")
        else:
            limit = self.config.max_abs_action
            bad = [n for n, x in zip(names, values, strict=True) if abs(x) > limit]
            err = ActionOutOfRange(
                f"{what} for joints {bad} beyond ±{limit}: {values}; the policy output is not "
                "trustworthy, holding the last safe target"
            )
        return dataclasses.replace(self.hold(), fault=err)

    def _relieve(self, targets: list[float], last_cmd: list[float]) -> bool:
        """Stage 6: a relieved joint's target goes to its measured position, at most one bound per tick.

        The target stays within the soft limits and the rate/velocity bound of the last command, so
        relieving never makes the command jump.
        """
        hit = False
        for i, relieved in enumerate(self._relieved):
            if relieved:
                lo, hi, bound = self._bounds[i][0], self._bounds[i][1], self._bounds[i][5]
                last = last_cmd[i]
                toward = min(max(self._measured[i], lo), hi)
                held = last + min(max(toward - last, -bound), bound)
                hit = hit or held != targets[i]
                targets[i] = held
        return hit

    def _limit(self, targets: list[float], *, action_space_clipped: bool) -> SafetyDecision:
        """Stages 3-5 on finite targets, joint by joint; commits the result as the last command."""
        last_cmd = self._require_last()
        soft = rate = velocity = False
        out: list[float] = []
        for t, last, (lo, hi, _step, rate_bound, velocity_bound, bound) in zip(
            targets, last_cmd, self._bounds, strict=True
        ):
            if t < lo or t > hi:  # stage 3: soft joint limits
                t = min(max(t, lo), hi)
                soft = True
            change = abs(t - last)
            # A change equal to a bound up to float64 rounding is not a clip: (last + 1.0 * step) - last
            # can exceed step by one ulp, which would count every saturated (|a| = 1) action as one.
            rate = rate or change > rate_bound + _ROUNDING_RAD  # stage 4: per-tick step
            velocity = velocity or change > velocity_bound + _ROUNDING_RAD  # stage 5: commanded speed
            if change > bound + _ROUNDING_RAD:
                t = last + bound if t > last else last - bound
            out.append(t)
        effort = self._relieve(out, last_cmd)
        executed = [(t - last) / step for t, last, step in zip(out, last_cmd, self._step, strict=True)]
        flags = {"action_space": action_space_clipped, "soft_limit": soft, "rate": rate, "velocity": velocity,
                 "effort": effort}  # fmt: skip
        for stage, hit in flags.items():
            if hit:
                setattr(self.counts, stage, getattr(self.counts, stage) + 1)
        self._last = out
        return SafetyDecision(np.array(out), np.array(executed, dtype=np.float32), flags)
