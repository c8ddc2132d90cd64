"""When the deploy loop may send the next command: deadline pacing on a monotonic clock.

Three pacers, one per kind of backend (chosen in the composition root, ``robot_sac/cli.py``):

- `SleepPacer` — the loop owns the clock (the simulator in real time). Command slots lie on a
  fixed grid, ``next_slot += period``; a command that is ready late is an overrun: the missed
  slots are skipped and it goes out on the next period boundary, never right after the previous
  one (SAFETY.md #17; ros2_control skips missed cycles the same way).
- `BackendPacer` — the backend paces itself (the serial backend holds each goal for one period
  on its own monotonic clock and counts a late caller as an overrun, starting a fresh cycle), so
  the loop must not sleep as well; the backend's overrun counter is read after each step.
- `FreeRunPacer` — no clock at all: the simulator as fast as it computes (tests, evaluation).

Clocks and sleeps are injected, so deadline behaviour is tested with a fake clock.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Literal, Protocol

PacingKind = Literal["sleep", "backend", "none"]


class Pacer(Protocol):
    """Decides when each command goes out.

    Contract: `start` at the beginning of every episode; per command, `wait_for_slot` when the
    action is ready (blocks until its slot), then the env steps, then `overruns_in_step`.
    """

    kind: PacingKind

    def start(self) -> None:
        """Begin an episode: the next command anchors a fresh grid."""
        ...

    def wait_for_slot(self) -> int:
        """Block until the command may go out; returns the slots missed (0 when on time)."""
        ...

    def overruns_in_step(self) -> int:
        """Overruns the backend detected during the last step (0 when the loop paces)."""
        ...


class SleepPacer:
    """A fixed grid of command slots ``t0 + k * period_s`` on ``clock``; late commands skip slots.

    The grid runs on across episodes, so the first command after an instant (simulated) reset
    still waits for its slot: never two commands within one period.

    Args:
        period_s: the control period in s.
        clock: monotonic time in s.
        sleep: sleeps for a duration in s.
    """

    kind: PacingKind = "sleep"

    def __init__(
        self,
        period_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Create the pacer; the grid is anchored at the first command after `start`."""
        if not period_s > 0:
            raise ValueError(f"period_s must be positive, got {period_s}")
        self.period_s = period_s
        self._clock, self._sleep = clock, sleep
        self._next: float | None = None
        self._restart = True

    def start(self) -> None:
        """A new episode: its first command re-anchors the grid if its slot passed during the reset."""
        self._restart = True

    def wait_for_slot(self) -> int:
        """Sleep until the next slot; a command ready after its slot waits for the next boundary."""
        now = self._clock()
        if self._next is None or (self._restart and now > self._next):
            # The first command, or the first after a reset that took longer than a period: it goes
            # out now (a reset is not an overrun) and anchors the grid.
            self._next, self._restart = now + self.period_s, False
            return 0
        self._restart = False
        missed = 0
        if now > self._next:
            # Slots next, next + T, ... that lie in the past are gone: skip them, never burst.
            missed = math.floor((now - self._next) / self.period_s) + 1
            self._next += missed * self.period_s
        if self._next > now:
            self._sleep(self._next - now)
        self._next += self.period_s
        return missed

    def overruns_in_step(self) -> int:
        """The loop paces: the env step itself cannot overrun."""
        return 0


class BackendPacer:
    """The backend paces each step itself; the loop reads its overrun counter.

    Args:
        backend_overruns: the backend's running overrun count (e.g. ``SerialBackend.overruns``).
    """

    kind: PacingKind = "backend"

    def __init__(self, backend_overruns: Callable[[], int]) -> None:
        """Remember where to read the count."""
        self._read = backend_overruns
        self._seen = backend_overruns()

    def start(self) -> None:
        """Forget overruns counted outside episodes (homing)."""
        self._seen = self._read()

    def wait_for_slot(self) -> int:
        """Never sleeps: the backend's step waits for its own slot."""
        return 0

    def overruns_in_step(self) -> int:
        """How many overruns the backend counted since the last call."""
        count = self._read()
        new, self._seen = count - self._seen, count
        return new


class FreeRunPacer:
    """No deadlines: every command goes out at once (simulation faster than real time)."""

    kind: PacingKind = "none"

    def start(self) -> None:
        """Nothing to anchor."""

    def wait_for_slot(self) -> int:
        """Never waits, never late."""
        return 0

    def overruns_in_step(self) -> int:
        """Never late."""
        return 0
