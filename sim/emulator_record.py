"""The servo emulator's record: what reached the wire, as JSON lines (written by the emulator, read by tests).

One JSON object a line, flushed a line at a time; ``t_s`` is ``time.monotonic()`` (comparable with
the host's clock on the same machine). Instruction lines::

    {"t_s": 12.3, "instruction": "SYNC_WRITE", "ids": [11, 12], "address": 116, "length": 4,
     "values": {"11": 2048, "12": 1900}}

* ``instruction``: the `drivers.protocol2.Instruction` name (``"0x77"`` for unknown ones);
  ``ids``: the addressed IDs in packet order (254 for broadcast PING/WRITE/REBOOT).
* READ, WRITE, SYNC_READ, SYNC_WRITE carry ``address`` and ``length``; WRITE and SYNC_WRITE carry
  ``values`` by ID: the value decoded per the control table (signed or unsigned) when address and
  length match one register, a hex string otherwise; when the data spans several whole registers,
  ``registers`` maps ID -> {register name: value} as well.
* BULK_READ / BULK_WRITE carry ``requests``: ID -> {"address", "length"[, "value"]}.
* A packet whose parameters do not parse carries ``"malformed": <hex>``.

Event lines: ``{"event": "fault", "mode": ..., "id": ..., "rule": ...}`` (each applied fault; a
freeze_tick fault is logged for each reply that carries the frozen tick),
``{"event": "watchdog_trip", "id": ...}`` and ``{"event": "hardware_error", "id": ..., "bits": ...}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from drivers.control_table import X_SERIES
from drivers.protocol2 import Instruction

_I = Instruction
_REG_AT = {reg.address: reg for reg in X_SERIES.values()}
_GOAL = X_SERIES["goal_position"]
_WRITES = (_I.WRITE, _I.SYNC_WRITE, _I.BULK_WRITE)

Request = tuple[int, int, int, bytes]
"""(servo ID, address, length, data) of one servo's part of an instruction."""


def instruction_name(inst: int) -> str:
    """``"SYNC_WRITE"`` for 0x83, ``"0x77"`` for a byte that is no instruction."""
    try:
        return _I(inst).name
    except ValueError:
        return f"0x{inst:02X}"


def _u16(data: bytes, offset: int) -> int:
    return int.from_bytes(data[offset : offset + 2], "little")


def decode_write(address: int, data: bytes) -> tuple[int | str, dict[str, int] | None]:
    """A written value as recorded: (the register's value or hex, name -> value for whole-register spans)."""
    reg = _REG_AT.get(address)
    if reg is not None and reg.size == len(data):
        return reg.decode(data), None
    names: dict[str, int] = {}
    offset = 0
    while offset < len(data):
        reg = _REG_AT.get(address + offset)
        if reg is None or offset + reg.size > len(data):
            return data.hex(), None
        names[reg.name] = reg.decode(data[offset : offset + reg.size])
        offset += reg.size
    return data.hex(), names


def parse_requests(servo_id: int, inst: int, params: bytes) -> list[Request] | None:
    """Split an instruction's parameters per addressed servo (e-manual Protocol 2.0); None when malformed."""
    if inst == _I.READ:
        return [(servo_id, _u16(params, 0), _u16(params, 2), b"")] if len(params) == 4 else None
    if inst == _I.WRITE:
        return [(servo_id, _u16(params, 0), len(params) - 2, params[2:])] if len(params) >= 3 else None
    if inst in (_I.SYNC_READ, _I.SYNC_WRITE):
        address, length = _u16(params, 0), _u16(params, 2)
        step = 1 if inst == _I.SYNC_READ else 1 + length
        if len(params) < 4 or (len(params) - 4) % step:
            return None
        return [(params[i], address, length, params[i + 1 : i + step]) for i in range(4, len(params), step)]
    if inst in (_I.BULK_READ, _I.BULK_WRITE):
        requests, i = [], 0
        while i + 5 <= len(params):
            length = _u16(params, i + 3)
            data = params[i + 5 : i + 5 + length] if inst == _I.BULK_WRITE else b""
            requests.append((params[i], _u16(params, i + 1), length, data))
            i += 5 + len(data)
        return requests if i == len(params) else None
    return [(servo_id, 0, 0, b"")]  # PING, REBOOT and instructions without a data layout


def record_entry(inst: int, requests: list[Request]) -> dict[str, Any]:
    """The record line of one instruction (see the module docstring), without ``t_s``."""
    entry: dict[str, Any] = {"instruction": instruction_name(inst), "ids": [r[0] for r in requests]}
    if inst in (_I.READ, _I.WRITE, _I.SYNC_READ, _I.SYNC_WRITE) and requests:
        entry.update(address=requests[0][1], length=requests[0][2])
    decoded = {str(r[0]): decode_write(r[1], r[3]) for r in requests} if inst in _WRITES else {}
    if inst in (_I.WRITE, _I.SYNC_WRITE):
        entry["values"] = {sid: value for sid, (value, _) in decoded.items()}
    elif inst in (_I.BULK_READ, _I.BULK_WRITE):
        entry["requests"] = {
            str(r[0]): {"address": r[1], "length": r[2], **({"value": decoded[str(r[0])][0]} if decoded else {})}
            for r in requests
        }
    names = {sid: n for sid, (_, n) in decoded.items() if n}
    return {**entry, "registers": names} if names else entry


# --- reading -----------------------------------------------------------------------------------


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete line of a record file (a line still being written is left out; [] if none yet)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def goal_writes(records: list[dict[str, Any]], servo_id: int) -> list[tuple[float, int]]:
    """(t_s, Goal Position ticks) of every WRITE/SYNC_WRITE/BULK_WRITE that carried a goal for ``servo_id``.

    Broadcast WRITEs count for every servo. Writes the servo refused or a fault dropped are included:
    this is what reached the wire.
    """
    key, out = str(servo_id), []
    for entry in records:
        inst = entry.get("instruction")
        if inst == "WRITE" and "address" in entry and entry["ids"][0] in (servo_id, 0xFE):
            data_key = str(entry["ids"][0])
            write = (entry["address"], entry["length"], entry["values"][data_key])
        elif inst == "SYNC_WRITE" and key in entry.get("values", {}):
            data_key, write = key, (entry["address"], entry["length"], entry["values"][key])
        elif inst == "BULK_WRITE" and key in entry.get("requests", {}):
            request = entry["requests"][key]
            data_key, write = key, (request["address"], request["length"], request["value"])
        else:
            continue
        names = entry.get("registers", {}).get(data_key, {})
        if write[:2] == (_GOAL.address, _GOAL.size):
            out.append((entry["t_s"], int(write[2])))
        elif _GOAL.name in names:
            out.append((entry["t_s"], int(names[_GOAL.name])))
    return out
