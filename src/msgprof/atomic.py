"""Write-then-rename helpers: a reader never sees half a file, a crash leaves no partial output."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_MODE = 0o666 & ~_umask()  # what open() would give a new file, not mkstemp's 0600


def _temp_beside(path: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _MODE)
    os.close(fd)
    return Path(name)


def replace_into(path: Path | str, write: Any) -> Path:
    """Call `write(tmp_path)` on a temporary name beside `path`, fsync it, then rename it over."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_beside(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path | str, text: str) -> Path:
    """Atomically write a text file."""
    return replace_into(path, lambda tmp: Path(tmp).write_text(text))


def write_json(path: Path | str, obj: Any) -> Path:
    """Atomically write `obj` as indented JSON (keys kept in insertion order)."""
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def write_parquet(path: Path | str, table: Any) -> Path:
    """Atomically write a pyarrow Table (or a pandas DataFrame) as Parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    return replace_into(path, lambda tmp: pq.write_table(table, tmp))


def _jsonable(value: Any) -> Any:
    """JSON fallback for numpy scalars, paths and sets."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (Path, os.PathLike)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
