"""Run a ``robot-sac`` command the way the embedded controller runs it: torch and pybullet cannot load.

``python -m policies.controller deploy POLICY_DIR --port URL ...`` behaves like ``robot-sac deploy``,
except that any import of torch or pybullet raises `ImportError` (as on a controller where only
numpy, gymnasium, pyyaml, pyserial and onnxruntime are installed). ``--allow-sim`` lets pybullet
load for ``deploy --sim`` (torch stays blocked). `robot-sac demo` deploys through it, so the demo's
numbers on the emulated robot come from the torch-free runtime.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence

_TORCH = frozenset({"torch"})
_SIM = frozenset({"pybullet", "pybullet_data", "pybullet_utils"})


class _Blocker(importlib.abc.MetaPathFinder):
    """Refuses the top-level packages in ``blocked``."""

    def __init__(self, blocked: frozenset[str]) -> None:
        self.blocked = blocked

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        if name.split(".")[0] in self.blocked:
            raise ImportError(f"{name} is blocked: not available on the controller")
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Block the heavy packages, then run the ``robot-sac`` command line with ``argv``."""
    args = list(sys.argv[1:] if argv is None else argv)
    allow_sim = "--allow-sim" in args
    args = [a for a in args if a != "--allow-sim"]
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in _TORCH | _SIM)
    if heavy:
        raise RuntimeError(f"policies.controller must start in a fresh interpreter; {heavy} are loaded already")
    sys.meta_path.insert(0, _Blocker(_TORCH if allow_sim else _TORCH | _SIM))
    from robot_sac.cli import main as cli

    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
