"""`ServoBus`: Protocol 2.0 transactions with deadlines, bounded retries and health counters.

Every request flushes stale input, writes one instruction packet and collects the expected status
packets until its deadline. Deadlines are absolute (``time.monotonic()``): a caller running a
control loop passes the end of its cycle, and a failed attempt is retried only while a whole
attempt still fits before it (SAFETY.md #1-2: never the SDK's fixed ~34 ms, never a retry that
overruns the period). Outcomes are typed:

- nothing (or only noise) arrived → `CommTimeout` naming the silent IDs;
- a frame failed its CRC or length guard, or stopped half-way → `CommCorrupt`;
- a servo answered with an error number (access, range, limit...) → `ServoCommandRejected`;
- a status with the alert bit (a hardware fault, the data is still valid) → the bus reads that
  servo's Hardware_Error_Status (address 70) and raises `ServoHardwareError`, never retried
  through (SAFETY.md #4).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from drivers import protocol2 as p2
from drivers.control_table import X_SERIES, Register, hardware_error_names
from drivers.transport import Transport
from robot_sac.errors import CommCorrupt, CommTimeout, ServoCommandRejected, ServoHardwareError

_READ_CHUNK = 4096
_UNTIMED_ATTEMPTS = 3
_UNTIMED_MIN_S = 0.1
"""Requests outside a control cycle (setup, health checks) get this many budgets in all, and at
least `_UNTIMED_MIN_S`: no control period waits on them, and a USB adapter's or a busy host's
stall of a few tens of ms must not fail a connect (seen: 1 emulator start in 60 on a 2-core VM)."""
_RETRY_MARGIN_S = 0.001
"""Time a retry needs beyond its bytes' wire time to be worth sending (servo turnaround, OS wakeups)."""
_STATUS_OVERHEAD = 11
"""Bytes of a status packet besides its data: header 4, ID, LEN 2, instruction, error, CRC 2."""


@dataclass
class BusHealth:
    """Counters since the bus was created (SAFETY.md #1-2 health metrics)."""

    transactions: int = 0
    """requests that completed"""
    failures: int = 0
    """attempts that did not (each retry counts)"""
    timeouts: int = 0
    crc_errors: int = 0
    length_errors: int = 0
    partial_frames: int = 0
    retries: int = 0
    alerts: int = 0
    rejected: int = 0
    writes_without_reply: int = 0
    """sync writes sent (they have no status packet)"""
    late_replies: int = 0
    """sync-read replies dropped as a failed attempt's, arriving after its retry was sent"""
    timeouts_by_id: dict[int, int] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        """Completed requests over attempts (1.0 before the first)."""
        attempts = self.transactions + self.failures
        return 1.0 if attempts == 0 else self.transactions / attempts

    def as_dict(self) -> dict[str, float]:
        """Flat numbers for logs and ``info``."""
        return {
            "success_rate": self.success_rate,
            "transactions": self.transactions,
            "failures": self.failures,
            "timeouts": self.timeouts,
            "crc_errors": self.crc_errors,
            "length_errors": self.length_errors,
            "partial_frames": self.partial_frames,
            "retries": self.retries,
            "alerts": self.alerts,
            "late_replies": self.late_replies,
        }


class ServoBus:
    """Requests to Dynamixel X-series servos on one Protocol 2.0 bus.

    Each attempt waits at most ``2 x`` its wire time at ``baud_rate`` plus ``latency_allowance_s``
    (USB adapter latency, OS scheduling, servo return delay), capped at ``transaction_timeout_s``;
    so a lost or corrupted reply leaves time for a retry inside the same control period.

    Args:
        transport: the byte stream (pyserial port, pty, or a test fake).
        transaction_timeout_s: the longest one request/reply attempt may take.
        baud_rate: bus speed in bit/s (10 bits per byte on the wire).
        latency_allowance_s: fixed slack added to every attempt's wire time.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self,
        transport: Transport,
        transaction_timeout_s: float,
        baud_rate: int = 1_000_000,
        latency_allowance_s: float = 0.003,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Store the collaborators; nothing is sent."""
        if transaction_timeout_s <= 0:
            raise ValueError("transaction_timeout_s must be positive")
        self.transport = transport
        self.transaction_timeout_s = transaction_timeout_s
        self.byte_time_s = 10.0 / baud_rate
        self.latency_allowance_s = latency_allowance_s
        self.clock = clock
        self.health = BusHealth()

    def attempt_timeout_s(self, request_bytes: int, reply_bytes: int) -> float:
        """How long one attempt may wait: twice the wire time plus the allowance, within the budget."""
        wire = (request_bytes + reply_bytes) * self.byte_time_s
        return min(self.transaction_timeout_s, 2.0 * wire + self.latency_allowance_s)

    # --- instructions ------------------------------------------------------------------------------

    def ping(self, servo_id: int, deadline_s: float | None = None) -> tuple[int, int]:
        """(model number, firmware version) of ``servo_id``."""
        data = self._request(p2.ping_packet(servo_id), [servo_id], 3, deadline_s)[servo_id]
        return int.from_bytes(data[0:2], "little"), data[2]

    def read(self, servo_id: int, address: int, length: int, deadline_s: float | None = None) -> bytes:
        """``length`` bytes of ``servo_id``'s control table from ``address``."""
        return self._request(p2.read_packet(servo_id, address, length), [servo_id], length, deadline_s)[servo_id]

    def write(self, servo_id: int, address: int, data: bytes, deadline_s: float | None = None) -> None:
        """Write ``data`` at ``address`` and wait for the servo's acknowledgement."""
        self._request(p2.write_packet(servo_id, address, data), [servo_id], 0, deadline_s)

    def read_register(self, servo_id: int, name: str, deadline_s: float | None = None) -> int:
        """One register's raw value (signed where the register is)."""
        reg = X_SERIES[name]
        return reg.decode(self.read(servo_id, reg.address, reg.size, deadline_s))

    def write_register(self, servo_id: int, name: str, raw: int, deadline_s: float | None = None) -> None:
        """Write one register's raw value and wait for the acknowledgement."""
        reg = X_SERIES[name]
        self.write(servo_id, reg.address, reg.encode(raw), deadline_s)

    def sync_read(
        self, ids: Sequence[int], address: int, length: int, deadline_s: float | None = None
    ) -> dict[int, bytes]:
        """The same ``length`` bytes from every servo in ``ids``, in one instruction (all or nothing)."""
        return self._request(p2.sync_read_packet(ids, address, length), list(ids), length, deadline_s)

    def sync_write(self, register: Register, raw_by_id: Mapping[int, int]) -> None:
        """Write one register on several servos in one packet (no reply: verify the effect by reading)."""
        packet = p2.sync_write_packet(
            register.address, register.size, {i: register.encode(v) for i, v in raw_by_id.items()}
        )
        self.transport.write(packet)
        self.health.writes_without_reply += 1

    def reboot(self, servo_id: int, deadline_s: float | None = None) -> None:
        """Reboot ``servo_id`` (clears a hardware error; torque comes back off). Never under load."""
        self._request(p2.reboot_packet(servo_id), [servo_id], 0, deadline_s)

    # --- the transaction -----------------------------------------------------------------------------

    def _request(
        self, packet: bytes, ids: list[int], data_length: int, deadline_s: float | None, check_alert: bool = True
    ) -> dict[int, bytes]:
        """Send ``packet`` and return each expected servo's status data, retrying within the deadline."""
        now = self.clock()
        untimed_s = max(_UNTIMED_ATTEMPTS * self.transaction_timeout_s, _UNTIMED_MIN_S)
        deadline = now + untimed_s if deadline_s is None else deadline_s
        reply_bytes = len(ids) * (_STATUS_OVERHEAD + data_length)
        attempt_s = self.attempt_timeout_s(len(packet), reply_bytes)
        # A retry is worth sending while the deadline leaves room for the bytes themselves plus a
        # margin; it then waits until its own timeout or the deadline, whichever comes first.
        min_retry_s = (len(packet) + reply_bytes) * self.byte_time_s + _RETRY_MARGIN_S
        while True:
            attempt_deadline = min(deadline, self.clock() + attempt_s)
            try:
                statuses = self._attempt(packet, ids, data_length, attempt_deadline)
            except (CommTimeout, CommCorrupt):
                self.health.failures += 1
                # Outside a cycle, let a late reply to this attempt arrive and be discarded, so the
                # retry cannot take it for its own (Protocol 2.0 has no sequence numbers).
                quiet_s = attempt_s if deadline_s is None else 0.0
                if self.clock() + quiet_s + min_retry_s > deadline:
                    raise
                self._quiet(quiet_s)
                self.health.retries += 1
                continue
            break
        self.health.transactions += 1
        alerting = [i for i in ids if statuses[i].alert]
        if alerting and check_alert:
            self.health.alerts += 1
            self._raise_hardware_error(alerting[0], deadline)
        return {i: statuses[i].data for i in ids}

    def _quiet(self, duration_s: float) -> None:
        """Read and discard whatever arrives for ``duration_s``."""
        until = self.clock() + duration_s
        while self.transport.read(_READ_CHUNK, until):
            pass

    def _attempt(
        self, packet: bytes, ids: list[int], data_length: int, deadline_s: float
    ) -> dict[int, p2.StatusPacket]:
        # Length guard from the expected reply: error byte + data, plus what byte stuffing can add
        # (one byte per FF FF FD in the data, e.g. a velocity of -1 followed by a position ending in FD).
        parser = p2.PacketParser(max_params_length=data_length + 1 + (data_length + 1) // 3)
        self.transport.flush_input()
        self.transport.write(packet)
        wanted = set(ids)
        position = {sid: k for k, sid in enumerate(ids)}
        got: dict[int, p2.StatusPacket] = {}
        while wanted - got.keys():
            if parser.crc_errors + parser.length_errors and len(got) + parser.crc_errors >= len(wanted):
                break  # every expected reply is accounted for, one was corrupt: fail now, leave time to retry
            chunk = self.transport.read(_READ_CHUNK, deadline_s)
            if not chunk:
                break
            for pkt in parser.feed(chunk):
                if pkt.instruction != p2.Instruction.STATUS or pkt.servo_id not in wanted:
                    continue  # an echo or another device's reply
                status = p2.StatusPacket.from_packet(pkt)
                # Servos answer a sync read in the order of its ID list. Replies that came before an
                # earlier ID's are late ones to the attempt this one retries (Protocol 2.0 has no
                # sequence numbers; an in-cycle retry has no quiet time): their data predates this
                # request, so drop them and take this attempt's.
                late = [i for i in got if position[i] > position[pkt.servo_id]]
                for i in late:
                    del got[i]
                self.health.late_replies += len(late)
                got[pkt.servo_id] = status
                self._check_error_number(status, len(status.data), data_length)
        missing = tuple(sorted(wanted - got.keys()))
        if not missing:
            return got
        self.health.crc_errors += parser.crc_errors
        self.health.length_errors += parser.length_errors
        if parser.crc_errors or parser.length_errors or parser.pending_bytes:
            self.health.partial_frames += parser.pending_bytes > 0
            raise CommCorrupt(
                f"servos {list(missing)}: corrupt reply (CRC errors {parser.crc_errors}, bad lengths "
                f"{parser.length_errors}, {parser.pending_bytes} bytes of an unfinished frame)",
                servo_ids=missing,
            )
        self.health.timeouts += 1
        for i in missing:
            self.health.timeouts_by_id[i] = self.health.timeouts_by_id.get(i, 0) + 1
        raise CommTimeout(
            f"servos {list(missing)} did not answer within the transaction budget; check power, cabling, IDs "
            "and baud rate",
            servo_ids=missing,
        )

    def _check_error_number(self, status: p2.StatusPacket, got_length: int, want_length: int) -> None:
        error = status.error_number
        if error == p2.StatusError.CRC:
            raise CommCorrupt(f"servo {status.servo_id} received a corrupt instruction", servo_ids=(status.servo_id,))
        if error != p2.StatusError.NONE:
            self.health.rejected += 1
            raise ServoCommandRejected(
                f"servo {status.servo_id} rejected the request: {p2.StatusError(error).name} error; EEPROM "
                "registers can only be written with torque off, goals must lie inside the position limits",
                servo_ids=(status.servo_id,),
            )
        if got_length != want_length:
            raise CommCorrupt(
                f"servo {status.servo_id} returned {got_length} data bytes, expected {want_length}",
                servo_ids=(status.servo_id,),
            )

    def _raise_hardware_error(self, servo_id: int, deadline_s: float) -> None:
        """Read Hardware_Error_Status of an alerting servo and raise (latched, never retried)."""
        reg = X_SERIES["hardware_error_status"]
        bits = 0xFF  # unknown, if even this read fails
        try:
            deadline = max(deadline_s, self.clock() + self.transaction_timeout_s)
            packet = p2.read_packet(servo_id, reg.address, reg.size)
            bits = self._request(packet, [servo_id], reg.size, deadline, check_alert=False)[servo_id][0]
        except (CommTimeout, CommCorrupt, ServoCommandRejected):
            pass
        raise ServoHardwareError(
            servo_id,
            bits,
            f"servo {servo_id} reports a hardware error (status 0x{bits:02x}: {describe_hardware_error(bits)}); "
            "inspect the arm, let it cool, then reboot the servo and re-arm",
        )


def describe_hardware_error(bits: int) -> str:
    """Human names of Hardware_Error_Status bits."""
    return ", ".join(hardware_error_names(bits)) or "no bit set"
