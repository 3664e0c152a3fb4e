/* tcp-pingpong: measure round-trip latency over a demi TCP (stream) queue.
 *
 *   tcp-pingpong server ADDR:PORT [--idle SECS]
 *   tcp-pingpong client ADDR:PORT [--size BYTES] [--count N] [--bind ADDR[:PORT]] [--timeout SECS]
 *
 * The server accepts one client and sends back every byte it receives until
 * the client closes the connection. The client sends --count messages of
 * --size bytes, one at a time; for each it waits until the whole echo is
 * back, checks every byte, and records how long the round trip took. At the
 * end it prints one table: min, median (p50), 99th percentile, max and mean
 * latency in microseconds. Every wait is bounded, so a lost peer makes the
 * program fail instead of hang. Exit status: 0 on success, 1 on any error,
 * 2 on a usage error.
 *
 * The libOS is chosen at run time with the LIBOS environment variable
 * (catnap, the Linux-sockets libOS, when unset); this program does not care
 * which one it gets.
 *
 * New to the qtoken API? The pattern is always the same:
 *   1. start an operation (demi_push, demi_pop, demi_accept, ...): it returns
 *      at once with a queue token (demi_qtoken_t);
 *   2. wait on the token (demi_wait) to learn how the operation ended: the
 *      result (demi_qresult_t) says what finished (qr_opcode) and carries
 *      the data (a popped scatter-gather array, or an accepted connection).
 */

/* clock_gettime() and friends are POSIX, not plain C11: ask for them. */
#define _POSIX_C_SOURCE 200809L

#include <demi/libos.h> /* demi_init, demi_socket, demi_push, demi_pop, ... */
#include <demi/sga.h>   /* demi_sgaalloc, demi_sgafree */
#include <demi/wait.h>  /* demi_wait */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- small helpers ----------------------------------------------------- */

/* Every demi call returns 0 or a positive errno. This prints which call
 * failed and why, and ends the program with status 1. */
static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "tcp-pingpong: %s failed: %s (errno %d)\n", what, strerror(rc), rc);
        exit(1);
    }
}

/* Waits at most `seconds` for the operation `qt` and checks that it ended
 * as `want` (and not as DEMI_OPC_FAILED). Returns the result. */
static demi_qresult_t wait_for(demi_qtoken_t qt, demi_opcode_t want, int seconds, const char *what)
{
    demi_qresult_t qr;
    /* Timeouts are relative. (NULL would mean "wait forever", which an
     * example that must never hang does not use.) */
    struct timespec timeout = {.tv_sec = seconds, .tv_nsec = 0};
    int rc = demi_wait(&qr, qt, &timeout);
    if (rc == ETIMEDOUT) {
        fprintf(stderr, "tcp-pingpong: %s: nothing happened for %d s; giving up\n", what, seconds);
        exit(1);
    }
    check(rc, what);
    /* The wait worked, but the operation itself may have failed: then
     * qr_opcode is DEMI_OPC_FAILED and qr_ret holds the errno. */
    if (qr.qr_opcode == DEMI_OPC_FAILED) {
        fprintf(stderr, "tcp-pingpong: %s failed: %s (errno %d)\n", what, strerror((int)qr.qr_ret),
                (int)qr.qr_ret);
        exit(1);
    }
    if (qr.qr_opcode != want) {
        fprintf(stderr, "tcp-pingpong: %s: unexpected opcode %d\n", what, (int)qr.qr_opcode);
        exit(1);
    }
    return qr;
}

/* Parses "A.B.C.D:PORT" (or "A.B.C.D" when the port may be left out, in
 * which case it is 0). Returns 0 on success. */
static int parse_addr(const char *text, int port_required, struct sockaddr_in *out)
{
    char host[64];
    const char *colon = strrchr(text, ':');
    size_t host_len = colon ? (size_t)(colon - text) : strlen(text);
    long port = 0;

    if (host_len == 0 || host_len >= sizeof host || (port_required && !colon))
        return -1;
    memcpy(host, text, host_len);
    host[host_len] = '\0';
    if (colon) {
        char *end;
        port = strtol(colon + 1, &end, 10);
        if (*end != '\0' || port < 0 || port > 65535 || (port_required && port == 0))
            return -1;
    }
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? 0 : -1;
}

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

/* The byte at offset i of message number `round`: every message differs,
 * so an echo of the wrong message (or of stale bytes) is caught. */
static uint8_t pattern(size_t i, unsigned long round)
{
    return (uint8_t)(i * 131u + round * 7u + 1u);
}

static const char *libos_name(void)
{
    const char *name = getenv("LIBOS");
    return name && *name ? name : "catnap";
}

static int compare_doubles(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ---- server ------------------------------------------------------------ */

static int run_server(struct sockaddr_in addr, int idle)
{
    int listener, conn;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    int one = 1;

    /* A queue descriptor ("qd") plays the role of a file descriptor. */
    check(demi_socket(&listener, AF_INET, SOCK_STREAM, 0), "demi_socket");
    /* Allow a restart on the same port while old connections linger. Not
     * every libOS has this option, so a refusal is not fatal. */
    if (demi_setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        fprintf(stderr, "tcp-pingpong: note: SO_REUSEADDR is not supported here\n");
    check(demi_bind(listener, (const struct sockaddr *)&addr, sizeof addr), "demi_bind");
    check(demi_listen(listener, 16), "demi_listen");

    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
    printf("tcp-pingpong: server listening on %s:%u (libOS %s)\n", text, ntohs(addr.sin_port), libos_name());
    fflush(stdout); /* whoever started us may be waiting for this line */

    /* Accepting is asynchronous too: start it, then wait. The new
     * connection's descriptor comes back in qr_value.ares. */
    check(demi_accept(&qt, listener), "demi_accept");
    qr = wait_for(qt, DEMI_OPC_ACCEPT, idle, "waiting for a client");
    conn = qr.qr_value.ares.qd;
    struct sockaddr_in peer = qr.qr_value.ares.addr; /* copy: the struct is packed */
    inet_ntop(AF_INET, &peer.sin_addr, text, sizeof text);
    printf("tcp-pingpong: client %s:%u connected\n", text, ntohs(peer.sin_port));
    fflush(stdout);

    /* Small messages should leave at once, not wait to be coalesced. */
    if (demi_setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        fprintf(stderr, "tcp-pingpong: note: TCP_NODELAY is not supported here\n");

    unsigned long long bytes = 0, pops = 0;
    for (;;) {
        /* Ask for the next bytes from the client. */
        check(demi_pop(&qt, conn), "demi_pop");
        qr = wait_for(qt, DEMI_OPC_POP, idle, "waiting for data");
        /* The popped data lives in library memory, described by a
         * scatter-gather array (sga) with one segment. */
        demi_sgarray_t sga = qr.qr_value.sga;
        uint32_t len = sga.sga_segs[0].sgaseg_len;
        if (len == 0) {
            /* A zero-length pop means end of file: the client closed. */
            check(demi_sgafree(&sga), "demi_sgafree");
            break;
        }
        /* Echo: push the very buffer we received (no copy), wait until the
         * push is done, then give the buffer back to the library. A stream
         * pop returns whatever has arrived, which may be part of a client
         * message or (on other libOSes) exactly one message; echoing
         * piece by piece works either way. */
        check(demi_push(&qt, conn, &sga), "demi_push");
        wait_for(qt, DEMI_OPC_PUSH, idle, "echoing");
        check(demi_sgafree(&sga), "demi_sgafree");
        bytes += len;
        pops++;
    }

    printf("tcp-pingpong: client closed; echoed %llu bytes in %llu pops\n", bytes, pops);
    check(demi_close(conn), "demi_close");
    check(demi_close(listener), "demi_close");
    return 0;
}

/* ---- client ------------------------------------------------------------ */

static int run_client(struct sockaddr_in server, const struct sockaddr_in *bind_to, size_t size,
                      unsigned long count, int timeout)
{
    int qd;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    int one = 1;

    check(demi_socket(&qd, AF_INET, SOCK_STREAM, 0), "demi_socket");
    /* Optionally pick the source address (e.g. one RDMA device of several). */
    if (bind_to)
        check(demi_bind(qd, (const struct sockaddr *)bind_to, sizeof *bind_to), "demi_bind");
    check(demi_connect(&qt, qd, (const struct sockaddr *)&server, sizeof server), "demi_connect");
    wait_for(qt, DEMI_OPC_CONNECT, timeout, "connecting");
    if (demi_setsockopt(qd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
        fprintf(stderr, "tcp-pingpong: note: TCP_NODELAY is not supported here\n");

    /* One send buffer from the library (so it can be sent without a copy),
     * reused for every message; a plain buffer for what comes back. */
    demi_sgarray_t out = demi_sgaalloc(size);
    if (out.sga_numsegs != 1) {
        fprintf(stderr, "tcp-pingpong: demi_sgaalloc(%zu) failed\n", size);
        return 1;
    }
    uint8_t *out_bytes = (uint8_t *)out.sga_segs[0].sgaseg_buf;
    uint8_t *in_bytes = malloc(size);
    double *rtt_us = malloc(count * sizeof *rtt_us);
    if (!in_bytes || !rtt_us) {
        fprintf(stderr, "tcp-pingpong: out of memory\n");
        return 1;
    }

    for (unsigned long round = 0; round < count; round++) {
        /* Fill this round's message before the clock starts. Rewriting the
         * buffer is safe: the previous push has completed. */
        for (size_t i = 0; i < size; i++)
            out_bytes[i] = pattern(i, round);

        double start = now_us();
        demi_qtoken_t push_qt;
        check(demi_push(&push_qt, qd, &out), "demi_push");
        /* Do not wait for the push yet: a big message cannot leave entirely
         * until the server echoes part of it back and we read that, so pop
         * first. The library keeps moving the push while we wait on pops. */

        /* A stream has no message boundaries: the echo may come back in
         * several pieces, so pop until all `size` bytes are here. */
        size_t got = 0;
        while (got < size) {
            check(demi_pop(&qt, qd), "demi_pop");
            qr = wait_for(qt, DEMI_OPC_POP, timeout, "waiting for the echo");
            demi_sgarray_t in = qr.qr_value.sga;
            uint32_t len = in.sga_segs[0].sgaseg_len;
            if (len == 0) {
                fprintf(stderr, "tcp-pingpong: server closed the connection mid-message\n");
                return 1;
            }
            if (got + len > size) {
                fprintf(stderr, "tcp-pingpong: received %zu bytes, more than the %zu sent\n", got + len, size);
                return 1;
            }
            memcpy(in_bytes + got, in.sga_segs[0].sgaseg_buf, len);
            got += len;
            /* Popped buffers belong to the library: always give them back. */
            check(demi_sgafree(&in), "demi_sgafree");
        }
        /* Everything came back, so the push has long finished: collect its
         * result (every token must be waited on once). */
        wait_for(push_qt, DEMI_OPC_PUSH, timeout, "sending");
        rtt_us[round] = now_us() - start;

        /* Check every byte of the echo (outside the timed part). */
        for (size_t i = 0; i < size; i++) {
            if (in_bytes[i] != pattern(i, round)) {
                fprintf(stderr, "tcp-pingpong: round %lu: byte %zu is %u, want %u\n", round, i, in_bytes[i],
                        pattern(i, round));
                return 1;
            }
        }
    }

    /* Closing the queue tells the server we are done (it sees end of file). */
    check(demi_sgafree(&out), "demi_sgafree");
    check(demi_close(qd), "demi_close");

    /* Sort the round-trip times to read off the percentiles. */
    qsort(rtt_us, count, sizeof *rtt_us, compare_doubles);
    double sum = 0;
    for (unsigned long i = 0; i < count; i++)
        sum += rtt_us[i];
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &server.sin_addr, text, sizeof text);
    printf("tcp-pingpong: %lu round trips of %zu bytes to %s:%u over libOS %s, every byte verified\n", count, size,
           text, ntohs(server.sin_port), libos_name());
    printf("%12s %10s %10s %10s %10s %10s\n", "round trips", "min us", "p50 us", "p99 us", "max us", "mean us");
    printf("%12lu %10.1f %10.1f %10.1f %10.1f %10.1f\n", count, rtt_us[0], rtt_us[(count - 1) / 2],
           rtt_us[(count * 99 + 99) / 100 - 1], rtt_us[count - 1], sum / (double)count);

    free(in_bytes);
    free(rtt_us);
    return 0;
}

/* ---- command line ------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: tcp-pingpong server ADDR:PORT [--idle SECS]\n"
                    "       tcp-pingpong client ADDR:PORT [--size BYTES] [--count N] [--bind ADDR[:PORT]]"
                    " [--timeout SECS]\n");
    exit(2);
}

/* Parses a positive integer option value no larger than max. */
static unsigned long number(const char *text, unsigned long max)
{
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v == 0 || v > max)
        usage();
    return v;
}

int main(int argc, char *argv[])
{
    if (argc < 3)
        usage();
    int is_server = strcmp(argv[1], "server") == 0;
    if (!is_server && strcmp(argv[1], "client") != 0)
        usage();
    struct sockaddr_in addr, bind_addr;
    if (parse_addr(argv[2], 1, &addr) != 0)
        usage();

    size_t size = 64;
    unsigned long count = 1000;
    int timeout = 10, idle = 30, have_bind = 0;
    for (int i = 3; i < argc; i++) {
        if (i + 1 >= argc)
            usage();
        const char *opt = argv[i], *val = argv[++i];
        if (!is_server && strcmp(opt, "--size") == 0)
            size = number(val, 1ul << 30);
        else if (!is_server && strcmp(opt, "--count") == 0)
            count = number(val, 100000000ul);
        else if (!is_server && strcmp(opt, "--timeout") == 0)
            timeout = (int)number(val, 3600);
        else if (!is_server && strcmp(opt, "--bind") == 0) {
            if (parse_addr(val, 0, &bind_addr) != 0)
                usage();
            have_bind = 1;
        } else if (is_server && strcmp(opt, "--idle") == 0)
            idle = (int)number(val, 3600);
        else
            usage();
    }

    /* Start the libOS named by $LIBOS. struct demi_args is accepted for
     * compatibility with Demikernel; demi_init(NULL) works as well. */
    struct demi_args args = {.argc = argc, .argv = argv, .callback = NULL};
    check(demi_init(&args), "demi_init");

    return is_server ? run_server(addr, idle) : run_client(addr, have_bind ? &bind_addr : NULL, size, count, timeout);
}
