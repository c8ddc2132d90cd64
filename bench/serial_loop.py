"""Real-time serial loop on the servo emulator: cycle-time percentiles and overruns.

Starts the emulator process on a pseudo-terminal (nominal profile), connects `SerialBackend`
through pyserial, homes, then runs ``--duration-s`` of a slow sinusoid around home at
``--hz``. Every cycle is one 4-servo sync write of the goals plus one 4-servo sync read of the
state block (31 bytes each). Prints the period between successive ``step`` returns (p50/p99/max),
the bus round trip (sync read) time, overruns, failed cycles and the bus health counters, with the
machine's core count. Baseline: the period itself (target: p99 within 10 % of it, no overruns).

Usage: python bench/serial_loop.py [--hz 100] [--duration-s 30] [--profile nominal]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from drivers.calibration import load_calibration
from drivers.serial_backend import SerialBackend
from robot_sac.configs import REPO_CONFIG_DIR, SerialConfig
from robot_sac.errors import RobotFault
from robot_sac.spec import load_robot_spec
from sim.emulator_process import EmulatorProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hz", type=float, default=100.0)
    parser.add_argument("--duration-s", type=float, default=30.0)
    parser.add_argument("--profile", default="nominal", choices=["nominal", "reality"])
    args = parser.parse_args()
    robot_yaml = REPO_CONFIG_DIR / "robots" / "arm4.yaml"
    spec = load_robot_spec(robot_yaml, (f"control_hz={args.hz}",))
    calibration_path = REPO_CONFIG_DIR / "calibration" / "arm4.json"
    calibration = load_calibration(calibration_path, spec)
    with EmulatorProcess(robot=robot_yaml, calibration=calibration_path, profile=args.profile) as emulator:
        backend = SerialBackend(spec, SerialConfig(port=emulator.port), calibration)
        with backend:
            state = backend.reset()
            home = state.position_rad.copy()
            steps = int(args.duration_s * args.hz)
            returns = np.empty(steps)
            reads = np.empty(steps)
            assert backend.bus is not None
            fault = None
            done = 0
            for k in range(steps):
                t = k / args.hz
                target = np.clip(home + 0.2 * np.sin(2 * np.pi * 0.25 * t), spec.soft_lower_rad, spec.soft_upper_rad)
                before = time.perf_counter()
                try:
                    backend.step(target)
                except RobotFault as err:
                    fault = f"{type(err).__name__} after {k} cycles: {err}"
                    break
                returns[k] = time.perf_counter()
                reads[k] = returns[k] - before
                done = k + 1
            returns, reads = returns[:done], reads[:done]
            health = backend.bus.health.as_dict()
            overruns, failed = backend.overruns, backend.failed_cycles
    periods_ms = np.diff(returns) * 1e3
    period_ms = 1e3 / args.hz
    cores = len(os.sched_getaffinity(0))
    print(
        f"machine: {cores} cores; {done} of {steps} cycles at {args.hz:g} Hz ({period_ms:.1f} ms), "
        f"4 servos, {args.profile}"
    )
    print(
        f"cycle period ms: p50 {np.percentile(periods_ms, 50):.3f}  p99 {np.percentile(periods_ms, 99):.3f}  "
        f"max {periods_ms.max():.3f}  (p99 / period = {np.percentile(periods_ms, 99) / period_ms:.3f})"
    )
    print(f"step() call ms (write + wait + sync read): p50 {np.percentile(reads, 50) * 1e3:.3f}")
    print(f"overruns {overruns}, failed cycles {failed}, bus health {health}")
    print(f"fault: {fault}" if fault else f"no fault in {done} cycles")


if __name__ == "__main__":
    main()
