#!/usr/bin/env python3
"""A bare protocol-v1 server: the baseline that shares no code with `msgprof server`.

Only what docs/protocol.md requires of a server that stores nothing: unpack the 28-byte header,
keep the last seq per client, answer OK / DUPLICATE / OUT_OF_ORDER (MALFORMED for a bad
request, no reply to an unreadable header). What `msgprof server --store none` costs above
this is the cost of its shared loop.

    python benchmarks/bare_server.py READY_FILE   # writes the endpoint to READY_FILE; SIGTERM stops
    python benchmarks/bare_server.py READY_FILE --zap   # every handshake asks a ZAP handler

With --zap every handshake is approved by a ZAP handler (in a thread), as msgprof's gatekeeper
asks it: benchmarks/connection_memory.py measures what that costs each connection.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import threading

import zmq

HEADER = struct.Struct("!2sBBBBHIQQ")
OK, DUPLICATE, OUT_OF_ORDER, MALFORMED, UNSUPPORTED_VERSION = 0, 1, 2, 3, 5
DATA, ACK = 1, 2


def answer(frames: list[bytes], last_seq: dict[int, int]) -> bytes | None:
    """The ACK for one request (identity stripped), or None when the header is unreadable."""
    if len(frames[0]) != HEADER.size:
        return None
    magic, version, kind, status, flags, reserved, client_id, seq, t_send_ns = HEADER.unpack(
        frames[0]
    )
    if magic != b"MP":
        return None
    if version != 1:
        reply = UNSUPPORTED_VERSION
    elif (
        kind != DATA
        or status
        or flags
        or reserved
        or not 1 <= client_id < 2**31
        or seq < 1
        or len(frames) != 2
    ):
        reply = MALFORMED
    else:
        last = last_seq.get(client_id, 0)
        if seq == last + 1:
            last_seq[client_id] = seq
            reply = OK
        else:
            reply = DUPLICATE if seq <= last else OUT_OF_ORDER
    return HEADER.pack(b"MP", 1, ACK, reply, 0, 0, client_id, seq, t_send_ns)


def approve_all(ctx: zmq.Context) -> None:
    """A ZAP handler (RFC 27) in a daemon thread that approves every handshake."""
    handler = ctx.socket(zmq.REP)
    handler.bind("inproc://zeromq.zap.01")

    def serve() -> None:
        while True:
            version, request_id, *_rest = handler.recv_multipart()
            handler.send_multipart([version, request_id, b"200", b"OK", b"", b""])

    threading.Thread(target=serve, daemon=True).start()


def serve(ready_path: str, zap: bool = False) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    if zap:
        approve_all(ctx)
        sock.zap_domain = b"bare"
    sock.setsockopt(zmq.BACKLOG, 1024)  # 100 clients connecting at once overflow the default 100
    sock.bind("tcp://127.0.0.1:0")
    with open(ready_path + ".tmp", "w") as ready:
        ready.write(sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
    os.replace(ready_path + ".tmp", ready_path)
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    last_seq: dict[int, int] = {}
    while not stopping:
        if not sock.poll(100):
            continue
        while True:
            try:
                identity, *frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            ack = answer(frames, last_seq) if frames else None
            if ack is not None:
                sock.send_multipart([identity, ack])
    sock.close(linger=1000)
    if not zap:  # the ZAP handler's thread holds its socket until the process ends
        ctx.term()


if __name__ == "__main__":
    serve(sys.argv[1], zap="--zap" in sys.argv[2:])
