#!/usr/bin/env python3
"""The C client's loop (benchmarks/c/msgprof_c_client.c) in Python on pyzmq, and nothing more.

Per message: clock, pack the header, two sends, a blocking recv, clock; then the C client's
checks of the reply (one frame, the expected ACK). It shares no code with msgprof. Against the
same server, its RTT over the C client's is what any pyzmq client adds to a round trip on the
host; `msgprof client`'s RTT over its own is msgprof's share (benchmarks/transport_overhead.py,
docs/performance.md).

    minimal_pyzmq_client.py ENDPOINT MESSAGES [PAYLOAD_BYTES [ack|echo [CLIENT_ID]]]

ack (default): expects a one-frame ACK with status OK for the same client_id and seq.
echo: expects the DATA request back unchanged (libzmq's zmq_proxy(router, router)).
Prints one JSON line as the C client does: mode, messages, payload_bytes, rtt_p50_us,
rtt_p99_us (exact, inverted_cdf), rtt_max_us, msgs_per_s. Exit status 1 on a wrong reply or a
10 s timeout, 2 on bad arguments.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import time

import zmq

HEADER = struct.Struct("!2sBBBBHIQQ")  # magic, version, type, status, flags, reserved, id, seq, t
DATA, ACK = 1, 2
TIMEOUT_MS = 10_000
USAGE = "usage: minimal_pyzmq_client.py ENDPOINT MESSAGES [PAYLOAD_BYTES [ack|echo [CLIENT_ID]]]"


def quantile_us(ordered: list[int], q: float) -> float:
    """The smallest sample with at least q*n samples at or below it (as the C client)."""
    return ordered[max(1, math.ceil(q * len(ordered))) - 1] / 1e3


def run(endpoint: str, messages: int, payload_bytes: int, echo: bool, client_id: int) -> dict:
    """The closed loop; raises RuntimeError on a wrong reply or a timeout."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, TIMEOUT_MS)
    sock.setsockopt(zmq.SNDTIMEO, TIMEOUT_MS)
    sock.connect(endpoint)
    send = zmq.backend.Socket.send.__get__(sock)  # the backend's, as the C client calls libzmq
    recv = zmq.backend.Socket.recv.__get__(sock)
    more = sock.get
    sndmore, rcvmore = int(zmq.SNDMORE), int(zmq.RCVMORE)
    clock, pack = time.perf_counter_ns, HEADER.pack
    payload = bytes(payload_bytes)
    rtts = []
    first = last = 0
    try:
        for seq in range(1, messages + 1):
            t0 = clock()
            header = pack(b"MP", 1, DATA, 0, 0, 0, client_id, seq, t0)
            send(header, sndmore)
            send(payload)
            reply = recv()
            echoed = recv() if echo and more(rcvmore) else None
            t1 = clock()
            if echo:
                if reply != header or echoed != payload or more(rcvmore):
                    raise RuntimeError(f"echo differs from the request at seq {seq}")
            elif reply != pack(b"MP", 1, ACK, 0, 0, 0, client_id, seq, t0) or more(rcvmore):
                raise RuntimeError(f"invalid ACK at seq {seq}")
            rtts.append(t1 - t0)
            first = first or t0
            last = t1
    except zmq.Again:
        raise RuntimeError(f"no reply in {TIMEOUT_MS} ms at seq {len(rtts) + 1}") from None
    finally:
        sock.close(linger=0)
        ctx.term()
    rtts.sort()
    return {
        "mode": "echo" if echo else "ack",
        "messages": messages,
        "payload_bytes": payload_bytes,
        "rtt_p50_us": quantile_us(rtts, 0.5),
        "rtt_p99_us": quantile_us(rtts, 0.99),
        "rtt_max_us": rtts[-1] / 1e3,
        "msgs_per_s": messages / ((last - first) / 1e9) if last > first else 0.0,
    }


def main(argv: list[str]) -> int:
    try:
        if not 2 <= len(argv) <= 5 or (len(argv) > 3 and argv[3] not in ("ack", "echo")):
            raise ValueError
        messages = int(argv[1])
        payload_bytes = int(argv[2]) if len(argv) > 2 else 64
        client_id = int(argv[4]) if len(argv) > 4 else 1
        if messages < 1 or payload_bytes < 0 or not 0 < client_id < 2**32:
            raise ValueError
    except ValueError:
        print(USAGE, file=sys.stderr)
        return 2
    echo = len(argv) > 3 and argv[3] == "echo"
    try:
        doc = run(argv[0], messages, payload_bytes, echo, client_id)
    except RuntimeError as err:
        print(f"minimal_pyzmq_client: {err}", file=sys.stderr)
        return 1
    print(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
