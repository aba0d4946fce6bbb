"""Optional CURVE security: key files, the server's allow-list, and the loopback rule.

With CURVE every handshake passes the server's Gatekeeper (a ZAP handler), which also refuses
connections the server has no descriptors for (without CURVE, only those near its budget).
Keys are ZeroMQ certificate files as `zmq.auth` writes them (NAME.key with the public key,
NAME.key_secret with both). The server loads its secret certificate and a directory of
allowed client public certificates; a client with any other key fails the handshake.
A server bound to anything but loopback without CURVE is reachable by anyone who can route to
it, so it warns.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import threading
from pathlib import Path
from typing import Callable, NamedTuple

import zmq
import zmq.auth
from zmq.utils import z85

log = logging.getLogger("msgprof.security")

_MONITOR_EVENT = struct.Struct("=HI")  # event id u16, value u32: a monitor message's first frame


def keygen(directory: Path, name: str) -> tuple[Path, Path]:
    """Make a CURVE key pair: (public certificate, secret certificate) in `directory`."""
    if not zmq.has("curve"):
        raise RuntimeError("this libzmq was built without CURVE support")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"key name {name!r} must be a plain file name")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    Path(secret).chmod(0o600)
    return Path(public), Path(secret)


def load_secret(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) keys of a secret certificate file; ValueError if it has no secret."""
    public, secret = zmq.auth.load_certificate(str(path))
    if secret is None:
        raise ValueError(f"{path} holds no secret key (give NAME.key_secret, not NAME.key)")
    return public, secret


def load_public(path: Path) -> bytes:
    """The public key of a certificate file (public or secret)."""
    public, _secret = zmq.auth.load_certificate(str(path))
    return public


class Gatekeeper:
    """The server's ZAP handler: admits a connection during its handshake, or refuses it.

    Two rules: with CURVE on, the client's public key must be in the allow-list; and the
    server must have descriptors to spare (`admit()` is true). A refused client sees its
    handshake fail (ZMTP ERROR, status 400) instead of a connection that hangs, and its
    descriptor is freed at once. One thread; the handshake waits for its answer.

    Without CURVE the handler binds only once `listen_when()` says the budget is near: libzmq
    keeps every asked session's pipe to the handler (two 16 KB queue chunks, about 10 KB of
    RSS) for the connection's whole life, and a handshake that finds no handler is not asked.

    The same thread reads the server socket's monitor (`on_event(event, value)` per event)
    and drains it before every answer: libzmq reports a connection's ACCEPTED before its
    handshake asks, so `admit()` judges a count that includes every connection accepted so far.
    A drain reads at most DRAIN_MAX events between wake-ups, and ANSWER_DRAIN_MAX before an
    answer: libzmq's accept loop, failing with EMFILE, reports a failure per turn, and a drain
    that waited for the end of that flood would answer too late to end it (each refusal frees a
    descriptor). When many handshakes wait, up to ANSWER_MAX are answered per wake-up.
    """

    ENDPOINT = "inproc://zeromq.zap.01"
    DRAIN_MAX = 1000
    ANSWER_DRAIN_MAX = 64
    ANSWER_MAX = 256

    def __init__(
        self,
        ctx: zmq.Context,
        admit: Callable[[], bool],
        allowed: set[bytes] | None,
        monitor: zmq.Socket,
        on_event: Callable[[int, int], None],
        listen_when: Callable[[], bool] | None = None,
        on_listen: Callable[[], None] | None = None,
    ) -> None:
        self.admit = admit
        self.allowed = allowed
        self.refused_full = 0
        self.refused_key = 0
        self._ctx = ctx
        self._monitor = monitor
        self._on_event = on_event
        self._on_listen = on_listen
        # Without an allow-list the handler may wait until `listen_when()`: a handshake with
        # no handler bound is not asked (libzmq goes on without ZAP), and one that is asked
        # keeps a pipe to the handler for its connection's whole life.
        self._listen_when = listen_when if allowed is None else None
        # Made now, bound when needed: a socket takes a descriptor, which a storm near the
        # limit may leave none of; an unbound one is asked by no handshake.
        self._sock = ctx.socket(zmq.REP)
        self._sock.linger = 0
        self.listening = False
        if self._listen_when is None or self._listen_when():
            self._bind()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="msgprof-zap", daemon=True)
        self._thread.start()

    def _bind(self) -> None:
        self._sock.bind(self.ENDPOINT)
        self.listening = True
        if self._on_listen is not None:
            self._on_listen()

    def _serve(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                ready = dict(poller.poll(100))
                self._drain_monitor()
                if not self.listening and self._listen_when is not None and self._listen_when():
                    self._bind()
                if self._sock in ready:
                    self._answer_waiting()
            self._drain_monitor()
        finally:  # closed by the thread that used them
            self._sock.close(linger=0)
            self._monitor.close(linger=0)

    def _drain_monitor(self, most: int = DRAIN_MAX) -> None:
        monitor, on_event, unpack = self._monitor, self._on_event, _MONITOR_EVENT.unpack_from
        for _ in range(most):
            try:
                frames = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            on_event(*unpack(frames[0]))

    def _answer_waiting(self) -> None:
        for _ in range(self.ANSWER_MAX):
            try:
                request = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._answer(request)

    def _answer(self, request: list[bytes]) -> None:
        """Reply to one ZAP request (RFC 27): 200 to admit, 400 to refuse."""
        version, request_id, _domain, _address, _identity, mechanism = request[:6]
        self._drain_monitor(self.ANSWER_DRAIN_MAX)
        status, text = b"200", b"OK"
        if self.allowed is not None and (
            mechanism != b"CURVE" or z85.encode(request[6]) not in self.allowed
        ):
            status, text = b"400", b"unknown key"
            self.refused_key += 1
        elif not self.admit():
            status, text = b"400", b"server full"
            self.refused_full += 1
        self._sock.send_multipart([version, request_id, status, text, b"", b""])

    def stop(self) -> None:
        """Stop answering; the monitor is drained a last time and both sockets closed."""
        self._stop.set()
        self._thread.join(timeout=5)


def curve_server(sock: zmq.Socket, secret_file: Path, allow_dir: Path) -> set[bytes]:
    """Make `sock` a CURVE server; return the client public keys (Z85) found in `allow_dir`."""
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise ValueError(f"--curve-allow {allow_dir} is not a directory of client certificates")
    allowed = {load_public(path) for path in sorted(allow_dir.glob("*.key"))}
    if not allowed:
        raise ValueError(f"--curve-allow {allow_dir} holds no *.key client certificates")
    public, secret = load_secret(secret_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    log.info("CURVE on: %d allowed client keys from %s", len(allowed), allow_dir)
    return allowed


class CurveClientKeys(NamedTuple):
    """What a CURVE client socket needs: its key pair and the server's public key (Z85)."""

    public: bytes
    secret: bytes
    server: bytes

    @classmethod
    def load(cls, secret_file: Path, server_key_file: Path) -> "CurveClientKeys":
        public, secret = load_secret(secret_file)
        return cls(public, secret, load_public(server_key_file))

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` a CURVE client (before it connects)."""
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = self.server


def connect_curve(sock: zmq.Socket, secret_file: Path, server_key_file: Path) -> None:
    """Make `sock` a CURVE client with its key pair, trusting the server's public key."""
    CurveClientKeys.load(secret_file, server_key_file).apply(sock)


def is_loopback(endpoint: str) -> bool:
    """True for tcp endpoints on 127.0.0.0/8, ::1 or localhost, and for ipc/inproc."""
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint.removeprefix("tcp://").rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # an interface name, a hostname or '*': reachable from elsewhere
