"""cffi builder (API mode, out of line) for the userspace VXLAN data plane `meshkit._vxlan_ffi`.

setup.py hands `ffibuilder` to cffi through ``cffi_modules`` (skipped with
MESHKIT_NO_EXTENSIONS=1); ``python setup.py build_ext --inplace`` puts the module beside the
sources. Paths are relative to the project root, where setup.py runs.
"""

from __future__ import annotations

import os

from cffi import FFI  # type: ignore[import-untyped]

_PKG = os.path.join("src", "meshkit")

CDEF = """
#define VX_HEADER_LEN 8
#define VX_ARP_FRAME_LEN 42
#define VX_DROP_COUNT 13
#define VX_VNET_HDR_LEN 10
#define VX_GRO_MAX_SEGS 64
#define VX_OFFLOAD_COUNT 6

typedef struct vx_plane vx_plane_t;
typedef struct {
    uint32_t ip;
    uint64_t tx_frames;
    uint64_t tx_bytes;
    uint64_t rx_frames;
    uint64_t rx_bytes;
} vx_peer_stats_t;

void vx_encode_header(uint8_t *out, uint32_t vni);
int vx_check_datagram(const uint8_t *buf, size_t len, uint32_t *vni);
int vx_route_frame(const uint8_t *frame, size_t len, const uint8_t *fdb, size_t n_fdb,
                   const uint8_t *neigh, size_t n_neigh, uint32_t *peer_ip, uint8_t *out,
                   int *drop);
const char *vx_drop_name(int reason);
int vx_finish_csum(uint8_t *frame, size_t len, size_t csum_start, size_t csum_offset);
int vx_tso_segment(const uint8_t *frame, size_t len, size_t mss, uint8_t *out, size_t cap,
                   size_t *seg_len);
int vx_gro_coalesce(const uint8_t *frames, const size_t *lens, size_t n, uint8_t *out,
                    size_t cap, size_t *out_lens);

vx_plane_t *vx_plane_new(int udp_fd);
int vx_plane_add_network(vx_plane_t *p, uint32_t vni, int tap_fd);
int vx_plane_remove_network(vx_plane_t *p, uint32_t vni);
int vx_plane_set_peers(vx_plane_t *p, uint32_t vni, const uint8_t *fdb, size_t n_fdb,
                       const uint8_t *neigh, size_t n_neigh);
int vx_plane_start(vx_plane_t *p);
void vx_plane_stop(vx_plane_t *p);
void vx_plane_free(vx_plane_t *p);
size_t vx_plane_peer_count(vx_plane_t *p);
size_t vx_plane_read_stats(vx_plane_t *p, vx_peer_stats_t *out, size_t cap, uint64_t *drops,
                           uint64_t *arp_replies);
void vx_plane_offload_stats(vx_plane_t *p, uint64_t *out);
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source(
    "meshkit._vxlan_ffi",
    '#include "vxlan.h"',
    sources=[os.path.join(_PKG, "_vxlan.c")],
    include_dirs=[os.path.join(_PKG, "includes")],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Wno-unused-parameter"],
    libraries=["pthread"],
)
