/* data.c: what flows over the sockets. Payloads carry a header (magic,
 * message id, length, checksum of the body); every byte pushed on a stream
 * is also appended to that direction's log, and every datagram sent to a
 * receiver we watch is kept until it is popped, so what arrives is compared
 * byte for byte with what was sent. */
#include "fuzz.h"

struct conn conns[MAX_CONNS];

/* ---- payloads ---- */
#define MSG_MAGIC 0xDE31F022u
static uint32_t msg_id;

static uint8_t body_byte(uint32_t id, size_t i)
{
    return (uint8_t)((id * 131u) ^ (uint32_t)(i * 31u) ^ (uint32_t)(i >> 8));
}

void fill_msg(uint8_t *p, size_t len)
{
    uint32_t id = ++msg_id, h = 2166136261u;
    uint8_t full[16];
    for (size_t i = 16; i < len; i++) {
        p[i] = body_byte(id, i);
        h = (h ^ p[i]) * 16777619u;
    }
    uint32_t hdr[4] = {MSG_MAGIC, id, (uint32_t)len, h};
    memcpy(full, hdr, sizeof full);
    memcpy(p, full, len < 16 ? len : 16);
}

uint32_t msg_id_of(const uint8_t *p, size_t len)
{
    uint32_t h[2];
    if (len < 8)
        return 0;
    memcpy(h, p, sizeof h);
    /* Bytes that only look like a header (a stream pop starting mid-message)
     * may carry any id: only ids this run issued count. */
    return h[0] == MSG_MAGIC && h[1] <= msg_id ? h[1] : 0;
}

/* ---- byte logs (one per stream direction) ---- */
void log_append(struct bytelog *l, const uint8_t *p, size_t n)
{
    size_t drop = (size_t)(l->rcvd - l->base);
    if (drop > 0 && drop >= l->len / 2) {
        memmove(l->buf, l->buf + drop, l->len - drop);
        l->len -= drop;
        l->base = l->rcvd;
    }
    if (l->len + n > l->cap) {
        size_t cap = l->cap ? l->cap : 4096;
        while (cap < l->len + n)
            cap *= 2;
        uint8_t *b = realloc(l->buf, cap);
        if (!b) {
            perror("fuzz_abi: realloc");
            exit(2);
        }
        l->buf = b;
        l->cap = cap;
    }
    memcpy(l->buf + l->len, p, n);
    l->len += n;
    l->total += n;
}

size_t log_pending(const struct bytelog *l)
{
    return (size_t)(l->total - l->rcvd);
}

int log_receive(struct bytelog *l, const uint8_t *p, size_t n, const char *who)
{
    if (l->rcvd + n > l->total) {
        violation("%s: %zu bytes arrived at stream offset %llu, but only %llu bytes were ever pushed", who, n,
                  (unsigned long long)l->rcvd, (unsigned long long)l->total);
        return 0;
    }
    const uint8_t *want = l->buf + (l->rcvd - l->base);
    if (memcmp(want, p, n) != 0) {
        size_t i = 0;
        while (want[i] == p[i])
            i++;
        violation("%s: byte %llu of the stream is %#x, %#x was pushed there (%zu-byte pop)", who,
                  (unsigned long long)(l->rcvd + i), p[i], want[i], n);
        return 0;
    }
    l->rcvd += n;
    fig.bytes_stream += n;
    return 1;
}

/* ---- stream connections ---- */
int conn_new(void)
{
    for (int c = 0; c < MAX_CONNS; c++) {
        if (conns[c].used)
            continue;
        free(conns[c].d[0].buf);
        free(conns[c].d[1].buf);
        for (int e = 0; e < 2; e++)
            for (int i = 0; i < PQ; i++)
                free(conns[c].e[e].pq[i].data);
        unsigned gen = conns[c].gen + 1;
        memset(&conns[c], 0, sizeof conns[c]);
        conns[c].used = 1;
        conns[c].gen = gen;
        conns[c].lsock = -1;
        for (int i = 0; i < 2; i++)
            conns[c].e[i].sock = conns[c].e[i].kfd = -1;
        return c;
    }
    return -1;
}

void conn_free(int c, const char *why)
{
    conns[c].used = 0;
    logf_more(" [conn#%d.%u gone: %s]", c, conns[c].gen, why);
}

int sock_conn(const struct msock *m)
{
    return m->conn >= 0 && conns[m->conn].used && conns[m->conn].gen == m->conn_gen ? m->conn : -1;
}

void sock_set_conn(struct msock *m, int c, int end)
{
    m->conn = c;
    m->end = end;
    m->conn_gen = c >= 0 ? conns[c].gen : 0;
}

void end_closed(int c, int side, int rst)
{
    struct conn *cn = &conns[c];
    cn->e[side].closed = 1;
    cn->e[side].rst = rst;
    /* Linux answers a close with unread input by a reset, not a FIN. */
    if (rst || log_pending(&cn->d[1 - side]) > 0)
        cn->maybe_rst = 1;
    conn_gc(c);
}

static int accepts_for(int lsock, unsigned lgen)
{
    for (int t = 0; t < MAX_TOKS; t++)
        if (toks[t].used && toks[t].kind == OPK_ACCEPT && toks[t].sock == lsock && toks[t].sock_gen == lgen)
            return 1;
    return 0;
}

void conn_gc(int c)
{
    struct conn *cn = &conns[c];
    if (!cn->used)
        return;
    for (int t = 0; t < MAX_TOKS; t++) /* a result still to be checked against it */
        if (toks[t].used && toks[t].conn == c && toks[t].conn_gen == cn->gen)
            return;
    int gone0 = cn->e[0].kind != END_NONE && cn->e[0].closed;
    int gone1 = cn->e[1].closed; /* a server end never accepted is marked closed when it never will be */
    /* A server end never accepted: gone once its demi listener is closed
     * and no accept of that listener can still deliver it. */
    if (cn->e[1].kind == END_NONE && !cn->lkernel && cn->lsock >= 0) {
        struct msock *l = &socks[cn->lsock];
        if (!(l->used && l->gen == (unsigned)cn->lgen) && !accepts_for(cn->lsock, (unsigned)cn->lgen))
            gone1 = 1;
    }
    if (gone0 && gone1)
        conn_free(c, "both ends closed");
}

/* ---- stream pops, in issue order ---- */
int fatal(int e)
{
    return e == ECONNRESET || e == ETIMEDOUT || e == ECONNABORTED || e == EHOSTUNREACH || e == ENETUNREACH;
}

void end_died(struct cend *e, int errno_, uint64_t pushes_after, uint64_t pops_after)
{
    if (e->dead)
        return;
    e->dead = errno_;
    e->dead_after[OPK_PUSH] = pushes_after;
    e->dead_after[OPK_POP] = pops_after;
}

void pq_add(int c, int side, demi_qtoken_t qt, uint64_t seq)
{
    struct cend *e = &conns[c].e[side];
    if (e->pq_n == PQ) {
        violation("model: more than %d pops outstanding on one stream (fuzzer bug)", PQ);
        return;
    }
    struct pend *p = &e->pq[(e->pq_head + e->pq_n++) % PQ];
    free(p->data);
    *p = (struct pend){.qt = qt, .seq = seq, .state = PQ_PENDING};
}

struct pend *pq_find(int c, int side, demi_qtoken_t qt)
{
    struct cend *e = &conns[c].e[side];
    for (int i = 0; i < e->pq_n; i++)
        if (e->pq[(e->pq_head + i) % PQ].qt == qt)
            return &e->pq[(e->pq_head + i) % PQ];
    return NULL;
}

/* Checks the finished pops at the head of the queue against the peer's
 * bytes: data continues the stream, end of file only after the peer went
 * away (and after everything its finished pushes sent, unless a reset may
 * have dropped it). */
void pq_drain(int c, int side, int qd, uint64_t pushes_now)
{
    struct conn *cn = &conns[c];
    struct cend *e = &cn->e[side];
    const struct cend *peer = &cn->e[1 - side];
    struct bytelog *l = &cn->d[1 - side];
    char who[64];
    snprintf(who, sizeof who, "pop on qd %d", qd);
    while (e->pq_n && e->pq[e->pq_head].state != PQ_PENDING) {
        struct pend *p = &e->pq[e->pq_head];
        int cancelled = p->state == PQ_FAILED && p->ret == ECANCELED;
        /* "Every later pop on the socket completes the same way." */
        if (e->eof && p->state != PQ_EOF && !cancelled)
            violation("a pop on qd %d after end of file got %s, not end of file again", qd,
                      p->state == PQ_DATA ? "data" : ename(p->ret));
        /* After a reset, every pending and later pop fails with it. */
        if (e->dead && p->seq > e->dead_after[OPK_POP] && !cancelled && !(p->state == PQ_FAILED && p->ret == e->dead))
            violation("pop #%llu on qd %d got %s after the connection died with %s (man demi_pop: every pending and "
                      "later pop fails with it)",
                      (unsigned long long)p->seq, qd,
                      p->state == PQ_DATA ? "data" : p->state == PQ_EOF ? "end of file" : ename(p->ret), ename(e->dead));
        if (p->state == PQ_FAILED && fatal(p->ret))
            end_died(e, p->ret, pushes_now, p->seq);
        if (p->state == PQ_DATA) {
            log_receive(l, p->data, p->len, who);
        } else if (p->state == PQ_EOF) {
            e->eof = 1;
            if (!peer->closed && !peer->shut_wr && !cn->maybe_rst)
                violation("end of file on qd %d while its peer is open", qd);
            else if (!cn->maybe_rst && l->rcvd < l->confirmed)
                violation("end of file on qd %d after %llu bytes, but the peer's pushes of %llu bytes had finished",
                          qd, (unsigned long long)l->rcvd, (unsigned long long)l->confirmed);
            else if (peer->rst && !peer->shut_wr)
                violation("end of file on qd %d after its peer reset the connection (man demi_pop: ECONNRESET, never "
                          "end of file)",
                          qd);
        }
        free(p->data);
        p->data = NULL;
        e->pq_head = (e->pq_head + 1) % PQ;
        e->pq_n--;
    }
}

/* ---- datagrams ---- */
struct dgent {
    int used;
    unsigned gen;
    int skind, sender;
    unsigned sgen;
    uint16_t dport;
    uint32_t len;
    uint8_t *bytes;
    uint64_t order;
    int tok;
};
static struct dgent dgs[MAX_DGRAMS];
static uint64_t dg_order;
static uint32_t evicted[65536]; /* per destination port */

/* The address to reach a socket at: its bound address, or 127.0.0.1. */
struct sockaddr_in sock_addr(const struct msock *s)
{
    struct sockaddr_in a = lo(s->port);
    if (s->bound && s->ip != htonl(INADDR_ANY))
        a.sin_addr.s_addr = s->ip;
    return a;
}

/* A datagram socket we watch takes what `sender` (a demi socket, or -1 for
 * a kernel peer on port kport) sends to ip:port: it is bound there (or to
 * any address: sockets the kernel bound on its own are), and if it is
 * connected, then to the sender. */
int dg_receiver(uint32_t ip, uint16_t port, int sender, uint16_t kport)
{
    if (port == 0)
        return 0;
    for (int i = 0; i < MAX_SOCKS; i++) {
        const struct msock *s = &socks[i];
        if (!s->used || s->stream || s->port != port)
            continue;
        if (s->bound && s->ip != htonl(INADDR_ANY) && s->ip != ip)
            continue;
        if (!s->has_peer)
            return 1;
        uint16_t from = sender >= 0 ? socks[sender].port : kport;
        uint32_t from_ip = sender >= 0 ? sock_addr(&socks[sender]).sin_addr.s_addr : htonl(INADDR_LOOPBACK);
        if (from && ntohs(s->peer.sin_port) == from && s->peer.sin_addr.s_addr == from_ip)
            return 1;
    }
    for (int k = 0; k < MAX_KSOCKS; k++)
        if (ks[k].used && ks[k].kind == KS_UDP && ks[k].port == port && ip == htonl(INADDR_LOOPBACK))
            return 1;
    return 0;
}

unsigned dg_gen(int dg)
{
    return dgs[dg].gen;
}

/* How many datagrams carried each message (by header id). */
static uint8_t *id_pushes;
static uint32_t id_cap;

static void count_id(uint32_t id)
{
    if (id >= id_cap) {
        uint32_t cap = id_cap ? id_cap : 4096;
        while (cap <= id)
            cap *= 2;
        uint8_t *b = realloc(id_pushes, cap);
        if (!b) {
            perror("fuzz_abi: realloc");
            exit(2);
        }
        memset(b + id_cap, 0, cap - id_cap);
        id_pushes = b;
        id_cap = cap;
    }
    if (id_pushes[id] < 255)
        id_pushes[id]++;
}

int dg_log(int skind, int sender, unsigned sgen, uint16_t dport, const uint8_t *p, size_t n, int tok)
{
    count_id(msg_id_of(p, n));
    int slot = -1;
    for (int i = 0; i < MAX_DGRAMS && slot < 0; i++)
        if (!dgs[i].used)
            slot = i;
    if (slot < 0) { /* full: the oldest was most likely dropped by the kernel */
        slot = 0;
        for (int i = 1; i < MAX_DGRAMS; i++)
            if (dgs[i].order < dgs[slot].order)
                slot = i;
        evicted[dgs[slot].dport]++;
        if (dgs[slot].tok >= 0 && toks[dgs[slot].tok].used && toks[dgs[slot].tok].dg == slot)
            toks[dgs[slot].tok].dg = -1;
        free(dgs[slot].bytes);
    }
    struct dgent *d = &dgs[slot];
    d->used = 1;
    d->gen++;
    d->skind = skind;
    d->sender = sender;
    d->sgen = sgen;
    d->dport = dport;
    d->len = (uint32_t)n;
    d->bytes = malloc(n ? n : 1);
    if (!d->bytes) {
        perror("fuzz_abi: malloc");
        exit(2);
    }
    memcpy(d->bytes, p, n);
    d->order = ++dg_order;
    d->tok = tok;
    return slot;
}

void dg_drop(int dg, unsigned gen)
{
    if (dg >= 0 && dgs[dg].used && dgs[dg].gen == gen) {
        dgs[dg].used = 0;
        free(dgs[dg].bytes);
        dgs[dg].bytes = NULL;
    }
}

static void check_sender(const struct dgent *d, const struct sockaddr_in *from, const char *who)
{
    if (from->sin_family != AF_INET) {
        violation("%s: popped datagram's sga_addr has family %d, not AF_INET", who, from->sin_family);
        return;
    }
    uint16_t fport = ntohs(from->sin_port);
    if (d->skind == END_KERNEL) {
        if (fport != ks[d->sender].port)
            violation("%s: datagram from kernel port %u reported as from port %u", who, ks[d->sender].port, fport);
        return;
    }
    struct msock *s = &socks[d->sender];
    if (!s->used || s->gen != d->sgen)
        return; /* the sender is closed; its port is no longer known */
    uint32_t want_ip = s->bound && s->ip != htonl(INADDR_ANY) ? s->ip : htonl(INADDR_LOOPBACK);
    if (s->port == 0) {
        s->port = fport; /* an unbound sender's port, learned */
        s->kbound = 1;
    } else if (fport != s->port || from->sin_addr.s_addr != want_ip) {
        char a[32];
        inet_ntop(AF_INET, &from->sin_addr, a, sizeof a);
        violation("%s: datagram from qd %d (port %u) reported as from %s:%u", who, s->qd, s->port, a, fport);
    }
}

/* 2: the entry's sender is known to have the source port; 1: its port is
 * unknown; 0: it has another port. */
static int sender_fits(const struct dgent *d, uint16_t fport)
{
    uint16_t sp = 0;
    if (d->skind == END_KERNEL)
        sp = ks[d->sender].port;
    else if (socks[d->sender].used && socks[d->sender].gen == d->sgen)
        sp = socks[d->sender].port;
    else
        return 1;
    return sp == 0 ? 1 : sp == fport ? 2 : 0;
}

void dg_receive(uint16_t port, const uint8_t *p, size_t n, const struct sockaddr_in *from, const char *who)
{
    /* The same bytes may have been pushed by several sockets (one buffer
     * pushed twice): take the oldest whose sender fits the source. */
    int best = -1, best_fit = -1;
    uint16_t fport = ntohs(from->sin_port);
    for (int i = 0; i < MAX_DGRAMS; i++) {
        struct dgent *d = &dgs[i];
        /* A receiver whose port nobody knows cannot have been sent to. */
        if (!d->used || d->len != n || d->dport != port || (n && memcmp(d->bytes, p, n) != 0))
            continue;
        int fit = sender_fits(d, fport);
        if (fit > best_fit || (fit == best_fit && d->order < dgs[best].order))
            best = i, best_fit = fit;
    }
    if (best < 0) {
        if (port && evicted[port]) {
            fig.dgrams_unverifiable++;
            return;
        }
        uint32_t h[4] = {0, 0, 0, 0};
        if (n)
            memcpy(h, p, n < 16 ? n : 16);
        violation("%s: a %zu-byte datagram (header id %u len %u) that no one pushed to port %u whole", who, n,
                  h[0] == MSG_MAGIC ? h[1] : 0, h[0] == MSG_MAGIC ? h[2] : 0, port);
        return;
    }
    /* Who sent it is certain only for a message pushed once: bytes several
     * pushes carried (one buffer pushed twice) may have been matched to the
     * wrong sender before, so they teach and check nothing. */
    uint32_t id = msg_id_of(p, n);
    if (id && id < id_cap && id_pushes[id] == 1)
        check_sender(&dgs[best], from, who);
    /* Delivered: its push must not fail (known only for a message pushed
     * once, as above). */
    if (id && id < id_cap && id_pushes[id] == 1 && dgs[best].tok >= 0 && toks[dgs[best].tok].used &&
        toks[dgs[best].tok].dg == best)
        toks[dgs[best].tok].dg = -2;
    else if (dgs[best].tok >= 0 && toks[dgs[best].tok].used && toks[dgs[best].tok].dg == best)
        toks[dgs[best].tok].dg = -1;
    dgs[best].used = 0;
    free(dgs[best].bytes);
    dgs[best].bytes = NULL;
    fig.dgrams_ok++;
}
