/* relay_pipe.h - the pipe pool and the splice(2) moves of the TCP relay (internal to relay.c).
 *
 * A bulk direction of a relayed pair moves its bytes socket -> pipe -> socket with splice(2)
 * instead of recv/send through a user-space buffer. The pipes come from a small pool with a
 * cap: a direction holds one only while bytes sit in it, and gives it back once drained.
 */
#ifndef MESHKIT_RELAY_PIPE_H
#define MESHKIT_RELAY_PIPE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct relay_pipes {
    int (*idle)[2]; /* pipes not lent out, LIFO: [0] read end, [1] write end */
    uint32_t nidle;
    uint32_t open;  /* pipes that exist: idle + lent out */
    uint32_t cap;   /* at most this many pipes exist at once */
    int size;       /* F_SETPIPE_SZ asked of every new pipe */
} relay_pipes_t;

/* A pool of at most cap pipes of (at least) size bytes each; 0, or -1 with errno set. */
int init_pipes(relay_pipes_t *pp, uint32_t cap, size_t size);

/* Closes the idle pipes and frees the pool (lent-out pipes must have been given back). */
void destroy_pipes(relay_pipes_t *pp);

/* An empty pipe into fds: 0, or -errno (-ENOSPC at the cap; EMFILE, ENFILE from pipe2). */
int take_pipe(relay_pipes_t *pp, int fds[2]);

/* Gives a pipe back: kept for reuse when empty, closed when bytes are left in it. */
void give_pipe(relay_pipes_t *pp, const int fds[2], int dirty);

/* splice(2) of up to len bytes from sock into a pipe's write end, and from a pipe's read end
 * into sock, non-blocking, EINTR retried: the byte count, 0 (splice_in: EOF), or -1 with
 * errno set (EAGAIN, EINVAL/ENOSYS when splice cannot serve these fds, EPIPE, ...). */
ssize_t splice_in(int sock, int pipe_w, size_t len);
ssize_t splice_out(int pipe_r, int sock, size_t len);

#endif /* MESHKIT_RELAY_PIPE_H */
