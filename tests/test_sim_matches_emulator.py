"""The simulator and the emulated arm (nominal profile) agree on what the policy sees.

Both run the same URDF, servo gains and physics rate; this test pins the rest of the pipeline that
sim-to-real depends on: the servo's speed clamp (the Velocity_Limit the driver writes) and when in
the period the state is read (``sim.measure_at_s``, where the serial driver reads). Before both were
matched, the simulator reported joint velocities 4x lower than the arm's for the same motion, and
a sim-trained policy saw most of the arm's velocity readings beyond 4 sigma of its training data.
"""

from __future__ import annotations

import numpy as np
import pytest

from robot_sac.make_env import load_env_stack_config, make_backend, make_env
from sim.emulator_process import EmulatorProcess
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("realtime_host")  # the host loop runs like the deploy loop: SCHED_FIFO

ENV = REPO_ROOT / "configs" / "envs" / "arm_reach.yaml"


def _actions(dof: int) -> list[np.ndarray]:
    """Full-rate moves out and back on every joint, then a rest: ramps, reversals and settling."""
    return [np.full(dof, 0.8 if (k // 10) % 2 == 0 else -0.8, np.float32) for k in range(30)] + [
        np.zeros(dof, np.float32)
    ] * 6


def _trace(*overrides: str) -> tuple[np.ndarray, int]:
    config, spec = load_env_stack_config(ENV, ("normalization.enabled=false", *overrides))
    env = make_env(config, make_backend(config, spec))
    try:
        obs, _ = env.reset(seed=0)
        rows = [obs]
        for action in _actions(spec.dof):
            obs, _, terminated, truncated, info = env.step(action)
            assert not (terminated or truncated), info.get("fault")
            rows.append(obs)
    finally:
        env.close()
    return np.asarray(rows), spec.dof


def test_positions_and_velocities_agree_step_by_step() -> None:
    sim, dof = _trace("backend=pybullet")
    with EmulatorProcess(profile="nominal") as emu:
        arm, _ = _trace("backend=serial", f"serial.port={emu.port}")
    position_error = np.abs(sim[:, :dof] - arm[:, :dof])
    velocity_error = np.abs(sim[:, dof : 2 * dof] - arm[:, dof : 2 * dof])
    speed = np.abs(arm[:, dof : 2 * dof])
    assert speed.max() > 1.4  # the moves ran near the velocity limits (1.5-2 rad/s)
    # Two things move the arm's velocity readings off the simulator's, neither a mismatch:
    # - The emulator steps physics on its own 2.5 ms (400 Hz) grid, so the read 12 ms after the write
    #   sees the new goal's motion for 4 or 5 of its steps, by the phase the run happens to start
    #   in; the phase then holds for the whole run. Measured over 14 runs on an idle 2-core
    #   machine: 11 runs q90 0.126, median 0.047, no step above 0.3, speed ratio 1.00; 3 runs (the
    #   read one emulator step early, matched to 0.011 by `sim.measure_at_s=0.010`) q90 0.206,
    #   median 0.095, 3 steps above 0.3 (the reversals), ratio 0.93.
    # - Now and then one read is a few ms late by the host's clock; at a reversal (~100 rad/s^2)
    #   that moves the velocity by up to ~1 rad/s while the position barely changes.
    # A real mismatch moves every moving step: the simulator reading one of its 2.5 ms steps late
    # (`measure_at_s` 0.014-0.016, read at 15 ms) gave q90 0.62-0.69, median 0.46-0.52, 30 steps
    # above 0.3, ratio 0.65-0.70; reading at the period's end (the old bug) q90 1.3, ratio 0.32.
    # The bounds sit between the two.
    # Position checks the calibration (zero tick, direction). At rest (the last steps) the two agree
    # to 1.0 mrad; while moving, the per-step worst joint is 1.3-2.3 mrad at the 75th percentile,
    # and a read that a stalled host (VM steal) sends late moves single steps by 6-17 mrad.
    step_position_error = position_error.max(axis=1)
    assert step_position_error[-3:].max() < 0.003, position_error[-3:]
    assert np.quantile(step_position_error, 0.75) < 0.006, step_position_error
    assert step_position_error.max() < 0.03, step_position_error
    late_steps = int((velocity_error.max(axis=1) > 0.3).sum())
    assert late_steps <= 6, velocity_error.max(axis=1)
    assert np.quantile(velocity_error, 0.9) < 0.35, np.quantile(velocity_error, 0.9)
    assert np.median(velocity_error) < 0.2, np.median(velocity_error)
    moving = speed > 0.5
    ratio = np.abs(sim[:, dof : 2 * dof])[moving].mean() / speed[moving].mean()
    assert 0.85 < ratio < 1.15, ratio  # 0.65-0.70 when one step late; ~0.3 while read at the period's end
