"""Strict config loading (SAFETY.md rows 23-24): bad configs fail naming the key, good ones load frozen.

Every bad case goes through a real YAML file and the public loader, so the message is checked as a
user would see it: it names the key path, the file and (where there is one) the fix.
"""

from __future__ import annotations

import dataclasses
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from robot_sac.config_loader import (
    config_hash,
    from_mapping,
    parse_yaml,
    read_yaml_file,
    to_mapping,
)
from robot_sac.configs import (
    EnvConfig,
    NetworkConfig,
    RandomizationConfig,
    SACConfig,
    TrainConfig,
    load_env_config,
    load_train_config,
)
from robot_sac.errors import ConfigError
from robot_sac.spec import RobotSpec, load_robot_spec
from tests.conftest import ARM4_YAML as ARM4
from tests.conftest import CONFIG_DIR, write_config
from tests.conftest import ENV_YAML as ENV
from tests.conftest import TRAIN_YAML as TRAIN

Mutation = Callable[[dict[str, Any]], None]


def _arm4() -> dict[str, Any]:
    return read_yaml_file(ARM4)


def _set(*keys: str | int, value: Any) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for k in keys[:-1]:
            d = d[k]  # type: ignore[index]
        d[keys[-1]] = value  # type: ignore[index]

    return mutate


def _delete(*keys: str | int) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for k in keys[:-1]:
            d = d[k]  # type: ignore[index]
        del d[keys[-1]]  # type: ignore[arg-type]

    return mutate


def _rename(*keys: str | int, to: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for k in keys[:-1]:
            d = d[k]  # type: ignore[index]
        d[to] = d.pop(keys[-1])  # type: ignore[call-overload]

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(d: dict[str, Any]) -> None:
        for m in mutations:
            m(d)

    return mutate


# --- table: bad robot specs ----------------------------------------------------------------------
# (id, mutation of configs/robots/arm4.yaml, substrings the message must contain besides the path)

BAD_ROBOTS: list[tuple[str, Mutation, list[str]]] = [
    ("typo_in_joint", _rename("joints", 1, "home_rad", to="home_rd"), ["joints[1].home_rd", "'home_rad'"]),
    ("typo_top_level", _rename("control_hz", to="control_hertz"), ["control_hertz", "'control_hz'"]),
    ("control_hz_zero", _set("control_hz", value=0), ["control_hz", "Hz", "> 0.0"]),
    ("control_hz_negative", _set("control_hz", value=-50.0), ["control_hz", "Hz"]),
    ("control_hz_too_high", _set("control_hz", value=50_000), ["control_hz", "Hz", "<= 1000.0"]),
    ("control_hz_nan", _set("control_hz", value=math.nan), ["control_hz", "not a finite number", "Hz"]),
    ("control_hz_inf", _set("control_hz", value=math.inf), ["control_hz", "not a finite number"]),
    ("control_hz_minus_inf", _set("control_hz", value=-math.inf), ["control_hz", "not a finite number"]),
    ("lower_nan", _set("joints", 0, "lower_rad", value=math.nan), ["joints[0].lower_rad", "not a finite"]),
    (
        "soft_margin_too_large",
        _both(
            _set("joints", 2, "lower_rad", value=-0.4),
            _set("joints", 2, "upper_rad", value=0.5),
            _set("joints", 2, "soft_margin_rad", value=0.45),
        ),
        ["joints[2]", "soft_margin_rad 0.45 rad", "half the range"],
    ),
    ("home_outside_soft", _set("joints", 1, "home_rad", value=1.55), ["home_rad", "soft limits", "move home inside"]),
    ("home_outside_hard", _set("joints", 0, "home_rad", value=-3.0), ["home_rad", "soft limits"]),
    ("lower_equals_upper", _set("joints", 0, "lower_rad", value=2.827), ["lower_rad", "upper_rad", "below"]),
    ("lower_above_upper", _set("joints", 3, "lower_rad", value=2.5), ["lower_rad", "upper_rad"]),
    ("bool_for_float", _set("joints", 0, "max_step_rad", value=True), ["joints[0].max_step_rad", "must be a number"]),
    ("bool_for_hz", _set("control_hz", value=True), ["control_hz", "must be a number", "True"]),
    ("string_for_number", _set("control_hz", value="fifty"), ["control_hz", "must be a number", "'fifty'"]),
    ("numeric_string", _set("joints", 0, "home_rad", value="0.0"), ["joints[0].home_rad", "must be a number"]),
    ("null_for_float", _set("joints", 0, "home_rad", value=None), ["joints[0].home_rad", "must be a number"]),
    ("number_for_string", _set("name", value=5), ["name", "must be a string"]),
    ("missing_name", _delete("name"), ["missing required key 'name'"]),
    ("missing_joint_key", _delete("joints", 2, "max_effort_nm"), ["missing required key", "joints[2].max_effort_nm"]),
    ("velocity_off_by_1e2", _set("joints", 0, "max_velocity_rad_s", value=500), ["max_velocity_rad_s", "rad/s"]),
    ("step_off_by_1e3", _set("joints", 0, "max_step_rad", value=40.0), ["joints[0].max_step_rad", "rad", "<= 0.5"]),
    ("tolerance_in_degrees", _set("position_tolerance_rad", value=3.0), ["position_tolerance_rad", "rad"]),
    ("effort_in_ncm", _set("joints", 1, "max_effort_nm", value=410.0), ["joints[1].max_effort_nm", "N·m"]),
    ("offset_in_mm", _set("tool_offset_m", value=[126.0, 0.0, 0.0]), ["tool_offset_m[0]", " m ", "<= 1.0"]),
    ("tuple_too_short", _set("tool_offset_m", value=[0.1, 0.0]), ["tool_offset_m", "must have 3 elements"]),
    ("scalar_for_tuple", _set("joints", 0, "axis_xyz", value=1.0), ["joints[0].axis_xyz", "must be a list"]),
    ("axis_not_unit", _set("joints", 0, "axis_xyz", value=[0.0, 0.5, 0.5]), ["axis_xyz", "unit vector"]),
    ("no_joints", _set("joints", value=[]), ["joints", "at least one joint"]),
    ("duplicate_joint_names", _set("joints", 1, "name", value="base_yaw"), ["duplicate joint names", "base_yaw"]),
    ("joint_not_mapping", _set("joints", 0, value="base_yaw"), ["joints[0]", "must be a mapping"]),
]


@pytest.mark.parametrize(("mutate", "expected"), [c[1:] for c in BAD_ROBOTS], ids=[c[0] for c in BAD_ROBOTS])
def test_bad_robot_spec_raises_config_error_naming_the_key(
    tmp_path: Path, mutate: Mutation, expected: list[str]
) -> None:
    data = _arm4()
    mutate(data)
    path = write_config(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_robot_spec(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# --- table: bad env / train configs -------------------------------------------------------------

BAD_TRAIN: list[tuple[str, str, list[str]]] = [
    ("sac_typo", "sac:\n  learnin_rate: 1e-3\n", ["sac.learnin_rate", "did you mean 'learning_rate'?"]),
    ("section_typo", "sack:\n  gamma: 0.9\n", ["'sack'", "'sac'"]),
    ("nested_typo", "env:\n  task:\n    horizon_step: 10\n", ["env.task.horizon_step", "'horizon_steps'"]),
    ("lr_nan", "sac:\n  learning_rate: .nan\n", ["sac.learning_rate", "not a finite number"]),
    ("lr_inf", "sac:\n  learning_rate: .inf\n", ["sac.learning_rate", "not a finite number"]),
    ("lr_zero", "sac:\n  learning_rate: 0\n", ["sac.learning_rate", "> 0.0"]),
    ("gamma_one", "sac:\n  gamma: 1.0\n", ["sac.gamma", "< 1.0"]),
    ("bool_for_float", "sac:\n  tau: true\n", ["sac.tau", "must be a number", "True"]),
    ("bool_for_int", "seed: true\n", ["seed", "must be an integer"]),
    ("float_for_int", "sac:\n  batch_size: 256.0\n", ["sac.batch_size", "must be an integer"]),
    ("string_for_number", "sac:\n  gamma: high\n", ["sac.gamma", "must be a number", "'high'"]),
    ("quoted_number", "sac:\n  learning_rate: '3e-4'\n", ["sac.learning_rate", "must be a number"]),
    (
        "tuple_item_out_of_range",
        "sac:\n  network:\n    hidden_sizes: [256, 0]\n",
        ["sac.network.hidden_sizes[1]", ">= 1"],
    ),
    ("section_not_mapping", "sac: 5\n", ["sac", "must be a mapping"]),
    ("alpha_negative", "sac:\n  alpha: -0.1\n", ["sac.alpha", "> 0.0"]),
    ("max_abs_action_too_small", "env:\n  safety:\n    max_abs_action: 0.5\n", ["env.safety.max_abs_action", ">= 1.0"]),
    ("seed_negative", "seed: -1\n", ["seed", ">= 0"]),
]

BAD_ENVS: list[tuple[str, str, list[str]]] = [
    (
        "range_backwards",
        "sim:\n  randomization:\n    link_mass_scale: [1.2, 0.8]\n",
        ["sim.randomization", "link_mass_scale", "[1.2, 0.8]", "[low, high]"],
    ),
    (
        "int_range_backwards",
        "sim:\n  randomization:\n    action_latency_periods: [2, 1]\n",
        ["sim.randomization", "action_latency_periods", "[low, high]"],
    ),
    (
        "range_with_three_items",
        "sim:\n  randomization:\n    lateral_friction: [0.1, 0.2, 0.3]\n",
        ["sim.randomization.lateral_friction", "must have 2 elements"],
    ),
    (
        "noise_in_degrees",
        "sim:\n  randomization:\n    position_noise_rad: [0.0, 2.0]\n",
        ["sim.randomization.position_noise_rad[1]", "rad"],
    ),
    ("threshold_in_mm", "task:\n  success_threshold_m: 10\n", ["task.success_threshold_m", "10.0 m", "<= 0.5 m"]),
    ("bool_as_string", "safety:\n  soft_limits: 'false'\n", ["safety.soft_limits", "must be true or false"]),
    ("int_for_bool", "normalization:\n  enabled: 1\n", ["normalization.enabled", "must be true or false"]),
    ("clip_inf", "normalization:\n  clip_sigma: .inf\n", ["normalization.clip_sigma", "not a finite number"]),
    ("robot_null", "robot: null\n", ["robot", "must be a string"]),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_TRAIN], ids=[c[0] for c in BAD_TRAIN])
def test_bad_train_config_raises_config_error_naming_the_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_train_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in BAD_ENVS], ids=[c[0] for c in BAD_ENVS])
def test_bad_env_config_raises_config_error_naming_the_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_env_config(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_range_backwards_in_randomization_config_directly() -> None:
    with pytest.raises(ConfigError, match=r"velocity_noise_rad_s: the range \[0.02, 0.0\] is empty"):
        RandomizationConfig(velocity_noise_rad_s=(0.02, 0.0))


# --- every shipped config loads -----------------------------------------------------------------

ROBOT_FILES = sorted((CONFIG_DIR / "robots").glob("*.yaml"))
ENV_FILES = sorted((CONFIG_DIR / "envs").glob("*.yaml"))
TRAIN_FILES = sorted((CONFIG_DIR / "train").glob("*.yaml"))


def test_config_dir_holds_only_known_kinds() -> None:
    kinds = {p.relative_to(CONFIG_DIR).parts[0] for p in CONFIG_DIR.rglob("*.yaml")}
    assert kinds <= {"robots", "envs", "train"}
    assert ROBOT_FILES and ENV_FILES and TRAIN_FILES


@pytest.mark.parametrize("path", ROBOT_FILES, ids=lambda p: p.name)
def test_every_robot_yaml_loads(path: Path) -> None:
    spec = load_robot_spec(path)
    assert spec.dof == len(spec.joints) >= 1
    assert (spec.soft_lower_rad <= spec.home_rad).all() and (spec.home_rad <= spec.soft_upper_rad).all()


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_every_env_yaml_loads_with_its_robot(path: Path) -> None:
    config = load_env_config(path)
    assert isinstance(config, EnvConfig)
    assert load_robot_spec(config.robot_path(CONFIG_DIR)).dof >= 1


@pytest.mark.parametrize("path", TRAIN_FILES, ids=lambda p: p.name)
def test_every_train_yaml_loads_with_its_robot(path: Path) -> None:
    config = load_train_config(path)
    assert isinstance(config, TrainConfig)
    assert load_robot_spec(config.env.robot_path(CONFIG_DIR)).dof >= 1


def test_arm4_values_are_read_as_written() -> None:
    spec = load_robot_spec(ARM4)
    assert spec.name == "rs_arm4"
    assert spec.control_hz == 50.0
    assert spec.dt_s == pytest.approx(0.02)
    assert spec.joint_names == ("base_yaw", "shoulder_pitch", "elbow_pitch", "wrist_pitch")
    assert spec.joints[1].soft_lower_rad == pytest.approx(-1.791 + 0.087)
    assert spec.joints[1].max_velocity_rad_s == 1.5


def test_arm_reach_dr_enables_randomization() -> None:
    assert load_env_config(CONFIG_DIR / "envs" / "arm_reach_dr.yaml").sim.randomization.enabled
    assert not load_env_config(ENV).sim.randomization.enabled


# --- immutability, hashing, round trip -----------------------------------------------------------


def test_loaded_configs_are_frozen() -> None:
    spec = load_robot_spec(ARM4)
    train = load_train_config(TRAIN)
    env = load_env_config(ENV)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.control_hz = 100.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.joints[0].max_step_rad = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.sac.learning_rate = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.safety.soft_limits = False  # type: ignore[misc]
    assert isinstance(spec.joints, tuple)
    assert isinstance(train.sac.network.hidden_sizes, tuple)
    with pytest.raises(ValueError, match="read-only"):
        spec.home_rad[0] = 1.0


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


@pytest.mark.parametrize(
    ("path", "load"), [(ARM4, load_robot_spec), (TRAIN, load_train_config), (ENV, load_env_config)]
)
def test_config_hash_is_independent_of_key_order(tmp_path: Path, path: Path, load: Callable[[Path], Any]) -> None:
    original = load(path)
    reordered_file = write_config(tmp_path, _reverse_keys(read_yaml_file(path)))
    assert list(read_yaml_file(reordered_file)) != list(read_yaml_file(path))
    reordered = load(reordered_file)
    assert reordered == original
    assert config_hash(reordered) == config_hash(original)
    assert len(config_hash(original)) == 64


def test_config_hash_is_stable_across_processes() -> None:
    code = (
        "from robot_sac.config_loader import config_hash\n"
        "from robot_sac.configs import load_train_config\n"
        f"print(config_hash(load_train_config({str(TRAIN)!r})))\n"
    )
    root = str(Path(__file__).resolve().parent.parent)
    hashes = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
            env={"PYTHONPATH": root, "PYTHONHASHSEED": seed},
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert hashes == {config_hash(load_train_config(TRAIN))}


@pytest.mark.parametrize(
    "override",
    ["sac.gamma=0.97", "seed=1", "env.safety.rate_limit=false", "sac.network.hidden_sizes=[256, 128]", "sac.alpha=0.2"],
)
def test_config_hash_changes_when_a_value_changes(override: str) -> None:
    assert config_hash(load_train_config(TRAIN, (override,))) != config_hash(load_train_config(TRAIN))


def test_config_hash_changes_when_one_joint_value_changes() -> None:
    base = load_robot_spec(ARM4)
    joints = to_mapping(base)["joints"]
    joints[2]["max_velocity_rad_s"] = 1.4
    changed = from_mapping(RobotSpec, {**to_mapping(base), "joints": joints})
    assert changed != base
    assert config_hash(changed) != config_hash(base)


ROUND_TRIP_CASES: dict[str, Callable[[], Any]] = {
    "arm4": lambda: load_robot_spec(ARM4),
    "train": lambda: load_train_config(TRAIN),
    "env_dr": lambda: load_env_config(CONFIG_DIR / "envs" / "arm_reach_dr.yaml"),
    "train_defaults": TrainConfig,
    "sac_fixed_alpha": lambda: SACConfig(alpha=0.2, target_entropy=-2.0, network=NetworkConfig(hidden_sizes=(8,))),
}


@pytest.mark.parametrize("make", ROUND_TRIP_CASES.values(), ids=ROUND_TRIP_CASES.keys())
def test_to_mapping_from_mapping_round_trips(make: Callable[[], Any]) -> None:
    config = make()
    data = to_mapping(config)
    again = from_mapping(type(config), data)
    assert again == config
    assert config_hash(again) == config_hash(config)
    # The plain form is YAML-safe and survives a strict re-parse.
    assert from_mapping(type(config), parse_yaml(yaml.safe_dump(data))) == config
