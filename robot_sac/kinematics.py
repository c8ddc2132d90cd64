"""Forward kinematics of a serial chain of revolute joints, from `RobotSpec` alone (numpy only).

The simulator and the hardware backend both report joint positions; the end-effector position the
tasks need is computed here, so sim and hardware use the same numbers. A test checks it against
PyBullet's link state for the URDF.
"""

from __future__ import annotations

import numpy as np

from robot_sac.spec import RobotSpec


def _axis_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotation matrix about a unit ``axis`` by ``angle_rad`` (Rodrigues' formula), shape (3, 3)."""
    x, y, z = axis
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    t = 1.0 - c
    return np.array(
        [
            [t * x * x + c, t * x * y - s * z, t * x * z + s * y],
            [t * x * y + s * z, t * y * y + c, t * y * z - s * x],
            [t * x * z - s * y, t * y * z + s * x, t * z * z + c],
        ]
    )


class ForwardKinematics:
    """End-effector position of a robot from its joint positions.

    Frames follow URDF conventions: joint i's frame sits at ``origin_xyz_m`` in joint i-1's frame
    (the base frame for joint 0) with no fixed rotation, and rotates by ``q_i`` about ``axis_xyz``.
    """

    def __init__(self, spec: RobotSpec) -> None:
        """Precompute the chain's constant parts."""
        self._origins = [np.array(j.origin_xyz_m, dtype=np.float64) for j in spec.joints]
        self._axes = [np.array(j.axis_xyz, dtype=np.float64) for j in spec.joints]
        self._tool = np.array(spec.tool_offset_m, dtype=np.float64)
        self.dof = spec.dof

    def joint_frames(self, position_rad: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """World pose ``(R (3,3), p (3,) m)`` of every joint frame after its rotation."""
        rot = np.eye(3)
        pos = np.zeros(3)
        frames = []
        for origin, axis, q in zip(self._origins, self._axes, position_rad):
            pos = pos + rot @ origin
            rot = rot @ _axis_rotation(axis, float(q))
            frames.append((rot, pos))
        return frames

    def end_effector_m(self, position_rad: np.ndarray) -> np.ndarray:
        """End-effector position in the base frame, shape (3,), metres."""
        rot, pos = self.joint_frames(position_rad)[-1]
        return pos + rot @ self._tool
