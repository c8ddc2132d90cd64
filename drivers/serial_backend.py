"""`SerialBackend`: Dynamixel X-series servos behind the `RobotBackend` contract.

One control period is one cycle on a monotonic clock::

    cycle start ─ sync write goals ─ (wait) ─ sync read state at start + T - budget ─ return
                                                                   └ the caller has `budget` to act

The state comes from one contiguous sync read per cycle (Goal_Position at 116 through
Present_Temperature at 146, 31 bytes per servo), which also verifies the effect of the goal write
(sync writes have no reply: SAFETY.md #7) and carries Realtime_Tick for staleness (#16).

Faults follow SAFETY.md: a failed cycle (silence, corrupt frame, stale tick, goal not applied) is
retried by holding the same goal for one more period; `SerialConfig.fault_cycles` failed cycles
in a row raise the typed fault, so detection takes at most that many periods (2 by default). A
lost device, a hardware error status and a servo reset are latched: no goal goes out until
`rearm`, and a `DeviceLost` port is re-opened only then. A caller that returns later than its
period gets an overrun counted and a fresh cycle (never two commands back to back).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np

from drivers.bus import ServoBus
from drivers.calibration import Calibration
from drivers.control_table import X_SERIES
from drivers.servo_setup import check_health, configure_servos
from drivers.transport import SerialTransport, Transport
from robot_sac.backend import check_target
from robot_sac.configs import SerialConfig
from robot_sac.errors import (
    CommandNotApplied,
    CommCorrupt,
    CommTimeout,
    ConfigError,
    DeviceLost,
    DeviceReset,
    EnvStateError,
    FaultLevel,
    RobotFault,
    StaleObservation,
)
from robot_sac.spec import RobotSpec, RobotState

log = logging.getLogger(__name__)

READ_START = X_SERIES["goal_position"].address
READ_LENGTH = X_SERIES["present_temperature"].address + 1 - READ_START
_TICK_WRAP = 32768
_TICK_SLACK_MS = 100.0
_STALE_LAG_PERIODS = 0.5
_STALE_LAG_MIN_MS = 8.0
"""...but never less than this: host wake-up jitter between two reads must not look like staleness."""
"""A servo tick that falls this many control periods behind the host clock marks stale data."""
_SETTLED_RAD_S = 0.1
"""Homing ends once no joint moved faster than this over the last period (from positions, not from
Present_Velocity, whose last units jitter at rest)."""
_READ_FAULTS = (CommTimeout, CommCorrupt, StaleObservation)
_RETRYABLE = (*_READ_FAULTS, CommandNotApplied)
_RESET_FAULT_TRIES = 4
"""Reset is not an episode: its first read gets this many tries, and homing rides out this many times
``fault_cycles`` failed periods in a row (the servos hold the goal on the slow line home meanwhile)."""


class SerialBackend:
    """The physical arm (or the emulator) over a serial port.

    Args:
        spec: the robot (limits, control rate).
        config: port, baud rate, time budgets, homing, close behaviour.
        calibration: joint ↔ servo map (IDs, models, zero ticks, directions).
        transport_factory: opens the port (``SerialTransport`` by default; tests inject fakes).
        clock, sleep: monotonic time and sleeping (injectable for tests).
    """

    def __init__(
        self,
        spec: RobotSpec,
        config: SerialConfig,
        calibration: Calibration,
        transport_factory: Callable[[str, int], Transport] = SerialTransport,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Validate the timing budget; nothing is opened until `connect`."""
        if calibration.spec != spec:
            raise ConfigError("the calibration was made for another robot spec")
        period = spec.dt_s
        self.budget_s = config.transaction_timeout_s if config.transaction_timeout_s is not None else 0.4 * period
        if self.budget_s >= period:
            raise ConfigError(
                f"serial.transaction_timeout_s {self.budget_s} must be shorter than the control period {period} s"
            )
        if 0 < config.bus_watchdog_s <= 2 * period:
            raise ConfigError(
                f"serial.bus_watchdog_s {config.bus_watchdog_s} must exceed two control periods ({2 * period} s), or "
                "a normal retry would trip it; 0.1 s is typical at 50 Hz"
            )
        self._spec, self.config, self.calibration = spec, config, calibration
        self._open, self._clock, self._sleep = transport_factory, clock, sleep
        self.bus: ServoBus | None = None
        self._wanted = False  # connect() was called and close() was not: reset may re-open after a rearm
        self._latched: RobotFault | None = None
        self._needs_setup = True
        self._episode_active = False
        self._goal_ticks: np.ndarray | None = None
        self._next_start: float | None = None
        self._last_ticks: np.ndarray | None = None
        self._last_read_s = (0.0, 0.0)  # (request sent, reply received) of the read that gave _last_ticks
        self.overruns = 0
        self.failed_cycles = 0
        self.cycles = 0

    @property
    def spec(self) -> RobotSpec:
        """The robot this backend drives."""
        return self._spec

    # --- lifecycle -----------------------------------------------------------------------------------

    def connect(self) -> None:
        """Open the port, check every servo, write and verify limits and the watchdog, enable torque.

        Idempotent. On failure the port is closed again and the error propagates.
        """
        if self._latched is not None:
            raise EnvStateError(f"a latched fault ({type(self._latched).__name__}) needs rearm() before connect()")
        self._wanted = True
        if self.bus is not None and not self._needs_setup:
            return
        try:
            if self.bus is None:
                transport = self._open(self.config.port, self.config.baud_rate)
                self.bus = ServoBus(transport, self.budget_s, self.config.baud_rate, clock=self._clock)
            configure_servos(self.bus, self._spec, self.calibration, self.config)
        except BaseException:
            self._drop_transport()
            raise
        self._needs_setup = False
        self._last_ticks = None

    def reset(self, seed: int | None = None) -> RobotState:
        """Check the servos' health, then move home at ``homing_speed_rad_s`` and return the measured state.

        ``seed`` is accepted for the contract and ignored: the physical world is not seeded.

        Raises:
            DeviceReset, ServoHardwareError: the health check failed (latched).
            CommandNotApplied: homing did not converge within ``homing_timeout_s``.
        """
        del seed
        if not self._wanted:
            raise EnvStateError("SerialBackend is not connected; call connect() first")
        if self._latched is not None:
            raise EnvStateError(f"a latched fault ({type(self._latched).__name__}: {self._latched}) needs rearm()")
        if self.bus is None or self._needs_setup:
            self.connect()
        bus = self._require_bus()
        self._episode_active = False
        with self._latching():
            check_health(bus, self.calibration, self.config)
            self._next_start, self._last_ticks = None, None
            state = self._read_fresh()
            self._goal_ticks = self.calibration.ticks_from_rad(np.clip(state.position_rad, *self._hard_limits()))
            state = self._home(state)
        self._episode_active = True
        return state

    def step(self, target_rad: np.ndarray) -> RobotState:
        """Write ``target_rad`` as the goal, hold it for one period, return the state read at its end."""
        target = check_target(self._spec, target_rad)
        if self._latched is not None:
            raise EnvStateError(f"a latched fault ({type(self._latched).__name__}) needs rearm() before step()")
        if not self._episode_active:
            raise EnvStateError("step() needs a successful reset() first")
        self._goal_ticks = self.calibration.ticks_from_rad(target)
        try:
            with self._latching():
                return self._cycle()
        except RobotFault:
            self._episode_active = False
            raise

    def rearm(self) -> None:
        """Clear a latched fault after an operator inspected the arm; the next reset re-runs the setup."""
        if self._latched is not None:
            log.warning("re-armed after %s: %s", type(self._latched).__name__, self._latched)
        self._latched = None
        self._needs_setup = True

    def close(self) -> None:
        """Hold (default) or disable torque per ``serial.close_action``, then close the port. Idempotent."""
        self._episode_active = False
        self._wanted = False
        bus = self.bus
        if bus is None:
            return
        if self.config.close_action == "torque_off":
            try:
                bus.sync_write(X_SERIES["torque_enable"], dict.fromkeys(self.calibration.ids, 0))
            except RobotFault as err:
                log.error("could not disable torque while closing: %s", err)
        self._drop_transport()

    def __enter__(self) -> SerialBackend:
        """Connect; `close` is guaranteed on leaving the block, also on exceptions."""
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        """Close (hold or torque off per config)."""
        self.close()

    # --- the cycle ---------------------------------------------------------------------------------------

    def _cycle(self, max_failures: int | None = None) -> RobotState:
        """One period: hold the goal, read at the end; failed periods are retried up to ``fault_cycles``.

        ``max_failures`` raises that limit (homing: `_RESET_FAULT_TRIES` times it); a period that
        fails beyond ``fault_cycles`` is logged as a warning.
        """
        limit = self.config.fault_cycles if max_failures is None else max_failures
        period = self._spec.dt_s
        now = self._clock()
        start = self._next_start
        if start is None or now > start + 0.5 * period:
            if start is not None:
                self.overruns += 1  # the caller came back late: start a fresh cycle, never burst
            start = now
        elif start > now:
            self._sleep(start - now)
        failures = 0
        read_at = start + period - self.budget_s
        while True:
            try:
                state = self._one_period(start, read_at)
            except _RETRYABLE as err:
                failures += 1
                self.failed_cycles += 1
                if failures >= limit:
                    self._next_start = None
                    raise
                level = logging.WARNING if failures >= self.config.fault_cycles else logging.DEBUG
                log.log(level, "cycle failed (%s: %s); holding the goal one more period (%d of %d)",
                        type(err).__name__, err, failures, limit)  # fmt: skip
                # Hold the goal into the next period and read right after writing it, so that the
                # fault is confirmed (or cleared) within fault_cycles periods of its onset.
                start = max(start + period, self._clock())
                read_at = start
                self._sleep_until(start)
                continue
            self.cycles += 1
            self._next_start = start + period
            return state

    def _one_period(self, start: float, read_at: float) -> RobotState:
        bus = self._require_bus()
        assert self._goal_ticks is not None
        goal_reg = X_SERIES["goal_position"]
        bus.sync_write(goal_reg, dict(zip(self.calibration.ids, self._goal_ticks.tolist(), strict=True)))
        self._sleep_until(read_at)
        state, goals = self._read(read_at + self.budget_s)
        wrong = np.flatnonzero(goals != self._goal_ticks)
        if wrong.size:
            ids = tuple(self.calibration.ids[i] for i in wrong)
            raise CommandNotApplied(f"servos {list(ids)} do not hold the goal written this period", servo_ids=ids)
        return state

    def _read(self, deadline_s: float) -> tuple[RobotState, np.ndarray]:
        """Sync-read the state block; check tick advance; convert to SI. Also returns the goal read-back."""
        bus = self._require_bus()
        requested = self._clock()  # the servos sample their tick on receipt: compare ticks with request times
        blocks = bus.sync_read(self.calibration.ids, READ_START, READ_LENGTH, deadline_s)
        now = self._clock()
        fields = {name: np.array([_field(blocks[i], name) for i in self.calibration.ids]) for name in _STATE_FIELDS}
        self._check_tick(fields["realtime_tick"], requested, now)
        cal = self.calibration
        state = RobotState(
            position_rad=cal.rad_from_ticks(fields["present_position"]),
            velocity_rad_s=cal.velocity_rad_s(fields["present_velocity"]),
            effort_nm=cal.effort_nm(fields["present_current"]),
            stamp_s=now,
        )
        return state, fields["goal_position"]

    def _check_tick(self, ticks: np.ndarray, requested_s: float, replied_s: float) -> None:
        """Stale or rebooted servos from the tick advance since the last read (SAFETY.md rows 16 and 6).

        A servo samples its tick somewhere between our request and its reply, so the time between
        two samples is only known to lie in [this request - last reply, this reply - last request].
        Staleness is judged against the lower end and a reboot against the upper: a host stalled
        between its timestamp and its bytes (a preempted VM) then cannot pass for a lagging tick.
        """
        previous, self._last_ticks = self._last_ticks, ticks
        (last_requested_s, last_replied_s), self._last_read_s = self._last_read_s, (requested_s, replied_s)
        elapsed_ms = (requested_s - last_replied_s) * 1000.0  # at least this much passed between the samples
        at_most_ms = (replied_s - last_requested_s) * 1000.0
        if previous is None:
            return
        advance = (ticks - previous) % _TICK_WRAP
        # The servo's millisecond tick must keep pace with our clock: a tick that stopped, or fell
        # behind by most of a period, means the values are a frozen copy (SAFETY.md #16).
        lag_ms = elapsed_ms - advance
        allowed_lag_ms = max(_STALE_LAG_PERIODS * 1000.0 * self._spec.dt_s, _STALE_LAG_MIN_MS)
        frozen = np.flatnonzero((advance == 0) | (lag_ms > allowed_lag_ms))
        if frozen.size:
            ids = tuple(self.calibration.ids[i] for i in frozen)
            raise StaleObservation(
                f"servos {list(ids)}: Realtime_Tick advanced {advance[frozen].tolist()} ms in at least "
                f"{elapsed_ms:.1f} ms; their data is stale"
            )
        jumped = np.flatnonzero(advance > at_most_ms + _TICK_SLACK_MS)
        if jumped.size:
            ids = tuple(self.calibration.ids[i] for i in jumped)
            raise DeviceReset(f"servos {list(ids)}: Realtime_Tick restarted (the servo rebooted)", servo_ids=ids)

    def _read_fresh(self) -> RobotState:
        """A state read outside the cycle (reset): ``fault_cycles`` periods per try, `_RESET_FAULT_TRIES` tries."""
        for attempt in range(1, _RESET_FAULT_TRIES + 1):
            deadline = self._clock() + self.config.fault_cycles * self._spec.dt_s
            try:
                state, _ = self._read(deadline)
                return state
            except _READ_FAULTS as err:
                if attempt == _RESET_FAULT_TRIES:
                    raise
                self.failed_cycles += 1
                log.warning("reset: state read failed (%s: %s); reading again (%d of %d)", type(err).__name__, err,
                            attempt, _RESET_FAULT_TRIES)  # fmt: skip
        raise AssertionError("unreachable")

    def _home(self, state: RobotState) -> RobotState:
        """Rate-limited straight line in joint space from the measured pose to home.

        Each cycle rides out `_RESET_FAULT_TRIES` times ``fault_cycles`` failed periods in a row
        (a bus stalled by a preempted host or VM costs time, not safety: the goal is held); counted
        in ``failed_cycles``.
        """
        spec, cfg = self._spec, self.config
        home = spec.home_rad
        goal = np.clip(state.position_rad, *self._hard_limits())
        max_step = cfg.homing_speed_rad_s * spec.dt_s
        give_up = self._clock() + cfg.homing_timeout_s
        previous = state.position_rad
        while not (
            np.array_equal(goal, home)
            and np.abs(state.position_rad - home).max() <= cfg.homing_tolerance_rad
            and np.abs(state.position_rad - previous).max() <= _SETTLED_RAD_S * spec.dt_s
        ):
            previous = state.position_rad
            if self._clock() > give_up:
                worst = spec.joint_names[int(np.argmax(np.abs(state.position_rad - home)))]
                raise CommandNotApplied(
                    f"homing did not reach home within {cfg.homing_timeout_s} s (worst joint {worst}); check for "
                    "obstacles, load and the calibration"
                )
            goal = np.where(np.abs(home - goal) <= max_step, home, goal + np.sign(home - goal) * max_step)
            self._goal_ticks = self.calibration.ticks_from_rad(goal)
            state = self._cycle(_RESET_FAULT_TRIES * cfg.fault_cycles)
        return state

    # --- helpers --------------------------------------------------------------------------------------------

    def _hard_limits(self) -> tuple[np.ndarray, np.ndarray]:
        return self._spec.lower_rad, self._spec.upper_rad

    def _sleep_until(self, t: float) -> None:
        delay = t - self._clock()
        if delay > 0:
            self._sleep(delay)

    def _require_bus(self) -> ServoBus:
        if self.bus is None:
            raise EnvStateError("SerialBackend is not connected; call connect() first")
        return self.bus

    def _drop_transport(self) -> None:
        bus, self.bus = self.bus, None
        self._needs_setup = True
        if bus is not None:
            bus.transport.close()

    def _latching(self) -> _Latch:
        return _Latch(self)


class _Latch:
    """Context manager: a LATCHED fault stops all goal writes until `SerialBackend.rearm`."""

    def __init__(self, backend: SerialBackend) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, RobotFault) and exc.level is FaultLevel.LATCHED:
            self.backend._latched = exc
            self.backend._episode_active = False
            if isinstance(exc, DeviceLost):
                self.backend._drop_transport()  # re-open only after an operator re-arm
            log.error("latched %s: %s", type(exc).__name__, exc)


_STATE_FIELDS = (
    "goal_position",
    "realtime_tick",
    "present_current",
    "present_velocity",
    "present_position",
)


def _field(block: bytes, name: str) -> int:
    reg = X_SERIES[name]
    offset = reg.address - READ_START
    return reg.decode(block[offset : offset + reg.size])
