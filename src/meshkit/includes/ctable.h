/* ctable.h - the connection table of meshkit's L4 load balancer (VIP and routing mesh).
 *
 * It holds two things: the backends (sorted by id, with weight, up flag and counters) and the
 * flow table, an open-addressing hash from a 5-tuple to the backend the flow is pinned to. A
 * flow, once placed, never moves while its backend stays up: policies only decide new flows.
 * Nothing here reads a clock or does I/O; callers pass `now` in, so runs are reproducible.
 *
 * Byte order: addresses in ct_key are in network byte order (exactly what inet_pton writes);
 * an IPv4 address uses the first 4 of the 16 bytes and the rest are zero, and the family byte
 * (4 or 6) keeps 1.2.3.4 and ::ffff:1.2.3.4 apart. Ports, proto and backend ids are host-order
 * integers. The in-memory flow hash may differ between hosts; the Maglev hash does not, since it
 * only hashes address bytes in network order and integer ids.
 *
 * Policies (meshkit.lb.conntable.PyConnTable implements the very same definitions):
 *
 *   Candidates are the UP backends in ascending id order.
 *
 *   round_robin  nginx's smooth weighted round robin: for each candidate, current += weight and
 *                total += weight; pick the candidate with the largest current (the first in id
 *                order on ties); picked.current -= total. Non-candidates keep their current; a
 *                new backend starts at current 0; set_weight leaves current alone.
 *   least_conn   candidates are narrowed to those minimizing active/weight, compared as
 *                a.active * b.weight < b.active * a.weight (no floats); then smooth weighted
 *                round robin as above over those candidates only (same `current` fields).
 *   random       xorshift64* (state ^= state >> 12; state ^= state << 25; state ^= state >> 27;
 *                out = state * 0x2545F4914F6CDD1D mod 2^64), state = seed mod 2^64, or
 *                0x9E3779B97F4A7C15 when that is 0. r = next() % total_weight; walk candidates:
 *                pick the first with r < weight, else r -= weight. No draw without candidates.
 *   maglev       Maglev (Eisenbud et al., NSDI 2016) with M = 65537. With
 *                  mix64(z) = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27;
 *                            z *= 0x94D049BB133111EB; z ^= z >> 31   (splitmix64 finalizer)
 *                  offset = mix64(id) % M, skip = mix64(id ^ 0x9E3779B97F4A7C15) % (M - 1) + 1,
 *                the preference list of a backend is (offset + j * skip) % M for j = 0, 1, ...
 *                Population: repeat rounds until all M entries are filled; in a round each
 *                candidate in id order takes `weight` turns; a turn walks its preference list
 *                past filled entries and claims the first empty one; stop the moment the table
 *                is full (even mid-round). The pick is table[fnv1a64(source address) % M],
 *                fnv1a64 over 4 bytes (IPv4) or 16 bytes (IPv6) in network order, offset basis
 *                0xCBF29CE484222325, prime 0x100000001B3. Only the source address is hashed, so
 *                a client sticks to one backend on every node that has the same backends. The
 *                table is rebuilt lazily after the up set or an up backend's weight changed;
 *                it is empty when no backend is up.
 *
 * Counters: a new flow does active += 1 and total += 1 on its backend; release and expire do
 * active -= 1; marking a backend down drops its flows (active becomes 0, total is kept).
 */
#ifndef MESHKIT_CTABLE_H
#define MESHKIT_CTABLE_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define CT_MAGLEV_SIZE 65537u

enum ct_policy { CT_ROUND_ROBIN = 0, CT_LEAST_CONN = 1, CT_RANDOM = 2, CT_MAGLEV = 3 };

/* Return codes of the functions that can fail. */
enum ct_status { CT_OK = 0, CT_ENOMEM = -1, CT_EEXIST = -2, CT_ENOENT = -3, CT_EINVAL = -4 };

typedef struct ct_key {
    uint8_t src[16];   /* network byte order */
    uint8_t dst[16];   /* network byte order */
    uint16_t sport;    /* host byte order */
    uint16_t dport;    /* host byte order */
    uint8_t proto;     /* 6 (TCP) or 17 (UDP) */
    uint8_t src_family; /* 4 or 6 */
    uint8_t dst_family; /* 4 or 6 */
    uint8_t pad;       /* always 0, so keys compare and hash as plain bytes */
} ct_key;

typedef struct ct_flow {
    ct_key key;
    uint32_t backend;
    double last_seen;
} ct_flow;

typedef struct ct_backend {
    uint32_t id;
    uint32_t weight;
    int up;
    int64_t current;   /* smooth weighted round robin state */
    uint64_t active;
    uint64_t total;
    uint64_t bytes;    /* wraps modulo 2^64 */
    union {            /* where the backend listens (ct_set_address), for the relay's connect */
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } addr;
    socklen_t addrlen; /* 0: no address set */
} ct_backend;

typedef struct ct_table ct_table;

ct_table *ct_new(int policy, uint64_t seed);
void ct_free(ct_table *t);

int ct_add_backend(ct_table *t, uint32_t id, uint32_t weight, int up);
/* Removing a backend, or marking it down, drops its flows; when `out` is not NULL the dropped
 * flows are returned in a malloc'd array (free with ct_free_flows) and *n_out holds the count. */
int ct_remove_backend(ct_table *t, uint32_t id, ct_flow **out, size_t *n_out);
int ct_set_up(ct_table *t, uint32_t id, int up, ct_flow **out, size_t *n_out);
int ct_set_weight(ct_table *t, uint32_t id, uint32_t weight);
int ct_add_bytes(ct_table *t, uint32_t id, uint64_t nbytes);
/* Remembers where backend `id` listens: addr (network order, 4 bytes used for family 4, 16 for
 * family 6) and port (host order, 1-65535). CT_OK; CT_ENOENT unknown backend; CT_EINVAL. */
int ct_set_address(ct_table *t, uint32_t id, const uint8_t *addr, int family, uint16_t port);
/* 1 and the address as above (addr needs 16 bytes; an IPv4 one is zero-padded); 0 when none is
 * set; CT_ENOENT unknown backend. */
int ct_get_address(const ct_table *t, uint32_t id, uint8_t *addr, int *family, uint16_t *port);
/* NULL when unknown; the pointer is valid until the next add/remove of a backend. */
const ct_backend *ct_get_backend(const ct_table *t, uint32_t id);
size_t ct_backend_count(const ct_table *t);
const ct_backend *ct_backend_at(const ct_table *t, size_t i); /* ascending id order */

/* 1: *backend set (existing flow refreshed, or new flow placed); 0: no backend is up, nothing
 * inserted; CT_ENOMEM. */
int ct_lookup(ct_table *t, const ct_key *key, double now, uint32_t *backend);
/* Places a new flow on backend `id`, bypassing the policy (a retry after a failed connect).
 * CT_OK; CT_EEXIST if the flow is known; CT_ENOENT unknown backend; CT_EINVAL backend down;
 * CT_ENOMEM. */
int ct_assign(ct_table *t, const ct_key *key, uint32_t id, double now);
int ct_find(const ct_table *t, const ct_key *key, uint32_t *backend);      /* 1 or 0 */
int ct_release(ct_table *t, const ct_key *key, uint32_t *backend);         /* 1 or 0 */
/* Drops flows with last_seen <= now - idle; returns how many, or CT_ENOMEM. */
ptrdiff_t ct_expire(ct_table *t, double now, double idle, ct_flow **out);
size_t ct_len(const ct_table *t);
void ct_free_flows(ct_flow *flows);

/* Rebuilds if stale; *table points at CT_MAGLEV_SIZE ids, or the count is 0 when no backend is
 * up. Returns the count or CT_ENOMEM. */
ptrdiff_t ct_maglev_table(ct_table *t, const uint32_t **table);

/* Text form of an address: dotted quad for IPv4; for IPv6 lowercase hex groups with the first
 * longest run of two or more zero groups written as "::" (what Python 3.11's
 * ipaddress.IPv6Address.compressed gives; never a dotted tail). `buf` needs 40 bytes. */
size_t ct_format_addr(const uint8_t *addr, int family, char *buf);

#endif
