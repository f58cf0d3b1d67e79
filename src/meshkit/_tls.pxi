# The HTTPS server's TLS connection, Python face (C core in csrc/tls_conn.c, declarations in
# includes/tls_conn.pxd, pure-Python twin in meshkit/web/tlssock.py: PyTlsSocket).
# Included by _fastpath.pyx, so module-level helper names here carry a _tl prefix.
#
# TlsConn has the twin's face (recv, send_bytes, send_head_and_file, shutdown, close,
# fileno, on_h2, on_demand, on_resume), so the HTTP/1.1 and h2 connections use either. The
# SSL_CTX is the one inside the port's ssl.SSLContext (meshkit.web.tlsctx builds it with the
# ssl module: certificates, versions, ciphers, curves, ALPN, client certificates, tickets);
# tls_attach() puts this module's SNI and ClientHello callbacks on the port's default
# context in place of the ssl module's Python-level sni_callback.
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EBADF, EPROTO
from libc.stdint cimport int64_t, uint64_t
from meshkit.includes cimport tls_conn as ctls

import logging as _tl_logging
import os as _tl_os
import socket as _tl_socket
import ssl as _tl_ssl

cdef extern from *:
    """
    #include <openssl/ssl.h>
    /* CPython's ssl.SSLContext (Modules/_ssl.c, PySSLContext): the SSL_CTX pointer is the
     * first field after the object header in every CPython 3 release. tls_attach() and
     * _tl_check() verify it against what the object reports before it is used. */
    typedef struct { PyObject_HEAD SSL_CTX *ctx; } mk_pyssl_context;
    static SSL_CTX *mk_ssl_ctx_of(PyObject *o) { return ((mk_pyssl_context *)o)->ctx; }
    """
    ctls.SSL_CTX *mk_ssl_ctx_of(object o)

# What Go's net/http answers plain HTTP sent to an HTTPS port with (tlssock.HTTP_TO_HTTPS).
TLS_HTTP_TO_HTTPS = (b"HTTP/1.0 400 Bad Request\r\n\r\n"
                     b"Client sent an HTTP request to an HTTPS server.\n")

cdef object _tl_log = _tl_logging.getLogger("meshkit.web")
cdef object _tl_SSLContext = _tl_ssl.SSLContext
cdef object _tl_last_event = None  # connstate.Event.LAST_RESPONSE, set on first use
cdef char _tl_buf[65536]  # plaintext of one recv (the GIL is held: one user at a time)

if ctls.mk_tls_global_init() < 0:
    raise ImportError("OpenSSL: cannot set up the TLS connection BIO")


cdef ctls.SSL_CTX *_tl_check(object ctx) except NULL:
    """The SSL_CTX inside an ssl.SSLContext, checked once per context object."""
    if not isinstance(ctx, _tl_SSLContext):
        raise TypeError(f"an ssl.SSLContext is needed, not {type(ctx).__name__}")
    cdef ctls.SSL_CTX *p = mk_ssl_ctx_of(ctx)
    if getattr(ctx, "_mk_tls_checked", False):
        return p
    if p == NULL or ctls.SSL_CTX_get_options(p) != int(ctx.options):
        raise RuntimeError("ssl.SSLContext's layout is not the expected one")
    ctx._mk_tls_checked = True
    return p


cdef int _tl_sni_cb(ctls.SSL *s, int *al, void *arg) noexcept with gil:
    """The ClientHello's server name picks the context (meshkit.web.tlsctx.TlsListener.pick:
    a pending TLS-ALPN-01 answer, then the exact name, then the wildcard one level up); an
    unknown name keeps the port's default."""
    cdef const char *name = ctls.SSL_get_servername(s, ctls.TLSEXT_NAMETYPE_host_name)
    cdef ctls.SSL_CTX *p
    if name == NULL or arg == NULL:
        return ctls.SSL_TLSEXT_ERR_OK
    try:
        listener = <object>arg
        host = name.decode("ascii", "replace").lower().rstrip(".")
        ctx = None
        challenges = listener.challenges
        if challenges:
            ctx = challenges.get(host)
            if not isinstance(ctx, _tl_SSLContext):
                ctx = None
        if ctx is None:
            by_name = listener.by_name
            ctx = by_name.get(host)
            if ctx is None:
                dot = host.find(".")
                if dot >= 0:
                    ctx = by_name.get("*" + host[dot:])
        if ctx is not None:
            p = _tl_check(ctx)
            if p != ctls.SSL_get_SSL_CTX(s):
                ctls.SSL_set_SSL_CTX(s, p)
    except BaseException as exc:
        _tl_log.error("TLS: choosing the certificate for %r failed: %s", name, exc)
        al[0] = 80  # internal_error
        return ctls.SSL_TLSEXT_ERR_ALERT_FATAL
    return ctls.SSL_TLSEXT_ERR_OK


cdef str _tl_hello_sni(ctls.SSL *s):
    """The host_name of the ClientHello's server_name extension, "" when there is none."""
    cdef const unsigned char *p
    cdef size_t n, length
    if not ctls.SSL_client_hello_get0_ext(s, ctls.TLSEXT_TYPE_server_name, &p, &n):
        return ""
    # list length (2), name type (1, 0 = host_name), name length (2), name
    if n < 5 or p[2] != 0:
        return ""
    length = (p[3] << 8) | p[4]
    if length > n - 5:
        return ""
    return (<const char *>p)[5:5 + length].decode("ascii", "replace")


cdef int _tl_hello_cb(ctls.SSL *s, int *al, void *arg) noexcept with gil:
    """On-demand TLS: ask with the ClientHello's name before the handshake goes on; while
    the answer (a future) is not there, the handshake waits (SSL_CLIENT_HELLO_RETRY)."""
    cdef void *owner = ctls.SSL_get_ex_data(s, ctls.mk_tls_ex_index())
    cdef TlsConn conn
    if owner == NULL:
        return ctls.SSL_CLIENT_HELLO_SUCCESS  # a Python ssl object on the same context
    conn = <TlsConn>owner
    if conn.on_demand is None and conn._fut is None:
        return ctls.SSL_CLIENT_HELLO_SUCCESS
    try:
        return conn._hello(_tl_hello_sni(s))
    except BaseException as exc:
        _tl_log.error("TLS: on-demand certificate lookup failed: %s", exc)
        al[0] = 80
        return ctls.SSL_CLIENT_HELLO_ERROR


def tls_same_openssl():
    """Whether this module's OpenSSL is the very library the ssl module uses: TlsConn takes the
    SSL_CTX out of an ssl.SSLContext, which is only valid in the library that made it. A wheel
    whose auditwheel copy of libssl differs from the interpreter's (or a Python built against
    another OpenSSL) answers False, and meshkit.web.tlssock uses the pure-Python twin."""
    if ctls.OpenSSL_version_num() != _tl_ssl.OPENSSL_VERSION_NUMBER:
        return False
    probe = _tl_SSLContext(_tl_ssl.PROTOCOL_TLS_SERVER)
    cdef ctls.SSL_CTX *p = mk_ssl_ctx_of(probe)
    # one library instance has one TLS_server_method table; a copy has its own
    return p != NULL and ctls.SSL_CTX_get_ssl_method(p) == ctls.TLS_server_method()


def tls_attach(ctx, listener):
    """Serve `listener`'s names (meshkit.web.tlsctx.TlsListener: by_name, challenges) from
    the port's default context `ctx`, and on-demand TLS, with this module's callbacks."""
    cdef ctls.SSL_CTX *p = _tl_check(ctx)
    ctx._mk_tls_listener = listener  # the callbacks' argument lives as long as the context
    ctls.SSL_CTX_set_tlsext_servername_callback(p, _tl_sni_cb)
    ctls.SSL_CTX_set_tlsext_servername_arg(p, <void *>listener)
    ctls.SSL_CTX_set_client_hello_cb(p, _tl_hello_cb, NULL)


cdef object _tl_oserror(int err):
    return OSError(err, _tl_os.strerror(err))


cdef str _tl_error():
    cdef char text[256]
    ctls.mk_tls_error_text(text, sizeof(text))
    return text.decode("utf-8", "replace")


cdef class TlsConn:
    """One server-side TLS connection on a non-blocking socket (the compiled TlsSocket of
    meshkit.web.tlssock; see there for the interface)."""

    compiled = True
    tls = True

    cdef ctls.mk_tls *_t  # NULL once closed (the SSL object is freed at close, not later)
    cdef bint _in_handshake  # OpenSSL is calling back into Python: close() must not free
    cdef object _raw
    cdef object _ctx
    cdef object _fut
    cdef public object on_h2
    cdef public object on_demand
    cdef public object on_resume

    def __cinit__(self, raw, ctx):
        cdef ctls.SSL_CTX *p = _tl_check(ctx)
        self._raw = raw
        self._ctx = ctx  # holds the SSL_CTX's callbacks' argument
        self._t = ctls.mk_tls_new(p, raw.fileno(), <void *>self)
        if self._t == NULL:
            raise MemoryError("cannot make a TLS connection")

    def __dealloc__(self):
        ctls.mk_tls_free(self._t)

    cdef ctls.mk_tls *_live(self) except NULL:
        if self._t == NULL:
            raise _tl_oserror(EBADF)
        return self._t

    def fileno(self):
        return self._raw.fileno()

    def selected_alpn_protocol(self):
        cdef const unsigned char *data
        cdef unsigned int n = 0
        if self._t == NULL:
            return None
        ctls.SSL_get0_alpn_selected(self._t.ssl, &data, &n)
        return data[:n].decode("ascii") if n else None

    def version(self):
        if self._t == NULL or not self._t.flags & ctls.MKT_READY:
            return None
        return ctls.SSL_get_version(self._t.ssl).decode("ascii")

    def session_reused(self):
        return self._t != NULL and bool(ctls.SSL_session_reused(self._t.ssl))

    # -- reading

    cdef int _hello(self, str name) except -2:  # (SSL_CLIENT_HELLO_RETRY is -1)
        fut = self._fut
        if fut is not None:
            if fut.done():
                self._fut = None
                return ctls.SSL_CLIENT_HELLO_SUCCESS
            return ctls.SSL_CLIENT_HELLO_RETRY
        ask = self.on_demand
        self.on_demand = None  # once per connection
        fut = ask(name) if ask is not None and name else None
        if fut is None or fut.done():
            return ctls.SSL_CLIENT_HELLO_SUCCESS
        self._fut = fut
        fut.add_done_callback(self._resumed)
        return ctls.SSL_CLIENT_HELLO_RETRY

    def _resumed(self, _f):
        resume = self.on_resume
        if resume is not None and self._raw.fileno() != -1:  # (not closed meanwhile)
            resume()

    cdef int _flush_out(self) except -1:
        cdef int rc = ctls.mk_tls_flush(self._live())
        if rc < 0:
            raise _tl_oserror(-rc)
        return rc

    def recv(self, Py_ssize_t n):
        cdef ctls.mk_tls *t = self._live()
        cdef int rc
        cdef ssize_t got
        taker = None
        if t.flags & ctls.MKT_WCLOSED:
            # closing: the caller counts and discards what comes (tlssock.PyTlsSocket)
            if not t.flags & ctls.MKT_READY:
                return self._raw.recv(n)
            return self._recv_closing(n)
        if not t.flags & ctls.MKT_READY:
            if self._fut is not None and not self._fut.done():
                # waiting for an on-demand certificate: what the client sends meanwhile
                # waits behind its ClientHello
                got = ctls.mk_tls_stash(t)
                if got == 0:
                    return b""
                if got < 0 and got != -EAGAIN:
                    raise _tl_oserror(<int>-got)
                raise BlockingIOError
            self._in_handshake = True
            try:
                rc = ctls.mk_tls_handshake(t)
            finally:
                self._in_handshake = False
            if t.fd < 0:  # closed by a callback meanwhile
                raise _tl_oserror(EBADF)
            if rc != ctls.MKT_HS_DONE:
                if rc == ctls.MKT_HS_WANT or rc == ctls.MKT_HS_HELLO_WAIT:
                    self._flush_out()
                    raise BlockingIOError
                if rc == ctls.MKT_HS_EOF:
                    return b""
                if rc == ctls.MKT_HS_PLAIN:
                    self._answer_plain_http()
                    raise ConnectionAbortedError("plain HTTP sent to an HTTPS port")
                if rc == ctls.MKT_HS_SOCKET:
                    raise _tl_oserror(t.err)
                why = _tl_error()
                ctls.mk_tls_flush(t)  # the alert, if OpenSSL made one
                _tl_log.debug("TLS handshake failed: %s", why)
                raise ConnectionAbortedError(f"TLS handshake failed: {why}")
            if self.on_h2 is not None and self.selected_alpn_protocol() == "h2":
                taker = self.on_h2(self)
                if self._t == NULL:  # h2 closed it at once: its business, not this reader's
                    raise BlockingIOError
                t = self._t
        return self._read(t, n, taker)

    cdef bytes _read(self, ctls.mk_tls *t, Py_ssize_t n, object taker):
        """recv() once the handshake is done (TlsLane reads with it too)."""
        cdef int rc, status = 0
        cdef ssize_t got
        cdef size_t cap
        cdef bytes out
        cap = <size_t>n if n < <Py_ssize_t>sizeof(_tl_buf) else sizeof(_tl_buf)
        got = <ssize_t>ctls.mk_tls_read(t, _tl_buf, cap, &status)
        if ctls.mk_tls_pending(t) and (got == 0 or taker is not None):
            # TLS 1.3 session tickets, alerts. With a request read, they wait for its
            # response and go in the same send (a client never waits for its tickets).
            # Once h2 has taken the socket over, or at EOF, a failed send is not this
            # reader's error (raising it would make the old reader close a socket that
            # is not its own any more): the next write or read meets it
            rc = ctls.mk_tls_flush(t)
            if rc < 0 and taker is None and status == ctls.MKT_RD_OK:
                raise _tl_oserror(-rc)
        if status == ctls.MKT_RD_FAILED:
            why = _tl_error()
            _tl_log.debug("TLS read failed: %s", why)
            raise ConnectionAbortedError(f"TLS error: {why}")
        if status == ctls.MKT_RD_SOCKET:
            raise _tl_oserror(t.err)
        if got == 0:
            if status == ctls.MKT_RD_EOF and taker is None:
                return b""
            raise BlockingIOError
        out = PyBytes_FromStringAndSize(_tl_buf, got)
        if taker is not None:
            taker(out)
            raise BlockingIOError
        return out

    cdef bytes _recv_closing(self, Py_ssize_t n):
        """After our close_notify: the client's close_notify (or any TLS error) is its EOF.
        A client may reset the socket right after it (wrk closes with our close_notify
        unread: the kernel sends RST, and the event loop drops the reader without a call),
        so waiting for the socket's own EOF would hold the connection until the linger
        deadline."""
        cdef ctls.mk_tls *t = self._t
        cdef int status = 0
        cdef size_t cap = <size_t>n if n < <Py_ssize_t>sizeof(_tl_buf) else sizeof(_tl_buf)
        cdef size_t got = ctls.mk_tls_read(t, _tl_buf, cap, &status)
        if status != ctls.MKT_RD_OK:
            return b""
        if got == 0:
            raise BlockingIOError
        return PyBytes_FromStringAndSize(_tl_buf, got)

    def _answer_plain_http(self):
        try:
            self._raw.send(TLS_HTTP_TO_HTTPS)
            self._raw.shutdown(_tl_socket.SHUT_WR)
        except OSError:
            pass

    # -- writing

    def _flush(self):
        """Send the ciphertext there is; whether all of it went (OSError on a dead socket)."""
        return self._flush_out() == 1

    def send_bytes(self, int fd, data, Py_ssize_t off=0):
        cdef Py_buffer view
        cdef size_t taken = 0
        cdef int state = 0, rc
        if type(data) is bytes:
            if off < 0 or off > PyBytes_GET_SIZE(data):
                raise ValueError("offset out of range")
            rc = ctls.mk_tls_write(self._live(), PyBytes_AS_STRING(data) + off,
                                   <size_t>(PyBytes_GET_SIZE(data) - off), &taken, &state)
        else:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                if off < 0 or off > view.len:
                    raise ValueError("offset out of range")
                rc = ctls.mk_tls_write(self._live(), (<const char *>view.buf) + off,
                                       <size_t>(view.len - off), &taken, &state)
            finally:
                PyBuffer_Release(&view)
        if rc < 0:
            if rc == -EPROTO:  # a TLS error
                raise ConnectionAbortedError(f"TLS error: {_tl_error()}")
            raise _tl_oserror(-rc)
        return (taken, state)

    def send_head_and_file(self, int fd, bytes head not None, int file_fd, int64_t offset,
                           uint64_t length):
        cdef uint64_t sent = 0
        cdef int state = 0, rc
        if offset < 0:
            raise ValueError("offset must not be negative")
        rc = ctls.mk_tls_write_file(self._live(), PyBytes_AS_STRING(head),
                                    <size_t>PyBytes_GET_SIZE(head), file_fd, offset, length,
                                    &sent, &state)
        if rc < 0:
            if rc == -EPROTO:
                raise ConnectionAbortedError(f"TLS error: {_tl_error()}")
            raise _tl_oserror(-rc)
        return (sent, state)

    # -- closing

    def shutdown(self, int how):
        if self._t != NULL:
            ctls.mk_tls_close_notify(self._t)
        self._raw.shutdown(how)

    def close(self):
        if self._t != NULL:
            self._t.fd = -1
            if not self._in_handshake:
                # freed now, while its buffers are warm, for the next connection to reuse
                ctls.mk_tls_free(self._t)
                self._t = NULL
        # the server's callbacks hold the connection that holds this object: let go of
        # them, so that both are freed by reference counting, not by a GC pass
        self.on_h2 = self.on_demand = self.on_resume = None
        self._fut = None
        self._raw.close()


cdef class TlsLane:
    """The reader of one HTTPS HTTP/1 connection (meshkit.web.tlssock.tls_lane): the
    compiled Lane's work (_lane.pxi) over a TlsConn. It drives the handshake (TlsConn.recv)
    and reads the plaintext itself, and answers a request head that the response cache
    knows without a Python frame (SSL_read, a stat(2) per validator, one SSL_write of the
    cached wire bytes), also the first request of a connection, which often arrives with
    the handshake's last flight, and one that asked to close (a new connection per request:
    the answer says Connection: close, then Connection._close_gracefully). What comes after
    our close_notify is read here too. Everything else goes to the connection's own methods
    (Connection._on_readable, its twin, on_eof, _abort, or _on_data with the bytes read),
    which decide exactly as without the lane."""

    cdef object conn
    cdef object server
    cdef TlsConn tls
    cdef readonly Py_ssize_t hits  # requests answered here (tests check the lane ran)

    def __cinit__(self, conn, server, TlsConn tls not None):
        self.conn = conn
        self.server = server
        self.tls = tls
        self.hits = 0

    def on_readable(self):
        cdef TlsConn tls = self.tls
        cdef ctls.mk_tls *t = tls._t
        cdef int flags
        conn = self.conn
        if t == NULL:
            conn._on_readable()  # a closed socket: the connection's own reader decides
            return
        flags = t.flags
        if flags & ctls.MKT_WCLOSED:
            if not flags & ctls.MKT_READY:
                conn._on_readable()
                return
            # after our close_notify (Connection._on_readable's work over TlsConn.recv,
            # without the two Python calls): the client's close_notify or EOF ends it
            try:
                data = tls._recv_closing(sizeof(_tl_buf))
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                conn._on_eof()
            else:
                conn._on_data(data)
            return
        if not flags & ctls.MKT_READY:
            # the handshake, and the request that often comes with the client's last
            # flight (a new connection per request): TlsConn.recv, then that request may
            # be answered from the cache below, as on a connection already open
            try:
                data = tls.recv(sizeof(_tl_buf))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                conn._abort()
                return
            if not data:
                conn._on_eof()
                return
        else:
            try:
                data = tls._read(t, sizeof(_tl_buf), None)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                conn._abort()
                return
            if not data:
                conn._on_eof()
                return
        cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
        if n <= _LN_MAX_HEAD and clane.lane_ends_head(PyBytes_AS_STRING(data), <size_t>n):
            if self._from_cache(tls, data):
                return
        conn._on_data(data)

    cdef int _from_cache(self, TlsConn tls, bytes data) except -1:
        """Lane._from_cache over TLS: 1 when answered (or handed to the connection's own
        cached-answer methods), 0 to read data normally."""
        global _ln_cached_event, _tl_last_event
        cdef size_t sent = 0
        cdef uint64_t fsent = 0
        cdef int state = 0
        cdef int rc
        cdef int64_t second
        cdef double now
        cdef uint64_t left
        server = self.server
        if not server._caching or server._shutting:
            return 0
        conn = self.conn
        cdef int cstate = conn._state
        if cstate > _LN_IDLE or conn._queue or conn._out or conn._streaming:
            return 0
        hit = server._cache.entries.get(data)
        if hit is None or not _ln_valid(hit.validators):
            return 0  # a miss, or stale: the connection drops it and reads the head
        if tls._t == NULL:
            return 0
        replay = None
        if hit.callbacks:
            replay = hit.replay
            if replay is None:
                conn._answer_cached(hit)  # callbacks that need the request copy
                return 1
        now = clane.lane_now()
        second = <int64_t>now
        wire = hit.wire if hit.second == second else hit.refresh(second)
        conn.requests += 1
        closes = hit.closes  # the request asked to close (OutputPath._answer_cached)
        if closes:
            if _tl_last_event is None:
                from meshkit.web.connstate import Event
                _tl_last_event = Event.LAST_RESPONSE
            conn._fire(_tl_last_event)
        elif cstate == _LN_NEW:
            if _ln_cached_event is None:
                from meshkit.web.connstate import Event
                _ln_cached_event = Event.CACHED
            conn._fire(_ln_cached_event)
        if hit.fd < 0 or hit.body:  # (as Connection._answer_cached does over TLS)
            if closes:  # its close_notify in the same send (Lifecycle sends none after)
                tls._t.flags |= ctls.MKT_SHUT_AFTER
            rc = ctls.mk_tls_write(tls._t, PyBytes_AS_STRING(wire),
                                   <size_t>PyBytes_GET_SIZE(wire), &sent, &state)
            if rc < 0 or state != csend.SEND_DONE:
                conn._cached_bytes_sent(hit, wire, now, None if rc < 0 else sent, state)
                return 1
        else:
            head = hit.head
            left = hit.file_left
            if left > _LN_FILE_BUDGET:
                conn._cached_file_sent(hit, now, -1, csend.SEND_AGAIN)
                return 1
            rc = ctls.mk_tls_write_file(tls._t, PyBytes_AS_STRING(head),
                                        <size_t>PyBytes_GET_SIZE(head), hit.fd,
                                        <int64_t>hit.file_off, left, &fsent, &state)
            if rc < 0 or state != csend.SEND_DONE:
                conn._cached_file_sent(hit, now, None if rc < 0 else fsent, state)
                return 1
        conn._deadline = server._now + server._idle_timeout
        conn._dkind = _LN_DL_IDLE
        self.hits += 1
        if replay is not None:  # the access log's lines (CachedResponse.replay_log)
            hit.replay_log(conn._remote_addr, conn._remote_port, conn._local_addr,
                           conn._local_port, now)
        if closes:
            # close_notify; closed at once unless more input waits (Lifecycle)
            conn._close_gracefully(True)
        return 1
