"""Per-episode domain randomization of the simulated arm (numpy only).

`sample_dynamics` draws one `DynamicsSample` from a `RandomizationConfig` at every reset when
randomization is enabled; `nominal` is the un-randomized model (URDF values, no latency, no noise).
Ranges are sampled uniformly, as in Tobin et al. 2017 and OpenAI et al. 2018 ("Learning Dexterous
In-Hand Manipulation", https://arxiv.org/abs/1808.00177, appendix C), per link or per joint so that
the policy cannot rely on joints sharing one error.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from robot_sac.configs import RandomizationConfig

NOMINAL_LATERAL_FRICTION = 0.8
"""Link surface friction coefficient written in ``sim/assets/arm4.urdf`` (``<lateral_friction>``)."""

NOMINAL_JOINT_DAMPING_NM_S_RAD = 0.01
"""Viscous joint damping written in ``sim/assets/arm4.urdf`` (``<dynamics damping>``), N·m·s/rad."""


@dataclass(frozen=True, kw_only=True)
class DynamicsSample:
    """The simulator's physical parameters for one episode.

    Per-link and per-joint values are tuples of length ``dof`` (the arm has one moving link per
    joint, link i is the child of joint i), so the sample is immutable, hashable and comparable.

    Attributes:
        link_mass_scale: multiplies each moving link's URDF mass and inertia, shape (dof,).
        lateral_friction: link surface friction coefficient (the table's is 1; Bullet multiplies them).
        joint_damping_nm_s_rad: viscous joint damping in N·m·s/rad, shape (dof,).
        actuator_gain_scale: multiplies the servo's position and velocity gains, shape (dof,).
        max_velocity_scale: multiplies the servo's no-load speed (URDF ``velocity``), shape (dof,).
        action_latency_periods: commands take effect this many control periods late.
        position_noise_rad: std of the Gaussian noise added to measured positions, rad.
        velocity_noise_rad_s: std of the Gaussian noise added to measured velocities, rad/s.
        command_latency_s: a further delay, s: each period's new target applies only after this
            much of the period (the previous one holds until then), modelling the serial round trip
            (a write lands some milliseconds after the host sent it).
    """

    link_mass_scale: tuple[float, ...]
    lateral_friction: float
    joint_damping_nm_s_rad: tuple[float, ...]
    actuator_gain_scale: tuple[float, ...]
    max_velocity_scale: tuple[float, ...]
    action_latency_periods: int
    position_noise_rad: float
    velocity_noise_rad_s: float
    command_latency_s: float = 0.0

    def __post_init__(self) -> None:
        """Check lengths agree and every value is finite and physically meaningful."""
        per_joint = {
            "link_mass_scale": self.link_mass_scale,
            "joint_damping_nm_s_rad": self.joint_damping_nm_s_rad,
            "actuator_gain_scale": self.actuator_gain_scale,
            "max_velocity_scale": self.max_velocity_scale,
        }
        lengths = {name: len(values) for name, values in per_joint.items()}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"DynamicsSample: per-joint fields must have one length, got {lengths}")
        for name, values in per_joint.items():
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"DynamicsSample.{name} must be finite, got {values}")
            strictly_positive = name != "joint_damping_nm_s_rad"
            if any(v <= 0.0 if strictly_positive else v < 0.0 for v in values):
                raise ValueError(f"DynamicsSample.{name} out of range: {values}")
        scalars = (self.lateral_friction, self.position_noise_rad, self.velocity_noise_rad_s, self.command_latency_s)
        if not all(math.isfinite(v) and v >= 0.0 for v in scalars):
            raise ValueError(f"DynamicsSample: friction and noise must be finite and >= 0, got {scalars}")
        if self.action_latency_periods < 0:
            raise ValueError(f"DynamicsSample.action_latency_periods must be >= 0, got {self.action_latency_periods}")

    @property
    def dof(self) -> int:
        """Number of joints the sample describes."""
        return len(self.link_mass_scale)


def nominal(
    dof: int,
    *,
    lateral_friction: float = NOMINAL_LATERAL_FRICTION,
    joint_damping_nm_s_rad: float | Sequence[float] = NOMINAL_JOINT_DAMPING_NM_S_RAD,
) -> DynamicsSample:
    """The un-randomized model: scales 1, nominal friction and damping, no latency, no noise.

    Args:
        dof: number of joints.
        lateral_friction: the URDF's link friction (the backend passes the value it loaded).
        joint_damping_nm_s_rad: the URDF's joint damping, one value or shape (dof,).
    """
    damping = np.broadcast_to(np.asarray(joint_damping_nm_s_rad, dtype=np.float64), (dof,))
    ones = (1.0,) * dof
    return DynamicsSample(
        link_mass_scale=ones,
        lateral_friction=float(lateral_friction),
        joint_damping_nm_s_rad=tuple(float(d) for d in damping),
        actuator_gain_scale=ones,
        max_velocity_scale=ones,
        action_latency_periods=0,
        position_noise_rad=0.0,
        velocity_noise_rad_s=0.0,
    )


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], size: int) -> tuple[float, ...]:
    return tuple(float(v) for v in rng.uniform(bounds[0], bounds[1], size=size))


def sample_dynamics(config: RandomizationConfig, rng: np.random.Generator, dof: int) -> DynamicsSample:
    """Draw one episode's dynamics uniformly from the ranges of ``config``.

    The draw order is fixed (the field order of `DynamicsSample`), so the same generator state
    gives the same sample. ``config.enabled`` is not consulted: the caller decides whether to
    randomize (and uses `nominal` otherwise).

    Args:
        config: the ranges, each ``[low, high]``.
        rng: the episode's generator (the backend seeds it from ``reset(seed)``).
        dof: number of joints (and moving links).
    """
    link_mass_scale = _uniform(rng, config.link_mass_scale, dof)
    lateral_friction = float(rng.uniform(*config.lateral_friction))
    joint_damping = _uniform(rng, config.joint_damping_nm_s_rad, dof)
    gain_scale = _uniform(rng, config.actuator_gain_scale, dof)
    velocity_scale = _uniform(rng, config.max_velocity_scale, dof)
    low, high = config.action_latency_periods
    latency = int(rng.integers(low, high, endpoint=True))
    position_noise = float(rng.uniform(*config.position_noise_rad))
    velocity_noise = float(rng.uniform(*config.velocity_noise_rad_s))
    command_latency = float(rng.uniform(*config.command_latency_s))  # drawn last: earlier draws keep their values
    return DynamicsSample(
        link_mass_scale=link_mass_scale,
        lateral_friction=lateral_friction,
        joint_damping_nm_s_rad=joint_damping,
        actuator_gain_scale=gain_scale,
        max_velocity_scale=velocity_scale,
        action_latency_periods=latency,
        position_noise_rad=position_noise,
        velocity_noise_rad_s=velocity_noise,
        command_latency_s=command_latency,
    )
