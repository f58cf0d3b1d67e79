/* vxlan.h - C API of meshkit's userspace VXLAN data plane (RFC 7348).
 *
 * One plane owns: the caller's UDP socket (bound to the node's underlay address and the
 * data-path port; the plane never closes it), any number of networks (VNI -> TAP fd; the plane
 * never closes TAP fds either), and per network an FDB (inner MAC -> peer underlay IPv4) and a
 * neighbour table (inner IPv4 -> MAC) used by the ARP proxy.
 *
 * Offloads: a TAP opened with IFF_VNET_HDR (seen with TUNGETIFF when it is added) gets
 * TUNSETOFFLOAD(TUN_F_CSUM | TUN_F_TSO4). TX then reads a virtio_net_hdr before each frame:
 * NEEDS_CSUM is finished in userspace, a GSO_TCPV4 super-frame is cut into MSS-sized TCP
 * segments, each with its own VXLAN header, sent as ONE datagram train with a UDP_SEGMENT
 * cmsg (or one datagram each when the kernel refuses UDP_SEGMENT, remembered); consecutive
 * small frames of equal size read for one peer (on any TAP) join one such train too, as
 * whole datagrams. RX asks for UDP_GRO, splits what arrives at the cmsg's gso_size, and
 * writes to such a TAP runs of consecutive segments of one TCP flow as one GSO_TCPV4
 * super-frame (NEEDS_CSUM), runs of equal-sized UDP datagrams of one flow as one GSO_UDP_L4
 * super-frame (one datagram per write from the first refusal on: kernels before 6.2), a lone
 * TCP/UDP datagram as NEEDS_CSUM too (the outer UDP checksum covered it; tun ignores
 * DATA_VALID on write), anything else with no flags. Plain TAPs get plain frames. Counters
 * count segments (inner frames), never super-frames.
 *
 * Two threads run once vx_plane_start() is called, both without touching Python:
 *   TX: epoll over every TAP fd + an eventfd; reads frames, answers ARP requests for known
 *       neighbours back into the TAP, drops broadcast/multicast/unknown unicast (no flooding),
 *       prepends the VXLAN header and sends batches with sendmmsg.
 *   RX: recvmmsg batches from the UDP socket, checks them, writes inner frames to the VNI's TAP.
 * Tables are replaced under a writer-preferring rwlock that the threads hold (as readers) only
 * while handling one batch, never while blocked, so a change never shows a torn table and
 * never waits for traffic.
 *
 * Byte order: VNIs and IPv4 addresses cross this API in HOST order (uint32_t), except the
 * packed entry arrays of vx_plane_set_peers(), which hold addresses in NETWORK order (as they
 * appear on the wire). On the wire the VXLAN header is 8 bytes: flags (0x08 = I bit), 3 reserved
 * bytes, the 24-bit VNI in network order (bytes 4..6), 1 reserved byte.
 *
 * The pure-Python twin with identical behaviour is meshkit/net/vxlan/plane_py.py, its sans-IO
 * pieces meshkit/net/vxlan/wire.py. The C sources: _vxlan.c (the plane's lifecycle and table
 * changes) and csrc/vxlan/ (route.c, offload.c, datapath.c, seal.c).
 */
#ifndef MESHKIT_VXLAN_H
#define MESHKIT_VXLAN_H

#include <stddef.h>
#include <stdint.h>

#define VX_HEADER_LEN 8
#define VX_ETH_HLEN 14
#define VX_ARP_FRAME_LEN 42 /* Ethernet header + ARP for IPv4 over Ethernet, unpadded */
#define VX_BATCH 64
#define VX_MAX_FRAME 65535 /* largest frame read from a TAP or datagram received */
#define VX_VNET_HDR_LEN 10 /* struct virtio_net_hdr before each frame of an IFF_VNET_HDR TAP */
#define VX_GRO_MAX_SEGS 64 /* most frames coalesced into one super-frame written to a TAP */
#define VX_GSO_MAX_SEGS 64 /* most segments sent in one UDP_SEGMENT datagram */

/* Why a frame or datagram was dropped; the order matches DROP_REASONS in net/vxlan/wire.py. */
enum vx_drop {
    VX_DROP_SHORT = 0,          /* datagram < 8 + 14 bytes, or TAP frame < 14 bytes */
    VX_DROP_BAD_FLAGS = 1,      /* the I bit (0x08 in byte 0) is not set */
    VX_DROP_UNKNOWN_VNI = 2,    /* no network with the datagram's VNI */
    VX_DROP_UNKNOWN_PEER = 3,   /* datagram from an address that is in no FDB */
    VX_DROP_NO_FDB = 4,         /* unicast frame to a MAC not in the VNI's FDB */
    VX_DROP_BROADCAST = 5,      /* broadcast or multicast frame (never flooded) */
    VX_DROP_ARP_NO_NEIGH = 6,   /* ARP request for an IP not in the neighbour table */
    VX_DROP_TAP_WRITE = 7,      /* writing a frame to a TAP failed or was short */
    VX_DROP_TAP_READ = 8,       /* reading a TAP failed (other than EAGAIN/EINTR) */
    VX_DROP_SEND = 9,           /* sendmmsg failed for a datagram (ENOBUFS, EAGAIN past retry, ...) */
    VX_DROP_TOO_BIG = 10,       /* the datagram would exceed what UDP carries (EMSGSIZE) */
    VX_DROP_RECV = 11,          /* recvmmsg reported an error */
    VX_DROP_BAD_GSO = 12,       /* a TAP frame with a virtio header we cannot honour */
    /* encrypted networks (vx_plane_set_keys; the wire format is below) */
    VX_DROP_NOT_SEALED = 13,    /* plain datagram for an encrypted network, sealed one for a
                                   plain network, or an unknown cipher byte */
    VX_DROP_UNKNOWN_KEY = 14,   /* sealed with a key id this node does not hold */
    VX_DROP_BAD_TAG = 15,       /* the AEAD tag does not verify (forged or corrupted) */
    VX_DROP_REPLAY = 16,        /* counter already seen inside the replay window */
    VX_DROP_TOO_OLD = 17,       /* counter below the replay window */
    VX_DROP_TOO_NEW = 18,       /* counter past the receiver's clock + VX_MAX_SKEW_NS */
    VX_DROP_NO_KEY = 19,        /* TX: an encrypted network holds no key to send with yet */
    VX_DROP_COUNT = 20,
};

/* ---- encrypted networks ----
 * A sealed datagram: the VXLAN header with the cipher id in byte 3 (a reserved byte: 1 =
 * AES-256-GCM, 2 = ChaCha20-Poly1305; 0 = plain), then the key id (4 bytes) and the counter
 * (8 bytes), both big-endian, then the inner frame sealed, then the 16-byte tag. AAD = the
 * first 20 bytes; nonce = (salt XOR sender IPv4) (4 bytes) || counter (8 bytes). */
#define VX_SEAL_HLEN 20 /* VXLAN header + key id + counter */
#define VX_TAG_LEN 16
#define VX_SEAL_OVERHEAD 28 /* key id + counter + tag */
#define VX_CIPHER_AES256GCM 1
#define VX_CIPHER_CHACHA20POLY1305 2
#define VX_REPLAY_WORDS 32 /* the replay bitmap: 2048 bits, of which 1984 are the window */
#define VX_REPLAY_WINDOW 1984
#define VX_MAX_SKEW_S 600 /* counters start at the sender's clock in ns: a counter more
                           than this ahead of ours is too_new */

/* One key of a network: its id (generation), the AES-256-GCM and ChaCha20-Poly1305 keys
 * derived from the cluster's key (HMAC-SHA256, done in Python), and the 4-byte salt. */
typedef struct {
    uint32_t id;
    uint8_t aes[32];
    uint8_t chacha[32];
    uint8_t salt[4];
} vx_key_t;

/* What the TX path decided for one frame read from a TAP (vx_route_frame). */
enum vx_action {
    VX_ACT_SEND = 0,      /* encapsulate and send to *peer_ip */
    VX_ACT_ARP_REPLY = 1, /* write the ARP reply (in out) back to the TAP */
    VX_ACT_DROP = 2,      /* dropped, *drop says why */
};

typedef struct vx_plane vx_plane_t;

/* Counters of one peer (an underlay IPv4 that appears in some FDB); ip in host order. */
typedef struct {
    uint32_t ip;
    uint64_t tx_frames;
    uint64_t tx_bytes; /* inner frame bytes, without the VXLAN/UDP/IP headers */
    uint64_t rx_frames;
    uint64_t rx_bytes;
} vx_peer_stats_t;

/* ---- sans-IO pieces (also used by the threads; exposed so tests compare them to Python) ---- */

/* Write the 8-byte header for `vni` (host order, < 2^24) into out. */
void vx_encode_header(uint8_t *out, uint32_t vni);

/* Check a received datagram: -1 when it is good (*vni set, inner frame = buf[8:len]), else the
 * vx_drop reason (VX_DROP_SHORT or VX_DROP_BAD_FLAGS). Reserved bits are ignored (RFC 7348). */
int vx_check_datagram(const uint8_t *buf, size_t len, uint32_t *vni);

/* Decide what to do with a TAP frame given one network's tables, passed as packed arrays
 * (fdb: n_fdb entries of 6-byte MAC + 4-byte IPv4 in network order; neigh: n_neigh entries of
 * 4-byte IPv4 in network order + 6-byte MAC). Returns a vx_action; for VX_ACT_SEND *peer_ip
 * (host order), for VX_ACT_ARP_REPLY out[0..42) holds the reply, for VX_ACT_DROP *drop. This
 * builds temporary tables, so it is for tests; the threads use the same logic on their tables.
 * Returns -1 with errno ENOMEM when the tables cannot be allocated. */
int vx_route_frame(const uint8_t *frame, size_t len, const uint8_t *fdb, size_t n_fdb,
                   const uint8_t *neigh, size_t n_neigh, uint32_t *peer_ip, uint8_t *out,
                   int *drop);

/* The name of a vx_drop reason ("short", "bad_flags", ...), or NULL when out of range. */
const char *vx_drop_name(int reason);

/* Finish a CHECKSUM_PARTIAL frame: the ones-complement sum of frame[csum_start:] (whose
 * checksum field holds the pseudo-header sum) goes, complemented, at csum_start+csum_offset
 * (0 sent as 0xffff). -1 when the offsets do not fit the frame. */
int vx_finish_csum(uint8_t *frame, size_t len, size_t csum_start, size_t csum_offset);

/* Cut a TCP/IPv4 TSO frame (untagged Ethernet) into segments of at most mss payload bytes,
 * written back to back into out (cap bytes): headers copied, IPv4 total length, id (+1 per
 * segment) and checksum fixed, TCP seq advanced, FIN/PSH only on the last, CWR only on the
 * first, full TCP checksum. Returns the segment count (*seg_len = length of every segment but
 * the last), or -1 when the frame is not TCP/IPv4, mss is 0 or out is too small. */
int vx_tso_segment(const uint8_t *frame, size_t len, size_t mss, uint8_t *out, size_t cap,
                   size_t *seg_len);

/* Coalesce n received frames (packed back to back, lengths in lens) as the RX path does for
 * a vnet TAP: each output item is a 10-byte virtio_net_hdr (native byte order) + frame,
 * packed into out (cap bytes), its length in out_lens. Returns the item count, or -1 with
 * errno ENOSPC (out too small) or ENOMEM. */
int vx_gro_coalesce(const uint8_t *frames, const size_t *lens, size_t n, uint8_t *out,
                    size_t cap, size_t *out_lens);

/* Seal one inner frame: out gets VX_SEAL_HLEN + len + VX_TAG_LEN bytes (returned), or -1
 * for an unknown cipher or a crypto failure. sender_ip in host order. (Tests; the threads seal
 * with per-key contexts.) */
int vx_seal(int cipher, const vx_key_t *key, uint32_t sender_ip, uint64_t counter, uint32_t vni,
            const uint8_t *frame, size_t len, uint8_t *out);

/* Open a sealed datagram (buf, len) from sender_ip with key: the inner frame into out (its
 * length returned), or -1 - the vx_drop reason (short, not_sealed, unknown_key when the key id
 * differs, bad_tag). */
int vx_open(const vx_key_t *key, uint32_t sender_ip, const uint8_t *buf, size_t len,
            uint8_t *out);

/* Run the anti-replay window over n counters as the RX path does (each one checked against
 * now_ns, and recorded when it passes): verdicts[i] = -1 (accepted) or the vx_drop reason. */
void vx_replay_run(const uint64_t *counters, size_t n, uint64_t now_ns, int *verdicts);

/* ---- the plane ---- */

/* A new, stopped plane using udp_fd (a bound IPv4 UDP socket; made non-blocking here; never
 * closed by the plane). Datagrams are sent to each peer at the socket's own port. NULL with
 * errno set on failure. */
vx_plane_t *vx_plane_new(int udp_fd);

/* Add a network: VNI (host order, < 2^24) -> tap_fd (made non-blocking; never closed by the
 * plane). -1 with errno EEXIST (VNI or fd already used), EINVAL, ENOMEM or an epoll errno. */
int vx_plane_add_network(vx_plane_t *p, uint32_t vni, int tap_fd);

/* Remove a network; when it returns, no thread uses its TAP fd any more, so the caller may
 * close it. -1 with errno ENOENT when the VNI is unknown. */
int vx_plane_remove_network(vx_plane_t *p, uint32_t vni);

/* Replace a network's FDB and neighbour table with the given sets (packed as for
 * vx_route_frame). -1 with errno ENOENT (unknown VNI) or ENOMEM; on error nothing changed. */
int vx_plane_set_peers(vx_plane_t *p, uint32_t vni, const uint8_t *fdb, size_t n_fdb,
                       const uint8_t *neigh, size_t n_neigh);

/* Make network vni encrypted (for good) with these keys: RX accepts any of them, TX seals with
 * key tx_id using cipher (VX_CIPHER_*). Keys whose id was held before keep their TX counter and
 * replay windows; with n = 0 (or an unknown tx_id) TX drops frames as no_key. -1 with errno
 * ENOENT (unknown VNI), EINVAL (cipher, or a socket bound to no address), ENOMEM or EIO (the
 * crypto library refused a key). */
int vx_plane_set_keys(vx_plane_t *p, uint32_t vni, const vx_key_t *keys, size_t n,
                      uint32_t tx_id, int cipher);

/* Burst priority: while a thread moves a bulk stream (wake-ups of 48 KB or 64 frames or more;
 * on RX only frames from known peers that passed every check and were written to a TAP
 * count, so junk from anywhere never raises it) it runs SCHED_FIFO at prio (1..99), as the
 * kernel's VXLAN runs in softirq ahead of every task;
 * 20 ms without one returns it to SCHED_OTHER, and request/response traffic never raises it.
 * 0 (the default) turns it off; a thread refused SCHED_FIFO (no CAP_SYS_NICE) turns it off for
 * the plane. May be changed while the plane runs (a raised thread drops back within 20 ms of
 * its next wake-up). */
void vx_plane_set_burst_priority(vx_plane_t *p, int prio);

/* Whether the plane may write runs of equal-sized UDP datagrams into vnet TAPs as one UDP GSO
 * (USO) super-frame: 1 (the default) tries it and turns it off for good when the TAP refuses
 * (a kernel before 6.2), 0 writes one datagram per write from the start. Set it before start. */
void vx_plane_set_tap_uso(vx_plane_t *p, int on);

/* TEST HOOK (tests and bench/overlay.py's runner only): after `after` more USO super-frames
 * written to TAPs, the next one fails as a kernel before 6.2 fails it (writev -> EINVAL,
 * nothing written), which exercises the one-datagram-per-write fallback on kernels that take
 * USO. -1 (the default) never. Set it before start. */
void vx_plane_test_refuse_uso(vx_plane_t *p, long after);

/* Start the TX and RX threads. -1 with errno EALREADY when started, or pthread's error. */
int vx_plane_start(vx_plane_t *p);

/* Wake both threads and join them; idempotent. The plane may be started again. */
void vx_plane_stop(vx_plane_t *p);

/* Stop, then free everything the plane made (epoll fd, eventfd, tables, buffers). */
void vx_plane_free(vx_plane_t *p);

/* Number of peers (for sizing the vx_plane_read_stats output). */
size_t vx_plane_peer_count(vx_plane_t *p);

/* Copy up to cap peers' counters into out and VX_DROP_COUNT drop counters into drops; also
 * the number of ARP replies the proxy wrote into *arp_replies. Returns the peers copied. */
size_t vx_plane_read_stats(vx_plane_t *p, vx_peer_stats_t *out, size_t cap, uint64_t *drops,
                           uint64_t *arp_replies);

/* Offload counters, VX_OFFLOAD_COUNT of them into out, in this order: TSO super-frames read
 * from TAPs, UDP_SEGMENT datagram trains sent (TSO segments or joined small frames),
 * received datagram buffers that held more than one datagram (UDP GRO), GSO super-frames
 * (TCP or UDP) written to TAPs, whether UDP_SEGMENT and UDP_GRO
 * are in use (1/0), the burst priority in effect (0: off, or refused by the system), how
 * many times a thread took it, and whether USO super-frames into TAPs are in use (1/0). */
#define VX_OFFLOAD_COUNT 9
void vx_plane_offload_stats(vx_plane_t *p, uint64_t *out);

#endif /* MESHKIT_VXLAN_H */
