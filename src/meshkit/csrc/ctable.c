/* ctable.c - the connection table: backends, load-balancing policies and the flow hash.
 * Definitions of every policy are in includes/ctable.h; PyConnTable mirrors them exactly. */
#include "ctable.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#define MAGLEV_M CT_MAGLEV_SIZE
#define INITIAL_SLOTS 64u

/* 64 bytes, one cache line: a probe that hits touches a single line. hash == 0 marks an empty
 * slot (hash_key never returns 0). */
typedef struct slot {
    ct_flow flow;
    uint64_t hash;
} slot;

_Static_assert(sizeof(slot) == 64, "a slot should fill exactly one cache line");

struct ct_table {
    int policy;
    uint64_t rng;
    ct_backend *backends; /* sorted by id: policies walk them in id order */
    size_t n_backends, cap_backends;
    slot *slots;          /* linear probing, power-of-two size, backward-shift deletion */
    size_t n_slots, n_flows;
    uint32_t *maglev;     /* MAGLEV_M entries once built */
    int maglev_stale;
    int maglev_empty;
};

/* ---- hashing ---------------------------------------------------------------------------- */

static uint64_t mix_u64(uint64_t z)
{
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ull;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBull;
    z ^= z >> 31;
    return z;
}

static uint64_t hash_key(const ct_key *k)
{
    uint64_t w[5];
    memcpy(w, k, sizeof w);
    uint64_t h = 0x9E3779B97F4A7C15ull;
    for (int i = 0; i < 5; i++)
        h = mix_u64(h ^ w[i]) + 0x9E3779B97F4A7C15ull;
    return h | 1ull << 63; /* never 0; slot indices come from the low bits */
}

static uint64_t fnv1a_bytes(const uint8_t *p, size_t n)
{
    uint64_t h = 0xCBF29CE484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static uint64_t next_random(ct_table *t)
{
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

/* ---- backends --------------------------------------------------------------------------- */

/* Index of `id`, or of the place it would be inserted (then *found is 0). */
static size_t search_backend(const ct_table *t, uint32_t id, int *found)
{
    size_t lo = 0, hi = t->n_backends;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->backends[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = lo < t->n_backends && t->backends[lo].id == id;
    return lo;
}

static ct_backend *find_backend(const ct_table *t, uint32_t id)
{
    int found;
    size_t i = search_backend(t, id, &found);
    return found ? &t->backends[i] : NULL;
}

static ct_backend *pick_swrr(ct_table *t, const ct_backend *least)
{
    ct_backend *best = NULL;
    int64_t total = 0;
    for (size_t i = 0; i < t->n_backends; i++) {
        ct_backend *b = &t->backends[i];
        if (!b->up)
            continue;
        if (least && b->active * least->weight != least->active * b->weight)
            continue;
        b->current += b->weight;
        total += b->weight;
        if (!best || b->current > best->current)
            best = b;
    }
    if (best)
        best->current -= total;
    return best;
}

static ct_backend *pick_least_conn(ct_table *t)
{
    const ct_backend *least = NULL;
    for (size_t i = 0; i < t->n_backends; i++) {
        const ct_backend *b = &t->backends[i];
        if (b->up && (!least || b->active * least->weight < least->active * b->weight))
            least = b;
    }
    return least ? pick_swrr(t, least) : NULL;
}

static ct_backend *pick_random(ct_table *t)
{
    uint64_t total = 0;
    for (size_t i = 0; i < t->n_backends; i++)
        if (t->backends[i].up)
            total += t->backends[i].weight;
    if (total == 0)
        return NULL;
    uint64_t r = next_random(t) % total;
    for (size_t i = 0; i < t->n_backends; i++) {
        ct_backend *b = &t->backends[i];
        if (!b->up)
            continue;
        if (r < b->weight)
            return b;
        r -= b->weight;
    }
    return NULL; /* unreachable: r < total */
}

static int build_maglev(ct_table *t)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_backends; i++)
        n += t->backends[i].up != 0;
    t->maglev_stale = 0;
    t->maglev_empty = n == 0;
    if (n == 0)
        return CT_OK;
    if (!t->maglev && !(t->maglev = malloc(MAGLEV_M * sizeof *t->maglev)))
        return CT_ENOMEM;
    uint64_t *pos = malloc(n * sizeof *pos), *skip = malloc(n * sizeof *skip);
    const ct_backend **up = malloc(n * sizeof *up);
    uint8_t *filled = calloc(MAGLEV_M, 1);
    if (!pos || !skip || !up || !filled) {
        free(pos), free(skip), free(up), free(filled);
        t->maglev_stale = 1;
        return CT_ENOMEM;
    }
    n = 0;
    for (size_t i = 0; i < t->n_backends; i++) {
        const ct_backend *b = &t->backends[i];
        if (!b->up)
            continue;
        up[n] = b;
        pos[n] = mix_u64(b->id) % MAGLEV_M;
        skip[n] = mix_u64(b->id ^ 0x9E3779B97F4A7C15ull) % (MAGLEV_M - 1) + 1;
        n++;
    }
    /* pos[i] is the next unexamined preference of backend i; M is prime, so each walk visits
     * every entry and always finds an empty one while the table is not full. */
    size_t count = 0;
    for (;;) {
        for (size_t i = 0; i < n; i++) {
            for (uint32_t w = 0; w < up[i]->weight; w++) {
                uint64_t c = pos[i];
                while (filled[c])
                    c = (c + skip[i]) % MAGLEV_M;
                filled[c] = 1;
                t->maglev[c] = up[i]->id;
                pos[i] = (c + skip[i]) % MAGLEV_M;
                if (++count == MAGLEV_M)
                    goto done;
            }
        }
    }
done:
    free(pos), free(skip), free(up), free(filled);
    return CT_OK;
}

static ct_backend *pick_maglev(ct_table *t, const ct_key *key)
{
    if (t->maglev_stale && build_maglev(t) != CT_OK)
        return NULL;
    if (t->maglev_empty)
        return NULL;
    uint64_t h = fnv1a_bytes(key->src, key->src_family == 4 ? 4 : 16);
    return find_backend(t, t->maglev[h % MAGLEV_M]);
}

/* ---- flow hash -------------------------------------------------------------------------- */

static size_t find_slot(const ct_table *t, const ct_key *key, uint64_t h)
{
    size_t mask = t->n_slots - 1, i = h & mask;
    while (t->slots[i].hash) {
        if (t->slots[i].hash == h && memcmp(&t->slots[i].flow.key, key, sizeof *key) == 0)
            return i;
        i = (i + 1) & mask;
    }
    return i; /* the empty slot where the key would go */
}

static slot *alloc_slots(size_t n)
{
    slot *s = aligned_alloc(64, n * sizeof *s);
    if (s)
        memset(s, 0, n * sizeof *s);
    return s;
}

static int grow_slots(ct_table *t)
{
    size_t n = t->n_slots * 2;
    slot *s = alloc_slots(n);
    if (!s)
        return CT_ENOMEM;
    for (size_t i = 0; i < t->n_slots; i++) {
        if (!t->slots[i].hash)
            continue;
        size_t j = t->slots[i].hash & (n - 1);
        while (s[j].hash)
            j = (j + 1) & (n - 1);
        s[j] = t->slots[i];
    }
    free(t->slots);
    t->slots = s;
    t->n_slots = n;
    return CT_OK;
}

/* Backward-shift deletion keeps every probe chain unbroken without tombstones. */
static void delete_slot(ct_table *t, size_t i)
{
    size_t mask = t->n_slots - 1, j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!t->slots[j].hash)
            break;
        size_t home = t->slots[j].hash & mask;
        /* Move j into the hole at i unless its home lies cyclically in (i, j]. */
        if (((j - home) & mask) >= ((j - i) & mask)) {
            t->slots[i] = t->slots[j];
            i = j;
        }
    }
    t->slots[i].hash = 0;
    t->n_flows--;
}

static void drop_flow(ct_table *t, size_t i)
{
    ct_backend *b = find_backend(t, t->slots[i].flow.backend);
    if (b && b->active)
        b->active--;
    delete_slot(t, i);
}

/* Removes every flow matching the predicate; collected into *out when out is not NULL. */
typedef int (*flow_pred)(const ct_flow *f, uint32_t id, double cutoff);

static int on_backend(const ct_flow *f, uint32_t id, double cutoff)
{
    return f->backend == id;
}

static int is_idle(const ct_flow *f, uint32_t id, double cutoff)
{
    return f->last_seen <= cutoff;
}

static ptrdiff_t drop_matching(ct_table *t, flow_pred pred, uint32_t id, double cutoff,
                               ct_flow **out)
{
    size_t n = 0;
    for (size_t i = 0; i < t->n_slots; i++)
        n += t->slots[i].hash && pred(&t->slots[i].flow, id, cutoff);
    ct_flow *flows = malloc((n ? n : 1) * sizeof *flows);
    if (!flows)
        return CT_ENOMEM;
    /* Collect first, delete after: backward shifts would otherwise move unvisited entries. */
    size_t k = 0;
    for (size_t i = 0; i < t->n_slots && k < n; i++)
        if (t->slots[i].hash && pred(&t->slots[i].flow, id, cutoff))
            flows[k++] = t->slots[i].flow;
    for (k = 0; k < n; k++) {
        uint64_t h = hash_key(&flows[k].key);
        drop_flow(t, find_slot(t, &flows[k].key, h));
    }
    if (out)
        *out = flows;
    else
        free(flows);
    return (ptrdiff_t)n;
}

/* ---- public API ------------------------------------------------------------------------- */

ct_table *ct_new(int policy, uint64_t seed)
{
    if (policy < CT_ROUND_ROBIN || policy > CT_MAGLEV)
        return NULL;
    ct_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->slots = alloc_slots(INITIAL_SLOTS);
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->n_slots = INITIAL_SLOTS;
    t->policy = policy;
    t->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    t->maglev_stale = 1;
    return t;
}

void ct_free(ct_table *t)
{
    if (!t)
        return;
    free(t->backends);
    free(t->slots);
    free(t->maglev);
    free(t);
}

int ct_add_backend(ct_table *t, uint32_t id, uint32_t weight, int up)
{
    if (weight < 1 || weight > 65535)
        return CT_EINVAL;
    int found;
    size_t i = search_backend(t, id, &found);
    if (found)
        return CT_EEXIST;
    if (t->n_backends == t->cap_backends) {
        size_t cap = t->cap_backends ? t->cap_backends * 2 : 8;
        ct_backend *b = realloc(t->backends, cap * sizeof *b);
        if (!b)
            return CT_ENOMEM;
        t->backends = b;
        t->cap_backends = cap;
    }
    memmove(&t->backends[i + 1], &t->backends[i], (t->n_backends - i) * sizeof *t->backends);
    t->backends[i] = (ct_backend){.id = id, .weight = weight, .up = up != 0};
    t->n_backends++;
    if (up)
        t->maglev_stale = 1;
    return CT_OK;
}

int ct_remove_backend(ct_table *t, uint32_t id, ct_flow **out, size_t *n_out)
{
    int found;
    size_t i = search_backend(t, id, &found);
    if (!found)
        return CT_ENOENT;
    ptrdiff_t n = drop_matching(t, on_backend, id, 0.0, out);
    if (n < 0)
        return (int)n;
    if (n_out)
        *n_out = (size_t)n;
    if (t->backends[i].up)
        t->maglev_stale = 1;
    memmove(&t->backends[i], &t->backends[i + 1], (t->n_backends - i - 1) * sizeof *t->backends);
    t->n_backends--;
    return CT_OK;
}

int ct_set_up(ct_table *t, uint32_t id, int up, ct_flow **out, size_t *n_out)
{
    ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    if (n_out)
        *n_out = 0;
    if (out)
        *out = NULL;
    up = up != 0;
    if (!up) {
        ptrdiff_t n = drop_matching(t, on_backend, id, 0.0, out);
        if (n < 0)
            return (int)n;
        if (n_out)
            *n_out = (size_t)n;
    }
    if (b->up != up)
        t->maglev_stale = 1;
    b->up = up;
    return CT_OK;
}

int ct_set_weight(ct_table *t, uint32_t id, uint32_t weight)
{
    if (weight < 1 || weight > 65535)
        return CT_EINVAL;
    ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    if (b->up && b->weight != weight)
        t->maglev_stale = 1;
    b->weight = weight;
    return CT_OK;
}

int ct_add_bytes(ct_table *t, uint32_t id, uint64_t nbytes)
{
    ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    b->bytes += nbytes;
    return CT_OK;
}

int ct_set_address(ct_table *t, uint32_t id, const uint8_t *addr, int family, uint16_t port)
{
    ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    if (port == 0 || (family != 4 && family != 6))
        return CT_EINVAL;
    memset(&b->addr, 0, sizeof b->addr);
    if (family == 4) {
        b->addr.in4.sin_family = AF_INET;
        b->addr.in4.sin_port = htons(port);
        memcpy(&b->addr.in4.sin_addr, addr, 4);
        b->addrlen = sizeof b->addr.in4;
    } else {
        b->addr.in6.sin6_family = AF_INET6;
        b->addr.in6.sin6_port = htons(port);
        memcpy(&b->addr.in6.sin6_addr, addr, 16);
        b->addrlen = sizeof b->addr.in6;
    }
    return CT_OK;
}

int ct_get_address(const ct_table *t, uint32_t id, uint8_t *addr, int *family, uint16_t *port)
{
    const ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    if (!b->addrlen)
        return 0;
    memset(addr, 0, 16);
    if (b->addr.sa.sa_family == AF_INET) {
        memcpy(addr, &b->addr.in4.sin_addr, 4);
        *family = 4;
        *port = ntohs(b->addr.in4.sin_port);
    } else {
        memcpy(addr, &b->addr.in6.sin6_addr, 16);
        *family = 6;
        *port = ntohs(b->addr.in6.sin6_port);
    }
    return 1;
}

const ct_backend *ct_get_backend(const ct_table *t, uint32_t id)
{
    return find_backend(t, id);
}

size_t ct_backend_count(const ct_table *t)
{
    return t->n_backends;
}

const ct_backend *ct_backend_at(const ct_table *t, size_t i)
{
    return i < t->n_backends ? &t->backends[i] : NULL;
}

static int insert_flow(ct_table *t, const ct_key *key, uint64_t h, size_t i, ct_backend *b,
                       double now, uint32_t *backend);

int ct_lookup(ct_table *t, const ct_key *key, double now, uint32_t *backend)
{
    uint64_t h = hash_key(key);
    size_t i = find_slot(t, key, h);
    if (t->slots[i].hash) {
        t->slots[i].flow.last_seen = now;
        *backend = t->slots[i].flow.backend;
        return 1;
    }
    ct_backend *b;
    switch (t->policy) {
    case CT_LEAST_CONN: b = pick_least_conn(t); break;
    case CT_RANDOM: b = pick_random(t); break;
    case CT_MAGLEV:
        b = pick_maglev(t, key);
        if (!b && t->maglev_stale)
            return CT_ENOMEM;
        break;
    default: b = pick_swrr(t, NULL); break;
    }
    if (!b)
        return 0;
    return insert_flow(t, key, h, i, b, now, backend);
}

/* Places a new flow in slot `i` (where find_slot said it belongs) on backend `b`. */
static int insert_flow(ct_table *t, const ct_key *key, uint64_t h, size_t i, ct_backend *b,
                       double now, uint32_t *backend)
{
    /* Keep the load factor at or below 1/2 so probe chains stay short. */
    if ((t->n_flows + 1) * 2 > t->n_slots) {
        uint32_t id = b->id;
        if (grow_slots(t) != CT_OK)
            return CT_ENOMEM;
        i = find_slot(t, key, h);
        b = find_backend(t, id);
    }
    t->slots[i].hash = h;
    t->slots[i].flow.key = *key;
    t->slots[i].flow.backend = b->id;
    t->slots[i].flow.last_seen = now;
    t->n_flows++;
    b->active++;
    b->total++;
    *backend = b->id;
    return 1;
}

int ct_assign(ct_table *t, const ct_key *key, uint32_t id, double now)
{
    uint64_t h = hash_key(key);
    size_t i = find_slot(t, key, h);
    if (t->slots[i].hash)
        return CT_EEXIST;
    ct_backend *b = find_backend(t, id);
    if (!b)
        return CT_ENOENT;
    if (!b->up)
        return CT_EINVAL;
    uint32_t placed;
    int rc = insert_flow(t, key, h, i, b, now, &placed);
    return rc == 1 ? CT_OK : rc;
}

int ct_find(const ct_table *t, const ct_key *key, uint32_t *backend)
{
    size_t i = find_slot(t, key, hash_key(key));
    if (!t->slots[i].hash)
        return 0;
    *backend = t->slots[i].flow.backend;
    return 1;
}

int ct_release(ct_table *t, const ct_key *key, uint32_t *backend)
{
    size_t i = find_slot(t, key, hash_key(key));
    if (!t->slots[i].hash)
        return 0;
    *backend = t->slots[i].flow.backend;
    drop_flow(t, i);
    return 1;
}

ptrdiff_t ct_expire(ct_table *t, double now, double idle, ct_flow **out)
{
    return drop_matching(t, is_idle, 0, now - idle, out);
}

size_t ct_len(const ct_table *t)
{
    return t->n_flows;
}

void ct_free_flows(ct_flow *flows)
{
    free(flows);
}

ptrdiff_t ct_maglev_table(ct_table *t, const uint32_t **table)
{
    if (t->maglev_stale && build_maglev(t) != CT_OK)
        return CT_ENOMEM;
    *table = t->maglev;
    return t->maglev_empty ? 0 : (ptrdiff_t)MAGLEV_M;
}

size_t ct_format_addr(const uint8_t *a, int family, char *buf)
{
    static const char hex[] = "0123456789abcdef";
    char *p = buf;
    if (family == 4) {
        for (int i = 0; i < 4; i++) {
            unsigned v = a[i];
            if (i)
                *p++ = '.';
            if (v >= 100)
                *p++ = (char)('0' + v / 100);
            if (v >= 10)
                *p++ = (char)('0' + v / 10 % 10);
            *p++ = (char)('0' + v % 10);
        }
        *p = 0;
        return (size_t)(p - buf);
    }
    unsigned g[8];
    for (int i = 0; i < 8; i++)
        g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    /* The first longest run of zero groups, only if at least two long (RFC 5952 4.2.2). */
    int best = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (g[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !g[j])
            j++;
        if (j - i > best_len)
            best = i, best_len = j - i;
        i = j;
    }
    if (best_len < 2)
        best = -1;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            *p++ = ':';
            if (i == 0)
                *p++ = ':';
            i += best_len - 1;
            continue;
        }
        int started = 0;
        for (int s = 12; s >= 0; s -= 4) {
            unsigned d = g[i] >> s & 0xF;
            if (d || started || s == 0) {
                *p++ = hex[d];
                started = 1;
            }
        }
        if (i < 7)
            *p++ = ':';
    }
    *p = 0;
    return (size_t)(p - buf);
}
