"""Strict YAML parsing and --set overrides: duplicate keys, YAML 1.2 scalars, override validation."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest

from robot_sac.config_loader import (
    apply_overrides,
    from_mapping,
    parse_yaml,
    read_yaml_file,
)
from robot_sac.configs import (
    TrainConfig,
    load_env_config,
    load_train_config,
)
from robot_sac.errors import ConfigError
from robot_sac.spec import load_robot_spec
from tests.conftest import ARM4_YAML as ARM4
from tests.conftest import TRAIN_YAML as TRAIN
from tests.conftest import write_config

# --- YAML parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("name: a\ncontrol_hz: 50.0\ncontrol_hz: 100.0\n", "control_hz"),
        ("joints:\n  - name: a\n    home_rad: 0.0\n    home_rad: 0.1\n", "home_rad"),
        ("sac:\n  gamma: 0.9\nsac:\n  tau: 0.1\n", "sac"),
    ],
    ids=["top_level", "inside_joint", "whole_section"],
)
def test_duplicate_key_is_rejected_with_file_and_line(tmp_path: Path, text: str, key: str) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_yaml_file(path)
    message = str(info.value)
    assert f"duplicate key {key!r}" in message
    assert str(path) in message
    assert "first defined on line" in message
    assert "Remove one of them" in message


def test_duplicate_key_in_a_real_robot_file_fails_through_the_loader(tmp_path: Path) -> None:
    text = ARM4.read_text(encoding="utf-8").replace("control_hz: 50.0\n", "control_hz: 50.0\ncontrol_hz: 500.0\n")
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError, match="duplicate key 'control_hz'"):
        load_robot_spec(path)


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("1e-3", 0.001),
        ("1E3", 1000.0),
        ("-2.5e+2", -250.0),
        ("+1e-3", 0.001),
        ("3.0e-4", 3e-4),
        (".5", 0.5),
        ("1.", 1.0),
        ("1_000.5", 1000.5),
    ],
)
def test_yaml_1_2_floats_parse_as_float(literal: str, value: float) -> None:
    parsed = parse_yaml(f"x: {literal}")["x"]
    assert type(parsed) is float
    assert parsed == value


def test_special_floats_and_ints_keep_their_types() -> None:
    parsed = parse_yaml("a: .nan\nb: .inf\nc: -.inf\nd: 10\ne: '1e-3'\nf: 1e3x")
    assert math.isnan(parsed["a"])
    assert parsed["b"] == math.inf
    assert parsed["c"] == -math.inf
    assert type(parsed["d"]) is int
    assert parsed["e"] == "1e-3"  # quoted: the user asked for a string
    assert parsed["f"] == "1e3x"


def test_learning_rate_1e_3_loads_as_float_in_a_train_config(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sac:\n  learning_rate: 1e-3\n")
    config = load_train_config(path)
    assert type(config.sac.learning_rate) is float
    assert config.sac.learning_rate == 0.001


def test_int_is_accepted_for_a_float_field_and_stored_as_float(tmp_path: Path) -> None:
    config = load_train_config(write_config(tmp_path, "sac:\n  learning_rate: 1\n"))
    assert type(config.sac.learning_rate) is float
    assert config.sac.learning_rate == 1.0


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "sac: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_train_config(path)
    assert str(path) in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write_config(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_train_config(path)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_train_config(path)
    assert str(path) in str(info.value)


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    assert load_train_config(write_config(tmp_path, "# nothing\n")) == TrainConfig()


# --- --set overrides -----------------------------------------------------------------------------


def test_override_typo_names_the_valid_key() -> None:
    data = apply_overrides(read_yaml_file(TRAIN), ["sac.learnin_rate=1e-3"])
    with pytest.raises(ConfigError) as info:
        from_mapping(TrainConfig, data, source="--set")
    message = str(info.value)
    assert "sac.learnin_rate" in message
    assert "did you mean 'learning_rate'?" in message


def test_override_typo_through_the_loader_names_file_and_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_train_config(TRAIN, overrides=("sac.learnin_rate=1e-3",))
    message = str(info.value)
    assert str(TRAIN) in message
    assert "'learning_rate'" in message


def test_override_value_is_parsed_as_yaml_1_2_and_validated() -> None:
    config = load_train_config(
        TRAIN, overrides=("sac.learning_rate=1e-3", "sac.network.hidden_sizes=[64, 32]", "seed=7")
    )
    assert config.sac.learning_rate == 0.001
    assert config.sac.network.hidden_sizes == (64, 32)
    assert config.seed == 7
    with pytest.raises(ConfigError, match=r"sac\.learning_rate = nan is not a finite number"):
        load_train_config(TRAIN, overrides=("sac.learning_rate=.nan",))


def test_override_creates_missing_sections_and_leaves_the_input_untouched() -> None:
    data = {"sac": {"gamma": 0.9}}
    before = copy.deepcopy(data)
    out = apply_overrides(data, ["env.task.horizon_steps=10"])
    assert data == before
    assert out == {"sac": {"gamma": 0.9}, "env": {"task": {"horizon_steps": 10}}}
    assert from_mapping(TrainConfig, out).env.task.horizon_steps == 10


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("sac.learning_rate", ["--set 'sac.learning_rate'", "key.path=value"]),
        ("", ["key.path=value"]),
        ("=0.1", ["empty key"]),
        ("...=0.1", ["empty key"]),
        ("seed.value=1", ["'seed' is not a section", "0"]),
        ("sac.gamma.x=1", ["'gamma' is not a section", "0.98"]),
        ("sac.learning_rate=[1, 2", ["--set sac.learning_rate", "not valid YAML"]),
        ("sac.gamma=a: 1\na: 2", ["duplicate key 'a'"]),
    ],
    ids=["no_equals", "empty", "empty_key", "only_dots", "into_int", "into_float", "bad_yaml", "duplicate"],
)
def test_bad_override_raises_config_error(item: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        apply_overrides(read_yaml_file(TRAIN), [item])
    for fragment in expected:
        assert fragment in str(info.value), f"{fragment!r} not in {info.value!s}"


def test_override_with_wrong_type_fails_in_from_mapping() -> None:
    data = apply_overrides({}, ["sac.batch_size=big"])
    with pytest.raises(ConfigError, match=r"sac.batch_size must be an integer, got 'big'"):
        from_mapping(TrainConfig, data)


def test_yaml_1_1_booleans_are_not_bools(tmp_path: Path) -> None:
    # YAML 1.1 reads `on` as True; a typo'd or legacy spelling must not silently enable a feature.
    bad = tmp_path / "env.yaml"
    bad.write_text("sim:\n  randomization:\n    enabled: on\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"sim\.randomization\.enabled must be true or false, got 'on'"):
        load_env_config(bad)
