"""The outcome of an evaluation: episodes, faults, success with a Wilson interval, JSON and a table.

`robot_sac.evaluate` runs the episodes and fills an `EvalReport`; this module holds what it
produces and how it is summarized, so that reports can be read, compared and printed (the demo,
`bench/sim_to_real.py`) without the runner. Imports only numpy: the torch-free deploy path uses it.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from robot_sac.atomic import write_bytes_atomic
from robot_sac.safety import CLIP_STAGES

REPORT_FILE = "eval_report.json"
Z_95 = 1.959963984540054
"""The standard normal quantile of 0.975: a two-sided 95 % interval."""
EXIT_STOPPED_EARLY = 5
"""Exit code when a reset failed and episodes were left unrun (``robot-sac``'s code for a fault)."""

PolicyKind = Literal["onnx", "torch"]


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a success probability (Wilson 1927, JASA 22:209).

    Unlike ``p ± z sqrt(p(1-p)/n)`` it stays in [0, 1] and is not a point at 0/n or n/n, which
    matters for the 10-50 episodes a robot affords.

    Args:
        successes: successful episodes k, 0 <= k <= n.
        n: episodes; (0, 1) when 0 (nothing is known).
        z: the normal quantile (1.96 for 95 %).

    Returns:
        (lower, upper) bounds of the probability.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p, z2 = successes / n, z * z
    # center = (p + z²/2n) / (1 + z²/n);  half = z / (1 + z²/n) * sqrt(p(1-p)/n + z²/4n²)
    denom = 1.0 + z2 / n
    center = (p + z2 / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    # At k = 0 (k = n) the bound is exactly 0 (1); computed, it can miss by one ulp.
    lower = 0.0 if successes == 0 else max(0.0, center - half)
    upper = 1.0 if successes == n else min(1.0, center + half)
    return lower, upper


@dataclass(frozen=True, kw_only=True)
class EpisodeRow:
    """One evaluated episode (``return_`` is ``return`` in JSON)."""

    index: int  # episode number in this evaluation, from 0
    seed: int  # the seed of its reset
    steps: int  # env steps taken
    return_: float  # sum of rewards
    success: bool  # the task's success at the last step, and no fault ended the episode
    final_distance_mm: float  # tip to target at the last valid observation, mm
    clip_counts: Mapping[str, int]  # per safety-filter stage, steps on which it changed the command
    fault: str | None  # the fault that ended the episode


@dataclass(frozen=True, kw_only=True)
class FaultEntry:
    """A fault met during the evaluation."""

    name: str  # its type (robot_sac.errors), e.g. NonFiniteAction, CommTimeout
    message: str  # what happened, for the operator
    episode: int  # the episode it ended (at reset: the one that could not start)
    seed: int  # that episode's seed
    step: int  # the env step it happened at (0 at reset)
    during: Literal["step", "policy", "reset"]  # the env reported it, the policy refused, or reset raised


@dataclass(frozen=True, kw_only=True)
class EvalReport:
    """The outcome of an evaluation; the same type for ONNX and run-directory policies.

    The statistics (`summary`) are computed from the rows: `to_json` writes them beside the rows,
    `from_json` ignores them.
    """

    policy: str  # the policy or run directory
    policy_kind: PolicyKind
    policy_id: str  # the ONNX sha256, or the checkpoint and its update count
    robot: str  # RobotSpec.name
    backend: str  # "pybullet" or "servos on <port>"
    config_sha256: str  # the env config the episodes ran with
    seed: int  # seed of episode 0 (episode i: seed + i)
    episodes_requested: int
    episodes: tuple[EpisodeRow, ...]  # the episodes that ran
    faults: tuple[FaultEntry, ...]  # every fault, in order
    stop_reason: str  # "completed", or why episodes were left unrun
    wall_s: float  # wall-clock time of the episodes, s
    recovered_faults: tuple[FaultEntry, ...] = ()  # transient reset faults a retry cleared (not in faults)

    @property
    def success_rate(self) -> float:
        """Share of the evaluated episodes that succeeded (0 when none ran)."""
        return sum(e.success for e in self.episodes) / len(self.episodes) if self.episodes else 0.0

    @property
    def success_ci95(self) -> tuple[float, float]:
        """95 % Wilson interval of the success probability."""
        return wilson_interval(sum(e.success for e in self.episodes), len(self.episodes))

    @property
    def completed(self) -> bool:
        """Whether every requested episode ran."""
        return len(self.episodes) == self.episodes_requested

    @property
    def exit_code(self) -> int:
        """0 when every episode ran (faults inside episodes are results), else `EXIT_STOPPED_EARLY`."""
        return 0 if self.completed else EXIT_STOPPED_EARLY

    def summary(self) -> dict[str, Any]:
        """The statistics of the rows, JSON-ready.

        Keys: ``episodes_run``, ``completed``, ``successes``, ``success_rate``, ``success_ci95``
        ([lower, upper]), ``final_distance_mm_mean`` and ``final_distance_mm_p95`` (linear
        interpolation; None when no episode ran), ``clip_counts`` (per stage, summed) and
        ``fault_counts`` (by type name).
        """
        d = [e.final_distance_mm for e in self.episodes]
        return {
            "episodes_run": len(self.episodes), "completed": self.completed,
            "successes": sum(e.success for e in self.episodes), "success_rate": self.success_rate,
            "success_ci95": list(self.success_ci95),
            "final_distance_mm_mean": float(np.mean(d)) if d else None,
            "final_distance_mm_p95": float(np.percentile(d, 95.0)) if d else None,
            "clip_counts": {s: sum(int(e.clip_counts.get(s, 0)) for e in self.episodes) for s in CLIP_STAGES},
            "fault_counts": dict(Counter(f.name for f in self.faults)),
        }  # fmt: skip

    def to_json(self) -> dict[str, Any]:
        """The JSON document: the fields, the `summary`, and the rows (``return_`` as ``return``)."""
        doc = asdict(self)
        doc["episodes"] = [{("return" if k == "return_" else k): v for k, v in row.items()} for row in doc["episodes"]]
        return doc | self.summary()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> EvalReport:
        """Rebuild a report from `to_json` output (summary keys are ignored: they are recomputed)."""
        rows = tuple(
            EpisodeRow(**{("return_" if k == "return" else k): v for k, v in row.items()}) for row in doc["episodes"]
        )
        faults = tuple(FaultEntry(**f) for f in doc["faults"])
        recovered = tuple(FaultEntry(**f) for f in doc.get("recovered_faults", ()))  # absent before retries
        names = {f for f in cls.__dataclass_fields__ if f not in ("episodes", "faults", "recovered_faults")}
        return cls(episodes=rows, faults=faults, recovered_faults=recovered, **{k: doc[k] for k in names})

    def write(self, out_dir: Path) -> Path:
        """Write `REPORT_FILE` into ``out_dir`` atomically; returns its path."""
        path = Path(out_dir) / REPORT_FILE
        write_bytes_atomic(path, (json.dumps(self.to_json(), indent=2) + "\n").encode())
        return path

    def table(self) -> str:
        """A plain-text summary for the terminal (no rich: it runs on the controller)."""
        lines = [f"{'ep':>3} {'seed':>6} {'steps':>5} {'return':>8} {'success':>7} {'dist mm':>8} {'clips':>5}  fault"]
        lines += [
            f"{e.index:>3} {e.seed:>6} {e.steps:>5} {e.return_:>8.2f} {'yes' if e.success else 'no':>7} "
            f"{e.final_distance_mm:>8.1f} {sum(e.clip_counts.values()):>5}  {e.fault or '-'}"
            for e in self.episodes
        ]
        m = self.summary()
        mean, p95, (lower, upper) = m["final_distance_mm_mean"], m["final_distance_mm_p95"], self.success_ci95
        distance = "-" if mean is None else f"mean {mean:.1f} mm, p95 {p95:.1f} mm"
        faults = ", ".join(f"{f.name} (episode {f.episode}, {f.during})" for f in self.faults) or "none"
        if self.recovered_faults:
            faults += f"; {len(self.recovered_faults)} reset(s) retried after a transient fault"
        ident = self.policy_id[:16] if self.policy_kind == "onnx" else self.policy_id  # a sha256 is 64 digits
        lines += [
            f"{self.policy_kind} policy {self.policy} ({ident}) on {self.robot}, {self.backend}",
            f"success {m['successes']}/{len(self.episodes)} = {self.success_rate:.0%} "
            f"(95 % Wilson CI {lower:.1%} - {upper:.1%}); final distance {distance}",
            f"safety clips {m['clip_counts']}; faults: {faults}",
        ]
        if not self.completed:
            lines.append(f"STOPPED EARLY after {len(self.episodes)} of {self.episodes_requested} episodes: "
                         f"{self.stop_reason}")  # fmt: skip
        return "\n".join(lines)
