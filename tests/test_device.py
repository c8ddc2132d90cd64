"""Device selection: CUDA when present, CPU otherwise, sensible CPU threads."""

from __future__ import annotations

import os
import platform

import pytest
import torch

from robot_sac.device import configure_allocator, configure_cpu_threads, select_device
from robot_sac.errors import ConfigError


def test_auto_picks_cuda_only_when_present() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no CUDA device"):
        select_device("cuda")


def test_unknown_device_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not one of"):
        select_device("tpu")


def test_cpu_threads_default_and_explicit(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert configure_cpu_threads(1) == 1 and torch.get_num_threads() == 1
        default = configure_cpu_threads(None)
        assert 1 <= default <= 4 and torch.get_num_threads() == default
        cores = len(os.sched_getaffinity(0))
        # Cores taken by local actor processes are left to them; the learner keeps at least one.
        assert configure_cpu_threads(None, reserved_cores=cores - 1) == 1
        assert configure_cpu_threads(None, reserved_cores=cores + 3) == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_threads_default_follows_omp_num_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    try:
        assert configure_cpu_threads(None) == 1 and torch.get_num_threads() == 1
        assert configure_cpu_threads(2) == 2  # an explicit config value wins over the environment
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_allocator_tuning_takes_effect_on_glibc() -> None:
    assert configure_allocator() is True
