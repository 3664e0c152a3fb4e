/* demi: types of the qtoken API (layout-compatible with Demikernel's). */
#ifndef DEMI_TYPES_H_IS_INCLUDED
#define DEMI_TYPES_H_IS_INCLUDED

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>
#include <sys/socket.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Segments per scatter-gather array. */
#define DEMI_SGARRAY_MAXSIZE 1

/* Names one asynchronous operation; wait on it with demi_wait*(). */
typedef uint64_t demi_qtoken_t;

/* One segment: sgaseg_len bytes at sgaseg_buf. 12 bytes. */
typedef struct __attribute__((__packed__)) demi_sgaseg {
    void *sgaseg_buf;
    uint32_t sgaseg_len;
} demi_sgaseg_t;

/* A scatter-gather array. sga_buf is the library's handle to the memory
 * (not a pointer: never dereference it); sga_addr is the sender of a popped
 * datagram. 40 bytes. */
typedef struct __attribute__((__packed__)) demi_sgarray {
    void *sga_buf;
    uint32_t sga_numsegs;
    demi_sgaseg_t sga_segs[DEMI_SGARRAY_MAXSIZE];
    struct sockaddr_in sga_addr;
} demi_sgarray_t;

/* What a finished operation was. */
typedef enum demi_opcode {
    DEMI_OPC_INVALID = 0,
    DEMI_OPC_PUSH,
    DEMI_OPC_POP,
    DEMI_OPC_ACCEPT,
    DEMI_OPC_CONNECT,
    DEMI_OPC_CLOSE,
    DEMI_OPC_FAILED,
} demi_opcode_t;

/* A new connection: its descriptor and the peer's address. 20 bytes. */
typedef struct __attribute__((__packed__)) demi_accept_result {
    int32_t qd;
    struct sockaddr_in addr;
} demi_accept_result_t;

/* A finished operation. qr_ret is 0, or a positive errno when qr_opcode is
 * DEMI_OPC_FAILED. 64 bytes. */
typedef struct __attribute__((__packed__)) demi_qresult {
    demi_opcode_t qr_opcode;
    int32_t qr_qd;
    demi_qtoken_t qr_qt;
    int64_t qr_ret;
    union __attribute__((__packed__)) {
        demi_sgarray_t sga;
        demi_accept_result_t ares;
    } qr_value;
} demi_qresult_t;

/* Accepted by demi_init for compatibility; not called. */
typedef void (*demi_callback_t)(const char *, uint32_t, uint64_t);

/* Arguments of demi_init. 20 bytes. */
struct __attribute__((__packed__)) demi_args {
    int argc;
    char *const *argv;
    demi_callback_t callback;
};
typedef struct demi_args demi_args_t;

#ifdef __cplusplus
}
#endif

#endif /* DEMI_TYPES_H_IS_INCLUDED */
