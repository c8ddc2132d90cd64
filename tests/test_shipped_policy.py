"""The shipped ArmReach policy: it loads torch-free, matches its contract, and reaches the target.

Issue 5's acceptance: deploying ``policies/arm_reach`` on the PyBullet backend succeeds on >= 95 %
of 20 seeded episodes, with the same outcome per episode as the torch module it was exported from.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policies import SHIPPED_ARM_REACH
from policies.onnx_policy import OnnxPolicy, expected_contract
from robot_sac.cli import main
from robot_sac.export import load_torch_twin
from robot_sac.make_env import load_env_stack_config, make_env, make_sim_backend
from robot_sac.policy_contract import MODEL_FILE, verify_file
from robot_sac.spec import load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach
from tests.conftest import ARM4_YAML

EPISODES = 20


def test_shipped_files_verify_and_match_the_robot() -> None:
    verify_file(SHIPPED_ARM_REACH, MODEL_FILE)
    spec = load_robot_spec(ARM4_YAML)
    config, _ = load_env_stack_config(None)
    policy = OnnxPolicy(SHIPPED_ARM_REACH)
    policy.check_compatible(
        expected_contract(spec, ArmReach(spec, config.task).observation_names),
        ignore=("normalizer_digest", "clip_sigma"),
    )
    assert (SHIPPED_ARM_REACH / "README.md").is_file()  # how it was made, and the command that reproduces it


@pytest.fixture(scope="module")
def deploy_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    pytest.importorskip("pybullet")
    out = tmp_path_factory.mktemp("deploy")
    code = main(["deploy", str(SHIPPED_ARM_REACH), "--sim", "--fast", "--episodes", str(EPISODES), "--seed", "0",
                 "--out", str(out)])  # fmt: skip
    assert code == 0
    report: dict = json.loads((out / "deploy_report.json").read_text())
    return report


def test_deploy_of_the_shipped_policy_reaches_the_target(deploy_report: dict) -> None:
    episodes = deploy_report["episodes"]
    assert len(episodes) == EPISODES and not deploy_report["faults"]
    assert np.mean([e["success"] for e in episodes]) >= 0.95, [round(e["final_distance_m"], 4) for e in episodes]


def test_onnx_outcome_equals_the_torch_module_on_the_same_seeds(deploy_report: dict) -> None:
    module = load_torch_twin(SHIPPED_ARM_REACH)
    config, spec = load_env_stack_config(None, ("normalization.enabled=false",))
    env = make_env(config, make_sim_backend(config, spec))
    try:
        for episode in deploy_report["episodes"]:
            obs, info = env.reset(seed=episode["seed"])
            done = False
            while not done:
                with torch.no_grad():
                    delta = module(torch.as_tensor(obs[None])).numpy()[0]
                obs, _, terminated, truncated, info = env.step((delta / spec.max_step_rad).astype(np.float32))
                done = terminated or truncated
            assert info["success"] == episode["success"]
            assert info["distance_m"] == pytest.approx(episode["final_distance_m"], abs=1e-3)
    finally:
        env.close()
