/* _vxlan.c - meshkit's userspace VXLAN data plane (RFC 7348): TAP <-> UDP with batched
 * recvmmsg/sendmmsg, VNI demux, per-network FDB and neighbour hash tables, an ARP proxy, and
 * per-peer / per-drop-reason counters. The API and the locking rules are in includes/vxlan.h;
 * the pure-Python twin is meshkit/net/dataplane_py.py.
 *
 * Byte order: tables and counters keep IPv4 addresses in host order; sockaddr_in and the wire
 * (VXLAN header VNI, ARP payload) are network order, converted where they are read or written.
 */
#define _GNU_SOURCE
#include "vxlan.h"
#include "vxseal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <sched.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define STOP_TOKEN UINT64_MAX /* epoll data of the eventfd; VNIs are < 2^24 */
#define SEND_RETRY_MS 10      /* how long a full socket buffer may stall a batch */
#define TAP_RETRY_MS 5
#define TX_ROUND_FRAMES 256   /* frames read from one TAP per wakeup, so TAPs share the thread */
/* TX buffers: the frame at FRAME_OFF, its VXLAN header (sealed: + key id + counter) just
 * before, and for a vnet TAP the virtio header read just before that (it is copied out before
 * the VXLAN header is written); room after the frame for a tag */
#define FRAME_OFF 32
#define BUF_SIZE (FRAME_OFF + VX_MAX_FRAME + 1 + VX_TAG_LEN)
#define MAX_UDP_PAYLOAD 65507 /* the most one IPv4 UDP datagram (or UDP_SEGMENT train) holds */
#define RX_PENDING 512        /* inner frames gathered per received buffer before writing */
#define TUN_OFFLOADS (TUN_F_CSUM | TUN_F_TSO4)
/* Burst priority (vx_plane_set_burst_priority): a wake-up that moved this many bytes or
 * frames makes the thread SCHED_FIFO; BURST_IDLE_NS without such a wake-up makes it
 * SCHED_OTHER again. */
#define BURST_BYTES (48 * 1024)
#define BURST_FRAMES 64
#define BURST_IDLE_NS 20000000ULL
#ifndef VX_RX_COALESCE
#define VX_RX_COALESCE 1 /* 0: every received frame goes to a vnet TAP alone (no GSO) */
#endif

static const char *const drop_names[VX_DROP_COUNT] = {
    "short", "bad_flags", "unknown_vni", "unknown_peer", "no_fdb", "broadcast",
    "arp_no_neigh", "tap_write_error", "tap_read_error", "send_error", "too_big", "recv_error",
    "bad_gso", "not_sealed", "unknown_key", "bad_tag", "replay", "too_old", "too_new",
    "no_key",
};

/* ------------------------------------------------------------------ hash tables */

struct fdb_slot {
    uint64_t mac; /* 48-bit MAC as a number (first byte most significant); 0 never a key here */
    uint32_t ip;  /* peer, host order */
    uint32_t peer; /* index into plane->peers */
    uint8_t used;
};

struct neigh_slot {
    uint32_t ip; /* host order */
    uint8_t used;
    uint8_t mac[6];
};

struct fdb {
    size_t mask;
    struct fdb_slot *slots;
};

struct neigh {
    size_t mask;
    struct neigh_slot *slots;
};

static uint64_t mac_key(const uint8_t *m)
{
    return ((uint64_t)m[0] << 40) | ((uint64_t)m[1] << 32) | ((uint64_t)m[2] << 24) |
           ((uint64_t)m[3] << 16) | ((uint64_t)m[4] << 8) | (uint64_t)m[5];
}

static uint32_t be32_read(const uint8_t *b)
{
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) | ((uint32_t)b[2] << 8) | b[3];
}

static size_t hash64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (size_t)k;
}

/* Power of two with room for n entries at most half full. */
static size_t table_size(size_t n)
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

static void free_fdb(struct fdb *t) { free_table(t); }

static void free_neigh(struct neigh *t) { free_table(t); }

static struct fdb *alloc_fdb(size_t n)
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
static void fdb_put(struct fdb *t, uint64_t mac, uint32_t ip, uint32_t peer)
{
    size_t i = hash64(mac) & t->mask;
    while (t->slots[i].used && t->slots[i].mac != mac)
        i = (i + 1) & t->mask;
    t->slots[i] = (struct fdb_slot){.mac = mac, .ip = ip, .peer = peer, .used = 1};
}

static const struct fdb_slot *fdb_get(const struct fdb *t, uint64_t mac)
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

static struct neigh *build_neigh(const uint8_t *neigh, size_t n)
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
static int route(const uint8_t *f, size_t len, const struct fdb *fdb, const struct neigh *neigh,
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

/* ------------------------------------------------------------------ offloads (sans-IO)
 *
 * Checksums are summed over native-order 32-bit loads into 64 bits and folded at the end:
 * a ones-complement sum does not depend on byte order except for a final byte swap, and
 * every piece summed here starts at an even offset of the checksummed data. */

static uint64_t csum_acc(uint64_t s, const uint8_t *b, size_t len)
{
    /* four independent sums of 32-bit halves: about twice the speed of one chain */
    uint64_t s1 = 0, s2 = 0, s3 = 0;
    while (len >= 32) {
        uint64_t w0, w1, w2, w3;
        memcpy(&w0, b, 8);
        memcpy(&w1, b + 8, 8);
        memcpy(&w2, b + 16, 8);
        memcpy(&w3, b + 24, 8);
        s += (w0 & 0xffffffffu) + (w0 >> 32);
        s1 += (w1 & 0xffffffffu) + (w1 >> 32);
        s2 += (w2 & 0xffffffffu) + (w2 >> 32);
        s3 += (w3 & 0xffffffffu) + (w3 >> 32);
        b += 32;
        len -= 32;
    }
    s += s1 + s2 + s3;
    while (len >= 4) {
        uint32_t w;
        memcpy(&w, b, 4);
        s += w;
        b += 4;
        len -= 4;
    }
    if (len >= 2) {
        uint16_t w;
        memcpy(&w, b, 2);
        s += w;
        b += 2;
        len -= 2;
    }
    if (len) {
        uint8_t last[2] = {b[0], 0};
        uint16_t w;
        memcpy(&w, last, 2);
        s += w;
    }
    return s;
}

/* The folded sum as a number in network order meaning (not complemented). */
static uint16_t csum_fold(uint64_t s)
{
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffffffu) + (s >> 32);
    s = (s & 0xffffu) + (s >> 16);
    s = (s & 0xffffu) + (s >> 16);
    return ntohs((uint16_t)s);
}

static void put16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)(v >> 8);
    b[1] = (uint8_t)v;
}

static uint16_t get16(const uint8_t *b)
{
    return (uint16_t)((b[0] << 8) | b[1]);
}

static void put32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* The IPv4 header checksum of ip[0..ihl) (its checksum field zeroed first). */
static void ip_fix_csum(uint8_t *ip, size_t ihl)
{
    ip[10] = ip[11] = 0;
    put16(ip + 10, (uint16_t)~csum_fold(csum_acc(0, ip, ihl)));
}

/* Sum of the IPv4 pseudo-header for an L4 segment (proto) of l4_len bytes. */
static uint64_t l4_pseudo(const uint8_t *ip, uint8_t proto, size_t l4_len)
{
    uint8_t ph[12];
    memcpy(ph, ip + 12, 8);
    ph[8] = 0;
    ph[9] = proto;
    put16(ph + 10, (uint16_t)l4_len);
    return csum_acc(0, ph, sizeof(ph));
}

static uint64_t tcp_pseudo(const uint8_t *ip, size_t tcp_len)
{
    return l4_pseudo(ip, 6, tcp_len);
}

int vx_finish_csum(uint8_t *frame, size_t len, size_t csum_start, size_t csum_offset)
{
    if (csum_start >= len || csum_offset + 2 > len - csum_start)
        return -1;
    uint16_t sum = (uint16_t)~csum_fold(csum_acc(0, frame + csum_start, len - csum_start));
    /* as the kernel's skb_checksum_help: a computed 0 goes out as 0xffff, which a UDP
     * receiver would otherwise read as "no checksum" (TCP takes either) */
    put16(frame + csum_start + csum_offset, sum ? sum : 0xffff);
    return 0;
}

struct tcp4 {
    size_t ip_off;  /* always VX_ETH_HLEN: no VLAN tags on the overlay */
    size_t ihl;     /* IPv4 header bytes */
    size_t thl;     /* TCP header bytes */
    size_t hdr;     /* Ethernet + IPv4 + TCP header bytes */
    size_t payload; /* TCP payload bytes */
};

/* Parse an untagged Ethernet/IPv4/TCP frame whose payload runs to the end of the frame. */
static int parse_tcp4(const uint8_t *f, size_t len, struct tcp4 *t)
{
    if (len < VX_ETH_HLEN + 20 || f[12] != 0x08 || f[13] != 0x00)
        return -1;
    const uint8_t *ip = f + VX_ETH_HLEN;
    if ((ip[0] >> 4) != 4 || (ip[0] & 15) < 5 || ip[9] != 6)
        return -1;
    t->ip_off = VX_ETH_HLEN;
    t->ihl = (size_t)(ip[0] & 15) * 4;
    if (len < VX_ETH_HLEN + t->ihl + 20)
        return -1;
    const uint8_t *tcp = ip + t->ihl;
    t->thl = (size_t)(tcp[12] >> 4) * 4;
    if (t->thl < 20)
        return -1;
    t->hdr = VX_ETH_HLEN + t->ihl + t->thl;
    if (len < t->hdr)
        return -1;
    t->payload = len - t->hdr;
    return 0;
}

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80

static size_t tso_count(const struct tcp4 *t, size_t mss)
{
    return t->payload ? (t->payload + mss - 1) / mss : 1;
}

/* The payload bytes of segment k of TSO frame t: [k*mss, (k+1)*mss) of its payload. */
static size_t tso_seg_len(const struct tcp4 *t, size_t mss, size_t k)
{
    size_t off = k * mss;
    if (off >= t->payload)
        return 0;
    return t->payload - off < mss ? t->payload - off : mss;
}

/* Write the headers (t->hdr bytes) of segment k of TSO frame f to o: IPv4 id = the frame's
 * + k, TCP seq advanced, FIN/PSH only on the last, CWR only on the first, and the complete
 * TCP checksum over these headers and the segment's payload (read in place in f). */
static void tso_seg_header(const uint8_t *f, const struct tcp4 *t, size_t mss, size_t k,
                           uint8_t *o)
{
    const uint8_t *ip0 = f + t->ip_off;
    const uint8_t *tcp0 = ip0 + t->ihl;
    size_t total = tso_count(t, mss);
    uint16_t id0 = get16(ip0 + 4);
    uint32_t seq0 = be32_read(tcp0 + 4);
    size_t off = k * mss;
    size_t seg = tso_seg_len(t, mss, k);
    memcpy(o, f, t->hdr);
    uint8_t *ip = o + t->ip_off;
    uint8_t *tcp = ip + t->ihl;
    put16(ip + 2, (uint16_t)(t->ihl + t->thl + seg));
    put16(ip + 4, (uint16_t)(id0 + k));
    ip_fix_csum(ip, t->ihl);
    put32(tcp + 4, seq0 + (uint32_t)off);
    if (k + 1 < total)
        tcp[13] &= (uint8_t)~(TCP_FIN | TCP_PSH);
    if (k > 0)
        tcp[13] &= (uint8_t)~TCP_CWR;
    tcp[16] = tcp[17] = 0;
    uint64_t s = tcp_pseudo(ip, t->thl + seg);
    s = csum_acc(s, tcp, t->thl);
    s = csum_acc(s, f + t->hdr + off, seg); /* thl is a multiple of 4: even offset */
    put16(tcp + 16, (uint16_t)~csum_fold(s));
}

/* Write whole segments first..first+count of TSO frame f to out, back to back, each
 * preceded by `headroom` untouched bytes; returns the bytes written. */
static size_t tso_write(const uint8_t *f, const struct tcp4 *t, size_t mss, size_t first,
                        size_t count, uint8_t *out, size_t headroom)
{
    uint8_t *o = out;
    for (size_t k = first; k < first + count; k++) {
        size_t seg = tso_seg_len(t, mss, k);
        o += headroom;
        tso_seg_header(f, t, mss, k, o);
        memcpy(o + t->hdr, f + t->hdr + k * mss, seg);
        o += t->hdr + seg;
    }
    return (size_t)(o - out);
}

int vx_tso_segment(const uint8_t *frame, size_t len, size_t mss, uint8_t *out, size_t cap,
                   size_t *seg_len)
{
    struct tcp4 t;
    if (mss == 0 || parse_tcp4(frame, len, &t) < 0 || t.hdr + mss > 65535)
        return -1;
    size_t n = tso_count(&t, mss);
    if (len > SIZE_MAX / 2 || (n - 1) * t.hdr + len > cap)
        return -1;
    tso_write(frame, &t, mss, 0, n, out, 0);
    *seg_len = t.hdr + (t.payload < mss ? t.payload : mss);
    return (int)n;
}

/* What coalescing needs of one received frame: an IPv4/TCP data segment whose IP total
 * length covers the frame exactly (no Ethernet padding), unfragmented, without flags that
 * end a GRO run. */
static int gro_eligible(const uint8_t *f, size_t len, struct tcp4 *t)
{
    if (parse_tcp4(f, len, t) < 0 || t->payload == 0)
        return 0;
    const uint8_t *ip = f + t->ip_off;
    if (get16(ip + 2) != len - VX_ETH_HLEN || (get16(ip + 6) & 0x3fff))
        return 0;
    const uint8_t flags = ip[t->ihl + 13];
    return !(flags & (TCP_SYN | TCP_FIN | TCP_RST | TCP_URG | TCP_CWR));
}

/* How many frames starting at f[i] form one GRO run (1 when f[i] stands alone). Frames
 * follow the run's head when: same Ethernet header, same IPv4 header except total length,
 * id and checksum, same ports and ACK, the next sequence number, same TCP header from byte
 * 12 on (data offset, flags but PSH, window, urgent pointer, options), a payload no larger
 * than the head's; a shorter payload or a PSH ends the run, as do VX_GRO_MAX_SEGS frames or
 * 64 KB of IPv4 datagram. */
static size_t gro_run(const uint8_t *const *f, const size_t *len, size_t n, size_t i)
{
    struct tcp4 h, t;
    if (!gro_eligible(f[i], len[i], &h))
        return 1;
    const uint8_t *hip = f[i] + h.ip_off;
    const uint8_t *htcp = hip + h.ihl;
    if (htcp[13] & TCP_PSH)
        return 1;
    size_t mss = h.payload;
    size_t total = h.payload;
    uint32_t next_seq = be32_read(htcp + 4) + (uint32_t)h.payload;
    size_t k = i + 1;
    for (; k < n && k - i < VX_GRO_MAX_SEGS; k++) {
        if (!gro_eligible(f[k], len[k], &t) || t.ihl != h.ihl || t.thl != h.thl ||
            t.payload > mss || h.ihl + h.thl + total + t.payload > 65535)
            break;
        const uint8_t *ip = f[k] + t.ip_off;
        const uint8_t *tcp = ip + t.ihl;
        if (memcmp(f[k], f[i], VX_ETH_HLEN) != 0 || memcmp(ip, hip, 2) != 0 ||
            memcmp(ip + 6, hip + 6, 4) != 0 || memcmp(ip + 12, hip + 12, h.ihl - 12) != 0 ||
            memcmp(tcp, htcp, 4) != 0 || be32_read(tcp + 4) != next_seq ||
            memcmp(tcp + 8, htcp + 8, 5) != 0 || (tcp[13] & ~TCP_PSH) != htcp[13] ||
            memcmp(tcp + 14, htcp + 14, 2) != 0 || memcmp(tcp + 18, htcp + 18, h.thl - 18) != 0)
            break;
        total += t.payload;
        next_seq += (uint32_t)t.payload;
        if (t.payload < mss || (tcp[13] & TCP_PSH)) {
            k++;
            break;
        }
    }
    return k - i;
}

/* A frame written alone: an unfragmented TCP/IPv4 or UDP/IPv4 (with a checksum) datagram
 * goes as CHECKSUM_PARTIAL (NEEDS_CSUM, its checksum field replaced by the pseudo-header
 * sum), which the receiving stack takes as valid without summing it again; the outer UDP
 * checksum covered it, and a kernel VXLAN sender over veth may have left it unfinished. tun
 * ignores DATA_VALID on write, so anything else goes with no flags and is checked there. */
static void lone_partial(uint8_t *f, size_t len, struct virtio_net_hdr *vh)
{
    if (len < VX_ETH_HLEN + 20 || f[12] != 0x08 || f[13] != 0x00)
        return;
    uint8_t *ip = f + VX_ETH_HLEN;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || get16(ip + 2) != len - VX_ETH_HLEN ||
        (get16(ip + 6) & 0x3fff))
        return;
    size_t l4_len = len - VX_ETH_HLEN - ihl;
    size_t at;
    if (ip[9] == 6 && l4_len >= 20 && (size_t)(ip[ihl + 12] >> 4) * 4 >= 20 &&
        (size_t)(ip[ihl + 12] >> 4) * 4 <= l4_len)
        at = 16;
    else if (ip[9] == 17 && l4_len >= 8 && get16(ip + ihl + 4) == l4_len &&
             get16(ip + ihl + 6) != 0)
        at = 6;
    else
        return;
    put16(ip + ihl + at, csum_fold(l4_pseudo(ip, ip[9], l4_len)));
    vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh->csum_start = (uint16_t)(VX_ETH_HLEN + ihl);
    vh->csum_offset = (uint16_t)at;
}

/* Turn head (the first frame of a run of `count` frames carrying `total` payload bytes)
 * into the header of the super-frame, and fill its virtio header: the IPv4 total length and
 * checksum, PSH when the run's last frame had it, the TCP checksum field holding the
 * pseudo-header sum (CHECKSUM_PARTIAL, as the kernel expects of NEEDS_CSUM), gso TCPV4. A
 * run of one goes as lone_partial says. */
static void gro_fix_head(uint8_t *head, size_t head_len, const uint8_t *last, size_t count,
                         size_t total, struct virtio_net_hdr *vh)
{
    memset(vh, 0, sizeof(*vh));
    if (count == 1) {
        lone_partial(head, head_len, vh);
        return;
    }
    struct tcp4 t;
    parse_tcp4(head, head_len, &t);
    uint8_t *ip = head + t.ip_off;
    uint8_t *tcp = ip + t.ihl;
    tcp[13] |= last[t.ip_off + t.ihl + 13] & TCP_PSH;
    put16(ip + 2, (uint16_t)(t.ihl + t.thl + total));
    ip_fix_csum(ip, t.ihl);
    put16(tcp + 16, csum_fold(tcp_pseudo(ip, t.thl + total)));
    vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
    vh->gso_type = VIRTIO_NET_HDR_GSO_TCPV4;
    vh->hdr_len = (uint16_t)t.hdr;
    vh->gso_size = (uint16_t)t.payload;
    vh->csum_start = (uint16_t)(t.ip_off + t.ihl);
    vh->csum_offset = 16;
}

int vx_gro_coalesce(const uint8_t *frames, const size_t *lens, size_t n, uint8_t *out,
                    size_t cap, size_t *out_lens)
{
    const uint8_t **f = malloc((n ? n : 1) * sizeof(*f));
    if (!f) {
        errno = ENOMEM;
        return -1;
    }
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        f[i] = frames + off;
        off += lens[i];
    }
    size_t items = 0, used = 0;
    for (size_t i = 0; i < n;) {
        size_t run = gro_run(f, lens, n, i);
        struct tcp4 t = {0};
        if (run > 1)
            parse_tcp4(f[i], lens[i], &t);
        size_t bytes = VX_VNET_HDR_LEN + lens[i], total = t.payload;
        for (size_t k = i + 1; k < i + run; k++) {
            bytes += lens[k] - t.hdr;
            total += lens[k] - t.hdr;
        }
        if (bytes > cap - used) {
            free(f);
            errno = ENOSPC;
            return -1;
        }
        uint8_t *o = out + used;
        memcpy(o + VX_VNET_HDR_LEN, f[i], lens[i]);
        size_t at = VX_VNET_HDR_LEN + lens[i];
        for (size_t k = i + 1; k < i + run; k++) {
            memcpy(o + at, f[k] + t.hdr, lens[k] - t.hdr);
            at += lens[k] - t.hdr;
        }
        struct virtio_net_hdr vh;
        gro_fix_head(o + VX_VNET_HDR_LEN, lens[i], f[i + run - 1], run, total, &vh);
        memcpy(o, &vh, VX_VNET_HDR_LEN);
        out_lens[items++] = bytes;
        used += bytes;
        i += run;
    }
    free(f);
    return (int)items;
}

/* ------------------------------------------------------------------ the plane */

struct peer {
    uint32_t ip;  /* host order */
    uint8_t active; /* in some network's FDB now; datagrams from inactive peers are dropped */
    /* TX counters are written by the TX thread only, RX counters by the RX thread only */
    uint64_t tx_frames, tx_bytes, rx_frames, rx_bytes;
};

struct net {
    uint32_t vni;
    int fd;
    int vnet; /* the TAP was opened with IFF_VNET_HDR: frames carry a virtio_net_hdr */
    struct fdb *fdb;
    struct neigh *neigh;
    int encrypted;            /* set for good by vx_plane_set_keys */
    struct vx_netkeys *keys; /* NULL until the first key set */
};

/* Room for the VXLAN + Ethernet + IPv4 + TCP headers of one TSO segment. */
#define SEG_HDR_ROOM (VX_SEAL_HLEN + VX_ETH_HLEN + 60 + 60 + VX_TAG_LEN)
#define IOV_PER_SEG 3 /* headers, payload, tag (empty for plain networks) */

/* One thread's preallocated batch, so the packet path never mallocs. A TX slot holds one
 * datagram (iov[k][0]) or a UDP_SEGMENT train of a TSO frame's segments: per segment its
 * headers in hdrs[k] and its payload in place in the TSO frame's buffer (iov pairs). */
struct batch {
    uint8_t *mem; /* VX_BATCH buffers of BUF_SIZE */
    uint8_t *bufs[VX_BATCH];
    uint8_t (*hdrs)[VX_GSO_MAX_SEGS * SEG_HDR_ROOM]; /* TX only */
    struct iovec iov[VX_BATCH][IOV_PER_SEG * VX_GSO_MAX_SEGS];
    struct mmsghdr msgs[VX_BATCH];
    struct sockaddr_in addrs[VX_BATCH];
    /* UDP_SEGMENT (TX) or UDP_GRO (RX) cmsg space; both carry at most an int */
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } ctrl[VX_BATCH];
    uint32_t peer[VX_BATCH];
    size_t frame_len[VX_BATCH]; /* inner bytes, all segments */
    uint32_t segs[VX_BATCH];    /* inner frames in the datagram (train) */
    uint16_t gso[VX_BATCH];     /* UDP_SEGMENT size when segs > 1 */
    uint16_t over[VX_BATCH];    /* bytes per datagram that are not inner frame */
    int n;
};

struct vx_plane {
    int udp_fd;
    uint32_t self_ip; /* the socket's address, host order: mixed into sealing nonces */
    uint16_t port_be; /* the socket's own port, network order: where peers listen */
    int epfd;
    int evfd;
    pthread_rwlock_t lock; /* guards nets, index, peers; readers: the threads, per batch */
    struct net **nets;
    size_t n_nets, cap_nets;
    struct net **index; /* open addressing by VNI over nets, rebuilt on change */
    size_t index_mask;
    struct peer *peers;
    size_t n_peers, cap_peers;
    uint32_t *peer_index; /* open addressing by IP: peer index + 1, 0 = empty */
    size_t peer_index_mask;
    uint64_t drops[VX_DROP_COUNT];
    uint64_t arp_replies;
    uint64_t tso_frames, gso_sends, gro_buffers, gro_writes;
    uint64_t burst_raises; /* times a thread took SCHED_FIFO for a burst */
    int udp_gso; /* cleared for good when the kernel refuses UDP_SEGMENT */
    int udp_gro;
    int burst_prio; /* SCHED_FIFO priority for bursts, 0: never (vx_plane_set_burst_priority) */
    uint64_t tx_wake_bytes; /* TAP bytes read in the TX thread's current wake-up */
    uint64_t tx_wake_frames; /* and frames */
    /* inner frames (bytes) the RX thread delivered to TAPs since it last slept: only frames
     * from known peers that passed every check (and opened) count towards a burst, so a
     * flood of junk from anywhere never raises the thread's priority */
    uint64_t rx_wake_bytes, rx_wake_frames;
    int stopping;
    int started;
    pthread_t tx_thread, rx_thread;
    struct batch tx, rx;
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* One packet thread's burst-priority state. */
struct burst {
    int rt;        /* the thread runs SCHED_FIFO now */
    uint64_t last; /* mono_ns of the last bulk wake-up */
};

/* After each wake-up that moved `bytes` in `frames`: a bulk stream (a wake-up of BURST_BYTES
 * or BURST_FRAMES or more) runs the thread SCHED_FIFO, as the kernel's own VXLAN runs in
 * softirq ahead of every task; request/response traffic (small wake-ups) never does, and
 * BURST_IDLE_NS without a bulk wake-up drops it back to SCHED_OTHER (checked when the thread
 * next wakes: a sleeping thread costs nothing), so an idle or trickling plane competes as
 * any task. TX counts what it read from its TAPs (local traffic), RX what it delivered.
 * Why not always FIFO: measured, a FIFO thread woken per small frame made a 1-byte
 * ping-pong 10-200x slower on a loaded 2-CPU host. A refusal (EPERM: no CAP_SYS_NICE) turns
 * the feature off for the plane. */
static void burst_step(vx_plane_t *p, struct burst *st, uint64_t bytes, uint64_t frames)
{
    int prio = __atomic_load_n(&p->burst_prio, __ATOMIC_RELAXED);
    if (!prio && !st->rt)
        return;
    uint64_t now = mono_ns();
    int want;
    if (prio && (bytes >= BURST_BYTES || frames >= BURST_FRAMES)) {
        st->last = now;
        want = 1;
    } else {
        want = st->rt && prio && now - st->last < BURST_IDLE_NS;
    }
    if (want == st->rt)
        return;
    struct sched_param sp = {.sched_priority = want ? prio : 0};
    int err = pthread_setschedparam(pthread_self(), want ? SCHED_FIFO : SCHED_OTHER, &sp);
    if (err == 0) {
        st->rt = want;
        if (want)
            __atomic_fetch_add(&p->burst_raises, 1, __ATOMIC_RELAXED);
    } else if (want)
        __atomic_store_n(&p->burst_prio, 0, __ATOMIC_RELAXED); /* not allowed: stay off */
}

static void count_drop(vx_plane_t *p, int reason)
{
    __atomic_fetch_add(&p->drops[reason], 1, __ATOMIC_RELAXED);
}

static void add_counter(uint64_t *c, uint64_t v)
{
    __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

static struct net *find_net(const vx_plane_t *p, uint32_t vni)
{
    if (!p->index)
        return NULL;
    size_t i = hash64(vni) & p->index_mask;
    while (p->index[i]) {
        if (p->index[i]->vni == vni)
            return p->index[i];
        i = (i + 1) & p->index_mask;
    }
    return NULL;
}

static int rebuild_net_index(vx_plane_t *p)
{
    size_t size = table_size(p->n_nets);
    struct net **index = calloc(size, sizeof(*index));
    if (!index)
        return -1;
    for (size_t k = 0; k < p->n_nets; k++) {
        size_t i = hash64(p->nets[k]->vni) & (size - 1);
        while (index[i])
            i = (i + 1) & (size - 1);
        index[i] = p->nets[k];
    }
    free(p->index);
    p->index = index;
    p->index_mask = size - 1;
    return 0;
}

static long find_peer(const vx_plane_t *p, uint32_t ip)
{
    if (!p->peer_index)
        return -1;
    size_t i = hash64(ip) & p->peer_index_mask;
    while (p->peer_index[i]) {
        if (p->peers[p->peer_index[i] - 1].ip == ip)
            return (long)p->peer_index[i] - 1;
        i = (i + 1) & p->peer_index_mask;
    }
    return -1;
}

static int rebuild_peer_index(vx_plane_t *p)
{
    size_t size = table_size(p->n_peers);
    uint32_t *index = calloc(size, sizeof(*index));
    if (!index)
        return -1;
    for (size_t k = 0; k < p->n_peers; k++) {
        size_t i = hash64(p->peers[k].ip) & (size - 1);
        while (index[i])
            i = (i + 1) & (size - 1);
        index[i] = (uint32_t)k + 1;
    }
    free(p->peer_index);
    p->peer_index = index;
    p->peer_index_mask = size - 1;
    return 0;
}

/* Recompute which peers some FDB still names. Caller holds the write lock. */
static void mark_active_peers(vx_plane_t *p)
{
    for (size_t k = 0; k < p->n_peers; k++)
        p->peers[k].active = 0;
    for (size_t n = 0; n < p->n_nets; n++) {
        const struct fdb *t = p->nets[n]->fdb;
        if (!t)
            continue;
        for (size_t i = 0; i <= t->mask; i++)
            if (t->slots[i].used)
                p->peers[t->slots[i].peer].active = 1;
    }
}

static int alloc_batch(struct batch *b)
{
    b->mem = malloc((size_t)BUF_SIZE * VX_BATCH);
    if (!b->mem)
        return -1;
    for (int k = 0; k < VX_BATCH; k++)
        b->bufs[k] = b->mem + (size_t)BUF_SIZE * k;
    return 0;
}

vx_plane_t *vx_plane_new(int udp_fd)
{
    struct sockaddr_in self;
    socklen_t slen = sizeof(self);
    if (getsockname(udp_fd, (struct sockaddr *)&self, &slen) < 0)
        return NULL;
    if (self.sin_family != AF_INET || self.sin_port == 0) {
        errno = EINVAL;
        return NULL;
    }
    int flags = fcntl(udp_fd, F_GETFL);
    if (flags < 0 || fcntl(udp_fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return NULL;
    vx_plane_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->udp_fd = udp_fd;
    p->port_be = self.sin_port;
    p->self_ip = ntohl(self.sin_addr.s_addr);
    p->epfd = epoll_create1(EPOLL_CLOEXEC);
    p->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    /* writers first: a steady stream of batches must not starve a table change */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    int lock_err = pthread_rwlock_init(&p->lock, &attr);
    pthread_rwlockattr_destroy(&attr);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = STOP_TOKEN};
    if (p->epfd < 0 || p->evfd < 0 || lock_err != 0 || alloc_batch(&p->tx) < 0 ||
        !(p->tx.hdrs = malloc(sizeof(*p->tx.hdrs) * VX_BATCH)) || alloc_batch(&p->rx) < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev) < 0) {
        int saved = lock_err ? lock_err : errno;
        if (p->epfd >= 0)
            close(p->epfd);
        if (p->evfd >= 0)
            close(p->evfd);
        if (!lock_err)
            pthread_rwlock_destroy(&p->lock);
        free(p->tx.mem);
        free(p->tx.hdrs);
        free(p->rx.mem);
        free(p);
        errno = saved;
        return NULL;
    }
    int one = 1;
    p->udp_gso = 1; /* tried on the first TSO frame; a refusal turns it off */
    p->udp_gro = setsockopt(udp_fd, SOL_UDP, UDP_GRO, &one, sizeof(one)) == 0;
    return p;
}

int vx_plane_add_network(vx_plane_t *p, uint32_t vni, int tap_fd)
{
    if (vni >= (1u << 24) || tap_fd < 0) {
        errno = EINVAL;
        return -1;
    }
    int flags = fcntl(tap_fd, F_GETFL);
    if (flags < 0 || fcntl(tap_fd, F_SETFL, flags | O_NONBLOCK) < 0)
        return -1;
    struct net *net = calloc(1, sizeof(*net));
    if (!net)
        return -1;
    net->vni = vni;
    net->fd = tap_fd;
    struct ifreq_flags {
        char name[16];
        short flags;
        char pad[22];
    } ifr = {0};
    /* the flags the TAP was opened with; not a TAP (tests pass other fds): plain frames */
    if (ioctl(tap_fd, TUNGETIFF, &ifr) == 0 && (ifr.flags & IFF_VNET_HDR)) {
        int hdr = VX_VNET_HDR_LEN;
        unsigned offloads = TUN_OFFLOADS;
        net->vnet = ioctl(tap_fd, TUNSETVNETHDRSZ, &hdr) == 0;
        /* an older kernel refusing them still hands us frames with a (GSO NONE) header */
        if (net->vnet && ioctl(tap_fd, TUNSETOFFLOAD, offloads) < 0)
            ioctl(tap_fd, TUNSETOFFLOAD, 0u);
        if (!net->vnet) {
            free(net);
            errno = EINVAL; /* a vnet TAP whose header size we cannot set: unusable */
            return -1;
        }
    }
    int err = 0;
    pthread_rwlock_wrlock(&p->lock);
    for (size_t k = 0; k < p->n_nets && !err; k++)
        if (p->nets[k]->vni == vni || p->nets[k]->fd == tap_fd)
            err = EEXIST;
    if (!err && p->n_nets == p->cap_nets) {
        size_t cap = p->cap_nets ? p->cap_nets * 2 : 8;
        struct net **nets = realloc(p->nets, cap * sizeof(*nets));
        if (!nets)
            err = ENOMEM;
        else {
            p->nets = nets;
            p->cap_nets = cap;
        }
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = vni};
    if (!err && epoll_ctl(p->epfd, EPOLL_CTL_ADD, tap_fd, &ev) < 0)
        err = errno;
    if (!err) {
        p->nets[p->n_nets++] = net;
        if (rebuild_net_index(p) < 0) {
            p->n_nets--;
            epoll_ctl(p->epfd, EPOLL_CTL_DEL, tap_fd, NULL);
            err = ENOMEM;
        }
    }
    pthread_rwlock_unlock(&p->lock);
    if (err) {
        free(net);
        errno = err;
        return -1;
    }
    return 0;
}

int vx_plane_remove_network(vx_plane_t *p, uint32_t vni)
{
    struct net *gone = NULL;
    pthread_rwlock_wrlock(&p->lock);
    for (size_t k = 0; k < p->n_nets; k++) {
        if (p->nets[k]->vni == vni) {
            gone = p->nets[k];
            p->nets[k] = p->nets[--p->n_nets];
            break;
        }
    }
    if (gone) {
        /* the fd is still open (the caller closes it after we return), so DEL cannot fail
         * with EBADF; an event already fetched by the TX thread carries only the VNI, which
         * it looks up again under the lock and no longer finds */
        epoll_ctl(p->epfd, EPOLL_CTL_DEL, gone->fd, NULL);
        if (rebuild_net_index(p) < 0) {
            /* keep a correct index even without memory: a linear rebuild in place */
            memset(p->index, 0, (p->index_mask + 1) * sizeof(*p->index));
            for (size_t k = 0; k < p->n_nets; k++) {
                size_t i = hash64(p->nets[k]->vni) & p->index_mask;
                while (p->index[i])
                    i = (i + 1) & p->index_mask;
                p->index[i] = p->nets[k];
            }
        }
        mark_active_peers(p);
    }
    pthread_rwlock_unlock(&p->lock);
    if (!gone) {
        errno = ENOENT;
        return -1;
    }
    free_fdb(gone->fdb);
    free_neigh(gone->neigh);
    vx_netkeys_free(gone->keys);
    free(gone);
    return 0;
}

/* The index of the peer with this IP, added when new. Caller holds the write lock. */
static long intern_peer(vx_plane_t *p, uint32_t ip)
{
    long found = find_peer(p, ip);
    if (found >= 0)
        return found;
    if (p->n_peers == p->cap_peers) {
        size_t cap = p->cap_peers ? p->cap_peers * 2 : 16;
        struct peer *peers = realloc(p->peers, cap * sizeof(*peers));
        if (!peers)
            return -1;
        p->peers = peers;
        p->cap_peers = cap;
    }
    p->peers[p->n_peers] = (struct peer){.ip = ip};
    p->n_peers++;
    if (rebuild_peer_index(p) < 0) {
        p->n_peers--;
        return -1;
    }
    return (long)p->n_peers - 1;
}

int vx_plane_set_peers(vx_plane_t *p, uint32_t vni, const uint8_t *fdb, size_t n_fdb,
                       const uint8_t *neigh, size_t n_neigh)
{
    struct fdb *ft = alloc_fdb(n_fdb);
    struct neigh *nt = build_neigh(neigh, n_neigh);
    if (!ft || !nt) {
        free_fdb(ft);
        free_neigh(nt);
        errno = ENOMEM;
        return -1;
    }
    int err = 0;
    pthread_rwlock_wrlock(&p->lock);
    struct net *net = find_net(p, vni);
    if (!net)
        err = ENOENT;
    for (size_t i = 0; i < n_fdb && !err; i++) {
        uint32_t ip = be32_read(fdb + i * 10 + 6);
        long peer = intern_peer(p, ip);
        if (peer < 0)
            err = ENOMEM; /* peers interned so far stay, inactive: harmless */
        else
            fdb_put(ft, mac_key(fdb + i * 10), ip, (uint32_t)peer);
    }
    if (!err) {
        struct fdb *old_fdb = net->fdb;
        struct neigh *old_neigh = net->neigh;
        net->fdb = ft;
        net->neigh = nt;
        ft = old_fdb;
        nt = old_neigh;
        mark_active_peers(p);
        /* new peers get empty replay windows in every encrypted network; without memory
         * their sealed datagrams are dropped as unknown_peer until the next change */
        for (size_t k = 0; k < p->n_nets; k++)
            vx_netkeys_fit(p->nets[k]->keys, p->n_peers);
    }
    pthread_rwlock_unlock(&p->lock);
    /* the old tables (or the unused new ones on error); no reader holds them now */
    free_fdb(ft);
    free_neigh(nt);
    if (err) {
        errno = err;
        return -1;
    }
    return 0;
}

int vx_plane_set_keys(vx_plane_t *p, uint32_t vni, const vx_key_t *keys, size_t n,
                      uint32_t tx_id, int cipher)
{
    if (p->self_ip == 0 || (cipher != VX_CIPHER_AES256GCM && cipher != VX_CIPHER_CHACHA20POLY1305)) {
        errno = EINVAL; /* the nonce needs the sender's own address */
        return -1;
    }
    /* contexts are keyed outside the lock; the old set only lends its counters and windows,
     * read under the write lock where no thread changes them */
    pthread_rwlock_wrlock(&p->lock);
    struct net *net = find_net(p, vni);
    if (!net) {
        pthread_rwlock_unlock(&p->lock);
        errno = ENOENT;
        return -1;
    }
    struct vx_netkeys *fresh = vx_netkeys_new(keys, n, tx_id, cipher, net->keys, p->n_peers);
    int err = errno;
    struct vx_netkeys *old = NULL;
    if (fresh) {
        old = net->keys;
        net->keys = fresh;
        net->encrypted = 1;
    }
    pthread_rwlock_unlock(&p->lock);
    vx_netkeys_free(old);
    if (!fresh) {
        errno = err;
        return -1;
    }
    return 0;
}

/* Write one frame (as iovecs) to a TAP; 0 when it went whole, else -1 (counted by the
 * caller). */
static int writev_tap(int fd, const struct iovec *iov, int iovcnt)
{
    size_t len = 0;
    for (int i = 0; i < iovcnt; i++)
        len += iov[i].iov_len;
    int retried = 0;
    for (;;) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n == (ssize_t)len)
            return 0;
        if (n >= 0)
            return -1; /* a TAP takes frames whole; a short write means a truncated frame */
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN && !retried) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            retried = 1;
            if (poll(&pfd, 1, TAP_RETRY_MS) > 0)
                continue;
        }
        return -1;
    }
}

static int write_tap(int fd, const uint8_t *buf, size_t len)
{
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    return writev_tap(fd, &iov, 1);
}

/* Write a frame the TX path made itself (an ARP reply) to a TAP, with a virtio header
 * saying nothing needs doing when the TAP wants one. */
static int write_tap_frame(const struct net *net, const uint8_t *buf, size_t len)
{
    struct virtio_net_hdr vh = {0};
    struct iovec iov[2] = {{.iov_base = &vh, .iov_len = VX_VNET_HDR_LEN},
                           {.iov_base = (void *)buf, .iov_len = len}};
    return net->vnet ? writev_tap(net->fd, iov, 2) : writev_tap(net->fd, iov + 1, 1);
}

static void count_sent(vx_plane_t *p, const struct batch *b, int k)
{
    struct peer *peer = &p->peers[b->peer[k]];
    add_counter(&peer->tx_frames, b->segs[k]);
    add_counter(&peer->tx_bytes, b->frame_len[k]);
}

/* Send slot k's segment train as one datagram per segment (UDP_SEGMENT was refused). */
static void send_split(vx_plane_t *p, int k)
{
    struct batch *b = &p->tx;
    struct mmsghdr msgs[VX_GSO_MAX_SEGS];
    int n = (int)b->segs[k];
    for (int s = 0; s < n; s++)
        msgs[s].msg_hdr = (struct msghdr){
            .msg_name = &b->addrs[k], .msg_namelen = sizeof(b->addrs[k]),
            .msg_iov = &b->iov[k][IOV_PER_SEG * s], .msg_iovlen = IOV_PER_SEG};
    struct peer *peer = &p->peers[b->peer[k]];
    int i = 0, stalls = 0;
    while (i < n) {
        int sent = sendmmsg(p->udp_fd, msgs + i, (unsigned)(n - i), 0);
        if (sent > 0) {
            for (int s = i; s < i + sent; s++) {
                add_counter(&peer->tx_frames, 1);
                const struct iovec *v = &b->iov[k][IOV_PER_SEG * s];
                add_counter(&peer->tx_bytes,
                            v[0].iov_len + v[1].iov_len + v[2].iov_len - b->over[k]);
            }
            i += sent;
            continue;
        }
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && stalls < 3) {
            struct pollfd pfd = {.fd = p->udp_fd, .events = POLLOUT};
            stalls++;
            poll(&pfd, 1, SEND_RETRY_MS);
            continue;
        }
        count_drop(p, sent < 0 && errno == EMSGSIZE ? VX_DROP_TOO_BIG : VX_DROP_SEND);
        i++;
    }
}

/* Send the TX batch; every datagram is sent or counted as a drop. Holds the read lock. */
static void flush_tx(vx_plane_t *p)
{
    struct batch *b = &p->tx;
    int i = 0;
    int stalls = 0;
    while (i < b->n) {
        int n = sendmmsg(p->udp_fd, b->msgs + i, (unsigned)(b->n - i), 0);
        if (n > 0) {
            for (int k = i; k < i + n; k++) {
                count_sent(p, b, k);
                if (b->segs[k] > 1)
                    add_counter(&p->gso_sends, 1);
            }
            i += n;
            continue;
        }
        /* the error belongs to datagram i, the first one not sent */
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && stalls < 3) {
            struct pollfd pfd = {.fd = p->udp_fd, .events = POLLOUT};
            stalls++;
            poll(&pfd, 1, SEND_RETRY_MS);
            continue;
        }
        if (n < 0 && (errno == EIO || errno == EINVAL) && b->segs[i] > 1) {
            /* no UDP_SEGMENT here (no checksum offload on the route, old kernel): from now
             * on the TX path makes one datagram per segment */
            __atomic_store_n(&p->udp_gso, 0, __ATOMIC_RELAXED);
            send_split(p, i);
            i++;
            continue;
        }
        count_drop(p, n < 0 && errno == EMSGSIZE ? VX_DROP_TOO_BIG : VX_DROP_SEND);
        i++; /* ENOBUFS, EHOSTUNREACH, ...: lose this datagram, keep the rest */
    }
    b->n = 0;
}

/* Address slot k (its iov[k][0..iovcnt) filled) to peer; a train of segs > 1 datagrams of
 * gso bytes (the last maybe shorter) gets a UDP_SEGMENT cmsg. */
static void queue_slot(vx_plane_t *p, int k, const struct fdb_slot *hit, size_t iovcnt,
                       size_t frame_bytes, uint32_t segs, size_t gso, size_t over)
{
    struct batch *b = &p->tx;
    b->over[k] = (uint16_t)over;
    b->addrs[k] = (struct sockaddr_in){
        .sin_family = AF_INET, .sin_port = p->port_be, .sin_addr.s_addr = htonl(hit->ip)};
    b->msgs[k].msg_hdr = (struct msghdr){
        .msg_name = &b->addrs[k], .msg_namelen = sizeof(b->addrs[k]),
        .msg_iov = b->iov[k], .msg_iovlen = iovcnt};
    b->peer[k] = hit->peer;
    b->frame_len[k] = frame_bytes;
    b->segs[k] = segs;
    b->gso[k] = (uint16_t)gso;
    if (segs > 1) {
        struct msghdr *m = &b->msgs[k].msg_hdr;
        m->msg_control = b->ctrl[k].buf;
        m->msg_controllen = CMSG_SPACE(sizeof(uint16_t));
        struct cmsghdr *cm = CMSG_FIRSTHDR(m);
        cm->cmsg_level = SOL_UDP;
        cm->cmsg_type = UDP_SEGMENT;
        cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
        uint16_t size = (uint16_t)gso;
        memcpy(CMSG_DATA(cm), &size, sizeof(size));
    }
}

/* Queue the segments of TSO frame f (read into slot b->n) as trains in this and the
 * following slots: headers made in hdrs[], payloads sent from f in place. */
static void queue_tso(vx_plane_t *p, struct net *net, const uint8_t *f, size_t len,
                      size_t mss, const struct fdb_slot *hit)
{
    struct batch *b = &p->tx;
    struct tcp4 t;
    /* a sealed segment: VXLAN header + key id + counter, headers and payload sealed, tag */
    size_t pre = net->encrypted ? VX_SEAL_HLEN : VX_HEADER_LEN;
    size_t post = net->encrypted ? VX_TAG_LEN : 0;
    if (mss == 0 || parse_tcp4(f, len, &t) < 0 || t.hdr + mss + pre + post > MAX_UDP_PAYLOAD ||
        pre + t.hdr + post > SEG_HDR_ROOM) {
        count_drop(p, VX_DROP_BAD_GSO);
        return;
    }
    if (net->encrypted && (!net->keys || net->keys->tx < 0)) {
        count_drop(p, VX_DROP_NO_KEY);
        return;
    }
    add_counter(&p->tso_frames, 1);
    size_t stride = pre + t.hdr + mss + post;
    size_t per = __atomic_load_n(&p->udp_gso, __ATOMIC_RELAXED) ? MAX_UDP_PAYLOAD / stride : 1;
    if (per > VX_GSO_MAX_SEGS)
        per = VX_GSO_MAX_SEGS;
    size_t total = tso_count(&t, mss);
    int flushed = 0;
    for (size_t first = 0; first < total; first += per) {
        if (b->n == VX_BATCH) {
            flush_tx(p);
            flushed = 1;
        }
        int k = b->n++;
        size_t count = total - first < per ? total - first : per;
        size_t bytes = 0, queued = 0;
        for (size_t s = 0; s < count; s++) {
            uint8_t *h = b->hdrs[k] + queued * SEG_HDR_ROOM;
            size_t seg = tso_seg_len(&t, mss, first + s);
            struct iovec *v = &b->iov[k][IOV_PER_SEG * queued];
            vx_encode_header(h, net->vni);
            tso_seg_header(f, &t, mss, first + s, h + pre);
            v[0] = (struct iovec){.iov_base = h, .iov_len = pre + t.hdr};
            v[1] = (struct iovec){.iov_base = (void *)(f + t.hdr + (first + s) * mss),
                                  .iov_len = seg};
            v[2] = (struct iovec){.iov_base = h + pre + t.hdr, .iov_len = post};
            if (net->encrypted) {
                /* the payload slices of f are disjoint: each is sealed in place */
                struct iovec pieces[2] = {{.iov_base = h + pre, .iov_len = t.hdr}, v[1]};
                int drop = 0;
                if (vx_seal_iov(net->keys, p->self_ip, h, pieces, 2, h + pre + t.hdr, &drop) <
                    0) {
                    /* a crypto failure: the train goes without this segment (all but the
                     * last are full-size, so the rest keep their UDP_SEGMENT boundaries) */
                    count_drop(p, drop);
                    continue;
                }
            }
            bytes += t.hdr + seg;
            queued++;
        }
        if (queued == 0) {
            b->n--; /* nothing of this train is left: give the slot back */
            continue;
        }
        queue_slot(p, k, hit, IOV_PER_SEG * queued, bytes, (uint32_t)queued, stride, pre + post);
    }
    /* trains queued after a flush point into f's slot, which the next reads would reuse
     * before the batch is sent again */
    if (flushed)
        flush_tx(p);
}

/* Read frames from one network's TAP into the TX batch. Holds the read lock. */
static void drain_tap(vx_plane_t *p, struct net *net)
{
    struct batch *b = &p->tx;
    size_t vlen = net->vnet ? VX_VNET_HDR_LEN : 0;
    for (int round = 0; round < TX_ROUND_FRAMES; round++) {
        if (b->n == VX_BATCH)
            flush_tx(p);
        uint8_t *buf = b->bufs[b->n];
        ssize_t got = read(net->fd, buf + FRAME_OFF - vlen, vlen + VX_MAX_FRAME);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                count_drop(p, VX_DROP_TAP_READ);
            return;
        }
        if (got == 0)
            return;
        p->tx_wake_bytes += (uint64_t)got;
        p->tx_wake_frames++;
        if ((size_t)got < vlen) {
            count_drop(p, VX_DROP_SHORT);
            continue;
        }
        size_t len = (size_t)got - vlen;
        uint8_t *frame = buf + FRAME_OFF;
        struct virtio_net_hdr vh = {0};
        if (vlen)
            memcpy(&vh, buf + FRAME_OFF - vlen, sizeof(vh));
        if (vh.gso_type == VIRTIO_NET_HDR_GSO_NONE && (vh.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM) &&
            vx_finish_csum(frame, len, vh.csum_start, vh.csum_offset) < 0) {
            count_drop(p, VX_DROP_BAD_GSO);
            continue;
        }
        const struct fdb_slot *hit = NULL;
        uint8_t reply[VX_ARP_FRAME_LEN];
        int drop = 0;
        int action = route(frame, len, net->fdb, net->neigh, &hit, reply, &drop);
        if (action == VX_ACT_ARP_REPLY) {
            if (write_tap_frame(net, reply, sizeof(reply)) == 0)
                add_counter(&p->arp_replies, 1);
            else
                count_drop(p, VX_DROP_TAP_WRITE);
            continue;
        }
        if (action == VX_ACT_DROP) {
            count_drop(p, drop);
            continue;
        }
        if (vh.gso_type != VIRTIO_NET_HDR_GSO_NONE) {
            if (vh.gso_type != VIRTIO_NET_HDR_GSO_TCPV4) {
                count_drop(p, VX_DROP_BAD_GSO);
                continue;
            }
            queue_tso(p, net, frame, len, vh.gso_size, hit);
            continue;
        }
        size_t over = net->encrypted ? VX_SEAL_HLEN + VX_TAG_LEN : VX_HEADER_LEN;
        if (len + over > MAX_UDP_PAYLOAD) {
            count_drop(p, VX_DROP_TOO_BIG);
            continue;
        }
        uint8_t *start = frame - (net->encrypted ? VX_SEAL_HLEN : VX_HEADER_LEN);
        vx_encode_header(start, net->vni);
        if (net->encrypted) {
            struct iovec piece = {.iov_base = frame, .iov_len = len};
            if (!net->keys) {
                count_drop(p, VX_DROP_NO_KEY);
                continue;
            }
            if (vx_seal_iov(net->keys, p->self_ip, start, &piece, 1, frame + len, &drop) < 0) {
                count_drop(p, drop);
                continue;
            }
        }
        int k = b->n++;
        b->iov[k][0] = (struct iovec){.iov_base = start, .iov_len = over + len};
        queue_slot(p, k, hit, 1, len, 1, 0, over);
    }
}

static void *tx_main(void *arg)
{
    vx_plane_t *p = arg;
    struct epoll_event evs[VX_BATCH];
    struct burst st = {0};
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(p->epfd, evs, VX_BATCH, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EBADF/EINVAL: the plane is broken; stop() still joins us */
        }
        p->tx_wake_bytes = p->tx_wake_frames = 0;
        pthread_rwlock_rdlock(&p->lock);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.u64 == STOP_TOKEN)
                continue;
            struct net *net = find_net(p, (uint32_t)evs[i].data.u64);
            if (!net)
                continue;
            if (evs[i].events & (EPOLLERR | EPOLLHUP)) {
                /* the TAP lost its device: stop watching it rather than spin on it; the
                 * network stays until remove_network (whose own DEL then finds nothing) */
                epoll_ctl(p->epfd, EPOLL_CTL_DEL, net->fd, NULL);
                count_drop(p, VX_DROP_TAP_READ);
                continue;
            }
            drain_tap(p, net);
        }
        if (p->tx.n)
            flush_tx(p);
        pthread_rwlock_unlock(&p->lock);
        burst_step(p, &st, p->tx_wake_bytes, p->tx_wake_frames);
    }
    return NULL;
}

/* Inner frames of one received buffer waiting to be written to one vnet TAP. */
struct pending {
    struct net *net;
    long peer;
    size_t n;
    uint8_t *f[RX_PENDING];
    size_t len[RX_PENDING];
};

/* Write the pending frames to their TAP, runs of one TCP flow as GSO super-frames. */
static void flush_pending(vx_plane_t *p, struct pending *q)
{
    struct iovec iov[VX_GRO_MAX_SEGS + 1];
    for (size_t i = 0; i < q->n;) {
        size_t run = VX_RX_COALESCE ? gro_run((const uint8_t *const *)q->f, q->len, q->n, i) : 1;
        struct tcp4 t = {0};
        if (run > 1)
            parse_tcp4(q->f[i], q->len[i], &t);
        size_t total = t.payload, bytes = q->len[i];
        iov[1] = (struct iovec){.iov_base = q->f[i], .iov_len = q->len[i]};
        for (size_t k = i + 1; k < i + run; k++) {
            size_t pay = q->len[k] - t.hdr;
            iov[1 + k - i] = (struct iovec){.iov_base = q->f[k] + t.hdr, .iov_len = pay};
            total += pay;
            bytes += q->len[k];
        }
        struct virtio_net_hdr vh;
        gro_fix_head(q->f[i], q->len[i], q->f[i + run - 1], run, total, &vh);
        iov[0] = (struct iovec){.iov_base = &vh, .iov_len = VX_VNET_HDR_LEN};
        if (writev_tap(q->net->fd, iov, (int)run + 1) == 0) {
            add_counter(&p->peers[q->peer].rx_frames, run);
            add_counter(&p->peers[q->peer].rx_bytes, bytes);
            p->rx_wake_frames += run;
            p->rx_wake_bytes += bytes;
            if (run > 1)
                add_counter(&p->gro_writes, 1);
        } else {
            for (size_t k = 0; k < run; k++)
                count_drop(p, VX_DROP_TAP_WRITE);
        }
        i += run;
    }
    q->n = 0;
}

/* The UDP_GRO segment size of received message k, 0 when it holds one datagram. */
static size_t gro_size(const struct mmsghdr *m)
{
    const struct msghdr *h = &m->msg_hdr;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(h); cm; cm = CMSG_NXTHDR((struct msghdr *)h, cm)) {
        if (cm->cmsg_level == SOL_UDP && cm->cmsg_type == UDP_GRO &&
            cm->cmsg_len >= CMSG_LEN(sizeof(int))) {
            int size;
            memcpy(&size, CMSG_DATA(cm), sizeof(size));
            return size > 0 ? (size_t)size : 0;
        }
    }
    return 0;
}

/* Handle one received batch of n messages, each one datagram or a GRO train of them; frames
 * for vnet TAPs are gathered across the batch so runs of one flow become super-frames. Holds
 * the read lock. */
static void deliver_rx(vx_plane_t *p, int n, struct pending *q)
{
    struct batch *b = &p->rx;
    uint64_t now = 0; /* the clock, read once per batch when a sealed datagram comes */
    for (int k = 0; k < n; k++) {
        uint8_t *msg = b->bufs[k];
        size_t msg_len = b->msgs[k].msg_len;
        if (b->msgs[k].msg_hdr.msg_flags & MSG_TRUNC) {
            count_drop(p, VX_DROP_TOO_BIG);
            continue;
        }
        size_t step = gro_size(&b->msgs[k]);
        if (step == 0 || step > msg_len)
            step = msg_len;
        if (step < msg_len)
            add_counter(&p->gro_buffers, 1);
        long peer = -1;
        if (b->addrs[k].sin_family == AF_INET)
            peer = find_peer(p, ntohl(b->addrs[k].sin_addr.s_addr));
        if (msg_len == 0) {
            count_drop(p, VX_DROP_SHORT);
            continue;
        }
        for (size_t off = 0; off < msg_len; off += step) {
            uint8_t *buf = msg + off;
            size_t len = msg_len - off < step ? msg_len - off : step;
            uint32_t vni = 0;
            int drop = vx_check_datagram(buf, len, &vni);
            if (drop >= 0) {
                count_drop(p, drop);
                continue;
            }
            struct net *net = find_net(p, vni);
            if (!net) {
                count_drop(p, VX_DROP_UNKNOWN_VNI);
                continue;
            }
            if (peer < 0 || !p->peers[peer].active) {
                count_drop(p, VX_DROP_UNKNOWN_PEER);
                continue;
            }
            uint8_t *frame = buf + VX_HEADER_LEN;
            size_t flen = len - VX_HEADER_LEN;
            if (net->encrypted != (buf[3] != 0)) {
                count_drop(p, VX_DROP_NOT_SEALED);
                continue;
            }
            if (net->encrypted) {
                if (!net->keys) {
                    count_drop(p, VX_DROP_UNKNOWN_KEY);
                    continue;
                }
                if (!now)
                    now = vx_now_ns();
                drop = vx_open_in_place(net->keys, peer, p->peers[peer].ip, buf, len, now);
                if (drop >= 0) {
                    count_drop(p, drop);
                    continue;
                }
                frame = buf + VX_SEAL_HLEN;
                flen = len - VX_SEAL_HLEN - VX_TAG_LEN;
            }
            if (net->vnet) {
                if (q->n && (q->net != net || q->peer != peer || q->n == RX_PENDING))
                    flush_pending(p, q);
                q->net = net;
                q->peer = peer;
                q->f[q->n] = frame;
                q->len[q->n++] = flen;
                continue;
            }
            if (write_tap(net->fd, frame, flen) < 0) {
                count_drop(p, VX_DROP_TAP_WRITE);
                continue;
            }
            add_counter(&p->peers[peer].rx_frames, 1);
            add_counter(&p->peers[peer].rx_bytes, flen);
            p->rx_wake_frames++;
            p->rx_wake_bytes += flen;
        }
    }
    /* the frames point into the batch's buffers, which the next recvmmsg reuses */
    if (q->n)
        flush_pending(p, q);
}

static void *rx_main(void *arg)
{
    vx_plane_t *p = arg;
    struct batch *b = &p->rx;
    struct pending *q = malloc(sizeof(*q));
    if (!q)
        return NULL; /* no memory for the thread's own state: nothing can be delivered */
    q->n = 0;
    for (int k = 0; k < VX_BATCH; k++) {
        b->iov[k][0] = (struct iovec){.iov_base = b->bufs[k], .iov_len = BUF_SIZE};
    }
    struct burst st = {0};
    p->rx_wake_bytes = p->rx_wake_frames = 0;
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        for (int k = 0; k < VX_BATCH; k++) {
            b->msgs[k].msg_hdr = (struct msghdr){
                .msg_name = &b->addrs[k], .msg_namelen = sizeof(b->addrs[k]),
                .msg_iov = b->iov[k], .msg_iovlen = 1,
                .msg_control = b->ctrl[k].buf, .msg_controllen = sizeof(b->ctrl[k].buf)};
        }
        int n = recvmmsg(p->udp_fd, b->msgs, VX_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                burst_step(p, &st, p->rx_wake_bytes, p->rx_wake_frames);
                p->rx_wake_bytes = p->rx_wake_frames = 0;
                struct pollfd pfds[2] = {{.fd = p->udp_fd, .events = POLLIN},
                                         {.fd = p->evfd, .events = POLLIN}};
                if (poll(pfds, 2, -1) < 0 && errno != EINTR)
                    break;
                continue;
            }
            /* e.g. a queued ICMP error (ECONNREFUSED) on the unconnected socket: it is
             * consumed by this call, so counting it and going on cannot spin */
            count_drop(p, VX_DROP_RECV);
            continue;
        }
        pthread_rwlock_rdlock(&p->lock);
        deliver_rx(p, n, q);
        pthread_rwlock_unlock(&p->lock);
        if (p->rx_wake_bytes >= BURST_BYTES || p->rx_wake_frames >= BURST_FRAMES) {
            /* a stream that never lets the thread sleep is judged without waiting for it */
            burst_step(p, &st, p->rx_wake_bytes, p->rx_wake_frames);
            p->rx_wake_bytes = p->rx_wake_frames = 0;
        }
    }
    free(q);
    return NULL;
}

int vx_plane_start(vx_plane_t *p)
{
    if (p->started) {
        errno = EALREADY;
        return -1;
    }
    __atomic_store_n(&p->stopping, 0, __ATOMIC_RELEASE);
    int err = pthread_create(&p->tx_thread, NULL, tx_main, p);
    if (err) {
        errno = err;
        return -1;
    }
    err = pthread_create(&p->rx_thread, NULL, rx_main, p);
    if (err) {
        __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
        uint64_t one = 1;
        while (write(p->evfd, &one, sizeof(one)) < 0 && errno == EINTR)
            ;
        pthread_join(p->tx_thread, NULL);
        errno = err;
        return -1;
    }
    pthread_setname_np(p->tx_thread, "mk-vxlan-tx");
    pthread_setname_np(p->rx_thread, "mk-vxlan-rx");
    p->started = 1;
    return 0;
}

void vx_plane_stop(vx_plane_t *p)
{
    if (!p->started)
        return;
    __atomic_store_n(&p->stopping, 1, __ATOMIC_RELEASE);
    uint64_t one = 1;
    /* an eventfd write only fails with EAGAIN at a counter near 2^64, which also wakes */
    while (write(p->evfd, &one, sizeof(one)) < 0 && errno == EINTR)
        ;
    pthread_join(p->tx_thread, NULL);
    pthread_join(p->rx_thread, NULL);
    uint64_t drained;
    while (read(p->evfd, &drained, sizeof(drained)) < 0 && errno == EINTR)
        ;
    p->started = 0;
}

void vx_plane_free(vx_plane_t *p)
{
    if (!p)
        return;
    vx_plane_stop(p);
    for (size_t k = 0; k < p->n_nets; k++) {
        free_fdb(p->nets[k]->fdb);
        free_neigh(p->nets[k]->neigh);
        vx_netkeys_free(p->nets[k]->keys);
        free(p->nets[k]);
    }
    free(p->nets);
    free(p->index);
    free(p->peers);
    free(p->peer_index);
    free(p->tx.mem);
    free(p->tx.hdrs);
    free(p->rx.mem);
    close(p->epfd);
    close(p->evfd);
    pthread_rwlock_destroy(&p->lock);
    free(p);
}

size_t vx_plane_peer_count(vx_plane_t *p)
{
    pthread_rwlock_rdlock(&p->lock);
    size_t n = p->n_peers;
    pthread_rwlock_unlock(&p->lock);
    return n;
}

size_t vx_plane_read_stats(vx_plane_t *p, vx_peer_stats_t *out, size_t cap, uint64_t *drops,
                           uint64_t *arp_replies)
{
    pthread_rwlock_rdlock(&p->lock);
    size_t n = p->n_peers < cap ? p->n_peers : cap;
    for (size_t k = 0; k < n; k++) {
        const struct peer *peer = &p->peers[k];
        out[k] = (vx_peer_stats_t){
            .ip = peer->ip,
            .tx_frames = __atomic_load_n(&peer->tx_frames, __ATOMIC_RELAXED),
            .tx_bytes = __atomic_load_n(&peer->tx_bytes, __ATOMIC_RELAXED),
            .rx_frames = __atomic_load_n(&peer->rx_frames, __ATOMIC_RELAXED),
            .rx_bytes = __atomic_load_n(&peer->rx_bytes, __ATOMIC_RELAXED),
        };
    }
    for (int r = 0; r < VX_DROP_COUNT; r++)
        drops[r] = __atomic_load_n(&p->drops[r], __ATOMIC_RELAXED);
    *arp_replies = __atomic_load_n(&p->arp_replies, __ATOMIC_RELAXED);
    pthread_rwlock_unlock(&p->lock);
    return n;
}

void vx_plane_set_burst_priority(vx_plane_t *p, int prio)
{
    __atomic_store_n(&p->burst_prio, prio, __ATOMIC_RELAXED);
}

void vx_plane_offload_stats(vx_plane_t *p, uint64_t *out)
{
    out[0] = __atomic_load_n(&p->tso_frames, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&p->gso_sends, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&p->gro_buffers, __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&p->gro_writes, __ATOMIC_RELAXED);
    out[4] = (uint64_t)__atomic_load_n(&p->udp_gso, __ATOMIC_RELAXED);
    out[5] = (uint64_t)p->udp_gro;
    out[6] = (uint64_t)__atomic_load_n(&p->burst_prio, __ATOMIC_RELAXED);
    out[7] = __atomic_load_n(&p->burst_raises, __ATOMIC_RELAXED);
}
