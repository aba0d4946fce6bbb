"""The contract, read independently of msgprof.wire.protocol (docs/protocol.md): which defect a
request has, the exact reply it is owed, the sequence rule, and the counts the server must keep.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any

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


def worker_ids(index: int) -> list[int]:
    """Client ids fuzzer `index` owns: a block far above the legitimate ids, a few at the top."""
    low = [FUZZ_ID_BASE + index * 1000 + k for k in range(IDS_PER_WORKER - 4)]
    return low + [MAX_CLIENT_ID - index * 4 - k for k in range(4)]


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
