"""Where the learner runs: CUDA when present, CPU otherwise, with a sensible CPU thread count."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

from robot_sac.errors import ConfigError

DEFAULT_MAX_CPU_THREADS = 4
"""More intra-op threads than this rarely helps 256-wide MLPs and steals cores from the envs."""


def select_device(preference: str = "auto") -> torch.device:
    """The torch device for ``sac.device``: ``auto`` (CUDA if available), ``cpu`` or ``cuda``.

    Raises:
        ConfigError: ``cuda`` was asked for on a machine without a CUDA device.
    """
    cuda = torch.cuda.is_available()
    match preference:
        case "auto":
            return torch.device("cuda" if cuda else "cpu")
        case "cpu":
            return torch.device("cpu")
        case "cuda" if cuda:
            return torch.device("cuda")
        case "cuda":
            raise ConfigError("sac.device: cuda was requested but torch sees no CUDA device; use auto or cpu")
    raise ConfigError(f"sac.device: {preference!r} is not one of auto, cpu, cuda")


def configure_cpu_threads(threads: int | None = None, reserved_cores: int = 0) -> int:
    """Set torch's intra-op thread count and return it.

    ``None`` means: ``OMP_NUM_THREADS`` when the user set it (so two runs sharing a machine can be
    given a core each; more threads than cores makes OpenMP spin and runs ~10x slower), otherwise
    min(available cores - ``reserved_cores``, 4), at least 1. Local actor processes reserve their
    cores: a learner thread that shares a core with an actor waits on its descheduled OpenMP peer.
    Measured on 2 cores, ArmReach, 1 local actor, UTD 1 (2026-12-03, 4,000-8,000 env steps): 2
    learner threads 76-116 updates/s (mean 102), 1 thread 97-114 (mean 106): the second thread
    buys nothing and makes the rate erratic.
    """
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    from_env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if threads is None and from_env.isdigit() and int(from_env) >= 1:
        threads = int(from_env)
    count = threads if threads is not None else max(1, min(available - reserved_cores, DEFAULT_MAX_CPU_THREADS))
    torch.set_num_threads(count)
    return count


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's maximum on 64-bit
_TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def configure_allocator() -> bool:
    """Keep the learner's freed tensor buffers in the heap for reuse (glibc only).

    An update allocates and frees many 0.1-1 MB activation and gradient buffers. By default glibc
    serves blocks that large with mmap and returns them with munmap, so every update pays page
    faults and zeroing for fresh pages. Raising the mmap and trim thresholds keeps them in the heap
    (the same effect PyTorch's CPU tuning guide gets from jemalloc/tcmalloc). Returns whether the
    setting took effect (False on non-glibc systems, where nothing changes).
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES)
    )
