"""`msgprof knee`: the highest aggregate rate the server sustains within a latency objective.

A knee search runs paced, timed points ("probes") at one client count and bisects on the
aggregate offered rate (msg/s of all clients together; each client is paced at rate / clients).
A probe passes when its verdict is ok (so not generator_behind, no errors), its corrected p99
(point.json latency.corrected.p99_us: latency from each message's intended send) is within the
SLO, and it achieved at least 99 % of the offered rate. The order of probes:

1. --lo: if it fails, no rate passes (result null: "even --lo fails").
2. --hi: if it passes, the knee is above --hi (result null, highest passing rate --hi).
3. The geometric mean of the highest passing and the lowest failing rate (rounded to 3
   significant figures), until --probes probes ran or the two are less than 5 % apart. The mean
   is geometric because the stop rule is a ratio and rates span decades.

Without --hi, a closed-loop point with the same clients runs first (DIR/closed-loop/) and --hi is
1.25 × max_in_flight × its throughput: a client with one message in flight cannot send faster
than its round trips allow, so a paced load with window K cannot achieve much more than K times
what the closed loop reached.

Every probe is a full point kept in DIR/probe-NN-RATE/; DIR/knee.json is rewritten atomically
after each probe (and after the closed-loop point), so an interrupted search keeps what it
found. A new search in DIR first deletes the probe directories of an earlier one.

Workflow: `snakemake knee` (not part of `all`: it takes minutes) runs the search of the
config's `knee` section (clients, slo_p99_ms defaulting to slo.p99_ms, lo, hi, duration_s,
probes) with the server and client settings of every point and the `paced` section's
warmup_s, arrivals and max_in_flight, into results/<run>/knee/ (knee.json and the probes).
"""

from __future__ import annotations

import logging
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import MISSING, asdict, dataclass, replace
from pathlib import Path
from typing import Any

from msgprof import atomic, commands
from msgprof.config import LoadOptions, PointConfig
from msgprof.experiment.bisection import STOP_RATIO, Bisection, three_figures
from msgprof.setting import (
    Checked,
    Setting,
    path,
    positive,
    positive_float,
    reworded,
    setting,
    settings_of,
    switch,
)

log = logging.getLogger("msgprof.knee")

#: A probe passes only if it achieved at least this share of the rate it offered.
ACHIEVED_SHARE = 0.99
#: Without --hi: --hi is this many times max_in_flight × the closed-loop point's throughput.
HI_MARGIN = 1.25
#: The closed-loop point sends about this many messages in all, at least the minimum each.
CLOSED_LOOP_MESSAGES = 20_000
CLOSED_LOOP_MIN_MESSAGES = 10
#: Warm-up of each probe unless --warmup-s says otherwise (a lone point's default is none).
WARMUP_S = 2.0
#: Options of `msgprof point` a search does not take: it sets each probe's rate and length,
#: and has its own --out and --strict.
NOT_FROM_POINT = ("messages", "duration_s", "rate", "out", "strict")
#: Names of the probe directories of a search, the closed-loop point's among them.
_PROBE_DIR = re.compile(r"probe-\d\d+-[0-9.e+]+|closed-loop")


def at_least_2(value: int) -> str | None:
    return None if value >= 2 else f"must be at least 2 (--lo and --hi), got {value}"


@dataclass(frozen=True, kw_only=True)
class KneeSearch(Checked):
    """What a search looks for and how long it may take; rates are aggregate msg/s."""

    slo_p99_ms: float = setting(
        parse=float,
        check=positive,
        unit="ms",
        help="the objective: a probe's corrected p99 latency (from the intended send) must be "
        "at most this many milliseconds",
    )
    lo: float = positive_float(
        100.0,
        metavar="R0",
        help="lowest aggregate rate to try, msg/s of all clients together. Default: %(default)s",
    )
    hi: float | None = positive_float(
        None,
        metavar="R1",
        help="highest aggregate rate to try, msg/s. Default: 1.25 x --max-in-flight x the "
        "throughput of a closed-loop point with the same clients, run first",
    )
    duration_s: float = reworded(
        LoadOptions,
        "duration_s",
        default=10.0,
        help="seconds each probe's clients send, --warmup-s included. Default: %(default)s",
    )
    probes: int = setting(
        6,
        parse=int,
        check=at_least_2,
        metavar="N",
        help="most probes (points) the search runs, --lo and --hi included; it stops earlier "
        "when the bracket is under 5%% wide. Default: %(default)s",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.hi is not None and self.lo >= self.hi:
            raise ValueError(f"--lo {self.lo:g} must be below --hi {self.hi:g}")


@dataclass(frozen=True, kw_only=True)
class KneeArguments:
    """Command-line arguments of `msgprof knee` that are no setting of the search. Never
    constructed."""

    out: Path = path(
        MISSING, help="directory of the search: knee.json and a point directory per probe"
    )
    strict: bool = switch(help="exit 1 when no rate passed (even --lo failed)")


def point_options() -> Iterator[tuple[str, Any, Setting]]:
    """The options of `msgprof point` a search passes on to every probe (warm-up by default
    WARMUP_S: a probe is short, and its first seconds are not the steady state)."""
    return commands.point_options_of_search(NOT_FROM_POINT, {"warmup_s": WARMUP_S})


def options() -> Iterator[tuple[str, Any, Setting]]:
    """(name, default, setting) of every option of `msgprof knee`, in --help order."""
    point = list(point_options())
    yield from (item for item in point if item[0] == "clients")
    for model in (KneeSearch, KneeArguments):
        yield from ((name, spec.default, how) for name, (spec, how) in settings_of(model).items())
    yield from (item for item in point if item[0] != "clients")


def base_point(point_settings: dict[str, Any], search: KneeSearch) -> PointConfig:
    """The point model of the search's probes (at --lo); a bad combination fails here, before
    any probe runs."""
    clients = point_settings["clients"]
    return PointConfig(**point_settings, rate=search.lo / clients, duration_s=search.duration_s)


def knee_argv(point: PointConfig, search: KneeSearch, out: Path, strict: bool = False) -> list[str]:
    """`["knee", options...]`: the command line of a search with the settings of `point` (a
    probe's model; its rate and length are the search's) and `search`."""
    values = {name: getattr(point, name) for name, _default, _how in point_options()}
    return commands.search_argv(
        "knee", options(), values | asdict(search) | {"out": out, "strict": strict}
    )


# --- a probe: one point, judged --------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A number of point.json, None for a missing or NaN one (an empty histogram)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def judge(document: dict[str, Any], slo_p99_ms: float) -> tuple[bool, str]:
    """(passed, why) of a paced point's point.json document under the objective."""
    failures = []
    if document["verdict"] != "ok":
        failures.append(f"verdict {document['verdict']}: {document.get('verdict_detail')}")
    p99_us = _number(document["latency"]["corrected"]["p99_us"])
    if p99_us is None:
        failures.append("no measured latency")
    elif p99_us > slo_p99_ms * 1e3:
        failures.append(f"corrected p99 {p99_us / 1e3:.3g} ms is over the SLO {slo_p99_ms:g} ms")
    offered = document["offered_msgs_per_s"]
    achieved = _number(document["achieved_msgs_per_s"])
    if achieved is None:
        failures.append("no achieved rate (no window with every client on its schedule)")
    elif achieved < ACHIEVED_SHARE * offered:
        failures.append(f"achieved {achieved:.1f} msg/s, under {ACHIEVED_SHARE:.0%} of the "
                        f"{offered:.1f} offered")  # fmt: skip
    if failures:
        return False, "; ".join(failures)
    return True, (f"corrected p99 {p99_us / 1e3:.3g} ms within the SLO {slo_p99_ms:g} ms; "
                  f"achieved {achieved:.1f} of {offered:.1f} msg/s")  # fmt: skip


def probe_record(number: int, name: str, rate: float, document: dict[str, Any],
                 slo_p99_ms: float, wall_s: float) -> dict[str, Any]:  # fmt: skip
    """What knee.json keeps of one probe."""
    passed, why = judge(document, slo_p99_ms)
    corrected = document["latency"]["corrected"]
    return {
        "probe": number,
        "dir": name,
        "rate_msgs_per_s": rate,
        "rate_per_client": document["rate_per_client"],
        "offered_msgs_per_s": document["offered_msgs_per_s"],
        "achieved_msgs_per_s": _number(document["achieved_msgs_per_s"]),
        "verdict": document["verdict"],
        "p50_us": _number(corrected["p50_us"]),
        "p99_us": _number(corrected["p99_us"]),
        "p999_us": _number(corrected["p999_us"]),
        "measured_sends": document.get("measured_sends"),
        "lag_p99_us": _number(document.get("lag_p99_us")),
        "passed": passed and not document.get("interrupted_by"),
        "why": why,
        "wall_s": round(wall_s, 3),
    }


# --- the search -------------------------------------------------------------------------------


class Interrupted(Exception):
    """A probe was stopped by SIGTERM or SIGINT: the search ends there."""


def closed_loop_point(base: PointConfig) -> PointConfig:
    """The closed-loop point that sets the default --hi: the probes' clients and settings,
    about CLOSED_LOOP_MESSAGES messages in all, one in flight each."""
    unpaced = ("rate", "duration_s", "arrivals", "max_in_flight", "warmup_s")
    closed = {name: PointConfig.__dataclass_fields__[name].default for name in unpaced}
    messages = max(CLOSED_LOOP_MIN_MESSAGES, math.ceil(CLOSED_LOOP_MESSAGES / base.clients))
    return replace(base, messages=messages, **closed)


def hi_from_closed_loop(document: dict[str, Any], base: PointConfig) -> float | None:
    """--hi from the closed-loop point's point.json document; None unless its verdict is ok."""
    throughput = _number(document.get("throughput_msgs_per_s"))
    if document["verdict"] != "ok" or not throughput:
        return None
    return three_figures(HI_MARGIN * base.max_in_flight * throughput)


def _clear_earlier_search(out_dir: Path) -> None:
    """Delete the probe directories an earlier search left in `out_dir`, so that every point
    directory there is one knee.json lists."""
    if not out_dir.is_dir():
        return
    for child in sorted(out_dir.iterdir()):
        if child.is_dir() and _PROBE_DIR.fullmatch(child.name):
            log.info("knee: deleting %s of an earlier search", child)
            shutil.rmtree(child)


class KneeRun:
    """One search into `out_dir`: it runs the points (with `run_point`) and keeps knee.json."""

    def __init__(self, base: PointConfig, search: KneeSearch, out_dir: Path,
                 run_point: Callable[[PointConfig, Path], dict[str, Any]]) -> None:  # fmt: skip
        self.base = base
        self.search = search
        self.out_dir = Path(out_dir)
        self.run_point = run_point
        self.records: list[dict[str, Any]] = []
        self.document: dict[str, Any] = {
            "search": {
                "clients": base.clients,
                "slo_p99_ms": search.slo_p99_ms,
                "lo_msgs_per_s": search.lo,
                "hi_msgs_per_s": search.hi,
                "hi_from": "--hi" if search.hi is not None else None,
                "duration_s": search.duration_s,
                "warmup_s": base.warmup_s,
                "arrivals": base.arrivals,
                "max_in_flight": base.max_in_flight,
                "max_probes": search.probes,
                "stop_ratio": STOP_RATIO,
                "passes_when": f"verdict ok, corrected p99 <= {search.slo_p99_ms:g} ms, achieved "
                f">= {ACHIEVED_SHARE:g} x offered",
            },
            "parameters": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in asdict(base).items()
                if k not in ("rate", "messages")
            },
            "started_unix_s": time.time(),
            "closed_loop": None,
            "probes": self.records,
            "result": None,
        }

    def write(self, result: dict[str, Any]) -> None:
        self.document["result"] = result
        self.document["updated_unix_s"] = time.time()
        atomic.write_json(self.out_dir / "knee.json", self.document)

    def _point(self, config: PointConfig, name: str) -> tuple[dict[str, Any], float]:
        """Run one point into out_dir/name: (its point.json document, wall seconds)."""
        if config.data_dir is not None:
            config = replace(config, data_dir=Path(config.data_dir) / name)
        started = time.monotonic()
        document = self.run_point(config, self.out_dir / name)
        return document, time.monotonic() - started

    def closed_loop_hi(self) -> float | None:
        """Run the closed-loop point; the --hi it gives, or None (the reason is in knee.json)."""
        config = closed_loop_point(self.base)
        log.info("knee: no --hi: a closed-loop point of %d clients x %d messages first",
                 config.clients, config.messages)  # fmt: skip
        document, wall_s = self._point(config, "closed-loop")
        hi = hi_from_closed_loop(document, self.base)
        self.document["closed_loop"] = {
            "dir": "closed-loop",
            "messages": config.messages,
            "verdict": document["verdict"],
            "throughput_msgs_per_s": _number(document.get("throughput_msgs_per_s")),
            "hi_msgs_per_s": hi,
            "wall_s": round(wall_s, 3),
        }
        self.document["search"] |= {"hi_msgs_per_s": hi, "hi_from": "closed-loop point"}
        if document.get("interrupted_by"):
            raise Interrupted(document["interrupted_by"])
        return hi

    def _no_hi(self, hi: float | None) -> str:
        """Why the closed-loop point gives no --hi to search below."""
        closed = self.document["closed_loop"]
        if hi is None:
            return (f"the closed-loop point that sets --hi ended with verdict {closed['verdict']} "
                    "(see closed-loop/point.json): give --hi")  # fmt: skip
        return (f"the closed-loop point reached {closed['throughput_msgs_per_s']:.1f} msg/s, "
                f"so --hi would be {hi:g}, not above --lo {self.search.lo:g}: give --hi or a "
                "lower --lo")  # fmt: skip

    def probe(self, rate: float) -> bool:
        """Run the probe at aggregate `rate`, record it, rewrite knee.json; whether it passed."""
        number = len(self.records) + 1
        name = f"probe-{number:02d}-{rate:.15g}"
        config = replace(self.base, rate=rate / self.base.clients)
        log.info("knee: probe %d/%d at %.15g msg/s (%.4g per client) into %s", number,
                 self.search.probes, rate, config.rate, self.out_dir / name)  # fmt: skip
        document, wall_s = self._point(config, name)
        record = probe_record(number, name, rate, document, self.search.slo_p99_ms, wall_s)
        self.records.append(record)
        log.info("knee: probe %d at %.15g msg/s %s: %s", number, rate,
                 "passes" if record["passed"] else "fails", record["why"])  # fmt: skip
        if document.get("interrupted_by"):
            raise Interrupted(document["interrupted_by"])
        return record["passed"]

    def result(self, bisection: Bisection | None, interrupted_by: str | None = None,
               no_hi: str | None = None) -> dict[str, Any]:  # fmt: skip
        """knee.json's result: the status, the knee (or null) and why, in words."""
        passing = bisection.passing if bisection else None
        failing = bisection.failing if bisection else None
        why = {record["rate_msgs_per_s"]: record["why"] for record in self.records}
        status = ("interrupted" if interrupted_by else "no_hi" if no_hi
                  else bisection.status if bisection else "searching")  # fmt: skip
        if status == "interrupted":
            so_far = "none" if passing is None else f"{passing:g} msg/s"
            reason = (f"interrupted by {interrupted_by} after {len(self.records)} probes; "
                      f"highest passing rate so far: {so_far}")  # fmt: skip
        elif status == "no_hi":
            reason = no_hi
        elif status == "lo_fails":
            reason = f"even --lo {self.search.lo:g} msg/s fails: {why[self.search.lo]}"
        elif status == "above_hi":
            reason = f"--hi {passing:g} msg/s passes: the knee is above --hi"
        elif status == "found":
            ending = (f"the two are {failing / passing:.3f}x apart" if failing / passing
                      < STOP_RATIO else f"stopped after {len(self.records)} probes")  # fmt: skip
            reason = (f"{passing:g} msg/s passes and {failing:g} msg/s fails "
                      f"({why[failing]}); {ending}")  # fmt: skip
        else:
            reason = f"{len(self.records)} of at most {self.search.probes} probes done"
        knee = passing if status == "found" else None
        return {
            "status": status,
            "knee_msgs_per_s": knee,
            "knee_per_client": None if knee is None else knee / self.base.clients,
            "highest_passing_msgs_per_s": passing,
            "lowest_failing_msgs_per_s": failing,
            "bracket_ratio": failing / passing if passing and failing else None,
            "probes_run": len(self.records),
            "reason": reason,
        }

    def run(self) -> dict[str, Any]:
        """The whole search; returns the knee.json document."""
        _clear_earlier_search(self.out_dir)
        self.write(self.result(None))
        bisection = None
        try:
            hi = self.search.hi if self.search.hi is not None else self.closed_loop_hi()
            if hi is None or hi <= self.search.lo:
                self.write(self.result(None, no_hi=self._no_hi(hi)))
                log.warning("knee: %s", self.document["result"]["reason"])
                return self.document
            bisection = Bisection(self.search.lo, hi, self.search.probes)
            bisection.run(self.probe, after_each=lambda state: self.write(self.result(state)))
        except Interrupted as stop:
            self.document["interrupted_by"] = str(stop)
            self.write(self.result(bisection, interrupted_by=str(stop)))
            return self.document
        self.write(self.result(bisection))
        log.info("knee: %s: %s", self.document["result"]["status"],
                 self.document["result"]["reason"])  # fmt: skip
        return self.document


def run_knee(base: PointConfig, search: KneeSearch, out_dir: Path) -> dict[str, Any]:
    """Search for the knee of `base`'s clients and settings into `out_dir`; the knee.json
    document."""
    # Imported here: the workflow imports this module for knee_argv alone, without the
    # packages a run needs.
    from msgprof.experiment.point import run_point

    return KneeRun(base, search, out_dir, run_point).run()
