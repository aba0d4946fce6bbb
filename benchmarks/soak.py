#!/usr/bin/env python3
"""Soak: one server for --minutes under steady paced load with clients coming and going; do its
memory and descriptors stay flat, is every acknowledged message stored, does any client see an
error?

1. Saturation. First the closed loop: every client (--clients, in --groups client processes)
   sends 150 messages at once. Then paced probes (--probes of --probe-s seconds each, all
   clients paced alike) bisect between a quarter of that and all of it for the highest rate
   kept: at most 1 % of sends had to wait for the previous reply (the server kept up) and at
   most 10 % left over 1 ms late by the generator's own delay. That rate is the saturation of
   this server with this generator on this host. A paced client costs far more CPU a message
   than a closed-loop one (every send is its own wake-up), so on a small host a share of the
   closed loop's rate can be overload for paced clients, and a soak in overload measures its
   backlog, not a trend.
2. Soak: each client then sends at --load x saturation / clients messages a second (paced,
   latency from the intended send). Every --churn-s seconds one group (a tenth of the clients
   with the default 10 groups) disconnects and reconnects: its client process ends and a new
   one starts with the same ids, going on with their sequences (`--first-seq`); the groups
   start staggered, so each interval it is another group's turn.
3. The server's RSS, descriptors and queue bytes are sampled every 0.25 s, latency is binned
   per --bin-s from the clients' rows. After the last group ends, the server is stopped and its
   queues are read back against every acknowledgement (the probes' messages too).

Passes when, after the soak's warm-up (--warmup-s from its start), RSS and descriptors have no
upward trend (the rise of a least-squares line over the window is within 3 standard deviations
of the samples around it, or under 2 % of their mean), nothing acknowledged is lost and no
client saw an error. Writes OUT/soak.json and OUT/soak.png; exit 1 when it does not pass.

    python benchmarks/soak.py --out /tmp/soak       # 30 minutes, 1,000 clients
    python benchmarks/soak.py --minutes 2 --churn-s 10 --warmup-s 60 --probe-s 6 --probes 3 \
        --out /tmp/s                                 # the test suite's version
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from msgprof.commands import command_argv
from msgprof.config import ClientConfig, PointConfig
from msgprof.experiment.bisection import Bisection, three_figures
from msgprof.experiment.lifecycle import (
    ChildProcesses,
    msgprof_argv,
    read_json,
    server_argv,
    wait_ready,
)
from msgprof.experiment.monitor import ResourceMonitor
from msgprof.experiment.verify import verify_queues

#: Messages per client of the closed-loop burst.
BURST = 150
#: A paced probe passes when at most this share of its sends waited for the previous reply
#: (the server kept up) ...
WINDOW_FULL_SHARE = 0.01
#: ... and at most this share left over 1 ms late by the generator's own delay: on a 2-core
#: host its wake-ups alone make 1-3 % of sends that late at any rate, so the project's 1 % bar
#: for a point's generator (generator_behind) would leave no rate at all.
GENERATOR_LATE_SHARE = 0.10
#: The part of a probe (at most) before its sends count: 1,000 clients connecting.
PROBE_WARMUP_S = 2.0
#: The paced probes search between this share of the closed loop's rate and all of it.
PROBE_LO = 0.25
#: Bounds on waits, in seconds.
SERVER_READY_S = 30.0
STOP_S = 60.0


@dataclass
class Settings:
    minutes: float = 30.0
    clients: int = 1000
    groups: int = 10
    load: float = 0.7
    churn_s: float = 60.0
    warmup_s: float = 120.0
    probe_s: float = 15.0
    probes: int = 5
    bin_s: float = 10.0
    payload_bytes: int = 64
    ack_after: str = "write"


@dataclass
class Group:
    """One tenth of the clients: its ids, the next seq each of them sends, its lives."""

    ids: range
    next_seq: int = 1
    lives: list[tuple[Any, Path, int]] = field(default_factory=list)  # (process, out, messages)
    soak_from: int = 0  # lives[soak_from:] are the soak's (those before: closed loop, probes)
    done: bool = False  # no life left before the soak's end

    def running(self) -> bool:
        return bool(self.lives) and self.lives[-1][0].poll() is None


class Soak:
    def __init__(self, settings: Settings, out: Path) -> None:
        self.s = settings
        self.out = out
        self.procs = ChildProcesses()
        size = math.ceil(settings.clients / settings.groups)
        self.groups = [Group(range(1 + k * size, 1 + min((k + 1) * size, settings.clients)))
                       for k in range(settings.groups)]  # fmt: skip
        self.endpoint = ""
        self.monitor: ResourceMonitor | None = None
        self.problems: list[str] = []
        self.lives = 0
        self.soak_t0 = 0.0  # time.monotonic() at the soak's start
        self.probes: list[dict[str, Any]] = []

    def start_server(self) -> None:
        config = PointConfig(clients=self.s.clients, messages=1, ack_after=self.s.ack_after)
        work, data = self.out / "work", self.out / "queues"
        work.mkdir(parents=True)
        (self.out / "clients").mkdir()
        self.data = data
        argv = server_argv(config, data, work)
        self.server = self.procs.start("server", argv, self.out / "server.log")
        endpoint = wait_ready(work / "ready", self.server, SERVER_READY_S)
        if endpoint is None:
            raise RuntimeError(f"the server did not get ready; see {self.out / 'server.log'}")
        self.endpoint = endpoint
        self.monitor = ResourceMonitor(self.server.pid, data).start()

    def start_life(self, group: Group, messages: int, rate: float | None,
                   warmup_s: float = 0.0) -> None:  # fmt: skip
        """A client process for `group`: `messages` each from its next seq, paced at `rate`
        (sends scheduled in its first `warmup_s` not counted as measured)."""
        out = self.out / "clients" / f"life-{self.lives:04d}"
        self.lives += 1
        extra = {} if rate is None else {"rate": rate, "warmup_s": warmup_s}
        deadline = messages / rate * 2 + 120 if rate else 300
        config = ClientConfig(self.endpoint, group.ids, messages, first_seq=group.next_seq,
                              payload_bytes=self.s.payload_bytes, deadline_s=deadline,
                              timeout_s=30.0, **extra)  # fmt: skip
        argv = msgprof_argv(command_argv("client", config, out=out))
        proc = self.procs.start(out.name, argv, self.out / "clients" / f"{out.name}.log")
        group.lives.append((proc, out, messages))
        group.next_seq += messages

    def end_life(self, group: Group, within_s: float = STOP_S) -> None:
        proc, out, _messages = group.lives[-1]
        code = proc.wait(timeout=within_s)
        if code != 0 or not (out / "client.json").is_file():
            self.problems.append(f"{out.name}: exit {code}")

    def closed_loop(self) -> float:
        """Acknowledged messages a second while every client sends BURST at once."""
        for group in self.groups:
            self.start_life(group, BURST, None)
        for group in self.groups:
            self.end_life(group)
        tables = [pq.read_table(g.lives[-1][1] / "rtt.parquet") for g in self.groups]
        rtt = pa.concat_tables(tables).to_pandas()
        ok = rtt[rtt["status"] == "OK"]
        span = (ok["t_send_ns"] + ok["rtt_ns"]).max() - ok["t_send_ns"].min()
        return len(ok) / (span / 1e9)

    def probe(self, total: float) -> bool:
        """Every client paced at `total` / clients msg/s for probe_s: did they keep to it?"""
        rate = total / self.s.clients
        messages = max(2, round(rate * self.s.probe_s))
        warmup = min(PROBE_WARMUP_S, self.s.probe_s / 3)
        for group in self.groups:
            self.start_life(group, messages, rate, warmup)
        for group in self.groups:
            self.end_life(group, STOP_S + messages / rate)
        late = lateness([g.lives[-1][1] for g in self.groups])
        sends = max(late["measured_sends"], 1)
        window, generator = late["late_window_full"] / sends, late["late_generator"] / sends
        passed = window <= WINDOW_FULL_SHARE and generator <= GENERATOR_LATE_SHARE
        shares = {"window_full_share": window, "generator_late_share": generator}
        self.probes.append({"msgs_per_s": total, **shares, "passed": passed, **late})
        return passed

    def saturation(self, closed: float, progress=print) -> float:
        """The highest total rate whose paced probe kept to its schedule (a bisection between
        PROBE_LO x `closed` and `closed`)."""
        lo = three_figures(PROBE_LO * closed)

        def said(search: Bisection) -> None:
            rate, ok = search.tried[-1]
            p = self.probes[-1]
            progress(f"paced probe {rate:,.0f} msg/s: sends waiting for a reply "
                     f"{p['window_full_share']:.1%}, late by the generator "
                     f"{p['generator_late_share']:.1%}: {'kept' if ok else 'not'}")  # fmt: skip

        search = Bisection(lo, three_figures(closed), self.s.probes).run(self.probe, said)
        if search.passing is None:
            self.problems.append(f"no paced probe kept its schedule, not even {lo:,.0f} msg/s")
            return lo
        return search.passing

    def soak(self, rate: float) -> None:
        """Every group paced at `rate`; each churn interval another group starts a new life."""
        per_interval = max(1, round(rate * self.s.churn_s))
        for group in self.groups:
            group.soak_from = len(group.lives)
        self.soak_t0 = t0 = time.monotonic()
        end = t0 + self.s.minutes * 60
        for k, group in enumerate(self.groups):  # staggered: group k's first life ends at k+1
            self.start_life(group, per_interval * (k + 1), rate)
        while time.monotonic() < end + 300:  # bounded: lives are counted, with a deadline each
            active = False
            for group in self.groups:
                if group.done or group.running():
                    active |= not group.done
                    continue
                self.end_life(group)
                messages = min(per_interval * self.s.groups, int(rate * (end - time.monotonic())))
                if messages >= 1:
                    self.start_life(group, messages, rate)
                    active = True
                else:
                    group.done = True
            if not active:
                break
            time.sleep(0.2)
        else:
            self.problems.append("the soak did not end within 5 minutes of its time")
        self.soak_s = time.monotonic() - t0

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        if self.server.poll() is None and self.procs.stop(self.server, STOP_S) != 0:
            self.problems.append("the server did not stop cleanly")
        self.procs.kill_all()

    def outs(self, soak_only: bool = False) -> list[Path]:
        """The output directories of every client process, or of the soak's own only."""
        return [out for g in self.groups
                for _proc, out, _m in g.lives[g.soak_from if soak_only else 0:]]  # fmt: skip

    def rows(self, outs: list[Path]) -> pa.Table:
        outs = [out for out in outs if (out / "rtt.parquet").is_file()]
        return pa.concat_tables([pq.read_table(out / "rtt.parquet") for out in outs])

    def client_errors(self) -> dict[str, int]:
        errors: dict[str, int] = {}
        for out in self.outs():
            for kind, n in read_json(out / "client.json").get("errors", {}).items():
                if n and kind != "not_sent":
                    errors[kind] = errors.get(kind, 0) + n
        return errors


def lateness(outs: list[Path]) -> dict[str, int]:
    """The paced sends of these client processes, those late (`late_sends`), and of them those
    late because the previous reply had not come (`late_window_full`: the server's latency) or
    because the generator itself was (`late_generator`)."""
    keys = ("measured_sends", "late_sends", "late_window_full", "late_generator")
    total = dict.fromkeys(keys, 0)
    for path in outs:
        doc = read_json(path / "client.json")
        if doc.get("paced"):
            for key in keys:
                total[key] += int(doc.get(key) or 0)
    return total


def trend(t: np.ndarray, values: np.ndarray) -> dict[str, float]:
    """The least-squares line's rise over the window, the spread around it, and whether the
    rise is within it (3 standard deviations) or under 2 % of the mean."""
    if len(t) < 3:
        return {"rise": math.nan, "spread": math.nan, "mean": math.nan, "flat": False}
    slope, intercept = np.polyfit(t, values, 1)
    rise = float(slope * (t[-1] - t[0]))
    spread = float(np.std(values - (slope * t + intercept)))
    mean = float(np.mean(values))
    return {"rise": rise, "spread": spread, "mean": mean, "slope_per_min": float(slope * 60),
            "flat": bool(rise <= max(3 * spread, 0.02 * mean))}  # fmt: skip


def latency_bins(rtt: pa.Table, bin_s: float, t0_s: float) -> list[dict[str, float]]:
    """Paced rows: p50, p99 and max of the corrected latency per bin of send time, the bins
    counted in seconds from `t0_s` (CLOCK_MONOTONIC, as the rows' send times)."""
    frame = rtt.select(["t_send_ns", "latency_ns", "status"]).to_pandas()
    frame = frame[(frame["status"] == "OK") & frame["latency_ns"].notna()]
    if frame.empty:
        return []
    t = frame["t_send_ns"] / 1e9 - t0_s
    out = []
    for k, part in frame.groupby((t // bin_s).astype(int)):
        lat = part["latency_ns"].to_numpy() / 1e3
        p50, p99 = np.percentile(lat, [50, 99])
        out.append({"t_s": k * bin_s, "n": len(lat), "p50_us": float(p50), "p99_us": float(p99),
                    "max_us": float(lat.max())})  # fmt: skip
    return out


def plot(path: Path, samples: pa.Table, bins: list[dict[str, float]], bin_s: float,
         soak_start_s: float, warmup_s: float) -> None:  # fmt: skip
    """RSS, descriptors, queue bytes and latency over the server's life; dotted lines at the
    soak's start (after the saturation probes) and at the end of its warm-up."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 8))
    axes = fig.subplots(4, 1, sharex=True)
    t = np.asarray(samples["t_s"]) / 60
    panels = ((axes[0], "rss_bytes", 1 / 2**20, "server RSS (MiB)"),
              (axes[1], "open_fds", 1, "server descriptors"),
              (axes[2], "queue_bytes", 1 / 2**20, "queue files (MiB)"))  # fmt: skip
    for ax, column, scale, label in panels:
        ax.plot(t, np.asarray(samples[column]) * scale, linewidth=0.8)
        ax.set_ylabel(label)
    if bins:
        bt = (np.array([b["t_s"] for b in bins]) + bin_s / 2) / 60  # at the bins' middles
        for key, style in (("p50_us", "-"), ("p99_us", "--"), ("max_us", ":")):
            axes[3].plot(bt, [b[key] / 1e3 for b in bins], style, label=key[:-3])
        axes[3].set_yscale("log")
        axes[3].legend(loc="upper right", fontsize=8)
    for ax in axes:
        for at in (soak_start_s, soak_start_s + warmup_s):
            ax.axvline(at / 60, color="0.6", linestyle=":")
    axes[3].set_ylabel("latency (ms)")
    axes[3].set_xlabel("minutes since the server started (before the first dotted line: "
                       "saturation probes; after the second: the window judged)")  # fmt: skip
    fig.suptitle("soak: the server under steady load with clients reconnecting")
    fig.savefig(path, dpi=100)


def run(settings: Settings, out: Path, progress=print) -> dict[str, Any]:
    """The whole soak into `out` (created); its result (also OUT/soak.json)."""
    out.mkdir(parents=True, exist_ok=False)
    soak = Soak(settings, out)
    try:
        soak.start_server()
        closed = soak.closed_loop()
        progress(f"closed loop {closed:,.0f} msg/s; paced probes of {settings.probe_s:g} s")
        saturation = soak.saturation(closed, progress)
        rate = settings.load * saturation / settings.clients
        progress(f"saturation {saturation:,.0f} msg/s; soak at {rate:.2f} msg/s per client "
                 f"({rate * settings.clients:,.0f} msg/s), {settings.minutes:g} min")  # fmt: skip
        soak.soak(rate)
    finally:
        soak.stop()
    assert soak.monitor is not None
    samples = soak.monitor.table()
    monitor_t0 = float(samples.schema.metadata[b"t0_monotonic_s"])
    soak_start = soak.soak_t0 - monitor_t0  # in the samples' t_s
    rtt = soak.rows(soak.outs())
    check = verify_queues(soak.data, rtt, settings.payload_bytes)
    t = np.asarray(samples["t_s"])
    after = t >= soak_start + settings.warmup_s
    rss = trend(t[after], np.asarray(samples["rss_bytes"], dtype=float)[after])
    fds = trend(t[after], np.asarray(samples["open_fds"], dtype=float)[after])
    errors = soak.client_errors()
    lives = soak.outs(soak_only=True)
    bins = latency_bins(soak.rows(lives), settings.bin_s, monitor_t0)
    result = {
        "settings": asdict(settings), "closed_loop_msgs_per_s": closed,
        "probes": soak.probes, "saturation_msgs_per_s": saturation,
        "rate_per_client": rate, "soak_start_s": soak_start, "soak_s": soak.soak_s,
        "client_lives": soak.lives, "reconnects": len(lives) - settings.groups,
        "acked": int(check["checked"]), "lost": check["lost"],
        "duplicates_stored": check["duplicates_stored"], "corrupt": check["corrupt"],
        "client_errors": errors, "problems": soak.problems, "rss": rss, "fds": fds,
        "queue_bytes_end": int(samples["queue_bytes"][-1].as_py()),
        "latency_bins": bins, "late": lateness(lives),
    }  # fmt: skip
    result["passed"] = bool(rss["flat"] and fds["flat"] and check["lost"] == 0
                            and not check["duplicates_stored"] and not check["corrupt"]
                            and not errors and not soak.problems)  # fmt: skip
    (out / "soak.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(out / "soak.png", samples, bins, settings.bin_s, soak_start, settings.warmup_s)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = Settings()
    for name, value in asdict(defaults).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value,
                            help=f"default {value}")  # fmt: skip
    parser.add_argument("--out", type=Path, required=True, help="a new directory for the run")
    args = parser.parse_args(argv)
    settings = Settings(**{k: getattr(args, k) for k in asdict(defaults)})
    r = run(settings, args.out, progress=lambda line: print(line, file=sys.stderr))
    mib = 2**20
    print(f"soak {r['soak_s'] / 60:.1f} min, {r['client_lives']} client processes "
          f"({r['reconnects']} reconnections of {settings.clients // settings.groups} clients), "
          f"{r['acked']:,} messages stored, lost {r['lost']}, client errors "
          f"{r['client_errors'] or 'none'}")  # fmt: skip
    for name, tr, unit in (("RSS", r["rss"], mib), ("descriptors", r["fds"], 1)):
        print(f"{name}: mean {tr['mean'] / unit:,.1f}, rise over the window "
              f"{tr['rise'] / unit:+,.2f} (spread {tr['spread'] / unit:,.2f}): "
              f"{'flat' if tr['flat'] else 'RISING'}")  # fmt: skip
    late = r["late"]
    sends = max(late["measured_sends"], 1)
    print(f"closed loop {r['closed_loop_msgs_per_s']:,.0f} msg/s; saturation (paced, kept) "
          f"{r['saturation_msgs_per_s']:,.0f} msg/s after {len(r['probes'])} probes; soak at "
          f"{r['rate_per_client'] * settings.clients:,.0f} msg/s")  # fmt: skip
    print(f"paced sends late: waiting for the previous reply {late['late_window_full'] / sends:.1%}"
          f", by the generator itself {late['late_generator'] / sends:.1%}")  # fmt: skip
    p99 = [b["p99_us"] for b in r["latency_bins"]]
    if p99:
        print(f"latency p99 per {settings.bin_s:g} s: median {np.median(p99) / 1e3:.2f} ms, "
              f"max {max(p99) / 1e3:.2f} ms")  # fmt: skip
    print("PASS" if r["passed"] else f"FAIL {r['problems']}")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
