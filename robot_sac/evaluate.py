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
every policy meets the same targets. A fault ends its episode and the evaluation goes on. A reset
that meets a transient bus fault is tried again, as the deploy loop does (`reset_retrying`: the
episode keeps its seed, the fault is listed in ``recovered_faults``); one that still fails, or a
latched fault, ends the evaluation early, and the report says so.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from robot_sac.config_loader import apply_overrides, config_hash, from_mapping, to_mapping
from robot_sac.configs import EnvConfig, load_env_config
from robot_sac.errors import ConfigError, EnvStateError, RobotFault, fault_name
from robot_sac.eval_report import EpisodeRow, EvalReport, FaultEntry, PolicyKind
from robot_sac.make_env import make_backend, make_env
from robot_sac.policy_contract import MANIFEST_FILE, MODEL_FILE
from robot_sac.reset_retry import reset_retrying
from robot_sac.safety import CLIP_STAGES
from robot_sac.spec import RobotSpec, load_robot_spec
from robot_sac.tasks.arm_reach import ArmReach

INFERENCE_BUDGET_PERIODS = 0.2
"""On servos, refuse an ONNX policy whose warm-up p99 exceeds this share of the period (SAFETY.md #18)."""
RUN_CONFIG_FILE = "config.yaml"
RESET_ATTEMPTS, RESET_RETRY_S = 3, 0.5
"""Tries of an episode's reset that met a transient fault, and the wait between them (the deploy loop's)."""

log = logging.getLogger(__name__)


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


def evaluate(
    env: gym.Env[np.ndarray, np.ndarray],
    policy: LoadedPolicy,
    spec: RobotSpec,
    *,
    episodes: int,
    seed: int = 0,
    backend: str = "",
    config_sha256: str = "",
    reset_attempts: int = RESET_ATTEMPTS,
    reset_retry_s: float = RESET_RETRY_S,
    sleep: Callable[[float], None] = time.sleep,
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
        reset_attempts: tries of a reset that met a transient fault (`reset_retrying`).
        reset_retry_s: the wait between those tries, s.
        sleep: that wait (injectable for tests).

    Returns:
        The report; ``stop_reason`` says why if fewer than ``episodes`` ran (a failed reset, or
        SIGINT: the episode in progress is dropped). Closing ``env`` is the caller's.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    inv_step = 1.0 / spec.max_step_rad
    rows: list[EpisodeRow] = []
    faults: list[FaultEntry] = []
    recovered: list[FaultEntry] = []
    stop_reason, started = "completed", time.perf_counter()

    def retried(attempt: int, err: RobotFault) -> None:  # called within the iteration: index is current
        recovered.append(FaultEntry(name=fault_name(err), message=str(err), episode=index, seed=episode_seed,
                                    step=0, during="reset"))  # fmt: skip

    for index in range(episodes):
        episode_seed = seed + index
        try:
            first = reset_retrying(env, episode_seed, attempts=reset_attempts, retry_s=reset_retry_s,
                                   what=f"reset of episode {index}", on_retry=retried, sleep=sleep)  # fmt: skip
            row, fault = _episode(env, first, policy, inv_step, index, episode_seed)
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
        recovered_faults=tuple(recovered),
    )  # fmt: skip


def _episode(
    env: gym.Env[np.ndarray, np.ndarray],
    first: tuple[np.ndarray, dict[str, Any]],
    policy: LoadedPolicy,
    inv_step: np.ndarray,
    index: int,
    seed: int,
) -> tuple[EpisodeRow, FaultEntry | None]:
    """Step from the reset's ``(obs, info)`` until the episode terminates, truncates or faults."""
    obs, info = first
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
