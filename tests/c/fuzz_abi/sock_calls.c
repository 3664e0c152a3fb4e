/* sock_calls.c: generators for demi_socket, bind, listen, accept, connect
 * and close.
 * Each picks arguments (good or bad), works out from the model which
 * answers the man pages allow, makes the call and checks the answer. */
#include "fuzz.h"

#include <limits.h>

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
        /* A port the kernel chose, learned: a stream gives it back when its
         * connection ends; a datagram socket's connect binds it to the
         * source address it picked, not to any address. */
        if (!o->bound || o->chosen)
            r = 2;
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
        socks[s].chosen = ctx.port == 0;
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
    case PH_IDLE: {
        if (!s->bound)
            return es(EDESTADDRREQ, -1);
        eset e = es(0, -1);
        /* Linux refuses to listen on a socket whose connect failed (EINVAL,
         * which the man page gives for connected sockets); catnap passes
         * that on. */
        if (s->kbound)
            e = es_add(e, EINVAL);
        /* Listening checks the port again: another listener there, or
         * sockets the model cannot see on it (a port bound with SO_REUSEADDR
         * may be shared with connections in TIME-WAIT; a socket that tried
         * a connect has had a connection on it). */
        if (port_listened((int)(s - socks), s->port) || s->reuse || s->kbound)
            e = es_add(e, EADDRINUSE);
        return e;
    }
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
    sock_set_conn(m, -1, -1); /* an earlier connect's connection is not this one */
    if (c >= 0 && m->conn_ok) {
        conns[c].e[0] = (struct cend){.kind = END_DEMI, .sock = s, .gen = m->gen, .port = m->port};
        conns[c].lsock = lsock;
        conns[c].lgen = lsock >= 0 ? (int)socks[lsock].gen : 0;
        if (lsock >= 0)
            socks[lsock].conns_made++;
        conns[c].lkernel = lkernel;
        sock_set_conn(m, c, 0);
        logf_more(" conn#%d.%u", c, conns[c].gen);
        toks[t].conn = c;
        toks[t].conn_gen = conns[c].gen;
    } else if (c >= 0) {
        conns[c].used = 0;
    }
}

/* ---- demi_close ---- */

/* An operation that nothing could have finished before its descriptor was
 * closed: a stream pop whose peer never sent a byte, closed or reset, an
 * accept no connection was ever made to. The close must end it ECANCELED. */
static int cannot_have_finished(int s, const struct mtok *k)
{
    const struct msock *m = &socks[s];
    if (k->kind == OPK_POP && m->stream) {
        int c = sock_conn(m);
        if (c < 0)
            return 0;
        const struct conn *cn = &conns[c];
        const struct cend *peer = &cn->e[1 - m->end];
        return cn->d[1 - m->end].total == 0 && !peer->closed && !peer->shut_wr && !cn->maybe_rst;
    }
    if (k->kind == OPK_ACCEPT) {
        for (int c = 0; c < MAX_CONNS; c++)
            if (conns[c].used && !conns[c].lkernel && conns[c].lsock == s && conns[c].lgen == (int)m->gen)
                return 0;
        return !m->conns_made;
    }
    return 0;
}
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
            toks[t].must_cancel = cannot_have_finished(s, &toks[t]);
        }
    if (sock_conn(m) >= 0) {
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
