"""`msgprof capacity`: how many concurrent clients the server holds on this host, and which
limit stops it.

From --lo clients, every probe a full point (OUT/probe-NN-CLIENTS/; by default paced clients
sending one message a second for 10 s, so that all of them are connected at once) that passes
when the server held its clients (verdict ok, or generator_behind: late sends question the
latencies, not the count) and saw every one of them connected at the same time. The count
doubles until a probe fails, then bisects between the largest passing and the smallest failing
count until they are less than --precision apart (or --step clients), or --probes probes ran
(msgprof.experiment.bisection, shared with the knee search). Growing never goes past the most
clients this host's limits allow (msgprof.experiment.budget): a probe at that count that passes
ends the search, naming the limit that stops the next; a count past it fails at once, before
any process starts.

OUT/capacity.json is rewritten after every probe: the search, each probe (verdict, connected,
acked, lost, connect and RTT p99, server RSS and its slope per connection, descriptors,
throughput, the kernel's listen-queue counters) and the result: the largest ok count, the first
failing one, its verdict and errors, and the limit behind it (descriptors, ports, memory,
timeouts, connect timeouts, ...). A new search in OUT first deletes the probes of an earlier one.
"""

from __future__ import annotations

import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from msgprof import atomic, commands, limits
from msgprof.config import PointConfig
from msgprof.experiment import budget
from msgprof.experiment.bisection import Bisection, whole_steps
from msgprof.setting import (
    Checked,
    Setting,
    path,
    positive_int,
    setting,
    settings_of,
    switch,
)

log = logging.getLogger("msgprof.capacity")

#: Each probe's load unless --rate, --duration-s or --messages say otherwise: paced clients,
#: one message a second for 10 s, so every client stays connected while the others connect
#: (a closed loop's clients end at uneven times, and the count would not be concurrent).
RATE = 1.0
DURATION_S = 10.0
DEFAULTS = {"rate": RATE, "duration_s": DURATION_S}
#: Options of `msgprof point` a search does not take: it sets each probe's clients, and has its
#: own --out and --strict.
NOT_FROM_POINT = ("clients", "out", "strict")
_PROBE_DIR = re.compile(r"probe-\d\d+-\d+")

#: Verdicts of a point whose clients the server held: every message acknowledged and stored.
#: generator_behind (sends late by over 1 ms) questions its latencies, not the count.
HELD = ("ok", "generator_behind")
#: The limit a failing verdict points at (what capacity.json names).
LIMIT_OF_VERDICT = {
    "descriptor_limit": "descriptors",
    "not_connected": "connect timeouts",
    "timeouts": "timeouts",
    "deadline": "timeouts",
    "storage_full": "disk",
    "storage_error": "disk",
    "server_failed": "server failed",
    "server_hung": "server failed",
    "client_failed": "client processes",
    "data_loss": "data loss",
}
#: A failed server whose RSS came within this share of the host's memory ran out of memory.
MEMORY_SHARE = 0.9


def at_least_2(value: int) -> str | None:
    return None if value >= 2 else f"must be at least 2, got {value}"


def precision_ratio(value: float) -> str | None:
    return None if 0 < value < 1 else f"must be between 0 and 1 (0.05: 5%), got {value:g}"


@dataclass(frozen=True, kw_only=True)
class CapacitySearch(Checked):
    """Where the search starts and how close it gets."""

    lo: int = positive_int(
        1000, metavar="N0", help="client count of the first probe. Default: %(default)s"
    )
    precision: float = setting(
        0.05,
        parse=float,
        check=precision_ratio,
        help="stop once the smallest failing count is less than this share above the largest "
        "passing one. Default: %(default)s",
    )
    step: int | None = positive_int(
        None,
        help="probe counts are multiples of this many clients, and the search stops once the "
        "two counts are a step apart. Default: none (whole clients)",
    )
    probes: int = setting(
        12, parse=int, check=at_least_2, metavar="N",
        help="most probes (points) the search runs. Default: %(default)s",
    )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class CapacityArguments:
    """Command-line arguments of `msgprof capacity` that are no setting of the search."""

    out: Path = path(MISSING, help="directory of the search: capacity.json and a point per probe")
    strict: bool = switch(help="exit 1 when no count passed (even --lo failed)")


def point_options() -> Iterator[tuple[str, Any, Setting]]:
    """The options of `msgprof point` a search passes on to every probe."""
    return commands.point_options_of_search(NOT_FROM_POINT, DEFAULTS)


def options() -> Iterator[tuple[str, Any, Setting]]:
    """(name, default, setting) of every option of `msgprof capacity`, in --help order."""
    for model in (CapacitySearch, CapacityArguments):
        yield from ((name, spec.default, how) for name, (spec, how) in settings_of(model).items())
    yield from point_options()


def base_point(point_settings: dict[str, Any], search: CapacitySearch) -> PointConfig:
    """The point model of the probes (at --lo); a bad combination fails here."""
    settings = dict(point_settings)
    if settings.get("messages") is not None and settings.get("duration_s") == DURATION_S:
        settings["duration_s"] = None  # --messages instead of the default length
    return PointConfig(**settings, clients=search.lo)


def capacity_argv(point: PointConfig, search: CapacitySearch, out: Path) -> list[str]:
    """`["capacity", options...]`: the command line of a search with the settings of `point`
    (a probe's model; its clients are the search's) and `search`."""
    values = {name: getattr(point, name) for name, _default, _how in point_options()}
    return commands.search_argv(
        "capacity", options(), values | asdict(search) | {"out": out, "strict": False}
    )


# --- a probe ---------------------------------------------------------------------------------


def _p99_ms(out: Path) -> float | None:
    """99th percentile of the clients' connect times (clients.parquet), in ms."""
    try:
        values = pq.read_table(out / "clients.parquet", columns=["connect_ns"])["connect_ns"]
    except (OSError, KeyError):
        return None
    ns = np.asarray(values.to_numpy(zero_copy_only=False), dtype=float)
    ns = ns[ns >= 0]
    return float(np.quantile(ns, 0.99, method="inverted_cdf")) / 1e6 if ns.size else None


def limit_of(document: dict[str, Any], memory_bytes: int | None) -> str | None:
    """The limit behind a point's verdict (None for a count held: ok, or generator_behind, with
    every client connected at once)."""
    kind = document.get("verdict")
    if kind in HELD:
        peak = document.get("server", {}).get("peak_connections") or 0
        return None if peak >= document.get("clients", 0) else "not concurrent"
    limit = LIMIT_OF_VERDICT.get(kind, kind)
    rss = document.get("server", {}).get("resources", {}).get("peak_rss_bytes") or 0
    if limit == "server failed" and memory_bytes and rss >= MEMORY_SHARE * memory_bytes:
        return "memory"
    return limit


def probe_record(number: int, name: str, clients: int, document: dict[str, Any],
                 out: Path, wall_s: float, memory_bytes: int | None) -> dict[str, Any]:  # fmt: skip
    """What capacity.json keeps of one probe that ran."""
    server = document.get("server", {})
    resources = server.get("resources", {})
    rtt = (document.get("latency") or {}).get("uncorrected") or {}
    limit = limit_of(document, memory_bytes)
    detail = document.get("verdict_detail")
    if limit == "not concurrent":
        detail = (f"verdict ok, but at most {server.get('peak_connections')} of {clients} "
                  "clients were connected at once: give a longer --duration-s")  # fmt: skip
    return {
        "probe": number,
        "dir": name,
        "clients": clients,
        "verdict": document["verdict"],
        "verdict_detail": detail,
        "passed": document["verdict"] in HELD
        and limit is None
        and not document.get("interrupted_by"),
        "limit": limit,
        "peak_connections": server.get("peak_connections"),
        "connected": document.get("connected"),
        "acked": document.get("acked"),
        "lost": document.get("lost"),
        "errors": {k: v for k, v in document.get("errors", {}).items() if v},
        "refused": server.get("refused"),
        "connect_p99_ms": _p99_ms(out),
        "rtt_p99_us": rtt.get("p99_us"),
        "throughput_msgs_per_s": document.get("throughput_msgs_per_s"),
        "server_peak_rss_bytes": resources.get("peak_rss_bytes"),
        "server_rss_per_connection_bytes": resources.get("rss_per_connection_bytes"),
        "server_peak_fds": resources.get("peak_open_fds"),
        "kernel_tcp": document.get("kernel_tcp"),
        "wall_s": round(wall_s, 3),
    }


def refused_record(number: int, clients: int, error: limits.LimitError) -> dict[str, Any]:
    """A probe past this host's limits: it fails before any process starts."""
    return {"probe": number, "dir": None, "clients": clients, "verdict": "limit",
            "verdict_detail": str(error), "passed": False, "limit": error.kind,
            "wall_s": 0.0}  # fmt: skip


# --- the search -------------------------------------------------------------------------------


class Interrupted(Exception):
    """A probe was stopped by SIGTERM or SIGINT: the search ends there."""


class CapacityRun:
    """One search into `out_dir`: it runs the points (with `run_point`), keeps capacity.json."""

    def __init__(self, base: PointConfig, search: CapacitySearch, out_dir: Path,
                 run_point: Callable[[PointConfig, Path], dict[str, Any]],
                 memory_bytes: int | None = None) -> None:  # fmt: skip
        self.base = base
        self.search = search
        self.out_dir = Path(out_dir)
        self.run_point = run_point
        self.memory_bytes = memory_bytes
        self.most = budget.most_clients(base)
        self.records: list[dict[str, Any]] = []
        self.document: dict[str, Any] = {
            "search": asdict(search) | {"most_clients_the_limits_allow": self.most},
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(base).items()
                if k != "clients"
            },  # fmt: skip
            "started_unix_s": time.time(),
            "probes": self.records,
            "result": None,
        }

    def write(self, result: dict[str, Any]) -> None:
        self.document["result"] = result
        self.document["updated_unix_s"] = time.time()
        atomic.write_json(self.out_dir / "capacity.json", self.document)

    def probe(self, count: float) -> bool:
        """Run the probe at `count` clients, record it, rewrite capacity.json; whether it
        passed."""
        clients = int(count)
        number = len(self.records) + 1
        name = f"probe-{number:02d}-{clients}"
        settings = replace(self.base, clients=clients)
        if settings.data_dir is not None:
            settings = replace(settings, data_dir=Path(settings.data_dir) / name)
        try:
            budget.fit(settings)
        except limits.LimitError as error:
            record = refused_record(number, clients, error)
        else:
            log.info("capacity: probe %d/%d: %d clients into %s", number, self.search.probes,
                     clients, self.out_dir / name)  # fmt: skip
            started = time.monotonic()
            document = self.run_point(settings, self.out_dir / name)
            record = probe_record(number, name, clients, document, self.out_dir / name,
                                  time.monotonic() - started, self.memory_bytes)  # fmt: skip
            if document.get("interrupted_by"):
                self.records.append(record)
                raise Interrupted(document["interrupted_by"])
        self.records.append(record)
        log.info("capacity: %d clients %s (%s)", clients,
                 "ok" if record["passed"] else "fail", record["verdict"])  # fmt: skip
        return record["passed"]

    def result(self, search: Bisection, interrupted_by: str | None = None) -> dict[str, Any]:
        """capacity.json's result: the largest ok count, the first failing one and its limit."""
        passing = None if search.passing is None else int(search.passing)
        failing = None if search.failing is None else int(search.failing)
        first_fail = next((r for r in self.records if r["clients"] == failing), None)
        status = "interrupted" if interrupted_by else search.status
        if status == "above_hi":
            status = "at_limit"  # the most the host's limits allow passed
        limit = first_fail["limit"] if first_fail else None
        if status == "at_limit":
            limit = "descriptors or ports (the host's limits: more clients cannot start)"
        reason = {
            "interrupted": f"interrupted by {interrupted_by} after {len(self.records)} probes",
            "lo_fails": f"even --lo {self.search.lo} clients fails",
            "at_limit": f"{passing} clients pass, the most this host's limits allow",
            "no_failure": f"every probe passed; {len(self.records)} probes ran out",
            "found": f"{passing} clients pass and {failing} fail",
            "searching": f"{len(self.records)} of at most {self.search.probes} probes done",
        }[status]
        if first_fail is not None:
            reason += f" ({first_fail['verdict']}: {first_fail.get('verdict_detail')})"
        return {
            "status": status,
            "largest_ok_clients": passing,
            "first_failing_clients": failing,
            "first_failing_verdict": first_fail["verdict"] if first_fail else None,
            "first_failing_errors": first_fail.get("errors") if first_fail else None,
            "limit": limit,
            "probes_run": len(self.records),
            "reason": reason,
        }

    def run(self) -> dict[str, Any]:
        """The whole search; returns the capacity.json document."""
        if self.out_dir.is_dir():
            for child in sorted(self.out_dir.iterdir()):
                if child.is_dir() and _PROBE_DIR.fullmatch(child.name):
                    shutil.rmtree(child)
        step = self.search.step or 1
        search = Bisection(
            self.search.lo, None, self.search.probes,
            stop_ratio=1 + self.search.precision, rounding=whole_steps(step), min_gap=step,
            limit=float(max(self.most // step * step, self.search.lo)),
        )  # fmt: skip
        self.write(self.result(search))
        try:
            search.run(self.probe, after_each=lambda state: self.write(self.result(state)))
        except Interrupted as stop:
            self.document["interrupted_by"] = str(stop)
            self.write(self.result(search, interrupted_by=str(stop)))
            return self.document
        self.write(self.result(search))
        log.info("capacity: %s", self.document["result"]["reason"])
        return self.document


def run_capacity(base: PointConfig, search: CapacitySearch, out_dir: Path) -> dict[str, Any]:
    """Search for the capacity of `base`'s settings into `out_dir`; the capacity.json document."""
    import psutil

    from msgprof.experiment.point import run_point

    out_dir.mkdir(parents=True, exist_ok=True)
    memory = psutil.virtual_memory().total
    return CapacityRun(base, search, out_dir, run_point, memory_bytes=memory).run()
