/* peers.c: the plain kernel sockets that talk to demi's over loopback (a
 * TCP listener, a port that refuses, two UDP sockets, clients of demi
 * listeners, the server ends of connections to the kernel listener), and
 * the loopback ports the run uses. kernel_step() does one thing with them. */
#include "fuzz.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

struct ksock ks[MAX_KSOCKS];
int k_listener = -1, k_refuser = -1, k_udp[2] = {-1, -1};
uint16_t closed_udp_port, closed_tcp_port;

/* ---- ports ---- */
/* Above Linux's ephemeral range (32768-60999) and the range tests/c/common.h
 * uses (10000-29999), so other tests on this host rarely collide. The range
 * is cut in windows; each run locks one (a file lock), so fuzzers running
 * at the same time never send to each other's ports. */
#define PORT_RANGE_LO 61000
#define WINDOW 500
#define WINDOWS 9
static uint16_t port_lo, port_hi, port_next;

static unsigned char port_busy[65536];
#define BUSY_LOCAL 1  /* a socket is bound there */
#define BUSY_REMOTE 2 /* a socket talks to it (maybe a client still sending SYNs) */
#define BUSY_HANDED 4 /* handed out since the last scan */

/* Ports the kernel has a socket on (any process, any state, TIME-WAIT
 * included), or that a socket talks to (a client still sending SYNs to a
 * listener we closed would reach the next one on that port): skipped, so a
 * seed run twice in a row binds the same way. */
static void load_busy_ports(void)
{
    static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp", "/proc/net/udp6"};
    memset(port_busy, 0, sizeof port_busy);
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "r");
        char line[512];
        while (f && fgets(line, sizeof line, f)) {
            /* "  sl: local_address:port rem_address:port st ..." */
            char local[80], remote[80];
            unsigned lp, rp;
            char *colon = strchr(line, ':');
            if (!colon || sscanf(colon + 1, "%79s %79s", local, remote) != 2)
                continue;
            char *l = strchr(local, ':'), *r = strchr(remote, ':');
            if (l && sscanf(l + 1, "%x", &lp) == 1)
                port_busy[lp & 0xffff] |= BUSY_LOCAL;
            if (r && sscanf(r + 1, "%x", &rp) == 1)
                port_busy[rp & 0xffff] |= BUSY_REMOTE;
        }
        if (f)
            fclose(f);
    }
}

/* A privileged port nothing listens on (connects to it are refused, and
 * datagrams draw an ICMP error): this run never binds below 61000, and
 * unprivileged processes cannot bind there. */
static uint16_t unused_low_port(void)
{
    for (uint16_t p = 7; p < 1024; p++)
        if (!port_busy[p])
            return p;
    fprintf(stderr, "fuzz_abi: every port below 1024 is in use\n");
    exit(2);
}

/* Locks a window of ports for this run: the seed's own if it is free, so a
 * seed keeps its ports from run to run. `base` (--port-base) picks one. */
void port_setup(uint64_t seed, long base)
{
    int first = base >= 0 ? (int)(base % WINDOWS) : (int)((seed * 2654435761ull) % WINDOWS);
    for (int i = 0; i < WINDOWS; i++) {
        int w = (first + i) % WINDOWS;
        char path[64];
        snprintf(path, sizeof path, "/tmp/fuzz_abi-ports-%d.lock", w);
        int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0666);
        if (fd >= 0 && flock(fd, LOCK_EX | LOCK_NB) == 0) { /* held until exit */
            port_lo = (uint16_t)(PORT_RANGE_LO + w * WINDOW);
            port_hi = (uint16_t)(port_lo + WINDOW);
            port_next = port_lo;
            load_busy_ports();
            closed_udp_port = closed_tcp_port = unused_low_port();
            return;
        }
        if (fd >= 0)
            close(fd);
    }
    fprintf(stderr, "fuzz_abi: all %d port windows are taken by other runs\n", WINDOWS);
    exit(2);
}

struct sockaddr_in lo(uint16_t port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static int port_in_use(uint16_t p)
{
    for (int i = 0; i < MAX_SOCKS; i++)
        if (socks[i].used && socks[i].port == p)
            return 1;
    for (int k = 0; k < MAX_KSOCKS; k++)
        if (ks[k].used && ks[k].port == p)
            return 1;
    return p == closed_tcp_port || p == closed_udp_port;
}

/* The next port of the window that nothing uses, as far as the last scan
 * of the kernel's tables and the model know. Once every port was handed
 * out or is busy (connections of this run linger in TIME-WAIT), the kernel
 * is asked again, but at most once per 256 ports handed out: a scan walks
 * all of its connections and is slow. Meanwhile ports go round in turn, and
 * a bind may fail with EADDRINUSE, which the rules allow. */
uint16_t fresh_port(void)
{
    static unsigned since_scan;
    for (int round = 0; round < 2; round++) {
        for (int tries = 0; tries < WINDOW; tries++) {
            uint16_t p = port_next++;
            if (port_next >= port_hi)
                port_next = port_lo;
            if (!port_in_use(p) && !port_busy[p]) {
                port_busy[p] = BUSY_HANDED; /* not again until the next scan */
                since_scan++;
                return p;
            }
        }
        if (since_scan < 256)
            break;
        load_busy_ports();
        since_scan = 0;
    }
    /* Never one some socket may still connect to: a listener bound there
     * would get a connection the model knows nothing of. */
    since_scan++;
    for (int tries = 0; tries < WINDOW; tries++) {
        uint16_t p = port_next++;
        if (port_next >= port_hi)
            port_next = port_lo;
        if (!(port_busy[p] & BUSY_REMOTE) && !port_in_use(p))
            return p;
    }
    return port_lo;
}

/* ---- kernel peers ---- */
static int ks_new(int fd, int kind, uint16_t port)
{
    for (int k = 0; k < MAX_KSOCKS; k++) {
        if (ks[k].used)
            continue;
        ks[k] = (struct ksock){.used = 1, .fd = fd, .kind = kind, .port = port, .conn = -1, .end = -1};
        return k;
    }
    close(fd);
    return -1;
}

int kernel_open(void)
{
    int n = 0;
    for (int k = 0; k < MAX_KSOCKS; k++)
        n += ks[k].used;
    return n;
}

static uint16_t local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    if (getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return 0;
    return ntohs(a.sin_port);
}

/* A kernel socket bound to a fresh loopback port (tries a few). */
static int k_bound(int type, uint16_t *port)
{
    for (int tries = 0; tries < 50; tries++) {
        int fd = socket(AF_INET, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), one = 1;
        if (fd < 0) {
            perror("fuzz_abi: socket");
            exit(2);
        }
        /* The kernel listener's port is in TIME-WAIT after a run: a rerun of
         * the seed must get the same ports. */
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = lo(fresh_port());
        if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0) {
            *port = ntohs(a.sin_port);
            return fd;
        }
        close(fd);
    }
    fprintf(stderr, "fuzz_abi: no free loopback port for a kernel peer\n");
    exit(2);
}

void kernel_setup(void)
{
    uint16_t p;
    int fd = k_bound(SOCK_STREAM, &p);
    if (listen(fd, 64) != 0) {
        perror("fuzz_abi: listen");
        exit(2);
    }
    k_listener = ks_new(fd, KS_LISTENER, p);
    fd = k_bound(SOCK_STREAM, &p); /* bound, never listening: connects are refused */
    k_refuser = ks_new(fd, KS_REFUSER, p);
    for (int i = 0; i < 2; i++) {
        fd = k_bound(SOCK_DGRAM, &p);
        k_udp[i] = ks_new(fd, KS_UDP, p);
    }
}

void kernel_teardown(void)
{
    for (int k = 0; k < MAX_KSOCKS; k++)
        if (ks[k].used) {
            close(ks[k].fd);
            ks[k].used = 0;
        }
}

/* Connections to the kernel listener whose client closed before the kernel
 * queue gave them to us: once the queue is empty they never will come (the
 * handshake happens inside the client's connect call on loopback). */
static void k_forget_closed_clients(void)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (conns[i].used && conns[i].lkernel && conns[i].e[1].kind == END_NONE && conns[i].e[0].closed) {
            conns[i].e[1].closed = 1; /* it never comes: gone, once no result needs it */
            conn_gc(i);
        }
}

static void k_accept_all(void)
{
    for (int n = 0; n < 8 && kernel_open() < MAX_KSOCKS; n++) {
        struct sockaddr_in a;
        socklen_t len = sizeof a;
        int fd = accept4(ks[k_listener].fd, (struct sockaddr *)&a, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN)
                k_forget_closed_clients();
            return;
        }
        uint16_t peer = ntohs(a.sin_port);
        logf_more(" k_accept(from port %u)", peer);
        int c = -1, unknown = -1, n_unknown = 0;
        for (int i = 0; i < MAX_CONNS; i++) {
            struct conn *cn = &conns[i];
            if (!cn->used || !cn->lkernel || cn->e[1].kind != END_NONE)
                continue;
            if (cn->e[0].port == peer)
                c = i;
            else if (cn->e[0].port == 0) {
                unknown = i;
                n_unknown++;
            }
        }
        if (c < 0 && n_unknown == 1)
            c = unknown;
        if (c < 0) {
            close(fd);
            violation("the kernel listener accepted a connection from port %u that no demi_connect made", peer);
            continue;
        }
        struct conn *cn = &conns[c];
        logf_more(" -> conn#%d.%u", c, cn->gen);
        if (cn->e[0].port == 0) {
            cn->e[0].port = peer;
            struct msock *s = cn->e[0].kind == END_DEMI ? &socks[cn->e[0].sock] : NULL;
            if (s && s->used && s->gen == cn->e[0].gen)
                s->port = peer;
        }
        int k = ks_new(fd, KS_STREAM, ks[k_listener].port); /* room was checked above */
        ks[k].conn = c;
        ks[k].end = 1;
        cn->e[1] = (struct cend){.kind = END_KERNEL, .sock = -1, .kfd = k, .port = ks[k_listener].port};
    }
}

static int pick_ks(int kind)
{
    int cand[MAX_KSOCKS], n = 0;
    for (int k = 0; k < MAX_KSOCKS; k++)
        if (ks[k].used && ks[k].kind == kind)
            cand[n++] = k;
    return n ? cand[rnd_below((uint64_t)n)] : -1;
}

static void k_connect(void)
{
    int cand[MAX_SOCKS], n = 0;
    for (int i = 0; i < MAX_SOCKS; i++)
        if (socks[i].used && socks[i].phases == PH_LISTEN && socks[i].port)
            cand[n++] = i;
    if (n == 0 || kernel_open() >= MAX_KSOCKS - 2)
        return;
    int l = cand[rnd_below((uint64_t)n)];
    int c = conn_new();
    if (c < 0)
        return;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = sock_addr(&socks[l]);
    int rc = connect(fd, (struct sockaddr *)&a, sizeof a);
    logf_more(" k_connect(to qd %d port %u) = %s", socks[l].qd, socks[l].port, rc ? ename(errno) : "0");
    if (rc != 0 && errno != EINPROGRESS) {
        violation("a kernel connect to listening qd %d failed at once: %s", socks[l].qd, ename(errno));
        close(fd);
        conn_free(c, "kernel connect failed");
        return;
    }
    int k = ks_new(fd, KS_STREAM, local_port(fd));
    logf_more(" fd %d port %u conn#%d", fd, k >= 0 ? ks[k].port : 0, c);
    if (k < 0) {
        conn_free(c, "no room for a kernel socket");
        return;
    }
    ks[k].conn = c;
    ks[k].end = 0;
    conns[c].e[0] = (struct cend){.kind = END_KERNEL, .sock = -1, .kfd = k, .port = ks[k].port};
    conns[c].lsock = l;
    conns[c].lgen = (int)socks[l].gen;
    socks[l].conns_made++;
}

static uint8_t kbuf[65536];

static void k_send(void)
{
    int k = pick_ks(KS_STREAM);
    if (k < 0)
        return;
    struct conn *cn = &conns[ks[k].conn];
    int end = ks[k].end;
    if (cn->e[end].shut_wr || log_pending(&cn->d[end]) > (4u << 20))
        return;
    size_t n = chance(90) ? 1 + rnd_below(2000) : 1 + rnd_below(sizeof kbuf);
    fill_msg(kbuf, n);
    ssize_t w = send(ks[k].fd, kbuf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
    logf_more(" k_send(fd %d conn#%d, %zu) = %zd%s", ks[k].fd, ks[k].conn, n, w, w < 0 ? ename(errno) : "");
    if (w > 0) {
        log_append(&cn->d[end], kbuf, (size_t)w);
        cn->d[end].confirmed = cn->d[end].total;
        if (cn->e[1 - end].closed) /* bytes to a closed socket draw a reset */
            cn->maybe_rst = 1;
    } else if (w < 0 && errno != EAGAIN && errno != ENOTCONN) {
        if (!((errno == EPIPE || errno == ECONNRESET || errno == ECONNREFUSED) &&
              (cn->maybe_rst || cn->e[1 - end].closed)))
            violation("kernel peer: send failed with %s while the demi end is open", ename(errno));
    }
}

static void k_recv(void)
{
    int k = pick_ks(KS_STREAM);
    if (k < 0)
        return;
    struct conn *cn = &conns[ks[k].conn];
    int end = ks[k].end;
    ssize_t r = recv(ks[k].fd, kbuf, sizeof kbuf, MSG_DONTWAIT);
    int e = errno;
    logf_more(" k_recv(fd %d conn#%d) = %zd%s", ks[k].fd, ks[k].conn, r, r < 0 ? ename(e) : "");
    if (r > 0) {
        log_receive(&cn->d[1 - end], kbuf, (size_t)r, "kernel peer recv");
    } else if (r == 0) {
        if (!cn->e[1 - end].closed && !cn->maybe_rst)
            violation("kernel peer: end of file while the demi end is open");
        else if (!cn->maybe_rst && cn->d[1 - end].rcvd < cn->d[1 - end].confirmed)
            violation("kernel peer: end of file after %llu bytes, but pushes of %llu bytes had finished",
                      (unsigned long long)cn->d[1 - end].rcvd, (unsigned long long)cn->d[1 - end].confirmed);
    } else if (e != EAGAIN && e != ENOTCONN) {
        /* ECONNREFUSED: the demi listener went away before the handshake. */
        if (!((e == ECONNRESET || e == ECONNREFUSED) && cn->maybe_rst))
            violation("kernel peer: recv failed with %s", ename(e));
    }
}

static void k_end(void)
{
    int k = pick_ks(KS_STREAM);
    if (k < 0)
        return;
    int c = ks[k].conn, end = ks[k].end;
    struct sockaddr_in peer;
    socklen_t plen = sizeof peer;
    int connected = getpeername(ks[k].fd, (struct sockaddr *)&peer, &plen) == 0;
    switch (rnd_below(3)) {
    case 0:
        /* Linux turns shutdown() of a socket still connecting (the demi
         * listener's queue is full) into a disconnect; close it instead. */
        if (!connected) {
            logf_more(" k_close(fd %d conn#%d, not connected yet)", ks[k].fd, c);
            close(ks[k].fd);
            ks[k].used = 0;
            end_closed(c, end, 0);
            return;
        }
        logf_more(" k_shutdown(fd %d conn#%d)", ks[k].fd, c);
        shutdown(ks[k].fd, SHUT_WR);
        conns[c].e[end].shut_wr = 1;
        return;
    case 1: {
        struct linger lg = {1, 0};
        setsockopt(ks[k].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        logf_more(" k_close_rst(fd %d conn#%d)", ks[k].fd, c);
        close(ks[k].fd);
        ks[k].used = 0;
        end_closed(c, end, 1);
        return;
    }
    default:
        logf_more(" k_close(fd %d conn#%d)", ks[k].fd, c);
        close(ks[k].fd);
        ks[k].used = 0;
        end_closed(c, end, 0);
    }
}

static void k_udp_send(void)
{
    int cand[MAX_SOCKS], n = 0;
    for (int i = 0; i < MAX_SOCKS; i++)
        if (socks[i].used && !socks[i].stream && socks[i].port)
            cand[n++] = i;
    if (n == 0)
        return;
    struct msock *s = &socks[cand[rnd_below((uint64_t)n)]];
    int k = k_udp[rnd_below(2)];
    /* Now and then an empty datagram: a pop returns it as a datagram, not
     * as end of file (man demi_pop). */
    size_t len = chance(95) ? 1 + rnd_below(1400) : chance(40) ? 0 : 1 + rnd_below(65507);
    fill_msg(kbuf, len);
    struct sockaddr_in a = sock_addr(s);
    ssize_t w = sendto(ks[k].fd, kbuf, len, MSG_DONTWAIT, (struct sockaddr *)&a, sizeof a);
    logf_more(" k_sendto(port %u -> qd %d port %u, %zu id %u) = %zd", ks[k].port, s->qd, s->port, len,
              msg_id_of(kbuf, len), w);
    if (w == (ssize_t)len && dg_receiver(a.sin_addr.s_addr, s->port, -1, ks[k].port))
        dg_log(END_KERNEL, k, 0, s->port, kbuf, len, -1);
}

static void k_udp_recv(void)
{
    int k = k_udp[rnd_below(2)];
    struct sockaddr_in from;
    socklen_t fl = sizeof from;
    ssize_t r = recvfrom(ks[k].fd, kbuf, sizeof kbuf, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
    logf_more(" k_recvfrom(port %u) = %zd", ks[k].port, r);
    if (r >= 0)
        dg_receive(ks[k].port, kbuf, (size_t)r, &from, "kernel udp peer");
}

void kernel_step(void)
{
    fig.ksteps++;
    logf_call("kernel:");
    switch (rnd_below(10)) {
    case 0:
    case 1: k_accept_all(); break;
    case 2: k_connect(); break;
    case 3:
    case 4: k_send(); break;
    case 5:
    case 6: k_recv(); break;
    case 7: k_end(); break;
    case 8: k_udp_send(); break;
    default: k_udp_recv(); break;
    }
}
