"""CRC-32 (the zlib/IEEE polynomial) for every checksum the project writes or checks.

The store frames each message with a CRC, so the checksum sits on the server's hot path: for
a 64-byte payload zlib's `crc32` takes about 190 ns here, ISA-L's (`isal`, carry-less
multiply) about 35 ns. Both give the same values (docs/storage.md names the polynomial);
where `isal` is not installed, zlib's is used.
"""

from __future__ import annotations

try:
    from isal.isal_zlib import crc32
except ImportError:  # pragma: no cover - isal is a dependency; this keeps a bare install working
    from zlib import crc32

__all__ = ["crc32"]
