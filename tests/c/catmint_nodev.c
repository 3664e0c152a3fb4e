/* catmint_nodev: demi_init with LIBOS=catmint on a machine without RDMA.
 *
 * Run by tests/rdma.rs with LIBOS=catmint. Without an RDMA device demi_init
 * must fail with ENODEV (not crash), fail the same way when retried, and
 * leave the library refusing calls cleanly. With a device it must succeed.
 * Prints one verdict line; exit status 1 on any surprise.
 */
#include <demi/libos.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

int main(void)
{
    int rc = demi_init(NULL);
    if (rc == 0) {
        int qd = -1;
        if (demi_socket(&qd, AF_INET, SOCK_STREAM, 0) != 0 || demi_close(qd) != 0) {
            printf("catmint_nodev: demi_init succeeded but a socket could not be made\n");
            return 1;
        }
        printf("catmint_nodev: demi_init succeeded\n");
        return 0;
    }
    if (rc != ENODEV) {
        printf("catmint_nodev: demi_init returned %d (%s), want ENODEV\n", rc, strerror(rc));
        return 1;
    }
    int again = demi_init(NULL);
    if (again != ENODEV) {
        printf("catmint_nodev: a second demi_init returned %d (%s), want ENODEV\n", again, strerror(again));
        return 1;
    }
    int qd = -1;
    int sock = demi_socket(&qd, AF_INET, SOCK_STREAM, 0);
    if (sock == 0) {
        printf("catmint_nodev: demi_socket worked without a libOS\n");
        return 1;
    }
    printf("catmint_nodev: ENODEV as expected; demi_socket after it: %d (%s)\n", sock, strerror(sock));
    return 0;
}
