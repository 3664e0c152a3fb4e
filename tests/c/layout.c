/* layout.c: the structs of <demi/types.h> have exactly Demikernel's layout.
 *
 * Checked twice: at compile time (_Static_assert, so a wrong header does not
 * even build) and at run time (printed, so the log shows the numbers). The
 * Rust side checks the same numbers in src/ffi/types.rs. */
#include "common.h"

#include <stdalign.h>
#include <stddef.h>

/* One row per fact: what, the value this compiler sees, the value wanted. */
#define FACTS(X)                                                                                                     \
    X(sizeof(demi_qtoken_t), 8)                                                                                      \
    X(DEMI_SGARRAY_MAXSIZE, 1)                                                                                       \
    X(sizeof(demi_sgaseg_t), 12)                                                                                     \
    X(offsetof(demi_sgaseg_t, sgaseg_buf), 0)                                                                        \
    X(offsetof(demi_sgaseg_t, sgaseg_len), 8)                                                                        \
    X(alignof(demi_sgaseg_t), 1)                                                                                     \
    X(sizeof(demi_sgarray_t), 40)                                                                                    \
    X(offsetof(demi_sgarray_t, sga_buf), 0)                                                                          \
    X(offsetof(demi_sgarray_t, sga_numsegs), 8)                                                                      \
    X(offsetof(demi_sgarray_t, sga_segs), 12)                                                                        \
    X(offsetof(demi_sgarray_t, sga_addr), 24)                                                                        \
    X(alignof(demi_sgarray_t), 1)                                                                                    \
    X(sizeof(demi_accept_result_t), 20)                                                                              \
    X(offsetof(demi_accept_result_t, qd), 0)                                                                         \
    X(offsetof(demi_accept_result_t, addr), 4)                                                                       \
    X(sizeof(demi_qresult_t), 64)                                                                                    \
    X(offsetof(demi_qresult_t, qr_opcode), 0)                                                                        \
    X(offsetof(demi_qresult_t, qr_qd), 4)                                                                            \
    X(offsetof(demi_qresult_t, qr_qt), 8)                                                                            \
    X(offsetof(demi_qresult_t, qr_ret), 16)                                                                          \
    X(offsetof(demi_qresult_t, qr_value), 24)                                                                        \
    X(offsetof(demi_qresult_t, qr_value.sga), 24)                                                                    \
    X(offsetof(demi_qresult_t, qr_value.ares), 24)                                                                   \
    X(offsetof(demi_qresult_t, qr_value.sga.sga_addr), 48)                                                           \
    X(offsetof(demi_qresult_t, qr_value.ares.addr), 28)                                                              \
    X(alignof(demi_qresult_t), 1)                                                                                    \
    X(sizeof(struct demi_args), 20)                                                                                  \
    X(offsetof(struct demi_args, argc), 0)                                                                           \
    X(offsetof(struct demi_args, argv), 4)                                                                           \
    X(offsetof(struct demi_args, callback), 12)                                                                      \
    X(sizeof(demi_args_t), 20)                                                                                       \
    X(sizeof(demi_opcode_t), 4)                                                                                      \
    X(DEMI_OPC_INVALID, 0)                                                                                           \
    X(DEMI_OPC_PUSH, 1)                                                                                              \
    X(DEMI_OPC_POP, 2)                                                                                               \
    X(DEMI_OPC_ACCEPT, 3)                                                                                            \
    X(DEMI_OPC_CONNECT, 4)                                                                                           \
    X(DEMI_OPC_CLOSE, 5)                                                                                             \
    X(DEMI_OPC_FAILED, 6)                                                                                            \
    X(sizeof(struct sockaddr_in), 16)

/* Compile time: one _Static_assert per fact. */
#define STATIC_FACT(expr, want) _Static_assert((expr) == (want), #expr " == " #want);
FACTS(STATIC_FACT)

/* The callback type takes (const char *, uint32_t, uint64_t) and returns
 * nothing: assigning a function of exactly that type must compile without a
 * warning (and -Werror makes any mismatch fatal). */
static void log_cb(const char *msg, uint32_t len, uint64_t level)
{
    (void)msg;
    (void)len;
    (void)level;
}

int main(void)
{
    int bad = 0;
    size_t n = 0;

    printf("%-52s %6s %6s\n", "fact", "got", "want");
#define RUNTIME_FACT(expr, want)                                                                                     \
    do {                                                                                                             \
        long long got_ = (long long)(expr);                                                                          \
        int ok_ = got_ == (long long)(want);                                                                         \
        printf("%-52s %6lld %6lld%s\n", #expr, got_, (long long)(want), ok_ ? "" : "   <-- WRONG");                  \
        if (!ok_) {                                                                                                  \
            fprintf(stderr, "FAIL: %s (got %lld, want %lld)\n", #expr, got_, (long long)(want));                  \
            bad++;                                                                                                   \
        }                                                                                                            \
        n++;                                                                                                         \
    } while (0);
    FACTS(RUNTIME_FACT)

    /* The packed union really overlays both views at offset 24. */
    demi_qresult_t qr;
    memset(&qr, 0, sizeof qr);
    qr.qr_value.ares.qd = 0x11223344;
    uint32_t first_word;
    memcpy(&first_word, &qr.qr_value.sga, sizeof first_word);
    if (first_word != 0x11223344u) {
        fprintf(stderr, "FAIL: qr_value.ares.qd does not alias the first bytes of qr_value.sga (got %#x)\n",
                first_word);
        bad++;
    }
    n++;

    struct demi_args args = {.argc = 0, .argv = NULL, .callback = log_cb};
    if (args.callback != log_cb) {
        fprintf(stderr, "FAIL: demi_args.callback does not hold the callback\n");
        bad++;
    }
    n++;

    if (bad) {
        fprintf(stderr, "FAIL: %d of %zu layout facts are wrong\n", bad, n);
        return 1;
    }
    printf("layout: all %zu facts hold\n", n);
    return 0;
}
