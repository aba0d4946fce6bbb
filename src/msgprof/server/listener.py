"""The server's listening socket: bound here, lent to libzmq, and gated by a socket filter.

The gate (a classic BPF program that drops every packet, attached to the listener) lets the
server stop new connections from completing without unbinding: libzmq's unbind would close every
connection accepted through the socket, and a port left unbound in the ephemeral range can be
taken by a client's own connect. msgprof.server.admission decides when the gate closes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import ipaddress
import logging
import socket
import struct

import zmq

#: The admission's logger: these lines belong to the story it tells.
log = logging.getLogger("msgprof.admission")

_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
_SO_DETACH_FILTER = getattr(socket, "SO_DETACH_FILTER", 27)
_TCP_INFO_QUEUE = struct.Struct("=I")  # tcpi_unacked: a listener's accept queue length
_TCP_INFO_QUEUE_OFFSET = 24


class _SockFilter(ctypes.Structure):
    _fields_ = [
        ("code", ctypes.c_uint16),
        ("jt", ctypes.c_uint8),
        ("jf", ctypes.c_uint8),
        ("k", ctypes.c_uint32),
    ]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


# Classic BPF: "ret #0", keep nothing of any packet.
_DROP_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))
_DROP_ALL_PROG = _SockFprog(len(_DROP_ALL), _DROP_ALL)
_DROP_ALL_BLOB = ctypes.string_at(ctypes.addressof(_DROP_ALL_PROG), ctypes.sizeof(_DROP_ALL_PROG))

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def detach_filter(fd: int) -> None:
    """Take a socket filter off descriptor `fd` (libzmq's; a Python socket object would own
    it). Harmless when it has none, or is no socket any more."""
    _libc.setsockopt(fd, socket.SOL_SOCKET, _SO_DETACH_FILTER, None, 0)


def parse_tcp_endpoint(endpoint: str) -> tuple[socket.AddressFamily, str, int] | None:
    """(family, address, port) of a ``tcp://`` endpoint with a literal address, ``localhost``
    or ``*``; None for anything else (ipc, inproc, an interface or host name)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, sep, port_text = endpoint.removeprefix("tcp://").rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        return None
    host = host.strip("[]")
    if host == "localhost":
        host = "127.0.0.1"
    elif host == "*":
        host = "0.0.0.0"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return family, str(address), int(port_text)


class Listener:
    """The server's TCP listening socket, bound and listening here and lent to libzmq.

    libzmq gets one descriptor of it (ZMQ_USE_FD) and closes that one with the socket; the
    server keeps a second (`_ctl`) to gate it and read its listen queue, closed in `close()`.
    """

    def __init__(self, family: socket.AddressFamily, address: str, port: int, backlog: int) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.listen(backlog)
            sock.setblocking(False)
            self._ctl = sock.dup()
        except BaseException:
            sock.close()
            raise
        self._lent: socket.socket | None = sock
        self.address = address
        self.port = sock.getsockname()[1]
        self.gated = False

    @property
    def endpoint(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"tcp://{host}:{self.port}"

    def lend(self, router: zmq.Socket) -> None:
        """Bind `router` to this socket (libzmq takes one descriptor of it)."""
        assert self._lent is not None
        router.setsockopt(zmq.USE_FD, self._lent.fileno())
        try:
            router.bind(self.endpoint)
        finally:
            router.setsockopt(zmq.USE_FD, -1)
        self._lent.detach()  # libzmq owns that descriptor now
        self._lent = None

    def close_gate(self) -> None:
        """Drop every packet to the listener; established connections are not affected."""
        if not self.gated:
            self._ctl.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, _DROP_ALL_BLOB)
            self.gated = True

    def open_gate(self) -> None:
        if self.gated:
            self._ctl.setsockopt(socket.SOL_SOCKET, _SO_DETACH_FILTER, 0)
            self.gated = False

    def queued(self) -> int:
        """Connections in the listen queue, established and not yet accepted."""
        info = self._ctl.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return _TCP_INFO_QUEUE.unpack_from(info, _TCP_INFO_QUEUE_OFFSET)[0]

    def close(self) -> None:
        """Close the server's descriptor (after libzmq has closed its own)."""
        if self._lent is not None:
            self._lent.close()
            self._lent = None
        self._ctl.close()


def listen(router: zmq.Socket, endpoint: str, backlog: int) -> Listener | None:
    """Bind `router` to `endpoint` through a `Listener` with a gate; where the endpoint or the
    system allows none (not a literal TCP address, no socket filters), bind it plainly and
    return None: the budget then holds at the handshake only."""
    parsed = parse_tcp_endpoint(endpoint)
    if parsed is not None:
        try:
            listener = Listener(*parsed, backlog)
        except OSError as exc:
            raise zmq.ZMQError(exc.errno or errno.EINVAL, f"cannot bind {endpoint}: {exc}") from exc
        try:
            listener.close_gate()  # a system without socket filters says so here
            listener.open_gate()
        except OSError as exc:
            log.info(
                "no connection gate on %s (%s): the budget holds at the handshake", endpoint, exc
            )
            listener.close()
        else:
            try:
                listener.lend(router)
            except BaseException:
                listener.close()
                raise
            return listener
    else:
        log.info("no connection gate on %s: the budget holds at the handshake", endpoint)
    router.bind(endpoint)
    return None
