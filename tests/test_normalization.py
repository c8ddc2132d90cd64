"""Observation normalization: exact parallel merge, non-finite rejection (SAFETY.md row 12), storage.

"Exact" merge means equal to a single pass over all samples up to float64 rounding: counts are
equal, and mean and variance agree to rtol=1e-12, atol=1e-12 (the observed error on this data is
about 1e-14 relative; the summation order differs, so bit equality is not expected).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import reduce
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
import pytest

from robot_sac.normalization import NormalizeObservation, ObservationNormalizer, RunningMeanStd

DIM = 18
N = 10_000
RTOL = ATOL = 1e-12


@pytest.fixture(scope="module")
def dataset() -> np.ndarray:
    """10,000 x 18 samples with per-dimension means in [-10, 10] and stds in [0.1, 5], seeded."""
    rng = np.random.default_rng(20240611)
    loc = rng.uniform(-10.0, 10.0, DIM)
    scale = rng.uniform(0.1, 5.0, DIM)
    return rng.normal(loc, scale, size=(N, DIM))


@pytest.fixture(scope="module")
def single_pass(dataset: np.ndarray) -> RunningMeanStd:
    return RunningMeanStd.of(dataset)


def _assert_stats_close(stats: RunningMeanStd, reference: RunningMeanStd) -> None:
    assert stats.count == reference.count
    np.testing.assert_allclose(stats.mean, reference.mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(stats.var, reference.var, rtol=RTOL, atol=ATOL)


def _split(data: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """k uneven chunks, with an empty first and last chunk and repeated cuts giving more empties."""
    rng = np.random.default_rng(seed)
    inner = rng.integers(0, len(data) + 1, size=max(k - 3, 0))
    inner = np.concatenate([inner, inner[: len(inner) // 4]])  # repeated cuts: empty chunks in the middle
    cuts = np.sort(np.concatenate([[0], inner, [len(data)]]))
    chunks = [data[:0], *np.split(data, cuts)[1:-1], data[len(data) :]]
    assert sum(len(c) for c in chunks) == len(data)
    return chunks


def _left_fold(parts: list[RunningMeanStd]) -> RunningMeanStd:
    return reduce(lambda acc, s: acc.merge(s), parts, RunningMeanStd.empty(DIM))


def _right_fold(parts: list[RunningMeanStd]) -> RunningMeanStd:
    return reduce(lambda acc, s: s.merge(acc), reversed(parts), RunningMeanStd.empty(DIM))


def _tree(parts: list[RunningMeanStd]) -> RunningMeanStd:
    if not parts:
        return RunningMeanStd.empty(DIM)
    while len(parts) > 1:
        pairs = [parts[i].merge(parts[i + 1]) for i in range(0, len(parts) - 1, 2)]
        parts = pairs + ([parts[-1]] if len(parts) % 2 else [])
    return parts[0]


def _shuffled(parts: list[RunningMeanStd]) -> RunningMeanStd:
    order = np.random.default_rng(7).permutation(len(parts))
    return _left_fold([parts[i] for i in order])


MERGES: dict[str, Callable[[list[RunningMeanStd]], RunningMeanStd]] = {
    "left_fold": _left_fold,
    "right_fold": _right_fold,
    "balanced_tree": _tree,
    "shuffled": _shuffled,
}
KS = [1, 2, 3, 7, 16, 61]


def _row_by_row(chunk: np.ndarray) -> RunningMeanStd:
    norm = ObservationNormalizer(DIM)
    for row in chunk:
        norm.update(row)
    assert norm.rejected == 0
    return norm.stats


@pytest.mark.parametrize("k", KS)
def test_chunk_split_has_uneven_and_empty_chunks(dataset: np.ndarray, k: int) -> None:
    chunks = _split(dataset, k, seed=k)
    sizes = [len(c) for c in chunks]
    assert sizes[0] == 0 and sizes[-1] == 0
    if k >= 7:
        assert len(set(sizes)) > 2  # uneven
        assert sizes.count(0) > 2  # empty chunks in the middle too


@pytest.mark.parametrize("merge", MERGES.values(), ids=MERGES.keys())
@pytest.mark.parametrize("k", KS)
def test_merged_batch_stats_equal_single_pass(
    dataset: np.ndarray, single_pass: RunningMeanStd, k: int, merge: Callable[[list[RunningMeanStd]], RunningMeanStd]
) -> None:
    parts = [RunningMeanStd.of(c) for c in _split(dataset, k, seed=k)]
    _assert_stats_close(merge(parts), single_pass)


@pytest.mark.parametrize("k", KS)
def test_merged_row_by_row_stats_equal_single_pass(dataset: np.ndarray, single_pass: RunningMeanStd, k: int) -> None:
    parts = [_row_by_row(c) for c in _split(dataset, k, seed=100 + k)]
    for merge in MERGES.values():
        _assert_stats_close(merge(parts), single_pass)


def test_row_by_row_and_batch_update_agree(dataset: np.ndarray, single_pass: RunningMeanStd) -> None:
    _assert_stats_close(_row_by_row(dataset), single_pass)
    batch = ObservationNormalizer(DIM)
    batch.update(dataset)
    _assert_stats_close(batch.stats, single_pass)


def test_normalizer_merge_of_actor_stats_equals_single_pass(dataset: np.ndarray, single_pass: RunningMeanStd) -> None:
    learner = ObservationNormalizer(DIM)
    for i, chunk in enumerate(_split(dataset, 16, seed=3)):
        actor = ObservationNormalizer(DIM)
        if i % 2:
            actor.update(chunk)
        else:
            for row in chunk:
                actor.update(row)
        learner.merge(actor.stats)
    _assert_stats_close(learner.stats, single_pass)


def test_merge_with_empty_is_identity_and_returns_a_copy(single_pass: RunningMeanStd) -> None:
    empty = RunningMeanStd.empty(DIM)
    for merged in (single_pass.merge(empty), empty.merge(single_pass)):
        assert merged.count == single_pass.count
        assert np.array_equal(merged.mean, single_pass.mean) and np.array_equal(merged.m2, single_pass.m2)
        assert merged.mean is not single_pass.mean and merged.m2 is not single_pass.m2
    assert empty.merge(RunningMeanStd.empty(DIM)).count == 0


def test_stats_of_an_empty_batch_are_empty() -> None:
    stats = RunningMeanStd.of(np.zeros((0, DIM)))
    assert stats.count == 0
    assert np.array_equal(stats.var, np.zeros(DIM))


def test_variance_is_the_population_variance(dataset: np.ndarray, single_pass: RunningMeanStd) -> None:
    np.testing.assert_allclose(single_pass.var, dataset.var(axis=0), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(single_pass.mean, dataset.mean(axis=0), rtol=RTOL, atol=ATOL)


# --- non-finite samples (SAFETY.md row 12) -------------------------------------------------------


BAD_ROWS = [
    [np.nan, 0.0, 0.0],
    [0.0, -np.nan, 0.0],
    [0.0, 0.0, np.inf],
    [-np.inf, 1.0, 2.0],
    [np.nan, np.inf, -np.inf],
]


@pytest.mark.parametrize("row", BAD_ROWS, ids=["nan", "-nan", "inf", "-inf", "all"])
def test_non_finite_row_is_rejected_and_stats_are_bit_identical(
    warmed: ObservationNormalizer, row: list[float]
) -> None:
    mean, m2, var, count = warmed.stats.mean.copy(), warmed.stats.m2.copy(), warmed.stats.var.copy(), warmed.stats.count
    warmed.update(np.array(row))
    warmed.update(np.array([row, row]))
    warmed.update(np.array([row]))
    assert warmed.rejected == 4
    assert warmed.stats.count == count
    assert np.array_equal(warmed.stats.mean, mean)
    assert np.array_equal(warmed.stats.m2, m2)
    assert np.array_equal(warmed.stats.var, var)


def test_non_finite_rows_in_a_mixed_batch_are_skipped(warmed: ObservationNormalizer) -> None:
    rng = np.random.default_rng(2)
    good = rng.normal(size=(50, 3))
    batch = np.concatenate([good[:20], np.array(BAD_ROWS), good[20:]])
    expected = warmed.stats.merge(RunningMeanStd.of(good))
    warmed.update(batch)
    assert warmed.rejected == len(BAD_ROWS)
    _assert_stats_close(warmed.stats, expected)
    assert np.isfinite(warmed.stats.mean).all() and np.isfinite(warmed.stats.var).all()


def test_non_finite_row_into_empty_stats_keeps_them_empty() -> None:
    norm = ObservationNormalizer(3)
    norm.update(np.array([np.nan, 1.0, 1.0]))
    assert norm.stats.count == 0 and norm.rejected == 1
    np.testing.assert_array_equal(norm.mean, np.zeros(3))
    np.testing.assert_array_equal(norm.std, np.ones(3))


# --- normalize and clip --------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1.0, 3.0, 5.0])
def test_normalize_clips_at_k_sigma(k: float) -> None:
    norm = ObservationNormalizer(3, clip_sigma=k)
    norm.update(np.random.default_rng(3).normal([1.0, -2.0, 30.0], [0.5, 2.0, 10.0], size=(1000, 3)))
    mean, std = norm.mean, norm.std
    far = norm.normalize(np.stack([mean + 100 * std, mean - 100 * std, mean + 1e300]))
    assert far.dtype == np.float32
    np.testing.assert_array_equal(far, np.array([[k] * 3, [-k] * 3, [k] * 3], dtype=np.float32))
    inside = norm.normalize(mean + 0.5 * std)
    np.testing.assert_allclose(inside, 0.5, rtol=1e-6)
    z = norm.normalize(np.random.default_rng(4).normal(mean, 50 * std, size=(500, 3)))
    assert z.shape == (500, 3)
    assert (np.abs(z) <= k).all()
    assert (np.abs(z) == np.float32(k)).any()


def test_normalize_before_any_sample_is_identity_then_clip() -> None:
    norm = ObservationNormalizer(3, clip_sigma=2.0)
    np.testing.assert_array_equal(norm.normalize(np.array([0.5, -1.5, 7.0])), np.array([0.5, -1.5, 2.0], np.float32))


def test_epsilon_keeps_constant_dimensions_finite() -> None:
    norm = ObservationNormalizer(2, clip_sigma=5.0, epsilon=1e-8)
    norm.update(np.tile([3.0, 1.0], (10, 1)))
    assert norm.stats.var[0] == 0.0
    np.testing.assert_array_equal(norm.normalize(np.array([3.0, 1.0])), np.zeros(2, np.float32))
    np.testing.assert_array_equal(norm.normalize(np.array([3.1, 0.9])), np.array([5.0, -5.0], np.float32))


# --- freeze ---------------------------------------------------------------------------------------


def test_frozen_normalizer_ignores_update_and_merge(warmed: ObservationNormalizer) -> None:
    before = warmed.to_arrays()
    warmed.freeze()
    assert warmed.frozen
    warmed.update(np.ones(3))
    warmed.update(np.ones((10, 3)))
    warmed.update(np.full(3, np.nan))
    warmed.merge(RunningMeanStd.of(np.ones((10, 3))))
    after = warmed.to_arrays()
    for key in before:
        if key != "frozen":
            assert np.array_equal(after[key], before[key]), key
    assert warmed.rejected == 0  # frozen: not even inspected
    warmed.unfreeze()
    assert not warmed.frozen
    warmed.update(np.ones(3))
    assert warmed.stats.count == int(before["count"]) + 1
    warmed.merge(RunningMeanStd.of(np.ones((10, 3))))
    assert warmed.stats.count == int(before["count"]) + 11


# --- the gymnasium wrapper ------------------------------------------------------------------------


class TinyEnv(gym.Env[np.ndarray, np.ndarray]):
    """A 3-dim observation env; steps listed in ``invalid_steps`` report ``observation_valid=False``."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)

    def __init__(self, invalid_steps: tuple[int, ...] = ()) -> None:
        self.invalid_steps = invalid_steps
        self.t = 0
        self.last_obs = np.zeros(3)

    def _obs(self) -> np.ndarray:
        self.last_obs = self.np_random.normal([1.0, -20.0, 300.0], [0.5, 5.0, 50.0])
        return self.last_obs.copy()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        self.t += 1
        obs = self._obs()
        info: dict[str, Any] = {}
        if self.t in self.invalid_steps:
            obs[1] = np.nan  # what a glitching sensor would deliver
            self.last_obs = obs.copy()
            info["observation_valid"] = False
        return obs, 0.0, False, False, info


def test_wrapper_observation_space_is_clip_box_float32() -> None:
    env = NormalizeObservation(TinyEnv(), ObservationNormalizer(3, clip_sigma=4.0))
    assert env.observation_space == gym.spaces.Box(-4.0, 4.0, shape=(3,), dtype=np.float32)
    assert env.action_space == TinyEnv.action_space


def test_wrapper_rejects_a_normalizer_of_the_wrong_size() -> None:
    with pytest.raises(ValueError, match="does not match observation shape"):
        NormalizeObservation(TinyEnv(), ObservationNormalizer(4))


def test_wrapper_normalizes_keeps_raw_and_updates_on_reset_and_step() -> None:
    inner = TinyEnv()
    norm = ObservationNormalizer(3, clip_sigma=5.0)
    env = NormalizeObservation(inner, norm)
    obs, info = env.reset(seed=0)
    assert norm.stats.count == 1
    assert info["raw_observation"].dtype == np.float64
    assert np.array_equal(info["raw_observation"], inner.last_obs)
    assert np.array_equal(obs, norm.normalize(inner.last_obs))
    assert env.observation_space.contains(obs)
    for t in range(1, 51):
        obs, _, terminated, truncated, info = env.step(env.action_space.sample())
        assert not terminated and not truncated
        assert norm.stats.count == 1 + t
        assert np.array_equal(info["raw_observation"], inner.last_obs)
        assert np.array_equal(obs, norm.normalize(inner.last_obs))
        assert env.observation_space.contains(obs)
    # After 51 samples the raw scale is gone: the normalized obs is O(1), not O(300).
    assert np.abs(norm.mean - [1.0, -20.0, 300.0]).max() < 20.0
    env.reset(seed=1)
    assert norm.stats.count == 52


def test_wrapper_does_not_update_on_an_invalid_observation() -> None:
    inner = TinyEnv(invalid_steps=(3, 4))
    norm = ObservationNormalizer(3)
    env = NormalizeObservation(inner, norm)
    env.reset(seed=0)
    env.step(np.zeros(1, np.float32))
    env.step(np.zeros(1, np.float32))
    count, mean, m2 = norm.stats.count, norm.stats.mean.copy(), norm.stats.m2.copy()
    for _ in range(2):
        _, _, _, _, info = env.step(np.zeros(1, np.float32))
        assert info["observation_valid"] is False
        assert np.isnan(info["raw_observation"][1])
        assert np.array_equal(info["raw_observation"], inner.last_obs, equal_nan=True)
    assert norm.stats.count == count
    assert np.array_equal(norm.stats.mean, mean) and np.array_equal(norm.stats.m2, m2)
    assert norm.rejected == 0  # never offered to the stats
    env.step(np.zeros(1, np.float32))
    assert norm.stats.count == count + 1


def test_wrapper_with_a_frozen_normalizer_never_updates(warmed: ObservationNormalizer) -> None:
    inner = TinyEnv()
    warmed.freeze()
    digest = warmed.digest()
    env = NormalizeObservation(inner, warmed)
    obs, info = env.reset(seed=0)
    for _ in range(5):
        obs, *_, info = env.step(np.zeros(1, np.float32))
    assert warmed.digest() == digest
    assert np.array_equal(obs, warmed.normalize(info["raw_observation"]))
