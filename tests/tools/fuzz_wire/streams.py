"""Raw bytes for plain TCP connections, and what libzmq makes of them.

ZMTP framing done by hand (1.0 and 3.x), the messages a libzmq ROUTER delivers from an
unversioned ZMTP/1.0 stream, and the seeded generator of the raw fuzzer's byte streams.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

from .contract import classify
from .messages import STATELESS_CLASSES, Generator

GREETING = b"\xff" + b"\0" * 8 + b"\x7f" + bytes([3, 0]) + b"NULL".ljust(20, b"\0") + b"\0" * 32
READY_DEALER = b"\x05READY\x0bSocket-Type" + struct.pack("!I", 6) + b"DEALER"


def zmtp1_delivered(stream: bytes) -> list[list[bytes]]:
    """The messages a libzmq ROUTER delivers from `stream` when it reads it as ZMTP/1.0.

    libzmq takes a stream whose first byte is not 0xFF (or whose 10th byte has bit 0 clear) for
    an unversioned ZMTP/1.0 peer: frames of `size(1 or 0xFF+8) flags(1) body(size-1)`, the first
    frame being the peer's identity. Decoding stops at a size of 0 (protocol error) and at an
    incomplete frame (end of stream, or a size too large to allocate); a multipart message
    still open then is discarded.
    """
    messages: list[list[bytes]] = []
    frames: list[bytes] = []
    pos, identity_read = 0, False
    while pos < len(stream):
        size = stream[pos]
        pos += 1
        if size == 0xFF:
            if pos + 8 > len(stream):
                break
            size = int.from_bytes(stream[pos : pos + 8], "big")
            pos += 8
        if size == 0 or pos + size > len(stream):
            break
        flags, body = stream[pos], stream[pos + 1 : pos + size]
        pos += size
        if not identity_read:
            identity_read = True
            continue
        frames.append(body)
        if not flags & 1:
            messages.append(frames)
            frames = []
    return messages


def zmtp1_frame(body: bytes, more: bool) -> bytes:
    size = len(body) + 1
    prefix = bytes([size]) if size < 0xFF else b"\xff" + size.to_bytes(8, "big")
    return prefix + bytes([1 if more else 0]) + body


def zmtp3_frame(body: bytes, more: bool = False, command: bool = False) -> bytes:
    flags = (1 if more else 0) | (4 if command else 0)
    if len(body) > 255:
        return bytes([flags | 2]) + struct.pack("!Q", len(body)) + body
    return bytes([flags, len(body)]) + body


def framed(messages: list[list[bytes]], frame: Callable[[bytes, bool], bytes]) -> bytes:
    return b"".join(frame(f, i < len(m) - 1) for m in messages for i, f in enumerate(m))


#: Raw connection classes and their weights.
RAW_CLASSES = {
    "http": 12,
    "tls_hello": 8,
    "random_bytes": 20,
    "zmtp1_messages": 10,
    "greeting_truncated": 10,
    "greeting_wrong": 10,
    "handshake_broken": 8,
    "zmtp3_session": 22,
}
ZMTP3_TAILS = ("eof", "partial_multipart", "huge_frame", "unknown_command", "reserved_flags")
UNVERSIONED = ("http", "tls_hello", "random_bytes", "zmtp1_messages")

#: A drawn stream: (class, handshake first?, bytes to send, messages the server receives).
Stream = tuple[str, bool, bytes, list[list[bytes]]]


class RawGenerator:
    """Byte streams for plain TCP connections, each with the messages libzmq will deliver."""

    def __init__(self, rng: random.Random, messages: Generator, zmtp1_accepted: bool) -> None:
        self.rng = rng
        self.messages = messages
        self.zmtp1_accepted = zmtp1_accepted
        names = list(RAW_CLASSES)
        self._names, self._weights = names, [RAW_CLASSES[n] for n in names]

    def stateless(self, count: int) -> list[list[bytes]]:
        """`count` messages whose outcome needs no sequence model (none that would be stored)."""
        out = []
        while len(out) < count:
            frames = self.messages.message(self.rng.choice(STATELESS_CLASSES), {})
            if classify(frames, self.messages.max_payload)[0] != "valid":
                out.append(frames)
        return out

    def stream(self) -> Stream:
        """(class, handshake first?, bytes to send, messages the server receives from them).

        With "handshake first", the bytes follow a NULL greeting and the server's answer to it:
        libzmq 4.3 fails a handshake whose peer pipelines READY and messages before the server's
        own greeting arrived, so a session that would send its defect too early tests nothing.
        """
        r = self.rng
        cls = r.choices(self._names, self._weights)[0]
        if cls in UNVERSIONED:
            return self._unversioned_stream(cls)
        if cls == "greeting_truncated":
            return cls, False, GREETING[: r.randint(1, len(GREETING) - 1)], []
        if cls == "greeting_wrong":
            mechanism = r.choice([b"PLAIN", b"CURVE", b"GSSAPI", b"null", r.randbytes(20)])
            greeting = bytearray(GREETING)
            greeting[10:12] = bytes([r.randint(3, 255), r.getrandbits(8)])
            greeting[12:32] = mechanism.ljust(20, b"\0")[:20]
            return cls, False, bytes(greeting) + self.messages.junk(256), []
        if cls == "handshake_broken":
            broken = r.choice(
                [
                    r.randbytes(r.randint(1, 64)),
                    zmtp3_frame(READY_DEALER.replace(b"DEALER", b"PUB\0\0\0"), command=True),
                    zmtp3_frame(b"\x05HELLO", command=True),
                    zmtp3_frame(b"no command"),
                ]
            )
            return cls, True, broken, []
        return self._zmtp3_session()

    def _unversioned_stream(self, cls: str) -> Stream:
        """Bytes libzmq reads as ZMTP/1.0 (when it takes such peers), drawn until the messages
        they deliver would store nothing."""
        for _attempt in range(100):
            data = self._unversioned(cls)
            delivered = zmtp1_delivered(data) if self.zmtp1_accepted else []
            if all(classify(m, self.messages.max_payload)[0] != "valid" for m in delivered):
                return cls, False, data, delivered
        raise RuntimeError("could not draw a stream that stores nothing")

    def _zmtp3_session(self) -> Stream:
        """A ZMTP 3 session after the handshake: READY, stateless messages, a broken tail."""
        r = self.rng
        messages = self.stateless(r.randint(0, 8))
        tail = r.choice(ZMTP3_TAILS)
        data = zmtp3_frame(READY_DEALER, command=True) + framed(messages, zmtp3_frame)
        if tail == "partial_multipart":
            data += b"".join(zmtp3_frame(f, more=True) for f in self.stateless(1)[0])
        elif tail == "huge_frame":
            data += bytes([2]) + struct.pack("!Q", r.randint(2**40, 2**63 - 1)) + r.randbytes(16)
        elif tail == "unknown_command":
            data += zmtp3_frame(b"\x07UNKNOWN" + self.messages.junk(16), command=True)
        elif tail == "reserved_flags":
            data += bytes([0xF8 | 1, 4]) + r.randbytes(4)
        return f"zmtp3_session/{tail}", True, data, messages

    def _unversioned(self, cls: str) -> bytes:
        r = self.rng
        if cls == "http":
            method = r.choice([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS"])
            lines = [
                method + b" /" + r.randbytes(r.randint(0, 40)).hex().encode() + b" HTTP/1.1",
                b"Host: 127.0.0.1",
            ]
            lines += [
                b"X-%d: %s" % (k, r.randbytes(r.randint(0, 30)).hex().encode())
                for k in range(r.randint(0, 12))
            ]
            return b"\r\n".join(lines) + b"\r\n\r\n" + self.messages.junk(512)
        if cls == "tls_hello":
            body = r.randbytes(r.randint(40, 300))
            return b"\x16\x03\x01" + struct.pack("!H", len(body)) + body
        if cls == "random_bytes":
            data = bytearray(r.randbytes(r.randint(1, 2048)))
            if data[0] == 0xFF:
                data[0] = r.randint(0, 0xFE)
            return bytes(data)
        identity = r.randbytes(r.randint(0, 16))
        return zmtp1_frame(identity, more=False) + framed(
            self.stateless(r.randint(1, 6)), zmtp1_frame
        )
