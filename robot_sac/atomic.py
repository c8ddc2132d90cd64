"""Atomic small-file writes: temporary file in the same directory, fsync, rename, directory fsync.

A crash at any point leaves either the previous file or the new one, never a torn mix. Storage
failures (disk full, read-only, quota) become `StorageError` naming the path.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from robot_sac.errors import StorageError


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically.

    Raises:
        StorageError: the file could not be written (the previous one, if any, is intact).
    """
    path = Path(path)
    tmp_name = ""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, 0o644)  # a shared artifact, not a private temp file
        os.replace(tmp_name, path)
        tmp_name = ""
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise StorageError(f"could not write {path}: {err}; check free space and permissions") from err
    finally:
        if tmp_name:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
