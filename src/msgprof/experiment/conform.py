"""`msgprof conform ENDPOINT_OR_COMMAND`: does a server keep protocol v1's rules?

Each case sends what docs/protocol.md describes, from its own client id on its own DEALER
socket, and checks the reply: its status, that it is one frame of a version-1 ACK with flags
and reserved 0, and that it echoes client_id, seq and t_send_ns. The cases cover the sequence
rules (OK, DUPLICATE, OUT_OF_ORDER, nothing stored on a gap), every MALFORMED kind, TOO_LARGE,
UNSUPPORTED_VERSION, and the headers that get no reply at all. A server given as a command is
started as a point starts one (lifecycle.ServerRun) and stopped afterwards.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import zmq

from msgprof.config import PointConfig
from msgprof.experiment.lifecycle import SERVER_START_TIMEOUT_S, ChildProcesses, ServerRun
from msgprof.templates import server_template
from msgprof.wire.protocol import HEADER, MAGIC, MsgType, Status

#: Milliseconds a case waits for a reply (and, where none is due, that none comes).
REPLY_MS = 2000
SILENCE_MS = 500

#: What a case expects: a status, or no reply at all.
NO_REPLY = "no reply"


@dataclass(frozen=True)
class Result:
    case: str
    sent: str
    rule: str
    expected: str
    got: str
    passed: bool


def header(cid: int, seq: int, t: int = 0, *, version: int = 1, kind: int = MsgType.DATA,
           status: int = 0, flags: int = 0, reserved: int = 0,
           magic: bytes = MAGIC) -> bytes:  # fmt: skip
    return HEADER.pack(magic, version, kind, status, flags, reserved, cid, seq, t)


class Probe:
    """One DEALER on the server under test; `ask` sends frames and describes the reply."""

    def __init__(self, ctx: zmq.Context, endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def ask(self, frames: list[bytes], echo: tuple[int, int, int] | None,
            wait_ms: int = REPLY_MS) -> str:  # fmt: skip
        """The reply's status name, a description of what is wrong with it, or NO_REPLY."""
        self.sock.send_multipart(frames)
        if not self.sock.poll(wait_ms):
            return NO_REPLY
        reply = self.sock.recv_multipart()
        if len(reply) != 1 or len(reply[0]) != HEADER.size:
            sizes = [len(f) for f in reply]
            return f"{len(reply)} frame(s) of {sizes} bytes, not one 28-byte header"
        magic, version, kind, status, flags, reserved, cid, seq, t = HEADER.unpack(reply[0])
        if (magic, version, kind, flags, reserved) != (MAGIC, 1, MsgType.ACK, 0, 0):
            return (f"not a v1 ACK: magic {magic!r} version {version} type {kind} flags {flags} "
                    f"reserved {reserved}")  # fmt: skip
        if echo is not None and (cid, seq, t) != echo:
            return f"echoed client_id/seq/t_send_ns {(cid, seq, t)}, sent {echo}"
        try:
            return Status(status).name
        except ValueError:
            return f"unknown status {status}"

    def close(self) -> None:
        self.sock.close(linger=0)


#: What a case sent and how the server answered: (what, expected, got).
Steps = list[tuple[str, str, str]]
#: A case: (name, rule in docs/protocol.md's words, what it does with a fresh probe, client id
#: and the server's largest payload).
Case = tuple[str, str, Callable[[Probe, int, int], Steps]]


def _data(probe: Probe, cid: int, seq: int, payload: bytes = b"conform") -> str:
    t = random.getrandbits(63)
    return probe.ask([header(cid, seq, t), payload], (cid, seq, t))


def _sequence(probe: Probe, cid: int, _max: int) -> Steps:
    return [("seq 1", "OK", _data(probe, cid, 1)), ("seq 2", "OK", _data(probe, cid, 2)),
            ("seq 3, empty payload", "OK", _data(probe, cid, 3, b""))]  # fmt: skip


def _duplicate(probe: Probe, cid: int, _max: int) -> Steps:
    _data(probe, cid, 1)
    _data(probe, cid, 2)
    return [("seq 2 again", "DUPLICATE", _data(probe, cid, 2)),
            ("seq 1 again", "DUPLICATE", _data(probe, cid, 1)),
            ("seq 3", "OK", _data(probe, cid, 3))]  # fmt: skip


def _gap(probe: Probe, cid: int, _max: int) -> Steps:
    _data(probe, cid, 1)
    return [("seq 3 after 1", "OUT_OF_ORDER", _data(probe, cid, 3)),
            ("seq 2", "OK", _data(probe, cid, 2)),
            ("seq 3", "OK", _data(probe, cid, 3))]  # fmt: skip


def _malformed(what: str, **fields: int) -> Callable[[Probe, int, int], Steps]:
    def case(probe: Probe, cid: int, _max: int) -> Steps:
        use = {"cid": cid, "seq": 1} | fields
        cid_, seq = use.pop("cid"), use.pop("seq")
        sent = probe.ask([header(cid_, seq, 7, **use), b"x"], (cid_, seq, 7))
        return [(what, "MALFORMED", sent),
                ("then seq 1: nothing was stored", "OK", _data(probe, cid, 1))]  # fmt: skip

    return case


def _frames(count: int) -> Callable[[Probe, int, int], Steps]:
    def case(probe: Probe, cid: int, _max: int) -> Steps:
        frames = [header(cid, 1, 9), *[b"x"] * (count - 1)]
        return [(f"seq 1 in {count} frame(s)", "MALFORMED", probe.ask(frames, (cid, 1, 9))),
                ("then seq 1: nothing was stored", "OK", _data(probe, cid, 1))]  # fmt: skip

    return case


def _version(probe: Probe, cid: int, _max: int) -> Steps:
    sent = probe.ask([header(cid, 1, 5, version=2), b"x"], (cid, 1, 5))
    return [("seq 1, version 2", "UNSUPPORTED_VERSION", sent),
            ("then seq 1, version 1", "OK", _data(probe, cid, 1))]  # fmt: skip


def _too_large(probe: Probe, cid: int, max_payload: int) -> Steps:
    sent = probe.ask([header(cid, 1, 3), b"x" * (max_payload + 1)], (cid, 1, 3))
    return [(f"seq 1, {max_payload + 1} payload bytes", "TOO_LARGE", sent),
            (f"then seq 1, {max_payload} bytes", "OK",
             _data(probe, cid, 1, b"x" * max_payload))]  # fmt: skip


def _unanswerable(what: str, frame: Callable[[int], bytes]) -> Callable[[Probe, int, int], Steps]:
    def case(probe: Probe, cid: int, _max: int) -> Steps:
        quiet = probe.ask([frame(cid), b"x"], None, wait_ms=SILENCE_MS)
        return [(what, NO_REPLY, quiet),
                ("then seq 1 on the same connection", "OK", _data(probe, cid, 1))]  # fmt: skip

    return case


CASES: list[Case] = [
    ("sequence", "seq 1, 2, 3 of a new client are OK (an empty payload too), the reply one "
                 "v1 ACK frame echoing client_id, seq and t_send_ns", _sequence),
    ("duplicate", "a seq at or below the last stored is DUPLICATE; the next is still OK",
     _duplicate),
    ("out_of_order", "a gap is OUT_OF_ORDER and stores nothing: the missing seq is then OK",
     _gap),
    ("malformed_type", "a request of type ACK is MALFORMED",
     _malformed("seq 1, type ACK", kind=MsgType.ACK)),
    ("malformed_status", "a request with a status is MALFORMED",
     _malformed("seq 1, status 1", status=1)),
    ("malformed_flags", "a request with flags is MALFORMED", _malformed("seq 1, flags 1", flags=1)),
    ("malformed_reserved", "a request with reserved bits is MALFORMED",
     _malformed("seq 1, reserved 1", reserved=1)),
    ("malformed_client_id", "client_id 0 is MALFORMED", _malformed("client_id 0", cid=0)),
    ("malformed_big_client_id", "client_id 2^31 is MALFORMED",
     _malformed("client_id 2^31", cid=2**31)),
    ("malformed_seq", "seq 0 is MALFORMED", _malformed("seq 0", seq=0)),
    ("malformed_no_payload", "a request without its payload frame is MALFORMED", _frames(1)),
    ("malformed_three_frames", "a request of three frames is MALFORMED", _frames(3)),
    ("unsupported_version", "version 2 is UNSUPPORTED_VERSION (a v1 reply)", _version),
    ("too_large", "a payload over the server's maximum is TOO_LARGE; one at it is OK",
     _too_large),
    ("short_header", "a 27-byte header gets no reply (and the connection still works)",
     _unanswerable("a 27-byte header", lambda cid: b"M" * 27)),
    ("bad_magic", "a header without the magic 'MP' gets no reply",
     _unanswerable("magic 'XX'", lambda cid: header(cid, 1, magic=b"XX"))),
]  # fmt: skip


def check(endpoint: str, max_payload_bytes: int = 1 << 20) -> list[Result]:
    """Every case against the server at `endpoint`."""
    results = []
    base = random.randrange(1_000_000, 2**30)  # client ids no earlier run of this server used
    with zmq.Context() as ctx:
        for k, (name, rule, run) in enumerate(CASES):
            probe = Probe(ctx, endpoint)
            try:
                for sent, expected, got in run(probe, base + k, max_payload_bytes):
                    results.append(Result(name, sent, rule, expected, got, expected == got))
            finally:
                probe.close()
    return results


@contextmanager
def server(target: str, work: Path) -> Iterator[str]:
    """The endpoint of `target`: itself when it is one (tcp://...), else the server its
    command template starts (stopped on leaving)."""
    if target.startswith(("tcp://", "ipc://")):
        yield target
        return
    problem = server_template(target)
    if problem is not None:
        raise ValueError(f"{target!r} is no endpoint (tcp://HOST:PORT), and as a server command "
                         f"it {problem}")  # fmt: skip
    # started, made ready and stopped as a point's server is (msgprof.experiment.lifecycle)
    config = PointConfig(clients=1, messages=1, server_command=target)
    procs = ChildProcesses()
    run = ServerRun(config, work / "data", work, work / "server.log", procs)
    (work / "data").mkdir()
    try:
        endpoint = run.start()
        if endpoint is None:
            tail = (work / "server.log").read_text(errors="replace").strip()[-400:]
            raise ValueError(f"the server did not get ready within {SERVER_START_TIMEOUT_S:g} "
                             f"s: {tail or 'no output'}")  # fmt: skip
        yield endpoint
    finally:
        run.stop([])
        procs.kill_all()


def conform(target: str, max_payload_bytes: int = 1 << 20) -> list[Result]:
    """Start (if a command) and check the server `target`."""
    with tempfile.TemporaryDirectory(prefix="msgprof-conform-") as tmp:
        with server(target, Path(tmp)) as endpoint:
            return check(endpoint, max_payload_bytes)


def table(results: list[Result]) -> str:
    """The pass/fail table `msgprof conform` prints."""
    case = max(len(r.case) for r in results)
    sent = max(len(r.sent) for r in results)
    lines = [f"{'case':{case}}  {'sent':{sent}}  {'expected':19}  result  got"]
    for r in results:
        lines.append(f"{r.case:{case}}  {r.sent:{sent}}  {r.expected:19}  "
                     f"{'pass' if r.passed else 'FAIL':6}  {r.got}")  # fmt: skip
    failed = [r for r in results if not r.passed]
    lines.append(f"{len(results) - len(failed)} of {len(results)} checks pass"
                 + (": the server breaks protocol v1" if failed else ""))  # fmt: skip
    for rule in dict.fromkeys(f"{r.case}: {r.rule}" for r in failed):
        lines.append(f"  broken: {rule}")
    return "\n".join(lines)
