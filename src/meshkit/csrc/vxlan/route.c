/* route.c - the C VXLAN plane's sans-IO frame rules: the FDB (inner MAC -> peer) and
 * neighbour (inner IPv4 -> MAC) hash tables, the VXLAN header, the drop reasons' names, the
 * ARP proxy's replies and the TX decision for a frame read from a TAP (route). The threads
 * (datapath.c) and the table setters (_vxlan.c) share them; vx_route_frame exposes the
 * decision to tests, which compare it with the Python twin (net/vxlan/wire.py).
 */
#define _GNU_SOURCE
#include "vxplane.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char *const drop_names[VX_DROP_COUNT] = {
    "short", "bad_flags", "unknown_vni", "unknown_peer", "no_fdb", "broadcast",
    "arp_no_neigh", "tap_write_error", "tap_read_error", "send_error", "too_big", "recv_error",
    "bad_gso", "not_sealed", "unknown_key", "bad_tag", "replay", "too_old", "too_new",
    "no_key",
};


/* ------------------------------------------------------------------ hash tables */


uint64_t mac_key(const uint8_t *m)
{
    return ((uint64_t)m[0] << 40) | ((uint64_t)m[1] << 32) | ((uint64_t)m[2] << 24) |
           ((uint64_t)m[3] << 16) | ((uint64_t)m[4] << 8) | (uint64_t)m[5];
}

uint32_t be32_read(const uint8_t *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

size_t hash64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

/* Power of two with room for n entries at most half full. */
size_t table_size(size_t n)
{
    size_t size = 8;
    while (size < n * 2)
        size <<= 1;
    return size;
}

/* The open-addressing slot array of a table for n entries (*mask = slots - 1); NULL when out
 * of memory. Both tables are {mask, slots}, so they share this and free_table(). */
static void *alloc_slots(size_t n, size_t slot_size, size_t *mask)
{
    size_t size = table_size(n);
    void *slots = calloc(size, slot_size);
    if (slots)
        *mask = size - 1;
    return slots;
}

#define free_table(t)                                                                          \
    do {                                                                                       \
        if (t) {                                                                               \
            free((t)->slots);                                                                  \
            free(t);                                                                           \
        }                                                                                      \
    } while (0)

void free_fdb(struct fdb *t) { free_table(t); }

void free_neigh(struct neigh *t) { free_table(t); }

struct fdb *alloc_fdb(size_t n)
{
    struct fdb *t = calloc(1, sizeof(*t));
    if (t && !(t->slots = alloc_slots(n, sizeof(*t->slots), &t->mask))) {
        free(t);
        t = NULL;
    }
    return t;
}

static struct neigh *alloc_neigh(size_t n)
{
    struct neigh *t = calloc(1, sizeof(*t));
    if (t && !(t->slots = alloc_slots(n, sizeof(*t->slots), &t->mask))) {
        free(t);
        t = NULL;
    }
    return t;
}

/* Later entries for the same key replace earlier ones, as a Python dict built in order does. */
void fdb_put(struct fdb *t, uint64_t mac, uint32_t ip, uint32_t peer)
{
    size_t i = hash64(mac) & t->mask;
    while (t->slots[i].used && t->slots[i].mac != mac)
        i = (i + 1) & t->mask;
    t->slots[i] = (struct fdb_slot){.mac = mac, .ip = ip, .peer = peer, .used = 1};
}

const struct fdb_slot *fdb_get(const struct fdb *t, uint64_t mac)
{
    if (!t)
        return NULL;
    size_t i = hash64(mac) & t->mask;
    while (t->slots[i].used) {
        if (t->slots[i].mac == mac)
            return &t->slots[i];
        i = (i + 1) & t->mask;
    }
    return NULL;
}

static void neigh_put(struct neigh *t, uint32_t ip, const uint8_t *mac)
{
    size_t i = hash64(ip) & t->mask;
    while (t->slots[i].used && t->slots[i].ip != ip)
        i = (i + 1) & t->mask;
    t->slots[i].ip = ip;
    t->slots[i].used = 1;
    memcpy(t->slots[i].mac, mac, 6);
}

static const uint8_t *neigh_get(const struct neigh *t, uint32_t ip)
{
    if (!t)
        return NULL;
    size_t i = hash64(ip) & t->mask;
    while (t->slots[i].used) {
        if (t->slots[i].ip == ip)
            return t->slots[i].mac;
        i = (i + 1) & t->mask;
    }
    return NULL;
}

struct neigh *build_neigh(const uint8_t *neigh, size_t n)
{
    struct neigh *t = alloc_neigh(n);
    if (!t)
        return NULL;
    for (size_t i = 0; i < n; i++)
        neigh_put(t, be32_read(neigh + i * 10), neigh + i * 10 + 4);
    return t;
}

/* ------------------------------------------------------------------ sans-IO pieces */

void vx_encode_header(uint8_t *out, uint32_t vni)
{
    out[0] = 0x08;
    out[1] = out[2] = out[3] = 0;
    out[4] = (uint8_t)(vni >> 16);
    out[5] = (uint8_t)(vni >> 8);
    out[6] = (uint8_t)vni;
    out[7] = 0;
}

int vx_check_datagram(const uint8_t *buf, size_t len, uint32_t *vni)
{
    if (len < VX_HEADER_LEN + VX_ETH_HLEN)
        return VX_DROP_SHORT;
    if (!(buf[0] & 0x08))
        return VX_DROP_BAD_FLAGS;
    *vni = ((uint32_t)buf[4] << 16) | ((uint32_t)buf[5] << 8) | buf[6];
    return -1;
}

const char *vx_drop_name(int reason)
{
    if (reason < 0 || reason >= VX_DROP_COUNT)
        return NULL;
    return drop_names[reason];
}

/* An ARP request for IPv4 over Ethernet (not a gratuitous one): its target IP (host order)
 * in *target; 0 when the frame is anything else. */
static int arp_request_target(const uint8_t *f, size_t len, uint32_t *target)
{
    if (len < VX_ARP_FRAME_LEN || f[12] != 0x08 || f[13] != 0x06)
        return 0;
    const uint8_t *a = f + VX_ETH_HLEN;
    /* htype 1 (Ethernet), ptype 0x0800, hlen 6, plen 4, op 1 (request) */
    if (a[0] != 0 || a[1] != 1 || a[2] != 0x08 || a[3] != 0 || a[4] != 6 || a[5] != 4 ||
        a[6] != 0 || a[7] != 1)
        return 0;
    if (memcmp(a + 14, a + 24, 4) == 0) /* sender IP == target IP: an announcement */
        return 0;
    *target = be32_read(a + 24);
    return 1;
}

/* The 42-byte reply to request f, telling that `mac` has the requested IP. */
static void arp_build_reply(const uint8_t *f, const uint8_t *mac, uint8_t *out)
{
    const uint8_t *a = f + VX_ETH_HLEN;
    uint8_t *r = out + VX_ETH_HLEN;
    memcpy(out, a + 8, 6); /* to the requester's hardware address */
    memcpy(out + 6, mac, 6);
    out[12] = 0x08;
    out[13] = 0x06;
    r[0] = 0; r[1] = 1; r[2] = 0x08; r[3] = 0; r[4] = 6; r[5] = 4; r[6] = 0; r[7] = 2;
    memcpy(r + 8, mac, 6);    /* sender hw: the answered MAC */
    memcpy(r + 14, a + 24, 4); /* sender IP: the requested IP */
    memcpy(r + 18, a + 8, 6); /* target hw/IP: the requester */
    memcpy(r + 24, a + 14, 4);
}

/* The TX decision shared by the thread and vx_route_frame. */
int route(const uint8_t *f, size_t len, const struct fdb *fdb, const struct neigh *neigh,
                 const struct fdb_slot **hit, uint8_t *out, int *drop)
{
    uint32_t target;
    if (len < VX_ETH_HLEN) {
        *drop = VX_DROP_SHORT;
        return VX_ACT_DROP;
    }
    if (arp_request_target(f, len, &target)) {
        const uint8_t *mac = neigh_get(neigh, target);
        if (mac) {
            arp_build_reply(f, mac, out);
            return VX_ACT_ARP_REPLY;
        }
        if (f[0] & 1) {
            *drop = VX_DROP_ARP_NO_NEIGH;
            return VX_ACT_DROP;
        }
    }
    if (f[0] & 1) { /* group bit: broadcast or multicast */
        *drop = VX_DROP_BROADCAST;
        return VX_ACT_DROP;
    }
    *hit = fdb_get(fdb, mac_key(f));
    if (!*hit) {
        *drop = VX_DROP_NO_FDB;
        return VX_ACT_DROP;
    }
    return VX_ACT_SEND;
}

int vx_route_frame(const uint8_t *frame, size_t len, const uint8_t *fdb, size_t n_fdb,
                   const uint8_t *neigh, size_t n_neigh, uint32_t *peer_ip, uint8_t *out,
                   int *drop)
{
    struct fdb *ft = alloc_fdb(n_fdb);
    struct neigh *nt = build_neigh(neigh, n_neigh);
    if (!ft || !nt) {
        free_fdb(ft);
        free_neigh(nt);
        errno = ENOMEM;
        return -1;
    }
    for (size_t i = 0; i < n_fdb; i++)
        fdb_put(ft, mac_key(fdb + i * 10), be32_read(fdb + i * 10 + 6), 0);
    const struct fdb_slot *hit = NULL;
    int action = route(frame, len, ft, nt, &hit, out, drop);
    if (action == VX_ACT_SEND)
        *peer_ip = hit->ip;
    free_fdb(ft);
    free_neigh(nt);
    return action;
}

