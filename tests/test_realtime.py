"""`robot_sac.realtime`: SCHED_FIFO for the processes that own a control loop, refused gracefully.

Scheduling changes run in a child interpreter (pytest's own thread stays as it is), except the
refusal path, which monkeypatches the system call.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from robot_sac.errors import ConfigError
from robot_sac.realtime import current_policy, realtime_scope, request_realtime
from sim.emulator_process import EmulatorProcess
from tests.conftest import REPO_ROOT

linux_only = pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="SCHED_FIFO is Linux's")


def _fifo_allowed() -> bool:
    """Whether this machine grants SCHED_FIFO to a child (root or CAP_SYS_NICE)."""
    probe = "import os; os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))"
    return subprocess.run([sys.executable, "-c", probe], capture_output=True).returncode == 0


def _child(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_zero_leaves_scheduling_alone() -> None:
    before = current_policy()
    assert request_realtime(0, "test") is False
    assert current_policy() == before


@pytest.mark.parametrize("priority", [-1, 100])
def test_out_of_range_priority_is_a_config_error_naming_the_range(priority: int) -> None:
    with pytest.raises(ConfigError, match=r"outside 0-99.*0 turns it off"):
        request_realtime(priority, "test")


@linux_only
def test_refusal_warns_with_the_fix_and_keeps_running(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)
    with caplog.at_level(logging.WARNING, logger="robot_sac.realtime"), realtime_scope(20, "deploy loop") as granted:
        assert granted is False
    (record,) = caplog.records
    assert "deploy loop" in record.getMessage() and "Operation not permitted" in record.getMessage()
    assert "cap_sys_nice" in record.getMessage() and "realtime_priority: 0" in record.getMessage()


@linux_only
def test_scope_grants_fifo_and_gives_it_back() -> None:
    if not _fifo_allowed():
        pytest.skip("this machine refuses SCHED_FIFO (no CAP_SYS_NICE); the refusal path is tested above")
    out = _child(
        """
        from robot_sac.realtime import current_policy, realtime_scope
        with realtime_scope(7, "test") as granted:
            inside = current_policy()
        print(granted, inside, current_policy())
        """
    )
    assert out == "True ('fifo', 7) ('other', 0)"


@linux_only
def test_the_emulator_runs_above_the_host_loops() -> None:
    """It plays hardware: its replies must not wait for the host's threads (SCHED_FIFO 30 > 20)."""
    if not _fifo_allowed():
        pytest.skip("this machine refuses SCHED_FIFO (no CAP_SYS_NICE)")
    with EmulatorProcess() as emu:
        assert emu.proc is not None
        assert os.sched_getscheduler(emu.proc.pid) == os.SCHED_FIFO
        assert os.sched_getparam(emu.proc.pid).sched_priority == 30
        assert "SCHED_FIFO 30 scheduling" in emu.log_tail()
