"""Unit naming (STYLE.md rule 12): every unit-bearing config key carries its SI unit in its name."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterator
from typing import Any

import pytest

from robot_sac.config_loader import (
    UNIT_SUFFIXES,
)
from robot_sac.configs import (
    TrainConfig,
)
from robot_sac.spec import JointSpec, RobotSpec, load_robot_spec
from tests.conftest import ARM4_YAML as ARM4

# --- unit naming (STYLE.md rule 12) --------------------------------------------------------------


def _scalar_type(tp: Any) -> Any:
    """float for ``float``, ``float | None`` and ``tuple[float, ...]``; the schema type otherwise."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _scalar_type(inner)
    if origin is tuple:
        items = {a for a in typing.get_args(tp) if a is not Ellipsis}
        assert len(items) == 1, f"mixed tuple {tp!r}"
        return _scalar_type(items.pop())
    return tp


def _schema_fields(cls: type, seen: set[type] | None = None) -> Iterator[tuple[type, dataclasses.Field[Any], Any]]:
    """Every (schema, field, scalar type) reachable from ``cls``, each schema once."""
    seen = set() if seen is None else seen
    if cls in seen:
        return
    seen.add(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        scalar = _scalar_type(hints[f.name])
        if dataclasses.is_dataclass(scalar):
            yield from _schema_fields(scalar, seen)  # type: ignore[arg-type]
        else:
            yield cls, f, scalar


def _suffix_unit(name: str) -> str | None:
    """The unit whose suffix is the longest one ``name`` ends with (``_rad_s`` beats ``_s``)."""
    matches = [(len(suffix), unit) for unit, suffix in UNIT_SUFFIXES.items() if name.endswith(suffix)]
    return max(matches)[1] if matches else None


SCHEMA_FIELDS = [*_schema_fields(TrainConfig), *_schema_fields(RobotSpec)]


def test_schema_walk_reaches_every_schema() -> None:
    schemas = {cls.__name__ for cls, _, _ in SCHEMA_FIELDS}
    assert {"TrainConfig", "SACConfig", "EnvConfig", "ArmReachConfig", "SimConfig", "RandomizationConfig"} <= schemas
    assert {"SafetyConfig", "NormalizationConfig", "RobotSpec", "JointSpec"} <= schemas
    assert sum(1 for _, f, _ in SCHEMA_FIELDS if f.metadata.get("unit")) >= 15


@pytest.mark.parametrize(
    ("cls", "field"),
    [(cls, f) for cls, f, _ in SCHEMA_FIELDS if f.metadata.get("unit")],
    ids=lambda x: x.__name__ if isinstance(x, type) else x.name,
)
def test_every_unit_field_name_ends_with_its_unit_suffix(cls: type, field: dataclasses.Field[Any]) -> None:
    unit = field.metadata["unit"]
    assert unit in UNIT_SUFFIXES, f"{cls.__name__}.{field.name}: unit {unit!r} has no entry in UNIT_SUFFIXES"
    assert field.name.endswith(UNIT_SUFFIXES[unit]), (
        f"{cls.__name__}.{field.name} should end with {UNIT_SUFFIXES[unit]}"
    )
    assert _suffix_unit(field.name) == unit


@pytest.mark.parametrize(
    ("cls", "field"),
    [(cls, f) for cls, f, scalar in SCHEMA_FIELDS if scalar is float and _suffix_unit(f.name)],
    ids=lambda x: x.__name__ if isinstance(x, type) else x.name,
)
def test_every_float_field_with_a_unit_suffix_declares_the_unit(cls: type, field: dataclasses.Field[Any]) -> None:
    assert field.metadata.get("unit") == _suffix_unit(field.name), f"{cls.__name__}.{field.name}"


def test_every_schema_field_is_declared_with_param() -> None:
    for cls, f, _ in SCHEMA_FIELDS:
        assert {"unit", "ge", "gt", "le", "lt", "doc"} <= set(f.metadata), f"{cls.__name__}.{f.name} lacks param()"


def test_joint_spec_properties_derive_from_fields() -> None:
    joint = load_robot_spec(ARM4).joints[0]
    assert isinstance(joint, JointSpec)
    assert joint.soft_lower_rad == joint.lower_rad + joint.soft_margin_rad
    assert joint.soft_upper_rad == joint.upper_rad - joint.soft_margin_rad
