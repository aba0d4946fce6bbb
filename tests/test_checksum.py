"""The fast CRC-32 gives exactly zlib's values (the on-disk format names zlib's CRC-32)."""

from __future__ import annotations

import zlib

from hypothesis import given
from hypothesis import strategies as st

from msgprof.store.checksum import crc32


def test_check_value_of_the_format() -> None:
    assert crc32(b"123456789") == 0xCBF43926  # CRC-32/ISO-HDLC, as docs/storage.md says


@given(st.binary(max_size=5000), st.integers(min_value=0, max_value=2**32 - 1))
def test_same_values_as_zlib(data: bytes, start: int) -> None:
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data, start) == zlib.crc32(data, start)
    view = memoryview(data)[1:]
    assert crc32(view, start) == zlib.crc32(view, start)


def test_the_accelerated_implementation_is_installed() -> None:
    """isal is a dependency: without it the store's hot path falls back to the slower zlib."""
    assert crc32.__module__.startswith("isal")
