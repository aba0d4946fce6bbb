"""Deterministic message payloads, so stored data can be checked without keeping a copy.

The load generator sends `payload_for(client_id, seq, size)`; the point's verifier recomputes it
and compares with what the queue holds. The 12-byte (client_id, seq) stamp is repeated, so a
record stored under the wrong client or sequence number fails the check too.
"""

from __future__ import annotations

import struct

_STAMP = struct.Struct("!IQ")


def payload_for(client_id: int, seq: int, size: int) -> bytes:
    """The payload of message `seq` of `client_id`, exactly `size` bytes long."""
    if size <= 0:
        return b""
    stamp = _STAMP.pack(client_id, seq)
    return (stamp * (size // _STAMP.size + 1))[:size]

