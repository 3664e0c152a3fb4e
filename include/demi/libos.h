/* demi: initialisation and queue (socket) calls. Every call returns 0 or a
 * positive errno; see man/demi_<call>.md. */
#ifndef DEMI_LIBOS_H_IS_INCLUDED
#define DEMI_LIBOS_H_IS_INCLUDED

#include <demi/cc.h>
#include <demi/types.h>
#include <stddef.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Starts the libOS named by the LIBOS environment variable (default catnap).
 * args may be NULL. */
extern int demi_init(const struct demi_args *args);

extern int demi_socket(int *sockqd_out, int domain, int type, int protocol);
extern int demi_listen(int sockqd, int backlog);
extern int demi_bind(int sockqd, const struct sockaddr *addr, socklen_t size);
extern int demi_accept(demi_qtoken_t *qt_out, int sockqd);
extern int demi_connect(demi_qtoken_t *qt_out, int sockqd, const struct sockaddr *addr, socklen_t size);
extern int demi_close(int qd);
extern int demi_push(demi_qtoken_t *qt_out, int qd, const demi_sgarray_t *sga);
extern int demi_pushto(demi_qtoken_t *qt_out, int sockqd, const demi_sgarray_t *sga,
                       const struct sockaddr *dest_addr, socklen_t size);
extern int demi_pop(demi_qtoken_t *qt_out, int qd);
extern int demi_setsockopt(int qd, int level, int optname, const void *optval, socklen_t optlen);
extern int demi_getsockopt(int qd, int level, int optname, void *optval, socklen_t *optlen);
extern int demi_getpeername(int qd, struct sockaddr *addr, socklen_t *addrlen);

#ifdef __cplusplus
}
#endif

#endif /* DEMI_LIBOS_H_IS_INCLUDED */
