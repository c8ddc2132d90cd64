"""The steal-time rerun rule (`tests.steal_reruns`), in a child pytest run with a scripted steal counter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.steal_reruns import steal_s

_CHILD_CONFTEST = """
import itertools
from collections.abc import Iterator

import pytest

from tests import steal_reruns
from tests.steal_reruns import pytest_runtest_protocol, pytest_terminal_summary  # noqa: F401

STEAL_PER_READ_S = {steal}
_counter = itertools.count()
steal_reruns.steal_s = lambda: next(_counter) * STEAL_PER_READ_S


@pytest.fixture
def realtime_host() -> Iterator[bool]:
    yield True
"""

_CHILD_TESTS = """
import pytest

calls = {"flaky": 0}


@pytest.mark.usefixtures("realtime_host")
def test_fails_once() -> None:
    calls["flaky"] += 1
    assert calls["flaky"] > 1, "the wire went quiet"


@pytest.mark.usefixtures("realtime_host")
def test_always_fails() -> None:
    assert False, "a real bug"


def test_not_real_time_fails_once() -> None:
    calls["plain"] = calls.get("plain", 0) + 1
    assert calls["plain"] > 1
"""


def _child(tmp_path: Path, steal: float) -> str:
    (tmp_path / "conftest.py").write_text(_CHILD_CONFTEST.format(steal=steal))
    (tmp_path / "test_child.py").write_text(_CHILD_TESTS)
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(repo), "PATH": ""}, timeout=120,
    )  # fmt: skip
    return run.stdout


def test_a_failure_during_steal_is_rerun_and_listed(tmp_path: Path) -> None:
    out = _child(tmp_path, steal=0.05)  # 50 ms of steal during every test
    assert out.splitlines()[-1].startswith("2 failed, 1 passed")  # test_fails_once passed on its rerun
    assert "test_fails_once: rerun 1 after 50 ms of CPU steal" in out
    assert "test_always_fails: rerun 2 after" in out  # tried MAX_RERUNS + 1 times, then reported failed
    assert "FAILED test_child.py::test_always_fails" in out
    assert "FAILED test_child.py::test_not_real_time_fails_once" in out  # not a real-time test: never rerun


def test_without_steal_nothing_is_rerun(tmp_path: Path) -> None:
    out = _child(tmp_path, steal=0.0)
    assert "FAILED test_child.py::test_fails_once" in out
    assert "rerun" not in out


def test_steal_is_the_eighth_field_of_the_cpu_line_and_zero_where_unknown(tmp_path: Path) -> None:
    stat = tmp_path / "stat"
    stat.write_text("cpu  686980 29543 61274 3685826 3553 0 844 27293 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    assert steal_s(str(stat)) == pytest.approx(27293 / os.sysconf("SC_CLK_TCK"))
    stat.write_text("cpu  1 2 3\n")  # a kernel without the steal column
    assert steal_s(str(stat)) == 0.0
    assert steal_s(str(tmp_path / "missing")) == 0.0
