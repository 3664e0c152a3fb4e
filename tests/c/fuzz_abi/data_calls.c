/* data_calls.c: generators for demi_push, demi_pushto, demi_pop,
 * demi_sgaalloc and demi_sgafree: library buffers whole and in part, freed
 * and forged handles, stack and heap memory, NULL and null sgas, zero and
 * huge sizes. */
#include "fuzz.h"

#include <limits.h>

#define DGRAM_MAX 65507
#define STREAM_BACKLOG (4u << 20) /* bytes in flight per direction at most */

static size_t held_bytes; /* bytes of library buffers the fuzzer holds */
static uint8_t app_mem[256 * 1024]; /* the application's own memory */

/* ---- demi_sgaalloc ---- */
static int overlaps(const demi_sgarray_t *a, size_t n, int self)
{
    uintptr_t lo_a = (uintptr_t)a->sga_segs[0].sgaseg_buf, hi_a = lo_a + n;
    for (int i = 0; i < MAX_SGAS; i++) {
        if (!sgas[i].used || i == self)
            continue;
        uintptr_t lo_b = (uintptr_t)sgas[i].sga.sga_segs[0].sgaseg_buf, hi_b = lo_b + sgas[i].size;
        if (lo_a < hi_b && lo_b < hi_a && n && sgas[i].size)
            return i;
    }
    return -1;
}

/* Checks a buffer the library lent us and takes it into the model. */
static int adopt(demi_sgarray_t s, size_t size, const char *what)
{
    if (s.sga_buf != NULL && sga_by_handle(s.sga_buf) >= 0) {
        violation("%s: handle %p is already lent out for another buffer", what, s.sga_buf);
        return -1;
    }
    int i = sga_add(s, size);
    if (i < 0) { /* the model is full: give it straight back */
        if (demi_sgafree(&s) != 0)
            violation("%s: freeing a fresh buffer failed", what);
        return -1;
    }
    int o = overlaps(&s, size, i);
    if (o >= 0)
        violation("%s: %zu bytes at %p overlap another live buffer (%zu bytes at %p)", what, size,
                  s.sga_segs[0].sgaseg_buf, sgas[o].size, sgas[o].sga.sga_segs[0].sgaseg_buf);
    held_bytes += size;
    return i;
}

void do_sgaalloc(void)
{
    static const size_t huge[] = {(size_t)1 << 32, ((size_t)1 << 32) + 1, (size_t)1 << 40, SIZE_MAX};
    size_t size;
    unsigned r = (unsigned)rnd_below(100);
    if (r < 4)
        size = 0;
    else if (r < 8)
        size = huge[rnd_below(4)];
    else if (r < 60)
        size = 1 + rnd_below(100);
    else if (r < 88)
        size = 1 + rnd_below(4000);
    else if (r < 94)
        size = 4000 + rnd_below(DGRAM_MAX);
    else if (r < 97)
        size = DGRAM_MAX + rnd_below(3);
    else
        size = 65536 + rnd_below(1u << 20);
    int room = sga_count() < MAX_SGAS - 8 && held_bytes + size < (64u << 20);
    if (!room && size && size < ((size_t)1 << 32))
        size = 0;
    logf_call("demi_sgaalloc(%zu)", size);
    fig.calls++;
    demi_sgarray_t s = demi_sgaalloc(size);
    int null = s.sga_buf == NULL && s.sga_numsegs == 0 && s.sga_segs[0].sgaseg_buf == NULL &&
               s.sga_segs[0].sgaseg_len == 0;
    logf_more(" = %s %p", null ? "null" : "sga", s.sga_buf);
    see(C_SGAALLOC, null ? OUT_NULL_SGA : 0);
    int want_null = size == 0 || size > UINT32_MAX;
    if (want_null != null) {
        violation("demi_sgaalloc(%zu) returned %s", size, null ? "a null sga" : "a buffer");
        return;
    }
    if (null) {
        unsigned char z[sizeof s];
        memset(z, 0, sizeof z);
        if (memcmp(&s, z, sizeof s) != 0)
            violation("demi_sgaalloc(%zu) failed but its null sga is not all zero", size);
        return;
    }
    struct sockaddr_in addr = s.sga_addr;
    if (s.sga_numsegs != 1 || s.sga_segs[0].sgaseg_buf == NULL || s.sga_segs[0].sgaseg_len != size ||
        addr.sin_family != 0 || addr.sin_port != 0 || addr.sin_addr.s_addr != 0) {
        violation("demi_sgaalloc(%zu) returned a malformed sga (numsegs %u, len %u)", size, s.sga_numsegs,
                  s.sga_segs[0].sgaseg_len);
        return;
    }
    if (adopt(s, size, "demi_sgaalloc") >= 0)
        fill_msg(s.sga_segs[0].sgaseg_buf, size); /* every byte is ours to write */
}

/* ---- demi_sgafree ---- */
static void release(int i)
{
    held_bytes -= sgas[i].size;
    sga_freed(sgas[i].sga);
    sgas[i].used = 0;
}

void do_sgafree(void)
{
    demi_sgarray_t s, copy;
    uint8_t stack[64];
    memset(stack, 0x3C, sizeof stack);
    memset(&s, 0, sizeof s);
    int live = -1, want = EINVAL, arg_null = 0;
    const char *what;
    unsigned r = (unsigned)rnd_below(100);
    int n = sga_count();
    if (r < 60 && n) {
        for (int i = (int)rnd_below(MAX_SGAS);; i = (i + 1) % MAX_SGAS)
            if (sgas[i].used) {
                live = i;
                break;
            }
        s = sgas[live].sga;
        want = 0;
        what = "live";
        if (chance(20) && sgas[live].size > 1) { /* only sga_buf names the buffer */
            s.sga_segs[0].sgaseg_buf = (uint8_t *)s.sga_segs[0].sgaseg_buf + 1;
            s.sga_segs[0].sgaseg_len = 1;
            what = "live, segment changed";
        }
    } else if (r < 75 && freed_sga(&s)) {
        what = "already freed";
    } else if (r < 80) {
        arg_null = 1;
        what = "NULL";
    } else {
        switch (rnd_below(4)) {
        case 0: /* random bytes */
            for (size_t i = 0; i < sizeof s; i++)
                ((uint8_t *)&s)[i] = (uint8_t)rnd();
            what = "random bytes";
            break;
        case 1: /* the application's own stack memory */
            s.sga_numsegs = 1;
            s.sga_segs[0].sgaseg_buf = stack;
            s.sga_segs[0].sgaseg_len = sizeof stack;
            s.sga_buf = chance(50) ? NULL : stack;
            what = "stack memory";
            break;
        case 2: /* a live handle with its generation bits changed */
            if (n) {
                for (int i = 0; i < MAX_SGAS; i++)
                    if (sgas[i].used)
                        s = sgas[i].sga;
                s.sga_buf = (void *)((uintptr_t)s.sga_buf ^ ((uintptr_t)1 << (24 + rnd_below(24))));
            }
            what = "forged handle";
            break;
        default: what = "null sga"; break;
        }
        live = sga_by_handle(s.sga_buf);
        if (live >= 0) /* forged by chance into a live handle: that is a real free */
            want = 0;
    }
    copy = s;
    logf_call("demi_sgafree(%s %p)", what, arg_null ? NULL : s.sga_buf);
    fig.calls++;
    int rc = demi_sgafree(arg_null ? NULL : &s);
    check_rc(C_SGAFREE, rc, es(want, -1), what);
    if (memcmp(&copy, &s, sizeof s) != 0)
        violation("demi_sgafree modified the sga struct it was given (%s)", what);
    for (size_t i = 0; i < sizeof stack; i++)
        if (stack[i] != 0x3C) {
            violation("demi_sgafree wrote to memory of an sga it never handed out");
            break;
        }
    if (rc == 0 && live >= 0)
        release(live);
}

/* Frees every buffer the model holds (end of run). */
void free_all_sgas(void)
{
    for (int i = 0; i < MAX_SGAS; i++)
        if (sgas[i].used) {
            logf_call("demi_sgafree(live %p)", sgas[i].sga.sga_buf);
            fig.calls++;
            check_rc(C_SGAFREE, demi_sgafree(&sgas[i].sga), es(0, -1), "end of run");
            release(i);
        }
}

/* ---- demi_push, demi_pushto ---- */
enum {
    SG_LIB_WHOLE, SG_LIB_SUB, SG_STACK, SG_HEAP, SG_FOREIGN, SG_LIB_OUT, SG_FREED, SG_NUMSEGS0, SG_NUMSEGS2,
    SG_SEGNULL, SG_LEN0, SG_NULLPTR, SG_NULLSGA, N_SG
};
static const char *const sg_names[N_SG] = {"lib", "lib-part", "stack", "heap", "foreign", "lib-outside", "freed",
                                            "numsegs0", "numsegs2", "seg-NULL", "len0", "NULL", "null-sga"};

struct push_ctx {
    int to;          /* demi_pushto */
    int sga_bad;     /* the sga is refused (EINVAL) */
    int sga_maybe;   /* the man page leaves open whether it is refused */
    int addr_bad;    /* pushto's address is refused */
};

static eset push_phase(const struct msock *s, unsigned ph, const void *vctx)
{
    const struct push_ctx *c = vctx;
    eset e = ES_NONE;
    if (c->sga_bad || c->addr_bad)
        e = es(EINVAL, -1);
    if (s->stream) {
        if (ph == PH_LISTEN)
            e = es_add(e, EINVAL);
        else if (ph != PH_CONNECTED)
            e = es_add(e, ENOTCONN);
    } else if (!c->to && !s->has_peer) {
        e = es_add(e, EDESTADDRREQ);
    }
    if (c->sga_maybe)
        return es_add(es_empty(e) ? es(0, -1) : e, EINVAL);
    return es_empty(e) ? es(0, -1) : e;
}

static int want_push(const struct msock *s)
{
    if (chance(5)) /* ENOTCONN, EDESTADDRREQ, EINVAL on a listener */
        return 1;
    return s->stream ? s->phases == PH_CONNECTED && sock_conn(s) >= 0 : s->has_peer;
}

static int want_pushto(const struct msock *s)
{
    return !s->stream || chance(10);
}

static void push_started(struct msock *m, int s, demi_qtoken_t qt, int kind, int lib, const uint8_t *bytes,
                         size_t len, const struct sockaddr_in *dest, const struct push_ctx *ctx);

static int pick_lib_sga(void)
{
    int n = sga_count();
    if (!n)
        return -1;
    for (int i = (int)rnd_below(MAX_SGAS);; i = (i + 1) % MAX_SGAS)
        if (sgas[i].used)
            return i;
}

void do_push(int to)
{
    int s, bad;
    int qd = pick_qd(to ? want_pushto : want_push, 1, &s, &bad);
    struct msock *m = s >= 0 ? &socks[s] : NULL;
    demi_qtoken_t qt = 77, *out = chance(2) ? NULL : &qt;
    uint8_t stack[4096];
    demi_sgarray_t sga;
    memset(&sga, 0, sizeof sga);
    int kind = (int)rnd_below(100), lib = -1;
    kind = kind < 40 ? SG_LIB_WHOLE : kind < 52 ? SG_LIB_SUB : kind < 68 ? SG_STACK : kind < 76 ? SG_HEAP
         : kind < 79 ? SG_FOREIGN : SG_LIB_OUT + (int)rnd_below(N_SG - SG_LIB_OUT);
    /* Keep each stream direction's backlog bounded. */
    if (m && m->stream && sock_conn(m) >= 0 && log_pending(&conns[m->conn].d[m->end]) > STREAM_BACKLOG &&
        kind < SG_LIB_OUT)
        kind = SG_LEN0;
    if ((kind <= SG_LIB_SUB || kind == SG_LIB_OUT) && (lib = pick_lib_sga()) < 0)
        kind = SG_STACK;
    struct push_ctx ctx = {to, 0, 0, 0};
    size_t len = 0;
    uint8_t *base = NULL;
    switch (kind) {
    case SG_LIB_WHOLE:
    case SG_LIB_SUB:
    case SG_LIB_OUT: {
        sga = sgas[lib].sga;
        base = sga.sga_segs[0].sgaseg_buf;
        size_t size = sgas[lib].size;
        if (sgas[lib].inflight == 0 && chance(70))
            fill_msg(base, size); /* no push reads it now: fresh content */
        len = size;
        if (kind == SG_LIB_SUB && size > 1) {
            size_t off = rnd_below(size);
            len = 1 + rnd_below(size - off);
            base += off;
        } else if (kind == SG_LIB_OUT) {
            if (chance(50))
                len = size + 1 + rnd_below(100);
            else /* starts just before the buffer (only the address is formed) */
                base = (uint8_t *)((uintptr_t)base - 1), len = 1 + rnd_below(size);
            ctx.sga_bad = 1;
        }
        sga.sga_segs[0].sgaseg_buf = base;
        sga.sga_segs[0].sgaseg_len = (uint32_t)len;
        if (len == 0) /* the empty buffer of an end-of-file pop */
            ctx.sga_bad = 1;
        break;
    }
    case SG_STACK:
    case SG_HEAP:
    case SG_FOREIGN:
        base = kind == SG_STACK ? stack : app_mem + rnd_below(1024);
        len = kind == SG_STACK ? 1 + rnd_below(sizeof stack) : 1 + rnd_below(chance(90) ? 3000 : sizeof app_mem - 1024);
        fill_msg(base, len);
        sga.sga_numsegs = 1;
        sga.sga_segs[0].sgaseg_buf = base;
        sga.sga_segs[0].sgaseg_len = (uint32_t)len;
        if (kind == SG_FOREIGN) { /* neither NULL nor a handle: the man page does not say */
            sga.sga_buf = app_mem;
            ctx.sga_maybe = 1;
        }
        break;
    case SG_FREED:
        if (!freed_sga(&sga))
            memset(&sga, 0, sizeof sga);
        ctx.sga_bad = 1;
        break;
    default:
        fill_msg(stack, 16);
        sga.sga_numsegs = 1;
        sga.sga_segs[0].sgaseg_buf = stack;
        sga.sga_segs[0].sgaseg_len = 16;
        if (kind == SG_NUMSEGS0)
            sga.sga_numsegs = 0;
        if (kind == SG_NUMSEGS2)
            sga.sga_numsegs = chance(50) ? 2 : UINT32_MAX;
        if (kind == SG_SEGNULL)
            sga.sga_segs[0].sgaseg_buf = NULL;
        if (kind == SG_LEN0)
            sga.sga_segs[0].sgaseg_len = 0;
        if (kind == SG_NULLSGA)
            memset(&sga, 0, sizeof sga);
        ctx.sga_bad = 1;
    }
    /* pushto's destination */
    struct sockaddr_storage st;
    memset(&st, 0, sizeof st);
    struct sockaddr_in *a = (struct sockaddr_in *)&st;
    const struct sockaddr *ap = (const struct sockaddr *)&st;
    socklen_t size = sizeof *a;
    struct sockaddr_in dest;
    memset(&dest, 0, sizeof dest);
    if (to) {
        int cand[MAX_SOCKS], n = 0;
        for (int i = 0; i < MAX_SOCKS; i++)
            if (socks[i].used && !socks[i].stream && socks[i].port)
                cand[n++] = i;
        unsigned r = (unsigned)rnd_below(100);
        *a = r < 50 && n ? sock_addr(&socks[cand[rnd_below((uint64_t)n)]])
           : lo(r < 85 ? ks[k_udp[rnd_below(2)]].port : closed_udp_port);
        switch (rnd_below(25)) {
        case 0: a->sin_port = 0, ctx.addr_bad = 1; break;
        case 1: a->sin_addr.s_addr = 0, ctx.addr_bad = 1; break;
        case 2: ap = NULL, ctx.addr_bad = 1; break;
        case 3: size = (socklen_t)rnd_below(sizeof *a), ctx.addr_bad = 1; break;
        case 4: a->sin_family = AF_INET6, ctx.addr_bad = 1; break;
        default: break;
        }
        dest = *a;
    } else if (m && !m->stream) {
        dest = m->peer;
    }
    const demi_sgarray_t *sp = kind == SG_NULLPTR ? NULL : &sga;
    eset allowed;
    if (!out)
        allowed = es(EINVAL, -1);
    else if (bad && to) /* pushto checks the descriptor first (man page) */
        allowed = es(EBADF, -1);
    else if (bad)
        allowed = (kind == SG_NULLPTR || ctx.sga_bad) ? es(EBADF, EINVAL, -1) : es(EBADF, -1);
    else if (kind == SG_NULLPTR)
        allowed = es(EINVAL, -1);
    else
        allowed = over_phases(m, push_phase, &ctx);
    /* Stack and heap bytes are scribbled over after the call: keep a copy
     * of what must arrive. */
    uint8_t *saved = NULL;
    if (kind == SG_STACK || kind == SG_HEAP || kind == SG_FOREIGN) {
        saved = malloc(len);
        if (!saved) {
            perror("fuzz_abi: malloc");
            exit(2);
        }
        memcpy(saved, base, len);
    }
    const char *call = to ? "demi_pushto" : "demi_push";
    logf_call("%s(%s, %d, %s %zu bytes id %u%s, port %d)", call, out ? "&qt" : "NULL", qd, sg_names[kind], len,
              kind <= SG_FOREIGN ? msg_id_of(base, len) : 0, to && ctx.addr_bad ? " bad address" : "",
              ntohs(dest.sin_port));
    fig.calls++;
    int rc = to ? demi_pushto(out, qd, sp, ap, size) : demi_push(out, qd, sp);
    /* Memory the library does not own must have been copied by now. */
    if (kind == SG_STACK || kind == SG_HEAP || kind == SG_FOREIGN)
        memset(base, 0xEE, len);
    check_rc(to ? C_PUSHTO : C_PUSH, rc, allowed, sg_names[kind]);
    if (rc != 0 && qt != 77)
        violation("%s failed but wrote *qt_out", call);
    if (rc != 0 && m && !bad && out && kind != SG_NULLPTR)
        narrow(m, push_phase, &ctx, rc);
    if (rc == 0 && m && !bad && out && kind != SG_NULLPTR)
        push_started(m, s, qt, kind, lib, saved ? saved : base, len, &dest, &ctx);
    free(saved);
}

static void push_started(struct msock *m, int s, demi_qtoken_t qt, int kind, int lib, const uint8_t *bytes,
                         size_t len, const struct sockaddr_in *dest, const struct push_ctx *ctx)
{
    uint16_t dport = ntohs(dest->sin_port);
    narrow(m, push_phase, ctx, 0);
    int t = new_token(qt, OPK_PUSH, s);
    if (t < 0)
        return;
    if (kind <= SG_LIB_SUB) {
        sgas[lib].inflight++;
        toks[t].sga = lib;
        toks[t].sga_gen = sgas[lib].gen;
    }
    if (m->stream && sock_conn(m) < 0) {
        violation("model: qd %d pushed on a stream the model has no connection for (fuzzer bug)", m->qd);
    } else if (m->stream) {
        struct conn *cn = &conns[m->conn];
        logf_more(" conn#%d.%u", m->conn, cn->gen);
        toks[t].conn = m->conn;
        toks[t].conn_gen = cn->gen;
        toks[t].dir = m->end;
        toks[t].off = cn->d[m->end].total;
        toks[t].len = len;
        log_append(&cn->d[m->end], bytes, len);
        if (cn->e[1 - m->end].closed) /* bytes to a closed socket draw a reset */
            cn->maybe_rst = 1;
    } else if (len > DGRAM_MAX) {
        toks[t].big = 1;
    } else if (dg_receiver(dest->sin_addr.s_addr, dport, s, 0)) {
        toks[t].dg = dg_log(END_DEMI, s, m->gen, dport, bytes, len, t);
        toks[t].dg_gen = dg_gen(toks[t].dg);
        logf_more(" [logged]");
    } else {
        logf_more(" [no receiver]");
        if (m->has_peer)
            m->refusable = 1; /* no socket takes it: an ICMP error may come back */
    }
    m->kbound = 1;
}

/* ---- demi_pop ---- */
static eset pop_phase(const struct msock *s, unsigned ph, const void *ctx)
{
    (void)ctx;
    if (!s->stream)
        return es(0, -1);
    return ph == PH_CONNECTED ? es(0, -1) : ph == PH_LISTEN ? es(EINVAL, -1) : es(ENOTCONN, -1);
}

static int want_pop(const struct msock *s)
{
    return s->pops < 3 && (s->stream ? s->phases == PH_CONNECTED : s->port != 0 || s->has_peer);
}

void do_pop(void)
{
    int s, bad;
    int qd = pick_qd(want_pop, 1, &s, &bad);
    demi_qtoken_t qt = 77, *out = chance(2) ? NULL : &qt;
    /* A few pops per socket; a stream's queue of pops to check in order
     * (finished ones wait there for an earlier one) stays within PQ. */
    int c = s >= 0 && !bad ? sock_conn(&socks[s]) : -1;
    if (s >= 0 && !bad &&
        (socks[s].pops >= 4 || live_toks() > MAX_TOKS - 32 || (c >= 0 && conns[c].e[socks[s].end].pq_n >= PQ - 1)))
        out = NULL;
    eset allowed = !out ? es(EINVAL, -1) : bad ? es(EBADF, -1) : over_phases(&socks[s], pop_phase, NULL);
    logf_call("demi_pop(%s, %d)", out ? "&qt" : "NULL", qd);
    fig.calls++;
    int rc = demi_pop(out, qd);
    check_rc(C_POP, rc, allowed, "pop");
    if (rc != 0 && qt != 77)
        violation("demi_pop failed but wrote *qt_out");
    if (rc != 0 || s < 0 || bad || !out)
        return;
    narrow(&socks[s], pop_phase, NULL, rc);
    int t = new_token(qt, OPK_POP, s);
    if (t < 0)
        return;
    socks[s].pops++;
    toks[t].rport = socks[s].port;
    if (sock_conn(&socks[s]) >= 0) {
        toks[t].conn = socks[s].conn;
        toks[t].conn_gen = conns[socks[s].conn].gen;
        toks[t].dir = socks[s].end;
        pq_add(socks[s].conn, socks[s].end, qt, toks[t].seq);
    }
}

/* Takes a popped buffer into the model (it must be freed like any other). */
int adopt_popped(demi_sgarray_t s, size_t len)
{
    return adopt(s, len, "popped sga");
}
