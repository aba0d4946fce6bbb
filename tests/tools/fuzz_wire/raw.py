"""The raw TCP fuzzer process: one plain connection after another, each sending a drawn stream.

It first probes whether the server takes unversioned ZMTP/1.0 peers (libzmq refuses them when a
ZAP handler is installed); when it does, the fuzzer predicts the messages its streams deliver.
"""

from __future__ import annotations

import argparse
import random
import socket
import time
from collections import Counter
from pathlib import Path

from msgprof import atomic

from .contract import HEADER, MALFORMED, Tally, ack_bytes, outcome_of, worker_ids
from .flags import Flags
from .messages import Generator
from .streams import GREETING, RawGenerator, zmtp1_frame

#: Seconds a raw connection may take (send, half-close, read to the server's close).
RAW_TIMEOUT_S = 15.0


def _read_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _server_handshake(conn: socket.socket) -> bool:
    """Send the NULL greeting, read the server's greeting and READY command; False if it closed."""
    conn.sendall(GREETING)
    if _read_exactly(conn, len(GREETING)) is None:
        return False
    head = _read_exactly(conn, 2)
    if head is None:
        return False
    if head[0] & 2:  # a long frame: 8-byte size, the first byte of which was read already
        rest = _read_exactly(conn, 7)
        return (
            rest is not None
            and _read_exactly(conn, int.from_bytes(head[1:] + rest, "big")) is not None
        )
    return _read_exactly(conn, head[1]) is not None


def probe_zmtp1(address: tuple[str, int]) -> bool:
    """Does the server take unversioned ZMTP/1.0 peers? libzmq refuses them when ZAP is on.

    Sends one answerable message (type 7, client id 0: counted as `bad_type`) framed as
    ZMTP/1.0 and waits for its ACK. When the answer is yes, the server has counted the message.
    """
    echo = (0, 1, 0x5A5A)
    stream = zmtp1_frame(b"", more=False) + zmtp1_frame(
        HEADER.pack(b"MP", 1, 7, 0, 0, 0, *echo), False
    )
    want = ack_bytes(MALFORMED, echo)
    received = b""
    with socket.create_connection(address, timeout=RAW_TIMEOUT_S) as conn:
        conn.sendall(stream)
        try:
            while want not in received:
                chunk = conn.recv(4096)
                if not chunk:
                    return False
                received += chunk
        except (ConnectionResetError, TimeoutError):
            return False
    return True


def raw_exchange(address: tuple[str, int], handshake: bool, data: bytes) -> str:
    """(Handshake,) send `data`, half-close, read until the server closes; how it ended."""
    try:
        conn = socket.create_connection(address, timeout=RAW_TIMEOUT_S)
    except OSError:
        return "connect_failed"
    with conn:
        try:
            if handshake and not _server_handshake(conn):
                return "closed_in_handshake"
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except TimeoutError:
            return "stalled"
        except OSError:
            return "reset_while_sending"  # the server gave up on the stream before its end
        deadline = time.monotonic() + RAW_TIMEOUT_S
        try:
            while time.monotonic() < deadline:
                if not conn.recv(65536):
                    return "closed"
        except ConnectionResetError:
            return "reset"
        except TimeoutError:
            pass
        return "stalled"


def raw_worker(args: argparse.Namespace) -> None:
    """Open plain TCP connections one after another, each sending one drawn byte stream."""
    flags = Flags(Path(args.dir), "raw")
    deadline = time.monotonic() + args.time_limit_s
    rng = random.Random(f"{args.seed}/raw")
    host, port = args.endpoint.removeprefix("tcp://").rsplit(":", 1)
    address = (host, int(port))
    tally = Tally()
    by_class: Counter = Counter(zmtp1_probe=1)
    delivered_by_class: Counter = Counter()
    zmtp1_accepted = probe_zmtp1(address)
    if zmtp1_accepted:
        tally.add("bad_type", MALFORMED)
        delivered_by_class["zmtp1_probe"] = 1
    gen = RawGenerator(rng, Generator(rng, worker_ids(999), args.max_payload_bytes), zmtp1_accepted)
    endings: Counter = Counter()
    sent_bytes = 0
    started = time.monotonic()
    stop = "deadline"
    flags.mark("started")
    while time.monotonic() < deadline:
        if sum(by_class.values()) >= args.quota:
            flags.mark("quota")
            if flags.stop_requested():
                stop = "quota"
                break
        cls, handshake, data, delivered = gen.stream()
        ending = raw_exchange(address, handshake, data)
        endings[ending] += 1
        if ending in ("connect_failed", "closed_in_handshake"):
            delivered = []  # nothing was sent (a failure the checks report)
        by_class[cls] += 1
        delivered_by_class[cls] += len(delivered)
        sent_bytes += len(data)
        for frames in delivered:
            tally.add(*outcome_of(frames, args.max_payload_bytes))
    atomic.write_json(
        flags.result,
        {
            "worker": flags.name,
            "stop": stop,
            "wall_s": time.monotonic() - started,
            "connections": sum(by_class.values()),
            "connected": sum(by_class.values()) - endings["connect_failed"],
            "by_class": dict(by_class),
            "delivered_by_class": dict(delivered_by_class),
            "endings": dict(endings),
            "bytes": sent_bytes,
            "zmtp1_accepted": zmtp1_accepted,
            **tally.doc(),
        },
    )
