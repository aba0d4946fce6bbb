"""The load generator: one process, one thread, many DEALER clients.

Each client id gets its own `zmq.DEALER` socket and so its own TCP connection. By default it
keeps exactly one message in flight (a closed loop): message `seq` is sent only after the ack of
`seq - 1` was read (`seq` starts at 1). With ``rate`` set, it sends on a schedule instead (an
open loop, `msgprof.load.pacing`), and latency runs from each message's intended send time. All
clients of a process share one event loop, so thousands of clients cost descriptors, not
threads. What follows is the closed loop; the open loop keeps its rules for replies, timeouts
and connections, and its own are in `msgprof.load.pacing`.

What is measured (all on `time.perf_counter_ns`, which on Linux is CLOCK_MONOTONIC and so
comparable between the processes of one host):

* ``connect_ns``: from just before ``connect()`` to reading the socket monitor's
  ``EVENT_HANDSHAKE_SUCCEEDED`` (the ZMTP handshake is done). It is the time the event was
  *read*, so it is bounded above by ``first_ack_ns`` when the ack happens to be read first.
* ``first_ack_ns``: from just before ``connect()`` to reading the first reply. With
  ``start="on_connect"`` (the default) the first message is sent right after ``connect()`` (the
  DEALER queues it until the connection is up, without waiting for this loop), so the RTT of
  seq 1 includes the connection setup. With ``start="all_connected"`` every client connects
  first and all send together once the last handshake is seen (or timed out): setup is then
  measured without message traffic, all clients are active at once, and seq 1 is a plain
  round trip (``first_ack_ns`` then includes the wait for the others).
* ``rtt_ns``: from just before the request is sent to reading its reply.

How a reply settles the message in flight, and what the client does next:

* ``OK`` and ``DUPLICATE`` (already stored, acknowledged again): go on with the next seq.
* Any other protocol status (``OUT_OF_ORDER``, ``BUSY``, ``STORAGE_FULL``, ...): recorded under
  its status name, and the client stops; its remaining messages count as not sent.
* ``MISMATCH`` (the reply names another client id or seq) and ``INVALID_ACK`` (the reply is not
  a v1 ACK): recorded, and the client stops: its view of the server's state can no longer be
  trusted, and a next seq would only produce gaps or stale replies.
* ``TIMEOUT`` (no reply within ``timeout_s``, or still none when ``deadline_s`` passes): recorded
  with ``rtt_ns = -1``, and the client stops, for the same reason: the server may or may not have
  stored the message. For the first message the clock starts when the handshake is seen, since
  a slow connect is judged by ``connect_timeout_s``. In ``resend`` mode (below) only the
  deadline ends a client this way.
* A client whose handshake is not seen within ``connect_timeout_s`` is recorded as not connected;
  the first message it queued never left the process, so it has no row. When no client of the
  process has connected once one has timed out, the clients not yet started are recorded as not
  connected without trying (the server is unreachable; trying them in turn would only multiply
  the wait).
* A client whose handshake the server refuses (``EVENT_HANDSHAKE_FAILED_AUTH``: a server past its
  descriptor budget answers "server full", a CURVE server a key it does not know) is recorded as
  not connected at once, and counted as ``refused`` in client.json: libzmq does not reconnect
  after a refused handshake, so waiting for the connect timeout would only hold its place in the
  connect window. The clients after it are still tried (the server is there, and may have room
  again when others leave).

Connects are bounded: at most ``connect_window`` clients are connecting at once (each holds a
socket monitor, two more descriptors, until its handshake is seen). This keeps a burst of
connects within the server's listen backlog, and ``connect_ns`` a measure of the server rather
than of the queue this process made itself. With ``start="on_connect"`` the first clients run,
and may finish, while the last ones still connect: with thousands of clients and few messages
each, they are never all active at once (``all_active_start_ns`` is then null). Use
``start="all_connected"`` to measure a point at its full number of concurrent clients.

Resend mode (``resend=True``, for crash-recovery runs): a lost connection or a missing reply does
not stop a client. Each client keeps its socket monitor for its whole life and watches for
``EVENT_DISCONNECTED`` and ``EVENT_HANDSHAKE_SUCCEEDED``. libzmq reconnects the same DEALER to
the same endpoint by itself (every DEALER, in both modes, retries after ``RECONNECT_IVL_MS``,
backing off to ``RECONNECT_IVL_MAX_MS``). On every handshake after the first (a reconnect) the
message in flight, if any, is sent again with the same seq; so is a message whose reply does not
come within ``timeout_s`` while the connection is up. A resend repeats until a reply settles the
message or the deadline passes. The server answers ``DUPLICATE`` when it already stored the
seq (before a crash, or from an earlier copy), which counts as stored, like ``OK``; replies to
earlier copies of a seq already settled are stale and skipped (``stale_replies``), not
``MISMATCH``. ``rtt_ns`` of a resent message runs from its first send to the reply that
settled it, so it includes the outage. Resends are counted per client. Any other status still
stops the client: ``OUT_OF_ORDER`` after a reconnect means the server lost messages it had
acknowledged (``ack_after: buffer``), which only the client's records can tell.

Every loop ends: per-message timeouts, the connect timeout and the whole-run deadline bound it, so
a server that never answers yields TIMEOUT rows and not-connected clients, never a hang.

The room, one concern a module (imports only `msgprof.wire` and the top-level helpers):

* `client`: `run_clients`, the entry point of ``msgprof client``: plan, play, time, write.
* `capacity`: descriptors and zmq sockets the clients need, or CapacityError before any socket.
* `sockets`: a client's DEALER options and its handshake monitor.
* `waiters`: waiting on thousands of sockets (epoll or zmq.Poller).
* `loop`: the event loop (connect window, send, ack matching, timeouts and resends, stop).
* `pacing`: the open loop's event loop (a schedule per client, an in-flight window, timers).
* `latency`: the intended send of every message, the corrected latency, warm-up, the lag and the
  interval log of the process.
* `statuses`: the codes and names of a row's status and of client.json's error kinds.
* `outputs`: rtt.parquet, clients.parquet and client.json from what the loop recorded.
"""
