"""The event loop: one thread plays every client of the process, one message in flight each.

What a reply, a timeout or a lost connection does to a client (go on, resend or stop) is the
room's contract and is told in the package docstring (`msgprof.load`); this module is how.
Per-client state lives in lists indexed by the client's position in `config.client_ids`, and the
per-message path (send, read, match the ack, record the row) binds what it uses to locals: at
tens of thousands of messages a second, an attribute lookup or a call per message shows.
"""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import zmq

from msgprof.config import ClientConfig
from msgprof.load import solo
from msgprof.load.barrier import StartBarrier
from msgprof.load.capacity import Capacity
from msgprof.load.echo import decode_echo
from msgprof.load.rows import Rows
from msgprof.load.sockets import HWM, client_sources, connect_endpoint, open_client
from msgprof.load.statuses import DUPLICATE, INVALID_ACK, MISMATCH, OK, TIMEOUT
from msgprof.load.waiters import make_waiter
from msgprof.wire.payload import payload_for
from msgprof.wire.protocol import ACK_PREFIX, ECHO_OFFSET, decode_ack, encode_data
from msgprof.wire.security import CurveClientKeys

#: How often the loop looks at a stop request when it has one (ns).
STOP_POLL_NS = 100_000_000

# Plain ints: the hot path would otherwise pay for enum.Flag arithmetic on every message.
_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_ACK_OK, _ECHO_OFFSET = ACK_PREFIX[OK], ECHO_OFFSET  # an OK reply is matched by its bytes
_send = zmq.backend.Socket.send  # not the sugar's: a Python call more per frame, in the RTT
_HANDSHAKE_SUCCEEDED = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)
_DISCONNECTED = int(zmq.EVENT_DISCONNECTED)
_HANDSHAKE_REFUSED = int(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITOR_EVENT = struct.Struct("=HI")


class Stop(Protocol):
    """A stop request, e.g. a threading.Event set by a signal handler."""

    def is_set(self) -> bool: ...


class Loop:
    """State of all clients of one process and the loop that plays them. Per-client state lives
    in lists indexed by the client's position in `config.client_ids`; waiter keys are that index
    for a DEALER and ``-1 - index`` for its monitor."""

    def __init__(
        self,
        config: ClientConfig,
        ctx: zmq.Context,
        capacity: Capacity,
        progress: Callable[[dict[str, int]], None] | None,
    ) -> None:
        n = len(config.client_ids)
        self.config = config
        self.ctx = ctx
        self.window = capacity.connect_window
        self.progress = progress
        self.waiter = make_waiter(config.event_loop)
        self.n = n
        self.ids = list(config.client_ids)
        self.sources = client_sources(config.endpoint, self.ids, config.clients_per_source)
        secret, server_key = config.curve_secret, config.curve_server_key
        self.curve = None if secret is None else CurveClientKeys.load(secret, server_key)
        self.timeout_ns = int(config.timeout_s * 1e9)
        self.connect_timeout_ns = int(config.connect_timeout_s * 1e9)
        self.socks: list[zmq.Socket | None] = [None] * n
        self.mons: list[zmq.Socket | None] = [None] * n
        self.sock_tokens: list[Any] = [None] * n
        self.mon_tokens: list[Any] = [None] * n
        self.last_seq = [0] * n  # last seq sent
        self.inflight = [0] * n  # seq awaiting its reply, 0 if none
        self.t_send = [0] * n
        self.sent = [b""] * n  # the DATA header in flight, which an OK ACK echoes
        self.connected, self.done = [False] * n, [False] * n
        self.t_connect, self.connect_ns = [-1] * n, [-1] * n
        self.first_ack_ns, self.t_end = [-1] * n, [-1] * n
        self.rows = Rows()
        # Deadlines are always now + a constant when pushed, so FIFOs stay sorted.
        self.msg_deadlines: deque[tuple[int, int, int]] = deque()  # (deadline, index, seq)
        self.due = [0] * n  # the live deadline of the message in flight; older entries are stale
        self.in_window = [False] * n  # counted in `connecting` (monitor open, no handshake yet)
        # Resend mode: the monitor stays open; a handshake after the first is a reconnect.
        self.resend_mode = config.resend
        self.seq_base = config.first_seq - 1  # seqs count from 1 here, from first_seq on the wire
        self.handshakes = [0] * n
        self.linked = [False] * n  # a connection is up, as far as the monitor has told
        self.resends = [0] * n
        self.reconnects = self.disconnects = self.stale_replies = 0  # run totals, resend mode
        self.conn_deadlines: deque[tuple[int, int]] = deque()  # (deadline, index)
        self.next_to_start = self.connecting = self.n_connected = 0
        self.n_not_connected = self.n_refused = 0  # refused: the server refused the handshake
        self.n_done = self.n_acked = self.n_errors = 0
        self.first_send = self.last_reply = -1
        # connect_rate: a connect() at most every gap, the next not before next_connect_at
        self.connect_gap_ns = int(1e9 / config.connect_rate) if config.connect_rate else 0
        self.next_connect_at = 0
        self.deadline_hit = False
        self.stopped = False  # a stop request ended the run
        self.socket_retries = 0  # socket creation refused (EMFILE), tried again later
        self.starved_since = -1  # start of the current run of refusals
        # start="all_connected": first messages wait until every client has connected or failed.
        self.held = config.start == "all_connected" and config.messages != 0
        self.barrier = (StartBarrier(config.start_barrier, self.connect_timeout_ns)
                        if self.held and config.start_barrier else None)  # fmt: skip
        self.released_at = -1
        #: Messages the run is to send in all (a paced loop on a timer counts its schedule).
        self.planned = n * (config.messages or 0)
        #: Wait with sub-millisecond precision (a paced loop's timers need it).
        self.precise = False
        #: A process of one client may wait for its reply in libzmq (msgprof.load.solo).
        self.solo = n == 1
        self.solo_path: str | None = None  # its loop: 'native' or 'python' (solo.path)
        #: The DEALERs' high-water marks: room for the whole in-flight window, twice over.
        self.hwm = max(HWM, 2 * config.max_in_flight)
        #: How a reply is read: an ACK, or in echo mode the request sent back (chosen once).
        self.decode_reply = decode_echo if config.echo else decode_ack
        self.ok_by_bytes = not config.echo  # an OK ACK, matched by its bytes (on_reply)

    # -- connecting ----------------------------------------------------------------------

    def fill_connect_window(self, now: int) -> None:
        while self.connecting < self.window and self.next_to_start < self.n:
            if now < self.next_connect_at:
                return
            if not self.start(self.next_to_start):
                self.starved(now)
                return
            self.next_to_start += 1
            self.starved_since = -1
            self.next_connect_at = max(self.next_connect_at, now) + self.connect_gap_ns

    def starved(self, now: int) -> None:
        """No socket could be made (closed ones still await libzmq's reaper): try again on the
        next turn; refused for longer than the connect timeout, the rest are not connected."""
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
        opened = open_client(self.ctx, self.curve, self.resend_mode, self.hwm)
        if opened is None:
            return False
        sock, mon = opened
        self.socks[i] = sock  # recorded before anything else can fail, so close() closes them
        self.mons[i] = mon
        self.sock_tokens[i] = self.waiter.add(sock, i)
        self.mon_tokens[i] = self.waiter.add(mon, -1 - i)
        self.connecting += 1
        self.in_window[i] = True
        t0 = time.perf_counter_ns()
        sock.connect(connect_endpoint(self.config.endpoint, self.sources[i]))
        self.t_connect[i] = t0
        self.conn_deadlines.append((t0 + self.connect_timeout_ns, i))
        self.on_started(i)
        self.on_monitor(i)
        self.on_dealer(i)
        return True

    def on_started(self, i: int) -> None:
        """Client `i` has just called connect(): the closed loop queues its first message now
        (the DEALER sends it once the connection is up), unless all wait for each other."""
        if self.config.messages and not self.held:
            self.send(i)

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
            elif event == _HANDSHAKE_REFUSED:
                if not self.connected[i] and not self.done[i]:
                    self.n_refused += 1
                    self.not_connected(i, refused=True)
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
            self.on_first_handshake(i, t)
        if self.config.messages == 0:
            self.finish(i, t)

    def on_first_handshake(self, i: int, t: int) -> None:
        """Client `i` is connected for the first time: the first message's reply clock starts."""
        if self.inflight[i] == 1:  # the queued first message: its clock starts now
            self.arm(i, t)
        elif self.last_seq[i] == 0 and self.config.messages and not self.held:
            self.send(i)  # its first message died with an earlier connection

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

    def not_connected(self, i: int, refused: bool = False) -> None:
        """The handshake was not seen in time, or was refused: drop the client and its queued
        message."""
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
        if self.n_connected == 0 and not refused:
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
        """Send the next seq of client `i`, all else done before the clock is read: from the
        send to the wait for its reply, this thread holds the CPU libzmq's I/O thread needs."""
        seq = self.last_seq[i] + 1
        payload = payload_for(self.ids[i], seq + self.seq_base, self.config.payload_bytes)
        self.last_seq[i] = self.inflight[i] = seq
        if connected := self.connected[i]:
            self.arm(i, time.perf_counter_ns())
        t = time.perf_counter_ns()
        if not self.transmit(i, seq, t, payload) and not self.resend_mode:
            self.last_seq[i], self.inflight[i] = seq - 1, 0  # not sent (its deadline is stale)
            if not connected:
                return  # died before its handshake: the monitor says why, a new one resends
            self.finish(i, t)  # cannot happen with one message in flight and HWM > 1
            return
        # In resend mode a refused send (full pipe) is tried again when its timeout passes.
        self.t_send[i] = t
        if self.first_send < 0:
            self.first_send = t

    def transmit(self, i: int, seq: int, t_send: int, payload: bytes | None = None) -> bool:
        """Queue DATA `seq` of client `i` on its DEALER; False if the pipe is full, or died between
        the two frames (libzmq drops the message: a refused handshake may end the pipe)."""
        cid, wire = self.ids[i], seq + self.seq_base
        sock = self.socks[i]
        try:
            _send(sock, header := encode_data(cid, wire, t_send), _SNDMORE_NOBLOCK)
            if payload is None:
                payload = payload_for(cid, wire, self.config.payload_bytes)
            _send(sock, payload, _NOBLOCK)
        except zmq.Again:
            return False
        self.sent[i] = header
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
        """Read client `i`'s replies, the clock right after a first frame (plain int calls)."""
        sock, done = self.socks[i], self.done
        if done[i] or sock is None:  # dropped (a refused handshake closes it at once)
            return
        recv, get = sock.recv, sock.get
        clock = time.perf_counter_ns
        while not done[i] and get(_EVENTS) & _POLLIN:
            first = recv(_NOBLOCK)
            t = clock()
            frames = [first]
            while get(_RCVMORE):  # the rest of a multipart message is there with its first frame
                frames.append(recv(_NOBLOCK))
            self.on_reply(i, frames, t)

    def on_reply(self, i: int, frames: list[bytes], t: int) -> None:
        seq = self.inflight[i]
        self.last_reply = t
        if not self.connected[i]:  # read before the monitor's handshake event
            self.mark_connected(i)
        if self.first_ack_ns[i] < 0:
            self.first_ack_ns[i] = t - self.t_connect[i]
        if self.ok_by_bytes and frames == [_ACK_OK + self.sent[i][_ECHO_OFFSET:]]:
            self.settle(i, OK, t - self.t_send[i], t)
            return
        try:
            ack = self.decode_reply(frames)
        except ValueError:
            code = INVALID_ACK
        else:
            wire = seq + self.seq_base
            if ack.client_id != self.ids[i] or ack.seq != wire:
                if self.resend_mode and ack.client_id == self.ids[i] and ack.seq < wire:
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
        if code == OK:
            self.n_acked += 1
        elif code != DUPLICATE:
            self.n_errors += 1
        if code <= DUPLICATE and self.last_seq[i] < self.config.messages:
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

    def expire_messages(self, now: int) -> None:
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

    def expire_connects(self, now: int) -> None:
        conn = self.conn_deadlines
        while conn and conn[0][0] <= now:
            _, i = conn.popleft()
            if not self.connected[i] and not self.done[i]:
                self.not_connected(i)

    # -- the loop ------------------------------------------------------------------------

    def run(self, deadline: int, stop: Stop | None = None) -> None:
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
            self.expire_messages(now)  # messages and connections whose time has run out
            self.expire_connects(now)
            self.fire(now)
            self.fill_connect_window(now)
            if self.held and self.next_to_start == self.n and self.connecting == 0:
                if self.barrier is None or self.barrier.passed(now):
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
            if self.next_connect_at > now and self.next_to_start < self.n:
                wake = min(wake, self.next_connect_at)
            if self.starved_since >= 0 or self.held and self.barrier and self.barrier.waiting:
                wake = min(wake, now + 1_000_000)  # sockets again soon, or the barrier
            wake = min(wake, self.next_timer(wake))
            if self.solo and solo.awaiting(self):
                solo.receive(self, wake)
                continue
            ready = waiter.wait(max(0.0, (wake - now) / 1e9), self.precise)
            # Monitors first, so a handshake is seen before its first reply where possible.
            for key in ready:
                if key < 0:
                    self.on_monitor(-1 - key)
            for key in ready:
                if key >= 0 and not self.done[key]:
                    self.on_dealer(key)
        self.abandon(time.perf_counter_ns())
        self.report()

    def unsent(self) -> int:
        """Planned sends never made (a paced loop counts what its schedules missed)."""
        return self.n * (self.config.messages or 0) - len(self.rows.code)

    def fire(self, now: int) -> None:
        """Act on the timers due by `now`: the closed loop has none (replies drive it)."""

    def next_timer(self, default: int) -> int:
        """When the next timer is due, or `default` when there is none."""
        return default

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
            self.progress({"connected": self.n_connected, "clients": self.n,
                           "acked": self.n_acked, "planned": round(self.planned),
                           "errors": self.n_errors})  # fmt: skip

    def close(self) -> None:
        for i in range(self.n):
            for socks in (self.mons, self.socks):
                sock = socks[i]
                if sock is not None:
                    sock.close(linger=0)
                    socks[i] = None
        self.waiter.close()
