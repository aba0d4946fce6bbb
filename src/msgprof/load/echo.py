"""Replies in echo mode (`msgprof client --echo`): the peer sends each request back unchanged.

`msgprof calibrate` runs clients against libzmq's own proxy to time the load generator itself;
there a reply is the DATA request that was sent, and it acknowledges the message in flight when
its client id and seq are that message's (the loop checks those as it does an ACK's).
"""

from __future__ import annotations

from msgprof.wire.protocol import VERSION, Header, MsgType, decode_header


def decode_echo(frames: list[bytes]) -> Header:
    """The header of an echoed request `[header, payload]`, read as an OK ack of it.

    Raises ValueError for anything else (an ACK included: the peer is not an echo)."""
    if len(frames) != 2:
        raise ValueError(f"echo has {len(frames)} frames, expected 2")
    header = decode_header(frames[0])
    if header.version != VERSION or header.type != MsgType.DATA or header.status != 0:
        raise ValueError(f"not an echoed v1 DATA: version {header.version}, type {header.type}")
    return header
