/* model.c: the PRNG, the documented-errno tables, the call log, violation
 * reports, and the model's tables of sockets, tokens and buffers. */
#include "fuzz.h"

#include <limits.h>
#include <unistd.h>

struct figures fig;
uint64_t g_seed, g_calls_wanted, g_step;
int g_keep_going, g_trace, g_inited, g_strict;
unsigned char seen[N_CALLS][N_OUT];
struct msock socks[MAX_SOCKS];
struct mtok toks[MAX_TOKS];
struct msga sgas[MAX_SGAS];
int g_max_qd;

/* ---- PRNG: splitmix64 (Steele, Lea, Flood 2014), one 64-bit state ---- */
static uint64_t rng_state;

void rnd_seed(uint64_t seed)
{
    rng_state = seed;
}

/* Each step draws from its own stream, so an answer that differs in one
 * step (timing) does not shift every later step's random choices. */
void rnd_step(uint64_t seed, uint64_t step)
{
    rng_state = seed;
    rng_state = rnd() ^ (step * 0xD1B54A32D192ED03ull);
}

uint64_t rnd(void)
{
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

eset es(int first, ...)
{
    eset s = ES_NONE;
    va_list ap;
    va_start(ap, first);
    for (int e = first; e != -1; e = va_arg(ap, int))
        s = es_add(s, e);
    va_end(ap);
    return s;
}

const char *const call_names[N_CALLS] = {
    "demi_init", "demi_socket", "demi_bind", "demi_listen", "demi_accept", "demi_connect", "demi_close",
    "demi_push", "demi_pushto", "demi_pop", "demi_setsockopt", "demi_getsockopt", "demi_getpeername",
    "demi_sgaalloc", "demi_sgafree", "demi_wait", "demi_timedwait", "demi_wait_any", "demi_wait_next_n",
    "push->", "pop->", "accept->", "connect->",
};

/* Every errno each page of man/ lists (ENOTRECOVERABLE is documented too,
 * but check_rc() reports it: it means a panic inside the library). For the
 * OP_* rows: the qr_ret values a failed operation may carry. */
eset doc_errs[N_CALLS];
static void doc_init(void)
{
    eset *d = doc_errs;
    d[C_INIT] = es(0, EEXIST, EINVAL, EMFILE, ENFILE, ENOMEM, ENOTRECOVERABLE, -1);
    d[C_SOCKET] = es(0, EINVAL, EPERM, EAFNOSUPPORT, EPROTONOSUPPORT, EMFILE, ENFILE, ENOBUFS, ENOMEM,
                     ENOTRECOVERABLE, -1);
    d[C_BIND] = es(0, EPERM, EBADF, EINVAL, EADDRINUSE, EADDRNOTAVAIL, EACCES, ENOTRECOVERABLE, -1);
    d[C_LISTEN] = es(0, EPERM, EBADF, EOPNOTSUPP, EDESTADDRREQ, EINVAL, EADDRINUSE, ENOTRECOVERABLE, -1);
    d[C_ACCEPT] = es(0, EINVAL, EPERM, EBADF, EOPNOTSUPP, ENOTRECOVERABLE, -1);
    d[C_CONNECT] = es(0, EINVAL, EPERM, EBADF, EALREADY, EISCONN, ENOTRECOVERABLE, -1);
    d[C_CLOSE] = es(0, EPERM, EBADF, ENOTRECOVERABLE, -1);
    d[C_PUSH] = es(0, EINVAL, EPERM, EBADF, ENOTCONN, EDESTADDRREQ, ENOTRECOVERABLE, -1);
    d[C_PUSHTO] = es(0, EINVAL, EPERM, EBADF, ENOTCONN, ENOTRECOVERABLE, -1);
    d[C_POP] = es(0, EINVAL, EPERM, EBADF, ENOTCONN, ENOTRECOVERABLE, -1);
    d[C_SETSOCKOPT] = es(0, EPERM, EINVAL, EBADF, ENOPROTOOPT, ENOTRECOVERABLE, -1);
    /* "Other errno values of the kernel's getsockopt(2)": its page lists
     * EBADF, EFAULT, EINVAL, ENOPROTOOPT, ENOTSOCK. */
    d[C_GETSOCKOPT] = es(0, EPERM, EINVAL, EBADF, ENOPROTOOPT, EFAULT, ENOTSOCK, ENOTRECOVERABLE, -1);
    d[C_GETPEERNAME] = es(0, EPERM, EINVAL, EBADF, ENOTCONN, ENOTRECOVERABLE, -1);
    d[C_SGAALLOC] = es(0, OUT_NULL_SGA, -1);
    d[C_SGAFREE] = es(0, EINVAL, EPERM, ENOTRECOVERABLE, -1);
    d[C_WAIT] = d[C_TIMEDWAIT] = d[C_WAIT_ANY] = d[C_WAIT_NEXT_N] = es(0, EINVAL, EPERM, ETIMEDOUT, ENOTRECOVERABLE, -1);
    d[OP_PUSH] = es(0, ECONNRESET, EPIPE, EMSGSIZE, ECANCELED, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ENOBUFS,
                    ECONNREFUSED, -1);
    d[OP_POP] = es(0, OUT_EOF, OUT_DGRAM, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ECANCELED, ECONNREFUSED,
                   ENOMEM, -1);
    d[OP_ACCEPT] = es(0, ECANCELED, EMFILE, ENFILE, ENOBUFS, ENOMEM, -1);
    d[OP_CONNECT] = es(0, ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, EADDRNOTAVAIL, ECANCELED,
                       ECONNABORTED, -1);
}
__attribute__((constructor)) static void doc_ctor(void)
{
    doc_init();
}

const char *ename(int e)
{
    switch (e) {
    case 0: return "0";
    case OUT_NULL_SGA: return "null-sga";
    case OUT_EOF: return "EOF";
    case OUT_DGRAM: return "datagram";
    }
    const char *n = strerrorname_np(e);
    return n ? n : "E?";
}

/* ---- the call log: the last RING calls, for violation reports ---- */
static char ring[RING][4096];
static size_t ring_len[RING];
static unsigned ring_pos;
static uint64_t trace_hash = 1469598103934665603ull;

static void ring_close(void)
{
    char *e = ring[ring_pos % RING];
    if (e[0] && g_trace)
        printf("%s\n", e);
}

static void ring_vadd(int fresh, const char *fmt, va_list ap)
{
    if (fresh) {
        ring_close();
        ring_pos++;
        ring_len[ring_pos % RING] = 0;
        ring[ring_pos % RING][0] = 0;
    }
    char *e = ring[ring_pos % RING];
    size_t *n = &ring_len[ring_pos % RING];
    if (*n < sizeof ring[0] - 1) {
        int w = vsnprintf(e + *n, sizeof ring[0] - *n, fmt, ap);
        if (w > 0)
            *n = *n + (size_t)w < sizeof ring[0] ? *n + (size_t)w : sizeof ring[0] - 1;
    }
}

volatile uint64_t g_beat;

void logf_call(const char *fmt, ...)
{
    __atomic_add_fetch(&g_beat, 1, __ATOMIC_RELAXED);
    va_list ap;
    va_start(ap, fmt);
    ring_vadd(1, fmt, ap);
    va_end(ap);
    logf_more(" [#%llu]", (unsigned long long)g_step);
}

void logf_more(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    ring_vadd(0, fmt, ap);
    va_end(ap);
}

void dump_ring(int fd)
{
    dprintf(fd, "last calls (oldest first):\n");
    for (unsigned i = ring_pos + 1; i <= ring_pos + RING; i++)
        if (ring[i % RING][0])
            dprintf(fd, "  %s\n", ring[i % RING]);
}

void violation(const char *fmt, ...)
{
    va_list ap;
    fflush(stdout);
    fig.violations++;
    fprintf(stderr, "VIOLATION (seed %llu, call #%llu): ", (unsigned long long)g_seed, (unsigned long long)g_step);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    dump_ring(2);
    fprintf(stderr, "reproduce: fuzz_abi --seed %llu --calls %llu --trace\n", (unsigned long long)g_seed,
            (unsigned long long)g_calls_wanted);
    if (!g_keep_going) {
        print_figures(stderr, -1);
        exit(1);
    }
}

/* Behaviour the man pages do not describe, found by this fuzzer or known
 * and being fixed (see the brief's notes): counted, and a violation only
 * with --strict, so long runs keep going past them. */
static const char *const finding_names[N_FINDINGS] = {
    "getsockopt(IPPROTO_TCP) on a datagram socket answered EOPNOTSUPP (demi_getsockopt.md: ENOPROTOOPT)",
    "a call before demi_init answered EINVAL (man/README.md: EPERM whatever the arguments)",
};

void finding(int f)
{
    fig.findings[f]++;
    logf_more(" [finding: %s]", finding_names[f]);
    if (g_strict)
        violation("%s", finding_names[f]);
}

/* Every answer, in order, goes into the trace hash: two runs with the same
 * hash made the same calls and got the same answers (port numbers and
 * other values the kernel picks are left out). */
void see(int call, int outcome)
{
    if (outcome < 0 || outcome >= N_OUT)
        outcome = N_OUT - 1;
    seen[call][outcome] = 1;
    trace_hash = (trace_hash ^ (uint64_t)(call * N_OUT + outcome)) * 1099511628211ull;
}

static void print_set(char *buf, size_t n, eset s)
{
    size_t o = 0;
    buf[0] = 0;
    for (int e = 0; e < ES_MAX && o < n; e++)
        if (es_has(s, e))
            o += (size_t)snprintf(buf + o, n - o, "%s%s", o ? "," : "", ename(e));
}

int check_rc(int call, int rc, eset allowed, const char *why)
{
    logf_more(" = %s", ename(rc));
    see(call, rc);
    if (rc == ENOTRECOVERABLE) {
        violation("%s returned ENOTRECOVERABLE: a panic inside the library (%s)", call_names[call], why);
        return rc;
    }
    if (!es_has(doc_errs[call], rc)) {
        violation("%s returned %s (%d), which its man page does not list (%s)", call_names[call], ename(rc), rc,
                  why);
        return rc;
    }
    if (!es_has(allowed, rc)) {
        char b[256];
        print_set(b, sizeof b, allowed);
        violation("%s returned %s; the rules allow {%s} here (%s)", call_names[call], ename(rc), b, why);
    }
    return rc;
}

void print_figures(FILE *f, double secs)
{
    unsigned pairs = 0;
    for (int c = 0; c < N_CALLS; c++)
        for (int o = 0; o < N_OUT; o++)
            pairs += seen[c][o];
    ring_close();
    fprintf(f,
            "fuzz_abi: seed %llu: %llu calls (+%llu kernel-peer steps), %u distinct (call, outcome) pairs, "
            "%llu violations\n",
            (unsigned long long)g_seed, (unsigned long long)fig.calls, (unsigned long long)fig.ksteps, pairs,
            (unsigned long long)fig.violations);
    fprintf(f,
            "fuzz_abi: %llu tokens completed, %llu stream bytes and %llu datagrams verified (%llu unverifiable after "
            "log eviction), %llu descriptor-count checks, %llu operations that only a close could end",
            (unsigned long long)fig.tokens_done, (unsigned long long)fig.bytes_stream,
            (unsigned long long)fig.dgrams_ok, (unsigned long long)fig.dgrams_unverifiable,
            (unsigned long long)fig.fd_checks, (unsigned long long)fig.cancels_checked);
    if (secs >= 0)
        fprintf(f, ", %.1f s", secs);
    fprintf(f, ", trace %016llx\n", (unsigned long long)trace_hash);
    for (int i = 0; i < N_FINDINGS; i++)
        if (fig.findings[i])
            fprintf(f, "fuzz_abi: finding x%llu: %s\n", (unsigned long long)fig.findings[i], finding_names[i]);
}

void canary_fill(void *p, size_t n)
{
    memset(p, CANARY, n);
}

int canary_intact(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != CANARY)
            return 0;
    return 1;
}

/* ---- sockets ---- */
int sock_by_qd(int qd)
{
    for (int i = 0; i < MAX_SOCKS; i++)
        if (socks[i].used && socks[i].qd == qd)
            return i;
    return -1;
}

int sock_new(int qd, int stream)
{
    for (int i = 0; i < MAX_SOCKS; i++) {
        if (socks[i].used)
            continue;
        unsigned gen = socks[i].gen + 1;
        memset(&socks[i], 0, sizeof socks[i]);
        socks[i].used = 1;
        socks[i].gen = gen;
        socks[i].qd = qd;
        socks[i].stream = stream;
        socks[i].phases = PH_IDLE;
        socks[i].ctok = socks[i].conn = socks[i].end = -1;
        if (qd > g_max_qd)
            g_max_qd = qd;
        return i;
    }
    return -1;
}

int open_socks(void)
{
    int n = 0;
    for (int i = 0; i < MAX_SOCKS; i++)
        n += socks[i].used;
    return n;
}

int outstanding_accepts(void)
{
    int n = 0;
    for (int i = 0; i < MAX_TOKS; i++)
        n += toks[i].used && toks[i].kind == OPK_ACCEPT;
    return n;
}

void polled(void)
{
    for (int i = 0; i < MAX_SOCKS; i++) {
        struct msock *s = &socks[i];
        if (s->used && (s->phases & PH_CONNECTING))
            s->phases |= (s->conn_ok ? PH_CONNECTED : 0) | (s->conn_fail ? PH_IDLE : 0);
    }
}

static int qd_open_in_model(int qd)
{
    return sock_by_qd(qd) >= 0;
}

int pick_qd(int (*want)(const struct msock *), int mutating, int *sock, int *certain_bad)
{
    *sock = -1;
    *certain_bad = 1;
    if (chance(86)) {
        int cand[MAX_SOCKS], n = 0;
        for (int i = 0; i < MAX_SOCKS; i++)
            if (socks[i].used && (!want || want(&socks[i])))
                cand[n++] = i;
        if (n == 0)
            for (int i = 0; i < MAX_SOCKS; i++)
                if (socks[i].used)
                    cand[n++] = i;
        if (n) {
            *sock = cand[rnd_below((uint64_t)n)];
            *certain_bad = 0;
            return socks[*sock].qd;
        }
    }
    int k = outstanding_accepts();
    switch (rnd_below(6)) {
    case 0:
        /* A number that was open once: closed now, or (while an accept may
         * have finished unseen) perhaps reused for the accepted socket. */
        for (int tries = 0; tries < 8 && g_max_qd > 0; tries++) {
            int qd = 1 + (int)rnd_below((uint64_t)g_max_qd);
            if (qd_open_in_model(qd))
                continue;
            if (k == 0)
                return qd;
            if (!mutating) {
                *certain_bad = 0;
                return qd;
            }
        }
        return 0;
    case 1: return 0;
    case 2: return -1 - (int)rnd_below(1000);
    case 3: return INT_MIN;
    case 4: return INT_MAX;
    default: {
        /* Beyond any number the library can have handed out. */
        long long q = (long long)g_max_qd + k + 1 + (long long)rnd_below(1u << 20);
        return q > INT_MAX ? INT_MAX : (int)q;
    }
    }
}

/* ---- tokens ---- */
static int n_live_toks;
static demi_qtoken_t consumed[64];
static unsigned n_consumed;

int tok_new(demi_qtoken_t qt, int kind, int sock)
{
    for (int i = 0; i < MAX_TOKS; i++) {
        if (toks[i].used)
            continue;
        memset(&toks[i], 0, sizeof toks[i]);
        toks[i].used = 1;
        toks[i].qt = qt;
        toks[i].kind = kind;
        toks[i].sock = sock;
        toks[i].qd = socks[sock].qd;
        toks[i].stream = socks[sock].stream;
        toks[i].sock_gen = socks[sock].gen;
        toks[i].conn = toks[i].dg = toks[i].sga = -1;
        toks[i].step = g_step;
        if (kind == OPK_PUSH || kind == OPK_POP)
            toks[i].seq = ++socks[sock].seq[kind];
        n_live_toks++;
        return i;
    }
    violation("model: more than %d live tokens (fuzzer bug)", MAX_TOKS);
    return -1;
}

int tok_by_qt(demi_qtoken_t qt)
{
    for (int i = 0; i < MAX_TOKS; i++)
        if (toks[i].used && toks[i].qt == qt)
            return i;
    return -1;
}

int live_toks(void)
{
    return n_live_toks;
}

void tok_consumed(int t)
{
    consumed[n_consumed++ % 64] = toks[t].qt;
    toks[t].used = 0;
    n_live_toks--;
    fig.tokens_done++;
}

demi_qtoken_t consumed_token(void)
{
    if (n_consumed == 0)
        return 0;
    unsigned n = n_consumed < 64 ? n_consumed : 64;
    return consumed[rnd_below(n)];
}

demi_qtoken_t forged_token(void)
{
    demi_qtoken_t live = 0;
    for (int tries = 0; tries < 4 && n_live_toks; tries++) {
        int i = (int)rnd_below(MAX_TOKS);
        if (toks[i].used)
            live = toks[i].qt;
    }
    switch (rnd_below(8)) {
    case 0: return 0;
    case 1: return 1;
    case 2: return UINT64_MAX;
    case 3: return rnd();
    case 4: return live ^ (1ull << 40);               /* a generation never reached */
    case 5: return live & 0xffffffffull;              /* generation 0 */
    case 6: return live + 1;                          /* the next slot (may be live) */
    default: return consumed_token() + (1ull << 32);  /* the slot's next use (may be live) */
    }
}

int must_be_done_exists(void)
{
    for (int i = 0; i < MAX_TOKS; i++)
        if (toks[i].used && toks[i].closed)
            return 1;
    return 0;
}

/* ---- library buffers ---- */
static demi_sgarray_t freed[32];
static unsigned n_freed;

int sga_add(demi_sgarray_t s, size_t size)
{
    for (int i = 0; i < MAX_SGAS; i++) {
        if (sgas[i].used)
            continue;
        sgas[i].used = 1;
        sgas[i].gen++;
        sgas[i].sga = s;
        sgas[i].size = size;
        sgas[i].inflight = 0;
        return i;
    }
    return -1;
}

int sga_by_handle(void *h)
{
    for (int i = 0; i < MAX_SGAS; i++)
        if (sgas[i].used && sgas[i].sga.sga_buf == h)
            return i;
    return -1;
}

int sga_count(void)
{
    int n = 0;
    for (int i = 0; i < MAX_SGAS; i++)
        n += sgas[i].used;
    return n;
}

void sga_freed(demi_sgarray_t s)
{
    freed[n_freed++ % 32] = s;
}

int freed_sga(demi_sgarray_t *out)
{
    if (n_freed == 0)
        return 0;
    *out = freed[rnd_below(n_freed < 32 ? n_freed : 32)];
    /* A freed handle is dead unless the very same value is live again
     * (generations make that practically impossible; the model checks). */
    return sga_by_handle(out->sga_buf) < 0;
}

/* ---- phases: a socket's phase is a set while a connect may have finished
 * unseen; each answer keeps the phases that explain it ---- */
eset over_phases(const struct msock *s, phase_fn f, const void *ctx)
{
    eset r = ES_NONE;
    for (unsigned p = 1; p <= PH_CONNECTED; p <<= 1)
        if (s->phases & p)
            r = es_or(r, f(s, p, ctx));
    return r;
}

void narrow(struct msock *s, phase_fn f, const void *ctx, int rc)
{
    unsigned keep = 0;
    for (unsigned p = 1; p <= PH_CONNECTED; p <<= 1)
        if ((s->phases & p) && es_has(f(s, p, ctx), rc))
            keep |= p;
    if (keep)
        s->phases = keep;
    /* The answer showed how the connect under way ended: its token must say
     * the same when it is taken. */
    if (s->ctok >= 0 && toks[s->ctok].used && !(s->phases & PH_CONNECTING)) {
        if (s->phases == PH_CONNECTED)
            toks[s->ctok].must_ok = 1;
        else if (s->phases == PH_IDLE)
            toks[s->ctok].must_fail = 1;
    }
}

int new_token(demi_qtoken_t qt, int kind, int s)
{
    logf_more(" qt=%#llx", (unsigned long long)qt);
    if (qt == 0)
        violation("a call handed out token 0, which the rules say is never a token");
    else if (tok_by_qt(qt) >= 0)
        violation("token %#llx handed out while it still names another operation", (unsigned long long)qt);
    return tok_new(qt, kind, s);
}
