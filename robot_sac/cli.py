"""``robot-sac``: the command line, and the one composition root of the project.

Commands:

- ``robot-sac rollout``: runs ArmReach episodes in PyBullet through the full env stack (safety
  filter, normalization, time limit) with the inverse-kinematics controller, injects one
  non-finite action to show the fault path, prints a results table and writes ``summary.json``
  and a rendered ``final_frame.png`` to ``--out``.
- ``robot-sac train``: trains SAC (``--config configs/train/<name>.yaml``, ``--env <gymnasium id>``,
  ``--set k=v``, ``--steps``, ``--out``, ``--resume <run dir>``, ``--seed``) with a live progress
  bar, metrics to CSV and TensorBoard, periodic deterministic evaluation, atomic checkpoints and a
  learning-curve PNG in the run directory.
- ``robot-sac emulate [--robot Y] [--profile nominal|reality] [--faults SPEC] [--record F]``: the
  servo emulator on a pseudo-terminal (prints ``PORT <path>``); point ``--port`` or
  ``serial.port`` at that path. ``robot-sac emulate --help`` lists every option.
- ``robot-sac export RUN_DIR --out DIR [--batch]``: the run's actor as ONNX (normalization, tanh and
  action scaling inside the graph), its contract in the metadata, a sha256 manifest; verified
  against torch before anything is written.
- ``robot-sac finetune SIM_RUN --port URL [--robot Y] [--budget-s N] [--sim-actors K]``: continues
  a simulation run on the robot (see `robot_sac.cli_robot`).
- ``robot-sac check-config FILE --kind robot|env|train``: validates a config file (with ``--set``
  overrides) and prints the resolved config and its hash.
- ``robot-sac deploy POLICY_DIR (--sim [--fast] | --port URL) [--robot Y] [--config E]
  [--episodes N | --duration-s T] [--seed S] [--out DIR] [--set k=v]``: runs an exported ONNX
  policy on the robot through the training env stack, on the robot's control rate (``--fast``:
  simulation as fast as it computes), until done or SIGINT/SIGTERM (stop, hold, park; a second
  signal holds and exits 1); writes ``deploy_report.json`` (and ``fault_*.npz`` dumps) to
  ``--out``. ``--set deploy.<key>=v`` sets `policies.deploy_config.DeployConfig`, other keys the env.
  Imports neither torch nor pybullet with ``--port``.

Exit codes: 0 success, 1 aborted by a second signal, 2 bad config, 3 storage error, 4 the policy
was refused (integrity or contract), 5 a deploy run ended with a fault.

Backends, tasks and controllers are chosen and wired here and nowhere else.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from robot_sac import cli_robot as robot_commands
from robot_sac.cli_robot import add_robot_commands
from robot_sac.config_loader import apply_overrides, config_hash, from_mapping, to_mapping
from robot_sac.configs import REPO_CONFIG_DIR, load_env_config, load_train_config
from robot_sac.errors import ConfigError, ModelContractError, ModelIntegrityError, StorageError
from robot_sac.make_env import load_env_stack_config, make_backend, make_env
from robot_sac.scripted import ReachIK
from robot_sac.spec import load_robot_spec

DEFAULT_TRAIN_CONFIG = REPO_CONFIG_DIR / "train" / "arm_reach_sim.yaml"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robot-sac", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    roll = sub.add_parser("rollout", help="run ArmReach with the IK controller and report (PyBullet or --port)")
    roll.add_argument("--config", type=Path, default=None, help="env YAML (default: built-in defaults)")
    roll.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set task.horizon_steps=150 (repeatable)")  # fmt: skip
    roll.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    roll.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    roll.add_argument("--out", type=Path, default=Path("runs/rollout"), help="report directory")
    roll.add_argument("--port", default=None, help="run on servos at this serial port/pty instead of PyBullet")

    train = sub.add_parser("train", help="train SAC in simulation (or on any gymnasium Box env)")
    default_config = DEFAULT_TRAIN_CONFIG.relative_to(REPO_CONFIG_DIR.parent)
    train.add_argument("--config", type=Path, default=None, help=f"train YAML (default: {default_config})")
    train.add_argument("--env", default=None, metavar="ID", help="a registered gymnasium id, e.g. Pendulum-v1")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. --set sac.learning_rate=1e-3 (repeatable)")  # fmt: skip
    train.add_argument("--steps", type=int, default=None, help="total env steps (run.total_steps)")
    train.add_argument("--seed", type=int, default=None, help="seed (default: the config's)")
    train.add_argument("--out", type=Path, default=None, help="run directory (default: runs/train-<time>)")
    train.add_argument(
        "--resume", type=Path, default=None, metavar="RUN_DIR", help="continue a run from its checkpoint"
    )
    train.add_argument("--no-progress", action="store_true", help="no live progress bar")

    dep = sub.add_parser("deploy", help="run an exported ONNX policy on the robot (--port) or in PyBullet (--sim)")
    dep.add_argument("policy_dir", type=Path, help="directory with policy.onnx and manifest.json")
    where = dep.add_mutually_exclusive_group(required=True)
    where.add_argument("--sim", action="store_true", help="the PyBullet arm (real time unless --fast)")
    where.add_argument("--port", default=None, help="servos on this serial port/pty (robot-sac emulate prints one)")
    dep.add_argument("--robot", type=Path, default=None, help="robot YAML (default: the env config's)")
    dep.add_argument("--config", type=Path, default=None, help="env YAML (default: built-in defaults)")
    length = dep.add_mutually_exclusive_group()
    length.add_argument("--episodes", type=int, default=None, help="episodes to run (default: until stopped)")
    length.add_argument("--duration-s", type=float, default=None, help="seconds to run (default: until stopped)")
    dep.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    dep.add_argument("--fast", action="store_true", help="--sim only: no real-time pacing")
    dep.add_argument("--out", type=Path, default=None, help="report directory (default: runs/deploy-<time>)")
    dep.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="env key (task.horizon_steps=200) or deploy.<key> (deploy.stop_action=hold)")  # fmt: skip

    sub.add_parser("emulate", add_help=False, help="run the servo emulator on a pty (prints PORT <path>)")

    export = sub.add_parser("export", help="export a run's policy to ONNX with its contract and manifest")
    export.add_argument("source", type=Path, help="run directory (newest checkpoint) or a checkpoints/step_* dir")
    export.add_argument("--out", type=Path, required=True, help="policy directory to write")
    export.add_argument("--batch", action="store_true", help="also write policy_batch.onnx (dynamic batch)")

    add_robot_commands(sub)

    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("path", type=Path)
    check.add_argument("--kind", choices=("robot", "env", "train"), required=True)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (2 for a bad config)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulate"]:
        from sim.servo_emulator import main as emulate

        return emulate(argv[1:])  # its own options; it owns this process (stdout carries the PORT line)
    args = _parser().parse_args(argv)
    try:
        match args.command:
            case "rollout":
                return _rollout(args)
            case "train":
                return _train(args)
            case "export":
                return _export(args)
            case "deploy":
                return _deploy(args)
            case "finetune":
                return robot_commands.finetune(args)
            case "demo":
                return robot_commands.demo(args)
            case "eval":
                return robot_commands.evaluate(args)
            case _:
                return _check_config(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    except StorageError as err:
        print(f"storage error: {err}", file=sys.stderr)
        return 3
    except (ModelContractError, ModelIntegrityError) as err:
        print(f"policy error: {err}", file=sys.stderr)
        return 4


def _train(args: argparse.Namespace) -> int:
    from robot_sac.metrics import plot_learning_curves
    from robot_sac.runtime.learner import AsyncLearner
    from robot_sac.runtime.local import LocalRuntime
    from robot_sac.train import Trainer
    from robot_sac.train_setup import load_run_config, resume_run, start_run

    overrides = list(args.overrides)
    if args.steps is not None:
        overrides.append(f"run.total_steps={args.steps}")
    if args.resume is not None:
        if args.config or args.env or args.seed is not None or args.out:
            raise ConfigError("--resume continues a run as saved: drop --config, --env, --seed and --out")
        run_dir = args.resume
        config = load_run_config(run_dir, tuple(overrides))
        trainer = resume_run(run_dir, config, show_progress=not args.no_progress)
    else:
        if args.env is not None:
            overrides.append(f"env_id={args.env}")
        if args.seed is not None:
            overrides.append(f"seed={args.seed}")
        config = load_train_config(args.config or DEFAULT_TRAIN_CONFIG, tuple(overrides))
        run_dir = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
        trainer = start_run(config, run_dir, show_progress=not args.no_progress)
    runner: Trainer | AsyncLearner
    match config.runtime.mode:
        case "sync":
            runner = trainer
        case "local":
            runner = LocalRuntime(trainer)
        case "ray":
            from robot_sac.runtime.ray_fleet import RayRuntime

            runner = RayRuntime(trainer)
    try:
        final = runner.train(config.run.total_steps)
    finally:
        runner.close()
    curve = plot_learning_curves(run_dir)
    summary = ", ".join(f"{k.split('/')[-1]} {v:.3f}" for k, v in final.items())
    print(f"trained {trainer.counters.env_steps} env steps, {trainer.counters.updates} updates; final evaluation: "
          f"{summary}\nrun directory: {run_dir} (learning curve: {curve.name})")  # fmt: skip
    return 0


def _export(args: argparse.Namespace) -> int:
    from robot_sac.export import export_policy

    result = export_policy(args.source, args.out, batch_variant=args.batch)
    c = result.contract
    print(f"exported {c.robot_name} policy (version {c.policy_version}, obs {c.obs_dim}, action {c.action_dim}, "
          f"{c.control_hz:g} Hz) to {result.policy_dir}; onnxruntime vs torch max |Δ| "
          f"{result.parity_max_abs_diff:.2e} rad over {result.parity_samples} observations")  # fmt: skip
    return 0


def _check_config(args: argparse.Namespace) -> int:
    overrides = tuple(args.overrides)
    match args.kind:
        case "robot":
            config: Any = load_robot_spec(args.path, overrides)
        case "env":
            config = load_env_config(args.path, overrides)
        case _:
            config = load_train_config(args.path, overrides)
    print(yaml.safe_dump(to_mapping(config), sort_keys=False), end="")
    print(f"# sha256: {config_hash(config)}")
    return 0


def _run_episode(env: Any, controller: ReachIK, seed: int) -> dict[str, Any]:
    _, info = env.reset(seed=seed)
    steps, ret, truncated, terminated = 0, 0.0, False, False
    while not (terminated or truncated):
        _, reward, terminated, truncated, info = env.step(controller(info["raw_observation"]))
        steps += 1
        ret += float(reward)
    clips = sum(info["clip_counts"].values())
    return {"seed": seed, "steps": steps, "return": ret, "success": bool(info["success"]),
            "final_distance_m": float(info["distance_m"]), "clips": clips, "fault": info["fault"]}  # fmt: skip


def _deploy(args: argparse.Namespace) -> int:
    """Compose policy, backend, env, pacer and loop; run; write and print the report."""
    from policies.deploy import DeployLoop
    from policies.deploy_config import DeployConfig
    from policies.deploy_report import REPORT_FILE
    from policies.onnx_policy import OnnxPolicy, expected_contract
    from policies.pacing import BackendPacer, FreeRunPacer, Pacer, SleepPacer
    from policies.signals import SignalStop
    from robot_sac.realtime import realtime_scope
    from robot_sac.tasks.arm_reach import ArmReach

    if args.fast and args.port:
        raise ConfigError("--fast is for --sim: hardware runs at its control rate")
    deploy_overrides = [o.removeprefix("deploy.") for o in args.overrides if o.startswith("deploy.")]
    env_overrides = [o for o in args.overrides if not o.startswith("deploy.")]
    if args.robot is not None:
        env_overrides.insert(0, f"robot={args.robot.resolve()}")
    env_overrides += ["backend=serial", f"serial.port={args.port}"] if args.port else ["backend=pybullet"]
    env_overrides.append("normalization.enabled=false")  # the normalizer is inside the ONNX graph
    config, spec = load_env_stack_config(args.config, tuple(env_overrides))
    cfg = from_mapping(DeployConfig, apply_overrides(to_mapping(DeployConfig()), deploy_overrides), source="--set")

    # Everything about the policy is checked before the robot is touched (SAFETY.md #18, #25, #26).
    policy = OnnxPolicy(args.policy_dir, threads=cfg.threads, warmup_runs=cfg.warmup_runs)
    expected = expected_contract(spec, ArmReach(spec, config.task).observation_names)
    policy.check_compatible(expected, ignore=("normalizer_digest", "clip_sigma"))  # the robot cannot know them
    warm = policy.warm_up()
    policy.check_latency(cfg.inference_budget_periods * spec.dt_s)

    backend = make_backend(config, spec)
    pacer: Pacer = SleepPacer(spec.dt_s)
    if args.fast:
        pacer = FreeRunPacer()
    elif args.port:
        from drivers.serial_backend import SerialBackend

        assert isinstance(backend, SerialBackend)
        serial = backend
        pacer = BackendPacer(lambda: serial.overruns)  # the backend paces each step: no second sleep
    env = make_env(config, backend)
    out = args.out or Path("runs") / time.strftime("deploy-%Y%m%d-%H%M%S")
    where = f"servos on {args.port}" if args.port else ("PyBullet, fast" if args.fast else "PyBullet, real time")
    with SignalStop() as stop:
        loop = DeployLoop(env, policy, spec, pacer, cfg, stop=stop, dump_dir=out, policy_label=str(args.policy_dir),
                          policy_sha256=policy.sha256, warmup_us=warm.as_dict())  # fmt: skip
        # A free-running (--fast) loop never sleeps: real-time priority would take a core from the OS.
        priority = 0 if args.fast else cfg.realtime_priority
        try:
            with realtime_scope(priority, "deploy loop") as realtime:
                print(f"deploying {args.policy_dir} on {spec.name} ({where}) at {spec.control_hz:g} Hz"
                      f"{', SCHED_FIFO ' + str(priority) if realtime else ''}; warm-up p50 {warm.p50_us:.0f} µs "
                      f"p99 {warm.p99_us:.0f} µs; SIGINT/SIGTERM stops", flush=True)  # fmt: skip
                report = loop.run(episodes=args.episodes, duration_s=args.duration_s, seed=args.seed)
        finally:
            try:
                loop.report.write(out)  # also after a crash: the partial account is worth having
            finally:
                env.close()
    print(report.table())
    print(f"report: {out / REPORT_FILE}")
    return report.exit_code


def _fault_demo(env: Any, seed: int) -> dict[str, Any]:
    """Send a NaN action mid-episode; report the fault, the held pose and that reset still works."""
    env.reset(seed=seed)
    for _ in range(5):
        env.step(np.zeros(env.action_space.shape, dtype=np.float32))
    bad = np.full(env.action_space.shape, np.nan, dtype=np.float32)
    _, _, _, truncated, info = env.step(bad)
    _, after = env.reset(seed=seed + 1)
    return {"action": "NaN", "fault": info["fault"], "truncated": bool(truncated),
            "state_finite": bool(np.isfinite(info["raw_observation"]).all()),
            "reset_after_fault_ok": bool(np.isfinite(after["raw_observation"]).all())}  # fmt: skip


def _rollout(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    overrides = tuple(args.overrides) + (("backend=serial", f"serial.port={args.port}") if args.port else ())
    config, spec = load_env_stack_config(args.config, overrides)
    simulated = config.backend == "pybullet"
    env = make_env(config, make_backend(config, spec), render_mode="rgb_array" if simulated else None)
    controller = ReachIK(spec)
    console = Console()
    where = "PyBullet" if simulated else f"servos on {config.serial.port}"
    console.print(f"ArmReach on [bold]{spec.name}[/] in {where}, {args.episodes} episodes, IK controller")
    table = Table("seed", "steps", "return", "success", "final distance (mm)", "safety clips", "fault")
    episodes, started = [], time.perf_counter()
    try:
        for i in range(args.episodes):
            ep = _run_episode(env, controller, args.seed + i)
            episodes.append(ep)
            table.add_row(str(ep["seed"]), str(ep["steps"]), f"{ep['return']:.2f}", "yes" if ep["success"] else "no",
                          f"{1000 * ep['final_distance_m']:.1f}", str(ep["clips"]), ep["fault"] or "-")  # fmt: skip
        elapsed = time.perf_counter() - started
        rendered = env.render()
        frame = rendered if isinstance(rendered, np.ndarray) else None
        demo = _fault_demo(env, args.seed + args.episodes)
    finally:
        env.close()
    steps = sum(e["steps"] for e in episodes)
    summary = {
        "robot": spec.name,
        "config_sha256": config_hash(config),
        "episodes": episodes,
        "success_rate": float(np.mean([e["success"] for e in episodes])) if episodes else 0.0,
        "env_steps_per_s": steps / elapsed if elapsed > 0 else 0.0,
        "fault_demo": demo,
    }
    _write_report(args.out, summary, frame)
    console.print(table)
    console.print(
        f"success rate {summary['success_rate']:.0%}, {summary['env_steps_per_s']:.0f} env steps/s "
        "(IK controller included)\n"
        f"NaN action -> fault {demo['fault']}, truncated={demo['truncated']}, "
        f"state finite={demo['state_finite']}, reset after the fault ok={demo['reset_after_fault_ok']}"
    )
    console.print(f"report: {args.out}/summary.json, {args.out}/final_frame.png")
    return 0


def _write_report(out: Path, summary: dict[str, Any], frame: np.ndarray | None) -> None:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if frame is not None:
        Image.fromarray(frame).save(out / "final_frame.png")


if __name__ == "__main__":
    sys.exit(main())
