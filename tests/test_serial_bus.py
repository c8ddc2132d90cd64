"""ServoBus against an in-process fake bus (one layer: packets in, status bytes out, a fake clock).

The emulator process tests (test_serial_backend_faults.py) cover the same faults over a real pty.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from drivers import protocol2 as p2
from drivers.bus import ServoBus
from drivers.control_table import X_SERIES
from robot_sac.errors import CommCorrupt, CommTimeout, ServoCommandRejected, ServoHardwareError

Responder = Callable[[p2.Packet], bytes]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeTransport:
    """Answers each instruction with ``responder(packet)``; an empty answer lets the read time out."""

    def __init__(self, clock: FakeClock, responder: Responder, reply_delay_s: float = 0.0005) -> None:
        self.clock, self.responder, self.reply_delay_s = clock, responder, reply_delay_s
        self.sent: list[p2.Packet] = []
        self._pending = b""
        self.flushes = 0
        self.chunk_bytes: int | None = None
        """Deliver at most this many bytes per read (a real line: frames arrive one by one)."""

    def write(self, data: bytes) -> None:
        (packet,) = p2.PacketParser().feed(data)
        self.sent.append(packet)
        self._pending += self.responder(packet)

    def read(self, max_bytes: int, deadline_s: float) -> bytes:
        if not self._pending:
            self.clock.t = max(self.clock.t, deadline_s)  # silence: the read waits out its deadline
            return b""
        self.clock.t += self.reply_delay_s
        size = max_bytes if self.chunk_bytes is None else min(max_bytes, self.chunk_bytes)
        data, self._pending = self._pending[:size], self._pending[size:]
        return data

    def flush_input(self) -> None:
        self.flushes += 1
        self._pending = b""

    def close(self) -> None:
        pass


def servo_bus(responder: Responder, budget_s: float = 0.008) -> tuple[ServoBus, FakeTransport, FakeClock]:
    clock = FakeClock()
    transport = FakeTransport(clock, responder)
    return ServoBus(transport, budget_s, clock=clock, latency_allowance_s=budget_s), transport, clock


def healthy(packet: p2.Packet) -> bytes:
    """Servos 1-3 with present position = 1000 + id; ping gives an XM430-W350."""
    if packet.instruction == p2.Instruction.PING:
        return p2.status_packet(packet.servo_id, 0, (1020).to_bytes(2, "little") + bytes([46]))
    if packet.instruction == p2.Instruction.READ:
        length = int.from_bytes(packet.params[2:4], "little")
        return p2.status_packet(packet.servo_id, 0, (1000 + packet.servo_id).to_bytes(length, "little"))
    if packet.instruction == p2.Instruction.SYNC_READ:
        length = int.from_bytes(packet.params[2:4], "little")
        return b"".join(p2.status_packet(i, 0, (1000 + i).to_bytes(length, "little")) for i in packet.params[4:])
    if packet.instruction == p2.Instruction.WRITE:
        return p2.status_packet(packet.servo_id, 0)
    return b""


def test_ping_read_write_and_sync_read() -> None:
    bus, transport, _ = servo_bus(healthy)
    assert bus.ping(1) == (1020, 46)
    assert bus.read_register(2, "present_position") == 1002
    bus.write_register(3, "goal_position", 2048)
    assert bus.sync_read([1, 2, 3], 132, 4) == {i: (1000 + i).to_bytes(4, "little") for i in (1, 2, 3)}
    assert transport.flushes == 4  # stale input is discarded before every request
    assert bus.health.transactions == 4 and bus.health.success_rate == 1.0


def test_sync_write_sends_one_packet_without_waiting() -> None:
    bus, transport, _ = servo_bus(healthy)
    bus.sync_write(X_SERIES["goal_position"], {1: 100, 2: 200})
    assert transport.sent[-1].instruction == p2.Instruction.SYNC_WRITE
    assert bus.health.writes_without_reply == 1


def test_a_silent_servo_is_a_timeout_naming_it_within_the_budget() -> None:
    def servo_2_silent(packet: p2.Packet) -> bytes:
        reply = healthy(packet)
        frames = p2.PacketParser().feed(reply)
        return b"".join(p2.encode_packet(f.servo_id, f.instruction, f.params) for f in frames if f.servo_id != 2)

    bus, _, clock = servo_bus(servo_2_silent)
    start = clock.t
    with pytest.raises(CommTimeout, match=r"\[2\]") as err:
        bus.sync_read([1, 2, 3], 132, 4, deadline_s=start + 0.008)  # a control cycle's budget
    assert err.value.servo_ids == (2,) and bus.health.late_replies == 0  # servo 3 after a silent 2 is not late
    assert clock.t - start == pytest.approx(0.008, abs=1e-3)  # the deadline holds, no retry fits
    assert bus.health.timeouts_by_id == {2: 1}


def test_a_retry_drops_the_late_replies_of_the_attempt_it_retries() -> None:
    # The first sync read gets servo 1 only; servos 2 and 3 answer it late, after the retry was
    # sent (the retry's flush came too early for them). Taking those would mix stale data in.
    attempts: list[int] = []

    def late_then_fresh(packet: p2.Packet) -> bytes:
        attempts.append(1)
        if len(attempts) == 1:
            return p2.status_packet(1, 0, (1001).to_bytes(4, "little"))
        old = b"".join(p2.status_packet(i, 0, (9000 + i).to_bytes(4, "little")) for i in (2, 3))
        return old + healthy(packet)

    bus, transport, clock = servo_bus(late_then_fresh)
    transport.chunk_bytes = 15  # one status frame with 4 data bytes per read
    got = bus.sync_read([1, 2, 3], 132, 4, deadline_s=clock.t + 0.02)
    assert got == {i: (1000 + i).to_bytes(4, "little") for i in (1, 2, 3)}
    assert bus.health.retries == 1 and bus.health.late_replies == 2


def test_untimed_requests_retry_after_a_quiet_time() -> None:
    bus, _, clock = servo_bus(lambda p: b"")
    start = clock.t
    with pytest.raises(CommTimeout):
        bus.read_register(1, "present_position")  # setup-time request: no cycle deadline
    # no cycle waits on it: it retries, with a quiet time after each attempt, for 100 ms in all
    assert bus.health.retries >= 2 and bus.health.failures == bus.health.retries + 1
    assert 0.09 <= clock.t - start <= 0.1 + 1e-9


def test_retries_only_while_the_deadline_leaves_room_for_one() -> None:
    calls = []

    def silent_once(packet: p2.Packet) -> bytes:
        calls.append(packet)
        return b"" if len(calls) == 1 else healthy(packet)

    bus, _, clock = servo_bus(silent_once)
    assert bus.read_register(1, "present_position", deadline_s=clock.t + 0.02) == 1001
    assert bus.health.retries == 1 and bus.health.failures == 1

    calls.clear()
    bus2, _, clock2 = servo_bus(lambda p: b"")
    with pytest.raises(CommTimeout):
        bus2.read_register(1, "present_position", deadline_s=clock2.t + 0.02)
    assert bus2.health.retries == 2  # attempts end at 8, 16 and (cut by the deadline) 20 ms
    assert clock2.t <= 100.0 + 0.02 + 1e-9


def test_corrupt_crc_is_comm_corrupt() -> None:
    def bad_crc(packet: p2.Packet) -> bytes:
        reply = bytearray(healthy(packet))
        reply[-1] ^= 0xFF
        return bytes(reply)

    bus, _, _ = servo_bus(bad_crc)
    with pytest.raises(CommCorrupt, match="CRC errors 1"):
        bus.read_register(1, "present_position")
    # outside a cycle: retries (each after a quiet time) until the budget of 3 attempts runs out
    assert bus.health.crc_errors == bus.health.retries + 1 >= 2


def test_partial_frame_is_comm_corrupt_and_garbage_prefix_still_parses() -> None:
    bus, _, _ = servo_bus(lambda p: healthy(p)[:7])
    with pytest.raises(CommCorrupt, match="unfinished frame"):
        bus.read_register(1, "present_position")
    assert bus.health.partial_frames == bus.health.failures >= 2  # every attempt within the untimed window
    bus2, _, _ = servo_bus(lambda p: b"\x00\xff\x13\xff\xff" + healthy(p))
    assert bus2.read_register(1, "present_position") == 1001


def test_bogus_length_does_not_block_past_the_budget() -> None:
    def bogus(packet: p2.Packet) -> bytes:
        return p2.HEADER + bytes([packet.servo_id, 0xFF, 0xFF, 0x55, 0x00])

    bus, _, clock = servo_bus(bogus)
    start = clock.t
    with pytest.raises(CommCorrupt):
        bus.read_register(1, "present_position", deadline_s=start + 0.008)
    assert clock.t - start <= 0.008 + 1e-9


def test_an_error_number_is_a_rejected_command() -> None:
    def range_error(packet: p2.Packet) -> bytes:
        return p2.status_packet(packet.servo_id, int(p2.StatusError.DATA_LIMIT))

    bus, _, _ = servo_bus(range_error)
    with pytest.raises(ServoCommandRejected, match="DATA_LIMIT"):
        bus.write_register(1, "goal_position", 5000)


def test_alert_bit_reads_hardware_error_status_and_raises() -> None:
    def overloaded(packet: p2.Packet) -> bytes:
        if packet.instruction == p2.Instruction.READ and packet.params[:2] == (70).to_bytes(2, "little"):
            return p2.status_packet(packet.servo_id, p2.ALERT_BIT, bytes([0x20]))
        reply = p2.PacketParser().feed(healthy(packet))[0]
        return p2.status_packet(reply.servo_id, p2.ALERT_BIT, reply.params[1:])

    bus, transport, _ = servo_bus(overloaded)
    with pytest.raises(ServoHardwareError, match="overload") as err:
        bus.read_register(2, "present_position")
    assert err.value.servo_id == 2 and err.value.status_bits == 0x20
    assert transport.sent[-1].instruction == p2.Instruction.READ and transport.sent[-1].params[:2] == b"\x46\x00"


def test_a_reply_that_needs_byte_stuffing_passes_the_length_guard() -> None:
    payload = bytes([0xFF, 0xFF, 0xFF, 0xFF, 0xFD, 0x07, 0x00, 0x00])  # velocity -1, position 0x7FD

    def stuffed(packet: p2.Packet) -> bytes:
        return p2.status_packet(packet.servo_id, 0, payload)

    bus, _, _ = servo_bus(stuffed)
    assert p2.status_packet(1, 0, payload).count(b"\xff\xff\xfd\xfd") == 1  # the reply is stuffed on the wire
    assert bus.read(1, 128, 8) == payload
