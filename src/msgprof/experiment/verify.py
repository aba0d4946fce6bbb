"""Read the queues back after a point: is every acknowledged message stored exactly once, intact?

The answer is the point's data-safety verdict, so it is computed from the files alone (with the
reader that consumers use) against what the clients recorded as acknowledged.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc

from msgprof.store.reader import QueueReader
from msgprof.wire.payload import payload_for

#: Client-side statuses that mean "the server holds this message".
STORED_STATUSES = ("OK", "DUPLICATE")


def acked_by_client(rtt: pa.Table | None) -> dict[int, set[int]]:
    """client_id -> set of seqs the server acknowledged as stored (OK or DUPLICATE)."""
    acked: dict[int, set[int]] = defaultdict(set)
    if rtt is None or rtt.num_rows == 0:
        return acked
    mask = pc.is_in(rtt.column("status"), value_set=pa.array(STORED_STATUSES))
    kept = rtt.filter(mask)
    for cid, seq in zip(kept.column("client_id").to_pylist(), kept.column("seq").to_pylist()):
        acked[cid].add(seq)
    return acked


def verify_queues(
    data_dir: Path,
    rtt: pa.Table | None,
    payload_bytes: int,
    client_ids: Iterable[int] | None = None,
) -> dict[str, Any]:
    """Compare the queue files under `data_dir` with the acknowledgements in `rtt`.

    `client_ids` limits the check to those clients (one step of a run that shares a server).

    Returns counts: checked (records read), lost (acknowledged but not stored intact),
    duplicates_stored (extra copies of a seq), corrupt (payload differs from what was sent),
    stored_unacked (stored, but the client never saw the ack: allowed, e.g. after a timeout),
    and up to ten examples of each problem.
    """
    acked = acked_by_client(rtt)
    reader = QueueReader(Path(data_dir))
    stored_ids = set(reader.client_ids())
    if client_ids is not None:
        wanted = set(client_ids)
        stored_ids &= wanted
        acked = {cid: seqs for cid, seqs in acked.items() if cid in wanted}
    checked = lost = duplicates = corrupt = unacked = 0
    examples: dict[str, list[str]] = defaultdict(list)

    def note(kind: str, text: str) -> None:
        if len(examples[kind]) < 10:
            examples[kind].append(text)

    for cid in sorted(stored_ids | set(acked)):
        seen: set[int] = set()
        intact: set[int] = set()
        if cid in stored_ids:
            for record in reader.records(cid, after_seq=0):
                checked += 1
                if record.seq in seen:
                    duplicates += 1
                    note("duplicates_stored", f"client {cid} seq {record.seq}")
                seen.add(record.seq)
                if record.payload == payload_for(cid, record.seq, payload_bytes):
                    intact.add(record.seq)
                else:
                    corrupt += 1
                    note("corrupt", f"client {cid} seq {record.seq} at {record.path}:{record.offset}")
        want = acked.get(cid, set())
        missing = want - intact
        lost += len(missing)
        for seq in sorted(missing)[:3]:
            note("lost", f"client {cid} seq {seq}")
        unacked += len(seen - want)
    return {
        "checked": checked,
        "lost": lost,
        "duplicates_stored": duplicates,
        "corrupt": corrupt,
        "stored_unacked": unacked,
        "examples": dict(examples),
    }
