"""The message-processing server: one ROUTER socket, a file-backed queue per client, an ack each.

The loop drains every message that is ready before blocking again, so one `commit` (one write,
or one fdatasync in `fsync` mode) serves the whole burst: that is what makes group commit work.
Nothing a peer sends can stop the loop: undecodable frames are counted by kind and dropped,
readable-but-invalid requests are answered with an error status.
"""

from __future__ import annotations

import array
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MethodType
from typing import Any

import numpy as np  # loaded at start: a stats snapshot in a storm must not need descriptors
import zmq

from msgprof import atomic, limits
from msgprof.config import ServerConfig
from msgprof.ratelog import Throttled
from msgprof.server.admission import (
    FD_RESERVE,
    MONITOR_EVENTS,
    Admission,
    accept_burst,
    connection_budget,
    somaxconn,
)
from msgprof.server.heap import HeapTrimmer
from msgprof.server.listener import Listener, listen
from msgprof.server.nullstore import NullStore
from msgprof.server.samples import ServiceTimes
from msgprof.stats import quantiles
from msgprof.store.descriptors import DescriptorReserve, store_descriptors
from msgprof.store.errors import StorageFull, StoreError
from msgprof.store.queue import QueueStore
from msgprof.wire import protocol, security
from msgprof.wire.protocol import Rejected, Status, Unanswerable

log = logging.getLogger("msgprof.server")

#: Messages taken from the socket before one commit: bounds the latency a burst adds.
MAX_BURST = 1024
#: How often the loop wakes with no traffic, to notice a stop request (ms).
IDLE_POLL_MS = 100
#: Messages queued per peer in each direction (closed-loop clients have one in flight).
PEER_HWM = 1000
#: Socket-monitor events queued for the gatekeeper's thread (about 100 bytes each).
MONITOR_HWM = 100_000

_STATUS_NAMES = {int(s): s.name for s in Status}
# Plain ints: the per-message path compares and stores statuses without enum lookups.
_OK, _DUPLICATE, _OUT_OF_ORDER = int(Status.OK), int(Status.DUPLICATE), int(Status.OUT_OF_ORDER)
_NOBLOCK = int(zmq.NOBLOCK)
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)
#: A reply waiting for the burst's commit: (identity, status, the request's echo (the ACK's
#: last 20 bytes), receive time, client id (0 for a rejected request)).
Reply = tuple[bytes, int, bytes, int, int]
_SNDMORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_HEADER_SIZE, _DATA_PREFIX = protocol.HEADER_SIZE, protocol.DATA_PREFIX
_ECHO_OFFSET, _MAX_CLIENT_ID = protocol.ECHO_OFFSET, protocol.MAX_CLIENT_ID


def store_status(err: StoreError) -> Status:
    """The answer to a record the store refused: the store names its failures, the server
    chooses the reply (STORAGE_FULL says a retry may succeed once there is room)."""
    return Status.STORAGE_FULL if isinstance(err, StorageFull) else Status.STORAGE_ERROR


@dataclass
class Counters:
    """What the server saw, by kind; written to the stats JSON at exit."""

    received: int = 0
    stored: int = 0
    replies: Counter = field(default_factory=Counter)  # by status name
    rejected: Counter = field(default_factory=Counter)  # by defect kind (answered or not)
    unanswered: int = 0
    unroutable: int = 0  # peer gone before its ack could be sent (ROUTER_MANDATORY)
    reply_dropped_hwm: int = 0
    client_id_takeovers: int = 0  # a client id arrived from another connection than before
    bursts: int = 0
    peak_burst: int = 0


class Server:
    """One ROUTER socket in front of a QueueStore; `run()` serves until `stop()`."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config  # checked when it was made
        self.counters = Counters()
        self._service_ns = ServiceTimes()
        self._stopping = False
        self._snapshots_wanted = 0
        self._snapshots_written = 0
        self._samples_at_snapshot = 0  # service samples taken before the last snapshot
        self._started_ns = time.time_ns()
        self.endpoint: str | None = None
        self._snapshot_warning = Throttled(log)
        self._descriptors_at_stop: dict[str, int] | None = None
        self._owner: dict[int, bytes] = {}  # client id -> routing id of its latest connection
        self._lone = True  # the last burst was a single message (see _serve_burst)
        self.heap = HeapTrimmer()
        burst = self._descriptor_budget()
        self.admission = Admission(self.nofile[0], self.max_connections, burst + 1)
        self._open_store()
        self.ctx = zmq.Context(io_threads=1)
        self.ctx.set(zmq.MAX_SOCKETS, config.max_sockets)
        self.router = self._router()
        self._events = MethodType(zmq.backend.Socket.get, self.router)  # asks ZMQ_EVENTS
        # the backend's send: the sugar's adds a Python call per frame (two frames an ACK)
        self._send = MethodType(zmq.backend.Socket.send, self.router)
        self._listen()

    def _descriptor_budget(self) -> int:
        """Set the descriptor limit and the connection budget; the accept burst it assumes.

        Queue files (LRU cap), one accept burst (up to the listen backlog, accepted by libzmq
        before the server hears of it) and a reserve come first; connections get the rest. A
        connection past it is refused at its handshake, and the listener takes no new ones while
        refusals in flight would reach the limit (msgprof.server.admission); the store's
        descriptors are held for it from the start (msgprof.store.descriptors), so no
        connection can take them.
        """
        config = self.config
        self.nofile = limits.raise_nofile(config.rlimit_nofile)
        if config.rlimit_nofile is not None and config.rlimit_nofile < self.nofile[0]:
            self.nofile = limits.lower_nofile(config.rlimit_nofile)
        burst = accept_burst(config.backlog)
        self.max_connections = connection_budget(
            self.nofile[0], config.max_open_files, config.backlog
        )
        if self.max_connections < 1:
            raise ValueError(
                f"descriptor limit {self.nofile[0]} leaves no room for connections after "
                f"--max-open-files {config.max_open_files}, the accept burst ({burst}) and "
                f"{FD_RESERVE} reserved; lower --backlog or --max-open-files, or raise the limit"
            )
        return burst

    def _open_store(self) -> None:
        """The queues (recovered), drawing their descriptors from a reserve of their own."""
        config = self.config
        self.store: QueueStore | NullStore
        self.descriptors: DescriptorReserve | None = None
        if config.store == "none":
            self.store = NullStore()
            return
        self.descriptors = DescriptorReserve(
            store_descriptors(config.max_open_files), exclusive=self.admission.exclusive
        )
        try:
            self.store = QueueStore(
                Path(config.data_dir),
                ack_after=config.ack_after,
                sync_method=config.sync_method,
                flush_interval_ms=config.flush_interval_ms,
                max_open_files=config.max_open_files,
                files=self.descriptors,
            )
        except BaseException:
            self.descriptors.close_all()
            raise
        for cut in self.store.recovery:
            log.warning("recovery: %s", cut)

    def _router(self) -> zmq.Socket:
        """The ROUTER socket with its limits per peer, heartbeats and (optionally) CURVE."""
        config = self.config
        router = self.ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.BACKLOG, config.backlog)
        router.setsockopt(zmq.LINGER, 1000)
        # Bounded memory per peer: a peer that floods or never reads its acks is held back by
        # TCP (RCVHWM) or loses acks it does not read (SNDHWM, counted); a frame far over the
        # payload limit disconnects its peer instead of being read into memory first.
        router.setsockopt(zmq.RCVHWM, PEER_HWM)
        router.setsockopt(zmq.SNDHWM, PEER_HWM)
        router.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(config.max_payload_bytes))
        # Dead peers (no FIN ever comes) are dropped after missed heartbeats; a peer that
        # connects but never completes the ZMTP handshake is dropped after the handshake timeout.
        if config.heartbeat_ms:
            router.setsockopt(zmq.HEARTBEAT_IVL, config.heartbeat_ms)
            router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * config.heartbeat_ms)
        router.setsockopt(zmq.HANDSHAKE_IVL, config.handshake_timeout_ms)
        return router

    def _listen(self) -> None:
        """Put the gatekeeper in front of every handshake, bind, and say where (ready file)."""
        config = self.config
        allowed = None
        if config.curve_secret is not None:
            allowed = security.curve_server(self.router, config.curve_secret, config.curve_allow)
        elif not security.is_loopback(config.bind):
            log.warning(
                "binding %s, which is not loopback, without CURVE: any host that can reach it can "
                "write to the queues (use --curve-secret and --curve-allow)",
                config.bind,
            )
        # Every handshake asks the gatekeeper: a CURVE key off the allow-list, or a connection
        # past the descriptor budget, is refused before it holds a descriptor for long.
        monitor = _monitor_socket(self.ctx, self.router, MONITOR_EVENTS)
        admission = self.admission
        self.gatekeeper = security.Gatekeeper(
            self.ctx, admission.admit, allowed, monitor, admission.on_event,
            listen_when=admission.wants_gatekeeper, on_listen=admission.gatekeeper_listens,
        )  # fmt: skip
        self.router.zap_domain = b"msgprof"
        self.listener: Listener | None = listen(self.router, config.bind, config.backlog)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.admission.serve(self.listener, limits.open_fds())
        self._log_listening()
        if config.ready_file is not None:
            atomic.write_text(config.ready_file, f"{self.endpoint}\n{os.getpid()}\n")

    def _log_listening(self) -> None:
        config = self.config
        log.info(
            "listening on %s: store=%s ack_after=%s sync_method=%s flush_interval_ms=%s backlog=%d "
            "max_open_files=%d max_payload_bytes=%d max_sockets=%d rlimit_nofile=%d/%d "
            "max_connections=%d somaxconn=%s connection_gate_at=%s",
            self.endpoint,
            config.store,
            config.ack_after,
            config.sync_method,
            config.flush_interval_ms,
            config.backlog,
            config.max_open_files,
            config.max_payload_bytes,
            config.max_sockets,
            *self.nofile,
            self.max_connections,
            somaxconn(),
            self.admission.close_at,
        )

    # -- control -------------------------------------------------------------------------------

    def stop(self, *_: Any) -> None:
        """Ask the loop to finish (safe from a signal handler)."""
        self._stopping = True

    def request_snapshot(self, *_: Any) -> None:
        """Ask the loop to write its stats now and go on serving (safe from a signal handler)."""
        self._snapshots_wanted += 1

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop the server; SIGUSR1 writes a stats snapshot to --stats-out."""
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        signal.signal(signal.SIGUSR1, self.request_snapshot)

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Serve until stopped, then flush, close and return the final stats."""
        # zmq_poll on a list made once: Socket.poll builds a Poller at every call
        poll, ready = zmq.zmq_poll, [(self.router, zmq.POLLIN)]
        self.heap.start()
        try:
            while not self._stopping:
                if poll(ready, IDLE_POLL_MS):
                    self._serve_burst()
                if self._snapshots_wanted != self._snapshots_written:
                    self._write_snapshot()
        finally:
            stats = self._shutdown()
        return stats

    def _serve_burst(self) -> None:
        """Take every ready message (up to MAX_BURST), commit once, then answer all of them."""
        # The identity is read as bytes, the rest as zmq.Frame, which says if more follow (asking
        # the socket costs ~1 us). At least one frame follows the identity, all there at once.
        # After a first message, ZMQ_EVENTS says if another is there: 1.7 us against the 3.7 us
        # of the zmq.Again a recv raises, which would lie between a lone request and its ACK
        # (the backend's get: the sugar's wraps the answer in an enum). Asked only when the last
        # burst was one message too: under load most bursts hold more, and end in zmq.Again.
        recv = self.router.recv
        events = self._events if self._lone else None
        clock = time.perf_counter_ns
        validate = protocol.validate_request
        echo_fields = protocol.ECHO.unpack_from
        store = self.store
        last_seq, append = store.last_seq, store.append
        counters = self.counters
        max_payload = self.config.max_payload_bytes
        owner = self._owner
        replies: list[Reply] = []
        reply = replies.append
        n = 0
        while n < MAX_BURST:
            if n == 1 and events is not None and not events(_EVENTS) & _POLLIN:
                break
            try:
                identity = recv(_NOBLOCK)
            except zmq.Again:
                break
            t_recv = clock()
            n += 1
            frame = recv(_NOBLOCK, copy=False)
            frames = [frame.bytes]
            while frame.more:
                frame = recv(_NOBLOCK, copy=False)
                frames.append(frame.bytes)
            head, payload = frames[0], frames[-1]
            # A valid request passes here; validate() judges others in the contract's order.
            client_id = seq = 0
            if (
                len(frames) == 2
                and len(head) == _HEADER_SIZE
                and head.startswith(_DATA_PREFIX)
                and len(payload) <= max_payload
            ):
                client_id, seq, _ = echo_fields(head, _ECHO_OFFSET)
            if not (client_id and client_id <= _MAX_CLIENT_ID and seq):
                try:
                    header, payload = validate(frames, max_payload)
                except Unanswerable as err:
                    counters.rejected[err.kind] += 1
                    counters.unanswered += 1
                    continue
                except Rejected as err:
                    counters.rejected[err.kind] += 1
                    reply((identity, err.status, protocol.echo_of(err.header), t_recv, 0))
                    continue
                client_id, seq = header.client_id, header.seq
            if owner.get(client_id) != identity:
                if client_id in owner:
                    counters.client_id_takeovers += 1
                owner[client_id] = identity
            last = last_seq(client_id)
            if seq == last + 1:
                append(client_id, seq, payload)
                reply((identity, _OK, head[_ECHO_OFFSET:], t_recv, client_id))
            elif seq <= last:
                reply((identity, _DUPLICATE, head[_ECHO_OFFSET:], t_recv, client_id))
            else:
                counters.rejected["out_of_order"] += 1
                reply((identity, _OUT_OF_ORDER, head[_ECHO_OFFSET:], t_recv, client_id))
        if n == 0:
            return
        self._lone = n == 1
        counters.received += n
        counters.bursts += 1
        if n > counters.peak_burst:
            counters.peak_burst = n
        failures = store.commit()
        self._answer(replies, failures)

    def _answer(self, replies: list[Reply], failures: dict[int, StoreError]) -> None:
        send = self._send
        prefix = protocol.ACK_PREFIX
        counters = self.counters
        sent: dict[int, int] = {}  # replies by status, folded into the named counter once
        stored = 0
        for identity, status, echo, _t, client_id in replies:
            if status == _OK:
                failure = failures.get(client_id) if failures else None
                if failure is not None:
                    status = int(store_status(failure))
                    counters.rejected[failure.kind] += 1
                else:
                    stored += 1
            try:
                send(identity, _SNDMORE_NOBLOCK)  # a ROUTER takes the rest once this is taken
                send(prefix[status] + echo, _NOBLOCK)
            except zmq.Again:
                counters.reply_dropped_hwm += 1
            except zmq.ZMQError as err:
                if err.errno != zmq.EHOSTUNREACH:
                    raise
                counters.unroutable += 1
            sent[status] = sent.get(status, 0) + 1
        by_status = counters.replies
        for status, count in sent.items():
            by_status[_STATUS_NAMES[status]] += count
        counters.stored += stored
        t_done = time.perf_counter_ns()
        self._service_ns.extend([t_done - r[3] for r in replies])

    def _write_snapshot(self) -> None:
        """Stats while running (`"final": false`), numbered so a reader can wait for its own."""
        self._snapshots_written = self._snapshots_wanted
        if self.config.stats_out is None:
            return
        stats = self.stats(self.store.stats(), self.store.disk_bytes(), limits.open_fds())
        stats["final"] = False
        stats["snapshot"] = self._snapshots_written
        try:
            atomic.write_json(self.config.stats_out, stats)
        except OSError as exc:  # no descriptor free for it in a storm: serving goes on
            self._snapshot_warning("cannot write the stats snapshot: %s", exc)
            return
        self._samples_at_snapshot = self._service_ns.count

    # -- shutdown ------------------------------------------------------------------------------

    def _shutdown(self) -> dict[str, Any]:
        """Stop receiving, make everything durable, close, and write the stats."""
        self.heap.stop()
        self.gatekeeper.stop()  # reads the last monitor events, closes the monitor
        self.admission.flush_logs()
        fds_at_stop = limits.open_fds()
        store_stats = self.store.stats()
        disk_bytes = self.store.disk_bytes()
        try:
            self.store.close()
        except StoreError as err:  # the final flush failed: say so, the stats still get written
            log.error("final flush failed: %s", err)
            store_stats["close_error"] = f"{err.kind}: {err}"
        if self.descriptors is not None:
            self._descriptors_at_stop = self.descriptors.stats()
            self.descriptors.close_all()
        self.router.close()
        self.ctx.term()
        if self.listener is not None:
            self.listener.close()
        stats = self.stats(store_stats, disk_bytes, fds_at_stop)
        stats["final"] = True
        stats["snapshot"] = self._snapshots_written
        if self.config.stats_out is not None:
            atomic.write_json(self.config.stats_out, stats)
        log.info(
            "stopped: %d received, %d stored, replies %s, rejected %s",
            stats["received"],
            stats["stored"],
            dict(stats["replies"]),
            dict(stats["rejected"]),
        )
        return stats

    def stats(self, store_stats: dict[str, Any], disk_bytes: int, open_fds: int) -> dict[str, Any]:
        """The final stats document (also the shape of `--stats-out`)."""
        c = self.counters
        return {
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self.config).items()
            },
            "started_unix_ns": self._started_ns,
            "stopped_unix_ns": time.time_ns(),
            "received": c.received,
            "stored": c.stored,
            "replies": dict(c.replies),
            "rejected": dict(c.rejected),
            "unanswered": c.unanswered,
            "unroutable": c.unroutable,
            "reply_dropped_hwm": c.reply_dropped_hwm,
            "connections": self.admission.stats(),
            "store_descriptors": (
                self._descriptors_at_stop
                if self._descriptors_at_stop is not None or self.descriptors is None
                else self.descriptors.stats()
            ),
            "client_id_takeovers": c.client_id_takeovers,
            "curve": self.config.curve_secret is not None,
            "refused_unknown_key": self.gatekeeper.refused_key,
            "bursts": c.bursts,
            "peak_burst": c.peak_burst,
            "service_ns": _quantiles(self._service_ns.all()),
            "service_ns_since_snapshot": _quantiles(
                self._service_ns.since(self._samples_at_snapshot)
            ),
            "open_fds_at_stop": open_fds,
            "heap_trim": self.heap.stats(),
            "rlimit_nofile": {"soft": self.nofile[0], "hard": self.nofile[1]},
            "store": store_stats,
            "disk_bytes": disk_bytes,
            "recovery_cuts": [str(cut) for cut in self.store.recovery],
        }


def _monitor_socket(ctx: zmq.Context, sock: zmq.Socket, events: int) -> zmq.Socket:
    """The monitor of `sock`, with room for MONITOR_HWM events: admission counts every
    connection from these events, and a dropped one would skew its counts for good."""
    address = f"inproc://msgprof.monitor.{id(sock):x}"
    sock.monitor(address, events)
    monitor = ctx.socket(zmq.PAIR)
    monitor.rcvhwm = MONITOR_HWM
    monitor.connect(address)
    return monitor


def max_frame_bytes(max_payload_bytes: int) -> int:
    """Largest frame read at all: payloads up to here get TOO_LARGE, larger ones a disconnect."""
    return max(2 * max_payload_bytes, max_payload_bytes + (64 << 10))


def _quantiles(samples: array.array) -> dict[str, int]:
    """Exact quantiles of raw samples (msgprof.stats), or {"count": 0} when there are none."""
    if not samples:
        return {"count": 0}
    values = np.frombuffer(samples, dtype=np.int64)
    found = quantiles(values, (0.5, 0.9, 0.99, 0.999, 1.0))
    names = ("p50", "p90", "p99", "p999", "max")
    return {"count": int(values.size), **{name: int(v) for name, v in zip(names, found)}}


def serve(config: ServerConfig) -> dict[str, Any]:
    """Run a server in this process until SIGTERM/SIGINT; return its final stats."""
    server = Server(config)
    server.install_signal_handlers()
    return server.run()
