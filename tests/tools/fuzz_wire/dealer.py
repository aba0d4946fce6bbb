"""A DEALER fuzzer process: malformed messages in batches, every reply checked byte for byte.

It predicts each message's outcome from its own reading of the contract and a model of the
sequence rule, sends a batch, reads the replies the batch is owed in order, and opens a new
connection every 1-40 batches. At the end it writes what it sent and what the server must have
counted (contract.Tally) to its result file.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

from msgprof import atomic

from .contract import ANSWERED, SequenceModel, Tally, ack_bytes, classify, worker_ids
from .flags import Flags
from .messages import Generator

#: Seconds a fuzzer waits for the replies of one batch before it records them as missing.
REPLY_TIMEOUT_S = 15.0


class DealerFuzzer:
    """One DEALER fuzzer: its generator, its model of the server and its counts."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.flags = Flags(Path(args.dir), f"dealer-{args.index}")
        self.deadline = time.monotonic() + args.time_limit_s
        self.rng = random.Random(f"{args.seed}/dealer/{args.index}")
        self.ids = worker_ids(args.index)
        self.gen = Generator(self.rng, self.ids, args.max_payload_bytes)
        self.model = SequenceModel()
        self.tally = Tally()
        self.sent: Counter = Counter()
        self.malformed = self.connections = self.reply_errors = self.missing = 0
        self.examples: list[str] = []
        self.batches_left = 0
        self.stop = "deadline"

    def run(self) -> None:
        """Send batches until the quota is reached and the run says stop (or the deadline)."""
        import zmq

        ctx = zmq.Context()
        sock = None
        started = time.monotonic()
        announced = False
        try:
            while time.monotonic() < self.deadline:
                if self.malformed >= self.args.quota:
                    self.flags.mark("quota")
                    if self.flags.stop_requested():
                        self.stop = "quota"
                        break
                if self.batches_left == 0:  # a new connection every few batches
                    sock = self._reconnect(ctx, sock)
                self.batches_left -= 1
                self._read_replies(sock, self._send_batch(sock))
                if not announced:  # one batch went through: the legitimate rounds may start
                    self.flags.mark("started")
                    announced = True
        finally:
            if sock is not None:
                sock.close(linger=0)
            ctx.term()
        atomic.write_json(self.flags.result, self.result(time.monotonic() - started))

    def _reconnect(self, ctx: Any, sock: Any) -> Any:
        import zmq

        if sock is not None:
            sock.close(linger=0)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.args.endpoint)
        self.connections += 1
        self.batches_left = self.rng.randint(1, 40)
        return sock

    def _draw(self, cls: str) -> tuple[str, list[bytes], str, Any]:
        """(class, frames, kind, echo) of one message; a mutation that hit a client id this
        fuzzer does not own is drawn again as bad_type (up to ten times)."""
        for _attempt in range(10):
            frames = self.gen.message(cls, self.model.last)
            kind, echo = classify(frames, self.args.max_payload_bytes)
            if kind != "valid" or echo[0] in self.ids:
                break
            cls = "bad_type"
        return cls, frames, kind, echo

    def _send_batch(self, sock: Any) -> list[bytes]:
        """Send one batch; the replies it is owed, in order."""
        expected: list[bytes] = []
        batch = self.args.batch
        for k in range(batch):
            cls = self.gen.pick() if k < batch - 1 else "bad_type"  # every batch ends answered
            cls, frames, kind, echo = self._draw(cls)
            status = ANSWERED.get(kind)
            if kind == "valid":
                kind, status = self.model.decide(echo[0], echo[1], self.connections)
            sock.send_multipart(frames)
            self.sent[cls] += 1
            self.tally.add(kind, status)
            self.malformed += kind is not None
            if status is not None:
                expected.append(ack_bytes(status, echo))
        return expected

    def _read_replies(self, sock: Any, expected: list[bytes]) -> None:
        """Compare each reply with the one owed; a silence ends the batch and the connection."""
        for k, want in enumerate(expected):
            if not sock.poll(REPLY_TIMEOUT_S * 1000):
                self.missing += len(expected) - k
                self.batches_left = 0  # this connection is no longer trusted
                return
            got = sock.recv_multipart()
            if got != [want]:
                self.reply_errors += 1
                if len(self.examples) < 10:
                    self.examples.append(f"expected {want.hex()}, got {[f.hex() for f in got]}")

    def result(self, wall_s: float) -> dict[str, Any]:
        return {
            "worker": self.flags.name,
            "stop": self.stop,
            "wall_s": wall_s,
            "malformed": self.malformed,
            "sent_by_class": dict(self.sent),
            "connections": self.connections,
            "takeovers": self.model.takeovers,
            "last_seq": {str(k): v for k, v in self.model.last.items()},
            "reply_errors": self.reply_errors,
            "reply_error_examples": self.examples,
            "missing_replies": self.missing,
            **self.tally.doc(),
        }


def dealer_worker(args: argparse.Namespace) -> None:
    """Send malformed messages over DEALER sockets in batches; check every reply; write a result."""
    DealerFuzzer(args).run()
