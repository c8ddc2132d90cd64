"""Tasks: what the robot should do (observation, reward, termination), independent of the backend."""

from robot_sac.tasks.arm_reach import ArmReach
from robot_sac.tasks.base import Task

__all__ = ["ArmReach", "Task"]
