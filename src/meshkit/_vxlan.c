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

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#define STOP_TOKEN UINT64_MAX /* epoll data of the eventfd; VNIs are < 2^24 */
#define SEND_RETRY_MS 10      /* how long a full socket buffer may stall a batch */
#define TAP_RETRY_MS 5
#define TX_ROUND_FRAMES 256   /* frames read from one TAP per wakeup, so TAPs share the thread */

static const char *const drop_names[VX_DROP_COUNT] = {
    "short", "bad_flags", "unknown_vni", "unknown_peer", "no_fdb", "broadcast",
    "arp_no_neigh", "tap_write_error", "tap_read_error", "send_error", "too_big", "recv_error",
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

static void free_fdb(struct fdb *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

static void free_neigh(struct neigh *t)
{
    if (t) {
        free(t->slots);
        free(t);
    }
}

static struct fdb *alloc_fdb(size_t n)
{
    struct fdb *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    size_t size = table_size(n);
    t->slots = calloc(size, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->mask = size - 1;
    return t;
}

static struct neigh *alloc_neigh(size_t n)
{
    struct neigh *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    size_t size = table_size(n);
    t->slots = calloc(size, sizeof(*t->slots));
    if (!t->slots) {
        free(t);
        return NULL;
    }
    t->mask = size - 1;
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
    struct fdb *fdb;
    struct neigh *neigh;
};

/* One thread's preallocated batch, so the packet path never mallocs. */
struct batch {
    uint8_t (*bufs)[VX_HEADER_LEN + VX_MAX_FRAME];
    struct iovec iov[VX_BATCH][2];
    struct mmsghdr msgs[VX_BATCH];
    struct sockaddr_in addrs[VX_BATCH];
    uint32_t peer[VX_BATCH];
    size_t frame_len[VX_BATCH];
    int n;
};

struct vx_plane {
    int udp_fd;
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
    int stopping;
    int started;
    pthread_t tx_thread, rx_thread;
    struct batch tx, rx;
};

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
    b->bufs = malloc(sizeof(*b->bufs) * VX_BATCH);
    return b->bufs ? 0 : -1;
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
        alloc_batch(&p->rx) < 0 || epoll_ctl(p->epfd, EPOLL_CTL_ADD, p->evfd, &ev) < 0) {
        int saved = lock_err ? lock_err : errno;
        if (p->epfd >= 0)
            close(p->epfd);
        if (p->evfd >= 0)
            close(p->evfd);
        if (!lock_err)
            pthread_rwlock_destroy(&p->lock);
        free(p->tx.bufs);
        free(p->rx.bufs);
        free(p);
        errno = saved;
        return NULL;
    }
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

/* Write one frame to a TAP; 0 when it went whole, else -1 (counted by the caller). */
static int write_tap(int fd, const uint8_t *buf, size_t len)
{
    int retried = 0;
    for (;;) {
        ssize_t n = write(fd, buf, len);
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
                struct peer *peer = &p->peers[b->peer[k]];
                add_counter(&peer->tx_frames, 1);
                add_counter(&peer->tx_bytes, b->frame_len[k]);
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
        count_drop(p, n < 0 && errno == EMSGSIZE ? VX_DROP_TOO_BIG : VX_DROP_SEND);
        i++; /* ENOBUFS, EHOSTUNREACH, ...: lose this datagram, keep the rest */
    }
    b->n = 0;
}

/* Read frames from one network's TAP into the TX batch. Holds the read lock. */
static void drain_tap(vx_plane_t *p, struct net *net)
{
    struct batch *b = &p->tx;
    for (int round = 0; round < TX_ROUND_FRAMES; round++) {
        if (b->n == VX_BATCH)
            flush_tx(p);
        uint8_t *buf = b->bufs[b->n];
        ssize_t len = read(net->fd, buf + VX_HEADER_LEN, VX_MAX_FRAME);
        if (len < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                count_drop(p, VX_DROP_TAP_READ);
            return;
        }
        if (len == 0)
            return;
        const struct fdb_slot *hit = NULL;
        uint8_t reply[VX_ARP_FRAME_LEN];
        int drop = 0;
        int action = route(buf + VX_HEADER_LEN, (size_t)len, net->fdb, net->neigh, &hit, reply,
                           &drop);
        if (action == VX_ACT_ARP_REPLY) {
            if (write_tap(net->fd, reply, sizeof(reply)) == 0)
                add_counter(&p->arp_replies, 1);
            else
                count_drop(p, VX_DROP_TAP_WRITE);
            continue;
        }
        if (action == VX_ACT_DROP) {
            count_drop(p, drop);
            continue;
        }
        if ((size_t)len + VX_HEADER_LEN > 65507) { /* more than one IPv4 UDP datagram holds */
            count_drop(p, VX_DROP_TOO_BIG);
            continue;
        }
        int k = b->n++;
        vx_encode_header(buf, net->vni);
        b->iov[k][0] = (struct iovec){.iov_base = buf, .iov_len = VX_HEADER_LEN + (size_t)len};
        b->addrs[k] = (struct sockaddr_in){
            .sin_family = AF_INET, .sin_port = p->port_be, .sin_addr.s_addr = htonl(hit->ip)};
        b->msgs[k].msg_hdr = (struct msghdr){
            .msg_name = &b->addrs[k], .msg_namelen = sizeof(b->addrs[k]),
            .msg_iov = b->iov[k], .msg_iovlen = 1};
        b->peer[k] = hit->peer;
        b->frame_len[k] = (size_t)len;
    }
}

static void *tx_main(void *arg)
{
    vx_plane_t *p = arg;
    struct epoll_event evs[VX_BATCH];
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        int n = epoll_wait(p->epfd, evs, VX_BATCH, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EBADF/EINVAL: the plane is broken; stop() still joins us */
        }
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
    }
    return NULL;
}

/* Handle one received batch of n datagrams. Holds the read lock. */
static void deliver_rx(vx_plane_t *p, int n)
{
    struct batch *b = &p->rx;
    for (int k = 0; k < n; k++) {
        const uint8_t *buf = b->bufs[k];
        size_t len = b->msgs[k].msg_len;
        uint32_t vni = 0;
        if (b->msgs[k].msg_hdr.msg_flags & MSG_TRUNC) {
            count_drop(p, VX_DROP_TOO_BIG);
            continue;
        }
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
        long peer = -1;
        if (b->addrs[k].sin_family == AF_INET)
            peer = find_peer(p, ntohl(b->addrs[k].sin_addr.s_addr));
        if (peer < 0 || !p->peers[peer].active) {
            count_drop(p, VX_DROP_UNKNOWN_PEER);
            continue;
        }
        if (write_tap(net->fd, buf + VX_HEADER_LEN, len - VX_HEADER_LEN) < 0) {
            count_drop(p, VX_DROP_TAP_WRITE);
            continue;
        }
        add_counter(&p->peers[peer].rx_frames, 1);
        add_counter(&p->peers[peer].rx_bytes, len - VX_HEADER_LEN);
    }
}

static void *rx_main(void *arg)
{
    vx_plane_t *p = arg;
    struct batch *b = &p->rx;
    for (int k = 0; k < VX_BATCH; k++) {
        b->iov[k][0] = (struct iovec){.iov_base = b->bufs[k], .iov_len = sizeof(b->bufs[k])};
    }
    while (!__atomic_load_n(&p->stopping, __ATOMIC_ACQUIRE)) {
        for (int k = 0; k < VX_BATCH; k++) {
            b->msgs[k].msg_hdr = (struct msghdr){
                .msg_name = &b->addrs[k], .msg_namelen = sizeof(b->addrs[k]),
                .msg_iov = b->iov[k], .msg_iovlen = 1};
        }
        int n = recvmmsg(p->udp_fd, b->msgs, VX_BATCH, MSG_DONTWAIT, NULL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
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
        deliver_rx(p, n);
        pthread_rwlock_unlock(&p->lock);
    }
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
        free(p->nets[k]);
    }
    free(p->nets);
    free(p->index);
    free(p->peers);
    free(p->peer_index);
    free(p->tx.bufs);
    free(p->rx.bufs);
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
