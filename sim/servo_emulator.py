"""A Dynamixel X-series bus emulator on a pseudo-terminal: real Protocol 2.0 bytes, a PyBullet arm behind them.

Run ``python -m sim.servo_emulator --robot configs/robots/arm4.yaml --calibration configs/calibration/arm4.json``;
it prints one line ``PORT /dev/pts/N`` on stdout when it is ready, and a host opens that path like a
USB adapter (pyserial, DynamixelSDK). One servo per calibrated joint answers at its ID.

Protocol (ROBOTIS e-manual, Protocol 2.0): PING, READ, WRITE, REBOOT, SYNC_READ, SYNC_WRITE,
BULK_READ and BULK_WRITE; other instructions get an INSTRUCTION error. Packets to unknown IDs are
ignored; broadcast WRITE/REBOOT and every SYNC_WRITE/BULK_WRITE get no reply; Status Return Level
0 answers only PING, 1 also READs. A servo that has been "sent" a request answers after its Return
Delay Time (2 µs units) plus the transmission time of its status packet (10 bits a byte at
``--baud``); the servos of a SYNC_READ answer one after another in the listed order, as on a real bus.
(The instruction's own transmission time is not added: the pty delivers it at once.) A servo
that sees no instruction for its Bus Watchdog time stops (`sim.servo_registers`).

Everything runs on one thread: a select() loop that reads the pty, writes scheduled replies on
time and steps the physics on its 400 Hz deadline. No locks, no GIL contention.

The record (``--record PATH``, JSON lines, format in `sim.emulator_record`) holds every received
instruction and every fault, watchdog trip and hardware error, stamped with ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import heapq
import json
import logging
import os
import select
import signal
import stat
import sys
import time
import tty
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from drivers import protocol2 as p2
from drivers.calibration import Calibration, load_calibration
from drivers.control_table import X_SERIES
from robot_sac.configs import REPO_CONFIG_DIR
from robot_sac.errors import ConfigError
from robot_sac.gc_pauses import freeze_heap
from robot_sac.realtime import request_realtime
from robot_sac.spec import load_robot_spec
from sim.emulator_faults import FaultEvent, FaultInjector, FaultMode, FaultRule, parse_faults
from sim.emulator_record import instruction_name, parse_requests, record_entry
from sim.servo_plant import EmulatorProfile, ServoPlant, load_profile
from sim.servo_registers import BAUD_RATE_CODES, ServoRegisters

log = logging.getLogger("sim.servo_emulator")

_I = p2.Instruction
_TICK_WRAP = 32768
"""Realtime_Tick counts milliseconds from 0 to 32767 and wraps (e-manual)."""
_MULTI = (_I.SYNC_READ, _I.SYNC_WRITE, _I.BULK_READ, _I.BULK_WRITE)
_PR_SET_PDEATHSIG = 1
_UNPLUG_DRAIN_S = 0.02


def _answers(level: int, inst: int, *, broadcast: bool) -> bool:
    """Whether a servo with Status Return Level ``level`` replies (e-manual Protocol 2.0, "Status Packet")."""
    if inst in (_I.SYNC_WRITE, _I.BULK_WRITE):
        return False
    if inst == _I.PING:
        return True
    if broadcast and inst not in (_I.SYNC_READ, _I.BULK_READ):
        return False
    return level >= (1 if inst in (_I.READ, _I.SYNC_READ, _I.BULK_READ) else 2)


class ServoEmulator:
    """The emulated bus: servos, physics, faults, the pty and the record.

    Args:
        calibration: one servo per joint (ID, model), in the spec's joint order.
        profile: the plant's departures from the URDF.
        faults: parsed fault rules.
        seed: seeds encoder noise and fault probabilities (independent streams).
        baud: the emulated bus speed in bit/s (reply timing and register 8).
        record: a text file for the JSON-lines record, or None.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        calibration: Calibration,
        profile: EmulatorProfile,
        *,
        faults: tuple[FaultRule, ...] = (),
        seed: int = 0,
        baud: int = 1_000_000,
        record: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        noise_seed, fault_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
        self.servos = [ServoRegisters(j.servo_id, j.model, baud_rate=baud, clock=clock) for j in calibration.joints]
        self.plant = ServoPlant(calibration.spec, calibration, self.servos, profile, seed=noise_seed, clock=clock)
        self.faults = FaultInjector(faults, fault_seed, clock)
        self.baud = baud
        self._clock = clock
        self._record = record
        self._parser = p2.PacketParser()
        self._outbox: list[tuple[float, int, bytes | None]] = []  # (due, seq, bytes); None = unplug
        self._stdin_buffer = b""
        self._seq = 0
        self._bus_free_s = 0.0
        self._has_freeze = any(r.mode is FaultMode.FREEZE_TICK for r in faults)
        self._hw_errors = [0] * len(self.servos)
        self._unplugging = False
        self.master_fd: int | None = None
        self._slave_fd: int | None = None
        self.port = ""

    # --- lifecycle ---------------------------------------------------------------------------------

    def open(self) -> str:
        """Start the physics and open the pty; returns the slave path a host opens."""
        self.plant.connect()
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no line discipline: bytes pass untouched
        os.set_blocking(master, False)
        # Holding the slave open keeps the master from reading EIO while no host has the port open.
        self.master_fd, self._slave_fd, self.port = master, slave, os.ttyname(slave)
        return self.port

    def close(self) -> None:
        """Close the pty and the physics. Idempotent."""
        self._unplug(record=False)
        self.plant.close()

    def _unplug(self, *, record: bool = True) -> None:
        if record and self.master_fd is not None:
            self._log({"event": "fault", "mode": "unplug", "id": None})
        for fd in (self.master_fd, self._slave_fd):
            if fd is not None:
                os.close(fd)
        self.master_fd = self._slave_fd = None

    def serve(self, should_stop: Callable[[], bool], watch_fd: int | None = None) -> None:
        """Run until ``should_stop()`` or EOF on ``watch_fd`` (the parent's stdin pipe)."""
        while not should_stop():
            now = self._clock()
            timeout = min(self.plant.due_in_s(), self._outbox[0][0] - now if self._outbox else 0.05, 0.05)
            fds = [fd for fd in (self.master_fd, watch_fd) if fd is not None]
            readable, _, _ = select.select(fds, [], [], max(timeout, 0.0))
            if self.master_fd is not None and self.master_fd in readable:
                with contextlib.suppress(BlockingIOError):
                    self.receive(os.read(self.master_fd, 4096))
            if watch_fd is not None and watch_fd in readable:
                command = os.read(watch_fd, 4096)
                if not command:
                    log.info("stdin closed: the parent is gone, exiting")
                    return
                self._commands(command)
            self._flush()
            if self.plant.run_due():
                self._after_physics()

    def _commands(self, data: bytes) -> None:
        """Lines from the parent's stdin pipe: ``fault <spec>`` adds fault rules starting now."""
        self._stdin_buffer += data
        *lines, rest = self._stdin_buffer.split(b"\n")
        self._stdin_buffer = rest
        for line in lines:
            verb, _, argument = line.decode(errors="replace").strip().partition(" ")
            if verb == "fault":
                try:
                    rules = parse_faults(argument)
                except ConfigError as err:
                    log.error("ignored bad fault command %r: %s", argument, err)
                    continue
                self.faults.add(rules)
                self._has_freeze = any(r.mode is FaultMode.FREEZE_TICK for r in self.faults.rules)
                self._log({"event": "inject", "rule": argument})
                self._fire(self.faults.due_events())
            elif verb:
                log.error("unknown command %r on stdin (known: fault <spec>)", verb)

    # --- wire ----------------------------------------------------------------------------------------

    def receive(self, data: bytes) -> None:
        """Bytes from the host: handle every complete instruction packet."""
        if self._unplugging:
            return
        for packet in self._parser.feed(data):
            if packet.instruction == _I.STATUS:
                continue  # not an instruction (an echo or another master's traffic)
            self._handle(packet)
            self.faults.count_packet()
            self._fire(self.faults.due_events())

    def _flush(self) -> None:
        now = self._clock()
        while self._outbox and self._outbox[0][0] <= now:
            _, _, data = heapq.heappop(self._outbox)
            if data is None:
                self._unplug()
            elif self.master_fd is not None:
                try:
                    os.write(self.master_fd, data)
                except BlockingIOError:
                    log.warning("pty output full (is a host reading?): dropped %d bytes", len(data))

    def _push(self, due_s: float, data: bytes | None) -> None:
        self._seq += 1
        heapq.heappush(self._outbox, (due_s, self._seq, data))

    def _reply(self, replies: list[tuple[ServoRegisters, int, bytes]]) -> None:
        """Schedule status packets one after another: return delay + transmission time each."""
        t = max(self._clock(), self._bus_free_s)
        for servo, error, data in replies:
            packet = p2.status_packet(servo.servo_id, servo.status_error(error), data)
            shaped, extra_s, events = self.faults.shape_reply(servo.servo_id, packet)
            for event in events:
                self._log(event.as_record())
            t += servo.get("return_delay_time") * 2e-6 + extra_s
            if shaped is not None:
                t += len(shaped) * 10 / self.baud
                self._push(t, shaped)
        self._bus_free_s = t

    # --- instructions --------------------------------------------------------------------------------

    def _targets(self, servo_id: int) -> list[ServoRegisters]:
        """The awake servos an ID addresses: all of them (in ID order) for broadcast, else 0 or 1."""
        awake = sorted((s for s in self.servos if not s.booting), key=lambda s: s.servo_id)
        return awake if servo_id == p2.BROADCAST_ID else [s for s in awake if s.servo_id == servo_id]

    def _handle(self, packet: p2.Packet) -> None:
        sid, inst = packet.servo_id, packet.instruction
        requests = parse_requests(sid, inst, packet.params)
        if requests is None:  # malformed parameters: a unicast READ/WRITE gets DATA_LENGTH
            self._log({"instruction": instruction_name(inst), "ids": [sid], "malformed": packet.params.hex()})
            if inst in (_I.READ, _I.WRITE):
                self._reply(
                    [(s, p2.StatusError.DATA_LENGTH, b"") for s in self._targets(sid) if sid != p2.BROADCAST_ID]
                )
            return
        self._log(record_entry(inst, requests))
        if inst in _MULTI and sid != p2.BROADCAST_ID:
            return  # sync and bulk instructions are always broadcast
        replies: list[tuple[ServoRegisters, int, bytes]] = []
        for target, address, length, data in requests:
            for servo in self._targets(target):
                servo.feed_watchdog()
                error, value = self._execute(servo, inst, address, length, data)
                if _answers(servo.get("status_return_level"), inst, broadcast=target == p2.BROADCAST_ID):
                    replies.append((servo, error, value))
        self._reply(replies)

    def _execute(self, servo: ServoRegisters, inst: int, address: int, length: int, data: bytes) -> tuple[int, bytes]:
        """Run one instruction on one servo; returns (error number, reply data)."""
        if inst == _I.PING:
            return p2.StatusError.NONE, servo.read(0, 2)[1] + servo.read(6, 1)[1]  # model number, firmware
        if inst in (_I.READ, _I.SYNC_READ, _I.BULK_READ):
            tick = X_SERIES["realtime_tick"]
            index = self.servos.index(servo)
            freeze = self.faults.freeze_event(servo.servo_id) if self._has_freeze else None
            self.plant.frozen[index] = freeze is not None  # from the rule's start, not the next physics step
            if address <= tick.address < address + length:
                if freeze is not None:
                    self._log(freeze.as_record())  # a reply carries the frozen tick: the fault is on the wire
                else:
                    # The tick is a live hardware counter on a real servo, not a value sampled at the last
                    # physics step: refresh it as the servo answers.
                    servo.set("realtime_tick", int((self._clock() - servo.tick_origin_s) * 1000.0) % _TICK_WRAP)
            return servo.read(address, length)
        if inst in (_I.WRITE, _I.SYNC_WRITE, _I.BULK_WRITE):
            return self._write(servo, address, data), b""
        if inst == _I.REBOOT:
            servo.reboot()
            return p2.StatusError.NONE, b""
        return p2.StatusError.INSTRUCTION, b""

    def _write(self, servo: ServoRegisters, address: int, data: bytes) -> int:
        event = self.faults.drop_write(servo.servo_id)
        if event is not None:
            self._log(event.as_record())
            return p2.StatusError.NONE
        return servo.write(address, data)

    # --- time-driven events ------------------------------------------------------------------------

    def _after_physics(self) -> None:
        for index, servo in enumerate(self.servos):
            if servo.poll_watchdog():
                self._log({"event": "watchdog_trip", "id": servo.servo_id})
            bits = servo.get("hardware_error_status")
            if bits != self._hw_errors[index]:
                self._hw_errors[index] = bits
                self._log({"event": "hardware_error", "id": servo.servo_id, "bits": bits})
            if self._has_freeze:
                self.plant.frozen[index] = self.faults.frozen(servo.servo_id)
        self._fire(self.faults.due_events())

    def _fire(self, rules: list[FaultRule]) -> None:
        for rule in rules:
            if rule.mode is FaultMode.UNPLUG:
                # The cable is out now (later packets are lost), but the replies already on their way get
                # time to be read: closing the master flushes the slave's input queue.
                self._unplugging = True
                self._push(max(self._clock(), self._bus_free_s) + _UNPLUG_DRAIN_S, None)
                continue
            for servo in self.servos:
                if rule.targets(servo.servo_id):
                    self._log(FaultEvent(rule.mode, servo.servo_id, rule.token).as_record())
                    if rule.mode is FaultMode.ALERT:
                        servo.raise_hardware_error(rule.bits)
                    else:
                        servo.reboot()

    def _log(self, entry: dict[str, Any]) -> None:
        if entry.get("event"):
            log.info("%s", entry)
        if self._record is not None:
            self._record.write(json.dumps({"t_s": self._clock(), **entry}, separators=(",", ":")) + "\n")


# --- command line --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m sim.servo_emulator`` / ``robot-sac emulate`` arguments."""
    parser = argparse.ArgumentParser(prog="servo_emulator", description=__doc__.split("\n\n")[0])
    parser.add_argument("--robot", type=Path, default=REPO_CONFIG_DIR / "robots" / "arm4.yaml",
                        help="robot YAML (default: configs/robots/arm4.yaml)")  # fmt: skip
    parser.add_argument("--calibration", type=Path, default=REPO_CONFIG_DIR / "calibration" / "arm4.json",
                        help="servo IDs and models (default: configs/calibration/arm4.json)")  # fmt: skip
    parser.add_argument("--profile", default="nominal", help="nominal, reality, or a profile YAML file")
    parser.add_argument("--profile-set", action="append", default=[], metavar="KEY=VALUE", help="override a field")
    parser.add_argument("--faults", default="", help='fault spec, e.g. "silent:id=13,after=37; bad_crc:p=0.05"')
    parser.add_argument("--record", type=Path, help="write every instruction and event here (JSON lines)")
    parser.add_argument("--seed", type=int, default=0, help="seeds encoder noise and fault probabilities")
    parser.add_argument("--baud", type=int, default=1_000_000, choices=sorted(BAUD_RATE_CODES), help="bit/s")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--realtime-priority", type=int, default=0, metavar="N",
                        help="run under SCHED_FIFO at priority N (1-99) where the OS allows, as servo hardware is "
                             "never slowed by the host's load; 0: normal scheduling")  # fmt: skip
    return parser


def _die_with_parent() -> int | None:
    """Ask Linux for SIGTERM when the parent dies; return stdin's fd if it is a pipe (EOF = parent gone)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stdin pipe is the fallback
        log.warning("prctl(PR_SET_PDEATHSIG) unavailable; relying on stdin EOF")
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)  # the parent died before prctl took effect
    try:
        return sys.stdin.fileno() if stat.S_ISFIFO(os.fstat(sys.stdin.fileno()).st_mode) else None
    except (OSError, ValueError):
        return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the emulator until SIGINT/SIGTERM, stdin EOF or the parent's death; 0 on a clean exit, 2 on bad config.

    Meant to own its process: it points file descriptor 1 at stderr (stdout carries only the PORT
    line), installs signal handlers and asks for SIGTERM when its parent dies.
    """
    args = build_parser().parse_args(argv)
    # stdout carries exactly one line, "PORT <path>": point fd 1 at stderr for everything else,
    # including C-level prints such as PyBullet's build banner (flushed from C's buffer at exit).
    sys.stdout.flush()
    port_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    logging.basicConfig(level=args.log_level, stream=sys.stderr, format="emulator %(levelname)s %(message)s")
    stopping: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        stopping.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    watch_fd = _die_with_parent()
    record = open(args.record, "w", buffering=1, encoding="utf-8") if args.record else None  # noqa: SIM115
    emulator: ServoEmulator | None = None
    try:
        realtime = request_realtime(args.realtime_priority, "servo emulator")
        spec = load_robot_spec(args.robot)
        calibration = load_calibration(args.calibration, spec)
        profile = load_profile(args.profile, args.profile_set)
        faults = parse_faults(args.faults)
        emulator = ServoEmulator(calibration, profile, faults=faults, seed=args.seed, baud=args.baud, record=record)
        port = emulator.open()
        log.info(
            "profile %s, faults %r, servos %s at %d bit/s, %s scheduling", profile.name, args.faults, calibration.ids,
            args.baud, f"SCHED_FIFO {args.realtime_priority}" if realtime else "normal",
        )  # fmt: skip
        freeze_heap()  # set up: the collector's pauses drop from ~34 ms to ~1 ms (robot_sac.gc_pauses)
        port_out.write(f"PORT {port}\n")
        port_out.close()
        emulator.serve(lambda: bool(stopping), watch_fd)
        log.info("stopping (%d physics steps, %d overruns)", emulator.plant.steps, emulator.plant.overruns)
    except ConfigError as err:
        log.error("%s", err)
        return 2
    finally:
        if emulator is not None:
            emulator.close()
        if record is not None:
            record.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
