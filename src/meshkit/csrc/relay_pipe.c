/* relay_pipe.c - the pipe pool and the splice(2) moves of the TCP relay (see relay_pipe.h).
 *
 * Pipes are made non-blocking and close-on-exec, and grown with F_SETPIPE_SZ where the
 * system allows it: a pipe has a fixed number of slots, and a TCP receive queue made of
 * small segments can fill them with far fewer bytes than the pipe's nominal size, so a
 * larger pipe lets one splice move a whole relay buffer. When growing is refused (EPERM over
 * pipe-max-size or the user's pipe-user-pages-soft, EBUSY) the pipe keeps its default size.
 */
#define _GNU_SOURCE
#include "relay_pipe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int init_pipes(relay_pipes_t *pp, uint32_t cap, size_t size)
{
    pp->nidle = pp->open = 0;
    pp->cap = cap;
    pp->size = size > (1u << 20) ? (1 << 20) : (int)size;
    pp->idle = NULL;
    if (cap && !(pp->idle = calloc(cap, sizeof *pp->idle)))
        return -1;
    return 0;
}

void destroy_pipes(relay_pipes_t *pp)
{
    for (uint32_t i = 0; i < pp->nidle; i++) {
        close(pp->idle[i][0]);
        close(pp->idle[i][1]);
    }
    pp->nidle = pp->open = 0;
    free(pp->idle);
    pp->idle = NULL;
}

static void grow_pipe(int fd, int size)
{
    /* Four times the relay buffer where allowed, else the buffer itself, else the default. */
    if (fcntl(fd, F_SETPIPE_SZ, size * 4) < 0)
        (void)fcntl(fd, F_SETPIPE_SZ, size);
}

int take_pipe(relay_pipes_t *pp, int fds[2])
{
    if (pp->nidle) {
        pp->nidle--;
        fds[0] = pp->idle[pp->nidle][0];
        fds[1] = pp->idle[pp->nidle][1];
        return 0;
    }
    if (pp->open >= pp->cap)
        return -ENOSPC;
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    grow_pipe(fds[1], pp->size);
    pp->open++;
    return 0;
}

void give_pipe(relay_pipes_t *pp, const int fds[2], int dirty)
{
    if (!dirty && pp->nidle < pp->cap) {
        pp->idle[pp->nidle][0] = fds[0];
        pp->idle[pp->nidle][1] = fds[1];
        pp->nidle++;
        return;
    }
    close(fds[0]);
    close(fds[1]);
    pp->open--;
}

ssize_t splice_in(int sock, int pipe_w, size_t len)
{
    ssize_t n;
    do {
        n = splice(sock, NULL, pipe_w, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    return n;
}

ssize_t splice_out(int pipe_r, int sock, size_t len)
{
    ssize_t n;
    do {
        n = splice(pipe_r, NULL, sock, NULL, len, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    } while (n < 0 && errno == EINTR);
    return n;
}
