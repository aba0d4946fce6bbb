"""`--store none`: the sequence rules with nothing stored, to isolate what storing costs."""

from __future__ import annotations

from typing import Any

from msgprof.store.errors import StoreError


class NullStore:
    """Sequence bookkeeping with no storage: isolates protocol cost (`--store none`)."""

    def __init__(self) -> None:
        self._last: dict[int, int] = {}
        self.recovery: list[Any] = []

    def last_seq(self, client_id: int) -> int:
        return self._last.get(client_id, 0)

    def append(self, client_id: int, seq: int, payload: bytes) -> None:
        self._last[client_id] = seq

    def commit(self) -> dict[int, StoreError]:
        return {}

    def close(self) -> None:
        """Nothing to flush or release."""

    def disk_bytes(self) -> int:
        return 0

    def stats(self) -> dict[str, Any]:
        return {"clients": len(self._last)}
