/* fuzz_abi: a seeded sequence fuzzer for demi's C ABI.
 *
 * One process drives every demi_* call with valid and invalid arguments,
 * moves real data over loopback TCP and UDP (demi sockets to each other and
 * to plain kernel sockets), and checks each answer against the rules of
 * man/ and README.md "Rules of the C ABI". A model of the library's state
 * (sockets, tokens, buffers, bytes in flight) says which answers are
 * allowed. See main.c for the figures and the run's shape.
 *
 * Files: main.c (driver), model.c (PRNG, checks, call log, tables), data.c
 * (payloads, byte and datagram logs), peers.c (kernel sockets, ports),
 * sock_calls.c, opt_calls.c, data_calls.c, wait_calls.c (one generator per
 * demi call), results.c (checks on finished operations). */
#ifndef FUZZ_ABI_H
#define FUZZ_ABI_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

/* NULL arguments are passed on purpose: drop the headers' nonnull marks. */
#define DEMI_NO_NONNULL
#include <demi/libos.h>
#include <demi/sga.h>
#include <demi/wait.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* ---- sizes of the model's tables ---- */
#define MAX_SOCKS 64    /* demi sockets the model tracks at once */
#define MAX_TOKS 512    /* live tokens */
#define MAX_SGAS 256    /* library buffers held by the fuzzer */
#define MAX_CONNS 64    /* stream connections */
#define MAX_KSOCKS 48   /* kernel sockets */
#define MAX_DGRAMS 4096 /* datagrams in flight to a receiver we watch */
#define RING 16         /* calls kept for a violation report */

/* ---- errno sets: bit e for errno e (0 = success) ---- */
typedef struct {
    uint64_t w[3];
} eset;
#define ES_MAX 192
eset es(int first, ...); /* list ends with -1 */
static inline int es_has(eset s, int e)
{
    return e >= 0 && e < ES_MAX && (s.w[e / 64] >> (e % 64)) & 1;
}
static inline eset es_or(eset a, eset b)
{
    for (int i = 0; i < 3; i++)
        a.w[i] |= b.w[i];
    return a;
}
static inline int es_empty(eset s)
{
    return !(s.w[0] | s.w[1] | s.w[2]);
}
static inline eset es_add(eset s, int e)
{
    if (e >= 0 && e < ES_MAX)
        s.w[e / 64] |= 1ull << (e % 64);
    return s;
}
#define ES_NONE ((eset){{0, 0, 0}})

/* ---- the calls, and completions counted as their own "calls" ---- */
enum call {
    C_INIT, C_SOCKET, C_BIND, C_LISTEN, C_ACCEPT, C_CONNECT, C_CLOSE, C_PUSH, C_PUSHTO, C_POP,
    C_SETSOCKOPT, C_GETSOCKOPT, C_GETPEERNAME, C_SGAALLOC, C_SGAFREE, C_WAIT, C_TIMEDWAIT,
    C_WAIT_ANY, C_WAIT_NEXT_N,
    /* how started operations finished (qr_opcode / qr_ret) */
    OP_PUSH, OP_POP, OP_ACCEPT, OP_CONNECT,
    N_CALLS
};
/* Outcome codes beyond errnos, for the (call, outcome) figures. */
#define OUT_NULL_SGA 250 /* demi_sgaalloc returned a null sga */
#define OUT_EOF 251      /* a pop returned end of file */
#define OUT_DGRAM 252    /* a pop returned a datagram */
#define N_OUT 256

extern const char *const call_names[N_CALLS];
extern eset doc_errs[N_CALLS]; /* documented returns (or qr_ret) per call */

/* ---- PRNG (splitmix64) ---- */
uint64_t rnd(void);
static inline uint64_t rnd_below(uint64_t n)
{
    return n ? rnd() % n : 0;
}
static inline int chance(unsigned pct)
{
    return rnd_below(100) < pct;
}
void rnd_seed(uint64_t seed);
void rnd_step(uint64_t seed, uint64_t step);

/* ---- run state, figures ---- */
enum { F_GETSOCKOPT_EOPNOTSUPP, F_PREINIT_EINVAL, N_FINDINGS };
struct figures {
    uint64_t calls, ksteps, violations, bytes_stream, dgrams_ok, dgrams_unverifiable, tokens_done;
    uint64_t fd_checks, cancels_checked;
    uint64_t findings[N_FINDINGS];
};
void finding(int f);
extern struct figures fig;
extern uint64_t g_seed, g_calls_wanted, g_step;
extern int g_keep_going, g_trace, g_inited, g_strict;
extern volatile uint64_t g_beat; /* bumped by every call: the watchdog's pulse */
extern unsigned char seen[N_CALLS][N_OUT];

/* ---- call log and checks (model.c) ---- */
void logf_call(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void logf_more(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void violation(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void dump_ring(int fd);
void see(int call, int outcome);
/* Checks a returned errno: documented for `call` (unless before init) and in
 * `allowed`; logs and counts it. Returns rc. */
int check_rc(int call, int rc, eset allowed, const char *why);
const char *ename(int e);
void print_figures(FILE *f, double secs);

/* ---- canaries: out-parameters are filled before a call and must stay so
 * when it fails ---- */
#define CANARY 0xA5
void canary_fill(void *p, size_t n);
int canary_intact(const void *p, size_t n);

/* ---- model: sockets ---- */
#define PH_IDLE 1u
#define PH_LISTEN 2u
#define PH_CONNECTING 4u
#define PH_CONNECTED 8u

struct msock {
    int used;
    int qd;
    int stream;          /* SOCK_STREAM (else SOCK_DGRAM) */
    unsigned phases;     /* phases the library may be in (a set: see polled()) */
    int bound;           /* demi_bind succeeded */
    int kbound;          /* the kernel may have bound it on its own (connect, push) */
    uint32_t ip;         /* bound address (network order), when bound */
    uint16_t port;       /* our port in host order, 0 = unknown */
    int chosen;          /* bound to port 0: the kernel chose the port */
    int reuse, linger0;  /* SO_REUSEADDR, SO_LINGER {1, 0} set; -1: unknown */
    int reuse_ever, linger_ever; /* ever set (an accepted socket inherits them) */
    int abort_next;      /* a stream connect failed: the next one ends ECONNABORTED (catnap, man page) */
    int conn_ok, conn_fail; /* the connect under way may succeed / fail */
    int ctok;            /* token of the stream connect under way, -1 */
    int conn, end;       /* stream connection and our side of it, -1 */
    unsigned conn_gen;   /* the connection's generation: a slot may be reused */
    struct sockaddr_in peer; /* expected getpeername answer */
    int has_peer;
    int refusable;       /* datagram: ECONNREFUSED may be reported */
    int pops;            /* pops outstanding */
    int conns_made;      /* connects aimed at this listener, ever */
    uint64_t seq[2];     /* pushes, pops issued (OPK_PUSH, OPK_POP) */
    uint64_t next_n_seq[2]; /* the latest of them demi_wait_next_n returned */
    unsigned gen;        /* changes each time the slot is reused */
};
extern struct msock socks[MAX_SOCKS];
extern int g_max_qd; /* largest qd the library handed out */

int sock_by_qd(int qd);
int sock_new(int qd, int stream);
int open_socks(void);
int outstanding_accepts(void);
void polled(void); /* a wait may have polled: connects may have finished */
typedef eset (*phase_fn)(const struct msock *s, unsigned phase, const void *ctx);
eset over_phases(const struct msock *s, phase_fn f, const void *ctx);
void narrow(struct msock *s, phase_fn f, const void *ctx, int rc);

/* Picks a qd: usually an open socket passing `want` (may be NULL), else a
 * bad number. *sock is its model index or -1; *certain_bad is 1 when the
 * library must answer EBADF. `mutating` calls never get an uncertain qd
 * (one that a finished, untaken accept may hold). */
int pick_qd(int (*want)(const struct msock *), int mutating, int *sock, int *certain_bad);

/* ---- model: tokens ---- */
enum opkind { OPK_PUSH, OPK_POP, OPK_ACCEPT, OPK_CONNECT };
struct mtok {
    int used;
    demi_qtoken_t qt;
    int kind, sock, qd, stream;
    unsigned sock_gen;
    int closed;      /* its qd was closed: it must be finished */
    int must_ok, must_fail; /* inferred from a later answer */
    int abort;       /* connect: must end ECONNABORTED */
    int must_cancel; /* closed while it cannot have finished: must end ECANCELED */
    /* push: stream range or datagram entry; the sga it came from */
    int conn, dir; /* push: direction written; pop: our end */
    unsigned conn_gen;
    uint64_t off, len;
    int dg;
    unsigned dg_gen;
    int sga;
    unsigned sga_gen;
    int big;         /* datagram push larger than 65507 bytes */
    uint16_t rport;  /* datagram pop: the receiver's port (kept past a close) */
    /* connect: what was connected to */
    int target;      /* TGT_* */
    uint64_t seq;    /* push or pop: its number among its descriptor's */
    uint64_t step;
};
enum { TGT_LISTENER, TGT_REFUSER, TGT_DGRAM, TGT_CLOSED_PORT };
extern struct mtok toks[MAX_TOKS];
int tok_new(demi_qtoken_t qt, int kind, int sock);
int tok_by_qt(demi_qtoken_t qt);
int new_token(demi_qtoken_t qt, int kind, int sock); /* checks a fresh token */
int live_toks(void);
void tok_consumed(int t);
demi_qtoken_t consumed_token(void); /* a token already taken, or 0 */
demi_qtoken_t forged_token(void);   /* a value the library never issued live */
int must_be_done_exists(void);

/* ---- model: library buffers ---- */
struct msga {
    int used;
    demi_sgarray_t sga;
    size_t size;
    int inflight; /* pushes not yet seen finished */
    unsigned gen;
};
extern struct msga sgas[MAX_SGAS];
int sga_add(demi_sgarray_t s, size_t size);
int sga_by_handle(void *h);
int sga_count(void);
void sga_freed(demi_sgarray_t s); /* remember a freed copy */
int freed_sga(demi_sgarray_t *out);

/* ---- data: payloads, logs, peers (data.c) ---- */
void fill_msg(uint8_t *p, size_t len);
uint32_t msg_id_of(const uint8_t *p, size_t len); /* 0 if no header */
struct bytelog {
    uint8_t *buf;
    size_t cap, len;    /* buf holds stream bytes [base, base + len) */
    uint64_t base;
    uint64_t total;     /* bytes logged (issued) */
    uint64_t rcvd;      /* bytes the receiver has seen */
    uint64_t confirmed; /* end of the last push known to have finished */
};
enum { END_NONE, END_DEMI, END_KERNEL };
/* A stream pop of a demi end, in issue order: pops are served in that
 * order, so their bytes are checked in it, whatever order they are taken. */
enum { PQ_PENDING, PQ_DATA, PQ_EOF, PQ_FAILED };
struct pend {
    demi_qtoken_t qt;
    uint64_t seq; /* the pop's number on its descriptor */
    int state, ret;
    uint8_t *data;
    uint32_t len;
};
#define PQ 8
struct cend {
    int kind, sock, kfd;
    unsigned gen;
    int closed, shut_wr, rst, eof;
    /* The connection died here (a reset...): every pending and later push
     * and pop fails with this errno; pushes and pops numbered above
     * dead_after[kind] cannot have finished before. */
    int dead;
    uint64_t dead_after[2];
    uint16_t port; /* local port, 0 = unknown */
    struct pend pq[PQ];
    int pq_head, pq_n;
};
struct conn {
    int used;
    unsigned gen;
    struct cend e[2];   /* 0 = client, 1 = server */
    struct bytelog d[2]; /* d[i]: bytes sent by e[i] */
    int lsock, lgen;     /* demi listener the server end comes from, -1 */
    int lkernel;         /* 1: the kernel listener */
    int maybe_rst;       /* a reset may have happened */
};
extern struct conn conns[MAX_CONNS];
int conn_new(void);
void log_append(struct bytelog *l, const uint8_t *p, size_t n);
/* Checks received bytes against the log; returns 0 (violation raised) on a
 * mismatch. */
int log_receive(struct bytelog *l, const uint8_t *p, size_t n, const char *who);
size_t log_pending(const struct bytelog *l);
int sock_conn(const struct msock *m); /* m's connection, or -1 (none, or gone) */
void sock_set_conn(struct msock *m, int c, int end);
void end_closed(int c, int side, int rst);
void conn_gc(int c);
void conn_free(int c, const char *why);
void pq_add(int c, int side, demi_qtoken_t qt, uint64_t seq);
struct pend *pq_find(int c, int side, demi_qtoken_t qt);
void pq_drain(int c, int side, int qd, uint64_t pushes_now);
int fatal(int errno_); /* a stream error after which the connection carries nothing */
void end_died(struct cend *e, int errno_, uint64_t pushes_after, uint64_t pops_after);

/* datagrams: sender is a demi socket (kind END_DEMI) or a kernel socket */
int dg_log(int sender_kind, int sender, unsigned sender_gen, uint16_t dport, const uint8_t *p, size_t n, int tok);
void dg_drop(int dg, unsigned gen); /* a push failed: its datagram never went */
/* A receiver on port `port` (0 = unknown) got n bytes from `from`. */
void dg_receive(uint16_t port, const uint8_t *p, size_t n, const struct sockaddr_in *from, const char *who);
int dg_receiver(uint32_t ip, uint16_t port, int sender, uint16_t kport);
struct sockaddr_in sock_addr(const struct msock *s);
unsigned dg_gen(int dg);

/* kernel peers */
struct ksock {
    int used, fd, kind; /* KS_* */
    uint16_t port;
    int conn, end;
};
enum { KS_LISTENER, KS_REFUSER, KS_UDP, KS_STREAM };
extern struct ksock ks[MAX_KSOCKS];
extern int k_listener, k_refuser, k_udp[2];
extern uint16_t closed_udp_port, closed_tcp_port;
void kernel_setup(void);
void kernel_step(void);
void kernel_teardown(void);
int kernel_open(void);
uint16_t fresh_port(void);
void port_setup(uint64_t seed, long base);
struct sockaddr_in lo(uint16_t port);

/* ---- call generators ---- */
void do_socket(void);
void do_bind(void);
void do_listen(void);
void do_accept(void);
void do_connect(void);
void do_close(void);
void do_setsockopt(void);
void do_getsockopt(void);
void do_getpeername(void);
void do_init_again(void);
void do_push(int to);
void do_pop(void);
void do_sgaalloc(void);
void do_sgafree(void);
void do_wait(void);
void do_timedwait(void);
void do_wait_any(void);
void do_wait_next_n(void);
void take_result(const demi_qresult_t *qr);
int close_sock(int s); /* demi_close on a model socket (used at the end too) */
void free_all_sgas(void);
int adopt_popped(demi_sgarray_t s, size_t len);
extern int g_draining;
int drain_all(void);   /* wait_next_n until no token is live */

#endif /* FUZZ_ABI_H */
