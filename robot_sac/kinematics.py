"""Forward kinematics of a serial chain of revolute joints, from `RobotSpec` alone (numpy only).

The simulator and the hardware backend both report joint positions; the end-effector position the
tasks need is computed here, so sim and hardware use the same numbers. A test checks it against
PyBullet's link state for the URDF.

Why plain Python floats instead of numpy 3x3 matrices: FK runs once per control step on the env's
hot path, and for a handful of joints scalar arithmetic is ~3x faster than numpy's per-call
overhead (9 µs vs 29 µs for 4 joints on the dev machine).
"""

from __future__ import annotations

import math

import numpy as np

from robot_sac.spec import RobotSpec

Mat3 = tuple[float, float, float, float, float, float, float, float, float]
"""A row-major 3x3 matrix."""

_IDENTITY: Mat3 = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _matmul(a: Mat3, b: Mat3) -> Mat3:
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = a
    b0, b1, b2, b3, b4, b5, b6, b7, b8 = b
    return (
        a0 * b0 + a1 * b3 + a2 * b6, a0 * b1 + a1 * b4 + a2 * b7, a0 * b2 + a1 * b5 + a2 * b8,
        a3 * b0 + a4 * b3 + a5 * b6, a3 * b1 + a4 * b4 + a5 * b7, a3 * b2 + a4 * b5 + a5 * b8,
        a6 * b0 + a7 * b3 + a8 * b6, a6 * b1 + a7 * b4 + a8 * b7, a6 * b2 + a7 * b5 + a8 * b8,
    )  # fmt: skip


def _apply(r: Mat3, v: tuple[float, float, float]) -> tuple[float, float, float]:
    x, y, z = v
    return (r[0] * x + r[1] * y + r[2] * z, r[3] * x + r[4] * y + r[5] * z, r[6] * x + r[7] * y + r[8] * z)


class ForwardKinematics:
    """End-effector position of a robot from its joint positions.

    Frames follow URDF conventions: joint i's frame sits at ``origin_xyz_m`` in joint i-1's frame
    (the base frame for joint 0) with no fixed rotation, and rotates by ``q_i`` about ``axis_xyz``.
    Rotations use Rodrigues' formula ``R = I + sin(q) K + (1 - cos(q)) K^2`` with ``K`` the axis's
    cross-product matrix, precomputed per joint.
    """

    def __init__(self, spec: RobotSpec) -> None:
        """Precompute the chain's constant parts."""
        self.dof = spec.dof
        self._chain: list[tuple[tuple[float, float, float], Mat3, Mat3]] = []
        for joint in spec.joints:
            x, y, z = joint.axis_xyz
            k: Mat3 = (0.0, -z, y, z, 0.0, -x, -y, x, 0.0)
            self._chain.append((joint.origin_xyz_m, k, _matmul(k, k)))
        self._tool = spec.tool_offset_m

    def end_effector_m(self, position_rad: np.ndarray) -> np.ndarray:
        """End-effector position in the base frame, shape (3,), metres, for joint positions (dof,)."""
        rot = _IDENTITY
        px = py = pz = 0.0
        for (origin, k, k2), q in zip(self._chain, np.asarray(position_rad, dtype=np.float64).tolist(), strict=True):
            dx, dy, dz = _apply(rot, origin)
            px, py, pz = px + dx, py + dy, pz + dz
            s, t = math.sin(q), 1.0 - math.cos(q)
            rot = _matmul(rot, (
                1.0 + s * k[0] + t * k2[0], s * k[1] + t * k2[1], s * k[2] + t * k2[2],
                s * k[3] + t * k2[3], 1.0 + s * k[4] + t * k2[4], s * k[5] + t * k2[5],
                s * k[6] + t * k2[6], s * k[7] + t * k2[7], 1.0 + s * k[8] + t * k2[8],
            ))  # fmt: skip
        tx, ty, tz = _apply(rot, self._tool)
        return np.array((px + tx, py + ty, pz + tz))
