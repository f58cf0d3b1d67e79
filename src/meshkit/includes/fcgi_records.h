/* The FastCGI record layer's hot path in C: a whole small reply (STDOUT records then
 * END_REQUEST, request 1) scanned in one pass, the CGI response head parsed, and a
 * RESPONDER request encoded into one buffer. The Python face is _fcgi.pxi; the pure-Python
 * twin is meshkit.web.fastcgi.records / response (selected by meshkit.web.fastcgi.fast).
 *
 * Every function here only takes the common, unambiguous shapes and "declines" (returns
 * -1) on anything else, which the Python layer then handles (and reports) as before. */
#ifndef MESHKIT_FCGI_RECORDS_H
#define MESHKIT_FCGI_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#define FCGI_MAX_HEAD 65536
#define FCGI_MAX_FIELDS 64

typedef struct {
    uint32_t name_off, name_len, value_off, value_len;
} fcgi_field;

typedef struct {
    int status;
    long long content_length; /* -1: none declared */
    size_t body_start;
    int nfields;
    fcgi_field fields[FCGI_MAX_FIELDS];
} fcgi_head;

/* A reply to request 1 that buf holds whole and alone: STDOUT records (empty ones too),
 * then an END_REQUEST ending buf. Returns the STDOUT byte count (the contents are copied
 * with fcgi_copy_stdout) and sets *app / *proto, or -1 for any other shape. */
long fcgi_scan_whole(const unsigned char *buf, size_t len, uint32_t *app, uint8_t *proto);

/* The STDOUT contents of a reply fcgi_scan_whole accepted, concatenated into out. */
void fcgi_copy_stdout(const unsigned char *buf, size_t len, unsigned char *out);

/* The CGI head at the start of buf (meshkit.web.fastcgi.response.parse_head's rules):
 * 0 with *head filled, or -1 (incomplete, invalid or unusual: let Python decide). */
int fcgi_parse_head(const unsigned char *buf, size_t len, fcgi_head *head);

/* Bytes fcgi_encode_request writes for these lengths (stdin_len < 0: no STDIN stream). */
size_t fcgi_request_size(size_t params_len, long long stdin_len);

/* BEGIN_REQUEST (RESPONDER), the PARAMS stream and, unless stdin_len < 0, the STDIN
 * stream, records cut at 65535 bytes and padded to 8: meshkit.web.fastcgi.records.
 * encode_request's exact bytes. Returns the bytes written (fcgi_request_size). */
size_t fcgi_encode_request(unsigned char *out, unsigned request_id, int keep_conn,
                           const unsigned char *params, size_t params_len,
                           const unsigned char *stdin_buf, long long stdin_len);

/* The STDIN stream of a body of n bytes (records cut at 65535, padded to 8, then the empty
 * record): the bytes fcgi_put_stdin writes, and the writer. A request whose BEGIN_REQUEST
 * and PARAMS are encoded once (fcgi_encode_request with stdin_len -1) gets its body so. */
size_t fcgi_stdin_size(size_t stdin_len);
size_t fcgi_put_stdin(unsigned char *out, unsigned request_id, const unsigned char *data,
                      size_t n);

/* Length prefix of a name or value in a PARAMS pair: 1 or 4 bytes written to out. */
size_t fcgi_put_length(unsigned char *out, uint32_t n);

#endif
