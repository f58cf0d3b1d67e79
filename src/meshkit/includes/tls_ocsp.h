/* tls_ocsp.h - OCSP stapling (RFC 6066 status_request) on an OpenSSL SSL_CTX.
 *
 * Python's ssl module has no server-side stapling; this keeps one DER OCSP response per
 * SSL_CTX (in the context's ex_data, freed with it) and installs a status callback that
 * hands a copy to each handshake that asks for it. The response is set and replaced from
 * Python (meshkit.web.staple) while handshakes run in other threads: a mutex guards it,
 * and the callback never needs the GIL. */
#ifndef MESHKIT_TLS_OCSP_H
#define MESHKIT_TLS_OCSP_H

#include <stddef.h>
#include <stdint.h>
#include <openssl/ssl.h>

/* What the callback did, counted per context (tests and `meshkit web` debugging). */
typedef struct {
    uint64_t stapled;   /* handshakes that got the response */
    uint64_t none;      /* handshakes that asked while there was no usable response */
    uint64_t refused;   /* must-staple handshakes ended with an alert (no usable response) */
} mk_ocsp_counts;

int mk_ocsp_global_init(void);

/* Staple `der` (len bytes, copied) on ctx until `not_after` (unix seconds; 0 = no end);
 * len 0 drops the response. `must`: a handshake that asks for the status while there is no
 * usable response ends with an alert instead of going on without (RFC 7633 must-staple).
 * Returns 0, or -1 when out of memory. */
int mk_ocsp_set(SSL_CTX *ctx, const unsigned char *der, size_t len, int64_t not_after, int must);

/* The counters of ctx (all zero when nothing was ever set on it). */
void mk_ocsp_counts_of(SSL_CTX *ctx, mk_ocsp_counts *out);

#endif
