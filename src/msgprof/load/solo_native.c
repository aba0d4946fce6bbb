/* The one-client closed loop of msgprof.load.solo, compiled: send, blocking receive, clock.

   msgprof.load.native builds this file with the host's C compiler against the libzmq that pyzmq
   loaded, and msgprof.load.solo calls it through ctypes (the interpreter lock is released for
   the call). Between the two clock reads of a round trip it does what the C client of
   benchmarks/c/ does and nothing else; the rows it measured go back to Python in arrays, and
   every reply that is not the OK ACK of the message in flight (in echo mode: that message's
   header and one more frame) goes back unread beyond its first frame (or, for an echo with a
   third frame, its second), for the loop to judge as it judges any other.

   No zmq.h is needed: the few functions used are declared here as libzmq 4 exports them. */

#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

typedef struct zmq_msg_t {
    unsigned char _[64] __attribute__((aligned(sizeof(void *))));
} zmq_msg_t;
int zmq_send(void *socket, const void *buf, size_t len, int flags);
int zmq_msg_init(zmq_msg_t *msg);
int zmq_msg_recv(zmq_msg_t *msg, void *socket, int flags);
void *zmq_msg_data(zmq_msg_t *msg);
size_t zmq_msg_size(const zmq_msg_t *msg);
int zmq_msg_more(const zmq_msg_t *msg);
int zmq_msg_close(zmq_msg_t *msg);
int zmq_errno(void);

#define ZMQ_DONTWAIT 1
#define ZMQ_SNDMORE 2
#define HEADER 28 /* protocol v1 header (docs/protocol.md) */
#define PREFIX 8  /* magic, version, type, status, flags, reserved: fixed per type and status */
#define STAMP 12  /* a payload's repeated (client_id, seq) */

/* Why msgprof_solo_run returned. */
enum {
    SOLO_SETTLED = 0,   /* the last reply was an OK ACK and no next message was sent */
    SOLO_TIMEOUT = 1,   /* no reply within the socket's receive timeout (or a signal) */
    SOLO_ODD = 2,       /* a reply other than the one expected: its first frame is in `odd` */
    SOLO_ODD_TAIL = 3,  /* echo: the header expected, then a frame in `odd` and more after it */
    SOLO_REFUSED = 4,   /* the next message's payload frame was refused (its header went) */
    SOLO_ERROR = 5      /* libzmq failed; *err holds its errno */
};

static int64_t now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t); /* Python's time.perf_counter_ns on Linux */
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

static void put_be(uint8_t *p, uint64_t v, int bytes) {
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The payload of msgprof.wire.payload.payload_for(client_id, seq, size). */
static void fill_payload(uint8_t *payload, size_t size, uint32_t client_id, uint64_t seq) {
    uint8_t stamp[STAMP];
    put_be(stamp, client_id, 4);
    put_be(stamp + 4, seq, 8);
    for (size_t at = 0; at < size; at += STAMP)
        memcpy(payload + at, stamp, size - at < STAMP ? size - at : STAMP);
}

/* A send without waiting, tried again when a signal interrupts it; 0, or libzmq's errno. */
static int send_now(void *sock, const void *buf, size_t len, int more) {
    while (zmq_send(sock, buf, len, ZMQ_DONTWAIT | (more ? ZMQ_SNDMORE : 0)) < 0)
        if (zmq_errno() != EINTR)
            return zmq_errno();
    return 0;
}

/* Await the reply to the message in flight (`wire_seq`, sent at `t_send` with DATA header
   `data_prefix` + echo); on its OK ACK (`echo`: its header back, and one frame more, whatever
   it holds) record the round trip and send the next seq, until the reply to the last one
   (`sends_left` 0) or a reply at or after `until` is taken, or `cap` rows are. Then nothing is
   sent: the loop settles the rows first, outside every round trip, and sends the next itself.
   Returns the rows recorded (t_sends[i], rtts[i] for wire_seq + i) and sets *why; *t_last is
   the clock at the last reply taken, *t_next the send time of a message sent and not yet
   answered (0 if none). */
int64_t msgprof_solo_run(void *sock, const uint8_t *data_prefix, const uint8_t *ack_prefix,
                         int echo, uint32_t client_id, uint64_t wire_seq, int64_t t_send,
                         int64_t sends_left, uint8_t *payload, size_t payload_size,
                         int64_t until, int64_t cap, int64_t *t_sends, int64_t *rtts,
                         int64_t *t_last, int64_t *t_next, zmq_msg_t *odd, int *why, int *err) {
    uint8_t expected[HEADER];
    int64_t rows = 0;
    memcpy(expected, echo ? data_prefix : ack_prefix, PREFIX);
    put_be(expected + PREFIX, client_id, 4);
    *t_next = 0;
    *err = 0;
    for (;;) {
        put_be(expected + 12, wire_seq, 8);
        put_be(expected + 20, (uint64_t)t_send, 8);
        zmq_msg_init(odd);
        if (zmq_msg_recv(odd, sock, 0) < 0) {
            int e = zmq_errno();
            zmq_msg_close(odd);
            *why = (e == EAGAIN || e == EINTR) ? SOLO_TIMEOUT : SOLO_ERROR;
            *err = e;
            return rows;
        }
        int64_t t = now_ns();
        *t_last = t;
        if (zmq_msg_more(odd) != (echo != 0) || zmq_msg_size(odd) != HEADER ||
            memcmp(zmq_msg_data(odd), expected, HEADER) != 0) {
            *why = SOLO_ODD; /* `odd` stays open: the caller reads and closes it */
            return rows;
        }
        zmq_msg_close(odd);
        if (echo) { /* the payload's frame, which came with the header */
            zmq_msg_init(odd);
            if (zmq_msg_recv(odd, sock, ZMQ_DONTWAIT) < 0) {
                *err = zmq_errno();
                zmq_msg_close(odd);
                *why = SOLO_ERROR;
                return rows;
            }
            if (zmq_msg_more(odd)) {
                *why = SOLO_ODD_TAIL;
                return rows;
            }
            zmq_msg_close(odd);
        }
        *t_next = 0;
        t_sends[rows] = t_send;
        rtts[rows] = t - t_send;
        rows++;
        if (sends_left == 0 || t >= until || rows == cap) {
            *why = SOLO_SETTLED;
            return rows;
        }
        wire_seq++;
        fill_payload(payload, payload_size, client_id, wire_seq);
        uint8_t header[HEADER];
        memcpy(header, data_prefix, PREFIX);
        memcpy(header + PREFIX, expected + PREFIX, 4);
        put_be(header + 12, wire_seq, 8);
        t_send = now_ns();
        put_be(header + 20, (uint64_t)t_send, 8);
        int e = send_now(sock, header, HEADER, 1);
        if (e != 0) { /* nothing went: the loop sends it again, or learns why it cannot */
            *why = e == EAGAIN ? SOLO_SETTLED : SOLO_ERROR;
            *err = e;
            return rows;
        }
        *t_next = t_send;
        sends_left--;
        if ((e = send_now(sock, payload, payload_size, 0)) != 0) {
            *why = e == EAGAIN ? SOLO_REFUSED : SOLO_ERROR;
            *err = e;
            return rows;
        }
    }
}
