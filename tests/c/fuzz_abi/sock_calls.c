/* sock_calls.c: generators for demi_socket, bind, listen, accept, connect,
 * close, setsockopt, getsockopt, getpeername and a repeated demi_init.
 * Each picks arguments (good or bad), works out from the model which
 * answers the man pages allow, makes the call and checks the answer. */
#include "fuzz.h"

#include <limits.h>
#include <netinet/tcp.h>
#include <sys/un.h>

/* Where several documented errors apply and the man page fixes no order,
 * any of them is a correct answer. */
static eset uncertain_qd_set(int call)
{
    return doc_errs[call];
}

/* ---- demi_socket ---- */
void do_socket(void)
{
    int qd = -7, *out = chance(3) ? NULL : &qd;
    int domain = AF_INET, type, protocol = 0;
    if (chance(8)) {
        static const int bad_domains[] = {AF_INET6, AF_UNIX, AF_PACKET, 0, -1, 12345};
        domain = bad_domains[rnd_below(6)];
    }
    int stream = chance(50);
    type = stream ? SOCK_STREAM : SOCK_DGRAM;
    if (chance(15))
        type |= chance(50) ? SOCK_NONBLOCK : SOCK_CLOEXEC;
    if (chance(7)) {
        static const int bad_types[] = {SOCK_RAW, SOCK_SEQPACKET, SOCK_RDM, 0, -1, 777};
        type = bad_types[rnd_below(6)];
    }
    if (chance(10))
        protocol = stream ? IPPROTO_TCP : IPPROTO_UDP;
    else if (chance(6))
        protocol = chance(50) ? (stream ? IPPROTO_UDP : IPPROTO_TCP) : 4242;
    /* No room left in the model: only calls that must fail. */
    if (open_socks() >= MAX_SOCKS - 6 && out && domain == AF_INET)
        domain = AF_INET6;

    int base = type & ~(SOCK_NONBLOCK | SOCK_CLOEXEC);
    int good_type = base == SOCK_STREAM || base == SOCK_DGRAM;
    int want_proto = base == SOCK_STREAM ? IPPROTO_TCP : IPPROTO_UDP;
    eset allowed = ES_NONE;
    if (!out)
        allowed = es(EINVAL, -1);
    else {
        if (domain != AF_INET)
            allowed = es_add(allowed, EAFNOSUPPORT);
        if (!good_type || (protocol != 0 && protocol != want_proto))
            allowed = es_add(allowed, EPROTONOSUPPORT);
        if (es_empty(allowed))
            allowed = es(0, -1);
    }
    logf_call("demi_socket(%s, %d, %#x, %d)", out ? "&qd" : "NULL", domain, type, protocol);
    fig.calls++;
    int rc = demi_socket(out, domain, type, protocol);
    check_rc(C_SOCKET, rc, allowed, "socket");
    if (rc != 0) {
        if (qd != -7)
            violation("demi_socket failed but wrote *sockqd_out (%d)", qd);
        return;
    }
    logf_more(" qd=%d", qd);
    if (qd <= 0)
        violation("demi_socket handed out descriptor %d (descriptors are positive)", qd);
    if (sock_by_qd(qd) >= 0)
        violation("demi_socket handed out qd %d, which is still open", qd);
    if (sock_new(qd, base == SOCK_STREAM) < 0 && demi_close(qd) != 0)
        violation("demi_close of a fresh qd %d failed", qd);
}

/* ---- demi_bind ---- */
struct bind_ctx {
    uint32_t ip;
    uint16_t port;
    int not_local, conflict;
};

static eset bind_phase(const struct msock *s, unsigned ph, const void *vctx)
{
    const struct bind_ctx *c = vctx;
    if (s->bound || ph != PH_IDLE)
        return es(EINVAL, -1);
    eset k = s->kbound ? es(EINVAL, -1) : ES_NONE;
    if (c->not_local)
        return es_add(k, EADDRNOTAVAIL);
    if (c->conflict)
        return es_or(k, s->reuse || c->conflict == 2 ? es(0, EADDRINUSE, -1) : es(EADDRINUSE, -1));
    /* Free as far as this process knows; another process or a TIME-WAIT
     * connection may still hold the port. */
    return es_or(k, es(0, EADDRINUSE, -1));
}

static int want_unbound(const struct msock *s)
{
    return !s->bound && s->phases == PH_IDLE;
}

/* 1: another of our sockets holds ip:port; 2: perhaps (the port a stream
 * connect took is given back when its connection ends); 0: no. */
static int port_conflict(int self, int stream, uint32_t ip, uint16_t port)
{
    if (port == 0)
        return 0;
    int r = 0;
    for (int i = 0; i < MAX_SOCKS; i++) {
        const struct msock *o = &socks[i];
        if (i == self || !o->used || o->stream != stream || o->port != port)
            continue;
        if (!o->bound)
            r = stream ? 2 : 1; /* a port the kernel chose, learned */
        else if (o->ip == ip || o->ip == htonl(INADDR_ANY) || ip == htonl(INADDR_ANY))
            return 1;
    }
    return r;
}

void do_bind(void)
{
    int s, bad;
    int qd = pick_qd(want_unbound, 1, &s, &bad);
    struct sockaddr_storage st;
    memset(&st, 0, sizeof st);
    struct sockaddr_in *a = (struct sockaddr_in *)&st;
    *a = lo(fresh_port());
    socklen_t size = sizeof *a;
    int addr_ok = 1;
    const struct sockaddr *ap = (const struct sockaddr *)&st;
    switch (rnd_below(40)) {
    case 0: a->sin_addr.s_addr = htonl(INADDR_ANY); break;
    case 1: a->sin_addr.s_addr = htonl(0x7f000002); break; /* 127.0.0.2: also this host */
    case 2: a->sin_port = 0; break;
    case 3: /* the port of another of our sockets */
        for (int i = 0; i < MAX_SOCKS; i++)
            if (socks[i].used && socks[i].port && chance(50))
                a->sin_port = htons(socks[i].port);
        break;
    case 4: a->sin_addr.s_addr = htonl(0xC0000201); break; /* 192.0.2.1: not ours */
    case 5: ap = NULL, addr_ok = 0; break;
    case 6: {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&st;
        memset(&st, 0, sizeof st);
        a6->sin6_family = AF_INET6;
        a6->sin6_addr = in6addr_loopback;
        size = sizeof *a6;
        addr_ok = 0;
        break;
    }
    case 7: a->sin_family = AF_UNIX, addr_ok = 0; break;
    case 8: size = (socklen_t)rnd_below(sizeof *a), addr_ok = 0; break;
    case 9: size = sizeof st; break;
    case 10: size = 0x7fffffff; break; /* "at least" sizeof(struct sockaddr_in) */
    default: break;
    }
    eset allowed;
    struct bind_ctx ctx = {a->sin_addr.s_addr, ntohs(a->sin_port), 0, 0};
    ctx.not_local = ctx.ip == htonl(0xC0000201);
    if (bad)
        allowed = es(EBADF, -1);
    else if (!addr_ok)
        allowed = es(EINVAL, -1);
    else {
        ctx.conflict = port_conflict(s, socks[s].stream, ctx.ip, ctx.port);
        allowed = over_phases(&socks[s], bind_phase, &ctx);
    }
    char ab[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ab, sizeof ab);
    logf_call("demi_bind(%d, %s%s:%u fam %d, %u)", qd, ap ? "" : "NULL ", ab, ctx.port, a->sin_family, size);
    fig.calls++;
    int rc = demi_bind(qd, ap, size);
    check_rc(C_BIND, rc, allowed, "bind");
    if (s < 0 || bad || !addr_ok)
        return;
    narrow(&socks[s], bind_phase, &ctx, rc);
    if (rc == 0) {
        socks[s].bound = 1;
        socks[s].ip = ctx.ip;
        socks[s].port = ctx.port;
    }
}

/* ---- demi_listen ---- */
static int port_listened(int self, uint16_t port)
{
    for (int i = 0; i < MAX_SOCKS; i++)
        if (i != self && socks[i].used && socks[i].stream && socks[i].port == port && port &&
            (socks[i].phases & PH_LISTEN))
            return 1;
    return 0;
}

static eset listen_phase(const struct msock *s, unsigned ph, const void *ctx)
{
    (void)ctx;
    if (!s->stream)
        return es(EOPNOTSUPP, -1);
    switch (ph) {
    case PH_IDLE:
        if (!s->bound)
            return es(EDESTADDRREQ, -1);
        /* Linux refuses to listen on a socket whose connect failed (EINVAL,
         * which the man page gives for connected sockets); catnap passes
         * that on. */
        if (s->kbound)
            return es(0, EINVAL, -1);
        return port_listened((int)(s - socks), s->port) ? es(0, EADDRINUSE, -1) : es(0, -1);
    case PH_LISTEN: return es(0, -1);
    default: return es(EINVAL, -1);
    }
}

static int want_listenable(const struct msock *s)
{
    return s->stream && s->bound && s->phases == PH_IDLE;
}

void do_listen(void)
{
    int s, bad;
    int qd = pick_qd(want_listenable, 1, &s, &bad);
    static const int odd[] = {0, -1, INT_MIN, INT_MAX, 1000000};
    int backlog = chance(80) ? 1 + (int)rnd_below(64) : odd[rnd_below(5)];
    eset allowed = bad ? es(EBADF, -1) : over_phases(&socks[s], listen_phase, NULL);
    logf_call("demi_listen(%d, %d)", qd, backlog);
    fig.calls++;
    int rc = demi_listen(qd, backlog);
    check_rc(C_LISTEN, rc, allowed, "listen");
    if (s < 0 || bad)
        return;
    narrow(&socks[s], listen_phase, NULL, rc);
    if (rc == 0)
        socks[s].phases = PH_LISTEN;
}

/* ---- demi_accept ---- */
static eset accept_phase(const struct msock *s, unsigned ph, const void *ctx)
{
    (void)ctx;
    if (!s->stream)
        return es(EOPNOTSUPP, -1);
    return ph == PH_LISTEN ? es(0, -1) : es(EINVAL, -1);
}

static int want_listening(const struct msock *s)
{
    return s->phases == PH_LISTEN;
}

void do_accept(void)
{
    int s, bad;
    int qd = pick_qd(want_listening, 1, &s, &bad);
    demi_qtoken_t qt = 77, *out = chance(3) ? NULL : &qt;
    eset allowed;
    if (!out)
        allowed = es(EINVAL, -1);
    else if (bad)
        allowed = es(EBADF, -1);
    else
        allowed = over_phases(&socks[s], accept_phase, NULL);
    /* A few accepts per listener are plenty. */
    if (s >= 0 && out && !bad && socks[s].phases == PH_LISTEN) {
        int n = 0;
        for (int t = 0; t < MAX_TOKS; t++)
            n += toks[t].used && toks[t].kind == OPK_ACCEPT && toks[t].sock == s;
        if (n >= 3 || live_toks() > MAX_TOKS - 32)
            out = NULL, allowed = es(EINVAL, -1);
    }
    logf_call("demi_accept(%s, %d)", out ? "&qt" : "NULL", qd);
    fig.calls++;
    int rc = demi_accept(out, qd);
    check_rc(C_ACCEPT, rc, allowed, "accept");
    if (rc != 0) {
        if (qt != 77)
            violation("demi_accept failed but wrote *qt_out");
        return;
    }
    if (s >= 0 && !bad) {
        narrow(&socks[s], accept_phase, NULL, rc);
        new_token(qt, OPK_ACCEPT, s);
    }
}

/* ---- demi_connect ---- */
struct connect_ctx {
    int zero;
};

static eset connect_phase(const struct msock *s, unsigned ph, const void *vctx)
{
    const struct connect_ctx *c = vctx;
    if (ph == PH_LISTEN)
        return es(EINVAL, -1);
    if (!s->stream)
        return c->zero ? es(EINVAL, -1) : es(0, -1);
    if (ph == PH_CONNECTING)
        return es(EALREADY, -1);
    if (ph == PH_CONNECTED)
        return es(EISCONN, -1);
    return c->zero ? es(EINVAL, -1) : es(0, -1);
}

static int want_connectable(const struct msock *s)
{
    /* Now and then a connecting or connected one: EALREADY, EISCONN. */
    return (s->stream && (s->phases == PH_IDLE || chance(15))) || (!s->stream && chance(60));
}

/* A connection to listener l (a model socket) or the kernel listener (l < 0)
 * from an unbound socket is matched to its accept by elimination: allow one
 * such connection per listener at a time. */
static int unknown_client_pending(int l)
{
    for (int c = 0; c < MAX_CONNS; c++) {
        const struct conn *cn = &conns[c];
        if (cn->used && cn->e[1].kind == END_NONE && cn->e[0].port == 0 &&
            (l < 0 ? cn->lkernel : (!cn->lkernel && cn->lsock == l)))
            return 1;
    }
    return 0;
}

void do_connect(void)
{
    int s, bad;
    int qd = pick_qd(want_connectable, 1, &s, &bad);
    demi_qtoken_t qt = 77, *out = chance(3) ? NULL : &qt;
    struct sockaddr_storage st;
    memset(&st, 0, sizeof st);
    struct sockaddr_in *a = (struct sockaddr_in *)&st;
    socklen_t size = sizeof *a;
    const struct sockaddr *ap = (const struct sockaddr *)&st;
    int addr_ok = 1, target = TGT_REFUSER, lsock = -1, lkernel = 0;
    int stream = s >= 0 ? socks[s].stream : 1;
    unsigned r = (unsigned)rnd_below(100);
    if (stream) {
        int cand[MAX_SOCKS], n = 0;
        for (int i = 0; i < MAX_SOCKS; i++)
            if (socks[i].used && socks[i].phases == PH_LISTEN && socks[i].port)
                cand[n++] = i;
        int client_unknown = s >= 0 && socks[s].port == 0;
        if (r < 55 && n) {
            lsock = cand[rnd_below((uint64_t)n)];
            *a = sock_addr(&socks[lsock]);
            target = TGT_LISTENER;
            if (client_unknown && unknown_client_pending(lsock))
                target = TGT_REFUSER;
        } else if (r < 75) {
            *a = lo(ks[k_listener].port);
            target = TGT_LISTENER, lkernel = 1;
            if (client_unknown && unknown_client_pending(-1))
                target = TGT_REFUSER;
        } else if (r < 85) {
            target = TGT_CLOSED_PORT;
        }
        if (target == TGT_REFUSER)
            *a = lo(ks[k_refuser].port), lsock = -1, lkernel = 0;
        if (target == TGT_CLOSED_PORT)
            *a = lo(closed_tcp_port);
    } else {
        int cand[MAX_SOCKS], n = 0;
        for (int i = 0; i < MAX_SOCKS; i++)
            if (socks[i].used && !socks[i].stream && socks[i].port)
                cand[n++] = i;
        target = TGT_DGRAM;
        if (r < 45 && n)
            *a = sock_addr(&socks[cand[rnd_below((uint64_t)n)]]);
        else if (r < 85)
            *a = lo(ks[k_udp[rnd_below(2)]].port);
        else
            *a = lo(closed_udp_port);
    }
    struct connect_ctx ctx = {0};
    switch (rnd_below(30)) {
    case 0: a->sin_addr.s_addr = 0, ctx.zero = 1; break;
    case 1: a->sin_port = 0, ctx.zero = 1; break;
    case 2: ap = NULL, addr_ok = 0; break;
    case 3: size = (socklen_t)rnd_below(sizeof *a), addr_ok = 0; break;
    case 4: a->sin_family = AF_INET6, addr_ok = 0; break;
    case 5: a->sin_family = AF_UNIX, addr_ok = 0; break;
    case 6: size = sizeof st; break;
    default: break;
    }
    int conn_needed = stream && target == TGT_LISTENER && !ctx.zero && addr_ok && s >= 0 && !bad;
    int c = -1;
    if (conn_needed && (c = conn_new()) < 0)
        out = NULL; /* no room for another connection: make it a refused call */
    eset allowed;
    if (!out)
        allowed = es(EINVAL, -1);
    else if (bad)
        allowed = es(EBADF, -1);
    else if (!addr_ok)
        allowed = es(EINVAL, -1);
    else
        allowed = over_phases(&socks[s], connect_phase, &ctx);
    char ab[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &a->sin_addr, ab, sizeof ab);
    logf_call("demi_connect(%s, %d, %s%s:%u fam %d, %u)", out ? "&qt" : "NULL", qd, ap ? "" : "NULL ", ab,
              ntohs(a->sin_port), a->sin_family, size);
    fig.calls++;
    int rc = demi_connect(out, qd, ap, size);
    check_rc(C_CONNECT, rc, allowed, "connect");
    if (rc != 0 && qt != 77)
        violation("demi_connect failed but wrote *qt_out");
    if (s < 0 || bad || !addr_ok || !out) {
        if (c >= 0)
            conns[c].used = 0;
        return;
    }
    struct msock *m = &socks[s];
    narrow(m, connect_phase, &ctx, rc);
    if (rc != 0) {
        if (c >= 0)
            conns[c].used = 0;
        return;
    }
    int t = new_token(qt, OPK_CONNECT, s);
    if (t < 0)
        return;
    toks[t].target = target;
    m->kbound = 1;
    m->peer = *a;
    if (!stream) {
        m->phases = PH_CONNECTED;
        m->has_peer = 1;
        if (!dg_receiver(a->sin_addr.s_addr, ntohs(a->sin_port), s, 0))
            m->refusable = 1;
        return;
    }
    /* A connect under way that the answer showed had failed counts as
     * failed (unless it was the aborted one: the connect after that is a
     * real one again). */
    if (m->ctok >= 0 && toks[m->ctok].used && toks[m->ctok].must_fail && !toks[m->ctok].abort)
        m->abort_next = 1;
    if (!m->bound) /* a new connect of an unbound socket takes a new port */
        m->port = 0;
    toks[t].abort = m->abort_next;
    m->abort_next = 0;
    /* catnap fails that connect inside the call (the kernel says
     * ECONNABORTED at once); allow for it either way. */
    m->phases = toks[t].abort ? PH_CONNECTING | PH_IDLE : PH_CONNECTING;
    m->ctok = t;
    m->conn_ok = target == TGT_LISTENER && !toks[t].abort;
    m->conn_fail = 1;
    if (c >= 0 && m->conn_ok) {
        conns[c].e[0] = (struct cend){.kind = END_DEMI, .sock = s, .gen = m->gen, .port = m->port};
        conns[c].lsock = lsock;
        conns[c].lgen = lsock >= 0 ? (int)socks[lsock].gen : 0;
        conns[c].lkernel = lkernel;
        m->conn = c;
        m->end = 0;
        toks[t].conn = c;
        toks[t].conn_gen = conns[c].gen;
    } else if (c >= 0) {
        conns[c].used = 0;
    }
}

/* ---- demi_close ---- */
int close_sock(int s)
{
    struct msock *m = &socks[s];
    logf_call("demi_close(%d)", m->qd);
    fig.calls++;
    int rc = demi_close(m->qd);
    check_rc(C_CLOSE, rc, es(0, -1), "close of an open qd");
    if (rc != 0)
        return rc;
    for (int t = 0; t < MAX_TOKS; t++)
        if (toks[t].used && toks[t].sock == s && toks[t].sock_gen == m->gen) {
            toks[t].closed = 1;
            toks[t].rport = m->port; /* perhaps learned since the pop began */
        }
    if (m->conn >= 0 && conns[m->conn].used) {
        end_closed(m->conn, m->end, m->linger0 == 1);
        if (m->linger0 < 0) /* perhaps inherited from its listener */
            conns[m->conn].maybe_rst = 1;
    }
    if (m->phases & PH_LISTEN) /* connections it never handed out are reset */
        for (int c = 0; c < MAX_CONNS; c++)
            if (conns[c].used && !conns[c].lkernel && conns[c].lsock == s && conns[c].e[1].kind == END_NONE)
                conns[c].maybe_rst = 1;
    m->used = 0;
    for (int c = 0; c < MAX_CONNS; c++)
        conn_gc(c);
    return 0;
}

void do_close(void)
{
    int s, bad;
    int qd = pick_qd(NULL, 1, &s, &bad);
    if (!bad) {
        close_sock(s);
        return;
    }
    logf_call("demi_close(%d)", qd);
    fig.calls++;
    check_rc(C_CLOSE, demi_close(qd), es(EBADF, -1), "close of a qd that is not open");
}

/* ---- options ---- */
enum { O_INT, O_LINGER, O_GETONLY, O_UNKNOWN, O_BADLEVEL };
struct opt {
    int level, name, kind;
    const char *nm;
};
static const struct opt opts[] = {
    {SOL_SOCKET, SO_REUSEADDR, O_INT, "SO_REUSEADDR"}, {SOL_SOCKET, SO_KEEPALIVE, O_INT, "SO_KEEPALIVE"},
    {SOL_SOCKET, SO_RCVBUF, O_INT, "SO_RCVBUF"},       {SOL_SOCKET, SO_SNDBUF, O_INT, "SO_SNDBUF"},
    {SOL_SOCKET, SO_LINGER, O_LINGER, "SO_LINGER"},    {IPPROTO_TCP, TCP_NODELAY, O_INT, "TCP_NODELAY"},
    {IPPROTO_IP, IP_TOS, O_INT, "IP_TOS"},             {IPPROTO_IP, IP_TTL, O_INT, "IP_TTL"},
    {SOL_SOCKET, SO_TYPE, O_GETONLY, "SO_TYPE"},       {SOL_SOCKET, SO_ERROR, O_GETONLY, "SO_ERROR"},
    {SOL_SOCKET, 99999, O_UNKNOWN, "99999"},           {IPPROTO_TCP, 9999, O_UNKNOWN, "tcp 9999"},
    {IPPROTO_IPV6, 26, O_BADLEVEL, "IPV6_V6ONLY"},     {IPPROTO_UDP, 1, O_BADLEVEL, "UDP_CORK"},
    {12345, 1, O_BADLEVEL, "level 12345"},             {-1, 1, O_BADLEVEL, "level -1"},
};
#define N_OPTS (sizeof opts / sizeof opts[0])

static const struct opt *pick_opt(int s)
{
    const struct opt *o = &opts[rnd_below(chance(85) ? 8 : N_OPTS)];
    /* Reading SO_ERROR during a connect may hide its outcome (man page). */
    if (o->name == SO_ERROR && o->level == SOL_SOCKET && (s < 0 || (socks[s].phases & PH_CONNECTING)))
        o = &opts[8];
    return o;
}

/* What the kernel (via catnap) answers for a well-aimed option. */
static eset opt_answer(int s, const struct opt *o, size_t len, int getting, int value)
{
    if (o->kind == O_BADLEVEL) /* refused by the library itself */
        return es(ENOPROTOOPT, -1);
    if (o->level == IPPROTO_TCP && !socks[s].stream)
        return getting ? es(ENOPROTOOPT, EOPNOTSUPP, -1) : es(ENOPROTOOPT, -1);
    /* The kernel checks a set's length before it looks at the name. */
    eset unknown = !getting && len < sizeof(int) ? es(ENOPROTOOPT, EINVAL, -1) : es(ENOPROTOOPT, -1);
    if (o->kind == O_UNKNOWN || (o->kind == O_GETONLY && !getting))
        return unknown;
    size_t need = o->kind == O_LINGER ? sizeof(struct linger) : sizeof(int);
    if (getting)
        return len >= need ? es(0, -1) : es(0, EINVAL, -1);
    if (len < need)
        return o->level == IPPROTO_IP ? es(0, EINVAL, -1) : es(EINVAL, -1); /* IP reads a char, or 0 */
    if (o->name == IP_TTL && o->level == IPPROTO_IP && (value < 1 || value > 255))
        return es(EINVAL, -1);
    return es(0, -1);
}

void do_setsockopt(void)
{
    int s, bad;
    int qd = pick_qd(NULL, 1, &s, &bad);
    const struct opt *o = pick_opt(s);
    unsigned char val[300];
    memset(val, 0, sizeof val);
    int v = (int)rnd_below(2);
    if (o->name == SO_RCVBUF || o->name == SO_SNDBUF)
        v = chance(90) ? 4096 + (int)rnd_below(256 * 1024) : -1;
    if (o->name == IP_TTL)
        v = chance(90) ? 1 + (int)rnd_below(255) : (chance(50) ? 0 : 256);
    if (o->name == IP_TOS)
        v = chance(50) ? 0 : 0x10;
    struct linger lg = {0, 0};
    if (o->kind == O_LINGER) {
        /* Never a linger time: closing would then block on unread data. */
        lg.l_onoff = (int)rnd_below(2);
        lg.l_linger = lg.l_onoff ? 0 : (int)rnd_below(10);
        memcpy(val, &lg, sizeof lg);
    } else {
        memcpy(val, &v, sizeof v);
    }
    socklen_t len = o->kind == O_LINGER ? sizeof lg : sizeof(int);
    if (chance(10)) {
        static const socklen_t odd[] = {0, 1, 3, 8, 256, 257, 300, 0x7fffffff};
        len = odd[rnd_below(8)];
    }
    const void *p = chance(3) ? NULL : val;
    eset allowed = ES_NONE;
    if (!p || len > 256)
        allowed = es(EINVAL, -1);
    if (bad)
        allowed = es_add(allowed, EBADF);
    else if (s < 0)
        allowed = uncertain_qd_set(C_SETSOCKOPT);
    else if (es_empty(allowed))
        allowed = opt_answer(s, o, len, 0, v);
    else if (o->kind == O_BADLEVEL) /* the man page orders none of these */
        allowed = es_add(allowed, ENOPROTOOPT);
    logf_call("demi_setsockopt(%d, %s, %s, %u)", qd, o->nm, p ? "&val" : "NULL", len);
    fig.calls++;
    int rc = demi_setsockopt(qd, o->level, o->name, p, len);
    check_rc(C_SETSOCKOPT, rc, allowed, o->nm);
    if (rc != 0 || s < 0)
        return;
    if (o->name == SO_REUSEADDR && o->level == SOL_SOCKET && len >= sizeof(int))
        socks[s].reuse = v != 0, socks[s].reuse_ever = 1;
    if (o->kind == O_LINGER && len >= sizeof lg)
        socks[s].linger0 = lg.l_onoff && lg.l_linger == 0, socks[s].linger_ever = 1;
}

void do_getsockopt(void)
{
    int s, bad;
    int qd = pick_qd(NULL, 0, &s, &bad);
    const struct opt *o = pick_opt(s);
    unsigned char val[300];
    canary_fill(val, sizeof val);
    static const socklen_t rooms[] = {0, 1, 3, 8, 64, 256, 1000, 0xffffffffu};
    socklen_t room = chance(75) ? (o->kind == O_LINGER ? sizeof(struct linger) : sizeof(int)) : rooms[rnd_below(8)];
    socklen_t len = room;
    void *p = chance(3) ? NULL : val;
    socklen_t *lp = chance(3) ? NULL : &len;
    eset allowed = ES_NONE;
    if (!p || !lp)
        allowed = es(EINVAL, -1);
    if (bad)
        allowed = es_add(allowed, EBADF);
    else if (s < 0)
        allowed = uncertain_qd_set(C_GETSOCKOPT);
    else if (es_empty(allowed))
        allowed = opt_answer(s, o, room > 256 ? 256 : room, 1, 0);
    logf_call("demi_getsockopt(%d, %s, %s, %s=%u)", qd, o->nm, p ? "&val" : "NULL", lp ? "&len" : "NULL", room);
    fig.calls++;
    int rc = demi_getsockopt(qd, o->level, o->name, p, lp);
    if (rc == EOPNOTSUPP && es_has(allowed, EOPNOTSUPP)) {
        logf_more(" = EOPNOTSUPP");
        see(C_GETSOCKOPT, rc);
        finding(F_GETSOCKOPT_EOPNOTSUPP);
    } else {
        check_rc(C_GETSOCKOPT, rc, allowed, o->nm);
    }
    if (rc != 0) {
        if (!canary_intact(val, sizeof val) || len != room)
            violation("demi_getsockopt failed but wrote *optval or *optlen");
        return;
    }
    logf_more(" len=%u", len);
    size_t cap = room > 256 ? 256 : room;
    if (len > cap)
        violation("demi_getsockopt wrote *optlen = %u, more than the %zu bytes of room", len, cap);
    else if (!canary_intact(val + len, sizeof val - len))
        violation("demi_getsockopt wrote past the %u bytes it reported", len);
    if (s < 0 || len < sizeof(int))
        return;
    int got;
    memcpy(&got, val, sizeof got);
    if (o->name == SO_TYPE && o->level == SOL_SOCKET && got != (socks[s].stream ? SOCK_STREAM : SOCK_DGRAM))
        violation("SO_TYPE of qd %d is %d: not the socket this qd was created as", qd, got);
    if (o->name == SO_REUSEADDR && o->level == SOL_SOCKET && socks[s].reuse >= 0 && (got != 0) != socks[s].reuse)
        violation("SO_REUSEADDR of qd %d reads %d after it was set to %d", qd, got, socks[s].reuse);
}

/* ---- demi_getpeername ---- */
static eset peer_phase(const struct msock *s, unsigned ph, const void *ctx)
{
    (void)ctx;
    if (!s->stream)
        return s->has_peer ? es(0, -1) : es(ENOTCONN, -1);
    if (ph != PH_CONNECTED)
        return es(ENOTCONN, -1);
    /* A reset connection has no peer any more. */
    if (s->conn >= 0 && conns[s->conn].used && conns[s->conn].maybe_rst)
        return es(0, ENOTCONN, -1);
    return es(0, -1);
}

void do_getpeername(void)
{
    int s, bad;
    int qd = pick_qd(NULL, 0, &s, &bad);
    unsigned char buf[128];
    canary_fill(buf, sizeof buf);
    static const socklen_t rooms[] = {0, 1, 8, 15, 128, 0xffffffffu};
    socklen_t room = chance(75) ? sizeof(struct sockaddr_in) : rooms[rnd_below(6)];
    if (room == 0xffffffffu)
        room = sizeof buf; /* only 16 bytes are ever written, but keep the promise */
    socklen_t len = room;
    struct sockaddr *ap = chance(3) ? NULL : (struct sockaddr *)buf;
    socklen_t *lp = chance(3) ? NULL : &len;
    eset allowed = ES_NONE;
    if (!ap || !lp)
        allowed = es(EINVAL, -1);
    if (bad)
        allowed = es_add(allowed, EBADF);
    else if (s < 0)
        allowed = uncertain_qd_set(C_GETPEERNAME);
    else if (es_empty(allowed))
        allowed = over_phases(&socks[s], peer_phase, NULL);
    logf_call("demi_getpeername(%d, %s, %s=%u)", qd, ap ? "&addr" : "NULL", lp ? "&len" : "NULL", room);
    fig.calls++;
    int rc = demi_getpeername(qd, ap, lp);
    check_rc(C_GETPEERNAME, rc, allowed, "getpeername");
    if (rc != 0) {
        if (!canary_intact(buf, sizeof buf) || len != room)
            violation("demi_getpeername failed but wrote *addr or *addrlen");
        return;
    }
    if (s >= 0 && ap && lp)
        narrow(&socks[s], peer_phase, NULL, rc);
    size_t wrote = room < sizeof(struct sockaddr_in) ? room : sizeof(struct sockaddr_in);
    if (len != sizeof(struct sockaddr_in))
        violation("demi_getpeername set *addrlen to %u, not sizeof(struct sockaddr_in)", len);
    if (!canary_intact(buf + wrote, sizeof buf - wrote))
        violation("demi_getpeername wrote past the %u bytes of room", room);
    if (s < 0 || room < sizeof(struct sockaddr_in) || !socks[s].has_peer)
        return;
    struct sockaddr_in got;
    memcpy(&got, buf, sizeof got);
    const struct sockaddr_in *want = &socks[s].peer;
    if (got.sin_family != AF_INET || got.sin_port != want->sin_port || got.sin_addr.s_addr != want->sin_addr.s_addr)
        violation("demi_getpeername(%d) says port %u, the peer is port %u", qd, ntohs(got.sin_port),
                  ntohs(want->sin_port));
}

void do_init_again(void)
{
    static char *junk_argv[] = {(char *)"fuzz", NULL};
    struct demi_args args = {.argc = (int)rnd_below(3) - 1, .argv = junk_argv, .callback = NULL};
    int with = chance(50);
    logf_call("demi_init(%s)", with ? "&args" : "NULL");
    fig.calls++;
    check_rc(C_INIT, demi_init(with ? &args : NULL), es(EEXIST, -1), "second demi_init");
}
