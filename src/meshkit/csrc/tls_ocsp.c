/* tls_ocsp.c - OCSP stapling on an SSL_CTX (see tls_ocsp.h). */
#define _GNU_SOURCE
#include "tls_ocsp.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/tls1.h>

typedef struct {
    pthread_mutex_t lock;
    unsigned char *der; /* NULL: no response */
    size_t len;
    int64_t not_after; /* the response's nextUpdate: never stapled after it (0: no end) */
    int must;
    mk_ocsp_counts counts;
} mk_staple;

static int ex_index = -1;

static void staple_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                        void *argp)
{
    mk_staple *st = ptr;
    if (st == NULL)
        return;
    pthread_mutex_destroy(&st->lock);
    free(st->der);
    free(st);
}

int mk_ocsp_global_init(void)
{
    if (ex_index >= 0)
        return 0;
    ex_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, staple_free);
    return ex_index < 0 ? -1 : 0;
}

/* Called by OpenSSL once the certificate is chosen (after the SNI callback switched the
 * connection to its certificate's context), for a client that sent status_request. */
static int status_cb(SSL *s, void *arg)
{
    SSL_CTX *ctx = SSL_get_SSL_CTX(s);
    mk_staple *st = ctx ? SSL_CTX_get_ex_data(ctx, ex_index) : NULL;
    if (st == NULL)
        return SSL_TLSEXT_ERR_NOACK;
    unsigned char *copy = NULL;
    size_t len = 0;
    int must;
    pthread_mutex_lock(&st->lock);
    must = st->must;
    if (st->der != NULL && (st->not_after == 0 || (int64_t)time(NULL) < st->not_after)) {
        copy = OPENSSL_malloc(st->len); /* OpenSSL frees it with the connection */
        if (copy != NULL) {
            memcpy(copy, st->der, st->len);
            len = st->len;
        }
    }
    if (copy != NULL)
        st->counts.stapled++;
    else if (must)
        st->counts.refused++;
    else
        st->counts.none++;
    pthread_mutex_unlock(&st->lock);
    if (copy == NULL)
        /* must-staple: the client would refuse the certificate without the response */
        return must ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
    if (!SSL_set_tlsext_status_ocsp_resp(s, copy, (long)len)) {
        OPENSSL_free(copy);
        return must ? SSL_TLSEXT_ERR_ALERT_FATAL : SSL_TLSEXT_ERR_NOACK;
    }
    return SSL_TLSEXT_ERR_OK;
}

static mk_staple *staple_of(SSL_CTX *ctx, int create)
{
    mk_staple *st = SSL_CTX_get_ex_data(ctx, ex_index);
    if (st != NULL || !create)
        return st;
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        return NULL;
    pthread_mutex_init(&st->lock, NULL);
    if (!SSL_CTX_set_ex_data(ctx, ex_index, st)) {
        pthread_mutex_destroy(&st->lock);
        free(st);
        return NULL;
    }
    SSL_CTX_set_tlsext_status_cb(ctx, status_cb);
    return st;
}

int mk_ocsp_set(SSL_CTX *ctx, const unsigned char *der, size_t len, int64_t not_after, int must)
{
    if (ex_index < 0 && mk_ocsp_global_init() < 0)
        return -1;
    mk_staple *st = staple_of(ctx, 1);
    if (st == NULL)
        return -1;
    unsigned char *copy = NULL;
    if (len > 0) {
        copy = malloc(len);
        if (copy == NULL)
            return -1;
        memcpy(copy, der, len);
    }
    pthread_mutex_lock(&st->lock);
    unsigned char *old = st->der;
    st->der = copy;
    st->len = len;
    st->not_after = not_after;
    st->must = must;
    pthread_mutex_unlock(&st->lock);
    free(old);
    return 0;
}

void mk_ocsp_counts_of(SSL_CTX *ctx, mk_ocsp_counts *out)
{
    memset(out, 0, sizeof(*out));
    mk_staple *st = ex_index >= 0 ? SSL_CTX_get_ex_data(ctx, ex_index) : NULL;
    if (st == NULL)
        return;
    pthread_mutex_lock(&st->lock);
    *out = st->counts;
    pthread_mutex_unlock(&st->lock);
}
