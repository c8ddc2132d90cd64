"""Atomic, verifiable training checkpoints (SAFETY.md rows 21-22, summary item 8).

Layout of a run directory::

    run_dir/checkpoints/
        step_0000010000/          one complete checkpoint
            state.pt              torch.save of a plain dict (tensors, numbers, str, containers)
            replay.npz ...        files written by ``extra_files`` callables (e.g. the replay buffer)
            manifest.json         sha256 and size of every file, step, format version, UTC time
        step_0000020000/
        LATEST                    the name of the newest complete checkpoint, one line
        .tmp-step_...-<pid>-<hex>/  a save in progress (or killed mid-way): never a checkpoint

Why directories: a checkpoint holds several files (weights, replay buffer), and only a directory
rename makes all of them appear at once (adaptdl #70). The sequence is: write every file under a
temporary directory, fsync each file, write the manifest last, fsync the directory, ``os.replace``
it to ``step_<n>``, fsync ``checkpoints/``, then replace ``LATEST``. A crash at any point leaves the
previous checkpoint and ``LATEST`` untouched; a directory without ``manifest.json`` is never read.

State files are loaded with ``torch.load(weights_only=True)`` (no arbitrary pickle). `save_checkpoint`
refuses state it could not load back that way, at save time rather than at resume time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robot_sac.errors import StorageError

FORMAT_VERSION = 1
STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
LATEST_FILE = "LATEST"
CHECKPOINTS_DIR = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{10,})$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_FIX = "free disk space (or point --out at a larger disk) and check the directory is writable"
# Types `torch.load(weights_only=True)` accepts without extra allow-listing (checked on torch 2.13).
_LEAF_TYPES = (torch.Tensor, bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)

log = logging.getLogger(__name__)


def save_checkpoint(
    run_dir: Path,
    step: int,
    state: dict[str, Any],
    *,
    keep: int,
    extra_files: dict[str, Callable[[Path], None]] | None = None,
    metadata: Mapping[str, str | int | float | bool] | None = None,
) -> Path:
    """Write and return ``run_dir/checkpoints/step_{step:010d}/`` atomically; point ``LATEST`` at it; prune.

    Args:
        run_dir: the run directory; ``checkpoints/`` is created inside it.
        step: env steps so far; names the directory and is recorded in the manifest.
        state: tensors, Python numbers, str, bytes, None, dtypes/devices, and lists, tuples and dicts
            of those. numpy arrays are refused: convert them with ``torch.from_numpy`` (a weights-only
            load cannot rebuild them).
        keep: how many complete checkpoints to keep (>= 1). The one just written is always kept;
            the others are ranked by step, newest first.
        extra_files: file name -> callable that writes exactly that path (e.g. the replay buffer's
            ``save``). They run inside the temporary directory, so they may write non-atomically.
        metadata: small JSON values recorded in the manifest (config hash, package version, ...).

    Raises:
        StorageError: a write failed (disk full, quota, permissions, file size limit). The previous
            checkpoint and ``LATEST`` are left as they were.
        TypeError: ``state`` holds a value a weights-only load could not restore (a bug, not storage).
        ValueError: bad ``keep`` or extra file name, or a writer did not create its file.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (got {keep}): at least the new checkpoint stays")
    _check_loadable(state, "state")
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if name in (STATE_FILE, MANIFEST_FILE, "") or Path(name).name != name or name.startswith("."):
            raise ValueError(f"extra file name {name!r} must be a plain file name other than state.pt/manifest.json")
    ckpt_root = run_dir / CHECKPOINTS_DIR
    final = ckpt_root / f"step_{step:010d}"
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create checkpoint directory {ckpt_root}: {err}; {_FIX}") from err
    _remove_stale_temporaries(ckpt_root)
    tmp = ckpt_root / f"{_TMP_PREFIX}{final.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        _write_contents(tmp, step, state, extra_files, metadata or {})
        _replace_dir(tmp, final)
        _fsync(ckpt_root)
        _write_text_atomic(ckpt_root / LATEST_FILE, final.name + "\n")
    except (OSError, RuntimeError) as err:
        raise StorageError(f"checkpoint {final} was not written: {err}; {_FIX}. {_free_space(ckpt_root)}") from err
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _prune(ckpt_root, keep, newest=final)
    return final


def _write_contents(
    tmp: Path,
    step: int,
    state: dict[str, Any],
    extra_files: dict[str, Callable[[Path], None]],
    metadata: Mapping[str, str | int | float | bool],
) -> None:
    """Write state.pt, the extra files and (last) the manifest into ``tmp``, all fsynced."""
    with open(tmp / STATE_FILE, "wb") as f:
        torch.save(state, f)  # on a full disk: RuntimeError("... unexpected pos ..."), not OSError (B10)
    for name, write in extra_files.items():
        try:
            write(tmp / name)
        except StorageError as err:
            raise OSError(str(err)) from err
        if not (tmp / name).is_file():
            raise ValueError(f"the writer for {name!r} did not create {tmp / name} (did it add a suffix?)")
    files = {}
    for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
        _fsync(path)  # every file, as extra writers may not; then hash what reads back from the disk
        files[path.relative_to(tmp).as_posix()] = {"sha256": _sha256(path), "size": path.stat().st_size}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    manifest = {"format": "robot-sac-checkpoint", "format_version": FORMAT_VERSION, "step": step}
    manifest |= {"created_utc": now, "files": files, "metadata": dict(metadata)}
    with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    _fsync(tmp)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``LATEST`` names, or the newest complete one if ``LATEST`` is missing or stale.

    Complete means a ``step_<n>`` directory holding ``manifest.json``; temporary directories of
    interrupted saves are never returned. Hashes are not checked here (see `load_checkpoint`).
    """
    ckpt_root = run_dir / CHECKPOINTS_DIR
    with contextlib.suppress(OSError, UnicodeDecodeError):
        name = (ckpt_root / LATEST_FILE).read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(name) and (ckpt_root / name / MANIFEST_FILE).is_file():
            return ckpt_root / name
        log.warning("%s names %r, which is not a complete checkpoint; using the newest one", LATEST_FILE, name)
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest step first."""
    ckpt_root = run_dir / CHECKPOINTS_DIR
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if _STEP_DIR.match(p.name) and (p / MANIFEST_FILE).is_file()]
    return sorted(found, key=lambda p: int(p.name.removeprefix("step_")))


def verify_checkpoint(path: Path) -> dict[str, Any]:
    """Check every file of a checkpoint against its manifest; return the manifest.

    Raises:
        StorageError: the manifest is missing or unreadable, or a file is missing, truncated or
            altered. The message names the file.
    """
    try:
        manifest: dict[str, Any] = json.loads((path / MANIFEST_FILE).read_text(encoding="utf-8"))
        files: dict[str, dict[str, Any]] = manifest["files"]
        version = manifest["format_version"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StorageError(f"checkpoint {path} has no readable {MANIFEST_FILE} ({err}); use an older one") from err
    if version != FORMAT_VERSION:
        raise StorageError(f"checkpoint {path} has format version {version}; this code reads {FORMAT_VERSION}")
    for name, expected in files.items():
        file = path / name
        try:
            size = file.stat().st_size
            digest = _sha256(file) if size == expected["size"] else ""
        except OSError as err:
            raise StorageError(f"checkpoint file {file} is unreadable: {err}") from err
        if size != expected["size"]:
            raise StorageError(f"checkpoint file {file} has {size} bytes, its manifest says {expected['size']}")
        if digest != expected["sha256"]:
            raise StorageError(f"checkpoint file {file} is corrupted: its sha256 does not match the manifest")
    return manifest


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Verify a checkpoint's hashes, then load its ``state.pt`` with ``weights_only=True``.

    Extra files (e.g. ``replay.npz``) are verified too; read them from ``path / name`` afterwards.

    Raises:
        StorageError: verification or loading failed; the message names the file.
    """
    verify_checkpoint(path)
    try:
        state: dict[str, Any] = torch.load(path / STATE_FILE, map_location=map_location, weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise StorageError(f"checkpoint file {path / STATE_FILE} could not be loaded: {err}") from err
    return state


def load_latest_checkpoint(
    run_dir: Path, map_location: str | torch.device = "cpu"
) -> tuple[Path, dict[str, Any]] | None:
    """Load the latest checkpoint, falling back to older ones (logged) if it fails verification.

    Returns:
        ``(path, state)``, or None when the run has no complete checkpoint.

    Raises:
        StorageError: checkpoints exist but none verifies (never silently start from scratch).
    """
    first = latest_checkpoint(run_dir)
    if first is None:
        return None
    candidates = [first] + [p for p in reversed(list_checkpoints(run_dir)) if p != first]
    errors = []
    for path in candidates:
        try:
            return path, load_checkpoint(path, map_location)
        except StorageError as err:
            log.error("skipping checkpoint %s: %s", path, err)
            errors.append(str(err))
    raise StorageError(f"no checkpoint in {run_dir / CHECKPOINTS_DIR} verifies: " + "; ".join(errors))


def capture_rng_state(np_rng: np.random.Generator) -> dict[str, Any]:
    """Every random state a training run draws from, in a weights-only-loadable form.

    Holds torch's CPU generator (uint8 tensor), each CUDA device's generator (when CUDA is
    available), ``np_rng``'s bit-generator state (arrays turned into lists) and Python's ``random``.
    """
    version, internal, gauss_next = random.getstate()
    return {
        "torch_cpu": torch.get_rng_state(),
        "torch_cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": _to_plain(np_rng.bit_generator.state),
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def restore_rng_state(state: Mapping[str, Any], np_rng: np.random.Generator) -> None:
    """Put back what `capture_rng_state` captured; ``np_rng`` is updated in place.

    Raises:
        ValueError: ``np_rng`` uses a different bit generator than the saved one.
    """
    torch.set_rng_state(state["torch_cpu"].to(device="cpu", dtype=torch.uint8))
    cuda_states = state.get("torch_cuda", [])
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to(device="cpu", dtype=torch.uint8) for s in cuda_states])
    elif cuda_states:
        log.warning("saved CUDA RNG states (%d devices) not restored: CUDA devices differ", len(cuda_states))
    saved_kind = state["numpy"]["bit_generator"]
    if saved_kind != np_rng.bit_generator.state["bit_generator"]:
        raise ValueError(f"saved numpy state is for {saved_kind}, the generator uses {type(np_rng.bit_generator)}")
    np_rng.bit_generator.state = state["numpy"]
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))


def check_free_space(path: Path, required_bytes: int, *, margin: float = 2.0) -> None:
    """Pre-flight (SAFETY.md row 22): refuse to start when the disk cannot hold the next checkpoints.

    ``required_bytes`` is one checkpoint, replay buffer included (bytes); ``margin`` 2 covers the old and
    the new checkpoint side by side during a save. Raises `StorageError` when less is free.
    """
    free = shutil.disk_usage(path).free
    if free < required_bytes * margin:
        raise StorageError(
            f"{path} has {free / 2**20:.1f} MiB free; a checkpoint needs about {required_bytes / 2**20:.1f} MiB "
            f"x {margin:g} margin; {_FIX}"
        )


def _check_loadable(value: Any, where: str) -> None:
    """Raise TypeError naming the first value a weights-only load could not restore."""
    if isinstance(value, _LEAF_TYPES) and type(value).__module__ != "numpy":  # np.float64 is a float
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str | int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            _check_loadable(item, f"{where}[{key!r}]")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_loadable(item, f"{where}[{i}]")
    else:
        hint = " (convert with torch.from_numpy / .item())" if type(value).__module__ == "numpy" else ""
        raise TypeError(f"{where} is a {type(value).__name__}, which torch.load(weights_only=True) refuses{hint}")


def _to_plain(value: Any) -> Any:
    """Turn numpy arrays and scalars inside nested dicts into lists and Python numbers."""
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (new names, renames), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``. An existing ``final`` (same step saved again) is moved aside first."""
    trash = final.with_name(f"{_TRASH_PREFIX}{final.name}-{uuid.uuid4().hex[:8]}")
    if final.exists():
        os.replace(final, trash)
    os.replace(tmp, final)
    shutil.rmtree(trash, ignore_errors=True)


def _remove_stale_temporaries(ckpt_root: Path) -> None:
    """Delete temp/trash dirs left by dead or earlier saves (one writer per run dir); best effort."""
    with contextlib.suppress(OSError):
        for path in ckpt_root.iterdir():
            if path.name.startswith(_TRASH_PREFIX) or (path.name.startswith(_TMP_PREFIX) and not _owner_alive(path)):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(f"{LATEST_FILE}.tmp."):
                path.unlink(missing_ok=True)


def _owner_alive(tmp: Path) -> bool:
    """Whether another live process named ``tmp`` (``...-<pid>-<hex>``); saves in one process never overlap."""
    try:
        pid = int(tmp.name.rsplit("-", 2)[1])
        if pid != os.getpid():
            os.kill(pid, 0)
            return True
    except PermissionError:
        return True  # alive, owned by another user
    except (IndexError, ValueError, ProcessLookupError):
        pass
    return False


def _prune(ckpt_root: Path, keep: int, newest: Path) -> None:
    """Remove all but ``keep`` checkpoints, never ``newest``. Failures are logged, not raised."""
    others = [p for p in reversed(list_checkpoints(ckpt_root.parent)) if p != newest]
    for old in others[keep - 1 :]:
        # Rename first, so a half-deleted directory is never mistaken for a checkpoint.
        trash = old.with_name(f"{_TRASH_PREFIX}{old.name}-{uuid.uuid4().hex[:8]}")
        try:
            os.replace(old, trash)
            shutil.rmtree(trash)
        except OSError as err:
            log.warning("could not remove old checkpoint %s: %s", old, err)


def _free_space(path: Path) -> str:
    with contextlib.suppress(OSError):
        return f"Free space on that disk: {shutil.disk_usage(path).free / 2**20:.1f} MiB."
    return ""
