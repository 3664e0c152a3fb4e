/* fuzz_abi: a seeded, reproducible sequence fuzzer for demi's C ABI.
 *
 *   fuzz_abi [--seed N] [--calls N] [--keep-going] [--strict] [--trace] [--table] [--port-base N]
 *   (or FUZZ_SEED / FUZZ_CALLS in the environment)
 *
 * A run: a few dozen calls before demi_init (EPERM or EINVAL, out-params
 * untouched), demi_init with a bad environment (EINVAL, retried), then
 * --calls calls chosen by a splitmix64 PRNG seeded with --seed, mixed with
 * steps of plain kernel sockets that talk to demi's over loopback. At the
 * end every socket is closed, every operation must finish, every buffer is
 * freed, the library must know no descriptor, and the process's descriptor
 * count must be back to what it was right after demi_init.
 *
 * The decisions depend only on the seed and on the answers the library and
 * kernel give, so a seed replays the same calls as long as they answer the
 * same. Ports are the seed's own (a locked window of the range, skipping
 * ports the kernel still holds), each step draws from its own PRNG stream,
 * and no decision uses the clock. What the kernel's timing decides can still
 * differ from run to run (how many bytes a stream pop finds, whether a
 * zero-timeout wait sees a completion), and from there a replay drifts. The
 * "trace" hash covers every (call, answer) in order: equal hashes, same run.
 * --trace prints every call. --port-base N picks another port window.
 *
 * On a violation: the seed, the call number, what rule broke and the last
 * calls go to stderr, and the exit status is 1 (--keep-going counts and
 * continues). A call that does not return in 20 s is a hang: exit 3. */
#include "fuzz.h"

#include <dirent.h>
#include <limits.h>
#include <pthread.h>
#include <unistd.h>

#define WATCHDOG_S 20

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d) {
        perror("fuzz_abi: /proc/self/fd");
        exit(2);
    }
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own descriptor */
}

/* What each descriptor is, for a report on a descriptor count gone wrong. */
static void list_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], target[128];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, target, sizeof target - 1);
        target[n > 0 ? n : 0] = 0;
        fprintf(stderr, "  fd %s -> %s\n", e->d_name, target);
    }
    closedir(d);
}

static void *watchdog(void *arg)
{
    (void)arg;
    uint64_t last = 0;
    int still = 0;
    for (;;) {
        sleep(1);
        uint64_t now = __atomic_load_n(&g_beat, __ATOMIC_RELAXED);
        still = now == last ? still + 1 : 0;
        last = now;
        if (still >= WATCHDOG_S) {
            dprintf(2, "HANG (seed %llu, call #%llu): a call did not return in %d s\n", (unsigned long long)g_seed,
                    (unsigned long long)g_step, WATCHDOG_S);
            dump_ring(2);
            _exit(3);
        }
    }
    return NULL;
}

/* ---- before demi_init: every call fails with EPERM (or EINVAL for a bad
 * argument, see the brief's note (a)) and writes nothing ---- */
static void pre_init_calls_n(int n)
{
    const eset pe = es(EPERM, EINVAL, -1);
    for (int i = 0; i < n; i++) {
        g_step++;
        static const int qds[] = {1, 0, -1, 5, INT_MAX};
        int qd = qds[rnd_below(5)], oq = -7, iv = 1;
        demi_qtoken_t qt = 77;
        struct sockaddr_in a = lo(9);
        socklen_t len = sizeof a;
        char byte = 'x';
        demi_sgarray_t sga;
        memset(&sga, 0, sizeof sga);
        sga.sga_numsegs = 1;
        sga.sga_segs[0].sgaseg_buf = &byte;
        sga.sga_segs[0].sgaseg_len = 1;
        demi_qresult_t qr[2];
        canary_fill(qr, sizeof qr);
        int off = -3;
        demi_qtoken_t qts[2] = {1, 2};
        static const struct timespec tss[] = {{0, 0}, {0, 1000}, {-1, 0}};
        const struct timespec *tp = chance(25) ? NULL : &tss[rnd_below(3)];
        int np = chance(20); /* a NULL pointer argument */
        int c = (int)rnd_below(18), rc;
        logf_call("before init: %s(qd %d%s)", call_names[c + 1 < N_CALLS ? c + 1 : 0], qd, np ? ", NULL" : "");
        fig.calls++;
        switch (c) {
        case 0: rc = demi_socket(np ? NULL : &oq, AF_INET, SOCK_STREAM, 0); break;
        case 1: rc = demi_bind(qd, np ? NULL : (struct sockaddr *)&a, sizeof a); break;
        case 2: rc = demi_listen(qd, 8); break;
        case 3: rc = demi_accept(np ? NULL : &qt, qd); break;
        case 4: rc = demi_connect(np ? NULL : &qt, qd, (struct sockaddr *)&a, sizeof a); break;
        case 5: rc = demi_close(qd); break;
        case 6: rc = demi_push(&qt, qd, np ? NULL : &sga); break;
        case 7: rc = demi_pushto(&qt, qd, &sga, np ? NULL : (struct sockaddr *)&a, sizeof a); break;
        case 8: rc = demi_pop(np ? NULL : &qt, qd); break;
        case 9: rc = demi_setsockopt(qd, SOL_SOCKET, SO_REUSEADDR, np ? NULL : &iv, sizeof iv); break;
        case 10: rc = demi_getsockopt(qd, SOL_SOCKET, SO_REUSEADDR, np ? NULL : &iv, &len); break;
        case 11: rc = demi_getpeername(qd, np ? NULL : (struct sockaddr *)&a, &len); break;
        case 12: {
            demi_sgarray_t s = demi_sgaalloc(1 + rnd_below(100));
            rc = -1; /* no errno: a null sga is the answer */
            if (s.sga_buf || s.sga_numsegs || s.sga_segs[0].sgaseg_buf)
                violation("demi_sgaalloc before demi_init returned a buffer");
            break;
        }
        case 13: rc = demi_sgafree(np ? NULL : &sga); break;
        case 14: rc = demi_wait(np ? NULL : qr, qts[0], tp); break;
        case 15: rc = demi_timedwait(np ? NULL : qr, qts[0], tp); break;
        case 16: rc = demi_wait_any(np ? NULL : qr, &off, qts, 2, tp); break;
        default: rc = demi_wait_next_n(np ? NULL : qr, 2, &off, tp); break;
        }
        if (rc >= 0)
            check_rc(c + 1, rc, pe, "before demi_init");
        if (rc == EINVAL) /* the brief's note (a): both are accepted while that is settled */
            finding(F_PREINIT_EINVAL);
        if (oq != -7 || qt != 77 || off != -3 || iv != 1 || byte != 'x' || len != sizeof a ||
            !canary_intact(qr, sizeof qr))
            violation("a call before demi_init wrote an out-parameter or touched memory");
    }
}

static void init_sequence(void)
{
    const char *libos = getenv("LIBOS");
    char saved[64] = "";
    if (libos)
        snprintf(saved, sizeof saved, "%s", libos);
    /* A failed demi_init leaves the process uninitialised: retry works. */
    setenv("LIBOS", "no-such-libos", 1);
    logf_call("demi_init(NULL) with LIBOS=no-such-libos");
    fig.calls++;
    check_rc(C_INIT, demi_init(NULL), es(EINVAL, -1), "unknown libOS");
    if (libos)
        setenv("LIBOS", saved, 1);
    else
        unsetenv("LIBOS");
    setenv("DEMI_SPIN_US", "fifty", 1);
    logf_call("demi_init(NULL) with DEMI_SPIN_US=fifty");
    fig.calls++;
    check_rc(C_INIT, demi_init(NULL), es(EINVAL, -1), "malformed DEMI_SPIN_US");
    unsetenv("DEMI_SPIN_US");
    static char *argv0[] = {(char *)"fuzz_abi", NULL};
    struct demi_args args = {.argc = 1, .argv = argv0, .callback = NULL};
    logf_call("demi_init(&args)");
    fig.calls++;
    if (check_rc(C_INIT, demi_init(&args), es(0, -1), "first good demi_init") != 0) {
        fprintf(stderr, "fuzz_abi: demi_init failed; nothing more to test\n");
        exit(1);
    }
    g_inited = 1;
    do_init_again();
}

static int eventfds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        char path[300], target[64];
        snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof target - 1);
        target[len > 0 ? len : 0] = 0;
        n += strstr(target, "eventfd") != NULL;
    }
    if (d)
        closedir(d);
    return n;
}

/* The library keeps a per-thread eventfd, made the first time a wait
 * sleeps (after its spin time): wait until it exists, so the descriptor
 * baseline includes it. On a busy host a short wait may time out while
 * still spinning, hence the loop. */
static void warm_up(void)
{
    int qd, before = eventfds();
    demi_qtoken_t qt;
    demi_qresult_t qr;
    struct timespec t = {0, 20000000};
    if (demi_socket(&qd, AF_INET, SOCK_DGRAM, 0) != 0 || demi_pop(&qt, qd) != 0) {
        fprintf(stderr, "fuzz_abi: warm-up: demi_socket or demi_pop failed\n");
        exit(1);
    }
    fig.calls += 2;
    for (int i = 0; i < 50 && eventfds() == before; i++, fig.calls++)
        if (demi_wait(&qr, qt, &t) != ETIMEDOUT) {
            fprintf(stderr, "fuzz_abi: warm-up: a wait on an idle pop did not time out\n");
            exit(1);
        }
    if (demi_close(qd) != 0 || demi_wait(&qr, qt, NULL) != 0 || qr.qr_opcode != DEMI_OPC_FAILED ||
        qr.qr_ret != ECANCELED) {
        fprintf(stderr, "fuzz_abi: warm-up: close did not cancel the pop with ECANCELED\n");
        exit(1);
    }
    fig.calls += 2;
    if (eventfds() == before)
        printf("fuzz_abi: note: no wait slept during the warm-up; the end's descriptor count may be one over\n");
}

struct act {
    void (*fn)(void);
    unsigned w;
};
static void push_(void) { do_push(0); }
static void pushto_(void) { do_push(1); }

static void step(void)
{
    int n = open_socks(), L = live_toks(), S = sga_count();
    struct act acts[] = {
        {do_socket, n < 6 ? 300u : n > 40 ? 10u : 60u},
        {do_bind, 50},
        {do_listen, 40},
        {do_accept, 50},
        {do_connect, 60},
        {do_close, n > 30 ? 150u : 30u},
        {push_, 150},
        {pushto_, 80},
        {do_pop, 120},
        {do_wait, L > 200 ? 400u : 130u},
        {do_timedwait, 30},
        {do_wait_any, 50},
        {do_wait_next_n, L > 100 ? 200u : 60u},
        {do_sgaalloc, S > 150 ? 10u : 50u},
        {do_sgafree, S > 100 ? 200u : 50u},
        {do_setsockopt, 30},
        {do_getsockopt, 30},
        {do_getpeername, 30},
        {kernel_step, 100},
        {do_init_again, 1},
    };
    unsigned total = 0;
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++)
        total += acts[i].w;
    unsigned r = (unsigned)rnd_below(total);
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        if (r < acts[i].w) {
            acts[i].fn();
            return;
        }
        r -= acts[i].w;
    }
}

static int fd_base;

/* Between calls each open demi socket is one kernel descriptor (catnap);
 * an accept that finished but was not taken yet may hold one more. */
static void fd_check(void)
{
    int want = fd_base + open_socks() + kernel_open(), got = count_fds(), k = outstanding_accepts();
    fig.fd_checks++;
    if (got < want || got > want + k) {
        list_fds();
        violation("the process has %d descriptors; %d at start-up + %d demi sockets + %d kernel peers = %d "
                  "(+ up to %d accepted, not taken)",
                  got, fd_base, open_socks(), kernel_open(), want, k);
    }
}

static void finish(void)
{
    for (int s = 0; s < MAX_SOCKS; s++)
        if (socks[s].used)
            close_sock(s);
    drain_all();
    free_all_sgas();
    /* The library holds no descriptor: every number it ever handed out is
     * closed now. */
    for (int qd = 1; qd <= g_max_qd + 8; qd++) {
        logf_call("demi_close(%d) at the end", qd);
        fig.calls++;
        check_rc(C_CLOSE, demi_close(qd), es(EBADF, -1), "every socket was closed");
    }
    kernel_teardown();
    int got = count_fds();
    fig.fd_checks++;
    if (got != fd_base) {
        list_fds();
        violation("%d descriptors open at the end, %d right after demi_init", got, fd_base);
    }
}

static void print_table(void)
{
    for (int c = 0; c < N_CALLS; c++) {
        printf("  %-18s", call_names[c]);
        for (int o = 0; o < N_OUT; o++)
            if (seen[c][o])
                printf(" %s", ename(o));
        printf("\n");
    }
}

static uint64_t num_arg(const char *s, const char *what)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || *end || !*s) {
        fprintf(stderr, "usage: fuzz_abi [--seed N] [--calls N] [--keep-going] [--strict] [--trace] [--table] [--port-base N] (%s: %s)\n",
                what, s);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    int table = 0;
    long port_base = -1;
    g_seed = getenv("FUZZ_SEED") ? num_arg(getenv("FUZZ_SEED"), "FUZZ_SEED") : 1;
    g_calls_wanted = getenv("FUZZ_CALLS") ? num_arg(getenv("FUZZ_CALLS"), "FUZZ_CALLS") : 20000;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--seed") && i + 1 < argc)
            g_seed = num_arg(argv[++i], "--seed");
        else if (!strcmp(argv[i], "--calls") && i + 1 < argc)
            g_calls_wanted = num_arg(argv[++i], "--calls");
        else if (!strcmp(argv[i], "--keep-going"))
            g_keep_going = 1;
        else if (!strcmp(argv[i], "--port-base") && i + 1 < argc)
            port_base = (long)num_arg(argv[++i], "--port-base");
        else if (!strcmp(argv[i], "--strict"))
            g_strict = 1;
        else if (!strcmp(argv[i], "--trace"))
            g_trace = 1;
        else if (!strcmp(argv[i], "--table"))
            table = 1;
        else
            num_arg(argv[i], "unknown argument");
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    rnd_seed(g_seed);
    port_setup(g_seed, port_base);
    pthread_t wd;
    if (pthread_create(&wd, NULL, watchdog, NULL) != 0) {
        fprintf(stderr, "fuzz_abi: cannot start the watchdog thread\n");
        return 2;
    }
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);

    int fd_before = count_fds();
    pre_init_calls_n(10 + (int)rnd_below(40));
    init_sequence();
    warm_up();
    fd_base = count_fds();
    printf("fuzz_abi: seed %llu, %llu calls; demi_init and the first sleeping wait opened %d descriptors\n",
           (unsigned long long)g_seed, (unsigned long long)g_calls_wanted, fd_base - fd_before);
    kernel_setup();
    printf("fuzz_abi: kernel peers: TCP listener %u, refuser %u, UDP %u and %u; closed ports UDP %u, TCP %u\n",
           ks[k_listener].port, ks[k_refuser].port, ks[k_udp[0]].port, ks[k_udp[1]].port, closed_udp_port,
           closed_tcp_port);
    while (fig.calls < g_calls_wanted) {
        g_step++;
        rnd_step(g_seed, g_step);
        step();
        if (g_step % 997 == 0)
            fd_check();
    }
    finish();
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (table)
        print_table();
    print_figures(stdout, (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    if (fig.violations)
        return 1;
    printf("fuzz_abi: no violations\n");
    return 0;
}
