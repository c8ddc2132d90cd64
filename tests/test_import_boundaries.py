"""The deployment path never imports torch or pybullet (ARCHITECTURE.md, import boundaries).

Each check runs in a fresh interpreter where importing ``torch`` or ``pybullet`` raises, exactly as
on an embedded controller that does not have them installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ARM4_YAML, REPO_ROOT

INTERFACE_MODULES = [
    "robot_sac",
    "robot_sac.errors",
    "robot_sac.config_loader",
    "robot_sac.configs",
    "robot_sac.spec",
    "robot_sac.backend",
    "robot_sac.kinematics",
    "robot_sac.safety",
    "robot_sac.normalization",
    "robot_sac.tasks",
    "robot_sac.env",
    "robot_sac.make_env",
    "robot_sac.fake_backend",
    "robot_sac.scripted",
    "robot_sac.realtime",
    "robot_sac.gc_pauses",
    "robot_sac.reset_retry",
    "robot_sac.eval_report",
    "robot_sac.evaluate",
]
DEPLOY_PACKAGES = [
    "drivers",
    "policies",
    "policies.onnx_policy",
    "policies.deploy",
    "policies.deploy_config",
    "policies.deploy_report",
    "policies.pacing",
    "policies.signals",
]
ALLOWED_THIRD_PARTY = {"numpy", "gymnasium", "yaml", "serial", "onnxruntime"}

BLOCKER = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"torch", "pybullet", "pybullet_data", "pybullet_utils"}:
                raise ImportError(f"{name} is blocked: not available on the controller")
            return None

    sys.meta_path.insert(0, Blocker())
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCKER + textwrap.dedent(code)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_blocker_really_blocks() -> None:
    result = _run("import pybullet")
    assert result.returncode != 0 and "blocked" in result.stderr


@pytest.mark.parametrize("module", INTERFACE_MODULES + DEPLOY_PACKAGES)
def test_module_imports_without_torch_or_pybullet(module: str) -> None:
    result = _run(
        f"""
        import importlib, sys
        importlib.import_module({module!r})
        heavy = sorted(m for m in sys.modules if m.split('.')[0] in {{'torch', 'pybullet'}})
        assert not heavy, heavy
        """
    )
    assert result.returncode == 0, result.stderr


def test_deploy_path_imports_only_allowed_third_party_packages() -> None:
    modules = INTERFACE_MODULES + DEPLOY_PACKAGES
    result = _run(
        f"""
        import importlib, sys
        before = set(sys.modules)
        for m in {modules!r}:
            importlib.import_module(m)
        stdlib = set(sys.stdlib_module_names)
        ours = {{'robot_sac', 'drivers', 'policies', 'sim', 'tests'}}
        third = sorted({{m.split('.')[0] for m in set(sys.modules) - before}} - stdlib - ours)
        print(",".join(third))
        """
    )
    assert result.returncode == 0, result.stderr
    imported = {m for m in result.stdout.strip().split(",") if m and not m.startswith("_")}
    # Packages that the allowed ones pull in themselves are fine; ours must not add others.
    dependencies_of_allowed = {"cloudpickle", "typing_extensions", "farama_notifications", "cython_runtime"}
    assert imported - ALLOWED_THIRD_PARTY - dependencies_of_allowed == set()


def test_env_stack_runs_without_torch_or_pybullet() -> None:
    result = _run(
        f"""
        import numpy as np
        from robot_sac.configs import EnvConfig
        from robot_sac.fake_backend import FakeBackend
        from robot_sac.make_env import make_env
        from robot_sac.spec import load_robot_spec

        env = make_env(EnvConfig(), FakeBackend(load_robot_spec({str(ARM4_YAML)!r})))
        env.reset(seed=0)
        _, _, _, truncated, info = env.step(np.full(4, np.nan))
        assert truncated and info["fault"] == "NonFiniteAction", info
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
