"""The replay buffer: a preallocated ring of raw transitions, normalized at sample time.

Rules (ARCHITECTURE.md): observations are stored raw (float32), so a change of normalization
statistics applies to every stored transition at the next sample; only ``terminated`` is stored,
so truncated transitions bootstrap; a transition with any non-finite number is never stored
(SAFETY.md row 12), and is counted in ``rejected``. Each transition carries tags: its domain (sim or
real), the policy version that acted and whether the safety filter clipped the action.

Files are ``.npz`` without pickle, written atomically (temporary file in the same directory, fsync,
rename, directory fsync): a crash mid-save leaves the previous file intact.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from robot_sac.errors import StorageError
from robot_sac.normalization import ObservationNormalizer
from robot_sac.relabel import GoalRelabeler
from robot_sac.sac import Batch

DOMAIN_SIM = 0
"""Domain tag of a transition collected in simulation."""
DOMAIN_REAL = 1
"""Domain tag of a transition collected on the robot."""

_FORMAT_VERSION = 2
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FIELDS = (
    "obs", "action", "reward", "next_obs", "terminated", "domain", "policy_version", "safety_clipped", "episode",
)  # fmt: skip


class Tags(NamedTuple):
    """Per-transition tags of some stored transitions, each of shape (k,).

    Attributes:
        domain: `DOMAIN_SIM` or `DOMAIN_REAL` (uint8).
        policy_version: the version of the weights that chose the action (int64).
        safety_clipped: the safety filter modified the action (bool).
    """

    domain: np.ndarray
    policy_version: np.ndarray
    safety_clipped: np.ndarray


class DomainMix(NamedTuple):
    """How a minibatch mixes real and simulated transitions (fine-tuning on the robot).

    Attributes:
        real_fraction: share of each batch drawn from real transitions, in [0, 1].
        min_real: real transitions needed before the share applies (uniform sampling until then).
    """

    real_fraction: float
    min_real: int


class ReplayBuffer:
    """A fixed-capacity ring of transitions; the oldest is overwritten once full.

    Args:
        capacity: maximum number of transitions (all memory is allocated here: about
            ``capacity * (2 * obs_dim + action_dim + 2) * 4`` bytes plus 10 bytes of tags each).
        obs_dim: raw observation size.
        action_dim: action size (actions in policy units, [-1, 1]).

    Attributes:
        rejected: transitions refused for a non-finite value, since construction (or the saved run).
        total_added: transitions stored since construction (or the saved run), including overwritten ones.
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int) -> None:
        if capacity < 1 or obs_dim < 1 or action_dim < 1:
            raise ValueError(f"capacity, obs_dim and action_dim must be >= 1, got {capacity}, {obs_dim}, {action_dim}")
        self.capacity, self.obs_dim, self.action_dim = capacity, obs_dim, action_dim
        self.obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.float32)
        self.domain = np.zeros(capacity, dtype=np.uint8)
        self.policy_version = np.zeros(capacity, dtype=np.int64)
        self.safety_clipped = np.zeros(capacity, dtype=bool)
        self.episode = np.full(capacity, -1, dtype=np.int64)
        """Episode id of each transition (for hindsight relabeling); -1 where unknown."""
        self.pos = 0
        self.size = 0
        self.rejected = 0
        self.total_added = 0
        self._split_at = -1
        self._split: tuple[np.ndarray, np.ndarray] = (np.zeros(0, np.int64), np.zeros(0, np.int64))

    def __len__(self) -> int:
        """Number of stored transitions (at most ``capacity``)."""
        return self.size

    def add(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: float,
        next_obs: np.ndarray,
        terminated: bool,
        *,
        domain: int = DOMAIN_SIM,
        policy_version: int = 0,
        safety_clipped: bool = False,
        episode: int = -1,
    ) -> bool:
        """Store one transition unless it holds a non-finite number.

        Args:
            obs: (obs_dim,) raw observation s.
            action: (action_dim,) executed action in policy units.
            reward: r.
            next_obs: (obs_dim,) raw observation s'.
            terminated: s' is terminal. Pass ``terminated``, never ``terminated or truncated``.
            domain: `DOMAIN_SIM` or `DOMAIN_REAL`.
            policy_version: version of the weights that acted.
            safety_clipped: the safety filter changed the action.
            episode: id of the episode (ids never repeat; -1 unknown, never relabeled).

        Returns:
            True if stored; False if rejected (counted in ``rejected``, buffer unchanged).

        Raises:
            ValueError: a shape differs from the buffer's dimensions (a bug, not bad data).
        """
        o, a, o2 = (np.asarray(x, dtype=np.float64) for x in (obs, action, next_obs))
        if o.shape != (self.obs_dim,) or o2.shape != (self.obs_dim,) or a.shape != (self.action_dim,):
            raise ValueError(
                f"transition shapes obs {o.shape}, action {a.shape}, next_obs {o2.shape} do not match the buffer's "
                f"obs_dim {self.obs_dim}, action_dim {self.action_dim}"
            )
        # Not just isnan: inf poisons a critic as surely as NaN, and so does a finite float64 beyond
        # float32's range (|x| > 3.4e38), which would be stored as inf. NaN fails the comparison too.
        row = np.concatenate((o, a, o2, [float(reward)]))
        if not (np.abs(row) <= _FLOAT32_MAX).all():
            self.rejected += 1
            return False
        i = self.pos
        self.obs[i], self.action[i], self.next_obs[i], self.reward[i] = o, a, o2, row[-1]
        self.terminated[i] = float(bool(terminated))
        self.domain[i], self.policy_version[i], self.safety_clipped[i] = domain, policy_version, safety_clipped
        self.episode[i] = episode
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)
        self.total_added += 1
        return True

    def add_batch(
        self,
        obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        next_obs: np.ndarray,
        terminated: np.ndarray,
        *,
        domain: int | np.ndarray = DOMAIN_SIM,
        policy_version: int | np.ndarray = 0,
        safety_clipped: bool | np.ndarray = False,
        episode: int | np.ndarray = -1,
    ) -> int:
        """Store n transitions at once (a chunk from an actor); the same result as n calls of `add`.

        Args:
            obs: (n, obs_dim) raw observations.
            action: (n, action_dim) executed actions.
            reward: (n,) rewards.
            next_obs: (n, obs_dim) raw next observations.
            terminated: (n,) terminal flags.
            domain: one tag for all rows, or (n,).
            policy_version: one version for all rows, or (n,).
            safety_clipped: one flag for all rows, or (n,).
            episode: one episode id for all rows, or (n,).

        Returns:
            How many rows were stored; rows with a non-finite value are skipped and counted in ``rejected``.
        """
        o, a, o2 = (np.asarray(x, dtype=np.float64) for x in (obs, action, next_obs))
        r, d = np.asarray(reward, dtype=np.float64), np.asarray(terminated)
        n = o.shape[0] if o.ndim == 2 else -1
        shapes = (o.shape, a.shape, r.shape, o2.shape, d.shape)
        if shapes != ((n, self.obs_dim), (n, self.action_dim), (n,), (n, self.obs_dim), (n,)):
            raise ValueError(
                f"add_batch shapes {shapes} do not match (n, {self.obs_dim}), (n, {self.action_dim}), (n,)"
            )
        rows = np.concatenate((o, a, o2, r[:, None]), axis=1)
        keep = np.flatnonzero((np.abs(rows) <= _FLOAT32_MAX).all(axis=1))  # NaN fails the comparison
        tags = [np.broadcast_to(t, (n,))[keep] for t in (domain, policy_version, safety_clipped, episode)]
        stored = keep.size
        self.rejected += n - stored
        # Beyond capacity only the last `capacity` rows would survive a sequence of adds.
        skip = max(0, stored - self.capacity)
        at = (self.pos + skip + np.arange(stored - skip)) % self.capacity
        keep = keep[skip:]
        self.obs[at], self.action[at], self.next_obs[at], self.reward[at] = o[keep], a[keep], o2[keep], r[keep]
        self.terminated[at] = d[keep].astype(bool)
        self.domain[at], self.policy_version[at], self.safety_clipped[at], self.episode[at] = (t[skip:] for t in tags)
        self.pos = (self.pos + stored) % self.capacity
        self.size = min(self.size + stored, self.capacity)
        self.total_added += stored
        return stored

    # --- sampling -------------------------------------------------------------------------------

    def sample_indices(self, batch_size: int, rng: np.random.Generator, mix: DomainMix | None = None) -> np.ndarray:
        """``batch_size`` indices into the stored transitions (with replacement), int64.

        Uniform over everything stored, unless ``mix`` asks for a fixed share of real transitions
        and at least ``mix.min_real`` are stored: then ``round(mix.real_fraction * batch_size)`` rows
        are uniform over the real transitions and the rest uniform over the others (the symmetric
        sampling of prior and online data of RLPD, Ball et al. 2023, at ``real_fraction = 0.5``).
        """
        if self.size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first (learning_starts)")
        if mix is None or mix.real_fraction <= 0.0:
            return rng.integers(0, self.size, size=batch_size)
        real, other = self._domain_split()
        if real.size < max(1, mix.min_real) or other.size == 0:
            return rng.integers(0, self.size, size=batch_size)
        n_real = round(mix.real_fraction * batch_size)
        return np.concatenate((real[rng.integers(0, real.size, n_real)],
                               other[rng.integers(0, other.size, batch_size - n_real)]))  # fmt: skip

    def _domain_split(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the real and of the other stored transitions; recomputed only after adds."""
        if self._split_at != self.total_added:
            is_real = self.domain[: self.size] == DOMAIN_REAL
            self._split = (np.flatnonzero(is_real), np.flatnonzero(~is_real))
            self._split_at = self.total_added
        return self._split

    def domain_counts(self) -> dict[str, int]:
        """Stored transitions per domain, ``{"sim": n, "real": m}``."""
        real, other = self._domain_split()
        return {"sim": int(other.size), "real": int(real.size)}

    def sample(
        self,
        batch_size: int,
        rng: np.random.Generator,
        device: torch.device,
        normalizer: ObservationNormalizer | None = None,
        relabeler: GoalRelabeler | None = None,
        mix: DomainMix | None = None,
    ) -> Batch:
        """A minibatch as float32 tensors on ``device``, observations normalized now.

        Args:
            batch_size: B.
            rng: the only source of randomness (seeded by the caller for reproducible runs).
            device: the learner's device.
            normalizer: observations go through ``normalizer.normalize`` with its current statistics;
                None leaves them raw.
            relabeler: gives a share of the rows hindsight goals (raw, before normalization).
            mix: the share of real transitions per batch (`sample_indices`); None: uniform.
        """
        indices = self.sample_indices(batch_size, rng, mix)
        if relabeler is None:
            return self.gather(indices, device, normalizer)
        new = relabeler.relabel(indices, self.obs, self.next_obs, self.reward, self.episode, self.pos, rng)
        obs, next_obs = new.obs, new.next_obs
        if normalizer is not None:
            obs, next_obs = normalizer.normalize(obs), normalizer.normalize(next_obs)
        arrays = (obs, self.action[indices], new.reward, next_obs, self.terminated[indices])
        return Batch(*(_to_device(x, device) for x in arrays))

    def gather(
        self, indices: np.ndarray, device: torch.device, normalizer: ObservationNormalizer | None = None
    ) -> Batch:
        """The transitions at ``indices`` as a `Batch` (see `sample`); pair with `tags` for per-domain metrics."""
        obs, next_obs = self.obs[indices], self.next_obs[indices]
        if normalizer is not None:
            obs, next_obs = normalizer.normalize(obs), normalizer.normalize(next_obs)
        arrays = (obs, self.action[indices], self.reward[indices], next_obs, self.terminated[indices])
        return Batch(*(_to_device(x, device) for x in arrays))

    def tags(self, indices: np.ndarray) -> Tags:
        """The tags of the transitions at ``indices`` (copies)."""
        return Tags(self.domain[indices], self.policy_version[indices], self.safety_clipped[indices])

    # --- storage --------------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the filled part, ring position and counters to an ``.npz`` (no pickle), atomically.

        Raises:
            StorageError: the file could not be written; a previous file at ``path`` is unchanged.
        """
        path = Path(path)
        arrays = {name: getattr(self, name)[: self.size] for name in _FIELDS}
        meta = (_FORMAT_VERSION, self.capacity, self.obs_dim, self.action_dim, self.pos, self.size)
        arrays["meta"] = np.array((*meta, self.rejected, self.total_added), dtype=np.int64)
        tmp: str | None = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                # All arrays are numeric, so nothing is pickled; `load` refuses pickles. (No
                # allow_pickle argument here: numpy < 2.1 would store it as an array.)
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            tmp = None
            _fsync_dir(path.parent)
        except OSError as err:
            raise StorageError(f"could not save the replay buffer to {path}: {err}") from err
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def load(cls, path: str | Path) -> ReplayBuffer:
        """Read a buffer written by `save` (same capacity, contents, position and counters).

        Raises:
            StorageError: missing, truncated or corrupt file, or an unknown format version.
        """
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                version, capacity, obs_dim, action_dim, pos, size, rejected, total = (int(v) for v in data["meta"])
                if version not in (1, _FORMAT_VERSION):
                    raise StorageError(f"{path}: replay format version {version} is not supported ({_FORMAT_VERSION})")
                if not (0 <= size <= capacity and 0 <= pos < capacity):
                    raise ValueError(f"inconsistent ring state: size {size}, pos {pos}, capacity {capacity}")
                buffer = cls(capacity, obs_dim, action_dim)
                for name in _FIELDS if version == _FORMAT_VERSION else _FIELDS[:-1]:
                    getattr(buffer, name)[:size] = data[name]
        except (OSError, EOFError, zipfile.BadZipFile, KeyError, ValueError) as err:
            # A truncated .npz raises BadZipFile, an empty one EOFError, a missing array KeyError and a
            # shape mismatch ValueError: none of them is an OSError.
            raise StorageError(f"could not load the replay buffer from {path}: {err}") from err
        buffer.pos, buffer.size, buffer.rejected, buffer.total_added = pos, size, rejected, total
        return buffer


def _to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if device.type == "cuda":
        # Pinned staging + an asynchronous copy. torch's caching host allocator keeps a pinned block
        # in use until the copy reading it has finished, so the next sample cannot overwrite it.
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable (POSIX); not possible on Windows, where replace is enough.
    if os.name == "posix":
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
