"""Protocol 2.0 parser properties (hypothesis): random streams never raise; valid frames are always found."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.protocol2 import (
    HEADER,
    Packet,
    PacketParser,
    encode_packet,
)

PROPERTY = settings(max_examples=200, deadline=None, derandomize=True, database=None)
header_heavy = st.lists(st.sampled_from([0xFF, 0xFD, 0x00]) | st.integers(0, 255), max_size=64).map(bytes)


# --- parser properties -------------------------------------------------------------------------


def _crc_bitwise(data: bytes) -> int:
    """Reference CRC-16 (poly 0x8005), bit by bit: independent of the module's lookup table."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def _reference_parse(wire: bytes, max_len_field: int = 1027) -> tuple[list[Packet], int]:
    """Non-incremental parse of a whole stream: (packets, bytes left pending at the end)."""
    packets: list[Packet] = []
    i = last_end = 0
    while i + 4 <= len(wire):
        if wire[i : i + 4] != HEADER:
            i += 1
            continue
        if i + 7 > len(wire):
            return packets, len(wire) - i
        length = int.from_bytes(wire[i + 5 : i + 7], "little")
        end = i + 7 + length
        plausible = 3 <= length <= max_len_field
        if plausible and end > len(wire):
            return packets, len(wire) - i
        if plausible and _crc_bitwise(wire[i : end - 2]) == int.from_bytes(wire[end - 2 : end], "little"):
            body = wire[i + 7 : end - 2].replace(b"\xff\xff\xfd\xfd", b"\xff\xff\xfd")
            packets.append(Packet(wire[i + 4], body[0], body[1:]))
            i = last_end = end
        else:
            i += 1
    tail = wire[max(i, last_end) :]
    keep = next((n for n in (3, 2, 1) if len(tail) >= n and tail.endswith(HEADER[:n])), 0)
    return packets, keep


frames = st.builds(encode_packet, st.integers(0, 252), st.integers(0, 255), header_heavy)


@st.composite
def noisy_streams(draw: st.DrawFn) -> bytes:
    """Valid, corrupted and truncated frames, header fragments and junk, concatenated."""
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["frame", "corrupt", "truncated", "fragment", "junk"]))
        if kind == "junk":
            parts.append(draw(header_heavy))
        elif kind == "fragment":
            parts.append(HEADER[: draw(st.integers(1, 4))] + draw(st.binary(max_size=3)))
        else:
            frame = bytearray(draw(frames))
            if kind == "corrupt":
                frame[draw(st.integers(4, len(frame) - 1))] ^= draw(st.integers(1, 255))
            elif kind == "truncated":
                del frame[draw(st.integers(1, len(frame) - 1)) :]
            parts.append(bytes(frame))
    return b"".join(parts)


def _chunks(wire: bytes, sizes: list[int]) -> list[bytes]:
    out, pos = [], 0
    for size in sizes:
        out.append(wire[pos : pos + size])
        pos += size
    return [*out, wire[pos:]]


@PROPERTY
@given(wire=noisy_streams() | st.binary(max_size=300), sizes=st.lists(st.integers(0, 40), max_size=20))
def test_parser_never_raises_and_emits_only_crc_valid_packets(wire: bytes, sizes: list[int]) -> None:
    parser = PacketParser()
    packets = [p for chunk in _chunks(wire, sizes) for p in parser.feed(chunk)]
    expected, pending = _reference_parse(wire)
    assert packets == expected
    assert parser.pending_bytes == pending
    emitted = sum(len(encode_packet(p.servo_id, p.instruction, p.params)) for p in packets)
    assert parser.discarded_bytes + emitted + parser.pending_bytes == len(wire)


@PROPERTY
@given(junk=header_heavy, frame=frames, sizes=st.lists(st.integers(0, 30), max_size=10))
def test_a_frame_after_header_free_junk_is_always_found(junk: bytes, frame: bytes, sizes: list[int]) -> None:
    while HEADER in junk:  # removing one header can join two halves into another, hence the loop
        junk = junk.replace(HEADER, b"")
    parser = PacketParser()
    packets = [p for chunk in _chunks(junk + frame, sizes) for p in parser.feed(chunk)]
    (packet,) = packets
    assert encode_packet(packet.servo_id, packet.instruction, packet.params) == frame
    assert parser.discarded_bytes == len(junk)
    assert (parser.crc_errors, parser.length_errors, parser.pending_bytes) == (0, 0, 0)
