/* The proxy's upstream response path in C: a plain HTTP/1.1 response head parsed into
 * offsets (status, fields, framing, keep-alive, hop-by-hop marks) and a chunked body decoded
 * incrementally. The Python face is _upstream.pxi (UpstreamConn); the pure-Python twin is
 * meshkit.web.proxy.client._Conn over httptools.
 *
 * up_parse_head only takes the common, unambiguous shapes and "declines" (returns
 * UP_DECLINE) on anything else: the connection then gives the whole response to httptools,
 * exactly as the twin does, so an odd head is judged by one parser only. */
#ifndef MESHKIT_UPSTREAM_RESP_H
#define MESHKIT_UPSTREAM_RESP_H

#include <stddef.h>
#include <stdint.h>

#define UP_MAX_HEAD (64 * 1024) /* meshkit.web.proxy.client.MAX_HEAD */
#define UP_MAX_FIELDS 256       /* meshkit.web.proxy.client.MAX_FIELDS */

#define UP_OK 0
#define UP_DECLINE (-1)

/* framing of the body that follows a head */
#define UP_BODY_NONE 0    /* bodiless: 204, 304, 1xx, or the answer to HEAD */
#define UP_BODY_LENGTH 1  /* Content-Length bytes */
#define UP_BODY_CHUNKED 2 /* Transfer-Encoding: chunked */
#define UP_BODY_CLOSE 3   /* until the upstream closes (no length, no chunking) */

/* field flags */
#define UP_F_HOP 1 /* hop-by-hop (RFC 9110 7.6.1): never passed to the client */

typedef struct {
    uint32_t name_off, name_len, value_off, value_len;
    uint32_t flags;
} up_field;

typedef struct {
    int status;
    int framing;              /* UP_BODY_* */
    int keep;                 /* the connection may carry another request afterwards */
    int interim;              /* 1xx other than 101: skip it, the real answer follows */
    int conn_tokens;          /* the Connection field names other fields (hop-by-hop too) */
    long long content_length; /* -1: none */
    int nfields;
    up_field fields[UP_MAX_FIELDS];
} up_head;

/* The head in buf[0:len] (status line and fields, without the blank line ending it).
 * head_only: it answers a HEAD request (no body whatever it says). */
int up_parse_head(const unsigned char *buf, size_t len, int head_only, up_head *out);

/* Marks the fields a Connection field names (they are hop-by-hop too). */
void up_mark_connection_tokens(const unsigned char *buf, up_head *h);

/* Incremental chunked decoder. */
typedef struct {
    int state;          /* internal */
    uint64_t left;      /* data bytes left in the current chunk */
    int digits;         /* hex digits of the current size line */
    uint32_t trailer;   /* bytes of trailer section so far */
} up_chunked;

#define UP_CHUNK_MORE 0  /* needs more input */
#define UP_CHUNK_DONE 1  /* the last chunk and the trailers are in */
#define UP_CHUNK_ERROR (-1)

/* Decode in[0:len] into out (at least len bytes); *used gets the input bytes consumed
 * (all of them unless DONE, when the rest follows the message), *produced the body bytes. */
int up_dechunk(up_chunked *st, const unsigned char *in, size_t len, unsigned char *out,
               size_t *used, size_t *produced);

#endif
