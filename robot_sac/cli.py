"""``robot-sac``: the command line, and the one composition root of the project.

Commands:

- ``robot-sac rollout``: runs ArmReach episodes in PyBullet through the full env stack (safety
  filter, normalization, time limit) with the inverse-kinematics controller, injects one
  non-finite action to show the fault path, prints a results table and writes ``summary.json``
  and a rendered ``final_frame.png`` to ``--out``.
- ``robot-sac check-config FILE --kind robot|env|train``: validates a config file (with ``--set``
  overrides) and prints the resolved config and its hash.

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

from robot_sac.config_loader import config_hash, to_mapping
from robot_sac.configs import load_env_config, load_train_config
from robot_sac.errors import ConfigError
from robot_sac.make_env import load_env_stack_config, make_env, make_sim_backend
from robot_sac.scripted import ReachIK
from robot_sac.spec import load_robot_spec


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robot-sac", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    roll = sub.add_parser("rollout", help="run ArmReach in PyBullet with the IK controller and report")
    roll.add_argument("--config", type=Path, default=None, help="env YAML (default: built-in defaults)")
    roll.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a config key, e.g. --set task.horizon_steps=150 (repeatable)")  # fmt: skip
    roll.add_argument("--episodes", type=int, default=10, help="number of episodes (default 10)")
    roll.add_argument("--seed", type=int, default=0, help="seed of the first episode")
    roll.add_argument("--out", type=Path, default=Path("runs/rollout"), help="report directory")

    check = sub.add_parser("check-config", help="validate a config file and print it resolved")
    check.add_argument("path", type=Path)
    check.add_argument("--kind", choices=("robot", "env", "train"), required=True)
    check.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit code (2 for a bad config)."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "rollout":
            return _rollout(args)
        return _check_config(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2


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

    config, spec = load_env_stack_config(args.config, tuple(args.overrides))
    env = make_env(config, make_sim_backend(config, spec), render_mode="rgb_array")
    controller = ReachIK(spec)
    console = Console()
    console.print(f"ArmReach on [bold]{spec.name}[/] in PyBullet, {args.episodes} episodes, IK controller")
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
