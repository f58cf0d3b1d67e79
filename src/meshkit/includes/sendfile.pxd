# Declarations of the HTTP send path's C API (sendfile.h); the Python functions are in
# _sendfile.pxi.
from libc.stdint cimport int64_t, uint64_t


cdef extern from "sendfile.h" nogil:
    enum send_state:
        SEND_DONE
        SEND_AGAIN
        SEND_TRUNCATED

    int send_bytes(int sock_fd, const char *buf, size_t len, size_t *sent, int *state)
    int send_head_and_file(int sock_fd, const char *head, size_t head_len, int file_fd,
                           int64_t offset, uint64_t length, uint64_t *sent, int *state)
