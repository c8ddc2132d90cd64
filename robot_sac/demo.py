"""``robot-sac demo``: the whole journey on one machine, no hardware: sim → ONNX → "hardware" → fine-tune → deploy.

1. Train ArmReach in PyBullet (``configs/train/arm_reach_sim.yaml``; ``randomize``: the
   domain-randomized ``arm_reach_dr.yaml``) until a deterministic evaluation reaches the target
   success (or ``sim_max_steps``).
2. Export it to ONNX (normalization, tanh and action scale in the graph; parity-checked).
3. Start the servo emulator with the ``reality`` profile: physics that differs from the nominal sim
   the way a real arm does (mass, friction, backlash, a softer servo, 10 ms command latency,
   encoder noise), reached only through the serial driver over a pseudo-terminal.
4. Deploy the sim policy in PyBullet and on the emulated arm with the torch-free runtime
   (`policies.controller`: torch cannot even be imported there): the sim-to-real gap.
5. Fine-tune on the emulated arm (`robot_sac.finetune`: hardware actor at 50 Hz, mixed sim/real
   replay, frozen sim statistics, stricter safety limits).
6. Export again and deploy the fine-tuned policy on the emulated arm, same seeds as in step 4.
7. Print the results table and write ``results.json`` and plots to the report directory.

Only the port changes on a real arm: ``robot-sac finetune`` and ``robot-sac deploy --port``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robot_sac.configs import REPO_CONFIG_DIR, load_train_config
from robot_sac.errors import RobotSacError
from robot_sac.eval_report import wilson_interval

TRAIN_CONFIGS = {False: "arm_reach_sim.yaml", True: "arm_reach_dr.yaml"}


@dataclass(frozen=True)
class DemoOptions:
    """The demo's knobs (the CLI's flags); the defaults fit about 15 minutes on 2 cores.

    Attributes:
        out: the report directory (the runs and policies go inside it).
        randomize: train the sim policy with domain randomization.
        sim_max_steps: longest sim training, env steps.
        target_success: sim training stops at an evaluation with this success rate.
        finetune_s: robot time for fine-tuning, s.
        episodes: deployment episodes per evaluation (same seeds before and after fine-tuning).
        seed: the run's seed (training, emulator, episode seeds).
        train_overrides: ``--set`` items for the sim training (and so the fine-tuning) config.
        finetune_overrides: ``--set`` items for the fine-tuning config only.
    """

    out: Path = Path("runs/demo")
    randomize: bool = False
    sim_max_steps: int = 40_000
    target_success: float = 0.95
    finetune_s: float = 180.0
    episodes: int = 20
    seed: int = 0
    train_overrides: tuple[str, ...] = ()
    finetune_overrides: tuple[str, ...] = ()


@dataclass
class Evaluation:
    """One deployment's account (from its ``deploy_report.json``)."""

    where: str
    policy: str
    successes: int
    episodes: int
    final_error_mm: float
    loop_p50_ms: float
    loop_p99_ms: float
    overruns: int
    clips: int
    faults: list[str] = field(default_factory=list)
    recovered_faults: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Success rate."""
        return self.successes / self.episodes if self.episodes else 0.0

    def interval(self) -> tuple[float, float]:
        """95 % Wilson interval of the success rate."""
        return wilson_interval(self.successes, self.episodes)


class Stages:
    """Numbered stage lines with elapsed time (the trainings show their own progress bars)."""

    def __init__(self, total: int) -> None:
        self.total, self.index, self.started = total, 0, time.monotonic()

    def begin(self, text: str) -> None:
        """Announce the next stage."""
        self.index += 1
        print(f"[{self.index}/{self.total}] {text} (t = {time.monotonic() - self.started:.0f} s)", flush=True)


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the whole demo (see the module doc); returns the results written to ``results.json``.

    Raises:
        ConfigError: the report directory already holds a demo, or an override is invalid.
    """
    from robot_sac.errors import ConfigError
    from robot_sac.export import export_policy
    from sim.emulator_process import EmulatorProcess

    out = options.out
    if (out / "results.json").exists() or (out / "sim").exists():
        raise ConfigError(f"--out {out} already holds a demo; choose another directory")
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(7)
    stages.begin(f"training ArmReach in PyBullet{' with domain randomization' if options.randomize else ''} "
                 f"to {options.target_success:.0%} success (at most {options.sim_max_steps} env steps)")  # fmt: skip
    sim_steps, sim_s = train_sim(options, out / "sim")
    stages.begin("exporting the sim policy to ONNX")
    export_policy(out / "sim", out / "policy_sim")
    evaluations: list[Evaluation] = []
    stages.begin("deploying the sim policy in PyBullet (torch-free runtime)")
    evaluations.append(deploy_policy(out / "policy_sim", ["--sim", "--fast"], out / "deploy_sim", "sim", options))
    with EmulatorProcess(profile="reality", seed=options.seed) as emulator:
        stages.begin(f"deploying the sim policy on the emulated arm (reality profile) on {emulator.port}")
        port = arm_deploy_args(emulator.port)
        evaluations.append(deploy_policy(out / "policy_sim", port, out / "deploy_before", "hardware", options))
        stages.begin(f"fine-tuning on the emulated arm for {options.finetune_s:.0f} s of robot time")
        real_steps, finetune_s = finetune_on(options, out / "sim", out / "finetune", emulator.port)
        stages.begin("exporting the fine-tuned policy")
        export_policy(out / "finetune", out / "policy_finetuned")
        stages.begin("deploying the fine-tuned policy on the emulated arm (same seeds)")
        evaluations.append(deploy_policy(out / "policy_finetuned", port, out / "deploy_after", "hardware", options))
    results = {
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(options).items()},
        "sim_training": {"env_steps": sim_steps, "wall_s": sim_s},
        "finetuning": {"real_env_steps": real_steps, "wall_s": finetune_s},
        "evaluations": [asdict(e) | {"success_rate": e.rate, "interval95": e.interval()} for e in evaluations],
        "wall_s": time.monotonic() - stages.started,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    from robot_sac.demo_report import print_table, write_plots

    write_plots(out, evaluations)
    print_table(evaluations, results)
    return results


def train_sim(options: DemoOptions, run_dir: Path) -> tuple[int, float]:
    """Train in PyBullet until ``target_success`` (or ``sim_max_steps``); returns (env steps, wall s)."""
    from robot_sac.runtime.learner import AsyncLearner
    from robot_sac.runtime.local import LocalRuntime
    from robot_sac.train import Trainer
    from robot_sac.train_setup import start_run

    overrides = (f"seed={options.seed}", f"run.total_steps={options.sim_max_steps}", *options.train_overrides)
    config = load_train_config(REPO_CONFIG_DIR / "train" / TRAIN_CONFIGS[options.randomize], overrides)
    trainer = start_run(config, run_dir)
    runner: Trainer | AsyncLearner = LocalRuntime(trainer) if config.runtime.mode == "local" else trainer
    started = time.monotonic()
    try:
        runner.train(config.run.total_steps,
                     stop_when=lambda m: m.get("eval/success_rate", 0.0) >= options.target_success)  # fmt: skip
    finally:
        runner.close()
    return trainer.counters.env_steps, time.monotonic() - started


def finetune_on(options: DemoOptions, sim_run: Path, run_dir: Path, port: str) -> tuple[int, float]:
    """Fine-tune ``sim_run`` on the robot at ``port`` for ``finetune_s``; returns (real transitions, wall s)."""
    from robot_sac.finetune import FinetuneRequest, start_finetune
    from robot_sac.runtime.local import LocalRuntime

    request = FinetuneRequest(sim_run=sim_run, out=run_dir, port=port, budget_s=options.finetune_s,
                              overrides=options.finetune_overrides)  # fmt: skip
    from robot_sac.runtime.pool import FleetExhausted

    trainer = start_finetune(request)
    runtime = LocalRuntime(trainer)
    started = time.monotonic()
    try:
        runtime.train(trainer.config.run.total_steps)
    except FleetExhausted as err:  # the robot stopped for good; the final checkpoint holds what was learned
        print(f"fine-tuning ended early: {err}", file=sys.stderr)
    finally:
        runtime.close()
    return trainer.buffer.domain_counts()["real"], time.monotonic() - started


def arm_deploy_args(port: str) -> list[str]:
    """``robot-sac deploy`` arguments for a deployment on the arm at ``port``.

    Every policy runs there under the hardware safety config that fine-tuning uses
    (`DEFAULT_FINETUNE_ROBOT`: smaller speeds, wider margins). The fine-tuned policy learned under
    it, so the before and after deployments compare like for like.
    """
    from robot_sac.finetune import DEFAULT_FINETUNE_ROBOT

    return ["--port", port, "--robot", str(DEFAULT_FINETUNE_ROBOT)]


def deploy_policy(policy: Path, where: list[str], report_dir: Path, label: str, options: DemoOptions) -> Evaluation:
    """``robot-sac deploy`` in a controller-like interpreter (torch blocked); its report as an `Evaluation`."""
    allow = ["--allow-sim"] if "--sim" in where else []
    command = [sys.executable, "-m", "policies.controller", *allow, "deploy", str(policy), *where, "--episodes",
               str(options.episodes), "--seed", str(options.seed + 10_000), "--out", str(report_dir)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    report_file = report_dir / "deploy_report.json"
    if not report_file.is_file():
        raise RobotSacError(
            f"deploy of {policy} ({' '.join(where)}) wrote no report; its stderr:\n{done.stderr[-2000:]}"
        )
    report = json.loads(report_file.read_text(encoding="utf-8"))
    episodes = [e for e in report["episodes"] if not e.get("stopped")]
    errors = [1000 * e["final_distance_m"] for e in episodes if e.get("final_distance_m") is not None]
    return Evaluation(
        where=label, policy=policy.name, successes=sum(bool(e["success"]) for e in episodes), episodes=len(episodes),
        final_error_mm=sum(errors) / len(errors) if errors else float("nan"),
        loop_p50_ms=report["loop_period_ms"]["p50"], loop_p99_ms=report["loop_period_ms"]["p99"],
        overruns=int(report["overruns"]), clips=int(sum(report["safety_clips"].values())),
        faults=[f["name"] for f in report["faults"]],
        recovered_faults=[f["name"] for f in report.get("recovered_faults", [])],
    )  # fmt: skip
