"""The settings of each role: every default, unit, help text and check, declared once.

One model per role: ServerConfig (`msgprof server`), ClientConfig (`msgprof client`) and
PointConfig (`msgprof point` and `msgprof master`; the workflow's config/config.yaml and its schema
describe the same settings, and tests/test_config.py holds them to these defaults). Each field
holds its default and how the command line gives and checks it (msgprof.setting). From these:

- the options of `msgprof server|client|point|master` and the command line of every child
  process (msgprof.commands: the experiment starts its server and client processes with it, the
  workflow its points and the master case);
- the checks: a value is checked once, where it enters, by argparse when it comes from a command
  line and by the model's constructor when it comes from code, with the setting's one check.

A setting two roles share is declared in one base: ServerOptions (what a point passes on to its
server) and LoadOptions (what a point passes on to its client processes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from msgprof.client_ids import client_id_list, format_client_ids, parse_client_ids
from msgprof.setting import (
    Checked,
    choice,
    flag,
    non_negative_float,
    non_negative_int,
    path,
    positive_float,
    positive_int,
    reworded,
    setting,
    switch,
)
from msgprof.templates import argv_template, server_template

ACK_MODES = ("buffer", "write", "fsync")
SYNC_METHODS = ("auto", "fdatasync", "syncfs")
STORE_KINDS = ("file", "none")
START_MODES = ("on_connect", "all_connected")
#: How a paced client spaces its sends (msgprof.load.pacing).
ARRIVALS = ("uniform", "poisson")
#: Most messages a paced client may have in flight: the server queues at most this many unread
#: acks per connection (docs/protocol.md) and drops the rest.
MAX_IN_FLIGHT = 1000
EVENT_LOOPS = ("auto", "epoll", "poller")
#: Where a point's client processes run (msgprof.experiment.launch).
LAUNCHERS = ("local", "srun")
#: How a point checks what its server stored: auto is file for msgprof's server, none for a
#: --server-command (msgprof.experiment.foreign).
VERIFY_MODES = ("auto", "file", "none", "command")

# --- checks -------------------------------------------------------------------------------


def zmq_endpoint(value: str) -> str | None:
    if value.startswith(("tcp://", "ipc://", "inproc://")):
        return None
    return f"must be a ZeroMQ endpoint like tcp://127.0.0.1:0, not {value!r}"


def in_flight_window(value: int) -> str | None:
    if not 1 <= value <= MAX_IN_FLIGHT:
        return f"must be 1..{MAX_IN_FLIGHT}, got {value}"
    return None


# --- the models --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ServerOptions(Checked):
    """The server settings a point also takes and passes on to its server."""

    ack_after: str = choice(
        "write",
        ACK_MODES,
        help="when a message is acknowledged: buffer (in process memory, flushed every "
        "--flush-interval-ms), write (reached the OS: survives a killed server), fsync "
        "(fdatasync'd by group commit: survives power loss). Default: %(default)s",
    )
    sync_method: str = choice(
        "auto",
        SYNC_METHODS,
        help="how fsync mode and the flusher make data durable: fdatasync (each file), syncfs "
        "(one call for the whole filesystem: group commit across clients) or auto (syncfs from "
        "3 files on). Default: %(default)s",
    )
    flush_interval_ms: float = positive_float(
        10.0,
        unit="ms",
        help="buffer mode: how often the background flusher writes and syncs, in milliseconds "
        "(write mode moves its logged records every 100 ms). Default: %(default)s",
    )
    backlog: int = positive_int(
        1024,
        help="ZMQ_BACKLOG: pending TCP connections the listen queue holds (the kernel caps it "
        "at net.core.somaxconn). Default: %(default)s",
    )
    max_open_files: int = positive_int(
        256, help="most queue files the server keeps open at once (LRU). Default: %(default)s"
    )
    max_payload_bytes: int = non_negative_int(
        1 << 20,
        unit="bytes",
        help="largest payload accepted, in bytes; larger ones get TOO_LARGE. Default: %(default)s",
    )
    store: str = choice(
        "file",
        STORE_KINDS,
        help="file: per-client queue files (the real server); none: sequence checks only, no "
        "storage (to measure protocol cost apart from storage). Default: %(default)s",
    )
    rlimit_nofile: int | None = positive_int(
        None,
        help="soft RLIMIT_NOFILE of the server process (above the hard limit needs "
        "CAP_SYS_RESOURCE). Default: the hard limit, or what a point's clients need if more",
    )


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ServerOptions):
    """Everything `msgprof server` is told; recorded verbatim in its stats."""

    data_dir: Path | None = path(help="directory of the per-client queues (created)")
    ready_file: Path | None = path(
        help="written atomically once the server accepts connections: first line the bound "
        "endpoint (tcp://127.0.0.1:PORT), second line the pid",
    )
    bind: str = setting(
        "tcp://127.0.0.1:0",
        check=zmq_endpoint,
        help="endpoint to bind; port 0 picks a free port. Default: %(default)s",
    )
    max_sockets: int = positive_int(
        1024, help="ZMQ MAX_SOCKETS of the server's context. Default: %(default)s"
    )
    stats_out: Path | None = path(
        help="statistics as JSON: written at exit, and on SIGUSR1 while running"
    )
    heartbeat_ms: int = non_negative_int(
        10_000,
        unit="ms",
        help="ZMTP heartbeat interval in milliseconds; a peer silent for 3 intervals is dropped "
        "(0: off). Default: %(default)s",
    )
    handshake_timeout_ms: int = non_negative_int(
        10_000,
        unit="ms",
        help="milliseconds a new connection has to complete the ZMTP handshake. "
        "Default: %(default)s",
    )
    curve_secret: Path | None = path(
        help="turn CURVE on: the server's secret certificate (NAME.key_secret from msgprof keygen)"
    )
    curve_allow: Path | None = path(
        help="directory of the client public certificates (*.key) the server admits"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.store == "file" and self.data_dir is None:
            raise ValueError("--data-dir is required unless --store none")
        if (self.curve_secret is None) != (self.curve_allow is None):
            raise ValueError("CURVE needs both --curve-secret and --curve-allow")


@dataclass(frozen=True, kw_only=True)
class LoadOptions(Checked):
    """The client settings a point also takes and passes on to its client processes. The
    defaults are those of a measured point, so that a lone `msgprof client` behaves like one."""

    payload_bytes: int = non_negative_int(
        64, unit="bytes", help="bytes per payload. Default: %(default)s"
    )
    timeout_s: float = positive_float(
        10.0,
        unit="s",
        help="seconds to wait for each ack before recording a timeout. Default: %(default)s",
    )
    #: The handshake must be seen within this, else the client is recorded as not connected.
    #: Thousands of clients connecting through one listen backlog take seconds.
    connect_timeout_s: float = positive_float(
        60.0,
        unit="s",
        help="seconds for a client's handshake before it counts as not connected. "
        "Default: %(default)s",
    )
    deadline_s: float = positive_float(
        900.0,
        unit="s",
        help="bound on the whole run in seconds; what is unsent then is recorded. "
        "Default: %(default)s",
    )
    start: str = choice(
        "on_connect",
        START_MODES,
        help="on_connect: each client sends as soon as it has connected; all_connected: every "
        "client (of a point: of all its processes) connects first, then all send together, so "
        "all are active at once and setup is timed without message traffic. "
        "Default: %(default)s",
    )
    #: Open loop (msgprof.load.pacing): each client sends on a schedule of `rate` messages a
    #: second and latency runs from each message's intended send time. None: the closed loop.
    rate: float | None = positive_float(
        None,
        metavar="R",
        help="pace each client at R messages per second (an open loop: latency is measured "
        "from each message's intended send time, so a stall costs every message it delays). "
        "Default: a closed loop, one message in flight, the next sent when the reply is read",
    )
    arrivals: str = choice(
        "uniform",
        ARRIVALS,
        help="with --rate: uniform (every 1/R s, from a random phase per client) or poisson "
        "(exponential gaps of mean 1/R s). Default: %(default)s",
    )
    duration_s: float | None = positive_float(
        None,
        unit="s",
        help="with --rate, instead of --messages: each client sends for this many seconds "
        "from its first scheduled send",
    )
    max_in_flight: int = setting(
        1,
        parse=int,
        check=in_flight_window,
        help="with --rate: most messages a client has awaiting their replies (1..1000: the "
        "server queues at most 1,000 unread acks per connection); a scheduled send that finds "
        "the window full goes out when a reply frees it, and its latency still counts from the "
        "scheduled time. Default: %(default)s",
    )
    #: msgprof.load.sockets: one address's ephemeral ports do not cap a loopback server's clients
    clients_per_source: int = non_negative_int(
        10_000,
        help="with a server on 127.0.0.0/8: clients that share one source address (ids 1..N "
        "connect from 127.0.0.2, the next N from 127.0.0.3, ...), each address having about "
        "28,000 ephemeral ports; 0: the kernel's choice, one address for all. "
        "Default: %(default)s",
    )
    connect_rate: float | None = positive_float(
        None,
        metavar="C",
        help="connects a second of each client process: a steady arrival instead of a storm. "
        "Default: as fast as the connect window allows",
    )
    client_rlimit_nofile: int | None = positive_int(
        None,
        help="soft RLIMIT_NOFILE of each client process (above the hard limit needs "
        "CAP_SYS_RESOURCE). Default: the hard limit, or what its clients need if more",
    )
    warmup_s: float = non_negative_float(
        0.0,
        unit="s",
        help="messages scheduled in the first W seconds of each client's load are kept in "
        "rtt.parquet (column warmup) and left out of every summary. Default: %(default)s",
    )

    def pacing_problem(self, messages: int | None) -> str | None:
        """What is wrong with the load's length and pacing settings together, or None."""
        if self.rate is None:
            for name, unset in (("duration_s", None), ("arrivals", "uniform"),
                                ("max_in_flight", 1)):  # fmt: skip
                if getattr(self, name) != unset:
                    return (f"{flag(name)} needs --rate (a closed loop keeps one message in "
                            "flight and is counted in --messages)")  # fmt: skip
            if messages is None:
                return "--messages is required"
            return None
        if messages is not None and self.duration_s is not None:
            return "give --messages or --duration-s, not both"
        if messages is None and self.duration_s is None:
            return "--rate needs --messages or --duration-s (how long each client sends)"
        if messages == 0:
            return "--rate needs at least one message (--messages 0 only connects)"
        if self.duration_s is not None and self.warmup_s >= self.duration_s:
            return f"--warmup-s {self.warmup_s:g} must be shorter than --duration-s"
        return None

    def messages_per_client(self, messages: int | None) -> float:
        """Messages each client is to send: `messages`, or rate × duration when timed (the
        expected count; a Poisson schedule varies around it)."""
        if messages is not None:
            return messages
        return (self.rate or 0.0) * (self.duration_s or 0.0)


@dataclass(frozen=True)
class ClientConfig(LoadOptions):
    """What one load-generator process plays (`msgprof client`). Times are seconds."""

    endpoint: str = setting(help="server endpoint, e.g. tcp://127.0.0.1:5555")
    client_ids: Sequence[int] = setting(
        parse=parse_client_ids,
        show=format_client_ids,
        check=client_id_list,
        help="client ids this process plays: a range 1-100, a list 1,5,9 or a mix 1-10,20",
    )
    messages: int | None = non_negative_int(
        None, help="messages per client (0: connect only, to time setup)"
    )
    #: At most this many clients connecting (holding a socket monitor) at once. Measured with
    #: 5000 clients: the time to connect all is the same for 16..1024, but each client's
    #: connect_ns grows with the window (queueing behind its own siblings), so keep it small.
    connect_window: int = positive_int(
        32,
        help="most clients connecting at once (each holds a socket monitor while it connects). "
        "Default: %(default)s",
    )
    event_loop: str = choice(
        "auto",
        EVENT_LOOPS,
        help="how the process waits on its sockets: epoll (Linux, scales to thousands) or "
        "zmq.Poller. Default: %(default)s",
    )
    max_sockets: int | None = positive_int(
        None,
        help="ZMQ MAX_SOCKETS of the client context. Default: sized from the number of clients",
    )
    resend: bool = switch(
        help="keep going through a lost connection or a missing ack: send the message in "
        "flight again (same seq) on reconnect and after --timeout-s, until it is acknowledged "
        "(OK or DUPLICATE) or --deadline-s passes; for crash-recovery runs. Default: a timeout "
        "stops the client",
    )
    first_seq: int = positive_int(
        1,
        help="seq of each client's first message: clients that go on with the sequences of an "
        "earlier process (the server answers OUT_OF_ORDER to a gap). Default: %(default)s",
    )
    start_barrier: Path | None = path(
        help="with --start all_connected: a directory the client processes of one point share; "
        "each sends once all (the number in DIR/parties) have connected, or after "
        "--connect-timeout-s",
    )
    echo: bool = switch(
        help="the peer echoes each request unchanged (msgprof calibrate's proxy): a reply that "
        "repeats the message in flight counts as its ack",
    )
    #: CURVE: this client's secret certificate and the server's public certificate (both or
    #: neither). All clients of the process use the one key pair.
    curve_secret: Path | None = path(
        help="turn CURVE on: this client's secret certificate "
        "(NAME.key_secret from msgprof keygen)",
    )
    curve_server_key: Path | None = path(
        help="the server's public certificate (NAME.key) the clients trust"
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "client_ids", tuple(int(i) for i in self.client_ids))
        super().__post_init__()
        if (self.curve_secret is None) != (self.curve_server_key is None):
            raise ValueError("CURVE needs both --curve-secret and --curve-server-key")
        problem = self.pacing_problem(self.messages)
        if problem is None and self.rate is not None and self.resend:
            problem = "--resend is for closed-loop crash runs; it does not go with --rate"
        if problem is None and self.rate is not None and self.echo:
            problem = (
                "--echo is for the closed loop (msgprof calibrate); it does not go with --rate"
            )
        if problem is not None:
            raise ValueError(problem)


@dataclass(frozen=True, kw_only=True)
class PointConfig(LoadOptions, ServerOptions):
    """Parameters of one point (`msgprof point`) or of the master case (`msgprof master`, whose
    steps set clients, messages and first_client_id); recorded verbatim in point.json. The
    workflow's config sets the same fields (workflow/schemas/config.schema.yaml)."""

    clients: int = positive_int(help="number of clients")
    messages: int | None = positive_int(
        None, help="messages per client (a paced point may give --duration-s instead)"
    )
    first_client_id: int = positive_int(
        1, help="id of the first client; the others follow. Default: %(default)s"
    )
    processes: int | None = positive_int(
        None, help="client processes sharing the clients. Default: the number of usable cores"
    )
    timeout_s: float = reworded(
        LoadOptions,
        "timeout_s",
        help="seconds each client waits for an ack before recording a timeout. "
        "Default: %(default)s",
    )
    deadline_s: float = reworded(
        LoadOptions,
        "deadline_s",
        help="bound in seconds on the clients of a point (of each step). Default: %(default)s",
    )
    #: A point starts its clients together, unlike a lone `msgprof client`: its throughput is
    #: counted while all clients are active at once, and setup is timed without message traffic.
    start: str = reworded(LoadOptions, "start", default="all_connected")
    data_dir: Path | None = path(
        help="where the server's queues go (must be new or empty). Default: OUT/queues, "
        "deleted after verification unless --keep-queues",
    )
    keep_queues: bool = switch(help="keep the queue files after verification")
    #: msgprof.experiment.profiler: where the server's CPU goes, sampled for the whole point.
    profile: bool = switch(
        help="sample the server with py-spy for the whole point: OUT/profile/ gets "
        "server.speedscope.json and top.csv (CPU share per function)",
    )
    profile_clients: bool = switch(
        help="sample each client process with py-spy too: OUT/profile/client-K/ gets its "
        "top.csv and flame graph (a saturated load generator is a measurement error)",
    )
    profile_rate_hz: int = positive_int(
        20,
        help="when profiling (--profile*, --profile-out): samples a second (100 costs the "
        "server about 10%% of its throughput here). Default: %(default)s",
    )
    profile_native: bool = switch(
        help="when profiling (--profile*, --profile-out): sample the C frames too (libzmq, "
        "the interpreter)"
    )
    profile_threads: bool = switch(
        help="when profiling (--profile*, --profile-out): each thread a root of its own (the "
        "serving loop apart from the store's flusher and the gatekeeper)"
    )
    #: CURVE on: keys are made for the run in keys_dir.
    curve: bool = switch(
        help="encrypt and authenticate with CURVE: fresh keys for the server and the clients of "
        "this run (to measure what security costs)",
    )
    # Where the clients run and what the server binds: see msgprof.experiment.launch, which
    # also checks both against this host (a SLURM allocation for srun) when a run starts.
    launcher: str = choice(
        "local",
        LAUNCHERS,
        help="where the client processes run. local: on this host. srun: inside a SLURM "
        "allocation, as job steps on the other nodes (on this node when it is the only one). "
        "Default: %(default)s",
    )
    bind: str | None = setting(
        None,
        metavar="HOST[:PORT]",
        help="address the server binds and the clients connect to (a wildcard is refused). "
        "Default: 127.0.0.1 with --launcher local, this node's SLURM NodeAddr with srun",
    )
    #: A server that is not msgprof's (msgprof.experiment.foreign; docs/protocol.md).
    server_command: str | None = setting(
        None,
        check=server_template,
        metavar="'COMMAND'",
        help="run this server instead of `msgprof server`: its command line, split as a shell "
        "would (never run by one), with {ready} (a file it writes its endpoint to, the first "
        "line, once it accepts connections), {data} (a directory it may use) and {port} (a "
        "free port msgprof chooses, for a server that writes no ready file: ready once it "
        "accepts a TCP connection). Stopped with SIGTERM, then SIGKILL",
    )
    verify: str = choice(
        "auto",
        VERIFY_MODES,
        help="how the point checks that every acknowledged message was stored. file: read "
        "msgprof's queue files back; none: not checked (lost is unknown, never 0); command: "
        "run --verify-command. Default: auto, file for msgprof's server and none for "
        "--server-command",
    )
    verify_command: str | None = setting(
        None,
        check=argv_template,
        metavar="'COMMAND'",
        help="with --verify command: a command line ({data}: the server's directory) run after "
        "the server stopped, that prints one line per client, CLIENT_ID HIGHEST_STORED_SEQ; "
        "an acknowledged message above its client's highest stored seq is lost",
    )
    #: Where a CURVE run's keys are: set by the run (msgprof.experiment.lifecycle), not by a user.
    keys_dir: Path | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        problem = self.pacing_problem(self.messages)
        if problem is not None:
            raise ValueError(problem)
        if self.verify == "command" and self.verify_command is None:
            raise ValueError("--verify command needs --verify-command")
        if self.verify == "file" and self.server_command is not None:
            raise ValueError("--verify file reads msgprof's queue files: a --server-command "
                             "server needs --verify none or command")  # fmt: skip
        if self.server_command is not None and self.curve:
            raise ValueError("--curve makes keys for msgprof's server; a --server-command "
                             "server brings its own security")  # fmt: skip

    @property
    def verification(self) -> str:
        """file, none or command: what --verify auto means for this point's server."""
        if self.verify != "auto":
            return self.verify
        if self.server_command is not None:
            return "none"
        return "file" if self.store == "file" else "none"

    @property
    def paced(self) -> bool:
        return self.rate is not None

    @property
    def offered_msgs_per_s(self) -> float | None:
        """The aggregate rate a paced point offers the server (None: a closed loop)."""
        return None if self.rate is None else self.rate * self.clients


def setting_names(model: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(model))


def shared(model: type, config: Any) -> dict[str, Any]:
    """The values of `config` for the settings of `model`, a base it shares with another role
    (what a point passes on to its server: shared(ServerOptions, point))."""
    return {name: getattr(config, name) for name in setting_names(model)}
