/* relay.h - C API of meshkit's TCP relay engine.
 *
 * The engine moves bytes both ways between pairs of connected, non-blocking sockets (a client
 * and the backend the ingress picked for it). It can also accept the clients and make the
 * backend connections itself (relay_accept, relay_connect_pair), so the caller handles no
 * socket of its own per connection. It owns one epoll fd that the caller's event
 * loop watches; every call runs on the caller's thread (the engine never starts a thread),
 * and relay_poll() touches no Python object, so a wrapper may run it without the GIL.
 * One relay_t must not be used from two threads at once.
 *
 * Bulk directions of TCP pairs move by splice(2) through pipes from a pool (relay_pipe.h);
 * relay_create() reads MESHKIT_RELAY_SPLICE ("0": copy only; "1": every TCP pair; else, the
 * default, pairs whose legs both run through NICs, not loopback or veth) and
 * MESHKIT_RELAY_PIPES (the pool's cap, default 64). A process with SIGPIPE at SIG_DFL gets
 * no splicing, as splice(2) into a reset socket raises SIGPIPE.
 *
 * The pure-Python twin with identical behaviour is meshkit/l4/relay.py.
 */
#ifndef MESHKIT_RELAY_H
#define MESHKIT_RELAY_H

#include <stddef.h>
#include <stdint.h>

#include "ctable.h"

/* Why a pair finished; the order matches the reason strings of the Python API. */
enum relay_reason {
    RELAY_DONE = 0,   /* both directions reached EOF and were flushed */
    RELAY_RESET = 1,  /* a socket error (ECONNRESET, EPIPE, ...) on either side */
    RELAY_IDLE = 2,   /* no bytes either way for the pair's idle timeout */
    RELAY_CLOSED = 3, /* relay_close_pair() or relay_close_all() */
    RELAY_CONNECT = 4, /* the backend connect failed; the pair stays, FAILED (see below) */
};

/* Pair states. A pair made by relay_add_pair() starts RELAYING; one made by
 * relay_connect_pair() starts CONNECTING and becomes RELAYING when the connect succeeds, or
 * FAILED (backend fd closed, client fd kept open, a RELAY_CONNECT record from relay_poll())
 * when it does not. A FAILED pair waits for relay_retry_pair() or relay_close_pair(). */
enum relay_state {
    RELAY_ST_RELAYING = 0,
    RELAY_ST_CONNECTING = 1,
    RELAY_ST_FAILED = 2,
};

/* One accepted connection: the fd (non-blocking, close-on-exec, TCP_NODELAY) and the peer's
 * address as inet_ntop() text ("" and 0 for a peer that is not IPv4/IPv6). */
#define RELAY_IP_TEXT 46 /* INET6_ADDRSTRLEN */
typedef struct relay_accepted {
    int fd;
    uint16_t port;
    char ip[RELAY_IP_TEXT];
} relay_accepted_t;

typedef struct relay_finished {
    int32_t pair_id;
    int32_t reason;          /* enum relay_reason */
    uint64_t bytes_c2b;      /* client bytes delivered to the backend, preamble excluded */
    uint64_t bytes_b2c;      /* backend bytes delivered to the client */
} relay_finished_t;

typedef struct relay relay_t;

/* A relay with per-direction buffers of bufsize bytes (a copying bulk direction reads and
 * may hold up to max(bufsize, 256 KiB)); NULL with errno set on failure. */
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

/* Accepts up to max_count connections from the non-blocking listening socket listen_fd
 * until EAGAIN, into out[]. EINTR is retried; errors that concern one connection only
 * (ECONNABORTED, EPROTO, ENETDOWN, EHOSTUNREACH, EPERM, ...) skip it. Any other error
 * (EMFILE, ENFILE, ENOBUFS, ENOMEM, EBADF, ...) stops: -errno when nothing was accepted,
 * else the count. Returns the count (0 when nothing is pending); the caller owns the fds. */
int relay_accept(int listen_fd, relay_accepted_t *out, int max_count);

/* Starts a non-blocking connect to ip (IPv4 or IPv6 text, as inet_pton reads it) and port
 * and makes a CONNECTING pair of client_fd and the new backend socket (TCP_NODELAY). When
 * the connect succeeds the pair starts relaying (preamble first, idle timeout counted from
 * then); when it fails, or has not finished connect_timeout seconds after now (if
 * connect_timeout > 0; ETIMEDOUT), relay_poll() reports a RELAY_CONNECT record. A failure
 * of socket() or connect() itself is reported the same way, by the next relay_poll().
 * Returns the pair id (>= 0), having taken client_fd; or -errno without taking client_fd:
 * -EINVAL for a bad ip, port (1-65535), fd or a preamble longer than bufsize. */
int relay_connect_pair(relay_t *r, int client_fd, const char *ip, int port, double idle_timeout,
                       double now, const char *preamble, size_t preamble_len,
                       double connect_timeout);

/* A FAILED pair connects again, to ip and port, with the same client, id and idle timeout.
 * 0 on success, else -errno and the pair stays FAILED: -EINVAL when the pair is unknown or
 * not FAILED, or for a bad ip, port or preamble. */
int relay_retry_pair(relay_t *r, int pair_id, const char *ip, int port, double now,
                     const char *preamble, size_t preamble_len, double connect_timeout);

/* errno of the connect failure of a FAILED pair (ETIMEDOUT for a timeout), else 0. */
int relay_connect_error(const relay_t *r, int pair_id);

/* Handles every ready event, then expires idle pairs and connect timeouts. Returns how many pairs finished
 * (records in *out, valid until the next call into the relay) or -errno. */
int relay_poll(relay_t *r, double now, const relay_finished_t **out);

/* Closes one pair now (in any state) with the given reason; 1 and *out filled, or 0 if pair_id is unknown. */
int relay_close_pair(relay_t *r, int pair_id, int reason, relay_finished_t *out);

/* Closes every pair (reason RELAY_CLOSED); returns the count, records in *out as above. */
int relay_close_all(relay_t *r, const relay_finished_t **out);

/* Live byte counts of a pair (0 before it relays): 1 and the counts, or 0 if pair_id is unknown. */
int relay_get_stats(const relay_t *r, int pair_id, uint64_t *c2b, uint64_t *b2c);

/* Bulk-read buffers (RELAY_BULK_READ bytes each) held by directions or in flight, at most
 * RELAY_BIG_MAX: what the relay's memory for stalled bulk flows is bounded by. */
uint32_t relay_big_in_use(const relay_t *r);

/* The fast lane: accepts up to max_count clients as relay_accept() does (same errno rules)
 * and, for each, without leaving C: builds the flow key (proto 6, the peer's address and port,
 * then dst's address and port; dst is a template whose src/sport are ignored), places it with
 * ct_lookup(t, key, now) and starts the connect to the backend's address (ct_set_address) as
 * relay_connect_pair() does (no preamble). A client is closed at once and counted in *refused
 * when no backend is up, when the picked backend has no address (its flow is released again)
 * or when its peer is not IPv4/IPv6. Returns how many clients were accepted (refused ones
 * included), or -errno when an error stopped it before any was accepted.
 *
 * A served pair remembers t, its key and backend id. When it finishes for any reason (done,
 * reset, idle, closed) the engine calls ct_release(t, key) and ct_add_bytes(t, backend,
 * c2b + b2c) before reporting it. Not for a FAILED pair: from its RELAY_CONNECT record until
 * relay_retry_pair() the flow is the owner's (it releases/places it itself and names the new
 * backend with relay_set_backend()); a FAILED pair closed by the owner releases nothing.
 * The table must outlive every served pair on it (relay_table_pairs() tells how many). */
int relay_serve(relay_t *r, int listen_fd, ct_table *t, const ct_key *dst, double idle_timeout,
                double connect_timeout, double now, int max_count, int *refused);

/* The key and backend of a served pair: 1, or 0 for an unknown or unserved pair. */
int relay_flow_of(const relay_t *r, int pair_id, ct_key *key, uint32_t *backend);

/* Names the backend a served pair is on now (after the owner placed its flow elsewhere for a
 * retry); 1, or 0 for an unknown or unserved pair. */
int relay_set_backend(relay_t *r, int pair_id, uint32_t backend);

/* Closes every served, not FAILED pair of t on backend (reason RELAY_CLOSED, flows released
 * as above), except that a pair still connecting fails as a refused connect would (reason
 * RELAY_CONNECT, ECONNABORTED), for a retry elsewhere; returns the count, records in *out
 * (valid until the next call). */
int relay_close_backend(relay_t *r, const ct_table *t, uint32_t backend,
                        const relay_finished_t **out);

/* Open served pairs on table t, in any state. */
size_t relay_table_pairs(const relay_t *r, const ct_table *t);

/* Goes up by one whenever the last served pair of some table finishes. */
uint64_t relay_table_epoch(const relay_t *r);

/* Bytes so far of pair i (any id below relay_slots()) if it is served on t and not FAILED:
 * 1, its backend and c2b + b2c; else 0. */
int relay_served_bytes(const relay_t *r, uint32_t i, const ct_table *t, uint32_t *backend,
                       uint64_t *bytes);

/* Pair ids below this may exist. */
uint32_t relay_slots(const relay_t *r);

/* Number of open pairs, in any state. */
size_t relay_count_pairs(const relay_t *r);

#endif /* MESHKIT_RELAY_H */
