"""`OnnxPolicy`: integrity before any session (SAFETY.md #26), the contract (#25), warm-up (#18), inputs (#9, #12).

Policies are tiny graphs built with ``onnx.helper`` (tests/onnx_fixtures.py): no torch needed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

import policies.onnx_policy as onnx_policy_module
from policies.onnx_policy import OnnxPolicy, expected_contract
from robot_sac.errors import (
    EnvStateError,
    ModelContractError,
    ModelIntegrityError,
    NonFiniteAction,
    NonFiniteObservation,
)
from robot_sac.policy_contract import MANIFEST_FILE, MODEL_FILE, PolicyContract, write_manifest
from robot_sac.spec import RobotSpec
from tests.onnx_fixtures import (
    arm_reach_observation_names,
    contract_for,
    flip_byte_in_initializer,
    policy_graph,
    write_policy,
)

RNG = np.random.default_rng(7)


def _random_params(obs_dim: int, dof: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "weight": rng.normal(0.0, 0.5, (obs_dim, dof)),
        "bias": rng.normal(0.0, 0.1, dof),
        "mean": rng.normal(0.0, 0.2, obs_dim),
        "std": rng.uniform(0.5, 2.0, obs_dim),
    }


@pytest.fixture
def policy_dir(tmp_path: Path, arm4_spec: RobotSpec) -> Path:
    contract = contract_for(arm4_spec)
    return write_policy(tmp_path / "policy", contract, **_random_params(contract.obs_dim, contract.action_dim))


def _expected(spec: RobotSpec, **kwargs: Any) -> PolicyContract:
    return expected_contract(spec, arm_reach_observation_names(spec), **kwargs)


# --- integrity (SAFETY.md #26) --------------------------------------------------------------------


def _forbid_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("an InferenceSession was created for an unverified model")

    monkeypatch.setattr(onnx_policy_module.ort, "InferenceSession", refuse)


def test_valid_policy_is_accepted(policy_dir: Path, arm4_spec: RobotSpec) -> None:
    policy = OnnxPolicy(policy_dir)
    assert policy.contract == contract_for(arm4_spec)
    policy.check_compatible(_expected(arm4_spec, normalizer_digest="0" * 64, clip_sigma=5.0))
    options = policy._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_flipped_weight_byte_is_refused_before_any_session(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = policy_dir / MODEL_FILE
    flip_byte_in_initializer(model)
    # The flipped model is a valid model: onnxruntime loads it and would drive the arm with it (B8).
    ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    _forbid_sessions(monkeypatch)
    with pytest.raises(ModelIntegrityError, match="sha256"):
        OnnxPolicy(policy_dir)


def test_truncated_file_is_refused_before_any_session(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = policy_dir / MODEL_FILE
    model.write_bytes(model.read_bytes()[:-100])
    _forbid_sessions(monkeypatch)
    with pytest.raises(ModelIntegrityError):
        OnnxPolicy(policy_dir)


def test_missing_manifest_is_refused(policy_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (policy_dir / MANIFEST_FILE).unlink()
    _forbid_sessions(monkeypatch)
    with pytest.raises(ModelIntegrityError, match="manifest"):
        OnnxPolicy(policy_dir)


def test_verified_bytes_that_onnxruntime_cannot_load_are_a_contract_error(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    policy_dir = tmp_path / "garbage"
    policy_dir.mkdir()
    (policy_dir / MODEL_FILE).write_bytes(b"not a model")
    write_manifest(policy_dir, contract_for(arm4_spec))  # hashes match: the exporter wrote garbage
    with pytest.raises(ModelContractError, match="cannot load"):
        OnnxPolicy(policy_dir)


# --- the contract (SAFETY.md #25) --------------------------------------------------------------------


def _refusal(tmp_path: Path, spec: RobotSpec, expected_kwargs: dict[str, Any], **changes: Any) -> str:
    contract = contract_for(spec, **changes)
    policy = OnnxPolicy(write_policy(tmp_path / "p", contract))
    ignore = () if "normalizer_digest" in expected_kwargs else ("normalizer_digest", "clip_sigma")
    with pytest.raises(ModelContractError) as err:
        policy.check_compatible(_expected(spec, **expected_kwargs), ignore=ignore)
    return str(err.value)


def test_observation_dimension_off_by_one_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    names = (*arm_reach_observation_names(arm4_spec), "extra/x")
    message = _refusal(tmp_path, arm4_spec, {}, observation_names=names, obs_dim=len(names))
    assert "obs_dim" in message and "observation_names" in message


def test_swapped_joint_names_are_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    j = list(arm4_spec.joint_names)
    j[0], j[1] = j[1], j[0]
    message = _refusal(tmp_path, arm4_spec, {}, joint_names=tuple(j))
    assert "joint_names" in message and "1 field(s)" in message


def test_swapped_observation_names_are_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    names = list(arm_reach_observation_names(arm4_spec))
    names[0], names[4] = names[4], names[0]
    message = _refusal(tmp_path, arm4_spec, {}, observation_names=tuple(names))
    assert "observation_names" in message


def test_control_rate_30_vs_50_hz_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    message = _refusal(tmp_path, arm4_spec, {}, control_hz=30.0)
    assert "control_hz: policy has 30.0" in message and "50.0" in message


def test_different_normalizer_digest_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    message = _refusal(tmp_path, arm4_spec, {"normalizer_digest": "f" * 64, "clip_sigma": 5.0})
    assert "normalizer_digest" in message and "1 field(s)" in message


def test_wrong_robot_name_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    message = _refusal(tmp_path, arm4_spec, {}, robot_name="other_arm")
    assert "robot_name: policy has 'other_arm'" in message


def test_every_difference_is_listed(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    j = tuple(reversed(arm4_spec.joint_names))
    message = _refusal(
        tmp_path, arm4_spec, {"normalizer_digest": "f" * 64, "clip_sigma": 5.0},
        robot_name="other_arm", joint_names=j, control_hz=30.0, action_scale_rad=(0.1, 0.1, 0.1, 0.1),
    )  # fmt: skip
    for field in ("robot_name", "joint_names", "control_hz", "action_scale_rad", "normalizer_digest"):
        assert field in message
    assert "5 field(s)" in message


def test_ignored_fields_are_not_compared(policy_dir: Path, arm4_spec: RobotSpec) -> None:
    policy = OnnxPolicy(policy_dir)
    policy.check_compatible(_expected(arm4_spec), ignore=("normalizer_digest", "clip_sigma"))
    with pytest.raises(ValueError, match="unknown"):
        policy.check_compatible(_expected(arm4_spec), ignore=("normaliser",))


def test_graph_with_float64_input_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    with pytest.raises(ModelContractError, match=r"tensor\(double\)"):
        OnnxPolicy(write_policy(tmp_path / "p", contract_for(arm4_spec), input_dtype=TensorProto.DOUBLE))


def test_graph_with_another_output_name_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    with pytest.raises(ModelContractError, match="joint_delta_rad"):
        OnnxPolicy(write_policy(tmp_path / "p", contract_for(arm4_spec), output_name="action"))


def test_graph_shape_disagreeing_with_metadata_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    contract = contract_for(arm4_spec)
    policy_dir = write_policy(tmp_path / "p", contract)
    # Rewrite the graph one input wider, keeping the metadata (and a fresh manifest).
    model = policy_graph(contract.obs_dim + 1, contract.action_dim, metadata=contract.to_metadata())
    (policy_dir / MODEL_FILE).write_bytes(model.SerializeToString())
    write_manifest(policy_dir, contract)
    n = contract.obs_dim
    with pytest.raises(ModelContractError, match=rf"shape \[1, {n + 1}\], expected \[1, {n}\]"):
        OnnxPolicy(policy_dir)


def test_missing_metadata_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    metadata = contract_for(arm4_spec).to_metadata()
    del metadata["control_hz"]
    with pytest.raises(ModelContractError, match="control_hz"):
        OnnxPolicy(write_policy(tmp_path / "p", contract_for(arm4_spec), metadata=metadata))


def test_metadata_disagreeing_with_the_manifest_is_refused(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    metadata = contract_for(arm4_spec, control_hz=30.0).to_metadata()
    with pytest.raises(ModelContractError, match="control_hz"):
        OnnxPolicy(write_policy(tmp_path / "p", contract_for(arm4_spec), metadata=metadata))


# --- warm-up and inference (SAFETY.md #9, #12, #18) ------------------------------------------------------


def test_inference_before_warm_up_is_refused(policy_dir: Path) -> None:
    policy = OnnxPolicy(policy_dir)
    assert not policy.ready
    with pytest.raises(EnvStateError, match="warm"):
        policy(np.zeros(policy.contract.obs_dim))


def test_warm_up_measures_latency(policy_dir: Path) -> None:
    policy = OnnxPolicy(policy_dir, warmup_runs=50)
    stats = policy.warm_up()
    assert policy.ready and policy.warmup_latency == stats
    assert stats.count == 50 and 0 < stats.p50_us <= stats.p99_us <= stats.max_us
    assert policy.latency().count == 0  # per-call statistics start after the warm-up
    policy(np.zeros(policy.contract.obs_dim))
    assert policy.latency().count == 1
    policy.check_latency(1.0)
    with pytest.raises(ModelContractError, match="exceeds the budget"):
        policy.check_latency(1e-9)


def test_latency_gate_needs_a_warm_up(policy_dir: Path) -> None:
    with pytest.raises(EnvStateError):
        OnnxPolicy(policy_dir).check_latency(1.0)


def test_output_matches_the_graph_math(policy_dir: Path, arm4_spec: RobotSpec) -> None:
    contract = contract_for(arm4_spec)
    p = _random_params(contract.obs_dim, contract.action_dim)
    policy = OnnxPolicy(policy_dir, warmup_runs=1)
    policy.warm_up()
    scale = np.asarray(contract.action_scale_rad)
    for _ in range(20):  # the bound input buffer must carry each new observation
        obs = RNG.normal(0.0, 1.0, contract.obs_dim)
        x = np.clip((obs.astype(np.float32) - p["mean"]) / p["std"], -5.0, 5.0)
        want = np.tanh(x @ p["weight"] + p["bias"]) * scale
        got = policy(obs)
        assert got.shape == (contract.action_dim,) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("bad", [np.nan, -np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_observation_is_refused_before_inference(policy_dir: Path, bad: float) -> None:
    policy = OnnxPolicy(policy_dir, warmup_runs=1)
    policy.warm_up()
    obs = np.zeros(policy.contract.obs_dim)
    obs[3] = bad
    with pytest.raises(NonFiniteObservation, match=policy.contract.observation_names[3]):
        policy(obs)
    assert policy.latency().count == 0  # onnxruntime never ran


def test_wrong_observation_shape_is_a_value_error(policy_dir: Path) -> None:
    policy = OnnxPolicy(policy_dir, warmup_runs=1)
    policy.warm_up()
    with pytest.raises(ValueError, match="shape"):
        policy(np.zeros(policy.contract.obs_dim + 1))


def test_non_finite_output_is_a_non_finite_action(tmp_path: Path, arm4_spec: RobotSpec) -> None:
    contract = contract_for(arm4_spec)
    weight = np.full((contract.obs_dim, contract.action_dim), np.inf)  # 0 * inf = NaN
    policy = OnnxPolicy(write_policy(tmp_path / "p", contract, weight=weight), warmup_runs=1)
    policy.warm_up(np.ones(contract.obs_dim))  # warm-up on a valid observation: inf*1 -> tanh -> finite
    with pytest.raises(NonFiniteAction):
        policy(np.zeros(contract.obs_dim))


def test_manifest_records_what_the_fixture_wrote(policy_dir: Path) -> None:
    doc = json.loads((policy_dir / MANIFEST_FILE).read_text())
    assert set(doc["files"]) == {MODEL_FILE}
    assert OnnxPolicy(policy_dir).sha256 == doc["files"][MODEL_FILE]["sha256"]
