/* datapath.c - the C VXLAN plane's two packet threads: TX (epoll over the TAPs: read
 * frames, answer ARP, finish checksums, cut TSO frames into UDP_SEGMENT trains, seal,
 * sendmmsg) and RX (recvmmsg with UDP GRO: check, open, write to the VNI's TAP, runs of one
 * TCP flow as GSO super-frames), and burst priority (SCHED_FIFO while a thread moves a bulk
 * stream). They read the plane's tables under its read lock, one batch at a time; _vxlan.c
 * makes and changes the plane and starts them.
 */
#define _GNU_SOURCE
#include "vxplane.h"

#include <errno.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

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
    b->nbuf = 0;
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
    b->small[k] = 0;
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

/* Add one whole datagram (dgram bytes at start, its inner frame frame_bytes) to the last
 * slot when that is a small train to the same peer that it can join: UDP_SEGMENT on, every
 * datagram so far as long as the first, this one no longer (a shorter one ends the train),
 * room for it. Why: a run of small frames to one peer (pure TCP ACKs of a bulk stream, a
 * stream of small UDP messages) then costs one pass through the UDP send path and the
 * underlay, not one per frame; the receiving plane's UDP_GRO gets it back as one buffer, and
 * a kernel VXLAN peer gets single datagrams (GSO cuts the train where it must). 1: joined. */
static int join_small(vx_plane_t *p, const struct fdb_slot *hit, uint8_t *start, size_t dgram,
                      size_t frame_bytes)
{
    struct batch *b = &p->tx;
    if (b->n == 0 || !__atomic_load_n(&p->udp_gso, __ATOMIC_RELAXED))
        return 0;
    int k = b->n - 1;
    uint32_t segs = b->segs[k];
    size_t size = b->iov[k][0].iov_len; /* the train's segment size: its first datagram's */
    if (b->small[k] != 1 || b->addrs[k].sin_addr.s_addr != htonl(hit->ip) || dgram > size ||
        segs >= VX_GSO_MAX_SEGS || size * segs + dgram > MAX_UDP_PAYLOAD)
        return 0;
    struct iovec *v = &b->iov[k][IOV_PER_SEG * segs];
    v[0] = (struct iovec){.iov_base = start, .iov_len = dgram};
    v[1] = v[2] = (struct iovec){.iov_base = NULL, .iov_len = 0};
    queue_slot(p, k, hit, IOV_PER_SEG * (segs + 1), b->frame_len[k] + frame_bytes, segs + 1,
               size, b->over[k]);
    b->small[k] = dgram < size ? 2 : 1;
    return 1;
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
        if (b->nbuf == VX_BATCH)
            flush_tx(p);
        uint8_t *buf = b->bufs[b->nbuf];
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
            b->nbuf++; /* the frame stays in its buffer: its trains are sent from it */
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
        b->nbuf++;
        if (join_small(p, hit, start, over + len, len))
            continue;
        int k = b->n++;
        b->iov[k][0] = (struct iovec){.iov_base = start, .iov_len = over + len};
        b->iov[k][1] = b->iov[k][2] = (struct iovec){.iov_base = NULL, .iov_len = 0};
        queue_slot(p, k, hit, IOV_PER_SEG, len, 1, 0, over);
        b->small[k] = 1;
    }
}

void *tx_main(void *arg)
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

/* The test hook of vx_plane_test_refuse_uso: whether this USO write is the one to fail.
 * Only the RX thread counts down; the setter runs before start. */
static int uso_refused(vx_plane_t *p)
{
    long left = __atomic_load_n(&p->uso_refuse_after, __ATOMIC_RELAXED);
    if (left < 0)
        return 0;
    __atomic_store_n(&p->uso_refuse_after, left ? left - 1 : -1, __ATOMIC_RELAXED);
    return left == 0;
}

/* Write the pending frames to their TAP, runs of one TCP flow as GSO super-frames. */
static void flush_pending(vx_plane_t *p, struct pending *q)
{
    struct iovec iov[VX_GRO_MAX_SEGS + 1];
    for (size_t i = 0; i < q->n;) {
        int uso = __atomic_load_n(&p->tap_uso, __ATOMIC_RELAXED);
        size_t run = VX_RX_COALESCE ? gro_run((const uint8_t *const *)q->f, q->len, q->n, i, uso)
                                    : 1;
        size_t hdr = run > 1 ? gro_hdr_len(q->f[i], q->len[i]) : q->len[i];
        size_t total = q->len[i] - hdr, bytes = q->len[i];
        iov[1] = (struct iovec){.iov_base = q->f[i], .iov_len = q->len[i]};
        for (size_t k = i + 1; k < i + run; k++) {
            size_t pay = q->len[k] - hdr;
            iov[1 + k - i] = (struct iovec){.iov_base = q->f[k] + hdr, .iov_len = pay};
            total += pay;
            bytes += q->len[k];
        }
        struct virtio_net_hdr vh;
        uint8_t saved[VX_ETH_HLEN + 60 + 8]; /* a UDP run's head before it became the USO's */
        if (run > 1 && hdr <= sizeof(saved))
            memcpy(saved, q->f[i], hdr);
        gro_fix_head(q->f[i], q->len[i], q->f[i + run - 1], run, total, &vh);
        iov[0] = (struct iovec){.iov_base = &vh, .iov_len = VX_VNET_HDR_LEN};
        int wrote;
        if (vh.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 && uso_refused(p)) {
            wrote = -1; /* the test hook: as a kernel before 6.2 answers */
            errno = EINVAL;
        } else
            wrote = writev_tap(q->net->fd, iov, (int)run + 1);
        if (wrote < 0 && errno == EINVAL && vh.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4 &&
            hdr <= sizeof(saved)) {
            /* a kernel before 6.2 takes no USO from a TAP writer: from now on UDP goes one
             * datagram per write, starting with this run (its head restored) */
            __atomic_store_n(&p->tap_uso, 0, __ATOMIC_RELAXED);
            memcpy(q->f[i], saved, hdr);
            continue;
        }
        if (wrote == 0) {
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

void *rx_main(void *arg)
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

