"""Fault spec parsing (including errors) and deterministic, seeded fault decisions."""

from __future__ import annotations

import pytest

from drivers.protocol2 import PacketParser, StatusPacket, status_packet
from robot_sac.errors import ConfigError
from sim.emulator_faults import FaultInjector, FaultMode, FaultRule, parse_faults

FULL_SPEC = (
    "silent:id=13,after=37; bad_crc:p=0.05; partial:bytes=7; garbage_prefix; bogus_length; "
    "alert:id=12,bits=0x20,after=50; reboot:id=11,at_s=1.5; freeze_tick:id=12; drop_writes:id=14,p=1.0; "
    "latency:ms=5; unplug:after=200"
)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_parse_the_full_example() -> None:
    rules = parse_faults(FULL_SPEC)
    assert [r.mode for r in rules] == [FaultMode(token.split(":")[0].strip()) for token in FULL_SPEC.split(";")]
    silent, bad_crc, partial, garbage, _, alert, reboot, freeze, drop, latency, unplug = rules
    assert (silent.servo_id, silent.after, silent.p) == (13, 37, 1.0)
    assert bad_crc.servo_id is None and bad_crc.p == 0.05
    assert partial.n_bytes == 7 and garbage.n_bytes == 8
    assert (alert.servo_id, alert.bits, alert.after) == (12, 0x20, 50)
    assert (reboot.servo_id, reboot.at_s) == (11, 1.5)
    assert freeze.servo_id == 12 and (drop.servo_id, drop.p) == (14, 1.0)
    assert latency.latency_s == pytest.approx(0.005) and unplug.after == 200
    assert parse_faults("") == () and parse_faults(" ; ") == ()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("slient:id=3", "unknown mode 'slient'"),
        ("silent:idd=3", "unknown key 'idd' for silent; valid keys: id, after, at_s, until_s, p"),
        ("bad_crc:p=1.5", "p=1.5 is out of range"),
        ("bad_crc:p=abc", "is not a number"),
        ("silent:id=300", "id=300 is out of range"),
        ("silent:id=1.5", "is not an integer"),
        ("alert:id=2", "alert needs bits"),
        ("latency", "latency needs ms"),
        ("unplug:id=3", "unknown key 'id' for unplug"),
        ("reboot:until_s=3", "unknown key 'until_s'"),
        ("silent:id", "is not key=value"),
        ("silent:id=1,id=2", "given twice"),
        ("silent:at_s=2,until_s=1", "must be after at_s"),
    ],
)
def test_bad_specs_name_the_clause(spec: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_faults(f"latency:ms=1; {spec}")
    message = str(err.value)
    assert fragment in message and repr(spec) in message
    assert "Valid modes: silent, bad_crc" in message


def test_windows_by_packets_and_time() -> None:
    clock = FakeClock()
    injector = FaultInjector(parse_faults("silent:id=13,after=3; freeze_tick:at_s=1,until_s=2"), 0, clock)
    status = status_packet(13, 0, b"\x01")
    for _ in range(3):
        assert injector.shape_reply(13, status)[0] == status
        injector.count_packet()
    shaped, _, events = injector.shape_reply(13, status)
    assert shaped is None and [e.mode for e in events] == [FaultMode.SILENT]
    assert injector.shape_reply(12, status)[0] == status  # another ID
    assert not injector.frozen(11)
    clock.now_s = 1.0
    assert injector.frozen(11) and injector.frozen(14)
    clock.now_s = 2.0
    assert not injector.frozen(11)


def test_one_shot_events_fire_once() -> None:
    clock = FakeClock()
    injector = FaultInjector(parse_faults("alert:id=12,bits=0x20,after=2; reboot:at_s=0.5; unplug"), 0, clock)
    assert [r.mode for r in injector.due_events()] == [FaultMode.UNPLUG]
    injector.count_packet()
    injector.count_packet()
    assert [r.mode for r in injector.due_events()] == [FaultMode.ALERT]
    assert injector.due_events() == []
    clock.now_s = 0.5
    assert [r.mode for r in injector.due_events()] == [FaultMode.REBOOT]
    assert injector.due_events() == []


def test_reply_shaping_on_the_wire() -> None:
    status = status_packet(12, 0, bytes(range(8)))
    parse = PacketParser(64)

    def shaped(spec: str) -> bytes:
        data, _, _ = FaultInjector(parse_faults(spec), 0).shape_reply(12, status)
        assert data is not None
        return data

    assert parse.feed(shaped("bad_crc")) == [] and parse.crc_errors == 1
    assert shaped("partial:bytes=7") == status[:7]
    garbage = shaped("garbage_prefix:bytes=11")
    assert len(garbage) == len(status) + 11 and garbage.endswith(status)
    assert StatusPacket.from_packet(PacketParser(64).feed(garbage)[0]).data == bytes(range(8))
    bogus = shaped("bogus_length")
    assert bogus[5:7] == b"\xff\xff"
    assert PacketParser(64).feed(bogus) == []
    _, delay_s, _ = FaultInjector(parse_faults("latency:ms=5; latency:ms=2,id=12"), 0).shape_reply(12, status)
    assert delay_s == pytest.approx(0.007)


def _decisions(rules: tuple[FaultRule, ...], seed: int, n: int = 400) -> list[bool]:
    injector = FaultInjector(rules, seed)
    out = []
    for _ in range(n):
        out.append(injector.shape_reply(11, status_packet(11, 0))[0] != status_packet(11, 0))
        out.append(injector.drop_write(14) is not None)
    return out


def test_probabilities_are_seeded_and_about_right() -> None:
    rules = parse_faults("bad_crc:p=0.25; drop_writes:id=14,p=0.5")
    first = _decisions(rules, seed=7)
    assert first == _decisions(rules, seed=7)
    assert first != _decisions(rules, seed=8)
    crc, drops = first[0::2], first[1::2]
    assert 0.15 < sum(crc) / len(crc) < 0.35
    assert 0.4 < sum(drops) / len(drops) < 0.6
    assert not any(_decisions(parse_faults("drop_writes:id=13,p=1"), seed=1))  # other IDs untouched
