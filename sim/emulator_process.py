"""`EmulatorProcess`: run the servo emulator as a child process for tests and development.

    with EmulatorProcess(faults="silent:id=13,after=37") as emu:
        port = serial.Serial(emu.port, 1_000_000, timeout=0.02)
        ...
        assert emu.goal_writes(12)[-1][1] == 2048

The child never outlives its parent: `stop` (also on ``__exit__`` and at interpreter exit) sends
SIGTERM and kills it if it does not exit in time; the child itself exits when its stdin pipe closes
and, on Linux, when the parent dies (PR_SET_PDEATHSIG), so a crashed or SIGKILLed test leaves no orphan.
"""

from __future__ import annotations

import atexit
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from sim.emulator_record import goal_writes, read_records

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_ROBOT = REPO_ROOT / "configs" / "robots" / "arm4.yaml"
DEFAULT_CALIBRATION = REPO_ROOT / "configs" / "calibration" / "arm4.json"


class EmulatorProcess:
    """A ``python -m sim.servo_emulator`` child with its port, record and log.

    Args:
        robot: robot YAML.
        calibration: calibration JSON.
        profile: ``"nominal"``, ``"reality"`` or a profile YAML path.
        faults: a fault spec (see `sim.emulator_faults`), ``""`` for none.
        seed: the emulator's seed.
        baud: the emulated bus speed, bit/s.
        extra_args: more command-line arguments (e.g. ``["--profile-set", "physics_hz=200"]``).
        startup_timeout_s: how long to wait for the ``PORT`` line.
        realtime_priority: SCHED_FIFO priority the child asks for (0: normal scheduling). On by default
            because the child plays hardware: a real servo's reply timing does not depend on the host's
            CPU load, and on a busy 2-core machine a normally scheduled emulator misses the driver's
            8 ms budget now and then (`robot_sac.realtime`; refused → a warning in the child's log).
            Above the test hosts' 20, as hardware is never preempted by its host.
    """

    def __init__(
        self,
        *,
        robot: Path = DEFAULT_ROBOT,
        calibration: Path = DEFAULT_CALIBRATION,
        profile: str = "nominal",
        faults: str = "",
        seed: int = 0,
        baud: int = 1_000_000,
        extra_args: Sequence[str] = (),
        startup_timeout_s: float = 30.0,
        realtime_priority: int = 30,
    ) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="servo-emulator-"))
        self.record_path = self._dir / "record.jsonl"
        self.log_path = self._dir / "emulator.log"
        self.command = [
            sys.executable, "-m", "sim.servo_emulator", "--robot", str(robot), "--calibration", str(calibration),
            "--profile", profile, "--faults", faults, "--seed", str(seed), "--baud", str(baud),
            "--record", str(self.record_path), "--realtime-priority", str(realtime_priority), *extra_args,
        ]  # fmt: skip
        self.startup_timeout_s = startup_timeout_s
        self.port = ""
        self.proc: subprocess.Popen[bytes] | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> EmulatorProcess:
        """Start the child and wait for its ``PORT`` line.

        Raises:
            RuntimeError: the child exited or stayed silent past ``startup_timeout_s``; the message
                carries the tail of its log.
        """
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, cwd=REPO_ROOT
            )
        atexit.register(self.stop)
        try:
            self.port = self._read_port_line()
        except BaseException:
            self.stop()
            raise
        return self

    def _read_port_line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout_s
        buffer = b""
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not selector.select(remaining):
                    raise RuntimeError(f"emulator gave no PORT line in {self.startup_timeout_s} s:\n{self.log_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    raise RuntimeError(f"emulator exited with {self.proc.wait()} before PORT:\n{self.log_tail()}")
                buffer += chunk
        line = buffer.split(b"\n", 1)[0].decode()
        if not line.startswith("PORT "):
            raise RuntimeError(f"emulator printed {line!r} instead of 'PORT <path>':\n{self.log_tail()}")
        return line.split(" ", 1)[1]

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM the child, wait ``timeout_s``, SIGKILL if needed; returns its exit code. Idempotent."""
        proc = self.proc
        if proc is None:
            return None
        atexit.unregister(self.stop)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return proc.returncode

    def cleanup(self) -> None:
        """Stop the child and delete its temporary directory (record and log)."""
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> EmulatorProcess:
        return self.start() if self.proc is None else self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the child; keep the record and log (in `record_path`'s directory) only when an error propagates."""
        if exc_type is None:
            self.cleanup()
        else:
            self.stop()

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self.proc is not None, "start() first"
        return self.proc.pid

    def inject(self, faults: str) -> float:
        """Start fault rules now (same grammar as ``faults``; ``after``/``at_s`` count from now).

        Returns:
            ``time.monotonic()`` just before the command was sent (an upper bound on nothing:
            the emulator's ``{"event": "inject"}`` record line has the exact start).
        """
        assert self.proc is not None and self.proc.stdin is not None, "start() first"
        sent = time.monotonic()
        self.proc.stdin.write(f"fault {faults}\n".encode())
        self.proc.stdin.flush()
        return sent

    def wait_for_record(self, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 5.0) -> dict[str, Any]:
        """The first record line satisfying ``predicate``, waiting for it up to ``timeout_s``."""
        give_up = time.monotonic() + timeout_s
        while True:
            for entry in self.records():
                if predicate(entry):
                    return entry
            if time.monotonic() > give_up:
                raise TimeoutError(f"no matching record line within {timeout_s} s; log tail:\n{self.log_tail()}")
            time.sleep(0.01)

    # --- what the emulator saw ---------------------------------------------------------------------

    def records(self) -> list[dict[str, Any]]:
        """Every complete line of the record so far (format: `sim.emulator_record`)."""
        return read_records(self.record_path)

    def goal_writes(self, servo_id: int) -> list[tuple[float, int]]:
        """(t_s, Goal Position ticks) of every write that carried a goal for ``servo_id`` (refused or dropped too)."""
        return goal_writes(self.records(), servo_id)

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of the child's stderr."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""
