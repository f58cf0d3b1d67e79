/* tls_conn.h - C API of the server side of one TLS connection (meshkit web, HTTPS).
 *
 * An OpenSSL SSL object on a non-blocking socket, through a BIO of our own:
 * - reads go straight from the socket into OpenSSL (read-ahead: one recv() per batch of
 *   records), and the very first bytes of a connection are checked for plain HTTP (what a
 *   browser sends to an https URL typed as http), which ends the handshake at once;
 * - writes never block and never fail with "want write": ciphertext the socket does not take
 *   waits in the connection's pending buffer, small records are gathered there and sent
 *   with one send() at the end of the operation (a small response, a handshake flight);
 *   records of 8 KiB and more go to the socket directly when nothing is pending (no copy).
 * Callers bound the pending buffer by stopping (SEND_AGAIN) when it is not empty after an
 * operation, and waiting for writability.
 *
 * The SSL_CTX (certificates, versions, ciphers, curves, ALPN, client certificates, session
 * tickets) is the one of a Python ssl.SSLContext: the Python side builds it; the SNI and
 * ClientHello callbacks are set by _tls.pxi. The pure-Python twin is meshkit/web/tlssock.py.
 */
#ifndef MESHKIT_TLS_CONN_H
#define MESHKIT_TLS_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

/* mk_tls.flags */
enum {
    MKT_READY = 1,      /* the handshake is done */
    MKT_WCLOSED = 2,    /* close_notify sent (or the write side shut) */
    MKT_PLAIN_HTTP = 4, /* the first bytes were a plain HTTP request */
    MKT_EOF = 8,        /* the socket read returned 0 */
    MKT_SHUT_AFTER = 16, /* the answer being written is the last: its close_notify goes
                          * out in the same send (mk_tls_write) */
};

/* What mk_tls_handshake returns. */
enum {
    MKT_HS_DONE = 1,
    MKT_HS_WANT = 0,       /* more bytes from the client are needed */
    MKT_HS_HELLO_WAIT = 2, /* the ClientHello callback asked to wait (on-demand TLS) */
    MKT_HS_FAILED = -1,    /* a TLS error (an alert may be pending: flush it) */
    MKT_HS_PLAIN = -2,     /* plain HTTP: answer with the hint and close */
    MKT_HS_EOF = -3,       /* the client closed */
    MKT_HS_SOCKET = -4,    /* a socket error (mk_tls.err) */
};

/* What mk_tls_read reports besides the byte count. */
enum {
    MKT_RD_OK = 0,     /* bytes (maybe none yet: want more) */
    MKT_RD_EOF = 1,    /* close_notify or the socket's EOF */
    MKT_RD_FAILED = 2, /* a TLS error */
    MKT_RD_SOCKET = 3, /* a socket error (mk_tls.err) */
};

typedef struct mk_tls {
    SSL *ssl;
    int fd;    /* -1 once closed */
    int flags; /* MKT_* */
    int err;   /* errno of a socket error met inside the BIO */
    uint64_t nread;
    char *pend; /* ciphertext not sent yet: pend[pend_off, pend_len) */
    size_t pend_off, pend_len, pend_cap;
    char *pre; /* raw bytes read while the handshake waited: pre[pre_off, pre_len) */
    size_t pre_off, pre_len, pre_cap;
} mk_tls;

/* Once per process: the BIO method and the SSL ex_data index. 0, or -1 on failure. */
int mk_tls_global_init(void);
int mk_tls_ex_index(void);

/* A connection on fd with ctx (SSL_new takes a reference); owner goes into the SSL's ex_data
 * (the callbacks find the Python object there). NULL when out of memory. */
mk_tls *mk_tls_new(SSL_CTX *ctx, int fd, void *owner);
void mk_tls_free(mk_tls *t);

int mk_tls_handshake(mk_tls *t);

/* Plaintext into buf[0, cap): the byte count (0: none yet); *status is MKT_RD_*. Reads
 * records as long as OpenSSL has buffered input, so one call takes a whole batch. */
size_t mk_tls_read(mk_tls *t, char *buf, size_t cap, int *status);

/* Encrypts buf[0, len) (after sending what was pending: if that cannot go, nothing is taken).
 * *taken: plaintext bytes encrypted; *state: 0 done, 1 again (ciphertext is pending: wait
 * for writability). Returns 0, -errno on a socket error, or -EPROTO on a TLS error. */
int mk_tls_write(mk_tls *t, const char *buf, size_t len, size_t *taken, int *state);

/* Encrypts head then file_fd's [offset, offset + length), the head and the first file bytes
 * in the same records (a small response is one record, one send). *sent counts head and file
 * bytes taken; *state 0 done, 1 again, 2 truncated (the file ended early). */
int mk_tls_write_file(mk_tls *t, const char *head, size_t head_len, int file_fd, int64_t offset,
                      uint64_t length, uint64_t *sent, int *state);

/* Sends pending ciphertext: 1 all gone, 0 some left (EAGAIN), -errno on a socket error. */
int mk_tls_flush(mk_tls *t);
size_t mk_tls_pending(const mk_tls *t);

/* close_notify (when the handshake is done) and a flush; errors are ignored. */
void mk_tls_close_notify(mk_tls *t);

/* While the ClientHello callback waits: read what the client sends into the buffer OpenSSL
 * will read first. >0 bytes read, 0 EOF, -EAGAIN, or -errno. */
ssize_t mk_tls_stash(mk_tls *t);

/* The last OpenSSL error as text (the queue is then cleared): buf of cap bytes. */
void mk_tls_error_text(char *buf, size_t cap);

#endif /* MESHKIT_TLS_CONN_H */
