"""A full disk, for real: the server's queues on a small tmpfs that runs out of space.

When the disk fills, clients get STORAGE_FULL, nothing already acknowledged is damaged, the
server keeps answering, and once space is freed the same messages are accepted again.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import Peer, fill_disk, running_server, small_tmpfs

from msgprof.experiment.verify import verify_queues
from msgprof.store.reader import QueueReader
from msgprof.wire.payload import payload_for
from msgprof.wire.protocol import Status

PAYLOAD = 4096


@pytest.fixture
def small_disk(tmp_path) -> Path:
    """A 1 MiB tmpfs for the server's queues."""
    with small_tmpfs(tmp_path / "disk", "1m") as mount:
        yield mount


def _send_until_full(peer: Peer, cid: int, limit: int = 1000) -> tuple[list[int], int]:
    """Send seq 1, 2, ... until STORAGE_FULL; return (acked seqs, the seq that was refused)."""
    acked = []
    for seq in range(1, limit):
        peer.data(cid, seq, payload_for(cid, seq, PAYLOAD))
        ack = peer.ack()
        assert ack is not None, "the server stopped answering"
        if ack.status == Status.STORAGE_FULL:
            return acked, seq
        assert ack.status == Status.OK, Status(ack.status).name
        acked.append(seq)
    pytest.fail(f"the disk never filled after {limit} messages")


@pytest.mark.parametrize("ack_after", ["write", "fsync"])
def test_disk_full_refuses_keeps_serving_and_recovers(small_disk, zctx, ack_after):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (600 << 10))  # leaves ~400 KiB for the queues
    with running_server(small_disk / "queues", ack_after=ack_after) as server:
        writer = Peer(zctx, server.endpoint)
        acked, refused = _send_until_full(writer, cid=1)
        assert len(acked) > 10

        # Still serving: a resend of a stored message is answered without writing,
        # the same refused message is refused again, and the stored data can be read meanwhile.
        writer.data(1, acked[-1], payload_for(1, acked[-1], PAYLOAD))
        assert writer.ack().status == Status.DUPLICATE
        writer.data(1, refused, payload_for(1, refused, PAYLOAD))
        assert writer.ack().status == Status.STORAGE_FULL
        assert [r.seq for r in QueueReader(small_disk / "queues").records(1, after_seq=0)] == acked

        # Space comes back: the refused message and more are accepted.
        filler.unlink()
        for seq in range(refused, refused + 20):
            writer.data(1, seq, payload_for(1, seq, PAYLOAD))
            assert writer.ack().status == Status.OK, seq
            acked.append(seq)
        writer.close()
    stats = server.final_stats
    assert stats["replies"]["STORAGE_FULL"] >= 2
    assert stats["rejected"]["storage_full"] >= 2
    rtt = pa.table({"client_id": pa.array([1] * len(acked), pa.uint32()),
                    "seq": pa.array(acked, pa.uint64()), "status": ["OK"] * len(acked)})  # fmt: skip
    check = verify_queues(small_disk / "queues", rtt, PAYLOAD)
    assert (check["lost"], check["duplicates_stored"], check["corrupt"]) == (0, 0, 0)
    assert check["checked"] == len(acked)


def test_other_clients_are_answered_while_the_disk_is_full(small_disk, zctx):
    (small_disk / "filler").write_bytes(b"\0" * (700 << 10))
    with running_server(small_disk / "queues") as server:
        first = Peer(zctx, server.endpoint)
        _send_until_full(first, cid=1)
        # The store's background pass may still move logged records into their segments and
        # free the log's space: let it, then take whatever is left.
        time.sleep(0.5)
        fill_disk(small_disk / "filler")
        second = Peer(zctx, server.endpoint)
        second.data(2, 1, payload_for(2, 1, PAYLOAD))
        ack = second.ack()
        assert ack is not None and ack.status == Status.STORAGE_FULL  # answered, not dropped
        second.data(2, 5, b"x")
        assert second.ack().status == Status.OUT_OF_ORDER  # sequence rules still apply
        first.close()
        second.close()
    assert not (small_disk / "queues" / "2").exists() or not any(
        QueueReader(small_disk / "queues").records(2, after_seq=0)
    )
