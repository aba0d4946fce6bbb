"""Waiting for readable sockets: one interface, two ways (epoll, zmq.Poller).

The loop waits on thousands of DEALERs and monitors at once; what a wait costs decides how many
clients one process can play, so the way is chosen per run (``--event-loop``) and reported.
"""

from __future__ import annotations

import abc
import math
import select
from typing import Any

import zmq

#: select()'s limit on descriptor numbers (glibc's FD_SETSIZE).
_FD_SETSIZE = 1024


class Waiter(abc.ABC):
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
        """Stop watching the socket `add` returned `token` for."""
        self._unregister(token)
        del self._keys[token]

    def wait(self, timeout_s: float, precise: bool = False) -> list[int]:
        """Keys of the sockets that may have input, after at most `timeout_s`.

        A wait is timed in whole milliseconds (rounded up) unless `precise` asks for the
        microseconds a paced schedule needs, where the waiter can.
        """
        keys = self._keys
        return [keys[token] for token in self._ready(timeout_s, precise)]

    def close(self) -> None:
        """Release what the waiter holds (the epoll descriptor); nothing by default."""

    @abc.abstractmethod
    def _register(self, sock: zmq.Socket) -> Any:
        """Start watching `sock`; return the token `_ready` reports it by."""

    @abc.abstractmethod
    def _unregister(self, token: Any) -> None:
        """Stop watching the socket of `token`."""

    @abc.abstractmethod
    def _ready(self, timeout_s: float, precise: bool) -> list[Any]:
        """Tokens of the sockets that may have input, after at most `timeout_s`."""


class EpollWaiter(Waiter):
    """Each socket's ZMQ_FD in one epoll set: the cost of a wait grows with what is ready.

    ZMQ_FD is edge-like: it signals that ZMQ_EVENTS may have changed. The loop therefore ends
    every use of a socket with a ZMQ_EVENTS check that finds nothing to read. Measured with
    5000 sockets: a wait with nothing ready costs 0.5 us (zmq.Poller: 2.2 ms).
    """

    name = "epoll"

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll()
        # select() waits in microseconds where epoll_wait counts milliseconds; it can watch
        # the epoll descriptor itself (readable when a member is) if that is below FD_SETSIZE,
        # which it is when made before the sockets.
        self._fine = [self._epoll.fileno()] if self._epoll.fileno() < _FD_SETSIZE else None

    def _register(self, sock: zmq.Socket) -> Any:
        fd = sock.getsockopt(zmq.FD)
        self._epoll.register(fd, select.EPOLLIN)
        return fd

    def _unregister(self, token: Any) -> None:
        self._epoll.unregister(token)

    def _ready(self, timeout_s: float, precise: bool) -> list[Any]:
        if precise and timeout_s > 0 and self._fine is not None:
            select.select(self._fine, (), (), timeout_s)
            timeout_s = 0
        return [fd for fd, _ in self._epoll.poll(timeout_s)]

    def close(self) -> None:
        self._epoll.close()


class PollerWaiter(Waiter):
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

    def _ready(self, timeout_s: float, precise: bool) -> list[Any]:
        return [sock for sock, _ in self._poller.poll(math.ceil(timeout_s * 1000))]


def make_waiter(kind: str) -> Waiter:
    """The waiter for ``--event-loop`` `kind`: epoll, poller, or auto (epoll where there is one)."""
    if kind == "auto":
        kind = "epoll" if hasattr(select, "epoll") else "poller"
    return EpollWaiter() if kind == "epoll" else PollerWaiter()
