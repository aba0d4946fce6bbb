"""One client in a process: its reply is awaited in libzmq's recv, as a C client awaits it.

The event loop waits on all of its sockets at once: epoll on each ZMQ_FD, a ZMQ_EVENTS check,
then recv, and between a send and the next wait it does its rounds (deadlines, timers, the
connect window, progress). With one client, all of that lies inside the round trip it times:
about 10 us from the send to the wait on this host, and while the loop still runs on a shared
core, libzmq's I/O thread, which is to transmit the message, waits for it. So once the one
client is connected and a reply is due, the loop blocks in a plain recv (bounded by
sockets.RECV_TIMEOUT_MS), reads the clock as it returns and sends the next message from
there: the path of benchmarks/c/msgprof_c_client.c. Everything else the loop does is unchanged.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import zmq

if TYPE_CHECKING:
    from msgprof.load.loop import Loop

_NOBLOCK = int(zmq.NOBLOCK)
_RCVMORE = int(zmq.RCVMORE)


def awaiting(loop: Loop) -> bool:
    """The one client is connected, its monitor closed, and the reply to a message is due."""
    return (
        loop.connected[0] and loop.mons[0] is None and bool(loop.inflight[0]) and not loop.done[0]
    )


def receive(loop: Loop, until: int) -> None:
    """Take the client's replies in blocking recvs (each one sends the next message) until a
    reply comes after `until`, the client is done, or no reply came in RECV_TIMEOUT_MS; then
    leave the socket as the event loop expects it (its ZMQ_EVENTS read)."""
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
    loop.on_dealer(0)
