"""Byte transport to a servo bus: pyserial with deadlines instead of fixed timeouts.

`Transport` is the contract the Protocol 2.0 bus needs; `SerialTransport` implements it with
``serial.serial_for_url``, so device paths (``/dev/ttyUSB0``), pseudo-terminals (the emulator) and
``loop://`` all work. Reads take an absolute deadline on the monotonic clock, so the bus budgets
each transaction from the control period rather than from a fixed library timeout (the Dynamixel
SDK's default is ~34 ms, 1.7 periods at 50 Hz; SAFETY.md #1-2).

A pulled cable shows up in pyserial as ``SerialException("device reports readiness to read but
returned no data ...")`` on read and ``EIO`` on write; both become `DeviceLost` (SAFETY.md #5).
"""

from __future__ import annotations

import logging
import select
import time
from pathlib import Path
from typing import Protocol

import serial

from robot_sac.errors import DeviceLost

log = logging.getLogger(__name__)

_POLL_S = 0.0002
"""Sleep between polls on transports without a file descriptor (``loop://``, tests only)."""


class Transport(Protocol):
    """A bidirectional byte stream to the bus.

    Contract: ``write`` sends all bytes or raises; ``read`` returns as soon as at least one byte is
    available (up to ``max_bytes``) or returns ``b""`` once the monotonic ``deadline_s`` has passed,
    never blocking beyond it by more than scheduling jitter; ``flush_input`` discards unread bytes;
    a lost device raises `DeviceLost` from any method but ``close``, which is idempotent.
    """

    def write(self, data: bytes) -> None:
        """Send ``data`` completely."""
        ...

    def read(self, max_bytes: int, deadline_s: float) -> bytes:
        """Up to ``max_bytes`` bytes, or ``b""`` at the deadline (``time.monotonic()`` seconds)."""
        ...

    def flush_input(self) -> None:
        """Discard bytes received but not read (stale replies of an earlier transaction)."""
        ...

    def close(self) -> None:
        """Release the port (idempotent)."""
        ...


class SerialTransport:
    """`Transport` over pyserial.

    Args:
        url: a device path, a pty path or any pyserial URL (``loop://``).
        baud_rate: bit/s; must match the servos.
        write_timeout_s: a write that cannot complete this fast means the port is stuck.
    """

    def __init__(self, url: str, baud_rate: int, write_timeout_s: float = 0.05) -> None:
        """Open the port non-blocking, exclusively, with low-latency settings where the OS offers them.

        Raises:
            DeviceLost: the port does not exist, is busy or cannot be opened (the message says why).
        """
        if not url:
            raise DeviceLost("no serial port given: set serial.port (e.g. /dev/ttyUSB0 or the emulator's pty path)")
        self.url = url
        try:
            self._serial = serial.serial_for_url(
                url, baudrate=baud_rate, timeout=0, write_timeout=write_timeout_s, exclusive=True
            )
        except (serial.SerialException, OSError, ValueError) as err:
            raise DeviceLost(
                f"cannot open {url}: {err}; check the path, that no other program holds the port, and that this "
                "user may open it (the dialout group on Linux)"
            ) from err
        self._fd: int | None = None
        try:
            self._fd = self._serial.fileno()
        except (AttributeError, NotImplementedError, serial.SerialException):
            self._fd = None
        self.low_latency = self._try_low_latency()
        self.latency_timer_ms = ftdi_latency_timer_ms(url)
        if self.latency_timer_ms is not None and self.latency_timer_ms > 1:
            log.warning(
                "%s: the USB adapter's latency_timer is %d ms, which delays every reply; set it to 1 "
                "(echo 1 > /sys/bus/usb-serial/devices/%s/latency_timer, or a udev rule)",
                url,
                self.latency_timer_ms,
                Path(url).name,
            )
        self.bytes_written = 0
        self.bytes_read = 0
        self._closed = False

    def _try_low_latency(self) -> bool:
        setter = getattr(self._serial, "set_low_latency_mode", None)
        if setter is None:
            return False
        try:
            setter(True)
        except (OSError, ValueError, NotImplementedError, serial.SerialException):
            return False  # ptys and many adapters do not support ASYNC_LOW_LATENCY
        return True

    def write(self, data: bytes) -> None:
        """Send ``data``; `DeviceLost` if the port is gone or stuck."""
        try:
            written = self._serial.write(data)
        except (serial.SerialException, serial.SerialTimeoutException, OSError) as err:
            raise DeviceLost(f"write to {self.url} failed: {err}; the adapter or cable was disconnected") from err
        if written is not None and written != len(data):
            raise DeviceLost(f"write to {self.url} sent {written} of {len(data)} bytes; the port is stuck")
        self.bytes_written += len(data)

    def read(self, max_bytes: int, deadline_s: float) -> bytes:
        """Bytes as soon as some arrive, ``b""`` at the deadline; `DeviceLost` if the port is gone."""
        try:
            if self._fd is not None:
                data = self._read_fd(max_bytes, deadline_s)
            else:
                data = self._read_poll(max_bytes, deadline_s)
        except (serial.SerialException, OSError) as err:
            raise DeviceLost(f"read from {self.url} failed: {err}; the adapter or cable was disconnected") from err
        self.bytes_read += len(data)
        return data

    def _read_fd(self, max_bytes: int, deadline_s: float) -> bytes:
        remaining = max(0.0, deadline_s - time.monotonic())
        assert self._fd is not None
        ready, _, _ = select.select([self._fd], [], [], remaining)
        if not ready:
            return b""
        # Non-blocking read of what is there; pyserial raises SerialException when the fd reports
        # readiness but yields no data, which is how a vanished device looks on Linux.
        waiting = self._serial.in_waiting
        data: bytes = self._serial.read(max(1, min(waiting, max_bytes)))
        return data

    def _read_poll(self, max_bytes: int, deadline_s: float) -> bytes:
        while True:
            data: bytes = self._serial.read(max_bytes)
            if data or time.monotonic() >= deadline_s:
                return data
            time.sleep(_POLL_S)

    def flush_input(self) -> None:
        """Discard unread bytes."""
        try:
            self._serial.reset_input_buffer()
        except (serial.SerialException, OSError) as err:
            raise DeviceLost(f"{self.url}: {err}; the adapter or cable was disconnected") from err

    def close(self) -> None:
        """Close the port (idempotent, never raises)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._serial.close()
        except (serial.SerialException, OSError) as err:
            log.debug("closing %s: %s", self.url, err)


def ftdi_latency_timer_ms(url: str) -> int | None:
    """The FTDI adapter's ``latency_timer`` (ms) for a ``/dev/ttyUSB*`` path, None where there is none."""
    path = Path("/sys/bus/usb-serial/devices") / Path(url).name / "latency_timer"
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
