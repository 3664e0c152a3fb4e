/* demi-pingpong: the lean C-ABI client of scripts/bench-cost.
 *
 *   demi-pingpong tcp|udp ADDR:PORT SIZE COUNT [BIND_ADDR]
 *
 * Sends COUNT messages of SIZE bytes one at a time to an echo server (the
 * C examples' servers) and waits for each echo, through demi's C ABI only:
 * one demi_sgaalloc'd buffer pushed again and again (no copy), a pop per
 * echo, demi_wait on every token, demi_sgafree on every popped sga. No
 * clock reads and no byte-by-byte checks (only the length and the first
 * byte), so the instructions counted are the library's, as in
 * kernel-pingpong.c they are the kernel sockets'. The libOS is LIBOS.
 * Exit status 0 on success, 1 on any error, 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include <demi/libos.h>
#include <demi/sga.h>
#include <demi/wait.h>

#include "addr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static int fail(const char *what, int rc)
{
    fprintf(stderr, "demi-pingpong: %s: %s\n", what, strerror(rc));
    return 1;
}

/* Waits (bounded: 30 s) for qt; the operation must succeed. */
static int wait_ok(demi_qtoken_t qt, demi_qresult_t *qr, const char *what)
{
    struct timespec bound = {30, 0};
    int rc = demi_wait(qr, qt, &bound);
    if (rc != 0)
        return fail(what, rc);
    if (qr->qr_opcode == DEMI_OPC_FAILED)
        return fail(what, (int)qr->qr_ret);
    return 0;
}

int main(int argc, char **argv)
{
    struct sockaddr_in to, from;
    memset(&from, 0, sizeof from);
    if (argc < 5 || argc > 6 || (strcmp(argv[1], "tcp") != 0 && strcmp(argv[1], "udp") != 0) ||
        parse_addr(argv[2], &to) != 0 ||
        (argc == 6 && parse_addr(argv[5], &from) != 0 && inet_pton(AF_INET, argv[5], &from.sin_addr) != 1)) {
        fprintf(stderr, "usage: demi-pingpong tcp|udp ADDR:PORT SIZE COUNT [BIND_ADDR[:PORT]]\n");
        return 2;
    }
    int tcp = strcmp(argv[1], "tcp") == 0;
    size_t size = (size_t)atol(argv[3]);
    long count = atol(argv[4]);
    if (size == 0 || count < 1)
        return 2;
    int rc, qd;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    if ((rc = demi_init(NULL)) != 0)
        return fail("demi_init", rc);
    if ((rc = demi_socket(&qd, AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0)) != 0)
        return fail("demi_socket", rc);
    if (argc == 6) {
        from.sin_family = AF_INET;
        if ((rc = demi_bind(qd, (struct sockaddr *)&from, sizeof from)) != 0)
            return fail("demi_bind", rc);
    } else if (!tcp) {
        struct sockaddr_in any = {.sin_family = AF_INET};
        any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if ((rc = demi_bind(qd, (struct sockaddr *)&any, sizeof any)) != 0)
            return fail("demi_bind", rc);
    }
    if ((rc = demi_connect(&qt, qd, (struct sockaddr *)&to, sizeof to)) != 0)
        return fail("demi_connect", rc);
    if (wait_ok(qt, &qr, "connect") != 0)
        return 1;
    demi_sgarray_t msg = demi_sgaalloc(size);
    if (msg.sga_numsegs != 1)
        return fail("demi_sgaalloc", ENOMEM);
    memset(msg.sga_segs[0].sgaseg_buf, 'p', size);
    for (long i = 0; i < count; i++) {
        if ((rc = demi_push(&qt, qd, &msg)) != 0)
            return fail("demi_push", rc);
        if (wait_ok(qt, &qr, "push") != 0)
            return 1;
        /* A stream may split the echo; a datagram comes whole. */
        for (size_t got = 0; got < size;) {
            if ((rc = demi_pop(&qt, qd)) != 0)
                return fail("demi_pop", rc);
            if (wait_ok(qt, &qr, "pop") != 0)
                return 1;
            demi_sgaseg_t *seg = &qr.qr_value.sga.sga_segs[0];
            if (seg->sgaseg_len == 0 || ((char *)seg->sgaseg_buf)[0] != 'p') {
                fprintf(stderr, "demi-pingpong: echo %ld is wrong (%u bytes)\n", i, seg->sgaseg_len);
                return 1;
            }
            got += seg->sgaseg_len;
            demi_sgafree(&qr.qr_value.sga);
        }
    }
    demi_sgafree(&msg);
    demi_close(qd);
    printf("done %ld\n", count);
    return 0;
}
