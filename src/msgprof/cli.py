"""The `msgprof` command: one entry point, a subcommand per role.

Option names are a contract: the Snakemake workflow and other tools call these.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

from msgprof import __version__

_EPILOG_POINT = """\
examples:
  msgprof point --clients 100 --messages 1000 --out results/try/100-1000
  msgprof point --clients 10000 --messages 10 --ack-after fsync --out /tmp/p --strict
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _add_server_options(p: argparse.ArgumentParser) -> None:
    """Server options shared by `server` and `point` (same names, same defaults)."""
    from msgprof.config import ACK_MODES, SYNC_METHODS, ServerOptions

    defaults = ServerOptions()

    p.add_argument(
        "--ack-after",
        choices=ACK_MODES,
        default=defaults.ack_after,
        help="when a message is acknowledged: buffer (in process memory, flushed every "
        "--flush-interval-ms), write (reached the OS: survives a killed server), fsync "
        "(fdatasync'd by group commit: survives power loss). Default: %(default)s",
    )
    p.add_argument(
        "--sync-method",
        choices=SYNC_METHODS,
        default=defaults.sync_method,
        help="how fsync mode and the flusher make data durable: fdatasync (each file), syncfs "
        "(one call for the whole filesystem: group commit across clients) or auto (syncfs from "
        "3 files on). Default: %(default)s",
    )
    p.add_argument(
        "--flush-interval-ms",
        type=_positive_float,
        default=defaults.flush_interval_ms,
        help="buffer mode: how often the background flusher writes and syncs, in milliseconds "
        "(write mode moves its logged records every 100 ms). Default: %(default)s",
    )
    p.add_argument(
        "--backlog",
        type=_positive_int,
        default=defaults.backlog,
        help="ZMQ_BACKLOG: pending TCP connections the listen queue holds (the kernel caps it "
        "at net.core.somaxconn). Default: %(default)s",
    )
    p.add_argument(
        "--max-open-files",
        type=_positive_int,
        default=defaults.max_open_files,
        help="most queue files the server keeps open at once (LRU). Default: %(default)s",
    )
    p.add_argument(
        "--max-payload-bytes",
        type=_non_negative_int,
        default=defaults.max_payload_bytes,
        help="largest payload accepted, in bytes; larger ones get TOO_LARGE. Default: %(default)s",
    )
    p.add_argument(
        "--store",
        choices=("file", "none"),
        default=defaults.store,
        help="file: per-client queue files (the real server); none: sequence checks only, no "
        "storage (to measure protocol cost apart from storage). Default: %(default)s",
    )
    p.add_argument(
        "--rlimit-nofile",
        type=_positive_int,
        default=defaults.rlimit_nofile,
        help="soft RLIMIT_NOFILE for the server process (descriptors). Default: the hard limit",
    )


def _add_start_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--start",
        choices=("on_connect", "all_connected"),
        default=default,
        help="on_connect: each client sends as soon as it has connected; all_connected: every "
        "client of a process connects first, then all send together, so all are active at "
        "once and setup is timed without message traffic. Default: %(default)s",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options of a measured run (`point`, `master`): clients, bounds, outputs, server."""
    p.add_argument(
        "--payload-bytes", type=_non_negative_int, default=64, help="bytes per payload. Default: %(default)s"
    )
    p.add_argument(
        "--processes",
        type=_positive_int,
        default=None,
        help="client processes sharing the clients. Default: the number of usable cores",
    )
    p.add_argument(
        "--timeout-s",
        type=_positive_float,
        default=10.0,
        help="seconds each client waits for an ack before recording a timeout. Default: %(default)s",
    )
    p.add_argument(
        "--connect-timeout-s",
        type=_positive_float,
        default=60.0,
        help="seconds for a client's handshake before it counts as not connected. Default: %(default)s",
    )
    p.add_argument(
        "--deadline-s",
        type=_positive_float,
        default=900.0,
        help="bound in seconds on the clients of a point (of each step). Default: %(default)s",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="where the server's queues go (must be new or empty). Default: OUT/queues, "
        "deleted after verification unless --keep-queues",
    )
    _add_start_option(p, default="all_connected")
    p.add_argument("--keep-queues", action="store_true", help="keep the queue files after verification")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 unless the verdict is ok (by default a run that hits a limit is a result, exit 0)",
    )
    p.add_argument(
        "--curve",
        action="store_true",
        help="encrypt and authenticate with CURVE: fresh keys for the server and the clients of "
        "this run (to measure what security costs)",
    )
    p.add_argument("--out", type=Path, required=True, help="output directory (created)")
    # Cluster placement (msgprof.launch, docs/cluster.md).
    p.add_argument(
        "--launcher",
        choices=("local", "srun"),
        default="local",
        help="where the client processes run. local: on this host. srun: inside a SLURM "
        "allocation, as job steps on the other nodes (on this node when it is the only one). "
        "Default: %(default)s",
    )
    p.add_argument(
        "--bind",
        default=None,
        metavar="HOST[:PORT]",
        help="address the server binds and the clients connect to (a wildcard is refused). "
        "Default: 127.0.0.1 with --launcher local, this node's SLURM NodeAddr with srun",
    )
    _add_server_options(p)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msgprof",
        description="Reproducible profiler for a ZeroMQ message-processing server with "
        "file-backed per-client queues.",
    )
    parser.add_argument("--version", action="version", version=f"msgprof {__version__}")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    srv = sub.add_parser(
        "server",
        help="run the message-processing server",
        description="Run the server: a ROUTER socket that stores each client's messages in its "
        "own file-backed queue and acknowledges every one. Stops on SIGTERM or SIGINT after "
        "flushing the queues and writing --stats-out.",
    )
    srv.add_argument("--data-dir", type=Path, help="directory of the per-client queues (created)")
    srv.add_argument(
        "--ready-file",
        type=Path,
        help="written atomically once the server accepts connections: first line the bound "
        "endpoint (tcp://127.0.0.1:PORT), second line the pid",
    )
    srv.add_argument(
        "--bind",
        default="tcp://127.0.0.1:0",
        help="endpoint to bind; port 0 picks a free port. Default: %(default)s",
    )
    srv.add_argument(
        "--max-sockets",
        type=_positive_int,
        default=1024,
        help="ZMQ MAX_SOCKETS of the server's context. Default: %(default)s",
    )
    srv.add_argument(
        "--stats-out",
        type=Path,
        help="statistics as JSON: written at exit, and on SIGUSR1 while running",
    )
    srv.add_argument(
        "--heartbeat-ms",
        type=_non_negative_int,
        default=10_000,
        help="ZMTP heartbeat interval in milliseconds; a peer silent for 3 intervals is dropped "
        "(0: off). Default: %(default)s",
    )
    srv.add_argument(
        "--handshake-timeout-ms",
        type=_non_negative_int,
        default=10_000,
        help="milliseconds a new connection has to complete the ZMTP handshake. Default: %(default)s",
    )
    srv.add_argument(
        "--curve-secret",
        type=Path,
        help="turn CURVE on: the server's secret certificate (NAME.key_secret from msgprof keygen)",
    )
    srv.add_argument(
        "--curve-allow",
        type=Path,
        help="directory of the client public certificates (*.key) the server admits",
    )
    _add_server_options(srv)

    cli = sub.add_parser(
        "client",
        help="run load-generating clients",
        description="Play many clients from one process: each has its own DEALER socket and "
        "TCP connection and sends --messages sequenced messages, one in flight, timing setup "
        "and every round trip. Writes rtt.parquet, clients.parquet and client.json to --out. "
        "SIGTERM or SIGINT ends the run early; the outputs are still written.",
    )
    cli.add_argument("--endpoint", required=True, help="server endpoint, e.g. tcp://127.0.0.1:5555")
    cli.add_argument(
        "--client-ids",
        required=True,
        help="client ids this process plays: a range 1-100, a list 1,5,9 or a mix 1-10,20",
    )
    cli.add_argument("--messages", type=_positive_int, required=True, help="messages per client")
    cli.add_argument(
        "--payload-bytes", type=_non_negative_int, default=64, help="bytes per payload. Default: %(default)s"
    )
    cli.add_argument(
        "--timeout-s",
        type=_positive_float,
        default=5.0,
        help="seconds to wait for each ack before recording a timeout. Default: %(default)s",
    )
    cli.add_argument(
        "--connect-timeout-s",
        type=_positive_float,
        default=30.0,
        help="seconds for a client's handshake before it counts as not connected. Default: %(default)s",
    )
    cli.add_argument(
        "--deadline-s",
        type=_positive_float,
        default=600.0,
        help="bound on the whole run in seconds; what is unsent then is recorded. Default: %(default)s",
    )
    _add_start_option(cli, default="on_connect")
    cli.add_argument(
        "--connect-window",
        type=_positive_int,
        default=32,
        help="most clients connecting at once (each holds a socket monitor while it connects). "
        "Default: %(default)s",
    )
    cli.add_argument(
        "--event-loop",
        choices=("auto", "epoll", "poller"),
        default="auto",
        help="how the process waits on its sockets: epoll (Linux, scales to thousands) or "
        "zmq.Poller. Default: %(default)s",
    )
    cli.add_argument(
        "--max-sockets",
        type=_positive_int,
        default=None,
        help="ZMQ MAX_SOCKETS of the client context. Default: sized from the number of clients",
    )
    cli.add_argument(
        "--resend",
        action="store_true",
        help="keep going through a lost connection or a missing ack: send the message in "
        "flight again (same seq) on reconnect and after --timeout-s, until it is acknowledged "
        "(OK or DUPLICATE) or --deadline-s passes; for crash-recovery runs. Default: a timeout "
        "stops the client",
    )
    cli.add_argument(
        "--curve-secret",
        type=Path,
        help="turn CURVE on: this client's secret certificate (NAME.key_secret from msgprof keygen)",
    )
    cli.add_argument(
        "--curve-server-key",
        type=Path,
        help="the server's public certificate (NAME.key) the clients trust",
    )
    cli.add_argument("--out", type=Path, required=True, help="output directory (created)")

    pnt = sub.add_parser(
        "point",
        help="run one sweep point end to end",
        description="Run one sweep point: start a server on a fresh data directory, start client "
        "processes that share --clients clients, stop the server, read every queue back and "
        "check that each acknowledged message is stored exactly once. Writes point.json, "
        "rtt.parquet, clients.parquet, server.json and logs to --out.",
        epilog=_EPILOG_POINT,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pnt.add_argument("--clients", type=_positive_int, required=True, help="number of clients")
    pnt.add_argument("--messages", type=_positive_int, required=True, help="messages per client")
    pnt.add_argument(
        "--first-client-id",
        type=_positive_int,
        default=1,
        help="id of the first client; the others follow. Default: %(default)s",
    )
    _add_run_options(pnt)

    mst = sub.add_parser(
        "master",
        help="run the master test case: clients ramped up, then down, against one server",
        description="The seed's master test case: one long-lived server; each step starts new "
        "clients (ids keep growing) that send their messages; the steps run in the given order, "
        "then in reverse, so the ramp-down shows what the ramp-up left behind. Each step is "
        "recorded like a point in OUT/NN-PHASE-CxM/; OUT/master.json ties them together.",
        epilog="example:\n  msgprof master --steps 10x100,50x200,100x400 --out results/try/master",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mst.add_argument(
        "--steps",
        required=True,
        help="ramp-up steps as CLIENTSxMESSAGES, comma separated, e.g. 10x100,50x200,100x400",
    )
    _add_run_options(mst)
    key = sub.add_parser(
        "keygen",
        help="make a CURVE key pair",
        description="Make a CURVE key pair: DIR/NAME.key (public, give it to the other side) and "
        "DIR/NAME.key_secret (keep it; mode 0600).",
    )
    key.add_argument("--out", type=Path, required=True, help="directory for the key files (created)")
    key.add_argument("--name", required=True, help="base name of the key files, e.g. server or client1")

    for name, text in (
        ("analyze", "aggregate a run directory into analysis.csv and points.csv"),
        ("report", "draw a run directory's profiling PDF (msg_proc_profiling.pdf)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument("run_dir", type=Path, help="results/<run>/ made by the workflow")
    return parser


def _cmd_server(args: argparse.Namespace) -> int:
    from msgprof.config import ServerConfig
    from msgprof.server.server import serve

    config = ServerConfig(
        data_dir=args.data_dir,
        ready_file=args.ready_file,
        bind=args.bind,
        store=args.store,
        ack_after=args.ack_after,
        sync_method=args.sync_method,
        flush_interval_ms=args.flush_interval_ms,
        backlog=args.backlog,
        max_open_files=args.max_open_files,
        max_payload_bytes=args.max_payload_bytes,
        max_sockets=args.max_sockets,
        rlimit_nofile=args.rlimit_nofile,
        stats_out=args.stats_out,
        heartbeat_ms=args.heartbeat_ms,
        handshake_timeout_ms=args.handshake_timeout_ms,
        curve_secret=args.curve_secret,
        curve_allow=args.curve_allow,
    )
    config.check()
    serve(config)
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    import signal
    import threading

    from msgprof.config import ClientConfig, parse_client_ids
    from msgprof.load.client import run_clients

    config = ClientConfig(
        endpoint=args.endpoint,
        client_ids=parse_client_ids(args.client_ids),
        messages=args.messages,
        payload_bytes=args.payload_bytes,
        timeout_s=args.timeout_s,
        connect_timeout_s=args.connect_timeout_s,
        deadline_s=args.deadline_s,
        start=args.start,
        connect_window=args.connect_window,
        event_loop=args.event_loop,
        max_sockets=args.max_sockets,
        resend=args.resend,
        curve_secret=args.curve_secret,
        curve_server_key=args.curve_server_key,
    )
    log = logging.getLogger("msgprof.client")
    stop = threading.Event()
    # SIGTERM/SIGINT end the run early but still write its outputs (what was in flight is
    # recorded as TIMEOUT, the rest as not sent).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    summary = run_clients(config, args.out, progress=log.info, stop=stop)
    if summary["stopped"]:
        log.info("stopped early by a signal; outputs written")
    return 0


def _run_config(args: argparse.Namespace, **fields):
    """PointConfig from the shared run options (`point` and `master`)."""
    from msgprof.config import PointConfig

    return PointConfig(
        payload_bytes=args.payload_bytes,
        processes=args.processes,
        timeout_s=args.timeout_s,
        connect_timeout_s=args.connect_timeout_s,
        deadline_s=args.deadline_s,
        data_dir=args.data_dir,
        keep_queues=args.keep_queues,
        start=args.start,
        store=args.store,
        ack_after=args.ack_after,
        sync_method=args.sync_method,
        flush_interval_ms=args.flush_interval_ms,
        backlog=args.backlog,
        max_open_files=args.max_open_files,
        max_payload_bytes=args.max_payload_bytes,
        rlimit_nofile=args.rlimit_nofile,
        launcher=args.launcher,
        bind=args.bind,
        curve=args.curve,
        **fields,
    )


def _cmd_point(args: argparse.Namespace) -> int:
    from msgprof.experiment.point import run_point

    config = _run_config(
        args, clients=args.clients, messages=args.messages, first_client_id=args.first_client_id
    )
    result = run_point(config, args.out)
    return 1 if args.strict and result["verdict"] != "ok" else 0


def _cmd_master(args: argparse.Namespace) -> int:
    from msgprof.experiment.master import parse_steps, run_master

    steps = parse_steps(args.steps)
    config = _run_config(args, clients=steps[0][0], messages=steps[0][1])
    result = run_master(config, steps, args.out)
    return 1 if args.strict and result["verdict"] != "ok" else 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from msgprof.report.analysis import write_tables

    _require_dir(args.run_dir)
    for path in write_tables(args.run_dir):
        print(path)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from msgprof.report.plots import write_report

    _require_dir(args.run_dir)
    print(write_report(args.run_dir))
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from msgprof.wire.security import keygen

    for path in keygen(args.out, args.name):
        print(path)
    return 0


def _require_dir(path: Path) -> None:
    if not path.is_dir():
        raise ValueError(f"{path} is not a directory")


_COMMANDS = {
    "server": _cmd_server,
    "client": _cmd_client,
    "point": _cmd_point,
    "master": _cmd_master,
    "keygen": _cmd_keygen,
    "analyze": _cmd_analyze,
    "report": _cmd_report,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run a subcommand; a bad input is one clear line, exit 2."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format=f"%(asctime)s %(name)s[{os.getpid()}] %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    try:
        return _COMMANDS[args.command](args)
    except ValueError as err:
        parser.exit(2, f"msgprof {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        return 130
