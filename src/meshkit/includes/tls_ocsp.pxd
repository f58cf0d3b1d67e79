# Declarations of OCSP stapling's C API (tls_ocsp.h); the Python face is in _ocsp.pxi.
from libc.stdint cimport int64_t, uint64_t
from meshkit.includes.tls_conn cimport SSL_CTX


cdef extern from "tls_ocsp.h" nogil:
    ctypedef struct mk_ocsp_counts:
        uint64_t stapled
        uint64_t none
        uint64_t refused

    int mk_ocsp_global_init()
    int mk_ocsp_set(SSL_CTX *ctx, const unsigned char *der, size_t len, int64_t not_after,
                    int must)
    void mk_ocsp_counts_of(SSL_CTX *ctx, mk_ocsp_counts *out)
