"""Normalizer identity and storage: digest, atomic .npz save/load, corrupt files."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from robot_sac.errors import StorageError
from robot_sac.normalization import ObservationNormalizer

DIM = 18
N = 10_000
RTOL = ATOL = 1e-12


# --- identity and storage -------------------------------------------------------------------------


def test_save_load_round_trip_without_pickle(tmp_path: Path, warmed: ObservationNormalizer) -> None:
    warmed.freeze()
    path = tmp_path / "sub" / "obs_norm.npz"
    warmed.save(path)
    with np.load(path, allow_pickle=False) as data:
        assert set(data.files) == {"format_version", "count", "mean", "m2", "clip_sigma", "epsilon", "frozen"}
        assert all(data[k].dtype != object for k in data.files)
    loaded = ObservationNormalizer.load(path)
    assert loaded.digest() == warmed.digest()
    assert loaded.frozen and loaded.dim == 3
    assert loaded.clip_sigma == warmed.clip_sigma and loaded.epsilon == warmed.epsilon
    assert loaded.stats.count == warmed.stats.count
    assert np.array_equal(loaded.stats.mean, warmed.stats.mean) and np.array_equal(loaded.stats.m2, warmed.stats.m2)
    x = np.array([[0.0, 0.0, 0.0], [1.0, -2.0, 30.0], [9.0, 9.0, 9.0]])
    assert np.array_equal(loaded.normalize(x), warmed.normalize(x))
    assert [p.name for p in path.parent.iterdir()] == ["obs_norm.npz"]  # no temp files left


def test_digest_tracks_the_transform_not_the_frozen_flag(warmed: ObservationNormalizer) -> None:
    digest = warmed.digest()
    assert len(digest) == 64
    warmed.freeze()
    assert warmed.digest() == digest
    warmed.unfreeze()
    warmed.update(np.array([1.0, 2.0, 3.0]))
    assert warmed.digest() != digest
    rebuilt = ObservationNormalizer.from_arrays(warmed.to_arrays())
    assert rebuilt.digest() == warmed.digest()
    other_clip = ObservationNormalizer.from_arrays({**warmed.to_arrays(), "clip_sigma": np.array(3.0)})
    assert other_clip.digest() != warmed.digest()
    # Stats of the same samples give the same digest, whichever way they were folded in.
    a, b = ObservationNormalizer(3), ObservationNormalizer(3)
    a.update(np.ones((4, 3)))
    b.update(np.ones((4, 3)))
    assert a.digest() == b.digest()


def test_failed_save_keeps_the_previous_file(
    tmp_path: Path, warmed: ObservationNormalizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "obs_norm.npz"
    warmed.save(path)
    good_bytes = path.read_bytes()
    good_digest = warmed.digest()
    warmed.update(np.array([5.0, 5.0, 5.0]))

    def savez_then_disk_full(file: Any, **arrays: np.ndarray) -> None:
        file.write(b"PK\x03\x04 partial zip member")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", savez_then_disk_full)
    with pytest.raises(StorageError, match="No space left on device") as info:
        warmed.save(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == good_bytes
    assert ObservationNormalizer.load(path).digest() == good_digest
    assert [p.name for p in tmp_path.iterdir()] == ["obs_norm.npz"]  # the temp file was removed


def test_save_into_an_unwritable_location_raises_storage_error(tmp_path: Path, warmed: ObservationNormalizer) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(StorageError, match="could not save"):
        warmed.save(blocker / "obs_norm.npz")


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "truncated_half": lambda b: b[: len(b) // 2],
    "truncated_tail": lambda b: b[:-10],
    "truncated_head": lambda b: b[:30],
    "empty": lambda b: b"",
    "bit_flip": lambda b: b[:200] + bytes([b[200] ^ 0xFF]) + b[201:],
    "garbage": lambda b: b"not an npz file at all" * 10,
}


@pytest.mark.parametrize("corrupt", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_loading_a_corrupt_file_raises_storage_error(
    tmp_path: Path, warmed: ObservationNormalizer, corrupt: Callable[[bytes], bytes]
) -> None:
    path = tmp_path / "obs_norm.npz"
    warmed.save(path)
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(StorageError, match="could not load normalizer stats") as info:
        ObservationNormalizer.load(path)
    assert str(path) in str(info.value)


def test_loading_a_file_with_a_missing_array_or_wrong_version_raises_storage_error(
    tmp_path: Path, warmed: ObservationNormalizer
) -> None:
    arrays = warmed.to_arrays()
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "m2"})
    with pytest.raises(StorageError):
        ObservationNormalizer.load(missing)
    future = tmp_path / "future.npz"
    np.savez(future, **{**arrays, "format_version": np.array(99)})
    with pytest.raises(StorageError, match="format version 99"):
        ObservationNormalizer.load(future)
    with pytest.raises(StorageError):
        ObservationNormalizer.load(tmp_path / "does_not_exist.npz")


def test_bit_flip_corruption_is_a_zip_crc_error_underneath(tmp_path: Path, warmed: ObservationNormalizer) -> None:
    path = tmp_path / "obs_norm.npz"
    warmed.save(path)
    path.write_bytes(CORRUPTIONS["bit_flip"](path.read_bytes()))
    with pytest.raises(StorageError) as info:
        ObservationNormalizer.load(path)
    assert isinstance(info.value.__cause__, zipfile.BadZipFile)
