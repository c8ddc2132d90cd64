"""Dynamixel Protocol 2.0 codec: packet builders, CRC-16, byte stuffing and a resynchronizing parser.

Both ends of the wire use it: the host driver builds instructions and parses status packets, the servo
emulator (SAFETY.md D.3) does the reverse. Nothing here does I/O or keeps time; timeouts are the caller's.

Wire format (ROBOTIS e-manual, "Protocol 2.0", https://emanual.robotis.com/docs/en/dxl/protocol2/)::

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAM ... | CRC_L CRC_H

* ``FF FF FD 00`` is the header; the reserved ``00`` belongs to it (the e-manual's "Reserved" field).
* ``LEN`` (little-endian) counts INST + stuffed PARAMs + 2 CRC bytes (``len(params) + 3`` unstuffed).
* A status packet is INST ``0x55`` whose first parameter is the error byte.
* Byte stuffing: inside INST..PARAM every ``FF FF FD`` gets an extra ``FD``, so a body never contains
  the header. LEN and CRC cover the stuffed bytes.
* CRC-16, poly 0x8005, init 0, unreflected, no final XOR, from the header to the last parameter
  (catalogue name CRC-16/UMTS alias BUYPASS; ROBOTIS calls it "CRC-16 (IBM/ANSI)").

Only the standard library is imported: this module runs on the embedded controller.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

HEADER: bytes = b"\xff\xff\xfd\x00"
"""Packet header including the reserved byte; a stuffed body can never contain it."""

BROADCAST_ID: int = 0xFE
"""Every servo executes a packet sent to this ID; only PING, SYNC_READ and BULK_READ get replies."""

MAX_ID: int = 0xFC
"""Highest unicast ID (252). 0xFD and 0xFF are never IDs, so that they cannot be confused with a header."""

ALERT_BIT: int = 0x80
"""Bit 7 of a status packet's error byte: the servo has a hardware fault (read Hardware_Error_Status, 70)."""

_STUFF_PATTERN = b"\xff\xff\xfd"
_STUFFED = b"\xff\xff\xfd\xfd"
_HEADER_AND_ID_AND_LEN = 7  # FF FF FD 00 | ID | LEN_L LEN_H
_CRC_SIZE = 2
_MIN_LEN_FIELD = 3  # INST + CRC_L + CRC_H
_MAX_LEN_FIELD = 0xFFFF


class Instruction(enum.IntEnum):
    """The INST byte (e-manual Protocol 2.0, "Instruction")."""

    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    REG_WRITE = 0x04
    ACTION = 0x05
    FACTORY_RESET = 0x06
    REBOOT = 0x08
    CLEAR = 0x10
    STATUS = 0x55
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83
    BULK_READ = 0x92
    BULK_WRITE = 0x93


class StatusError(enum.IntEnum):
    """The error number in bits 0-6 of a status packet's error byte (e-manual Protocol 2.0, "Error")."""

    NONE = 0
    RESULT_FAIL = 1
    INSTRUCTION = 2
    CRC = 3
    DATA_RANGE = 4
    DATA_LENGTH = 5
    DATA_LIMIT = 6
    ACCESS = 7


# --- CRC and byte stuffing ---------------------------------------------------------------------


def _make_crc_table(poly: int) -> tuple[int, ...]:
    """Build the 256-entry lookup table of a non-reflected 16-bit CRC."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ poly) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _make_crc_table(0x8005)


def crc16(data: bytes) -> int:
    """CRC-16 of the wire bytes from the header through the last stuffed parameter; sent little-endian."""
    crc = 0
    for byte in data:
        # Table-driven long division: shift one byte out of the register, XOR in its remainder.
        crc = ((crc << 8) ^ _CRC_TABLE[((crc >> 8) ^ byte) & 0xFF]) & 0xFFFF
    return crc


def stuff(params: bytes) -> bytes:
    """Append an ``FD`` to every ``FF FF FD`` so that a header can never appear inside a body.

    Applied to the INST..PARAM region (not the CRC), as `encode_packet` does. ``FF FF FD`` cannot
    overlap itself, so a left-to-right replace inserts exactly one byte per occurrence.
    """
    return bytes(params).replace(_STUFF_PATTERN, _STUFFED)


def unstuff(params: bytes) -> bytes:
    """Inverse of `stuff`: ``FF FF FD FD`` -> ``FF FF FD``. Never raises; unstuffed input passes through."""
    return bytes(params).replace(_STUFFED, _STUFF_PATTERN)


# --- builders ----------------------------------------------------------------------------------


def _check_range(what: str, value: int, low: int, high: int) -> None:
    """Raise ValueError unless ``low <= value <= high``."""
    if not low <= value <= high:
        raise ValueError(f"{what} must be in [{low}, {high}], got {value}")


def _u16(value: int) -> bytes:
    """Little-endian uint16, the byte order of every multi-byte field of the protocol."""
    return value.to_bytes(2, "little")


def encode_packet(servo_id: int, instruction: int, params: bytes = b"") -> bytes:
    """Full wire bytes of one packet: header, ID, LEN, stuffed INST+params, CRC.

    Args:
        servo_id: 0..252, or BROADCAST_ID.
        instruction: the INST byte (an `Instruction`, or any 0..255 for tests and fault injection).
        params: unstuffed parameters; for a status packet the first one is the error byte.

    Raises:
        ValueError: an ID, instruction or length the protocol cannot carry.
    """
    if servo_id != BROADCAST_ID:
        _check_range("servo_id (or BROADCAST_ID 254)", servo_id, 0, MAX_ID)
    _check_range("instruction", instruction, 0, 0xFF)
    body = stuff(bytes([instruction]) + bytes(params))
    length = len(body) + _CRC_SIZE
    _check_range("LEN (stuffed instruction + params + CRC)", length, _MIN_LEN_FIELD, _MAX_LEN_FIELD)
    frame = HEADER + bytes([servo_id]) + _u16(length) + body
    return frame + _u16(crc16(frame))


def ping_packet(servo_id: int) -> bytes:
    """PING: every addressed servo answers with model number (uint16) and firmware version (uint8)."""
    return encode_packet(servo_id, Instruction.PING)


def read_packet(servo_id: int, address: int, length: int) -> bytes:
    """READ ``length`` bytes of the control table from ``address`` (both uint16 on the wire)."""
    _check_range("address", address, 0, 0xFFFF)
    _check_range("length", length, 1, 0xFFFF)
    return encode_packet(servo_id, Instruction.READ, _u16(address) + _u16(length))


def write_packet(servo_id: int, address: int, data: bytes) -> bytes:
    """WRITE ``data`` (already encoded, e.g. by `Register.encode`) at ``address``."""
    _check_range("address", address, 0, 0xFFFF)
    if not data:
        raise ValueError("write_packet needs at least one data byte")
    return encode_packet(servo_id, Instruction.WRITE, _u16(address) + bytes(data))


def sync_read_packet(ids: Sequence[int], address: int, length: int) -> bytes:
    """SYNC_READ the same ``address``/``length`` from several servos; each replies in ``ids`` order.

    Raises:
        ValueError: empty or duplicate ``ids`` (replies would be ambiguous), an ID outside 0..252.
    """
    _check_range("address", address, 0, 0xFFFF)
    _check_range("length", length, 1, 0xFFFF)
    if not ids:
        raise ValueError("sync_read_packet needs at least one ID")
    if len(set(ids)) != len(ids):
        raise ValueError(f"sync_read_packet IDs must be unique, got {list(ids)}")
    for servo_id in ids:
        _check_range("sync read ID", servo_id, 0, MAX_ID)
    return encode_packet(BROADCAST_ID, Instruction.SYNC_READ, _u16(address) + _u16(length) + bytes(ids))


def sync_write_packet(address: int, length: int, data_by_id: Mapping[int, bytes]) -> bytes:
    """SYNC_WRITE ``length`` bytes at ``address`` on several servos (ID -> encoded data), in mapping order.

    Raises:
        ValueError: empty mapping, an ID outside 0..252, or a value that is not exactly ``length`` bytes
            (the servo would otherwise read its neighbour's ID as data).
    """
    _check_range("address", address, 0, 0xFFFF)
    _check_range("length", length, 1, 0xFFFF)
    if not data_by_id:
        raise ValueError("sync_write_packet needs at least one ID")
    params = bytearray(_u16(address) + _u16(length))
    for servo_id, data in data_by_id.items():
        _check_range("sync write ID", servo_id, 0, MAX_ID)
        if len(data) != length:
            raise ValueError(f"sync_write_packet: data for ID {servo_id} is {len(data)} bytes, expected {length}")
        params.append(servo_id)
        params += data
    return encode_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))


def reboot_packet(servo_id: int) -> bytes:
    """REBOOT: the only way to re-enable torque after a Shutdown; the RAM area resets to defaults."""
    return encode_packet(servo_id, Instruction.REBOOT)


def status_packet(servo_id: int, error: int, data: bytes = b"") -> bytes:
    """What a servo (0..252) sends back: INST 0x55, params = error byte (`ALERT_BIT` | `StatusError`) + data."""
    _check_range("status servo_id", servo_id, 0, MAX_ID)
    _check_range("error", error, 0, 0xFF)
    return encode_packet(servo_id, Instruction.STATUS, bytes([error]) + bytes(data))


# --- parsed packets ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Packet:
    """One CRC-valid packet from the wire, instruction or status.

    Attributes:
        servo_id: the ID byte (target of an instruction, or sender of a status).
        instruction: the raw INST byte; compare with `Instruction` members (it is not converted, so
            that unknown instructions survive parsing and an emulator can answer INSTRUCTION error).
        params: the un-stuffed parameters (for a status packet: error byte + data).
    """

    servo_id: int
    instruction: int
    params: bytes


@dataclass(frozen=True)
class StatusPacket:
    """A servo's reply, split into its error byte and data.

    Attributes:
        servo_id: the replying servo.
        error: the raw error byte (bit 7 alert, bits 0-6 error number).
        data: the parameters after the error byte.
    """

    servo_id: int
    error: int
    data: bytes

    @property
    def alert(self) -> bool:
        """True when the servo flags a hardware fault; the value still arrives (SAFETY.md row 4)."""
        return bool(self.error & ALERT_BIT)

    @property
    def error_number(self) -> StatusError:
        """The processing error in bits 0-6.

        Numbers the e-manual does not define (8..127) map to `StatusError.RESULT_FAIL`, so that an
        unknown error is never mistaken for success; the raw value stays in `error`.
        """
        number = self.error & (ALERT_BIT - 1)  # bits 0-6
        try:
            return StatusError(number)
        except ValueError:
            return StatusError.RESULT_FAIL

    @classmethod
    def from_packet(cls, packet: Packet) -> StatusPacket:
        """Interpret a parsed packet as a status packet; ValueError if it is not STATUS (0x55) or has no error byte."""
        if packet.instruction != Instruction.STATUS:
            raise ValueError(
                f"packet from ID {packet.servo_id} has instruction 0x{packet.instruction:02X}, "
                f"not STATUS (0x{Instruction.STATUS:02X})"
            )
        if not packet.params:
            raise ValueError(f"status packet from ID {packet.servo_id} has no error byte")
        return cls(servo_id=packet.servo_id, error=packet.params[0], data=packet.params[1:])


# --- parser ------------------------------------------------------------------------------------


def _header_prefix_len(buf: bytearray, start: int) -> int:
    """Length (0..3) of the longest suffix of ``buf[start:]`` that is a proper prefix of HEADER."""
    for size in (3, 2, 1):
        if len(buf) - start >= size and buf.endswith(HEADER[:size]):
            return size
    return 0


class PacketParser:
    """Incremental, resynchronizing Protocol 2.0 frame parser.

    Feed it whatever the transport returned; it returns every complete CRC-valid packet and keeps the
    rest. It never raises on any byte stream. Per candidate frame:

    1. Scan for HEADER (``FF FF FD 00``). Bytes before it are junk: dropped and counted in
       `discarded_bytes`. ``FF FF FD FD`` is a stuffed body sequence, never a header.
    2. Read ID and LEN. If ``LEN < 3`` or ``LEN > max_params_length + 3``, the header was fake: count a
       length error, drop its first byte and rescan from the next byte (no waiting on a bogus LEN).
    3. Wait until all LEN bytes are held.
    4. Check the CRC. On mismatch count a CRC error, drop the header's first byte and rescan from
       the next byte, so that a valid packet that starts inside the bad frame is still found.
    5. Un-stuff the body and emit a `Packet`.

    Every byte fed ends up in exactly one place::

        bytes fed == discarded_bytes + bytes of emitted frames + pending_bytes

    A frame whose LEN is plausible but whose bytes never all arrive is held (at most
    ``max_params_length + 10`` bytes) until the caller's transaction timeout calls `reset`. Size
    ``max_params_length`` from the expected reply (SAFETY.md row 3), so a fake header in noise holds few bytes.
    """

    def __init__(self, max_params_length: int = 1024) -> None:
        """Create an idle parser.

        Args:
            max_params_length: the most (stuffed) parameter bytes a frame may carry, the error byte of a
                status packet included; a LEN above ``max_params_length + 3`` is bogus. The default
                mirrors the DynamixelSDK's 1024-byte receive buffer.
        """
        _check_range("max_params_length", max_params_length, 0, _MAX_LEN_FIELD - _MIN_LEN_FIELD)
        self._max_len_field = max_params_length + _MIN_LEN_FIELD
        self._buf = bytearray()
        self._crc_errors = 0
        self._length_errors = 0
        self._discarded_bytes = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes held for a frame that is not complete yet (0 when idle).

        This is either a started frame (header seen) or up to 3 trailing bytes that could begin a
        header (``FF``, ``FF FF``, ``FF FF FD``). After a reply's deadline, ``pending_bytes > 0``
        means a partial or corrupt reply, 0 means silence (or pure junk, see `discarded_bytes`).
        """
        return len(self._buf)

    @property
    def crc_errors(self) -> int:
        """Complete frames whose CRC did not match (since construction; `reset` keeps it)."""
        return self._crc_errors

    @property
    def length_errors(self) -> int:
        """Headers followed by an impossible LEN (< 3 or > max_params_length + 3)."""
        return self._length_errors

    @property
    def discarded_bytes(self) -> int:
        """Bytes dropped because they were not part of a valid frame (junk, fake or corrupt headers)."""
        return self._discarded_bytes

    def reset(self) -> None:
        """Drop any held partial frame (e.g. after a transaction timeout) into `discarded_bytes`; counters stay."""
        self._discarded_bytes += len(self._buf)
        self._buf.clear()

    def feed(self, data: bytes) -> list[Packet]:
        """Append received bytes (any chunking, empty is fine); return the CRC-valid packets they complete."""
        buf = self._buf
        buf += data
        packets: list[Packet] = []
        pos = 0
        while True:
            start = buf.find(HEADER, pos)
            if start < 0:
                keep = _header_prefix_len(buf, pos)
                self._discarded_bytes += len(buf) - pos - keep
                pos = len(buf) - keep
                break
            self._discarded_bytes += start - pos
            pos = start
            if len(buf) - pos < _HEADER_AND_ID_AND_LEN:
                break  # header seen, ID/LEN not yet
            length = buf[pos + 5] | (buf[pos + 6] << 8)
            if not _MIN_LEN_FIELD <= length <= self._max_len_field:
                self._length_errors += 1
                self._discarded_bytes += 1
                pos += 1
                continue
            end = pos + _HEADER_AND_ID_AND_LEN + length
            if len(buf) < end:
                break  # wait for the rest of the frame
            crc_at = end - _CRC_SIZE
            if crc16(bytes(buf[pos:crc_at])) != buf[crc_at] | (buf[crc_at + 1] << 8):
                self._crc_errors += 1
                self._discarded_bytes += 1
                pos += 1
                continue
            body = unstuff(bytes(buf[pos + _HEADER_AND_ID_AND_LEN : crc_at]))
            packets.append(Packet(servo_id=buf[pos + 4], instruction=body[0], params=body[1:]))
            pos = end
        del buf[:pos]
        return packets
