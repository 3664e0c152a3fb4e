/* results.c: checks one finished operation handed out by a demi_wait*:
 * it names a live token (each completes once), its descriptor and opcode
 * fit the operation, a failure carries an errno its man page lists and the
 * model allows (ECANCELED only after a close, resets only after the peer
 * went away...), popped data is what was pushed, accepted connections are
 * ones we made. Then the model moves on. */
#include "fuzz.h"

static const int want_opc[] = {DEMI_OPC_PUSH, DEMI_OPC_POP, DEMI_OPC_ACCEPT, DEMI_OPC_CONNECT};
static const int op_call[] = {OP_PUSH, OP_POP, OP_ACCEPT, OP_CONNECT};

/* The model's socket the token was issued on, if it is still open. */
static struct msock *tok_sock(const struct mtok *k)
{
    struct msock *m = &socks[k->sock];
    return m->used && m->gen == k->sock_gen ? m : NULL;
}

static struct conn *tok_conn(const struct mtok *k)
{
    if (k->conn < 0 || !conns[k->conn].used || conns[k->conn].gen != k->conn_gen)
        return NULL;
    return &conns[k->conn];
}

static void bad_failure(const struct mtok *k, int ret, const char *why)
{
    violation("%s (token %#llx, qd %d) failed with %s: %s", call_names[op_call[k->kind]], (unsigned long long)k->qt,
              k->qd, ename(ret), why);
}

/* A finished push no longer holds its buffer; a failed one sent nothing. */
static void push_release(struct mtok *k, int failed, int ret)
{
    if (k->sga >= 0 && sgas[k->sga].used && sgas[k->sga].gen == k->sga_gen)
        sgas[k->sga].inflight--;
    if (!failed)
        return;
    if (k->dg == -2)
        violation("a datagram arrived, yet its push (token %#llx) failed with %s", (unsigned long long)k->qt,
                  ename(ret));
    else if (k->dg >= 0)
        dg_drop(k->dg, k->dg_gen);
}

static void push_done(struct mtok *k, int failed, int ret)
{
    push_release(k, failed, ret);
    struct conn *cn = tok_conn(k);
    struct msock *m = tok_sock(k);
    if (cn) { /* after a reset, every pending and later push fails with it */
        struct cend *e = &cn->e[k->dir];
        if (e->dead && k->seq > e->dead_after[OPK_PUSH] && !(failed && (ret == e->dead || ret == ECANCELED)))
            violation("push #%llu on qd %d %s after the connection died with %s (man demi_push: every pending and "
                      "later push fails the same way)",
                      (unsigned long long)k->seq, k->qd, failed ? ename(ret) : "succeeded", ename(e->dead));
        if (failed && fatal(ret))
            end_died(e, ret, k->seq, m ? m->seq[OPK_POP] : UINT64_MAX);
    }
    if (failed && ret == ECONNREFUSED) {
        /* The kernel reports an earlier datagram's ICMP error on the next
         * send of a connected datagram socket. */
        if (!(!k->stream && ((m && m->refusable) || k->closed)))
            bad_failure(k, ret, "nothing unreachable was sent to");
        return;
    }
    if (failed) {
        int peer_gone = cn && (cn->maybe_rst || cn->e[1 - k->dir].closed);
        if (ret == ECANCELED && !k->closed)
            bad_failure(k, ret, "its descriptor was never closed");
        else if ((ret == EPIPE || ret == ECONNRESET) && !peer_gone)
            bad_failure(k, ret, "the peer is still there");
        else if (ret == EMSGSIZE && !k->big)
            bad_failure(k, ret, "the message is not too large");
        else if (k->big && ret != EMSGSIZE && !(ret == ECANCELED && k->closed))
            bad_failure(k, ret, "a datagram over 65507 bytes must fail with EMSGSIZE");
        else if (ret != ECANCELED && ret != EPIPE && ret != ECONNRESET && ret != EMSGSIZE)
            bad_failure(k, ret, "nothing here can make it fail that way");
        return;
    }
    if (k->big)
        violation("a %llu-byte datagram push succeeded (more than 65507 bytes)", (unsigned long long)k->len);
    if (cn && cn->d[k->dir].confirmed < k->off + k->len)
        cn->d[k->dir].confirmed = k->off + k->len; /* pushes finish in order */
}

static void stream_pop(struct mtok *k, const demi_sgarray_t *sga, uint32_t len, int state, int ret)
{
    struct conn *cn = tok_conn(k);
    if (sga) {
        struct sockaddr_in a = sga->sga_addr;
        if (a.sin_family || a.sin_port || a.sin_addr.s_addr)
            violation("a stream pop's sga_addr is not zeroed");
        if (len > 65536)
            violation("a stream pop returned %u bytes (catnap returns at most 64 KiB)", len);
    }
    struct pend *p = cn ? pq_find(k->conn, k->dir, k->qt) : NULL;
    if (!p)
        return;
    p->state = state;
    p->ret = ret;
    if (state == PQ_DATA) {
        p->data = malloc(len);
        if (!p->data) {
            perror("fuzz_abi: malloc");
            exit(2);
        }
        memcpy(p->data, sga->sga_segs[0].sgaseg_buf, len);
        p->len = len;
    }
    struct msock *m = tok_sock(k);
    pq_drain(k->conn, k->dir, k->qd, m ? m->seq[OPK_PUSH] : UINT64_MAX);
}

static void pop_done(struct mtok *k, const demi_qresult_t *qr, int failed, int ret)
{
    struct msock *m = tok_sock(k);
    if (m)
        m->pops--;
    int stream = k->stream;
    if (failed) {
        struct conn *cn = tok_conn(k);
        if (ret == ECANCELED && !k->closed)
            bad_failure(k, ret, "its descriptor was never closed");
        else if (ret == ECONNRESET && !(stream && cn && cn->maybe_rst))
            bad_failure(k, ret, "no reset can have happened");
        else if (ret == ECONNREFUSED && !(!stream && ((m && m->refusable) || k->closed)))
            bad_failure(k, ret, "nothing unreachable was sent to");
        else if (ret == ENOMEM)
            bad_failure(k, ret, "the fuzzer holds far fewer buffers than would run out");
        else if (ret != ECANCELED && ret != ECONNRESET && ret != ECONNREFUSED)
            bad_failure(k, ret, "loopback does not time out or become unreachable");
        if (stream)
            stream_pop(k, NULL, 0, PQ_FAILED, ret);
        return;
    }
    demi_sgarray_t sga = qr->qr_value.sga;
    uint32_t len = sga.sga_segs[0].sgaseg_len;
    if (sga.sga_numsegs != 1 || (len > 0 && sga.sga_segs[0].sgaseg_buf == NULL)) {
        violation("a pop returned a malformed sga (numsegs %u, len %u)", sga.sga_numsegs, len);
        return;
    }
    logf_more(" [%u bytes]", len);
    see(OP_POP, len == 0 && stream ? OUT_EOF : stream ? 0 : OUT_DGRAM);
    if (stream) {
        stream_pop(k, &sga, len, len ? PQ_DATA : PQ_EOF, 0);
    } else {
        struct sockaddr_in from = sga.sga_addr;
        if (len > 65507)
            violation("a datagram pop returned %u bytes", len);
        char who[64];
        snprintf(who, sizeof who, "pop on qd %d", k->qd);
        dg_receive(m ? m->port : k->rport, sga.sga_segs[0].sgaseg_buf, len, &from, who);
    }
    adopt_popped(sga, len);
}

static void accept_done(struct mtok *k, const demi_qresult_t *qr, int failed, int ret)
{
    if (failed) {
        if (ret != ECANCELED || !k->closed)
            bad_failure(k, ret, ret == ECANCELED ? "the listener was never closed" : "no resource ran out");
        return;
    }
    demi_accept_result_t ar = qr->qr_value.ares;
    struct sockaddr_in a = ar.addr;
    uint16_t port = ntohs(a.sin_port);
    logf_more(" [qd %d from port %u]", ar.qd, port);
    if (ar.qd <= 0 || sock_by_qd(ar.qd) >= 0 || a.sin_family != AF_INET) {
        violation("an accept handed out qd %d (family %d), which is invalid or still open", ar.qd, a.sin_family);
        return;
    }
    if (ar.qd > g_max_qd)
        g_max_qd = ar.qd;
    int c = -1, unknown = -1, n_unknown = 0;
    for (int i = 0; i < MAX_CONNS; i++) {
        struct conn *cn = &conns[i];
        if (!cn->used || cn->lkernel || cn->e[1].kind != END_NONE || cn->lsock != k->sock ||
            cn->lgen != (int)k->sock_gen)
            continue;
        if (cn->e[0].port == port)
            c = i;
        else if (cn->e[0].port == 0)
            unknown = i, n_unknown++;
    }
    if (c < 0 && n_unknown == 1)
        c = unknown;
    int s = sock_new(ar.qd, 1);
    if (c < 0 || s < 0) {
        if (c < 0) {
            for (int i = 0; i < MAX_CONNS; i++) /* what the model expected there */
                if (conns[i].used && !conns[i].lkernel && conns[i].lsock == k->sock)
                    fprintf(stderr, "  conn#%d.%u: lgen %d (listener gen %u), client port %u %s, server end %d\n", i,
                            conns[i].gen, conns[i].lgen, k->sock_gen, conns[i].e[0].port,
                            conns[i].e[0].closed ? "closed" : "open", conns[i].e[1].kind);
            violation("qd %d accepted a connection from port %u that no connect made", k->qd, port);
        }
        if (demi_close(ar.qd) != 0)
            violation("closing accepted qd %d failed", ar.qd);
        if (s >= 0)
            socks[s].used = 0;
        if (c >= 0) {
            end_closed(c, 1, 0);
            conns[c].maybe_rst = 1; /* it may have inherited SO_LINGER {1, 0} */
        }
        return;
    }
    struct conn *cn = &conns[c];
    if (cn->e[0].port == 0) {
        cn->e[0].port = port;
        struct msock *cl = cn->e[0].kind == END_DEMI ? &socks[cn->e[0].sock] : NULL;
        if (cl && cl->used && cl->gen == cn->e[0].gen)
            cl->port = port;
    }
    struct msock *m = &socks[s];
    /* Linux copies the listener's options to the connections it accepts. */
    const struct msock *l = &socks[k->sock];
    int l_alive = l->used && l->gen == k->sock_gen;
    m->reuse = l_alive && !l->reuse_ever ? 0 : -1;
    m->linger0 = l_alive && !l->linger_ever ? 0 : -1;
    m->phases = PH_CONNECTED;
    m->has_peer = 1;
    m->peer = a;
    sock_set_conn(m, c, 1);
    cn->e[1] = (struct cend){.kind = END_DEMI, .sock = s, .gen = m->gen};
    logf_more(" conn#%d", c);
    if (g_draining)
        close_sock(s);
}

static void connect_done(struct mtok *k, int failed, int ret)
{
    struct msock *m = tok_sock(k);
    int current = m && m->ctok == (int)(k - toks);
    struct conn *cn = tok_conn(k);
    if (failed) {
        if (k->must_ok)
            bad_failure(k, ret, "an earlier answer showed this connect had succeeded");
        else if (ret == ECANCELED)
            k->closed ? (void)0 : bad_failure(k, ret, "its descriptor was never closed");
        else if (k->abort)
            ret == ECONNABORTED ? (void)0 : bad_failure(k, ret, "after a failed connect the next one ends ECONNABORTED");
        else if (k->target == TGT_DGRAM)
            bad_failure(k, ret, "a datagram connect only records the peer");
        else if (ret == ECONNRESET) /* established, then reset before the libOS looked */
            k->target == TGT_LISTENER && cn && (cn->maybe_rst || cn->e[1].closed)
                ? (void)0
                : bad_failure(k, ret, "the connection cannot have been reset");
        else if (ret != ECONNREFUSED && !(k->target == TGT_LISTENER && ret == ETIMEDOUT))
            bad_failure(k, ret, "the target refuses (ECONNREFUSED) or listens");
        if (current) {
            m->phases = PH_IDLE;
            m->ctok = -1;
            m->abort_next = ret != ECONNABORTED && ret != ECANCELED;
            sock_set_conn(m, -1, -1);
        }
        if (cn && ret != ECANCELED && cn->e[1].kind == END_NONE)
            conn_free(k->conn, "its connect failed"); /* no connection came of it */
        return;
    }
    if (k->must_fail)
        violation("connect token %#llx succeeded, but an earlier answer showed it had failed",
                  (unsigned long long)k->qt);
    if (k->abort || (k->target != TGT_LISTENER && k->target != TGT_DGRAM))
        violation("connect token %#llx succeeded to a target that %s", (unsigned long long)k->qt,
                  k->abort ? "must abort (second connect after a failure)" : "refuses connections");
    if (current && m->stream) {
        m->phases = PH_CONNECTED;
        m->has_peer = 1;
        m->ctok = -1;
    }
}

void take_result(const demi_qresult_t *qr)
{
    int t = tok_by_qt(qr->qr_qt);
    logf_more(" -> {qt %#llx qd %d opc %d ret %lld}", (unsigned long long)qr->qr_qt, qr->qr_qd, qr->qr_opcode,
              (long long)qr->qr_ret);
    if (t < 0) {
        violation("a result for token %#llx, which is not live (consumed, forged or never issued)",
                  (unsigned long long)qr->qr_qt);
        return;
    }
    struct mtok *k = &toks[t];
    if (qr->qr_qd != k->qd)
        violation("the result of token %#llx names qd %d; the operation ran on qd %d", (unsigned long long)k->qt,
                  qr->qr_qd, k->qd);
    int failed = qr->qr_opcode == DEMI_OPC_FAILED;
    int ret = (int)qr->qr_ret;
    if (!failed && (int)qr->qr_opcode != want_opc[k->kind]) {
        violation("%s finished with opcode %d", call_names[op_call[k->kind]], qr->qr_opcode);
        failed = -1;
    } else if (!failed && qr->qr_ret != 0) {
        violation("%s succeeded with qr_ret %lld", call_names[op_call[k->kind]], (long long)qr->qr_ret);
    } else if (failed && (qr->qr_ret <= 0 || !es_has(doc_errs[op_call[k->kind]], ret))) {
        violation("%s failed with qr_ret %lld (%s), which its man page does not list", call_names[op_call[k->kind]],
                  (long long)qr->qr_ret, ename(ret));
        failed = -1;
    }
    fig.cancels_checked += k->must_cancel;
    if (k->must_cancel && !(failed == 1 && ret == ECANCELED))
        violation("%s (token %#llx, qd %d) could not finish before its qd was closed, yet it ended %s, not "
                  "ECANCELED",
                  call_names[op_call[k->kind]], (unsigned long long)k->qt, k->qd, failed ? ename(ret) : "successfully");
    if (failed >= 0) {
        if (failed || k->kind != OPK_POP)
            see(op_call[k->kind], failed ? ret : 0);
        switch (k->kind) {
        case OPK_PUSH: push_done(k, failed, ret); break;
        case OPK_POP: pop_done(k, qr, failed, ret); break;
        case OPK_ACCEPT: accept_done(k, qr, failed, ret); break;
        default: connect_done(k, failed, ret); break;
        }
    }
    int c = k->conn;
    tok_consumed(t);
    if (c >= 0)
        conn_gc(c);
}
