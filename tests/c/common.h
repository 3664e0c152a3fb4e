/* Helpers shared by the C tests in tests/c. Each test is a plain C program:
 * it exits 0 when every check passed, and prints one line
 *     FAIL: <file>:<line>: <what> (got X, want Y)
 * and exits 1 at the first check that did not. tests/c_abi.rs compiles and
 * runs them. Everything here is static inline so a test that does not use a
 * helper does not trip -Wunused-function. */
#ifndef DEMI_TEST_COMMON_H
#define DEMI_TEST_COMMON_H

/* -std=c11 hides POSIX (clock_gettime, getpid...); ask for it. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <demi/libos.h>
#include <demi/sga.h>
#include <demi/wait.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Symbolic name of the errno values the library can return. */
static inline const char *err_name(long e)
{
    switch (e) {
    case 0: return "0";
    case EPERM: return "EPERM";
    case EBADF: return "EBADF";
    case EAGAIN: return "EAGAIN";
    case ENOMEM: return "ENOMEM";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case EMFILE: return "EMFILE";
    case EPIPE: return "EPIPE";
    case EDESTADDRREQ: return "EDESTADDRREQ";
    case EMSGSIZE: return "EMSGSIZE";
    case ENOPROTOOPT: return "ENOPROTOOPT";
    case EPROTONOSUPPORT: return "EPROTONOSUPPORT";
    case EOPNOTSUPP: return "EOPNOTSUPP";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EADDRINUSE: return "EADDRINUSE";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    case ECONNABORTED: return "ECONNABORTED";
    case ECONNRESET: return "ECONNRESET";
    case EISCONN: return "EISCONN";
    case ENOTCONN: return "ENOTCONN";
    case ETIMEDOUT: return "ETIMEDOUT";
    case ECONNREFUSED: return "ECONNREFUSED";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case EALREADY: return "EALREADY";
    case EINPROGRESS: return "EINPROGRESS";
    case ECANCELED: return "ECANCELED";
    case ENOTRECOVERABLE: return "ENOTRECOVERABLE";
    default: return "errno";
    }
}

static inline const char *opc_name(demi_opcode_t o)
{
    switch (o) {
    case DEMI_OPC_INVALID: return "DEMI_OPC_INVALID";
    case DEMI_OPC_PUSH: return "DEMI_OPC_PUSH";
    case DEMI_OPC_POP: return "DEMI_OPC_POP";
    case DEMI_OPC_ACCEPT: return "DEMI_OPC_ACCEPT";
    case DEMI_OPC_CONNECT: return "DEMI_OPC_CONNECT";
    case DEMI_OPC_CLOSE: return "DEMI_OPC_CLOSE";
    case DEMI_OPC_FAILED: return "DEMI_OPC_FAILED";
    }
    return "(not an opcode)";
}

__attribute__((format(printf, 3, 4), noreturn)) static inline void fail_at(const char *file, int line,
                                                                            const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fprintf(stderr, "FAIL: %s:%d: ", file, line);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(1);
}

/* FAILF("format", args...): report where and what, then exit 1. */
#define FAILF(...) fail_at(__FILE__, __LINE__, __VA_ARGS__)

/* Compares a return code (an errno or 0) with the one wanted. */
static inline void check_rc_at(const char *file, int line, const char *what, long got, long want)
{
    if (got != want)
        fail_at(file, line, "%s (got %s (%ld), want %s (%ld))", what, err_name(got), got, err_name(want), want);
}
#define CHECK_RC(call, want) check_rc_at(__FILE__, __LINE__, #call, (long)(call), (long)(want))

/* Any boolean condition; `what` says what it means. */
#define CHECK(cond, what)                                                                                            \
    do {                                                                                                             \
        if (!(cond))                                                                                                 \
            fail_at(__FILE__, __LINE__, "%s (condition `%s` is false)", what, #cond);                              \
    } while (0)

/* Two integers that must be equal. */
static inline void check_eq_at(const char *file, int line, const char *what, long long got, long long want)
{
    if (got != want)
        fail_at(file, line, "%s (got %lld, want %lld)", what, got, want);
}
#define CHECK_EQ(got, want, what) check_eq_at(__FILE__, __LINE__, what, (long long)(got), (long long)(want))

/* 127.0.0.1:port as a sockaddr_in. */
static inline struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

#define SA(p) ((const struct sockaddr *)(p))

/* The C ABI has no getsockname, so tests cannot bind port 0 and learn the
 * port. Instead try ports from a per-process starting point (below Linux's
 * ephemeral range, so outgoing connections do not collide) until one is
 * free. Returns the address bound. */
static inline struct sockaddr_in bind_free_port_at(const char *file, int line, int qd)
{
    static unsigned next;
    if (next == 0)
        next = 10000u + ((unsigned)getpid() * 7919u + (unsigned)time(NULL)) % 20000u;
    for (int tries = 0; tries < 200; tries++) {
        uint16_t port = (uint16_t)(10000u + (next++ - 10000u) % 20000u);
        struct sockaddr_in a = loopback(port);
        int rc = demi_bind(qd, SA(&a), sizeof a);
        if (rc == 0)
            return a;
        if (rc != EADDRINUSE)
            fail_at(file, line, "demi_bind(127.0.0.1:%u) (got %s (%d), want 0)", port, err_name(rc), rc);
    }
    fail_at(file, line, "no free port found in 200 tries");
}
#define BIND_FREE_PORT(qd) bind_free_port_at(__FILE__, __LINE__, qd)

/* A relative timeout of `ms` milliseconds. */
static inline struct timespec ms_timeout(long ms)
{
    struct timespec t;
    t.tv_sec = ms / 1000;
    t.tv_nsec = (ms % 1000) * 1000000L;
    return t;
}

/* Waits (10 s at most) for qt and insists it completed with `want`. */
static inline demi_qresult_t wait_opc_at(const char *file, int line, demi_qtoken_t qt, demi_opcode_t want)
{
    demi_qresult_t qr;
    struct timespec t = ms_timeout(10000);
    memset(&qr, 0, sizeof qr);
    int rc = demi_wait(&qr, qt, &t);
    if (rc != 0)
        fail_at(file, line, "demi_wait (got %s (%d), want 0)", err_name(rc), rc);
    if (qr.qr_qt != qt)
        fail_at(file, line, "qr_qt (got %#llx, want %#llx)", (unsigned long long)qr.qr_qt, (unsigned long long)qt);
    if (qr.qr_opcode != want)
        fail_at(file, line, "qr_opcode (got %s with qr_ret %s (%lld), want %s)", opc_name(qr.qr_opcode),
                err_name((long)qr.qr_ret), (long long)qr.qr_ret, opc_name(want));
    return qr;
}
#define WAIT_OPC(qt, want) wait_opc_at(__FILE__, __LINE__, qt, want)

/* Waits for qt and insists it failed with errno `want`. */
static inline void wait_failed_at(const char *file, int line, demi_qtoken_t qt, long want)
{
    demi_qresult_t qr = wait_opc_at(file, line, qt, DEMI_OPC_FAILED);
    if (qr.qr_ret != want)
        fail_at(file, line, "qr_ret of the failed operation (got %s (%lld), want %s (%ld))",
                err_name((long)qr.qr_ret), (long long)qr.qr_ret, err_name(want), want);
}
#define WAIT_FAILED(qt, want) wait_failed_at(__FILE__, __LINE__, qt, want)

/* A connected TCP pair over loopback: *client and *server (the accepted qd).
 * *listener stays open (the caller closes it). */
static inline void tcp_pair_at(const char *file, int line, int *listener, int *client, int *server)
{
    demi_qtoken_t qt_a, qt_c;
    if (demi_socket(listener, AF_INET, SOCK_STREAM, 0) != 0 || demi_socket(client, AF_INET, SOCK_STREAM, 0) != 0)
        fail_at(file, line, "demi_socket failed");
    struct sockaddr_in a = bind_free_port_at(file, line, *listener);
    if (demi_listen(*listener, 16) != 0)
        fail_at(file, line, "demi_listen failed");
    if (demi_accept(&qt_a, *listener) != 0)
        fail_at(file, line, "demi_accept failed");
    if (demi_connect(&qt_c, *client, SA(&a), sizeof a) != 0)
        fail_at(file, line, "demi_connect failed");
    wait_opc_at(file, line, qt_c, DEMI_OPC_CONNECT);
    demi_qresult_t qr = wait_opc_at(file, line, qt_a, DEMI_OPC_ACCEPT);
    *server = qr.qr_value.ares.qd;
}
#define TCP_PAIR(l, c, s) tcp_pair_at(__FILE__, __LINE__, l, c, s)

/* An sga from demi_sgaalloc holding `len` bytes of a pattern seeded by `seed`. */
static inline demi_sgarray_t pattern_sga_at(const char *file, int line, size_t len, unsigned seed)
{
    demi_sgarray_t sga = demi_sgaalloc(len);
    if (sga.sga_numsegs != 1 || sga.sga_segs[0].sgaseg_buf == NULL || sga.sga_segs[0].sgaseg_len != len)
        fail_at(file, line, "demi_sgaalloc(%zu) returned a null or wrong-sized sga", len);
    uint8_t *p = (uint8_t *)sga.sga_segs[0].sgaseg_buf;
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)(i * 31u + seed);
    return sga;
}
#define PATTERN_SGA(len, seed) pattern_sga_at(__FILE__, __LINE__, len, seed)

/* The byte at offset i of the pattern seeded by `seed`. */
static inline uint8_t pattern_byte(size_t i, unsigned seed)
{
    return (uint8_t)(i * 31u + seed);
}

#endif /* DEMI_TEST_COMMON_H */
