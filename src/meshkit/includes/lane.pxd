# Declarations of the client-side lane's C helpers (lane.h); the Python face is _lane.pxi.
from libc.stdint cimport int64_t, uint64_t



cdef extern from "lane.h" nogil:
    ssize_t lane_recv(int fd, char *buf, size_t cap)
    int lane_stat_same(const char *path, uint64_t ino, uint64_t dev, int64_t size,
                       int64_t mtime_ns, int64_t ctime_ns)
    int lane_ends_head(const char *buf, size_t len)
    int64_t lane_now_second()
    double lane_now()
    int lane_dir_sig(const char *path, uint64_t *sig, uint64_t *count)
    enum lane_field:
        LANE_FIELD_NONE
        LANE_FIELD_KEY
    int lane_field_kind(const char *name, size_t len)
    ssize_t lane_plain_path(const char *target, size_t len)
    int lane_watch_pending(int epfd, int inotify_fd)
    int lane_watch_ring_open(int inotify_fd)
    void lane_watch_ring_close()
    int lane_watch_ring_owned()
