"""The compiled one-client loop (solo_native.c): built once per host, loaded through ctypes.

A Python client on pyzmq adds 6-11% to a round trip on a 2-core host over a C client against
the same server, and msgprof's bookkeeping around each message more (docs/performance.md): so a
process of one client, whose RTTs are the floor a report compares against, runs its closed loop
in C. The shared library is built with the host's C compiler (``$CC`` or ``cc``) against the
libzmq that pyzmq loaded into this process, into a cache directory keyed by a hash of the source,
that libzmq and the flags, so each host builds it once (``python -m msgprof.load.native`` does
it ahead; tools/bootstrap.sh calls that). Without a compiler, or with ``MSGPROF_NATIVE=0``,
`load` returns None and the loop stays in Python (msgprof.load.solo): client.json's
``solo_loop`` tells which.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq  # noqa: F401  (maps the libzmq the library is built against)

SOURCE = Path(__file__).with_name("solo_native.c")

#: How it is compiled (with the source and libzmq's path, the key of a build).
FLAGS = ("-O2", "-Wall", "-shared", "-fPIC")
#: msgprof_solo_run's reasons to return (enum in solo_native.c).
SETTLED, TIMEOUT, ODD, ODD_TAIL, REFUSED, ERROR = range(6)
#: Builds of other sources left in the cache this long are removed by the next build.
STALE_S = 86_400

#: time.perf_counter_ns's clock, which the C loop reads for the rows it measures.
_MONOTONIC = "clock_gettime(CLOCK_MONOTONIC)"
_lock = threading.Lock()
#: Once per process: "lib", what load() found (None: nothing), and "why" not, if so.
_loaded: dict[str, Any] = {}


class ZmqMsg(ctypes.Structure):
    """libzmq's zmq_msg_t: 64 opaque bytes, pointer-aligned."""

    _fields_ = [("_", ctypes.c_uint64 * 8)]


def libzmq_path() -> Path:
    """The libzmq shared library mapped into this process by pyzmq."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = Path(line.split(maxsplit=5)[-1].strip())
            if re.match(r"libzmq[-.].*\.so", path.name) and path.is_file():
                return path
    raise OSError("libzmq is not mapped into this process (pyzmq without a shared libzmq?)")


def cache_dir() -> Path:
    """Where built libraries go: $MSGPROF_NATIVE_DIR, else the environment's share/msgprof, else
    the user's cache."""
    if env := os.environ.get("MSGPROF_NATIVE_DIR"):
        return Path(env)
    prefix = Path(sys.prefix) / "share" / "msgprof"
    if os.access(prefix if prefix.exists() else Path(sys.prefix), os.W_OK):
        return prefix
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "msgprof"


def library_path(libzmq: Path) -> Path:
    """Where the build for this source, `libzmq` and FLAGS is kept."""
    built_from = [SOURCE.read_bytes(), str(libzmq).encode(), " ".join(FLAGS).encode()]
    key = hashlib.sha256(b"\0".join(built_from)).hexdigest()[:16]
    return cache_dir() / f"solo-{key}.so"


def build(libzmq: Path, target: Path) -> None:
    """Compile solo_native.c into `target` (atomically: concurrent builders race harmlessly).
    Raises OSError naming what failed."""
    cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    if shutil.which(cc[0]) is None:
        raise OSError(f"no C compiler ({cc[0]!r} not on PATH; set CC or install gcc)")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".tmp", dir=target.parent)
    os.close(fd)
    cmd = [*cc, *FLAGS, "-o", tmp, str(SOURCE), str(libzmq), f"-Wl,-rpath,{libzmq.parent}"]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.SubprocessError as err:
            raise OSError(f"{' '.join(cmd)}: {err}") from None
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
        os.chmod(tmp, 0o755)  # a shared cache serves every user
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    stale = time.time() - STALE_S  # not now: another checkout may share the cache
    for old in target.parent.glob("solo-*"):  # other sources' builds, builds killed midway
        with contextlib.suppress(OSError):
            if old != target and old.stat().st_mtime < stale:
                old.unlink()


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64p, u8p, int_p = ctypes.POINTER(ctypes.c_int64), ctypes.c_char_p, ctypes.POINTER(ctypes.c_int)
    run = lib.msgprof_solo_run
    run.argtypes = [
        ctypes.c_void_p, u8p, u8p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64,  # sock .. seq
        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t,  # t_send .. payload
        ctypes.c_int64, ctypes.c_int64, i64p, i64p, i64p, i64p,  # until .. t_last, t_next
        ctypes.POINTER(ZmqMsg), int_p, int_p,  # odd, why, err
    ]  # fmt: skip
    run.restype = ctypes.c_int64
    lib.zmq_msg_data.argtypes = [ctypes.POINTER(ZmqMsg)]
    lib.zmq_msg_data.restype = ctypes.c_void_p
    lib.zmq_msg_size.argtypes = [ctypes.POINTER(ZmqMsg)]
    lib.zmq_msg_size.restype = ctypes.c_size_t
    lib.zmq_msg_close.argtypes = [ctypes.POINTER(ZmqMsg)]
    return lib


def load() -> ctypes.CDLL | None:
    """The built library, building it first if needed; None where it cannot be had (why_not()
    says why). Once per process."""
    with _lock:
        if "lib" in _loaded:
            return _loaded["lib"]
        lib = None
        try:
            if os.environ.get("MSGPROF_NATIVE", "1") == "0":
                raise OSError("MSGPROF_NATIVE=0")
            if time.get_clock_info("perf_counter").implementation != _MONOTONIC:
                raise OSError("time.perf_counter is not CLOCK_MONOTONIC here")
            libzmq = libzmq_path()
            target = library_path(libzmq)
            try:
                lib = _bind(ctypes.CDLL(str(target)))
            except OSError:  # not built yet here (or removed as this process came to it)
                build(libzmq, target)
                lib = _bind(ctypes.CDLL(str(target)))
        except OSError as err:
            _loaded["why"] = str(err)
        _loaded["lib"] = lib
        return lib


def why_not() -> str:
    """Why load() returned None ('' if it did not)."""
    return _loaded.get("why", "")


def take_frame(lib: ctypes.CDLL, msg: ZmqMsg) -> bytes:
    """The bytes of a message received into `msg`, which is closed."""
    ref = ctypes.byref(msg)
    try:
        return ctypes.string_at(lib.zmq_msg_data(ref), lib.zmq_msg_size(ref))
    finally:
        lib.zmq_msg_close(ref)


def main() -> int:
    """Build (or find) the library and say where it is, or why there is none."""
    lib = load()
    if lib is None:
        print(f"msgprof native solo loop: not available: {why_not()}", file=sys.stderr)
        return 1
    print(library_path(libzmq_path()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
