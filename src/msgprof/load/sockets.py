"""How a client's sockets are made: the DEALER's options and the monitor that sees its handshake.

Kept apart from the loop because these settings decide what is measured (a DEALER that queues
while connecting, so seq 1 can leave before the handshake) and how a refused or lost connection
behaves (libzmq reconnects by itself, backing off), not how the loop runs.
"""

from __future__ import annotations

import errno

import zmq

from msgprof.wire.security import CurveClientKeys

#: Send/receive high-water marks: a closed loop needs one; a little room for a chatty server.
#: A paced client with a larger in-flight window gets twice its window (`open_client`'s `hwm`).
HWM = 16
#: libzmq's reconnect interval for every DEALER (ms), doubled after each failed try up to the
#: maximum, so clients refused by a server that is down or full back off instead of hammering it.
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 1000
#: The longest a blocking recv waits (ms): only a process of one client blocks in recv
#: (msgprof.load.solo), and this bounds how late its loop sees a deadline or a stop request.
RECV_TIMEOUT_MS = 10


def open_client(
    ctx: zmq.Context, curve: CurveClientKeys | None, watch_disconnects: bool, hwm: int = HWM
) -> tuple[zmq.Socket, zmq.Socket] | None:
    """A configured DEALER, not yet connected, and its monitor; None if libzmq refused a socket.

    The monitor reports EVENT_HANDSHAKE_SUCCEEDED and EVENT_HANDSHAKE_FAILED_AUTH (a refused
    handshake), and with `watch_disconnects` (resend mode)
    EVENT_DISCONNECTED too. A refusal (EMFILE: the socket table or the descriptors are full) is
    for the caller to retry later; any other error closes what was made and is raised.
    """
    try:
        sock = ctx.socket(zmq.DEALER)
    except zmq.ZMQError as e:
        if e.errno == errno.EMFILE:
            return None
        raise
    events = zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    if watch_disconnects:
        events |= zmq.EVENT_DISCONNECTED
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IMMEDIATE, 0)  # queue while (re)connecting; the pipe outlives a drop
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS)
        sock.setsockopt(zmq.RCVTIMEO, RECV_TIMEOUT_MS)
        if curve is not None:
            curve.apply(sock)
        mon = sock.get_monitor_socket(events)
    except zmq.ZMQError as e:
        sock.close(linger=0)
        if e.errno == errno.EMFILE:
            return None
        raise
    except BaseException:
        sock.close(linger=0)
        raise
    mon.setsockopt(zmq.LINGER, 0)
    return sock, mon
