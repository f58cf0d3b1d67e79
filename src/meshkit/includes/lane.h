/* lane.h - C helpers of the client-side HTTP/1 lane (meshkit web, _lane.pxi).
 *
 * The lane answers a request head read between requests from the response cache without a
 * Python call per request: it reads with lane_recv() into one static buffer, checks each
 * validator of the remembered response with lane_stat_same() (one stat(2), as
 * meshkit.web.respcache.CachedResponse.valid does) and writes with the send path of
 * sendfile.h. The pure-Python twin is meshkit.web.connection.Connection._on_readable.
 */
#ifndef MESHKIT_LANE_H
#define MESHKIT_LANE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* recv(2) into buf, retrying EINTR. Returns the bytes read, 0 at EOF, -EAGAIN when there is
 * nothing to read, or -errno. */
ssize_t lane_recv(int fd, char *buf, size_t cap);

/* 1 when stat(path) succeeds and matches every field (the validator of a remembered
 * response), else 0. */
int lane_stat_same(const char *path, uint64_t ino, uint64_t dev, int64_t size,
                   int64_t mtime_ns, int64_t ctime_ns);

/* 1 when buf[0:len) ends with CRLF CRLF. */
int lane_ends_head(const char *buf, size_t len);

/* The current time (CLOCK_REALTIME) in whole seconds, and as a double (time.time()). */
int64_t lane_now_second(void);
double lane_now(void);

/* A signature of the folder at path: of its own stat and of every entry's name, stat (of
 * the target for a symlink) and symlink flag, independent of the order readdir gives them.
 * A folder listing (web/directives/browse.py) is rendered again only when it changes.
 * Returns 0 (sig and count filled) or -errno. */
int lane_dir_sig(const char *path, uint64_t *sig, uint64_t *count);

/* The request fields a compiled site's answer may depend on (_lanerules.pxi): the file
 * server's conditional and range fields, Authorization and Accept-Encoding (gzip, and the
 * precompressed siblings) are part of the rule table's key. */
enum lane_field {
    LANE_FIELD_NONE = 0, /* read by nothing the table answers */
    LANE_FIELD_KEY = 1,  /* Range, If-Range, If-Match, If-None-Match, If-Modified-Since,
                          * If-Unmodified-Since, Authorization, Accept-Encoding */
};

/* Which of those the field name[0:len) is (case-insensitive). */
int lane_field_kind(const char *name, size_t len);

/* The length of the path part of an origin-form request-target the lane may answer: printable
 * ASCII without '%', '\\' or '#', no "/." or "//" in the path (what the chain would decode,
 * fold or refuse). -1 for any other target. */
ssize_t lane_plain_path(const char *target, size_t len);

/* What the rule table's file watches (meshkit.web.filewatch) have queued, for the thread
 * that asks (csrc/watch_ring.c): on the thread that armed the ring (lane_watch_ring_open), a
 * read of its completion ring; elsewhere (or with no ring) epoll_wait(2) with no timeout on
 * their private epoll `epfd` (the inotify fd `inotify_fd` and /proc/self/mountinfo). Either
 * way a change whose system call returned before the request was read is reported. 0:
 * nothing; else a mask for FileWatch.drain (1: inotify events, 2: the mount table changed;
 * 3 when it cannot tell: assume both). */
int lane_watch_pending(int epfd, int inotify_fd);

/* Arm the ring for the calling thread: an io_uring with multishot polls of inotify_fd and of
 * its own /proc/self/mountinfo fd, so that lane_watch_pending costs no system call there (a
 * ring armed before, by any thread, is closed first). 0, or -errno (no io_uring: the epoll
 * stays). */
int lane_watch_ring_open(int inotify_fd);

/* Close the ring: every thread asks the epoll again. */
void lane_watch_ring_close(void);

/* 1 when the calling thread's checks read the ring. */
int lane_watch_ring_owned(void);

#endif /* MESHKIT_LANE_H */
