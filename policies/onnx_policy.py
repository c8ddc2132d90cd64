"""`OnnxPolicy`: an exported policy, verified, checked against the robot, warmed up, run by onnxruntime.

Loading order (SAFETY.md rows 18, 25, 26) — nothing reaches onnxruntime before it is trusted:

1. The file's sha256 and size are checked against ``manifest.json`` (`verify_file`). A flipped
   weight bit loads in onnxruntime and passes ``onnx.checker`` (SAFETY.md B8); only the hash
   catches it. The bytes that were hashed are the bytes given to onnxruntime (no second read).
2. The session is created with fixed thread counts and sequential execution, so latency does not
   depend on the machine's load pattern or core count.
3. The contract in the model's ``metadata_props`` is parsed (`PolicyContract.from_metadata`) and
   must equal the manifest's; the graph's input and output names, dtypes and shapes must be the
   contract's exactly.
4. `check_compatible` compares the contract with what the robot and the env expect and refuses
   a mismatch naming every differing field.
5. `warm_up` runs K inferences and measures their latency; `__call__` refuses until it has run
   (the first onnxruntime run costs ~100x a warm one, SAFETY.md B9).

Imports only numpy, onnxruntime, the standard library and robot_sac interface modules: it runs on
the embedded controller, which has no torch and no onnx package.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from robot_sac.errors import (
    EnvStateError,
    ModelContractError,
    ModelIntegrityError,
    NonFiniteAction,
    NonFiniteObservation,
)
from robot_sac.policy_contract import (
    INPUT_NAME,
    MODEL_FILE,
    OUTPUT_NAME,
    PolicyContract,
    read_manifest,
    verify_file,
)
from robot_sac.spec import RobotSpec

_ORT_FLOAT = "tensor(float)"
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_LATENCY_CAPACITY = 100_000
"""Per-call latencies kept for the statistics (a ring: the most recent calls)."""


@dataclass(frozen=True)
class LatencyStats:
    """Inference latency over a set of calls, in microseconds.

    Attributes:
        count: calls measured.
        p50_us: median.
        p99_us: 99th percentile.
        max_us: slowest call.
    """

    count: int
    p50_us: float
    p99_us: float
    max_us: float

    @classmethod
    def of(cls, latencies_ns: np.ndarray) -> LatencyStats:
        """Statistics of latencies given in nanoseconds (zeros when empty)."""
        if latencies_ns.size == 0:
            return cls(0, 0.0, 0.0, 0.0)
        us = latencies_ns.astype(np.float64) / 1000.0
        p50, p99 = np.percentile(us, [50.0, 99.0]).tolist()
        return cls(int(us.size), float(p50), float(p99), float(us.max()))

    def as_dict(self) -> dict[str, float]:
        """A JSON-ready dict."""
        return asdict(self)


def expected_contract(
    spec: RobotSpec,
    observation_names: Sequence[str],
    *,
    control_hz: float | None = None,
    normalizer_digest: str = "",
    clip_sigma: float = 0.0,
) -> PolicyContract:
    """The contract the robot and the env expect a policy to have.

    Args:
        spec: the robot (name, joint order, action scale ``max_step_rad``).
        observation_names: the task's observation names, in order.
        control_hz: the deploy loop's rate in Hz (default: ``spec.control_hz``).
        normalizer_digest: the digest of the statistics the policy must carry; pass
            ``ignore=("normalizer_digest", "clip_sigma")`` to `OnnxPolicy.check_compatible` when
            the robot does not know it.
        clip_sigma: the normalizer's clip in standard deviations.

    Provenance fields (config hash, versions) are left empty: they are never compared.
    """
    names = tuple(observation_names)
    return PolicyContract(
        robot_name=spec.name,
        joint_names=spec.joint_names,
        observation_names=names,
        obs_dim=len(names),
        action_dim=spec.dof,
        action_scale_rad=tuple(spec.max_step_rad.tolist()),
        control_hz=spec.control_hz if control_hz is None else control_hz,
        normalizer_digest=normalizer_digest,
        clip_sigma=clip_sigma,
        config_hash="",
        package_version="",
        policy_version=0,
    )


class OnnxPolicy:
    """A verified ONNX policy: raw observation (SI units) in, joint-target delta in rad out.

    Args:
        policy_dir: directory with ``policy.onnx`` and ``manifest.json`` (``robot-sac export``).
        threads: onnxruntime intra-op threads (1 is fastest for small MLPs and is deterministic).
        warmup_runs: inferences `warm_up` runs by default.

    Raises:
        ModelIntegrityError: the file's bytes differ from the manifest (before any session exists).
        ModelContractError: metadata missing or unparsable, metadata and manifest disagree, or the
            graph's I/O names, dtypes or shapes are not the contract's.
    """

    def __init__(self, policy_dir: str | Path, *, threads: int = 1, warmup_runs: int = 200) -> None:
        """Verify, load and check the model; the policy is not `ready` until `warm_up`."""
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        if warmup_runs < 1:
            raise ValueError(f"warmup_runs must be >= 1, got {warmup_runs}")
        self.policy_dir = Path(policy_dir)
        self.threads = threads
        self.warmup_runs = warmup_runs
        path = verify_file(self.policy_dir, MODEL_FILE)
        model_bytes = path.read_bytes()
        self.sha256 = _hash_matching_manifest(self.policy_dir, model_bytes)
        try:
            self._session = ort.InferenceSession(
                model_bytes, _session_options(threads), providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own types (InvalidProtobuf, Fail, ...)
            raise ModelContractError(
                f"{path}: verified, but onnxruntime {ort.__version__} cannot load it ({err}); export it for this "
                "runtime (opset, IR version)"
            ) from err
        self.contract = PolicyContract.from_metadata(self._session.get_modelmeta().custom_metadata_map)
        self._check_manifest_contract()
        self._check_graph_io()
        c = self.contract
        self._input = np.zeros((1, c.obs_dim), dtype=np.float32)
        self._output = np.zeros((1, c.action_dim), dtype=np.float32)
        # IO binding on preallocated buffers: each call only copies the observation in and the
        # action out (no per-call allocations, ~30 % faster than session.run for a small MLP).
        self._binding = self._session.io_binding()
        self._binding.bind_cpu_input(INPUT_NAME, self._input)
        self._output_value = ort.OrtValue.ortvalue_from_numpy(self._output)  # kept alive with the buffer
        self._binding.bind_ortvalue_output(OUTPUT_NAME, self._output_value)
        self._latency_ns = np.zeros(_LATENCY_CAPACITY, dtype=np.int64)
        self._calls = 0
        self._ready = False
        self.warmup_latency: LatencyStats | None = None
        """Latency of the warm-up inferences (None until `warm_up` ran)."""

    # --- checks -----------------------------------------------------------------------------------

    def check_compatible(self, expected: PolicyContract, *, ignore: Collection[str] = ()) -> None:
        """Refuse a policy that was not made for this robot, task and control rate.

        Args:
            expected: what the robot and the env expect (see `expected_contract`).
            ignore: contract fields not to compare (e.g. ``normalizer_digest`` when unknown).

        Raises:
            ModelContractError: listing every differing field.
        """
        unknown = set(ignore) - set(asdict(self.contract))
        if unknown:
            raise ValueError(f"ignore names unknown contract fields {sorted(unknown)}")
        differing = [m for m in self.contract.mismatches(expected) if m.split(":", 1)[0] not in ignore]
        if differing:
            lines = "\n  ".join(differing)
            raise ModelContractError(
                f"policy {self.policy_dir} does not match this robot/env ({len(differing)} field(s)):\n  {lines}\n"
                "export a policy for this robot and task, or deploy with the robot config it was trained on"
            )

    def _check_manifest_contract(self) -> None:
        """The manifest's copy of the contract (if any) must equal the model's metadata."""
        from_manifest = read_manifest(self.policy_dir).get("contract")
        if from_manifest is None:
            return
        from_model = json.loads(json.dumps(asdict(self.contract)))  # tuples -> lists, as in the JSON
        if not isinstance(from_manifest, dict) or from_manifest != from_model:
            keys = set(from_model) | (set(from_manifest) if isinstance(from_manifest, dict) else set())
            differing = sorted(
                k for k in keys if not isinstance(from_manifest, dict) or from_manifest.get(k) != from_model.get(k)
            )
            raise ModelContractError(
                f"{self.policy_dir}: the model's metadata and the manifest's contract disagree on {differing}; "
                "export the policy again"
            )

    def _check_graph_io(self) -> None:
        c = self.contract
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        problems = []
        if [i.name for i in inputs] != [INPUT_NAME]:
            problems.append(f"inputs are {[i.name for i in inputs]}, expected exactly [{INPUT_NAME!r}]")
        else:
            problems += _tensor_problems("input", inputs[0], c.obs_dim)
        by_name = {o.name: o for o in outputs}
        if OUTPUT_NAME not in by_name:
            problems.append(f"outputs are {list(by_name)}, expected {OUTPUT_NAME!r}")
        else:
            problems += _tensor_problems("output", by_name[OUTPUT_NAME], c.action_dim)
        if c.obs_dim != len(c.observation_names) or c.action_dim != len(c.joint_names):
            problems.append(
                f"metadata obs_dim {c.obs_dim}/action_dim {c.action_dim} disagree with its "
                f"{len(c.observation_names)} observation names/{len(c.joint_names)} joint names"
            )
        if len(c.action_scale_rad) != c.action_dim:
            problems.append(f"action_scale_rad has {len(c.action_scale_rad)} entries for {c.action_dim} joints")
        if problems:
            raise ModelContractError(f"{self.policy_dir}/{MODEL_FILE}: " + "; ".join(problems))

    # --- warm-up and inference ----------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether `warm_up` has run (inference is refused before)."""
        return self._ready

    def warm_up(self, observation: np.ndarray | None = None, runs: int | None = None) -> LatencyStats:
        """Run ``runs`` (default ``warmup_runs``) inferences and measure them; then the policy is ready.

        Args:
            observation: a valid raw observation, shape (obs_dim,); zeros when None (an MLP's
                cost does not depend on the values).
            runs: how many inferences.

        Returns:
            The warm-up latency (also in `warmup_latency`); the per-call statistics start afresh.
        """
        obs = np.zeros(self.contract.obs_dim) if observation is None else observation
        n = self.warmup_runs if runs is None else runs
        if n < 1:
            raise ValueError(f"runs must be >= 1, got {n}")
        self._ready = True
        try:
            for _ in range(n):
                self(obs)
        except BaseException:
            self._ready = False
            raise
        self.warmup_latency = self.latency()
        self._calls = 0
        return self.warmup_latency

    def check_latency(self, budget_s: float) -> None:
        """Refuse to arm when the warm-up p99 exceeds ``budget_s`` (SAFETY.md #18: 0.2 periods).

        Raises:
            EnvStateError: `warm_up` has not run.
            ModelContractError: the p99 is over budget (a smaller network, fewer threads or a
                faster controller is needed).
        """
        if self.warmup_latency is None:
            raise EnvStateError("run warm_up() before check_latency()")
        p99_s = self.warmup_latency.p99_us * 1e-6
        if p99_s > budget_s:
            raise ModelContractError(
                f"inference p99 {p99_s * 1e6:.0f} µs exceeds the budget of {budget_s * 1e6:.0f} µs on this "
                f"controller ({self.threads} thread(s)); use a smaller policy or a lower control rate"
            )

    def __call__(self, raw_observation: np.ndarray) -> np.ndarray:
        """The joint-target delta for one raw observation.

        Args:
            raw_observation: shape (obs_dim,), SI units, in the contract's ``observation_names``
                order (the graph normalizes it).

        Returns:
            ``joint_delta_rad``, shape (action_dim,), float64, in rad per control period.

        Raises:
            EnvStateError: `warm_up` has not run.
            ValueError: wrong shape (a programming error).
            NonFiniteObservation: NaN, inf, or a magnitude beyond float32's ±3.4e38 (the cast
                to the graph's float32 input would make it inf); onnxruntime would silently
                return NaN.
            NonFiniteAction: the graph produced NaN or inf.
        """
        if not self._ready:
            raise EnvStateError("the policy is not warmed up; call warm_up() before the first inference")
        obs = np.asarray(raw_observation)
        if obs.shape != (self.contract.obs_dim,):
            raise ValueError(f"observation must have shape ({self.contract.obs_dim},), got {obs.shape}")
        start = time.perf_counter_ns()
        # One check catches NaN, ±inf and finite values that the float32 cast would turn into inf.
        if not (np.abs(obs) <= _FLOAT32_MAX).all():
            bad = [self.contract.observation_names[i] for i in np.flatnonzero(~(np.abs(obs) <= _FLOAT32_MAX))]
            raise NonFiniteObservation(f"non-finite (or beyond float32) observation entries {bad} refused")
        self._input[0] = obs
        self._session.run_with_iobinding(self._binding)
        out: np.ndarray = self._output[0].astype(np.float64)
        self._latency_ns[self._calls % _LATENCY_CAPACITY] = time.perf_counter_ns() - start
        self._calls += 1
        if not np.isfinite(out).all():
            raise NonFiniteAction(f"the policy output {out.tolist()} is not finite (corrupt weights or inputs)")
        return out

    def latency(self) -> LatencyStats:
        """Latency of the calls since warm-up (the last 100 000), µs."""
        n = min(self._calls, _LATENCY_CAPACITY)
        return LatencyStats.of(self._latency_ns[:n])


def _session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _hash_matching_manifest(policy_dir: Path, model_bytes: bytes) -> str:
    """The sha256 of the bytes about to be loaded; they must still be the verified ones."""
    digest = hashlib.sha256(model_bytes).hexdigest()
    if digest != read_manifest(policy_dir)["files"][MODEL_FILE]["sha256"]:
        raise ModelIntegrityError(f"{policy_dir / MODEL_FILE} changed while it was being loaded; refusing it")
    return digest


def _tensor_problems(kind: str, arg: ort.NodeArg, dim: int) -> list[str]:
    """What is wrong with an input/output: dtype float32, shape (1 or a symbolic batch, dim)."""
    problems = []
    if arg.type != _ORT_FLOAT:
        problems.append(f"{kind} {arg.name!r} is {arg.type}, expected {_ORT_FLOAT} (float32)")
    shape = list(arg.shape)
    batch_ok = len(shape) == 2 and (shape[0] == 1 or not isinstance(shape[0], int))
    if not batch_ok or shape[1] != dim:
        problems.append(f"{kind} {arg.name!r} has shape {shape}, expected [1, {dim}]")
    return problems
