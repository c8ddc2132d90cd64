"""Calibration: the map between a robot's joints (SI) and its servos (bus IDs, models, ticks).

Stored as JSON beside the robot config (``configs/calibration/<robot>.json``), one entry per joint
in chain order::

    {"schema_version": 1, "robot": "rs_arm4",
     "joints": [{"name": "base_yaw", "servo_id": 11, "model": "XL430-W250", "zero_tick": 2048,
                 "direction": 1}, ...]}

``angle_rad = direction * (tick - zero_tick) * 2π / ticks_per_rev``: ``zero_tick`` is the reading
at the joint's 0 rad, ``direction`` flips servos mounted the other way round. Device units never
leave ``drivers/``: everything above this module speaks rad, rad/s and N·m.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from drivers.control_table import MODEL_NUMBERS
from robot_sac.atomic import write_bytes_atomic
from robot_sac.errors import ConfigError
from robot_sac.spec import RobotSpec

SCHEMA_VERSION = 1
_RPM_TO_RAD_S = 2.0 * math.pi / 60.0


@dataclass(frozen=True)
class ServoModel:
    """What the driver needs to know about one servo model (X series, Protocol 2.0).

    Attributes:
        name: ROBOTIS model name, e.g. ``"XM430-W350"``.
        ticks_per_rev: position resolution (4096 on the X series: 0.088° per tick).
        velocity_rad_s_per_unit: Present/Goal_Velocity unit (0.229 rev/min) in rad/s.
        effort_nm_per_unit: Present_Current (XM: 2.69 mA) or Present_Load (XL: 0.1 % of stall
            torque) converted to joint torque in N·m, an estimate good to ~20 %.
        stall_torque_nm: stall torque at 12 V.
    """

    name: str
    ticks_per_rev: int
    velocity_rad_s_per_unit: float
    effort_nm_per_unit: float
    stall_torque_nm: float

    @property
    def model_number(self) -> int:
        """The value of the Model_Number register (address 0)."""
        return MODEL_NUMBERS[self.name]


SERVO_MODELS: Mapping[str, ServoModel] = {
    # XM430-W350: 4.1 N·m stall at 2.3 A, so ~1.78 N·m/A; current unit 2.69 mA.
    "XM430-W350": ServoModel("XM430-W350", 4096, 0.229 * _RPM_TO_RAD_S, 2.69e-3 * 4.1 / 2.3, 4.1),
    # XL430-W250 reports load in 0.1 % of its 1.5 N·m stall torque.
    "XL430-W250": ServoModel("XL430-W250", 4096, 0.229 * _RPM_TO_RAD_S, 1e-3 * 1.5, 1.5),
}
"""Models this driver has conversion data for."""


@dataclass(frozen=True)
class JointCalibration:
    """One joint's servo."""

    name: str
    servo_id: int
    model: str
    zero_tick: int
    direction: int

    @property
    def servo(self) -> ServoModel:
        """The model's conversion data."""
        return SERVO_MODELS[self.model]

    @property
    def rad_per_tick(self) -> float:
        """Signed joint angle per position tick."""
        return self.direction * 2.0 * math.pi / self.servo.ticks_per_rev


class Calibration:
    """The validated joint ↔ servo map of one robot, with vectorized unit conversions.

    Arrays are in the spec's joint order; conversions work on shape ``(dof,)``.
    """

    def __init__(self, spec: RobotSpec, joints: tuple[JointCalibration, ...], source: str = "<memory>") -> None:
        """Validate ``joints`` against ``spec``.

        Raises:
            ConfigError: names or order differ from the spec, duplicate or invalid IDs, an unknown
                model, a direction other than ±1, or joint limits that fall outside the servo's
                position range (0 ... ticks_per_rev - 1) under this calibration.
        """
        self.spec, self.joints, self.source = spec, joints, source
        names = tuple(j.name for j in joints)
        if names != spec.joint_names:
            raise ConfigError(
                f"{source}: joints {list(names)} must be the robot's joints in order {list(spec.joint_names)}"
            )
        ids = [j.servo_id for j in joints]
        if len(set(ids)) != len(ids) or not all(0 <= i <= 252 for i in ids):
            raise ConfigError(f"{source}: servo_id values {ids} must be unique bus IDs in 0..252")
        for j in joints:
            if j.model not in SERVO_MODELS:
                raise ConfigError(f"{source}: joint {j.name}: unknown model {j.model!r}; known: {sorted(SERVO_MODELS)}")
            if j.direction not in (-1, 1):
                raise ConfigError(f"{source}: joint {j.name}: direction must be 1 or -1, got {j.direction}")
        self.ids = tuple(ids)
        self._zero = np.array([j.zero_tick for j in joints], dtype=np.float64)
        self._rad_per_tick = np.array([j.rad_per_tick for j in joints], dtype=np.float64)
        self._vel_unit = np.array([j.direction * j.servo.velocity_rad_s_per_unit for j in joints], dtype=np.float64)
        self._effort_unit = np.array([j.direction * j.servo.effort_nm_per_unit for j in joints], dtype=np.float64)
        ticks = np.stack([self.ticks_from_rad(spec.lower_rad), self.ticks_from_rad(spec.upper_rad)])
        top = np.array([j.servo.ticks_per_rev - 1 for j in joints])
        bad = (ticks.min(axis=0) < 0) | (ticks.max(axis=0) > top)
        if bad.any():
            names_bad = [spec.joint_names[i] for i in np.flatnonzero(bad)]
            raise ConfigError(
                f"{source}: joints {names_bad}: the hard limits map outside the servo's 0..4095 tick range with "
                "this zero_tick/direction; re-calibrate (zero_tick near 2048 for joints centred on 0 rad)"
            )

    # --- conversions ---------------------------------------------------------------------------------

    def rad_from_ticks(self, ticks: np.ndarray) -> np.ndarray:
        """Joint angles in rad from Present_Position ticks, shape (dof,)."""
        return (np.asarray(ticks, dtype=np.float64) - self._zero) * self._rad_per_tick

    def ticks_from_rad(self, angle_rad: np.ndarray) -> np.ndarray:
        """Goal_Position ticks (int64, rounded to nearest) for joint angles in rad, shape (dof,)."""
        ticks = self._zero + np.asarray(angle_rad, dtype=np.float64) / self._rad_per_tick
        return np.rint(ticks).astype(np.int64)

    def velocity_rad_s(self, raw: np.ndarray) -> np.ndarray:
        """Joint velocities in rad/s from Present_Velocity units (signed), shape (dof,)."""
        return np.asarray(raw, dtype=np.float64) * self._vel_unit

    def velocity_units(self, velocity_rad_s: np.ndarray) -> np.ndarray:
        """Velocity register units (unsigned magnitude, rounded) for speeds in rad/s, shape (dof,)."""
        return np.rint(np.abs(np.asarray(velocity_rad_s, dtype=np.float64) / self._vel_unit)).astype(np.int64)

    def effort_nm(self, raw: np.ndarray) -> np.ndarray:
        """Joint torque estimates in N·m from Present_Current/Load units (signed), shape (dof,)."""
        return np.asarray(raw, dtype=np.float64) * self._effort_unit

    # --- storage ---------------------------------------------------------------------------------------

    def to_mapping(self) -> dict[str, Any]:
        """The JSON document."""
        return {
            "schema_version": SCHEMA_VERSION,
            "robot": self.spec.name,
            "joints": [
                {
                    "name": j.name,
                    "servo_id": j.servo_id,
                    "model": j.model,
                    "zero_tick": j.zero_tick,
                    "direction": j.direction,
                }
                for j in self.joints
            ],
        }

    def save(self, path: str | Path) -> None:
        """Write the JSON atomically (a crash leaves the previous calibration)."""
        write_bytes_atomic(path, (json.dumps(self.to_mapping(), indent=2) + "\n").encode())


_JOINT_KEYS = ("name", "servo_id", "model", "zero_tick", "direction")


def load_calibration(path: str | Path, spec: RobotSpec) -> Calibration:
    """Read and validate a calibration JSON for ``spec``.

    Raises:
        ConfigError: missing file, bad JSON, wrong schema or robot, missing/unknown keys, wrong types,
            or any check of `Calibration`; the message names the file and the field.
    """
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"calibration file {path} does not exist; write one (see drivers/calibration.py)") from err
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"calibration file {path} is not readable JSON: {err}") from err
    if not isinstance(doc, dict) or set(doc) != {"schema_version", "robot", "joints"}:
        raise ConfigError(f"{path}: expected exactly the keys schema_version, robot, joints")
    if doc["schema_version"] != SCHEMA_VERSION:
        raise ConfigError(f"{path}: schema_version {doc['schema_version']!r} is not {SCHEMA_VERSION}")
    if doc["robot"] != spec.name:
        raise ConfigError(f"{path}: calibration is for robot {doc['robot']!r}, the config describes {spec.name!r}")
    if not isinstance(doc["joints"], list):
        raise ConfigError(f"{path}: joints must be a list")
    return Calibration(spec, tuple(_joint(path, i, j) for i, j in enumerate(doc["joints"])), source=str(path))


def _joint(path: Path, index: int, entry: object) -> JointCalibration:
    where = f"{path}: joints[{index}]"
    if not isinstance(entry, dict) or set(entry) != set(_JOINT_KEYS):
        raise ConfigError(f"{where}: expected exactly the keys {list(_JOINT_KEYS)}")
    for key in ("servo_id", "zero_tick", "direction"):
        if not isinstance(entry[key], int) or isinstance(entry[key], bool):
            raise ConfigError(f"{where}.{key}: must be an integer, got {entry[key]!r}")
    if not isinstance(entry["name"], str) or not isinstance(entry["model"], str):
        raise ConfigError(f"{where}: name and model must be strings")
    return JointCalibration(entry["name"], entry["servo_id"], entry["model"], entry["zero_tick"], entry["direction"])
