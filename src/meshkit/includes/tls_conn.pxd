# Declarations of the TLS connection's C API (tls_conn.h) and the OpenSSL calls _tls.pxi
# makes itself (the SNI and ClientHello callbacks); the Python face is in _tls.pxi.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "openssl/ssl.h" nogil:
    ctypedef struct SSL:
        pass
    ctypedef struct SSL_CTX:
        pass
    ctypedef struct SSL_METHOD:
        pass

    enum:
        TLSEXT_NAMETYPE_host_name
        SSL_TLSEXT_ERR_OK
        SSL_TLSEXT_ERR_ALERT_FATAL
        SSL_CLIENT_HELLO_SUCCESS
        SSL_CLIENT_HELLO_RETRY
        SSL_CLIENT_HELLO_ERROR
        TLSEXT_TYPE_server_name

    ctypedef int (*mk_servername_cb)(SSL *s, int *al, void *arg)
    ctypedef int (*mk_client_hello_cb)(SSL *s, int *al, void *arg)

    const char *SSL_get_servername(const SSL *s, int type)
    SSL_CTX *SSL_set_SSL_CTX(SSL *ssl, SSL_CTX *ctx)
    SSL_CTX *SSL_get_SSL_CTX(const SSL *ssl)
    void *SSL_get_ex_data(const SSL *ssl, int idx)
    void SSL_CTX_set_client_hello_cb(SSL_CTX *c, mk_client_hello_cb cb, void *arg)
    long SSL_CTX_set_tlsext_servername_callback(SSL_CTX *ctx, mk_servername_cb cb)
    long SSL_CTX_set_tlsext_servername_arg(SSL_CTX *ctx, void *arg)
    int SSL_client_hello_get0_ext(SSL *s, unsigned int type, const unsigned char **out,
                                  size_t *outlen)
    unsigned long SSL_CTX_get_options(const SSL_CTX *ctx)
    const SSL_METHOD *SSL_CTX_get_ssl_method(const SSL_CTX *ctx)
    const SSL_METHOD *TLS_server_method()
    unsigned long OpenSSL_version_num()
    void SSL_get0_alpn_selected(const SSL *ssl, const unsigned char **data, unsigned int *len)
    const char *SSL_get_version(const SSL *ssl)
    int SSL_session_reused(const SSL *ssl)


cdef extern from "tls_conn.h" nogil:
    enum:
        MKT_READY
        MKT_WCLOSED
        MKT_PLAIN_HTTP
        MKT_EOF
        MKT_SHUT_AFTER
        MKT_HS_DONE
        MKT_HS_WANT
        MKT_HS_HELLO_WAIT
        MKT_HS_FAILED
        MKT_HS_PLAIN
        MKT_HS_EOF
        MKT_HS_SOCKET
        MKT_RD_OK
        MKT_RD_EOF
        MKT_RD_FAILED
        MKT_RD_SOCKET

    ctypedef struct mk_tls:
        SSL *ssl
        int fd
        int flags
        int err

    int mk_tls_global_init()
    int mk_tls_ex_index()
    mk_tls *mk_tls_new(SSL_CTX *ctx, int fd, void *owner)
    void mk_tls_free(mk_tls *t)
    int mk_tls_handshake(mk_tls *t)
    size_t mk_tls_read(mk_tls *t, char *buf, size_t cap, int *status)
    int mk_tls_write(mk_tls *t, const char *buf, size_t len, size_t *taken, int *state)
    int mk_tls_write_file(mk_tls *t, const char *head, size_t head_len, int file_fd,
                          int64_t offset, uint64_t length, uint64_t *sent, int *state)
    int mk_tls_flush(mk_tls *t)
    size_t mk_tls_pending(const mk_tls *t)
    void mk_tls_close_notify(mk_tls *t)
    ssize_t mk_tls_stash(mk_tls *t)
    void mk_tls_error_text(char *buf, size_t cap)
