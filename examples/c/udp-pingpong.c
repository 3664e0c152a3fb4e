/* udp-pingpong: measure round-trip latency over a demi UDP (datagram) queue.
 *
 *   udp-pingpong server ADDR:PORT [--idle SECS]
 *   udp-pingpong client ADDR:PORT [--size BYTES] [--count N] [--bind ADDR[:PORT]] [--timeout SECS]
 *
 * The server sends every datagram back to whoever sent it. It stops when a
 * client says goodbye (see "protocol" below) or when no datagram has come
 * for --idle seconds (default 30). The client sends --count datagrams of
 * --size bytes (at least 8), one at a time, waits for each echo, checks
 * every byte, and prints one table of round-trip latency in microseconds:
 * min, median (p50), 99th percentile, max and mean.
 *
 * Datagrams may be lost (not on loopback, but on a real network). The
 * client resends a ping whose echo has not come back within 200 ms, up to
 * 10 times, and gives up after --timeout seconds (default 10) per ping; a
 * round that needed a resend counts the time from the first send.
 *
 * Protocol: the first 8 bytes of every ping are its sequence number (big
 * endian); the other bytes follow a pattern derived from it, so an echo of
 * an old ping is recognised and skipped. A ping with sequence number
 * 0xffffffffffffffff means "goodbye": the server echoes it and exits.
 *
 * The libOS is chosen with the LIBOS environment variable (catnap when
 * unset). Some libOSes need a local address before the first send: give
 * the client --bind then. Exit status: 0 on success, 1 on any error, 2 on a
 * usage error.
 */

/* clock_gettime() and friends are POSIX, not plain C11: ask for them. */
#define _POSIX_C_SOURCE 200809L

#include <demi/libos.h> /* demi_init, demi_socket, demi_pushto, demi_pop, ... */
#include <demi/sga.h>   /* demi_sgaalloc, demi_sgafree */
#include <demi/wait.h>  /* demi_wait */

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define GOODBYE UINT64_MAX
#define RESEND_MS 200
#define MAX_SENDS 11

/* ---- small helpers ----------------------------------------------------- */

/* Every demi call returns 0 or a positive errno: report and stop on error. */
static void check(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "udp-pingpong: %s failed: %s (errno %d)\n", what, strerror(rc), rc);
        exit(1);
    }
}

/* Waits up to `ms` milliseconds for `qt`. Returns 0 with *qr filled in, or
 * ETIMEDOUT, in which case the operation is still pending and the same
 * token can be waited on again later. A failed operation ends the program. */
static int wait_ms(demi_qtoken_t qt, long ms, demi_qresult_t *qr, const char *what)
{
    struct timespec timeout = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    int rc = demi_wait(qr, qt, &timeout);
    if (rc == ETIMEDOUT)
        return rc;
    check(rc, what);
    if (qr->qr_opcode == DEMI_OPC_FAILED) {
        fprintf(stderr, "udp-pingpong: %s failed: %s (errno %d)\n", what, strerror((int)qr->qr_ret),
                (int)qr->qr_ret);
        exit(1);
    }
    return 0;
}

/* Pushes one datagram to `to` and waits until it has left. */
static void send_to(int qd, demi_sgarray_t *sga, const struct sockaddr_in *to, const char *what)
{
    demi_qtoken_t qt;
    demi_qresult_t qr;
    check(demi_pushto(&qt, qd, sga, (const struct sockaddr *)to, sizeof *to), what);
    if (wait_ms(qt, 10000, &qr, what) == ETIMEDOUT) {
        fprintf(stderr, "udp-pingpong: %s did not complete in 10 s\n", what);
        exit(1);
    }
}

/* Parses "A.B.C.D:PORT" (the port may be left out when not required: 0). */
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

/* Sequence numbers travel big endian, whatever the hosts are. */
static void put_seq(uint8_t *p, uint64_t seq)
{
    for (int i = 7; i >= 0; i--, seq >>= 8)
        p[i] = (uint8_t)seq;
}

static uint64_t get_seq(const uint8_t *p)
{
    uint64_t seq = 0;
    for (int i = 0; i < 8; i++)
        seq = seq << 8 | p[i];
    return seq;
}

/* The payload byte at offset i of ping `seq`. */
static uint8_t pattern(size_t i, uint64_t seq)
{
    return (uint8_t)(i * 131u + seq * 7u + 1u);
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
    int qd;
    demi_qtoken_t qt;
    demi_qresult_t qr;

    check(demi_socket(&qd, AF_INET, SOCK_DGRAM, 0), "demi_socket");
    check(demi_bind(qd, (const struct sockaddr *)&addr, sizeof addr), "demi_bind");
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &addr.sin_addr, text, sizeof text);
    printf("udp-pingpong: server ready on %s:%u (libOS %s)\n", text, ntohs(addr.sin_port), libos_name());
    fflush(stdout); /* whoever started us may be waiting for this line */

    unsigned long long echoed = 0;
    for (;;) {
        /* Wait for the next datagram, but not forever. */
        check(demi_pop(&qt, qd), "demi_pop");
        if (wait_ms(qt, idle * 1000L, &qr, "demi_pop") == ETIMEDOUT) {
            /* The pending pop is cancelled when the queue is closed. */
            printf("udp-pingpong: no datagram for %d s; stopping after %llu echoes\n", idle, echoed);
            check(demi_close(qd), "demi_close");
            return echoed > 0 ? 0 : 1;
        }
        /* One pop is one whole datagram; sga_addr says who sent it. Copy
         * the address out: sga_addr sits in a packed struct. */
        demi_sgarray_t sga = qr.qr_value.sga;
        struct sockaddr_in sender = sga.sga_addr;
        uint32_t len = sga.sga_segs[0].sgaseg_len;
        int goodbye = len >= 8 && get_seq((const uint8_t *)sga.sga_segs[0].sgaseg_buf) == GOODBYE;

        /* Send the very buffer we received back to its sender (no copy),
         * then give the buffer back to the library. */
        send_to(qd, &sga, &sender, "echo");
        check(demi_sgafree(&sga), "demi_sgafree");
        if (goodbye)
            break;
        echoed++;
    }

    printf("udp-pingpong: client said goodbye; echoed %llu datagrams\n", echoed);
    check(demi_close(qd), "demi_close");
    return 0;
}

/* ---- client ------------------------------------------------------------ */

/* Says goodbye: a few times, as any datagram may be lost; waits briefly for
 * the server's echo, which is not required (the server may be gone). */
static void say_goodbye(int qd, demi_qtoken_t *pop_qt, const struct sockaddr_in *server)
{
    demi_sgarray_t bye = demi_sgaalloc(8);
    demi_qresult_t qr;
    if (bye.sga_numsegs != 1)
        return;
    put_seq((uint8_t *)bye.sga_segs[0].sgaseg_buf, GOODBYE);
    for (int attempt = 0; attempt < 3; attempt++) {
        send_to(qd, &bye, server, "goodbye");
        if (wait_ms(*pop_qt, RESEND_MS, &qr, "demi_pop") == 0) {
            const uint8_t *p = (const uint8_t *)qr.qr_value.sga.sga_segs[0].sgaseg_buf;
            int acked = qr.qr_value.sga.sga_segs[0].sgaseg_len >= 8 && get_seq(p) == GOODBYE;
            check(demi_sgafree(&qr.qr_value.sga), "demi_sgafree");
            check(demi_pop(pop_qt, qd), "demi_pop");
            if (acked)
                break;
        }
    }
    check(demi_sgafree(&bye), "demi_sgafree");
}

static int run_client(struct sockaddr_in server, const struct sockaddr_in *bind_to, size_t size,
                      unsigned long count, int timeout)
{
    int qd;
    demi_qtoken_t pop_qt;
    demi_qresult_t qr;
    unsigned long resends = 0, stale = 0;

    check(demi_socket(&qd, AF_INET, SOCK_DGRAM, 0), "demi_socket");
    if (bind_to)
        check(demi_bind(qd, (const struct sockaddr *)bind_to, sizeof *bind_to), "demi_bind");

    demi_sgarray_t ping = demi_sgaalloc(size);
    double *rtt_us = malloc(count * sizeof *rtt_us);
    if (ping.sga_numsegs != 1 || !rtt_us) {
        fprintf(stderr, "udp-pingpong: out of memory\n");
        return 1;
    }
    uint8_t *out = (uint8_t *)ping.sga_segs[0].sgaseg_buf;

    /* Keep exactly one pop outstanding. When a wait on it times out the
     * pop stays pending, and we simply wait on the same token again. */
    check(demi_pop(&pop_qt, qd), "demi_pop");

    for (unsigned long seq = 0; seq < count; seq++) {
        /* Build this ping before the clock starts. */
        put_seq(out, seq);
        for (size_t i = 8; i < size; i++)
            out[i] = pattern(i, seq);

        double start = now_us();
        double give_up = start + timeout * 1e6;
        int sends = 0, done = 0;
        while (!done) {
            if (sends == MAX_SENDS || now_us() > give_up) {
                fprintf(stderr, "udp-pingpong: ping %lu: no echo after %d sends\n", seq, sends);
                return 1;
            }
            /* pushto names the destination for each datagram. */
            send_to(qd, &ping, &server, "demi_pushto");
            if (sends++ > 0)
                resends++;
            /* Wait for the echo; skip echoes of older pings. */
            double resend_at = now_us() + RESEND_MS * 1000.0;
            while (!done) {
                long left_ms = (long)((resend_at - now_us()) / 1000.0);
                if (left_ms < 0 || wait_ms(pop_qt, left_ms, &qr, "demi_pop") == ETIMEDOUT)
                    break; /* resend */
                demi_sgarray_t in = qr.qr_value.sga;
                const uint8_t *p = (const uint8_t *)in.sga_segs[0].sgaseg_buf;
                uint32_t len = in.sga_segs[0].sgaseg_len;
                if (len >= 8 && get_seq(p) == seq) {
                    /* Stop the clock, then check every byte. */
                    rtt_us[seq] = now_us() - start;
                    if (len != size) {
                        fprintf(stderr, "udp-pingpong: ping %lu: echo has %u bytes, want %zu\n", seq, len, size);
                        return 1;
                    }
                    for (size_t i = 8; i < size; i++) {
                        if (p[i] != pattern(i, seq)) {
                            fprintf(stderr, "udp-pingpong: ping %lu: byte %zu is %u, want %u\n", seq, i, p[i],
                                    pattern(i, seq));
                            return 1;
                        }
                    }
                    done = 1;
                } else {
                    stale++;
                }
                /* Give the popped buffer back and start the next pop. */
                check(demi_sgafree(&in), "demi_sgafree");
                check(demi_pop(&pop_qt, qd), "demi_pop");
            }
        }
    }

    say_goodbye(qd, &pop_qt, &server);
    check(demi_sgafree(&ping), "demi_sgafree");
    /* Closing the queue also cancels the pop still outstanding. */
    check(demi_close(qd), "demi_close");

    qsort(rtt_us, count, sizeof *rtt_us, compare_doubles);
    double sum = 0;
    for (unsigned long i = 0; i < count; i++)
        sum += rtt_us[i];
    char text[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &server.sin_addr, text, sizeof text);
    printf("udp-pingpong: %lu round trips of %zu bytes to %s:%u over libOS %s, every byte verified"
           " (%lu resends, %lu stale echoes)\n",
           count, size, text, ntohs(server.sin_port), libos_name(), resends, stale);
    printf("%12s %10s %10s %10s %10s %10s\n", "round trips", "min us", "p50 us", "p99 us", "max us", "mean us");
    printf("%12lu %10.1f %10.1f %10.1f %10.1f %10.1f\n", count, rtt_us[0], rtt_us[(count - 1) / 2],
           rtt_us[(count * 99 + 99) / 100 - 1], rtt_us[count - 1], sum / (double)count);
    free(rtt_us);
    return 0;
}

/* ---- command line ------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: udp-pingpong server ADDR:PORT [--idle SECS]\n"
                    "       udp-pingpong client ADDR:PORT [--size BYTES>=8] [--count N] [--bind ADDR[:PORT]]"
                    " [--timeout SECS]\n");
    exit(2);
}

static unsigned long number(const char *text, unsigned long min, unsigned long max)
{
    char *end;
    unsigned long v = strtoul(text, &end, 10);
    if (*text == '\0' || *end != '\0' || v < min || v > max)
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
            size = number(val, 8, 65507); /* the largest UDP payload over IPv4 */
        else if (!is_server && strcmp(opt, "--count") == 0)
            count = number(val, 1, 100000000ul);
        else if (!is_server && strcmp(opt, "--timeout") == 0)
            timeout = (int)number(val, 1, 3600);
        else if (!is_server && strcmp(opt, "--bind") == 0) {
            if (parse_addr(val, 0, &bind_addr) != 0)
                usage();
            have_bind = 1;
        } else if (is_server && strcmp(opt, "--idle") == 0)
            idle = (int)number(val, 1, 3600);
        else
            usage();
    }

    /* Start the libOS named by $LIBOS (catnap when unset). */
    struct demi_args args = {.argc = argc, .argv = argv, .callback = NULL};
    check(demi_init(&args), "demi_init");

    return is_server ? run_server(addr, idle) : run_client(addr, have_bind ? &bind_addr : NULL, size, count, timeout);
}
