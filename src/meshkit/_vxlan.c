/* _vxlan.c - meshkit's userspace VXLAN data plane (RFC 7348): TAP <-> UDP with batched
 * recvmmsg/sendmmsg, VNI demux, per-network FDB and neighbour hash tables, an ARP proxy, and
 * per-peer / per-drop-reason counters. The API and the locking rules are in includes/vxlan.h;
 * the pure-Python twin is meshkit/net/vxlan/plane_py.py. This file holds the plane's
 * lifecycle and table/key changes; csrc/vxlan/ holds the rest: route.c (tables, ARP, the TX
 * decision), offload.c (checksums, TSO, GRO), datapath.c (the TX and RX threads), seal.c
 * (AEAD and anti-replay); their shared internals are in includes/vxplane.h.
 *
 * Byte order: tables and counters keep IPv4 addresses in host order; sockaddr_in and the wire
 * (VXLAN header VNI, ARP payload) are network order, converted where they are read or written.
 */
#define _GNU_SOURCE
#include "vxplane.h"
#include "vxseal.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

struct net *find_net(const vx_plane_t *p, uint32_t vni)
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

long find_peer(const vx_plane_t *p, uint32_t ip)
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
    p->tap_uso = 1; /* tried on the first run of UDP datagrams; a refusal turns it off */
    p->uso_refuse_after = -1;
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

void vx_plane_set_tap_uso(vx_plane_t *p, int on)
{
    __atomic_store_n(&p->tap_uso, on ? 1 : 0, __ATOMIC_RELAXED);
}

void vx_plane_test_refuse_uso(vx_plane_t *p, long after)
{
    __atomic_store_n(&p->uso_refuse_after, after < 0 ? -1 : after, __ATOMIC_RELAXED);
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
    out[8] = (uint64_t)__atomic_load_n(&p->tap_uso, __ATOMIC_RELAXED);
}

