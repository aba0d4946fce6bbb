"""The settings of each role (server, client, point): every default and check in one place.

The command line, child-process command lines and the workflow schema all take their defaults
from these models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from msgprof.experiment import launch
from msgprof.wire.protocol import MAX_CLIENT_ID

ACK_MODES = ("buffer", "write", "fsync")
SYNC_METHODS = ("auto", "fdatasync", "syncfs")
STORE_KINDS = ("file", "none")

#: At most this many ids in one process (a typo such as "1-2000000000" fails early).
MAX_IDS_PER_PROCESS = 1_000_000
_ID_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


@dataclass(frozen=True, kw_only=True)
class ServerOptions:
    """The server options a sweep point also takes (and passes on): one place for their defaults."""

    store: str = "file"
    ack_after: str = "write"
    sync_method: str = "auto"
    flush_interval_ms: float = 10.0
    backlog: int = 1024
    max_open_files: int = 256
    max_payload_bytes: int = 1 << 20
    rlimit_nofile: int | None = None


@dataclass(frozen=True, kw_only=True)
class ServerConfig(ServerOptions):
    """Everything `msgprof server` is told; recorded verbatim in its stats."""

    data_dir: Path | None = None
    ready_file: Path | None = None
    bind: str = "tcp://127.0.0.1:0"
    max_sockets: int = 1024
    stats_out: Path | None = None
    heartbeat_ms: int = 10_000
    handshake_timeout_ms: int = 10_000
    curve_secret: Path | None = None
    curve_allow: Path | None = None

    def check(self) -> None:
        """Raise ValueError with a user-facing message for an impossible configuration."""
        if self.store not in STORE_KINDS:
            raise ValueError(f"--store must be one of {', '.join(STORE_KINDS)}, not {self.store!r}")
        if self.store == "file" and self.data_dir is None:
            raise ValueError("--data-dir is required unless --store none")
        if self.ack_after not in ACK_MODES:
            raise ValueError(f"--ack-after must be one of {', '.join(ACK_MODES)}")
        if self.sync_method not in SYNC_METHODS:
            raise ValueError(f"--sync-method must be one of {', '.join(SYNC_METHODS)}")
        for name in ("backlog", "max_open_files", "max_sockets"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.flush_interval_ms <= 0:
            raise ValueError("--flush-interval-ms must be positive")
        if self.max_payload_bytes < 0:
            raise ValueError("--max-payload-bytes must not be negative")
        if (self.curve_secret is None) != (self.curve_allow is None):
            raise ValueError("CURVE needs both --curve-secret and --curve-allow")
        if self.heartbeat_ms < 0 or self.handshake_timeout_ms < 0:
            raise ValueError("--heartbeat-ms and --handshake-timeout-ms must not be negative")
        if not self.bind.startswith(("tcp://", "ipc://", "inproc://")):
            raise ValueError(f"--bind must be a ZeroMQ endpoint like tcp://127.0.0.1:0, not {self.bind!r}")


@dataclass(frozen=True)
class ClientConfig:
    """What one load-generator process plays. Times are seconds."""

    endpoint: str
    #: Ids this process plays; each gets its own DEALER socket and TCP connection.
    client_ids: Sequence[int]
    #: Messages per client (0: connect only, to measure setup time).
    messages: int
    payload_bytes: int = 64
    #: Per message: a reply not seen within this is recorded as TIMEOUT.
    timeout_s: float = 5.0
    #: Whole run: when passed, stop; in-flight messages are TIMEOUT, the rest not sent.
    deadline_s: float = 600.0
    #: The handshake must be seen within this, else the client is recorded as not connected.
    connect_timeout_s: float = 10.0
    #: zmq MAX_SOCKETS for the context; None: sized from the number of clients.
    max_sockets: int | None = None
    #: At most this many clients connecting (holding a socket monitor) at once. Measured with
    #: 5000 clients: the time to connect all is the same for 16..1024, but each client's
    #: connect_ns grows with the window (queueing behind its own siblings), so keep it small.
    connect_window: int = 32
    #: "epoll" (Linux: each socket's ZMQ_FD in one epoll set), "poller" (zmq.Poller) or "auto".
    event_loop: str = "auto"
    #: "on_connect": each client sends its first message right after its connect().
    #: "all_connected": every client connects first; then all connected clients send at once,
    #: so all of them are active together and setup is measured without message traffic.
    start: str = "on_connect"
    #: Resend mode: a lost connection or a missing reply does not stop a client; the message in
    #: flight is sent again (same seq) on reconnect and on timeout, until settled or the deadline.
    resend: bool = False
    #: CURVE: this client's secret certificate and the server's public certificate (both or
    #: neither). All clients of the process use the one key pair.
    curve_secret: Path | None = None
    curve_server_key: Path | None = None

    def __post_init__(self) -> None:
        if (self.curve_secret is None) != (self.curve_server_key is None):
            raise ValueError("CURVE needs both --curve-secret and --curve-server-key")
        ids = tuple(int(i) for i in self.client_ids)
        object.__setattr__(self, "client_ids", ids)
        if not ids:
            raise ValueError("no client ids")
        bad = [i for i in ids if not 1 <= i <= MAX_CLIENT_ID]
        if bad:
            raise ValueError(f"client ids must be 1..{MAX_CLIENT_ID}, got {bad[0]}")
        if len(set(ids)) != len(ids):
            raise ValueError("client ids must be unique")
        if self.messages < 0:
            raise ValueError(f"messages must be >= 0, got {self.messages}")
        if self.payload_bytes < 0:
            raise ValueError(f"payload_bytes must be >= 0, got {self.payload_bytes}")
        for name in ("timeout_s", "deadline_s", "connect_timeout_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.connect_window < 1:
            raise ValueError(f"connect_window must be >= 1, got {self.connect_window}")
        if self.event_loop not in ("auto", "epoll", "poller"):
            raise ValueError(f"event_loop must be auto, epoll or poller, got {self.event_loop!r}")
        if self.start not in ("on_connect", "all_connected"):
            raise ValueError(f"start must be on_connect or all_connected, got {self.start!r}")


def parse_client_ids(text: str) -> list[int]:
    """Parse ``"5"``, ``"1-100"`` or ``"1,2,7-9"`` into ids, in the order given.

    Raises ValueError for anything else: an empty list, 0, a reversed range, an id above
    2**31-1, an id given twice (also through overlapping ranges), or more than
    MAX_IDS_PER_PROCESS ids.
    """
    if not text.strip():
        raise ValueError("empty client id list")
    ids: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        m = _ID_PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad client id {part.strip()!r} in {text!r}: expected N or A-B")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if lo < 1 or hi > MAX_CLIENT_ID:
            raise ValueError(f"client ids must be 1..{MAX_CLIENT_ID}: {part.strip()!r}")
        if hi < lo:
            raise ValueError(f"reversed range {part.strip()!r}: write {hi}-{lo}")
        if len(ids) + hi - lo + 1 > MAX_IDS_PER_PROCESS:
            raise ValueError(f"more than {MAX_IDS_PER_PROCESS} client ids in {text!r}")
        new = range(lo, hi + 1)
        if not seen.isdisjoint(new):
            dup = next(i for i in new if i in seen)
            raise ValueError(f"client id {dup} given twice in {text!r}")
        seen.update(new)
        ids.extend(new)
    return ids


def format_client_ids(ids: Sequence[int]) -> str:
    """The compact form parse_client_ids reads: runs of consecutive ids become ``A-B``."""
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class PointConfig(ServerOptions):
    """Parameters of one point; recorded verbatim in point.json. The server options
    (ServerOptions: store, ack_after, ...) are keyword-only."""

    clients: int
    messages: int
    payload_bytes: int = 64
    processes: int | None = None
    timeout_s: float = 10.0
    connect_timeout_s: float = 60.0
    deadline_s: float = 900.0
    first_client_id: int = 1
    data_dir: Path | None = None
    keep_queues: bool = False
    start: str = "all_connected"
    # Where the clients run and what the server binds: see msgprof.launch.
    launcher: str = "local"
    bind: str | None = None
    #: CURVE on: keys are made for the run in keys_dir (set by the runner, not by the user).
    curve: bool = False
    keys_dir: Path | None = None

    def __post_init__(self) -> None:
        launch.check(self.launcher, self.bind)

    def client_processes(self) -> int:
        """Processes to start: the option, else the usable cores, never more than clients."""
        if self.launcher != "local":
            return launch.client_processes(self, len(os.sched_getaffinity(0)))
        wanted = self.processes or len(os.sched_getaffinity(0))
        return max(1, min(wanted, self.clients))
