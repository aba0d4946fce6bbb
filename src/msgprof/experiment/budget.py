"""What a run's server and client processes need of this host's limits, checked before anything
starts: descriptors and ephemeral ports.

The server holds one descriptor per connection besides its queue files, an accept burst and a
reserve (msgprof.server.admission); a client process two per client besides its own
(msgprof.load.capacity). When that is more than the hard RLIMIT_NOFILE, a process that may
raise it (CAP_SYS_RESOURCE) has the run's processes raise it as far as needed; any other process
fails here, before a directory is made, with the limit and how to raise it. A limit a user set
lower than the clients need (`--rlimit-nofile`) is left alone: it is how a storm past the budget
is provoked on purpose.

Every connection from one source address to the server's one port takes an ephemeral port of
that address; the clients of a loopback server spread over `clients_per_source` per address
(msgprof.load.sockets), and a run that would put more on one address than
net.ipv4.ip_local_port_range holds fails here too.
"""

from __future__ import annotations

import math
import resource
from dataclasses import replace
from pathlib import Path

from msgprof import limits
from msgprof.config import PointConfig
from msgprof.experiment import launch
from msgprof.load.capacity import descriptors_for as client_descriptors
from msgprof.load.sockets import loopback_destination
from msgprof.server.admission import connection_budget
from msgprof.server.admission import descriptors_for as server_descriptors

PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def ephemeral_ports() -> int | None:
    """How many ports net.ipv4.ip_local_port_range holds (None: unknown)."""
    try:
        first, last = map(int, PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    return last - first + 1


def check_ports(config: PointConfig, clients: int) -> None:
    """LimitError when more clients than one address has ephemeral ports would connect from
    one source address (all of them, unless a loopback server lets them spread)."""
    ports = ephemeral_ports()
    spread = config.clients_per_source and loopback_destination(launch.placement(config).bind)
    per_address = min(clients, config.clients_per_source) if spread else clients
    if ports is not None and per_address > ports:
        fix = "lower --clients-per-source"
        if not spread:
            fix = "spread them (--clients-per-source, a server on 127.0.0.0/8) or use fewer"
        raise limits.LimitError(
            f"{per_address} clients would connect from one source address, which has "
            f"{ports} ephemeral ports (net.ipv4.ip_local_port_range): {fix}",
            kind="ports",
        )


def fewest_processes(clients: int, ceiling: int) -> int | None:
    """The fewest client processes whose share of `clients` fits `ceiling` descriptors each."""
    for processes in range(1, clients + 1):
        if client_descriptors(math.ceil(clients / processes)) <= ceiling:
            return processes
    return None


def fit(config: PointConfig, peak_clients: int | None = None) -> PointConfig:
    """`config` with the descriptor limits its processes must raise past the hard limit set
    (`rlimit_nofile`, `client_rlimit_nofile`), for `peak_clients` connected at once (default
    config.clients). Raises limits.LimitError when this host's limits cannot hold them."""
    clients = config.clients if peak_clients is None else peak_clients
    if config.launcher == "local":
        check_ports(config, clients)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    changes: dict[str, int] = {}
    for asked, flag in ((config.rlimit_nofile, "--rlimit-nofile"),
                        (config.client_rlimit_nofile, "--client-rlimit-nofile")):  # fmt: skip
        if asked is not None:
            problem = limits.shortfall(asked, f"{flag} {asked}")
            if problem is not None:
                raise limits.LimitError(problem)
    if config.rlimit_nofile is None:
        need = server_descriptors(clients, config.max_open_files, config.backlog)
        what = (
            f"{clients} clients in one server ({clients} connections, --max-open-files "
            f"{config.max_open_files}, an accept burst of up to --backlog {config.backlog} and a "
            f"reserve)"
        )
        problem = limits.shortfall(need, what)
        if problem is not None:
            most = connection_budget(limits.ceiling(), config.max_open_files, config.backlog)
            raise limits.LimitError(
                f"{problem}; or use fewer clients (at most {max(most, 0)} fit under this limit "
                f"with these settings) or a smaller --max-open-files or --backlog"
            )
        if need > hard:
            changes["rlimit_nofile"] = need
    if config.client_rlimit_nofile is None and config.launcher == "local":
        processes = launch.client_processes(replace(config, clients=clients))
        share = math.ceil(clients / processes)
        need = client_descriptors(share)
        problem = limits.shortfall(need, f"{share} clients in each of {processes} client processes")
        if problem is not None:
            fewest = fewest_processes(clients, limits.ceiling())
            more = f"; or use --processes {fewest}" if fewest else ""
            raise limits.LimitError(f"{problem}{more}")
        if need > hard:
            changes["client_rlimit_nofile"] = need
    return replace(config, **changes) if changes else config


def most_clients(config: PointConfig, top: int = 1 << 24) -> int:
    """The most clients `config` can run with on this host (its limits, as `fit` judges them);
    0 when not even one fits."""
    low, high = 0, top + 1  # fit(low) holds, fit(high) fails
    while high - low > 1:
        middle = (low + high) // 2
        try:
            fit(replace(config, clients=middle))
        except limits.LimitError:
            high = middle
        else:
            low = middle
    return low
