/* sendfile.h - C API of the HTTP server's send path (meshkit web).
 *
 * Two helpers that write a response to a non-blocking socket without blocking and without
 * copying file bytes through user space: send_bytes() for a buffer and send_head_and_file()
 * for a response head followed by a file range (send with MSG_MORE, then sendfile(2)).
 * Both retry EINTR, continue after short writes, and stop at EAGAIN, telling the caller how
 * far they got so that it waits for writability and calls again with the rest.
 *
 * The pure-Python twin with identical behaviour is meshkit/web/sendfile.py.
 */
#ifndef MESHKIT_SENDFILE_H
#define MESHKIT_SENDFILE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* How a send call ended. */
enum send_state {
    SEND_DONE = 0,      /* everything asked for was sent */
    SEND_AGAIN = 1,     /* the socket buffer is full (EAGAIN): wait for writability */
    SEND_TRUNCATED = 2, /* the file ended before offset + length: close the connection */
};

/* Sends buf[0:len) to sock_fd (MSG_NOSIGNAL). Returns 0 or -errno (EAGAIN and EINTR are
 * never returned: they become *state); *sent holds the bytes written either way. */
int send_bytes(int sock_fd, const char *buf, size_t len, size_t *sent, int *state);

/* Sends head[0:head_len) (with MSG_MORE when file bytes follow), then file_fd's bytes
 * [offset, offset + length) with sendfile(2). *sent counts head and file bytes written.
 * Returns 0 or -errno for a socket or file error; *state is SEND_DONE, SEND_AGAIN or
 * SEND_TRUNCATED (sendfile returned 0 before length bytes: the file is shorter now). */
int send_head_and_file(int sock_fd, const char *head, size_t head_len, int file_fd,
                       int64_t offset, uint64_t length, uint64_t *sent, int *state);

#endif /* MESHKIT_SENDFILE_H */
