/* sendfile.c - the HTTP server's send path: buffers with send(2), files with sendfile(2)
 * (API in includes/sendfile.h; pure-Python twin in meshkit/web/sendfile.py).
 *
 * Every errno path: EINTR retries the call, a short write continues with the rest, EAGAIN
 * stops with SEND_AGAIN (the caller waits for writability), sendfile returning 0 before the
 * requested length stops with SEND_TRUNCATED (the file shrank under us), anything else is
 * returned as -errno with *sent telling how much went out before it.
 */
#define _GNU_SOURCE
#include "sendfile.h"

#include <errno.h>
#include <sys/sendfile.h>
#include <sys/socket.h>

/* sendfile(2) moves at most this much per call on Linux. */
#define SENDFILE_MAX_CHUNK 0x7ffff000UL

static int write_buffer(int sock_fd, const char *buf, size_t len, int flags, size_t *sent,
                        int *state)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = send(sock_fd, buf + done, len - done, flags | MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *sent = done;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *state = SEND_AGAIN;
                return 0;
            }
            return -errno;
        }
        done += (size_t)n;
    }
    *sent = done;
    *state = SEND_DONE;
    return 0;
}

int send_bytes(int sock_fd, const char *buf, size_t len, size_t *sent, int *state)
{
    return write_buffer(sock_fd, buf, len, 0, sent, state);
}

int send_head_and_file(int sock_fd, const char *head, size_t head_len, int file_fd,
                       int64_t offset, uint64_t length, uint64_t *sent, int *state)
{
    size_t head_sent = 0;
    uint64_t done = 0;
    off_t off = (off_t)offset;
    int rc;

    *sent = 0;
    if (head_len) {
        rc = write_buffer(sock_fd, head, head_len, length ? MSG_MORE : 0, &head_sent, state);
        *sent = head_sent;
        if (rc < 0 || *state != SEND_DONE)
            return rc;
    }
    while (done < length) {
        uint64_t want = length - done;
        ssize_t n;
        if (want > SENDFILE_MAX_CHUNK)
            want = SENDFILE_MAX_CHUNK;
        n = sendfile(sock_fd, file_fd, &off, (size_t)want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *sent = head_sent + done;
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                *state = SEND_AGAIN;
                return 0;
            }
            return -errno;
        }
        if (n == 0) {
            *sent = head_sent + done;
            *state = SEND_TRUNCATED;
            return 0;
        }
        done += (uint64_t)n;
    }
    *sent = head_sent + done;
    *state = SEND_DONE;
    return 0;
}
