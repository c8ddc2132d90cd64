"""Observation normalization: running mean/variance with an exact parallel merge, clipping, freezing.

Rules (ARCHITECTURE.md): the replay buffer stores raw observations; each path normalizes in
exactly one place; actors and the learner share one versioned set of stats (merged from all
actors with `RunningMeanStd.merge`); the exported ONNX graph holds the frozen stats; fine-tuning on
hardware keeps the sim stats frozen by default.

Merging uses Chan et al.'s pairwise update of (count, mean, M2), so statistics gathered by several
actors and merged equal a single pass over all their samples up to float64 rounding.
A non-finite sample is never folded into the stats: one NaN would poison a dimension for good
(SAFETY.md B2); such rows are counted in ``rejected``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from robot_sac.errors import StorageError

_FORMAT_VERSION = 1


@dataclass
class RunningMeanStd:
    """Count, mean and sum of squared deviations (M2) of a stream of vectors, float64.

    Attributes:
        count: number of samples folded in.
        mean: shape (dim,).
        m2: sum of squared deviations from the mean, shape (dim,).
    """

    count: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> RunningMeanStd:
        """Statistics of no samples."""
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def of(cls, batch: np.ndarray) -> RunningMeanStd:
        """Statistics of a batch of shape (n, dim) in one pass (two-pass for accuracy)."""
        x = np.asarray(batch, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] == 0:
            return cls.empty(x.shape[-1])
        mean = x.mean(axis=0)
        return cls(x.shape[0], mean, ((x - mean) ** 2).sum(axis=0))

    @property
    def var(self) -> np.ndarray:
        """Population variance, shape (dim,); zeros before any sample."""
        return self.m2 / self.count if self.count else np.zeros_like(self.m2)

    def add(self, x: np.ndarray) -> None:
        """Fold one finite sample of shape (dim,) in place (Welford's update, the merge with n=1)."""
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    def merge(self, other: RunningMeanStd) -> RunningMeanStd:
        """Statistics of both sample sets together (Chan, Golub & LeVeque 1979)."""
        if other.count == 0:
            return RunningMeanStd(self.count, self.mean.copy(), self.m2.copy())
        if self.count == 0:
            return RunningMeanStd(other.count, other.mean.copy(), other.m2.copy())
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningMeanStd(n, mean, m2)


class ObservationNormalizer:
    """Normalizes observations with running statistics: ``clip((x - mean) / sqrt(var + eps), ±k)``.

    Args:
        dim: observation size.
        clip_sigma: k, the clip bound in standard deviations.
        epsilon: added to the variance before the square root.
    """

    def __init__(self, dim: int, clip_sigma: float = 5.0, epsilon: float = 1e-8) -> None:
        """Start with empty statistics (identity mean 0 / std 1 until samples arrive)."""
        self.dim = dim
        self.clip_sigma = float(clip_sigma)
        self.epsilon = float(epsilon)
        self.stats = RunningMeanStd.empty(dim)
        self.frozen = False
        self.rejected = 0

    # --- statistics -----------------------------------------------------------------------------

    def update(self, observations: np.ndarray) -> None:
        """Fold observations of shape (dim,) or (n, dim) into the stats, unless frozen.

        Rows with any non-finite value are skipped and counted in ``rejected``.
        """
        if self.frozen:
            return
        x = np.asarray(observations, dtype=np.float64)
        if x.shape == (self.dim,):  # the per-step hot path: one observation, Welford's update
            if np.isfinite(x).all():
                self.stats.add(x)
            else:
                self.rejected += 1
            return
        x = x.reshape(-1, self.dim)
        finite = np.isfinite(x).all(axis=1)
        self.rejected += int((~finite).sum())
        if finite.any():
            self.stats = self.stats.merge(RunningMeanStd.of(x[finite]))

    def merge(self, other: RunningMeanStd) -> None:
        """Fold another actor's statistics in (ignored while frozen, like `update`)."""
        if not self.frozen:
            self.stats = self.stats.merge(other)

    def freeze(self) -> None:
        """Stop updating the statistics (fine-tuning on hardware, evaluation, export)."""
        self.frozen = True

    def unfreeze(self) -> None:
        """Resume updating the statistics."""
        self.frozen = False

    @property
    def mean(self) -> np.ndarray:
        """Current mean, shape (dim,); zeros before any sample."""
        return self.stats.mean.copy()

    @property
    def std(self) -> np.ndarray:
        """Current ``sqrt(var + epsilon)``, shape (dim,); ones before any sample."""
        if self.stats.count == 0:
            return np.ones(self.dim)
        return np.sqrt(self.stats.var + self.epsilon)

    def normalize(self, observation: np.ndarray) -> np.ndarray:
        """Normalize (..., dim) observations; returns float32 of the same shape."""
        stats, k = self.stats, self.clip_sigma
        std = np.sqrt(stats.m2 / stats.count + self.epsilon) if stats.count else 1.0
        z = (np.asarray(observation, dtype=np.float64) - stats.mean) / std
        normalized: np.ndarray = np.minimum(np.maximum(z, -k, out=z), k, out=z).astype(np.float32)
        return normalized

    # --- identity and storage -------------------------------------------------------------------

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Everything that defines the transform, as plain arrays (for npz, IPC and export)."""
        return {
            "format_version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "count": np.array(self.stats.count, dtype=np.int64),
            "mean": self.stats.mean.astype(np.float64),
            "m2": self.stats.m2.astype(np.float64),
            "clip_sigma": np.array(self.clip_sigma, dtype=np.float64),
            "epsilon": np.array(self.epsilon, dtype=np.float64),
            "frozen": np.array(self.frozen),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> ObservationNormalizer:
        """Rebuild a normalizer from `to_arrays` output."""
        version = int(arrays["format_version"])
        if version != _FORMAT_VERSION:
            raise StorageError(f"normalizer format version {version} is not supported (expected {_FORMAT_VERSION})")
        mean = np.asarray(arrays["mean"], dtype=np.float64)
        norm = cls(mean.shape[0], float(arrays["clip_sigma"]), float(arrays["epsilon"]))
        norm.stats = RunningMeanStd(
            int(arrays["count"]), mean.copy(), np.asarray(arrays["m2"], dtype=np.float64).copy()
        )
        norm.frozen = bool(arrays["frozen"])
        return norm

    def digest(self) -> str:
        """sha256 of the transform (count, mean, m2, clip, epsilon); equal digests normalize equally."""
        h = hashlib.sha256()
        for key, value in self.to_arrays().items():
            if key == "frozen":
                continue
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
        return h.hexdigest()

    def save(self, path: str | Path) -> None:
        """Write an ``.npz`` (no pickle) atomically: temp file, fsync, rename."""
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    # numpy's stubs fear a key named allow_pickle in **arrays; ours are fixed names.
                    np.savez(f, **self.to_arrays())  # type: ignore[arg-type]
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as err:
            raise StorageError(f"could not save normalizer stats to {path}: {err}") from err

    @classmethod
    def load(cls, path: str | Path) -> ObservationNormalizer:
        """Read stats written by `save`."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                return cls.from_arrays({k: data[k] for k in data.files})
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as err:
            # A truncated or bit-flipped .npz raises BadZipFile (bad CRC, no central directory), an
            # empty file EOFError; neither is an OSError.
            raise StorageError(f"could not load normalizer stats from {path}: {err}") from err


class NormalizeObservation(gym.Wrapper[np.ndarray, np.ndarray, np.ndarray, np.ndarray]):
    """Normalizes observations for the policy and keeps the raw one in ``info["raw_observation"]``.

    Statistics are updated with every raw observation while the normalizer is not frozen and
    ``update_stats`` is true; an evaluation env shares the training normalizer with
    ``update_stats=False``. The raw observation (float64 copy) is what the replay buffer stores.
    """

    def __init__(
        self, env: gym.Env[np.ndarray, np.ndarray], normalizer: ObservationNormalizer, update_stats: bool = True
    ) -> None:
        """Wrap ``env``; ``normalizer.dim`` must equal the observation size."""
        super().__init__(env)
        self.update_stats = update_stats
        shape = env.observation_space.shape
        if shape != (normalizer.dim,):
            raise ValueError(f"normalizer dim {normalizer.dim} does not match observation shape {shape}")
        self.normalizer = normalizer
        k = normalizer.clip_sigma
        self.observation_space = gym.spaces.Box(-k, k, shape=shape, dtype=np.float32)

    def _process(self, obs: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        raw = np.array(obs, dtype=np.float64)
        info["raw_observation"] = raw
        if self.update_stats and info.get("observation_valid", True):
            self.normalizer.update(raw)
        return self.normalizer.normalize(raw)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Reset the inner env; normalize its first observation."""
        obs, info = self.env.reset(seed=seed, options=options)
        return self._process(obs, info), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the inner env; normalize its observation."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._process(obs, info), reward, terminated, truncated, info
