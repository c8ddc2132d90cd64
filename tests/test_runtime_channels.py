"""The runtime's channels: latest-wins weights without torn reads, drop counting, heartbeats, the gate."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp

from robot_sac.normalization import ObservationNormalizer
from robot_sac.runtime.channels import Heartbeat, StepGate, StopFlag, TransitionChannel, TransitionChunk, WeightChannel

CTX = tmp.get_context("spawn")
TEMPLATE = {"w": torch.zeros(64, 64), "b": torch.zeros(64)}
DIM = 8


def _filled(value: float) -> tuple[dict[str, torch.Tensor], ObservationNormalizer]:
    """A publication whose every number is ``value`` (count too), so a torn mix is detectable."""
    norm = ObservationNormalizer(DIM)
    norm.stats.count = int(value)
    norm.stats.mean[:] = value
    norm.stats.m2[:] = value
    return {k: torch.full_like(v, value) for k, v in TEMPLATE.items()}, norm


def _hammer(channel: WeightChannel, start: Any, duration_s: float) -> None:
    """Publish versions 1, 2, ... for ``duration_s`` (a spawned writer): bursts of 16 back to back, 1 ms apart.

    A writer that never pauses starves a seqlock reader: publishing every ~20 µs, it let a reader
    copy 2 snapshots in 2 s (of 582,000 polls). The learner publishes between updates, ms apart;
    the bursts still overlap many reads with writes.
    """
    start.wait()
    version, end = 0, time.monotonic() + duration_s
    while time.monotonic() < end:
        version += 1
        policy, norm = _filled(float(version))
        channel.publish(version, policy, norm)
        if version % 16 == 0:
            time.sleep(0.001)


def _chunk(steps: int) -> TransitionChunk:
    n = steps
    return TransitionChunk(
        actor_id=0, stream_id=0, obs=np.zeros((n, 3)), action=np.zeros((n, 1), np.float32), reward=np.zeros(n),
        next_obs=np.zeros((n, 3)), terminated=np.zeros(n, bool), policy_version=np.zeros(n, np.int64),
        safety_clipped=np.zeros(n, bool), episode=np.zeros(n, np.int64), env_steps=steps,
    )  # fmt: skip


def test_weights_roundtrip_and_latest_wins() -> None:
    channel = WeightChannel(CTX, TEMPLATE, ObservationNormalizer(DIM))
    assert channel.version == -1 and channel.poll(-1) is None
    for version in (3, 7):
        channel.publish(version, *_filled(float(version)))
    snap = channel.poll(-1)
    assert snap is not None and snap.version == 7
    assert torch.equal(snap.policy["w"], torch.full((64, 64), 7.0))
    assert snap.normalizer is not None
    restored = ObservationNormalizer.from_arrays(snap.normalizer)
    assert restored.stats.count == 7 and np.all(restored.stats.mean == 7.0)
    assert channel.poll(7) is None  # nothing new


def test_weights_without_normalizer() -> None:
    channel = WeightChannel(CTX, TEMPLATE, None)
    channel.publish(1, _filled(1.0)[0], None)
    snap = channel.poll(-1)
    assert snap is not None and snap.normalizer is None


def test_non_finite_weights_are_rejected_and_old_kept() -> None:
    channel = WeightChannel(CTX, TEMPLATE, None)
    policy = _filled(2.0)[0]
    policy["b"][3] = float("nan")
    channel.publish(2, policy, None)
    assert channel.poll(1) is None and channel.rejected == 1


def test_no_torn_reads_while_another_process_publishes() -> None:
    """A spawned writer hammers versions; every snapshot read here is one publication."""
    channel = WeightChannel(CTX, TEMPLATE, ObservationNormalizer(DIM))
    start = CTX.Event()
    writer = CTX.Process(target=_hammer, args=(channel, start, 2.0), daemon=True)
    writer.start()
    try:
        start.set()
        last, reads, deadline = -1, 0, time.monotonic() + 8.0
        while (writer.is_alive() or reads == 0) and time.monotonic() < deadline:
            snap = channel.poll(last)
            if snap is None:
                continue
            v = float(snap.version)
            assert all(bool((t == v).all()) for t in snap.policy.values()), f"torn weights at version {v}"
            assert snap.normalizer is not None
            assert int(snap.normalizer["count"]) == snap.version
            assert np.all(snap.normalizer["mean"] == v) and np.all(snap.normalizer["m2"] == v)
            assert snap.version > last  # monotonic
            last, reads = snap.version, reads + 1
    finally:
        writer.join(5.0)
    assert writer.exitcode == 0
    assert reads >= 5  # a writer that never pauses starves a seqlock reader; the learner pauses


def test_transition_channel_drops_and_counts_when_full() -> None:
    channel = TransitionChannel(CTX, max_chunks=2, producers=1)
    started = time.perf_counter()
    sent = [channel.send(_chunk(10)) for _ in range(5)]
    assert time.perf_counter() - started < 0.5  # never blocks
    assert sent == [True, True, False, False, False]
    assert channel.dropped_chunks == 3 and channel.dropped_steps == 30
    got = [channel.receive(1.0) for _ in range(2)]
    assert all(c is not None and c.env_steps == 10 for c in got)
    assert channel.receive(0.05) is None


def test_heartbeat_ages() -> None:
    hb = Heartbeat(2)
    hb.beat(1)
    assert hb.age_s(1) < 0.1
    time.sleep(0.15)
    assert hb.age_s(1) >= 0.15
    hb.beat(1)
    assert hb.age_s(1) < 0.1


def test_step_gate_bounds_the_lead_and_wakes_waiters() -> None:
    gate = StepGate(CTX, 2, sent=100)
    assert not gate.wait_for_room(0, 0.05)  # nothing allowed yet
    gate.allow(110)
    assert gate.wait_for_room(9, 0.01)
    assert not gate.wait_for_room(10, 0.05)
    gate.add_sent(1, 10)
    assert gate.sent == 110 and not gate.wait_for_room(0, 0.01)
    gate.allow(105)  # never lowers the allowance
    assert not gate.wait_for_room(0, 0.01)
    gate.allow(111)
    assert gate.wait_for_room(0, 0.01)


@pytest.mark.parametrize("timeout_s", [0.3])
def test_step_gate_waiter_sleeps_until_allowed(timeout_s: float) -> None:
    gate = StepGate(CTX, 1)
    started = time.monotonic()
    assert not gate.wait_for_room(0, timeout_s)
    waited = time.monotonic() - started
    assert timeout_s * 0.9 <= waited < timeout_s + 0.5


def _wait_on_gate(gate: StepGate, result: Any) -> None:
    started = time.monotonic()
    woke = gate.wait_for_room(0, 10.0)
    result.value = time.monotonic() - started if woke else -1.0


def test_step_gate_wakes_a_waiting_process_and_survives_a_killed_waiter() -> None:
    gate = StepGate(CTX, 2)
    result = CTX.Value("d", 0.0)
    victim = CTX.Process(target=_wait_on_gate, args=(gate, CTX.Value("d", 0.0)), daemon=True)
    waiter = CTX.Process(target=_wait_on_gate, args=(gate, result), daemon=True)
    victim.start()
    waiter.start()
    time.sleep(3.0)  # both asleep on the gate (spawn takes ~1-2 s)
    victim.kill()
    victim.join(5.0)
    started = time.monotonic()
    gate.allow(1)  # must not wait for the dead sleeper (a multiprocessing.Condition would)
    assert time.monotonic() - started < 0.5
    waiter.join(5.0)
    assert 0.0 < result.value < 9.0  # woken by allow, not by its 10 s timeout


def test_stop_flag() -> None:
    flag = StopFlag()
    assert not flag.is_set()
    flag.set()
    assert flag.is_set()
