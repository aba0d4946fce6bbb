"""Client ids as a command line gives them ("1-100", "1,5,9", "1-10,20") and as a model checks
them: a shared form for the client's options, its outputs and the point that splits them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from msgprof.wire.protocol import MAX_CLIENT_ID

#: At most this many ids in one process (a typo such as "1-2000000000" fails early).
MAX_IDS_PER_PROCESS = 1_000_000
_ID_PART = re.compile(r"\s*([0-9]+)\s*(?:-\s*([0-9]+)\s*)?")


def client_id_list(ids: Sequence[int]) -> str | None:
    if not ids:
        return "must name at least one client"
    bad = [i for i in ids if not 1 <= i <= MAX_CLIENT_ID]
    if bad:
        return f"must be client ids 1..{MAX_CLIENT_ID}, got {bad[0]}"
    if len(set(ids)) != len(ids):
        return "must be unique client ids"
    return None


def parse_client_ids(text: str) -> list[int]:
    """Parse ``"5"``, ``"1-100"`` or ``"1,2,7-9"`` into ids, in the order given.

    Raises ValueError for anything else: an empty list, 0, a reversed range, an id above
    2**31-1, an id given twice (also through overlapping ranges), or more than
    MAX_IDS_PER_PROCESS ids.
    """
    if not text.strip():
        raise ValueError("empty client id list")
    ids: list[int] = []
    seen: set[int] = set()
    for part in text.split(","):
        m = _ID_PART.fullmatch(part)
        if m is None:
            raise ValueError(f"bad client id {part.strip()!r} in {text!r}: expected N or A-B")
        lo = int(m[1])
        hi = int(m[2]) if m[2] is not None else lo
        if lo < 1 or hi > MAX_CLIENT_ID:
            raise ValueError(f"client ids must be 1..{MAX_CLIENT_ID}: {part.strip()!r}")
        if hi < lo:
            raise ValueError(f"reversed range {part.strip()!r}: write {hi}-{lo}")
        if len(ids) + hi - lo + 1 > MAX_IDS_PER_PROCESS:
            raise ValueError(f"more than {MAX_IDS_PER_PROCESS} client ids in {text!r}")
        new = range(lo, hi + 1)
        if not seen.isdisjoint(new):
            dup = next(i for i in new if i in seen)
            raise ValueError(f"client id {dup} given twice in {text!r}")
        seen.update(new)
        ids.extend(new)
    return ids


def format_client_ids(ids: Sequence[int]) -> str:
    """The compact form parse_client_ids reads: runs of consecutive ids become ``A-B``."""
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)
