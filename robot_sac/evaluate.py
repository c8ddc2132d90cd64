"""Deterministic evaluation of a policy on the robot: success with a confidence interval, distances, faults.

Both kinds of policy run through the one env stack (`robot_sac.make_env`) with raw observations
(``normalization.enabled=false``: each policy carries its normalizer, as deployed), and the deploy
loop's action mapping (`policies.deploy`)::

    raw observation ─ policy ─ joint_delta_rad ─ / max_step_rad ─ env.step (safety filter, backend)

A **policy directory** (``robot-sac export``) is an `policies.onnx_policy.OnnxPolicy` (hash and
contract checked, warmed up); a **run directory** (``robot-sac train``) is its newest checkpoint's
actor with the frozen normalizer, acting with ``tanh(mean)`` (`robot_sac.evaluate_torch`, the only
part that imports torch). Both give an `EvalReport`, so "the sim policy on hardware" and "the
fine-tuned policy on hardware" compare directly; episode ``i`` resets with seed ``seed + i``, so
every policy meets the same targets. A fault ends its episode and the evaluation goes on; a reset
that raises (a latched fault, a robot that cannot home) ends it early, and the report says so.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np

from robot_sac.atomic import write_bytes_atomic
from robot_sac.config_loader import apply_overrides, config_hash, from_mapping, to_mapping
from robot_sac.configs import EnvConfig, load_env_config
from robot_sac.errors import ConfigError, EnvStateError, RobotFault, fault_name
from robot_sac.make_env import make_backend, make_env
from robot_sac.policy_contract import MANIFEST_FILE, MODEL_FILE
from robot_sac.safety import CLIP_STAGES
from robot_sac.spec import RobotSpec, load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach

REPORT_FILE = "eval_report.json"
Z_95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95 % interval."""
EXIT_STOPPED_EARLY = 5
"""Exit code when a reset failed and episodes were left unrun (``robot-sac``'s code for a fault)."""
INFERENCE_BUDGET_PERIODS = 0.2
"""On servos, refuse an ONNX policy whose warm-up p99 exceeds this share of the period (SAFETY.md #18)."""
RUN_CONFIG_FILE = "config.yaml"

PolicyKind = Literal["onnx", "torch"]


@dataclass(frozen=True, kw_only=True)
class LoadedPolicy:
    """A policy ready to act, and what it is.

    Attributes:
        act: raw observation (obs_dim,), SI units → ``joint_delta_rad`` (dof,), rad per control
            period. May raise a `RobotFault` (non-finite input or output): the episode ends there.
        kind: ``"onnx"`` (a policy directory) or ``"torch"`` (a run directory).
        source: the directory it came from.
        identity: the ONNX file's sha256, or the checkpoint's name and update count.
    """

    act: Callable[[np.ndarray], np.ndarray]
    kind: PolicyKind
    source: str
    identity: str


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success probability (Wilson 1927, JASA 22:209).

    Unlike ``p ± z sqrt(p(1-p)/n)`` it stays in [0, 1] and is not a point at 0/n or n/n, which
    matters for the 10-50 episodes a robot affords.

    Args:
        successes: successful episodes k, 0 <= k <= n.
        n: episodes; (0, 1) when 0 (nothing is known).
        z: the normal quantile (1.96 for 95 %).

    Returns:
        (lower, upper) bounds of the probability.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    # center = (p + z²/2n) / (1 + z²/n);  half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); computed, it can miss by one ulp.
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == n else min(1.0, center + half)
    return lower, upper


@dataclass(frozen=True, kw_only=True)
class EpisodeRow:
    """One evaluated episode (``return_`` is ``return`` in JSON)."""

    index: int  # episode number in this evaluation, from 0
    seed: int  # the seed of its reset
    steps: int  # env steps taken
    return_: float  # sum of rewards
    success: bool  # the task's success at the last step, and no fault ended the episode
    final_distance_mm: float  # tip to target at the last valid observation, mm
    clip_counts: Mapping[str, int]  # per safety-filter stage, steps on which it changed the command
    fault: str | None  # the fault that ended the episode


@dataclass(frozen=True, kw_only=True)
class FaultEntry:
    """A fault met during the evaluation."""

    name: str  # its type (robot_sac.errors), e.g. NonFiniteAction, CommTimeout
    message: str  # what happened, for the operator
    episode: int  # the episode it ended (at reset: the one that could not start)
    seed: int  # that episode's seed
    step: int  # the env step it happened at (0 at reset)
    during: Literal["step", "policy", "reset"]  # the env reported it, the policy refused, or reset raised


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """The outcome of an evaluation; the same type for ONNX and run-directory policies.

    The statistics (`summary`) are computed from the rows: `to_json` writes them beside the rows,
    `from_json` ignores them.
    """

    policy: str  # the policy or run directory
    policy_kind: PolicyKind
    policy_id: str  # the ONNX sha256, or the checkpoint and its update count
    robot: str  # RobotSpec.name
    backend: str  # "pybullet" or "servos on <port>"
    config_sha256: str  # the env config the episodes ran with
    seed: int  # seed of episode 0 (episode i: seed + i)
    episodes_requested: int
    episodes: tuple[EpisodeRow, ...]  # the episodes that ran
    faults: tuple[FaultEntry, ...]  # every fault, in order
    stop_reason: str  # "completed", or why episodes were left unrun
    wall_s: float  # wall-clock time of the episodes, s

    @property
    def success_rate(self) -> float:
        """Share of the evaluated episodes that succeeded (0 when none ran)."""
        return sum(e.success for e in self.episodes) / len(self.episodes) if self.episodes else 0.0

    @property
    def success_ci95(self) -> tuple[float, float]:
        """95 % Wilson interval of the success probability."""
        return wilson_interval(sum(e.success for e in self.episodes), len(self.episodes))

    @property
    def completed(self) -> bool:
        """Whether every requested episode ran."""
        return len(self.episodes) == self.episodes_requested

    @property
    def exit_code(self) -> int:
        """0 when every episode ran (faults inside episodes are results), else `EXIT_STOPPED_EARLY`."""
        return 0 if self.completed else EXIT_STOPPED_EARLY

    def summary(self) -> dict[str, Any]:
        """The statistics of the rows, JSON-ready.

        Keys: ``episodes_run``, ``completed``, ``successes``, ``success_rate``, ``success_ci95``
        ([lower, upper]), ``final_distance_mm_mean`` and ``final_distance_mm_p95`` (linear
        interpolation; None when no episode ran), ``clip_counts`` (per stage, summed) and
        ``fault_counts`` (by type name).
        """
        d = [e.final_distance_mm for e in self.episodes]
        return {
            "episodes_run": len(self.episodes), "completed": self.completed,
            "successes": sum(e.success for e in self.episodes), "success_rate": self.success_rate,
            "success_ci95": list(self.success_ci95),
            "final_distance_mm_mean": float(np.mean(d)) if d else None,
            "final_distance_mm_p95": float(np.percentile(d, 95.0)) if d else None,
            "clip_counts": {s: sum(int(e.clip_counts.get(s, 0)) for e in self.episodes) for s in CLIP_STAGES},
            "fault_counts": dict(Counter(f.name for f in self.faults)),
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The JSON document: the fields, the `summary`, and the rows (``return_`` as ``return``)."""
        doc = asdict(self)
        doc["episodes"] = [{("return" if k == "return_" else k): v for k, v in row.items()} for row in doc["episodes"]]
        return doc | self.summary()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EvalReport:
        """Rebuild a report from `to_json` output (summary keys are ignored: they are recomputed)."""
        rows = tuple(
            EpisodeRow(**{("return_" if k == "return" else k): v for k, v in row.items()}) for row in doc["episodes"]
        )
        faults = tuple(FaultEntry(**f) for f in doc["faults"])
        names = {f for f in cls.__dataclass_fields__ if f not in ("episodes", "faults")}
        return cls(episodes=rows, faults=faults, **{k: doc[k] for k in names})

    def write(self, out_dir: Path) -> Path:
        """Write `REPORT_FILE` into ``out_dir`` atomically; returns its path."""
        path = Path(out_dir) / REPORT_FILE
        write_bytes_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    def table(self) -> str:
        """A plain-text summary for the terminal (no rich: it runs on the controller)."""
        lines = [f"{'ep':>3} {'seed':>6} {'steps':>5} {'return':>8} {'success':>7} {'dist mm':>8} {'clips':>5}  fault"]
        lines += [
            f"{e.index:>3} {e.seed:>6} {e.steps:>5} {e.return_:>8.2f} {'yes' if e.success else 'no':>7} "
            f"{e.final_distance_mm:>8.1f} {sum(e.clip_counts.values()):>5}  {e.fault or '-'}"
            for e in self.episodes
        ]
        m = self.summary()
        mean, p95, (lower, upper) = m["final_distance_mm_mean"], m["final_distance_mm_p95"], self.success_ci95
        distance = "-" if mean is None else f"mean {mean:.1f} mm, p95 {p95:.1f} mm"
        faults = ", ".join(f"{f.name} (episode {f.episode}, {f.during})" for f in self.faults) or "none"
        ident = self.policy_id[:16] if self.policy_kind == "onnx" else self.policy_id  # a sha256 is 64 digits
        lines += [
            f"{self.policy_kind} policy {self.policy} ({ident}) on {self.robot}, {self.backend}",
            f"success {m['successes']}/{len(self.episodes)} = {self.success_rate:.0%} "
            f"(95 % Wilson CI {lower:.1%} - {upper:.1%}); final distance {distance}",
            f"safety clips {m['clip_counts']}; faults: {faults}",
        ]
        if not self.completed:
            lines.append(f"STOPPED EARLY after {len(self.episodes)} of {self.episodes_requested} episodes: "
                         f"{self.stop_reason}")  # fmt: skip
        return "\n".join(lines)


def evaluate(
    env: gym.Env[np.ndarray, np.ndarray],
    policy: LoadedPolicy,
    spec: RobotSpec,
    *,
    episodes: int,
    seed: int = 0,
    backend: str = "",
    config_sha256: str = "",
) -> EvalReport:
    """Run ``episodes`` deterministic episodes of ``policy`` on ``env``; never raises for robot faults.

    Args:
        env: the `make_env` stack with normalization disabled (raw observations).
        policy: raw observation → ``joint_delta_rad``.
        spec: the robot (its ``max_step_rad`` turns rad into the env's action units).
        episodes: how many (>= 1); episode ``i`` resets with ``seed + i``.
        seed: the first episode's seed.
        backend: where it ran, for the report (``"pybullet"``, ``"servos on <port>"``).
        config_sha256: the env config's hash, for the report.

    Returns:
        The report; ``stop_reason`` says why if fewer than ``episodes`` ran (a failed reset, or
        SIGINT: the episode in progress is dropped). Closing ``env`` is the caller's.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    inv_step = 1.0 / spec.max_step_rad
    rows: list[EpisodeRow] = []
    faults: list[FaultEntry] = []
    stop_reason, started = "completed", time.perf_counter()
    for index in range(episodes):
        episode_seed = seed + index
        try:
            row, fault = _episode(env, policy, inv_step, index, episode_seed)
        except (RobotFault, EnvStateError) as err:  # from reset only: the policy's and the steps' are caught
            faults.append(FaultEntry(name=fault_name(err), message=str(err), episode=index, seed=episode_seed,
                                     step=0, during="reset"))  # fmt: skip
            stop_reason = (f"reset of episode {index} failed with {fault_name(err)}: {err}; the robot needs an "
                           "operator (inspect it, re-arm or power-cycle) before it is evaluated again")  # fmt: skip
            break
        except KeyboardInterrupt:
            stop_reason = f"interrupted (SIGINT) during episode {index}; that episode is not counted"
            break
        rows.append(row)
        if fault is not None:
            faults.append(fault)
    return EvalReport(
        policy=policy.source, policy_kind=policy.kind, policy_id=policy.identity, robot=spec.name, backend=backend,
        config_sha256=config_sha256, seed=seed, episodes_requested=episodes, episodes=tuple(rows),
        faults=tuple(faults), stop_reason=stop_reason, wall_s=time.perf_counter() - started,
    )  # fmt: skip


def _episode(
    env: gym.Env[np.ndarray, np.ndarray], policy: LoadedPolicy, inv_step: np.ndarray, index: int, seed: int
) -> tuple[EpisodeRow, FaultEntry | None]:
    """Reset, then step until the episode terminates, truncates or faults (reset errors propagate)."""
    obs, info = env.reset(seed=seed)
    steps, ret, fault = 0, 0.0, None
    while True:
        try:
            delta = policy.act(obs)
        except RobotFault as err:  # NonFiniteObservation / NonFiniteAction: nothing is sent, the robot holds
            fault = FaultEntry(name=fault_name(err), message=str(err), episode=index, seed=seed, step=steps,
                               during="policy")  # fmt: skip
            break
        # The deploy loop's mapping: rad per period → policy units (policies.deploy.DeployLoop._step).
        obs, reward, terminated, truncated, info = env.step((delta * inv_step).astype(np.float32))
        steps += 1
        ret += float(reward)
        if info["fault"] is not None:  # the env truncated and holds the last safe target
            fault = FaultEntry(name=info["fault"], message=info["fault_message"], episode=index, seed=seed,
                               step=steps - 1, during="step")  # fmt: skip
            break
        if terminated or truncated:
            break
    row = EpisodeRow(
        index=index, seed=seed, steps=steps, return_=ret, success=bool(info["success"]) and fault is None,
        final_distance_mm=1e3 * float(info["distance_m"]),
        clip_counts={s: int(info["clip_counts"][s]) for s in CLIP_STAGES}, fault=None if fault is None else fault.name,
    )  # fmt: skip
    return row, fault


# --- composition: a directory and a robot in, a report out ----------------------------------------


def source_kind(source: Path) -> PolicyKind:
    """``"onnx"`` for a policy directory, ``"torch"`` for a run directory.

    Raises:
        ConfigError: neither (with what each must hold).
    """
    if (source / MODEL_FILE).is_file() and (source / MANIFEST_FILE).is_file():
        return "onnx"
    if (source / RUN_CONFIG_FILE).is_file():
        return "torch"
    raise ConfigError(
        f"{source} is neither a policy directory ({MODEL_FILE} and {MANIFEST_FILE}, from `robot-sac export`) nor "
        f"a run directory ({RUN_CONFIG_FILE} and checkpoints/, from `robot-sac train --out DIR`); pass one of those"
    )


def eval_env_config(
    base: EnvConfig, *, port: str | None, robot: Path | None = None, overrides: Sequence[str] = ()
) -> EnvConfig:
    """``base`` with ``--robot``, ``--set``, the backend (servos on ``port``, else PyBullet), raw observations."""
    items = [f"robot={robot.resolve()}"] if robot is not None else []
    items += list(overrides)
    items += ["backend=serial", f"serial.port={port}"] if port else ["backend=pybullet"]
    items.append("normalization.enabled=false")  # each policy normalizes itself, as deployed
    return from_mapping(EnvConfig, apply_overrides(to_mapping(base), items), source="--robot/--set")


def load_policy(source: Path, kind: PolicyKind, spec: RobotSpec, config: EnvConfig) -> LoadedPolicy:
    """Load and check a policy for ``spec`` and ``config``'s task before anything moves (errors: `evaluate_source`)."""
    names = ArmReach(spec, config.task).observation_names
    if kind == "torch":
        from robot_sac.evaluate_torch import load_run_config, load_run_policy

        return load_run_policy(source, load_run_config(source), spec, names)
    try:
        from policies.onnx_policy import OnnxPolicy, expected_contract
    except ImportError as err:
        raise ConfigError(f"evaluating {source} needs onnxruntime ({err}): pip install -e '.[deploy]'") from err
    policy = OnnxPolicy(source)
    policy.check_compatible(expected_contract(spec, names), ignore=("normalizer_digest", "clip_sigma"))
    policy.warm_up()
    if config.backend == "serial":
        policy.check_latency(INFERENCE_BUDGET_PERIODS * spec.dt_s)
    return LoadedPolicy(act=policy, kind="onnx", source=str(source), identity=policy.sha256)


def evaluate_source(
    source: Path,
    *,
    port: str | None = None,
    robot: Path | None = None,
    config_path: Path | None = None,
    overrides: Sequence[str] = (),
    episodes: int = 20,
    seed: int = 0,
) -> EvalReport:
    """Evaluate a run or policy directory on PyBullet (``port`` None) or the servos on ``port``.

    The env config is ``config_path``, else a run directory's saved ``env`` section, else the
    built-in defaults; then `eval_env_config`. The policy is checked before the backend connects.

    Raises:
        ConfigError: not a run or policy directory, a bad config, or torch/onnxruntime missing.
        ModelIntegrityError, ModelContractError: the policy does not verify or does not fit the robot.
        StorageError: a run directory without a readable checkpoint.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    source = Path(source)
    kind = source_kind(source)
    base = EnvConfig() if config_path is None else load_env_config(config_path)
    if kind == "torch":
        try:
            from robot_sac.evaluate_torch import load_run_config
        except ImportError as err:
            raise ConfigError(
                f"evaluating run directory {source} needs torch ({err}): pip install -e '.[train]', or export it "
                "(robot-sac export RUN --out DIR) and evaluate the policy directory"
            ) from err
        base = load_run_config(source).env if config_path is None else base
    config = eval_env_config(base, port=port, robot=robot, overrides=overrides)
    spec = load_robot_spec(config.robot_path())
    policy = load_policy(source, kind, spec, config)
    env = make_env(config, make_backend(config, spec))
    where = f"servos on {port}" if port else "pybullet"
    try:
        return evaluate(env, policy, spec, episodes=episodes, seed=seed, backend=where,
                        config_sha256=config_hash(config))  # fmt: skip
    finally:
        env.close()
