"""Connection admission: which connections the server takes, and when its listener takes any.

Two layers keep connections within the server's descriptor budget:

1. **The budget, at the handshake.** Every handshake asks the gatekeeper (a ZAP handler,
   msgprof.wire.security), which asks `Admission.admit()`: admitted while the connections
   admitted and still open are fewer than `max_connections`, else refused ("server full", ZAP
   status 400). libzmq then closes the connection at once, and the client's libzmq does not
   reconnect after a refused handshake; msgprof's client records it as refused.

2. **The gate, at the listening socket.** A refused connection still holds a descriptor from
   accept() until libzmq closes it. When hundreds of clients connect at once, libzmq's I/O thread
   accepts faster than handshakes are refused, the descriptors in flight reach the process limit,
   accept() fails with EMFILE and libzmq's accept loop spins (and, without the store's reserve, the
   store can open no file). So the server owns its listening socket (`Listener` in
   msgprof.server.listener, lent to libzmq with ZMQ_USE_FD) and, while the open connections come
   within one accept burst (what the listen queue holds, `queue`) and a guard of the descriptors
   the process has left, attaches a socket filter to it that drops every packet: no connection
   request gets an answer,
   no half-open connection completes, and only what is already in the listen queue can still be
   accepted. The clients' TCP sends its SYN again after 1 s, 3 s, ..., as against a full listen
   queue. Established connections are separate sockets and never see the filter; one that
   completes in the instant the filter is attached inherits it (the kernel copies a listener's
   filter into the connections it creates), so the filter is detached from every connection
   accepted around a closing. The gate also closes after an accept failure (until the open
   connections are below the mark again) and while the store opens a file in a placeholder's
   place (`exclusive()`, see msgprof.store.descriptors): once the listen queue is empty too,
   accept() cannot run and cannot take the descriptor the store just freed.

The listener is never unbound and bound again: libzmq's unbind closes every connection accepted
through it, and a port left unbound in the ephemeral range can be taken by a client's own connect
(TCP self-connect). The port stays held from start to stop.

Counting comes from the socket monitor, read by the gatekeeper's thread before every answer
(`on_event`): open connections = accepted - disconnected; admitted and open = handshakes that
succeeded - their disconnects (each failed handshake ends in one disconnect), plus approvals whose
handshake has not yet been seen to succeed (forgotten after PENDING_TTL_S: a client may vanish
between approval and handshake). The monitor lags libzmq's accepts by what that thread has not
read yet; GATE_GUARD is for that lag, and it is why the gate closes before the budget's
arithmetic would need it to.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zmq

from msgprof.ratelog import Throttled
from msgprof.server.listener import Listener, detach_filter

log = logging.getLogger("msgprof.admission")

#: Descriptors kept free beyond queue files, connections and the accept burst: logs, libzmq's own.
FD_RESERVE = 64
SOMAXCONN = Path("/proc/sys/net/core/somaxconn")


def somaxconn() -> str:
    """net.core.somaxconn as the kernel shows it, or "unknown"."""
    try:
        return SOMAXCONN.read_text().strip()
    except OSError:
        return "unknown"


def accept_burst(backlog: int) -> int:
    """Connections libzmq may accept at once: the listen queue, which the kernel caps at
    net.core.somaxconn (4096, the modern default, when it cannot be read)."""
    try:
        return min(backlog, int(somaxconn()))
    except ValueError:
        return min(backlog, 4096)


def connection_budget(soft_nofile: int, max_open_files: int, backlog: int) -> int:
    """Connections a server admits under a soft RLIMIT_NOFILE: what queue files (LRU cap), one
    accept burst and a reserve leave."""
    return soft_nofile - max_open_files - accept_burst(backlog) - FD_RESERVE


def descriptors_for(connections: int, max_open_files: int, backlog: int) -> int:
    """The soft RLIMIT_NOFILE whose connection budget admits `connections`."""
    return connections + max_open_files + accept_burst(backlog) + FD_RESERVE


#: Descriptors the gate keeps free beyond one accept burst: what libzmq accepts before the
#: gatekeeper's thread has read the events of the accepts so far.
GATE_GUARD = 16
#: Accept bursts (each with its guard) below the budget from which the gatekeeper listens.
GATEKEEPER_MARGIN = 4
#: The gate opens again this many connections below where it closed (fewer toggles in a storm).
GATE_HYSTERESIS = 4
#: Seconds after the gate opens in which new connections still get its filter taken off.
DETACH_WINDOW_S = 1.0
#: Seconds an approval counts as admitted before its handshake is seen to succeed.
PENDING_TTL_S = 2.0
#: Bound on `exclusive()`'s wait for the listen queue to empty, and the quiet time it requires.
EXCLUSIVE_TIMEOUT_S = 2.0
EXCLUSIVE_QUIET_S = 0.001
#: Interval of the rate-limited warnings (refusals, gate closings, accept failures), seconds.
WARN_INTERVAL_S = 10.0


_ACCEPTED = int(zmq.EVENT_ACCEPTED)
_ACCEPT_FAILED = int(zmq.EVENT_ACCEPT_FAILED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_FAILED_NAMES = {
    int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL): "no_detail",
    int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL): "protocol",
    int(zmq.EVENT_HANDSHAKE_FAILED_AUTH): "auth",
}
#: What the server's socket monitor reports for admission.
MONITOR_EVENTS = (
    zmq.EVENT_ACCEPTED
    | zmq.EVENT_ACCEPT_FAILED
    | zmq.EVENT_DISCONNECTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


# ------------------------------------------------------------------------------- admission


class Admission:
    """The connection budget and the gate; see the module docstring.

    `limit` is the process's descriptor limit, `max_connections` the budget of admitted
    connections, `queue` what the listen queue holds (one accept burst). `on_event` and `admit`
    are called from the gatekeeper's thread; `exclusive` from the store's threads.
    """

    def __init__(self, limit: int, max_connections: int, queue: int) -> None:
        self.limit = limit
        self.max_connections = max_connections
        self.queue = queue
        self.listener: Listener | None = None
        self.fixed = 0  # descriptors the process holds besides connections, when serving began
        self.close_at: int | None = None  # open connections at which the gate closes
        self._close_mark = 1 << 62  # close_at, or never without a gate
        self._open_mark = 1 << 62
        self._lock = threading.Lock()
        # counts: the gatekeeper's thread writes them, others only read
        self.accepted = 0
        self.disconnected = 0
        self.succeeded = 0
        self.failed: Counter[str] = Counter()  # handshake failures by kind
        self._failed_total = 0
        self.accept_failed: Counter[str] = Counter()  # by errno name
        self.admitted = 0
        #: The gatekeeper asks `wants_gatekeeper()` and says when it listens (`gatekeeper_listens`);
        #: until then every handshake succeeds unasked, and is counted admitted when it does.
        self.gatekeeper_listening_at: int | None = None
        self.refused = 0
        self.peak_open = 0
        self.peak_admitted = 0
        self._pending: deque[float] = deque()  # approvals not yet seen to succeed (monotonic)
        # the gate: closed while any reason holds
        self._full = False  # open connections reached the mark
        self._after_failure = False  # an accept failed; closed until below the mark again
        self._store_holds = 0  # exclusive() sections running
        self._closed_since: float | None = None
        # monotonic: until then new connections lose a filter they may have inherited
        self._detach_until = 0.0
        self.gate_closings: Counter[str] = Counter()  # by the reason that closed it
        self.gate_closed_s = 0.0
        self.filters_detached = 0
        self.exclusive_waits = 0
        self.exclusive_timeouts = 0
        self._warn_refused = Throttled(log, interval_s=WARN_INTERVAL_S)
        self._warn_gate = Throttled(log, interval_s=WARN_INTERVAL_S)
        self._warn_accept = Throttled(log, logging.ERROR, interval_s=WARN_INTERVAL_S)

    # -- setup -------------------------------------------------------------------------------

    def serve(self, listener: Listener | None, fixed: int) -> None:
        """Start gating `listener` (None: no gate); `fixed` descriptors are held by the process
        besides connections (libzmq, Python, the store's reserve, the listener)."""
        self.listener = listener
        self.fixed = fixed
        if listener is None:
            return
        self.close_at = self.limit - fixed - self.queue - GATE_GUARD
        self._close_mark = self.close_at
        self._open_mark = self.close_at - GATE_HYSTERESIS
        if self.close_at <= self.max_connections:
            log.warning(
                "the connection gate closes at %d open connections, not above the budget of %d: "
                "%d descriptors are held besides connections (soft RLIMIT_NOFILE %d); raise the "
                "limit or lower --max-open-files or --backlog",
                self.close_at,
                self.max_connections,
                fixed,
                self.limit,
            )

    # -- counting (the gatekeeper's thread) ----------------------------------------------------

    @property
    def open_connections(self) -> int:
        """Connection descriptors open now (accepted, not yet closed)."""
        return self.accepted - self.disconnected

    @property
    def gatekeeper_from(self) -> int:
        """Open connections from which every handshake is asked: GATEKEEPER_MARGIN bursts (and
        guards), or a quarter of the budget, below it. Handshakes under way when the handler
        binds complete unasked, and in a storm libzmq's I/O thread completes hundreds while the
        gatekeeper's thread waits for the interpreter lock; a small budget is asked from the
        start."""
        margin = max(GATEKEEPER_MARGIN * (self.queue + GATE_GUARD), self.max_connections // 4)
        return max(0, self.max_connections - margin)

    def wants_gatekeeper(self) -> bool:
        """Whether handshakes must now be asked (below the mark every one would be admitted)."""
        return self.open_connections >= self.gatekeeper_from

    def gatekeeper_listens(self) -> None:
        self.gatekeeper_listening_at = self.open_connections
        if self.gatekeeper_from:
            log.info("the gatekeeper listens from now on: %d connections open, the budget %d",
                     self.open_connections, self.max_connections)  # fmt: skip

    def _admitted_estimate(self) -> int:
        """Admitted connections still open, approvals not yet succeeded included."""
        return self.succeeded - (self.disconnected - self._failed_total) + len(self._pending)

    def on_event(self, event: int, value: int) -> None:
        """Count one socket-monitor event (`value`: the descriptor, for accepts and
        disconnects) and move the gate."""
        if event == _ACCEPTED:
            self.accepted += 1
            open_now = self.accepted - self.disconnected
            self.peak_open = max(self.peak_open, open_now)
            if self._detach_until and time.monotonic() < self._detach_until:  # closed lately
                detach_filter(value)
                self.filters_detached += 1
            if open_now >= self._close_mark and not self._full:
                self._full = True
                self._regate()
        elif event == _DISCONNECTED:
            self.disconnected += 1
            if (
                self._full or self._after_failure
            ) and self.accepted - self.disconnected < self._open_mark:
                self._full = self._after_failure = False
                self._regate()
        elif event == _SUCCEEDED:
            self.succeeded += 1
            if self._pending:
                self._pending.popleft()
            else:  # admitted without being asked: before the gatekeeper listened
                self.admitted += 1
                if self.gatekeeper_listening_at is None:  # no refusal yet skews the estimate
                    self.peak_admitted = max(self.peak_admitted, self._admitted_estimate())
        elif event == _ACCEPT_FAILED:
            name = errno.errorcode.get(value, str(value))
            self.accept_failed[name] += 1
            self._warn_accept(
                "accept failed with %s (soft RLIMIT_NOFILE %d, %d connections open)",
                name,
                self.limit,
                self.open_connections,
            )
            if not self._after_failure:
                self._after_failure = True
                self._regate()
        else:
            kind = _FAILED_NAMES.get(event)
            if kind is not None:
                self.failed[kind] += 1
                self._failed_total += 1

    def admit(self) -> bool:
        """Whether one more connection fits the budget (asked for every handshake); an
        admitted one counts at once, before its handshake succeeds."""
        now = time.monotonic()
        pending = self._pending
        horizon = now - PENDING_TTL_S
        while pending and pending[0] < horizon:
            pending.popleft()
        admitted = self._admitted_estimate()
        if admitted < self.max_connections:
            pending.append(now)
            self.admitted += 1
            self.peak_admitted = max(self.peak_admitted, admitted + 1)
            return True
        self.refused += 1
        self._warn_refused(
            "descriptor limit: %d connections admitted, the budget for soft RLIMIT_NOFILE %d: "
            "refusing new connections at the handshake (%d refused so far)",
            admitted,
            self.limit,
            self.refused,
        )
        return False

    # -- the gate ----------------------------------------------------------------------------

    def _regate(self) -> None:
        with self._lock:
            self._apply()

    def _apply(self) -> None:
        """Close or open the gate as its reasons say. Caller holds _lock."""
        listener = self.listener
        if listener is None:
            return
        if self._full:
            reason = "full"
        elif self._after_failure:
            reason = "accept_failed"
        elif self._store_holds:
            reason = "store"
        else:
            reason = None
        if reason is not None and not listener.gated:
            listener.close_gate()
            self._closed_since = time.monotonic()
            self._detach_until = float("inf")
            self.gate_closings[reason] += 1
            if reason != "store":
                self._warn_gate(
                    "connection gate closed (%s): %d connections open, %d admitted; new "
                    "connections wait until fewer are open (closed %d times so far)",
                    reason,
                    self.open_connections,
                    self._admitted_estimate(),
                    sum(self.gate_closings.values()),
                )
        elif reason is None and listener.gated:
            listener.open_gate()
            now = time.monotonic()
            self._detach_until = now + DETACH_WINDOW_S
            if self._closed_since is not None:
                self.gate_closed_s += now - self._closed_since
                self._closed_since = None

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """A section in which accept() does not run: the gate is closed and the listen queue
        empty (waited for, up to EXCLUSIVE_TIMEOUT_S). Without a gate it guarantees nothing."""
        listener = self.listener
        if listener is None:
            yield
            return
        with self._lock:
            self._store_holds += 1
            self.exclusive_waits += 1
            self._apply()
        try:
            if not self._wait_drained(listener):
                self.exclusive_timeouts += 1
            yield
        finally:
            with self._lock:
                self._store_holds -= 1
                self._apply()

    @staticmethod
    def _wait_drained(listener: Listener) -> bool:
        """Wait until the listen queue has been empty for EXCLUSIVE_QUIET_S."""
        deadline = time.monotonic() + EXCLUSIVE_TIMEOUT_S
        empty_since: float | None = None
        while True:
            now = time.monotonic()
            if listener.queued() == 0:
                if empty_since is None:
                    empty_since = now
                elif now - empty_since >= EXCLUSIVE_QUIET_S:
                    return True
            else:
                empty_since = None
            if now >= deadline:
                return False
            time.sleep(EXCLUSIVE_QUIET_S / 4)

    # -- reporting ---------------------------------------------------------------------------

    def flush_logs(self) -> None:
        """Log what the rate-limited warnings still hold (at stop)."""
        for warning in (self._warn_refused, self._warn_gate, self._warn_accept):
            warning.flush()

    def stats(self) -> dict[str, Any]:
        """The `connections` section of the server's stats."""
        with self._lock:
            closed_s = self.gate_closed_s
            if self._closed_since is not None:
                closed_s += time.monotonic() - self._closed_since
            return {
                "peak": self.peak_open,
                "accepted": self.accepted,
                "disconnected": self.disconnected,
                "accept_failed": dict(self.accept_failed),
                "admitted": self.admitted,
                "peak_admitted": self.peak_admitted,
                "refused": self.refused,
                "max_connections": self.max_connections,
                "handshake_failed": self._failed_total,
                "handshake_failed_by_kind": dict(self.failed),
                "gatekeeper": {
                    "listens_from": self.gatekeeper_from,
                    "listening_at": self.gatekeeper_listening_at,
                },
                "limit": self.limit,
                "gate": {
                    "enabled": self.listener is not None,
                    "close_at": self.close_at,
                    "fixed_descriptors": self.fixed,
                    "closings": dict(self.gate_closings),
                    "closed_s": closed_s,
                    "filters_detached": self.filters_detached,
                    "exclusive_waits": self.exclusive_waits,
                    "exclusive_timeouts": self.exclusive_timeouts,
                },
            }
