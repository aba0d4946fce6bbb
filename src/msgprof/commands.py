"""The `msgprof` subcommands that take settings: each one's model and options in --help order.

From the models of msgprof.config: the options msgprof.cli generates for `msgprof
server|client|point|master` (`options`), and the command line that gives a child process the
settings of a model (`command_argv`: the experiment starts its server and client processes with
it, the workflow its points and the master case).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

from msgprof.config import (
    ClientConfig,
    LoadOptions,
    PointConfig,
    ServerConfig,
    ServerOptions,
    setting_names,
)
from msgprof.setting import Setting, flag, option_words, path, setting, settings_of, switch


@dataclass(frozen=True, kw_only=True)
class RunArguments:
    """Command-line arguments that are no setting of a model: where a run writes its outputs,
    how `point` and `master` exit, and the master case's ramp. Never constructed."""

    out: Path = path(MISSING, help="output directory (created)")
    strict: bool = switch(
        help="exit 1 unless the verdict is ok (by default a run that hits a limit is a result, "
        "exit 0)",
    )
    steps: str = setting(
        help="ramp-up steps as CLIENTSxMESSAGES, comma separated, e.g. 10x100,50x200,100x400"
    )
    profile_out: Path | None = path(
        help="sample this process with py-spy while it runs and write what a profiled point "
        "gets (top.csv, a flame graph .svg, .speedscope.json; profile.json says how many "
        "samples, or why none) into DIR when it stops (docs/profiling.md)",
        metavar="DIR",
    )


# --- the commands ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Command:
    """A `msgprof` subcommand that takes settings: its model and its options in --help order
    (fields of the model, or of RunArguments)."""

    model: type
    options: tuple[str, ...]


_PACING = ("rate", "arrivals", "max_in_flight", "warmup_s")
#: A run's server may be sampled (msgprof.experiment.profiler): a point's for the whole point,
#: the master case's step by step; a point's client processes too.
SERVER_PROFILE = ("profile", "profile_rate_hz", "profile_native", "profile_threads")
POINT_PROFILE = (*SERVER_PROFILE, "profile_clients")
_RUN_OPTIONS = (
    *_PACING, "payload_bytes", "processes", "timeout_s", "connect_timeout_s", "deadline_s",
    "data_dir", "start", "keep_queues", "strict", "curve", "out", "launcher", "bind",
    *setting_names(ServerOptions), "clients_per_source", "connect_rate", "client_rlimit_nofile",
    "server_command", "verify", "verify_command",
)  # fmt: skip
_SERVER = (
    "data_dir", "ready_file", "bind", "max_sockets", "stats_out", "heartbeat_ms",
    "handshake_timeout_ms", "curve_secret", "curve_allow", *setting_names(ServerOptions),
)  # fmt: skip
_CLIENT = (
    "endpoint", "client_ids", "messages", *setting_names(LoadOptions), "connect_window",
    "event_loop", "max_sockets", "resend", "first_seq", "start_barrier", "echo", "curve_secret",
    "curve_server_key", "out",
)  # fmt: skip
COMMANDS = {
    "server": Command(ServerConfig, _SERVER),
    "client": Command(ClientConfig, _CLIENT),
    "point": Command(
        PointConfig,
        ("clients", "messages", "duration_s", "first_client_id", *_RUN_OPTIONS, *POINT_PROFILE),
    ),
    "master": Command(PointConfig, ("steps", *_RUN_OPTIONS, *SERVER_PROFILE)),
}


def options(command: str) -> Iterator[tuple[str, Any, Setting]]:
    """(name, default, setting) of each option of `command`, in --help order; the default is
    dataclasses.MISSING for a required option."""
    return _items(COMMANDS[command].model, COMMANDS[command].options)


#: `msgprof server|client --profile-out DIR`: the process sampled as a point's server is,
#: written when it stops. In no model: the command starts py-spy on its own process.
PROFILE_OUT = ("profile_out", "profile_rate_hz", "profile_native", "profile_threads")


def profile_out_options() -> Iterator[tuple[str, Any, Setting]]:
    """(name, default, setting) of the profiling options of `msgprof server` and `client`."""
    return _items(PointConfig, PROFILE_OUT)


def profile_out_argv(config: PointConfig, out: Path) -> list[str]:
    """The options that make a `msgprof client` of `config`'s point sample itself into `out`."""
    argv = ["--profile-out", str(out), "--profile-rate-hz", str(config.profile_rate_hz)]
    return argv + [flag(name) for name in PROFILE_OUT[2:] if getattr(config, name)]


def _items(model: type, names: tuple[str, ...]) -> Iterator[tuple[str, Any, Setting]]:
    known = settings_of(RunArguments) | settings_of(model)
    for name in names:
        spec, how = known[name]
        yield name, spec.default, how


def command_argv(command: str, config: Any, **per_run: Any) -> list[str]:
    """`[command, options...]`: the command line that gives a `msgprof COMMAND` child process
    the settings of `config` (a model of that command) and the per-run arguments (`out=`,
    `steps=`). Every option with a value is given, in --help order: a switch when on, an
    option unless None; so a child never depends on a default it might not share."""
    unknown = set(per_run) - set(COMMANDS[command].options)
    if unknown:
        raise ValueError(f"msgprof {command} takes no {', '.join(map(flag, sorted(unknown)))}")
    argv = [command]
    for name, _default, how in options(command):
        value = per_run[name] if name in per_run else getattr(config, name, None)
        argv += option_words(name, value, how)
    return argv


def point_options_of_search(
    excluded: tuple[str, ...], defaults: dict[str, Any]
) -> Iterator[tuple[str, Any, Setting]]:
    """The options of `msgprof point` a search (knee, capacity) passes on to its probes: all but
    `excluded` (what the search sets itself), with its own `defaults` where it has them."""
    for name, default, how in options("point"):
        if name not in excluded:
            yield name, defaults.get(name, default), how


def search_argv(
    command: str, search_options: Iterator[tuple[str, Any, Setting]], values: dict[str, Any]
) -> list[str]:
    """`[command, options...]` of a search from the value of each of its options."""
    argv = [command]
    for name, _default, how in search_options:
        argv += option_words(name, values[name], how)
    return argv
