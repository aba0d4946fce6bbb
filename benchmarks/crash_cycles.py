#!/usr/bin/env python3
"""Crash recovery under load: SIGKILL the server mid-load, restart it, check every queue.

For each ack mode, one data directory, one endpoint (the restarted server binds the port the
first one was given), and `--cycles` kill/restart cycles:

  write, fsync  one `msgprof client --resend` process (20 clients, more messages than the run
                needs) runs through all cycles, so every kill lands in the load. After the last
                restart the clients run on for --run-on-s (each reconnects and resends), then
                SIGTERM ends them and they write their records; the server is stopped with
                SIGTERM and the queues are read back: not one acknowledged message may be lost
                (`lost` = 0) and no seq may be stored twice (`duplicates_stored` = 0). Clients
                resend what was in flight; the server answers DUPLICATE for what it had stored
                before the kill.
  buffer        acknowledged from process memory, flushed every --flush-interval-ms: a kill
                loses what was acknowledged since the last flush. Each cycle runs a fresh
                client process (new ids) and one kill; a client that lost messages sees
                OUT_OF_ORDER when it resends and stops, the others run on for --run-on-s. The
                loss of each kill is measured and compared with what the flush interval
                allows: acknowledgements per second just before the kill x the interval. The
                oldest lost message's send time is compared with the interval too (the server
                acknowledged it after that, so its age at the kill is at most this).

    python benchmarks/crash_cycles.py                          # 20 cycles each, ~2-3 minutes
    python benchmarks/crash_cycles.py --cycles 5 --modes write --seed 7
    python benchmarks/crash_cycles.py --markdown               # tables as Markdown

Exit status 1 if write or fsync lost an acknowledged message, or any mode stored a seq twice or
read back a corrupt record; the buffer bound is reported, not gated.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from msgprof.commands import command_argv
from msgprof.config import ClientConfig, PointConfig
from msgprof.experiment.lifecycle import (
    ChildProcesses,
    ServerRun,
    msgprof_argv,
    server_argv,
    wait_ready,
)
from msgprof.experiment.verify import STORED_STATUSES, verify_queues
from msgprof.store.reader import QueueReader

# The report module sits beside this script, which is also loaded by file path (the tests).
sys.path.insert(0, str(Path(__file__).resolve().parent))
from crash_report import buffer_summary, buffer_table, failures, summary_table

MODES = ("write", "fsync", "buffer")
#: Bounds on every wait, in seconds.
SERVER_READY_S = 30.0
KILL_WAIT_S = 10.0
CLIENT_START_S = 30.0
CLIENT_STOP_S = 60.0
#: Bound on waiting for the clients to be back after a restart.
TRAFFIC_WAIT_S = 30.0
#: Restarting on the same port: tries (0.1 s apart) while the bind is refused.
BIND_TRIES = 50
#: Acknowledgements per second before a kill are counted over this window (seconds).
RATE_WINDOW_S = 0.5


@dataclass
class Settings:
    """What one run of a mode does; times in seconds."""

    mode: str
    cycles: int = 20
    clients: int = 20
    #: Per client: more than a run sends (SIGTERM ends the clients), so the load never runs out.
    messages: int = 50_000
    payload_bytes: int = 64
    flush_interval_ms: float = 10.0
    #: The kill comes this long (uniform, seeded) after the server's queue files started to grow
    #: again, i.e. after the clients are back and it is storing their messages.
    kill_after: tuple[float, float] = (0.05, 0.6)
    #: Resend fallback when no reply comes while connected.
    timeout_s: float = 1.0
    #: After the last restart (write, fsync) or each restart (buffer) the clients run this long.
    run_on_s: float = 1.0
    #: Bound on each client process.
    client_deadline_s: float = 300.0
    seed: int = 1
    #: The server's --sync-method (benchmarks/powerloss_cycles.py runs each).
    sync_method: str = "auto"
    #: A kill may lose acknowledged messages (write mode under power loss), as in buffer mode:
    #: a new client process per cycle (one that lost some stops at its resend), the loss
    #: measured per kill and not a failure.
    may_lose: bool = False

    @property
    def loss_allowed(self) -> bool:
        return self.mode == "buffer" or self.may_lose


@dataclass
class Kill:
    """One kill/restart cycle."""

    t_kill_ns: int
    #: When the server this kill ended got ready (perf_counter_ns).
    t_ready_ns: int
    #: A client process was running when the kill came.
    under_load: bool
    #: Acknowledgements the killed server sent in its life (read back from the clients' rows).
    acks_in_life: int = 0
    restart_s: float = 0.0
    recovery_findings: int = 0
    ids: tuple[int, int] = (0, 0)
    lost: int = 0
    rate_per_s: float = 0.0
    oldest_lost_ms: float | None = None


@dataclass
class ModeResult:
    """What a mode's cycles found; `check` is verify_queues' answer for all its clients."""

    settings: Settings
    kills: list[Kill] = field(default_factory=list)
    check: dict[str, Any] = field(default_factory=dict)
    client_docs: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def total(self, key: str) -> int:
        return sum(int(doc.get(key, 0) or 0) for doc in self.client_docs)

    def errors(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for doc in self.client_docs:
            for kind, count in doc.get("errors", {}).items():
                if count:
                    out[kind] = out.get(kind, 0) + count
        return out


class CrashServer(ServerRun):
    """A point's server (stopped with SIGTERM like one) that can also be killed and restarted
    on the same endpoint; each start logs to its own server-N.log. No resource monitor."""

    def __init__(self, settings: Settings, data_dir: Path, work: Path, procs: ChildProcesses):
        config = PointConfig(
            clients=settings.clients,
            messages=settings.messages,
            ack_after=settings.mode,
            flush_interval_ms=settings.flush_interval_ms,
            sync_method=settings.sync_method,
        )
        super().__init__(config, data_dir, work, work / "server-1.log", procs)
        self.starts = 0
        self.t_ready_ns = 0

    def start(self) -> str:
        """Start on a free port the first time, on the same endpoint after; return it."""
        bind = self.endpoint or "tcp://127.0.0.1:0"
        for _ in range(BIND_TRIES):
            ready = self.work / "ready"
            ready.unlink(missing_ok=True)
            self.starts += 1
            self.log_path = self.work / f"server-{self.starts}.log"
            argv = server_argv(self.config, self.data_dir, self.work) + ["--bind", bind]
            self.process = self.procs.start(f"server-{self.starts}", argv, self.log_path)
            endpoint = wait_ready(ready, self.process, SERVER_READY_S)
            if endpoint is not None:
                self.t_ready_ns = time.perf_counter_ns()
                self.endpoint = endpoint
                return endpoint
            if self.process.poll() is None:
                break  # alive but never ready: not a bind problem
            if "Address already in use" not in self.log_path.read_text(errors="replace"):
                break
            time.sleep(0.1)  # the port is still held (TIME_WAIT without reuse, a slow exit)
        raise RuntimeError(f"server did not get ready on {bind}; see {self.log_path}")

    def kill(self) -> int:
        """SIGKILL; returns the kill time (perf_counter_ns, CLOCK_MONOTONIC like the clients')."""
        assert self.process is not None
        t = time.perf_counter_ns()
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=KILL_WAIT_S)
        return t

    def recovery_findings(self) -> int:
        """Recovery findings the running server logged at open (torn tails cut and the like)."""
        return len(re.findall(r"recovery: ", self.log_path.read_text(errors="replace")))


class ClientRun:
    """`msgprof client --resend` child processes, each with its own ids and output dir."""

    def __init__(self, settings: Settings, work: Path, procs: ChildProcesses) -> None:
        self.settings = settings
        self.work = work
        self.procs = procs
        self.runs: list[tuple[subprocess.Popen, Path, tuple[int, int]]] = []
        self.stopped = 0  # runs[:stopped] are stopped and checked
        self.next_id = 1

    def start(self, endpoint: str) -> tuple[int, int]:
        s = self.settings
        lo, hi = self.next_id, self.next_id + s.clients - 1
        self.next_id = hi + 1
        out = self.work / f"client-{len(self.runs)}"
        client = ClientConfig(
            endpoint,
            range(lo, hi + 1),
            s.messages,
            payload_bytes=s.payload_bytes,
            timeout_s=s.timeout_s,
            deadline_s=s.client_deadline_s,
            resend=True,
        )
        argv = msgprof_argv(command_argv("client", client, out=out))
        log = self.work / f"{out.name}.log"
        proc = self.procs.start(out.name, argv, log)
        self.runs.append((proc, out, (lo, hi)))
        # Its loop logs a progress line when it starts and then every second: from the first
        # one on it is connecting and sending (imports alone take a few hundred ms).
        deadline = time.monotonic() + CLIENT_START_S
        while "connected " not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"client process did not start; see {log}")
            time.sleep(0.01)
        return lo, hi

    def running(self) -> bool:
        return bool(self.runs) and self.runs[-1][0].poll() is None

    def stop(self, problems: list[str]) -> None:
        """SIGTERM every client process still running (each then writes its records), wait."""
        for proc, _out, _ids in self.runs[self.stopped :]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, out, _ids in self.runs[self.stopped :]:
            try:
                code = proc.wait(timeout=CLIENT_STOP_S)
            except subprocess.TimeoutExpired:
                problems.append("client_hung")
                proc.kill()
                proc.wait()
                continue
            # A SIGTERM that comes while the process is already exiting (its handler gone with
            # the interpreter) ends it with -SIGTERM: harmless once its records are written.
            if code not in (0, -signal.SIGTERM) or not (out / "client.json").exists():
                problems.append(f"client_failed ({out.name}: exit {code})")
        self.stopped = len(self.runs)

    def rtt(self) -> pa.Table | None:
        tables = [pq.read_table(out / "rtt.parquet") for _, out, _ in self.runs
                  if (out / "rtt.parquet").exists()]  # fmt: skip
        return pa.concat_tables(tables) if tables else None

    def docs(self) -> list[dict[str, Any]]:
        import json

        return [json.loads((out / "client.json").read_text()) for _, out, _ in self.runs
                if (out / "client.json").exists()]  # fmt: skip


def _acked_at(rtt: pa.Table) -> tuple[pa.Table, pa.Array]:
    """The rows acknowledged as stored and the time each ack was read (ns, CLOCK_MONOTONIC)."""
    stored = rtt.filter(pc.is_in(rtt["status"], value_set=pa.array(STORED_STATUSES)))
    return stored, pc.add(stored["t_send_ns"], stored["rtt_ns"])


def rate_before(rtt: pa.Table, ids: tuple[int, int], t_kill: int) -> float:
    """Acknowledgements per second of clients `ids` before `t_kill`, over RATE_WINDOW_S or
    from their first send if that is later (a rate, not diluted by the start)."""
    stored, at = _acked_at(rtt)
    mine = pc.and_(
        pc.greater_equal(rtt["client_id"], ids[0]), pc.less_equal(rtt["client_id"], ids[1])
    )
    first_send = pc.min(pc.filter(rtt["t_send_ns"], mine)).as_py()
    if first_send is None or first_send >= t_kill:
        return 0.0
    lo = max(t_kill - int(RATE_WINDOW_S * 1e9), first_send)
    mask = pc.and_(
        pc.and_(
            pc.greater_equal(stored["client_id"], ids[0]),
            pc.less_equal(stored["client_id"], ids[1]),
        ),
        pc.and_(pc.greater(at, lo), pc.less_equal(at, t_kill)),
    )
    return (pc.sum(mask.cast(pa.int64())).as_py() or 0) / ((t_kill - lo) / 1e9)


def lost_ages_ms(data_dir: Path, rtt: pa.Table, ids: tuple[int, int], t_kill: int) -> list[float]:
    """For each acknowledged seq of clients `ids` that is not stored: ms from its send to the kill.

    The server acknowledged it between its send and the client reading the ack, so this is an
    upper bound on how long before the kill the lost record had been acknowledged.
    """
    stored, _at = _acked_at(rtt)
    reader = QueueReader(data_dir)
    on_disk = set(reader.client_ids())
    ages = []
    for cid in range(ids[0], ids[1] + 1):
        mask = pc.equal(stored["client_id"], cid)
        seqs = pc.filter(stored["seq"], mask).to_pylist()
        times = pc.filter(stored["t_send_ns"], mask).to_pylist()
        kept = {r.seq for r in reader.records(cid, after_seq=0)} if cid in on_disk else set()
        ages += [(t_kill - t) / 1e6 for seq, t in zip(seqs, times) if seq not in kept]
    return ages


def queue_bytes(data_dir: Path) -> int:
    """Bytes in the segment files under `data_dir` (0 while it does not exist)."""
    total = 0
    try:
        client_dirs = list(os.scandir(data_dir))
    except FileNotFoundError:
        return 0
    for entry in client_dirs:
        if entry.is_dir() and entry.name.isdigit():
            with os.scandir(entry.path) as files:
                total += sum(f.stat().st_size for f in files if f.name.endswith(".seg"))
    return total


def wait_for_traffic(data_dir: Path, clients_running, timeout_s: float = TRAFFIC_WAIT_S) -> bool:
    """Wait until the queue files grow (the server stores messages); False if they did not."""
    baseline = queue_bytes(data_dir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and clients_running():
        if queue_bytes(data_dir) > baseline:
            return True
        time.sleep(0.01)
    return False


def _sleep_while(condition, seconds: float) -> bool:
    """Sleep `seconds` unless `condition()` turns false first; whether it held throughout."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not condition():
            return False
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
    return condition()


def _await_kill_moment(settings: Settings, clients: ClientRun, data_dir: Path, endpoint: str,
                       ids: tuple[int, int], rng: random.Random) -> tuple[int, int]:  # fmt: skip
    """Wait until the server stores the clients' messages, then a random moment more; a client
    process that ends meanwhile is followed by a new one (not in buffer mode). Returns the ids
    of the clients now running."""
    for _attempt in range(3):  # a client process that ends meanwhile is followed
        if wait_for_traffic(data_dir, clients.running) and _sleep_while(
            clients.running, rng.uniform(*settings.kill_after)
        ):
            break
        if settings.loss_allowed:
            break
        ids = clients.start(endpoint)
    return ids


def _kill_and_restart(server: CrashServer, clients: ClientRun, ids: tuple[int, int],
                      after_kill=None) -> Kill:  # fmt: skip
    """SIGKILL the server, `after_kill()` (a power cut: the disk forgets), start it again on
    the same endpoint; the cycle as a Kill."""
    under_load = clients.running()
    t_ready = server.t_ready_ns
    t_kill = server.kill()
    if after_kill is not None:
        after_kill()
    t0 = time.monotonic()
    server.start()
    return Kill(t_kill, t_ready, under_load, restart_s=time.monotonic() - t0,
                recovery_findings=server.recovery_findings(), ids=ids)  # fmt: skip


def _run_cycles(settings: Settings, server: CrashServer, clients: ClientRun, data_dir: Path,
                result: ModeResult, progress, after_kill=None) -> None:  # fmt: skip
    """Start the server and kill/restart it `settings.cycles` times under the clients' load."""
    rng = random.Random(f"{settings.seed}-{settings.mode}")
    per_cycle_clients = settings.loss_allowed
    endpoint = server.start()
    for cycle in range(settings.cycles):
        if per_cycle_clients or not clients.running():
            ids = clients.start(endpoint)
        ids = _await_kill_moment(settings, clients, data_dir, endpoint, ids, rng)
        kill = _kill_and_restart(server, clients, ids, after_kill)
        result.kills.append(kill)
        if per_cycle_clients:  # a client that lost data stops at once, the others run on
            _sleep_while(clients.running, settings.run_on_s)
            clients.stop(result.problems)
        progress(f"{settings.mode}: cycle {cycle + 1}/{settings.cycles} killed "
                 f"{'under load' if kill.under_load else 'IDLE'}, restarted in "
                 f"{kill.restart_s * 1e3:.0f} ms, {kill.recovery_findings} recovery findings")  # fmt: skip


def _measure_kills(kills: list[Kill], data_dir: Path, rtt: pa.Table, per_kill_loss: bool) -> None:
    """Fill in each kill's acknowledgements in its server's life and, with `per_kill_loss`
    (buffer mode: one client process per kill), what it lost and the rate before it."""
    _stored, at = _acked_at(rtt)
    for kill in kills:
        inside = pc.and_(pc.greater_equal(at, kill.t_ready_ns), pc.less_equal(at, kill.t_kill_ns))
        kill.acks_in_life = pc.sum(inside.cast(pa.int64())).as_py() or 0
    if per_kill_loss:
        for kill in kills:
            ages = lost_ages_ms(data_dir, rtt, kill.ids, kill.t_kill_ns)
            kill.lost = len(ages)
            kill.rate_per_s = rate_before(rtt, kill.ids, kill.t_kill_ns)
            kill.oldest_lost_ms = max(ages) if ages else None


def run_mode(settings: Settings, root: Path, progress=print, data_dir: Path | None = None,
             after_kill=None) -> ModeResult:  # fmt: skip
    """All cycles of one mode in `root` (a fresh directory); every child is stopped on return.
    The queues go to `data_dir` (default root/MODE/queues); `after_kill()` runs between each
    kill and the restart."""
    result = ModeResult(settings)
    work = root / settings.mode
    work.mkdir(parents=True)
    data_dir = data_dir or work / "queues"
    procs = ChildProcesses()
    server = CrashServer(settings, data_dir, work, procs)
    clients = ClientRun(settings, work, procs)
    started = time.monotonic()
    try:
        _run_cycles(settings, server, clients, data_dir, result, progress, after_kill)
        _sleep_while(clients.running, settings.run_on_s)
        clients.stop(result.problems)
        server.stop(result.problems)
    finally:
        procs.kill_all()
    result.wall_s = time.monotonic() - started
    rtt = clients.rtt()
    result.client_docs = clients.docs()
    result.check = verify_queues(data_dir, rtt, settings.payload_bytes)
    if rtt is not None:
        _measure_kills(result.kills, data_dir, rtt, per_kill_loss=settings.loss_allowed)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=20, help="kill/restart cycles per mode")
    parser.add_argument("--modes", default="write,fsync,buffer", help="comma-separated ack modes")
    parser.add_argument("--seed", type=int, default=1, help="seed of the kill moments")
    parser.add_argument("--clients", type=int, default=20, help="clients per client process")
    parser.add_argument("--messages", type=int, default=50_000,
                        help="messages per client: an upper bound, the clients are stopped")  # fmt: skip
    parser.add_argument("--run-on-s", type=float, default=1.0,
                        help="seconds the clients run on after the last (buffer: each) restart")  # fmt: skip
    parser.add_argument("--payload-bytes", type=int, default=64, help="bytes per payload")
    parser.add_argument(
        "--flush-interval-ms", type=float, default=10.0, help="buffer mode flush interval"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="work in this new directory and keep it"
    )
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or args.cycles < 1:
        parser.error(f"modes must be among {', '.join(MODES)}; cycles >= 1")
    results = []
    with tempfile.TemporaryDirectory(prefix="crash-cycles-") as tmp:
        root = args.keep or Path(tmp)
        for mode in modes:
            settings = Settings(mode=mode, cycles=args.cycles, clients=args.clients,
                                messages=args.messages, seed=args.seed,
                                payload_bytes=args.payload_bytes, run_on_s=args.run_on_s,
                                flush_interval_ms=args.flush_interval_ms)  # fmt: skip
            results.append(
                run_mode(settings, root, progress=lambda line: print(line, file=sys.stderr))
            )
    print(summary_table(results, args.markdown))
    status = 0
    for r in results:
        if r.settings.mode == "buffer":
            print()
            print(f"buffer, flush interval {r.settings.flush_interval_ms:g} ms: loss per kill")
            print(buffer_table(r, args.markdown))
            s = buffer_summary(r)
            print(f"lost per kill: mean {s['lost_mean']:.1f}, max {s['lost_max']}; lost / "
                  f"(acks/s x interval): mean {s['ratio_mean']:.2f}, max {s['ratio_max']:.2f}; "
                  f"oldest lost ack {s['oldest_lost_ms']:.1f} ms before the kill")  # fmt: skip
        bad = failures(r)
        if bad:
            status = 1
            print(f"FAIL {r.settings.mode}: {'; '.join(bad)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
