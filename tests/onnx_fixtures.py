"""Tiny ONNX policies built with ``onnx.helper`` (no torch), for tests of the torch-free runtime.

The graph has the exporter's shape and I/O contract::

    observation (1, obs_dim) float32
      -> (x - mean) / std -> Clip(±clip_sigma) -> MatMul(W) -> Add(b) -> Tanh -> Mul(scale)
      -> joint_delta_rad (1, dof) float32

`write_policy` writes ``policy.onnx`` with the contract in ``metadata_props`` and the manifest
beside it, exactly as ``robot-sac export`` does, so `OnnxPolicy` loads it like a real export.
`pose_seeking_weights` makes a proportional controller that drives the held joint targets of an
ArmReach observation to a fixed pose (a policy that moves, without training).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from robot_sac.configs import ArmReachConfig
from robot_sac.policy_contract import INPUT_NAME, MODEL_FILE, OUTPUT_NAME, PolicyContract, write_manifest
from robot_sac.spec import RobotSpec
from robot_sac.tasks.arm_reach import ArmReach

OPSET = 17


def arm_reach_observation_names(spec: RobotSpec) -> tuple[str, ...]:
    """The ArmReach task's observation names for ``spec``."""
    return ArmReach(spec, ArmReachConfig()).observation_names


def contract_for(spec: RobotSpec, **changes: Any) -> PolicyContract:
    """A contract matching ``spec`` and ArmReach; ``changes`` replace fields (to make mismatches)."""
    names = arm_reach_observation_names(spec)
    contract = PolicyContract(
        robot_name=spec.name,
        joint_names=spec.joint_names,
        observation_names=names,
        obs_dim=len(names),
        action_dim=spec.dof,
        action_scale_rad=tuple(spec.max_step_rad.tolist()),
        control_hz=spec.control_hz,
        normalizer_digest="0" * 64,
        clip_sigma=5.0,
        config_hash="c" * 64,
        package_version="0.1.0",
        policy_version=0,
    )
    return replace(contract, **changes)


def policy_graph(
    obs_dim: int,
    action_dim: int,
    *,
    weight: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    mean: np.ndarray | None = None,
    std: np.ndarray | None = None,
    clip_sigma: float = 5.0,
    scale: Sequence[float] | np.ndarray | None = None,
    batch: int | str = 1,
    input_dtype: int = TensorProto.FLOAT,
    output_name: str = OUTPUT_NAME,
    metadata: dict[str, str] | None = None,
) -> onnx.ModelProto:
    """The policy graph; unspecified parameters are identity-like (mean 0, std 1, zero weights)."""
    f32 = np.float32
    w = np.zeros((obs_dim, action_dim), f32) if weight is None else np.asarray(weight, f32)
    b = np.zeros(action_dim, f32) if bias is None else np.asarray(bias, f32)
    mu = np.zeros(obs_dim, f32) if mean is None else np.asarray(mean, f32)
    sd = np.ones(obs_dim, f32) if std is None else np.asarray(std, f32)
    s = np.full(action_dim, 0.01, f32) if scale is None else np.asarray(scale, f32)
    inits = [
        numpy_helper.from_array(mu, "obs_mean"),
        numpy_helper.from_array(sd, "obs_std"),
        numpy_helper.from_array(np.array(-clip_sigma, f32), "clip_lo"),
        numpy_helper.from_array(np.array(clip_sigma, f32), "clip_hi"),
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(s, "action_scale"),
    ]
    x = INPUT_NAME
    nodes = []
    if input_dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["x32"], to=TensorProto.FLOAT))
        x = "x32"
    nodes += [
        helper.make_node("Sub", [x, "obs_mean"], ["centered"]),
        helper.make_node("Div", ["centered", "obs_std"], ["normalized"]),
        helper.make_node("Clip", ["normalized", "clip_lo", "clip_hi"], ["clipped"]),
        helper.make_node("MatMul", ["clipped", "W"], ["linear"]),
        helper.make_node("Add", ["linear", "b"], ["pre_tanh"]),
        helper.make_node("Tanh", ["pre_tanh"], ["squashed"]),
        helper.make_node("Mul", ["squashed", "action_scale"], [output_name]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_policy",
        [helper.make_tensor_value_info(INPUT_NAME, input_dtype, [batch, obs_dim])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, action_dim])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="robot-sac-tests")
    model.ir_version = 8  # readable by every onnxruntime >= 1.14
    for key, value in (metadata or {}).items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    onnx.checker.check_model(model)
    return model


def write_policy(
    policy_dir: Path,
    contract: PolicyContract,
    *,
    metadata: dict[str, str] | None = None,
    **graph_kwargs: Any,
) -> Path:
    """Write ``policy.onnx`` (contract in metadata; ``metadata`` replaces it when given) and the manifest.

    ``graph_kwargs`` go to `policy_graph`; the graph's dims and scale default to the contract's.
    Returns ``policy_dir``.
    """
    policy_dir.mkdir(parents=True, exist_ok=True)
    graph_kwargs.setdefault("scale", contract.action_scale_rad)
    model = policy_graph(
        contract.obs_dim,
        contract.action_dim,
        metadata=contract.to_metadata() if metadata is None else metadata,
        **graph_kwargs,
    )
    (policy_dir / MODEL_FILE).write_bytes(model.SerializeToString())
    write_manifest(policy_dir, contract, {"command": "tests/onnx_fixtures.py"})
    return policy_dir


def pose_seeking_weights(
    spec: RobotSpec, pose_rad: np.ndarray | None = None, gain: float = 5.0
) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) of ``tanh(gain * (pose - command_rad) / max_step)``: the held target moves to ``pose_rad``.

    A proportional controller on the held joint target of an ArmReach observation (home when
    ``pose_rad`` is None). With ``scale = max_step_rad`` the output is at most one rate-limit step;
    use ``clip_sigma=1e6`` in `policy_graph` so that the identity normalization does not clip.
    """
    dof = spec.dof
    pose = spec.home_rad if pose_rad is None else np.asarray(pose_rad, np.float64)
    obs_dim = len(arm_reach_observation_names(spec))
    w = np.zeros((obs_dim, dof), np.float32)
    for j in range(dof):
        w[2 * dof + j, j] = -gain / spec.max_step_rad[j]  # command_rad/<joint> is at 2·dof + j
    b = (gain * pose / spec.max_step_rad).astype(np.float32)
    return w, b


def flip_byte_in_initializer(model_path: Path, initializer: str = "W") -> int:
    """Flip one bit of a weight's raw bytes in place (a bit flip on flash); returns the byte offset."""
    data = bytearray(model_path.read_bytes())
    model = onnx.load_from_string(bytes(data))
    raw = next(t.raw_data for t in model.graph.initializer if t.name == initializer)
    assert raw, f"initializer {initializer} has no raw_data"
    offset = bytes(data).find(raw)
    assert offset >= 0
    data[offset + len(raw) // 2] ^= 0x01
    model_path.write_bytes(bytes(data))
    return offset + len(raw) // 2
