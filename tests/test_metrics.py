"""Metrics: long-format CSV, resume truncation, TensorBoard, learning-curve PNG, progress display."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from robot_sac.metrics import MetricsLogger, ProgressDisplay, plot_learning_curves, read_metrics


def _rows(run_dir: Path) -> list[list[str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.reader(f))


def test_csv_is_long_format_and_accepts_metrics_that_appear_later(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(100, {"train/episode_return": -10.5, "loss/critic": 2.0})
        logger.log(200, {"train/episode_return": -8.25, "loss/critic": 1.5, "eval/return": -7.0})
    rows = _rows(tmp_path)
    assert rows[0] == ["step", "metric", "value"]
    assert rows[1:] == [
        ["100", "train/episode_return", "-10.5"],
        ["100", "loss/critic", "2.0"],
        ["200", "train/episode_return", "-8.25"],
        ["200", "loss/critic", "1.5"],
        ["200", "eval/return", "-7.0"],
    ]


def test_values_round_trip_exactly(tmp_path: Path) -> None:
    values = [0.1, 1 / 3, -1e-300, 1e300, float("nan"), float("inf")]
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step, v in enumerate(values):
            logger.log(step, {"x": v, "f32": np.float32(1.5)})
    steps, got = read_metrics(tmp_path)["x"]
    np.testing.assert_array_equal(steps, np.arange(len(values)))
    np.testing.assert_array_equal(got, np.array(values))  # nan == nan under assert_array_equal


def test_a_new_run_refuses_a_dir_with_metrics(tmp_path: Path) -> None:
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger.log(1, {"x": 1.0})
    with pytest.raises(FileExistsError, match="resume"):
        MetricsLogger(tmp_path, tensorboard=False)


def _crashed_run(run_dir: Path, last_step: int = 1000) -> None:
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for step in range(100, last_step + 1, 100):
            logger.log(step, {"train/episode_return": float(step), "loss/critic": 1.0})


def test_resume_truncates_after_the_checkpoint_and_curves_join(tmp_path: Path) -> None:
    _crashed_run(tmp_path)  # logged up to 1000, last checkpoint at 500
    with MetricsLogger(tmp_path, tensorboard=False, resume=True) as logger:
        logger.truncate_after(500)
        for step in range(600, 1201, 100):
            logger.log(step, {"train/episode_return": -float(step), "eval/return": 0.5})
    metrics = read_metrics(tmp_path)
    steps, values = metrics["train/episode_return"]
    np.testing.assert_array_equal(steps, np.arange(100, 1201, 100))
    np.testing.assert_array_equal(values[:5], np.arange(100, 501, 100))
    np.testing.assert_array_equal(values[5:], -np.arange(600, 1201, 100))
    np.testing.assert_array_equal(metrics["loss/critic"][0], np.arange(100, 501, 100))
    raw_steps = [int(r[0]) for r in _rows(tmp_path)[1:] if r[1] == "train/episode_return"]
    assert raw_steps == sorted(set(raw_steps)), "duplicate steps in the CSV"


def test_resume_without_explicit_truncation_drops_rows_from_the_first_new_step(tmp_path: Path) -> None:
    _crashed_run(tmp_path)
    with MetricsLogger(tmp_path, tensorboard=False, resume=True) as logger:
        logger.log(700, {"train/episode_return": -1.0})
    steps, values = read_metrics(tmp_path)["train/episode_return"]
    np.testing.assert_array_equal(steps, [100, 200, 300, 400, 500, 600, 700])
    assert values[-1] == -1.0 and len(_rows(tmp_path)) == 1 + 6 * 2 + 1


def test_a_torn_last_row_is_cut_on_resume(tmp_path: Path) -> None:
    _crashed_run(tmp_path, last_step=300)
    with open(tmp_path / "metrics.csv", "a") as f:
        f.write("400,train/epis")  # the crash hit mid-row
    with MetricsLogger(tmp_path, tensorboard=False, resume=True) as logger:
        logger.truncate_after(300)
        logger.log(400, {"train/episode_return": 4.0})
    steps, values = read_metrics(tmp_path)["train/episode_return"]
    np.testing.assert_array_equal(steps, [100, 200, 300, 400])
    assert values[-1] == 4.0


def test_read_metrics_sorts_and_later_rows_win(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("step,metric,value\n200,a,2.0\n100,a,1.0\n200,a,3.0\nbad,row\n")
    steps, values = read_metrics(tmp_path)["a"]
    assert steps.dtype == np.int64 and values.dtype == np.float64
    np.testing.assert_array_equal(steps, [100, 200])
    np.testing.assert_array_equal(values, [1.0, 3.0])
    assert read_metrics(tmp_path / "nowhere") == {}


def test_storage_failure_drops_rows_instead_of_raising(tmp_path: Path) -> None:
    class FullDisk:
        def writerows(self, rows: object) -> None:
            raise OSError(28, "No space left on device")

    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        logger._csv = FullDisk()  # type: ignore[assignment]
        logger.log(1, {"a": 1.0, "b": 2.0})
        assert logger.dropped_rows == 2


def test_tensorboard_events_are_written_and_resume_purges_duplicates(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path) as logger:
        for step in range(1, 11):
            logger.log(step, {"train/episode_return": float(step)})
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    with MetricsLogger(tmp_path, resume=True) as logger:
        logger.truncate_after(5)
        for step in range(6, 9):
            logger.log(step, {"train/episode_return": -float(step)})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("train/episode_return")
    assert [e.step for e in events] == list(range(1, 9))
    assert [e.value for e in events] == [1, 2, 3, 4, 5, -6, -7, -8]


def _synthetic_run(run_dir: Path) -> None:
    rng = np.random.default_rng(0)
    with MetricsLogger(run_dir, tensorboard=False) as logger:
        for i in range(1, 201):
            step = i * 250
            progress = i / 200
            row = {
                "train/episode_return": -1200 + 1050 * progress + rng.normal(0, 60),
                "loss/critic": 5 * np.exp(-3 * progress) + rng.uniform(0, 0.2),
                "loss/actor": 40 - 120 * progress + rng.normal(0, 2),
                "loss/alpha": -0.5 * np.exp(-4 * progress),
                "train/alpha": float(np.exp(-5 * progress)),
            }
            if i % 20 == 0:
                row |= {
                    "eval/return_mean": -1100 + 1000 * progress,
                    "eval/return_std": 80 * (1 - progress) + 10,
                    "eval/success_rate": min(1.0, progress**2 * 1.2),
                }
            logger.log(step, row)


def test_learning_curve_png_is_produced(tmp_path: Path) -> None:
    _synthetic_run(tmp_path)
    out = plot_learning_curves(tmp_path)
    assert out == tmp_path / "learning_curve.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 30_000
    assert not list(tmp_path.glob(".*.tmp.*"))
    other = plot_learning_curves(tmp_path, tmp_path / "plots" / "curve.png")
    assert other.stat().st_size > 30_000


def test_panels_are_chosen_by_metric_name() -> None:
    from robot_sac.metrics import _panels

    # SAC update stats logged under loss/: only names whose last part says "loss" are losses.
    names = ["train/episode_return", "eval/return", "eval/return_std", "eval/success_rate", "train/success_rate"]
    names += [f"loss/{k}" for k in ("critic_loss", "actor_loss", "alpha_loss", "alpha", "entropy", "q_mean")]
    names += ["time/updates_per_s", "safety/faults"]
    assert {title: group for title, _, group in _panels(names)} == {
        "Training episode return": ["train/episode_return"],
        "Evaluation return (deterministic)": ["eval/return"],
        "Success rate": ["eval/success_rate", "train/success_rate"],
        "Loss: actor": ["loss/actor_loss"],
        "Loss: alpha": ["loss/alpha_loss"],
        "Loss: critic": ["loss/critic_loss"],
        "Temperature α": ["loss/alpha"],
        "Policy entropy": ["loss/entropy"],
    }
    # Losses named by group only: loss/alpha is the temperature's loss, train/alpha the temperature.
    panels = {title: group for title, _, group in _panels(["loss/critic", "loss/alpha", "train/alpha"])}
    assert panels == {"Loss: critic": ["loss/critic"], "Loss: alpha": ["loss/alpha"], "Temperature α": ["train/alpha"]}


def test_plot_of_an_empty_run_still_writes_a_png(tmp_path: Path) -> None:
    out = plot_learning_curves(tmp_path)
    assert out.read_bytes()[:4] == b"\x89PNG"


def _console(terminal: bool) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=terminal, width=160), buf


def test_progress_prints_plain_lines_when_not_a_terminal() -> None:
    console, buf = _console(terminal=False)
    assert not console.is_terminal
    with ProgressDisplay(1000, initial_step=100, console=console, plain_interval_s=0.0) as progress:
        for step in (200, 300):
            progress.update(
                step, episodes=3, last_return=-12.34, success_rate=0.5, updates_per_s=95.0, env_steps_per_s=410.0
            )
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3  # two updates and the final line
    assert lines[-1].startswith("step 300/1,000 (30%) | ep 3 | return -12.3 | success 50% | 95 upd/s | 410 env/s")
    assert "ETA 0:" in lines[-1] and "\x1b[" not in buf.getvalue()


def test_progress_throttles_plain_lines_and_can_be_disabled() -> None:
    console, buf = _console(terminal=False)
    with ProgressDisplay(100, console=console, plain_interval_s=3600.0) as progress:
        for step in range(1, 101):
            progress.update(
                step, episodes=0, last_return=None, success_rate=None, updates_per_s=0.0, env_steps_per_s=1.0
            )
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step 1/100") and lines[1].startswith("step 100/100")
    assert "return - | success -" in lines[0]

    console, buf = _console(terminal=False)
    with ProgressDisplay(100, console=console, enabled=False, plain_interval_s=0.0) as progress:
        progress.update(5, episodes=0, last_return=None, success_rate=None, updates_per_s=0.0, env_steps_per_s=0.0)
        progress.print("hidden")
    assert buf.getvalue() == ""


def test_progress_live_bar_on_a_terminal() -> None:
    console, buf = _console(terminal=True)
    with ProgressDisplay(1000, console=console) as progress:
        progress.update(500, episodes=2, last_return=1.5, success_rate=1.0, updates_per_s=10.0, env_steps_per_s=20.0)
        progress.print("eval: return 3.0")
    out = buf.getvalue()
    assert "SAC" in out and "500/1000" in out and "success 100%" in out and "eval: return 3.0" in out
