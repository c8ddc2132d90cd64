"""The Ray transport: a hub actor next to the learner, and the `LearnerLink` an actor has to it.

`TransitionHub` (a threaded Ray actor, pinned to the learner's node) holds what the shared-memory
channels hold in the local runtime: the latest weight publication, a bounded queue of
`TransitionChunk` (full: the chunk is dropped and counted per actor), the env steps each actor
stream has sent or dropped, the throttle's allowance, the stop flag, the learner's heartbeat time
and the ready count.

`RayLink` is an actor's `LearnerLink` to it. A remote call costs about 1 ms and an env step about
0.3 ms, so the link keeps the hub's state (allowance, steps sent by the others, stop flag, learner
age, latest version) in a local cache, refreshed by the reply of ONE remote call per chunk sent. It
calls the hub otherwise only when the cached allowance runs out (the hub then waits for room: no
polling), when the cache is older than `REFRESH_S` (in the background), and to fetch new weights at
an episode boundary. `send` never blocks: one put is in flight at a time (so one actor's chunks
arrive in order), later chunks wait in a bounded outbox, and a chunk that does not fit is dropped
and counted. Every remote call has a deadline; a call that fails or times out is "not heard of", so
`RayLink.learner_age_s` grows and the actor stops after ``runtime.heartbeat_timeout_s``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from robot_sac.runtime.channels import TransitionChunk, WeightSnapshot

try:
    import ray
    from ray.exceptions import RayError
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError("runtime.mode=ray needs Ray on every node: pip install -e '.[ray]'") from err

log = logging.getLogger(__name__)

REFRESH_S = 0.2
"""Longest a `RayLink` trusts its cached hub state before it asks again (in the background)."""

MAX_OUTBOX_CHUNKS = 16
"""Chunks an actor holds while its previous put is in flight; beyond that it drops (and counts)."""

_UNKNOWN_VERSION = -2
"""A link's cached version before the hub first answered (-1 is the hub's "nothing published")."""


@dataclass(frozen=True)
class HubState:
    """What the hub tells an actor stream in every reply (``seq`` orders replies that raced)."""

    seq: int
    allowed: int
    others_sent: int
    stop: bool
    learner_age_s: float
    version: int


@dataclass(frozen=True)
class HubReport:
    """What the hub tells the learner with each batch of chunks."""

    chunks: list[TransitionChunk]
    depth: int
    dropped_chunks: int
    dropped_steps: int


Payload = tuple[int, dict[str, np.ndarray], dict[str, np.ndarray] | None]
"""A publication in transit: version, policy arrays, normalizer arrays."""


class TransitionHub:
    """The learner-side state every Ray actor talks to (a threaded Ray actor; all methods lock).

    Args:
        max_chunks: queue capacity (``runtime.queue_chunks``); a chunk beyond it is dropped, counted.
        slots: actor slots (for the per-actor drop counters).
        sent: env steps already taken (a resumed run), counted as sent.
    """

    def __init__(self, max_chunks: int, slots: int, sent: int = 0) -> None:
        """Nothing published, nothing allowed beyond ``sent``; the learner ages from now."""
        self._lock = threading.Lock()
        self._has_chunks = threading.Condition(self._lock)
        self._changed = threading.Condition(self._lock)  # allowance, stop, ready
        self._chunks: deque[TransitionChunk] = deque()
        self._max_chunks = max_chunks
        self._dropped = np.zeros((slots, 2), dtype=np.int64)  # per slot: chunks, env steps (queue full)
        self._sent: dict[int, int] = {}  # per stream: env steps sent or dropped (the link's own count)
        self._link_dropped: dict[int, tuple[int, int]] = {}  # per stream: chunks, steps dropped in the link
        self._base_sent, self._allowed = sent, sent
        self._stop, self._ready, self._seq = False, 0, 0
        self._beat_s = time.monotonic()
        self._weights: Payload | None = None

    def where(self) -> tuple[str, int]:
        """The node id and process id of the hub."""
        return ray.get_runtime_context().get_node_id(), os.getpid()

    # --- actor side -----------------------------------------------------------------------------

    def put(
        self, stream: int, slot: int, chunks: list[TransitionChunk], sent: int, dropped: tuple[int, int], now_s: float
    ) -> HubState:
        """Queue ``chunks`` of one stream (dropping what does not fit) and record its counts.

        ``now_s`` is the actor's ``time.monotonic()`` at the call: each ``created_s`` is moved to this
        node's clock (the learner's), keeping the age it had when the call left (monotonic clocks of two
        machines are not comparable).
        """
        with self._lock:
            self._record(stream, sent, dropped)
            here_s = time.monotonic()
            for chunk in chunks:
                if chunk.created_s > 0.0:
                    chunk.created_s = here_s - max(0.0, now_s - chunk.created_s)
                if len(self._chunks) < self._max_chunks:
                    self._chunks.append(chunk)
                else:
                    self._dropped[slot] += (1, chunk.env_steps)
            self._has_chunks.notify()
            return self._state(stream)

    def wait_room(self, stream: int, sent: int, dropped: tuple[int, int], pending: int, timeout_s: float) -> HubState:
        """Wait (asleep) up to ``timeout_s`` until the stream may take one more step, or stop."""
        with self._lock:
            self._record(stream, sent, dropped)
            self._changed.wait_for(lambda: self._stop or self._total_sent() + pending < self._allowed, timeout_s)
            return self._state(stream)

    def weights(self, stream: int, last_version: int) -> tuple[HubState, Payload | None]:
        """The latest publication unless its version is ``last_version``."""
        with self._lock:
            fresh = self._weights if self._weights is not None and self._weights[0] != last_version else None
            return self._state(stream), fresh

    def state(self, stream: int, sent: int, dropped: tuple[int, int]) -> HubState:
        """Record the stream's counts; the state."""
        with self._lock:
            self._record(stream, sent, dropped)
            return self._state(stream)

    def ready(self) -> None:
        """An actor has built its env and policy."""
        with self._lock:
            self._ready += 1
            self._changed.notify_all()

    # --- learner side ---------------------------------------------------------------------------

    def publish(self, version: int, policy: dict[str, np.ndarray], normalizer: dict[str, np.ndarray] | None) -> None:
        """Make a publication the latest (calls may race in the thread pool: the highest version wins)."""
        with self._lock:
            if self._weights is None or version > self._weights[0]:
                self._weights = (version, policy, normalizer)

    def allow(self, total: int) -> None:
        """Raise the allowance and wake the actors waiting for room."""
        with self._lock:
            if total > self._allowed:
                self._allowed = total
                self._changed.notify_all()

    def beat(self) -> None:
        """The learner's heartbeat."""
        with self._lock:
            self._beat_s = time.monotonic()

    def set_stop(self) -> None:
        """Ask every actor to stop."""
        with self._lock:
            self._stop = True
            self._changed.notify_all()

    def take(self, max_chunks: int, timeout_s: float) -> HubReport:
        """Up to ``max_chunks`` chunks, waiting (asleep) at most ``timeout_s`` for the first."""
        with self._lock:
            self._has_chunks.wait_for(lambda: bool(self._chunks), timeout_s)
            chunks = [self._chunks.popleft() for _ in range(min(max_chunks, len(self._chunks)))]
            link = np.asarray(list(self._link_dropped.values()), dtype=np.int64).reshape(-1, 2).sum(axis=0)
            chunks_dropped, steps_dropped = self._dropped.sum(axis=0) + link
            return HubReport(chunks, len(self._chunks), int(chunks_dropped), int(steps_dropped))

    def wait_ready(self, count: int, timeout_s: float) -> int:
        """Wait (asleep) up to ``timeout_s`` until ``count`` actors are ready; how many are."""
        with self._lock:
            self._changed.wait_for(lambda: self._ready >= count, timeout_s)
            return min(self._ready, count)

    # --- helpers (lock held) --------------------------------------------------------------------

    def _record(self, stream: int, sent: int, dropped: tuple[int, int]) -> None:
        # Cumulative counts, so a lost or reordered call loses nothing.
        self._sent[stream] = max(self._sent.get(stream, 0), sent)
        old = self._link_dropped.get(stream, (0, 0))
        self._link_dropped[stream] = (max(old[0], dropped[0]), max(old[1], dropped[1]))

    def _total_sent(self) -> int:
        return self._base_sent + sum(self._sent.values())

    def _state(self, stream: int) -> HubState:
        self._seq += 1
        version = self._weights[0] if self._weights is not None else -1
        return HubState(self._seq, self._allowed, self._total_sent() - self._sent.get(stream, 0), self._stop,
                        time.monotonic() - self._beat_s, version)  # fmt: skip


class RayLink:
    """`LearnerLink` of one Ray actor stream over a `TransitionHub` (see the module doc).

    Args:
        hub: the hub's actor handle.
        actor_id: the actor's slot.
        stream_id: the actor's stream (its own sent counter on the hub).
        call_timeout_s: deadline of every remote call (``runtime.ray.call_timeout_s``).
    """

    def __init__(self, hub: Any, actor_id: int, stream_id: int, call_timeout_s: float) -> None:
        """Nothing is known of the hub yet (no room cached; the learner ages from now)."""
        self._hub, self.actor_id, self.stream_id, self._timeout_s = hub, actor_id, stream_id, call_timeout_s
        self._lock = threading.Lock()  # reply callbacks run on a Ray thread
        self._state = HubState(-1, 0, 0, False, 0.0, _UNKNOWN_VERSION)
        self._state_s = time.monotonic()
        self._mine = 0  # env steps this stream has sent or dropped
        self._dropped = (0, 0)  # chunks, env steps dropped in this link (cumulative)
        self._outbox: list[TransitionChunk] = []
        self._put: tuple[float, Future[HubState]] | None = None
        self._refresh: tuple[float, Future[HubState]] | None = None
        self._rejected_version: int | None = None
        self.rejected = 0
        """Publications discarded because a tensor held a non-finite value."""
        self._closed = False

    def poll_weights(self, last_version: int) -> WeightSnapshot | None:
        """Fetch the latest publication when the cached version says there is a new one."""
        self._pump()
        version = self._state.version
        if version in (last_version, self._rejected_version, -1):
            return None
        reply = self._get(self._hub.weights.remote(self.stream_id, last_version), self._timeout_s)
        if reply is None:
            return None
        state, payload = reply
        self._accept(state)
        if payload is None:
            return None
        version, arrays, normalizer = payload
        policy = {k: torch.tensor(v) for k, v in arrays.items()}  # a copy: Ray's arrays are read-only
        if not all(bool(torch.isfinite(t).all()) for t in policy.values() if t.is_floating_point()):
            self.rejected += 1
            self._rejected_version = version
            log.warning("actor %d: publication %d holds a non-finite weight; keeping mine", self.actor_id, version)
            return None
        norm = {k: np.array(v) for k, v in normalizer.items()} if normalizer is not None else None
        return WeightSnapshot(version, policy, norm)

    def send(self, chunk: TransitionChunk) -> bool:
        """Fire a put (or queue behind the one in flight); never blocks. The steps count as sent."""
        self._mine += chunk.env_steps
        self._pump()
        if self._put is None:
            self._fire_put([chunk])
            return True
        if len(self._outbox) < MAX_OUTBOX_CHUNKS:
            self._outbox.append(chunk)
            return True
        with self._lock:
            self._dropped = (self._dropped[0] + 1, self._dropped[1] + chunk.env_steps)
        return False

    def wait_for_room(self, pending: int, timeout_s: float) -> bool:
        """True at once when the cached allowance has room; else one call on which the hub waits."""
        if self._outbox or time.monotonic() - self._state_s > REFRESH_S:
            self._pump()
        if self._has_room(pending):
            return True
        started = time.monotonic()
        ref = self._hub.wait_room.remote(self.stream_id, self._mine, self._dropped, pending, 0.75 * timeout_s)
        state = self._get(ref, timeout_s)
        if state is None:  # not heard of: sleep out the timeout (no busy loop on a dead hub)
            time.sleep(max(0.0, timeout_s - (time.monotonic() - started)))
            return False
        self._accept(state)
        return self._has_room(pending)

    def steps_sent(self) -> int:
        """The hub's count of the other streams' steps (cached) plus this stream's own."""
        return self._state.others_sent + self._mine

    def beat(self) -> None:
        """Nothing to send: Ray watches the actor process (a dead one fails its run reference)."""

    def learner_age_s(self) -> float:
        """The learner's age in the last accepted reply plus the time since that reply.

        A cache older than `REFRESH_S` is refreshed first (one call, at most ``call_timeout_s``): the
        actor asks at episode boundaries and while it waits, and may have been busy for seconds
        (building its env) without a call.
        """
        if time.monotonic() - self._state_s > REFRESH_S:
            state = self._get(self._hub.state.remote(self.stream_id, self._mine, self._dropped), self._timeout_s)
            if state is not None:
                self._accept(state)
        return self._state.learner_age_s + (time.monotonic() - self._state_s)

    def stop_requested(self) -> bool:
        """The cached stop flag (refreshed at least every `REFRESH_S` while the actor waits or sends)."""
        return self._state.stop

    def hold_requested(self) -> bool:
        """Never: an operator hold pauses the hardware actor, which runs only in the local runtime."""
        return False

    def ready(self) -> None:
        """Tell the hub (fire and forget)."""
        self._hub.ready.remote()

    def close(self) -> None:
        """Ship what the outbox holds if nothing is in flight; never waits (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pump()

    # --- internals ------------------------------------------------------------------------------

    def _has_room(self, pending: int) -> bool:
        s = self._state
        return not s.stop and s.others_sent + self._mine + pending < s.allowed

    def _pump(self) -> None:
        """Retire finished (or overdue) calls, ship the outbox, refresh a stale cache; never blocks."""
        now = time.monotonic()
        if self._put is not None and (self._put[1].done() or now - self._put[0] > self._timeout_s):
            self._put = None
        if self._refresh is not None and (self._refresh[1].done() or now - self._refresh[0] > self._timeout_s):
            self._refresh = None
        if self._put is None and self._outbox:
            chunks, self._outbox = self._outbox, []
            self._fire_put(chunks)
        elif self._refresh is None and self._put is None and now - self._state_s > REFRESH_S:
            ref = self._hub.state.remote(self.stream_id, self._mine, self._dropped)
            self._refresh = (now, self._watch(ref, 0, 0))

    def _fire_put(self, chunks: list[TransitionChunk]) -> None:
        ref = self._hub.put.remote(self.stream_id, self.actor_id, chunks, self._mine, self._dropped, time.monotonic())
        self._put = (time.monotonic(), self._watch(ref, len(chunks), sum(c.env_steps for c in chunks)))

    def _watch(self, ref: Any, chunks: int, steps: int) -> Future[HubState]:
        """Accept the reply when it comes; a put that failed counts its chunks as dropped here."""
        future: Future[HubState] = ref.future()

        def done(f: Future[HubState]) -> None:
            try:
                self._accept(f.result())
            except (RayError, CancelledError):  # not heard of: the learner ages
                with self._lock:
                    self._dropped = (self._dropped[0] + chunks, self._dropped[1] + steps)

        future.add_done_callback(done)
        return future

    def _accept(self, state: HubState) -> None:
        with self._lock:
            if state.seq > self._state.seq:
                self._state, self._state_s = state, time.monotonic()

    def _get(self, ref: Any, timeout_s: float) -> Any:
        """The call's result, or None when it failed or timed out (logged)."""
        try:
            return ray.get(ref, timeout=timeout_s)
        except RayError as err:
            log.debug("actor %d: hub call failed: %s", self.actor_id, err)
            return None
