"""`DeployConfig`: the deploy loop's timing, fault and stop settings (``--set deploy.<key>=<value>``).

Units are in the key names; `policies.deploy.DeployLoop` documents what each limit does in the loop.
Imports only the config loader: the torch-free deploy path loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from robot_sac.config_loader import param


@dataclass(frozen=True, kw_only=True)
class DeployConfig:
    """The deploy loop's timing, fault and stop settings (``--set deploy.<key>=<value>``)."""

    max_consecutive_overruns: int = param(3, ge=1, le=1000, doc="this many late commands in a row is a DeadlineMiss")
    max_overrun_fraction: float = param(
        0.05, gt=0.0, le=1.0, doc="more late commands than this share of the slots in overrun_window_s: DeadlineMiss"
    )
    overrun_window_s: float = param(1.0, unit="s", gt=0.0, le=600.0, doc="window of max_overrun_fraction")
    watchdog_periods: float = param(
        5.0, gt=1.0, le=1000.0, doc="a policy call or one env step longer than this many periods is a fault"
    )
    inference_budget_periods: float = param(
        0.2, gt=0.0, le=1.0, doc="refuse to arm when the warm-up p99 inference exceeds this share of the period"
    )
    threads: int = param(1, ge=1, le=64, doc="onnxruntime intra-op threads")
    warmup_runs: int = param(200, ge=1, le=1_000_000, doc="inferences before the policy may drive the robot")
    ring_buffer_steps: int = param(250, ge=1, le=1_000_000, doc="recent steps dumped on a fault")
    stop_action: Literal["park", "hold"] = param("park", doc="after a stop request: move home, or keep holding")
    park_speed: float = param(1.0, gt=0.0, le=1.0, doc="parking speed as a share of the rate limit max_step_rad")
    park_timeout_s: float = param(
        4.0, unit="s", gt=0.0, le=60.0, doc="the stop sequence gives up (and holds) after this (SAFETY.md #27: < 5 s)"
    )
    park_settle_steps: int = param(5, ge=0, le=10_000, doc="periods the home target is held before parking ends")
    reset_attempts: int = param(
        3, ge=1, le=100, doc="tries of an episode's reset (homing) that met a transient bus fault; 1: no retry"
    )
    reset_retry_s: float = param(0.5, unit="s", ge=0.0, le=60.0, doc="wait before a reset is tried again")
    disable_gc: bool = param(
        True, doc="no cyclic garbage collection inside an episode (collected between them, the set-up heap frozen)"
    )
    realtime_priority: int = param(
        0,
        ge=0,
        le=99,
        doc="SCHED_FIFO priority of the loop where the OS allows (e.g. 20, robot_sac.realtime); 0: normal",
    )
