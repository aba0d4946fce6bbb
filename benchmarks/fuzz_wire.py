#!/usr/bin/env python3
"""Fuzzing the wire: malformed messages and raw bytes on the server's port while real clients run.

One `msgprof server` serves three phases of legitimate load (`msgprof client`, C clients x N
messages a round, fresh client ids each round):

  before   the legitimate clients alone (baseline)
  during   the same, in rounds, while fuzzer processes send at least --messages malformed
           multipart messages over DEALER sockets and open at least --raw-connections plain TCP
           connections that send bytes which are not (or not quite) ZMTP
  after    the legitimate clients alone again: the server serves as before

The DEALER fuzzers draw, from a seeded generator, every defect of the validation table in
docs/protocol.md (short/long header, bad magic, other versions, other types, status/flags/
reserved set, client id 0 or >= 2^31, seq 0, missing and extra frames, payloads over
--max-payload-bytes, sequence gaps), random frames and bit-flipped valid messages, plus
duplicates and in-order messages for their own client ids (disjoint from the legitimate ones),
closing and reopening their connections as they go. Each fuzzer predicts, with its own
reading of the table and a model of the sequence rule, how the server must count and answer
every message; it checks every reply byte for byte and in order.

The raw fuzzer sends HTTP requests, TLS hellos, random bytes, truncated and wrong ZMTP
greetings, broken NULL handshakes, and hand-framed ZMTP 3 sessions that end in a partial
multipart message, an absurd frame size or an unknown command. libzmq reads a stream whose first
byte is not 0xFF as unversioned ZMTP/1.0, whose frames reach the server as messages, unless a
ZAP handler is installed (the server's gatekeeper is one). The raw fuzzer probes which holds;
when ZMTP/1.0 is taken, it decodes its own streams the way libzmq does and predicts those too.

At the end the server gets SIGTERM and its final stats are compared with the prediction:
`rejected` by kind, `unanswered`, `replies` by status, `received`, `client_id_takeovers`,
connections accepted; the server must exit 0; the legitimate clients must have every message
acknowledged, and `verify_queues` must find none lost, duplicated or corrupt; the fuzzers' own
queues must hold exactly the in-order messages the model expects and nothing else was created.

    python benchmarks/fuzz_wire.py                          # 100,000 messages, ~15 s on 2 cores
    python benchmarks/fuzz_wire.py --messages 5000 --seed 7 --out /tmp/fuzz   # keep the report

Prints the table (sent vs counted by kind, legitimate RTT p50/p99 without and with the fuzzer)
and exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from msgprof import atomic
from msgprof.config import PointConfig
from msgprof.experiment.point import ChildProcesses, ServerRun, run_load
from msgprof.experiment.verify import verify_queues
from msgprof.store.reader import QueueReader

# --- the contract, read independently of msgprof.protocol (docs/protocol.md) ---------------------

HEADER = struct.Struct("!2sBBBBHIQQ")
MAX_CLIENT_ID = 2**31 - 1
OK, DUPLICATE, OUT_OF_ORDER, MALFORMED, TOO_LARGE, UNSUPPORTED_VERSION = 0, 1, 2, 3, 4, 5
STATUS_NAMES = {
    0: "OK",
    1: "DUPLICATE",
    2: "OUT_OF_ORDER",
    3: "MALFORMED",
    4: "TOO_LARGE",
    5: "UNSUPPORTED_VERSION",
}
#: Defects answered with an ACK, and its status; the other kinds get no reply.
ANSWERED = {
    "unsupported_version": UNSUPPORTED_VERSION,
    "bad_type": MALFORMED,
    "bad_fields": MALFORMED,
    "bad_client_id": MALFORMED,
    "seq_zero": MALFORMED,
    "frame_count": MALFORMED,
    "too_large": TOO_LARGE,
}
UNANSWERED = ("no_frames", "short_header", "long_header", "bad_magic")
KINDS = UNANSWERED + tuple(ANSWERED) + ("out_of_order",)

#: Fuzzer client ids: far from the legitimate ones (1 ...) and near the top of the range.
FUZZ_ID_BASE = 1_000_000_000
IDS_PER_WORKER = 24


def classify(frames: list[bytes], max_payload: int) -> tuple[str, tuple[int, int, int] | None]:
    """(kind, (client_id, seq, t_send_ns)) the validation table gives a request's frames.

    kind is a defect name, or "valid" when only the sequence rule is left to decide; the
    triple is None when the header cannot be read.
    """
    if not frames:
        return "no_frames", None
    head = frames[0]
    if len(head) != HEADER.size:
        return ("short_header" if len(head) < HEADER.size else "long_header"), None
    magic, version, mtype, status, flags, reserved, client_id, seq, t_send = HEADER.unpack(head)
    if magic != b"MP":
        return "bad_magic", None
    echo = (client_id, seq, t_send)
    if version != 1:
        return "unsupported_version", echo
    if mtype != 1:
        return "bad_type", echo
    if status or flags or reserved:
        return "bad_fields", echo
    if not 1 <= client_id <= MAX_CLIENT_ID:
        return "bad_client_id", echo
    if seq == 0:
        return "seq_zero", echo
    if len(frames) != 2:
        return "frame_count", echo
    if len(frames[1]) > max_payload:
        return "too_large", echo
    return "valid", echo


def ack_bytes(status: int, echo: tuple[int, int, int]) -> bytes:
    """The exact reply frame the server owes: a v1 ACK echoing client_id, seq, t_send_ns."""
    return HEADER.pack(b"MP", 1, 2, status, 0, 0, *echo)


class SequenceModel:
    """The sequence rule per client id, and which connection used each id last (takeovers)."""

    def __init__(self) -> None:
        self.last: dict[int, int] = {}
        self.owner: dict[int, int] = {}
        self.takeovers = 0

    def decide(self, client_id: int, seq: int, connection: int) -> tuple[str | None, int]:
        """(rejected kind or None, reply status) for a valid request; updates the model."""
        if self.owner.get(client_id, connection) != connection:
            self.takeovers += 1
        self.owner[client_id] = connection
        last = self.last.get(client_id, 0)
        if seq == last + 1:
            self.last[client_id] = seq
            return None, OK
        if seq <= last:
            return None, DUPLICATE
        return "out_of_order", OUT_OF_ORDER


class Tally:
    """What the server must have counted for the messages one fuzzer sent."""

    def __init__(self) -> None:
        self.rejected: Counter = Counter()
        self.replies: Counter = Counter()
        self.unanswered = 0
        self.messages = 0

    def add(self, kind: str | None, status: int | None) -> None:
        self.messages += 1
        if kind is not None:
            self.rejected[kind] += 1
        if status is None:
            self.unanswered += 1
        else:
            self.replies[STATUS_NAMES[status]] += 1

    def doc(self) -> dict[str, Any]:
        return {
            "rejected": dict(self.rejected),
            "replies": dict(self.replies),
            "unanswered": self.unanswered,
            "messages": self.messages,
        }


def outcome_of(frames: list[bytes], max_payload: int) -> tuple[str | None, int | None]:
    """(rejected kind, reply status) of a message that cannot reach the sequence rule."""
    kind, _echo = classify(frames, max_payload)
    if kind == "valid":
        raise ValueError("a valid request: its outcome depends on the sequence model")
    return kind, ANSWERED.get(kind)


# --- malformed messages -------------------------------------------------------------------------

#: Generator classes and their weights; the first eleven aim at one defect each.
DEALER_CLASSES = {
    "short_header": 7,
    "long_header": 7,
    "bad_magic": 7,
    "unsupported_version": 7,
    "bad_type": 7,
    "bad_fields": 7,
    "bad_client_id": 7,
    "seq_zero": 7,
    "frame_count": 7,
    "too_large": 5,
    "out_of_order": 6,
    "random_frames": 10,
    "mutated": 14,
    "duplicate": 4,
    "in_order": 4,
}
#: Classes whose outcome does not depend on server state (the raw fuzzer frames these).
STATELESS_CLASSES = (
    "short_header",
    "long_header",
    "bad_magic",
    "unsupported_version",
    "bad_type",
    "bad_fields",
    "bad_client_id",
    "seq_zero",
    "frame_count",
    "too_large",
    "random_frames",
)


class Generator:
    """Seeded malformed (and some valid-looking) multipart messages for one fuzzer."""

    def __init__(self, rng: random.Random, client_ids: list[int], max_payload: int) -> None:
        self.rng = rng
        self.ids = client_ids
        self.max_payload = max_payload
        names = list(DEALER_CLASSES)
        self._names, self._weights = names, [DEALER_CLASSES[n] for n in names]

    def pick(self) -> str:
        return self.rng.choices(self._names, self._weights)[0]

    def header(self, **fields: int) -> bytes:
        r = self.rng
        values = {
            "magic": b"MP",
            "version": 1,
            "type": 1,
            "status": 0,
            "flags": 0,
            "reserved": 0,
            "client_id": r.choice(self.ids),
            "seq": r.randint(1, 2**64 - 1),
            "t_send": r.getrandbits(64),
        }
        values.update(fields)
        return HEADER.pack(*values.values())

    def junk(self, most: int = 64) -> bytes:
        return self.rng.randbytes(self.rng.randint(0, most))

    def extra(self, most: int = 3) -> list[bytes]:
        return [self.junk() for _ in range(self.rng.randint(0, most))]

    def any_fields(self) -> dict[str, int]:
        """Random values for the fields checked after the one a class breaks."""
        r = self.rng
        return {
            "status": r.getrandbits(8),
            "flags": r.getrandbits(8),
            "reserved": r.getrandbits(16),
            "client_id": r.getrandbits(32),
            "seq": r.getrandbits(64),
        }

    def message(self, cls: str, last: dict[int, int]) -> list[bytes]:
        """Frames of one message of generator class `cls`; `last` is the sequence model."""
        r = self.rng
        if cls == "short_header":
            cut = r.randint(0, HEADER.size - 1)
            head = self.header()[:cut] if r.random() < 0.5 else r.randbytes(cut)
            return [head, *self.extra()]
        if cls == "long_header":
            head = self.header() + r.randbytes(r.randint(1, 100))
            return [head if r.random() < 0.5 else r.randbytes(len(head)), *self.extra()]
        if cls == "bad_magic":
            magic = r.randbytes(2)
            return [self.header(magic=magic if magic != b"MP" else b"PM"), *self.extra()]
        if cls == "unsupported_version":
            fields = self.any_fields()
            return [
                self.header(version=r.choice([0, *range(2, 256)]), type=r.getrandbits(8), **fields),
                *self.extra(),
            ]
        if cls == "bad_type":
            fields = self.any_fields()
            return [self.header(type=r.choice([0, 2, 2, *range(3, 256)]), **fields), *self.extra()]
        if cls == "bad_fields":
            fields = self.any_fields()
            if not (fields["status"] or fields["flags"] or fields["reserved"]):
                fields["flags"] = 1
            return [self.header(**fields), *self.extra()]
        if cls == "bad_client_id":
            client_id = 0 if r.random() < 0.3 else r.randint(MAX_CLIENT_ID + 1, 2**32 - 1)
            return [self.header(client_id=client_id, seq=r.getrandbits(64)), *self.extra()]
        if cls == "seq_zero":
            return [self.header(seq=0), *self.extra()]
        if cls == "frame_count":
            head = self.header()
            return (
                [head]
                if r.random() < 0.4
                else [head, *(self.junk() for _ in range(r.randint(2, 4)))]
            )
        if cls == "too_large":
            return [self.header(), r.randbytes(self.max_payload + r.randint(1, 2048))]
        if cls == "random_frames":
            sizes = [
                r.choice([r.randint(0, 64), r.randint(26, 30)]) for _ in range(r.randint(1, 4))
            ]
            return [r.randbytes(n) for n in sizes]
        client_id = r.choice(self.ids)
        done = last.get(client_id, 0)
        if cls == "out_of_order":
            return [
                self.header(
                    client_id=client_id,
                    seq=r.randint(done + 2, min(2**64 - 1, done + 2 ** r.randint(1, 64))),
                ),
                self.junk(),
            ]
        if cls == "duplicate" and done:
            return [self.header(client_id=client_id, seq=r.randint(1, done)), self.junk()]
        if cls in ("duplicate", "in_order"):
            return [self.header(client_id=client_id, seq=done + 1), self.junk()]
        if cls == "mutated":
            return self.mutate([self.header(client_id=client_id, seq=done + 1), self.junk()])
        raise ValueError(f"unknown generator class {cls!r}")

    def mutate(self, frames: list[bytes]) -> list[bytes]:
        """One to three random edits of a valid message: bits, bytes, cuts, frames."""
        r = self.rng
        for _ in range(r.randint(1, 3)):
            head = bytearray(frames[0])
            edit = r.randrange(6)
            if edit == 0 and head:
                head[r.randrange(len(head))] ^= 1 << r.randrange(8)
            elif edit == 1 and head:
                head[r.randrange(len(head))] = r.getrandbits(8)
            elif edit == 2:
                del head[r.randint(0, len(head)) :]
            elif edit == 3:
                head += r.randbytes(r.randint(1, 8))
            elif edit == 4 and len(frames) > 1:
                frames.pop(r.randrange(1, len(frames)))
            else:
                frames.append(self.junk())
            frames[0] = bytes(head)
        return frames


# --- raw bytes: what libzmq makes of them -------------------------------------------------------

GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32
READY_DEALER = b"\x05READY\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"


def zmtp1_delivered(stream: bytes) -> list[list[bytes]]:
    """The messages a libzmq ROUTER delivers from `stream` when it reads it as ZMTP/1.0.

    libzmq takes a stream whose first byte is not 0xFF (or whose 10th byte has bit 0 clear) for
    an unversioned ZMTP/1.0 peer: frames of `size(1 or 0xFF+8) flags(1) body(size-1)`, the first
    frame being the peer's identity. Decoding stops at a size of 0 (protocol error) and at an
    incomplete frame (end of stream, or a size too large to allocate); a multipart message
    still open then is discarded.
    """
    messages: list[list[bytes]] = []
    frames: list[bytes] = []
    pos, identity_read = 0, False
    while pos < len(stream):
        size = stream[pos]
        pos += 1
        if size == 0xFF:
            if pos + 8 > len(stream):
                break
            size = int.from_bytes(stream[pos : pos + 8], "big")
            pos += 8
        if size == 0 or pos + size > len(stream):
            break
        flags, body = stream[pos], stream[pos + 1 : pos + size]
        pos += size
        if not identity_read:
            identity_read = True
            continue
        frames.append(body)
        if not flags & 1:
            messages.append(frames)
            frames = []
    return messages


def zmtp1_frame(body: bytes, more: bool) -> bytes:
    size = len(body) + 1
    prefix = bytes([size]) if size < 0xFF else b"\xff" + size.to_bytes(8, "big")
    return prefix + bytes([1 if more else 0]) + body


def zmtp3_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack("!Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def framed(messages: list[list[bytes]], frame: Callable[[bytes, bool], bytes]) -> bytes:
    return b"".join(frame(f, i < len(m) - 1) for m in messages for i, f in enumerate(m))


#: Raw connection classes and their weights.
RAW_CLASSES = {
    "http": 12,
    "tls_hello": 8,
    "random_bytes": 20,
    "zmtp1_messages": 10,
    "greeting_truncated": 10,
    "greeting_wrong": 10,
    "handshake_broken": 8,
    "zmtp3_session": 22,
}
ZMTP3_TAILS = ("eof", "partial_multipart", "huge_frame", "unknown_command", "reserved_flags")


class RawGenerator:
    """Byte streams for plain TCP connections, each with the messages libzmq will deliver."""

    def __init__(self, rng: random.Random, messages: Generator, zmtp1_accepted: bool) -> None:
        self.rng = rng
        self.messages = messages
        self.zmtp1_accepted = zmtp1_accepted
        names = list(RAW_CLASSES)
        self._names, self._weights = names, [RAW_CLASSES[n] for n in names]

    def stateless(self, count: int) -> list[list[bytes]]:
        """`count` messages whose outcome needs no sequence model (none that would be stored)."""
        out = []
        while len(out) < count:
            frames = self.messages.message(self.rng.choice(STATELESS_CLASSES), {})
            if classify(frames, self.messages.max_payload)[0] != "valid":
                out.append(frames)
        return out

    def stream(self) -> tuple[str, bool, bytes, list[list[bytes]]]:
        """(class, handshake first?, bytes to send, messages the server receives from them).

        With "handshake first", the bytes follow a NULL greeting and the server's answer to it:
        libzmq 4.3 fails a handshake whose peer pipelines READY and messages before the server's
        own greeting arrived, so a session that would send its defect too early tests nothing.
        """
        r = self.rng
        cls = r.choices(self._names, self._weights)[0]
        if cls in ("http", "tls_hello", "random_bytes", "zmtp1_messages"):
            for _attempt in range(100):
                data = self._unversioned(cls)
                delivered = zmtp1_delivered(data) if self.zmtp1_accepted else []
                if all(classify(m, self.messages.max_payload)[0] != "valid" for m in delivered):
                    return cls, False, data, delivered
            raise RuntimeError("could not draw a stream that stores nothing")
        if cls == "greeting_truncated":
            return cls, False, GREETING[: r.randint(1, len(GREETING) - 1)], []
        if cls == "greeting_wrong":
            mechanism = r.choice([b"PLAIN", b"CURVE", b"GSSAPI", b"null", r.randbytes(20)])
            greeting = bytearray(GREETING)
            greeting[10:12] = bytes([r.randint(3, 255), r.getrandbits(8)])
            greeting[12:32] = mechanism.ljust(20, b"\0")[:20]
            return cls, False, bytes(greeting) + self.messages.junk(256), []
        if cls == "handshake_broken":
            broken = r.choice(
                [
                    r.randbytes(r.randint(1, 64)),
                    zmtp3_frame(READY_DEALER.replace(b"DEALER", b"PUB\0\0\0"), command=True),
                    zmtp3_frame(b"\x05HELLO", command=True),
                    zmtp3_frame(b"no command"),
                ]
            )
            return cls, True, broken, []
        messages = self.stateless(r.randint(0, 8))
        tail = r.choice(ZMTP3_TAILS)
        data = zmtp3_frame(READY_DEALER, command=True) + framed(messages, zmtp3_frame)
        if tail == "partial_multipart":
            data += b"".join(zmtp3_frame(f, more=True) for f in self.stateless(1)[0])
        elif tail == "huge_frame":
            data += bytes([2]) + struct.pack("!Q", r.randint(2**40, 2**63 - 1)) + r.randbytes(16)
        elif tail == "unknown_command":
            data += zmtp3_frame(b"\x07UNKNOWN" + self.messages.junk(16), command=True)
        elif tail == "reserved_flags":
            data += bytes([0xF8 | 1, 4]) + r.randbytes(4)
        return f"zmtp3_session/{tail}", True, data, messages

    def _unversioned(self, cls: str) -> bytes:
        r = self.rng
        if cls == "http":
            method = r.choice([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"])
            lines = [
                method + b" /" + r.randbytes(r.randint(0, 40)).hex().encode() + b" HTTP/1.1",
                b"Host: 127.0.0.1",
            ]
            lines += [
                b"X-%d: %s" % (k, r.randbytes(r.randint(0, 30)).hex().encode())
                for k in range(r.randint(0, 12))
            ]
            return b"\r\n".join(lines) + b"\r\n\r\n" + self.messages.junk(512)
        if cls == "tls_hello":
            body = r.randbytes(r.randint(40, 300))
            return b"\x16\x03\x01" + struct.pack("!H", len(body)) + body
        if cls == "random_bytes":
            data = bytearray(r.randbytes(r.randint(1, 2048)))
            if data[0] == 0xFF:
                data[0] = r.randint(0, 0xFE)
            return bytes(data)
        identity = r.randbytes(r.randint(0, 16))
        return zmtp1_frame(identity, more=False) + framed(
            self.stateless(r.randint(1, 6)), zmtp1_frame
        )


# --- the fuzzer processes -----------------------------------------------------------------------

#: Seconds a fuzzer waits for the replies of one batch before it records them as missing.
REPLY_TIMEOUT_S = 15.0
#: Seconds a raw connection may take (send, half-close, read to the server's close).
RAW_TIMEOUT_S = 15.0


def worker_ids(index: int) -> list[int]:
    """Client ids fuzzer `index` owns: a block far above the legitimate ids, a few at the top."""
    low = [FUZZ_ID_BASE + index * 1000 + k for k in range(IDS_PER_WORKER - 4)]
    return low + [MAX_CLIENT_ID - index * 4 - k for k in range(4)]


class Flags:
    """Files through which the benchmark and its fuzzer processes coordinate."""

    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = name

    def mark(self, what: str) -> None:
        (self.dir / f"{what}-{self.name}").touch()

    def stop_requested(self) -> bool:
        return (self.dir / "stop").exists()

    @property
    def result(self) -> Path:
        return self.dir / f"result-{self.name}.json"


def dealer_worker(args: argparse.Namespace) -> None:
    """Send malformed messages over DEALER sockets in batches; check every reply; write a result."""
    import zmq

    flags = Flags(Path(args.dir), f"dealer-{args.index}")
    deadline = time.monotonic() + args.time_limit_s
    rng = random.Random(f"{args.seed}/dealer/{args.index}")
    ids = worker_ids(args.index)
    gen = Generator(rng, ids, args.max_payload_bytes)
    model = SequenceModel()
    tally = Tally()
    sent: Counter = Counter()
    malformed = connections = reply_errors = missing = 0
    examples: list[str] = []
    ctx = zmq.Context()
    sock = None
    batches_left = 0
    started = time.monotonic()
    stop = "deadline"
    announced = False
    try:
        while time.monotonic() < deadline:
            if malformed >= args.quota:
                flags.mark("quota")
                if flags.stop_requested():
                    stop = "quota"
                    break
            if batches_left == 0:  # a new connection every few batches
                if sock is not None:
                    sock.close(linger=0)
                sock = ctx.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(args.endpoint)
                connections += 1
                batches_left = rng.randint(1, 40)
            batches_left -= 1
            expected: list[bytes] = []
            for k in range(args.batch):
                cls = gen.pick() if k < args.batch - 1 else "bad_type"  # every batch ends answered
                for _attempt in range(10):
                    frames = gen.message(cls, model.last)
                    kind, echo = classify(frames, args.max_payload_bytes)
                    if kind != "valid" or echo[0] in ids:
                        break
                    cls = "bad_type"  # a mutation hit a client id this fuzzer does not own
                status = ANSWERED.get(kind)
                if kind == "valid":
                    kind, status = model.decide(echo[0], echo[1], connections)
                sock.send_multipart(frames)
                sent[cls] += 1
                tally.add(kind, status)
                malformed += kind is not None
                if status is not None:
                    expected.append(ack_bytes(status, echo))
            for want in expected:
                if not sock.poll(REPLY_TIMEOUT_S * 1000):
                    missing += len(expected) - expected.index(want)
                    batches_left = 0  # this connection is no longer trusted
                    break
                got = sock.recv_multipart()
                if got != [want]:
                    reply_errors += 1
                    if len(examples) < 10:
                        examples.append(f"expected {want.hex()}, got {[f.hex() for f in got]}")
            if not announced:  # one batch went through: the legitimate rounds may start
                flags.mark("started")
                announced = True
    finally:
        if sock is not None:
            sock.close(linger=0)
        ctx.term()
    atomic.write_json(
        flags.result,
        {
            "worker": flags.name,
            "stop": stop,
            "wall_s": time.monotonic() - started,
            "malformed": malformed,
            "sent_by_class": dict(sent),
            "connections": connections,
            "takeovers": model.takeovers,
            "last_seq": {str(k): v for k, v in model.last.items()},
            "reply_errors": reply_errors,
            "reply_error_examples": examples,
            "missing_replies": missing,
            **tally.doc(),
        },
    )


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


# --- the benchmark ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzConfig:
    """One fuzzing run; recorded in its report."""

    messages: int = 100_000  # malformed messages over DEALER sockets, at least
    raw_connections: int = 2_000  # plain TCP connections, at least
    seed: int = 1
    time_limit_s: float = 600.0
    dealer_workers: int = 2
    batch: int = 100  # messages a fuzzer sends before it reads their replies
    legit_clients: int = 20
    legit_messages: int = 1_000  # per client and round
    max_payload_bytes: int = 1024  # the server's limit (small, so too-large payloads stay cheap)


def _worker_argv(
    kind: str,
    config: FuzzConfig,
    endpoint: str,
    flag_dir: Path,
    quota: int,
    time_limit_s: float,
    index: int = 0,
) -> list[str]:
    return [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        kind,
        "--endpoint",
        endpoint,
        "--dir",
        str(flag_dir),
        "--index",
        str(index),
        "--seed",
        str(config.seed),
        "--quota",
        str(quota),
        "--batch",
        str(config.batch),
        "--time-limit-s",
        str(time_limit_s),
        "--max-payload-bytes",
        str(config.max_payload_bytes),
    ]


def _rtt_summary(rtt: pa.Table | None) -> dict[str, Any]:
    if rtt is None or rtt.num_rows == 0:
        return {"samples": 0}
    ok = rtt.filter(pc.equal(rtt["status"], "OK"))["rtt_ns"].to_numpy()
    if ok.size == 0:
        return {"samples": 0}
    p50, p99, p999 = np.quantile(ok, [0.5, 0.99, 0.999], method="inverted_cdf")
    return {
        "samples": int(ok.size),
        "p50_us": p50 / 1e3,
        "p99_us": p99 / 1e3,
        "p999_us": p999 / 1e3,
        "max_us": float(ok.max()) / 1e3,
    }


def _merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum the counters of several fuzzer results."""
    total: dict[str, Any] = {"rejected": Counter(), "replies": Counter()}
    for doc in results:
        total["rejected"].update(doc["rejected"])
        total["replies"].update(doc["replies"])
        for key in (
            "unanswered",
            "messages",
            "connections",
            "takeovers",
            "malformed",
            "reply_errors",
            "missing_replies",
        ):
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

    def fuzz_phase(self) -> tuple[list[dict[str, Any]], float]:
        """Fuzzers on, legitimate rounds until every fuzzer reached its quota; their results."""
        c = self.config
        flag_dir = self.out / "flags"
        flag_dir.mkdir()
        budget = max(1.0, self.remaining() - 60)  # leave time for the after round and the checks
        names = [f"dealer-{k}" for k in range(c.dealer_workers)] + ["raw"]
        shares = [
            c.messages // c.dealer_workers + (k < c.messages % c.dealer_workers)
            for k in range(c.dealer_workers)
        ]
        workers = []
        for k, name in enumerate(names):
            kind, quota = ("raw", c.raw_connections) if name == "raw" else ("dealer", shares[k])
            argv = _worker_argv(kind, c, self.server.endpoint, flag_dir, quota, budget, index=k)
            workers.append(self.procs.start(name, argv, self.out / f"fuzz-{name}.log"))
        t0 = time.monotonic()
        while not all((flag_dir / f"started-{n}").exists() for n in names):
            if time.monotonic() - t0 > 30 or any(w.poll() is not None for w in workers):
                self.problems.append("fuzzer_failed_to_start")
                break
            time.sleep(0.02)
        while not all((flag_dir / f"quota-{n}").exists() for n in names):
            if self.remaining() < 60 or any(w.poll() is not None for w in workers):
                break
            self.legit_round("during")
        (flag_dir / "stop").touch()
        for name, proc in zip(names, workers):
            try:
                if proc.wait(timeout=max(1.0, budget - (time.monotonic() - t0)) + 30) != 0:
                    self.problems.append(f"fuzzer_{name}_failed")
            except subprocess.TimeoutExpired:  # killed with the other children at the end
                self.problems.append(f"fuzzer_{name}_hung")
        wall = time.monotonic() - t0
        results = []
        for name in names:
            path = flag_dir / f"result-{name}.json"
            results.append(
                json.loads(path.read_text()) if path.exists() else {"worker": name, "missing": True}
            )
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

    def report(self, stats: dict[str, Any]) -> dict[str, Any]:
        """The run's report, from the server's final stats and what the fuzzers sent."""
        dealer, raw, results = self.dealer, self.raw, self.results
        c = self.config
        legit_ids = [
            i for r in self.rounds for i in range(r["client_ids"][0], r["client_ids"][1] + 1)
        ]
        tables = [t for phase in self.rtt.values() for t in phase]
        legit_rtt = pa.concat_tables(tables) if tables else None
        verified = verify_queues(
            self.data_dir, legit_rtt, self.point.payload_bytes, client_ids=legit_ids
        )
        fuzz_last = {int(k): v for r in results for k, v in r.get("last_seq", {}).items() if v}
        reader = QueueReader(self.data_dir)
        fuzz_queue_problems = [
            cid
            for cid, last in fuzz_last.items()
            if [rec.seq for rec in reader.records(cid, after_seq=0)] != list(range(1, last + 1))
        ]
        unexpected_ids = sorted(set(reader.client_ids()) - set(legit_ids) - set(fuzz_last))
        expected_rejected = Counter(dealer.get("rejected", {})) + Counter(raw.get("rejected", {}))
        legit_ok = sum(r["acked"] for r in self.rounds)
        expected_replies = Counter(dealer.get("replies", {})) + Counter(raw.get("replies", {}))
        expected_replies["OK"] += legit_ok
        connections = stats.get("connections", {})
        return {
            "config": asdict(c),
            "server_exit": self.server.process.returncode,
            "problems": self.problems,
            "fuzz_wall_s": self.fuzz_wall,
            "loadavg_1min": {**self.loadavg, "end": os.getloadavg()[0]},
            "workers": results,
            "dealer": {k: (dict(v) if isinstance(v, Counter) else v) for k, v in dealer.items()},
            "raw": raw,
            "legit": {
                "rounds": self.rounds,
                "rtt": {
                    phase: _rtt_summary(pa.concat_tables(ts) if ts else None)
                    for phase, ts in self.rtt.items()
                },
            },
            "verification": verified,
            "fuzz_queues": {
                "clients_with_data": len(fuzz_last),
                "mismatched": fuzz_queue_problems,
                "unexpected_queue_ids": unexpected_ids,
            },
            "expected": {
                "rejected": dict(expected_rejected),
                "unanswered": dealer.get("unanswered", 0) + raw.get("unanswered", 0),
                "replies": dict(expected_replies),
                "received": self.expected_received,
                "takeovers": dealer.get("takeovers", 0),
                "accepted": sum(r["connected"] for r in self.rounds)
                + dealer.get("connections", 0)
                + raw.get("connected", 0),
            },
            "server": {
                "received": stats.get("received"),
                "received_before_stop": self.received_before_stop,
                "rejected": stats.get("rejected", {}),
                "unanswered": stats.get("unanswered"),
                "replies": stats.get("replies", {}),
                "stored": stats.get("stored"),
                "unroutable": stats.get("unroutable"),
                "client_id_takeovers": stats.get("client_id_takeovers"),
                "connections": connections,
                "service_ns": stats.get("service_ns", {}),
                "rss_bytes": self.rss,
            },
        }


def run_fuzz(config: FuzzConfig, out: Path) -> dict[str, Any]:
    """Run the whole benchmark in `out` (created); return its report. Every child is stopped."""
    out.mkdir(parents=True, exist_ok=True)
    run = Run(config, out)
    try:
        return run.execute()
    finally:
        if run.server.monitor is not None:
            run.server.monitor.stop()
        run.procs.kill_all()


def check(report: dict[str, Any]) -> list[str]:
    """The properties the run must have; one line per failure (empty: all hold)."""
    failures = []
    c, exp, srv = report["config"], report["expected"], report["server"]

    def need(ok: bool, text: str) -> None:
        if not ok:
            failures.append(text)

    need(
        report["server_exit"] == 0, f"server exit code {report['server_exit']} (it must never die)"
    )
    need(not report["problems"], f"problems: {report['problems']}")
    for doc in report["workers"]:
        need("missing" not in doc, f"fuzzer {doc['worker']} wrote no result")
        need(
            doc.get("stop") == "quota",
            f"fuzzer {doc['worker']} stopped by {doc.get('stop')}, not its quota",
        )
    dealer = report["dealer"]
    need(
        dealer.get("malformed", 0) >= c["messages"],
        f"{dealer.get('malformed', 0)} malformed sent < {c['messages']}",
    )
    raw = report["raw"]
    need(raw.get("connections", 0) >= c["raw_connections"], "too few raw connections")
    for ending in ("connect_failed", "closed_in_handshake", "stalled"):
        need(
            not raw.get("endings", {}).get(ending),
            f"raw connections {ending}: {raw.get('endings', {}).get(ending)}",
        )
    need(
        dealer.get("reply_errors", 0) == 0,
        f"{dealer.get('reply_errors')} replies differ from the contract",
    )
    need(
        dealer.get("missing_replies", 0) == 0, f"{dealer.get('missing_replies')} replies never came"
    )
    for kind in sorted(set(exp["rejected"]) | set(srv["rejected"])):
        want, got = exp["rejected"].get(kind, 0), srv["rejected"].get(kind, 0)
        need(want == got, f"rejected[{kind}]: sent {want}, server counted {got}")
    for status in sorted(set(exp["replies"]) | set(srv["replies"])):
        want, got = exp["replies"].get(status, 0), srv["replies"].get(status, 0)
        need(want == got, f"replies[{status}]: expected {want}, server sent {got}")
    need(
        exp["unanswered"] == srv["unanswered"],
        f"unanswered: expected {exp['unanswered']}, got {srv['unanswered']}",
    )
    need(
        exp["received"] == srv["received"],
        f"received: expected {exp['received']}, got {srv['received']}",
    )
    need(
        exp["takeovers"] == srv["client_id_takeovers"],
        f"takeovers: expected {exp['takeovers']}, got {srv['client_id_takeovers']}",
    )
    accepted = srv["connections"].get("accepted")
    need(
        exp["accepted"] == accepted,
        f"connections accepted: expected {exp['accepted']}, got {accepted}",
    )
    for r in report["legit"]["rounds"]:
        need(
            r["acked"] == r["planned"] and not r["errors"],
            f"legit round {r['client_ids']} ({r['phase']}): {r['acked']}/{r['planned']} "
            f"acked, errors {r['errors']}",
        )
    phases = {r["phase"] for r in report["legit"]["rounds"]}
    need(phases == {"before", "during", "after"}, f"legit phases run: {sorted(phases)}")
    v = report["verification"]
    need(
        v["lost"] == 0 and v["duplicates_stored"] == 0 and v["corrupt"] == 0,
        f"legit queues: lost {v['lost']}, stored twice {v['duplicates_stored']}, "
        f"corrupt {v['corrupt']}",
    )
    fq = report["fuzz_queues"]
    need(
        not fq["mismatched"],
        f"fuzzer queues differ from the sequence model: {fq['mismatched'][:5]}",
    )
    need(
        not fq["unexpected_queue_ids"],
        f"queues nobody should have created: {fq['unexpected_queue_ids'][:5]}",
    )
    return failures


def format_report(report: dict[str, Any], failures: list[str]) -> str:
    """The table a person reads: counts by kind, legit RTT by phase, the verdicts."""
    exp, srv, c = report["expected"], report["server"], report["config"]
    dealer, raw = report["dealer"], report["raw"]
    lines = [f"{'kind':<22}{'sent':>10}{'counted':>10}"]

    def row(label: str, want: int, got: int | None) -> None:
        mark = "" if want == got else "   MISMATCH"
        lines.append(f"{label:<22}{want:>10,}{got if got is not None else -1:>10,}{mark}")

    order = KINDS + tuple(sorted(set(srv["rejected"]) - set(KINDS)))
    for kind in order:
        if kind in exp["rejected"] or kind in srv["rejected"]:
            row(kind, exp["rejected"].get(kind, 0), srv["rejected"].get(kind, 0))
    row("total rejected", sum(exp["rejected"].values()), sum(srv["rejected"].values()))
    row("unanswered", exp["unanswered"], srv["unanswered"])
    for status in sorted(set(exp["replies"]) | set(srv["replies"])):
        row(f"replies {status}", exp["replies"].get(status, 0), srv["replies"].get(status, 0))
    row("received", exp["received"], srv["received"])
    row("connections accepted", exp["accepted"], srv["connections"].get("accepted"))
    row("client id takeovers", exp["takeovers"], srv["client_id_takeovers"])
    lines += [
        "",
        (
            f"DEALER fuzzers: {dealer.get('messages', 0):,} messages "
            f"({dealer.get('malformed', 0):,} malformed) on {dealer.get('connections', 0):,} "
            f"connections in {report['fuzz_wall_s']:.1f} s; reply errors "
            f"{dealer.get('reply_errors', 0)}, missing replies {dealer.get('missing_replies', 0)}"
        ),
        (
            f"raw fuzzer: {raw.get('connections', 0):,} connections, {raw.get('bytes', 0):,} bytes, "
            f"{raw.get('messages', 0):,} messages decoded from them by libzmq; "
            f"endings {raw.get('endings', {})}"
        ),
        "  unversioned ZMTP/1.0 peers (raw bytes not starting with 0xFF) are "
        + ("taken: their frames reach the server" if raw.get("zmtp1_accepted") else "refused"),
    ]
    for cls, n in sorted(raw.get("by_class", {}).items()):
        delivered = raw["delivered_by_class"].get(cls, 0)
        lines.append(f"  {cls:<32}{n:>7,} connections {delivered:>7,} messages delivered")
    lines += [
        "",
        f"legit clients: {c['legit_clients']} x {c['legit_messages']} messages a round",
        f"{'phase':<26}{'rounds':>7}{'messages':>10}{'p50 us':>10}{'p99 us':>10}{'p99.9 us':>10}",
    ]
    labels = {"before": "without fuzzer (before)", "during": "with fuzzer",
              "after": "without fuzzer (after)"}  # fmt: skip
    for phase, label in labels.items():
        q = report["legit"]["rtt"][phase]
        rounds = sum(1 for r in report["legit"]["rounds"] if r["phase"] == phase)
        if q.get("samples"):
            lines.append(
                f"{label:<26}{rounds:>7}{q['samples']:>10,}"
                f"{q['p50_us']:>10.0f}{q['p99_us']:>10.0f}{q['p999_us']:>10.0f}"
            )
    v = report["verification"]
    rss = ", ".join(f"{k} {b / 2**20:.0f}" for k, b in srv["rss_bytes"].items())
    lines += [
        "",
        (
            f"server deaths: {0 if report['server_exit'] == 0 else 1} "
            f"(exit code {report['server_exit']}); server RSS MiB: {rss}"
        ),
        "host load average (1 min): "
        + ", ".join(f"{k} {v:.1f}" for k, v in report["loadavg_1min"].items()),
        (
            f"legit messages lost {v['lost']}, stored twice {v['duplicates_stored']}, "
            f"corrupt {v['corrupt']} (of {v['checked']:,} read back)"
        ),
        "checks: all passed" if not failures else "FAILED:\n  " + "\n  ".join(failures),
    ]
    return "\n".join(lines)


#: Command-line options: the FuzzConfig fields a user sets, and what they mean.
OPTIONS = {
    "messages": "malformed messages the DEALER fuzzers send, at least",
    "raw_connections": "plain TCP connections the raw fuzzer opens, at least",
    "seed": "seed of every generator",
    "time_limit_s": "bound on the whole run in seconds",
    "dealer_workers": "DEALER fuzzer processes",
    "legit_clients": "legitimate clients a round",
    "legit_messages": "messages per legitimate client and round",
    "max_payload_bytes": "the server's --max-payload-bytes",
}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    defaults = FuzzConfig()
    for name, text in OPTIONS.items():
        default = getattr(defaults, name)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=type(default),
            default=default,
            help=f"{text}. Default: %(default)s",
        )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="keep logs, queues and report.json here (default: a temporary directory)",
    )
    # fuzzer processes (started by the benchmark itself)
    parser.add_argument("--worker", choices=("dealer", "raw"), help=argparse.SUPPRESS)
    for name in ("--endpoint", "--dir"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    for name in ("--index", "--quota", "--batch"):
        parser.add_argument(name, type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        (dealer_worker if args.worker == "dealer" else raw_worker)(args)
        return 0

    config = FuzzConfig(**{name: getattr(args, name) for name in OPTIONS})
    tmp = None
    if args.out is None:
        tmp = tempfile.mkdtemp(prefix="msgprof-fuzz-")
        out = Path(tmp)
    else:
        out = args.out
        if out.exists() and any(out.iterdir()):
            parser.error(f"--out {out} is not empty")
    try:
        report = run_fuzz(config, out)
        failures = check(report)
        report["failures"] = failures
        atomic.write_json(out / "report.json", report)
        print(format_report(report, failures))
        if args.out is not None:
            shutil.rmtree(out / "queues", ignore_errors=True)
            print(f"\nreport, logs: {out}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
