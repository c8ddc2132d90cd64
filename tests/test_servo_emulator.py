"""The servo emulator as a process: raw Protocol 2.0 over a real pty, with pyserial on the host side.

Start pose: servos power up at the robot's home pose (``spec.home_rad``) with torque off. With the
nominal profile unpowered joints are free, so the gravity-loaded ones (shoulder, elbow, wrist) sag
onto their limits within a few hundred ms; base_yaw (vertical axis) stays at home within a few
ticks (only the reaction torques of the falling links move it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from typing import Any

import pytest

serial = pytest.importorskip("serial")
pytest.importorskip("pybullet")

from drivers import protocol2 as p2  # noqa: E402
from drivers.calibration import Calibration, load_calibration  # noqa: E402
from drivers.control_table import STATE_BLOCK, X_SERIES, decode_block  # noqa: E402
from robot_sac.spec import load_robot_spec  # noqa: E402
from sim.emulator_process import DEFAULT_CALIBRATION, DEFAULT_ROBOT, REPO_ROOT, EmulatorProcess  # noqa: E402
from sim.emulator_record import goal_writes, parse_requests, record_entry  # noqa: E402

pytestmark = pytest.mark.usefixtures("realtime_host")  # the host loop runs like the deploy loop: SCHED_FIFO

IDS = (11, 12, 13, 14)
MODELS = {11: 1060, 12: 1020, 13: 1020, 14: 1060}
R = X_SERIES


class Wire:
    """The host side: pyserial on the pty, packets from drivers.protocol2."""

    def __init__(self, port: str) -> None:
        self.serial = serial.Serial(port, 1_000_000, timeout=0)
        self.parser = p2.PacketParser(256)

    def raw(self, packet: bytes, quiet_s: float = 0.03, limit_s: float = 0.5) -> bytes:
        """Send, then collect bytes until ``quiet_s`` passes without any."""
        self.serial.reset_input_buffer()
        self.serial.write(packet)
        out, last, start = b"", time.monotonic(), time.monotonic()
        while time.monotonic() - last < quiet_s and time.monotonic() - start < limit_s:
            chunk = self.serial.read(4096)
            if chunk:
                out, last = out + chunk, time.monotonic()
            else:
                time.sleep(0.0005)
        return out

    def transact(self, packet: bytes, replies: int = 1, timeout_s: float = 0.2) -> list[p2.StatusPacket]:
        """Send and return the first ``replies`` status packets (fewer on timeout)."""
        self.serial.reset_input_buffer()
        self.parser.reset()
        self.serial.write(packet)
        got: list[p2.Packet] = []
        deadline = time.monotonic() + timeout_s
        while len(got) < replies and time.monotonic() < deadline:
            got += self.parser.feed(self.serial.read(4096))
            time.sleep(0.0002)
        return [p2.StatusPacket.from_packet(p) for p in got]

    def read(self, servo_id: int, name: str) -> int:
        (status,) = self.transact(p2.read_packet(servo_id, R[name].address, R[name].size))
        return R[name].decode(status.data)

    def write(self, servo_id: int, name: str, value: int) -> int:
        (status,) = self.transact(p2.write_packet(servo_id, R[name].address, R[name].encode(value)))
        return status.error

    def state(self) -> dict[int, dict[str, int]]:
        statuses = self.transact(p2.sync_read_packet(IDS, *STATE_BLOCK), replies=len(IDS))
        assert [s.servo_id for s in statuses] == list(IDS)
        return {s.servo_id: decode_block(s.data) for s in statuses}

    def close(self) -> None:
        self.serial.close()


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return load_calibration(DEFAULT_CALIBRATION, load_robot_spec(DEFAULT_ROBOT))


def _running(faults: str = "", profile: str = "nominal") -> Iterator[tuple[EmulatorProcess, Wire]]:
    with EmulatorProcess(faults=faults, profile=profile) as emu:
        wire = Wire(emu.port)
        try:
            yield emu, wire
        finally:
            wire.close()


@pytest.fixture(scope="module")
def nominal() -> Iterator[tuple[EmulatorProcess, Wire]]:
    yield from _running()


# --- record format (in process) -----------------------------------------------------------------


def _entry(packet: bytes, t_s: float = 1.0) -> dict[str, Any]:
    (parsed,) = p2.PacketParser().feed(packet)
    requests = parse_requests(parsed.servo_id, parsed.instruction, parsed.params)
    assert requests is not None
    return {"t_s": t_s, **record_entry(parsed.instruction, requests)}


def test_record_entries_decode_values_per_the_control_table() -> None:
    sync = _entry(p2.sync_write_packet(116, 4, {11: R["goal_position"].encode(-5), 12: (2048).to_bytes(4, "little")}))
    assert sync == {"t_s": 1.0, "instruction": "SYNC_WRITE", "ids": [11, 12], "address": 116, "length": 4,
                    "values": {"11": -5, "12": 2048}}  # fmt: skip
    span = _entry(p2.write_packet(13, 112, (30).to_bytes(4, "little") + (1000).to_bytes(4, "little")), 2.0)
    assert span["values"] == {"13": "1e000000e8030000"}
    assert span["registers"] == {"13": {"profile_velocity": 30, "goal_position": 1000}}
    bulk_params = bytes([14]) + (116).to_bytes(2, "little") + (4).to_bytes(2, "little") + (777).to_bytes(4, "little")
    bulk = _entry(p2.encode_packet(p2.BROADCAST_ID, p2.Instruction.BULK_WRITE, bulk_params), 3.0)
    assert bulk["requests"] == {"14": {"address": 116, "length": 4, "value": 777}}
    everyone = _entry(p2.write_packet(p2.BROADCAST_ID, 116, (9).to_bytes(4, "little")), 4.0)
    reads = _entry(p2.sync_read_packet([11, 12], *STATE_BLOCK), 5.0)
    assert reads == {"t_s": 5.0, "instruction": "SYNC_READ", "ids": [11, 12], "address": 120, "length": 27}
    records = [sync, span, bulk, everyone, reads]
    assert goal_writes(records, 11) == [(1.0, -5), (4.0, 9)]
    assert goal_writes(records, 13) == [(2.0, 1000), (4.0, 9)]
    assert goal_writes(records, 14) == [(3.0, 777), (4.0, 9)]


# --- protocol and plant -------------------------------------------------------------------------


def test_ping_every_id_and_broadcast(nominal: tuple[EmulatorProcess, Wire]) -> None:
    _, wire = nominal
    for sid in IDS:
        (status,) = wire.transact(p2.ping_packet(sid))
        assert (status.servo_id, status.error) == (sid, 0)
        assert (int.from_bytes(status.data[:2], "little"), status.data[2]) == (MODELS[sid], 46)
    statuses = wire.transact(p2.ping_packet(p2.BROADCAST_ID), replies=4)
    assert [s.servo_id for s in statuses] == list(IDS)
    assert wire.raw(p2.ping_packet(1)) == b""  # unknown ID: no reply


def test_start_pose_is_home_with_torque_off(nominal: tuple[EmulatorProcess, Wire], calibration: Calibration) -> None:
    _, wire = nominal
    home = calibration.ticks_from_rad(calibration.spec.home_rad)
    lower = calibration.ticks_from_rad(calibration.spec.lower_rad)
    upper = calibration.ticks_from_rad(calibration.spec.upper_rad)
    for i, sid in enumerate(IDS):
        assert wire.read(sid, "torque_enable") == 0
        position = wire.read(sid, "present_position")
        assert lower[i] - 60 <= position <= upper[i] + 60  # sagged at most onto a limit
    assert abs(wire.read(11, "present_position") - home[0]) <= 5  # vertical axis: only reaction torques


def test_sync_read_state_block_and_realtime_tick(nominal: tuple[EmulatorProcess, Wire]) -> None:
    _, wire = nominal
    first = wire.state()
    time.sleep(0.1)
    second = wire.state()
    for sid in IDS:
        assert first[sid]["present_input_voltage"] == 120 and 20 <= first[sid]["present_temperature"] <= 30
        advanced_ms = (second[sid]["realtime_tick"] - first[sid]["realtime_tick"]) % 32768
        assert 80 <= advanced_ms <= 400


def test_errors_come_back_in_the_status(nominal: tuple[EmulatorProcess, Wire]) -> None:
    _, wire = nominal
    assert wire.write(12, "present_position", 5) == p2.StatusError.ACCESS
    assert wire.write(12, "goal_position", 5000) == p2.StatusError.DATA_LIMIT
    (status,) = wire.transact(p2.encode_packet(12, 0x77))
    assert status.error == p2.StatusError.INSTRUCTION
    (status,) = wire.transact(p2.read_packet(12, 140, 20))
    assert status.error == p2.StatusError.DATA_LENGTH


def test_goal_converges_and_the_record_holds_the_writes(
    nominal: tuple[EmulatorProcess, Wire],
    calibration: Calibration,
) -> None:
    emu, wire = nominal
    home = [int(t) for t in calibration.ticks_from_rad(calibration.spec.home_rad)]
    for sid in IDS:  # hold where the arm is, then enable torque
        assert wire.write(sid, "goal_position", wire.read(sid, "present_position")) == 0
        assert wire.write(sid, "torque_enable", 1) == 0
    sent_s = time.monotonic()
    goals = {sid: R["goal_position"].encode(h) for sid, h in zip(IDS, home, strict=True)}
    wire.serial.write(p2.sync_write_packet(116, 4, goals))
    while time.monotonic() - sent_s < 2.0:
        positions = [wire.state()[sid]["present_position"] for sid in IDS]
        if all(abs(p - h) <= 1 for p, h in zip(positions, home, strict=True)):
            break
        time.sleep(0.02)
    assert all(abs(p - h) <= 1 for p, h in zip(positions, home, strict=True)), (positions, home)
    for sid, goal in zip(IDS, home, strict=True):
        writes = emu.goal_writes(sid)
        assert writes[-1][1] == goal and sent_s - 0.5 < writes[-1][0] <= time.monotonic()
    sync = [r for r in emu.records() if r.get("instruction") == "SYNC_WRITE"]
    assert sync[-1]["ids"] == list(IDS) and sync[-1]["values"] == {str(s): g for s, g in zip(IDS, home, strict=True)}


def test_bus_watchdog_trips_over_the_wire(nominal: tuple[EmulatorProcess, Wire]) -> None:
    emu, wire = nominal
    assert wire.write(13, "torque_enable", 1) == 0
    assert wire.write(13, "bus_watchdog", 2) == 0  # 40 ms
    time.sleep(0.15)
    assert wire.read(13, "bus_watchdog") == -1
    assert wire.write(13, "goal_position", 2048) == p2.StatusError.DATA_RANGE
    assert any(r.get("event") == "watchdog_trip" and r["id"] == 13 for r in emu.records())
    assert wire.write(13, "bus_watchdog", 0) == 0


# --- faults, observed from the wire --------------------------------------------------------------


def test_silent_after_k_bad_crc_partial_garbage() -> None:
    for emu, wire in _running("silent:id=11,after=2; bad_crc:id=12; partial:id=13,bytes=7; garbage_prefix:id=14"):
        assert len(wire.transact(p2.ping_packet(11))) == 1
        assert len(wire.transact(p2.ping_packet(11))) == 1
        assert wire.raw(p2.ping_packet(11)) == b""  # the third packet: silent
        crc_errors = wire.parser.crc_errors
        assert wire.transact(p2.ping_packet(12), timeout_s=0.05) == []
        assert wire.parser.crc_errors == crc_errors + 1
        assert wire.raw(p2.ping_packet(13)) == p2.status_packet(13, 0, b"\xfc\x03\x2e")[:7]
        raw = wire.raw(p2.ping_packet(14))
        assert len(raw) > 14 and not raw.startswith(p2.HEADER)
        (status,) = wire.transact(p2.ping_packet(14))
        assert int.from_bytes(status.data[:2], "little") == 1060
        modes = [r["mode"] for r in emu.records() if r.get("event") == "fault"]
        assert {"silent", "bad_crc", "partial", "garbage_prefix"} <= set(modes)


def test_bogus_length_alert_freeze_drop_writes() -> None:
    faults = "bogus_length:id=11; alert:id=12,bits=0x20; freeze_tick:id=13; drop_writes:id=14,p=1"
    for _, wire in _running(faults):
        raw = wire.raw(p2.ping_packet(11))
        assert raw[:5] == p2.HEADER + b"\x0b" and raw[5:7] == b"\xff\xff"
        (status,) = wire.transact(p2.read_packet(12, 70, 1))
        assert status.alert and status.data == b"\x20"
        assert wire.read(12, "torque_enable") == 0
        block = p2.read_packet(13, *STATE_BLOCK)
        (first,) = wire.transact(block)
        time.sleep(0.06)
        (second,) = wire.transact(block)
        assert second.data == first.data  # tick and present values frozen
        before = wire.read(14, "goal_position")
        assert wire.write(14, "goal_position", before + 100) == 0
        assert wire.read(14, "goal_position") == before


def test_latency_and_reboot() -> None:
    for _, wire in _running("latency:id=11,ms=5; reboot:id=12,after=6"):
        assert wire.write(12, "torque_enable", 1) == 0  # packet 1
        time.sleep(0.5)
        tick_before = wire.read(12, "realtime_tick")  # 2
        delays = []
        for _ in range(3):  # 3, 4, 5
            start = time.perf_counter()
            assert len(wire.transact(p2.ping_packet(11))) == 1
            delays.append(time.perf_counter() - start)
        assert min(delays) >= 0.005
        assert len(wire.transact(p2.ping_packet(13))) == 1  # 6: the reboot fires after it
        assert wire.raw(p2.ping_packet(12), quiet_s=0.02, limit_s=0.05) == b""  # booting
        time.sleep(0.15)
        assert wire.read(12, "torque_enable") == 0
        assert wire.read(12, "realtime_tick") < min(tick_before, 400)


def test_unplug_raises_serial_exception() -> None:
    for emu, wire in _running("unplug:after=3"):
        for _ in range(3):
            assert len(wire.transact(p2.ping_packet(11))) == 1
        time.sleep(0.05)
        with pytest.raises(serial.SerialException):
            wire.serial.write(p2.ping_packet(11))
            for _ in range(20):
                wire.serial.read(64)
                time.sleep(0.005)
        assert any(r.get("mode") == "unplug" for r in emu.records())


# --- process lifecycle --------------------------------------------------------------------------


def _emulator_command() -> list[str]:
    return [sys.executable, "-m", "sim.servo_emulator", "--robot", str(DEFAULT_ROBOT), "--calibration",
            str(DEFAULT_CALIBRATION)]  # fmt: skip


def _gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(") ")[-1].startswith("Z"):
                    return True  # exited, waiting for a reaper
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def test_sigterm_exits_cleanly_with_one_stdout_line_reality_profile() -> None:
    emu = EmulatorProcess(profile="reality").start()
    try:
        wire = Wire(emu.port)
        goal = wire.read(11, "present_position") + 200
        assert wire.write(11, "goal_position", goal - 200) == 0 and wire.write(11, "torque_enable", 1) == 0
        assert wire.write(11, "goal_position", goal) == 0
        time.sleep(1.0)
        assert abs(wire.read(11, "present_position") - goal) <= 2  # backlash hidden, ±1 tick noise
        wire.close()
        assert emu.proc is not None and emu.proc.stdout is not None
        emu.proc.send_signal(signal.SIGTERM)
        assert emu.proc.wait(5) == 0
        assert emu.proc.stdout.read() == b""  # nothing after the PORT line, not even PyBullet's banner
        assert "stopping" in emu.log_tail()
    finally:
        emu.cleanup()


def test_exits_on_stdin_eof() -> None:
    proc = subprocess.Popen(_emulator_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith(b"PORT ")
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_exits_when_its_parent_dies() -> None:
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        child = subprocess.Popen({_emulator_command()!r}, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        assert child.stdout.readline().startswith(b"PORT ")
        print(child.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, cwd=REPO_ROOT)
    child_pid = 0
    try:
        assert parent.stdout is not None
        child_pid = int(parent.stdout.readline())
        assert not _gone(child_pid, 0.1)
        parent.kill()
        parent.wait()
        assert _gone(child_pid, 5.0)  # PR_SET_PDEATHSIG: stdin is not a pipe here
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child_pid and not _gone(child_pid, 0):
            os.kill(child_pid, signal.SIGKILL)
