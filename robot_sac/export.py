"""ONNX export of a trained actor with the whole inference contract inside the graph.

The graph computes, from the *raw* observation (SI units, float32, batch 1)::

    z = clip((obs - mean) / std, -k, k)        frozen normalizer statistics of the run
    m = actor_trunk(z)[:, :dof]                the squashed Gaussian's mean
    joint_delta_rad = tanh(m) * max_step_rad   the deterministic action, in the task's units

so the controller needs nothing but the file: no normalization stats to ship separately (SB3's
export guide leaves the post-processing out; PEERS.md section 1), no action rescaling to get wrong.
The contract (`robot_sac.policy_contract`) goes into ``metadata_props`` and, with the file's
sha256, into ``manifest.json``. Export verifies itself: onnxruntime and torch agree within
``PARITY_TOLERANCE`` on observations from the run's replay buffer (or a recorded rollout), or
nothing is written.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

import robot_sac
from robot_sac.checkpoint import CHECKPOINTS_DIR, load_checkpoint, load_latest_checkpoint
from robot_sac.config_loader import config_hash, from_mapping, to_mapping
from robot_sac.configs import NetworkConfig, TrainConfig
from robot_sac.errors import ConfigError, ModelContractError, StorageError
from robot_sac.networks import SquashedGaussianActor
from robot_sac.normalization import ObservationNormalizer
from robot_sac.policy_contract import (
    BATCH_MODEL_FILE,
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAME,
    TORCH_TWIN_FILE,
    PolicyContract,
    verify_file,
    write_manifest,
)
from robot_sac.spec import RobotSpec, load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach

log = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-5
"""Largest |onnxruntime - torch| accepted on any output element, in rad."""
PARITY_SAMPLES = 1000
TORCH_FILE = TORCH_TWIN_FILE


class ExportedPolicy(nn.Module):
    """normalizer → actor trunk → mean → tanh → scale, as one module (export only).

    Args:
        actor: the trained actor (its log-std head is unused: deployment is deterministic).
        normalizer: frozen statistics (None: the run did not normalize).
        scale_rad: (dof,) the output for a policy action of +1 (``spec.max_step_rad``).
    """

    obs_mean: Tensor
    obs_inv_std: Tensor
    scale: Tensor

    def __init__(
        self, actor: SquashedGaussianActor, normalizer: ObservationNormalizer | None, scale_rad: np.ndarray
    ) -> None:
        super().__init__()
        self.actor = actor
        dim = actor.obs_dim
        mean = normalizer.mean if normalizer is not None else np.zeros(dim)
        std = normalizer.std if normalizer is not None else np.ones(dim)
        self.clip = float(normalizer.clip_sigma) if normalizer is not None else float("inf")
        # np.array copies: the spec's and the normalizer's arrays are read-only, which torch warns about.
        self.register_buffer("obs_mean", torch.from_numpy(np.array(mean, dtype=np.float32)))
        self.register_buffer("obs_inv_std", torch.from_numpy(np.array(1.0 / std, dtype=np.float32)))
        self.register_buffer("scale", torch.from_numpy(np.array(scale_rad, dtype=np.float32)))

    def forward(self, observation: Tensor) -> Tensor:
        """(B, obs_dim) raw observations → (B, dof) joint-target deltas in rad."""
        z = (observation - self.obs_mean) * self.obs_inv_std
        if self.clip != float("inf"):
            z = z.clamp(-self.clip, self.clip)
        mean = self.actor.net(z)[:, : self.actor.action_dim]
        return torch.tanh(mean) * self.scale


@dataclass(frozen=True)
class ExportResult:
    """Where the policy went and how well onnxruntime matched torch."""

    policy_dir: Path
    contract: PolicyContract
    parity_max_abs_diff: float
    parity_samples: int


def resolve_checkpoint(source: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(run dir, checkpoint dir, state) for a run directory (newest verified checkpoint) or one checkpoint."""
    source = Path(source)
    if (source / "config.yaml").is_file():
        found = load_latest_checkpoint(source)
        if found is None:
            raise StorageError(f"{source}: no complete checkpoint in {source / CHECKPOINTS_DIR}; train first")
        return source, found[0], found[1]
    if source.parent.name == CHECKPOINTS_DIR and (source.parent.parent / "config.yaml").is_file():
        return source.parent.parent, source, load_checkpoint(source)
    raise ConfigError(f"{source} is neither a run directory (with config.yaml) nor one of its checkpoints/step_* dirs")


def export_policy(source: Path, out_dir: Path, *, batch_variant: bool = False) -> ExportResult:
    """Export the actor of a run (or of one checkpoint) to ``out_dir`` with metadata and manifest.

    Raises:
        ConfigError: the run was not trained on a robot task (a gymnasium id: nothing to deploy).
        ModelContractError: onnxruntime disagrees with torch beyond `PARITY_TOLERANCE`.
        StorageError: no readable checkpoint.
    """
    from robot_sac.train_setup import load_run_config  # avoids an import cycle through the CLI

    run_dir, checkpoint, state = resolve_checkpoint(source)
    config = load_run_config(run_dir)
    if config.env_id:
        raise ConfigError(f"{run_dir} trained on gymnasium env {config.env_id!r}; only robot tasks can be deployed")
    spec = load_robot_spec(config.env.robot_path())
    task = ArmReach(spec, config.env.task)
    normalizer = _normalizer(state)
    actor = SquashedGaussianActor(len(task.observation_names), spec.dof, config.sac.network)
    actor.load_state_dict(state["agent"]["actor"])
    module = ExportedPolicy(actor, normalizer, spec.max_step_rad).eval()
    contract = make_contract(spec, task.observation_names, normalizer, config, int(state["agent"]["num_updates"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    _export_onnx(module, out_dir / MODEL_FILE, contract, dynamic_batch=False)
    if batch_variant:
        _export_onnx(module, out_dir / BATCH_MODEL_FILE, contract, dynamic_batch=True)
    observations = parity_observations(checkpoint, config, spec)
    worst = check_parity(module, out_dir / MODEL_FILE, observations)
    _save_torch_twin(module, config, out_dir / TORCH_FILE)
    extra = {
        "parity": {"samples": len(observations), "max_abs_diff_rad": worst, "tolerance_rad": PARITY_TOLERANCE},
        "source": {"run_dir": str(run_dir), "checkpoint": checkpoint.name},
    }
    write_manifest(out_dir, contract, extra)
    log.info("exported %s: parity max |Δ| %.2e rad over %d observations", out_dir, worst, len(observations))
    return ExportResult(out_dir, contract, worst, len(observations))


def make_contract(
    spec: RobotSpec,
    observation_names: tuple[str, ...],
    normalizer: ObservationNormalizer | None,
    config: TrainConfig,
    policy_version: int,
) -> PolicyContract:
    """The contract of a policy for ``spec`` trained with ``config``."""
    return PolicyContract(
        robot_name=spec.name,
        joint_names=spec.joint_names,
        observation_names=observation_names,
        obs_dim=len(observation_names),
        action_dim=spec.dof,
        action_scale_rad=tuple(float(x) for x in spec.max_step_rad),
        control_hz=spec.control_hz,
        normalizer_digest=normalizer.digest() if normalizer is not None else "",
        clip_sigma=normalizer.clip_sigma if normalizer is not None else 0.0,
        config_hash=config_hash(config),
        package_version=robot_sac.__version__,
        policy_version=policy_version,
    )


def _save_torch_twin(module: ExportedPolicy, config: TrainConfig, path: Path) -> None:
    """The exported module's weights and network shape (``torch.load(weights_only=True)`` reads it)."""
    twin = {
        "state_dict": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "clip": module.clip,
        "obs_dim": module.actor.obs_dim,
        "action_dim": module.actor.action_dim,
        "network": to_mapping(config.sac.network),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(twin, tmp)
    os.chmod(tmp, 0o644)
    tmp.replace(path)


def load_torch_twin(policy_dir: Path) -> ExportedPolicy:
    """The torch module an export was made from (for parity and evaluation), checked against the manifest."""
    verify_file(policy_dir, TORCH_FILE)
    twin = torch.load(Path(policy_dir) / TORCH_FILE, weights_only=True)
    network = from_mapping(NetworkConfig, twin["network"], source=str(policy_dir / TORCH_FILE))
    actor = SquashedGaussianActor(int(twin["obs_dim"]), int(twin["action_dim"]), network)
    module = ExportedPolicy(actor, None, np.zeros(int(twin["action_dim"])))
    module.clip = float(twin["clip"])
    module.load_state_dict(twin["state_dict"])
    return module.eval()


def _normalizer(state: dict[str, Any]) -> ObservationNormalizer | None:
    arrays = state.get("normalizer")
    if arrays is None:
        return None
    return ObservationNormalizer.from_arrays({k: np.asarray(v) for k, v in arrays.items()})


def _export_onnx(module: ExportedPolicy, path: Path, contract: PolicyContract, *, dynamic_batch: bool) -> None:
    """torch.export-based ONNX, float32, fixed I/O names, the contract in ``metadata_props``; atomic."""
    example = torch.zeros(1, contract.obs_dim)
    dynamic = {"observation": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamo=True,
            dynamic_shapes=dynamic, verbose=False,
        )  # fmt: skip
    assert program is not None
    model = program.model_proto
    for key, value in contract.to_metadata().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
        tmp = Path(f.name)
    try:
        onnx.save_model(model, str(tmp))
        os.chmod(tmp, 0o644)  # a shared artifact, not a private temp file
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def parity_observations(checkpoint: Path, config: TrainConfig, spec: RobotSpec, n: int = PARITY_SAMPLES) -> np.ndarray:
    """Raw observations the policy really meets: the run's replay buffer, else a short random rollout."""
    replay = checkpoint / "replay.npz"
    if replay.is_file():
        with np.load(replay, allow_pickle=False) as data:
            obs = np.asarray(data["obs"], dtype=np.float32)
        if len(obs):
            idx = np.random.default_rng(0).choice(len(obs), size=min(n, len(obs)), replace=False)
            return obs[np.sort(idx)]
    from robot_sac.make_env import make_env, make_sim_backend

    env = make_env(config.env, make_sim_backend(config.env, spec), normalizer=None)
    rows: list[np.ndarray] = []
    try:
        rng = np.random.default_rng(0)
        obs, info = env.reset(seed=0)
        while len(rows) < n:
            rows.append(info.get("raw_observation", obs))
            obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, spec.dof).astype(np.float32))
            if terminated or truncated:
                obs, info = env.reset(seed=len(rows))
    finally:
        env.close()
    return np.asarray(rows, dtype=np.float32)


def check_parity(module: ExportedPolicy, path: Path, observations: np.ndarray) -> float:
    """The largest |onnxruntime - torch| over ``observations`` (run one at a time, as deployed).

    Raises:
        ModelContractError: beyond `PARITY_TOLERANCE` (the file is removed).
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.as_tensor(observations)).numpy()
    got = np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: row[None]})[0] for row in observations])
    worst = float(np.abs(got - expected).max()) if len(observations) else 0.0
    if not worst <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ModelContractError(
            f"onnxruntime differs from torch by {worst:.3g} rad (> {PARITY_TOLERANCE}); export refused"
        )
    return worst
