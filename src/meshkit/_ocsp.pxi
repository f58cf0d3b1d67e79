# OCSP stapling, Python face (C core in csrc/tls_ocsp.c, declarations in
# includes/tls_ocsp.pxd; used by meshkit.web.staple). Included by _fastpath.pyx after
# _tls.pxi, whose _tl_check() finds (and checks) the SSL_CTX inside an ssl.SSLContext.
# There is no pure-Python twin: Python's ssl module cannot staple, so without this module
# (MESHKIT_NO_EXTENSIONS=1) meshkit serves no staples and refuses `must_staple`.
from meshkit.includes cimport tls_ocsp as cocsp

if cocsp.mk_ocsp_global_init() < 0:
    raise ImportError("OpenSSL: cannot make the OCSP stapling slot of SSL_CTX")


def ocsp_staple(ctx, bytes der not None, double not_after=0.0, bint must=False):
    """Staple `der` (a DER OCSP response; b"" drops it) in every handshake on the context
    `ctx` (an ssl.SSLContext) whose client asks for the certificate status, until the unix
    time `not_after` (its nextUpdate; 0: no end). `must`: such a handshake without a usable
    response ends with an alert (a must-staple certificate is only served with a staple).
    Safe from any thread."""
    cdef ctls.SSL_CTX *p = _tl_check(ctx)
    cdef const unsigned char *data = <const unsigned char *>PyBytes_AS_STRING(der)
    cdef size_t n = <size_t>PyBytes_GET_SIZE(der)
    cdef int64_t end = <int64_t>not_after
    cdef int rc
    with nogil:
        rc = cocsp.mk_ocsp_set(p, data, n, end, must)
    if rc < 0:
        raise MemoryError("cannot keep the OCSP response")


def ocsp_counts(ctx):
    """(stapled, none, refused): handshakes on `ctx` that asked for the status and got the
    response, got none, or were refused (must-staple without a response)."""
    cdef ctls.SSL_CTX *p = _tl_check(ctx)
    cdef cocsp.mk_ocsp_counts c
    cocsp.mk_ocsp_counts_of(p, &c)
    return (c.stapled, c.none, c.refused)
