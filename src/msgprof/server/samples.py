"""The server's service times: a ring of the last SIZE samples (ns), so that a server running
for hours holds a bounded few megabytes for them (an array of every sample grew by 8 bytes a
message: 160 MB at its old cap of 20 million, found by benchmarks/soak.py as RSS that kept
rising), while a point of up to SIZE messages still gets the quantiles of every one.
"""

from __future__ import annotations

import array
from collections.abc import Sequence

#: Samples kept: the last million replies (8 MB).
SIZE = 1_000_000


class ServiceTimes:
    """The last `size` service times; `since(mark)` those recorded after `count` was `mark`.
    The ring is allocated (and touched) whole at the start, so the server's RSS does not creep
    up over its first `size` replies: a soak reads a rise as a leak."""

    def __init__(self, size: int = SIZE) -> None:
        self.size = size
        self.ring = array.array("q", bytes(8 * size))
        self.count = 0  # samples recorded in all

    def extend(self, values: Sequence[int]) -> None:
        """Record `values`; sample number i (counting from 0) lives in slot i % size."""
        n = len(values)
        start = self.count
        if n > self.size:  # only the last `size` are kept
            start, values = start + n - self.size, values[-self.size :]
        at = start % self.size
        first = min(len(values), self.size - at)
        head = values if first == len(values) else values[:first]  # most bursts: no copy
        self.ring[at : at + first] = array.array("q", head)
        if first < len(values):
            self.ring[: len(values) - first] = array.array("q", values[first:])
        self.count += n

    def since(self, mark: int) -> array.array:
        """The samples recorded after the count was `mark` (at most the last `size`)."""
        k = min(self.count - mark, self.size)
        if k <= 0:
            return array.array("q")
        start = (self.count - k) % self.size
        if start + k <= self.size:
            return self.ring[start : start + k]
        return self.ring[start:] + self.ring[: start + k - self.size]

    def all(self) -> array.array:
        """Every sample kept (the last `size`), in no particular order."""
        return self.ring if self.count >= self.size else self.ring[: self.count]
