"""The serial backend's Realtime_Tick check on its own (SAFETY.md rows 16 and 6), without a bus.

A servo samples its millisecond tick somewhere between the host's request and its reply. The check
bounds the time between two samples from both sides; these cases pin that a host preempted between
its timestamp and its bytes (seen on a busy VM: "advanced 20 ms in 35.2 ms") is not taken for a
stale servo, while a frozen or lagging tick and a rebooted one still are.
"""

from __future__ import annotations

import numpy as np
import pytest

from drivers.calibration import load_calibration
from drivers.serial_backend import SerialBackend
from robot_sac.configs import SerialConfig
from robot_sac.errors import DeviceReset, StaleObservation
from robot_sac.spec import load_robot_spec
from tests.conftest import ARM4_YAML


@pytest.fixture
def backend() -> SerialBackend:
    spec = load_robot_spec(ARM4_YAML)
    config = SerialConfig(port="loop://")
    return SerialBackend(spec, config, load_calibration(config.calibration_path(), spec))


def _ticks(ms: int) -> np.ndarray:
    return np.full(4, ms, dtype=np.int64)


def test_a_steady_tick_passes(backend: SerialBackend) -> None:
    backend._check_tick(_ticks(1000), 10.000, 10.001)
    backend._check_tick(_ticks(1020), 10.020, 10.021)
    backend._check_tick(_ticks(1040), 10.040, 10.041)


def test_a_host_stalled_after_its_timestamp_is_not_a_stale_servo(backend: SerialBackend) -> None:
    # Request stamped at 10.000 s, bytes sent (and the tick sampled) 15 ms later, reply at 10.016 s.
    backend._check_tick(_ticks(1015), 10.000, 10.016)
    # The next read is on time: 20 ms of tick in 35 ms since the stale stamp, 19 ms since the reply.
    backend._check_tick(_ticks(1035), 10.035, 10.036)


def test_a_frozen_tick_is_stale(backend: SerialBackend) -> None:
    backend._check_tick(_ticks(1000), 10.000, 10.001)
    with pytest.raises(StaleObservation, match="advanced"):
        backend._check_tick(_ticks(1000), 10.020, 10.021)


def test_a_tick_falling_behind_by_most_of_a_period_is_stale(backend: SerialBackend) -> None:
    backend._check_tick(_ticks(1000), 10.000, 10.001)
    lagging = _ticks(1020)
    lagging[2] = 1008  # one servo: 8 ms of tick in at least 19 ms
    with pytest.raises(StaleObservation, match=r"servos \[13\]"):
        backend._check_tick(lagging, 10.020, 10.021)


def test_a_tick_that_jumped_past_the_longest_possible_gap_is_a_reboot(backend: SerialBackend) -> None:
    backend._check_tick(_ticks(30_000), 10.000, 10.001)
    with pytest.raises(DeviceReset):
        backend._check_tick(_ticks(5), 10.020, 10.021)  # restarted near zero: a wrapped advance of ~2.8 s
