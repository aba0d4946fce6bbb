/* One protocol-v1 client in C (docs/protocol.md): closed loop, one message in flight, N messages.
 * Times each round trip with CLOCK_MONOTONIC right around zmq_send/zmq_recv, so its RTT has no
 * interpreter in it: the floor against which msgprof's Python client is judged.
 *
 *   msgprof_c_client ENDPOINT MESSAGES [PAYLOAD_BYTES [ack|echo [CLIENT_ID]]]
 *
 * ack  (default): expects a one-frame ACK with status OK for the same client_id and seq.
 * echo: expects the DATA request back unchanged (libzmq's zmq_proxy(router, router)).
 * Prints one JSON line: messages, rtt_p50_us, rtt_p99_us (exact, inverted_cdf), msgs_per_s.
 * Exit status 1 on a wrong reply or a 10 s timeout, 2 on bad arguments.
 */
#include <endian.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zmq.h>

#define HEADER_BYTES 28
#define TIMEOUT_MS 10000

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Header in network byte order: magic "MP", version, type, status, flags, reserved u16,
 * client_id u32, seq u64, t_send_ns u64. */
static void pack_header(unsigned char *h, uint8_t type, uint32_t client_id, uint64_t seq, uint64_t t_send_ns) {
    uint32_t id_be = htobe32(client_id);
    uint64_t seq_be = htobe64(seq), t_be = htobe64(t_send_ns);
    memset(h, 0, HEADER_BYTES);
    h[0] = 'M';
    h[1] = 'P';
    h[2] = 1;
    h[3] = type;
    memcpy(h + 8, &id_be, 4);
    memcpy(h + 12, &seq_be, 8);
    memcpy(h + 20, &t_be, 8);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* The smallest sample with at least q*n samples at or below it (sorted input). */
static double quantile_us(const uint64_t *sorted, size_t n, double q) {
    size_t rank = (size_t)(q * (double)n);
    if ((double)rank < q * (double)n) rank++;
    if (rank < 1) rank = 1;
    return (double)sorted[rank - 1] / 1e3;
}

static int fail(const char *what, uint64_t seq) {
    fprintf(stderr, "msgprof_c_client: %s at seq %llu (%s)\n", what, (unsigned long long)seq, zmq_strerror(zmq_errno()));
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s ENDPOINT MESSAGES [PAYLOAD_BYTES [ack|echo [CLIENT_ID]]]\n", argv[0]);
        return 2;
    }
    const char *endpoint = argv[1];
    size_t messages = strtoull(argv[2], NULL, 10);
    size_t payload_bytes = argc > 3 ? strtoull(argv[3], NULL, 10) : 64;
    int echo = argc > 4 && strcmp(argv[4], "echo") == 0;
    uint32_t client_id = argc > 5 ? (uint32_t)strtoul(argv[5], NULL, 10) : 1;
    if (messages == 0 || client_id == 0 || client_id > 0x7fffffffu) return 2;

    uint64_t *rtt_ns = malloc(messages * sizeof *rtt_ns);
    unsigned char *payload = calloc(payload_bytes + 1, 1);
    unsigned char reply[HEADER_BYTES + 1];
    unsigned char *echoed_payload = malloc(payload_bytes + 1);
    unsigned char header[HEADER_BYTES], expected[HEADER_BYTES];
    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0, timeout = TIMEOUT_MS, rc = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sock, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(sock, ZMQ_SNDTIMEO, &timeout, sizeof timeout);
    if (zmq_connect(sock, endpoint) != 0) {
        rc = fail("connect failed", 0);
        goto done;
    }
    uint64_t first_send = 0, last_recv = 0;
    for (uint64_t seq = 1; seq <= messages; seq++) {
        uint64_t t0 = now_ns();
        pack_header(header, 1, client_id, seq, t0);
        if (zmq_send(sock, header, HEADER_BYTES, ZMQ_SNDMORE) != HEADER_BYTES ||
            zmq_send(sock, payload, payload_bytes, 0) != (int)payload_bytes) {
            rc = fail("send failed", seq);
            goto done;
        }
        int n = zmq_recv(sock, reply, HEADER_BYTES + 1, 0);
        int more = 0;
        size_t more_size = sizeof more;
        zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &more_size);
        int extra = -1;
        if (echo && n == HEADER_BYTES && more) extra = zmq_recv(sock, echoed_payload, payload_bytes + 1, 0);
        uint64_t t1 = now_ns();
        if (n < 0) {
            rc = fail("no reply", seq);
            goto done;
        }
        if (echo) {
            if (n != HEADER_BYTES || memcmp(reply, header, HEADER_BYTES) != 0 || extra != (int)payload_bytes) {
                rc = fail("echo differs from the request", seq);
                goto done;
            }
        } else {
            pack_header(expected, 2, client_id, seq, t0); /* status OK = 0 */
            if (n != HEADER_BYTES || more || memcmp(reply, expected, HEADER_BYTES) != 0) {
                rc = fail("invalid ACK", seq);
                goto done;
            }
        }
        rtt_ns[seq - 1] = t1 - t0;
        if (seq == 1) first_send = t0;
        last_recv = t1;
    }
    qsort(rtt_ns, messages, sizeof *rtt_ns, cmp_u64);
    printf("{\"mode\": \"%s\", \"messages\": %zu, \"payload_bytes\": %zu, \"rtt_p50_us\": %.3f, "
           "\"rtt_p99_us\": %.3f, \"rtt_max_us\": %.3f, \"msgs_per_s\": %.1f}\n",
           echo ? "echo" : "ack", messages, payload_bytes, quantile_us(rtt_ns, messages, 0.5),
           quantile_us(rtt_ns, messages, 0.99), (double)rtt_ns[messages - 1] / 1e3,
           (double)messages * 1e9 / (double)(last_recv - first_send));
done:
    zmq_close(sock);
    zmq_ctx_term(ctx);
    free(rtt_ns);
    free(payload);
    free(echoed_payload);
    return rc;
}
