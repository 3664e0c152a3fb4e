/* pingpong.c: TCP and UDP exchanges in one process (both ends' descriptors
 * live here), checking every byte, datagram senders, socket options, peer
 * names, a 1 MiB message, and the three ways of waiting. */
#include "common.h"

#include <netinet/tcp.h>

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static int same_addr(const struct sockaddr_in *a, const struct sockaddr_in *b)
{
    return a->sin_family == b->sin_family && a->sin_port == b->sin_port && a->sin_addr.s_addr == b->sin_addr.s_addr;
}

/* Takes the addresses by value: sga_addr sits in a packed struct, so taking
 * its address would trip -Waddress-of-packed-member (copy it out instead). */
static void check_addr_at(const char *file, int line, const char *what, struct sockaddr_in got_v,
                          struct sockaddr_in want_v)
{
    const struct sockaddr_in *got = &got_v, *want = &want_v;
    if (!same_addr(got, want)) {
        char g[INET_ADDRSTRLEN], w[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &got->sin_addr, g, sizeof g);
        inet_ntop(AF_INET, &want->sin_addr, w, sizeof w);
        fail_at(file, line, "%s (got family %d %s:%u, want family %d %s:%u)", what, got->sin_family, g,
                ntohs(got->sin_port), want->sin_family, w, ntohs(want->sin_port));
    }
}
#define CHECK_ADDR(got, want, what) check_addr_at(__FILE__, __LINE__, what, got, want)

/* Pops from a stream until `len` bytes arrived (a pop returns whatever has
 * arrived, so one message may take several pops) and checks them against
 * the pattern. Returns the number of pops it took. */
static int pop_exact_at(const char *file, int line, int qd, size_t len, unsigned seed)
{
    size_t got = 0;
    int pops = 0;
    while (got < len) {
        demi_qtoken_t qt;
        if (demi_pop(&qt, qd) != 0)
            fail_at(file, line, "demi_pop failed");
        demi_qresult_t qr = wait_opc_at(file, line, qt, DEMI_OPC_POP);
        demi_sgarray_t *sga = &qr.qr_value.sga;
        uint32_t n = sga->sga_segs[0].sgaseg_len;
        if (n == 0)
            fail_at(file, line, "unexpected end of file after %zu of %zu bytes", got, len);
        if (got + n > len)
            fail_at(file, line, "popped %zu bytes, more than the %zu sent", got + n, len);
        const uint8_t *p = (const uint8_t *)sga->sga_segs[0].sgaseg_buf;
        for (uint32_t i = 0; i < n; i++)
            if (p[i] != pattern_byte(got + i, seed))
                fail_at(file, line, "byte %zu (got %u, want %u)", got + i, p[i], pattern_byte(got + i, seed));
        got += n;
        pops++;
        if (demi_sgafree(sga) != 0)
            fail_at(file, line, "demi_sgafree of a popped sga failed");
    }
    return pops;
}
#define POP_EXACT(qd, len, seed) pop_exact_at(__FILE__, __LINE__, qd, len, seed)

static void push_pattern(int qd, size_t len, unsigned seed)
{
    demi_qtoken_t qt;
    demi_sgarray_t sga = PATTERN_SGA(len, seed);
    CHECK_RC(demi_push(&qt, qd, &sga), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&sga), 0);
}

static void int_option(int qd, int level, int name, const char *what, int set, int want_min)
{
    int v = -1;
    socklen_t len = sizeof v;
    CHECK_RC(demi_setsockopt(qd, level, name, &set, sizeof set), 0);
    CHECK_RC(demi_getsockopt(qd, level, name, &v, &len), 0);
    CHECK_EQ(len, sizeof v, what);
    if (v < want_min || (want_min <= 1 && (v != 0) != (set != 0)))
        FAILF("%s: set %d, read back %d", what, set, v);
}

static void tcp_options(int qd)
{
    int_option(qd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR on", 1, 1);
    int_option(qd, SOL_SOCKET, SO_REUSEADDR, "SO_REUSEADDR off", 0, 0);
    int_option(qd, IPPROTO_TCP, TCP_NODELAY, "TCP_NODELAY on", 1, 1);
    /* Linux doubles buffer sizes to leave room for its bookkeeping. */
    int_option(qd, SOL_SOCKET, SO_RCVBUF, "SO_RCVBUF", 65536, 65536);
    int_option(qd, SOL_SOCKET, SO_SNDBUF, "SO_SNDBUF", 65536, 65536);

    struct linger set = {.l_onoff = 1, .l_linger = 5}, got;
    socklen_t len = sizeof got;
    memset(&got, 0, sizeof got);
    CHECK_RC(demi_setsockopt(qd, SOL_SOCKET, SO_LINGER, &set, sizeof set), 0);
    CHECK_RC(demi_getsockopt(qd, SOL_SOCKET, SO_LINGER, &got, &len), 0);
    CHECK_EQ(len, sizeof got, "SO_LINGER length");
    CHECK_EQ(got.l_onoff, 1, "SO_LINGER l_onoff");
    CHECK_EQ(got.l_linger, 5, "SO_LINGER l_linger");
    set.l_onoff = 0;
    CHECK_RC(demi_setsockopt(qd, SOL_SOCKET, SO_LINGER, &set, sizeof set), 0);
    CHECK_RC(demi_getsockopt(qd, SOL_SOCKET, SO_LINGER, &got, &len), 0);
    CHECK_EQ(got.l_onoff, 0, "SO_LINGER off");
}

static void tcp(void)
{
    int l, c, s;
    demi_qtoken_t qt_a, qt_c, qt;
    demi_qresult_t qr;

    CHECK_RC(demi_socket(&l, AF_INET, SOCK_STREAM, 0), 0);
    CHECK_RC(demi_socket(&c, AF_INET, SOCK_STREAM, 0), 0);
    int one = 1;
    CHECK_RC(demi_setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one), 0);
    struct sockaddr_in la = BIND_FREE_PORT(l);
    CHECK_RC(demi_listen(l, 8), 0);
    CHECK_RC(demi_accept(&qt_a, l), 0);
    /* The client binds too, so the server can check who connected. */
    struct sockaddr_in ca = BIND_FREE_PORT(c);
    CHECK_RC(demi_connect(&qt_c, c, SA(&la), sizeof la), 0);
    qr = WAIT_OPC(qt_c, DEMI_OPC_CONNECT);
    CHECK_EQ(qr.qr_qd, c, "connect result names the client");
    CHECK_EQ(qr.qr_ret, 0, "connect qr_ret");
    /* A NULL timeout waits as long as it takes (here: not long). */
    CHECK_RC(demi_wait(&qr, qt_a, NULL), 0);
    CHECK_EQ(qr.qr_opcode, DEMI_OPC_ACCEPT, "accept opcode");
    CHECK_EQ(qr.qr_qd, l, "accept result names the listener");
    s = qr.qr_value.ares.qd;
    CHECK(s > 0 && s != l && s != c, "accepted descriptor is new");
    struct sockaddr_in accepted_from = qr.qr_value.ares.addr;
    CHECK_ADDR(accepted_from, ca, "ares.addr is the client's address");

    /* Peer names, both ways; a short buffer is truncated and the full
     * length reported, as getpeername(2) does. */
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    CHECK_RC(demi_getpeername(c, (struct sockaddr *)&peer, &plen), 0);
    CHECK_EQ(plen, sizeof peer, "getpeername length");
    CHECK_ADDR(peer, la, "the client's peer is the listener's address");
    plen = sizeof peer;
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)&peer, &plen), 0);
    CHECK_ADDR(peer, ca, "the accepted socket's peer is the client");
    unsigned char small[4] = {0xEE, 0xEE, 0xEE, 0xEE};
    plen = sizeof small;
    CHECK_RC(demi_getpeername(s, (struct sockaddr *)small, &plen), 0);
    CHECK_EQ(plen, sizeof(struct sockaddr_in), "truncated getpeername reports the full size");
    CHECK_EQ(small[0] | small[1] << 8, AF_INET, "truncated getpeername copies the start");

    tcp_options(c);
    tcp_options(s);

    /* Ping-pong of growing sizes. The server echoes the sga it popped
     * (a popped buffer can be pushed as is), the client checks each byte. */
    for (unsigned round = 0; round < 40; round++) {
        size_t len = 1 + round * 997;
        push_pattern(c, len, round);
        size_t got = 0;
        while (got < len) {
            CHECK_RC(demi_pop(&qt, s), 0);
            qr = WAIT_OPC(qt, DEMI_OPC_POP);
            demi_sgarray_t in = qr.qr_value.sga;
            CHECK(in.sga_segs[0].sgaseg_len > 0, "no end of file mid-message");
            got += in.sga_segs[0].sgaseg_len;
            CHECK_RC(demi_push(&qt, s, &in), 0);
            WAIT_OPC(qt, DEMI_OPC_PUSH);
            CHECK_RC(demi_sgafree(&in), 0);
        }
        CHECK_EQ(got, len, "server popped exactly one message's bytes");
        POP_EXACT(c, len, round);
    }

    /* 1 MiB in one sga. The push cannot finish until the receiver drains the
     * socket (the kernel buffers less than that), so pop while it is in
     * flight: waiting on the pops must keep the push moving. */
    const size_t mib = 1u << 20;
    demi_sgarray_t big = PATTERN_SGA(mib, 77);
    CHECK_RC(demi_push(&qt, c, &big), 0);
    int pops = POP_EXACT(s, mib, 77);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&big), 0);
    printf("tcp: 1 MiB arrived intact in %d pops\n", pops);

    /* Free-protection: freeing an sga while its push is in flight is fine;
     * the library keeps the memory until the push completes. */
    demi_sgarray_t early = PATTERN_SGA(300000, 5);
    CHECK_RC(demi_push(&qt, c, &early), 0);
    CHECK_RC(demi_sgafree(&early), 0);
    POP_EXACT(s, 300000, 5);
    WAIT_OPC(qt, DEMI_OPC_PUSH);

    /* Part of an sga: a segment that starts and ends inside the buffer. */
    demi_sgarray_t whole = PATTERN_SGA(100, 0);
    demi_sgarray_t part = whole;
    part.sga_segs[0].sgaseg_buf = (uint8_t *)whole.sga_segs[0].sgaseg_buf + 10;
    part.sga_segs[0].sgaseg_len = 20;
    CHECK_RC(demi_push(&qt, c, &part), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&whole), 0);
    /* pattern_byte(i + 10, 0) == pattern_byte(i, 10 * 31) */
    POP_EXACT(s, 20, 310);

    /* Memory the library did not allocate is accepted too (copied). */
    static uint8_t mine[5000];
    for (size_t i = 0; i < sizeof mine; i++)
        mine[i] = pattern_byte(i, 42);
    demi_sgarray_t user;
    memset(&user, 0, sizeof user);
    user.sga_numsegs = 1;
    user.sga_segs[0].sgaseg_buf = mine;
    user.sga_segs[0].sgaseg_len = sizeof mine;
    CHECK_RC(demi_push(&qt, s, &user), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    POP_EXACT(c, sizeof mine, 42);

    CHECK_RC(demi_close(c), 0);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
    printf("tcp: ok\n");
}

/* Pops one datagram on qd and checks its size, bytes and sender. */
static void pop_datagram_at(const char *file, int line, int qd, size_t len, unsigned seed,
                            const struct sockaddr_in *from)
{
    demi_qtoken_t qt;
    if (demi_pop(&qt, qd) != 0)
        fail_at(file, line, "demi_pop failed");
    demi_qresult_t qr = wait_opc_at(file, line, qt, DEMI_OPC_POP);
    demi_sgarray_t *sga = &qr.qr_value.sga;
    if (sga->sga_numsegs != 1 || sga->sga_segs[0].sgaseg_len != len)
        fail_at(file, line, "datagram size (got %u, want %zu)", sga->sga_segs[0].sgaseg_len, len);
    const uint8_t *p = (const uint8_t *)sga->sga_segs[0].sgaseg_buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_byte(i, seed))
            fail_at(file, line, "datagram byte %zu (got %u, want %u)", i, p[i], pattern_byte(i, seed));
    check_addr_at(file, line, "sga_addr is the sender", sga->sga_addr, *from);
    if (demi_sgafree(sga) != 0)
        fail_at(file, line, "demi_sgafree of a popped datagram failed");
}
#define POP_DATAGRAM(qd, len, seed, from) pop_datagram_at(__FILE__, __LINE__, qd, len, seed, from)

static void pushto_pattern(int qd, size_t len, unsigned seed, const struct sockaddr_in *to)
{
    demi_qtoken_t qt;
    demi_sgarray_t sga = PATTERN_SGA(len, seed);
    CHECK_RC(demi_pushto(&qt, qd, &sga, SA(to), sizeof *to), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&sga), 0);
}

static void udp(void)
{
    int a, b;
    demi_qtoken_t qt;
    CHECK_RC(demi_socket(&a, AF_INET, SOCK_DGRAM, 0), 0);
    CHECK_RC(demi_socket(&b, AF_INET, SOCK_DGRAM, 0), 0);
    struct sockaddr_in aa = BIND_FREE_PORT(a);
    struct sockaddr_in ba = BIND_FREE_PORT(b);

    /* pushto and back: each side sees the other as the sender. */
    for (unsigned round = 0; round < 20; round++) {
        size_t len = 1 + round * 701;
        pushto_pattern(a, len, round, &ba);
        POP_DATAGRAM(b, len, round, &aa);
        pushto_pattern(b, len, round + 1, &aa);
        POP_DATAGRAM(a, len, round + 1, &ba);
    }
    /* Boundaries are kept: three datagrams, three pops of their sizes. */
    pushto_pattern(a, 10, 1, &ba);
    pushto_pattern(a, 60000, 2, &ba);
    pushto_pattern(a, 1, 3, &ba);
    POP_DATAGRAM(b, 10, 1, &aa);
    POP_DATAGRAM(b, 60000, 2, &aa);
    POP_DATAGRAM(b, 1, 3, &aa);

    /* Echo the popped sga straight back to its sga_addr. */
    pushto_pattern(a, 123, 8, &ba);
    CHECK_RC(demi_pop(&qt, b), 0);
    demi_qresult_t qr = WAIT_OPC(qt, DEMI_OPC_POP);
    demi_sgarray_t in = qr.qr_value.sga;
    struct sockaddr_in sender = in.sga_addr; /* a copy: sga_addr is packed */
    CHECK_RC(demi_pushto(&qt, b, &in, SA(&sender), sizeof sender), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&in), 0);
    POP_DATAGRAM(a, 123, 8, &ba);

    /* connect sets a default peer: then plain demi_push works, and
     * demi_getpeername names that peer. */
    CHECK_RC(demi_connect(&qt, a, SA(&ba), sizeof ba), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    CHECK_RC(demi_getpeername(a, (struct sockaddr *)&peer, &plen), 0);
    CHECK_ADDR(peer, ba, "a connected UDP socket's peer");
    push_pattern(a, 77, 9);
    POP_DATAGRAM(b, 77, 9, &aa);
    /* pushto still overrides the default peer. (Replies from that third
     * socket would not reach a: the kernel drops datagrams to a connected
     * UDP socket from anyone but its peer.) */
    int w;
    CHECK_RC(demi_socket(&w, AF_INET, SOCK_DGRAM, 0), 0);
    struct sockaddr_in wa = BIND_FREE_PORT(w);
    pushto_pattern(a, 12, 10, &wa);
    POP_DATAGRAM(w, 12, 10, &aa);
    CHECK_RC(demi_close(w), 0);

    CHECK_RC(demi_close(a), 0);
    CHECK_RC(demi_close(b), 0);
    printf("udp: ok\n");
}

static void waiting(void)
{
    int l, c, s, u, v;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    int off = -1;
    TCP_PAIR(&l, &c, &s);
    CHECK_RC(demi_socket(&u, AF_INET, SOCK_DGRAM, 0), 0);
    CHECK_RC(demi_socket(&v, AF_INET, SOCK_DGRAM, 0), 0);
    struct sockaddr_in ua = BIND_FREE_PORT(u);
    struct sockaddr_in va = BIND_FREE_PORT(v);

    /* demi_wait_any: the offset says which token finished; the other stays
     * pending and is picked up by a later wait. */
    demi_qtoken_t qts[2];
    CHECK_RC(demi_pop(&qts[0], u), 0);
    CHECK_RC(demi_pop(&qts[1], s), 0);
    struct timespec zero = {0, 0}, ten = ms_timeout(10000);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 2, &zero), ETIMEDOUT);
    push_pattern(c, 50, 1);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 2, &ten), 0);
    CHECK_EQ(off, 1, "demi_wait_any offset of the TCP pop");
    CHECK_EQ(qr.qr_qt, qts[1], "demi_wait_any result token");
    CHECK_EQ(qr.qr_opcode, DEMI_OPC_POP, "demi_wait_any opcode");
    CHECK_EQ(qr.qr_qd, s, "demi_wait_any result descriptor");
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
    pushto_pattern(v, 60, 2, &ua);
    CHECK_RC(demi_wait_any(&qr, &off, qts, 1, NULL), 0);
    CHECK_EQ(off, 0, "demi_wait_any offset of the UDP pop");
    CHECK_EQ(qr.qr_value.sga.sga_segs[0].sgaseg_len, 60, "UDP pop size");
    CHECK_ADDR(qr.qr_value.sga.sga_addr, va, "UDP pop sender via demi_wait_any");
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);

    /* demi_wait_next_n: hands out every finished operation exactly once,
     * whatever its token, at most num_qrs per call. */
    enum { N = 6 };
    demi_qtoken_t issued[2 * N];
    int seen[2 * N];
    memset(seen, 0, sizeof seen);
    demi_sgarray_t sgas[N];
    for (int i = 0; i < N; i++) {
        sgas[i] = PATTERN_SGA(100 + (size_t)i, (unsigned)i);
        CHECK_RC(demi_pop(&issued[N + i], v), 0);
        CHECK_RC(demi_pushto(&issued[i], u, &sgas[i], SA(&va), sizeof va), 0);
    }
    int total = 0, calls = 0;
    while (total < 2 * N) {
        demi_qresult_t qrs[4];
        int n = -1;
        CHECK_RC(demi_wait_next_n(qrs, 4, &n, &ten), 0);
        CHECK(n >= 1 && n <= 4, "demi_wait_next_n returns between 1 and num_qrs results");
        calls++;
        for (int k = 0; k < n; k++) {
            int idx = -1;
            for (int j = 0; j < 2 * N; j++)
                if (issued[j] == qrs[k].qr_qt)
                    idx = j;
            CHECK(idx >= 0, "demi_wait_next_n returned a token we issued");
            CHECK(!seen[idx], "demi_wait_next_n returned a token only once");
            seen[idx] = 1;
            if (idx < N) {
                CHECK_EQ(qrs[k].qr_opcode, DEMI_OPC_PUSH, "next_n push opcode");
                CHECK_EQ(qrs[k].qr_qd, u, "next_n push descriptor");
            } else {
                CHECK_EQ(qrs[k].qr_opcode, DEMI_OPC_POP, "next_n pop opcode");
                CHECK_EQ(qrs[k].qr_qd, v, "next_n pop descriptor");
                CHECK_ADDR(qrs[k].qr_value.sga.sga_addr, ua, "next_n pop sender");
                CHECK_RC(demi_sgafree(&qrs[k].qr_value.sga), 0);
            }
            /* The token was consumed by demi_wait_next_n. */
            CHECK_RC(demi_wait(&qr, qrs[k].qr_qt, &zero), EINVAL);
            total++;
        }
    }
    CHECK(calls >= (2 * N + 3) / 4, "demi_wait_next_n never returned more than num_qrs");
    for (int i = 0; i < N; i++)
        CHECK_RC(demi_sgafree(&sgas[i]), 0);
    CHECK_RC(demi_wait_next_n(&qr, 1, &off, &zero), ETIMEDOUT);

    /* demi_timedwait takes an absolute CLOCK_REALTIME deadline. */
    CHECK_RC(demi_pop(&qt, s), 0);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_nsec += 100 * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    double t0 = now_ms();
    CHECK_RC(demi_timedwait(&qr, qt, &deadline), ETIMEDOUT);
    double waited = now_ms() - t0;
    CHECK(waited >= 90.0 && waited < 5000.0, "demi_timedwait waited until about the deadline");
    push_pattern(c, 30, 3);
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    CHECK_RC(demi_timedwait(&qr, qt, &deadline), 0);
    CHECK_EQ(qr.qr_opcode, DEMI_OPC_POP, "demi_timedwait result");
    CHECK_EQ(qr.qr_value.sga.sga_segs[0].sgaseg_len, 30, "demi_timedwait popped bytes");
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);

    CHECK_RC(demi_close(c), 0);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
    CHECK_RC(demi_close(u), 0);
    CHECK_RC(demi_close(v), 0);
    printf("waiting: ok\n");
}

int main(void)
{
    CHECK_RC(demi_init(NULL), 0);
    tcp();
    udp();
    waiting();
    printf("pingpong: all exchanges verified\n");
    return 0;
}
