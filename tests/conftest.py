"""Shared fixtures: a real server on 127.0.0.1 (in a thread or as a process) and raw peers."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import zmq

from msgprof.config import ServerConfig
from msgprof.server.server import Server
from msgprof.wire import protocol


@contextmanager
def running_server(data_dir: Path, **options) -> Iterator[Server]:
    """A Server serving in a background thread of this process; stopped and joined on exit."""
    config = ServerConfig(data_dir=data_dir, **options)
    server = Server(config)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(server.run()), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.stop()
        thread.join(timeout=30)
        assert not thread.is_alive(), "server thread did not stop"
        server.final_stats = result


@contextmanager
def server_process(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, str, Path]]:
    """`msgprof server` as a child process; yields (process, endpoint, stats path)."""
    ready = tmp_path / "ready"
    stats = tmp_path / "server.json"
    argv = [sys.executable, "-m", "msgprof", "server", "--data-dir", str(tmp_path / "queues"),
            "--ready-file", str(ready), "--stats-out", str(stats), *extra]  # fmt: skip
    proc = subprocess.Popen(argv, stderr=open(tmp_path / "server.log", "wb"))
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not get ready"
            time.sleep(0.02)
        yield proc, ready.read_text().splitlines()[0], stats
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


class Peer:
    """A raw DEALER that sends arbitrary frames and reads ACKs with a bound."""

    def __init__(self, ctx: zmq.Context, endpoint: str, curve: tuple[Path, Path] | None = None) -> None:
        """`curve`: (client secret certificate, server public certificate) to speak CURVE."""
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if curve is not None:
            from msgprof.wire.security import connect_curve

            connect_curve(self.sock, *curve)
        self.sock.connect(endpoint)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def data(self, client_id: int, seq: int, payload: bytes = b"payload", t: int = 0) -> None:
        self.send(protocol.encode_data(client_id, seq, t), payload)

    def ack(self, timeout_ms: int = 5000) -> protocol.Header | None:
        if not self.sock.poll(timeout_ms):
            return None
        return protocol.decode_ack(self.sock.recv_multipart())

    def close(self) -> None:
        self.sock.close(linger=0)


@contextmanager
def small_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of `size` mounted at `mount` (root only: the test is skipped otherwise),
    unmounted afterwards: a disk that really fills."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(path: Path) -> None:
    """Write `path` until the filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            try:
                os.write(fd, b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
    finally:
        os.close(fd)


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


@pytest.fixture
def is_root() -> bool:
    return os.geteuid() == 0
