"""Conformance: the official ROBOTIS DynamixelSDK talks to the emulator and agrees with our own protocol module.

SAFETY.md D.3: run DynamixelSDK itself against the emulator to prove its protocol is right before
trusting it as a test fixture. The SDK is a test-only dependency (``pip install dynamixel-sdk==4.1.0``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

sdk = pytest.importorskip("dynamixel_sdk")
pytest.importorskip("pybullet")

from drivers import protocol2 as p2  # noqa: E402
from drivers.control_table import X_SERIES  # noqa: E402
from sim.emulator_process import EmulatorProcess  # noqa: E402
from tests.test_servo_emulator import IDS, MODELS, Wire  # noqa: E402

pytestmark = pytest.mark.usefixtures("realtime_host")  # the host loop runs like the deploy loop: SCHED_FIFO

POSITION = X_SERIES["present_position"]


@pytest.fixture(scope="module")
def held_arm() -> Iterator[tuple[EmulatorProcess, Wire]]:
    """A nominal emulator whose servos hold still with torque on (present positions constant)."""
    with EmulatorProcess() as emu:
        wire = Wire(emu.port)
        try:
            for sid in IDS:
                assert wire.write(sid, "goal_position", wire.read(sid, "present_position")) == 0
                assert wire.write(sid, "torque_enable", 1) == 0
            time.sleep(0.5)  # let the arm settle under the servos
            yield emu, wire
        finally:
            wire.close()


SDK_LATENCY_TIMER_MS = 100
"""The SDK's reply window is ``2 x LATENCY_TIMER + 2`` ms, sized for a USB adapter's 16 ms latency
timer (34 ms). A pty on a loaded 2-core machine has missed that in CI (COMM_RX_TIMEOUT); these tests
check bytes, not timing (our driver's deadlines are tested with our driver), so widen it to 202 ms."""


@pytest.fixture
def sdk_port(held_arm: tuple[EmulatorProcess, Wire], monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    emu, _ = held_arm
    monkeypatch.setattr(sdk.port_handler, "LATENCY_TIMER", SDK_LATENCY_TIMER_MS)
    port = sdk.PortHandler(emu.port)
    assert port.openPort() and port.setBaudRate(1_000_000)
    try:
        yield port, sdk.PacketHandler(2.0)
    finally:
        port.closePort()


def _our_positions(wire: Wire) -> dict[int, int]:
    return {sid: wire.read(sid, "present_position") for sid in IDS}


def test_sdk_pings_and_reads_model_numbers(sdk_port: tuple[Any, Any]) -> None:
    port, handler = sdk_port
    for sid in IDS:
        model, result, error = handler.ping(port, sid)
        assert (result, error, model) == (sdk.COMM_SUCCESS, 0, MODELS[sid])
        value, result, error = handler.read2ByteTxRx(port, sid, X_SERIES["model_number"].address)
        assert (result, error, value) == (sdk.COMM_SUCCESS, 0, MODELS[sid])


def test_sdk_read4_equals_a_raw_read(held_arm: tuple[EmulatorProcess, Wire], sdk_port: tuple[Any, Any]) -> None:
    _, wire = held_arm
    port, handler = sdk_port
    ours_before = _our_positions(wire)
    theirs = {}
    for sid in IDS:
        value, result, error = handler.read4ByteTxRx(port, sid, POSITION.address)
        assert (result, error) == (sdk.COMM_SUCCESS, 0)
        theirs[sid] = POSITION.decode(value.to_bytes(4, "little"))  # the SDK returns it unsigned
    assert theirs == ours_before == _our_positions(wire)


def test_sdk_group_sync_read_equals_our_sync_read(
    held_arm: tuple[EmulatorProcess, Wire], sdk_port: tuple[Any, Any]
) -> None:
    _, wire = held_arm
    port, handler = sdk_port
    group = sdk.GroupSyncRead(port, handler, POSITION.address, POSITION.size)
    for sid in IDS:
        assert group.addParam(sid)
    assert group.txRxPacket() == sdk.COMM_SUCCESS
    theirs = {sid: group.getData(sid, POSITION.address, POSITION.size) for sid in IDS}
    assert all(group.isAvailable(sid, POSITION.address, POSITION.size) for sid in IDS)
    statuses = wire.transact(p2.sync_read_packet(IDS, POSITION.address, POSITION.size), replies=len(IDS))
    ours = {s.servo_id: POSITION.decode(s.data) for s in statuses}
    assert theirs == ours


def test_our_servo_bus_reads_what_the_sdk_reads(
    held_arm: tuple[EmulatorProcess, Wire], sdk_port: tuple[Any, Any]
) -> None:
    from drivers.bus import ServoBus
    from drivers.transport import SerialTransport

    emu, _ = held_arm
    port, handler = sdk_port
    transport = SerialTransport(emu.port, 1_000_000)
    try:
        bus = ServoBus(transport, transaction_timeout_s=0.05)
        group = sdk.GroupSyncRead(port, handler, POSITION.address, POSITION.size)
        for sid in IDS:
            assert group.addParam(sid)
        assert group.txRxPacket() == sdk.COMM_SUCCESS
        theirs = {sid: group.getData(sid, POSITION.address, POSITION.size) for sid in IDS}
        ours = {sid: POSITION.decode(data) for sid, data in bus.sync_read(IDS, POSITION.address, POSITION.size).items()}
        assert ours == theirs
        for sid in IDS:
            model, result, _ = handler.ping(port, sid)
            assert result == sdk.COMM_SUCCESS and bus.ping(sid)[0] == model
    finally:
        transport.close()
