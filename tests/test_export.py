"""ONNX export: the whole inference contract in the graph, self-verified, with metadata and a manifest."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from robot_sac.cli import main
from robot_sac.configs import load_train_config
from robot_sac.errors import ConfigError, ModelIntegrityError
from robot_sac.export import PARITY_TOLERANCE, ExportedPolicy, export_policy, resolve_checkpoint
from robot_sac.networks import SquashedGaussianActor
from robot_sac.normalization import ObservationNormalizer
from robot_sac.policy_contract import MANIFEST_FILE, MODEL_FILE, PolicyContract, read_manifest, verify_file
from robot_sac.train_setup import start_run
from tests.conftest import CONFIG_DIR
from tests.test_train import SMALL

pytest.importorskip("pybullet")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A short ArmReach run with normalization on (its statistics must end up in the graph)."""
    path = tmp_path_factory.mktemp("export") / "run"
    config = load_train_config(CONFIG_DIR / "train" / "arm_reach_sim.yaml",
                               (*SMALL, "run.total_steps=300", "run.eval_interval_steps=300",
                                "run.checkpoint_interval_steps=300"))  # fmt: skip
    trainer = start_run(config, path, show_progress=False)
    try:
        trainer.train(300)
    finally:
        trainer.close()
    yield path


@pytest.fixture(scope="module")
def policy_dir(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("policy")
    export_policy(run_dir, out, batch_variant=True)
    return out


def test_graph_equals_normalize_actor_tanh_scale(run_dir: Path, policy_dir: Path) -> None:
    _, _, state = resolve_checkpoint(run_dir)
    normalizer = ObservationNormalizer.from_arrays({k: np.asarray(v) for k, v in state["normalizer"].items()})
    config = load_train_config(run_dir / "config.yaml")
    actor = SquashedGaussianActor(21, 4, config.sac.network)
    actor.load_state_dict(state["agent"]["actor"])
    manifest = read_manifest(policy_dir)
    scale = np.array(manifest["contract"]["action_scale_rad"])
    obs = np.random.default_rng(0).normal(normalizer.mean, 3 * normalizer.std, size=(64, 21)).astype(np.float32)
    with torch.no_grad():  # the training-time path, written out by hand
        z = torch.as_tensor(normalizer.normalize(obs))
        expected = (actor.deterministic(z).numpy() * scale).astype(np.float32)
    session = ort.InferenceSession(str(policy_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"observation": row[None]})[0] for row in obs])
    np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE)
    batch = ort.InferenceSession(str(policy_dir / "policy_batch.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(batch.run(None, {"observation": obs})[0], expected, atol=PARITY_TOLERANCE)


def test_io_names_types_and_fixed_batch(policy_dir: Path) -> None:
    model = onnx.load(str(policy_dir / MODEL_FILE))
    (inp,), (out,) = model.graph.input, model.graph.output
    assert inp.name == "observation" and out.name == "joint_delta_rad"
    assert inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 21]
    assert [d.dim_value for d in out.type.tensor_type.shape.dim] == [1, 4]


def test_metadata_and_manifest_carry_the_contract(run_dir: Path, policy_dir: Path) -> None:
    session = ort.InferenceSession(str(policy_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    contract = PolicyContract.from_metadata(session.get_modelmeta().custom_metadata_map)
    manifest = read_manifest(policy_dir)
    assert contract.robot_name == "rs_arm4" and contract.obs_dim == 21 and contract.action_dim == 4
    assert contract.control_hz == 50.0 and len(contract.normalizer_digest) == 64
    assert contract.joint_names == ("base_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch")
    assert manifest["contract"]["normalizer_digest"] == contract.normalizer_digest
    assert manifest["parity"]["samples"] > 0 and manifest["parity"]["max_abs_diff_rad"] <= PARITY_TOLERANCE
    run_info = json.loads((run_dir / "run_info.json").read_text())
    assert contract.config_hash == run_info["config_sha256"]
    verify_file(policy_dir)


def test_a_flipped_byte_is_caught_by_the_manifest(policy_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "p"
    copy.mkdir()
    for name in (MODEL_FILE, MANIFEST_FILE):
        (copy / name).write_bytes((policy_dir / name).read_bytes())
    data = bytearray((copy / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the weights
    (copy / MODEL_FILE).write_bytes(bytes(data))
    onnx.checker.check_model(str(copy / MODEL_FILE))  # the checker does not notice (SAFETY.md B8)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        verify_file(copy)


def test_export_from_the_cli_and_a_foreign_env_is_refused(run_dir: Path, tmp_path: Path) -> None:
    assert main(["export", str(run_dir), "--out", str(tmp_path / "cli")]) == 0
    verify_file(tmp_path / "cli")
    with pytest.raises(ConfigError, match="neither a run directory"):
        export_policy(tmp_path, tmp_path / "nothing")


def test_exported_module_clips_like_the_normalizer() -> None:
    actor = SquashedGaussianActor(3, 2, load_train_config(CONFIG_DIR / "train" / "pendulum.yaml").sac.network)
    norm = ObservationNormalizer(3, clip_sigma=2.0)
    norm.update(np.random.default_rng(0).normal(size=(100, 3)))
    module = ExportedPolicy(actor, norm, np.array([0.1, 0.2]))
    far = torch.full((1, 3), 1e6)
    with torch.no_grad():
        expected = actor.deterministic(torch.as_tensor(norm.normalize(far.numpy()))) * torch.tensor([0.1, 0.2])
        np.testing.assert_allclose(module(far).numpy(), expected.numpy(), atol=1e-6)


def test_torch_twin_matches_the_onnx_graph(policy_dir: Path) -> None:
    from robot_sac.export import load_torch_twin

    module = load_torch_twin(policy_dir)
    obs = np.random.default_rng(1).normal(size=(8, 21)).astype(np.float32) * 0.2
    session = ort.InferenceSession(str(policy_dir / MODEL_FILE), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.as_tensor(obs)).numpy()
    got = np.concatenate([session.run(None, {"observation": row[None]})[0] for row in obs])
    np.testing.assert_allclose(got, expected, atol=PARITY_TOLERANCE)
