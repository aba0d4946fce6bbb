#!/usr/bin/env python3
"""A bare protocol-v1 server, written from docs/protocol.md alone: it shares no code with
`msgprof server`.

It does what the protocol requires of a server that stores nothing: unpack the 28-byte header,
keep the last seq per client, answer OK / DUPLICATE / OUT_OF_ORDER, MALFORMED for an invalid
request, TOO_LARGE for a payload over --max-payload-bytes, UNSUPPORTED_VERSION for another
version, and no reply to an unreadable header. Two uses:

- the baseline of the benchmarks (benchmarks/transport_overhead.py, connection_memory.py): what
  `msgprof server --store none` costs above this is the cost of its shared loop;
- a foreign server for `msgprof point --server-command` and `msgprof conform` (docs/protocol.md,
  "Bring your own server").

    python examples/servers/bare_server.py --ready READY_FILE   # endpoint written to READY_FILE
    python examples/servers/bare_server.py --port PORT          # binds 127.0.0.1:PORT
    python examples/servers/bare_server.py --ready FILE --zap   # every handshake asks a ZAP handler

SIGTERM or SIGINT stops it. With --zap every handshake is approved by a ZAP handler (in a
thread), as msgprof's gatekeeper asks it: benchmarks/connection_memory.py measures what that
costs each connection.
"""

from __future__ import annotations

import argparse
import os
import signal
import struct
import threading

import zmq

HEADER = struct.Struct("!2sBBBBHIQQ")
OK, DUPLICATE, OUT_OF_ORDER, MALFORMED, TOO_LARGE, UNSUPPORTED_VERSION = 0, 1, 2, 3, 4, 5
DATA, ACK = 1, 2


def answer(frames: list[bytes], last_seq: dict[int, int], max_payload: int) -> bytes | None:
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
    elif len(frames[1]) > max_payload:
        reply = TOO_LARGE
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


def serve(ready: str | None, port: int, zap: bool = False, max_payload: int = 1 << 20) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    if zap:
        approve_all(ctx)
        sock.zap_domain = b"bare"
    sock.setsockopt(zmq.BACKLOG, 1024)  # 100 clients connecting at once overflow the default 100
    # frames far past the largest payload are not read at all (as docs/protocol.md allows)
    sock.setsockopt(zmq.MAXMSGSIZE, max(2 * max_payload, max_payload + 65536))
    sock.bind(f"tcp://127.0.0.1:{port}")
    if ready is not None:
        with open(ready + ".tmp", "w") as f:
            f.write(sock.getsockopt_string(zmq.LAST_ENDPOINT) + "\n")
        os.replace(ready + ".tmp", ready)
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(1))
    last_seq: dict[int, int] = {}
    while not stopping:
        if not sock.poll(100):
            continue
        while True:
            try:
                identity, *frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            ack = answer(frames, last_seq, max_payload) if frames else None
            if ack is not None:
                sock.send_multipart([identity, ack])
    sock.close(linger=1000)
    if not zap:  # the ZAP handler's thread holds its socket until the process ends
        ctx.term()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ready", help="bind a free port and write its endpoint to this file")
    where.add_argument("--port", type=int, help="bind this port on 127.0.0.1")
    parser.add_argument("--zap", action="store_true", help="ask a ZAP handler at every handshake")
    parser.add_argument("--max-payload-bytes", type=int, default=1 << 20,
                        help="longer payloads get TOO_LARGE. Default: %(default)s")  # fmt: skip
    args = parser.parse_args()
    serve(args.ready, args.port or 0, args.zap, args.max_payload_bytes)


if __name__ == "__main__":
    main()
