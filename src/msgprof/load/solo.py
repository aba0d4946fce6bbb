"""One client in a process: its reply is awaited in libzmq's recv, as a C client awaits it.

The event loop waits on all of its sockets at once: epoll on each ZMQ_FD, a ZMQ_EVENTS check,
then recv, and between a send and the next wait it does its rounds (deadlines, timers, the
connect window, progress). With one client, all of that lies inside the round trip it times:
about 10 us from the send to the wait on this host, and while the loop still runs on a shared
core, libzmq's I/O thread, which is to transmit the message, waits for it. So once the one
client is connected and a reply is due, the loop blocks in a plain recv (bounded by
sockets.RECV_TIMEOUT_MS), reads the clock as it returns and sends the next message from
there: the path of benchmarks/c/msgprof_c_client.c. Everything else the loop does is unchanged.

Even that path in Python adds ~7% to a round trip, and the per-message bookkeeping more, so a
closed loop of ACKs runs it compiled (msgprof.load.native) where the host can build it: the C
loop takes OK ACKs and sends the next seq until a reply comes after `until` or is anything else,
and the rows it measured are settled here in bulk, outside every timed window. The first frame
of any other reply comes back to `Loop.on_reply`, as from the Python path. In echo mode
(`msgprof calibrate`) it takes the request's header back, and one frame more, as an OK ACK.
"""

from __future__ import annotations

import ctypes
import logging
import time
import weakref
from typing import TYPE_CHECKING

import zmq

from msgprof.load import native
from msgprof.load.statuses import OK
from msgprof.wire.protocol import ACK_PREFIX, DATA_PREFIX, encode_data

if TYPE_CHECKING:
    from msgprof.load.loop import Loop

_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)
#: Rows one call of the compiled loop may take before it returns to settle them.
BATCH = 4096


def awaiting(loop: Loop) -> bool:
    """The one client is connected, its monitor closed, and the reply to a message is due."""
    return (
        loop.connected[0] and loop.mons[0] is None and bool(loop.inflight[0]) and not loop.done[0]
    )


def path(loop: Loop) -> str:
    """'native' when this loop's one client runs the compiled loop, else 'python' (resend mode,
    or no library); chosen on first use, which builds the library if this host has none yet:
    `run_clients` asks before the run's clock starts."""
    if loop.solo_path is None:
        lib = None if loop.resend_mode else native.load()
        if lib is None and not loop.resend_mode:
            logging.getLogger("msgprof.client").warning(
                "one-client loop in Python (RTTs ~5-10%% longer): %s", native.why_not()
            )
        loop.solo_path = "python" if lib is None else "native"
        if lib is not None:
            _calls[loop] = _Call(lib, loop.config.payload_bytes)
    return loop.solo_path


def receive(loop: Loop, until: int) -> None:
    """Take the client's replies in blocking recvs (each one sends the next message) until a
    reply comes after `until`, the client is done, or no reply came in RECV_TIMEOUT_MS; then
    leave the socket as the event loop expects it (its ZMQ_EVENTS read)."""
    if path(loop) == "native":
        receive_native(loop, until)
    else:
        receive_python(loop, until)
    loop.on_dealer(0)


def receive_python(loop: Loop, until: int) -> None:
    sock = loop.socks[0]
    assert sock is not None
    recv, more = sock.recv, sock.get
    clock = time.perf_counter_ns
    done, inflight = loop.done, loop.inflight
    while not done[0] and inflight[0]:
        try:
            first = recv(0)
        except zmq.Again:
            break
        t = clock()
        frames = [first]
        while more(_RCVMORE):
            frames.append(recv(_NOBLOCK))
        loop.on_reply(0, frames, t)
        if t >= until:
            break


class _Call:
    """The compiled loop's arguments and results for one client's batch of round trips."""

    def __init__(self, lib: ctypes.CDLL, size: int) -> None:
        self.lib = lib
        self.t_sends = (ctypes.c_int64 * BATCH)()
        self.rtts = (ctypes.c_int64 * BATCH)()
        self.t_last, self.t_next = ctypes.c_int64(), ctypes.c_int64()
        self.why, self.err = ctypes.c_int(), ctypes.c_int()
        self.odd = native.ZmqMsg()
        self.payload = ctypes.create_string_buffer(max(size, 1))


#: Each loop's arguments for the compiled loop, made once (path) and not in a round trip.
_calls: weakref.WeakKeyDictionary[Loop, _Call] = weakref.WeakKeyDictionary()


def receive_native(loop: Loop, until: int) -> None:
    """As receive_python, the round trips in solo_native.c; what it measured is settled here."""
    sock, call = loop.socks[0], _calls[loop]
    lib = call.lib
    assert sock is not None
    echo = int(loop.config.echo)
    while not loop.done[0] and loop.inflight[0]:
        seq = loop.inflight[0]
        rows = lib.msgprof_solo_run(
            sock.underlying, DATA_PREFIX, ACK_PREFIX[OK], echo, loop.ids[0], seq + loop.seq_base,
            loop.t_send[0], loop.config.messages - seq, call.payload, loop.config.payload_bytes,
            until, BATCH, call.t_sends, call.rtts, ctypes.byref(call.t_last),
            ctypes.byref(call.t_next), ctypes.byref(call.odd), ctypes.byref(call.why),
            ctypes.byref(call.err),
        )  # fmt: skip
        why, t = call.why.value, call.t_last.value
        if rows:
            _settle_batch(loop, call, rows, seq, t)
        if why == native.ERROR:
            raise zmq.ZMQError(call.err.value)
        if why in (native.ODD, native.ODD_TAIL):  # ODD_TAIL: the header matched, as sent
            frames = [native.take_frame(lib, call.odd)]
            if why == native.ODD_TAIL:
                frames.insert(0, loop.sent[0])
            while sock.get(_RCVMORE):
                frames.append(sock.recv(_NOBLOCK))
            loop.on_reply(0, frames, t)
        elif why == native.REFUSED:  # as Loop.send when transmit fails: the last one stays
            last = loop.inflight[0] - 1
            loop.last_seq[0], loop.inflight[0] = last, 0
            loop.t_send[0] = call.t_sends[rows - 1]
            loop.sent[0] = encode_data(loop.ids[0], last + loop.seq_base, loop.t_send[0])
            loop.finish(0, call.t_next.value)
        if why == native.TIMEOUT or t >= until:
            return


def _settle_batch(loop: Loop, call: _Call, rows: int, seq: int, t: int) -> None:
    """Record the `rows` OK round trips from `seq` on, as on_reply and settle would have one by
    one, and leave the loop's state as the compiled loop left the client: the next message in
    flight (t_next), or the last one answered and settled through Loop.settle."""
    if loop.first_ack_ns[0] < 0:
        loop.first_ack_ns[0] = call.t_sends[0] + call.rtts[0] - loop.t_connect[0]
    loop.last_reply = t
    t_next = call.t_next.value
    bulk = rows if t_next else rows - 1  # the last, when nothing followed, settles in Python
    if bulk:
        r = loop.rows
        r.index.extend([0] * bulk)
        r.seq.extend(range(seq, seq + bulk))
        r.t_send.extend(call.t_sends[:bulk])
        r.rtt.extend(call.rtts[:bulk])
        r.code.extend([OK] * bulk)
        loop.n_acked += bulk
        loop.t_end[0] = call.t_sends[bulk - 1] + call.rtts[bulk - 1]
    last = seq + bulk
    loop.last_seq[0] = loop.inflight[0] = last
    if t_next:
        loop.t_send[0] = t_next
        loop.sent[0] = encode_data(loop.ids[0], last + loop.seq_base, t_next)
        loop.arm(0, t_next)
    else:
        loop.t_send[0] = call.t_sends[rows - 1]
        loop.sent[0] = encode_data(loop.ids[0], last + loop.seq_base, loop.t_send[0])
        loop.settle(0, OK, call.rtts[rows - 1], t)
