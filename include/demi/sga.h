/* demi: scatter-gather array memory. */
#ifndef DEMI_SGA_H_IS_INCLUDED
#define DEMI_SGA_H_IS_INCLUDED

#include <demi/types.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Allocates size bytes the libOS can push without copying. Returns a null
 * sga (sga_numsegs == 0, sga_segs[0].sgaseg_buf == NULL) on failure,
 * including size 0. */
extern demi_sgarray_t demi_sgaalloc(size_t size);

/* Releases an sga from demi_sgaalloc() or a pop. Returns 0, or EINVAL for an
 * sga this library never handed out (its memory is left untouched). */
extern int demi_sgafree(demi_sgarray_t *sga);

#ifdef __cplusplus
}
#endif

#endif /* DEMI_SGA_H_IS_INCLUDED */
