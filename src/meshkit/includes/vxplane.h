/* vxplane.h - internals shared by the C VXLAN plane's files (_vxlan.c, csrc/vxlan/route.c,
 * offload.c, datapath.c): the tables, the plane and its batches, and the functions one file
 * uses from another. Not an API: the API is vxlan.h. Functions declared here are hidden
 * (not exported from the extension module).
 */
#ifndef MESHKIT_VXPLANE_H
#define MESHKIT_VXPLANE_H

#include "vxlan.h"
#include "vxseal.h"

#include <linux/if_tun.h>
#include <linux/virtio_net.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/uio.h>

#define VX_HIDDEN __attribute__((visibility("hidden")))

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
#ifndef VIRTIO_NET_HDR_GSO_UDP_L4
#define VIRTIO_NET_HDR_GSO_UDP_L4 5 /* linux/virtio_net.h of Linux 4.18+; tun takes it since 6.2 */
#endif
#ifndef VX_RX_COALESCE
#define VX_RX_COALESCE 1 /* 0: every received frame goes to a vnet TAP alone (no GSO) */
#endif

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

struct tcp4 {
    size_t ip_off;  /* always VX_ETH_HLEN: no VLAN tags on the overlay */
    size_t ihl;     /* IPv4 header bytes */
    size_t thl;     /* TCP header bytes */
    size_t hdr;     /* Ethernet + IPv4 + TCP header bytes */
    size_t payload; /* TCP payload bytes */
};

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_PSH 0x08
#define TCP_ACK 0x10
#define TCP_URG 0x20
#define TCP_ECE 0x40
#define TCP_CWR 0x80


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
    /* TX: the slot is a train of whole small datagrams (one frame each, its own buffer) that
     * later frames of the same size to the same peer may join; 2 once a shorter one ended it */
    uint8_t small[VX_BATCH];
    int n;
    int nbuf; /* TX: buffers in use by queued slots (a small train holds several) */
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
    int tap_uso; /* cleared for good when a TAP refuses a UDP GSO (USO) super-frame */
    long uso_refuse_after; /* test hook: USO writes left before one fails as EINVAL; -1 never */
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

/* route.c */
VX_HIDDEN uint64_t mac_key(const uint8_t *m);
VX_HIDDEN uint32_t be32_read(const uint8_t *b);
VX_HIDDEN size_t hash64(uint64_t k);
VX_HIDDEN size_t table_size(size_t n);
VX_HIDDEN void free_fdb(struct fdb *t);
VX_HIDDEN void free_neigh(struct neigh *t);
VX_HIDDEN struct fdb *alloc_fdb(size_t n);
VX_HIDDEN void fdb_put(struct fdb *t, uint64_t mac, uint32_t ip, uint32_t peer);
VX_HIDDEN const struct fdb_slot *fdb_get(const struct fdb *t, uint64_t mac);
VX_HIDDEN struct neigh *build_neigh(const uint8_t *neigh, size_t n);
VX_HIDDEN int route(const uint8_t *f, size_t len, const struct fdb *fdb,
                    const struct neigh *neigh, const struct fdb_slot **hit, uint8_t *out,
                    int *drop);

/* offload.c */
VX_HIDDEN int parse_tcp4(const uint8_t *f, size_t len, struct tcp4 *t);
VX_HIDDEN size_t tso_count(const struct tcp4 *t, size_t mss);
VX_HIDDEN size_t tso_seg_len(const struct tcp4 *t, size_t mss, size_t k);
VX_HIDDEN void tso_seg_header(const uint8_t *f, const struct tcp4 *t, size_t mss, size_t k,
                              uint8_t *o);
VX_HIDDEN size_t gro_hdr_len(const uint8_t *f, size_t len);
VX_HIDDEN size_t gro_run(const uint8_t *const *f, const size_t *len, size_t n, size_t i,
                         int udp);
VX_HIDDEN void gro_fix_head(uint8_t *head, size_t head_len, const uint8_t *last, size_t count,
                            size_t total, struct virtio_net_hdr *vh);

/* _vxlan.c */
VX_HIDDEN struct net *find_net(const vx_plane_t *p, uint32_t vni);
VX_HIDDEN long find_peer(const vx_plane_t *p, uint32_t ip);

/* datapath.c: the threads' bodies (arg: the plane) */
VX_HIDDEN void *tx_main(void *arg);
VX_HIDDEN void *rx_main(void *arg);

static inline void count_drop(vx_plane_t *p, int reason)
{
    __atomic_fetch_add(&p->drops[reason], 1, __ATOMIC_RELAXED);
}

static inline void add_counter(uint64_t *c, uint64_t v)
{
    __atomic_fetch_add(c, v, __ATOMIC_RELAXED);
}

#endif /* MESHKIT_VXPLANE_H */
