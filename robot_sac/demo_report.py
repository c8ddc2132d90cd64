"""The demo's results table and plots (learning curves per domain, success before/after, loop periods)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from robot_sac.demo import Evaluation

LABELS = {"policy_sim": "sim policy", "policy_finetuned": "fine-tuned policy"}


def print_table(evaluations: list[Evaluation], results: dict[str, Any]) -> None:
    """The results table on the terminal (rich)."""
    from rich.console import Console
    from rich.table import Table

    title = "robot-sac demo: ArmReach, sim → emulated arm (reality profile)"
    table = Table("where", "policy", "success", "95 % interval", "final error mm", "loop p50/p99 ms", "overruns",
                  "safety clips", "faults", title=title)  # fmt: skip
    for e in evaluations:
        low, high = e.interval()
        where = "PyBullet (sim)" if e.where == "sim" else "emulated arm"
        loop = "-" if e.where == "sim" else f"{e.loop_p50_ms:.2f} / {e.loop_p99_ms:.2f}"
        table.add_row(where, LABELS.get(e.policy, e.policy), f"{e.successes}/{e.episodes} ({e.rate:.0%})",
                      f"{low:.0%} – {high:.0%}", f"{e.final_error_mm:.1f}", loop, str(e.overruns), str(e.clips),
                      _faults(e))  # fmt: skip
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: rich would wrap and cut the 9 columns to 80 characters
        console = Console(width=150)
    console.print(table)
    sim, ft = results["sim_training"], results["finetuning"]
    console.print(f"sim training {sim['env_steps']} env steps in {sim['wall_s']:.0f} s; fine-tuning "
                  f"{ft['real_env_steps']} real transitions ({ft['real_env_steps'] / 50:.0f} s at 50 Hz) in "
                  f"{ft['wall_s']:.0f} s; "
                  f"whole demo {results['wall_s'] / 60:.1f} min")  # fmt: skip


def write_plots(out: Path, evaluations: list[Evaluation]) -> list[Path]:
    """``learning_curves.png``, ``success.png`` and ``loop_periods.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from robot_sac.metrics import read_metrics

    written = []
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for run, style in ((out / "sim", "-"), (out / "finetune", "--")):
        metrics = read_metrics(run)
        for key, label in (("eval/success_rate", "sim evaluation success"),
                           ("train/sim/success_rate", "sim training success"),
                           ("train/real/success_rate", "real (emulated) training success")):  # fmt: skip
            if key in metrics:
                steps, values = metrics[key]
                ax[0].plot(steps, values, style, label=f"{label} ({run.name})")
        for key, label in (("train/sim/episode_return", "sim return"), ("train/real/episode_return", "real return")):
            if key in metrics:
                steps, values = metrics[key]
                ax[1].plot(steps, values, style, label=f"{label} ({run.name})")
    ax[0].set(xlabel="env steps", ylabel="success rate", title="learning curves per domain", ylim=(-0.05, 1.05))
    ax[1].set(xlabel="env steps", ylabel="episode return")
    for a in ax:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    written.append(_save(fig, out / "learning_curves.png"))

    fig, ax1 = plt.subplots(figsize=(6, 4))
    names = [f"{'sim' if e.where == 'sim' else 'arm'}\n{LABELS.get(e.policy, e.policy)}" for e in evaluations]
    rates = [e.rate for e in evaluations]
    errors = np.array([[e.rate - e.interval()[0], e.interval()[1] - e.rate] for e in evaluations]).T
    ax1.bar(names, rates, yerr=errors, capsize=6, color=["tab:gray", "tab:red", "tab:green"][: len(rates)])
    ax1.set(ylabel="success rate (95 % Wilson interval)", ylim=(0, 1.05), title="success before / after fine-tuning")
    written.append(_save(fig, out / "success.png"))

    fig, ax2 = plt.subplots(figsize=(6, 4))
    for name in ("deploy_before", "deploy_after"):
        path = out / name / "deploy_report.json"
        if path.is_file():
            hist = json.loads(path.read_text(encoding="utf-8")).get("loop_period_histogram_ms", {})
            if hist:
                edges = np.asarray(hist["edges_ms"])
                ax2.stairs(np.asarray(hist["counts"]), edges, label=name.replace("deploy_", ""))
    ax2.set(xlabel="loop period (ms)", ylabel="control steps", title="deploy loop period on the emulated arm",
            yscale="log")  # fmt: skip
    ax2.legend()
    written.append(_save(fig, out / "loop_periods.png"))
    return written


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def _faults(e: Evaluation) -> str:
    """The faults that ended a deployment, then the reset faults a retry got past."""
    recovered = [f"{name} (reset retried)" for name in e.recovered_faults]
    return ", ".join([*e.faults, *recovered]) or "-"
