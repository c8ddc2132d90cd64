"""The contract between an exported policy and the robot it runs on (numpy/stdlib only).

The exporter (``robot_sac/export.py``, torch) writes it; the torch-free runtime
(``policies/onnx_policy.py``) reads and checks it. It travels twice: as the ONNX model's
``metadata_props`` (string key → string value; sequences JSON-encoded) and, with the file's
sha256, in ``manifest.json`` beside the model. Nothing about a policy is implicit: joint and
observation order, the action's meaning and scale, the control rate and the normalization
statistics baked into the graph are all named here, so a mismatch is refused field by field
instead of driving the arm wrongly (SAFETY.md #25-26).

Graph I/O: input ``observation`` float32 (1, obs_dim) — the *raw* observation in SI units (the
graph normalizes with frozen statistics); output ``joint_delta_rad`` float32 (1, dof) — the change
of the joint-position target for this control period, ``tanh(mean) * action_scale_rad``. The deploy
loop passes it through the same safety filter as training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from robot_sac.atomic import write_bytes_atomic
from robot_sac.errors import ModelContractError, ModelIntegrityError

SCHEMA_VERSION = 1
INPUT_NAME = "observation"
OUTPUT_NAME = "joint_delta_rad"
ACTION_SEMANTICS = "joint_target_delta_rad"
MODEL_FILE = "policy.onnx"
BATCH_MODEL_FILE = "policy_batch.onnx"
MANIFEST_FILE = "manifest.json"
TORCH_TWIN_FILE = "policy_torch.pt"
"""Optional: the exported module's torch weights (for parity checks off the controller)."""


@dataclass(frozen=True, kw_only=True)
class PolicyContract:
    """What an exported policy promises; checked against the robot before any torque.

    Attributes:
        schema_version: this format's version (`SCHEMA_VERSION`).
        robot_name: `RobotSpec.name` the policy was trained for.
        joint_names: joint order of the output.
        observation_names: order and meaning of the input (the task's names).
        obs_dim: len(observation_names).
        action_dim: len(joint_names).
        action_semantics: `ACTION_SEMANTICS`.
        action_scale_rad: per joint, the output for a policy action of +1 (the spec's max_step_rad).
        control_hz: the rate the policy was trained at; the deploy loop must run at it.
        normalizer_digest: `ObservationNormalizer.digest()` of the statistics in the graph ("" if none).
        clip_sigma: the normalizer's clip in standard deviations (0 if none).
        config_hash: sha256 of the training config.
        package_version: robot_sac version that exported it.
        policy_version: gradient updates behind the weights.
    """

    schema_version: int = SCHEMA_VERSION
    robot_name: str
    joint_names: tuple[str, ...]
    observation_names: tuple[str, ...]
    obs_dim: int
    action_dim: int
    action_semantics: str = ACTION_SEMANTICS
    action_scale_rad: tuple[float, ...]
    control_hz: float
    normalizer_digest: str
    clip_sigma: float
    config_hash: str
    package_version: str
    policy_version: int

    def to_metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` form: every value a string (sequences as JSON)."""
        out: dict[str, str] = {}
        for key, value in asdict(self).items():
            out[key] = json.dumps(list(value)) if isinstance(value, tuple | list) else str(value)
        return out

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> PolicyContract:
        """Parse ``metadata_props`` (as onnxruntime's ``custom_metadata_map`` returns them).

        Raises:
            ModelContractError: a key is missing or a value does not parse, naming them.
        """
        missing = [f.name for f in fields(cls) if f.name not in metadata]
        if missing:
            raise ModelContractError(f"policy metadata lacks {missing}; re-export it with `robot-sac export`")
        values: dict[str, Any] = {}
        try:
            version = int(metadata["schema_version"])
            if version != SCHEMA_VERSION:
                raise ModelContractError(f"policy schema_version {version}; this runtime reads {SCHEMA_VERSION}")
            for f in fields(cls):
                raw = metadata[f.name]
                if f.name in ("joint_names", "observation_names"):
                    values[f.name] = tuple(str(v) for v in json.loads(raw))
                elif f.name == "action_scale_rad":
                    values[f.name] = tuple(float(v) for v in json.loads(raw))
                elif f.name in ("schema_version", "obs_dim", "action_dim", "policy_version"):
                    values[f.name] = int(raw)
                elif f.name in ("control_hz", "clip_sigma"):
                    values[f.name] = float(raw)
                else:
                    values[f.name] = raw
        except (ValueError, TypeError, json.JSONDecodeError) as err:
            raise ModelContractError(f"policy metadata does not parse: {err}") from err
        return cls(**values)

    def mismatches(self, expected: PolicyContract) -> list[str]:
        """Every field (but provenance) that differs from ``expected``, as ``name: have vs want``."""
        provenance = {"config_hash", "package_version", "policy_version"}
        out = []
        for f in fields(self):
            if f.name in provenance:
                continue
            have, want = getattr(self, f.name), getattr(expected, f.name)
            if f.name in ("control_hz", "clip_sigma") or f.name == "action_scale_rad":
                same = _close(have, want)
            else:
                same = have == want
            if not same:
                out.append(f"{f.name}: policy has {have!r}, the robot/env expects {want!r}")
        return out


def _close(a: float | tuple[float, ...], b: float | tuple[float, ...]) -> bool:
    xs = a if isinstance(a, tuple) else (a,)
    ys = b if isinstance(b, tuple) else (b,)
    return len(xs) == len(ys) and all(abs(x - y) <= 1e-9 * max(1.0, abs(y)) for x, y in zip(xs, ys, strict=True))


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_manifest(policy_dir: str | Path, contract: PolicyContract, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``manifest.json``: each model file's sha256 and size, the contract, ``extra`` (parity, command).

    Written atomically, after the model files: a manifest never names a file that is not complete.
    """
    policy_dir = Path(policy_dir)
    files = {
        name: {"sha256": sha256_file(policy_dir / name), "bytes": (policy_dir / name).stat().st_size}
        for name in (MODEL_FILE, BATCH_MODEL_FILE, TORCH_TWIN_FILE)
        if (policy_dir / name).is_file()
    }
    doc = {"schema_version": SCHEMA_VERSION, "files": files, "contract": asdict(contract), **(extra or {})}
    path = policy_dir / MANIFEST_FILE
    write_bytes_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())
    return path


def read_manifest(policy_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``policy_dir``.

    Raises:
        ModelIntegrityError: missing or unreadable manifest.
    """
    path = Path(policy_dir) / MANIFEST_FILE
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelIntegrityError(f"{path}: no readable manifest ({err}); export the policy again") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict):
        raise ModelIntegrityError(f"{path}: not a robot-sac policy manifest")
    return doc


def verify_file(policy_dir: str | Path, name: str = MODEL_FILE) -> Path:
    """Check ``name`` against the manifest's sha256 and size *before* anything parses it.

    A single flipped weight bit loads in onnxruntime and passes ``onnx.checker`` (SAFETY.md B8);
    only the hash catches it.

    Raises:
        ModelIntegrityError: the file is missing, not in the manifest, or its bytes differ.
    """
    policy_dir = Path(policy_dir)
    entry = read_manifest(policy_dir)["files"].get(name)
    path = policy_dir / name
    if entry is None:
        raise ModelIntegrityError(f"{path}: not listed in {policy_dir / MANIFEST_FILE}")
    if not path.is_file():
        raise ModelIntegrityError(f"{path}: missing")
    digest = sha256_file(path)
    if digest != entry.get("sha256") or path.stat().st_size != entry.get("bytes"):
        raise ModelIntegrityError(
            f"{path}: sha256 {digest[:16]}… differs from the manifest's {str(entry.get('sha256'))[:16]}…; the file is "
            "corrupted or was changed: refusing to load it (restore it or export again)"
        )
    return path
