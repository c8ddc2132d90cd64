"""What a deploy run leaves behind: the report (JSON), and the recent history dumped on a fault (npz).

`DeployReport` is written as ``deploy_report.json`` at the end of every run, clean or not.
`RingBuffer` keeps the last N control steps in preallocated arrays (no allocation per step); on a
fault its content is written as an ``.npz`` (no pickle) next to the report, oldest step first.
"""

from __future__ import annotations

import io
import json
from array import array
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robot_sac.atomic import write_bytes_atomic

REPORT_FILE = "deploy_report.json"


@dataclass(frozen=True)
class Percentiles:
    """p50/p99/max of a series, in the unit its name carries (``loop_period_ms``, ``inference_us``)."""

    count: int
    p50: float
    p99: float
    max: float

    @classmethod
    def of(cls, values: array[float] | np.ndarray, scale: float = 1.0) -> Percentiles:
        """Statistics of ``values * scale`` (zeros when empty)."""
        x = np.asarray(values, dtype=np.float64) * scale
        if x.size == 0:
            return cls(0, 0.0, 0.0, 0.0)
        p50, p99 = np.percentile(x, [50.0, 99.0]).tolist()
        return cls(int(x.size), float(p50), float(p99), float(x.max()))


@dataclass(frozen=True)
class EpisodeResult:
    """One episode of the task under the policy.

    Attributes:
        index: episode number in this run, from 0.
        seed: the env seed of its reset.
        steps: control steps taken.
        return_: sum of rewards (``return`` in JSON).
        success: the task's success flag at the last step.
        final_distance_m: the task's distance to the goal at the last step, m (None: no step).
        safety_clips: per safety-filter stage, steps on which it changed the command.
        fault: the fault that ended it, or None.
        stopped: cut short by a stop request or the duration limit.
    """

    index: int
    seed: int
    steps: int
    return_: float
    success: bool
    final_distance_m: float | None
    safety_clips: dict[str, int]
    fault: str | None
    stopped: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON form (``return_`` written as ``return``)."""
        out = asdict(self)
        out["return"] = out.pop("return_")
        return out


@dataclass(frozen=True)
class FaultRecord:
    """A fault that ended an episode or the run.

    Attributes:
        name: the fault type (`robot_sac.errors`), e.g. ``DeadlineMiss``.
        message: what happened, for the operator.
        episode: episode index.
        step: control step within the episode.
        time_s: seconds since the run started (loop clock).
        dump: path of the ring-buffer dump, or None.
    """

    name: str
    message: str
    episode: int
    step: int
    time_s: float
    dump: str | None


@dataclass
class DeployReport:
    """The run's account (``deploy_report.json``). Units are in the field names.

    ``loop_period_ms`` is the interval between consecutive observations (env step returns)
    within an episode; ``inference_us`` the policy call as the loop measured it; overruns and
    skipped slots come from the pacer and the backend.
    """

    robot: str
    policy_dir: str
    policy_sha256: str
    pacing: str
    control_hz: float
    stop_action: str
    steps: int = 0
    duration_s: float = 0.0
    episodes: list[EpisodeResult] = field(default_factory=list)
    loop_period_ms: Percentiles = Percentiles(0, 0.0, 0.0, 0.0)
    inference_us: Percentiles = Percentiles(0, 0.0, 0.0, 0.0)
    loop_period_histogram_ms: dict[str, list[float]] = field(default_factory=dict)
    warmup_us: dict[str, float] = field(default_factory=dict)
    overruns: int = 0
    skipped_slots: int = 0
    max_consecutive_overruns: int = 0
    safety_clips: dict[str, int] = field(default_factory=dict)
    faults: list[FaultRecord] = field(default_factory=list)
    recovered_faults: list[FaultRecord] = field(default_factory=list)
    """Transient faults at an episode's reset that a retry got past (the run went on)."""
    stop_reason: str = ""
    park: str = "not_run"
    exit_code: int = 0

    @property
    def success_rate(self) -> float:
        """Share of finished episodes (not stopped early) that ended in success."""
        done = [e for e in self.episodes if not e.stopped]
        return sum(e.success for e in done) / len(done) if done else 0.0

    def to_json(self) -> dict[str, Any]:
        """The JSON document."""
        doc = asdict(self)
        doc["episodes"] = [e.as_dict() for e in self.episodes]
        doc["success_rate"] = self.success_rate
        return doc

    def write(self, out_dir: Path) -> Path:
        """Write ``deploy_report.json`` into ``out_dir`` atomically; returns its path."""
        path = out_dir / REPORT_FILE
        write_bytes_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    def table(self) -> str:
        """A short plain-text summary for the terminal (no rich: it runs on the controller)."""
        rows = [f"{'ep':>3} {'seed':>6} {'steps':>6} {'return':>9} {'success':>7} {'dist mm':>8} {'clips':>5}  fault"]
        for e in self.episodes:
            clips = sum(e.safety_clips.values())
            flag = "yes" if e.success else "no"
            mark = " (stopped)" if e.stopped else ""
            dist = "-" if e.final_distance_m is None else f"{1000 * e.final_distance_m:.1f}"
            rows.append(
                f"{e.index:>3} {e.seed:>6} {e.steps:>6} {e.return_:>9.2f} {flag:>7} {dist:>8} {clips:>5}  "
                f"{e.fault or '-'}{mark}"
            )
        p, i = self.loop_period_ms, self.inference_us
        rows += [
            f"success rate {self.success_rate:.0%} over {len(self.episodes)} episode(s), {self.steps} steps, "
            f"{self.duration_s:.1f} s, pacing {self.pacing} at {self.control_hz:g} Hz",
            f"loop period ms p50 {p.p50:.2f} p99 {p.p99:.2f} max {p.max:.2f}; "
            f"inference µs p50 {i.p50:.1f} p99 {i.p99:.1f} max {i.max:.1f}",
            f"overruns {self.overruns} (skipped slots {self.skipped_slots}), safety clips {self.safety_clips}, "
            f"faults {[f.name for f in self.faults] or 'none'}"
            + (f", recovered at reset {[f.name for f in self.recovered_faults]}" if self.recovered_faults else ""),
            f"stopped by {self.stop_reason}; {self.stop_action}: {self.park}; exit code {self.exit_code}",
        ]
        return "\n".join(rows)


def period_histogram_ms(periods_s: array[float] | np.ndarray, period_s: float) -> dict[str, list[float]]:
    """Counts of loop periods in 0.5 ms bins from 0 to 3 periods (longer ones in the last bin).

    Returns:
        ``{"edges_ms": [...], "counts": [...]}`` (len(counts) == len(edges_ms) - 1), JSON-ready.
    """
    top_ms = 3e3 * period_s
    edges = np.arange(0.0, top_ms + 0.5, 0.5)
    values = np.minimum(np.asarray(periods_s, dtype=np.float64) * 1e3, edges[-1] - 1e-9)
    counts, _ = np.histogram(values, bins=edges)
    return {"edges_ms": edges.tolist(), "counts": counts.astype(float).tolist()}


class RingBuffer:
    """The last ``capacity`` control steps, in preallocated arrays.

    Per step: loop time (s), episode, step, the observation the policy saw, its joint delta (rad),
    the action given to the env (policy units), the executed action, the commanded target (rad),
    the inference time (s) and the slots skipped before the command.
    """

    def __init__(self, capacity: int, obs_dim: int, dof: int) -> None:
        """Allocate everything up front."""
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._arrays: dict[str, np.ndarray] = {
            "time_s": np.zeros(capacity),
            "episode": np.zeros(capacity, np.int64),
            "step": np.zeros(capacity, np.int64),
            "observation": np.zeros((capacity, obs_dim), np.float32),
            "joint_delta_rad": np.zeros((capacity, dof)),
            "action": np.zeros((capacity, dof), np.float32),
            "executed_action": np.zeros((capacity, dof), np.float32),
            "command_rad": np.zeros((capacity, dof)),
            "inference_s": np.zeros(capacity),
            "skipped_slots": np.zeros(capacity, np.int64),
        }
        self._count = 0

    def __len__(self) -> int:
        """Steps held (at most ``capacity``)."""
        return min(self._count, self.capacity)

    def record(self, **values: Any) -> None:
        """Store one step; keys are the array names (all of them)."""
        i = self._count % self.capacity
        for name, buf in self._arrays.items():
            buf[i] = values[name]
        self._count += 1

    def snapshot(self) -> dict[str, np.ndarray]:
        """Copies of the held steps, oldest first."""
        n = len(self)
        order = (np.arange(n) + (self._count - n)) % self.capacity
        return {name: buf[order].copy() for name, buf in self._arrays.items()}

    def dump(self, path: Path, fault: FaultRecord) -> Path:
        """Write the held steps and the fault as ``.npz`` (no pickle), atomically."""
        data = self.snapshot()
        data["fault_name"] = np.array(fault.name)
        data["fault_message"] = np.array(fault.message)
        buf = io.BytesIO()
        np.savez(buf, **data)  # type: ignore[arg-type]  # fixed names: no key named allow_pickle
        write_bytes_atomic(path, buf.getvalue())
        return path
