"""The HTTP/1.1 server of `meshkit web`: uvloop + httptools, sockets owned by the server.

Why the server owns its sockets: uvloop has no loop.sendfile() and refuses add_writer() on a
socket that belongs to a transport (see DESIGN.md, "Known constraints"). So the server
creates the listening sockets itself and watches them and every accepted connection with
loop.add_reader(); it reads with recv(), feeds httptools, and writes with the send path of
meshkit.web.sendfile (the compiled send()/sendfile(2) loop of meshkit._fastpath, or its
pure-Python twin), calling loop.add_writer() only when the socket buffer is full.

Per connection (class _Conn):

- Requests are dispatched when their head is complete. A handler's synchronous Response is
  written at once, in the parser callback, without a task (the small-file fast path); an
  awaitable is awaited in a task. Responses leave in request order (pipelining): a response
  that is ready while an earlier one is still being computed waits in the queue.
- The request body is a _RequestBody fed by the parser; `100 Continue` is sent the first time
  a handler reads a body whose request asked for it. A body nobody read is discarded after the
  response, up to `max_discard` bytes; past that (or with an unanswered Expect) the connection
  closes after the response.
- Output goes through a queue of jobs (bytes, or a head plus a file range); a job the socket
  cannot take at once waits for writability. A file found shorter than its Content-Length
  while sending closes the connection.
- Timeouts are checked by one timer per server: a partial request head older than
  `header_timeout` gets 408 and close (a fresh connection that sent nothing is just closed),
  a keep-alive connection idle for `idle_timeout` is closed, a body read that waits
  `read_timeout` closes the connection, as does a client that takes nothing of a blocked
  response for `idle_timeout`.
- Responses remembered (meshkit.web.respcache): when the handler marks a file response
  as depending only on the request head and some files (Response.validators; the file
  server does, and the Router keeps the mark for static sites only), the server keeps its
  wire form keyed by the exact bytes of the read that held that one request head. A later
  read of the same bytes between requests is answered from it after one stat per file,
  without the parser or the handlers (the Date is redone each second). The request's
  on_complete callbacks (an access log) are kept with it and called for each such answer
  with a copy of the request carrying this client's address and start time.
- Closing after a response shuts down the write side first and discards what the client
  still sends for a moment ("lingering close"), so that the client reads the response
  instead of a reset.

Protocol decisions (framing, smuggling checks, keep-alive, response heads) are in the sans-IO
module meshkit.web.http1.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httptools

from meshkit.base.errors import MeshkitError
from meshkit.web import http1
from meshkit.web.http1 import BODY_NONE, CONTINUE_BYTES, Framing, HttpError
from meshkit.web.message import (
    BodyTooLarge,
    EmptyBody,
    FileBody,
    Handler,
    Headers,
    Request,
    Response,
)
from meshkit.web.respcache import MAX_HEAD, CachedResponse, ResponseCache
from meshkit.web.sendfile import SEND_AGAIN, SEND_DONE, SendPath, load_send_path

__all__ = ["DEFAULT_MAX_FIELDS", "DEFAULT_MAX_FIELD_LINE", "HttpServer"]

log = logging.getLogger("meshkit.web")

_RECV_SIZE = 65536
_ACCEPT_BATCH = 64
_FILE_BUDGET = 8 << 20  # file bytes per send before yielding to the loop
_SMALL_BODY = 65536  # bytes bodies up to this size go out in one send with the head
_BODY_BUFFER = 262144  # buffered, unread request body bytes before reading pauses
_MAX_PIPELINE = 64  # responses waiting in order before reading pauses
# Request head limits besides the total size: fields per head (Apache's LimitRequestFields
# and Go's default) and bytes per field line (nginx's large_client_header_buffers 8k).
DEFAULT_MAX_FIELDS = 100
DEFAULT_MAX_FIELD_LINE = 8192
_LINGER = 2.0  # seconds to discard input after a closing response
_LINGER_BYTES = 1 << 20

# What a connection's deadline means when it passes.
_DL_NONE = 0
_DL_FIRST = 1  # fresh connection, nothing received: close
_DL_HEAD = 2  # partial request head: 408 and close
_DL_IDLE = 3  # keep-alive idle: close
_DL_BODY = 4  # request body bytes awaited: close
_DL_LINGER = 5  # lingering close: close

_METHODS: dict[bytes, str] = {}


def _method_name(raw: bytes) -> str:
    name = _METHODS.get(raw)
    if name is None:
        name = raw.decode("latin-1")
        if len(_METHODS) < 64:
            _METHODS[raw] = name
    return name


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the status is on the connection."""


class _RequestBody:
    """The request body as the parser delivers it (the server's Body implementation)."""

    __slots__ = (
        "_chunks",
        "_complete",
        "_conn",
        "_continue_sent",
        "_delivered",
        "_discard",
        "_discarded",
        "_error",
        "_framing",
        "_read_any",
        "_received",
        "_request",
        "_waiter",
        "buffered",
        "limit",
    )

    def __init__(self, conn: _Conn, framing: Framing) -> None:
        self._conn = conn
        self._framing = framing
        self._chunks: deque[bytes] = deque()
        self.buffered = 0
        self._received = 0
        self._delivered = 0
        self._complete = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._continue_sent = False
        self._read_any = False
        self._discard = False
        self._discarded = 0
        self._request: Request | None = None
        self.limit: int | None = None

    @property
    def length(self) -> int | None:
        """Content-Length, or None for a chunked body."""
        return self._framing.length

    # -- the handler side

    async def read(self, max_bytes: int = 65536) -> bytes:
        """The next piece of the body (at most max_bytes); b"" at its end."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        limit = self.limit
        length = self._framing.length
        if limit is not None and length is not None and length > limit:
            raise BodyTooLarge(limit)
        if not self._read_any:
            self._read_any = True
            if self._framing.expect_continue and not self._continue_sent:
                self._continue_sent = True
                self._conn._send_continue(self)
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            if self._discard:
                raise RuntimeError("the request body was discarded after the response")
            waiter = self._conn._loop.create_future()
            self._waiter = waiter
            self._conn._body_waiting(self, True)
            try:
                await waiter
            finally:
                self._waiter = None
                self._conn._body_waiting(self, False)
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        self._delivered += len(chunk)
        if limit is not None and self._delivered > limit:
            # The limit was set after these bytes had arrived.
            self._error = BodyTooLarge(limit)
            raise self._error
        before = self.buffered
        self.buffered -= len(chunk)
        if before >= _BODY_BUFFER > self.buffered:
            self._conn._update_reading()
        return chunk

    async def read_all(self) -> bytes:
        """The whole body (BodyTooLarge past `limit`)."""
        parts: list[bytes] = []
        while True:
            chunk = await self.read(_BODY_BUFFER)
            if not chunk:
                return b"".join(parts)
            parts.append(chunk)

    # -- the parser side

    def feed(self, data: bytes) -> None:
        self._received += len(data)
        if self._discard:
            self._discarded += len(data)
            if self._discarded > self._conn._server._max_discard:
                self._conn._close_when_done()
            return
        limit = self.limit
        if limit is not None and self._received > limit:
            self._error = BodyTooLarge(limit)
            self._chunks.clear()
            self.buffered = 0
            self._discard = True  # nothing more is kept; the 413 closes the connection
            self._wake()
            return
        self._chunks.append(data)
        self.buffered += len(data)
        if self.buffered >= _BODY_BUFFER:
            self._conn._update_reading()
        self._wake()

    def finish(self) -> None:
        self._complete = True
        self._wake()

    def fail(self, exc: BaseException) -> None:
        if not self._complete and self._error is None:
            self._error = exc
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def start_discarding(self) -> bool:
        """Drop what is buffered and what still comes; False when that would be too much."""
        if self._framing.expect_continue and not self._continue_sent:
            return False  # the client may or may not send the body now: do not guess
        if self._error is not None and isinstance(self._error, BodyTooLarge):
            return False
        length = self._framing.length
        if length is not None and length - self._received > self._conn._server._max_discard:
            return False
        self._discard = True
        self._chunks.clear()
        self.buffered = 0
        return True


class _Job:
    """Bytes to write, or a head (in `data`) followed by a file range."""

    __slots__ = (
        "body_base",
        "close_after",
        "data",
        "fd",
        "file_left",
        "file_off",
        "finishes",
        "head_len",
        "off",
        "release",
        "request",
        "response",
        "sent",
        "upgrade",
    )

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.upgrade: Any = None  # a 101 head: hand the connection over once written
        self.off = 0
        self.fd = -1
        self.file_off = 0
        self.file_left = 0
        self.head_len = 0
        self.sent = 0
        self.body_base = 0
        self.finishes = False  # the last job of a response: call its completion
        self.close_after = False
        self.request: Request | None = None
        self.response: Response | None = None
        self.release: Any = None


class _Slot:
    """A response to be written in request order; `response` is None until it is ready.

    `deferred`: the request waits for its turn to reach the handler (see _may_dispatch);
    `awaited`: the handler answered with an awaitable (an upstream exchange, typically)."""

    __slots__ = ("awaited", "deferred", "keep", "request", "response", "task")

    def __init__(self, request: Request, keep: bool) -> None:
        self.request = request
        self.keep = keep
        self.response: Response | None = None
        # the task awaiting the handler's result, or the handler's own Future (see on_result)
        self.task: asyncio.Future[Any] | None = None
        self.deferred = False
        self.awaited = False


class _Conn:
    """One client connection: reading, parsing, dispatching, writing, timeouts."""

    def __init__(
        self, server: HttpServer, sock: socket.socket, remote: tuple[str, int], local: Any
    ) -> None:
        self._server = server
        self._loop = server._loop
        self._sock = sock
        self._fd = sock.fileno()
        self._send_bytes = server._send.send_bytes
        self._send_file = server._send.send_head_and_file
        self._remote_addr = str(remote[0]) if remote else ""
        self._remote_port = int(remote[1]) if remote else 0
        self._local_addr = str(local[0]) if isinstance(local, tuple) else ""
        self._local_port = int(local[1]) if isinstance(local, tuple) else 0
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._in_head = False
        self._in_message = False
        self._began_in_feed = False
        self._head_raw = 0
        self._stopped = False  # the parser is done with this connection's input
        self._refuse = 0  # status that a parser callback refused the request with
        self._start_time = 0.0
        self._body: _RequestBody | None = None
        self._queue: deque[_Slot] = deque()
        # requests of _queue not handed to the handler yet (in order), and how many slots of
        # _queue wait on an awaitable: the bound on upstream work per connection
        self._deferred: deque[_Slot] = deque()
        self._awaited = 0
        self._out: deque[_Job] = deque()
        self._streaming = False
        self._stream_task: asyncio.Task[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading = False
        self._writing = False
        self._closed = False
        self._no_more = False  # dispatch no further requests (closing after the current ones)
        self._close_pending = False
        self._lingering = False
        self._linger_bytes = 0
        self._waiting_body: _RequestBody | None = None
        self._deadline = self._loop.time() + server._header_timeout
        self._dkind = _DL_FIRST
        self._write_since = 0.0
        self.requests = 0
        # the response cache (meshkit.web.respcache): the bytes of this read when they may
        # be one whole request head to remember, messages begun in this read, and the
        # response to remember once the read turns out to have held just that request
        self._key: bytes | None = None
        self._feed_msgs = 0
        self._cand: CachedResponse | None = None
        self._upgrade_rest: bytes | None = None  # set once the client asked to upgrade

    # ------------------------------------------------------------------ reading

    def start(self) -> None:
        self._reading = True
        self._loop.add_reader(self._fd, self._on_readable)

    def _update_reading(self) -> None:
        want = not (
            self._closed
            or (self._stopped and not self._lingering)
            or len(self._queue) >= _MAX_PIPELINE
            or (self._body is not None and self._body.buffered >= _BODY_BUFFER)
            or (self._out and self._queue)
        )
        if want and not self._reading:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)
        elif not want and self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._abort()
            return
        if not data:
            self._on_eof()
            return
        if self._lingering:
            self._linger_bytes += len(data)
            if self._linger_bytes > _LINGER_BYTES:
                self._abort()
            return
        if self._stopped:
            return
        server = self._server
        if (
            server._caching
            and data[-4:] == b"\r\n\r\n"
            and len(data) <= MAX_HEAD
            and not (self._in_message or self._queue or self._out or self._streaming)
            and not (self._no_more or server._shutting)
        ):
            # Between requests, and the read ends like a request head: maybe one answered
            # before, from a file that has not changed since.
            hit = server._cache.entries.get(data)
            if hit is not None:
                if hit.valid():
                    self._answer_cached(hit)
                    return
                server._cache.drop(data)
            self._key = data
        else:
            self._key = None
        self._feed_msgs = 0
        self._began_in_feed = False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            # CONNECT or an Upgrade: the rest is not HTTP/1.1. A handler may take the
            # connection over with a 101 (Response.upgrade), getting these bytes too.
            self._upgrade_rest = data[exc.args[0] :]
            self._stopped = True
            self._close_when_done()
            return
        except httptools.HttpParserError as exc:
            if self._stopped:
                return
            status = self._refuse or 400
            if isinstance(exc, httptools.HttpParserCallbackError) and not self._refuse:
                # Not a refusal of ours: a bug in a callback. Say so, then answer 400.
                log.error("error in the HTTP parser callbacks: %s", exc)
            else:
                log.debug("bad request from %s:%s: %s", self._remote_addr, self._remote_port, exc)
            self._refuse_request(status)
            return
        finally:
            cand = self._cand
            if cand is not None:
                self._cand = None
                self._remember(data, cand)
        if self._in_head and not self._began_in_feed:
            # A head still incomplete after more reads: httptools holds its partial field
            # out of our sight, so count what arrives (the read it began in is not counted,
            # so the limit is overshot by at most one read).
            self._head_raw += len(data)
            if self._head_raw > self._server._header_limit:
                self._refuse_request(431)

    def _on_eof(self) -> None:
        if self._lingering or self._closed:
            self._abort()
            return
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        self._no_more = True
        body = self._body
        if body is not None and self._in_message:
            body.fail(ConnectionResetError("the client closed the connection mid-body"))
        if self._busy():
            self._close_pending = True
        else:
            self._abort()

    # -- httptools callbacks

    def on_message_begin(self) -> None:
        self._feed_msgs += 1
        self._url = b""
        self._headers = []
        self._head_raw = 0
        self._in_head = True
        self._in_message = True
        self._began_in_feed = True
        self._start_time = time.time()
        self._deadline = self._server._now + self._server._header_timeout
        self._dkind = _DL_HEAD

    def on_url(self, url: bytes) -> None:
        if self._url:
            url = self._url + url  # the target arrived in pieces
            if len(url) > self._server._header_limit:
                self._refuse = 414
                raise _Refused
        self._url = url

    def on_header(self, name: bytes, value: bytes) -> None:
        # The field count and each field line are checked here, as fields arrive, so that a
        # head of a huge number of small fields is refused after the first few hundred
        # rather than parsed whole (the total size is checked once the head is complete,
        # and for a head that spans reads by _on_readable). Trailer fields of a chunked
        # body (after the head) are ignored.
        if not self._in_head:
            return
        headers = self._headers
        server = self._server
        if (
            len(headers) >= server._max_fields
            or len(name) + len(value) + 2 > server._max_field_line
        ):
            self._refuse = 431
            raise _Refused
        headers.append((name, value))

    def on_headers_complete(self) -> None:
        if self._no_more:
            self._in_head = False
            return
        server = self._server
        parser = self._parser
        try:
            version = parser.get_http_version()
            if version != "1.1" and version != "1.0":
                raise HttpError(505 if version[:1] >= "2" else 400, "HTTP version")
            method = _method_name(parser.get_method())
            items, host, keep, framing, size = http1.scan_head(self._headers, version)
            if size + len(self._url) > server._header_limit:
                raise HttpError(431, "request head too large")
            target = http1.parse_target(self._url, method)
        except HttpError as exc:
            self._refuse = exc.status
            raise _Refused from None
        self._headers = []
        self._in_head = False
        if target.authority:
            host = target.authority
        if framing.kind == BODY_NONE:
            body: Any = EmptyBody()
            self._body = None
        else:
            body = self._body = _RequestBody(self, framing)
        self._dkind = _DL_NONE
        # positional (in Request's field order): half the cost of keywords, per request
        request = Request(
            method,
            self._url.decode("latin-1"),
            target.path,
            target.query,
            version,
            Headers(items),
            body,
            "http",
            host,
            self._remote_addr,
            self._remote_port,
            self._local_addr,
            self._local_port,
            self._start_time,
        )
        if self._body is not None:
            self._body._request = request
        self.requests += 1
        if not keep:
            self._no_more = True  # later pipelined requests are not answered
        if self._deferred or not self._may_dispatch():
            # An upstream exchange of this connection is pending while another response is
            # being written (or two are pending): this request waits its turn, so that a
            # pipelining client cannot fan out into many upstream connections at once.
            slot = _Slot(request, keep)
            slot.deferred = True
            self._queue.append(slot)
            self._deferred.append(slot)
            if len(self._queue) >= _MAX_PIPELINE:
                self._update_reading()
            return
        result = self._call_handler(request)
        if type(result) is Response or isinstance(result, Response):
            if (
                result.validators is not None
                and self._key is not None
                and keep
                and self._feed_msgs == 1
                and framing.kind == BODY_NONE
            ):
                # maybe remembered, once the read turns out to hold just this request (with
                # its on_complete callbacks, e.g. an access log: only routes whose every
                # directive is static or replayable keep validators; see Router)
                self._cand = ResponseCache.make(result, version, method, request)
            if not self._queue and not self._streaming:
                self._write_response(request, result, keep)
            else:
                slot = _Slot(request, keep)
                slot.response = result
                self._queue.append(slot)
                self._update_reading()
            return
        slot = _Slot(request, keep)
        self._queue.append(slot)
        if len(self._queue) >= _MAX_PIPELINE:
            self._update_reading()
        self._await_result(slot, result)

    def _call_handler(self, request: Request) -> Any:
        """The handler's result for request: a Response or an awaitable of one."""
        try:
            return self._server._handler(request)
        except BodyTooLarge:
            return _too_large()
        except Exception:
            log.exception("handler failed for %s %s", request.method, request.uri)
            return _server_error()

    def _await_result(self, slot: _Slot, result: Any) -> None:
        slot.awaited = True
        self._awaited += 1
        if isinstance(result, asyncio.Future):
            # A handler that answers from protocol callbacks (the proxy's and FastCGI's fast
            # paths) returns a plain Future: waiting on it with a callback instead of a task
            # saves a task, a coroutine and a loop turn per request.
            slot.task = result
            result.add_done_callback(functools.partial(self._future_done, slot))
        else:
            slot.task = self._loop.create_task(self._await_response(slot, result))

    def _may_dispatch(self) -> bool:
        """Whether a request may reach the handler now. Awaited results (proxy, FastCGI)
        of one connection run in order, at most one ahead of the response being written:
        two exchanges in flight at most, as nginx and Caddy (which serve the requests of a
        connection one after the other) come close to; synchronous answers (static files)
        keep their fast path while no exchange is pending."""
        n = self._awaited
        return n == 0 or (n == 1 and not (self._out or self._streaming))

    def _dispatch_deferred(self) -> bool:
        """Hand waiting requests to the handler, in order, while _may_dispatch allows;
        whether any was."""
        deferred = self._deferred
        dispatched = False
        while deferred and not self._closed and self._may_dispatch():
            slot = deferred.popleft()
            slot.deferred = False
            dispatched = True
            result = self._call_handler(slot.request)
            if type(result) is Response or isinstance(result, Response):
                slot.response = result
            else:
                self._await_result(slot, result)
        return dispatched

    def on_body(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            body.feed(data)
            if self._waiting_body is body:
                self._deadline = self._loop.time() + self._server._read_timeout

    def on_message_complete(self) -> None:
        self._in_message = False
        body = self._body
        if body is not None:
            body.finish()
            self._body = None
        if self._no_more:
            # Closing after the responses in flight: stop parsing what follows.
            self._stopped = True
            self._update_reading()
            if not self._busy():
                self._close_gracefully()
            raise _Refused
        if not (self._queue or self._out or self._streaming):
            self._went_idle()

    # ------------------------------------------------------------------ response cache

    def _remember(self, data: bytes, cand: CachedResponse) -> None:
        """Keep `cand` for the request head `data` if this read held exactly that one whole
        request (so that the same bytes next time mean the same request)."""
        if (
            self._key is data
            and self._feed_msgs == 1
            and not self._in_message
            and not self._closed
            and self._server._caching
        ):
            self._server._cache.put(data, cand)
        else:
            cand.close()

    def _answer_cached(self, hit: CachedResponse) -> None:
        """Answer the request head just read with a remembered response (checked valid);
        the entry's on_complete callbacks (if any) get a copy of its request with this
        connection's addresses and this start time."""
        now = time.time()
        second = int(now)
        wire = hit.wire if hit.second == second else hit.refresh(second)
        self.requests += 1
        server = self._server
        request: Request | None = None
        if hit.callbacks:
            request = hit.for_hit(
                self._remote_addr, self._remote_port, self._local_addr, self._local_port, now
            )
        if hit.fd < 0:
            head_len = len(wire) - len(hit.body)
            try:
                sent, state = self._send_bytes(self._fd, wire, 0)
            except OSError:
                if request is not None:
                    assert hit.response is not None
                    _complete(request, hit.response, 0)
                self._abort()
                return
            if state == SEND_DONE:
                self._deadline = server._now + server._idle_timeout
                self._dkind = _DL_IDLE
                if request is not None:
                    assert hit.response is not None
                    _complete(request, hit.response, sent - head_len)
                return
            job = _Job(wire)
            job.off = job.sent = sent
            job.head_len = head_len
            job.request = request
            job.response = hit.response
            job.finishes = True
            self._dkind = _DL_NONE
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            return
        assert hit.acquire is not None
        hit.acquire()
        job = _Job(wire)
        job.head_len = len(wire)
        job.fd = hit.fd
        job.file_off = hit.file_off
        job.file_left = hit.file_left
        job.release = hit.release
        job.request = request
        job.response = hit.response
        job.finishes = True
        self._dkind = _DL_NONE
        self._emit(job)
        if not self._closed and not self._busy():
            self._went_idle()

    # ------------------------------------------------------------------ dispatch

    def _future_done(self, slot: _Slot, fut: asyncio.Future[Response]) -> None:
        if fut.cancelled():
            return  # the connection went away and cancelled it (_drop_slots)
        exc = fut.exception()
        response: Response
        if exc is None:
            result = fut.result()
            if isinstance(result, Response):
                response = result
            else:
                exc = TypeError(f"handler returned {type(result).__name__}, not a Response")
        if exc is not None:
            if isinstance(exc, BodyTooLarge):
                response = _too_large()
            else:
                if self._closed:
                    return
                log.error(
                    "handler failed for %s %s",
                    slot.request.method,
                    slot.request.uri,
                    exc_info=(type(exc), exc, exc.__traceback__),
                )
                response = _server_error()
        self._take_response(slot, response)

    async def _await_response(self, slot: _Slot, result: Awaitable[Response]) -> None:
        try:
            response = await result
            if not isinstance(response, Response):
                raise TypeError(f"handler returned {type(response).__name__}, not a Response")
        except asyncio.CancelledError:
            raise
        except BodyTooLarge:
            response = _too_large()
        except Exception:
            if self._closed:
                return
            log.exception("handler failed for %s %s", slot.request.method, slot.request.uri)
            response = _server_error()
        self._take_response(slot, response)

    def _take_response(self, slot: _Slot, response: Response) -> None:
        slot.task = None
        if self._closed or slot not in self._queue:
            # The connection went away meanwhile: nothing will write this response.
            _discard_body(response.body)
            _complete(slot.request, response, 0)
            return
        slot.response = response
        self._flush_queue()

    def _flush_queue(self) -> None:
        # self._queue, not a local: a closing response empties it (_drop_slots)
        while not self._closed:
            queue = self._queue
            while queue and not self._streaming and not self._closed:
                slot = queue[0]
                response = slot.response
                if response is None:
                    break
                queue.popleft()
                if slot.awaited:
                    self._awaited -= 1
                self._write_response(slot.request, response, slot.keep)
            if not self._deferred or not self._dispatch_deferred():
                break
        if not self._closed:
            self._update_reading()
            if not self._busy():
                self._went_idle()

    def _refuse_request(self, status: int) -> None:
        """Answer a request the server refuses itself (after any earlier responses), close."""
        in_body = self._in_message and not self._in_head
        self._in_head = False
        self._in_message = False
        self._no_more = True
        self._stopped = True
        if in_body:
            # The failure is in a body whose request was dispatched already: just close.
            if self._body is not None:
                self._body.fail(ConnectionResetError("malformed request body"))
                self._body = None
            self._close_when_done()
            return
        request = Request(
            method="GET",
            uri="",
            path="",
            remote_addr=self._remote_addr,
            remote_port=self._remote_port,
            server_addr=self._local_addr,
            server_port=self._local_port,
            start_time=self._start_time,
        )
        response = Response.error(status)
        response.close = True
        if not self._queue and not self._streaming:
            self._write_response(request, response, False)
        else:
            slot = _Slot(request, False)
            slot.response = response
            self._queue.append(slot)
        self._update_reading()

    # ------------------------------------------------------------------ writing

    def _write_response(self, request: Request, response: Response, keep: bool) -> None:
        body = response.body
        status = response.status
        method = request.method
        if keep and (response.close or self._server._shutting or self._close_pending):
            keep = False
        rbody = self._body if self._in_message else None
        if keep and rbody is not None and rbody._request is request:
            # The handler is done and the body is still coming: discard it, or close.
            keep = rbody.start_discarding()
            if keep and not self._reading:
                self._update_reading()  # reading may have paused on the unread body
        send_body = method != "HEAD" and status >= 200 and status != 204 and status != 304
        if response.upgrade is not None and status == 101:
            self._write_upgrade(request, response)
            return
        if type(body) is bytes:
            try:
                head = http1.cached_head(status, response.headers, len(body), keep, request.version)
            except ValueError:
                log.error("response to %s %s has CR/LF in a header", method, request.uri)
                self._write_response(request, _server_error(), False)
                return
            if send_body and body:
                if len(body) <= _SMALL_BODY:
                    self._send_small(head + body, len(head), request, response, keep)
                else:
                    self._emit(_Job(head))
                    job = _Job(body)
                    self._finish_response(job, request, response, keep)
            else:
                self._send_small(head, len(head), request, response, keep)
        elif isinstance(body, FileBody):
            try:
                head = http1.cached_head(
                    status, response.headers, body.length, keep, request.version
                )
            except ValueError:
                _release(body)
                log.error("response to %s %s has CR/LF in a header", method, request.uri)
                self._write_response(request, _server_error(), False)
                return
            if not send_body or body.length == 0:
                job = _Job(head)
                job.head_len = len(head)
            elif body.data is not None and len(body.data) <= _SMALL_BODY:
                self._send_small(head + body.data, len(head), request, response, keep, body)
                return
            elif body.data is not None:
                job = _Job(head + body.data)
                job.head_len = len(head)
            else:
                job = _Job(head)
                job.head_len = len(head)
                job.fd = body.fd
                job.file_off = body.offset
                job.file_left = body.length
            job.release = body.release
            self._finish_response(job, request, response, keep)
        elif isinstance(body, bytes | bytearray | memoryview):
            response.body = bytes(body)
            self._write_response(request, response, keep)
        else:
            self._start_stream(request, response, body, keep, send_body)

    def _write_upgrade(self, request: Request, response: Response) -> None:
        """A 101 with a taker: write the head (with Connection/Upgrade), then hand over."""
        if self._upgrade_rest is None:
            # the request did not ask to upgrade (or the parser went on reading HTTP)
            log.error(
                "handler answered 101 to %s %s, which asked for no upgrade",
                request.method,
                request.uri,
            )
            self._write_response(request, _bad_gateway(), False)
            return
        upgrade = request.headers.get("Upgrade") or ""
        headers = response.headers.copy()
        wanted = headers.get("Upgrade") or upgrade
        headers.remove("Upgrade")
        try:
            head = http1.serialize_head(101, headers, content_length=None, keep_alive=True)
        except ValueError:
            log.error("response to %s %s has CR/LF in a header", request.method, request.uri)
            self._write_response(request, _server_error(), False)
            return
        extra = f"Connection: Upgrade\r\nUpgrade: {wanted}\r\n\r\n".encode("latin-1", "replace")
        job = _Job(head[:-2] + extra)
        job.head_len = len(job.data)
        job.upgrade = response.upgrade
        job.finishes = True
        job.request = request
        job.response = response
        self._emit(job)

    def _hand_over(self, upgrade: Any) -> None:
        """Let go of the socket (without closing it) and run the upgrade taker on it."""
        rest = self._upgrade_rest or b""
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._closed = True
        self._no_more = self._stopped = True
        self._drop_slots()
        sock = self._sock
        self._server._conn_closed(self)
        self._loop.create_task(_run_upgrade(upgrade, sock, rest))

    def _send_small(
        self,
        data: bytes,
        head_len: int,
        request: Request,
        response: Response,
        keep: bool,
        file_body: FileBody | None = None,
    ) -> None:
        """A whole small response: one send, and a job only if the socket cannot take it."""
        if not self._out and not self._closed:
            try:
                sent, state = self._send_bytes(self._fd, data, 0)
            except OSError:
                sent, state = 0, -1
            if state == SEND_DONE:
                if file_body is not None and file_body.release is not None:
                    _release(file_body)
                if request.on_complete:
                    _complete(request, response, sent - head_len)
                if not keep:
                    self._no_more = True
                    self._close_gracefully()
                return
        else:
            sent = state = 0
        job = _Job(data)
        job.head_len = head_len
        job.off = job.sent = sent
        if file_body is not None:
            job.release = file_body.release
        job.finishes = True
        job.request = request
        job.response = response
        if not keep:
            job.close_after = True
            self._no_more = True
        if state == -1:
            self._job_done(job, False)
            self._abort()
        elif self._out or self._closed:
            self._emit(job)
        else:
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            if self._queue:
                self._update_reading()

    def _finish_response(self, job: _Job, request: Request, response: Response, keep: bool) -> None:
        job.finishes = True
        job.request = request
        job.response = response
        if not keep:
            job.close_after = True
            self._no_more = True
        self._emit(job)

    def _start_stream(
        self,
        request: Request,
        response: Response,
        body: AsyncIterator[bytes],
        keep: bool,
        send_body: bool,
    ) -> None:
        headers = response.headers
        # A stream that knows its length (an int `content_length` attribute on the body, as
        # the proxy's streamed bodies have) goes out plain under that Content-Length; any
        # other stream is chunked, whatever Content-Length a handler set.
        length = getattr(body, "content_length", None) if send_body else None
        if type(length) is int and length >= 0:
            chunked = False
            headers = headers.copy()
            headers.set("Content-Length", str(length))
        else:
            length = None
            chunked = send_body and request.version == "1.1"
            if send_body and not chunked:
                keep = False  # HTTP/1.0: the body ends when the connection does
            if send_body:
                headers = headers.copy()
                headers.remove("Content-Length")
        head = http1.serialize_head(
            response.status,
            headers,
            content_length=None,
            chunked=chunked,
            keep_alive=keep,
            version=request.version,
        )
        if not keep:
            self._no_more = True
        if not send_body:
            _discard_body(body)
            job = _Job(head)
            job.head_len = len(head)
            self._finish_response(job, request, response, keep)
            return
        self._streaming = True
        self._emit(_Job(head))
        self._stream_task = self._loop.create_task(
            self._stream(request, response, body, chunked, keep, length)
        )

    async def _stream(
        self,
        request: Request,
        response: Response,
        body: AsyncIterator[bytes],
        chunked: bool,
        keep: bool,
        length: int | None = None,
    ) -> None:
        sent = 0
        ok = False
        try:
            async for chunk in body:
                if self._closed:
                    break
                if not chunk:
                    continue
                data = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else bytes(chunk)
                sent += len(chunk)
                if length is not None and sent > length:
                    break  # longer than its Content-Length: cut off (closes below)
                self._emit(_Job(data))
                if self._out:
                    await self._drained()
            else:
                ok = length is None or sent == length
        except asyncio.CancelledError:
            if not self._closed:
                raise
            # cancelled by _abort: the body is closed below, the request completed
        except Exception:
            if not self._closed:
                log.exception("response body of %s %s failed", request.method, request.uri)
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None and not ok:
                with contextlib.suppress(Exception):
                    await aclose()
        self._streaming = False
        self._stream_task = None
        if self._closed:
            _complete(request, response, sent)
            return
        if not ok:
            # The client cannot tell a cut-off chunked body from a whole one otherwise.
            _complete(request, response, sent)
            self._abort()
            return
        job = _Job(b"0\r\n\r\n" if chunked else b"")
        job.body_base = sent
        job.head_len = len(job.data)
        self._finish_response(job, request, response, keep)
        self._flush_queue()

    async def _drained(self) -> None:
        if not self._out or self._closed:
            return
        if self._drain is None or self._drain.done():
            self._drain = self._loop.create_future()
        await self._drain

    def _send_continue(self, body: _RequestBody) -> None:
        if self._closed or self._no_more:
            return
        if self._queue and self._queue[0].request is body._request and not self._streaming:
            self._emit(_Job(CONTINUE_BYTES))

    def _emit(self, job: _Job) -> None:
        if self._closed:
            self._job_done(job, False)
            return
        if self._out:
            self._out.append(job)
            return
        state = self._write_job(job)
        if state == SEND_DONE:
            self._job_done(job, True)
        elif state == SEND_AGAIN:
            self._out.append(job)
            self._write_since = self._loop.time()
            if not self._writing:
                self._writing = True
                self._loop.add_writer(self._fd, self._on_writable)
            if self._queue:
                self._update_reading()
        else:
            self._job_done(job, False)
            self._abort()

    def _write_job(self, job: _Job) -> int:
        """Write what the socket takes: SEND_DONE, SEND_AGAIN, or -1 (failed: close)."""
        try:
            if job.fd < 0:
                sent, state = self._send_bytes(self._fd, job.data, job.off)
                job.off += sent
                job.sent += sent
                return int(state)
            head = job.data[job.off :] if job.off else job.data
            want = job.file_left if job.file_left <= _FILE_BUDGET else _FILE_BUDGET
            sent, state = self._send_file(self._fd, head, job.fd, job.file_off, want)
        except OSError as exc:
            if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                log.debug("send to %s:%s failed: %s", self._remote_addr, self._remote_port, exc)
            return -1
        job.sent += sent
        head_part = min(sent, len(head))
        job.off += head_part
        file_part = sent - head_part
        job.file_off += file_part
        job.file_left -= file_part
        if state == SEND_DONE:
            return SEND_DONE if job.file_left == 0 else SEND_AGAIN
        if state == SEND_AGAIN:
            return SEND_AGAIN
        log.warning(
            "file shrank while sending it to %s:%s; closing the connection",
            self._remote_addr,
            self._remote_port,
        )
        return -1

    def _on_writable(self) -> None:
        out = self._out
        while out:
            job = out[0]
            state = self._write_job(job)
            if state == SEND_DONE:
                out.popleft()
                self._job_done(job, True)
                if self._closed:
                    return
            elif state == SEND_AGAIN:
                self._write_since = self._loop.time()
                return
            else:
                out.popleft()
                self._job_done(job, False)
                self._abort()
                return
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_result(None)
        if self._deferred:
            self._flush_queue()  # the next waiting request may go to the handler now
            return
        self._update_reading()
        if not self._busy():
            self._went_idle()

    def _job_done(self, job: _Job, ok: bool) -> None:
        if job.release is not None:
            release, job.release = job.release, None
            try:
                release()
            except Exception:
                log.exception("releasing a file body failed")
        if job.finishes and job.request is not None and job.response is not None:
            body_sent = job.body_base + max(0, job.sent - job.head_len)
            _complete(job.request, job.response, body_sent)
        if job.upgrade is not None:
            upgrade, job.upgrade = job.upgrade, None
            if ok and not self._closed:
                self._hand_over(upgrade)
            return
        if ok and (job.close_after or (job.finishes and self._close_pending and not self._busy())):
            self._close_gracefully()

    # ------------------------------------------------------------------ state

    def _busy(self) -> bool:
        return bool(self._queue or self._out or self._streaming)

    def _went_idle(self) -> None:
        """Nothing is being answered: wait for the next request (or close if asked to)."""
        if self._closed or self._lingering:
            return
        if (self._close_pending or self._server._shutting) and not self._in_message:
            self._close_gracefully()
            return
        if self._in_message:
            if not self._in_head:
                self._deadline = self._loop.time() + self._server._read_timeout
                self._dkind = _DL_BODY
        else:
            self._deadline = self._server._now + self._server._idle_timeout
            self._dkind = _DL_IDLE

    def _body_waiting(self, body: _RequestBody, waiting: bool) -> None:
        if waiting:
            self._waiting_body = body
            self._deadline = self._loop.time() + self._server._read_timeout
            self._dkind = _DL_BODY
            self._update_reading()
        elif self._waiting_body is body:
            self._waiting_body = None
            if self._dkind == _DL_BODY:
                self._dkind = _DL_NONE

    def _close_when_done(self) -> None:
        self._no_more = True
        self._close_pending = True
        if not self._busy():
            self._close_gracefully()
        else:
            self._update_reading()

    def _close_gracefully(self) -> None:
        """Shut down our side, then discard input for a moment before closing (so that the
        client reads the response rather than a reset)."""
        if self._closed or self._lingering:
            return
        self._drop_slots()
        self._lingering = True
        self._no_more = True
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._abort()
            return
        self._deadline = self._loop.time() + min(_LINGER, self._server._idle_timeout)
        self._dkind = _DL_LINGER
        self._update_reading()

    def check_deadline(self, now: float) -> None:
        if self._out and now - self._write_since > self._server._idle_timeout:
            log.debug("client %s:%s stopped reading; closing", self._remote_addr, self._remote_port)
            self._abort()
            return
        kind = self._dkind
        if kind == _DL_NONE or now < self._deadline:
            return
        if kind == _DL_HEAD:
            if self._busy():
                self._close_when_done()
            else:
                self._refuse_request(408)
        elif kind == _DL_BODY:
            body = self._waiting_body
            if body is not None:
                body.fail(TimeoutError("timed out reading the request body"))
            self._abort()
        else:
            self._abort()

    def begin_shutdown(self) -> None:
        if self._closed or self._lingering:
            return
        if not self._busy():
            self._abort()  # idle, or a request head that has not reached a handler yet
        else:
            self._close_pending = True
            self._no_more = True

    def _drop_slots(self) -> None:
        """Forget responses that will not be written: cancel their handlers, release their
        files and tell their on_complete callbacks (0 bytes sent)."""
        queue = list(self._queue)
        self._queue.clear()  # in place: _flush_queue may be iterating it
        self._deferred.clear()
        self._awaited = 0
        for slot in queue:
            if slot.task is not None:
                _cancel(self._loop, slot.task)
            response = slot.response
            if response is not None:
                # a streamed body (a proxied response) holds its upstream connection
                _discard_body(response.body)
                _complete(slot.request, response, 0)

    def _abort(self) -> None:
        """Close the socket now and fail whatever was still in progress."""
        if self._closed:
            return
        self._closed = True
        self._no_more = self._stopped = True
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        with contextlib.suppress(OSError):
            self._sock.close()
        out, self._out = self._out, deque()
        for job in out:
            self._job_done(job, False)
        self._drop_slots()
        stream = self._stream_task
        if stream is not None and not stream.done():
            # it may be waiting for the upstream, not for us: stop it now, which releases
            # its upstream connection, rather than at the upstream's next piece
            _cancel(self._loop, stream)
        if self._body is not None:
            self._body.fail(ConnectionResetError("connection closed"))
        if self._waiting_body is not None:
            self._waiting_body.fail(ConnectionResetError("connection closed"))
        drain = self._drain
        if drain is not None and not drain.done():
            drain.set_exception(ConnectionResetError("connection closed"))
            drain.exception()  # retrieved: nobody may be waiting any more
        self._server._conn_closed(self)


def _cancel(loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any]) -> None:
    """Cancel a handler's Future at once, a task of ours after its first step: a task
    cancelled before it ever ran never runs its coroutine, so the `finally` that closes a
    streamed body (or the handler's own clean-up) would never run either."""
    if isinstance(task, asyncio.Task):
        loop.call_soon(task.cancel)
    else:
        task.cancel()


_DISCARDING: set[asyncio.Task[None]] = set()  # strong references to _abandon tasks


def _discard_body(body: Any) -> None:
    """Let go of the body of a response that will not be written: a file body is released,
    a streamed one closed (which closes the upstream connection of a proxied response)."""
    if isinstance(body, FileBody):
        _release(body)
    elif not isinstance(body, bytes | bytearray | memoryview) and (
        hasattr(body, "__anext__") or hasattr(body, "aclose")
    ):
        task = asyncio.get_running_loop().create_task(_abandon(body))
        _DISCARDING.add(task)
        task.add_done_callback(_DISCARDING.discard)


async def _abandon(body: Any) -> None:
    """Close a streamed body nobody will read. aclose() alone is not enough: an async
    generator that was never started ignores it (its `finally` never runs), which is what
    the proxy's Stream is built on, so its upstream connection would stay open until the
    upstream closes it. Start the body, stop it at its first wait, then aclose() it."""
    anext = getattr(body, "__anext__", None)
    if anext is not None:
        step: asyncio.Future[Any] | None
        try:
            step = asyncio.ensure_future(anext())
        except Exception:
            step = None
        if step is not None:
            await asyncio.sleep(0)  # the step runs up to its first wait (or its end)
            if not step.done():
                step.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await step
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


def _release(body: FileBody) -> None:
    if body.release is not None:
        try:
            body.release()
        except Exception:
            log.exception("releasing a file body failed")


def _complete(request: Request, response: Response, body_sent: int) -> None:
    for callback in request.on_complete:
        try:
            callback(request, response, body_sent)
        except Exception:
            log.exception("on_complete callback failed for %s %s", request.method, request.uri)


async def _run_upgrade(upgrade: Any, sock: socket.socket, rest: bytes) -> None:
    try:
        await upgrade(sock, rest)
    except Exception:
        log.exception("upgraded connection failed")
        with contextlib.suppress(OSError):
            sock.close()


def _bad_gateway() -> Response:
    return Response.error(502)


def _server_error() -> Response:
    return Response.error(500)


def _too_large() -> Response:
    response = Response.error(413)
    response.close = True
    return response


class HttpServer:
    """An HTTP/1.1 server for one handler, on as many addresses as `listen` is called with.

    header_limit: bytes of request line and header fields before 431 (and close);
    max_fields: header fields a request head may have, max_field_line: bytes of one field
    (`name: value`), both checked as fields arrive (431 and close past either, as nginx's
    large_client_header_buffers and Apache's LimitRequestFields do);
    header_timeout: seconds a request head may take before 408 (and close); a new connection
    that sends nothing in that time is closed; idle_timeout: seconds a keep-alive connection
    may stay idle (and a blocked response may make no progress); read_timeout: seconds a
    handler waits for request body bytes before the connection is closed; max_discard: bytes
    of an unread request body the server reads and drops to keep the connection (more closes
    it after the response).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        header_limit: int = 1 << 20,
        max_fields: int = DEFAULT_MAX_FIELDS,
        max_field_line: int = DEFAULT_MAX_FIELD_LINE,
        header_timeout: float = 10.0,
        idle_timeout: float = 120.0,
        read_timeout: float = 60.0,
        max_discard: int = 1 << 20,
    ) -> None:
        self._handler = handler
        self._header_limit = header_limit
        self._max_fields = max_fields
        self._max_field_line = max_field_line
        self._header_timeout = header_timeout
        self._idle_timeout = idle_timeout
        self._read_timeout = read_timeout
        self._max_discard = max_discard
        self._send: SendPath = load_send_path()
        # responses remembered by request head (handlers that mark theirs as such only)
        self._cache = ResponseCache()
        self._caching = bool(getattr(handler, "validated_responses", False))
        self._listeners: list[socket.socket] = []
        self._conns: set[_Conn] = set()
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._sweeper: asyncio.TimerHandle | None = None
        self._shutting = False
        self._all_closed: asyncio.Future[None] | None = None
        self._accept_paused: asyncio.TimerHandle | None = None
        # loop.time() as of the last timeout sweep: deadlines on the hot path use this
        # coarse clock (they are checked only by the sweep anyway).
        self._now = 0.0
        tick = min(header_timeout, idle_timeout, read_timeout) / 4
        self._tick = max(0.01, min(1.0, tick))

    def set_header_limit(self, limit: int) -> None:
        """Change the header limit; request heads read from now on are held to it."""
        self._header_limit = limit
        self._cache.clear()  # a remembered head may be over the new limit

    def set_limits(
        self,
        *,
        header_limit: int | None = None,
        max_fields: int | None = None,
        max_field_line: int | None = None,
    ) -> None:
        """Change the request head limits given (a reload); heads read from now on are held
        to them."""
        if header_limit is not None:
            self._header_limit = header_limit
        if max_fields is not None:
            self._max_fields = max_fields
        if max_field_line is not None:
            self._max_field_line = max_field_line
        self._cache.clear()  # a remembered head may be over the new limits

    def set_timeouts(
        self,
        *,
        header: float | None = None,
        idle: float | None = None,
        read: float | None = None,
    ) -> None:
        """Change the timeouts given (seconds; see the class); connections pick them up as
        their deadlines are next set."""
        if header is not None:
            self._header_timeout = header
        if idle is not None:
            self._idle_timeout = idle
        if read is not None:
            self._read_timeout = read
        tick = min(self._header_timeout, self._idle_timeout, self._read_timeout) / 4
        self._tick = max(0.01, min(1.0, tick))

    @property
    def compiled(self) -> bool:
        """Whether the compiled send path (meshkit._fastpath) is in use."""
        return self._send.compiled

    def set_handler(self, handler: Handler) -> None:
        """Use handler for requests whose head completes from now on (a config reload);
        open connections stay open and requests already dispatched finish as they are."""
        self._handler = handler
        self._caching = bool(getattr(handler, "validated_responses", False))
        self._cache.clear()

    async def listen(self, host: str, port: int, *, sock: socket.socket | None = None) -> None:
        """Accept connections on host:port ("" or "0.0.0.0" for every IPv4 address, "::" for
        IPv6), or on `sock` (a bound stream socket; it is put in listening mode if needed and
        owned by the server from then on). May be called several times. Failures such as
        EADDRINUSE raise MeshkitError naming host:port."""
        self._loop = asyncio.get_running_loop()
        if self._shutting:
            raise MeshkitError("the server is shutting down")
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if sock is None:
            try:
                infos = await self._loop.getaddrinfo(
                    host or "0.0.0.0",
                    port,
                    type=socket.SOCK_STREAM,
                    flags=socket.AI_PASSIVE,
                )
            except OSError as exc:
                raise MeshkitError(f"cannot listen on {where}: {exc}") from None
            family, type_, proto, _, addr = infos[0]
            sock = socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(1024)
            except OSError as exc:
                sock.close()
                raise MeshkitError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        else:
            try:
                sock.listen(1024)
            except OSError as exc:
                raise MeshkitError(f"cannot listen on {where}: {exc.strerror or exc}") from None
        sock.setblocking(False)
        self._listeners.append(sock)
        self._loop.add_reader(sock.fileno(), self._on_accept, sock)
        self._now = self._loop.time()
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._tick, self._sweep)

    def addresses(self) -> list[tuple[str, int]]:
        """The (host, port) of every listening socket, in the order they were added."""
        out: list[tuple[str, int]] = []
        for sock in self._listeners:
            with contextlib.suppress(OSError):
                name = sock.getsockname()
                out.append((str(name[0]), int(name[1])))
        return out

    @property
    def open_connections(self) -> int:
        """Client connections currently open (lingering ones included)."""
        return len(self._conns)

    def _on_accept(self, lsock: socket.socket) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, remote = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error(
                        "accept on %s failed: %s; pausing accepts for 1 s", lsock.getsockname(), exc
                    )
                    self._pause_accepting(1.0)
                    return
                continue  # an error about this one connection (ECONNABORTED, EPROTO, ...)
            if self._shutting:
                sock.close()
                continue
            try:
                sock.setblocking(False)
                if sock.family != socket.AF_UNIX:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                local = sock.getsockname()
            except OSError:
                sock.close()
                continue
            conn = _Conn(self, sock, remote, local)
            self._conns.add(conn)
            conn.start()

    def _pause_accepting(self, delay: float) -> None:
        for lsock in self._listeners:
            self._loop.remove_reader(lsock.fileno())

        def resume() -> None:
            self._accept_paused = None
            if not self._shutting:
                for lsock in self._listeners:
                    self._loop.add_reader(lsock.fileno(), self._on_accept, lsock)

        self._accept_paused = self._loop.call_later(delay, resume)

    def _sweep(self) -> None:
        now = self._now = self._loop.time()
        for conn in list(self._conns):
            conn.check_deadline(now)
        if self._listeners or self._conns:
            self._sweeper = self._loop.call_later(self._tick, self._sweep)
        else:
            self._sweeper = None

    def _conn_closed(self, conn: _Conn) -> None:
        self._conns.discard(conn)
        if not self._conns and self._all_closed is not None and not self._all_closed.done():
            self._all_closed.set_result(None)

    def _close_listeners(self) -> None:
        if self._accept_paused is not None:
            self._accept_paused.cancel()
            self._accept_paused = None
        for lsock in self._listeners:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(lsock.fileno())
            lsock.close()
        self._listeners = []

    async def shutdown(self, grace: float) -> None:
        """Stop accepting, close idle keep-alive connections at once, let responses in flight
        finish for up to `grace` seconds (their connections close after them), then close
        whatever is left."""
        self._shutting = True
        if self._loop is None:
            return
        self._close_listeners()
        for conn in list(self._conns):
            conn.begin_shutdown()
        if self._conns:
            self._all_closed = self._loop.create_future()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._all_closed), grace)
        self.close_now()

    def close_now(self) -> None:
        """Close the listening sockets and every connection at once."""
        self._shutting = True
        self._cache.clear()
        if self._loop is None:
            return
        self._close_listeners()
        for conn in list(self._conns):
            conn._abort()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
