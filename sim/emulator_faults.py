"""Fault injection for the servo emulator: a text spec, parsed into frozen rules, applied per servo and time.

Grammar (whitespace around tokens is ignored)::

    spec   := clause (";" clause)*
    clause := mode [":" key "=" value ("," key "=" value)*]

e.g. ``"silent:id=13,after=37; bad_crc:p=0.05; alert:id=12,bits=0x20,after=50; unplug:after=200"``.

Keys every mode takes: ``id`` (servo ID; omitted = every servo), ``after`` (the rule starts once this
many instruction packets, to any ID, have reached the emulator), ``at_s`` (starts this many seconds
after the emulator started); windowed modes also take ``until_s`` (ends then). Modes:

=================  ========================================================================  ================
mode               effect while active                                                       extra keys
=================  ========================================================================  ================
silent             the servo sends no status packets                                         p
bad_crc            status packets go out with a wrong CRC                                    p
partial            only the first ``bytes`` bytes of a status packet go out (default 7)      p, bytes
garbage_prefix     ``bytes`` junk bytes (default 8) precede a valid status packet           p, bytes
bogus_length       the LEN field of status packets reads 0xFFFF                              p
latency            replies leave ``ms`` milliseconds later                                   ms (required), p
drop_writes        WRITE / SYNC_WRITE data to the servo is silently ignored                  p
freeze_tick        realtime tick and present values stop updating                            (none)
alert              once: sets Hardware Error Status ``bits`` (torque off per Shutdown)       bits (required)
reboot             once: RAM reset, tick restarts, no reply for 100 ms                       (none)
unplug             once: the pty master closes (the host sees a pulled USB cable)            (no id)
                   packets after the trigger are lost; replies already sent get 20 ms
                   to be read before the close
=================  ========================================================================  ================

A silent servo still hears and executes instructions (a dead TX line); only its replies are missing.
``p`` is a probability per packet (default 1), drawn from a seeded `numpy.random.Generator`, so a
seed and the same packet sequence give the same faults. One-shot modes (alert, reboot, unplug) fire
once, when ``after`` and ``at_s`` are both satisfied (at start when neither is given).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from drivers.protocol2 import MAX_ID
from robot_sac.errors import ConfigError


class FaultMode(enum.StrEnum):
    """What a rule does (see the module docstring)."""

    SILENT = "silent"
    BAD_CRC = "bad_crc"
    PARTIAL = "partial"
    GARBAGE_PREFIX = "garbage_prefix"
    BOGUS_LENGTH = "bogus_length"
    LATENCY = "latency"
    DROP_WRITES = "drop_writes"
    FREEZE_TICK = "freeze_tick"
    ALERT = "alert"
    REBOOT = "reboot"
    UNPLUG = "unplug"


ONE_SHOT_MODES = frozenset({FaultMode.ALERT, FaultMode.REBOOT, FaultMode.UNPLUG})
"""Modes that fire once instead of holding over a window."""

_COMMON = ("id", "after", "at_s", "until_s")
_KEYS: Mapping[FaultMode, tuple[str, ...]] = {
    FaultMode.SILENT: (*_COMMON, "p"),
    FaultMode.BAD_CRC: (*_COMMON, "p"),
    FaultMode.PARTIAL: (*_COMMON, "p", "bytes"),
    FaultMode.GARBAGE_PREFIX: (*_COMMON, "p", "bytes"),
    FaultMode.BOGUS_LENGTH: (*_COMMON, "p"),
    FaultMode.LATENCY: (*_COMMON, "p", "ms"),
    FaultMode.DROP_WRITES: (*_COMMON, "p"),
    FaultMode.FREEZE_TICK: _COMMON,
    FaultMode.ALERT: ("id", "after", "at_s", "bits"),
    FaultMode.REBOOT: ("id", "after", "at_s"),
    FaultMode.UNPLUG: ("after", "at_s"),
}
_REQUIRED: Mapping[FaultMode, tuple[str, ...]] = {FaultMode.ALERT: ("bits",), FaultMode.LATENCY: ("ms",)}
_DEFAULT_BYTES: Mapping[FaultMode, int] = {FaultMode.PARTIAL: 7, FaultMode.GARBAGE_PREFIX: 8}
_JUNK = bytes([0x00, 0xFF, 0xFF, 0xFD, 0xFD, 0x55, 0xAA, 0xFF])
"""Garbage prefix pattern: a stuffed-looking ``FF FF FD FD`` and a trailing ``FF`` that abuts the real header."""


@dataclass(frozen=True, kw_only=True)
class FaultRule:
    """One parsed clause of a fault spec.

    Attributes:
        mode: what the rule does.
        token: the clause as written (for messages and the record).
        servo_id: the servo it targets; None for every servo.
        after: instruction packets the emulator must have received before the rule starts.
        at_s: seconds since emulator start before the rule starts.
        until_s: seconds since emulator start at which the rule ends (windowed modes only).
        p: probability per packet.
        n_bytes: bytes sent (partial) or prepended (garbage_prefix).
        bits: Hardware Error Status bits (alert).
        latency_s: added reply delay (latency), s.
    """

    mode: FaultMode
    token: str
    servo_id: int | None = None
    after: int | None = None
    at_s: float | None = None
    until_s: float | None = None
    p: float = 1.0
    n_bytes: int = 0
    bits: int = 0
    latency_s: float = 0.0

    def targets(self, servo_id: int) -> bool:
        """The rule concerns ``servo_id``."""
        return self.servo_id is None or self.servo_id == servo_id

    def started(self, packets: int, elapsed_s: float) -> bool:
        """``after`` and ``at_s`` are satisfied (``packets`` received so far, ``elapsed_s`` since start)."""
        return (self.after is None or packets >= self.after) and (self.at_s is None or elapsed_s >= self.at_s)

    def active(self, packets: int, elapsed_s: float) -> bool:
        """Inside its window: started and not past ``until_s``."""
        return self.started(packets, elapsed_s) and (self.until_s is None or elapsed_s < self.until_s)


def _fail(token: str, why: str) -> ConfigError:
    modes = ", ".join(m.value for m in FaultMode)
    return ConfigError(f"fault spec clause {token!r}: {why}. Valid modes: {modes}; grammar: mode[:key=value,...]")


def _number(token: str, key: str, raw: str, *, integer: bool, low: float, high: float) -> float:
    try:
        value = float(int(raw, 0)) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise _fail(token, f"{key}={raw!r} is not {kind}") from None
    if not (math.isfinite(value) and low <= value <= high):
        raise _fail(token, f"{key}={raw} is out of range [{low}, {high}]")
    return value


def _parse_clause(token: str) -> FaultRule:
    name, _, args = token.partition(":")
    try:
        mode = FaultMode(name.strip())
    except ValueError:
        raise _fail(token, f"unknown mode {name.strip()!r}") from None
    allowed = _KEYS[mode]
    given: dict[str, str] = {}
    for item in filter(None, (a.strip() for a in args.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq or not raw:
            raise _fail(token, f"{item!r} is not key=value")
        if key not in allowed:
            raise _fail(token, f"unknown key {key!r} for {mode.value}; valid keys: {', '.join(allowed)}")
        if key in given:
            raise _fail(token, f"key {key!r} given twice")
        given[key] = raw
    missing = [k for k in _REQUIRED.get(mode, ()) if k not in given]
    if missing:
        raise _fail(token, f"{mode.value} needs {', '.join(missing)}")
    g = given
    rule = FaultRule(
        mode=mode,
        token=token,
        servo_id=int(_number(token, "id", g["id"], integer=True, low=0, high=MAX_ID)) if "id" in g else None,
        after=int(_number(token, "after", g["after"], integer=True, low=0, high=2**62)) if "after" in g else None,
        at_s=_number(token, "at_s", g["at_s"], integer=False, low=0, high=1e9) if "at_s" in g else None,
        until_s=_number(token, "until_s", g["until_s"], integer=False, low=0, high=1e9) if "until_s" in g else None,
        p=_number(token, "p", g["p"], integer=False, low=0, high=1) if "p" in g else 1.0,
        n_bytes=int(_number(token, "bytes", g["bytes"], integer=True, low=0, high=4096))
        if "bytes" in g
        else _DEFAULT_BYTES.get(mode, 0),
        bits=int(_number(token, "bits", g["bits"], integer=True, low=1, high=255)) if "bits" in g else 0,
        latency_s=_number(token, "ms", g["ms"], integer=False, low=0, high=10_000) / 1000 if "ms" in g else 0.0,
    )
    if rule.until_s is not None and rule.at_s is not None and rule.until_s <= rule.at_s:
        raise _fail(token, f"until_s={rule.until_s} must be after at_s={rule.at_s}")
    return rule


def parse_faults(spec: str) -> tuple[FaultRule, ...]:
    """Parse a fault spec (see the module docstring); an empty spec gives no rules.

    Raises:
        ConfigError: naming the bad clause and listing the valid modes, or the mode's valid keys.
    """
    return tuple(_parse_clause(token.strip()) for token in spec.split(";") if token.strip())


@dataclass(frozen=True)
class FaultEvent:
    """A fault that was applied, for the emulator's record.

    Attributes:
        mode: the rule's mode.
        servo_id: the servo it hit (None: the whole bus).
        rule: the clause as written.
    """

    mode: FaultMode
    servo_id: int | None
    rule: str

    def as_record(self) -> dict[str, object]:
        """The JSON fields of a ``{"event": "fault", ...}`` record line."""
        return {"event": "fault", "mode": self.mode.value, "id": self.servo_id, "rule": self.rule}


class FaultInjector:
    """Applies parsed rules: decides per packet with a seeded generator, fires one-shot events once.

    Args:
        rules: from `parse_faults`.
        seed: seeds the generator behind every probability.
        clock: monotonic seconds; ``at_s``/``until_s`` count from construction.
    """

    def __init__(self, rules: tuple[FaultRule, ...], seed: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rules = rules
        self._rng = np.random.default_rng(seed)
        self._clock = clock
        self._start_s = clock()
        self._fired: set[int] = set()
        self.packets = 0
        """Instruction packets received so far (the emulator calls `count_packet`)."""

    def add(self, rules: tuple[FaultRule, ...]) -> None:
        """Add rules at run time; their ``after``/``at_s``/``until_s`` count from now.

        This is how a test injects a fault at a chosen moment (``EmulatorProcess.inject``), rather
        than guessing how many packets connecting and homing will take.
        """
        elapsed = self._elapsed_s()
        self.rules = self.rules + tuple(
            dataclasses.replace(
                r,
                after=self.packets + (r.after or 0),
                at_s=elapsed + (r.at_s or 0.0),
                until_s=None if r.until_s is None else elapsed + r.until_s,
            )
            for r in rules
        )

    def count_packet(self) -> None:
        """One more instruction packet reached the emulator (call after deciding its faults)."""
        self.packets += 1

    def _elapsed_s(self) -> float:
        return self._clock() - self._start_s

    def _hits(self, mode: FaultMode, servo_id: int) -> list[FaultRule]:
        """Active rules of ``mode`` for ``servo_id`` that fire this time (one draw per rule with p < 1)."""
        elapsed = self._elapsed_s()
        live = [r for r in self.rules if r.mode is mode and r.targets(servo_id) and r.active(self.packets, elapsed)]
        # One draw per live rule with p < 1, so that the same packet sequence gives the same faults.
        return [r for r in live if r.p >= 1.0 or self._rng.random() < r.p]

    def shape_reply(self, servo_id: int, packet: bytes) -> tuple[bytes | None, float, list[FaultEvent]]:
        """Apply the reply faults to one status packet.

        Returns:
            (bytes to send or None for silence, extra delay in s, the faults applied).
        """
        events: list[FaultEvent] = []

        def hit(mode: FaultMode) -> list[FaultRule]:
            rules = self._hits(mode, servo_id)
            events.extend(FaultEvent(mode, servo_id, r.token) for r in rules)
            return rules

        if hit(FaultMode.SILENT):
            return None, 0.0, events
        data = bytearray(packet)
        if hit(FaultMode.BAD_CRC):
            data[-1] ^= 0xFF  # any change of the CRC bytes is a CRC mismatch
        if hit(FaultMode.BOGUS_LENGTH):
            data[5:7] = b"\xff\xff"
        for rule in hit(FaultMode.PARTIAL):
            data = data[: rule.n_bytes]
        for rule in hit(FaultMode.GARBAGE_PREFIX):
            data[:0] = (_JUNK * (rule.n_bytes // len(_JUNK) + 1))[: rule.n_bytes]
        delay_s = sum(rule.latency_s for rule in hit(FaultMode.LATENCY))
        return bytes(data), delay_s, events

    def drop_write(self, servo_id: int) -> FaultEvent | None:
        """Whether write data to ``servo_id`` is silently ignored this time (the event if so)."""
        rules = self._hits(FaultMode.DROP_WRITES, servo_id)
        return FaultEvent(FaultMode.DROP_WRITES, servo_id, rules[0].token) if rules else None

    def frozen(self, servo_id: int) -> bool:
        """Realtime tick and present values of ``servo_id`` are frozen now."""
        return self.freeze_event(servo_id) is not None

    def freeze_event(self, servo_id: int) -> FaultEvent | None:
        """The freeze_tick rule holding ``servo_id``'s tick and present values now, as an event (None: live)."""
        elapsed = self._elapsed_s()
        for r in self.rules:
            if r.mode is FaultMode.FREEZE_TICK and r.targets(servo_id) and r.active(self.packets, elapsed):
                return FaultEvent(FaultMode.FREEZE_TICK, servo_id, r.token)
        return None

    def due_events(self) -> list[FaultRule]:
        """One-shot rules whose start has come and that have not fired yet (each is returned once)."""
        elapsed = self._elapsed_s()
        due = []
        for index, rule in enumerate(self.rules):
            if rule.mode in ONE_SHOT_MODES and index not in self._fired and rule.started(self.packets, elapsed):
                self._fired.add(index)
                due.append(rule)
        return due
