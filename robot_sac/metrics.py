"""Training metrics: a tidy CSV plus TensorBoard, learning-curve plots and a live progress bar.

``run_dir/metrics.csv`` is long ("tidy") format, one value per row::

    step,metric,value
    1000,train/episode_return,-1203.5
    1000,loss/critic,4.21
    5000,eval/return,-850.2

so metrics that first appear later (evaluation, a new loss) need no header change, and a resumed
run just appends. A crash after the last checkpoint may have logged steps that the resumed run will
log again: `MetricsLogger.truncate_after` drops them from the CSV, and TensorBoard's ``purge_step``
hides them in the event files, so both curves join without duplicate steps.

Metric names are ``<group>/<name>``; `plot_learning_curves` picks its panels by name (see `_panels`).
"""

from __future__ import annotations

import csv
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from torch.utils.tensorboard import SummaryWriter

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"
PLOT_NAME = "learning_curve.png"
_HEADER = ["step", "metric", "value"]

log = logging.getLogger(__name__)


class MetricsLogger:
    """Append metrics to ``run_dir/metrics.csv`` and TensorBoard scalars under ``run_dir/tensorboard``.

    Writing never raises on a storage failure (a full disk must not stop the learner, SAFETY.md
    row 22): rows that cannot be written are counted in ``dropped_rows`` and logged once.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: also write TensorBoard event files (skipped with a warning if tensorboard is
            not installed).
        resume: continue an existing run. Rows at or after the first step logged by this run are
            removed first, unless `truncate_after` was called explicitly (call it with the
            checkpoint's step). Without ``resume`` an existing ``metrics.csv`` is an error, so two
            runs never mix in one file.
        flush_secs: how often TensorBoard flushes its events to disk (the CSV flushes every row).
    """

    def __init__(
        self, run_dir: Path, *, tensorboard: bool = True, resume: bool = False, flush_secs: float = 30.0
    ) -> None:
        self.run_dir = run_dir
        self.csv_path = run_dir / CSV_NAME
        self.dropped_rows = 0
        self._tensorboard = tensorboard
        self._flush_secs = flush_secs
        self._needs_truncation = resume
        self._purge_step: int | None = None
        self._writer: SummaryWriter | None = None
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume and self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            raise FileExistsError(
                f"{self.csv_path} already holds metrics of another run; pass resume=True (--resume) to continue "
                "it, or choose a new run directory"
            )
        _repair_torn_tail(self.csv_path)
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._csv = csv.writer(self._file)
        if self._file.tell() == 0:
            self._csv.writerow(_HEADER)
            self._file.flush()

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record ``metrics`` at env step ``step`` (one CSV row and one TensorBoard scalar each)."""
        if self._needs_truncation:
            self.truncate_after(step - 1)
        rows = [(step, name, float(value)) for name, value in metrics.items()]
        try:
            self._csv.writerows((s, name, repr(value)) for s, name, value in rows)
            self._file.flush()
        except OSError as err:
            if self.dropped_rows == 0:
                log.error("metrics rows dropped: cannot write %s (%s); free disk space", self.csv_path, err)
            self.dropped_rows += len(rows)
        writer = self._tb_writer()
        if writer is not None:
            for _, name, value in rows:
                writer.add_scalar(name, value, global_step=step)

    def truncate_after(self, step: int) -> None:
        """Drop CSV rows with a step above ``step``, and purge later TensorBoard events.

        Call it when resuming from the checkpoint at ``step``: whatever the crashed run logged after
        that checkpoint is logged again by the resumed run. The CSV is rewritten atomically.
        """
        self._needs_truncation = False
        self._purge_step = step + 1
        self._file.close()
        try:
            with open(self.csv_path, newline="", encoding="utf-8") as f:
                kept = [row for row in _parse_rows(csv.reader(f)) if row[0] <= step]
            tmp = self.csv_path.with_name(f"{CSV_NAME}.tmp.{os.getpid()}")
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(_HEADER)
                writer.writerows((s, name, repr(value)) for s, name, value in kept)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.csv_path)
        except OSError as err:
            log.warning("could not truncate %s after step %d: %s", self.csv_path, step, err)
        self._file = open(self.csv_path, "a", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        if self._writer is not None:  # reopen, so the purge marker is written at the right step
            self._writer.close()
            self._writer = None

    def flush(self) -> None:
        """Push buffered TensorBoard events to disk (the CSV is flushed on every `log`)."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the CSV and the TensorBoard writer. Idempotent."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._file.close()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _tb_writer(self) -> SummaryWriter | None:
        """The TensorBoard writer, opened on first use (so a resume can set its purge step first)."""
        if self._writer is None and self._tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as err:
                log.warning("TensorBoard disabled (%s); metrics go to %s only", err, self.csv_path)
                self._tensorboard = False
                return None
            self._writer = SummaryWriter(
                log_dir=str(self.run_dir / TENSORBOARD_DIR), purge_step=self._purge_step, flush_secs=self._flush_secs
            )
        return self._writer


def _repair_torn_tail(path: Path) -> None:
    """Cut a half-written last line (a crash mid-row) so the next row does not glue onto it."""
    if path.exists():
        with open(path, "rb+") as f:
            data = f.read()
            if data and not data.endswith(b"\n"):
                f.truncate(data.rfind(b"\n") + 1)


def _parse_rows(reader: Any) -> list[tuple[int, str, float]]:
    """Rows of a metrics CSV as (step, metric, value); the header and malformed rows are skipped."""
    rows = []
    for row in reader:
        try:
            rows.append((int(row[0]), row[1], float(row[2])))
        except (ValueError, IndexError):
            continue
    return rows


def read_metrics(run_dir: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every metric of a run as ``(steps, values)``: int64 and float64 arrays sorted by step.

    If a step was logged twice for a metric (a resume without truncation), the later row wins.
    """
    path = run_dir / CSV_NAME
    if not path.exists():
        return {}
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for step, name, value in _parse_rows(csv.reader(f)):
            series.setdefault(name, {})[step] = value
    out = {}
    for name, points in series.items():
        steps = np.array(sorted(points), dtype=np.int64)
        out[name] = (steps, np.array([points[s] for s in steps], dtype=np.float64))
    return out


# --- learning-curve plot -----------------------------------------------------------------------

_SPREAD_SUFFIXES = ("_std", "_min", "_max")


def _panels(names: list[str]) -> list[tuple[str, str, list[str]]]:
    """(title, y label, metric names) per panel, in reading order; empty panels are left out.

    A loss is a metric whose last part says ``loss`` (``loss/critic_loss``, ``train/actor_loss``), so
    ``loss/alpha`` beside ``loss/alpha_loss`` is the temperature; only when no name ends that way does
    ``loss`` anywhere count (``loss/critic``, ``loss/alpha``).
    """

    def last(name: str) -> str:
        return name.rsplit("/", 1)[-1]

    def pick(pred: Callable[[str], bool]) -> list[str]:
        return sorted(n for n in names if pred(n) and not n.endswith(_SPREAD_SUFFIXES))

    by_last = any("loss" in last(n) for n in names)

    def is_loss(n: str) -> bool:
        return "loss" in (last(n) if by_last else n)

    panels = [
        ("Training episode return", "return", pick(lambda n: "return" in n and not n.startswith("eval"))),
        ("Evaluation return (deterministic)", "return", pick(lambda n: "return" in n and n.startswith("eval"))),
        ("Success rate", "success (%)", pick(lambda n: "success" in n)),
    ]
    # One panel per loss: critic, actor and temperature losses differ by orders of magnitude and sign.
    panels += [(f"Loss: {last(n).replace('loss', '').strip('_') or n}", "loss", [n]) for n in pick(is_loss)]
    panels.append(("Temperature α", "α", pick(lambda n: last(n) == "alpha" and not is_loss(n))))
    panels.append(("Policy entropy", "nats", pick(lambda n: last(n) == "entropy")))
    return [panel for panel in panels if panel[2]]


def plot_learning_curves(run_dir: Path, out: Path | None = None) -> Path:
    """Draw the run's learning curves to a PNG (default ``run_dir/learning_curve.png``); return its path.

    Headless (Agg canvas, no pyplot state) and written atomically, so it can be refreshed during
    training while someone has the file open.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import EngFormatter

    out = out or run_dir / PLOT_NAME
    metrics = read_metrics(run_dir)
    panels = _panels(list(metrics))
    ncols = min(3, max(1, len(panels)))
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig = Figure(figsize=(5.2 * ncols, 3.4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    last_step = max((int(s[-1]) for s, _ in metrics.values() if len(s)), default=0)
    fig.suptitle(f"{run_dir.resolve().name}: learning curves up to env step {last_step:,}", fontsize=13)
    steps_fmt = EngFormatter(sep="")  # 1.5k, 2M
    for ax, (title, ylabel, names) in zip(axes, panels, strict=False):
        for name in names:
            _draw_series(ax, title, name, metrics)
        ax.set(title=title, xlabel="env steps", ylabel=ylabel)
        ax.xaxis.set_major_formatter(steps_fmt)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    if not panels:
        axes[0].text(0.5, 0.5, "no metrics logged yet", ha="center", va="center", fontsize=14)
    tmp = out.with_name(f".{out.name}.tmp.{os.getpid()}")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(tmp, format="png", dpi=110)
    os.replace(tmp, out)
    return out


def _draw_series(ax: Axes, title: str, name: str, metrics: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """One metric on its panel: raw and smoothed for training returns, ±std band when logged."""
    steps, values = metrics[name]
    if title == "Success rate" and values.size and np.nanmax(values) <= 1.0:
        values = values * 100.0
        ax.set_ylim(-3, 103)
    elif title.startswith("Training") and values.size >= 20:
        window = max(2, values.size // 25)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        line = ax.plot(steps[window - 1 :], smooth, lw=1.8, label=f"{name} (mean of {window} points)")[0]
        ax.plot(steps, values, lw=0.8, alpha=0.3, color=line.get_color())
        return
    marker = "o" if values.size <= 60 else None
    line = ax.plot(steps, values, marker=marker, ms=3, lw=1.5, label=name)[0]
    base = name.removesuffix("_mean")
    if (std := metrics.get(f"{base}_std")) is not None and np.array_equal(std[0], steps):
        ax.fill_between(steps, values - std[1], values + std[1], color=line.get_color(), alpha=0.2, label="± std")
    wide = values.size and np.all(values > 0) and values.max() > 100 * values.min()  # e.g. early critic loss
    if title.startswith(("Temperature", "Loss")) and values.size and np.all(values > 0) and (wide or "α" in title):
        ax.set_yscale("log")


# --- live progress -----------------------------------------------------------------------------


class ProgressDisplay:
    """A live progress bar on a terminal; a plain status line every ``plain_interval_s`` otherwise.

    Shows env steps / total, episodes, last return, success rate, updates/s, env steps/s and the ETA.
    When stdout is not a terminal (CI logs, ``nohup``), rich's live display would spam control codes,
    so one plain line is printed on the first update, every ``plain_interval_s`` and at exit.

    Args:
        total_steps: env steps the run will reach.
        initial_step: where a resumed run starts (the ETA counts only steps made in this process).
        enabled: False shows nothing at all.
        console: where to draw (default: stdout); tests pass a console writing to a buffer.
        plain_interval_s: seconds between plain lines when not on a terminal.
    """

    def __init__(
        self,
        total_steps: int,
        *,
        initial_step: int = 0,
        enabled: bool = True,
        console: Console | None = None,
        plain_interval_s: float = 30.0,
    ) -> None:
        self.total_steps = total_steps
        self.console = console or Console()
        self._enabled = enabled
        self._live = enabled and self.console.is_terminal
        self._interval_s = plain_interval_s
        self._start = (time.monotonic(), initial_step)
        self._last_print = -math.inf
        self._line = ""
        self._progress = Progress(
            TextColumn("[bold blue]SAC"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps | {task.fields[status]} | ETA"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self._live,
        )
        self._task = self._progress.add_task("train", total=total_steps, completed=initial_step, status="starting")

    def __enter__(self) -> ProgressDisplay:
        if self._live:
            self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._live:
            self._progress.stop()
        elif self._enabled and self._line:
            self.console.print(self._line, markup=False, highlight=False, soft_wrap=True)

    def update(
        self,
        step: int,
        *,
        episodes: int,
        last_return: float | None,
        success_rate: float | None,
        updates_per_s: float,
        env_steps_per_s: float,
    ) -> None:
        """Show the state at env step ``step``; cheap enough to call every step (plain mode throttles)."""
        status = (
            f"ep {episodes:,} | return {'-' if last_return is None else f'{last_return:.1f}'} | "
            f"success {'-' if success_rate is None else f'{100 * success_rate:.0f}%'} | "
            f"{updates_per_s:.0f} upd/s | {env_steps_per_s:.0f} env/s"
        )
        if self._live:
            self._progress.update(self._task, completed=step, status=status)
            return
        if not self._enabled:
            return
        now = time.monotonic()
        percent = 100 * step / max(self.total_steps, 1)
        self._line = f"step {step:,}/{self.total_steps:,} ({percent:.0f}%) | {status} | ETA {self._eta(step, now)}"
        if now - self._last_print >= self._interval_s:
            self._last_print = now
            self.console.print(self._line, markup=False, highlight=False, soft_wrap=True)

    def print(self, message: str) -> None:
        """Print a message above the live bar (or as a plain line), e.g. an evaluation result."""
        if self._enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def _eta(self, step: int, now: float) -> str:
        start_time, start_step = self._start
        rate = (step - start_step) / max(now - start_time, 1e-9)
        if rate <= 0:
            return "-"
        seconds = int((self.total_steps - step) / rate)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
