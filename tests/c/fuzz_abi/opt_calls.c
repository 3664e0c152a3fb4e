/* opt_calls.c: generators for demi_setsockopt, demi_getsockopt,
 * demi_getpeername and a repeated demi_init. */
#include "fuzz.h"

#include <netinet/tcp.h>

/* A qd that a finished, untaken accept may hold: any answer the page lists. */
static eset uncertain_qd_set(int call)
{
    return doc_errs[call];
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
    if (sock_conn(s) >= 0 && conns[s->conn].maybe_rst)
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
