"""`robot-sac demo` shortened to minutes: every stage end to end, on PyBullet and the pty emulator.

The full demo (the README's main job) trains to 95 % and fine-tunes for 3 minutes; this one trains
tiny networks for 600 steps and fine-tunes for 6 s, so it shows the pipeline, not the learning.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

from robot_sac.cli import main

SHORT = (
    "--sim-max-steps", "600", "--finetune-s", "6", "--episodes", "2",
    "--set", "sac.network.hidden_sizes=[32, 32]", "--set", "sac.batch_size=32", "--set", "sac.learning_starts=200",
    "--set", "run.eval_interval_steps=300", "--set", "run.eval_episodes=2",
    "--set", "run.checkpoint_interval_steps=300",
    "--set", "runtime.chunk_steps=10", "--set", "runtime.max_actor_lead_steps=200",
    "--finetune-set", "sac.min_real_transitions=50", "--finetune-set", "runtime.hardware.serial.homing_speed_rad_s=2.0",
)  # fmt: skip


def test_shortened_demo_runs_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *SHORT]) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    where = [(e["where"], e["policy"]) for e in results["evaluations"]]
    assert where == [("sim", "policy_sim"), ("hardware", "policy_sim"), ("hardware", "policy_finetuned")]
    for e in results["evaluations"]:
        assert e["episodes"] >= 1 and 0.0 <= e["interval95"][0] <= e["success_rate"] <= e["interval95"][1] <= 1.0
    hardware = results["evaluations"][1:]
    # A transient bus fault at a reset (seen ~1 in 20 deployments on this 2-core machine) is retried
    # by the deploy loop and listed as recovered; one that recurs ends that deployment with its typed
    # fault, not hidden. The deployments without one ran paced by the serial backend at 50 Hz.
    for e in hardware:
        assert set(e["faults"]) <= {"CommTimeout", "StaleObservation"}, e["faults"]
    paced = [e for e in hardware if not e["faults"]]
    assert paced and all(e["loop_p50_ms"] > 15.0 for e in paced)
    assert results["finetuning"]["real_env_steps"] >= 150
    for name in ("learning_curves.png", "success.png", "loop_periods.png"):
        assert (out / name).stat().st_size > 5000, name
    for policy in ("policy_sim", "policy_finetuned"):
        assert (out / policy / "policy.onnx").is_file() and (out / policy / "manifest.json").is_file()
    # The hardware deployments ran in an interpreter where torch could not be imported.
    assert (out / "deploy_after" / "deploy_report.json").is_file()
    assert multiprocessing.active_children() == []
