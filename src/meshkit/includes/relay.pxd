# Declarations of the TCP relay engine's C API (relay.h); the Python class is in _relay.pxi.
from libc.stdint cimport int32_t, uint16_t, uint32_t, uint64_t

from meshkit.includes.ctable cimport ct_key, ct_table


cdef extern from "relay.h" nogil:
    enum relay_reason:
        RELAY_DONE
        RELAY_RESET
        RELAY_IDLE
        RELAY_CLOSED
        RELAY_CONNECT

    enum:
        RELAY_IP_TEXT

    ctypedef struct relay_accepted_t:
        int fd
        uint16_t port
        char ip[RELAY_IP_TEXT]

    ctypedef struct relay_finished_t:
        int32_t pair_id
        int32_t reason
        uint64_t bytes_c2b
        uint64_t bytes_b2c

    ctypedef struct relay_t:
        pass

    relay_t *relay_create(size_t bufsize)
    void relay_destroy(relay_t *r)
    int relay_fileno(const relay_t *r)
    int relay_add_pair(relay_t *r, int client_fd, int backend_fd, double idle_timeout,
                       double now, const char *preamble, size_t preamble_len)
    int relay_accept(int listen_fd, relay_accepted_t *out, int max_count)
    int relay_connect_pair(relay_t *r, int client_fd, const char *ip, int port,
                           double idle_timeout, double now, const char *preamble,
                           size_t preamble_len, double connect_timeout)
    int relay_retry_pair(relay_t *r, int pair_id, const char *ip, int port, double now,
                         const char *preamble, size_t preamble_len, double connect_timeout)
    int relay_connect_error(const relay_t *r, int pair_id)
    int relay_poll(relay_t *r, double now, const relay_finished_t **out)
    int relay_close_pair(relay_t *r, int pair_id, int reason, relay_finished_t *out)
    int relay_close_all(relay_t *r, const relay_finished_t **out)
    int relay_get_stats(const relay_t *r, int pair_id, uint64_t *c2b, uint64_t *b2c)
    uint32_t relay_big_in_use(const relay_t *r)
    size_t relay_count_pairs(const relay_t *r)
    int relay_serve(relay_t *r, int listen_fd, ct_table *t, const ct_key *dst,
                    double idle_timeout, double connect_timeout, double now, int max_count,
                    int *refused)
    int relay_flow_of(const relay_t *r, int pair_id, ct_key *key, uint32_t *backend)
    int relay_set_backend(relay_t *r, int pair_id, uint32_t backend)
    int relay_close_backend(relay_t *r, const ct_table *t, uint32_t backend,
                            const relay_finished_t **out)
    size_t relay_table_pairs(const relay_t *r, const ct_table *t)
    uint64_t relay_table_epoch(const relay_t *r)
    int relay_served_bytes(const relay_t *r, uint32_t i, const ct_table *t, uint32_t *backend,
                           uint64_t *bytes)
    uint32_t relay_slots(const relay_t *r)
