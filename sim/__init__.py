"""The PyBullet simulator of the robot-sac arms.

``import sim`` stays light (no pybullet, numpy only in submodules): the hardware path must not pull
in the simulator. The backend lives in `sim.pybullet_backend` (imports pybullet), the per-episode
domain randomization in `sim.randomization` (numpy only), the URDFs in ``sim/assets``.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
"""Directory of the packaged URDFs (``sim/assets``)."""


def assets_dir() -> Path:
    """The directory holding the packaged URDFs."""
    return ASSETS_DIR


def resolve_urdf(name_or_path: str | Path) -> Path:
    """Resolve `SimConfig.urdf`: a bare file name is looked up in ``sim/assets``, anything else is a path.

    Args:
        name_or_path: ``"arm4.urdf"`` (packaged) or a relative/absolute path such as ``"my/arm.urdf"``.

    Returns:
        The URDF's path. Existence is checked by the backend's ``connect()``, which names the fix.
    """
    path = Path(name_or_path)
    if len(path.parts) == 1:
        return ASSETS_DIR / path
    return path


__all__ = ["ASSETS_DIR", "assets_dir", "resolve_urdf"]
