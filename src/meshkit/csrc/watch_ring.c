/* watch_ring.c - the rule table's file watches checked by a memory read (see lane.h).
 *
 * Before each answer the lane must know whether anything its file watches
 * (meshkit.web.filewatch: an inotify fd, and /proc/self/mountinfo for the mount table)
 * queued. Asked with epoll_wait(2) that is one system call per request, about as much as
 * the rest of a remembered 301 costs in user space. Here an io_uring holds two multishot
 * polls instead, one on the inotify fd (POLLIN) and one on a mountinfo fd of its own
 * (POLLPRI), and the check is a read of the completion ring's tail.
 *
 * Why that is as exact as the epoll_wait: the system call that makes a change (a write, a
 * rename, a mount) wakes the poll from inside itself, and io_uring then queues the
 * completion as task work on the thread that armed the ring, flagged like a signal
 * (TWA_SIGNAL). That thread runs it on its next return to user space: the recv(2) that
 * reads a request made after the change returns only after the completion is in the ring.
 * So the ring is read only by the thread that armed it (servers on other threads' loops keep
 * the epoll_wait), and never after a fork (the child shares the parent's ring memory).
 * Anything unexpected (a completion with an error, the completion ring overflowing, a
 * poll that cannot be armed again) turns the ring off for good: every check goes back to
 * the epoll_wait, and the check that saw it reports "everything may have changed". */
#include "lane.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<linux/io_uring.h>)
#include <linux/io_uring.h>
#endif
#endif
/* headers older than Linux 5.13 lack multishot polls: the ring is not built, the epoll stays */
#if defined(IORING_POLL_ADD_MULTI) && defined(IORING_CQE_F_MORE) && \
    defined(IORING_FEAT_NODROP) && defined(IORING_SQ_CQ_OVERFLOW) && defined(__NR_io_uring_setup)
#define LANE_HAVE_RING 1
#else
#define LANE_HAVE_RING 0
#endif

#if LANE_HAVE_RING

#define TAG_INOTIFY 1 /* user_data of each poll = the FileWatch.drain flag it stands for */
#define TAG_MOUNTS 2

static struct {
    int on;           /* armed, for thread `owner` */
    int first;        /* the first check after arming also asks the epoll (see lane_watch_ring_open) */
    int ring;         /* the io_uring fd, or -1 */
    int mounts;       /* the ring's own /proc/self/mountinfo fd */
    int inotify;      /* FileWatch's inotify fd (not owned) */
    pthread_t owner;
    unsigned *sq_tail, *sq_mask, *sq_array, *sq_flags;
    struct io_uring_sqe *sqes;
    unsigned *cq_head, *cq_tail, *cq_mask;
    struct io_uring_cqe *cqes;
    void *sq_map, *cq_map, *sqe_map;
    size_t sq_len, cq_len, sqe_len;
} ur = {.ring = -1, .mounts = -1, .inotify = -1};

static int atfork_set;

static void ring_after_fork(void)
{
    ur.on = 0; /* the child must not read (or consume) the parent's completions */
}

static void ring_close(void)
{
    ur.on = 0;
    if (ur.sqe_map != NULL && ur.sqe_map != MAP_FAILED)
        munmap(ur.sqe_map, ur.sqe_len);
    if (ur.cq_map != NULL && ur.cq_map != MAP_FAILED && ur.cq_map != ur.sq_map)
        munmap(ur.cq_map, ur.cq_len);
    if (ur.sq_map != NULL && ur.sq_map != MAP_FAILED)
        munmap(ur.sq_map, ur.sq_len);
    ur.sq_map = ur.cq_map = ur.sqe_map = NULL;
    if (ur.ring >= 0)
        close(ur.ring); /* cancels its polls */
    if (ur.mounts >= 0)
        close(ur.mounts);
    ur.ring = ur.mounts = ur.inotify = -1;
}

static int ring_enter(unsigned submit, unsigned flags)
{
    for (;;) {
        long r = syscall(__NR_io_uring_enter, ur.ring, submit, 0, flags, NULL, 0);
        if (r >= 0)
            return (int)r;
        if (errno != EINTR)
            return -errno;
    }
}

/* Arm a multishot poll of fd for events, tagged tag. 0, or -1. */
static int ring_poll(int fd, unsigned events, unsigned tag)
{
    unsigned tail = *ur.sq_tail; /* this thread is the only producer */
    unsigned idx = tail & *ur.sq_mask;
    struct io_uring_sqe *sqe = &ur.sqes[idx];
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = fd;
    sqe->poll32_events = events;
    sqe->len = IORING_POLL_ADD_MULTI;
    sqe->user_data = tag;
    ur.sq_array[idx] = idx;
    __atomic_store_n(ur.sq_tail, tail + 1, __ATOMIC_RELEASE);
    return ring_enter(1, 0) == 1 ? 0 : -1;
}

int lane_watch_ring_open(int inotify_fd)
{
#if __BYTE_ORDER != __LITTLE_ENDIAN
    (void)inotify_fd;
    return -ENOTSUP; /* poll32_events is word-reversed there: not worth it untested */
#else
    ring_close();
    struct io_uring_params p;
    memset(&p, 0, sizeof(p));
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = 64;
    long fd = syscall(__NR_io_uring_setup, 4, &p);
    if (fd < 0)
        return -errno; /* no io_uring (kernel.io_uring_disabled, seccomp): the epoll stays */
    ur.ring = (int)fd;
    int err = 0;
    if (!(p.features & IORING_FEAT_NODROP)) {
        err = -ENOTSUP; /* an overflowed completion could be lost */
        goto fail;
    }
    ur.sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    ur.cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) {
        if (ur.cq_len > ur.sq_len)
            ur.sq_len = ur.cq_len;
        ur.cq_len = ur.sq_len;
    }
    ur.sq_map = mmap(NULL, ur.sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ur.ring,
                     IORING_OFF_SQ_RING);
    if (ur.sq_map == MAP_FAILED)
        goto fail_errno;
    ur.cq_map = single ? ur.sq_map
                       : mmap(NULL, ur.cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                              ur.ring, IORING_OFF_CQ_RING);
    if (ur.cq_map == MAP_FAILED)
        goto fail_errno;
    ur.sqe_len = p.sq_entries * sizeof(struct io_uring_sqe);
    ur.sqe_map = mmap(NULL, ur.sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ur.ring,
                      IORING_OFF_SQES);
    if (ur.sqe_map == MAP_FAILED)
        goto fail_errno;
    char *sq = ur.sq_map, *cq = ur.cq_map;
    ur.sq_tail = (unsigned *)(sq + p.sq_off.tail);
    ur.sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    ur.sq_array = (unsigned *)(sq + p.sq_off.array);
    ur.sq_flags = (unsigned *)(sq + p.sq_off.flags);
    ur.sqes = ur.sqe_map;
    ur.cq_head = (unsigned *)(cq + p.cq_off.head);
    ur.cq_tail = (unsigned *)(cq + p.cq_off.tail);
    ur.cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    ur.cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    /* its own open of the mount table: a seq_file reports a change to one poller only */
    ur.mounts = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
    if (ur.mounts < 0)
        goto fail_errno;
    ur.inotify = inotify_fd;
    if (ring_poll(inotify_fd, POLLIN, TAG_INOTIFY) < 0 ||
        ring_poll(ur.mounts, POLLPRI, TAG_MOUNTS) < 0) {
        err = -EIO;
        goto fail;
    }
    if (!atfork_set) {
        if (pthread_atfork(NULL, NULL, ring_after_fork) != 0) {
            err = -ENOMEM;
            goto fail;
        }
        atfork_set = 1;
    }
    ur.owner = pthread_self();
    /* A mount change between the last epoll_wait and the ring's own mountinfo open shows
     * only to the epoll: the first check asks it too. */
    ur.first = 1;
    ur.on = 1;
    return 0;
fail_errno:
    err = -errno;
fail:
    ring_close();
    return err;
#endif
}

void lane_watch_ring_close(void)
{
    ring_close();
}

int lane_watch_ring_owned(void)
{
    return ur.on && pthread_equal(pthread_self(), ur.owner);
}

/* The completions queued since the last check, consumed: their flags (0: none). Re-arms
 * a poll that ended; turns the ring off (and reports 3) on anything unexpected. */
static int ring_reap(void)
{
    int flags = 0, rearm = 0;
    for (;;) {
        unsigned head = *ur.cq_head;
        unsigned tail = __atomic_load_n(ur.cq_tail, __ATOMIC_ACQUIRE);
        for (; head != tail; head++) {
            struct io_uring_cqe *c = &ur.cqes[head & *ur.cq_mask];
            unsigned tag = (unsigned)c->user_data & 3;
            if (c->res < 0) {
                __atomic_store_n(ur.cq_head, tail, __ATOMIC_RELEASE);
                ring_close();
                return 3;
            }
            flags |= (int)tag;
            if (!(c->flags & IORING_CQE_F_MORE))
                rearm |= (int)tag;
        }
        __atomic_store_n(ur.cq_head, head, __ATOMIC_RELEASE);
        if (!(__atomic_load_n(ur.sq_flags, __ATOMIC_ACQUIRE) & IORING_SQ_CQ_OVERFLOW))
            break;
        /* completions waiting in the kernel's overflow list: flush them into the ring */
        flags |= 3;
        if (ring_enter(0, IORING_ENTER_GETEVENTS) < 0) {
            ring_close();
            return 3;
        }
    }
    /* A poll that ended (the ring was full) is armed again; its first poll sees whatever
     * is still queued, so nothing falls between. */
    if (((rearm & TAG_INOTIFY) && ring_poll(ur.inotify, POLLIN, TAG_INOTIFY) < 0) ||
        ((rearm & TAG_MOUNTS) && ring_poll(ur.mounts, POLLPRI, TAG_MOUNTS) < 0)) {
        ring_close();
        return 3;
    }
    return flags;
}

#else /* !LANE_HAVE_RING */

int lane_watch_ring_open(int inotify_fd)
{
    (void)inotify_fd;
    return -ENOTSUP;
}

void lane_watch_ring_close(void)
{
}

int lane_watch_ring_owned(void)
{
    return 0;
}

#endif /* LANE_HAVE_RING */

static int epoll_pending(int epfd, int inotify_fd)
{
    struct epoll_event ev[4];
    int n = epoll_wait(epfd, ev, 4, 0);
    if (n == 0)
        return 0;
    if (n < 0)
        return 3; /* cannot tell: everything may have changed */
    int flags = 0;
    for (int i = 0; i < n; i++)
        flags |= ev[i].data.fd == inotify_fd ? 1 : 2;
    return flags;
}

int lane_watch_pending(int epfd, int inotify_fd)
{
#if LANE_HAVE_RING
    if (ur.on && inotify_fd == ur.inotify && pthread_equal(pthread_self(), ur.owner)) {
        if (__atomic_load_n(ur.cq_tail, __ATOMIC_ACQUIRE) == *ur.cq_head &&
            !(__atomic_load_n(ur.sq_flags, __ATOMIC_RELAXED) & IORING_SQ_CQ_OVERFLOW) &&
            !ur.first)
            return 0;
        int flags = ring_reap();
        if (ur.first) {
            ur.first = 0;
            flags |= epoll_pending(epfd, inotify_fd);
        }
        return flags;
    }
#endif
    return epoll_pending(epfd, inotify_fd);
}
