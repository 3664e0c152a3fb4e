/* demi: compiler portability macros used by the other headers.
 *
 * Written by hand, unlike the other headers: it declares nothing of the
 * library's (cbindgen generates types.h, libos.h, sga.h and wait.h from
 * src/ffi/). The macro names are Demikernel's, so code written for its
 * headers finds them here. */
#ifndef DEMI_CC_H
#define DEMI_CC_H

/* Source annotations (SAL): MSVC's own, empty elsewhere. */
#ifdef _MSC_VER
#include <sal.h>
#else
#define _In_
#define _In_z_
#define _In_opt_
#define _Inout_
#define _In_reads_(s)
#define _In_reads_bytes_(b)
#define _Out_
#define _Out_writes_to_(s, c)
#define _Out_writes_to_opt_(s, c)
#define _Deref_pre_z_
#endif

/* ATTR_NONNULL(i, ...): the arguments at these 1-based positions must not
 * be NULL; GCC and clang warn about a NULL they can see. The library still
 * answers a NULL that reaches it with EINVAL, and a program that passes NULL
 * on purpose to check that (demi's own error tests) defines DEMI_NO_NONNULL
 * before including the headers: with the attribute, the compiler may drop
 * its own NULL checks after such a call and UBSan stops it.
 *
 * ATTR_NODISCARD: the result must be used (demi_sgaalloc: a dropped sga
 * leaks its buffer). */
#if defined(__GNUC__) && !defined(DEMI_NO_NONNULL)
#define ATTR_NONNULL(...) __attribute__((nonnull(__VA_ARGS__)))
#else
#define ATTR_NONNULL(...)
#endif

#if defined(__GNUC__)
#define ATTR_NODISCARD __attribute__((warn_unused_result))
#elif defined(_MSC_VER)
#define ATTR_NODISCARD _Check_return_
#else
#define ATTR_NODISCARD
#endif

#endif /* DEMI_CC_H */
