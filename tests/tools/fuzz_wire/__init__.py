"""Fuzzing the wire: malformed messages and raw bytes on the server's port while real clients run.

One `msgprof server` serves three phases of legitimate load (`msgprof client`, C clients x N
messages a round, fresh client ids each round):

  before   the legitimate clients alone (baseline)
  during   the same, in rounds, while fuzzer processes send at least --messages malformed
           multipart messages over DEALER sockets and open at least --raw-connections plain TCP
           connections that send bytes which are not (or not quite) ZMTP
  after    the legitimate clients alone again: the server serves as before

The DEALER fuzzers draw, from a seeded generator, every defect of the validation table in
docs/protocol.md (short/long header, bad magic, other versions, other types, status/flags/
reserved set, client id 0 or >= 2^31, seq 0, missing and extra frames, payloads over
--max-payload-bytes, sequence gaps), random frames and bit-flipped valid messages, plus
duplicates and in-order messages for their own client ids (disjoint from the legitimate ones),
closing and reopening their connections as they go. Each fuzzer predicts, with its own
reading of the table and a model of the sequence rule, how the server must count and answer
every message; it checks every reply byte for byte and in order.

The raw fuzzer sends HTTP requests, TLS hellos, random bytes, truncated and wrong ZMTP
greetings, broken NULL handshakes, and hand-framed ZMTP 3 sessions that end in a partial
multipart message, an absurd frame size or an unknown command. libzmq reads a stream whose first
byte is not 0xFF as unversioned ZMTP/1.0, whose frames reach the server as messages, unless a
ZAP handler is installed (the server's gatekeeper is one). The raw fuzzer probes which holds;
when ZMTP/1.0 is taken, it decodes its own streams the way libzmq does and predicts those too.

At the end the server gets SIGTERM and its final stats are compared with the prediction:
`rejected` by kind, `unanswered`, `replies` by status, `received`, `client_id_takeovers`,
connections accepted; the server must exit 0; the legitimate clients must have every message
acknowledged, and `verify_queues` must find none lost, duplicated or corrupt; the fuzzers' own
queues must hold exactly the in-order messages the model expects and nothing else was created.

    python tests/tools/fuzz_wire                          # 100,000 messages, ~15 s on 2 cores
    python tests/tools/fuzz_wire --messages 5000 --seed 7 --out /tmp/fuzz   # keep the report

Prints the table (sent vs counted by kind, legitimate RTT p50/p99 without and with the fuzzer)
and exits 1 when a check fails.

It is a test oracle run as a tool, so it lives beside the tests (tests/test_fuzz.py runs a small
fuzzing run and checks its pieces). Modules, by concern: `contract` (the protocol as the fuzzer
reads it: the expected outcome of every message), `messages` and `streams` (what is sent: DEALER
messages, raw byte streams and what libzmq makes of them), `dealer` and `raw` (the fuzzer
processes), `flags` (how they and the run coordinate), `options` (the command line of the tool
and of its fuzzer processes, one definition), `run` (server, legitimate rounds, fuzzers),
`checks` (the verdict and the printed table), `cli`.
"""
