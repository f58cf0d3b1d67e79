/* relay.c - the TCP relay engine behind meshkit's L4 ingress (API in includes/relay.h).
 *
 * Design notes (the pure-Python twin, meshkit/l4/relay.py, follows the same steps):
 *
 * - Every socket is registered once, edge-triggered, for IN|OUT|RDHUP, and never modified
 *   afterwards: the engine remembers per socket whether it may be readable/writable and
 *   clears that only when the kernel says EAGAIN (or a read/write came back short, after
 *   which the kernel is bound to signal a new edge). So the keep-alive ping-pong path costs
 *   one recv and one send per message and no epoll_ctl at all.
 * - Bytes are read into one shared scratch buffer and sent on at once. Only what the
 *   destination did not take is copied into a per-direction buffer (from a small pool), and
 *   while that is non-empty the source is not read: at most bufsize bytes wait per direction
 *   (a bulk direction that copies reads up to RELAY_BULK_READ at once, so up to that many).
 * - A pair that used its read budget in one poll is carried over to the next poll and an
 *   eventfd in the epoll set is made readable, so the owner's loop calls poll() again after
 *   serving everything else.
 * - Idle expiry scans the pairs only once the earliest possible deadline has passed.
 * - relay_connect_pair() registers the connecting backend socket like any other; its first
 *   EPOLLOUT (or ERR/HUP) edge marks the end of the connect, SO_ERROR says how it went, and
 *   the same writable flag then serves the relaying. Connect deadlines share the idle scan.
 *   A connect that fails at once is queued like a pair carried over, so that the next poll
 *   reports it: the caller sees every connect failure the same way.
 * - Bulk directions of TCP pairs move their bytes with splice(2), socket -> pipe -> socket,
 *   through a pipe from a pool with a cap (relay_pipe.c). As HAProxy's splice-auto does, a
 *   direction turns bulk once it has moved RELAY_SPLICE_AFTER bytes in full reads without
 *   its source running dry, and back when a spliced burst ends below that, so
 *   request/response exchanges stay on the copy path, where one recv and one send cost less
 *   than two splices and a pipe. A pipe is filled only when empty (at most
 *   bufsize bytes, the same backpressure as the buffer), drained before the source is read
 *   again or its FIN passed on, and given back once drained. Bytes to inject (a preamble)
 *   go through the buffer, which is always drained before a pipe is filled. When splice
 *   cannot serve a direction (EINVAL, ENOSYS) it goes back to the copy path for good, bytes
 *   already in its pipe included; when no pipe is to be had (cap, EMFILE) that read copies.
 *   By default ("auto") only pairs whose two legs both run through NICs splice (both
 *   sockets report a NAPI id; where the kernel has no NAPI ids, pairs with no leg over
 *   loopback). Over loopback and veth the receiver at the far end is on this host and paid
 *   more per byte for spliced pages than the relay saved: iperf3 through the relay on one
 *   core, relay + receiver CPU per GB about 0.8 s spliced vs 0.5-0.6 s copied (256 KiB reads)
 *   on both (docs/notes/wip-relaybulk.md). HAProxy does not splice at all by default.
 *   MESHKIT_RELAY_SPLICE=1 splices every TCP pair, "0" none.
 *   MESHKIT_RELAY_PIPES caps the pipes (default RELAY_PIPES_DEFAULT); both are read by
 *   relay_create(). splice(2) into a socket raises
 *   SIGPIPE on EPIPE (it has no MSG_NOSIGNAL), so splicing is off in a process that has
 *   SIGPIPE at SIG_DFL (Python ignores it).
 */
#define _GNU_SOURCE
#include "relay.h"
#include "relay_pipe.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define RELAY_MAX_EVENTS 256
#define RELAY_READ_BUDGET 16 /* reads per direction per poll before yielding to the loop */
#define RELAY_POOL_MAX 64
#define RELAY_WAKE_TOKEN UINT64_MAX
#define RELAY_IDLE_SLACK 1e-6 /* scan a little early rather than miss a deadline to rounding */
#define RELAY_SPLICE_AFTER 65536 /* bytes a direction moves by copy before it splices */
#define RELAY_PIPES_DEFAULT 64   /* pipes at most, unless MESHKIT_RELAY_PIPES says otherwise */
#define RELAY_BULK_READ 262144   /* a copying bulk direction's reads (see pump_direction) */
#define RELAY_BIG_POOL_MAX 8     /* idle bulk-read buffers kept for reuse */
#define RELAY_BIG_MAX 64         /* bulk-read buffers in use at most (16 MiB); past it bufsize */

typedef struct relay_dir {
    char *buf;     /* bytes the destination has not taken yet; NULL when none */
    uint8_t bigbuf; /* buf is a bulk-read buffer (bulkread bytes, from r->bigpool) */
    uint32_t off;
    uint32_t len;
    uint64_t bytes; /* delivered to the destination, preamble excluded */
    uint8_t eof;    /* the source sent FIN */
    uint8_t shut;   /* FIN passed on to the destination */
    uint8_t waited; /* the FIN waited one poll for the other way's (see pump_direction) */
    uint8_t bulk;     /* splices: a burst of RELAY_SPLICE_AFTER bytes (see note_burst) */
    uint8_t nosplice; /* splice failed with EINVAL/ENOSYS here: copy for good */
    uint8_t piped;    /* pipe[] is lent from the pool */
    int pipe[2];
    uint32_t inpipe;  /* bytes in the pipe, not yet sent on */
    uint32_t run;     /* bytes of the current burst (capped at RELAY_SPLICE_AFTER) */
} relay_dir_t;

typedef struct relay_pair {
    int fd[2]; /* 0 = client, 1 = backend; direction d reads fd[d] and writes fd[1 - d] */
    uint32_t gen;
    uint8_t active;
    uint8_t queued;
    uint8_t failed;
    uint8_t state; /* enum relay_state */
    uint8_t readable[2];
    uint8_t writable[2];
    uint8_t hup[2]; /* the peer's FIN (or an error) is queued behind the data */
    uint8_t tcp;    /* both fds are TCP sockets: 0 not asked yet, 1 yes, 2 no */
    uint32_t pre_left; /* preamble bytes still at the front of dir[0] */
    int conn_err;      /* CONNECTING: a failure not yet reported; FAILED: the failure */
    double conn_deadline;
    double idle;
    double last;
    relay_dir_t dir[2];
    uint32_t tab;     /* served pairs: 1 + index of their table in r->tabs; else 0 */
    uint32_t backend; /* served pairs: the backend their flow is on */
    ct_key key;       /* served pairs: their flow */
} relay_pair_t;

typedef struct relay_tab {
    ct_table *t; /* NULL: a free entry */
    uint32_t npairs;
} relay_tab_t;

typedef struct relay_ref {
    uint32_t idx;
    uint32_t gen;
} relay_ref_t;

struct relay {
    int epfd;
    int wakefd;
    uint8_t wake_armed;
    size_t bufsize;
    size_t bulkread;  /* read size of copying bulk directions: max(bufsize, RELAY_BULK_READ) */
    char *scratch;
    char *bigpool[RELAY_BIG_POOL_MAX]; /* idle bulk-read buffers */
    uint32_t nbig;
    uint32_t big_used; /* bulk-read buffers handed out and not given back */
    relay_pair_t *pairs;
    uint32_t cap;    /* allocated slots */
    uint32_t used;   /* slots ever handed out; ids below this exist */
    uint32_t nopen;
    uint32_t *free_ids; /* LIFO of finished slots, so ids stay small */
    uint32_t nfree;
    char **pool;
    uint32_t npool;
    relay_ref_t *queue; /* pairs to pump in this poll: 2 * cap (carry + fresh events) */
    uint32_t nqueue;
    relay_ref_t *carry; /* pairs that ran out of budget: cap */
    uint32_t ncarry;
    relay_finished_t *fin; /* cap */
    uint32_t nfin;
    double next_idle_check;
    uint8_t splice;       /* enum relay_splice_mode: may bulk directions of TCP pairs splice */
    relay_pipes_t pipes;
    relay_tab_t *tabs; /* tables of served pairs */
    uint32_t ntabs;
    uint64_t tab_epoch;
};

enum { PUMP_IDLE, PUMP_MORE, PUMP_DONE, PUMP_RESET };
enum relay_splice_mode { RELAY_SPLICE_OFF = 0, RELAY_SPLICE_ALWAYS = 1, RELAY_SPLICE_AUTO = 2 };

static uint64_t make_token(uint32_t idx, uint32_t gen, int side)
{
    return ((uint64_t)gen << 32) | ((uint64_t)idx << 1) | (uint64_t)side;
}

static char *take_buffer(relay_t *r)
{
    if (r->npool)
        return r->pool[--r->npool];
    return malloc(r->bufsize);
}

static void give_buffer(relay_t *r, char *buf)
{
    if (r->npool < RELAY_POOL_MAX)
        r->pool[r->npool++] = buf;
    else
        free(buf);
}

/* A bulk-read buffer, or NULL when RELAY_BIG_MAX are in use (or malloc fails): the caller
 * then reads bufsize into the scratch buffer as any direction does. The cap bounds what
 * many slow receivers can make the relay hold: each keeps the rest of a big read it did not
 * take, so without it 10,000 stalled bulk flows could pin 2.5 GB instead of 16 MiB. */
static char *take_big(relay_t *r)
{
    if (r->big_used >= RELAY_BIG_MAX)
        return NULL;
    char *buf = r->nbig ? r->bigpool[--r->nbig] : malloc(r->bulkread);
    if (buf)
        r->big_used++;
    return buf;
}

static void give_big(relay_t *r, char *buf)
{
    r->big_used--;
    if (r->nbig < RELAY_BIG_POOL_MAX)
        r->bigpool[r->nbig++] = buf;
    else
        free(buf);
}

static void release_dir(relay_t *r, relay_dir_t *dir)
{
    if (dir->buf) {
        if (dir->bigbuf)
            give_big(r, dir->buf);
        else
            give_buffer(r, dir->buf);
        dir->buf = NULL;
        dir->bigbuf = 0;
    }
    dir->off = dir->len = 0;
}

/* A direction's pipe goes back to the pool (closed if bytes are left in it). */
static void drop_pipe(relay_t *r, relay_dir_t *dir)
{
    if (dir->piped) {
        give_pipe(&r->pipes, dir->pipe, dir->inpipe != 0);
        dir->piped = 0;
    }
    dir->inpipe = 0;
}

static ssize_t send_bytes(int fd, const char *buf, size_t len)
{
    ssize_t n;
    do {
        n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n;
}

static ssize_t recv_bytes(int fd, char *buf, size_t len)
{
    ssize_t n;
    do {
        n = recv(fd, buf, len, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    return n;
}

static int is_again(int err)
{
    return err == EAGAIN || err == EWOULDBLOCK;
}

static void count_sent(relay_pair_t *p, int d, size_t n)
{
    if (d == 0 && p->pre_left) {
        size_t k = n < p->pre_left ? n : p->pre_left;
        p->pre_left -= (uint32_t)k;
        n -= k;
    }
    p->dir[d].bytes += n;
}

/* The splice-auto heuristic (as HAProxy's): a copy read of n bytes, full when it filled the
 * buffer. A direction turns bulk once RELAY_SPLICE_AFTER bytes came in full reads without
 * the source running dry in between, so ping-pong messages, however many, never splice. */
static void note_burst(relay_dir_t *dir, size_t n, int full)
{
    if (!full) {
        dir->run = 0;
        return;
    }
    dir->run += n < RELAY_SPLICE_AFTER ? (uint32_t)n : RELAY_SPLICE_AFTER;
    if (dir->run >= RELAY_SPLICE_AFTER)
        dir->bulk = 1;
}

static int is_tcp(int fd)
{
    int proto = 0;
    socklen_t sl = sizeof proto;
    return getsockopt(fd, SOL_SOCKET, SO_PROTOCOL, &proto, &sl) == 0 && proto == IPPROTO_TCP;
}

/* Whether the TCP connection on fd runs over the loopback device: its peer is a loopback
 * address, or the socket's own address (a connection from this host to itself). */
static int over_loopback(int fd)
{
    struct sockaddr_storage me, peer;
    socklen_t ml = sizeof me, pl = sizeof peer;
    if (getpeername(fd, (struct sockaddr *)&peer, &pl) < 0 ||
        getsockname(fd, (struct sockaddr *)&me, &ml) < 0 || me.ss_family != peer.ss_family)
        return 0;
    if (peer.ss_family == AF_INET) {
        const struct in_addr *a = &((const struct sockaddr_in *)&peer)->sin_addr;
        const struct in_addr *b = &((const struct sockaddr_in *)&me)->sin_addr;
        return (ntohl(a->s_addr) >> 24) == 127 || a->s_addr == b->s_addr;
    }
    if (peer.ss_family == AF_INET6) {
        const struct in6_addr *a = &((const struct sockaddr_in6 *)&peer)->sin6_addr;
        const struct in6_addr *b = &((const struct sockaddr_in6 *)&me)->sin6_addr;
        if (IN6_IS_ADDR_LOOPBACK(a) || memcmp(a, b, sizeof *a) == 0)
            return 1;
        return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
    }
    return 0;
}

#ifndef SO_INCOMING_NAPI_ID
#define SO_INCOMING_NAPI_ID 56
#endif

/* The NAPI id of the device fd's last packet came in on: > 0 for a NIC's queue (real or
 * virtual, e.g. virtio-net), 0 for loopback and for veth (which hands packets over through
 * the backlog, no NAPI of its own unless GRO or XDP is on), -1 where the kernel cannot say. */
static int napi_id(int fd)
{
    unsigned int id = 0;
    socklen_t sl = sizeof id;
    if (getsockopt(fd, SOL_SOCKET, SO_INCOMING_NAPI_ID, &id, &sl) < 0)
        return -1;
    return id > 0;
}

/* Whether auto mode splices pair p: only when both legs run through NICs. Over loopback and
 * veth the bytes go to a receiver on this host, which paid more per byte for spliced pages
 * than the relay saved (see the top). Without NAPI ids, every pair not over loopback. */
static int splice_pays(relay_pair_t *p)
{
    int a = napi_id(p->fd[0]), b = napi_id(p->fd[1]);
    if (a < 0 || b < 0)
        return !over_loopback(p->fd[0]) && !over_loopback(p->fd[1]);
    return a > 0 && b > 0;
}

/* Whether direction d's next read should splice into a pipe. */
static int use_splice(const relay_t *r, relay_pair_t *p, int d)
{
    if (!r->splice || !p->dir[d].bulk || p->dir[d].nosplice)
        return 0;
    if (!p->tcp) {
        /* Asked once per pair, when a direction first turns bulk (short flows never ask):
         * by then both sockets have had packets in (data or ACKs), so NAPI ids are set. */
        p->tcp = is_tcp(p->fd[0]) && is_tcp(p->fd[1]) ? 1 : 2;
        if (p->tcp == 1 && r->splice == RELAY_SPLICE_AUTO && !splice_pays(p))
            p->tcp = 2;
    }
    return p->tcp == 1;
}

/* Splice cannot serve direction d (EINVAL, ENOSYS): the bytes in its pipe move to the
 * buffer, the pipe goes back and the direction copies from now on. 0, or -1 (errno set). */
static int unpipe_dir(relay_t *r, relay_pair_t *p, int d, int err)
{
    relay_dir_t *dir = &p->dir[d];
    dir->nosplice = 1;
    if (err == ENOSYS)
        r->splice = 0;
    if (dir->inpipe) {
        dir->buf = take_buffer(r);
        if (!dir->buf) {
            errno = ENOMEM;
            return -1;
        }
        dir->off = dir->len = 0;
        while (dir->len < dir->inpipe) {
            ssize_t n = read(dir->pipe[0], dir->buf + dir->len, dir->inpipe - dir->len);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                if (n == 0)
                    errno = EIO;
                return -1;
            }
            dir->len += (uint32_t)n;
        }
        dir->inpipe = 0;
    }
    drop_pipe(r, dir);
    return 0;
}

/* Sends direction d's pipe on. Returns 1 (drained, pipe given back), 0 (waiting for room)
 * or -1 (socket error). */
static int flush_pipe(relay_t *r, relay_pair_t *p, int d, int *progressed)
{
    relay_dir_t *dir = &p->dir[d];
    int dst = p->fd[1 - d];
    while (dir->inpipe) {
        if (!p->writable[1 - d])
            return 0;
        ssize_t n = splice_out(dir->pipe[0], dst, dir->inpipe);
        if (n < 0) {
            int err = errno;
            if (is_again(err)) {
                p->writable[1 - d] = 0;
                return 0;
            }
            if (err == EINVAL || err == ENOSYS)
                return unpipe_dir(r, p, d, err) < 0 ? -1 : 1;
            return -1;
        }
        if (n == 0) { /* cannot happen with bytes in the pipe and its write end open */
            errno = EIO;
            return -1;
        }
        /* A short splice may still leave room (it stops at a pipe buffer's edge): go on
         * until EAGAIN says the socket is full, which promises an EPOLLOUT edge. */
        *progressed = 1;
        count_sent(p, d, (size_t)n);
        dir->inpipe -= (uint32_t)n;
    }
    drop_pipe(r, dir);
    return 1;
}

/* Reads direction d's source into an empty pipe. Returns 1 (bytes in the pipe, or EOF
 * noted), 0 (the source is drained), 2 (no pipe or no splice here: copy this read) or -1
 * (socket error). */
static int fill_pipe(relay_t *r, relay_pair_t *p, int d, int *progressed)
{
    relay_dir_t *dir = &p->dir[d];
    if (!dir->piped) {
        if (take_pipe(&r->pipes, dir->pipe) < 0)
            return 2; /* the cap, EMFILE, ENFILE: this read copies, a later one may splice */
        dir->piped = 1;
    }
    /* Never more than bufsize: bytes in the pipe are bytes in flight, as in the buffer. */
    ssize_t n = splice_in(p->fd[d], dir->pipe[1], r->bufsize);
    if (n < 0) {
        int err = errno;
        drop_pipe(r, dir); /* empty: a pipe is filled only once drained */
        if (is_again(err)) {
            /* The burst is over: one that stayed small goes back to the copy path. */
            p->readable[d] = 0;
            if (dir->run < RELAY_SPLICE_AFTER)
                dir->bulk = 0;
            dir->run = 0;
            return 0;
        }
        if (err == EINVAL || err == ENOSYS)
            return unpipe_dir(r, p, d, err) < 0 ? -1 : 2;
        errno = err;
        return -1;
    }
    *progressed = 1;
    if (n == 0) {
        drop_pipe(r, dir);
        dir->eof = 1;
        return 1;
    }
    /* Unlike recv, a short splice does not say the socket is drained (the pipe's slots may
     * have run out first), so readable stays set until EAGAIN. */
    dir->inpipe = (uint32_t)n;
    if (dir->run < RELAY_SPLICE_AFTER)
        dir->run += (uint32_t)n;
    return 1;
}

/* Moves bytes in direction d until EAGAIN, EOF, a full buffer or the budget.
 * Returns 0 (waiting on the kernel), 1 (budget used up, more to do) or -1 (socket error). */
static int pump_direction(relay_t *r, relay_pair_t *p, int d, int *progressed)
{
    relay_dir_t *dir = &p->dir[d];
    int src = p->fd[d], dst = p->fd[1 - d];
    int budget = RELAY_READ_BUDGET;

    for (;;) {
        if (dir->len) {
            if (!p->writable[1 - d])
                return 0;
            ssize_t n = send_bytes(dst, dir->buf + dir->off, dir->len);
            if (n < 0) {
                if (!is_again(errno))
                    return -1;
                p->writable[1 - d] = 0;
                return 0;
            }
            *progressed = 1;
            count_sent(p, d, (size_t)n);
            dir->off += (uint32_t)n;
            dir->len -= (uint32_t)n;
            if (dir->len) {
                /* A short send left SOCK_NOSPACE set: EPOLLOUT will come when there is room. */
                p->writable[1 - d] = 0;
                return 0;
            }
            release_dir(r, dir);
            continue;
        }
        if (dir->piped) {
            int rc = flush_pipe(r, p, d, progressed);
            if (rc <= 0)
                return rc;
            continue;
        }
        if (dir->eof) {
            if (!dir->shut) {
                const relay_dir_t *other = &p->dir[1 - d];
                /* When the other way has ended too, the pair is done and the close that
                 * follows sends this FIN (nothing is left unread on dst). Most short-lived
                 * connections end with both FINs a moment apart, so a first EOF waits one
                 * poll for the other before paying for a shutdown(2). */
                if (!(other->eof && !other->len)) {
                    if (!dir->waited) {
                        dir->waited = 1;
                        return 1;
                    }
                    if (shutdown(dst, SHUT_WR) < 0)
                        return -1;
                }
                dir->shut = 1;
            }
            return 0;
        }
        if (!p->readable[d])
            return 0;
        if (budget-- == 0)
            return 1;
        if (use_splice(r, p, d)) {
            int rc = fill_pipe(r, p, d, progressed);
            if (rc < 0)
                return -1;
            if (rc == 0)
                return 0;
            if (rc == 1)
                continue;
        }
        /* A bulk direction that copies (splice off, or not worth it here) reads up to
         * bulkread bytes while its destination takes bytes: a quarter of the syscalls and of
         * the wake-ups of the reader at the far end. On loopback this cut the relay's CPU
         * per GB by about a tenth. It reads into a buffer of its own (from a small pool),
         * so that a rest the destination did not take stays where it is, with no copy; a
         * bulk direction so holds at most bulkread bytes, and at most RELAY_BIG_MAX
         * directions hold one (take_big). */
        size_t want = r->bufsize;
        char *in = r->scratch;
        if (dir->bulk && p->writable[1 - d]) {
            char *big = take_big(r);
            if (big) {
                in = big;
                want = r->bulkread;
            }
        }
        ssize_t n = recv_bytes(src, in, want);
        if (n <= 0 && in != r->scratch) {
            int err = errno;
            give_big(r, in);
            errno = err;
        }
        if (n < 0) {
            if (!is_again(errno))
                return -1;
            p->readable[d] = 0;
            dir->run = 0;
            return 0;
        }
        *progressed = 1;
        if (n == 0) {
            dir->eof = 1;
            continue;
        }
        /* A big read counts for as many reads of bufsize against the budget. */
        if (want > r->bufsize) {
            budget -= (int)(want / r->bufsize) - 1;
            if (budget < 0)
                budget = 0;
        }
        /* A short stream read drained the socket; later data raises a new edge. This saves
         * the recv that would only say EAGAIN on every ping-pong message. Not so when a FIN
         * is queued: recv stops in front of it and no new edge will come for it. */
        if ((size_t)n < want && !p->hup[d])
            p->readable[d] = 0;
        note_burst(dir, (size_t)n, (size_t)n >= r->bufsize);
        size_t sent = 0;
        if (p->writable[1 - d]) {
            ssize_t m = send_bytes(dst, in, (size_t)n);
            if (m < 0) {
                if (!is_again(errno)) {
                    if (in != r->scratch)
                        give_big(r, in);
                    return -1;
                }
                m = 0;
            }
            sent = (size_t)m;
            count_sent(p, d, sent);
            if (sent < (size_t)n)
                p->writable[1 - d] = 0;
        }
        if (sent < (size_t)n) {
            size_t rest = (size_t)n - sent;
            if (in != r->scratch) { /* the rest stays in the bulk buffer, which dir now holds */
                dir->buf = in;
                dir->bigbuf = 1;
                dir->off = (uint32_t)sent;
                dir->len = (uint32_t)rest;
                return 0;
            }
            dir->buf = take_buffer(r);
            if (!dir->buf) {
                errno = ENOMEM;
                return -1;
            }
            memcpy(dir->buf, r->scratch + sent, rest);
            dir->off = 0;
            dir->len = (uint32_t)rest;
            return 0;
        }
        if (in != r->scratch)
            give_big(r, in);
    }
}

static int pump_pair(relay_t *r, relay_pair_t *p, double now)
{
    int progressed = 0, more = 0;
    if (p->failed)
        return PUMP_RESET;
    for (int d = 0; d < 2; d++) {
        int rc = pump_direction(r, p, d, &progressed);
        if (rc < 0)
            return PUMP_RESET;
        more |= rc;
    }
    if (progressed)
        p->last = now;
    if (p->dir[0].shut && p->dir[1].shut)
        return PUMP_DONE;
    return more ? PUMP_MORE : PUMP_IDLE;
}

static void close_socket(relay_t *r, int fd, int abort)
{
    if (abort) {
        /* Linger 0 turns the close into an RST, so the peer learns of the reset. */
        struct linger lg = {1, 0};
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    }
    /* No EPOLL_CTL_DEL: the engine owns its fds (never dup'ed), so close() drops the epoll
     * entry with the file, and events already fetched are fenced off by the pair's gen. */
    close(fd);
}

/* A served pair is finishing: its flow ends (unless FAILED: the owner has it). */
static void end_flow(relay_t *r, relay_pair_t *p)
{
    relay_tab_t *tb = &r->tabs[p->tab - 1];
    if (p->state != RELAY_ST_FAILED) {
        uint32_t b;
        ct_release(tb->t, &p->key, &b);
        ct_add_bytes(tb->t, p->backend, p->dir[0].bytes + p->dir[1].bytes);
    }
    p->tab = 0;
    if (--tb->npairs == 0) {
        tb->t = NULL;
        r->tab_epoch++;
    }
}

static void finish_pair(relay_t *r, uint32_t idx, int reason, relay_finished_t *rec)
{
    relay_pair_t *p = &r->pairs[idx];
    if (p->tab)
        end_flow(r, p);
    close_socket(r, p->fd[0], reason == RELAY_RESET);
    if (p->fd[1] >= 0)
        close_socket(r, p->fd[1], reason == RELAY_RESET);
    release_dir(r, &p->dir[0]);
    release_dir(r, &p->dir[1]);
    drop_pipe(r, &p->dir[0]);
    drop_pipe(r, &p->dir[1]);
    rec->pair_id = (int32_t)idx;
    rec->reason = reason;
    rec->bytes_c2b = p->dir[0].bytes;
    rec->bytes_b2c = p->dir[1].bytes;
    p->active = 0;
    p->queued = 0;
    p->gen++;
    r->free_ids[r->nfree++] = idx;
    r->nopen--;
}

static void set_wake(relay_t *r, int want);

static void note_deadline(relay_t *r, double deadline)
{
    if (deadline - RELAY_IDLE_SLACK < r->next_idle_check)
        r->next_idle_check = deadline - RELAY_IDLE_SLACK;
}

/* The connect of a CONNECTING pair failed: back to just the client, and a record. */
static void connect_failed(relay_t *r, uint32_t idx, int err)
{
    relay_pair_t *p = &r->pairs[idx];
    relay_finished_t *rec = &r->fin[r->nfin++];
    if (p->fd[1] >= 0) {
        close_socket(r, p->fd[1], 0);
        p->fd[1] = -1;
    }
    release_dir(r, &p->dir[0]);
    drop_pipe(r, &p->dir[0]);
    p->pre_left = 0;
    p->readable[1] = p->writable[1] = p->hup[1] = 0;
    p->state = RELAY_ST_FAILED;
    p->conn_err = err;
    rec->pair_id = (int32_t)idx;
    rec->reason = RELAY_CONNECT;
    rec->bytes_c2b = p->dir[0].bytes;
    rec->bytes_b2c = p->dir[1].bytes;
}

/* A CONNECTING pair with news: 1 if it now relays, 0 if it still waits or just failed. */
static int connect_done(relay_t *r, uint32_t idx, relay_pair_t *p, double now)
{
    int err = p->conn_err;
    if (p->state != RELAY_ST_CONNECTING)
        return 0;
    if (!err) {
        if (!p->writable[1] && !p->hup[1])
            return 0;
        /* A plain EPOLLOUT edge is a completed connect; only ERR/HUP/RDHUP need SO_ERROR
         * to tell a refusal from a peer that connected and closed at once. */
        if (p->hup[1]) {
            socklen_t sl = sizeof err;
            if (getsockopt(p->fd[1], SOL_SOCKET, SO_ERROR, &err, &sl) < 0)
                err = errno;
        }
    }
    if (err) {
        connect_failed(r, idx, err);
        return 0;
    }
    p->state = RELAY_ST_RELAYING;
    p->last = now;
    if (p->idle > 0)
        note_deadline(r, now + p->idle);
    return 1;
}

/* Starts the backend connect of pair idx (client registered, state about to be CONNECTING).
 * Any failure is kept in conn_err and the pair queued, so that the next poll reports it. */
static void start_connect(relay_t *r, uint32_t idx, const struct sockaddr *sa, socklen_t salen,
                          double now, double connect_timeout)
{
    relay_pair_t *p = &r->pairs[idx];
    int err, one = 1;
    p->fd[1] = -1;
    p->conn_err = 0;
    p->state = RELAY_ST_CONNECTING;
    p->conn_deadline = connect_timeout > 0 ? now + connect_timeout : INFINITY;
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = errno;
        goto failed;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, sa, salen) < 0 && errno != EINPROGRESS && errno != EINTR) {
        err = errno;
        close(fd);
        goto failed;
    }
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.u64 = make_token(idx, p->gen, 1),
    };
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        err = errno;
        close(fd);
        goto failed;
    }
    p->fd[1] = fd;
    if (connect_timeout > 0)
        note_deadline(r, p->conn_deadline);
    return;
failed:
    p->conn_err = err ? err : EIO;
    p->conn_deadline = INFINITY;
    if (!p->queued) {
        p->queued = 1;
        r->carry[r->ncarry++] = (relay_ref_t){idx, p->gen};
    }
    set_wake(r, 1);
}

static int parse_addr(const char *ip, int port, struct sockaddr_storage *ss, socklen_t *len)
{
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (!ip || port < 1 || port > 65535)
        return -1;
    memset(ss, 0, sizeof *ss);
    if (inet_pton(AF_INET, ip, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        return 0;
    }
    if (inet_pton(AF_INET6, ip, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        return 0;
    }
    return -1;
}

static void expire_idle(relay_t *r, double now)
{
    double next = INFINITY;
    for (uint32_t i = 0; i < r->used; i++) {
        relay_pair_t *p = &r->pairs[i];
        if (!p->active)
            continue;
        if (p->state == RELAY_ST_RELAYING) {
            if (!(p->idle > 0))
                continue;
            if (p->last <= now - p->idle)
                finish_pair(r, i, RELAY_IDLE, &r->fin[r->nfin++]);
            else if (p->last + p->idle < next)
                next = p->last + p->idle;
        } else if (p->state == RELAY_ST_CONNECTING) {
            if (p->conn_deadline <= now)
                connect_failed(r, i, ETIMEDOUT);
            else if (p->conn_deadline < next)
                next = p->conn_deadline;
        }
    }
    r->next_idle_check = next - RELAY_IDLE_SLACK;
}

static void set_wake(relay_t *r, int want)
{
    uint64_t v = 1;
    if (want && !r->wake_armed) {
        if (write(r->wakefd, &v, sizeof v) == (ssize_t)sizeof v)
            r->wake_armed = 1;
    } else if (!want && r->wake_armed) {
        if (read(r->wakefd, &v, sizeof v) == (ssize_t)sizeof v || errno == EAGAIN)
            r->wake_armed = 0;
    }
}

static int grow_slots(relay_t *r)
{
    uint32_t cap = r->cap ? r->cap * 2 : 64;
    void *p;
    if (!(p = realloc(r->pairs, (size_t)cap * sizeof *r->pairs)))
        return -1;
    r->pairs = p;
    if (!(p = realloc(r->free_ids, (size_t)cap * sizeof *r->free_ids)))
        return -1;
    r->free_ids = p;
    if (!(p = realloc(r->queue, (size_t)cap * 2 * sizeof *r->queue)))
        return -1;
    r->queue = p;
    if (!(p = realloc(r->carry, (size_t)cap * sizeof *r->carry)))
        return -1;
    r->carry = p;
    if (!(p = realloc(r->fin, (size_t)cap * sizeof *r->fin)))
        return -1;
    r->fin = p;
    memset(r->pairs + r->cap, 0, (size_t)(cap - r->cap) * sizeof *r->pairs);
    r->cap = cap;
    return 0;
}

/* MESHKIT_RELAY_SPLICE ("0": off, "1": on every TCP pair, else auto: not over loopback)
 * and MESHKIT_RELAY_PIPES (the cap; 0 is off too) into *on; returns the cap. Off as well
 * while SIGPIPE would kill the process (see the top). */
static uint32_t read_splice_setting(uint8_t *on)
{
    const char *s = getenv("MESHKIT_RELAY_SPLICE");
    const char *c = getenv("MESHKIT_RELAY_PIPES");
    uint32_t cap = RELAY_PIPES_DEFAULT;
    struct sigaction sa;
    if (c && *c) {
        char *end;
        unsigned long v = strtoul(c, &end, 10);
        if (!*end && v <= 65536)
            cap = (uint32_t)v;
    }
    *on = s && strcmp(s, "0") == 0   ? RELAY_SPLICE_OFF
          : s && strcmp(s, "1") == 0 ? RELAY_SPLICE_ALWAYS
                                     : RELAY_SPLICE_AUTO;
    if (cap == 0)
        *on = RELAY_SPLICE_OFF;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
        sa.sa_handler == SIG_DFL)
        *on = 0;
    return *on ? cap : 0;
}

relay_t *relay_create(size_t bufsize)
{
    if (bufsize == 0 || bufsize > UINT32_MAX / 2) {
        errno = EINVAL;
        return NULL;
    }
    relay_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->epfd = r->wakefd = -1;
    r->bufsize = bufsize;
    r->next_idle_check = INFINITY;
    r->bulkread = bufsize > RELAY_BULK_READ ? bufsize : RELAY_BULK_READ;
    r->scratch = malloc(bufsize);
    r->pool = calloc(RELAY_POOL_MAX, sizeof *r->pool);
    if (!r->scratch || !r->pool || grow_slots(r) < 0)
        goto fail;
    uint32_t npipes = read_splice_setting(&r->splice);
    if (init_pipes(&r->pipes, npipes, bufsize) < 0)
        goto fail;
    r->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (r->epfd < 0)
        goto fail;
    r->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (r->wakefd < 0)
        goto fail;
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = RELAY_WAKE_TOKEN};
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->wakefd, &ev) < 0)
        goto fail;
    return r;
fail: {
    int err = errno;
    relay_destroy(r);
    errno = err;
    return NULL;
}
}

void relay_destroy(relay_t *r)
{
    if (!r)
        return;
    for (uint32_t i = 0; i < r->used; i++) {
        relay_pair_t *p = &r->pairs[i];
        if (p->active) {
            close(p->fd[0]);
            if (p->fd[1] >= 0)
                close(p->fd[1]);
            free(p->dir[0].buf);
            free(p->dir[1].buf);
            drop_pipe(r, &p->dir[0]);
            drop_pipe(r, &p->dir[1]);
        }
    }
    destroy_pipes(&r->pipes);
    for (uint32_t i = 0; i < r->npool; i++)
        free(r->pool[i]);
    for (uint32_t i = 0; i < r->nbig; i++)
        free(r->bigpool[i]);
    if (r->epfd >= 0)
        close(r->epfd);
    if (r->wakefd >= 0)
        close(r->wakefd);
    free(r->pool);
    free(r->scratch);
    free(r->pairs);
    free(r->free_ids);
    free(r->queue);
    free(r->carry);
    free(r->fin);
    free(r->tabs);
    free(r);
}

int relay_fileno(const relay_t *r)
{
    return r->epfd;
}

int relay_add_pair(relay_t *r, int client_fd, int backend_fd, double idle_timeout, double now,
                   const char *preamble, size_t preamble_len)
{
    int err;
    uint32_t idx;
    if (client_fd < 0 || backend_fd < 0 || client_fd == backend_fd ||
        preamble_len > r->bufsize) {
        err = EINVAL;
        goto fail;
    }
    if (r->nfree) {
        idx = r->free_ids[--r->nfree];
    } else {
        if (r->used == r->cap && grow_slots(r) < 0) {
            err = ENOMEM;
            goto fail;
        }
        idx = r->used++;
    }
    relay_pair_t *p = &r->pairs[idx];
    uint32_t gen = p->gen;
    memset(p, 0, sizeof *p);
    p->gen = gen;
    p->fd[0] = client_fd;
    p->fd[1] = backend_fd;
    p->idle = idle_timeout;
    p->last = now;
    if (preamble_len) {
        p->dir[0].buf = take_buffer(r);
        if (!p->dir[0].buf) {
            err = ENOMEM;
            goto unslot;
        }
        memcpy(p->dir[0].buf, preamble, preamble_len);
        p->dir[0].len = (uint32_t)preamble_len;
        p->pre_left = (uint32_t)preamble_len;
    }
    for (int side = 0; side < 2; side++) {
        /* ET from the start: EPOLL_CTL_ADD reports what is already ready. */
        struct epoll_event ev = {
            .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
            .data.u64 = make_token(idx, gen, side),
        };
        if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, p->fd[side], &ev) < 0) {
            err = errno;
            if (side == 1)
                epoll_ctl(r->epfd, EPOLL_CTL_DEL, p->fd[0], NULL);
            release_dir(r, &p->dir[0]);
            goto unslot;
        }
    }
    p->active = 1;
    r->nopen++;
    if (idle_timeout > 0 && now + idle_timeout - RELAY_IDLE_SLACK < r->next_idle_check)
        r->next_idle_check = now + idle_timeout - RELAY_IDLE_SLACK;
    return (int)idx;
unslot:
    r->free_ids[r->nfree++] = idx;
fail:
    if (client_fd >= 0)
        close(client_fd);
    if (backend_fd >= 0 && backend_fd != client_fd)
        close(backend_fd);
    return -err;
}

int relay_poll(relay_t *r, double now, const relay_finished_t **out)
{
    struct epoll_event evs[RELAY_MAX_EVENTS];
    int n;

    r->nfin = 0;
    r->nqueue = 0;
    for (uint32_t i = 0; i < r->ncarry; i++)
        r->queue[r->nqueue++] = r->carry[i];
    r->ncarry = 0;

    do {
        n = epoll_wait(r->epfd, evs, RELAY_MAX_EVENTS, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;

    for (int i = 0; i < n; i++) {
        uint64_t tok = evs[i].data.u64;
        if (tok == RELAY_WAKE_TOKEN)
            continue;
        uint32_t idx = (uint32_t)(tok & 0xffffffffu) >> 1, gen = (uint32_t)(tok >> 32);
        int side = (int)(tok & 1);
        if (idx >= r->used)
            continue;
        relay_pair_t *p = &r->pairs[idx];
        if (!p->active || p->gen != gen)
            continue;
        uint32_t e = evs[i].events;
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            p->readable[side] = 1;
        if (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))
            p->writable[side] = 1;
        if (e & (EPOLLRDHUP | EPOLLHUP | EPOLLERR))
            p->hup[side] = 1;
        if ((e & EPOLLERR) && (side == 0 || p->state == RELAY_ST_RELAYING)) {
            /* Caught here because no read or write may be pending to report it (e.g. the
             * client half-closed and then reset while the backend is still thinking).
             * A connecting backend's SO_ERROR is the connect's result: connect_done(). */
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            if (getsockopt(p->fd[side], SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr)
                p->failed = 1;
        }
        /* Not relaying: the flags above wait for the connect; only the backend has news. */
        if (p->state != RELAY_ST_RELAYING && (side == 0 || p->state == RELAY_ST_FAILED))
            continue;
        if (!p->queued) {
            p->queued = 1;
            r->queue[r->nqueue++] = (relay_ref_t){idx, gen};
        }
    }

    for (uint32_t i = 0; i < r->nqueue; i++) {
        relay_ref_t ref = r->queue[i];
        relay_pair_t *p = &r->pairs[ref.idx];
        if (!p->active || p->gen != ref.gen)
            continue;
        p->queued = 0;
        if (p->state != RELAY_ST_RELAYING && !connect_done(r, ref.idx, p, now))
            continue;
        switch (pump_pair(r, p, now)) {
        case PUMP_MORE:
            p->queued = 1;
            r->carry[r->ncarry++] = ref;
            break;
        case PUMP_DONE:
            finish_pair(r, ref.idx, RELAY_DONE, &r->fin[r->nfin++]);
            break;
        case PUMP_RESET:
            finish_pair(r, ref.idx, RELAY_RESET, &r->fin[r->nfin++]);
            break;
        default:
            break;
        }
    }

    if (now >= r->next_idle_check)
        expire_idle(r, now);
    set_wake(r, r->ncarry > 0);
    *out = r->fin;
    return (int)r->nfin;
}

int relay_close_pair(relay_t *r, int pair_id, int reason, relay_finished_t *out)
{
    if (pair_id < 0 || (uint32_t)pair_id >= r->used || !r->pairs[pair_id].active)
        return 0;
    finish_pair(r, (uint32_t)pair_id, reason, out);
    return 1;
}

int relay_close_all(relay_t *r, const relay_finished_t **out)
{
    r->nfin = 0;
    r->ncarry = 0;
    for (uint32_t i = 0; i < r->used; i++)
        if (r->pairs[i].active)
            finish_pair(r, i, RELAY_CLOSED, &r->fin[r->nfin++]);
    set_wake(r, 0);
    *out = r->fin;
    return (int)r->nfin;
}

/* Whether connections accepted from listen_fd come with TCP_NODELAY already: a TCP child
 * socket inherits it from its listener (set before listen(), as meshkit's listeners do), so
 * one getsockopt per batch saves a setsockopt per connection. */
static int nodelay_inherited(int listen_fd)
{
    int on = 0;
    socklen_t sl = sizeof on;
    return getsockopt(listen_fd, IPPROTO_TCP, TCP_NODELAY, &on, &sl) == 0 && on;
}

/* The next connection: its fd (non-blocking, close-on-exec, TCP_NODELAY) and peer address;
 * -EAGAIN when none is pending or max_tries is used up (skipped connections count as tries,
 * so a socket that fails every accept the same way cannot keep the caller here); -errno for
 * an error that concerns the listener (EMFILE, ENFILE, ENOBUFS, ENOMEM, EBADF, ...). */
static int accept_next(int listen_fd, struct sockaddr_storage *ss, int *tries, int max_tries,
                       int inherited)
{
    while (*tries < max_tries) {
        socklen_t sl = sizeof *ss;
        int fd = accept4(listen_fd, (struct sockaddr *)ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            int one = 1;
            (*tries)++;
            if (sl < sizeof ss->ss_family)
                ss->ss_family = AF_UNSPEC;
            if (!inherited)
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            return fd;
        }
        int err = errno;
        if (err == EINTR)
            continue;
        if (is_again(err))
            return -EAGAIN;
        (*tries)++;
        switch (err) {
        case ECONNABORTED:
        case EPROTO:
        case EPERM:
        case ENETDOWN:
        case ENETUNREACH:
        case EHOSTDOWN:
        case EHOSTUNREACH:
        case ENONET:
        case ENOPROTOOPT:
        case ETIMEDOUT:
        case ECONNRESET:
            continue; /* that connection's problem, not the listener's */
        default:
            return -err;
        }
    }
    return -EAGAIN;
}

int relay_accept(int listen_fd, relay_accepted_t *out, int max_count)
{
    int n = 0, tries = 0, inherit = nodelay_inherited(listen_fd);
    while (n < max_count) {
        struct sockaddr_storage ss;
        int fd = accept_next(listen_fd, &ss, &tries, max_count, inherit);
        if (fd == -EAGAIN)
            break;
        if (fd < 0)
            return n ? n : fd;
        relay_accepted_t *a = &out[n++];
        a->fd = fd;
        a->port = 0;
        a->ip[0] = '\0';
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a4->sin_addr, a->ip, sizeof a->ip);
            a->port = ntohs(a4->sin_port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a6->sin6_addr, a->ip, sizeof a->ip);
            a->port = ntohs(a6->sin6_port);
        }
    }
    return n;
}

static int take_slot(relay_t *r, uint32_t *idx)
{
    if (r->nfree) {
        *idx = r->free_ids[--r->nfree];
        return 0;
    }
    if (r->used == r->cap && grow_slots(r) < 0)
        return -1;
    *idx = r->used++;
    return 0;
}

static int set_preamble(relay_t *r, relay_pair_t *p, const char *preamble, size_t preamble_len)
{
    if (!preamble_len)
        return 0;
    p->dir[0].buf = take_buffer(r);
    if (!p->dir[0].buf)
        return -1;
    memcpy(p->dir[0].buf, preamble, preamble_len);
    p->dir[0].len = (uint32_t)preamble_len;
    p->pre_left = (uint32_t)preamble_len;
    return 0;
}

/* A new open pair of just client_fd (registered), ready for start_connect(): 0 and *out, or
 * -errno without taking client_fd. */
static int client_pair(relay_t *r, int client_fd, double idle_timeout, double now,
                       const char *preamble, size_t preamble_len, uint32_t *out)
{
    uint32_t idx;
    int err;
    if (take_slot(r, &idx) < 0)
        return -ENOMEM;
    relay_pair_t *p = &r->pairs[idx];
    uint32_t gen = p->gen;
    memset(p, 0, sizeof *p);
    p->gen = gen;
    p->fd[0] = client_fd;
    p->fd[1] = -1;
    p->idle = idle_timeout;
    p->last = now;
    if (set_preamble(r, p, preamble, preamble_len) < 0) {
        err = ENOMEM;
        goto unslot;
    }
    struct epoll_event ev = {
        .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
        .data.u64 = make_token(idx, gen, 0),
    };
    if (epoll_ctl(r->epfd, EPOLL_CTL_ADD, client_fd, &ev) < 0) {
        err = errno;
        release_dir(r, &p->dir[0]);
        goto unslot;
    }
    p->active = 1;
    r->nopen++;
    *out = idx;
    return 0;
unslot:
    r->free_ids[r->nfree++] = idx;
    return -err;
}

int relay_connect_pair(relay_t *r, int client_fd, const char *ip, int port, double idle_timeout,
                       double now, const char *preamble, size_t preamble_len,
                       double connect_timeout)
{
    struct sockaddr_storage ss;
    socklen_t salen;
    uint32_t idx;
    int err;
    if (client_fd < 0 || preamble_len > r->bufsize || parse_addr(ip, port, &ss, &salen) < 0)
        return -EINVAL;
    err = client_pair(r, client_fd, idle_timeout, now, preamble, preamble_len, &idx);
    if (err < 0)
        return err;
    start_connect(r, idx, (struct sockaddr *)&ss, salen, now, connect_timeout);
    return (int)idx;
}

int relay_retry_pair(relay_t *r, int pair_id, const char *ip, int port, double now,
                     const char *preamble, size_t preamble_len, double connect_timeout)
{
    struct sockaddr_storage ss;
    socklen_t salen;
    if (pair_id < 0 || (uint32_t)pair_id >= r->used || !r->pairs[pair_id].active ||
        r->pairs[pair_id].state != RELAY_ST_FAILED || preamble_len > r->bufsize ||
        parse_addr(ip, port, &ss, &salen) < 0)
        return -EINVAL;
    relay_pair_t *p = &r->pairs[pair_id];
    if (set_preamble(r, p, preamble, preamble_len) < 0)
        return -ENOMEM;
    start_connect(r, (uint32_t)pair_id, (struct sockaddr *)&ss, salen, now, connect_timeout);
    return 0;
}

int relay_connect_error(const relay_t *r, int pair_id)
{
    if (pair_id < 0 || (uint32_t)pair_id >= r->used || !r->pairs[pair_id].active ||
        r->pairs[pair_id].state != RELAY_ST_FAILED)
        return 0;
    return r->pairs[pair_id].conn_err;
}

uint32_t relay_big_in_use(const relay_t *r)
{
    return r->big_used;
}

int relay_get_stats(const relay_t *r, int pair_id, uint64_t *c2b, uint64_t *b2c)
{
    if (pair_id < 0 || (uint32_t)pair_id >= r->used || !r->pairs[pair_id].active)
        return 0;
    *c2b = r->pairs[pair_id].dir[0].bytes;
    *b2c = r->pairs[pair_id].dir[1].bytes;
    return 1;
}

size_t relay_count_pairs(const relay_t *r)
{
    return r->nopen;
}


/* ---- the fast lane ------------------------------------------------------------------------ */

/* 1 + the index of t in r->tabs (added if new), or 0 when out of memory. */
static uint32_t tab_ref(relay_t *r, ct_table *t)
{
    uint32_t free_slot = 0;
    for (uint32_t i = 0; i < r->ntabs; i++) {
        if (r->tabs[i].t == t)
            return i + 1;
        if (!r->tabs[i].t && !free_slot)
            free_slot = i + 1;
    }
    if (!free_slot) {
        relay_tab_t *tabs = realloc(r->tabs, (r->ntabs + 1) * sizeof *tabs);
        if (!tabs)
            return 0;
        r->tabs = tabs;
        free_slot = ++r->ntabs;
    }
    r->tabs[free_slot - 1] = (relay_tab_t){t, 0};
    return free_slot;
}

/* The flow key's source from the peer's address: 1, or 0 when it is not IPv4/IPv6. */
static int key_from_peer(ct_key *key, const struct sockaddr_storage *ss)
{
    memset(key->src, 0, sizeof key->src);
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a4 = (const struct sockaddr_in *)ss;
        memcpy(key->src, &a4->sin_addr, 4);
        key->src_family = 4;
        key->sport = ntohs(a4->sin_port);
        return 1;
    }
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a6 = (const struct sockaddr_in6 *)ss;
        memcpy(key->src, &a6->sin6_addr, 16);
        key->src_family = 6;
        key->sport = ntohs(a6->sin6_port);
        return 1;
    }
    return 0;
}

int relay_serve(relay_t *r, int listen_fd, ct_table *t, const ct_key *dst, double idle_timeout,
                double connect_timeout, double now, int max_count, int *refused)
{
    int n = 0, tries = 0, inherit = nodelay_inherited(listen_fd);
    ct_key key = *dst;
    key.proto = 6;
    key.pad = 0;
    *refused = 0;
    while (n < max_count) {
        struct sockaddr_storage ss;
        int fd = accept_next(listen_fd, &ss, &tries, max_count, inherit);
        if (fd == -EAGAIN)
            break;
        if (fd < 0)
            return n ? n : fd;
        uint32_t bid, idx, ti;
        const ct_backend *b = NULL;
        int rc = 0;
        if (key_from_peer(&key, &ss))
            rc = ct_lookup(t, &key, now, &bid);
        if (rc == 1) {
            b = ct_get_backend(t, bid);
            if (!b || !b->addrlen) {
                ct_release(t, &key, &bid);
                b = NULL;
            }
        }
        if (!b) {
            close(fd);
            (*refused)++;
            n++;
            continue;
        }
        int err = 0;
        if (!(ti = tab_ref(r, t)))
            err = -ENOMEM;
        else
            err = client_pair(r, fd, idle_timeout, now, NULL, 0, &idx);
        if (err < 0) {
            ct_release(t, &key, &bid);
            close(fd);
            return n ? n : err;
        }
        n++;
        relay_pair_t *p = &r->pairs[idx];
        p->tab = ti;
        p->backend = bid;
        p->key = key;
        r->tabs[ti - 1].npairs++;
        start_connect(r, idx, &b->addr.sa, b->addrlen, now, connect_timeout);
    }
    return n;
}

static relay_pair_t *served_pair(const relay_t *r, int pair_id)
{
    if (pair_id < 0 || (uint32_t)pair_id >= r->used || !r->pairs[pair_id].active ||
        !r->pairs[pair_id].tab)
        return NULL;
    return &r->pairs[pair_id];
}

int relay_flow_of(const relay_t *r, int pair_id, ct_key *key, uint32_t *backend)
{
    const relay_pair_t *p = served_pair(r, pair_id);
    if (!p)
        return 0;
    *key = p->key;
    *backend = p->backend;
    return 1;
}

int relay_set_backend(relay_t *r, int pair_id, uint32_t backend)
{
    relay_pair_t *p = served_pair(r, pair_id);
    if (!p)
        return 0;
    p->backend = backend;
    return 1;
}

int relay_close_backend(relay_t *r, const ct_table *t, uint32_t backend,
                        const relay_finished_t **out)
{
    r->nfin = 0;
    for (uint32_t i = 0; i < r->used; i++) {
        relay_pair_t *p = &r->pairs[i];
        if (!p->active || !p->tab || r->tabs[p->tab - 1].t != t || p->backend != backend ||
            p->state == RELAY_ST_FAILED)
            continue;
        /* A pair still connecting has sent its client nothing: it fails like a refused
         * connect, so that its owner retries it on another backend. */
        if (p->state == RELAY_ST_CONNECTING)
            connect_failed(r, i, ECONNABORTED);
        else
            finish_pair(r, i, RELAY_CLOSED, &r->fin[r->nfin++]);
    }
    *out = r->fin;
    return (int)r->nfin;
}

size_t relay_table_pairs(const relay_t *r, const ct_table *t)
{
    for (uint32_t i = 0; i < r->ntabs; i++)
        if (r->tabs[i].t == t)
            return r->tabs[i].npairs;
    return 0;
}

uint64_t relay_table_epoch(const relay_t *r)
{
    return r->tab_epoch;
}

int relay_served_bytes(const relay_t *r, uint32_t i, const ct_table *t, uint32_t *backend,
                       uint64_t *bytes)
{
    if (i >= r->used)
        return 0;
    const relay_pair_t *p = &r->pairs[i];
    if (!p->active || !p->tab || r->tabs[p->tab - 1].t != t || p->state == RELAY_ST_FAILED)
        return 0;
    *backend = p->backend;
    *bytes = p->dir[0].bytes + p->dir[1].bytes;
    return 1;
}

uint32_t relay_slots(const relay_t *r)
{
    return r->used;
}
