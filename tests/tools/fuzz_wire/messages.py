"""Malformed (and some valid-looking) multipart messages for the DEALER fuzzers, seeded.

Each generator class aims at one defect of the validation table, or draws random frames, a
mutated valid message, a duplicate or the next in-order message of a fuzzer's own client id.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from .contract import HEADER, MAX_CLIENT_ID

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
        stateless = _STATELESS.get(cls)
        if stateless is not None:
            return stateless(self)
        return self._stateful(cls, last)

    # -- one method per stateless class (the dispatch table _STATELESS follows the class) ------

    def _short_header(self) -> list[bytes]:
        r = self.rng
        cut = r.randint(0, HEADER.size - 1)
        head = self.header()[:cut] if r.random() < 0.5 else r.randbytes(cut)
        return [head, *self.extra()]

    def _long_header(self) -> list[bytes]:
        r = self.rng
        head = self.header() + r.randbytes(r.randint(1, 100))
        return [head if r.random() < 0.5 else r.randbytes(len(head)), *self.extra()]

    def _bad_magic(self) -> list[bytes]:
        magic = self.rng.randbytes(2)
        return [self.header(magic=magic if magic != b"MP" else b"PM"), *self.extra()]

    def _unsupported_version(self) -> list[bytes]:
        r = self.rng
        fields = self.any_fields()
        version = r.choice([0, *range(2, 256)])
        return [self.header(version=version, type=r.getrandbits(8), **fields), *self.extra()]

    def _bad_type(self) -> list[bytes]:
        fields = self.any_fields()
        mtype = self.rng.choice([0, 2, 2, *range(3, 256)])
        return [self.header(type=mtype, **fields), *self.extra()]

    def _bad_fields(self) -> list[bytes]:
        fields = self.any_fields()
        if not (fields["status"] or fields["flags"] or fields["reserved"]):
            fields["flags"] = 1
        return [self.header(**fields), *self.extra()]

    def _bad_client_id(self) -> list[bytes]:
        r = self.rng
        client_id = 0 if r.random() < 0.3 else r.randint(MAX_CLIENT_ID + 1, 2**32 - 1)
        return [self.header(client_id=client_id, seq=r.getrandbits(64)), *self.extra()]

    def _seq_zero(self) -> list[bytes]:
        return [self.header(seq=0), *self.extra()]

    def _frame_count(self) -> list[bytes]:
        r = self.rng
        head = self.header()
        if r.random() < 0.4:
            return [head]
        return [head, *(self.junk() for _ in range(r.randint(2, 4)))]

    def _too_large(self) -> list[bytes]:
        return [self.header(), self.rng.randbytes(self.max_payload + self.rng.randint(1, 2048))]

    def _random_frames(self) -> list[bytes]:
        r = self.rng
        sizes = [r.choice([r.randint(0, 64), r.randint(26, 30)]) for _ in range(r.randint(1, 4))]
        return [r.randbytes(n) for n in sizes]

    # -- classes that use the sequence model --------------------------------------------------

    def _stateful(self, cls: str, last: dict[int, int]) -> list[bytes]:
        """A message for one of this fuzzer's own client ids, placed by its last in-order seq."""
        r = self.rng
        client_id = r.choice(self.ids)
        done = last.get(client_id, 0)
        if cls == "out_of_order":
            seq = r.randint(done + 2, min(2**64 - 1, done + 2 ** r.randint(1, 64)))
            return [self.header(client_id=client_id, seq=seq), self.junk()]
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


_STATELESS: dict[str, Callable[[Generator], list[bytes]]] = {
    name: getattr(Generator, f"_{name}") for name in STATELESS_CLASSES
}
