/* errors.c: every error the C ABI returns with catnap, each asserted exactly.
 *
 * Sections run in order in one process (demi_init happens once). Each check
 * names the call it made, so a failure reads e.g.
 *     FAIL: tests/c/errors.c:120: demi_connect(...) (got EINVAL (22), want EBADF (9))
 * Only loopback addresses are used. */
/* NULL arguments are passed on purpose: drop the headers' nonnull marks. */
#define DEMI_NO_NONNULL
#include "common.h"

#include <stdbool.h>

/* A descriptor number that is never open in this program. */
#define NO_SUCH_QD 4242

static const struct timespec zero_timeout = {0, 0};

/* Fills a qresult with a recognisable pattern, to check that failed calls
 * leave their out-parameters alone. */
static void poison(void *p, size_t n)
{
    memset(p, 0xA5, n);
}

static bool is_poisoned(const void *p, size_t n)
{
    const unsigned char *b = (const unsigned char *)p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0xA5)
            return false;
    return true;
}

static bool sga_is_null(demi_sgarray_t s)
{
    return s.sga_buf == NULL && s.sga_numsegs == 0 && s.sga_segs[0].sgaseg_buf == NULL &&
           s.sga_segs[0].sgaseg_len == 0;
}

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

/* Every call before demi_init fails with EPERM and writes no out-parameter. */
static void before_init(void)
{
    int qd = -7;
    demi_qtoken_t qt = 77;
    struct sockaddr_in a = loopback(9);
    int one = 1;
    socklen_t len = sizeof one;
    char byte = 'x';
    demi_sgarray_t sga;
    memset(&sga, 0, sizeof sga);
    sga.sga_numsegs = 1;
    sga.sga_segs[0].sgaseg_buf = &byte;
    sga.sga_segs[0].sgaseg_len = 1;
    demi_qresult_t qr;
    int off = -3, n = -3;
    demi_qtoken_t qts[1] = {1};
    struct timespec abs_t = {time(NULL) + 1, 0};

    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_STREAM, 0), EPERM);
    CHECK_EQ(qd, -7, "demi_socket wrote qd_out although it failed");
    CHECK_RC(demi_bind(1, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_listen(1, 8), EPERM);
    CHECK_RC(demi_accept(&qt, 1), EPERM);
    CHECK_RC(demi_connect(&qt, 1, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_close(1), EPERM);
    CHECK_RC(demi_push(&qt, 1, &sga), EPERM);
    CHECK_RC(demi_pushto(&qt, 1, &sga, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_pop(&qt, 1), EPERM);
    CHECK_EQ(qt, 77, "a failed call wrote qt_out");
    CHECK_RC(demi_setsockopt(1, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), EPERM);
    CHECK_RC(demi_getsockopt(1, SOL_SOCKET, SO_REUSEADDR, &one, &len), EPERM);
    len = sizeof a;
    CHECK_RC(demi_getpeername(1, (struct sockaddr *)&a, &len), EPERM);
    CHECK(sga_is_null(demi_sgaalloc(64)), "demi_sgaalloc before demi_init returns a null sga");
    CHECK_RC(demi_sgafree(&sga), EPERM);
    CHECK_EQ(byte, 'x', "demi_sgafree touched memory");
    poison(&qr, sizeof qr);
    CHECK_RC(demi_wait(&qr, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_timedwait(&qr, 1, &abs_t), EPERM);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_next_n(&qr, 1, &n, &zero_timeout), EPERM);
    CHECK(is_poisoned(&qr, sizeof qr), "a failed wait left qr_out untouched");
    CHECK_EQ(off, -3, "demi_wait_any wrote ready_offset although it failed");
    CHECK_EQ(n, -3, "demi_wait_next_n wrote num_out although it failed");

    /* EPERM whatever the arguments: NULL pointers, short or foreign
     * addresses, bad sizes and timeouts do not get EINVAL before init. */
    struct timespec bad_timeout = {0, 2000000000L};
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    CHECK_RC(demi_socket(NULL, AF_INET, SOCK_STREAM, 0), EPERM);
    CHECK_RC(demi_socket(&qd, AF_UNIX, SOCK_RAW, 99), EPERM);
    CHECK_RC(demi_bind(1, NULL, sizeof a), EPERM);
    CHECK_RC(demi_bind(1, SA(&a), 3), EPERM);
    CHECK_RC(demi_bind(-1, SA(&a6), sizeof a6), EPERM);
    CHECK_RC(demi_listen(-1, -1), EPERM);
    CHECK_RC(demi_accept(NULL, 1), EPERM);
    CHECK_RC(demi_connect(NULL, 1, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_connect(&qt, 1, NULL, 0), EPERM);
    CHECK_RC(demi_connect(&qt, 1, SA(&a), 1), EPERM);
    CHECK_RC(demi_close(-1), EPERM);
    CHECK_RC(demi_push(NULL, 1, &sga), EPERM);
    CHECK_RC(demi_push(&qt, 1, NULL), EPERM);
    CHECK_RC(demi_pushto(NULL, 1, &sga, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_pushto(&qt, 1, NULL, SA(&a), sizeof a), EPERM);
    CHECK_RC(demi_pushto(&qt, 1, &sga, NULL, sizeof a), EPERM);
    CHECK_RC(demi_pushto(&qt, 1, &sga, SA(&a), 2), EPERM);
    CHECK_RC(demi_pop(NULL, 1), EPERM);
    CHECK_EQ(qt, 77, "a failed call wrote qt_out");
    CHECK_RC(demi_setsockopt(1, SOL_SOCKET, SO_REUSEADDR, NULL, sizeof one), EPERM);
    CHECK_RC(demi_setsockopt(1, SOL_SOCKET, SO_REUSEADDR, &one, 1u << 20), EPERM);
    CHECK_RC(demi_getsockopt(1, SOL_SOCKET, SO_REUSEADDR, NULL, &len), EPERM);
    CHECK_RC(demi_getsockopt(1, SOL_SOCKET, SO_REUSEADDR, &one, NULL), EPERM);
    CHECK_RC(demi_getpeername(1, NULL, &len), EPERM);
    CHECK_RC(demi_getpeername(1, (struct sockaddr *)&a, NULL), EPERM);
    CHECK_RC(demi_sgafree(NULL), EPERM);
    CHECK(sga_is_null(demi_sgaalloc(0)), "demi_sgaalloc(0) returns a null sga");
    CHECK_RC(demi_wait(NULL, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_wait(&qr, 1, &bad_timeout), EPERM);
    CHECK_RC(demi_timedwait(NULL, 1, &abs_t), EPERM);
    CHECK_RC(demi_timedwait(&qr, 1, &bad_timeout), EPERM);
    CHECK_RC(demi_wait_any(NULL, &off, qts, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_any(&qr, NULL, qts, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_any(&qr, &off, NULL, 1, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 0, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 1, &bad_timeout), EPERM);
    CHECK_RC(demi_wait_next_n(NULL, 1, &n, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_next_n(&qr, 0, &n, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_next_n(&qr, 1, NULL, &zero_timeout), EPERM);
    CHECK_RC(demi_wait_next_n(&qr, 1, &n, &bad_timeout), EPERM);
    CHECK(is_poisoned(&qr, sizeof qr), "a failed wait left qr_out untouched");
    CHECK_EQ(off, -3, "demi_wait_any wrote ready_offset although it failed");
    CHECK_EQ(n, -3, "demi_wait_next_n wrote num_out although it failed");
}

static void init_once(int argc, char **argv)
{
    struct demi_args args = {.argc = argc, .argv = argv, .callback = NULL};
    /* A failed demi_init leaves the process uninitialised; it may be retried. */
    CHECK(setenv("LIBOS", "no-such-libos", 1) == 0, "setenv");
    CHECK_RC(demi_init(&args), EINVAL);
    CHECK(setenv("LIBOS", "catnap", 1) == 0 && setenv("DEMI_SPIN_US", "fifty", 1) == 0, "setenv");
    CHECK_RC(demi_init(NULL), EINVAL);
    CHECK(unsetenv("DEMI_SPIN_US") == 0, "unsetenv");
    int qd;
    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_STREAM, 0), EPERM);
    CHECK_RC(demi_init(NULL), 0);
    CHECK_RC(demi_init(NULL), EEXIST);
    CHECK_RC(demi_init(&args), EEXIST);
}

static void socket_errors(void)
{
    int qd = -7;
    CHECK_RC(demi_socket(&qd, AF_INET6, SOCK_STREAM, 0), EAFNOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_UNIX, SOCK_STREAM, 0), EAFNOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET6, SOCK_DGRAM, 0), EAFNOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_RAW, 0), EPROTONOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_SEQPACKET, 0), EPROTONOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET, 12345, 0), EPROTONOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_STREAM, IPPROTO_UDP), EPROTONOSUPPORT);
    CHECK_RC(demi_socket(&qd, AF_INET, SOCK_DGRAM, IPPROTO_TCP), EPROTONOSUPPORT);
    CHECK_EQ(qd, -7, "demi_socket wrote qd_out although it failed");
    CHECK_RC(demi_socket(NULL, AF_INET, SOCK_STREAM, 0), EINVAL);

    /* Accepted: explicit protocols, and the SOCK_NONBLOCK/SOCK_CLOEXEC flags
     * (meaningless for a queue, ignored). Descriptor 0 is never handed out. */
    int a, b, c;
    CHECK_RC(demi_socket(&a, AF_INET, SOCK_STREAM, IPPROTO_TCP), 0);
    CHECK_RC(demi_socket(&b, AF_INET, SOCK_DGRAM, IPPROTO_UDP), 0);
    CHECK_RC(demi_socket(&c, AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), 0);
    CHECK(a > 0 && b > 0 && c > 0, "descriptors are positive");
    CHECK(a != b && b != c && a != c, "descriptors are distinct");
    CHECK_RC(demi_close(a), 0);
    CHECK_RC(demi_close(b), 0);
    CHECK_RC(demi_close(c), 0);
}

static void bind_listen_accept_errors(void)
{
    int s, t, u;
    struct sockaddr_in6 a6;
    demi_qtoken_t qt = 77;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;

    CHECK_RC(demi_socket(&s, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_socket(&t, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);

    /* Listening needs a bound stream socket; accepting needs a listening one. */
    CHECK_RC(demi_listen(s, 8), EDESTADDRREQ);
    CHECK_RC(demi_accept(&qt, s), EINVAL);
    CHECK_RC(demi_listen(u, 8), EOPNOTSUPP);
    CHECK_RC(demi_accept(&qt, u), EOPNOTSUPP);
    CHECK_RC(demi_listen(NO_SUCH_QD, 8), EBADF);
    CHECK_RC(demi_accept(&qt, NO_SUCH_QD), EBADF);
    CHECK_EQ(qt, 77, "demi_accept wrote qt_out although it failed");

    struct sockaddr_in a = loopback(1);
    CHECK_RC(demi_bind(s, NULL, sizeof a), EINVAL);
    CHECK_RC(demi_bind(s, SA(&a), sizeof a - 1), EINVAL);
    CHECK_RC(demi_bind(s, SA(&a), 0), EINVAL);
    CHECK_RC(demi_bind(s, SA(&a6), sizeof a6), EINVAL);
    /* The descriptor is looked up before the address is parsed. */
    CHECK_RC(demi_bind(NO_SUCH_QD, SA(&a), sizeof a - 1), EBADF);

    a = BIND_FREE_PORT(s);
    CHECK_RC(demi_bind(NO_SUCH_QD, SA(&a), sizeof a), EBADF);
    CHECK_RC(demi_bind(s, SA(&a), sizeof a), EINVAL);       /* bound twice, same address */
    struct sockaddr_in other = loopback((uint16_t)(ntohs(a.sin_port) + 1));
    CHECK_RC(demi_bind(s, SA(&other), sizeof other), EINVAL); /* bound twice, new address */
    CHECK_RC(demi_bind(t, SA(&a), sizeof a), EADDRINUSE);   /* another socket, same address */
    /* A UDP socket may use the same port number as a TCP one. */
    CHECK_RC(demi_bind(u, SA(&a), sizeof a), 0);

    CHECK_RC(demi_listen(s, 8), 0);
    CHECK_RC(demi_listen(s, 16), 0); /* listening again only changes the backlog */
    CHECK_RC(demi_accept(NULL, s), EINVAL);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(t), 0);
    CHECK_RC(demi_close(u), 0);
}

/* Opens a stream socket and finds a bound, non-listening port: connecting to
 * it is refused by the kernel with a RST. Keeping the socket bound means no
 * one else can take the port while the test runs. */
static struct sockaddr_in refusing_port(int *holder)
{
    CHECK_RC(demi_socket(holder, AF_INET, SOCK_STREAM, 0), 0);
    return BIND_FREE_PORT(*holder);
}

static void connect_errors(void)
{
    int s, l, holder, u;
    demi_qtoken_t qt = 77, qt2 = 77;
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;
    a6.sin6_port = htons(9);
    struct sockaddr_in good = loopback(9);

    CHECK_RC(demi_socket(&s, AF_INET, SOCK_STREAM, 0), 0);

    /* EBADF for an unknown descriptor, whatever the address looks like. */
    CHECK_RC(demi_connect(&qt, NO_SUCH_QD, SA(&good), sizeof good), EBADF);
    CHECK_RC(demi_connect(&qt, NO_SUCH_QD, NULL, sizeof good), EBADF);
    CHECK_RC(demi_connect(&qt, NO_SUCH_QD, SA(&good), 3), EBADF);
    CHECK_RC(demi_connect(&qt, NO_SUCH_QD, SA(&a6), sizeof a6), EBADF);
    CHECK_RC(demi_connect(&qt, 0, SA(&good), sizeof good), EBADF);
    CHECK_RC(demi_connect(&qt, -1, SA(&good), sizeof good), EBADF);

    /* EINVAL for a bad address on a good descriptor. */
    CHECK_RC(demi_connect(&qt, s, NULL, sizeof good), EINVAL);
    CHECK_RC(demi_connect(&qt, s, SA(&good), sizeof good - 1), EINVAL);
    CHECK_RC(demi_connect(&qt, s, SA(&good), 0), EINVAL);
    CHECK_RC(demi_connect(&qt, s, SA(&a6), sizeof a6), EINVAL);
    struct sockaddr_in unix_family = good;
    unix_family.sin_family = AF_UNIX;
    CHECK_RC(demi_connect(&qt, s, SA(&unix_family), sizeof unix_family), EINVAL);
    struct sockaddr_in any = good;
    any.sin_addr.s_addr = htonl(INADDR_ANY);
    CHECK_RC(demi_connect(&qt, s, SA(&any), sizeof any), EINVAL); /* 0.0.0.0 */
    struct sockaddr_in port0 = loopback(0);
    CHECK_RC(demi_connect(&qt, s, SA(&port0), sizeof port0), EINVAL);
    CHECK_RC(demi_connect(NULL, s, SA(&good), sizeof good), EINVAL);
    CHECK_EQ(qt, 77, "demi_connect wrote qt_out although it failed");

    /* A listening socket cannot connect. */
    CHECK_RC(demi_socket(&l, AF_INET, SOCK_STREAM, 0), 0);
    struct sockaddr_in la = BIND_FREE_PORT(l);
    CHECK_RC(demi_listen(l, 64), 0);
    CHECK_RC(demi_connect(&qt, l, SA(&la), sizeof la), EINVAL);

    /* A refused connect: the call succeeds, the operation fails. */
    struct sockaddr_in refused = refusing_port(&holder);
    CHECK_RC(demi_connect(&qt, s, SA(&refused), sizeof refused), 0);
    WAIT_FAILED(qt, ECONNREFUSED);
    /* ...and leaves the socket unconnected. */
    CHECK_RC(demi_push(&qt2, s, NULL), EINVAL); /* NULL sga is checked first */
    CHECK_RC(demi_pop(&qt2, s), ENOTCONN);
    /* A failed socket does not connect again (use a new one): the kernel
     * reports the second attempt as aborted. */
    CHECK_RC(demi_connect(&qt, s, SA(&la), sizeof la), 0);
    WAIT_FAILED(qt, ECONNABORTED);
    CHECK_RC(demi_close(s), 0);

    /* EALREADY while a connect is in progress, EISCONN once it is done.
     *
     * Deterministic setup 1: a second demi_connect issued right after the
     * first, with no wait in between. Linux answers a non-blocking TCP connect
     * with EINPROGRESS even on loopback, and the engine marks the socket
     * connected only when a wait polls the device, so nothing can complete
     * the first connect before the second call. */
    CHECK_RC(demi_socket(&s, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_connect(&qt, s, SA(&la), sizeof la), 0);
    CHECK_RC(demi_connect(&qt2, s, SA(&la), sizeof la), EALREADY);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    CHECK_RC(demi_connect(&qt2, s, SA(&la), sizeof la), EISCONN);
    CHECK_RC(demi_connect(&qt2, s, SA(&refused), sizeof refused), EISCONN);
    /* A connected socket cannot be bound or listen. */
    CHECK_RC(demi_bind(s, SA(&refused), sizeof refused), EINVAL);
    CHECK_RC(demi_listen(s, 4), EINVAL);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);

    /* Deterministic setup 2: a connect that stays in progress however long
     * we wait. A listener with backlog 1 that never accepts holds at most two
     * connections in its accept queue; after that Linux drops incoming SYNs,
     * so the next connect sits in SYN-SENT (first retransmit after 1 s). */
    int full;
    CHECK_RC(demi_socket(&full, AF_INET, SOCK_STREAM, 0), 0);
    struct sockaddr_in fa = BIND_FREE_PORT(full);
    CHECK_RC(demi_listen(full, 1), 0);
    int clients[16];
    int nclients = 0, stuck = -1;
    demi_qtoken_t stuck_qt = 0;
    while (nclients < 16 && stuck < 0) {
        int c;
        demi_qresult_t qr;
        struct timespec t = ms_timeout(300);
        CHECK_RC(demi_socket(&c, AF_INET, SOCK_STREAM, 0), 0);
        clients[nclients++] = c;
        CHECK_RC(demi_connect(&qt, c, SA(&fa), sizeof fa), 0);
        int rc = demi_wait(&qr, qt, &t);
        if (rc == ETIMEDOUT) {
            stuck = c;
            stuck_qt = qt;
        } else {
            CHECK_RC(rc, 0);
            CHECK_EQ(qr.qr_opcode, DEMI_OPC_CONNECT, "connect to a listener with room completes");
        }
    }
    CHECK(stuck >= 0, "a connect to a full listener stays in progress");
    CHECK_RC(demi_connect(&qt2, stuck, SA(&fa), sizeof fa), EALREADY);
    CHECK_RC(demi_connect(&qt2, stuck, SA(&refused), sizeof refused), EALREADY);
    /* Closing the socket cancels its pending connect. */
    CHECK_RC(demi_close(stuck), 0);
    WAIT_FAILED(stuck_qt, ECANCELED);
    for (int i = 0; i < nclients; i++)
        if (clients[i] != stuck)
            CHECK_RC(demi_close(clients[i]), 0);
    CHECK_RC(demi_close(full), 0);

    /* Datagram sockets: connect sets the default peer and may be repeated,
     * but still refuses a bad address. */
    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);
    CHECK_RC(demi_connect(&qt, u, SA(&port0), sizeof port0), EINVAL);
    CHECK_RC(demi_connect(&qt, u, SA(&a6), sizeof a6), EINVAL);
    CHECK_RC(demi_connect(&qt, u, SA(&refused), sizeof refused), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    CHECK_RC(demi_connect(&qt, u, SA(&good), sizeof good), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    CHECK_RC(demi_close(u), 0);
    CHECK_RC(demi_close(holder), 0);
}

static void push_pop_errors(void)
{
    int u, s, l;
    demi_qtoken_t qt = 77;
    struct sockaddr_in dest = loopback(9);
    struct sockaddr_in6 a6;
    memset(&a6, 0, sizeof a6);
    a6.sin6_family = AF_INET6;
    a6.sin6_addr = in6addr_loopback;

    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);
    demi_sgarray_t good = PATTERN_SGA(32, 1);

    /* demi_pushto: EBADF first, then the address, then the sga. */
    CHECK_RC(demi_pushto(&qt, NO_SUCH_QD, &good, SA(&dest), sizeof dest), EBADF);
    CHECK_RC(demi_pushto(&qt, NO_SUCH_QD, NULL, NULL, 0), EBADF);
    CHECK_RC(demi_pushto(&qt, u, &good, NULL, sizeof dest), EINVAL);
    CHECK_RC(demi_pushto(&qt, u, &good, SA(&dest), sizeof dest - 1), EINVAL);
    CHECK_RC(demi_pushto(&qt, u, &good, SA(&dest), 0), EINVAL);
    CHECK_RC(demi_pushto(&qt, u, &good, SA(&a6), sizeof a6), EINVAL);
    CHECK_RC(demi_pushto(&qt, u, NULL, SA(&dest), sizeof dest), EINVAL);
    CHECK_RC(demi_pushto(NULL, u, &good, SA(&dest), sizeof dest), EINVAL);

    demi_sgarray_t bad = good;
    bad.sga_numsegs = 0;
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    bad = good;
    bad.sga_numsegs = 2; /* more than DEMI_SGARRAY_MAXSIZE */
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    bad = good;
    bad.sga_segs[0].sgaseg_buf = NULL;
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    bad = good;
    bad.sga_segs[0].sgaseg_len = 0;
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    bad = good;
    bad.sga_segs[0].sgaseg_len = 33; /* runs past the end of the library's buffer */
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    bad = good;
    bad.sga_segs[0].sgaseg_buf = (char *)good.sga_segs[0].sgaseg_buf - 1; /* starts before it */
    CHECK_RC(demi_pushto(&qt, u, &bad, SA(&dest), sizeof dest), EINVAL);
    /* The same checks apply to the null sga of demi_sgaalloc(0). */
    demi_sgarray_t null_sga = demi_sgaalloc(0);
    CHECK_RC(demi_pushto(&qt, u, &null_sga, SA(&dest), sizeof dest), EINVAL);
    CHECK_EQ(qt, 77, "demi_pushto wrote qt_out although it failed");

    /* Problems only the device sees complete the operation with an error... */
    struct sockaddr_in port0 = loopback(0);
    /* ...but a zero port is refused at once, as demi_connect refuses it. */
    CHECK_RC(demi_pushto(&qt, u, &good, SA(&port0), sizeof port0), EINVAL);
    CHECK_EQ(qt, 77, "demi_pushto wrote qt_out although it failed");
    demi_sgarray_t too_big = PATTERN_SGA(70000, 2); /* UDP carries at most 65507 bytes */
    CHECK_RC(demi_pushto(&qt, u, &too_big, SA(&dest), sizeof dest), 0);
    WAIT_FAILED(qt, EMSGSIZE);
    CHECK_RC(demi_sgafree(&too_big), 0);
    qt = 77;

    /* demi_push: a datagram socket without a default peer has nowhere to send. */
    CHECK_RC(demi_push(&qt, NO_SUCH_QD, &good), EBADF);
    CHECK_RC(demi_push(&qt, u, &good), EDESTADDRREQ);
    CHECK_RC(demi_push(&qt, u, NULL), EINVAL);
    bad = good;
    bad.sga_segs[0].sgaseg_len = 0;
    CHECK_RC(demi_push(&qt, u, &bad), EINVAL);
    CHECK_RC(demi_pop(&qt, NO_SUCH_QD), EBADF);
    CHECK_RC(demi_pop(NULL, u), EINVAL);

    /* Stream sockets must be connected to push or pop. */
    CHECK_RC(demi_socket(&s, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_push(&qt, s, &good), ENOTCONN);
    CHECK_RC(demi_pushto(&qt, s, &good, SA(&dest), sizeof dest), ENOTCONN);
    CHECK_RC(demi_pop(&qt, s), ENOTCONN);
    CHECK_RC(demi_socket(&l, AF_INET, SOCK_STREAM, 0), 0);
    BIND_FREE_PORT(l);
    CHECK_RC(demi_push(&qt, l, &good), ENOTCONN); /* bound is not connected */
    CHECK_RC(demi_listen(l, 8), 0);
    CHECK_RC(demi_push(&qt, l, &good), EINVAL);
    CHECK_RC(demi_pop(&qt, l), EINVAL);
    CHECK_EQ(qt, 77, "a failed push or pop wrote qt_out");

    /* None of the failures consumed the sga: it is still ours to free. */
    CHECK_RC(demi_sgafree(&good), 0);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
    CHECK_RC(demi_close(u), 0);

    /* Descriptors of closed sockets are gone. */
    CHECK_RC(demi_pop(&qt, u), EBADF);
    CHECK_RC(demi_close(u), EBADF);
    CHECK_RC(demi_close(NO_SUCH_QD), EBADF);
    CHECK_RC(demi_close(0), EBADF);
    CHECK_RC(demi_close(-1), EBADF);
}

static void sga_errors(void)
{
    /* demi_sgaalloc refuses 0 bytes and more than 4 GiB with a null sga. */
    CHECK(sga_is_null(demi_sgaalloc(0)), "demi_sgaalloc(0) returns a null sga");
    CHECK(sga_is_null(demi_sgaalloc((size_t)1 << 33)), "demi_sgaalloc(8 GiB) returns a null sga");

    CHECK_RC(demi_sgafree(NULL), EINVAL);
    demi_sgarray_t null_sga = demi_sgaalloc(0);
    CHECK_RC(demi_sgafree(&null_sga), EINVAL);

    /* An sga the library never handed out, pointing at our own memory: refused,
     * and neither the struct nor the memory is touched. */
    unsigned char canary[64];
    for (size_t i = 0; i < sizeof canary; i++)
        canary[i] = (unsigned char)(0x5A ^ i);
    demi_sgarray_t forged;
    memset(&forged, 0, sizeof forged);
    forged.sga_buf = canary;
    forged.sga_numsegs = 1;
    forged.sga_segs[0].sgaseg_buf = canary;
    forged.sga_segs[0].sgaseg_len = sizeof canary;
    demi_sgarray_t copy = forged;
    CHECK_RC(demi_sgafree(&forged), EINVAL);
    CHECK(memcmp(&copy, &forged, sizeof forged) == 0, "demi_sgafree left the forged struct unchanged");
    for (size_t i = 0; i < sizeof canary; i++)
        CHECK_EQ(canary[i], 0x5A ^ i, "demi_sgafree left the forged sga's memory unchanged");

    /* Random bytes (a fixed seed, so a failure can be replayed). */
    srand(12345);
    for (int round = 0; round < 100; round++) {
        demi_sgarray_t junk;
        unsigned char *p = (unsigned char *)&junk;
        for (size_t i = 0; i < sizeof junk; i++)
            p[i] = (unsigned char)rand();
        copy = junk;
        CHECK_RC(demi_sgafree(&junk), EINVAL);
        CHECK(memcmp(&copy, &junk, sizeof junk) == 0, "demi_sgafree left a random struct unchanged");
    }

    /* Double free, and a stale copy of a freed sga whose slot was reused. */
    demi_sgarray_t a = PATTERN_SGA(100, 3);
    demi_sgarray_t stale = a;
    CHECK_RC(demi_sgafree(&a), 0);
    CHECK_RC(demi_sgafree(&a), EINVAL);
    demi_sgarray_t b = PATTERN_SGA(100, 4);
    CHECK_RC(demi_sgafree(&stale), EINVAL);
    /* b is untouched by the refused free of the stale handle. */
    for (size_t i = 0; i < 100; i++)
        CHECK_EQ(((uint8_t *)b.sga_segs[0].sgaseg_buf)[i], pattern_byte(i, 4), "live sga memory intact");
    CHECK_RC(demi_sgafree(&b), 0);

    /* Only sga_buf names the buffer: changed segment fields do not matter. */
    demi_sgarray_t c = PATTERN_SGA(10, 5);
    c.sga_segs[0].sgaseg_buf = (uint8_t *)c.sga_segs[0].sgaseg_buf + 3;
    c.sga_segs[0].sgaseg_len = 2;
    CHECK_RC(demi_sgafree(&c), 0);
}

static void wait_errors(void)
{
    int l, c, s;
    demi_qresult_t qr;
    demi_qtoken_t qt, pop_qt;
    int off = -3, n = -3;

    TCP_PAIR(&l, &c, &s);

    /* Forged tokens. 0 is never a token. */
    const demi_qtoken_t forged[] = {0, 1, 12345, 0xffffffffull, (demi_qtoken_t)1 << 40, UINT64_MAX};
    for (size_t i = 0; i < sizeof forged / sizeof forged[0]; i++) {
        poison(&qr, sizeof qr);
        CHECK_RC(demi_wait(&qr, forged[i], &zero_timeout), EINVAL);
        CHECK_RC(demi_wait(&qr, forged[i], NULL), EINVAL); /* refused, never a hang */
        CHECK(is_poisoned(&qr, sizeof qr), "a failed wait leaves qr_out untouched");
    }

    /* A consumed token: the result is handed out exactly once. */
    demi_sgarray_t msg = PATTERN_SGA(10, 9);
    CHECK_RC(demi_push(&qt, c, &msg), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_wait(&qr, qt, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait(&qr, qt, NULL), EINVAL);
    demi_qtoken_t one[1] = {qt};
    CHECK_RC(demi_wait_any(&qr, &off, one, 1, NULL), EINVAL);

    /* Drain those 10 bytes so the next pop really is pending. */
    size_t got = 0;
    while (got < 10) {
        CHECK_RC(demi_pop(&qt, s), 0);
        qr = WAIT_OPC(qt, DEMI_OPC_POP);
        got += qr.qr_value.sga.sga_segs[0].sgaseg_len;
        CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
    }
    CHECK_EQ(got, 10, "popped exactly what was pushed");

    /* A zero timeout polls once: ETIMEDOUT, the pop stays pending, and a
     * later wait gets its result. So does a short timeout, after at least
     * that long. */
    CHECK_RC(demi_pop(&pop_qt, s), 0);
    poison(&qr, sizeof qr);
    CHECK_RC(demi_wait(&qr, pop_qt, &zero_timeout), ETIMEDOUT);
    CHECK(is_poisoned(&qr, sizeof qr), "a timed-out wait leaves qr_out untouched");
    struct timespec t50 = ms_timeout(50);
    double t0 = now_ms();
    CHECK_RC(demi_wait(&qr, pop_qt, &t50), ETIMEDOUT);
    double waited = now_ms() - t0;
    CHECK(waited >= 49.0 && waited < 5000.0, "a 50 ms wait lasts about 50 ms");
    demi_qtoken_t pair[2] = {pop_qt, pop_qt};
    CHECK_RC(demi_wait_any(&qr, &off, pair, 2, &zero_timeout), ETIMEDOUT);
    CHECK_EQ(off, -3, "a timed-out demi_wait_any leaves ready_offset untouched");
    /* A dead token among live ones is refused; the live one stays pending. */
    demi_qtoken_t mixed[2] = {pop_qt, 12345};
    CHECK_RC(demi_wait_any(&qr, &off, mixed, 2, &zero_timeout), EINVAL);
    struct timespec past = {time(NULL) - 10, 0};
    CHECK_RC(demi_timedwait(&qr, pop_qt, &past), ETIMEDOUT);

    CHECK_RC(demi_push(&qt, c, &msg), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    qr = WAIT_OPC(pop_qt, DEMI_OPC_POP);
    CHECK_EQ(qr.qr_qd, s, "the pop result names its descriptor");
    CHECK(qr.qr_value.sga.sga_segs[0].sgaseg_len > 0, "the pop got data");
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
    CHECK_RC(demi_sgafree(&msg), 0);

    /* Bad arguments. */
    CHECK_RC(demi_wait(NULL, pop_qt, &zero_timeout), EINVAL);
    CHECK_RC(demi_timedwait(NULL, pop_qt, &past), EINVAL);
    CHECK_RC(demi_wait_any(NULL, &off, pair, 2, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_any(&qr, NULL, pair, 2, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_any(&qr, &off, NULL, 2, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_any(&qr, &off, pair, 0, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_any(&qr, &off, pair, -1, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_next_n(NULL, 1, &n, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_next_n(&qr, 1, NULL, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_next_n(&qr, 0, &n, &zero_timeout), EINVAL);
    CHECK_RC(demi_wait_next_n(&qr, -1, &n, &zero_timeout), EINVAL);
    CHECK_EQ(n, -3, "a failed demi_wait_next_n leaves num_out untouched");

    /* Timespecs out of range, for every waiting call. */
    CHECK_RC(demi_pop(&pop_qt, s), 0);
    const struct timespec bad_ts[] = {{0, 1000000000L}, {0, -1}, {-1, 0}, {1, 2000000000L}};
    for (size_t i = 0; i < sizeof bad_ts / sizeof bad_ts[0]; i++) {
        demi_qtoken_t p1[1] = {pop_qt};
        CHECK_RC(demi_wait(&qr, pop_qt, &bad_ts[i]), EINVAL);
        CHECK_RC(demi_timedwait(&qr, pop_qt, &bad_ts[i]), EINVAL);
        CHECK_RC(demi_wait_any(&qr, &off, p1, 1, &bad_ts[i]), EINVAL);
        CHECK_RC(demi_wait_next_n(&qr, 1, &n, &bad_ts[i]), EINVAL);
    }
    /* Nothing finished: demi_wait_next_n times out. */
    CHECK_RC(demi_wait_next_n(&qr, 1, &n, &zero_timeout), ETIMEDOUT);

    /* Closing a descriptor cancels its pending operations; their tokens
     * still deliver that result once. */
    CHECK_RC(demi_close(s), 0);
    WAIT_FAILED(pop_qt, ECANCELED);
    CHECK_RC(demi_wait(&qr, pop_qt, &zero_timeout), EINVAL);
    CHECK_RC(demi_accept(&qt, l), 0);
    CHECK_RC(demi_close(l), 0);
    WAIT_FAILED(qt, ECANCELED);
    CHECK_RC(demi_close(c), 0);
}

static void sockopt_errors(void)
{
    int s, u;
    int one = 1, val = 0;
    socklen_t len = sizeof val;
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;

    CHECK_RC(demi_socket(&s, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);

    CHECK_RC(demi_setsockopt(s, SOL_SOCKET, SO_REUSEADDR, NULL, sizeof one), EINVAL);
    CHECK_RC(demi_getsockopt(s, SOL_SOCKET, SO_REUSEADDR, NULL, &len), EINVAL);
    CHECK_RC(demi_getsockopt(s, SOL_SOCKET, SO_REUSEADDR, &val, NULL), EINVAL);
    CHECK_RC(demi_setsockopt(NO_SUCH_QD, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), EBADF);
    CHECK_RC(demi_getsockopt(NO_SUCH_QD, SOL_SOCKET, SO_REUSEADDR, &val, &len), EBADF);
    /* Only SOL_SOCKET, IPPROTO_TCP and IPPROTO_IP reach the kernel. */
    CHECK_RC(demi_setsockopt(s, IPPROTO_IPV6, 1, &one, sizeof one), ENOPROTOOPT);
    CHECK_RC(demi_getsockopt(s, IPPROTO_UDP, 1, &val, &len), ENOPROTOOPT);
    /* Unknown option names: the kernel's answer. */
    CHECK_RC(demi_setsockopt(s, SOL_SOCKET, 99999, &one, sizeof one), ENOPROTOOPT);
    /* Option values are limited to 256 bytes. */
    char big[257];
    memset(big, 0, sizeof big);
    CHECK_RC(demi_setsockopt(s, SOL_SOCKET, SO_REUSEADDR, big, sizeof big), EINVAL);
    /* A value too short for an int option: the kernel says EINVAL. */
    CHECK_RC(demi_setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, 1), EINVAL);

    /* demi_getpeername needs a connected socket. */
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)&peer, &plen), ENOTCONN);
    CHECK_RC(demi_getpeername(u, (struct sockaddr *)&peer, &plen), ENOTCONN);
    CHECK_RC(demi_getpeername(s, NULL, &plen), EINVAL);
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)&peer, NULL), EINVAL);
    CHECK_RC(demi_getpeername(NO_SUCH_QD, (struct sockaddr *)&peer, &plen), EBADF);
    CHECK_EQ(plen, sizeof peer, "a failed demi_getpeername leaves addrlen untouched");
    BIND_FREE_PORT(s);
    CHECK_RC(demi_listen(s, 4), 0);
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)&peer, &plen), ENOTCONN);

    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(u), 0);
}

/* The peer closes: pending and later pops complete with a zero-length sga. */
static void peer_close_is_eof(void)
{
    int l, c, s;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    TCP_PAIR(&l, &c, &s);

    CHECK_RC(demi_pop(&qt, s), 0);
    CHECK_RC(demi_close(c), 0);
    for (int i = 0; i < 2; i++) {
        qr = WAIT_OPC(qt, DEMI_OPC_POP);
        CHECK_EQ(qr.qr_ret, 0, "an end-of-file pop succeeds");
        CHECK_EQ(qr.qr_value.sga.sga_numsegs, 1, "an end-of-file pop has one segment");
        CHECK_EQ(qr.qr_value.sga.sga_segs[0].sgaseg_len, 0, "end of file is a zero-length sga");
        CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
        CHECK_RC(demi_pop(&qt, s), 0); /* and stays end of file */
    }
    WAIT_OPC(qt, DEMI_OPC_POP);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
}

/* The peer resets (SO_LINGER with a zero timeout, then close): the pending
 * pop fails with ECONNRESET. */
static void peer_reset_is_econnreset(void)
{
    int l, c, s;
    demi_qtoken_t qt;
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    TCP_PAIR(&l, &c, &s);

    CHECK_RC(demi_setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
    CHECK_RC(demi_pop(&qt, s), 0);
    CHECK_RC(demi_close(c), 0);
    WAIT_FAILED(qt, ECONNRESET);
    /* The connection is gone: later pushes and pops fail with the same
     * ECONNRESET (not EPIPE), and there is no peer any more. */
    demi_sgarray_t sga = PATTERN_SGA(10, 1);
    CHECK_RC(demi_push(&qt, s, &sga), 0);
    WAIT_FAILED(qt, ECONNRESET);
    CHECK_RC(demi_pop(&qt, s), 0);
    WAIT_FAILED(qt, ECONNRESET);
    CHECK_RC(demi_sgafree(&sga), 0);
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)&peer, &plen), ENOTCONN);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
}

/* A connected datagram socket learns that its peer's port is closed (an ICMP
 * port unreachable): its pending pop fails with ECONNREFUSED. */
static void udp_refused(void)
{
    int u, gone;
    demi_qtoken_t qt, pop_qt;
    CHECK_RC(demi_socket(&gone, AF_INET, SOCK_DGRAM, 0), 0);
    struct sockaddr_in ga = BIND_FREE_PORT(gone);
    CHECK_RC(demi_close(gone), 0);
    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);
    CHECK_RC(demi_connect(&qt, u, SA(&ga), sizeof ga), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    CHECK_RC(demi_pop(&pop_qt, u), 0);
    demi_sgarray_t sga = PATTERN_SGA(10, 1);
    CHECK_RC(demi_push(&qt, u, &sga), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    WAIT_FAILED(pop_qt, ECONNREFUSED);
    CHECK_RC(demi_sgafree(&sga), 0);
    CHECK_RC(demi_close(u), 0);
}

int main(int argc, char **argv)
{
    before_init();
    init_once(argc, argv);
    socket_errors();
    bind_listen_accept_errors();
    connect_errors();
    push_pop_errors();
    sga_errors();
    wait_errors();
    sockopt_errors();
    peer_close_is_eof();
    peer_reset_is_econnreset();
    udp_refused();
    printf("errors: every error case returned exactly the errno wanted\n");
    return 0;
}
