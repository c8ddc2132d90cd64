"""SIGINT/SIGTERM for the deploy loop: the first asks for a graceful stop, the second aborts.

SAFETY.md #27: the handler only sets a flag; the loop finishes the step in progress, commands a
hold, then parks (or holds) per config and writes its report. A second signal raises `DeployAborted`
wherever the main thread is (Python runs handlers between bytecodes, so also inside a sleep):
no park, the robot holds its last target, and the process exits with code 1 (LeRobot's
``ProcessSignalHandler`` does the same). SIGKILL cannot be caught: the servos' bus watchdog covers it.
"""

from __future__ import annotations

import signal
from types import FrameType, TracebackType
from typing import Any

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class DeployAborted(BaseException):
    """A second stop signal: leave at once, holding.

    A `BaseException` (like `KeyboardInterrupt`) so that no ``except Exception`` swallows it.
    """


class StopFlag:
    """A stop request that code other than a signal handler can also raise (tests, a duration limit)."""

    def __init__(self) -> None:
        """No stop requested."""
        self.reason = ""
        self.signals = 0

    @property
    def requested(self) -> bool:
        """Whether a stop was requested."""
        return bool(self.reason)

    def request(self, reason: str) -> None:
        """Ask the loop to stop after the current step (the first reason is kept)."""
        if not self.reason:
            self.reason = reason


class SignalStop(StopFlag):
    """A `StopFlag` set by SIGINT/SIGTERM while installed (a context manager, main thread only).

    The previous handlers are restored on exit.
    """

    def __init__(self) -> None:
        """Not installed yet; use ``with SignalStop() as stop:``."""
        super().__init__()
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signals += 1
        if self.signals == 1:
            self.request(signal.Signals(signum).name)  # only a flag: the loop does the rest
            return
        raise DeployAborted(f"second stop signal ({signal.Signals(signum).name}): holding and exiting")

    def __enter__(self) -> SignalStop:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
