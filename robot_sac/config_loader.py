"""Strict YAML loading into frozen, validated dataclasses.

Why not pydantic: the robot spec and the safety config are loaded on the embedded controller, whose
import budget is numpy, gymnasium, pyyaml, pyserial and onnxruntime (ARCHITECTURE.md). So the schemas
are frozen ``kw_only`` dataclasses, and this module is the one place that turns YAML into them:

- YAML is parsed with a loader that rejects duplicate keys (PyYAML silently keeps the last one) and
  reads ``1e-3`` as a float (PyYAML follows YAML 1.1 and returns the string ``'1e-3'``).
- Unknown keys fail with the key, the file and the closest valid key.
- Types are strict: a bool is not an int, a string is not a number, an int is accepted for a float.
- Non-finite numbers are rejected; ranges come from field metadata and the message names the unit.
- ``--set a.b=value`` overrides are parsed with the same YAML rules and then go through the same
  validation as the file.

Schemas declare fields with `param`, which records the unit and the allowed range.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import operator
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from robot_sac.errors import ConfigError

T = TypeVar("T")

# YAML 1.2 float syntax, so that "1e-3", "1E3" and ".5" are floats (PyYAML issue #173).
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate keys and reads YAML 1.2 floats and booleans."""


def _construct_mapping(loader: StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            first = seen[key].start_mark
            raise ConfigError(
                f"duplicate key {key!r} at {key_node.start_mark.name}:{key_node.start_mark.line + 1} "
                f"(first defined on line {first.line + 1}); YAML would silently keep the last one. "
                "Remove one of them."
            )
        seen[key] = key_node
    return loader.construct_mapping(node, deep=deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
# YAML 1.2 floats and booleans instead of YAML 1.1's: "1e-3" is a float, and `on`, `yes`, `off`,
# `no` stay strings, so a bool field given `on` fails clearly instead of silently enabling something.
_FLOAT_TAG, _BOOL_TAG = "tag:yaml.org,2002:float", "tag:yaml.org,2002:bool"
StrictLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_FLOAT_TAG, _BOOL_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
StrictLoader.add_implicit_resolver(_FLOAT_TAG, _FLOAT_RE, list("-+0123456789."))
StrictLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML text strictly (duplicate keys rejected, YAML 1.2 floats)."""
    loader = StrictLoader(text)
    loader.name = source  # marks in duplicate-key and parser errors name the file, not "<unicode string>"
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    finally:
        loader.dispose()


def read_yaml_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping at the top level."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}. Check the path.") from err
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys to values, got {type(data).__name__}")
    return data


# --- schema fields -----------------------------------------------------------------------------

UNIT_SUFFIXES: dict[str, str] = {
    "rad": "_rad",
    "rad/s": "_rad_s",
    "s": "_s",
    "Hz": "_hz",
    "m": "_m",
    "kg": "_kg",
    "N·m": "_nm",
    "N·m·s/rad": "_nm_s_rad",
}
"""Every unit-bearing field's name ends with the suffix of its SI unit (a test enforces it)."""


def param(
    default: Any = dataclasses.MISSING,
    *,
    unit: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    doc: str = "",
) -> Any:
    """Declare a schema field with its SI unit (``""`` when dimensionless) and allowed range.

    For tuple fields the range applies to every element.
    """
    metadata = {"unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt, "doc": doc}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use tuples for sequence defaults; configs are immutable")
    if dataclasses.is_dataclass(default) and isinstance(default, type):
        return dataclasses.field(default_factory=default, metadata=metadata)
    if dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda: default, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}?"
    return f"valid keys: {', '.join(sorted(valid))}"


def _where(path: str, source: str) -> str:
    return f"{source}: {path}" if path else source


_BOUND_CHECKS = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}


def _check_number(value: float, meta: Mapping[str, Any], path: str, source: str) -> None:
    unit = meta.get("unit", "")
    unit_txt = f" {unit}" if unit else ""
    if not math.isfinite(value):
        raise ConfigError(f"{_where(path, source)} = {value} is not a finite number; give a finite value{unit_txt}")
    for name, (holds, op) in _BOUND_CHECKS.items():
        bound = meta.get(name)
        if bound is not None and not holds(value, bound):
            raise ConfigError(
                f"{_where(path, source)} = {value}{unit_txt} is out of range: it must be {op} {bound}{unit_txt}"
            )


def _convert(value: Any, tp: Any, meta: Mapping[str, Any], path: str, source: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return the immutable, typed value."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(value, inner[0], meta, path, source)
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{_where(path, source)} = {value!r} is not allowed; choose one of {list(allowed)}")
        return value
    if origin is tuple:
        return _convert_tuple(value, get_args(tp), meta, path, source)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{_where(path, source)} must be a mapping, got {type(value).__name__} {value!r}")
        return from_mapping(tp, value, source=source, path=path)
    return _convert_scalar(value, tp, meta, path, source)


def _convert_tuple(value: Any, args: tuple[Any, ...], meta: Mapping[str, Any], path: str, source: str) -> Any:
    """A YAML list as a tuple: ``tuple[T, ...]`` of any length, or a fixed-length ``tuple[A, B]``."""
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{_where(path, source)} must be a list, got {type(value).__name__} {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        item_types = [args[0]] * len(value)
    elif len(value) != len(args):
        raise ConfigError(f"{_where(path, source)} must have {len(args)} elements, got {len(value)}")
    else:
        item_types = list(args)
    items = enumerate(zip(value, item_types, strict=True))
    return tuple(_convert(v, t, meta, f"{path}[{i}]", source) for i, (v, t) in items)


def _convert_scalar(value: Any, tp: Any, meta: Mapping[str, Any], path: str, source: str) -> Any:
    """bool, int, float (ints accepted), str — strictly: a bool is not a number, a string not either."""
    where = _where(path, source)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        _check_number(float(value), meta, path, source)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        _check_number(float(value), meta, path, source)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def from_mapping(cls: type[T], data: Mapping[str, Any], *, source: str = "<config>", path: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``, strictly.

    Raises:
        ConfigError: naming the key path, the source and how to fix it. Cross-field checks in the
            dataclass's ``__post_init__`` raise `ConfigError` too; their message is prefixed here.
    """
    assert dataclasses.is_dataclass(cls)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            full = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{source}: unknown key {full!r}; {_suggest(str(key), list(fields))}")
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        full = f"{path}.{name}" if path else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], field.metadata, full, source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {full!r}")
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{_where(path, source)}: {err}") from err


def load_config(cls: type[T], path: str | Path, overrides: tuple[str, ...] = ()) -> T:
    """Load a YAML file into ``cls``, applying ``key.path=value`` overrides first."""
    data = read_yaml_file(path)
    data = apply_overrides(data, overrides)
    return from_mapping(cls, data, source=str(path))


def apply_overrides(data: Mapping[str, Any], overrides: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``a.b.c=value`` overrides set (values parsed as YAML).

    Unknown keys are not checked here: the result goes through `from_mapping`, which rejects them
    with the same message as a typo in the file.
    """
    out: dict[str, Any] = copy.deepcopy(dict(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. sac.learning_rate=1e-3")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key; expected key.path=value")
        value = parse_yaml(raw, f"--set {key}") if raw.strip() else ""
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a section, it holds {child!r}")
            node = child
        node[parts[-1]] = value
    return out


def to_mapping(config: Any) -> dict[str, Any]:
    """The plain-data form of a config dataclass (tuples as lists), for YAML/JSON output."""
    plain: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(config)))
    return plain


def config_hash(config: Any) -> str:
    """A stable sha256 of a config's canonical JSON form (key order and formatting independent)."""
    blob = json.dumps(to_mapping(config), sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
