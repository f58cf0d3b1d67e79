/* relay.h - C API of meshkit's TCP relay engine.
 *
 * The engine moves bytes both ways between pairs of connected, non-blocking sockets (a client
 * and the backend the ingress picked for it). It owns one epoll fd that the caller's event
 * loop watches; every call runs on the caller's thread (the engine never starts a thread),
 * and relay_poll() touches no Python object, so a wrapper may run it without the GIL.
 * One relay_t must not be used from two threads at once.
 *
 * The pure-Python twin with identical behaviour is meshkit/l4/relay.py.
 */
#ifndef MESHKIT_RELAY_H
#define MESHKIT_RELAY_H

#include <stddef.h>
#include <stdint.h>

/* Why a pair finished; the order matches the reason strings of the Python API. */
enum relay_reason {
    RELAY_DONE = 0,   /* both directions reached EOF and were flushed */
    RELAY_RESET = 1,  /* a socket error (ECONNRESET, EPIPE, ...) on either side */
    RELAY_IDLE = 2,   /* no bytes either way for the pair's idle timeout */
    RELAY_CLOSED = 3, /* relay_close_pair() or relay_close_all() */
};

typedef struct relay_finished {
    int32_t pair_id;
    int32_t reason;          /* enum relay_reason */
    uint64_t bytes_c2b;      /* client bytes delivered to the backend, preamble excluded */
    uint64_t bytes_b2c;      /* backend bytes delivered to the client */
} relay_finished_t;

typedef struct relay relay_t;

/* A relay with per-direction buffers of bufsize bytes; NULL with errno set on failure. */
relay_t *relay_create(size_t bufsize);

/* Closes every open pair's fds and the epoll fd, then frees the relay. */
void relay_destroy(relay_t *r);

/* The epoll fd: readable whenever relay_poll() has work to do. */
int relay_fileno(const relay_t *r);

/* Takes ownership of both fds, even on failure (they are closed then). preamble is sent to
 * the backend before any client byte and is not counted. Returns the pair id (>= 0) or
 * -errno (-EINVAL when preamble_len > bufsize or the fds are equal or negative). */
int relay_add_pair(relay_t *r, int client_fd, int backend_fd, double idle_timeout, double now,
                   const char *preamble, size_t preamble_len);

/* Handles every ready event, then expires idle pairs. Returns how many pairs finished
 * (records in *out, valid until the next call into the relay) or -errno. */
int relay_poll(relay_t *r, double now, const relay_finished_t **out);

/* Closes one pair now with the given reason; 1 and *out filled, or 0 if pair_id is unknown. */
int relay_close_pair(relay_t *r, int pair_id, int reason, relay_finished_t *out);

/* Closes every pair (reason RELAY_CLOSED); returns the count, records in *out as above. */
int relay_close_all(relay_t *r, const relay_finished_t **out);

/* Live byte counts of a pair: 1 and the counts, or 0 if pair_id is unknown. */
int relay_get_stats(const relay_t *r, int pair_id, uint64_t *c2b, uint64_t *b2c);

/* Number of open pairs. */
size_t relay_count_pairs(const relay_t *r);

#endif /* MESHKIT_RELAY_H */
