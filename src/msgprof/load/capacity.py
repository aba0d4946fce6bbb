"""The capacity plan: how many descriptors and zmq sockets the clients of one process need.

Planned before the first socket is made, so a run that cannot fit fails at once with the limit
it hit (RLIMIT_NOFILE, max_sockets or libzmq's SOCKET_LIMIT) instead of hanging half-connected.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

#: Descriptors a connected client holds: the DEALER's mailbox and its TCP connection.
FDS_PER_CLIENT = 2
#: Extra descriptors while connecting: libzmq's monitor PAIR and ours (one mailbox each).
FDS_PER_CONNECTING = 2
#: Descriptors kept free for the context's threads, Python, Parquet writing and headroom.
FD_RESERVE = 64


#: Descriptors a client process holds before its first client: Python, libzmq's context.
PROCESS_FDS = 32
#: Clients connecting at once by default (ClientConfig.connect_window).
CONNECT_WINDOW = 32


def descriptors_for(n_clients: int, connect_window: int = CONNECT_WINDOW) -> int:
    """The soft RLIMIT_NOFILE a client process needs for `n_clients` (closed or paced loop,
    monitors held only while connecting)."""
    return (
        PROCESS_FDS + FD_RESERVE + FDS_PER_CLIENT * n_clients
        + FDS_PER_CONNECTING * min(connect_window, n_clients)
    )  # fmt: skip


class CapacityError(RuntimeError):
    """The clients cannot fit this process's descriptor or socket limits."""


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
