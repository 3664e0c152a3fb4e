/* Helpers of tests/c/preload_edges.c: checks, loopback addresses, and
 * bounded waits. Everything is static (one program includes this). */
#ifndef PRELOAD_EDGES_H
#define PRELOAD_EDGES_H

#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHECK(cond, ...)                                                             \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "FAIL: %s:%d: %s: ", __FILE__, __LINE__, #cond);     \
            fprintf(stderr, __VA_ARGS__);                                            \
            fprintf(stderr, " (errno %d %s)\n", errno, strerror(errno));             \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static double now_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static struct sockaddr_in loopback(uint16_t port)
{
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static uint16_t port_of(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof a;
    CHECK(getsockname(fd, (struct sockaddr *)&a, &len) == 0, "getsockname fd %d", fd);
    CHECK(a.sin_family == AF_INET && len == sizeof a, "family %d len %u", a.sin_family, len);
    return ntohs(a.sin_port);
}

/* A listening TCP socket on 127.0.0.1, port chosen by the libOS. */
static int listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(fd >= 0, "socket");
    int one = 1;
    CHECK(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0, "SO_REUSEADDR");
    struct sockaddr_in a = loopback(0);
    CHECK(bind(fd, (struct sockaddr *)&a, sizeof a) == 0, "bind");
    CHECK(listen(fd, 16) == 0, "listen");
    return fd;
}

/* Waits (bounded) until fd has one of `events`; returns revents. */
static short wait_for(int fd, short events, int ms)
{
    struct pollfd p = {.fd = fd, .events = events};
    int n = poll(&p, 1, ms);
    CHECK(n >= 0, "poll");
    return n ? p.revents : 0;
}

/* A connected pair: *c is the client's end, the return value the server's. */
static int pair(int lfd, int *c)
{
    *c = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(*c >= 0, "socket");
    struct sockaddr_in a = loopback(port_of(lfd));
    CHECK(connect(*c, (struct sockaddr *)&a, sizeof a) == 0, "blocking connect");
    CHECK(wait_for(lfd, POLLIN, 5000) & POLLIN, "listener readable after connect");
    struct sockaddr_in peer;
    socklen_t len = sizeof peer;
    int s = accept(lfd, (struct sockaddr *)&peer, &len);
    CHECK(s >= 0, "accept");
    CHECK(peer.sin_family == AF_INET && peer.sin_addr.s_addr == htonl(INADDR_LOOPBACK), "peer address");
    CHECK(ntohs(peer.sin_port) == port_of(*c), "peer port %u vs client's %u", ntohs(peer.sin_port), port_of(*c));
    return s;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        CHECK(k > 0, "write");
        p += k;
        n -= (size_t)k;
    }
}

static void read_exact(int fd, char *p, size_t n)
{
    while (n > 0) {
        CHECK(wait_for(fd, POLLIN, 5000) & POLLIN, "readable within 5 s");
        ssize_t k = read(fd, p, n);
        CHECK(k > 0, "read gave %zd", k);
        p += k;
        n -= (size_t)k;
    }
}

#endif
