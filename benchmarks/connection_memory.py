#!/usr/bin/env python3
"""What one connection costs a server in memory: RSS per connection of three servers.

    python benchmarks/connection_memory.py --clients 5000 [--rounds 3]

For each server in turn (one round: `bare`, `bare+zap`, `msgprof`; rounds alternate the order):
the server starts alone, its RSS is read (psutil, the whole process), then one client process
connects --clients DEALERs (from 127.0.0.2, .3, ...: 10,000 per address), each sends one valid
protocol-v1 request and reads its ACK, and the server's RSS is read again ("connected"); then
each client sends 9 more, one at a time ("10 messages"). Per connection = growth ÷ clients.

- `bare`: examples/servers/bare_server.py, a ROUTER that answers the protocol and stores nothing:
  what libzmq itself holds per connection (pipes, engine, encoder and decoder buffers).
- `bare+zap`: the same with a ZAP handler approving every handshake, as msgprof's gatekeeper
  does: libzmq keeps each session's pipe to the handler for the connection's whole life.
- `msgprof`: `msgprof server` in write mode on a fresh data directory.

Every process is bounded in time and stopped before the next server starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
BARE_SERVER = HERE.parent / "examples" / "servers" / "bare_server.py"
KINDS = ("bare", "bare+zap", "msgprof")
MESSAGES = 10
#: The client process: connects N clients, answers "connected" and "done" on stdout.
CLIENTS = (
    """
import sys, zmq
from msgprof.load.sockets import client_sources, connect_endpoint
from msgprof.wire.protocol import encode_data
endpoint, n = sys.argv[1], int(sys.argv[2])
ctx = zmq.Context()
ctx.set(zmq.MAX_SOCKETS, n + 64)
ids = list(range(1, n + 1))
socks = []
for cid, source in zip(ids, client_sources(endpoint, ids, 10_000)):
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    s.rcvtimeo = 60_000
    s.connect(connect_endpoint(endpoint, source))
    socks.append(s)
def one_round(seq):
    for cid, s in zip(ids, socks):
        s.send_multipart([encode_data(cid, seq, 0), b"p" * 64])
    for s in socks:
        s.recv_multipart()
one_round(1)
print("connected", flush=True)
sys.stdin.readline()
for seq in range(2, %d + 1):
    one_round(seq)
print("done", flush=True)
sys.stdin.readline()
ctx.destroy(linger=0)
"""
    % MESSAGES
)


def start_server(kind: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    ready = tmp / "ready"
    if kind == "msgprof":
        argv = [sys.executable, "-m", "msgprof", "-q", "server", "--data-dir", str(tmp / "q"),
                "--ready-file", str(ready)]  # fmt: skip
    else:
        argv = [sys.executable, str(BARE_SERVER), "--ready", str(ready)]
        argv += ["--zap"] if kind == "bare+zap" else []
    server = subprocess.Popen(argv)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"{kind} server did not start")
        time.sleep(0.05)
    return server, ready.read_text().splitlines()[0]


def rss(pid: int) -> int:
    time.sleep(0.5)  # let the I/O thread settle
    return psutil.Process(pid).memory_info().rss


def measure(kind: str, clients: int) -> dict[str, float]:
    """KB (10^3 bytes) of server RSS per connection, connected and after MESSAGES each."""
    with tempfile.TemporaryDirectory() as tmp:
        server, endpoint = start_server(kind, Path(tmp))
        load = None
        try:
            base = rss(server.pid)
            load = subprocess.Popen(
                [sys.executable, "-c", CLIENTS, endpoint, str(clients)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert load.stdout is not None and load.stdin is not None
            if load.stdout.readline().strip() != "connected":
                raise RuntimeError(f"{kind}: the clients did not connect")
            connected = rss(server.pid)
            load.stdin.write("go\n")
            load.stdin.flush()
            if load.stdout.readline().strip() != "done":
                raise RuntimeError(f"{kind}: the clients did not finish")
            sent = rss(server.pid)
            load.stdin.write("quit\n")
            load.stdin.flush()
            load.wait(timeout=60)
        finally:
            if load is not None and load.poll() is None:
                load.kill()
            server.terminate()
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
    return {
        "base_mb": base / 1e6,
        "connected_kb": (connected - base) / clients / 1e3,
        "messages_kb": (sent - base) / clients / 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000, help="connections. Default: 5000")
    parser.add_argument("--rounds", type=int, default=3, help="rounds. Default: 3")
    parser.add_argument("--kinds", default=",".join(KINDS), help="servers, comma separated")
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    results: dict[str, list[dict[str, float]]] = {kind: [] for kind in kinds}
    for r in range(args.rounds):
        order = kinds if r % 2 == 0 else tuple(reversed(kinds))
        for kind in order:
            found = measure(kind, args.clients)
            results[kind].append(found)
            print(f"round {r + 1} {kind}: {json.dumps({k: round(v, 1) for k, v in found.items()})}",
                  flush=True)  # fmt: skip
    print(f"\n| server | base RSS | per connection, connected | after {MESSAGES} messages each |")
    print("|---|---:|---:|---:|")
    for kind in kinds:
        med = {k: statistics.median(r[k] for r in results[kind]) for k in results[kind][0]}
        print(f"| {kind} | {med['base_mb']:.1f} MB | {med['connected_kb']:.1f} KB | "
              f"{med['messages_kb']:.1f} KB |")  # fmt: skip


if __name__ == "__main__":
    main()
