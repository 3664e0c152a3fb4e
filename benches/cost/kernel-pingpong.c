/* kernel-pingpong: the kernel-socket baseline of scripts/bench-cost.
 *
 *   kernel-pingpong server tcp|udp PORT
 *   kernel-pingpong client tcp|udp ADDR:PORT SIZE COUNT
 *
 * Plain blocking sockets on loopback, nothing else: the server echoes every
 * byte (tcp) or datagram (udp) back; the client sends COUNT messages of SIZE
 * bytes one at a time and waits for each echo. bench-cost counts the
 * client's user-space instructions (callgrind) at two COUNTs and divides
 * the difference by the round trips between them, next to demi's own
 * clients doing the same over catnap. Exit status 0 on success, 1 on any
 * error (with a one-line reason on stderr), 2 on a usage error.
 */
#define _POSIX_C_SOURCE 200809L

#include "addr.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int die(const char *what)
{
    perror(what);
    return 1;
}

static int usage(void)
{
    fprintf(stderr, "usage: kernel-pingpong server tcp|udp PORT\n"
                    "       kernel-pingpong client tcp|udp ADDR:PORT SIZE COUNT\n");
    return 2;
}

/* Reads exactly n bytes from a stream; 0 on success. */
static int read_all(int fd, char *buf, size_t n)
{
    while (n > 0) {
        ssize_t r = read(fd, buf, n);
        if (r <= 0)
            return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

static int server(int tcp, int port)
{
    int one = 1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        return die("socket");
    if (bind(s, (struct sockaddr *)&a, sizeof a) != 0)
        return die("bind");
    if (tcp && listen(s, 8) != 0)
        return die("listen");
    printf("listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    static char buf[1 << 16];
    for (;;) {
        if (!tcp) {
            struct sockaddr_in from;
            socklen_t len = sizeof from;
            ssize_t n = recvfrom(s, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
            if (n >= 0)
                sendto(s, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
            continue;
        }
        int c = accept(s, NULL, NULL);
        if (c < 0)
            continue;
        setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        ssize_t n;
        while ((n = read(c, buf, sizeof buf)) > 0)
            if (write(c, buf, (size_t)n) != n)
                break;
        close(c);
    }
}

static int client(int tcp, const char *to, size_t size, long count)
{
    struct sockaddr_in a;
    if (parse_addr(to, &a) != 0 || size == 0 || size > (1 << 16) || count < 1)
        return usage();
    int s = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
    int one = 1;
    if (s < 0)
        return die("socket");
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0)
        return die("connect");
    if (tcp)
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    char *out = malloc(size), *in = malloc(size);
    if (!out || !in)
        return die("malloc");
    for (long i = 0; i < count; i++) {
        memset(out, (int)(i & 0xff), size);
        if (write(s, out, size) != (ssize_t)size)
            return die("write");
        if (tcp ? read_all(s, in, size) != 0 : recv(s, in, size, 0) != (ssize_t)size)
            return die("read");
        if (memcmp(in, out, size) != 0) {
            fprintf(stderr, "kernel-pingpong: echo %ld differs\n", i);
            return 1;
        }
    }
    printf("done %ld\n", count);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 4 || (strcmp(argv[2], "tcp") != 0 && strcmp(argv[2], "udp") != 0))
        return usage();
    int tcp = strcmp(argv[2], "tcp") == 0;
    if (strcmp(argv[1], "server") == 0 && argc == 4)
        return server(tcp, atoi(argv[3]));
    if (strcmp(argv[1], "client") == 0 && argc == 6)
        return client(tcp, argv[3], (size_t)atol(argv[4]), atol(argv[5]));
    return usage();
}
