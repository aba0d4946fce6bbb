"""The status of a row in rtt.parquet and the error kinds of client.json.

A row's code is an int8: the protocol's statuses keep their wire values, and the client adds
three of its own after them, so one table of names turns codes into the ``status`` column.
"""

from __future__ import annotations

from msgprof.wire.protocol import Status

#: Plain ints of the two statuses that let a client go on (the loop compares them per message).
OK = int(Status.OK)
DUPLICATE = int(Status.DUPLICATE)
#: No reply in time (or none when the deadline passed).
TIMEOUT = len(Status)
#: The reply names another client id or seq.
MISMATCH = TIMEOUT + 1
#: The reply is not a v1 ACK.
INVALID_ACK = TIMEOUT + 2
STATUS_NAMES: tuple[str, ...] = (
    *(Status(v).name for v in range(len(Status))),
    "TIMEOUT",
    "MISMATCH",
    "INVALID_ACK",
)
#: Error kinds in client.json, always all present (zeros included) so runs aggregate alike.
ERROR_KINDS: tuple[str, ...] = (
    *(n for n in STATUS_NAMES if n not in ("OK", "DUPLICATE")),
    "not_connected",
    "not_sent",
)
