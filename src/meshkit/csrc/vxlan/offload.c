/* offload.c - the C VXLAN plane's sans-IO offload work: checksums (finishing a
 * CHECKSUM_PARTIAL frame, IPv4/TCP), cutting a TSO super-frame into MSS-sized TCP segments,
 * and coalescing received TCP segments of one flow into a GSO super-frame for a vnet TAP (the
 * GRO rules), with the virtio headers that go with them. Tests compare each with its Python
 * twin (net/vxlan/wire.py) by hypothesis.
 */
#define _GNU_SOURCE
#include "vxplane.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

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


/* Parse an untagged Ethernet/IPv4/TCP frame whose payload runs to the end of the frame. */
int parse_tcp4(const uint8_t *f, size_t len, struct tcp4 *t)
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


size_t tso_count(const struct tcp4 *t, size_t mss)
{
    return t->payload ? (t->payload + mss - 1) / mss : 1;
}

/* The payload bytes of segment k of TSO frame t: [k*mss, (k+1)*mss) of its payload. */
size_t tso_seg_len(const struct tcp4 *t, size_t mss, size_t k)
{
    size_t off = k * mss;
    if (off >= t->payload)
        return 0;
    return t->payload - off < mss ? t->payload - off : mss;
}

/* Write the headers (t->hdr bytes) of segment k of TSO frame f to o: IPv4 id = the frame's
 * + k, TCP seq advanced, FIN/PSH only on the last, CWR only on the first, and the complete
 * TCP checksum over these headers and the segment's payload (read in place in f). */
void tso_seg_header(const uint8_t *f, const struct tcp4 *t, size_t mss, size_t k,
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
/* The IPv4 header bytes of an unfragmented UDP/IPv4 datagram with a checksum and a
 * payload, whose lengths cover the frame exactly; 0 when f is not one. */
static size_t udp_eligible(const uint8_t *f, size_t len)
{
    if (len < VX_ETH_HLEN + 20 + 8 || f[12] != 0x08 || f[13] != 0x00)
        return 0;
    const uint8_t *ip = f + VX_ETH_HLEN;
    size_t ihl = (size_t)(ip[0] & 15) * 4;
    if ((ip[0] >> 4) != 4 || ihl < 20 || ip[9] != 17 || get16(ip + 2) != len - VX_ETH_HLEN ||
        (get16(ip + 6) & 0x3fff) || len < VX_ETH_HLEN + ihl + 8 + 1)
        return 0;
    const uint8_t *udp = ip + ihl;
    if (get16(udp + 4) != len - VX_ETH_HLEN - ihl || get16(udp + 6) == 0)
        return 0;
    return ihl;
}

/* A run of UDP datagrams of one flow: same Ethernet header, IPv4 header except total length,
 * id and checksum, same ports, every payload as large as the head's but the last, which may
 * be shorter and ends the run; at most VX_GRO_MAX_SEGS datagrams and 64 KB of IPv4. The TAP
 * gets them as one UDP GSO (USO) super-frame, which the stack cuts back into the same
 * datagrams (payloads and boundaries) where it must: at the receiving socket at the latest.
 * Why: small datagrams cost one TAP write, bridge, veth and IP pass each otherwise. */
static size_t udp_run(const uint8_t *const *f, const size_t *len, size_t n, size_t i,
                      size_t ihl)
{
    const uint8_t *hip = f[i] + VX_ETH_HLEN;
    size_t seg = len[i] - VX_ETH_HLEN - ihl - 8;
    size_t total = seg;
    size_t k = i + 1;
    for (; k < n && k - i < VX_GRO_MAX_SEGS; k++) {
        if (len[k] > len[i] || udp_eligible(f[k], len[k]) != ihl)
            break;
        size_t pay = len[k] - VX_ETH_HLEN - ihl - 8;
        const uint8_t *ip = f[k] + VX_ETH_HLEN;
        if (ihl + 8 + total + pay > 65535 || memcmp(f[k], f[i], VX_ETH_HLEN) != 0 ||
            memcmp(ip, hip, 2) != 0 || memcmp(ip + 6, hip + 6, 4) != 0 ||
            memcmp(ip + 12, hip + 12, ihl - 12) != 0 || memcmp(ip + ihl, hip + ihl, 4) != 0)
            break;
        total += pay;
        if (pay < seg) {
            k++;
            break;
        }
    }
    return k - i;
}

size_t gro_hdr_len(const uint8_t *f, size_t len)
{
    size_t ihl = udp_eligible(f, len);
    if (ihl)
        return VX_ETH_HLEN + ihl + 8;
    struct tcp4 t;
    return parse_tcp4(f, len, &t) < 0 ? len : t.hdr;
}

size_t gro_run(const uint8_t *const *f, const size_t *len, size_t n, size_t i, int udp)
{
    struct tcp4 h, t;
    size_t ihl = udp_eligible(f[i], len[i]);
    if (ihl)
        return udp ? udp_run(f, len, n, i, ihl) : 1;
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
 * pseudo-header sum (CHECKSUM_PARTIAL, as the kernel expects of NEEDS_CSUM), gso TCPV4; for
 * a UDP run (udp_run) the IPv4 total length and checksum, the UDP length of the run and its
 * pseudo-header sum, gso UDP_L4 with gso_size = the head's payload. A run of one goes as
 * lone_partial says. */
void gro_fix_head(uint8_t *head, size_t head_len, const uint8_t *last, size_t count,
                         size_t total, struct virtio_net_hdr *vh)
{
    memset(vh, 0, sizeof(*vh));
    if (count == 1) {
        lone_partial(head, head_len, vh);
        return;
    }
    size_t ihl = udp_eligible(head, head_len);
    if (ihl) {
        uint8_t *ip = head + VX_ETH_HLEN;
        size_t l4 = 8 + total;
        put16(ip + 2, (uint16_t)(ihl + l4));
        ip_fix_csum(ip, ihl);
        put16(ip + ihl + 4, (uint16_t)l4);
        put16(ip + ihl + 6, csum_fold(l4_pseudo(ip, 17, l4)));
        vh->flags = VIRTIO_NET_HDR_F_NEEDS_CSUM;
        vh->gso_type = VIRTIO_NET_HDR_GSO_UDP_L4;
        vh->hdr_len = (uint16_t)(VX_ETH_HLEN + ihl + 8);
        vh->gso_size = (uint16_t)(head_len - VX_ETH_HLEN - ihl - 8);
        vh->csum_start = (uint16_t)(VX_ETH_HLEN + ihl);
        vh->csum_offset = 6;
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
        size_t run = gro_run(f, lens, n, i, 1);
        size_t hdr = run > 1 ? gro_hdr_len(f[i], lens[i]) : lens[i];
        size_t bytes = VX_VNET_HDR_LEN + lens[i], total = lens[i] - hdr;
        for (size_t k = i + 1; k < i + run; k++) {
            bytes += lens[k] - hdr;
            total += lens[k] - hdr;
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
            memcpy(o + at, f[k] + hdr, lens[k] - hdr);
            at += lens[k] - hdr;
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

