"""The `msgprof` command: one entry point, a subcommand per role.

Option names are a contract: the Snakemake workflow and other tools call these. The options of
`server`, `client`, `point` and `master` are generated from their settings models in
msgprof.config (name, type, choices, default, help and check of each), and those of `knee` from
the point's and its own (msgprof.experiment.knee); this module only wires them to the code that
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from msgprof import __version__, commands
from msgprof.report import review
from msgprof.setting import Setting, flag, settings_of

_EPILOG_POINT = """\
examples:
  msgprof point --clients 100 --messages 1000 --out results/try/100-1000
  msgprof point --clients 10000 --messages 10 --ack-after fsync --out /tmp/p --strict
  msgprof point --clients 1000 --rate 5 --duration-s 30 --warmup-s 5 --out /tmp/paced
"""

#: Subcommands with settings: (name, help, description, epilog).
_SETTINGS_COMMANDS = (
    (
        "server",
        "run the message-processing server",
        "Run the server: a ROUTER socket that stores each client's messages in its own "
        "file-backed queue and acknowledges every one. Stops on SIGTERM or SIGINT after "
        "flushing the queues and writing --stats-out.",
        None,
    ),
    (
        "client",
        "run load-generating clients",
        "Play many clients from one process: each has its own DEALER socket and TCP connection "
        "and sends --messages sequenced messages, timing setup and every round trip. By "
        "default a client keeps one message in flight (a closed loop); with --rate it sends on "
        "a schedule (an open loop) and latency runs from each message's intended send time "
        "(docs/measurement.md). A process of one closed-loop client runs its round trips in "
        "a compiled loop, built once per host with the C compiler (MSGPROF_NATIVE=0 keeps it "
        "in Python; client.json's solo_loop says which ran). Writes rtt.parquet, "
        "clients.parquet, latency.hlog and client.json to --out. SIGTERM or SIGINT ends the "
        "run early; the outputs are still written.",
        "examples:\n"
        "  msgprof client --endpoint tcp://127.0.0.1:5555 --client-ids 1-100 --messages 1000 "
        "--out /tmp/c\n"
        "  msgprof client --endpoint tcp://127.0.0.1:5555 --client-ids 1-100 --rate 50 "
        "--duration-s 20 --warmup-s 2 --out /tmp/paced",
    ),
    (
        "point",
        "run one sweep point end to end",
        "Run one sweep point: start a server on a fresh data directory, start client processes "
        "that share --clients clients, stop the server, read every queue back and check that "
        "each acknowledged message is stored exactly once. Writes point.json, rtt.parquet, "
        "clients.parquet, server.json and logs to --out (and profile/ with --profile). Clients "
        "and the host's limits are checked first: a point that cannot fit them fails before "
        "it starts, naming the limit.",
        _EPILOG_POINT,
    ),
    (
        "master",
        "run the master test case: clients ramped up, then down, against one server",
        "The seed's master test case: one long-lived server; each step starts new clients (ids "
        "keep growing) that send their messages; the steps run in the given order, then in "
        "reverse, so the ramp-down shows what the ramp-up left behind. Each step is recorded "
        "like a point in OUT/NN-PHASE-CxM/; OUT/master.json ties them together.",
        "example:\n  msgprof master --steps 10x100,50x200,100x400 --out results/try/master",
    ),
)


def _argument_type(how: Setting) -> Callable[[str], Any]:
    """argparse's `type` for a setting: parse, then the setting's check (its message as the
    option's error, e.g. "argument --backlog: must be at least 1, got 0")."""
    parse = how.parse
    assert parse is not None

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError as err:
            if parse in (int, float):
                raise  # argparse says "invalid int value: 'x'"
            raise argparse.ArgumentTypeError(str(err)) from err
        problem = how.check(value) if how.check is not None else None
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    convert.__name__ = parse.__name__
    return convert


def _add_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """The options of `command`, generated from its settings model (msgprof.commands.COMMANDS)."""
    _add_options(parser, commands.options(command))


def _add_options(
    parser: argparse.ArgumentParser, items: Iterable[tuple[str, Any, Setting]]
) -> None:
    """An option per (name, default, setting): a switch, or a value parsed and checked."""
    for name, default, how in items:
        if how.parse is None:
            parser.add_argument(flag(name), action="store_true", help=how.help)
            continue
        given = {"required": True} if default is MISSING else {"default": default}
        parser.add_argument(
            flag(name),
            type=_argument_type(how),
            choices=how.choices,
            metavar=how.metavar,
            help=how.help,
            **given,
        )


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msgprof",
        description="Reproducible profiler for a ZeroMQ message-processing server with "
        "file-backed per-client queues.",
    )
    parser.add_argument("--version", action="version", version=f"msgprof {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text, description, epilog in _SETTINGS_COMMANDS:
        cmd = sub.add_parser(
            name,
            help=text,
            description=description,
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter
            if epilog
            else argparse.HelpFormatter,
        )
        _add_settings(cmd, name)
        if name in ("server", "client"):
            _add_options(cmd, commands.profile_out_options())

    _add_knee(sub)
    _add_capacity(sub)

    key = sub.add_parser(
        "keygen",
        help="make a CURVE key pair",
        description="Make a CURVE key pair: DIR/NAME.key (public, give it to the other side) and "
        "DIR/NAME.key_secret (keep it; mode 0600).",
    )
    key.add_argument(
        "--out", type=Path, required=True, help="directory for the key files (created)"
    )
    key.add_argument(
        "--name", required=True, help="base name of the key files, e.g. server or client1"
    )

    _add_calibrate(sub)

    for name, text in (
        ("analyze", "aggregate a run directory into analysis, points, resources and limits CSVs"),
        ("report", "draw a run directory's profiling PDF (msg_proc_profiling.pdf)"),
    ):
        cmd = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        cmd.add_argument("run_dir", type=Path, help="results/<run>/ made by the workflow")
    review.add_parsers(sub)
    _add_conform(sub)
    return parser


def _add_conform(sub: Any) -> None:
    cmd = sub.add_parser(
        "conform",
        help="check that a server keeps protocol v1's rules (a pass/fail table)",
        description="Run protocol v1's rules (docs/protocol.md) against a server: the sequence "
        "rules, every MALFORMED kind, TOO_LARGE, UNSUPPORTED_VERSION, the headers that get no "
        "reply, the echo of client_id, seq and t_send_ns. Prints a pass/fail table; exits 1 "
        "when a check fails.",
        epilog="examples:\n  msgprof conform tcp://127.0.0.1:5555\n  msgprof conform "
        "'python examples/servers/bare_server.py --ready {ready}'",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    cmd.add_argument("target", metavar="ENDPOINT_OR_COMMAND",
                     help="tcp://HOST:PORT of a running server, or a server command template "
                     "as --server-command takes it ({ready}, {data}, {port})")  # fmt: skip
    cmd.add_argument("--max-payload-bytes", type=int, default=1 << 20,
                     help="the server's largest payload. Default: %(default)s")  # fmt: skip


_EPILOG_KNEE = """\
Rates are aggregate: msg/s of all clients together (each client sends RATE / --clients a second).
knee.json says for every probe its rate, verdict, corrected p50/p99/p999, achieved rate and why
it passed or failed, and the result: the highest passing rate, or null with the reason (even
--lo fails; --hi passes: the knee is above --hi).

examples:
  msgprof knee --clients 100 --slo-p99-ms 10 --lo 1000 --hi 20000 --out /tmp/knee
  msgprof knee --clients 1000 --slo-p99-ms 5 --duration-s 20 --ack-after fsync --out /tmp/k
"""


def _add_knee(sub: Any) -> None:
    from msgprof.experiment import knee

    cmd = sub.add_parser(
        "knee",
        help="find the highest rate that keeps the corrected p99 within an SLO",
        description="Bisect on the offered rate between --lo and --hi: every probe is a timed "
        "paced point (OUT/probe-NN-RATE/) that passes when its verdict is ok, its corrected p99 "
        "is at most --slo-p99-ms and it achieved at least 99% of the offered rate. "
        "OUT/knee.json is rewritten after every probe. Without --hi a closed-loop point runs "
        "first to set it.",
        epilog=_EPILOG_KNEE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(cmd, knee.options())


_EPILOG_CAPACITY = """\
Every probe is a full point (OUT/probe-NN-CLIENTS/); a count past what this host's descriptor
and port limits allow fails at once, before any process starts. capacity.json says for every
probe its clients, verdict, connect and RTT p99, server RSS (and per connection), descriptors,
throughput and the kernel's listen-queue counters, and the result: the largest ok count, the
first failing one and the limit behind it.

examples:
  msgprof capacity --lo 1000 --messages 10 --out /tmp/capacity
  msgprof capacity --lo 2000 --step 500 --rate 1 --duration-s 20 --out /tmp/paced-capacity
"""


def _add_capacity(sub: Any) -> None:
    from msgprof.experiment import capacity

    cmd = sub.add_parser(
        "capacity",
        help="find how many concurrent clients the server holds, and the limit that stops it",
        description="Double the client count from --lo until a point's verdict is not ok, "
        "then bisect to within --precision (or --step). OUT/capacity.json is rewritten after "
        "every probe.",
        epilog=_EPILOG_CAPACITY,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_options(cmd, capacity.options())


def _add_calibrate(sub: Any) -> None:
    from msgprof.experiment.calibrate import DEFAULT_MESSAGES

    cmd = sub.add_parser(
        "calibrate",
        help="measure the load generator's own RTT floor on this host (calibration.json)",
        description="Time `msgprof client --echo` against libzmq's proxy, which sends each "
        "request back unchanged, at 1 client and at 100 clients: RTTs near this floor are the "
        "load generator's own cost, not the server's. Writes OUT/calibration.json.",
    )
    cmd.add_argument("--out", type=Path, required=True, help="the run directory (created)")
    cmd.add_argument(
        "--messages",
        type=int,
        default=DEFAULT_MESSAGES,
        help="messages of the 1-client case; each of the 100 clients sends a tenth of it. "
        "Default: %(default)s",
    )


def _model(args: argparse.Namespace, **fields: Any) -> Any:
    """The settings model of `args.command` from its parsed options (and `fields`)."""
    command = commands.COMMANDS[args.command]
    names = settings_of(command.model)
    values = {name: getattr(args, name) for name in command.options if name in names}
    return command.model(**values, **fields)


@contextlib.contextmanager
def _profiled(args: argparse.Namespace, name: str) -> Any:
    """With --profile-out DIR: py-spy samples this process while the block runs, then DIR gets
    the profile files and profile.json (msgprof.experiment.profiler)."""
    if args.profile_out is None:
        yield
        return
    from msgprof import atomic
    from msgprof.experiment.profiler import Profiler

    log = logging.getLogger(f"msgprof.{name}")
    sampler = Profiler(args.profile_out, args.profile_rate_hz, args.profile_native,
                             args.profile_threads, name=name)  # fmt: skip
    if not sampler.start(os.getpid()):
        log.warning("running without a profile: %s", sampler.reason)
    try:
        yield
    finally:
        doc = sampler.stop()
        args.profile_out.mkdir(parents=True, exist_ok=True)
        atomic.write_text(args.profile_out / "profile.json", json.dumps(doc, indent=2) + "\n")
        log.info("profile: %s samples in %s%s", doc["samples"], args.profile_out,
                 "" if doc["profiled"] else f" ({doc['reason']})")  # fmt: skip


def _cmd_server(args: argparse.Namespace) -> int:
    from msgprof.server.server import serve

    with _profiled(args, "server"):
        serve(_model(args))
    return 0


def _cmd_client(args: argparse.Namespace) -> int:
    import signal
    import threading

    from msgprof.load.client import progress_line, run_clients

    log = logging.getLogger("msgprof.client")
    stop = threading.Event()
    # SIGTERM/SIGINT end the run early but still write its outputs (what was in flight is
    # recorded as TIMEOUT, the rest as not sent).
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    args.out.mkdir(parents=True, exist_ok=True)

    def progress(counts: dict[str, int]) -> None:
        """Logged, and kept in OUT/progress.json for the point that started this process:
        renamed into place, not synced (an fsync would stall the loop behind the server's
        disk), and a failed write (a full disk, no descriptor left) is no failed client."""
        log.info("%s", progress_line(counts))
        tmp = args.out / ".progress.json.tmp"
        with contextlib.suppress(OSError):  # the next second's write tries again
            tmp.write_text(json.dumps(counts))
            os.replace(tmp, args.out / "progress.json")

    with _profiled(args, "client"):
        summary = run_clients(_model(args), args.out, progress=progress, stop=stop)
    if summary["stopped"]:
        log.info("stopped early by a signal; outputs written")
    return 0


def _cmd_point(args: argparse.Namespace) -> int:
    from msgprof.experiment.point import run_point

    result = run_point(_model(args), args.out)
    return _exit_code(result, args.strict)


def _cmd_master(args: argparse.Namespace) -> int:
    from msgprof.experiment.master import parse_steps, run_master

    steps = parse_steps(args.steps)
    result = run_master(_model(args, clients=steps[0][0], messages=steps[0][1]), steps, args.out)
    return _exit_code(result, args.strict)


def _cmd_knee(args: argparse.Namespace) -> int:
    from msgprof.experiment import knee

    search = knee.KneeSearch(**{name: getattr(args, name) for name in settings_of(knee.KneeSearch)})
    point = {name: getattr(args, name) for name, _default, _how in knee.point_options()}
    result = knee.run_knee(knee.base_point(point, search), search, args.out)
    if result.get("interrupted_by"):
        return _exit_code(result, False)
    return 1 if args.strict and result["result"]["highest_passing_msgs_per_s"] is None else 0


def _cmd_capacity(args: argparse.Namespace) -> int:
    from msgprof.experiment import capacity

    names = settings_of(capacity.CapacitySearch)
    search = capacity.CapacitySearch(**{name: getattr(args, name) for name in names})
    point = {name: getattr(args, name) for name, _default, _how in capacity.point_options()}
    result = capacity.run_capacity(capacity.base_point(point, search), search, args.out)
    if result.get("interrupted_by"):
        return _exit_code(result, False)
    return 1 if args.strict and result["result"]["largest_ok_clients"] is None else 0


def _exit_code(result: dict, strict: bool) -> int:
    """A run stopped by a signal exits as a shell reports death by it (130 SIGINT, 143
    SIGTERM), so a caller sees it was cut short; else 1 for a verdict not ok under --strict."""
    if result.get("interrupted_by"):
        return 128 + int(signal.Signals[result["interrupted_by"]])
    return 1 if strict and result["verdict"] != "ok" else 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from msgprof.experiment.calibrate import CalibrationError, calibrate

    try:
        doc = calibrate(args.out, args.messages)
    except CalibrationError as err:
        logging.getLogger("msgprof.calibrate").error("%s", err)
        return 1
    print(f"{args.out / 'calibration.json'}: floor RTT p50 {doc['floor_rtt_p50_us']:.1f} us")
    return 0


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


def _cmd_conform(args: argparse.Namespace) -> int:
    from msgprof.experiment.conform import conform, table

    results = conform(args.target, args.max_payload_bytes)
    print(table(results))
    return 0 if all(r.passed for r in results) else 1


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
    "knee": _cmd_knee,
    "capacity": _cmd_capacity,
    "keygen": _cmd_keygen,
    "calibrate": _cmd_calibrate,
    "analyze": _cmd_analyze,
    "report": _cmd_report,
    "conform": _cmd_conform,
    **review.COMMANDS,
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
    logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting, per glyph
    try:
        return _COMMANDS[args.command](args)
    except ValueError as err:
        parser.exit(2, f"msgprof {args.command}: error: {err}\n")
    except KeyboardInterrupt:
        return 130
