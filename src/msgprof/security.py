"""Optional CURVE security: key files, the server's allow-list, and the loopback rule.

Keys are ZeroMQ certificate files as `zmq.auth` writes them (NAME.key with the public key,
NAME.key_secret with both). The server loads its secret certificate and a directory of
allowed client public certificates; a client with any other key fails the handshake.
A server bound to anything but loopback without CURVE is reachable by anyone who can route to
it, so it warns.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

log = logging.getLogger("msgprof.security")


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


def serve_curve(ctx: zmq.Context, sock: zmq.Socket, secret_file: Path, allow_dir: Path) -> ThreadAuthenticator:
    """Make `sock` a CURVE server that admits only the public keys found in `allow_dir`.

    Returns the running authenticator; stop it when the socket is closed.
    """
    allow_dir = Path(allow_dir)
    if not allow_dir.is_dir():
        raise ValueError(f"--curve-allow {allow_dir} is not a directory of client certificates")
    allowed = sorted(allow_dir.glob("*.key"))
    if not allowed:
        raise ValueError(f"--curve-allow {allow_dir} holds no *.key client certificates")
    public, secret = load_secret(secret_file)
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("msgprof.zap"))
    auth.start()
    auth.configure_curve(domain="*", location=str(allow_dir))
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True
    log.info("CURVE on: %d allowed client keys from %s", len(allowed), allow_dir)
    return auth


def connect_curve(sock: zmq.Socket, secret_file: Path, server_key_file: Path) -> None:
    """Make `sock` a CURVE client with its key pair, trusting the server's public key."""
    public, secret = load_secret(secret_file)
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_serverkey = load_public(server_key_file)


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
