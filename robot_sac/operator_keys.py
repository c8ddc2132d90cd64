"""The operator's keys while a robot collects: space holds the arm at once, space again resumes.

A daemon thread reads single key presses from the terminal (cbreak mode, so no Enter is needed)
and calls ``on_hold(True/False)``. Ctrl-C is not handled here: it stays a SIGINT for the whole
process group, which stops the run and holds the arm (SAFETY.md row 27). Without a terminal on
stdin (CI, a pipe, a service) the listener does nothing, and says so once.

The terminal's settings are restored on `stop` and at interpreter exit, also after an exception.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

HOLD_KEY = " "


class OperatorKeys:
    """Space toggles the hold; the state is in `held`.

    Args:
        on_hold: called with True when the operator holds, False when the hold is released.
        stream: the terminal to read (default stdin).
    """

    def __init__(self, on_hold: Callable[[bool], None], stream: Any = None) -> None:
        """Nothing is read until `start`."""
        self.on_hold = on_hold
        self.stream = stream if stream is not None else sys.stdin
        self.held = False
        self._stop = threading.Event()
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Listen if the stream is a terminal; returns whether it listens."""
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return False
        if not os.isatty(fd):
            log.info("no terminal on stdin: the space-bar hold is off (Ctrl-C still stops and holds)")
            return False
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
        atexit.register(self.stop)
        self._thread = threading.Thread(target=self._read, args=(fd,), name="robot-sac-operator-keys", daemon=True)
        self._thread.start()
        print("operator: press SPACE to hold the arm (again to resume), Ctrl-C to stop", file=sys.stderr)
        return True

    def toggle(self) -> None:
        """Flip the hold (what a space press does)."""
        self.held = not self.held
        log.warning("operator %s", "HOLD: the arm holds its position" if self.held else "released the hold")
        self.on_hold(self.held)

    def stop(self) -> None:
        """Stop listening and restore the terminal (idempotent)."""
        self._stop.set()
        if self._saved is not None:
            import termios

            with contextlib.suppress(OSError, ValueError, termios.error):
                termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)
            self._saved = None

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                key = os.read(fd, 1).decode(errors="ignore")
            except OSError:
                return
            if key == HOLD_KEY:
                self.toggle()
