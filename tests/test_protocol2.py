"""Dynamixel Protocol 2.0 codec (SAFETY.md rows 2-3, D.3): golden packets, stuffing, CRC, parser.

Golden bytes are the worked examples of the ROBOTIS e-manual "Protocol 2.0" page
(https://emanual.robotis.com/docs/en/dxl/protocol2/, source ROBOTIS-GIT/emanual docs/en/dxl/protocol2.md),
copied byte for byte. The e-manual publishes no stuffed packet, so the stuffing case (SAFETY.md B12) is
checked structurally and against DynamixelSDK 4.1.0's own ``addStuffing`` + ``updateCRC`` when it is
installed. Note: the SDK's Python ``txPacket`` drops ``addStuffing``'s result when stuffing changes the
length (it ignores the returned list), so it transmits such packets unstuffed; the oracle tests call
``addStuffing`` directly for that reason.

Parser property (exact form): for any ``junk`` that contains no complete HEADER ``FF FF FD 00``,
feeding ``junk + frame`` in any chunking yields exactly that frame's packet, ``discarded_bytes ==
len(junk)`` and no errors. Junk that *ends* mid-header (``FF``, ``FF FF``, ``FF FF FD``) is harmless,
because the scan looks for all four header bytes and a frame's first bytes cannot complete a header
begun in the junk. Junk that *contains* a header is not covered: its fake LEN may swallow the frame
and wait for bytes that never come (the caller's timeout then calls ``reset``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.protocol2 import (
    ALERT_BIT,
    BROADCAST_ID,
    HEADER,
    Instruction,
    Packet,
    PacketParser,
    StatusError,
    StatusPacket,
    crc16,
    encode_packet,
    ping_packet,
    read_packet,
    reboot_packet,
    status_packet,
    stuff,
    sync_read_packet,
    sync_write_packet,
    unstuff,
    write_packet,
)
from tests.conftest import REPO_ROOT

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def u32(value: int) -> bytes:
    return value.to_bytes(4, "little")


# (name, what our code builds, the e-manual's bytes)
GOLDEN = [
    ("ping id1", ping_packet(1), "FF FF FD 00 01 03 00 01 19 4E"),
    ("ping broadcast", ping_packet(BROADCAST_ID), "FF FF FD 00 FE 03 00 01 31 42"),
    ("ping status id1", status_packet(1, 0, h("06 04 26")), "FF FF FD 00 01 07 00 55 00 06 04 26 65 5D"),
    ("ping status id2", status_packet(2, 0, h("06 04 26")), "FF FF FD 00 02 07 00 55 00 06 04 26 6F 6D"),
    ("read id1 132x4", read_packet(1, 132, 4), "FF FF FD 00 01 07 00 02 84 00 04 00 1D 15"),
    ("read status 166", status_packet(1, 0, u32(166)), "FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"),
    ("write id1 116=512", write_packet(1, 116, u32(512)), "FF FF FD 00 01 09 00 03 74 00 00 02 00 00 CA 89"),
    ("empty status", status_packet(1, 0), "FF FF FD 00 01 04 00 55 00 A1 0C"),
    (
        "reg write 104=200",
        encode_packet(1, Instruction.REG_WRITE, h("68 00") + u32(200)),
        "FF FF FD 00 01 09 00 04 68 00 C8 00 00 00 AE 8E",
    ),
    ("action", encode_packet(1, Instruction.ACTION), "FF FF FD 00 01 03 00 05 02 CE"),
    ("factory reset", encode_packet(1, Instruction.FACTORY_RESET, h("01")), "FF FF FD 00 01 04 00 06 01 A1 E6"),
    ("reboot id1", reboot_packet(1), "FF FF FD 00 01 03 00 08 2F 4E"),
    ("clear", encode_packet(1, Instruction.CLEAR, h("01 44 58 4C 22")), "FF FF FD 00 01 08 00 10 01 44 58 4C 22 B1 DC"),
    ("sync read 1,2", sync_read_packet([1, 2], 132, 4), "FF FF FD 00 FE 09 00 82 84 00 04 00 01 02 CE FA"),
    ("sync read status 2079", status_packet(2, 0, u32(2079)), "FF FF FD 00 02 08 00 55 00 1F 08 00 00 BA BE"),
    (
        "sync write 150/170",
        sync_write_packet(116, 4, {1: u32(150), 2: u32(170)}),
        "FF FF FD 00 FE 11 00 83 74 00 04 00 01 96 00 00 00 02 AA 00 00 00 82 87",
    ),
    (
        "bulk read",
        encode_packet(BROADCAST_ID, Instruction.BULK_READ, h("01 90 00 02 00 02 92 00 01 00")),
        "FF FF FD 00 FE 0D 00 92 01 90 00 02 00 02 92 00 01 00 1A 05",
    ),
    ("bulk read status id1", status_packet(1, 0, h("77 00")), "FF FF FD 00 01 06 00 55 00 77 00 C3 69"),
    ("bulk read status id2", status_packet(2, 0, h("24")), "FF FF FD 00 02 05 00 55 00 24 8B A9"),
    (
        "bulk write",
        encode_packet(BROADCAST_ID, Instruction.BULK_WRITE, h("01 20 00 02 00 A0 00 02 1F 00 01 00 50")),
        "FF FF FD 00 FE 10 00 93 01 20 00 02 00 A0 00 02 1F 00 01 00 50 B7 68",
    ),
]


@pytest.mark.parametrize(("built", "expected"), [(g[1], g[2]) for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_builders_match_emanual_examples(built: bytes, expected: str) -> None:
    assert built == h(expected)


@pytest.mark.parametrize("expected", [g[2] for g in GOLDEN], ids=[g[0] for g in GOLDEN])
def test_parser_reads_every_emanual_example(expected: str) -> None:
    wire = h(expected)
    parser = PacketParser()
    (packet,) = parser.feed(wire)
    assert packet.servo_id == wire[4]
    assert packet.instruction == wire[7]
    assert packet.params == wire[8:-2]  # none of the examples needs stuffing
    assert (parser.pending_bytes, parser.discarded_bytes, parser.crc_errors, parser.length_errors) == (0, 0, 0, 0)


def test_status_packet_fields_of_the_read_example() -> None:
    (packet,) = PacketParser().feed(h("FF FF FD 00 01 08 00 55 00 A6 00 00 00 8C C0"))
    status = StatusPacket.from_packet(packet)
    assert status == StatusPacket(servo_id=1, error=0, data=u32(166))
    assert not status.alert
    assert status.error_number is StatusError.NONE


# --- CRC and stuffing --------------------------------------------------------------------------


def test_crc16_catalogue_check_value() -> None:
    # CRC-16/UMTS (alias BUYPASS: poly 0x8005, init 0, unreflected, xorout 0) check value.
    assert crc16(b"123456789") == 0xFEE8
    assert crc16(b"") == 0


def test_stuffing_example_b12() -> None:
    """SAFETY.md B12: a payload containing FF FF FD goes out as FF FF FD FD and LEN grows 9 -> 10."""
    plain = write_packet(1, 116, h("00 00 00 00"))
    stuffed = write_packet(1, 116, h("FF FF FD 00"))
    assert plain[5:7] == h("09 00")
    assert stuffed[5:7] == h("0A 00")
    assert stuffed[7:-2] == h("03 74 00 FF FF FD FD 00")
    assert len(stuffed) == len(plain) + 1
    assert stuffed[-2:] == crc16(stuffed[:-2]).to_bytes(2, "little")
    (packet,) = PacketParser().feed(stuffed)
    assert packet == Packet(servo_id=1, instruction=Instruction.WRITE, params=h("74 00 FF FF FD 00"))


@pytest.mark.parametrize(
    ("plain", "stuffed"),
    [
        ("", ""),
        ("FF FF FD", "FF FF FD FD"),
        ("FF FF FD FD", "FF FF FD FD FD"),
        ("FF FF FF FD", "FF FF FF FD FD"),
        ("FF FF FD FF FF FD", "FF FF FD FD FF FF FD FD"),
        ("FF FD FF FD", "FF FD FF FD"),
    ],
)
def test_stuff_examples(plain: str, stuffed: str) -> None:
    assert stuff(h(plain)) == h(stuffed)
    assert unstuff(h(stuffed)) == h(plain)


# Bytes drawn mostly from the header alphabet, so that stuffing patterns are common.
header_heavy = st.lists(st.sampled_from([0xFF, 0xFD, 0x00]) | st.integers(0, 255), max_size=64).map(bytes)


@PROPERTY
@given(data=header_heavy)
def test_stuff_round_trips_and_hides_the_header(data: bytes) -> None:
    assert unstuff(stuff(data)) == data
    assert HEADER not in stuff(data)
    frame = encode_packet(7, Instruction.WRITE, data)
    assert HEADER not in frame[4:-2]  # ID, LEN and body: a header can only start a frame
    assert int.from_bytes(frame[5:7], "little") == len(frame) - 7


def test_unstuff_passes_unstuffed_input_through() -> None:
    assert unstuff(h("FF FF FD 00 12")) == h("FF FF FD 00 12")


# --- builders: validation and the SDK as an independent oracle ----------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: ping_packet(253),
        lambda: ping_packet(255),
        lambda: ping_packet(-1),
        lambda: read_packet(1, 0x10000, 4),
        lambda: read_packet(1, 132, 0),
        lambda: write_packet(1, 116, b""),
        lambda: sync_read_packet([], 132, 4),
        lambda: sync_read_packet([1, 1], 132, 4),
        lambda: sync_read_packet([BROADCAST_ID], 132, 4),
        lambda: sync_write_packet(116, 4, {}),
        lambda: sync_write_packet(116, 4, {1: u32(1), 2: b"\x00\x00"}),
        lambda: status_packet(BROADCAST_ID, 0),
        lambda: status_packet(1, 256),
        lambda: encode_packet(1, 256),
    ],
)
def test_builders_reject_what_the_protocol_cannot_carry(call: Callable[[], bytes]) -> None:
    with pytest.raises(ValueError):
        call()


def test_sync_write_error_names_the_id_and_lengths() -> None:
    with pytest.raises(ValueError, match=r"ID 2 is 2 bytes, expected 4"):
        sync_write_packet(116, 4, {1: u32(1), 2: b"\x00\x00"})


class _CapturePort:
    """The slice of dynamixel_sdk.PortHandler that its Protocol2PacketHandler touches on transmit."""

    def __init__(self) -> None:
        self.is_using = False
        self.written: list[bytes] = []

    def clearPort(self) -> None:  # noqa: N802 - the SDK's name
        pass

    def writePort(self, packet: list[int]) -> int:  # noqa: N802
        self.written.append(bytes(packet))
        return len(packet)

    def readPort(self, length: int) -> list[int]:  # noqa: N802
        return []

    def setPacketTimeout(self, length: int) -> None:  # noqa: N802
        pass

    def isPacketTimeout(self) -> bool:  # noqa: N802
        return True


@pytest.fixture(scope="module")
def sdk_handler() -> Any:
    """DynamixelSDK's Protocol2PacketHandler, an independent implementation used as an oracle."""
    return pytest.importorskip("dynamixel_sdk").Protocol2PacketHandler()


def test_builders_match_dynamixel_sdk_transmit(sdk_handler: Any) -> None:
    handler = sdk_handler

    def sent(method: str, *args: object) -> bytes:
        port = _CapturePort()
        getattr(handler, method)(port, *args)
        return port.written[0]

    assert sent("ping", 3) == ping_packet(3)
    assert sent("reboot", 4) == reboot_packet(4)
    assert sent("readTx", 5, 132, 4) == read_packet(5, 132, 4)
    assert sent("writeTxOnly", 6, 104, 4, list(u32(0xFFFFFF38))) == write_packet(6, 104, u32(0xFFFFFF38))
    assert sent("syncReadTx", 120, 27, [1, 2, 3], 3, False) == sync_read_packet([1, 2, 3], 120, 27)
    params = [1, *u32(2048), 3, *u32(1024)]
    assert sent("syncWriteTxOnly", 116, 4, params, len(params)) == sync_write_packet(
        116, 4, {1: u32(2048), 3: u32(1024)}
    )


@PROPERTY
@given(servo_id=st.integers(0, 252), instruction=st.integers(0, 255), params=header_heavy)
def test_stuffing_and_crc_match_dynamixel_sdk(sdk_handler: Any, servo_id: int, instruction: int, params: bytes) -> None:
    handler = sdk_handler
    length = len(params) + 3
    raw = [*HEADER, servo_id, length & 0xFF, length >> 8, instruction, *params, 0, 0]
    ref = handler.addStuffing(raw)  # returns the stuffed list (txPacket itself drops it, see module doc)
    crc = handler.updateCRC(0, ref, len(ref) - 2)
    ref[-2:] = [crc & 0xFF, crc >> 8]
    assert encode_packet(servo_id, instruction, params) == bytes(ref)
    assert crc16(bytes(ref[:-2])) == crc


# --- status packets ----------------------------------------------------------------------------


def test_status_packet_alert_and_error_number() -> None:
    alert = StatusPacket(servo_id=2, error=ALERT_BIT | StatusError.DATA_RANGE, data=u32(1234))
    assert alert.alert
    assert alert.error_number is StatusError.DATA_RANGE
    assert StatusPacket(1, ALERT_BIT, b"").error_number is StatusError.NONE
    assert StatusPacket(1, 0x7F, b"").error_number is StatusError.RESULT_FAIL  # undefined number
    assert not StatusPacket(1, 0x7F, b"").alert


def test_status_from_packet_rejects_instructions_and_empty_params() -> None:
    with pytest.raises(ValueError, match="not STATUS"):
        StatusPacket.from_packet(Packet(1, Instruction.READ, h("84 00 04 00")))
    with pytest.raises(ValueError, match="no error byte"):
        StatusPacket.from_packet(Packet(1, Instruction.STATUS, b""))


# --- parser ------------------------------------------------------------------------------------

STUFFED_WRITE = write_packet(3, 116, h("FF FF FD 00"))
STREAM = [read_packet(1, 132, 4), status_packet(1, ALERT_BIT, u32(0xFFFFFFFF)), STUFFED_WRITE, ping_packet(2)]
EXPECTED = [
    Packet(1, Instruction.READ, h("84 00 04 00")),
    Packet(1, Instruction.STATUS, bytes([ALERT_BIT]) + u32(0xFFFFFFFF)),
    Packet(3, Instruction.WRITE, h("74 00 FF FF FD 00")),
    Packet(2, Instruction.PING, b""),
]


def test_parser_splits_at_every_byte_boundary() -> None:
    wire = b"".join(STREAM)
    for cut in range(len(wire) + 1):
        parser = PacketParser()
        assert parser.feed(wire[:cut]) + parser.feed(wire[cut:]) == EXPECTED, cut
        assert parser.pending_bytes == 0
    parser = PacketParser()
    assert [p for i in range(len(wire)) for p in parser.feed(wire[i : i + 1])] == EXPECTED


@pytest.mark.parametrize("junk", ["", "00", "FF", "FF FF", "FF FF FD", "12 FF FF FD FD 00 FF", "FF FF FD 01 FF"])
def test_parser_resyncs_after_junk_prefix(junk: str) -> None:
    parser = PacketParser()
    assert parser.feed(h(junk) + STUFFED_WRITE) == [EXPECTED[2]]
    assert parser.discarded_bytes == len(h(junk))
    assert (parser.crc_errors, parser.length_errors, parser.pending_bytes) == (0, 0, 0)


def test_parser_counts_a_crc_error_and_still_finds_the_next_frame() -> None:
    bad = bytearray(status_packet(1, 0, u32(2048)))
    bad[-3] ^= 0x01  # one data bit flips on the wire
    parser = PacketParser()
    assert parser.feed(bytes(bad) + ping_packet(2)) == [EXPECTED[3]]
    assert (parser.crc_errors, parser.length_errors) == (1, 0)
    assert parser.discarded_bytes == len(bad)


def test_parser_finds_a_frame_that_starts_inside_a_truncated_one() -> None:
    truncated = status_packet(1, 0, u32(2048))[:9]  # sender died mid-frame
    good = status_packet(2, 0, u32(1024))
    parser = PacketParser()
    assert parser.feed(truncated + good) == [Packet(2, Instruction.STATUS, b"\x00" + u32(1024))]
    assert parser.crc_errors == 1
    assert parser.discarded_bytes == len(truncated)


def test_stuffed_body_is_not_a_header_when_resyncing() -> None:
    bad = bytearray(STUFFED_WRITE)
    bad[-1] ^= 0xFF
    parser = PacketParser()
    assert parser.feed(bytes(bad) + ping_packet(2)) == [EXPECTED[3]]
    assert (parser.crc_errors, parser.length_errors) == (1, 0)


@pytest.mark.parametrize("length", [0x0000, 0x0002, 0x0408, 0xFFFF])
def test_parser_drops_a_bogus_length_without_waiting(length: int) -> None:
    fake = HEADER + b"\x01" + length.to_bytes(2, "little")
    parser = PacketParser()
    assert parser.feed(fake + ping_packet(2)) == [EXPECTED[3]]
    assert parser.length_errors == 1
    assert parser.discarded_bytes == len(fake)
    assert parser.pending_bytes == 0


def test_parser_length_guard_follows_max_params_length() -> None:
    parser = PacketParser(max_params_length=5)  # error byte + 4 data bytes
    assert parser.feed(status_packet(1, 0, u32(7))) == [Packet(1, Instruction.STATUS, b"\x00" + u32(7))]
    assert parser.feed(status_packet(1, 0, u32(7) + b"\x00")) == []
    assert parser.length_errors == 1
    with pytest.raises(ValueError):
        PacketParser(max_params_length=-1)


def test_partial_frame_is_pending_until_completed_or_reset() -> None:
    wire = status_packet(1, 0, u32(2048))
    parser = PacketParser()
    assert parser.pending_bytes == 0
    assert parser.feed(wire[:7]) == []
    assert parser.pending_bytes == 7
    assert parser.feed(wire[7:]) == [Packet(1, Instruction.STATUS, b"\x00" + u32(2048))]
    assert parser.pending_bytes == 0
    assert parser.feed(wire[:10]) == []
    parser.reset()
    assert (parser.pending_bytes, parser.discarded_bytes) == (0, 10)
    assert parser.feed(wire) == [Packet(1, Instruction.STATUS, b"\x00" + u32(2048))]


def test_codec_modules_import_only_the_standard_library() -> None:
    # Loaded by path, so that whatever drivers/__init__.py imports does not count against them.
    code = """
import importlib.util, sys
from pathlib import Path
for name in ("protocol2", "control_table"):
    spec = importlib.util.spec_from_file_location(f"_codec_{name}", Path("drivers") / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
print(sorted({"torch", "pybullet", "serial", "numpy", "drivers", "robot_sac"} & set(sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
