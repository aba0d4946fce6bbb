"""The command line, defined once: the options a person sets (a FuzzConfig) and the hidden ones
of a fuzzer process. The parser is built from these tables, and a fuzzer process's argv is
generated from the same tables and parsed back before it is used, so the two cannot drift.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: What runs the tool: this package's folder (its __main__.py).
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class FuzzConfig:
    """One fuzzing run; recorded in its report."""

    messages: int = 100_000  # malformed messages over DEALER sockets, at least
    raw_connections: int = 2_000  # plain TCP connections, at least
    seed: int = 1
    time_limit_s: float = 600.0
    dealer_workers: int = 2
    batch: int = 100  # messages a fuzzer sends before it reads their replies
    legit_clients: int = 20
    legit_messages: int = 1_000  # per client and round
    max_payload_bytes: int = 1024  # the server's limit (small, so too-large payloads stay cheap)


#: Command-line options: the FuzzConfig fields a user sets, and what they mean.
OPTIONS = {
    "messages": "malformed messages the DEALER fuzzers send, at least",
    "raw_connections": "plain TCP connections the raw fuzzer opens, at least",
    "seed": "seed of every generator",
    "time_limit_s": "bound on the whole run in seconds",
    "dealer_workers": "DEALER fuzzer processes",
    "legit_clients": "legitimate clients a round",
    "legit_messages": "messages per legitimate client and round",
    "max_payload_bytes": "the server's --max-payload-bytes",
}

#: Options of a fuzzer process only (the run starts those; hidden from --help). A fuzzer also
#: reads --seed, --time-limit-s and --max-payload-bytes from OPTIONS.
WORKER_OPTIONS: dict[str, dict[str, Any]] = {
    "worker": {"choices": ("dealer", "raw")},
    "endpoint": {},
    "dir": {},
    "index": {"type": int, "default": 0},
    "quota": {"type": int, "default": 0},
    "batch": {"type": int, "default": 0},
}


def flag(name: str) -> str:
    """The command-line flag of an option: time_limit_s → --time-limit-s."""
    return "--" + name.replace("_", "-")


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = FuzzConfig()
    for name, text in OPTIONS.items():
        default = getattr(defaults, name)
        parser.add_argument(
            flag(name), type=type(default), default=default, help=f"{text}. Default: %(default)s"
        )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep logs, queues and report.json here (default: a temporary directory)",
    )
    # fuzzer processes (started by the run itself)
    for name, spec in WORKER_OPTIONS.items():
        parser.add_argument(flag(name), help=argparse.SUPPRESS, **spec)
    return parser


def worker_argv(**values: Any) -> list[str]:
    """The command line of a fuzzer process: each value under its option's flag.

    Only options of the parser may be given, and the argv must parse back to the values given
    (a ValueError says which does not).
    """
    unknown = sorted(set(values) - set(OPTIONS) - set(WORKER_OPTIONS))
    if unknown:
        raise ValueError(f"not options of the fuzzer: {unknown}")
    args = [part for name, value in values.items() for part in (flag(name), str(value))]
    parsed = vars(build_parser().parse_args(args))
    wrong = {name: parsed[name] for name, value in values.items() if parsed[name] != value}
    if wrong:
        raise ValueError(f"options that do not parse back as given: {wrong}")
    return [sys.executable, str(PACKAGE_DIR), *args]
