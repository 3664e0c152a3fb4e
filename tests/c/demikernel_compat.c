/* demikernel_compat.c: a program written only against Demikernel's
 * documented API, the way a Demikernel user writes one. It must build
 * unchanged against demi's headers, as C (-std=c11, no feature macros) and
 * as C++ (g++ -x c++), and run: a TCP echo and a UDP echo over loopback,
 * both ends in this process.
 *
 * Usage: demikernel_compat PORT   (TCP and UDP port on 127.0.0.1 to serve on)
 *
 * Nothing here uses demi-only helpers (no common.h): only <demi/libos.h>,
 * <demi/sga.h>, <demi/wait.h> and the C library. */
#include <demi/libos.h>
#include <demi/sga.h>
#include <demi/wait.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#ifdef __cplusplus
#define LANGUAGE "C++"
#else
#define LANGUAGE "C"
#endif

static const char message[] = "hello, demikernel";

/* Stops the program with a message when a call does not return 0. */
static void must(int rc, const char *what)
{
    if (rc != 0) {
        fprintf(stderr, "FAIL: %s (got %d, want 0)\n", what, rc);
        exit(1);
    }
}

/* Waits for one token and checks what kind of operation finished. */
static demi_qresult_t wait_for(demi_qtoken_t qt, demi_opcode_t want, const char *what)
{
    demi_qresult_t qr;
    struct timespec timeout = {10, 0};
    must(demi_wait(&qr, qt, &timeout), what);
    if (qr.qr_opcode != want) {
        fprintf(stderr, "FAIL: %s (got opcode %d with qr_ret %ld, want opcode %d)\n", what, (int)qr.qr_opcode,
                (long)qr.qr_ret, (int)want);
        exit(1);
    }
    return qr;
}

/* An sga holding a copy of message. */
static demi_sgarray_t make_message(void)
{
    demi_sgarray_t sga = demi_sgaalloc(sizeof(message));
    if (sga.sga_numsegs != 1 || sga.sga_segs[0].sgaseg_buf == NULL) {
        fprintf(stderr, "FAIL: demi_sgaalloc returned a null sga\n");
        exit(1);
    }
    memcpy(sga.sga_segs[0].sgaseg_buf, message, sizeof(message));
    return sga;
}

/* Checks that a popped sga holds exactly message. */
static void check_message(const demi_sgarray_t *sga, const char *who)
{
    if (sga->sga_numsegs != 1 || sga->sga_segs[0].sgaseg_len != sizeof(message) ||
        memcmp(sga->sga_segs[0].sgaseg_buf, message, sizeof(message)) != 0) {
        fprintf(stderr, "FAIL: %s received %u bytes that are not the message\n", who,
                (unsigned)sga->sga_segs[0].sgaseg_len);
        exit(1);
    }
}

static struct sockaddr_in local_address(int port)
{
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    return addr;
}

static void tcp_echo(int port)
{
    int server = -1, client = -1, conn;
    demi_qtoken_t qts[2], qt;
    demi_qresult_t qr;
    int ready = -1;
    struct sockaddr_in addr = local_address(port);

    must(demi_socket(&server, AF_INET, SOCK_STREAM, 0), "demi_socket (tcp server)");
    /* Let a rerun bind the port while the last run's connection lingers. */
    int one = 1;
    must(demi_setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)), "demi_setsockopt");
    must(demi_bind(server, (const struct sockaddr *)&addr, sizeof(addr)), "demi_bind (tcp)");
    must(demi_listen(server, 16), "demi_listen");
    must(demi_socket(&client, AF_INET, SOCK_STREAM, 0), "demi_socket (tcp client)");
    must(demi_accept(&qts[0], server), "demi_accept");
    must(demi_connect(&qts[1], client, (const struct sockaddr *)&addr, sizeof(addr)), "demi_connect");

    /* Collect both halves of the handshake, in whichever order they finish. */
    conn = -1;
    int pending = 2;
    while (pending > 0) {
        struct timespec timeout = {10, 0};
        must(demi_wait_any(&qr, &ready, qts, pending, &timeout), "demi_wait_any");
        if (qr.qr_opcode == DEMI_OPC_ACCEPT) {
            conn = qr.qr_value.ares.qd;
        } else if (qr.qr_opcode != DEMI_OPC_CONNECT) {
            fprintf(stderr, "FAIL: handshake operation finished with opcode %d, ret %ld\n", (int)qr.qr_opcode,
                    (long)qr.qr_ret);
            exit(1);
        }
        /* A finished token must not be waited on again: drop it from the list. */
        qts[ready] = qts[pending - 1];
        pending--;
    }
    if (conn < 0) {
        fprintf(stderr, "FAIL: no connection was accepted\n");
        exit(1);
    }

    /* Client -> server. A stream pop may return part of the bytes; this
     * message is small enough to arrive whole on loopback. */
    demi_sgarray_t sga = make_message();
    must(demi_push(&qt, client, &sga), "demi_push (client)");
    wait_for(qt, DEMI_OPC_PUSH, "push (client)");
    must(demi_sgafree(&sga), "demi_sgafree");

    must(demi_pop(&qt, conn), "demi_pop (server)");
    qr = wait_for(qt, DEMI_OPC_POP, "pop (server)");
    check_message(&qr.qr_value.sga, "tcp server");

    /* Echo the very buffer we popped. */
    must(demi_push(&qt, conn, &qr.qr_value.sga), "demi_push (echo)");
    wait_for(qt, DEMI_OPC_PUSH, "push (echo)");
    must(demi_sgafree(&qr.qr_value.sga), "demi_sgafree (popped)");

    must(demi_pop(&qt, client), "demi_pop (client)");
    qr = wait_for(qt, DEMI_OPC_POP, "pop (client)");
    check_message(&qr.qr_value.sga, "tcp client");
    must(demi_sgafree(&qr.qr_value.sga), "demi_sgafree (echoed)");

    must(demi_close(client), "demi_close (client)");
    must(demi_close(conn), "demi_close (conn)");
    must(demi_close(server), "demi_close (server)");
}

static void udp_echo(int port)
{
    int server = -1, client = -1;
    demi_qtoken_t qt;
    demi_qresult_t qr;
    struct sockaddr_in addr = local_address(port);

    must(demi_socket(&server, AF_INET, SOCK_DGRAM, 0), "demi_socket (udp server)");
    must(demi_bind(server, (const struct sockaddr *)&addr, sizeof(addr)), "demi_bind (udp)");
    must(demi_socket(&client, AF_INET, SOCK_DGRAM, 0), "demi_socket (udp client)");

    demi_sgarray_t sga = make_message();
    must(demi_pushto(&qt, client, &sga, (const struct sockaddr *)&addr, sizeof(addr)), "demi_pushto (client)");
    wait_for(qt, DEMI_OPC_PUSH, "pushto (client)");
    must(demi_sgafree(&sga), "demi_sgafree");

    must(demi_pop(&qt, server), "demi_pop (udp server)");
    qr = wait_for(qt, DEMI_OPC_POP, "pop (udp server)");
    check_message(&qr.qr_value.sga, "udp server");

    /* Reply to whoever sent it: the sender's address is in sga_addr. */
    struct sockaddr_in sender = qr.qr_value.sga.sga_addr;
    must(demi_pushto(&qt, server, &qr.qr_value.sga, (const struct sockaddr *)&sender, sizeof(sender)),
         "demi_pushto (echo)");
    wait_for(qt, DEMI_OPC_PUSH, "pushto (echo)");
    must(demi_sgafree(&qr.qr_value.sga), "demi_sgafree (popped)");

    must(demi_pop(&qt, client), "demi_pop (udp client)");
    qr = wait_for(qt, DEMI_OPC_POP, "pop (udp client)");
    check_message(&qr.qr_value.sga, "udp client");
    if (qr.qr_value.sga.sga_addr.sin_port != addr.sin_port) {
        fprintf(stderr, "FAIL: the echo did not come from the server's port\n");
        exit(1);
    }
    must(demi_sgafree(&qr.qr_value.sga), "demi_sgafree (echoed)");

    must(demi_close(client), "demi_close (udp client)");
    must(demi_close(server), "demi_close (udp server)");
}

int main(int argc, char *argv[])
{
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) > 65535) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);

    struct demi_args args = {
        .argc = argc,
        .argv = argv,
        .callback = NULL,
    };
    must(demi_init(&args), "demi_init");

    tcp_echo(port);
    udp_echo(port);
    printf("demikernel_compat (" LANGUAGE "): TCP and UDP echo ok\n");
    return 0;
}
