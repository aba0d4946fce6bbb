"""Load generator: one process, one thread, many closed-loop DEALER clients.

Each client id gets its own `zmq.DEALER` socket and so its own TCP connection, and keeps exactly
one message in flight: message `seq` is sent only after the ack of `seq - 1` was read (`seq`
starts at 1). All clients of a process share one event loop, so thousands of clients cost
descriptors, not threads.

What is measured (all on `time.perf_counter_ns`, which on Linux is CLOCK_MONOTONIC and so
comparable between the processes of one host):

* ``connect_ns``: from just before ``connect()`` to reading the socket monitor's
  ``EVENT_HANDSHAKE_SUCCEEDED`` (the ZMTP handshake is done). It is the time the event was
  *read*, so it is bounded above by ``first_ack_ns`` when the ack happens to be read first.
* ``first_ack_ns``: from just before ``connect()`` to reading the first reply. With
  ``start="on_connect"`` (the default) the first message is sent right after ``connect()`` (the
  DEALER queues it until the connection is up, without waiting for this loop), so the RTT of
  seq 1 includes the connection setup. With ``start="all_connected"`` every client connects
  first and all send together once the last handshake is seen (or timed out): setup is then
  measured without message traffic, all clients are active at once, and seq 1 is a plain
  round trip (``first_ack_ns`` then includes the wait for the others).
* ``rtt_ns``: from just before the request is sent to reading its reply.

How a reply settles the message in flight, and what the client does next:

* ``OK`` and ``DUPLICATE`` (already stored, acknowledged again): go on with the next seq.
* Any other protocol status (``OUT_OF_ORDER``, ``BUSY``, ``STORAGE_FULL``, ...): recorded under
  its status name, and the client stops; its remaining messages count as not sent.
* ``MISMATCH`` (the reply names another client id or seq) and ``INVALID_ACK`` (the reply is not
  a v1 ACK): recorded, and the client stops: its view of the server's state can no longer be
  trusted, and a next seq would only produce gaps or stale replies.
* ``TIMEOUT`` (no reply within ``timeout_s``, or still none when ``deadline_s`` passes): recorded
  with ``rtt_ns = -1``, and the client stops, for the same reason: the server may or may not have
  stored the message. For the first message the clock starts when the handshake is seen, since
  a slow connect is judged by ``connect_timeout_s``. In ``resend`` mode (below) only the
  deadline ends a client this way.
* A client whose handshake is not seen within ``connect_timeout_s`` is recorded as not connected;
  the first message it queued never left the process, so it has no row. When no client of the
  process has connected once one has timed out, the clients not yet started are recorded as not
  connected without trying (the server is unreachable; trying them in turn would only multiply
  the wait).

Connects are bounded: at most ``connect_window`` clients are connecting at once (each holds a
socket monitor, two more descriptors, until its handshake is seen). This keeps a burst of
connects within the server's listen backlog, and ``connect_ns`` a measure of the server rather
than of the queue this process made itself. With ``start="on_connect"`` the first clients run,
and may finish, while the last ones still connect: with thousands of clients and few messages
each, they are never all active at once (``all_active_start_ns`` is then null). Use
``start="all_connected"`` to measure a point at its full number of concurrent clients.

Resend mode (``resend=True``, for crash-recovery runs): a lost connection or a missing reply does
not stop a client. Each client keeps its socket monitor for its whole life and watches for
``EVENT_DISCONNECTED`` and ``EVENT_HANDSHAKE_SUCCEEDED``. libzmq reconnects the same DEALER to
the same endpoint by itself (every DEALER, in both modes, retries after ``RECONNECT_IVL_MS``,
backing off to ``RECONNECT_IVL_MAX_MS``). On every handshake after the first (a reconnect) the
message in flight, if any, is sent again with the same seq; so is a message whose reply does not
come within ``timeout_s`` while the connection is up. A resend repeats until a reply settles the
message or the deadline passes. The server answers ``DUPLICATE`` when it already stored the
seq (before a crash, or from an earlier copy), which counts as stored, like ``OK``; replies to
earlier copies of a seq already settled are stale and skipped (``stale_replies``), not
``MISMATCH``. ``rtt_ns`` of a resent message runs from its first send to the reply that
settled it, so it includes the outage. Resends are counted per client. Any other status still
stops the client: ``OUT_OF_ORDER`` after a reconnect means the server lost messages it had
acknowledged (``ack_after: buffer``), which only the client's records can tell.

Every loop ends: per-message timeouts, the connect timeout and the whole-run deadline bound it, so
a server that never answers yields TIMEOUT rows and not-connected clients, never a hang.
"""

from __future__ import annotations

import abc
import array
import errno
import gc
import math
import os
import resource
import select
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import zmq

from msgprof import atomic, limits
from msgprof.config import ClientConfig, format_client_ids
from msgprof.wire.payload import payload_for
from msgprof.wire.protocol import Status, decode_ack, encode_data
from msgprof.wire.security import CurveClientKeys

# Status codes of a row: the protocol's statuses keep their wire values; the client adds three.
TIMEOUT = len(Status)
MISMATCH = TIMEOUT + 1
INVALID_ACK = TIMEOUT + 2
STATUS_NAMES: tuple[str, ...] = (
    *(Status(v).name for v in range(len(Status))),
    "TIMEOUT",
    "MISMATCH",
    "INVALID_ACK",
)
#: Error kinds in client.json, always all present (zeros included) so runs aggregate alike.
ERROR_KINDS: tuple[str, ...] = (
    *(n for n in STATUS_NAMES if n not in ("OK", "DUPLICATE")),
    "not_connected",
    "not_sent",
)

#: Descriptors a connected client holds: the DEALER's mailbox and its TCP connection.
FDS_PER_CLIENT = 2
#: Extra descriptors while connecting: libzmq's monitor PAIR and ours (one mailbox each).
FDS_PER_CONNECTING = 2
#: Descriptors kept free for the context's threads, Python, Parquet writing and headroom.
FD_RESERVE = 64
#: Send/receive high-water marks: a closed loop needs one; a little room for a chatty server.
HWM = 16
#: libzmq's reconnect interval for every DEALER (ms), doubled after each failed try up to the
#: maximum, so clients refused by a server that is down or full back off instead of hammering it.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
#: How often the loop looks at a stop request when it has one (ns).
STOP_POLL_NS = 100_000_000

_OK = int(Status.OK)
_DUPLICATE = int(Status.DUPLICATE)
# Plain ints: the hot path would otherwise pay for enum.Flag arithmetic on every message.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_MONITOR_EVENT = struct.Struct("=HI")


class _Stop(Protocol):
    """A stop request, e.g. a threading.Event set by a signal handler."""

    def is_set(self) -> bool: ...


class CapacityError(RuntimeError):
    """The clients cannot fit this process's descriptor or socket limits."""


# ---------------------------------------------------------------------------------------------
# Capacity: descriptors and sockets


@dataclass(frozen=True)
class Capacity:
    """The limits a run was planned with (reported in client.json)."""

    max_sockets: int
    connect_window: int
    fds_needed: int
    rlimit_nofile: int
    rlimit_nofile_hard: int


def plan_capacity(
    n_clients: int,
    connect_window: int,
    max_sockets: int | None,
    open_fds: int,
    rlimit: tuple[int, int],
    socket_limit: int,
    keep_monitors: bool = False,
) -> Capacity:
    """Size MAX_SOCKETS and the connect window so `n_clients` fit, or raise CapacityError.

    A client holds FDS_PER_CLIENT descriptors and one socket; while connecting, its monitor adds
    FDS_PER_CONNECTING descriptors and two sockets. With `keep_monitors` (resend mode) every
    client keeps its monitor, so each costs both for its whole life. The connect window shrinks
    to fit before the plan is given up.
    """
    soft, hard = rlimit
    window = min(connect_window, n_clients)
    if keep_monitors:  # the monitor is part of the client: connecting costs nothing extra
        fds_per_client, fds_connecting = FDS_PER_CLIENT + FDS_PER_CONNECTING, 0
        sockets_per_client, sockets_connecting = 3, 0
    else:
        fds_per_client, fds_connecting = FDS_PER_CLIENT, FDS_PER_CONNECTING
        sockets_per_client, sockets_connecting = 1, 2
    base = open_fds + FD_RESERVE + fds_per_client * n_clients
    if soft != resource.RLIM_INFINITY and base + fds_connecting * max(window, 1) > soft:
        window = (soft - base) // fds_connecting if fds_connecting else 0
        if window < 1:
            raise CapacityError(
                f"{n_clients} clients need about {base + fds_connecting} file descriptors "
                f"({fds_per_client} per client, {open_fds} open, {FD_RESERVE} reserve) but "
                f"RLIMIT_NOFILE is {soft} (hard {hard}): raise the hard limit or split the "
                f"clients over more processes"
            )
    if max_sockets is None:
        # Spare slots: a closed socket holds its slot until libzmq's reaper thread frees it.
        max_sockets = max(
            1024, 2 * sockets_per_client * n_clients + sockets_connecting * window + 64
        )
    elif sockets_per_client * n_clients + sockets_connecting * max(window, 1) > max_sockets:
        spare = max_sockets - sockets_per_client * n_clients
        window = spare // sockets_connecting if sockets_connecting else 0
        if window < 1:
            raise CapacityError(
                f"{n_clients} clients need more than max_sockets={max_sockets} zmq sockets "
                f"({sockets_per_client} per client plus {sockets_connecting} per connecting "
                f"client)"
            )
    if max_sockets > socket_limit:
        raise CapacityError(
            f"max_sockets={max_sockets} exceeds this libzmq's SOCKET_LIMIT {socket_limit}: "
            f"split the clients over more processes"
        )
    return Capacity(
        max_sockets=max_sockets,
        connect_window=window,
        fds_needed=base + fds_connecting * window,
        rlimit_nofile=soft,
        rlimit_nofile_hard=hard,
    )


# ---------------------------------------------------------------------------------------------
# Waiting for readable sockets


class _Waiter(abc.ABC):
    """Readiness of many zmq sockets; a socket is known by the `key` it was added with."""

    name = ""

    def __init__(self) -> None:
        self._keys: dict[Any, int] = {}

    def add(self, sock: zmq.Socket, key: int) -> Any:
        """Watch `sock` for input; returns the token to remove it with."""
        token = self._register(sock)
        self._keys[token] = key
        return token

    def remove(self, token: Any) -> None:
        self._unregister(token)
        del self._keys[token]

    def wait(self, timeout_s: float) -> list[int]:
        """Keys of the sockets that may have input, after at most `timeout_s`."""
        keys = self._keys
        return [keys[token] for token in self._ready(timeout_s)]

    def close(self) -> None:
        """Release what the waiter holds (the epoll descriptor); nothing by default."""

    @abc.abstractmethod
    def _register(self, sock: zmq.Socket) -> Any:
        """Start watching `sock`; return the token `_ready` reports it by."""

    @abc.abstractmethod
    def _unregister(self, token: Any) -> None:
        """Stop watching the socket of `token`."""

    @abc.abstractmethod
    def _ready(self, timeout_s: float) -> list[Any]:
        """Tokens of the sockets that may have input, after at most `timeout_s`."""


class _EpollWaiter(_Waiter):
    """Each socket's ZMQ_FD in one epoll set: the cost of a wait grows with what is ready.

    ZMQ_FD is edge-like: it signals that ZMQ_EVENTS may have changed. The loop therefore ends
    every use of a socket with a ZMQ_EVENTS check that finds nothing to read. Measured with
    5000 sockets: a wait with nothing ready costs 0.5 us (zmq.Poller: 2.2 ms).
    """

    name = "epoll"

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll()

    def _register(self, sock: zmq.Socket) -> Any:
        fd = sock.getsockopt(zmq.FD)
        self._epoll.register(fd, select.EPOLLIN)
        return fd

    def _unregister(self, token: Any) -> None:
        self._epoll.unregister(token)

    def _ready(self, timeout_s: float) -> list[Any]:
        return [fd for fd, _ in self._epoll.poll(timeout_s)]

    def close(self) -> None:
        self._epoll.close()


class _PollerWaiter(_Waiter):
    """zmq.Poller: portable; a wait and a removal cost time in proportion to all sockets."""

    name = "poller"

    def __init__(self) -> None:
        super().__init__()
        self._poller = zmq.Poller()

    def _register(self, sock: zmq.Socket) -> Any:
        self._poller.register(sock, zmq.POLLIN)
        return sock

    def _unregister(self, token: Any) -> None:
        self._poller.unregister(token)

    def _ready(self, timeout_s: float) -> list[Any]:
        return [sock for sock, _ in self._poller.poll(math.ceil(timeout_s * 1000))]


def _make_waiter(kind: str) -> _Waiter:
    if kind == "auto":
        kind = "epoll" if hasattr(select, "epoll") else "poller"
    return _EpollWaiter() if kind == "epoll" else _PollerWaiter()


# ---------------------------------------------------------------------------------------------
# The event loop


@dataclass
class _Rows:
    """One row per message sent, kept in typed arrays until written."""

    index: array.array = field(default_factory=lambda: array.array("I"))  # client index
    seq: array.array = field(default_factory=lambda: array.array("Q"))
    t_send: array.array = field(default_factory=lambda: array.array("q"))
    rtt: array.array = field(default_factory=lambda: array.array("q"))
    code: array.array = field(default_factory=lambda: array.array("b"))


class _Loop:
    """State of all clients of one process and the loop that plays them.

    Per-client state lives in lists indexed by the client's position in `config.client_ids`.
    Waiter keys are that index for a DEALER and ``-1 - index`` for its monitor.
    """

    def __init__(
        self,
        config: ClientConfig,
        ctx: zmq.Context,
        capacity: Capacity,
        progress: Callable[[str], None] | None,
    ) -> None:
        n = len(config.client_ids)
        self.config = config
        self.ctx = ctx
        self.window = capacity.connect_window
        self.progress = progress
        self.waiter = _make_waiter(config.event_loop)
        self.n = n
        self.ids = list(config.client_ids)
        self.curve = (
            CurveClientKeys.load(config.curve_secret, config.curve_server_key)
            if config.curve_secret is not None
            else None
        )
        self.timeout_ns = int(config.timeout_s * 1e9)
        self.connect_timeout_ns = int(config.connect_timeout_s * 1e9)
        self.socks: list[zmq.Socket | None] = [None] * n
        self.mons: list[zmq.Socket | None] = [None] * n
        self.sock_tokens: list[Any] = [None] * n
        self.mon_tokens: list[Any] = [None] * n
        self.last_seq = [0] * n  # last seq sent
        self.inflight = [0] * n  # seq awaiting its reply, 0 if none
        self.t_send = [0] * n
        self.connected = [False] * n
        self.done = [False] * n
        self.t_connect = [-1] * n
        self.connect_ns = [-1] * n
        self.first_ack_ns = [-1] * n
        self.t_end = [-1] * n
        self.rows = _Rows()
        # Deadlines are always now + a constant when pushed, so FIFOs stay sorted.
        self.msg_deadlines: deque[tuple[int, int, int]] = deque()  # (deadline, index, seq)
        self.due = [0] * n  # the live deadline of the message in flight; older entries are stale
        self.in_window = [False] * n  # counted in `connecting` (monitor open, no handshake yet)
        # Resend mode: the monitor stays open; a handshake after the first is a reconnect.
        self.resend_mode = config.resend
        self.handshakes = [0] * n
        self.linked = [False] * n  # a connection is up, as far as the monitor has told
        self.resends = [0] * n
        self.reconnects = 0
        self.disconnects = 0
        self.stale_replies = 0
        self.conn_deadlines: deque[tuple[int, int]] = deque()  # (deadline, index)
        self.next_to_start = 0
        self.connecting = 0
        self.n_connected = 0
        self.n_not_connected = 0
        self.n_done = 0
        self.n_acked = 0
        self.n_errors = 0
        self.first_send = -1
        self.last_reply = -1
        self.deadline_hit = False
        self.stopped = False  # a stop request ended the run
        self.socket_retries = 0  # socket creation refused (EMFILE), tried again later
        self.starved_since = -1  # start of the current run of refusals
        # start="all_connected": first messages wait until every client has connected or failed.
        self.held = config.start == "all_connected" and config.messages > 0
        self.released_at = -1

    # -- connecting ----------------------------------------------------------------------

    def fill_connect_window(self, now: int) -> None:
        while self.connecting < self.window and self.next_to_start < self.n:
            if not self.start(self.next_to_start):
                self.starved(now)
                return
            self.next_to_start += 1
            self.starved_since = -1

    def starved(self, now: int) -> None:
        """No socket could be made: sockets closed earlier still await libzmq's reaper.

        Try again on the next turn of the loop; when refusals last longer than the connect
        timeout, record the clients not yet started as not connected.
        """
        self.socket_retries += 1
        if self.starved_since < 0:
            self.starved_since = now
        elif now - self.starved_since > self.connect_timeout_ns:
            self.skip_unstarted()

    def skip_unstarted(self) -> None:
        for j in range(self.next_to_start, self.n):
            self.done[j] = True
        skipped = self.n - self.next_to_start
        self.next_to_start = self.n
        self.n_done += skipped
        self.n_not_connected += skipped

    def start(self, i: int) -> bool:
        """Create, monitor and connect client `i`; False if libzmq refused a socket (EMFILE)."""
        try:
            sock = self.ctx.socket(zmq.DEALER)
        except zmq.ZMQError as e:
            if e.errno == errno.EMFILE:
                return False
            raise
        self.socks[i] = sock  # recorded at once, so every exit path closes it
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)  # queue while (re)connecting; the pipe outlives a drop
        sock.setsockopt(zmq.SNDHWM, HWM)
        sock.setsockopt(zmq.RCVHWM, HWM)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        if self.curve is not None:
            self.curve.apply(sock)
        events = zmq.EVENT_HANDSHAKE_SUCCEEDED
        if self.resend_mode:
            events |= zmq.EVENT_DISCONNECTED
        try:
            mon = sock.get_monitor_socket(events)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            self.socks[i] = None
            if e.errno == errno.EMFILE:
                return False
            raise
        self.mons[i] = mon
        mon.setsockopt(zmq.LINGER, 0)
        self.sock_tokens[i] = self.waiter.add(sock, i)
        self.mon_tokens[i] = self.waiter.add(mon, -1 - i)
        self.connecting += 1
        self.in_window[i] = True
        t0 = time.perf_counter_ns()
        sock.connect(self.config.endpoint)
        self.t_connect[i] = t0
        self.conn_deadlines.append((t0 + self.connect_timeout_ns, i))
        if self.config.messages and not self.held:
            self.send(i)
        self.on_monitor(i)
        self.on_dealer(i)
        return True

    def on_monitor(self, i: int) -> None:
        mon = self.mons[i]
        while mon is not None and mon.getsockopt(_EVENTS) & _POLLIN:
            frames = mon.recv_multipart(_NOBLOCK)
            t = time.perf_counter_ns()
            event = _MONITOR_EVENT.unpack_from(frames[0])[0]
            if event == _HANDSHAKE_SUCCEEDED:
                self.handshakes[i] += 1
                if self.handshakes[i] == 1:
                    self.handshake_seen(i, t)
                else:
                    self.reconnected(i, t)
                if not self.resend_mode:
                    return
            elif event == _DISCONNECTED:
                self.linked[i] = False
                self.disconnects += 1
            mon = self.mons[i]

    def handshake_seen(self, i: int, t: int) -> None:
        connect_ns = t - self.t_connect[i]
        if 0 <= self.first_ack_ns[i] < connect_ns:
            connect_ns = self.first_ack_ns[i]
        self.connect_ns[i] = connect_ns
        if self.resend_mode:
            self.leave_window(i)  # the monitor stays, to see drops and reconnects
        else:
            self.close_monitor(i)
        self.linked[i] = True
        if not self.connected[i]:
            self.mark_connected(i)
            if self.inflight[i] == 1:  # the queued first message: its clock starts now
                self.arm(i, t)
        if self.config.messages == 0:
            self.finish(i, t)

    def reconnected(self, i: int, t: int) -> None:
        """Resend mode: a new connection is up; what was in flight may have died with the old."""
        self.linked[i] = True
        self.reconnects += 1
        if self.inflight[i] and not self.done[i]:
            self.resend(i, t)

    def mark_connected(self, i: int) -> None:
        self.connected[i] = True
        self.linked[i] = True
        self.n_connected += 1

    def leave_window(self, i: int) -> None:
        if self.in_window[i]:
            self.in_window[i] = False
            self.connecting -= 1

    def close_monitor(self, i: int) -> None:
        mon = self.mons[i]
        if mon is None:
            return
        self.waiter.remove(self.mon_tokens[i])
        sock = self.socks[i]
        if sock is not None:
            sock.disable_monitor()
        mon.close(linger=0)
        self.mons[i] = None
        self.leave_window(i)

    def not_connected(self, i: int) -> None:
        """The handshake was not seen in time: drop the client and its queued message."""
        self.close_monitor(i)
        self.waiter.remove(self.sock_tokens[i])
        sock = self.socks[i]
        if sock is not None:
            sock.close(linger=0)
        self.socks[i] = None
        self.inflight[i] = 0
        self.last_seq[i] = 0
        self.done[i] = True
        self.n_done += 1
        self.n_not_connected += 1
        if self.n_connected == 0:
            # Unreachable server: record the clients not yet started without trying them.
            self.skip_unstarted()

    def release(self, now: int) -> None:
        """start="all_connected": every client is connected or given up; all send now."""
        self.held = False
        self.released_at = now
        for i in range(self.n):
            if self.connected[i] and not self.done[i]:
                self.send(i)
                self.on_dealer(i)

    # -- messages ------------------------------------------------------------------------

    def send(self, i: int) -> None:
        """Send the next seq of client `i`."""
        seq = self.last_seq[i] + 1
        # the payload is built before the clock starts: RTT times the round trip, not our encoding
        payload = payload_for(self.ids[i], seq, self.config.payload_bytes)
        t = time.perf_counter_ns()
        if not self.transmit(i, seq, t, payload) and not self.resend_mode:
            # Cannot happen with one message in flight and HWM > 1.
            self.finish(i, t)
            return
        # In resend mode a refused send (full pipe) is tried again when its timeout passes.
        self.last_seq[i] = seq
        self.inflight[i] = seq
        self.t_send[i] = t
        if self.first_send < 0:
            self.first_send = t
        if self.connected[i]:
            self.arm(i, t)

    def transmit(self, i: int, seq: int, t_send: int, payload: bytes | None = None) -> bool:
        """Queue DATA `seq` of client `i` on its DEALER; False if the pipe is full."""
        cid = self.ids[i]
        sock = self.socks[i]
        try:
            sock.send(encode_data(cid, seq, t_send), _SNDMORE_NOBLOCK)
        except zmq.Again:
            return False
        if payload is None:
            payload = payload_for(cid, seq, self.config.payload_bytes)
        sock.send(payload, _NOBLOCK)
        return True

    def resend(self, i: int, now: int) -> None:
        """Resend mode: send the message in flight again (same seq, same t_send_ns)."""
        if self.transmit(i, self.inflight[i], self.t_send[i]):
            self.resends[i] += 1
        self.arm(i, now)

    def arm(self, i: int, t: int) -> None:
        """Start the reply clock of the message in flight; earlier clocks of it become stale."""
        due = t + self.timeout_ns
        self.due[i] = due
        self.msg_deadlines.append((due, i, self.inflight[i]))

    def on_dealer(self, i: int) -> None:
        sock = self.socks[i]
        done = self.done
        while not done[i] and sock.getsockopt(_EVENTS) & _POLLIN:
            frames = sock.recv_multipart(_NOBLOCK)
            t = time.perf_counter_ns()
            self.on_reply(i, frames, t)

    def on_reply(self, i: int, frames: list[bytes], t: int) -> None:
        seq = self.inflight[i]
        self.last_reply = t
        if not self.connected[i]:  # read before the monitor's handshake event
            self.mark_connected(i)
        if self.first_ack_ns[i] < 0:
            self.first_ack_ns[i] = t - self.t_connect[i]
        try:
            ack = decode_ack(frames)
        except ValueError:
            code = INVALID_ACK
        else:
            if ack.client_id != self.ids[i] or ack.seq != seq:
                if self.resend_mode and ack.client_id == self.ids[i] and ack.seq < seq:
                    # The answer to an earlier copy of a message already settled.
                    self.stale_replies += 1
                    return
                code = MISMATCH
            else:
                code = ack.status
        self.settle(i, code, t - self.t_send[i], t)

    def settle(self, i: int, code: int, rtt: int, t: int) -> None:
        rows = self.rows
        rows.index.append(i)
        rows.seq.append(self.inflight[i])
        rows.t_send.append(self.t_send[i])
        rows.rtt.append(rtt)
        rows.code.append(code)
        self.inflight[i] = 0
        self.t_end[i] = t
        if code == _OK:
            self.n_acked += 1
        elif code != _DUPLICATE:
            self.n_errors += 1
        if code <= _DUPLICATE and self.last_seq[i] < self.config.messages:
            self.send(i)
        else:
            self.finish(i, t)

    def finish(self, i: int, t: int) -> None:
        if self.mons[i] is not None:  # replies came first: the handshake event is queued
            self.on_monitor(i)
            self.close_monitor(i)
        self.waiter.remove(self.sock_tokens[i])
        self.done[i] = True
        self.n_done += 1

    def expire(self, now: int) -> None:
        msg = self.msg_deadlines
        while msg and msg[0][0] <= now:
            due, i, seq = msg.popleft()
            if self.inflight[i] != seq or self.done[i] or self.due[i] != due:
                continue
            if not self.resend_mode:
                self.settle(i, TIMEOUT, -1, now)
            elif self.linked[i]:
                self.resend(i, now)
            else:
                self.arm(i, now)  # connection down: the reconnect resends
        conn = self.conn_deadlines
        while conn and conn[0][0] <= now:
            _, i = conn.popleft()
            if not self.connected[i] and not self.done[i]:
                self.not_connected(i)

    # -- the loop ------------------------------------------------------------------------

    def run(self, deadline: int, stop: _Stop | None = None) -> None:
        waiter = self.waiter
        next_progress = 0
        while self.n_done < self.n:
            now = time.perf_counter_ns()
            if now >= deadline:
                self.deadline_hit = True
                break
            if stop is not None and stop.is_set():
                self.stopped = True
                break
            self.expire(now)
            self.fill_connect_window(now)
            if self.held and self.next_to_start == self.n and self.connecting == 0:
                self.release(now)
            if self.n_done == self.n:
                break
            if now >= next_progress:
                self.report()
                next_progress = now + 1_000_000_000
            wake = min(deadline, next_progress)
            if stop is not None:
                wake = min(wake, now + STOP_POLL_NS)
            if self.msg_deadlines:
                wake = min(wake, self.msg_deadlines[0][0])
            if self.conn_deadlines:
                wake = min(wake, self.conn_deadlines[0][0])
            if self.starved_since >= 0:
                wake = min(wake, now + 1_000_000)  # try to make sockets again soon
            ready = waiter.wait(max(0.0, (wake - now) / 1e9))
            # Monitors first, so a handshake is seen before its first reply where possible.
            for key in ready:
                if key < 0:
                    self.on_monitor(-1 - key)
            for key in ready:
                if key >= 0 and not self.done[key]:
                    self.on_dealer(key)
        self.abandon(time.perf_counter_ns())
        self.report()

    def abandon(self, now: int) -> None:
        """At the deadline: messages in flight time out, clients not connected are dropped."""
        for i in range(self.n):
            if self.done[i]:
                continue
            if self.connected[i]:
                if self.inflight[i]:
                    self.settle(i, TIMEOUT, -1, now)
                else:
                    self.finish(i, now)
            elif self.socks[i] is not None:
                self.not_connected(i)
            elif self.next_to_start < self.n:  # never started
                self.skip_unstarted()

    def report(self) -> None:
        if self.progress is not None:
            self.progress(
                f"connected {self.n_connected}/{self.n} "
                f"acked {self.n_acked}/{self.n * self.config.messages} errors {self.n_errors}"
            )

    def close(self) -> None:
        for i in range(self.n):
            for socks in (self.mons, self.socks):
                sock = socks[i]
                if sock is not None:
                    sock.close(linger=0)
                    socks[i] = None
        self.waiter.close()


# ---------------------------------------------------------------------------------------------
# Entry point and outputs


def run_clients(
    config: ClientConfig,
    out_dir: Path,
    progress: Callable[[str], None] | None = None,
    stop: _Stop | None = None,
) -> dict:
    """Play all clients of `config`, write rtt.parquet, clients.parquet and client.json.

    `stop` (e.g. a threading.Event): once set, the run ends within STOP_POLL_NS as it does at
    the deadline (messages in flight are TIMEOUT, the rest not sent) and the outputs are
    written; ``stopped`` in client.json says so.

    Each output is written to a temporary name in `out_dir` and renamed, client.json last.
    Returns the client.json dict. Raises CapacityError before any socket is made when the
    clients cannot fit this process's descriptor or socket limits. What a reply does to a
    client (go on or stop) is in the module docstring. `progress` gets a line at most once a
    second and a last one at the end.

    rtt.parquet, one row per message sent, sorted by client_id, seq: ``client_id`` u32,
    ``seq`` u64, ``payload_bytes`` u32, ``rtt_ns`` i64 (to the reply that settled the message,
    whatever its status; -1 for TIMEOUT), ``status`` (a protocol status name, TIMEOUT, MISMATCH
    or INVALID_ACK), ``t_send_ns`` i64 (perf_counter_ns at send, as in the header).

    clients.parquet, one row per client id in the order given: ``client_id``, ``connected``,
    ``connect_ns``, ``first_ack_ns`` (-1: never), ``sent``, ``acked`` (OK), ``duplicates``,
    ``errors`` (every other status, timeouts and mismatches included), ``timeouts``,
    ``rtt_median_ns``/``rtt_p90_ns``/``rtt_p99_ns``/``rtt_max_ns`` (exact, numpy's linear
    rule, over the client's OK and DUPLICATE samples; -1 if none), ``t_connect_ns`` and
    ``t_end_ns`` (perf_counter_ns at connect() and when its last message was settled; -1 if
    never), from which the span in which all clients were active can be found across processes,
    ``resends`` (copies of a message sent again in resend mode; 0 otherwise).

    client.json adds, for resend mode: ``resends`` (total), ``disconnects`` and ``reconnects``
    (connections lost and made again, as the socket monitors saw them; 0 when not resending)
    and ``stale_replies`` (answers to earlier copies of a message already settled, skipped).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = len(config.client_ids)
    rlimit = limits.raise_nofile()
    ctx = zmq.Context(io_threads=1)
    try:
        capacity = plan_capacity(
            n,
            config.connect_window,
            config.max_sockets,
            limits.open_fds(),
            rlimit,
            ctx.get(zmq.SOCKET_LIMIT),
            keep_monitors=config.resend,
        )
        ctx.set(zmq.MAX_SOCKETS, capacity.max_sockets)  # before the first socket
        loop = _Loop(config, ctx, capacity, progress)
        gc_was_enabled = gc.isenabled()
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            t0 = time.perf_counter_ns()
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            threads0 = _thread_cpu_s()
            thread0 = time.thread_time_ns()
            loop.run(t0 + int(config.deadline_s * 1e9), stop)
            thread_s = (time.thread_time_ns() - thread0) / 1e9
            threads1 = _thread_cpu_s()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
            wall_s = (time.perf_counter_ns() - t0) / 1e9
        finally:
            loop.close()
            if gc_was_enabled:
                gc.enable()
            gc.unfreeze()
    finally:
        ctx.destroy(linger=0)  # closes whatever an exception left open; never blocks
    usage = {
        "wall_s": wall_s,
        "cpu_user_s": ru1.ru_utime - ru0.ru_utime,
        "cpu_system_s": ru1.ru_stime - ru0.ru_stime,
        "loop_cpu_s": thread_s,
        "busiest_thread_cpu_s": max(
            (cpu - threads0.get(tid, 0.0) for tid, cpu in threads1.items()), default=thread_s
        ),
    }
    return _write_outputs(config, out_dir, loop, capacity, usage)


def _thread_cpu_s() -> dict[int, float]:
    """CPU seconds used so far by each thread of this process (the loop, libzmq's I/O thread)."""
    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}
    except psutil.Error:
        return {}


def _quantiles(index: np.ndarray, rtt: np.ndarray, n: int, qs: Sequence[float]) -> list:
    """Exact per-client quantiles (numpy's default linear rule) of raw samples; -1 if none."""
    order = np.lexsort((rtt, index))
    index, rtt = index[order], rtt[order]
    counts = np.bincount(index, minlength=n)
    starts = np.cumsum(counts) - counts
    has = counts > 0
    out = []
    for q in qs:
        result = np.full(n, -1, dtype=np.int64)
        pos = (counts[has] - 1) * q
        lo = np.floor(pos).astype(np.int64)
        hi = np.ceil(pos).astype(np.int64)
        a = rtt[starts[has] + lo].astype(np.float64)
        b = rtt[starts[has] + hi].astype(np.float64)
        result[has] = np.rint(a + (b - a) * (pos - lo)).astype(np.int64)
        out.append(result)
    return out


def _write_outputs(
    config: ClientConfig, out_dir: Path, loop: _Loop, capacity: Capacity, usage: dict
) -> dict:
    n = loop.n
    rows = loop.rows
    index = np.frombuffer(rows.index, dtype=np.uint32).astype(np.intp)
    seq = np.frombuffer(rows.seq, dtype=np.uint64)
    t_send = np.frombuffer(rows.t_send, dtype=np.int64)
    rtt = np.frombuffer(rows.rtt, dtype=np.int64)
    code = np.frombuffer(rows.code, dtype=np.int8)
    ids = np.asarray(loop.ids, dtype=np.uint32)
    client_id = ids[index]

    order = np.lexsort((seq, client_id))
    names = pa.array(STATUS_NAMES, type=pa.string())
    rtt_table = pa.table(
        {
            "client_id": pa.array(client_id[order], type=pa.uint32()),
            "seq": pa.array(seq[order], type=pa.uint64()),
            "payload_bytes": pa.array(
                np.full(len(order), config.payload_bytes, dtype=np.uint32), type=pa.uint32()
            ),
            "rtt_ns": pa.array(rtt[order], type=pa.int64()),
            "status": pc.take(names, pa.array(code[order], type=pa.int8())),
            "t_send_ns": pa.array(t_send[order], type=pa.int64()),
        }
    )

    def per_client(mask: np.ndarray) -> np.ndarray:
        return np.bincount(index[mask], minlength=n).astype(np.int64)

    everything = np.ones(len(code), dtype=bool)
    sent = per_client(everything)
    acked = per_client(code == _OK)
    duplicates = per_client(code == _DUPLICATE)
    timeouts = per_client(code == TIMEOUT)
    good = code <= _DUPLICATE
    q50, q90, q99, q100 = _quantiles(index[good], rtt[good], n, (0.5, 0.9, 0.99, 1.0))
    connected = np.asarray(loop.connected, dtype=bool)
    t_connect = np.asarray(loop.t_connect, dtype=np.int64)
    t_end = np.asarray(loop.t_end, dtype=np.int64)
    clients_table = pa.table(
        {
            "client_id": pa.array(ids, type=pa.uint32()),
            "connected": pa.array(connected, type=pa.bool_()),
            "connect_ns": pa.array(loop.connect_ns, type=pa.int64()),
            "first_ack_ns": pa.array(loop.first_ack_ns, type=pa.int64()),
            "sent": sent,
            "acked": acked,
            "duplicates": duplicates,
            "errors": sent - acked - duplicates,
            "timeouts": timeouts,
            "rtt_median_ns": q50,
            "rtt_p90_ns": q90,
            "rtt_p99_ns": q99,
            "rtt_max_ns": q100,
            "t_connect_ns": t_connect,
            "t_end_ns": t_end,
            "resends": np.asarray(loop.resends, dtype=np.int64),
        }
    )

    errors = dict.fromkeys(ERROR_KINDS, 0)
    for c, count in enumerate(np.bincount(code.astype(np.intp), minlength=len(STATUS_NAMES))):
        if c not in (_OK, _DUPLICATE):
            errors[STATUS_NAMES[c]] = int(count)
    planned = n * config.messages
    errors["not_connected"] = loop.n_not_connected
    errors["not_sent"] = planned - len(code)

    # All clients active: from the last client's connect to the first client's last reply.
    active = sent > 0
    all_start = int(t_connect[active].max()) if active.any() else None
    all_end = int(t_end[active].min()) if active.any() else None
    if all_start is not None and all_end <= all_start:
        all_start = all_end = None
    window = (loop.last_reply - loop.first_send) / 1e9 if loop.first_send >= 0 else 0.0
    wall_s = usage["wall_s"]
    cpu_s = usage["cpu_user_s"] + usage["cpu_system_s"]
    utilization = cpu_s / wall_s if wall_s > 0 else 0.0
    busiest = usage["busiest_thread_cpu_s"] / wall_s if wall_s > 0 else 0.0
    summary = {
        "endpoint": config.endpoint,
        "client_ids": format_client_ids(loop.ids),
        "clients": n,
        "connected": loop.n_connected,
        "messages_per_client": config.messages,
        "payload_bytes": config.payload_bytes,
        "messages_planned": planned,
        "sent": len(code),
        "acked": int(acked.sum()),
        "duplicates": int(duplicates.sum()),
        "errors": errors,
        "deadline_hit": loop.deadline_hit,
        "stopped": loop.stopped,
        "resend": config.resend,
        "curve": config.curve_secret is not None,
        "resends": int(sum(loop.resends)),
        "reconnects": loop.reconnects,
        "disconnects": loop.disconnects,
        "stale_replies": loop.stale_replies,
        "start": config.start,
        "released_ns": loop.released_at if loop.released_at >= 0 else None,
        "wall_s": wall_s,
        "window_start_ns": loop.first_send if loop.first_send >= 0 else None,
        "window_end_ns": loop.last_reply if loop.last_reply >= 0 else None,
        "acked_per_s": int(acked.sum()) / window if window > 0 else None,
        "all_active_start_ns": all_start,
        "all_active_end_ns": all_end,
        "clock": "time.perf_counter_ns (CLOCK_MONOTONIC on Linux, shared by the host)",
        "cpu_user_s": usage["cpu_user_s"],
        "cpu_system_s": usage["cpu_system_s"],
        "cpu_utilization": utilization,
        "loop_cpu_s": usage["loop_cpu_s"],
        "loop_cpu_utilization": usage["loop_cpu_s"] / wall_s if wall_s > 0 else 0.0,
        "busiest_thread_utilization": busiest,
        # A thread (the loop or libzmq's I/O thread) busy > 90% of the time cannot go faster.
        # Process CPU / wall is no such sign: two threads at 60% each add up to 1.2.
        "saturated": busiest > 0.9,
        "timeout_s": config.timeout_s,
        "connect_timeout_s": config.connect_timeout_s,
        "deadline_s": config.deadline_s,
        "event_loop": loop.waiter.name,
        "connect_window": capacity.connect_window,
        "max_sockets": capacity.max_sockets,
        "fds_needed": capacity.fds_needed,
        "socket_retries": loop.socket_retries,
        "rlimit_nofile": capacity.rlimit_nofile,
        "rlimit_nofile_hard": capacity.rlimit_nofile_hard,
        "pyzmq": zmq.pyzmq_version(),
        "libzmq": zmq.zmq_version(),
        "pid": os.getpid(),
    }
    atomic.write_parquet(out_dir / "rtt.parquet", rtt_table)
    atomic.write_parquet(out_dir / "clients.parquet", clients_table)
    atomic.write_json(out_dir / "client.json", summary)
    return summary
