"""One fuzzing run: the server, the legitimate rounds before, during and after, the fuzzer
processes, and the report that sets what they sent beside what the server counted."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from msgprof.config import PointConfig
from msgprof.experiment.clients import run_load
from msgprof.experiment.lifecycle import ChildProcesses, ServerRun
from msgprof.experiment.verify import verify_queues
from msgprof.stats import quantiles
from msgprof.store.reader import QueueReader

from .flags import Flags
from .options import FuzzConfig, worker_argv


def _rtt_summary(rtt: pa.Table | None) -> dict[str, Any]:
    """Quantiles (msgprof.stats: measured values) of a phase's OK round trips, in µs."""
    if rtt is None or rtt.num_rows == 0:
        return {"samples": 0}
    ok = rtt.filter(pc.equal(rtt["status"], "OK"))["rtt_ns"].to_numpy()
    if ok.size == 0:
        return {"samples": 0}
    p50, p99, p999 = quantiles(ok, (0.5, 0.99, 0.999))
    return {
        "samples": int(ok.size),
        "p50_us": p50 / 1e3,
        "p99_us": p99 / 1e3,
        "p999_us": p999 / 1e3,
        "max_us": float(ok.max()) / 1e3,
    }


#: Counters summed over the DEALER fuzzers' results.
_SUMMED = (
    "unanswered",
    "messages",
    "connections",
    "takeovers",
    "malformed",
    "reply_errors",
    "missing_replies",
)


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several fuzzer results."""
    total: dict[str, Any] = {"rejected": Counter(), "replies": Counter()}
    for doc in results:
        total["rejected"].update(doc["rejected"])
        total["replies"].update(doc["replies"])
        for key in _SUMMED:
            total[key] = total.get(key, 0) + doc.get(key, 0)
    return total


class Run:
    """The server, the legitimate rounds and the fuzzers of one fuzzing run."""

    def __init__(self, config: FuzzConfig, out: Path) -> None:
        self.config = config
        self.out = out
        self.deadline = time.monotonic() + config.time_limit_s
        self.procs = ChildProcesses()
        self.problems: list[str] = []
        self.point = PointConfig(
            clients=config.legit_clients,
            messages=config.legit_messages,
            processes=1,
            max_payload_bytes=config.max_payload_bytes,
            timeout_s=10.0,
            start="on_connect",
        )
        self.data_dir = out / "queues"
        self.data_dir.mkdir(parents=True)
        (out / "server").mkdir()
        self.server = ServerRun(
            self.point, self.data_dir, out / "server", out / "server.log", self.procs
        )
        self.rounds: list[dict[str, Any]] = []
        self.rtt: dict[str, list[pa.Table]] = {"before": [], "during": [], "after": []}
        self.rss: dict[str, int] = {}
        self.loadavg = {"start": os.getloadavg()[0]}  # a shared host's other load shows in RTT

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def legit_round(self, phase: str) -> None:
        """One round of legitimate clients with ids no earlier round used."""
        n = len(self.rounds)
        first = 1 + n * self.config.legit_clients
        config = replace(self.point, first_client_id=first, deadline_s=max(1.0, self.remaining()))
        round_dir = self.out / f"legit-{n:02d}-{phase}"
        round_dir.mkdir()
        t0 = time.monotonic()
        load = run_load(
            config, self.server.endpoint, round_dir, round_dir, self.procs, self.problems
        )
        docs = load.docs
        self.rounds.append(
            {
                "phase": phase,
                "client_ids": [first, first + config.clients - 1],
                "planned": config.clients * config.messages,
                "sent": sum(d.get("sent", 0) for d in docs),
                "acked": sum(d.get("acked", 0) for d in docs),
                "errors": dict(sum((Counter(d.get("errors", {})) for d in docs), Counter())),
                "connected": sum(d.get("connected", 0) for d in docs),
                "wall_s": time.monotonic() - t0,
            }
        )
        if load.rtt is not None:
            self.rtt[phase].append(load.rtt)

    def server_rss(self, label: str) -> None:
        import psutil

        try:
            self.rss[label] = psutil.Process(self.server.process.pid).memory_info().rss
        except psutil.Error:
            self.rss[label] = -1

    def start_fuzzers(self, flag_dir: Path, budget: float) -> list[tuple[str, Any]]:
        """Start the DEALER fuzzers and the raw one; (name, process) of each."""
        c = self.config
        names = [f"dealer-{k}" for k in range(c.dealer_workers)] + ["raw"]
        shares = [
            c.messages // c.dealer_workers + (k < c.messages % c.dealer_workers)
            for k in range(c.dealer_workers)
        ]
        workers = []
        for k, name in enumerate(names):
            kind, quota = ("raw", c.raw_connections) if name == "raw" else ("dealer", shares[k])
            argv = worker_argv(
                worker=kind,
                endpoint=self.server.endpoint,
                dir=str(flag_dir),
                index=k,
                seed=c.seed,
                quota=quota,
                batch=c.batch,
                time_limit_s=budget,
                max_payload_bytes=c.max_payload_bytes,
            )
            workers.append((name, self.procs.start(name, argv, self.out / f"fuzz-{name}.log")))
        return workers

    def fuzz_phase(self) -> tuple[list[dict[str, Any]], float]:
        """Fuzzers on, legitimate rounds until every fuzzer reached its quota; their results."""
        flag_dir = self.out / "flags"
        flag_dir.mkdir()
        budget = max(1.0, self.remaining() - 60)  # leave time for the after round and the checks
        workers = self.start_fuzzers(flag_dir, budget)
        flags = [Flags(flag_dir, name) for name, _proc in workers]
        running = [proc for _name, proc in workers]
        t0 = time.monotonic()
        while not all(f.marked("started") for f in flags):
            if time.monotonic() - t0 > 30 or any(w.poll() is not None for w in running):
                self.problems.append("fuzzer_failed_to_start")
                break
            time.sleep(0.02)
        while not all(f.marked("quota") for f in flags):
            if self.remaining() < 60 or any(w.poll() is not None for w in running):
                break
            self.legit_round("during")
        (flag_dir / "stop").touch()
        for name, proc in workers:
            try:
                if proc.wait(timeout=max(1.0, budget - (time.monotonic() - t0)) + 30) != 0:
                    self.problems.append(f"fuzzer_{name}_failed")
            except subprocess.TimeoutExpired:  # killed with the other children at the end
                self.problems.append(f"fuzzer_{name}_hung")
        wall = time.monotonic() - t0
        results = [
            json.loads(f.result.read_text())
            if f.result.exists()
            else {"worker": f.name, "missing": True}
            for f in flags
        ]
        return results, wall

    def settle(self, expected_received: int) -> int:
        """Wait until the server has taken in every message sent (bounded); what it reports."""
        received = -1
        for _ in range(100):
            received = self.server.snapshot(timeout_s=10).get("received", -1)
            if received >= expected_received or self.server.process.poll() is not None:
                break
            time.sleep(0.1)
        return received

    def execute(self) -> dict[str, Any]:
        endpoint = self.server.start()
        if endpoint is None:
            raise RuntimeError(f"server did not start: {(self.out / 'server.log').read_text()}")
        self.server_rss("start")
        self.legit_round("before")
        self.server_rss("before_fuzz")
        self.results, self.fuzz_wall = self.fuzz_phase()
        self.server_rss("after_fuzz")
        self.legit_round("after")
        self.server_rss("end")
        found = [r for r in self.results if "missing" not in r]
        self.dealer = _merge([r for r in found if r["worker"].startswith("dealer")])
        self.raw = next((r for r in found if r["worker"] == "raw"), {})
        legit_sent = sum(r["sent"] for r in self.rounds)
        self.expected_received = (
            legit_sent + self.dealer.get("messages", 0) + self.raw.get("messages", 0)
        )
        self.received_before_stop = self.settle(self.expected_received)
        return self.report(self.server.stop(self.problems))

    def _queues(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(verification of the legitimate queues, the fuzzers' queues against the model)."""
        legit_ids = [
            i for r in self.rounds for i in range(r["client_ids"][0], r["client_ids"][1] + 1)
        ]
        tables = [t for phase in self.rtt.values() for t in phase]
        legit_rtt = pa.concat_tables(tables) if tables else None
        verified = verify_queues(
            self.data_dir, legit_rtt, self.point.payload_bytes, client_ids=legit_ids
        )
        fuzz_last = {int(k): v for r in self.results for k, v in r.get("last_seq", {}).items() if v}
        reader = QueueReader(self.data_dir)
        mismatched = [
            cid
            for cid, last in fuzz_last.items()
            if [rec.seq for rec in reader.records(cid, after_seq=0)] != list(range(1, last + 1))
        ]
        unexpected = sorted(set(reader.client_ids()) - set(legit_ids) - set(fuzz_last))
        return verified, {
            "clients_with_data": len(fuzz_last),
            "mismatched": mismatched,
            "unexpected_queue_ids": unexpected,
        }

    def _expected(self) -> dict[str, Any]:
        """What the server must have counted: the fuzzers' predictions and the legit rounds."""
        dealer, raw = self.dealer, self.raw
        replies = Counter(dealer.get("replies", {})) + Counter(raw.get("replies", {}))
        replies["OK"] += sum(r["acked"] for r in self.rounds)
        rejected = Counter(dealer.get("rejected", {})) + Counter(raw.get("rejected", {}))
        return {
            "rejected": dict(rejected),
            "unanswered": dealer.get("unanswered", 0) + raw.get("unanswered", 0),
            "replies": dict(replies),
            "received": self.expected_received,
            "takeovers": dealer.get("takeovers", 0),
            "accepted": sum(r["connected"] for r in self.rounds)
            + dealer.get("connections", 0)
            + raw.get("connected", 0),
        }

    def _server(self, stats: dict[str, Any]) -> dict[str, Any]:
        """What the server counted (its final stats), and its RSS along the run."""
        return {
            "received": stats.get("received"),
            "received_before_stop": self.received_before_stop,
            "rejected": stats.get("rejected", {}),
            "unanswered": stats.get("unanswered"),
            "replies": stats.get("replies", {}),
            "stored": stats.get("stored"),
            "unroutable": stats.get("unroutable"),
            "client_id_takeovers": stats.get("client_id_takeovers"),
            "connections": stats.get("connections", {}),
            "service_ns": stats.get("service_ns", {}),
            "rss_bytes": self.rss,
        }

    def report(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The run's report, from the server's final stats and what the fuzzers sent."""
        verified, fuzz_queues = self._queues()
        return {
            "config": asdict(self.config),
            "server_exit": self.server.process.returncode,
            "problems": self.problems,
            "fuzz_wall_s": self.fuzz_wall,
            "loadavg_1min": {**self.loadavg, "end": os.getloadavg()[0]},
            "workers": self.results,
            "dealer": {
                k: (dict(v) if isinstance(v, Counter) else v) for k, v in self.dealer.items()
            },
            "raw": self.raw,
            "legit": {
                "rounds": self.rounds,
                "rtt": {
                    phase: _rtt_summary(pa.concat_tables(ts) if ts else None)
                    for phase, ts in self.rtt.items()
                },
            },
            "verification": verified,
            "fuzz_queues": fuzz_queues,
            "expected": self._expected(),
            "server": self._server(stats),
        }


def run_fuzz(config: FuzzConfig, out: Path) -> dict[str, Any]:
    """Run the whole fuzzing run in `out` (created); return its report. Every child is stopped."""
    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, out)
    try:
        return run.execute()
    finally:
        if run.server.monitor is not None:
            run.server.monitor.stop()
        run.procs.kill_all()
