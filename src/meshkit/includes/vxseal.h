/* vxseal.h - the sealing half of the userspace VXLAN plane, internal to _vxlan.c and
 * csrc/vxlan/seal.c (the public API and the wire format are in vxlan.h).
 *
 * A network made encrypted holds a struct vx_netkeys: its keys, each with one AEAD context
 * for sealing (used by the TX thread only) and one per cipher for opening (RX thread only),
 * the TX counter (TX only) and one replay window per peer (RX only, indexed like the plane's
 * peers). The threads use it under the plane's read lock; vx_plane_set_keys swaps it whole
 * under the write lock, carrying counters and windows over for key ids it keeps.
 */
#ifndef MESHKIT_VXSEAL_H
#define MESHKIT_VXSEAL_H

#include "vxlan.h"

#ifdef VX_SEAL_GCRYPT
#include <gcrypt.h>
typedef gcry_cipher_hd_t vx_aead_t; /* one keyed AEAD */
#else
#include <openssl/evp.h>
typedef EVP_CIPHER_CTX *vx_aead_t;
#endif
#include <sys/uio.h>

struct vx_replay {
    uint64_t top; /* highest counter accepted */
    uint64_t bits[VX_REPLAY_WORDS];
    int seen;
};

struct vx_keyslot {
    vx_key_t key;
    vx_aead_t enc;    /* the network's TX cipher, keyed */
    vx_aead_t dec[2]; /* AES-256-GCM, ChaCha20-Poly1305, keyed */
    uint64_t tx_counter;
    struct vx_replay *win; /* n_win windows, one per peer index */
    size_t n_win;
};

struct vx_netkeys {
    int cipher;
    long tx; /* index of the TX key in slot[], -1: none */
    size_t n;
    struct vx_keyslot slot[];
};

/* A new key set for n_peers peers, taking counters and windows from old for ids it holds.
 * NULL with errno set (ENOMEM, EINVAL, EIO). */
struct vx_netkeys *vx_netkeys_new(const vx_key_t *keys, size_t n, uint32_t tx_id, int cipher,
                                  const struct vx_netkeys *old, size_t n_peers);
void vx_netkeys_free(struct vx_netkeys *k);
/* Grow every key's windows to n_peers (new ones empty). -1 on ENOMEM (nothing lost). */
int vx_netkeys_fit(struct vx_netkeys *k, size_t n_peers);

/* Seal in place: hdr points at VX_SEAL_HLEN bytes whose first 8 hold the VXLAN header (byte
 * 3 is set here) and the rest are written here; the n pieces of plaintext are encrypted in
 * place; the tag goes to tag. -1 with *drop set (no_key) or on a crypto failure (send_error). */
int vx_seal_iov(struct vx_netkeys *k, uint32_t self_ip, uint8_t *hdr, struct iovec *pieces,
                int n, uint8_t *tag, int *drop);

/* Open a received sealed datagram in place (plaintext at buf + VX_SEAL_HLEN, length
 * len - VX_SEAL_HLEN - VX_TAG_LEN): -1 when good, else the vx_drop reason. peer < n_win. */
int vx_open_in_place(struct vx_netkeys *k, long peer, uint32_t sender_ip, uint8_t *buf,
                     size_t len, uint64_t now_ns);

int vx_replay_check(const struct vx_replay *r, uint64_t ctr, uint64_t now_ns);
/* CLOCK_REALTIME in nanoseconds (what counters are compared with). */
uint64_t vx_now_ns(void);
void vx_replay_update(struct vx_replay *r, uint64_t ctr);

#endif /* MESHKIT_VXSEAL_H */
