/* lane.c - C helpers of the client-side HTTP/1 lane (see includes/lane.h). */
#include "lane.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <strings.h>
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

/* One entry's share of a folder signature: FNV-1a over the name and the stat fields a
 * listing shows or depends on, mixed so that sums of entries rarely collide. */
static uint64_t entry_hash(const char *name, const struct stat *st, int is_link)
{
    uint64_t h = 1469598103934665603ULL;
    for (const unsigned char *p = (const unsigned char *)name; *p; p++) {
        h ^= *p;
        h *= 1099511628211ULL;
    }
    uint64_t fields[7] = {
        (uint64_t)st->st_size,
        (uint64_t)st->st_mtim.tv_sec * 1000000000ULL + (uint64_t)st->st_mtim.tv_nsec,
        (uint64_t)st->st_mode,
        (uint64_t)st->st_ino,
        (uint64_t)st->st_dev,
        (uint64_t)is_link,
        (uint64_t)st->st_ctim.tv_sec * 1000000000ULL + (uint64_t)st->st_ctim.tv_nsec,
    };
    for (int i = 0; i < 7; i++) {
        h ^= fields[i];
        h *= 1099511628211ULL;
        h ^= h >> 29;
    }
    /* splitmix64's finaliser: a sum of these spreads well */
    h += 0x9E3779B97F4A7C15ULL;
    h = (h ^ (h >> 30)) * 0xBF58476D1CE4E5B9ULL;
    h = (h ^ (h >> 27)) * 0x94D049BB133111EBULL;
    return h ^ (h >> 31);
}

int lane_dir_sig(const char *path, uint64_t *sig, uint64_t *count)
{
    DIR *d = opendir(path);
    if (d == NULL)
        return -errno;
    int dfd = dirfd(d);
    struct stat st;
    if (fstat(dfd, &st) != 0) {
        int err = errno;
        closedir(d);
        return -err;
    }
    uint64_t sum = entry_hash(".", &st, 0); /* the folder itself */
    uint64_t n = 0;
    struct dirent *de;
    errno = 0;
    while ((de = readdir(d)) != NULL) {
        const char *name = de->d_name;
        if (name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0)))
            continue;
        int is_link = 0;
        if (de->d_type == DT_LNK) {
            is_link = 1;
        } else if (de->d_type == DT_UNKNOWN) {
            struct stat lst;
            if (fstatat(dfd, name, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lst.st_mode))
                is_link = 1;
        }
        if (fstatat(dfd, name, &st, 0) != 0) {
            /* a broken symlink or a name gone: its absence is part of the version */
            memset(&st, 0, sizeof(st));
            st.st_mode = 0;
        }
        sum += entry_hash(name, &st, is_link);
        n++;
        errno = 0;
    }
    int err = errno;
    closedir(d);
    if (err != 0)
        return -err;
    *sig = sum;
    *count = n;
    return 0;
}

/* ---- the rule table's request checks (_lanerules.pxi) ---- */

int lane_field_kind(const char *name, size_t len)
{
    switch (len) {
    case 5:
        return strncasecmp(name, "range", 5) == 0 ? LANE_FIELD_KEY : LANE_FIELD_NONE;
    case 8:
        return (strncasecmp(name, "if-range", 8) == 0 || strncasecmp(name, "if-match", 8) == 0)
                   ? LANE_FIELD_KEY
                   : LANE_FIELD_NONE;
    case 13:
        return (strncasecmp(name, "if-none-match", 13) == 0 ||
                strncasecmp(name, "authorization", 13) == 0)
                   ? LANE_FIELD_KEY
                   : LANE_FIELD_NONE;
    case 15:
        return strncasecmp(name, "accept-encoding", 15) == 0 ? LANE_FIELD_KEY : LANE_FIELD_NONE;
    case 17:
        return strncasecmp(name, "if-modified-since", 17) == 0 ? LANE_FIELD_KEY : LANE_FIELD_NONE;
    case 19:
        return strncasecmp(name, "if-unmodified-since", 19) == 0 ? LANE_FIELD_KEY
                                                                 : LANE_FIELD_NONE;
    default:
        return LANE_FIELD_NONE;
    }
}

ssize_t lane_plain_path(const char *target, size_t len)
{
    if (len == 0 || target[0] != '/')
        return -1;
    size_t path_end = len;
    unsigned char prev = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)target[i];
        if (c <= 0x20 || c >= 0x7f || c == '%' || c == '\\' || c == '#')
            return -1;
        if (path_end == len) { /* in the path: "/." or "//" is the chain's to fold */
            if (c == '?')
                path_end = i;
            else if (prev == '/' && (c == '.' || c == '/'))
                return -1;
        }
        prev = c;
    }
    return (ssize_t)path_end;
}
