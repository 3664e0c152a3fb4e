/* wait_calls.c: demi_wait, demi_timedwait, demi_wait_any and
 * demi_wait_next_n with live, consumed and forged tokens, NULL pointers and
 * zero, short, NULL and malformed timeouts; and the checks on every result
 * they hand out (take_result). */
#include "fuzz.h"

#include <limits.h>

int g_draining;

/* ---- timeouts ---- */
enum { T_ZERO, T_SHORT, T_NULL, T_BAD };
static const struct timespec bad_ts[] = {{0, 1000000000L}, {0, -1}, {-1, 0}, {1, 2000000000L}};

/* NULL (wait forever), or the longest timespec there is, only where the
 * rules say the call returns anyway. T_NULL stands for both. */
static int pick_timeout(int null_ok, struct timespec *ts, const struct timespec **tp)
{
    unsigned r = (unsigned)rnd_below(100);
    if (r < 4) {
        *ts = bad_ts[rnd_below(4)];
        *tp = ts;
        return T_BAD;
    }
    if (r < 10 && null_ok) {
        *ts = (struct timespec){LONG_MAX, 999999999L};
        *tp = chance(50) ? NULL : ts;
        return T_NULL;
    }
    ts->tv_sec = 0;
    ts->tv_nsec = r < 15 ? (long)(1000 + rnd_below(1000000)) : 0;
    *tp = ts;
    return ts->tv_nsec ? T_SHORT : T_ZERO;
}

static const char *tkind(int k)
{
    return k == T_ZERO ? "{0,0}" : k == T_SHORT ? "short" : k == T_NULL ? "NULL or huge" : "malformed";
}

/* A token for a wait: live, consumed, forged or 0. */
static demi_qtoken_t pick_token(void)
{
    unsigned r = (unsigned)rnd_below(100);
    if (r < 80 && live_toks()) {
        for (int i = (int)rnd_below(MAX_TOKS);; i = (i + 1) % MAX_TOKS)
            if (toks[i].used)
                return toks[i].qt;
    }
    if (r < 90)
        return consumed_token();
    return forged_token();
}

/* ---- demi_wait / demi_timedwait ---- */
static void wait_one(int timed)
{
    demi_qtoken_t qt = pick_token();
    int t = tok_by_qt(qt);
    int must_done = t >= 0 && toks[t].closed;
    struct timespec ts;
    const struct timespec *tp;
    int tk = pick_timeout(t < 0 || must_done, &ts, &tp);
    if (timed && tp && tk != T_NULL) { /* an absolute deadline: in the past, or now + the short time */
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        if (tk == T_ZERO)
            ts = chance(50) ? (struct timespec){now.tv_sec - 10, 0} : (struct timespec){0, 0};
        else if (tk == T_SHORT) {
            ts.tv_sec = now.tv_sec + (now.tv_nsec + ts.tv_nsec) / 1000000000L;
            ts.tv_nsec = (now.tv_nsec + ts.tv_nsec) % 1000000000L;
        }
    }
    demi_qresult_t qr;
    canary_fill(&qr, sizeof qr);
    demi_qresult_t *out = chance(2) ? NULL : &qr;
    eset allowed;
    if (tk == T_BAD || !out)
        allowed = es(EINVAL, -1);
    else if (t < 0)
        allowed = es(EINVAL, -1);
    else
        allowed = (tk == T_NULL || must_done) ? es(0, -1) : es(0, ETIMEDOUT, -1);
    int call = timed ? C_TIMEDWAIT : C_WAIT;
    logf_call("%s(%s, %#llx%s, %s)", call_names[call], out ? "&qr" : "NULL", (unsigned long long)qt,
              t < 0 ? " (not live)" : must_done ? " (closed)" : "", tkind(tk));
    fig.calls++;
    int rc = timed ? demi_timedwait(out, qt, tp) : demi_wait(out, qt, tp);
    if (tk != T_BAD && out) /* every wait polls first, whatever its token */
        polled();
    check_rc(call, rc, allowed, t < 0 ? "token not live" : "live token");
    if (rc != 0) {
        if (!canary_intact(&qr, sizeof qr))
            violation("%s failed but wrote *qr_out", call_names[call]);
        return;
    }
    if (qr.qr_qt != qt)
        violation("%s(%#llx) returned the result of token %#llx", call_names[call], (unsigned long long)qt,
                  (unsigned long long)qr.qr_qt);
    take_result(&qr);
}

void do_wait(void)
{
    wait_one(0);
}

void do_timedwait(void)
{
    wait_one(1);
}

/* ---- demi_wait_any ---- */
void do_wait_any(void)
{
    demi_qtoken_t qts[9];
    int n = 1 + (int)rnd_below(8);
    for (int i = 0; i < n; i++)
        qts[i] = i > 0 && chance(10) ? qts[rnd_below((uint64_t)i)] : chance(75) ? pick_token() : forged_token();
    int first_dead = n, first_done = n;
    for (int i = n - 1; i >= 0; i--) {
        int t = tok_by_qt(qts[i]);
        if (t < 0)
            first_dead = i;
        else if (toks[t].closed)
            first_done = i;
    }
    static const int odd[] = {0, -1, INT_MIN};
    int num = chance(90) ? n : odd[rnd_below(3)];
    demi_qresult_t qr;
    canary_fill(&qr, sizeof qr);
    int off = -3;
    demi_qresult_t *qp = chance(2) ? NULL : &qr;
    int *op = chance(2) ? NULL : &off;
    const demi_qtoken_t *tp_ = chance(2) ? NULL : qts;
    struct timespec ts;
    const struct timespec *tp;
    int tk = pick_timeout(first_dead < n || first_done < n, &ts, &tp);
    int args_ok = qp && op && tp_ && num > 0 && tk != T_BAD;
    eset allowed = ES_NONE;
    if (!args_ok)
        allowed = es(EINVAL, -1);
    else {
        /* The lowest finished index wins; a dead token before any finished
         * one is refused; all pending means a timeout. */
        if (first_dead > 0)
            allowed = es_add(allowed, 0);
        if (first_dead < first_done)
            allowed = es_add(allowed, EINVAL);
        if (first_dead == n && first_done == n && tk != T_NULL)
            allowed = es_add(allowed, ETIMEDOUT);
    }
    logf_call("demi_wait_any(%s, %s, %s[%d], %d, %s) dead@%d done@%d", qp ? "&qr" : "NULL", op ? "&off" : "NULL",
              tp_ ? "qts" : "NULL", n, num, tkind(tk), first_dead, first_done);
    fig.calls++;
    int rc = demi_wait_any(qp, op, tp_, num, tp);
    if (args_ok)
        polled();
    check_rc(C_WAIT_ANY, rc, allowed, "wait_any");
    if (rc != 0) {
        if (!canary_intact(&qr, sizeof qr) || off != -3)
            violation("demi_wait_any failed but wrote *qr_out or *ready_offset");
        return;
    }
    logf_more(" off=%d", off);
    if (off < 0 || off >= n) {
        violation("demi_wait_any returned offset %d of %d tokens", off, n);
        return;
    }
    if (off >= first_dead || off > first_done)
        violation("demi_wait_any returned index %d, but index %d was %s", off, off >= first_dead ? first_dead : first_done,
                  off >= first_dead ? "not a live token (EINVAL due)" : "already finished (lowest index wins)");
    for (int j = 0; j < off; j++)
        if (qts[j] == qts[off])
            violation("demi_wait_any returned index %d for a token also at the lower index %d", off, j);
    if (qr.qr_qt != qts[off])
        violation("demi_wait_any: index %d holds token %#llx, the result is of %#llx", off,
                  (unsigned long long)qts[off], (unsigned long long)qr.qr_qt);
    take_result(&qr);
}

/* ---- demi_wait_next_n ---- */
/* demi_wait_next_n hands results out in the order the operations
 * finished, and one descriptor's pushes (and its pops) finish in the order
 * they were issued: so among the results it returns, those of one
 * descriptor and kind come in issue order. */
static void check_order(const demi_qresult_t *qr)
{
    int t = tok_by_qt(qr->qr_qt);
    if (t < 0 || (toks[t].kind != OPK_PUSH && toks[t].kind != OPK_POP))
        return;
    struct msock *m = &socks[toks[t].sock];
    if (!m->used || m->gen != toks[t].sock_gen)
        return;
    uint64_t *last = &m->next_n_seq[toks[t].kind];
    if (toks[t].seq < *last)
        violation("demi_wait_next_n returned %s #%llu of qd %d after #%llu: they finish in the order issued",
                  toks[t].kind == OPK_PUSH ? "push" : "pop", (unsigned long long)toks[t].seq, m->qd,
                  (unsigned long long)*last);
    *last = toks[t].seq;
}

static int wait_next(int num, const struct timespec *tp, int tk, int args_ok, demi_qresult_t *qp, int *np)
{
    demi_qresult_t *qrs = qp;
    /* Every result belongs to a token the model knows: with none live,
     * nothing can be waiting. */
    eset allowed = !args_ok                                 ? es(EINVAL, -1)
                 : live_toks() == 0                         ? es(ETIMEDOUT, -1)
                 : (must_be_done_exists() || tk == T_NULL) ? es(0, -1)
                                                           : es(0, ETIMEDOUT, -1);
    logf_call("demi_wait_next_n(%s, %d, %s, %s) live=%d", qp ? "qrs" : "NULL", num, np ? "&n" : "NULL", tkind(tk),
              live_toks());
    fig.calls++;
    int n = -3;
    int rc = demi_wait_next_n(qp, num, np ? &n : NULL, tp);
    if (args_ok)
        polled();
    check_rc(C_WAIT_NEXT_N, rc, allowed, "wait_next_n");
    if (np)
        *np = n;
    if (rc != 0) {
        if (qp && !canary_intact(qp, sizeof *qp * 9))
            violation("demi_wait_next_n failed but wrote qrs");
        if (n != -3)
            violation("demi_wait_next_n failed but wrote *num_out");
        return rc;
    }
    logf_more(" n=%d", n);
    if (n < 1 || n > num) {
        violation("demi_wait_next_n returned %d results for room of %d", n, num);
        return rc;
    }
    if (!canary_intact(qrs + n, sizeof *qrs * (size_t)(9 - n)))
        violation("demi_wait_next_n wrote past the %d results it reported", n);
    for (int i = 0; i < n; i++) {
        demi_qresult_t r = qrs[i];
        check_order(&r);
        take_result(&r);
    }
    return rc;
}

void do_wait_next_n(void)
{
    demi_qresult_t qrs[9];
    canary_fill(qrs, sizeof qrs);
    static const int odd[] = {0, -1, INT_MIN};
    int num = chance(92) ? 1 + (int)rnd_below(8) : odd[rnd_below(3)];
    demi_qresult_t *qp = chance(2) ? NULL : qrs;
    int nn, with_n = !chance(2);
    struct timespec ts;
    const struct timespec *tp;
    int tk = pick_timeout(must_be_done_exists(), &ts, &tp);
    int args_ok = qp && with_n && num > 0 && tk != T_BAD;
    wait_next(num, tp, tk, args_ok, qp, with_n ? &nn : NULL);
}

/* Drains every live token at the end: all sockets are closed by then, so
 * every operation must be finished. */
int drain_all(void)
{
    g_draining = 1;
    const struct timespec zero = {0, 0};
    for (int round = 0; round < 10000 && live_toks() > 0; round++) {
        demi_qresult_t qrs[9];
        canary_fill(qrs, sizeof qrs);
        int n;
        if (wait_next(8, &zero, T_ZERO, 1, qrs, &n) != 0)
            break;
        for (int s = 0; s < MAX_SOCKS; s++) /* sockets the accepts just handed out */
            if (socks[s].used)
                close_sock(s);
    }
    if (live_toks() > 0)
        violation("%d operations never finished although every socket is closed", live_toks());
    demi_qresult_t qrs[9];
    canary_fill(qrs, sizeof qrs);
    int n;
    wait_next(8, &zero, T_ZERO, 1, qrs, &n); /* nothing may be left */
    return live_toks();
}
