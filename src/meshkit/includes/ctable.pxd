# Declarations of includes/ctable.h (the C connection table) for the Cython wrapper in
# _ctable.pxi; the header documents byte order and the exact policy definitions.
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t


cdef extern from "ctable.h" nogil:
    const unsigned int CT_MAGLEV_SIZE

    enum ct_policy:
        CT_ROUND_ROBIN
        CT_LEAST_CONN
        CT_RANDOM
        CT_MAGLEV

    enum ct_status:
        CT_OK
        CT_ENOMEM
        CT_EEXIST
        CT_ENOENT
        CT_EINVAL

    ctypedef struct ct_key:
        uint8_t src[16]
        uint8_t dst[16]
        uint16_t sport
        uint16_t dport
        uint8_t proto
        uint8_t src_family
        uint8_t dst_family
        uint8_t pad

    ctypedef struct ct_flow:
        ct_key key
        uint32_t backend
        double last_seen

    ctypedef struct ct_backend:
        uint32_t id
        uint32_t weight
        int up
        int64_t current
        uint64_t active
        uint64_t total
        uint64_t bytes

    ctypedef struct ct_table:
        pass

    ct_table *ct_new(int policy, uint64_t seed)
    void ct_free(ct_table *t)
    int ct_add_backend(ct_table *t, uint32_t id, uint32_t weight, int up)
    int ct_remove_backend(ct_table *t, uint32_t id, ct_flow **out, size_t *n_out)
    int ct_set_up(ct_table *t, uint32_t id, int up, ct_flow **out, size_t *n_out)
    int ct_set_weight(ct_table *t, uint32_t id, uint32_t weight)
    int ct_add_bytes(ct_table *t, uint32_t id, uint64_t nbytes)
    int ct_set_address(ct_table *t, uint32_t id, const uint8_t *addr, int family, uint16_t port)
    int ct_get_address(const ct_table *t, uint32_t id, uint8_t *addr, int *family,
                       uint16_t *port)
    const ct_backend *ct_get_backend(const ct_table *t, uint32_t id)
    size_t ct_backend_count(const ct_table *t)
    const ct_backend *ct_backend_at(const ct_table *t, size_t i)
    int ct_lookup(ct_table *t, const ct_key *key, double now, uint32_t *backend)
    int ct_assign(ct_table *t, const ct_key *key, uint32_t id, double now)
    int ct_find(const ct_table *t, const ct_key *key, uint32_t *backend)
    int ct_release(ct_table *t, const ct_key *key, uint32_t *backend)
    ptrdiff_t ct_expire(ct_table *t, double now, double idle, ct_flow **out)
    size_t ct_len(const ct_table *t)
    void ct_free_flows(ct_flow *flows)
    ptrdiff_t ct_maglev_table(ct_table *t, const uint32_t **table)
    size_t ct_format_addr(const uint8_t *addr, int family, char *buf)
