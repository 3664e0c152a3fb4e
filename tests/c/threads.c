/* threads.c: the C ABI under several threads (one demi_init per process).
 * Each thread ping-pongs checksummed datagrams between its own two UDP
 * sockets and its own TCP pair; the threads' descriptors belong to
 * different engines. Then the main thread uses a descriptor, a pending
 * token and a popped buffer of a thread that has exited. */
#include "common.h"

#include <pthread.h>

#define THREADS 3
#define ROUNDS 300
#define MSG 64

static pthread_mutex_t ports = PTHREAD_MUTEX_INITIALIZER;
/* The workers hold their sockets at the same time (each then has an engine of its own). */
static pthread_barrier_t all_open;

/* The engine a descriptor belongs to (bits 24-30; see demi_init(3)). */
static int engine_of(int qd)
{
    return (qd >> 24) & 0x7f;
}

/* bind_free_port keeps its next port in a static: one thread at a time. */
static struct sockaddr_in bind_port(int qd)
{
    pthread_mutex_lock(&ports);
    struct sockaddr_in a = BIND_FREE_PORT(qd);
    pthread_mutex_unlock(&ports);
    return a;
}

/* Fills a message that names its thread and round, with a checksum. */
static void stamp(uint8_t *m, unsigned t, unsigned r)
{
    uint32_t sum = 0;
    for (unsigned i = 0; i < MSG - 4; i++) {
        m[i] = (uint8_t)(t * 31u + r * 7u + i);
        sum += m[i];
    }
    memcpy(m + MSG - 4, &sum, 4);
}

static void check_msg(const demi_sgarray_t *sga, unsigned t, unsigned r)
{
    uint8_t want[MSG];
    stamp(want, t, r);
    CHECK_EQ(sga->sga_segs[0].sgaseg_len, MSG, "popped length");
    CHECK(memcmp(sga->sga_segs[0].sgaseg_buf, want, MSG) == 0, "popped bytes are the pushed ones");
}

static void push_msg(int qd, unsigned t, unsigned r)
{
    demi_sgarray_t sga = demi_sgaalloc(MSG);
    CHECK(sga.sga_segs[0].sgaseg_buf != NULL, "demi_sgaalloc");
    stamp(sga.sga_segs[0].sgaseg_buf, t, r);
    demi_qtoken_t qt;
    CHECK_RC(demi_push(&qt, qd, &sga), 0);
    WAIT_OPC(qt, DEMI_OPC_PUSH);
    CHECK_RC(demi_sgafree(&sga), 0);
}

/* Pops exactly MSG bytes from a stream (a pop may return part of them). */
static void pop_stream(int qd, unsigned t, unsigned r)
{
    uint8_t got[MSG];
    size_t have = 0;
    while (have < MSG) {
        demi_qtoken_t qt;
        CHECK_RC(demi_pop(&qt, qd), 0);
        demi_qresult_t qr = WAIT_OPC(qt, DEMI_OPC_POP);
        uint32_t n = qr.qr_value.sga.sga_segs[0].sgaseg_len;
        CHECK(n > 0 && have + n <= MSG, "stream pop within the message");
        memcpy(got + have, qr.qr_value.sga.sga_segs[0].sgaseg_buf, n);
        have += n;
        CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
    }
    uint8_t want[MSG];
    stamp(want, t, r);
    CHECK(memcmp(got, want, MSG) == 0, "stream bytes are the pushed ones");
}

struct worker {
    unsigned index;
    int udp_qd; /* one of the thread's descriptors, for the main thread to compare */
};

static void *work(void *arg)
{
    struct worker *w = arg;
    unsigned t = w->index;
    int a, b;
    CHECK_RC(demi_socket(&a, AF_INET, SOCK_DGRAM, 0), 0);
    CHECK_RC(demi_socket(&b, AF_INET, SOCK_DGRAM, 0), 0);
    struct sockaddr_in aa = bind_port(a), ba = bind_port(b);
    demi_qtoken_t qt;
    CHECK_RC(demi_connect(&qt, a, SA(&ba), sizeof ba), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    CHECK_RC(demi_connect(&qt, b, SA(&aa), sizeof aa), 0);
    WAIT_OPC(qt, DEMI_OPC_CONNECT);
    int rc = pthread_barrier_wait(&all_open);
    CHECK(rc == 0 || rc == PTHREAD_BARRIER_SERIAL_THREAD, "pthread_barrier_wait");
    int l, c, s;
    pthread_mutex_lock(&ports);
    tcp_pair_at(__FILE__, __LINE__, &l, &c, &s);
    pthread_mutex_unlock(&ports);
    for (unsigned r = 0; r < ROUNDS; r++) {
        push_msg(a, t, r);
        CHECK_RC(demi_pop(&qt, b), 0);
        demi_qresult_t qr = WAIT_OPC(qt, DEMI_OPC_POP);
        check_msg(&qr.qr_value.sga, t, r);
        CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
        push_msg(c, t, r);
        pop_stream(s, t, r);
    }
    CHECK_RC(demi_close(b), 0);
    CHECK_RC(demi_close(c), 0);
    CHECK_RC(demi_close(s), 0);
    CHECK_RC(demi_close(l), 0);
    w->udp_qd = a;
    return NULL;
}

/* A thread that opens a socket, leaves a pop pending and exits. */
struct leaver {
    int qd;
    struct sockaddr_in at;
    demi_qtoken_t pop;
};

static void *leave(void *arg)
{
    struct leaver *lv = arg;
    CHECK_RC(demi_socket(&lv->qd, AF_INET, SOCK_DGRAM, 0), 0);
    lv->at = bind_port(lv->qd);
    CHECK_RC(demi_pop(&lv->pop, lv->qd), 0);
    return NULL;
}

int main(void)
{
    CHECK_RC(demi_init(NULL), 0);
    int mine;
    CHECK_RC(demi_socket(&mine, AF_INET, SOCK_DGRAM, 0), 0);

    pthread_t th[THREADS];
    struct worker w[THREADS];
    CHECK_EQ(pthread_barrier_init(&all_open, NULL, THREADS), 0, "pthread_barrier_init");
    for (unsigned i = 0; i < THREADS; i++) {
        w[i].index = i;
        CHECK_EQ(pthread_create(&th[i], NULL, work, &w[i]), 0, "pthread_create");
    }
    for (unsigned i = 0; i < THREADS; i++)
        CHECK_EQ(pthread_join(th[i], NULL), 0, "pthread_join");
    /* Threads that held sockets at once had engines of their own: the
     * engine numbers in their descriptors differ from each other's and from
     * the main thread's (0). */
    CHECK_EQ(engine_of(mine), 0, "the main thread's descriptors are engine 0's");
    for (unsigned i = 0; i < THREADS; i++) {
        CHECK(engine_of(w[i].udp_qd) != 0, "a worker's descriptor is not the main thread's engine's");
        for (unsigned j = 0; j < i; j++)
            CHECK(engine_of(w[i].udp_qd) != engine_of(w[j].udp_qd), "two workers' engines differ");
    }
    pthread_barrier_destroy(&all_open);
    /* The workers' remaining sockets are usable (and closable) from here. */
    for (unsigned i = 0; i < THREADS; i++)
        CHECK_RC(demi_close(w[i].udp_qd), 0);
    for (unsigned i = 0; i < THREADS; i++)
        CHECK_RC(demi_close(w[i].udp_qd), EBADF);

    /* A pending pop of a thread that exited completes for the main thread,
     * and its buffer is freed here. */
    struct leaver lv;
    pthread_t lt;
    CHECK_EQ(pthread_create(&lt, NULL, leave, &lv), 0, "pthread_create");
    CHECK_EQ(pthread_join(lt, NULL), 0, "pthread_join");
    int ks = socket(AF_INET, SOCK_DGRAM, 0);
    CHECK(ks >= 0, "kernel socket");
    CHECK(sendto(ks, "hello", 5, 0, SA(&lv.at), sizeof lv.at) == 5, "kernel sendto");
    close(ks);
    demi_qresult_t qr = WAIT_OPC(lv.pop, DEMI_OPC_POP);
    CHECK_EQ(qr.qr_qd, lv.qd, "the result names the thread's descriptor");
    CHECK(qr.qr_value.sga.sga_segs[0].sgaseg_len == 5 && memcmp(qr.qr_value.sga.sga_segs[0].sgaseg_buf, "hello", 5) == 0,
          "popped the kernel's datagram");
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), 0);
    CHECK_RC(demi_sgafree(&qr.qr_value.sga), EINVAL);
    CHECK_RC(demi_close(lv.qd), 0);
    CHECK_RC(demi_close(mine), 0);
    printf("threads: %d threads x %d rounds verified, cross-thread use verified\n", THREADS, ROUNDS);
    return 0;
}
