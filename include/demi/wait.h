/* demi: waiting on queue tokens. Timeouts are relative; NULL waits forever
 * and a zero timespec polls once. */
#ifndef DEMI_WAIT_H_IS_INCLUDED
#define DEMI_WAIT_H_IS_INCLUDED

#include <demi/types.h>
#include <time.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Waits for qt. ETIMEDOUT leaves the operation pending; EINVAL for a token
 * that is stale, consumed or forged. */
extern int demi_wait(demi_qresult_t *qr_out, demi_qtoken_t qt, const struct timespec *timeout);

/* As demi_wait, with an absolute CLOCK_REALTIME deadline. */
extern int demi_timedwait(demi_qresult_t *qr_out, demi_qtoken_t qt, const struct timespec *abstime);

/* Waits for the first of qts[0..num_qts) to finish; *ready_offset says which. */
extern int demi_wait_any(demi_qresult_t *qr_out, int *ready_offset, const demi_qtoken_t qts[], int num_qts,
                         const struct timespec *timeout);

/* Waits until an operation finished, then returns up to num_qrs finished
 * operations (on any token), oldest first; *num_out says how many. */
extern int demi_wait_next_n(demi_qresult_t *qrs, int num_qrs, int *num_out, const struct timespec *timeout);

#ifdef __cplusplus
}
#endif

#endif /* DEMI_WAIT_H_IS_INCLUDED */
