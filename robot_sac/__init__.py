"""robot-sac: SAC for desktop servo arms — PyBullet training, safe hardware fine-tuning, ONNX deploy.

``import robot_sac`` stays light (numpy, gymnasium, pyyaml): it registers the gymnasium id
``robot_sac/ArmReach-v0`` whose entry point imports PyBullet only when the env is made.
"""

from __future__ import annotations

import gymnasium

__version__ = "0.1.0"

ARM_REACH_ID = "robot_sac/ArmReach-v0"

if ARM_REACH_ID not in gymnasium.registry:
    gymnasium.register(id=ARM_REACH_ID, entry_point="robot_sac.make_env:make_arm_reach_env")
