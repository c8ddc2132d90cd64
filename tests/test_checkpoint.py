"""Atomic checkpoints: round trip, pruning, LATEST, crashes mid-save, full disk, corruption, RNG state."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from robot_sac.checkpoint import (
    capture_rng_state,
    check_free_space,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
    verify_checkpoint,
)
from robot_sac.errors import StorageError
from tests.conftest import REPO_ROOT


def _state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "actor": {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g, dtype=torch.float64)},
        "log_alpha": torch.tensor([-1.234567], dtype=torch.float32),
        "half": torch.randn(7, generator=g).to(torch.bfloat16),
        "mask": torch.rand(5, generator=g) > 0.5,
        "ids": torch.arange(10, dtype=torch.int64),
        "counters": {"env_steps": 12_345, "updates": 6789, "episodes": 17, "best": -123.5},
        "optim": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 3e-4, "params": [0, 1]}]},
        "shape": (3, 4),
        "name": "sac",
        "nothing": None,
        "big_int": 2**100 + 1,
    }


def _tmp_dirs(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith("."))


def _assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))  # bit for bit
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same(x, y)
    else:
        assert a == b and type(a) is type(b)


def test_round_trip_is_bit_identical_and_manifest_lists_every_file(tmp_path: Path) -> None:
    state = _state()

    def write_replay(path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(f, obs=np.arange(12.0).reshape(3, 4))

    path = save_checkpoint(
        tmp_path, 500, state, keep=3, extra_files={"replay.npz": write_replay}, metadata={"config_sha": "abc"}
    )
    assert path == tmp_path / "checkpoints" / "step_0000000500"
    loaded = load_checkpoint(path)
    _assert_same(state, loaded)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["step"] == 500 and manifest["format_version"] == 1 and manifest["metadata"] == {"config_sha": "abc"}
    assert set(manifest["files"]) == {"state.pt", "replay.npz"}
    assert manifest["files"]["state.pt"]["size"] == (path / "state.pt").stat().st_size
    assert manifest["created_utc"].endswith("+00:00")
    assert verify_checkpoint(path) == manifest
    np.testing.assert_array_equal(np.load(path / "replay.npz")["obs"], np.arange(12.0).reshape(3, 4))
    assert _tmp_dirs(tmp_path) == []


def test_keep_last_n_and_latest_points_at_newest(tmp_path: Path) -> None:
    for step in (100, 200, 300, 400, 500):
        save_checkpoint(tmp_path, step, {"step": step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000400", "step_0000000500"]
    assert (tmp_path / "checkpoints" / "LATEST").read_text().strip() == "step_0000000500"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000000500"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 500
    assert _tmp_dirs(tmp_path) == []


def test_new_checkpoint_survives_pruning_even_below_older_steps(tmp_path: Path) -> None:
    # A run resumed from an older checkpoint writes lower steps than the abandoned ones.
    for step in (100, 200, 300):
        save_checkpoint(tmp_path, step, {"step": step}, keep=3)
    new = save_checkpoint(tmp_path, 150, {"step": 150}, keep=2)
    assert latest_checkpoint(tmp_path) == new
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000000150", "step_0000000300"]


def test_saving_the_same_step_twice_replaces_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 100, {"v": 1}, keep=3)
    save_checkpoint(tmp_path, 100, {"v": 2}, keep=3)
    assert load_checkpoint(latest_checkpoint(tmp_path))["v"] == 2
    assert len(list_checkpoints(tmp_path)) == 1 and _tmp_dirs(tmp_path) == []


@pytest.mark.parametrize("latest_text", [None, "", "step_0000009999\n", "../../etc\n", "\xff\xfe"])
def test_latest_falls_back_to_newest_complete_dir(tmp_path: Path, latest_text: str | None) -> None:
    save_checkpoint(tmp_path, 100, {"v": 1}, keep=3)
    save_checkpoint(tmp_path, 200, {"v": 2}, keep=3)
    latest = tmp_path / "checkpoints" / "LATEST"
    if latest_text is None:
        latest.unlink()
    else:
        latest.write_bytes(latest_text.encode("latin-1"))
    (tmp_path / "checkpoints" / ".tmp-step_0000000300-1-abcdef12").mkdir()  # an interrupted save
    (tmp_path / "checkpoints" / "step_0000000400").mkdir()  # no manifest: incomplete
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step_0000000200"


def test_empty_run_dir_has_no_checkpoint(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    assert list_checkpoints(tmp_path) == []
    assert load_latest_checkpoint(tmp_path) is None


def _fake_torch_save(exc: BaseException):
    real_save = torch.save

    def fake(obj: object, f: object, *args: object, **kwargs: object) -> None:
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])  # a torn file, then the failure
        raise exc

    return fake


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"),
        OSError(28, "No space left on device"),
    ],
    ids=["torch-runtime-error", "enospc"],
)
def test_failure_mid_save_raises_storage_error_and_keeps_previous(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    save_checkpoint(tmp_path, 100, _state(1), keep=1)
    latest_before = (tmp_path / "checkpoints" / "LATEST").read_bytes()
    monkeypatch.setattr(torch, "save", _fake_torch_save(exc))
    with pytest.raises(StorageError, match="free disk space") as info:
        save_checkpoint(tmp_path, 200, _state(2), keep=1)
    assert "step_0000000200" in str(info.value)
    monkeypatch.undo()
    assert (tmp_path / "checkpoints" / "LATEST").read_bytes() == latest_before
    assert _tmp_dirs(tmp_path) == []
    _assert_same(load_checkpoint(latest_checkpoint(tmp_path)), _state(1))


def test_failing_extra_writer_raises_storage_error_and_keeps_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 100, {"v": 1}, keep=1)

    def full_disk(path: Path) -> None:
        path.write_bytes(b"partial")
        raise StorageError(f"could not save replay buffer to {path}: [Errno 28] No space left on device")

    with pytest.raises(StorageError, match="No space left"):
        save_checkpoint(tmp_path, 200, {"v": 2}, keep=1, extra_files={"replay.npz": full_disk})
    with pytest.raises(StorageError, match=r"Not a directory|No such file"):
        save_checkpoint(tmp_path, 200, {"v": 2}, keep=1, extra_files={"replay.npz": lambda p: (p / "x").write_text("")})
    assert load_checkpoint(latest_checkpoint(tmp_path))["v"] == 1
    assert _tmp_dirs(tmp_path) == []


def test_writer_that_does_not_create_its_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="did not create"):
        save_checkpoint(tmp_path, 1, {}, keep=1, extra_files={"replay": lambda p: np.savez(p, a=np.zeros(2))})


@pytest.mark.parametrize("name", ["state.pt", "manifest.json", "", "../x", "a/b", ".hidden"])
def test_bad_extra_file_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="plain file name"):
        save_checkpoint(tmp_path, 1, {}, keep=1, extra_files={name: lambda p: None})


def test_state_a_weights_only_load_would_refuse_is_rejected_at_save_time(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"state\['stats'\]\['mean'\] is a ndarray.*torch.from_numpy"):
        save_checkpoint(tmp_path, 1, {"stats": {"mean": np.zeros(3)}}, keep=1)
    with pytest.raises(TypeError, match="float64"):
        save_checkpoint(tmp_path, 1, {"x": [np.float64(1.0)]}, keep=1)
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, 1, {}, keep=0)
    assert list_checkpoints(tmp_path) == []


def test_flipped_byte_is_caught_by_the_manifest_and_loader_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, 100, {"v": torch.ones(1000)}, keep=3)
    newest = save_checkpoint(tmp_path, 200, {"v": torch.zeros(1000)}, keep=3)
    data = bytearray((newest / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (newest / "state.pt").write_bytes(bytes(data))
    with pytest.raises(StorageError, match=r"state\.pt is corrupted"):
        load_checkpoint(newest)
    with caplog.at_level(logging.ERROR):
        path, state = load_latest_checkpoint(tmp_path)
    assert path.name == "step_0000000100" and torch.equal(state["v"], torch.ones(1000))
    assert "step_0000000200" in caplog.text


def test_truncated_missing_and_unreadable_manifest_are_storage_errors(tmp_path: Path) -> None:
    a = save_checkpoint(tmp_path, 100, {"v": torch.ones(100)}, keep=3)
    with open(a / "state.pt", "r+b") as f:
        f.truncate(100)
    with pytest.raises(StorageError, match=r"state\.pt has 100 bytes"):
        load_checkpoint(a)
    b = save_checkpoint(tmp_path, 200, {"v": 1}, keep=3)
    (b / "manifest.json").write_text("{not json")
    with pytest.raises(StorageError, match=r"manifest\.json"):
        load_checkpoint(b)
    c = save_checkpoint(tmp_path, 300, {"v": 1}, keep=3)
    (c / "state.pt").unlink()
    with pytest.raises(StorageError, match="unreadable"):
        load_checkpoint(c)
    with pytest.raises(StorageError, match=r"no checkpoint .* verifies"):
        load_latest_checkpoint(tmp_path)


def test_stale_temp_dir_of_a_dead_process_is_removed_by_the_next_save(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, 100, {"v": 1}, keep=3)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "checkpoints" / f".tmp-step_0000000200-{dead.pid}-deadbeef"
    stale.mkdir()
    (stale / "state.pt").write_bytes(b"torn")
    alive = tmp_path / "checkpoints" / f".tmp-step_0000000200-{os.getppid()}-cafecafe"
    alive.mkdir()
    save_checkpoint(tmp_path, 300, {"v": 3}, keep=3)
    assert not stale.exists() and alive.exists()


def test_check_free_space(tmp_path: Path) -> None:
    check_free_space(tmp_path, 1024)
    with pytest.raises(StorageError, match="MiB free"):
        check_free_space(tmp_path, 2**62)


_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from robot_sac.checkpoint import save_checkpoint

    run_dir, mode = Path(sys.argv[1]), sys.argv[2]
    state = {"w": torch.randn(4_000_000), "step": 0}   # 16 MB: a save takes a while

    def hook(path):
        path.write_bytes(b"replay")
        if mode == "hook" and state["step"] >= 2:
            (run_dir / "mid_save").touch()   # tell the parent: killed now, we are mid-save
            time.sleep(60)

    step = 0
    while True:
        step += 1
        state["step"] = step
        save_checkpoint(run_dir, step, state, keep=2, extra_files={"replay.bin": hook})
    """
)


def _spawn(run_dir: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _CHILD, str(run_dir), mode], cwd=REPO_ROOT)


def _wait_for(predicate, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert proc.poll() is None, "the saving child died on its own"
        assert time.monotonic() < deadline, "timed out waiting for the child"
        time.sleep(0.01)


def _assert_recoverable(run_dir: Path) -> None:
    latest = latest_checkpoint(run_dir)
    assert latest is not None and not latest.name.startswith(".")
    state = load_checkpoint(latest)
    assert state["w"].shape == (4_000_000,) and state["step"] == int(latest.name.removeprefix("step_"))
    assert all(not p.name.startswith(".") for p in list_checkpoints(run_dir))


def test_sigkill_mid_save_leaves_previous_checkpoint_loadable(tmp_path: Path) -> None:
    proc = _spawn(tmp_path, "hook")
    try:
        _wait_for(lambda: (tmp_path / "mid_save").exists(), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert _tmp_dirs(tmp_path), "the kill should have left the temporary directory behind"
    assert latest_checkpoint(tmp_path).name == "step_0000000001"
    _assert_recoverable(tmp_path)
    save_checkpoint(tmp_path, 2, {"w": torch.zeros(4_000_000), "step": 2}, keep=2)  # resume and save again
    assert _tmp_dirs(tmp_path) == [] and latest_checkpoint(tmp_path).name == "step_0000000002"


@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_at_a_random_point_of_continuous_saving(tmp_path: Path, seed: int) -> None:
    proc = _spawn(tmp_path, "loop")
    try:
        _wait_for(lambda: latest_checkpoint(tmp_path) is not None, proc)
        time.sleep(random.Random(seed).uniform(0.0, 0.5))
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    _assert_recoverable(tmp_path)


def test_file_size_limit_in_a_subprocess_raises_storage_error(tmp_path: Path) -> None:
    # RLIMIT_FSIZE makes write() fail with EFBIG once a file passes the limit: a real full-disk stand-in.
    code = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        import torch
        from robot_sac.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
        from robot_sac.errors import StorageError

        run_dir = Path(sys.argv[1])
        save_checkpoint(run_dir, 1, {"w": torch.ones(1000)}, keep=2)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
        try:
            save_checkpoint(run_dir, 2, {"w": torch.ones(1_000_000)}, keep=2)
        except StorageError as err:
            print("StorageError:", err)
        else:
            sys.exit("no StorageError")
        assert torch.equal(load_checkpoint(latest_checkpoint(run_dir))["w"], torch.ones(1000))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "free disk space" in result.stdout
    assert latest_checkpoint(tmp_path).name == "step_0000000001" and _tmp_dirs(tmp_path) == []


def _draws(np_rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray, list[float]]:
    return torch.rand(5), np_rng.normal(size=5), [random.random() for _ in range(3)]


@pytest.mark.parametrize("bit_generator", [np.random.PCG64, np.random.MT19937, np.random.Philox])
def test_rng_capture_restore_reproduces_draws_through_a_checkpoint(tmp_path: Path, bit_generator: type) -> None:
    np_rng = np.random.Generator(bit_generator(7))
    torch.manual_seed(3)
    random.seed(5)
    _draws(np_rng)
    save_checkpoint(tmp_path, 1, {"rng": capture_rng_state(np_rng)}, keep=1)
    expected = _draws(np_rng)
    _draws(np_rng)  # move everything on

    fresh = np.random.Generator(bit_generator(99))
    restore_rng_state(load_checkpoint(latest_checkpoint(tmp_path))["rng"], fresh)
    got = _draws(fresh)
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_restore_refuses_a_different_bit_generator() -> None:
    state = capture_rng_state(np.random.Generator(np.random.PCG64(0)))
    with pytest.raises(ValueError, match="PCG64"):
        restore_rng_state(state, np.random.Generator(np.random.MT19937(0)))
