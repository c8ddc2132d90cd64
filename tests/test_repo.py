"""Repository invariants: the README's commands are what CI runs; packaging pins what it must."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```bash\n(.+?)\n```", readme, flags=re.S)


def test_readme_opens_with_the_main_job_and_the_test_command() -> None:
    main_job, tests = _readme_commands()[:2]
    assert "robot-sac demo" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_test_command_and_fails_on_no_tests() -> None:
    test_command = _readme_commands()[1].strip()
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert test_command in ci.splitlines()
    assert '"$status" -eq 5' in ci


def test_packaging_pins_torch_and_lists_the_packages() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "torch==2.13.0" in project["project"]["optional-dependencies"]["train"]
    deploy = project["project"]["optional-dependencies"]["deploy"]
    assert not any(dep.startswith(("torch", "pybullet")) for dep in deploy + project["project"]["dependencies"])
    packages = set(project["tool"]["setuptools"]["packages"])
    assert {"robot_sac", "drivers", "sim", "policies"} <= packages
    assert project["project"]["scripts"]["robot-sac"] == "robot_sac.cli:main"
    assert project["project"]["requires-python"] == ">=3.11"
