/* lane.c - C helpers of the client-side HTTP/1 lane (see includes/lane.h). */
#include "lane.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>

ssize_t lane_recv(int fd, char *buf, size_t cap)
{
    for (;;) {
        ssize_t n = recv(fd, buf, cap, 0);
        if (n >= 0)
            return n;
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK)
            return -EAGAIN;
        return -errno;
    }
}

int lane_stat_same(const char *path, uint64_t ino, uint64_t dev, int64_t size,
                   int64_t mtime_ns, int64_t ctime_ns)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return 0;
    int64_t m = (int64_t)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
    int64_t c = (int64_t)st.st_ctim.tv_sec * 1000000000LL + st.st_ctim.tv_nsec;
    return m == mtime_ns && (int64_t)st.st_size == size && (uint64_t)st.st_ino == ino &&
           (uint64_t)st.st_dev == dev && c == ctime_ns;
}

int lane_ends_head(const char *buf, size_t len)
{
    return len >= 4 && memcmp(buf + len - 4, "\r\n\r\n", 4) == 0;
}

int64_t lane_now_second(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec;
}

double lane_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
