/* fuzz_abi_mutants.c: deliberately broken versions of a few demi_* calls,
 * linked into the fuzzer with -Wl,--wrap=<call> by tests/c_abi.rs to show
 * that the fuzzer notices each kind of defect (an honest test must be able
 * to fail). FUZZ_MUTANT picks the defect; unset, every call goes straight
 * to the library.
 *
 *   errno     demi_close answers EINVAL where the library says EBADF
 *   outparam  a failed demi_accept writes *qt_out
 *   data      demi_wait flips a byte of a popped buffer
 *   token     demi_wait_next_n hands out one result twice
 *   order     demi_wait_next_n hands results out newest first
 *   cancel    demi_wait reports a pop that a close cancelled as reset
 *   fdleak    demi_close leaks a descriptor now and then */
#define _GNU_SOURCE
#include <demi/libos.h>
#include <demi/sga.h>
#include <demi/wait.h>

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

int __real_demi_close(int qd);
int __real_demi_accept(demi_qtoken_t *qt_out, int sockqd);
int __real_demi_wait(demi_qresult_t *qr_out, demi_qtoken_t qt, const struct timespec *timeout);
int __real_demi_wait_next_n(demi_qresult_t *qrs, int num_qrs, int *num_out, const struct timespec *timeout);

static int is(const char *name)
{
    const char *m = getenv("FUZZ_MUTANT");
    return m && strcmp(m, name) == 0;
}

int __wrap_demi_close(int qd)
{
    static int closes;
    int rc = __real_demi_close(qd);
    if (rc == EBADF && is("errno"))
        return EINVAL;
    if (rc == 0 && is("fdleak") && ++closes % 50 == 0)
        (void)open("/dev/null", O_RDONLY | O_CLOEXEC);
    return rc;
}

int __wrap_demi_accept(demi_qtoken_t *qt_out, int sockqd)
{
    int rc = __real_demi_accept(qt_out, sockqd);
    if (rc != 0 && qt_out && is("outparam"))
        *qt_out = 0;
    return rc;
}

int __wrap_demi_wait(demi_qresult_t *qr_out, demi_qtoken_t qt, const struct timespec *timeout)
{
    static int cancels;
    int rc = __real_demi_wait(qr_out, qt, timeout);
    /* (The first is the fuzzer's warm-up, which would stop it at once.) */
    if (rc == 0 && is("cancel") && qr_out->qr_opcode == DEMI_OPC_FAILED && qr_out->qr_ret == ECANCELED &&
        ++cancels > 1)
        qr_out->qr_ret = ECONNRESET;
    if (rc == 0 && is("data") && qr_out->qr_opcode == DEMI_OPC_POP) {
        demi_sgarray_t sga = qr_out->qr_value.sga;
        if (sga.sga_segs[0].sgaseg_len > 1)
            ((unsigned char *)sga.sga_segs[0].sgaseg_buf)[sga.sga_segs[0].sgaseg_len / 2] ^= 0x40;
    }
    return rc;
}

int __wrap_demi_wait_next_n(demi_qresult_t *qrs, int num_qrs, int *num_out, const struct timespec *timeout)
{
    int rc = __real_demi_wait_next_n(qrs, num_qrs, num_out, timeout);
    if (rc == 0 && is("token") && *num_out < num_qrs) {
        qrs[*num_out] = qrs[0];
        ++*num_out;
    }
    for (int i = 0, j = rc == 0 ? *num_out - 1 : 0; i < j && is("order"); i++, j--) {
        demi_qresult_t t = qrs[i];
        qrs[i] = qrs[j];
        qrs[j] = t;
    }
    return rc;
}
