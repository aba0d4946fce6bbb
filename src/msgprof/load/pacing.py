"""The open loop: clients that send on a schedule, whatever the server does (``--rate``).

Each client sends ``rate`` messages a second: ``uniform`` every 1/rate s from a random phase (so
the clients of a process do not send in lockstep), or ``poisson`` with exponential gaps of mean
1/rate s. Its schedule starts when it can first send: at its handshake (``start=on_connect``) or
when every client of the process has connected (``all_connected``). It ends after ``messages``
messages, or with the last intended send before ``duration_s`` from the start.

A client keeps at most ``max_in_flight`` messages awaiting their replies. A message is due at its
*intended* time; when the window is full then, it goes out as soon as a reply frees a place, and
the schedule does not move: later messages keep their own intended times. So its latency, from
the intended send to the reply read (``latency_ns``), holds every moment the server made it wait,
whereas its RTT from the actual send (``rtt_ns``) does not: the coordinated-omission correction
(wrk2's). ``lag`` = actual − intended send says how late a send was, and ``window_wait`` how
much of that lag it spent waiting for room while its client's window was full: the server's
backpressure, a measurement. The rest of the lag is the generator's own delay (its loop was busy
or not scheduled): when that part exceeds `msgprof.load.latency.LATE_NS` the generator could not
keep up, and what it measured is partly itself. The window counts as full from the send that
filled it until a reply leaves it with room and nothing due to fill it again, so a backlog
queued behind a full window is the server's however long it lasts.

Replies come in seq order on a connection (docs/protocol.md), so a client's messages in flight are
a FIFO and each reply must answer its head. What a reply status does (go on, or stop the client)
is the closed loop's (`msgprof.load`); when a client stops, the messages it still had in flight
are recorded as TIMEOUT (no reply was read for them). Resend mode is for closed-loop crash runs.
"""

from __future__ import annotations

import array
import ctypes
import heapq
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from msgprof.config import ClientConfig
from msgprof.load.capacity import Capacity
from msgprof.load.loop import Loop
from msgprof.load.rows import Rows
from msgprof.load.statuses import DUPLICATE, INVALID_ACK, MISMATCH, OK, TIMEOUT
from msgprof.wire.payload import payload_for
from msgprof.wire.protocol import decode_ack

#: prctl(2) option: how late the kernel may fire this thread's timers to group wake-ups.
_PR_SET_TIMERSLACK = 29


def tighten_timer_slack() -> None:
    """Let the kernel wake this thread within 1 ns of its timeout instead of the default 50 µs
    slack: a paced send's lag starts with its wake-up (measured: lag p50 down by 40–60 µs)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the default slack only makes lags a little longer


@dataclass
class PacedRows(Rows):
    """The closed loop's rows, with each message's intended send time and why it was late."""

    intended: array.array = field(default_factory=lambda: array.array("q"))
    window_wait: array.array = field(default_factory=lambda: array.array("q"))


class PacedLoop(Loop):
    """The event loop of paced clients: replies and timers drive the sends."""

    def __init__(
        self,
        config: ClientConfig,
        ctx: zmq.Context,
        capacity: Capacity,
        progress: Callable[[dict[str, int]], None] | None,
    ) -> None:
        super().__init__(config, ctx, capacity, progress)
        assert config.rate is not None
        n = self.n
        self.rows = PacedRows()
        self.precise = True
        self.solo = False  # its sends follow timers, which only the event loop keeps
        tighten_timer_slack()
        self.interval_ns = 1e9 / config.rate
        self.poisson = config.arrivals == "poisson"
        self.window_size = config.max_in_flight
        self.count = config.messages  # None: timed by duration_s
        self.length_ns = None if config.duration_s is None else int(config.duration_s * 1e9)
        # One generator for the process, seeded by its ids: a rerun draws the same phases.
        self.rng = random.Random(hash(tuple(self.ids)))
        #: Per client, the messages awaiting a reply: (seq, intended, t_send, window_wait).
        self.fifo: list[deque[tuple[int, int, int, int]]] = [deque() for _ in range(n)]
        self.next_intended = [0] * n
        self.schedule_end = [0] * n  # timed: no intended send at or after this
        self.full_from = [-1] * n  # since when the window has been full, -1 while it has room
        self.timer_at = [-1] * n  # the timer armed for the next send, -1 if none
        self.started = [-1] * n  # when the schedule began, -1 if it has not
        self.timers: list[tuple[int, int]] = []  # heap of (intended, client index)
        if config.duration_s is not None:
            self.planned = round(n * config.rate * config.duration_s)

    # -- the schedule --------------------------------------------------------------------

    def gap(self) -> float:
        """The time to the next intended send (ns)."""
        if self.poisson:
            return self.rng.expovariate(1.0) * self.interval_ns
        return self.interval_ns

    def begin(self, i: int, now: int) -> None:
        """Start the schedule of client `i` at `now`."""
        phase = self.gap() if self.poisson else self.rng.random() * self.interval_ns
        self.started[i] = now
        self.next_intended[i] = now + int(phase)
        if self.length_ns is not None:
            self.schedule_end[i] = now + self.length_ns
        self.pump(i, now, on_reply=False)

    def over(self, i: int) -> bool:
        """True when client `i` has nothing more to send."""
        if self.count is not None:
            return self.last_seq[i] >= self.count
        return self.next_intended[i] >= self.schedule_end[i]

    def pump(self, i: int, now: int, on_reply: bool) -> None:
        """Send what is due by `now` while the window has room, then arm the next timer.

        `on_reply`: a reply has just made room in a window that was full (`full_from`); a due
        message sent now waited for it since then.
        """
        fifo = self.fifo[i]
        while len(fifo) < self.window_size:
            if self.done[i]:
                return
            if self.over(i):
                if not fifo:
                    self.finish(i, now)
                return
            intended = self.next_intended[i]
            if intended > now:
                if self.timer_at[i] != intended:
                    self.timer_at[i] = intended
                    heapq.heappush(self.timers, (intended, i))
                return
            self.send_due(i, intended, on_reply)
        if not self.over(i):
            return
        if not fifo:
            self.finish(i, now)

    def send_due(self, i: int, intended: int, on_reply: bool) -> None:
        """Send the next seq of client `i`, intended at `intended`, and advance its schedule."""
        seq = self.last_seq[i] + 1
        payload = payload_for(self.ids[i], seq + self.seq_base, self.config.payload_bytes)
        t = time.perf_counter_ns()
        if not self.transmit(i, seq, t, payload):
            # The pipe died (a refused or lost connection): nothing more can be sent.
            self.stop_client(i, t)
            return
        self.last_seq[i] = seq
        full_from = self.full_from[i] if on_reply else -1
        window_wait = t - max(intended, full_from) if full_from >= 0 else 0
        fifo = self.fifo[i]
        fifo.append((seq, intended, t, max(0, window_wait)))
        self.msg_deadlines.append((t + self.timeout_ns, i, seq))
        if self.first_send < 0:
            self.first_send = t
        if len(fifo) >= self.window_size and full_from < 0:
            self.full_from[i] = t  # a new stretch; refilled on a reply, the stretch goes on
        self.next_intended[i] = intended + max(1, int(self.gap()))

    # -- hooks of the closed loop --------------------------------------------------------

    def on_started(self, i: int) -> None:
        """Nothing is queued before the handshake: the schedule starts when a client can send."""

    def on_first_handshake(self, i: int, t: int) -> None:
        if not self.held:
            self.begin(i, t)

    def release(self, now: int) -> None:
        """start="all_connected": every client is connected or given up; all schedules start."""
        self.held = False
        self.released_at = now
        for i in range(self.n):
            if self.connected[i] and not self.done[i]:
                self.begin(i, now)
                self.on_dealer(i)

    def fire(self, now: int) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            t, i = heapq.heappop(timers)
            if self.timer_at[i] != t or self.done[i]:
                continue  # already sent from a reply, or the client has stopped
            self.timer_at[i] = -1
            self.pump(i, now, on_reply=False)
            self.on_dealer(i)

    def next_timer(self, default: int) -> int:
        return self.timers[0][0] if self.timers else default

    # -- replies, timeouts, the end ------------------------------------------------------

    def on_reply(self, i: int, frames: list[bytes], t: int) -> None:
        self.last_reply = t
        if self.first_ack_ns[i] < 0:
            self.first_ack_ns[i] = t - self.t_connect[i]
        fifo = self.fifo[i]
        if not fifo:  # a reply to nothing sent
            self.record(i, (0, t, t, 0), MISMATCH, 0, t)
            self.stop_client(i, t)
            return
        head = fifo.popleft()
        try:
            ack = decode_ack(frames)
        except ValueError:
            code = INVALID_ACK
        else:
            ok = ack.client_id == self.ids[i] and ack.seq == head[0] + self.seq_base
            code = ack.status if ok else MISMATCH
        self.record(i, head, code, t - head[2], t)
        if code > DUPLICATE:
            self.stop_client(i, t)
            return
        self.pump(i, t, on_reply=self.full_from[i] >= 0)
        if len(fifo) < self.window_size:
            self.full_from[i] = -1  # room, and nothing due to fill it: the stretch ends

    def record(
        self, i: int, message: tuple[int, int, int, int], code: int, rtt: int, t: int
    ) -> None:
        seq, intended, t_send, window_wait = message
        rows = self.rows
        rows.index.append(i)
        rows.seq.append(seq)
        rows.t_send.append(t_send)
        rows.rtt.append(rtt)
        rows.code.append(code)
        rows.intended.append(intended)
        rows.window_wait.append(window_wait)
        self.t_end[i] = t
        if code == OK:
            self.n_acked += 1
        elif code != DUPLICATE:
            self.n_errors += 1

    def stop_client(self, i: int, t: int) -> None:
        """Client `i` goes no further: what it still has in flight gets no reply."""
        fifo = self.fifo[i]
        while fifo:
            self.record(i, fifo.popleft(), TIMEOUT, -1, t)
        if not self.done[i]:
            self.finish(i, t)

    def expire_messages(self, now: int) -> None:
        msg = self.msg_deadlines
        while msg and msg[0][0] <= now:
            _due, i, seq = msg.popleft()
            fifo = self.fifo[i]
            if self.done[i] or not fifo or fifo[0][0] > seq:
                continue  # answered in time
            self.stop_client(i, now)

    def abandon(self, now: int) -> None:
        """At the deadline or a stop: what is in flight times out, the rest is not sent."""
        for i in range(self.n):
            if self.done[i]:
                continue
            if self.connected[i]:
                self.stop_client(i, now)
            elif self.socks[i] is not None:
                self.not_connected(i)
            elif self.next_to_start < self.n:  # never started
                self.skip_unstarted()

    def unsent(self) -> int:
        """Scheduled sends never made: the schedules of clients that stopped early or never
        began (the expected count for a Poisson schedule, which is random)."""
        missing = 0
        for i in range(self.n):
            if self.started[i] < 0:
                missing += self.count if self.count is not None else round(self.planned / self.n)
            elif self.count is not None:
                missing += self.count - self.last_seq[i]
            elif self.next_intended[i] < self.schedule_end[i]:
                left = (self.schedule_end[i] - self.next_intended[i]) / self.interval_ns
                missing += round(left) if self.poisson else int(left) + 1
        return missing
