"""How a client's sockets are made: the DEALER's options and the monitor that sees its handshake.

Kept apart from the loop because these settings decide what is measured (a DEALER that queues
while connecting, so seq 1 can leave before the handshake) and how a refused or lost connection
behaves (libzmq reconnects by itself, backing off), not how the loop runs.
"""

from __future__ import annotations

import errno
import ipaddress

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


#: The first source address a client's connection may come from: 127.0.0.1 is left to servers.
FIRST_SOURCE = int(ipaddress.IPv4Address("127.0.0.2"))
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")


def loopback_destination(endpoint: str) -> bool:
    """Whether `endpoint` is tcp:// to an IPv4 loopback address: only then may the clients
    spread their source addresses over 127.0.0.0/8 (every one of them reaches it)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = endpoint[len("tcp://") :].rpartition(":")[0]
    try:
        return ipaddress.IPv4Address(host) in LOOPBACK
    except ValueError:
        return False


def source_address(client_id: int, clients_per_source: int) -> str:
    """The loopback address client `client_id` connects from: ids 1..N from 127.0.0.2, the
    next N from 127.0.0.3, and so on (N = `clients_per_source`), so no source address needs
    more ephemeral ports than N, however many clients a point has."""
    index = (client_id - 1) // clients_per_source
    address = ipaddress.IPv4Address(FIRST_SOURCE + index)
    if address not in LOOPBACK:
        raise ValueError(f"client {client_id} would connect from {address}, outside 127.0.0.0/8")
    return str(address)


def client_sources(endpoint: str, ids: list[int], clients_per_source: int) -> list[str | None]:
    """The source address of each client (None: the kernel's choice): spread only when the
    server is on loopback and `clients_per_source` is not 0. One string per address, shared."""
    if not clients_per_source or not loopback_destination(endpoint):
        return [None] * len(ids)
    known: dict[int, str] = {}
    sources: list[str | None] = []
    for cid in ids:
        index = (cid - 1) // clients_per_source
        if index not in known:
            known[index] = source_address(cid, clients_per_source)
        sources.append(known[index])
    return sources


def connect_endpoint(endpoint: str, source: str | None) -> str:
    """libzmq's endpoint for a connection from `source` (port chosen by the kernel) to
    `endpoint`: ``tcp://SOURCE:0;HOST:PORT``; `endpoint` itself without a source."""
    if source is None:
        return endpoint
    return f"tcp://{source}:0;{endpoint[len('tcp://') :]}"


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
