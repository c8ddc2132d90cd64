"""The replay buffer: ring, raw storage, sample-time normalization, non-finite rejection, tags, storage."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import robot_sac.replay as replay_module
from robot_sac.errors import StorageError
from robot_sac.normalization import ObservationNormalizer
from robot_sac.replay import DOMAIN_REAL, DOMAIN_SIM, ReplayBuffer
from robot_sac.sac import Batch

OBS, ACT = 3, 2
CPU = torch.device("cpu")
_FIELDS = ("obs", "action", "reward", "next_obs", "terminated", "domain", "policy_version", "safety_clipped")


def transition(i: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, bool]:
    """Transition number i: every value encodes i, so a stored row tells which transition it is."""
    obs = np.array([100.0 * i, -i, 0.5 * i])
    return obs, np.array([0.01 * i, -0.01 * i]), float(i), obs + 1.0, i % 3 == 0


def filled(n: int, capacity: int = 100) -> ReplayBuffer:
    buffer = ReplayBuffer(capacity, OBS, ACT)
    for i in range(n):
        assert buffer.add(*transition(i), domain=i % 2, policy_version=10 + i, safety_clipped=i % 4 == 0)
    return buffer


def assert_same_batch(a: Batch, b: Batch) -> None:
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name


def test_stores_raw_observations_and_transition_fields():
    buffer = filled(4)
    assert len(buffer) == 4 and buffer.total_added == 4
    obs, action, reward, next_obs, terminated = transition(2)
    np.testing.assert_array_equal(buffer.obs[2], obs.astype(np.float32))  # raw, not normalized
    np.testing.assert_array_equal(buffer.next_obs[2], next_obs.astype(np.float32))
    np.testing.assert_array_equal(buffer.action[2], action.astype(np.float32))
    assert buffer.reward[2] == reward and buffer.terminated[2] == float(terminated)
    assert buffer.terminated[:4].tolist() == [1.0, 0.0, 0.0, 1.0]


def test_ring_wraps_around_and_overwrites_the_oldest():
    buffer = filled(8, capacity=5)
    assert len(buffer) == 5 and buffer.pos == 3 and buffer.total_added == 8
    assert buffer.reward.tolist() == [5.0, 6.0, 7.0, 3.0, 4.0]
    assert buffer.policy_version.tolist() == [15, 16, 17, 13, 14]
    batch = buffer.sample(256, np.random.default_rng(0), CPU)
    assert set(batch.reward.tolist()) == {3.0, 4.0, 5.0, 6.0, 7.0}


def test_sample_shapes_dtypes_and_device():
    batch = filled(10).sample(16, np.random.default_rng(0), CPU)
    shapes = {"obs": (16, OBS), "action": (16, ACT), "reward": (16,), "next_obs": (16, OBS), "terminated": (16,)}
    for name, shape in shapes.items():
        tensor = getattr(batch, name)
        assert tensor.shape == shape and tensor.dtype == torch.float32 and tensor.device == CPU
    assert set(batch.terminated.tolist()) <= {0.0, 1.0}


def test_sample_is_deterministic_for_a_seeded_rng():
    buffer = filled(50)
    a = buffer.sample(32, np.random.default_rng(7), CPU)
    assert_same_batch(a, buffer.sample(32, np.random.default_rng(7), CPU))
    assert not torch.equal(a.reward, buffer.sample(32, np.random.default_rng(8), CPU).reward)
    indices = buffer.sample_indices(32, np.random.default_rng(7))
    assert_same_batch(a, buffer.gather(indices, CPU))
    np.testing.assert_array_equal(a.reward.numpy(), indices.astype(np.float32))  # reward i is transition i


def test_sample_normalizes_with_the_current_statistics_and_keeps_raw_storage():
    buffer = filled(50)
    raw_before = buffer.obs.copy(), buffer.next_obs.copy()
    normalizer = ObservationNormalizer(OBS)
    normalizer.update(buffer.obs[:10])
    indices = buffer.sample_indices(32, np.random.default_rng(1))

    first = buffer.gather(indices, CPU, normalizer)
    np.testing.assert_array_equal(first.obs.numpy(), normalizer.normalize(buffer.obs[indices]))
    np.testing.assert_array_equal(first.next_obs.numpy(), normalizer.normalize(buffer.next_obs[indices]))

    normalizer.update(buffer.obs[10:50] * 3.0)  # the statistics move
    second = buffer.sample(32, np.random.default_rng(1), CPU, normalizer)
    np.testing.assert_array_equal(second.obs.numpy(), normalizer.normalize(buffer.obs[indices]))
    assert not torch.equal(first.obs, second.obs)
    assert torch.equal(first.reward, second.reward)  # same transitions, only their normalization changed
    np.testing.assert_array_equal(buffer.obs, raw_before[0])
    np.testing.assert_array_equal(buffer.next_obs, raw_before[1])
    raw = buffer.gather(indices, CPU)
    np.testing.assert_array_equal(raw.obs.numpy(), buffer.obs[indices])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e39], ids=["nan", "inf", "-inf", "beyond-float32"])
@pytest.mark.parametrize("field", ["obs", "action", "reward", "next_obs"])
def test_non_finite_transitions_are_rejected_and_counted(field: str, bad: float):
    buffer = filled(3)
    before = {name: getattr(buffer, name).copy() for name in _FIELDS}
    obs, action, reward, next_obs, terminated = transition(3)
    values = {"obs": obs, "action": action, "reward": reward, "next_obs": next_obs}
    if field == "reward":
        values["reward"] = bad
    else:
        values[field] = values[field].copy()
        values[field][1] = bad

    stored = buffer.add(values["obs"], values["action"], values["reward"], values["next_obs"], terminated)

    assert stored is False and buffer.rejected == 1
    assert len(buffer) == 3 and buffer.pos == 3 and buffer.total_added == 3
    for name in _FIELDS:
        np.testing.assert_array_equal(getattr(buffer, name), before[name])
    assert buffer.add(*transition(3)) and len(buffer) == 4  # the next good one is stored


def test_wrong_shapes_raise():
    buffer = ReplayBuffer(4, OBS, ACT)
    obs, action, reward, next_obs, terminated = transition(1)
    with pytest.raises(ValueError, match="obs_dim 3"):
        buffer.add(obs[:2], action, reward, next_obs, terminated)
    with pytest.raises(ValueError, match="action_dim 2"):
        buffer.add(obs, np.zeros(3), reward, next_obs, terminated)


def test_sampling_an_empty_buffer_says_what_to_do():
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, OBS, ACT).sample(2, np.random.default_rng(0), CPU)


def test_tags_are_stored_per_transition():
    buffer = ReplayBuffer(10, OBS, ACT)
    buffer.add(*transition(0))
    buffer.add(*transition(1), domain=DOMAIN_REAL, policy_version=42, safety_clipped=True)
    tags = buffer.tags(np.array([0, 1, 1]))
    assert tags.domain.tolist() == [DOMAIN_SIM, DOMAIN_REAL, DOMAIN_REAL]
    assert tags.policy_version.tolist() == [0, 42, 42]
    assert tags.safety_clipped.tolist() == [False, True, True]


@pytest.mark.parametrize(("n", "capacity"), [(0, 10), (7, 10), (23, 10)], ids=["empty", "partial", "wrapped"])
def test_save_load_round_trip_is_exact(tmp_path: Path, n: int, capacity: int):
    buffer = filled(n, capacity)
    buffer.rejected = 5
    saved_size = len(buffer)
    path = tmp_path / "replay.npz"
    buffer.save(path)
    loaded = ReplayBuffer.load(path)

    attrs = ("capacity", "obs_dim", "action_dim", "pos", "size", "rejected", "total_added")
    assert [getattr(loaded, a) for a in attrs] == [getattr(buffer, a) for a in attrs]
    for name in _FIELDS:
        np.testing.assert_array_equal(getattr(loaded, name), getattr(buffer, name))
        assert getattr(loaded, name).dtype == getattr(buffer, name).dtype
    if len(buffer):
        assert_same_batch(
            loaded.sample(64, np.random.default_rng(3), CPU), buffer.sample(64, np.random.default_rng(3), CPU)
        )
    loaded.add(*transition(99))
    buffer.add(*transition(99))
    assert loaded.pos == buffer.pos and np.array_equal(loaded.reward, buffer.reward)
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]  # no temporary file left
    with np.load(path, allow_pickle=False) as data:  # only the filled part is written
        assert data["obs"].shape == (saved_size, OBS)


def test_failed_save_leaves_the_previous_file_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "replay.npz"
    filled(5).save(path)

    def crash_mid_write(file: object, **arrays: np.ndarray) -> None:
        assert hasattr(file, "write")
        file.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replay_module.np, "savez", crash_mid_write)
    with pytest.raises(StorageError, match="No space left"):
        filled(9).save(path)
    monkeypatch.undo()

    assert len(ReplayBuffer.load(path)) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["replay.npz"]


def test_crash_before_rename_leaves_the_previous_file_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / "replay.npz"
    filled(5).save(path)

    def killed(src: str, dst: str) -> None:
        raise OSError("killed before the rename")

    monkeypatch.setattr(replay_module.os, "replace", killed)
    with pytest.raises(StorageError):
        filled(9).save(path)
    monkeypatch.undo()
    assert len(ReplayBuffer.load(path)) == 5


def test_corrupt_or_missing_files_raise_storage_error(tmp_path: Path):
    path = tmp_path / "replay.npz"
    filled(20).save(path)
    data = path.read_bytes()
    cases = {
        "missing": None,
        "truncated": data[: len(data) // 2],
        "empty": b"",
        "not-npz": b"hello",
    }
    for name, content in cases.items():
        target = tmp_path / f"{name}.npz"
        if content is not None:
            target.write_bytes(content)
        with pytest.raises(StorageError):
            ReplayBuffer.load(target)
    incomplete = tmp_path / "incomplete.npz"
    with np.load(path) as full:
        np.savez(incomplete, **{k: full[k] for k in full.files if k != "reward"})
    with pytest.raises(StorageError, match="reward"):
        ReplayBuffer.load(incomplete)


def test_save_is_a_zip_without_pickles(tmp_path: Path):
    path = tmp_path / "replay.npz"
    filled(3).save(path)
    assert zipfile.is_zipfile(path)
    with np.load(path, allow_pickle=False) as data:
        assert all(data[k].dtype != object for k in data.files)
    assert os.path.getsize(path) > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_sample_equals_cpu_sample():
    buffer = filled(50)
    normalizer = ObservationNormalizer(OBS)
    normalizer.update(buffer.obs[:50])
    cuda = buffer.sample(32, np.random.default_rng(0), torch.device("cuda"), normalizer)
    cpu = buffer.sample(32, np.random.default_rng(0), CPU, normalizer)
    torch.cuda.synchronize()
    assert cuda.obs.device.type == "cuda"
    for name in ("obs", "action", "reward", "next_obs", "terminated"):
        assert torch.equal(getattr(cuda, name).cpu(), getattr(cpu, name))


@pytest.mark.parametrize(("capacity", "n"), [(100, 10), (7, 5), (4, 11)], ids=["roomy", "wraps", "beyond-capacity"])
def test_add_batch_equals_a_sequence_of_adds(capacity: int, n: int):
    rows = [transition(i) for i in range(n)]
    obs, action, reward, next_obs, terminated = (np.array(column) for column in zip(*rows, strict=True))
    reward[2] = np.nan
    next_obs[3, 0] = np.inf
    domain = np.arange(n) % 2
    policy_version = 10 + np.arange(n)

    sequential = filled(3, capacity)
    for i in range(n):
        sequential.add(
            obs[i], action[i], reward[i], next_obs[i], terminated[i], domain=domain[i], policy_version=policy_version[i]
        )
    batched = filled(3, capacity)
    stored = batched.add_batch(obs, action, reward, next_obs, terminated, domain=domain, policy_version=policy_version)

    assert stored == n - 2 and batched.rejected == 2
    attrs = ("pos", "size", "rejected", "total_added")
    assert [getattr(batched, a) for a in attrs] == [getattr(sequential, a) for a in attrs]
    for name in _FIELDS:
        np.testing.assert_array_equal(getattr(batched, name), getattr(sequential, name))


def test_add_batch_wrong_shapes_raise():
    buffer = ReplayBuffer(4, OBS, ACT)
    with pytest.raises(ValueError, match="add_batch shapes"):
        buffer.add_batch(np.zeros((2, OBS)), np.zeros((2, ACT)), np.zeros(3), np.zeros((2, OBS)), np.zeros(2))


def test_domain_mix_draws_the_configured_share_of_real_transitions() -> None:
    from robot_sac.replay import DOMAIN_REAL, DomainMix

    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(1000, 2, 1)
    for i in range(900):
        buffer.add(np.full(2, i), np.zeros(1), 0.0, np.zeros(2), False)
    mix = DomainMix(real_fraction=0.5, min_real=50)
    assert len(buffer.sample_indices(64, rng, mix)) == 64  # no real data yet: uniform over the sim rows
    for i in range(40):
        buffer.add(np.full(2, -i), np.zeros(1), 0.0, np.zeros(2), False, domain=DOMAIN_REAL)
    below = buffer.sample_indices(20_000, rng, mix)
    assert abs(float(np.mean(buffer.domain[below] == DOMAIN_REAL)) - 40 / 940) < 0.01  # below min_real: uniform
    for i in range(40, 60):
        buffer.add(np.full(2, -i), np.zeros(1), 0.0, np.zeros(2), False, domain=DOMAIN_REAL)
    idx = buffer.sample_indices(256, rng, mix)
    assert int((buffer.domain[idx] == DOMAIN_REAL).sum()) == 128  # exactly half of every batch
    assert set(buffer.domain[idx[128:]].tolist()) == {0}
    assert buffer.domain_counts() == {"sim": 900, "real": 60}
    assert len(set(idx[:128].tolist())) > 40  # spread over the 60 real rows
