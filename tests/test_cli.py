"""The command line: config checking and the rollout main job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from robot_sac.cli import main
from tests.conftest import CONFIG_DIR


def test_check_config_prints_resolved_config_and_hash(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", str(CONFIG_DIR / "train" / "arm_reach_sim.yaml"), "--kind", "train",
                 "--set", "sac.learning_rate=1e-3"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "learning_rate: 0.001" in out and "# sha256: " in out


def test_typo_in_override_names_the_valid_key(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check-config", str(CONFIG_DIR / "train" / "arm_reach_sim.yaml"), "--kind", "train",
                 "--set", "sac.learnin_rate=1e-3"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "learnin_rate" in err and "learning_rate" in err


def test_typo_in_file_names_key_file_and_fix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "train.yaml"
    bad.write_text("sac:\n  learnin_rate: 3.0e-4\n", encoding="utf-8")
    assert main(["check-config", str(bad), "--kind", "train"]) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and "'sac.learnin_rate'" in err and "did you mean 'learning_rate'" in err


def test_rollout_writes_a_report(tmp_path: Path) -> None:
    pytest.importorskip("pybullet")
    out = tmp_path / "report"
    assert main(["rollout", "--episodes", "2", "--out", str(out), "--set", "task.horizon_steps=60"]) == 0
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert len(summary["episodes"]) == 2 and all(e["steps"] == 60 for e in summary["episodes"])
    assert summary["fault_demo"] == {"action": "NaN", "fault": "NonFiniteAction", "truncated": True,
                                     "state_finite": True, "reset_after_fault_ok": True}  # fmt: skip
    assert (out / "final_frame.png").stat().st_size > 1000
